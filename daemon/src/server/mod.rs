//! The RESP server, shaped as `run(listener, shutdown, ...)` (after mini-redis): it
//! accepts until `shutdown` resolves, then tells every connection to close after the
//! batch of requests in hand and waits for them. The read socket and the admin socket run the same
//! code; only the admin one accepts control commands.
//!
//! Connections are served thread-per-core: `serve_threads` single-threaded runtimes, each
//! connection on one of them (round robin) for its whole life. A request never hops
//! threads, so serving pays no cross-thread wake-ups (profiled under redis-benchmark: a
//! work-stealing pool spent most of its time parking and waking workers).

pub mod cmd;
mod connection;
mod dashboard;
pub mod http;

use std::future::Future;
use std::sync::Arc;

use std::sync::OnceLock;

use tokio::net::UnixListener;
use tokio::runtime::Handle;
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
                Ok((stream, _)) if role == Role::Admin => {
                    // Admin commands may scan the store (VERIFY) or wait on it: they run on
                    // the main runtime, never on a thread that serves apps.
                    let id = next_id;
                    next_id += 1;
                    conns.spawn(connection::serve(stream, id, role, Arc::clone(&daemon), stop_rx.clone()));
                }
                Ok((stream, _)) => {
                    let id = next_id;
                    next_id += 1;
                    // A socket belongs to the runtime that registered it: hand it over as a
                    // plain fd and register it again on its serving thread.
                    let std_stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!("cannot hand connection {id} to a serving thread: {e}");
                            continue;
                        }
                    };
                    let (conn_daemon, stop) = (Arc::clone(&daemon), stop_rx.clone());
                    let serve = async move {
                        match tokio::net::UnixStream::from_std(std_stream) {
                            Ok(stream) => connection::serve(stream, id, role, conn_daemon, stop).await,
                            Err(e) => tracing::warn!("cannot register connection {id}: {e}"),
                        }
                    };
                    conns.spawn_on(serve, serving_thread(id, daemon.config.serve_threads));
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

/// The serving thread for connection `id`: `threads` single-threaded runtimes, started on
/// first use and kept for the life of the process.
fn serving_thread(id: u64, threads: usize) -> &'static Handle {
    static THREADS: OnceLock<Vec<Handle>> = OnceLock::new();
    let threads = THREADS.get_or_init(|| {
        let n = threads.max(1);
        (0..n)
            .map(|i| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("serving runtime");
                let handle = rt.handle().clone();
                std::thread::Builder::new()
                    .name(format!("recd-serve-{i}"))
                    .spawn(move || rt.block_on(std::future::pending::<()>()))
                    .expect("serving thread");
                handle
            })
            .collect()
    });
    &threads[(id as usize) % threads.len()]
}
