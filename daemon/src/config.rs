//! `recd.toml`: where the daemon keeps its data, sockets, jobs and plugins.
//! Relative paths are resolved against the directory of the config file (or the
//! working directory for the embedded defaults), so the repository's `recd.toml`
//! works from a checkout as is.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The defaults, embedded so `recd serve` with no config runs the demo layout.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../recd.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    #[error("{file}:{line}:{column}: {message}")]
    Syntax { file: String, line: usize, column: usize, message: String },
    #[error("{file}: field `{field}`: {message}")]
    Invalid { file: String, field: &'static str, message: String },
}

/// Daemon settings as written in `recd.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Folder of the sled store.
    data_dir: PathBuf,
    /// Read-only RESP socket for apps.
    socket: PathBuf,
    /// Control socket (run jobs, reload, status).
    admin_socket: PathBuf,
    /// Octal permission bits of the read socket.
    #[serde(default = "default_socket_mode")]
    socket_mode: String,
    /// Folder of `*.toml` job files.
    jobs_dir: PathBuf,
    /// Folder where `plugin = "name"` finds `librecd_<name>.so`.
    plugins_dir: PathBuf,
    /// ONNX Runtime shared library (`ORT_DYLIB_PATH` overrides it).
    onnxruntime: PathBuf,
    /// Published versions kept per table (current included).
    #[serde(default = "default_retain")]
    retain_versions: usize,
    /// Also drop versions published more than this many days ago (never the current one).
    retain_days: Option<f64>,
    /// On SIGTERM, how long running jobs may finish before they are cancelled.
    #[serde(default = "default_grace")]
    shutdown_grace_seconds: u64,
    /// Opt-in: serve Prometheus metrics on this loopback address, e.g. "127.0.0.1:9187".
    metrics_listen: Option<String>,
    /// Opt-in: also serve the read-only ops dashboard on `metrics_listen`.
    #[serde(default)]
    dashboard: bool,
    /// "human" (default) or "json" log lines.
    #[serde(default = "default_log_format")]
    log_format: String,
    /// Connections the read socket serves at once; one more is told
    /// `-ERR max number of clients reached` and closed. The admin socket is not counted.
    #[serde(default = "default_max_clients")]
    max_clients: usize,
    /// Largest request a client may send (bytes); a bigger one is answered with an error
    /// and the connection closed.
    #[serde(default = "default_max_request_bytes")]
    max_request_bytes: usize,
    /// Close a connection that sends nothing for this long; 0 (default, as Redis): never.
    #[serde(default)]
    idle_timeout_seconds: u64,
    /// Threads serving the sockets; 0 (default): one per core but one, since the apps
    /// reading a Unix socket run on the same machine and need a core too.
    #[serde(default)]
    serve_threads: usize,
    /// Microseconds a serving thread keeps looking for requests after its last work before
    /// it sleeps, at most (the window adapts to the gaps between requests); 0: never.
    #[serde(default = "default_busy_poll_microseconds")]
    busy_poll_microseconds: u64,
    /// Memory (MiB) for values already read, kept so the next read of the same user skips
    /// sled's B-tree; 0 turns it off. Bounded: the least useful values are evicted.
    #[serde(default = "default_read_cache_mb")]
    read_cache_mb: u64,
    /// Memory (MiB) for sled's page cache: the pages a publish writes (until flushed) and
    /// reads that miss the read cache.
    #[serde(default = "default_store_cache_mb")]
    store_cache_mb: u64,
    /// Disk space (MiB) the store keeps in a file of its own, given back when the disk is
    /// too full for the store to open; a version being written also stops before the disk
    /// has less free than this. 0: none.
    #[serde(default = "default_disk_reserve_mb")]
    disk_reserve_mb: u64,
    /// Largest input or model file (MiB) a job may read; a bigger one is refused when
    /// the job is loaded and when a run starts.
    #[serde(default = "default_max_input_mb")]
    max_input_mb: u64,
}

fn default_max_input_mb() -> u64 {
    64 << 10
}

/// Upper bounds of the duration keys: far beyond any sensible value, and small enough that
/// no deadline computed from them can overflow.
const MAX_SHUTDOWN_GRACE_SECONDS: u64 = 86_400;
const MAX_IDLE_TIMEOUT_SECONDS: u64 = 30 * 86_400;
const MAX_RETAIN_DAYS: f64 = 36_500.0;
/// A busy-poll window past a millisecond would keep a core busy between requests that come
/// too seldom for a wake-up to matter.
const MAX_BUSY_POLL_MICROSECONDS: u64 = 1_000;

