//! The RESP server, shaped as `serve_*(listener, shutdown, ...)` (after mini-redis): it
//! accepts until `shutdown` resolves, then tells every connection to close after the
//! batch of requests in hand and waits for them. Both sockets answer the same commands
//! through `cmd`; only the admin one accepts control commands.
//!
//! The read socket is served thread-per-core: `serve_threads` threads, each an event loop
//! over its connections (`event_loop.rs`), each connection on one of them (round robin) for
//! its whole life. A request never hops threads, so serving pays no cross-thread wake-ups
//! (profiled under redis-benchmark: a work-stealing pool spent most of its time parking and
//! waking workers). The admin socket's connections are tasks on the main runtime
//! (`connection.rs`): its commands may wait on the scheduler or the store.

mod busy_poll;
pub mod cmd;
mod connection;
mod dashboard;
mod event_loop;
pub mod http;

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

pub use event_loop::ReadServer;

/// The read socket: connections go to `server`'s threads (started before the daemon says
/// it is ready, so a failure to start them fails the start).
pub async fn serve_reads(
    listener: UnixListener,
    server: ReadServer,
    shutdown: impl Future<Output = ()>,
    daemon: Arc<Daemon>,
) {
    let max_clients = daemon.config.limits.max_clients;
    let mut next_id: u64 = 1;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if server.connections() >= max_clients => refuse(stream, &daemon).await,
                Ok((stream, _)) => {
                    let id = next_id;
                    next_id += 1;
                    // A socket belongs to the runtime that registered it: hand it over as a
                    // plain (non-blocking) fd, registered again on its serving thread.
                    match stream.into_std() {
                        Ok(s) => server.hand(id, s),
                        Err(e) => tracing::warn!("cannot hand connection {id} to a serving thread: {e}"),
                    }
                }
                Err(e) => accept_failed(e).await,
            },
            () = &mut shutdown => break,
        }
    }
    // The threads close their connections after the batch in hand; joining them blocks.
    let _ = tokio::task::spawn_blocking(move || server.stop()).await;
}

/// The admin socket: a task per connection on the main runtime, since admin commands may
/// scan the store (VERIFY) or wait on it, never on a thread that serves apps.
pub async fn serve_admin(listener: UnixListener, shutdown: impl Future<Output = ()>, daemon: Arc<Daemon>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut next_id: u64 = 1;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                // Ops must always get in: no client limit here.
                Ok((stream, _)) => {
                    let id = next_id;
                    next_id += 1;
                    conns.spawn(connection::serve(stream, id, Arc::clone(&daemon), stop_rx.clone()));
                }
                Err(e) => accept_failed(e).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
}

/// Turns a client away past `max_clients`, as Redis words it; best effort and bounded, so
/// a client that does not read its refusal cannot stall the accept loop.
async fn refuse(mut stream: tokio::net::UnixStream, daemon: &Daemon) {
    use tokio::io::AsyncWriteExt;
    daemon.metrics.refused_client();
    let _ = tokio::time::timeout(std::time::Duration::from_millis(100), stream.write_all(TOO_MANY)).await;
}

/// An accept that failed (out of file descriptors, most likely): logged, and a pause so
/// the loop does not spin on it.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

/// What the connection tests of both sockets build on.
#[cfg(test)]
mod testing {
    use std::sync::Arc;

    use crate::daemon::Daemon;
    use crate::resp;

    /// A daemon on the embedded defaults with an empty store in `dir`.
    pub fn daemon_in(dir: &std::path::Path) -> Arc<Daemon> {
        let config = crate::config::Config::parse(crate::config::EMBEDDED_DEFAULTS, "recd.toml", dir).unwrap();
        let store = crate::store::Store::open_with(&config.data_dir, config.retention, config.caches).unwrap();
        Daemon::new(config, store)
    }

    /// A reply of stored values far larger than one write call, and the bytes it must give.
    pub fn long_reply() -> (resp::Reply, Vec<u8>) {
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
        (reply, want)
    }
}
