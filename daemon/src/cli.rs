//! The command line: parses `recd`'s arguments and dispatches each subcommand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::resp::Frame;
use crate::{client, daemon, evaluate, export, job, plugins, server, shard, store, systemd, watch, wire, worker};

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
#[allow(clippy::large_enum_variant, reason = "parsed once per process; boxing would only obscure clap's derive")]
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
    /// Ask the running daemon to run JOB now; waits, exits non-zero if the run fails. With
    /// --export, run it here without a daemon and write its table as Parquet into DIR
    Run {
        job: String,
        #[arg(long)]
        admin_socket: Option<PathBuf>,
        /// Write the run's rows as a Parquet part and its manifest into DIR (no daemon)
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
        /// Keep only shard I of N of the users (with --export); default: from
        /// JOB_COMPLETION_INDEX and RECD_SHARDS when set, as in a Kubernetes Indexed Job
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
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
    /// Each job with its next fire times in its zone
    Jobs {
        /// Fire times shown per job
        #[arg(long, default_value_t = 3)]
        next: usize,
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// The newest runs of JOB (JSON): trigger, times, status, version, rows, error
    History {
        job: String,
        #[arg(long, default_value_t = 20)]
        last: usize,
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Stop scheduled and chained runs of JOB (kept across restarts)
    Pause {
        job: String,
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Undo `recd pause JOB`
    Resume {
        job: String,
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Make a retained version of TABLE current again (default: the one before the current)
    Rollback {
        table: String,
        version: Option<u64>,
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Publish the parts `recd run JOB --export` wrote for TABLE (every shard, from one
    /// run) as one new version, through the running daemon; a set that is incomplete or
    /// mixed is refused with the reason and nothing is published
    Import {
        table: String,
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Copy the store in FROM into a new store in TO (sled export/import, verified before and
    /// after); for moving data between store formats. Run it with the daemon stopped.
    Migrate {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
    },
    /// Check every table's current version against its published checksum, and that no
    /// staging data is left; exit 1 on any finding
    Verify {
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Quality of a published list table (or, with --churn, a churn table) against
    /// interactions after a cut-off
    Eval {
        #[command(flatten)]
        args: evaluate::EvalArgs,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Plugin files: the build each holds (name, version, ABI, SHA-256), when it was first
    /// seen there, and the latest run that loaded it
    Plugins {
        #[arg(long)]
        admin_socket: Option<PathBuf>,
    },
    /// Internal: one job run, spawned by `recd serve`
    #[command(hide = true)]
    Worker,
    /// Internal: load a plugin and check params (stdin) in a throwaway process
    #[command(hide = true)]
    ProbePlugin { path: PathBuf },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Cmd::Worker => {
            init_tracing(LogStyle::Worker);
            return worker::main();
        }
        Cmd::ProbePlugin { path } => return worker::probe(path),
        _ => {}
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
#[derive(PartialEq)]
enum LogStyle {
    Human,
    Json,
    Worker,
}

/// Filters come from `RECD_LOG`, else `RUST_LOG`, in tracing's syntax.
fn init_tracing(style: LogStyle) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RECD_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    match style {
        LogStyle::Human => fmt.init(),
        LogStyle::Json => fmt.json().with_current_span(true).init(),
        LogStyle::Worker => fmt.without_time().with_level(true).with_target(true).init(),
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref());
    let json = matches!((&cli.command, &config), (Cmd::Serve { .. }, Ok(c)) if c.log_json);
    init_tracing(if json { LogStyle::Json } else { LogStyle::Human });
    let mut config = config?;
    match cli.command {
        Cmd::Serve { socket, admin_socket, data_dir } => {
            override_path(&mut config.socket, socket);
            override_path(&mut config.admin_socket, admin_socket);
            override_path(&mut config.data_dir, data_dir);
            serve(config)
        }
        Cmd::Run { job, admin_socket, export: Some(dir), shard } => {
            anyhow::ensure!(admin_socket.is_none(), "--export runs without a daemon: drop --admin-socket");
            let shard = match shard {
                Some(text) => shard::Shard::parse(&text)?,
                None => shard::Shard::from_env(|k| std::env::var(k).ok())?.unwrap_or(shard::Shard::WHOLE),
            };
            let manifest = export::export(&config, &job, &dir, shard)?;
            println!(
                "job {} shard {}: {} users, {} rows exported to {}",
                manifest.job,
                manifest.shard,
                manifest.users,
                manifest.rows,
                dir.join(&manifest.part).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { job, admin_socket, export: None, shard } => {
            anyhow::ensure!(shard.is_none(), "--shard needs --export DIR: a daemon's run covers every user");
            override_path(&mut config.admin_socket, admin_socket);
            run(&config.admin_socket, &job)
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
        Cmd::Jobs { next, admin_socket } => {
            override_path(&mut config.admin_socket, admin_socket);
            print_reply(client::call(&config.admin_socket, &[b"JOBS", next.to_string().as_bytes()])?)
        }
        Cmd::History { job, last, admin_socket } => {
            override_path(&mut config.admin_socket, admin_socket);
            print_reply(client::call(&config.admin_socket, &[b"HISTORY", job.as_bytes(), last.to_string().as_bytes()])?)
        }
        Cmd::Pause { job, admin_socket } => {
            override_path(&mut config.admin_socket, admin_socket);
            print_reply(client::call(&config.admin_socket, &[b"PAUSE", job.as_bytes()])?)
        }
        Cmd::Resume { job, admin_socket } => {
            override_path(&mut config.admin_socket, admin_socket);
            print_reply(client::call(&config.admin_socket, &[b"RESUME", job.as_bytes()])?)
        }
        Cmd::Eval { args, json, socket } => {
            override_path(&mut config.socket, socket);
            if args.churn {
                let report = evaluate::run_churn(&args, &config.socket)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", evaluate::render_churn(&report));
                }
                return Ok(ExitCode::SUCCESS);
            }
            let report = evaluate::run(&args, &config.socket)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", evaluate::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Plugins { admin_socket } => {
            override_path(&mut config.admin_socket, admin_socket);
            print_reply(client::call(&config.admin_socket, &[b"PLUGINS"])?)
        }
        Cmd::Rollback { table, version, admin_socket } => {
            override_path(&mut config.admin_socket, admin_socket);
            let version = version.map(|v| v.to_string());
            let mut args: Vec<&[u8]> = vec![b"ROLLBACK", table.as_bytes()];
            args.extend(version.as_deref().map(str::as_bytes));
            print_reply(client::call(&config.admin_socket, &args)?)
        }
        Cmd::Import { table, dirs, admin_socket } => {
            override_path(&mut config.admin_socket, admin_socket);
            // The daemon reads the folders from its own working directory.
            let dirs: Vec<String> = dirs
                .iter()
                .map(|d| std::path::absolute(d).map(|p| p.display().to_string()))
                .collect::<Result<_, _>>()?;
            let mut args: Vec<&[u8]> = vec![b"IMPORT", table.as_bytes()];
            args.extend(dirs.iter().map(|d| d.as_bytes()));
            print_reply(client::call(&config.admin_socket, &args)?)
        }
        Cmd::Migrate { from, to } => {
            // The copy is as private as the daemon's own store.
            crate::fsutil::private_umask();
            let tables = store::Store::migrate(&from, &to)?;
            crate::fsutil::make_private_dir(&to)?;
            println!("migrated {tables} tables from {} to {}", from.display(), to.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { admin_socket } => {
            override_path(&mut config.admin_socket, admin_socket);
            print_reply(client::call(&config.admin_socket, &[b"VERIFY"])?)
        }
        Cmd::Worker | Cmd::ProbePlugin { .. } => unreachable!("handled in main"),
    }
}

/// `recd run JOB`: waits for the run; in a terminal, draws a progress bar from the
/// plugin's progress reports (polled on a second connection).
fn run(admin: &Path, job: &str) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bar = std::io::stderr().is_terminal().then(|| {
        let (admin, job, done) = (admin.to_path_buf(), job.to_string(), Arc::clone(&done));
        std::thread::spawn(move || progress_bar(&admin, &job, &done))
    });
    let reply = client::call(admin, &[b"RUN", job.as_bytes()]);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(bar) = bar {
        let _ = bar.join();
    }
    print_reply(reply?)
}

fn progress_bar(admin: &Path, job: &str, done: &std::sync::atomic::AtomicBool) {
    let bar = indicatif::ProgressBar::new(0).with_message(job.to_string());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(Frame::Array(v)) = client::call(admin, &[b"PROGRESS", job.as_bytes()])
            && let [Frame::Integer(d), Frame::Integer(t)] = v.as_slice()
        {
            bar.set_length(*t as u64);
            bar.set_position(*d as u64);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
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

/// Checks every given file (default: the jobs folder) and reports all errors at once.
/// `after` links are checked against the folder's jobs with the given files in place.
fn validate(config: &Config, files: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let folder = daemon::job_files(&config.jobs_dir).unwrap_or_default();
    let files = if files.is_empty() { folder.clone() } else { files };
    let mut set = std::collections::BTreeMap::new();
    for file in &folder {
        if let Ok(job) = job::load(file, config) {
            set.insert(job.name.clone(), job);
        }
    }
    let mut errors: Vec<(PathBuf, String)> = Vec::new();
    let mut checked = Vec::new();
    for file in &files {
        // The plugin judges its params and its inputs' schemas, and the model its input
        // bindings, in a probe process.
        let outcome = job::load(file, config).and_then(|job| {
            plugins::probe(&job.plugin, &wire::ProbeRequest::for_job(&job, &config.onnxruntime))
                .and_then(|desc| plugins::check_name(&job, &desc))
                .map_err(|(field, message)| job.probe_error(&field, message))?;
            Ok(job)
        });
        match outcome {
            Ok(job) => {
                checked.push(job.name.clone());
                set.insert(job.name.clone(), job);
            }
            Err(e) => errors.push((file.clone(), e.to_string())),
        }
    }
    let mut refused = job::check_links(&set);
    refused.extend(job::check_tables(&set, &|_| None));
    for (file, e) in refused {
        if checked.contains(&job::job_name(Path::new(&file))) {
            errors.push((PathBuf::from(file), e.to_string()));
        }
    }
    for name in &checked {
        let job = &set[name];
        if !errors.iter().any(|(f, _)| job::job_name(f) == *name) {
            let when = match (&job.schedule, job.after.is_empty()) {
                (Some(s), _) => format!("{:?} ({})", s.expr, s.tz),
                (None, false) => format!("after {}", job.after.join(", ")),
                (None, true) => "manual".into(),
            };
            println!("ok    {} (table {}, schedule {when})", job.file.display(), job.table);
        }
    }
    for (_, e) in &errors {
        println!("error {e}");
    }
    Ok(if errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve_async(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve_async(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    // Everything recd writes from here on is private to its user, and so is what an older
    // recd or a looser umask left in the data folder.
    crate::fsutil::private_umask();
    let fixed = crate::fsutil::make_private_dir(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("securing the data folder {}: {e}", config.data_dir.display()))?;
    if fixed > 0 {
        tracing::warn!(entries = fixed, dir = %config.data_dir.display(), "made the data folder private (0700/0600)");
    }
    let store = store::Store::open_with(&config.data_dir, config.retention, config.caches)
        .map_err(|e| anyhow::anyhow!("opening the store in {}: {e}", config.data_dir.display()))?;
    crate::run::remove_leftover_run_dirs(&config.data_dir);
    let daemon = daemon::Daemon::new(config.clone(), store);
    if let Err(e) = daemon.reload().await {
        tracing::error!("{e:#}");
    }
    daemon.start_scheduler().await?;
    daemon.watch_store(Duration::from_secs(2));
    // Watching before the sockets exist: a client that connects and then writes a job file
    // (as the tests do) must not be able to beat the watcher to it.
    let _watcher = watch::watch_jobs(&config.jobs_dir, Arc::downgrade(&daemon))
        .map_err(|e| tracing::error!("live reload is off: cannot watch {}: {e}", config.jobs_dir.display()))
        .ok();
    let read = bind(&config.socket, config.socket_mode)?;
    let admin = bind(&config.admin_socket, 0o600)?;
    tracing::info!(socket = %config.socket.display(), admin = %config.admin_socket.display(), "serving");
    systemd::notify("READY=1");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    if let Some(addr) = config.metrics_listen {
        let (daemon, stop) = (daemon.clone(), stopped(stop_rx.clone()));
        tokio::spawn(async move {
            if let Err(e) = server::http::serve_http(addr, daemon, stop).await {
                tracing::error!("metrics endpoint on {addr}: {e}");
            }
        });
    }
    let read_server = tokio::spawn(server::run(read, stopped(stop_rx.clone()), daemon.clone(), server::Role::Read));
    let admin_server = tokio::spawn(server::run(admin, stopped(stop_rx), daemon.clone(), server::Role::Admin));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break }
            // A reload may wait on plugin probes: never in the way of SIGTERM.
            _ = hup.recv() => {
                let daemon = Arc::clone(&daemon);
                tokio::spawn(async move { watch::reload(&daemon, "SIGHUP").await });
            }
        }
    }
    systemd::notify("STOPPING=1");
    // Reads go on while running jobs get their grace period; a second signal ends it.
    tokio::select! {
        () = daemon.shutdown(Duration::from_secs(config.shutdown_grace_seconds)) => {}
        _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
            tracing::warn!("second signal: cancelling running jobs now");
            daemon.shutdown(Duration::ZERO).await;
        }
    }
    let _ = stop_tx.send(true);
    let _ = read_server.await;
    let _ = admin_server.await;
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
        create_socket_dir(dir)?;
    }
    check_socket_path(path)?;
    // Bind under a temporary name, set the mode, then rename: the socket never exists at
    // its public path with the umask's looser permissions.
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        tokio::net::UnixListener::bind(&tmp).map_err(|e| anyhow::anyhow!("binding {}: {e}", path.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    // Checked again: the rename would replace whatever appeared there meanwhile.
    if let Err(e) = check_socket_path(path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

/// Creates the folders of a socket path that are missing, 0755: the process umask is
/// private (0077), but apps of the socket's group must be able to reach it.
fn create_socket_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    for d in missing.into_iter().rev() {
        std::fs::create_dir(d).map_err(|e| anyhow::anyhow!("creating {}: {e}", d.display()))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Makes way for a socket at `path`: nothing there, or a stale socket (removed). A live
/// daemon's socket, and anything that is not a socket (a file, a folder, a symlink), is
/// refused and left as it is.
fn check_socket_path(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    };
    if !meta.file_type().is_socket() {
        let what = crate::fsutil::kind_name(&meta.file_type());
        anyhow::bail!(
            "{} exists and is {what}: refusing to replace it with a socket (only a stale socket is replaced; remove it or choose another path)",
            path.display()
        );
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!("{} is in use by a running daemon", path.display());
    }
    std::fs::remove_file(path)?;
    Ok(())
}
