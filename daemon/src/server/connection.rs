//! One client connection: read what is there, answer every complete request in it
//! (pipelining), write the answers in one go.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tracing::Instrument;

use super::Role;
use super::cmd::{self, Client, Flow};
use super::resp;
use crate::daemon::Daemon;

pub async fn serve(stream: UnixStream, id: u64, role: Role, daemon: Arc<Daemon>, stop: watch::Receiver<bool>) {
    let span = tracing::debug_span!("conn", id, role = ?role);
    if let Err(e) = handle(stream, id, role, daemon, stop).instrument(span).await {
        tracing::debug!(id, "connection closed: {e}");
    }
}

async fn handle(
    mut stream: UnixStream,
    id: u64,
    role: Role,
    daemon: Arc<Daemon>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut input: Vec<u8> = Vec::with_capacity(4096);
    // Lives as long as the connection: it also remembers the protocol HELLO chose.
    let mut out = resp::Reply::new(4096);
    let mut client = Client { id, role, name: None };
    let limits = daemon.config.limits;
    loop {
        let read = tokio::select! {
            r = read_some(&mut stream, &mut input, limits.idle_timeout) => r?,
            _ = stop.changed() => return Ok(()),
        };
        let Some(read) = read else {
            tracing::debug!(id, "idle for {:?}: closing", limits.idle_timeout);
            return Ok(());
        };
        if read == 0 {
            return Ok(());
        }
        let mut used = 0;
        let mut flow = Flow::Continue;
        while flow == Flow::Continue {
            match resp::parse_request(&input[used..]) {
                Ok(Some((args, n))) => {
                    used += n;
                    if !args.is_empty() {
                        flow = cmd::execute(&args, &daemon, &mut client, &mut out).await;
                    }
                    if let Some(rest) = out.take_rest() {
                        // A long reply: written part by part, others served in between.
                        tokio::select! {
                            r = write_in_parts(&mut stream, &mut out, rest) => r?,
                            _ = stop.changed() => return Ok(()),
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    resp::error(&mut out, &format!("ERR {e}"));
                    flow = Flow::Close;
                }
            }
        }
        input.drain(..used);
        if flow == Flow::Continue && input.len() > limits.max_request_bytes {
            let limit = limits.max_request_bytes;
            resp::error(&mut out, &format!("ERR request larger than max_request_bytes ({limit}): closing"));
            flow = Flow::Close;
        }
        // A client that stopped reading must not hold up shutdown.
        tokio::select! {
            r = write_reply(&mut stream, &out) => r?,
            _ = stop.changed() => return Ok(()),
        }
        out.clear();
        if flow == Flow::Close {
            return Ok(());
        }
    }
}

/// Writes `out` (the replies so far, ending with the first part of a long one), then each
/// further part `rest` makes, yielding the thread between parts; `out` is left empty.
async fn write_in_parts(
    stream: &mut UnixStream,
    out: &mut resp::Reply,
    mut rest: Box<dyn resp::MoreReply>,
) -> std::io::Result<()> {
    loop {
        write_reply(stream, out).await?;
        out.clear();
        tokio::task::yield_now().await;
        if rest.next_part(out) {
            return Ok(());
        }
    }
}

/// Bytes written to one connection before the serving thread is handed to the others: a
/// client reading a 178 MB value as fast as the socket goes would otherwise keep the thread
/// (the kernel takes a few hundred kB per write, and a write that never blocks never
/// yields).
const WRITE_TURN_BYTES: usize = 1 << 20;

/// Writes the whole reply with vectored writes: stored values go from the read cache to
/// the socket without a copy into the reply buffer. Yields after every
/// [`WRITE_TURN_BYTES`].
async fn write_reply(stream: &mut UnixStream, reply: &resp::Reply) -> std::io::Result<()> {
    let mut slices = if reply.has_stored() { reply.slices() } else { vec![std::io::IoSlice::new(&reply.buf)] };
    let mut left: &mut [std::io::IoSlice<'_>] = &mut slices;
    let mut turn = 0;
    while !left.is_empty() && !left[0].is_empty() {
        let n = stream.write_vectored(left).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut left, n);
        turn += n;
        if turn >= WRITE_TURN_BYTES {
            turn = 0;
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

/// Reads what the client sent; `None` when it stayed silent past the idle timeout.
async fn read_some(
    stream: &mut UnixStream,
    input: &mut Vec<u8>,
    idle: Option<std::time::Duration>,
) -> std::io::Result<Option<usize>> {
    match idle {
        None => stream.read_buf(input).await.map(Some),
        Some(limit) => match tokio::time::timeout(limit, stream.read_buf(input)).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        },
    }
}
