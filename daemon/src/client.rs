//! A minimal blocking RESP client for the CLI's calls to a running daemon.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::resp::{self, Frame};

pub fn call(socket: &Path, args: &[&[u8]]) -> anyhow::Result<Frame> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| anyhow::anyhow!("cannot connect to {} (is `recd serve` running?): {e}", socket.display()))?;
    stream.write_all(&resp::request(args))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if let Some((frame, _)) = resp::parse_frame(&buf)? {
            return Ok(frame);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            anyhow::bail!("the daemon closed the connection before answering");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends every request at once on one connection and reads the replies in order.
pub fn pipeline(socket: &Path, requests: &[Vec<Vec<u8>>]) -> anyhow::Result<Vec<Frame>> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| anyhow::anyhow!("cannot connect to {} (is `recd serve` running?): {e}", socket.display()))?;
    let mut out = Vec::new();
    for req in requests {
        let args: Vec<&[u8]> = req.iter().map(Vec::as_slice).collect();
        out.extend_from_slice(&resp::request(&args));
    }
    stream.write_all(&out)?;
    let (mut buf, mut at, mut frames) = (Vec::new(), 0, Vec::with_capacity(requests.len()));
    let mut chunk = [0u8; 64 * 1024];
    while frames.len() < requests.len() {
        if let Some((frame, used)) = resp::parse_frame(&buf[at..])? {
            frames.push(frame);
            at += used;
            continue;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            anyhow::bail!("the daemon closed the connection after {} of {} replies", frames.len(), requests.len());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(frames)
}
