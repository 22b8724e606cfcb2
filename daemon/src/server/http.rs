//! The HTTP listener on `metrics_listen` (axum on hyper): `GET /metrics`, the OpenMetrics
//! text of [`crate::metrics::Metrics::render`], and with `dashboard = true` the dashboard
//! ([`super::dashboard`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

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

/// Serves the listener's routes on `addr` until `shutdown` resolves.
async fn serve_http(
    addr: SocketAddr,
    daemon: Arc<Daemon>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    axum::serve(listener, router(daemon)).with_graceful_shutdown(shutdown).await?;
    Ok(())
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
    use super::is_loopback_host;

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
