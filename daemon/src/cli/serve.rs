//! `recd serve`: opens the store, loads the jobs, starts the scheduler, the job watcher,
//! the sockets and the metrics listener, then waits for a signal and shuts down in order.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::{daemon, server, store, systemd, watch};

pub(super) fn serve(config: Config) -> anyhow::Result<ExitCode> {
    return_freed_memory_while_idle();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve_async(config))?;
    Ok(ExitCode::SUCCESS)
}

/// Starts jemalloc's background threads, which hand freed pages back to the system within
/// about 10 s of their being freed. Without them jemalloc purges only as the daemon
/// allocates and frees, so what an idle daemon keeps depends on what it did last
/// (docs/internals.md, "Memory allocator"). An operator's `_RJEM_MALLOC_CONF` that names
/// `background_thread` decides instead.
fn return_freed_memory_while_idle() {
    if std::env::var("_RJEM_MALLOC_CONF").is_ok_and(|conf| conf.contains("background_thread")) {
        return;
    }
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(
            "jemalloc's background threads did not start ({e}): freed memory is returned only as the daemon allocates"
        );
    }
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
    crate::models::remove_leftover_staging(&config.data_dir);
    let daemon = daemon::Daemon::new(config.clone(), store);
    let jobs_as_read = watch::baseline(&config.jobs_dir);
    if let Err(e) = daemon.reload().await {
        tracing::error!("{e:#}");
    }
    daemon.start_scheduler().await?;
    daemon.watch_store(Duration::from_secs(2));
    // Watching before the sockets exist: a client that connects and then writes a job file
    // (as the tests do) must not be able to beat the watcher to it.
    let _watcher = watch::watch_jobs(&config.jobs_dir, Arc::downgrade(&daemon), jobs_as_read);
    let read = bind(&config.socket, config.socket_mode)?;
    let admin = bind(&config.admin_socket, 0o600)?;
    let readers = server::ReadServer::start(config.serve_threads, &daemon)
        .map_err(|e| anyhow::anyhow!("starting the serving threads: {e}"))?;
    tracing::info!(socket = %config.socket.display(), admin = %config.admin_socket.display(), "serving");
    systemd::notify("READY=1");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    if let Some(addr) = config.metrics_listen {
        server::http::spawn(addr, daemon.clone(), stopped(stop_rx.clone()));
    }
    let read_server = tokio::spawn(server::serve_reads(read, readers, stopped(stop_rx.clone()), daemon.clone()));
    let admin_server = tokio::spawn(server::serve_admin(admin, stopped(stop_rx), daemon.clone()));

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
    // Records a skipped or imported run left in the blocking pool's queue (which does not
    // run queued tasks at shutdown), and waits for one being written.
    let d = Arc::clone(&daemon);
    let _ = tokio::task::spawn_blocking(move || d.write_unrecorded()).await;
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
