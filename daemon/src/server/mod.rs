//! The RESP server, shaped as `run(listener, shutdown, ...)` (after mini-redis): it
//! accepts until `shutdown` resolves, then tells every connection to close after the
//! request in hand and waits for them. The read socket and the admin socket run the same
//! code; only the admin one accepts control commands.

pub mod cmd;
mod connection;
pub mod resp;

use std::future::Future;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::daemon::Daemon;

/// Which socket a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Read,
    Admin,
}

/// The refusal a client gets past `max_clients`, as Redis words it.
const TOO_MANY: &[u8] = b"-ERR max number of clients reached\r\n";

pub async fn run(listener: UnixListener, shutdown: impl Future<Output = ()>, daemon: Arc<Daemon>, role: Role) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut next_id: u64 = 1;
    // Ops must always get in: only the read socket is limited.
    let max_clients = if role == Role::Read { daemon.config.limits.max_clients } else { usize::MAX };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((mut stream, _)) if conns.len() >= max_clients => {
                    use tokio::io::AsyncWriteExt;
                    daemon.metrics.refused_client();
                    // Best effort and bounded: a client that does not read its refusal
                    // must not stall the accept loop.
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(100), stream.write_all(TOO_MANY)).await;
                }
                Ok((stream, _)) => {
                    let id = next_id;
                    next_id += 1;
                    conns.spawn(connection::serve(stream, id, role, Arc::clone(&daemon), stop_rx.clone()));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
}
