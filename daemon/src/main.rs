//! `recd`: the daemon (`serve`), its per-run child (`worker`) and the ops CLI.

mod client;
mod config;
mod daemon;
mod job;
mod loader;
mod runner;
mod scheduler;
mod server;
mod store;
mod wire;
mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::server::resp::Frame;

#[derive(Parser)]
#[command(name = "recd", version, about = "Precomputes recommendations and serves them over the Redis protocol")]
struct Cli {
    /// Daemon settings (default: the embedded defaults, relative to the working directory)
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: scheduler, store and sockets
    Serve {
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        admin_socket: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Ask the running daemon to run JOB now; waits, exits non-zero if the run fails
    Run {
        job: String,
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Print a user's list from a table, best first, read over the socket
    Get {
        table: String,
        user: String,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Check job files (default: every file in the jobs folder); exit 1 on any error
    Validate { files: Vec<PathBuf> },
    /// Ask the running daemon to re-read the jobs folder
    Reload {
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Tables, versions, jobs and job file errors of the running daemon
    Status {
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Internal: one job run, spawned by `recd serve`
    #[command(hide = true)]
    Worker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Cmd::Worker));
    if let Cmd::Worker = cli.command {
        return worker::main();
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("recd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RECD_LOG` takes tracing's filter syntax. A worker logs without
/// timestamps because the daemon re-logs its lines with its own.
fn init_tracing(worker: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RECD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    if worker {
        fmt.without_time().with_level(true).with_target(true).init();
    } else {
        fmt.init();
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Cmd::Serve { socket, admin_socket, data_dir } => {
            override_path(&mut config.socket, socket);
            override_path(&mut config.admin_socket, admin_socket);
            override_path(&mut config.data_dir, data_dir);
            serve(config)
        }
        Cmd::Run { job, admin_socket } => {
            override_path(&mut config.admin_socket, admin_socket);
            print_reply(client::call(&config.admin_socket, &[b"RUN", job.as_bytes()])?)
        }
        Cmd::Get { table, user, socket } => {
            override_path(&mut config.socket, socket);
            let key = format!("{table}:{user}");
            get(&config.socket, &key)
        }
        Cmd::Validate { files } => validate(&config, files),
        Cmd::Reload { admin_socket } => {
            override_path(&mut config.admin_socket, admin_socket);
            print_reply(client::call(&config.admin_socket, &[b"RELOAD"])?)
        }
        Cmd::Status { admin_socket } => {
            override_path(&mut config.admin_socket, admin_socket);
            print_reply(client::call(&config.admin_socket, &[b"STATUS"])?)
        }
        Cmd::Worker => unreachable!("handled in main"),
    }
}

fn override_path(slot: &mut PathBuf, value: Option<PathBuf>) {
    if let Some(v) = value {
        *slot = std::path::absolute(&v).unwrap_or(v);
    }
}

fn print_reply(frame: Frame) -> anyhow::Result<ExitCode> {
    match frame {
        Frame::Error(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
        Frame::Simple(s) => {
            println!("{s}");
            Ok(ExitCode::SUCCESS)
        }
        Frame::Bulk(b) => {
            print!("{}", String::from_utf8_lossy(&b));
            Ok(ExitCode::SUCCESS)
        }
        other => {
            println!("{other:?}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn get(socket: &Path, key: &str) -> anyhow::Result<ExitCode> {
    let frame = client::call(socket, &[b"ZREVRANGE", key.as_bytes(), b"0", b"-1", b"WITHSCORES"])?;
    let Frame::Array(items) = frame else { return print_reply(frame) };
    if items.is_empty() {
        eprintln!("no list for {key}");
        return Ok(ExitCode::FAILURE);
    }
    for (rank, pair) in items.chunks(2).enumerate() {
        if let [Frame::Bulk(item), Frame::Bulk(score)] = pair {
            println!("{:>3}  {:<12} {}", rank + 1, String::from_utf8_lossy(item), String::from_utf8_lossy(score));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(config: &Config, files: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let files = if files.is_empty() {
        let mut all: Vec<PathBuf> = std::fs::read_dir(&config.jobs_dir)
            .map_err(|e| anyhow::anyhow!("jobs folder {}: {e}", config.jobs_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        all.sort();
        all
    } else {
        files
    };
    let mut failed = 0;
    for file in &files {
        match job::load(file, config) {
            Ok(job) => println!(
                "ok    {} (table {}, schedule {})",
                file.display(),
                job.table,
                job.schedule.as_deref().unwrap_or("manual")
            ),
            Err(e) => {
                failed += 1;
                println!("error {e}");
            }
        }
    }
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve_async(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve_async(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    std::fs::create_dir_all(&config.data_dir)?;
    let store = store::Store::open(&config.data_dir, config.retain_versions)
        .map_err(|e| anyhow::anyhow!("opening the store in {}: {e}", config.data_dir.display()))?;
    let daemon = daemon::Daemon::new(config.clone(), store);
    if let Err(e) = daemon.reload().await {
        tracing::error!("{e:#}");
    }
    let read = bind(&config.socket, config.socket_mode)?;
    let admin = bind(&config.admin_socket, 0o600)?;
    daemon.start_scheduler().await?;
    tracing::info!(socket = %config.socket.display(), admin = %config.admin_socket.display(), "serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let read_server = tokio::spawn(server::run(read, stopped(stop_rx.clone()), daemon.clone(), server::Role::Read));
    let admin_server = tokio::spawn(server::run(admin, stopped(stop_rx), daemon.clone(), server::Role::Admin));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = stop_tx.send(true);
    let _ = read_server.await;
    let _ = admin_server.await;
    daemon.stop_scheduler().await;
    daemon.store.flush()?;
    for path in [&config.socket, &config.admin_socket] {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds a Unix socket, replacing a stale socket file but never a live daemon's.
fn bind(path: &Path, mode: u32) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use by a running daemon", path.display());
        }
        std::fs::remove_file(path)?;
    }
    // Bind under a temporary name, set the mode, then rename: the socket never exists at
    // its public path with the umask's looser permissions.
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        tokio::net::UnixListener::bind(&tmp).map_err(|e| anyhow::anyhow!("binding {}: {e}", path.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}
