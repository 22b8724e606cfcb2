//! A minimal blocking RESP client for the CLI's calls to a running daemon.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::server::resp::{self, Frame};

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
