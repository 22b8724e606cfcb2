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
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut client = Client { id, role, name: None };
    loop {
        let read = tokio::select! {
            r = stream.read_buf(&mut input) => r?,
            _ = stop.changed() => return Ok(()),
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
                        flow = cmd::execute(args, &daemon, &mut client, &mut out).await;
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
        stream.write_all(&out).await?;
        out.clear();
        if flow == Flow::Close {
            return Ok(());
        }
    }
}
