//! One client connection: read what is there, answer every complete request in it
//! (pipelining), write the answers in one go.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tracing::Instrument;

use super::Role;
use super::cmd::{self, Client, Flow};
use crate::daemon::Daemon;
use crate::resp;

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
/// client reading a 218 MB value as fast as the socket goes would otherwise keep the thread
/// (a write that never blocks never yields).
const WRITE_TURN_BYTES: usize = 1 << 20;

/// Bytes offered to one write call. Linux copies all it is given while the reader keeps
/// draining the socket: one `writev` of a 218 MB value took 272 ms, the thread's other
/// connections waiting.
const WRITE_CALL_BYTES: usize = 256 << 10;

/// Writes the whole reply with vectored writes: stored values go from the read cache to
/// the socket without a copy into the reply buffer. Each call is offered at most
/// [`WRITE_CALL_BYTES`], and the thread is yielded after every [`WRITE_TURN_BYTES`].
async fn write_reply(stream: &mut UnixStream, reply: &resp::Reply) -> std::io::Result<()> {
    if !reply.has_stored() && reply.buf.len() <= WRITE_CALL_BYTES {
        // The common case, a few small replies: one plain write.
        return stream.write_all(&reply.buf).await;
    }
    let slices = reply.parts();
    let (mut at, mut offset, mut turn) = (0, 0, 0);
    while at < slices.len() {
        let batch = bounded(&slices[at..], offset, WRITE_CALL_BYTES);
        if batch.is_empty() {
            break;
        }
        let mut n = stream.write_vectored(&batch).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        turn += n;
        // Move past what was written: whole slices, then into the next one.
        while n > 0 && at < slices.len() {
            let left = slices[at].len() - offset;
            if n >= left {
                n -= left;
                at += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
        if turn >= WRITE_TURN_BYTES {
            turn = 0;
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

/// The first `max` bytes of `slices`, the first one from byte `offset` on.
fn bounded<'a>(slices: &[&'a [u8]], offset: usize, max: usize) -> smallvec::SmallVec<[std::io::IoSlice<'a>; 8]> {
    let mut out = smallvec::SmallVec::new();
    let mut room = max;
    for (k, bytes) in slices.iter().enumerate() {
        let bytes = if k == 0 { &bytes[offset..] } else { *bytes };
        if room == 0 {
            break;
        }
        let take = bytes.len().min(room);
        if take > 0 {
            out.push(std::io::IoSlice::new(&bytes[..take]));
        }
        room -= take;
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply of stored values far larger than one write call arrives whole and in order,
    /// whatever the reader's pace.
    #[tokio::test]
    async fn a_long_reply_written_in_bounded_calls_arrives_whole() {
        let big = sled::IVec::from((0..3_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let mut reply = resp::Reply::new(64);
        resp::array_len(&mut reply, 3);
        reply.bulk_stored(&big, 7..big.len());
        resp::bulk(&mut reply, b"small");
        reply.bulk_stored(&big, 0..1_000_000);
        let mut want = Vec::new();
        resp::array_len(&mut want, 3);
        resp::bulk(&mut want, &big[7..]);
        resp::bulk(&mut want, b"small");
        resp::bulk(&mut want, &big[..1_000_000]);
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 100_003];
            loop {
                let n = theirs.read(&mut buf).await.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
                tokio::task::yield_now().await;
            }
        });
        write_reply(&mut ours, &reply).await.unwrap();
        drop(ours);
        assert!(reader.await.unwrap() == want, "the bytes differ");
    }

    #[test]
    fn a_write_call_is_offered_at_most_its_bound() {
        let parts: [&[u8]; 3] = [b"abc", b"defgh", b"ij"];
        let joined = |v: smallvec::SmallVec<[std::io::IoSlice<'_>; 8]>| {
            v.iter().flat_map(|s| s.iter().copied()).collect::<Vec<u8>>()
        };
        assert_eq!(joined(bounded(&parts, 0, 100)), b"abcdefghij");
        assert_eq!(joined(bounded(&parts, 1, 5)), b"bcdef");
        assert_eq!(joined(bounded(&parts[1..], 4, 2)), b"hi");
        assert!(bounded(&parts, 3, 0).is_empty());
    }
}