fn mib_to_bytes(mib: u64, field: &'static str, file: &str) -> Result<u64, ConfigError> {
    mib.checked_mul(1 << 20).ok_or_else(|| ConfigError::Invalid {
        file: file.into(),
        field,
        message: format!("{mib} MiB is more than a 64-bit count of bytes holds"),
    })
}

fn default_busy_poll_microseconds() -> u64 {
    50
}

fn default_read_cache_mb() -> u64 {
    1024
}

fn default_store_cache_mb() -> u64 {
    256
}

fn default_disk_reserve_mb() -> u64 {
    64
}

fn default_max_clients() -> usize {
    10_000
}

fn default_max_request_bytes() -> usize {
    1 << 20
}

fn default_log_format() -> String {
    "human".into()
}

fn default_grace() -> u64 {
    30
}

fn default_socket_mode() -> String {
    "0660".into()
}

fn default_retain() -> usize {
    2
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Directory relative paths in the config and in job files are resolved against.
    pub base_dir: PathBuf,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub admin_socket: PathBuf,
    pub socket_mode: u32,
    pub jobs_dir: PathBuf,
    pub plugins_dir: PathBuf,
    pub onnxruntime: PathBuf,
    pub retention: crate::store::Retention,
    pub shutdown_grace_seconds: u64,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Serve the dashboard (`/`, `/api/...`) beside `/metrics`.
    pub dashboard: bool,
    pub log_json: bool,
    pub limits: Limits,
    pub serve_threads: usize,
    /// The longest a serving thread looks for requests before it sleeps (`server::busy_poll`).
    pub busy_poll: std::time::Duration,
    pub caches: crate::store::Caches,
    pub max_input_bytes: u64,
}

/// What one client may take of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_clients: usize,
    pub max_request_bytes: usize,
    /// None: never time out.
    pub idle_timeout: Option<std::time::Duration>,
}

