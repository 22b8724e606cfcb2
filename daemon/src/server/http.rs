//! The HTTP listener on `metrics_listen` (axum on hyper): `GET /metrics`, the OpenMetrics
//! text of [`crate::metrics::Metrics::render`], and with `dashboard = true` the dashboard
//! ([`super::dashboard`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::daemon::Daemon;

/// What Prometheus asks for and what `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The CPU priority of the listener's thread: the lowest (nice 19). On a busy machine the
/// read socket's threads always go first; a scrape or a dashboard poll waits a little.
const HTTP_NICE: i32 = 19;

/// Serves the listener on a thread of its own, with its own runtime, at [`HTTP_NICE`]:
/// building the dashboard's JSON or a scrape then never takes a core from the read
/// socket's serving threads (threads its runtime starts inherit the priority). The thread
/// stops when `shutdown` resolves; a failure is logged and the daemon runs without it.
pub fn spawn(addr: SocketAddr, daemon: Arc<Daemon>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let started = std::thread::Builder::new().name("recd-http".into()).spawn(move || {
        if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), HTTP_NICE) {
            tracing::warn!("metrics listener: cannot lower its priority: {e}");
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let result = match runtime {
            Ok(runtime) => runtime.block_on(serve_http(addr, daemon, shutdown)),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::error!("metrics endpoint on {addr}: {e}");
        }
    });
    if let Err(e) = started {
        tracing::error!("metrics endpoint on {addr}: cannot start its thread: {e}");
    }
}

/// Connections the listener serves at once; more wait in the kernel's accept queue. Idle
/// connections cannot take the daemon's file descriptors, which its store and sockets need.
const HTTP_MAX_CONNECTIONS: usize = 64;

/// How a connection is bounded in time and in memory.
#[derive(Clone, Copy)]
struct ConnectionLimits {
    /// How long a connection may take to send a request's headers, or stay idle between
    /// requests, before it is closed: a client that opens connections and sends nothing (or
    /// a byte at a time) holds a slot this long.
    header_timeout: Duration,
    /// How long one connection is served at most: the header timeout does not run while a
    /// response waits to be written, so a client that sends requests and never reads the
    /// answers would hold its slot for good. Then the connection is asked to close (an idle
    /// one closes at once, a request under way may end), and dropped `close_grace` later.
    /// Prometheus and the dashboard's page reconnect as they need.
    connection_max: Duration,
    close_grace: Duration,
    /// The most a connection buffers, in and out (hyper's least is 8 KiB): requests here
    /// are well under 1 KiB, and a response larger than this is written as the client reads.
    buffer_max: usize,
}

const HTTP_LIMITS: ConnectionLimits = ConnectionLimits {
    header_timeout: Duration::from_secs(10),
    connection_max: Duration::from_secs(60),
    close_grace: Duration::from_secs(5),
    buffer_max: 16 * 1024,
};

/// Serves the listener's routes on `addr` until `shutdown` resolves; connections still open
/// then are closed with the thread's runtime (a response being written is cut).
async fn serve_http(
    addr: SocketAddr,
    daemon: Arc<Daemon>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    let routes = router(daemon);
    let slots = Arc::new(Semaphore::new(HTTP_MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, slot) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = accept_in_a_slot(&listener, &slots) => accepted,
        };
        tokio::spawn(serve_connection(stream, routes.clone(), HTTP_LIMITS, slot));
    }
}

/// Serves one connection, holding its slot until it is closed.
async fn serve_connection<S>(stream: S, routes: Router, limits: ConnectionLimits, _slot: OwnedSemaphorePermit)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(routes);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.buffer_max)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let served = match tokio::time::timeout(limits.connection_max, connection.as_mut()).await {
        Ok(served) => served,
        Err(_) => {
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(limits.close_grace, connection).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = served {
        tracing::debug!("metrics listener: a connection ended: {e}");
    }
}

/// The next connection, once one of the listener's slots is free.
async fn accept_in_a_slot(listener: &TcpListener, slots: &Arc<Semaphore>) -> (TcpStream, OwnedSemaphorePermit) {
    let slot = Arc::clone(slots).acquire_owned().await.expect("the slots are never closed");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return (stream, slot),
            Err(e) => super::accept_failed(e).await,
        }
    }
}

fn router(daemon: Arc<Daemon>) -> Router {
    let mut routes = Router::new().route("/metrics", get(metrics));
    if daemon.config.dashboard {
        routes = routes.merge(super::dashboard::routes());
    }
    routes.fallback(not_found).layer(middleware::from_fn(loopback_host_only)).with_state(daemon)
}

/// Refuses a request whose `Host` is not a loopback name: a web page whose own host name
/// resolves to 127.0.0.1 (DNS rebinding) would otherwise read this listener from a browser.
async fn loopback_host_only(request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if is_loopback_host(host) {
        next.run(request).await
    } else {
        (StatusCode::FORBIDDEN, "this listener answers requests for 127.0.0.1, localhost or [::1] only\n")
            .into_response()
    }
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]:9187`, `127.0.0.1:9187`, `localhost:9187`; a bare `[::1]` has no port.
        Some((name, port)) if !host.ends_with(']') && port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(name.to_ascii_lowercase().as_str(), "127.0.0.1" | "localhost" | "[::1]")
}

async fn metrics(State(daemon): State<Arc<Daemon>>) -> Response {
    // `render` reads the tables' versions from the store (sled): off the async threads.
    match tokio::task::spawn_blocking(move || daemon.metrics.render(&daemon.store)).await {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "not found: this listener serves GET /metrics (and the dashboard at / when it is on)\n")
}

#[cfg(test)]
mod tests {
    use super::{ConnectionLimits, is_loopback_host, serve_connection};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client that asks for a large response and never reads it: hyper's header timeout
    /// does not run while the response waits to be written, so only the cap on a
    /// connection's time frees its slot (the cap and grace scaled down from 60 s and 5 s).
    #[tokio::test]
    async fn a_client_that_never_reads_its_response_is_dropped_after_the_cap() {
        const BODY: usize = 1 << 20;
        let limits = ConnectionLimits {
            header_timeout: Duration::from_secs(30),
            connection_max: Duration::from_millis(400),
            close_grace: Duration::from_millis(200),
            buffer_max: 16 * 1024,
        };
        let routes = axum::Router::new().route("/big", axum::routing::get(|| async { "x".repeat(BODY) }));
        let (mut client, server) = tokio::io::duplex(4096);
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let slot = Arc::clone(&slots).acquire_owned().await.unwrap();
        client.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let started = Instant::now();
        let served = tokio::time::timeout(Duration::from_secs(20), serve_connection(server, routes, limits, slot));
        served.await.expect("the connection outlived its cap");
        let took = started.elapsed();
        assert!(took >= limits.connection_max + limits.close_grace, "closed after {took:?}, before the cap and grace");
        assert_eq!(slots.available_permits(), 1, "the slot is free again");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "the response had begun: {:?}",
            String::from_utf8_lossy(&got[..got.len().min(40)])
        );
        assert!(got.len() < BODY, "the response was cut, not finished ({} bytes)", got.len());
    }

    #[test]
    fn only_loopback_host_names_pass() {
        for host in ["127.0.0.1:9187", "localhost:9187", "LOCALHOST", "[::1]:9187", "[::1]", "127.0.0.1"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["", "evil.example:9187", "127.0.0.1.evil.example", "localhost.evil:80", "[::2]:9187", "10.0.0.1"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