impl Config {
    /// Loads `path`, or the embedded defaults relative to the working directory.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let file = path.display().to_string();
                let text = crate::fsutil::read_text(path, crate::fsutil::MAX_JOB_FILE_BYTES)
                    .map_err(|e| ConfigError::Read { file: file.clone(), message: e.to_string() })?;
                let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let base =
                    std::path::absolute(base).map_err(|source| ConfigError::Io { file: file.clone(), source })?;
                Self::parse(&text, &file, &base)
            }
            None => {
                let base = std::env::current_dir()
                    .map_err(|source| ConfigError::Io { file: "<embedded defaults>".into(), source })?;
                Self::parse(EMBEDDED_DEFAULTS, "<embedded defaults>", &base)
            }
        }
    }

    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().map(|s| s.start).unwrap_or(0));
            ConfigError::Syntax { file: file.into(), line, column, message: e.message().trim().to_string() }
        })?;
        let socket_mode = u32::from_str_radix(raw.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| ConfigError::Invalid {
                file: file.into(),
                field: "socket_mode",
                message: format!("expected octal permission bits like \"0660\", got {:?}", raw.socket_mode),
            })?;
        let metrics_listen = match &raw.metrics_listen {
            None => None,
            Some(text) => match text.parse::<std::net::SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() => Some(addr),
                Ok(_) => {
                    return Err(ConfigError::Invalid {
                        file: file.into(),
                        field: "metrics_listen",
                        message: format!("{text:?} is not a loopback address: metrics are served on localhost only"),
                    });
                }
                Err(_) => {
                    return Err(ConfigError::Invalid {
                        file: file.into(),
                        field: "metrics_listen",
                        message: format!("expected an address like \"127.0.0.1:9187\", got {text:?}"),
                    });
                }
            },
        };
        if raw.dashboard && metrics_listen.is_none() {
            return Err(ConfigError::Invalid {
                file: file.into(),
                field: "dashboard",
                message: "needs `metrics_listen`: the dashboard is served on that listener".into(),
            });
        }
        let log_json = match raw.log_format.as_str() {
            "human" => false,
            "json" => true,
            other => {
                return Err(ConfigError::Invalid {
                    file: file.into(),
                    field: "log_format",
                    message: format!("expected \"human\" or \"json\", got {other:?}"),
                });
            }
        };
        let invalid = |field: &'static str, message: String| ConfigError::Invalid { file: file.into(), field, message };
        if raw.max_clients == 0 {
            return Err(invalid("max_clients", "must be at least 1".into()));
        }
        if raw.max_request_bytes < 1024 {
            return Err(invalid("max_request_bytes", format!("must be at least 1024, got {}", raw.max_request_bytes)));
        }
        let retain_days = match raw.retain_days {
            Some(d) if !(d.is_finite() && d > 0.0 && d <= MAX_RETAIN_DAYS) => {
                return Err(invalid(
                    "retain_days",
                    format!("must be a positive number of days up to {MAX_RETAIN_DAYS}, got {d}"),
                ));
            }
            other => other,
        };
        for (field, value, max) in [
            ("shutdown_grace_seconds", raw.shutdown_grace_seconds, MAX_SHUTDOWN_GRACE_SECONDS),
            ("idle_timeout_seconds", raw.idle_timeout_seconds, MAX_IDLE_TIMEOUT_SECONDS),
            ("busy_poll_microseconds", raw.busy_poll_microseconds, MAX_BUSY_POLL_MICROSECONDS),
        ] {
            if value > max {
                return Err(invalid(field, format!("{value} is more than the maximum, {max}")));
            }
        }
        if raw.max_input_mb == 0 {
            return Err(invalid("max_input_mb", "must be at least 1".into()));
        }
        let limits = Limits {
            max_clients: raw.max_clients,
            max_request_bytes: raw.max_request_bytes,
            idle_timeout: (raw.idle_timeout_seconds > 0)
                .then(|| std::time::Duration::from_secs(raw.idle_timeout_seconds)),
        };
        let onnxruntime = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).unwrap_or(raw.onnxruntime);
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        Ok(Config {
            base_dir: base.to_path_buf(),
            data_dir: abs(raw.data_dir),
            socket: abs(raw.socket),
            admin_socket: abs(raw.admin_socket),
            socket_mode,
            jobs_dir: abs(raw.jobs_dir),
            plugins_dir: abs(raw.plugins_dir),
            onnxruntime: abs(onnxruntime),
            retention: crate::store::Retention {
                count: raw.retain_versions.max(1),
                max_age: retain_days.map(|d| std::time::Duration::from_secs_f64(d * 86_400.0)),
            },
            shutdown_grace_seconds: raw.shutdown_grace_seconds,
            metrics_listen,
            dashboard: raw.dashboard,
            log_json,
            limits,
            caches: crate::store::Caches {
                sled_bytes: mib_to_bytes(raw.store_cache_mb.max(16), "store_cache_mb", file)?,
                read_bytes: mib_to_bytes(raw.read_cache_mb, "read_cache_mb", file)?,
                disk_reserve_bytes: mib_to_bytes(raw.disk_reserve_mb, "disk_reserve_mb", file)?,
            },
            max_input_bytes: mib_to_bytes(raw.max_input_mb, "max_input_mb", file)?,
            serve_threads: match raw.serve_threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)),
                n => n,
            },
            busy_poll: std::time::Duration::from_micros(raw.busy_poll_microseconds),
        })
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse_relative_to_base() {
        let c = Config::parse(EMBEDDED_DEFAULTS, "recd.toml", Path::new("/srv/recd")).unwrap();
        assert!(c.data_dir.starts_with("/srv/recd"));
        assert_eq!(c.socket_mode, 0o660);
    }

    #[test]
    fn bad_mode_names_the_field() {
        let text = EMBEDDED_DEFAULTS.replace("\"0660\"", "\"rw-\"");
        let err = Config::parse(&text, "recd.toml", Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("recd.toml: field `socket_mode`"), "{err}");
    }

    #[test]
    fn busy_poll_defaults_to_50_microseconds_and_is_bounded() {
        let with = |line: &str| {
            let text = EMBEDDED_DEFAULTS.replace("busy_poll_microseconds = 50\n", line);
            Config::parse(&text, "recd.toml", Path::new("/"))
        };
        assert_eq!(with("").unwrap().busy_poll, std::time::Duration::from_micros(50));
        assert!(with("busy_poll_microseconds = 0\n").unwrap().busy_poll.is_zero());
        let err = with("busy_poll_microseconds = 1001\n").unwrap_err().to_string();
        assert!(err.contains("field `busy_poll_microseconds`: 1001 is more than the maximum, 1000"), "{err}");
    }

    #[test]
    fn metrics_and_dashboard_stay_on_localhost() {
        let parse = |extra: &str| Config::parse(&format!("{EMBEDDED_DEFAULTS}\n{extra}"), "recd.toml", Path::new("/"));
        let err = |extra: &str| parse(extra).unwrap_err().to_string();
        assert!(
            err("metrics_listen = \"0.0.0.0:9187\"")
                .contains("field `metrics_listen`: \"0.0.0.0:9187\" is not a loopback address")
        );
        assert!(err("dashboard = true").contains("field `dashboard`: needs `metrics_listen`"));
        let on = parse("metrics_listen = \"[::1]:9187\"\ndashboard = true").unwrap();
        assert!(on.dashboard && on.metrics_listen.is_some_and(|a| a.ip().is_loopback()));
        assert!(!Config::parse(EMBEDDED_DEFAULTS, "recd.toml", Path::new("/")).unwrap().dashboard);
    }
}
