//! Live reload: watches the jobs folder (the folder, not the files: editors save by writing
//! a temp file and renaming it over the original) and reloads after changes settle.
//! Access events are ignored, or our own reads of the files would trigger reloads forever.

use std::path::Path;
use std::sync::Weak;
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use crate::daemon::Daemon;

/// How long changes must be quiet before a reload.
const SETTLE: Duration = Duration::from_millis(300);

pub type JobsWatcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Starts watching `dir`; the watch lasts as long as the returned value.
pub fn watch_jobs(dir: &Path, daemon: Weak<Daemon>) -> anyhow::Result<JobsWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut debouncer = new_debouncer(SETTLE, None, move |result: DebounceEventResult| match result {
        Ok(events) => {
            if events.iter().any(|e| !matches!(e.kind, EventKind::Access(_))) {
                let _ = tx.send(());
            }
        }
        Err(errors) => errors.iter().for_each(|e| tracing::warn!("watching the jobs folder: {e}")),
    })?;
    debouncer.watch(dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            let Some(daemon) = daemon.upgrade() else { return };
            reload(&daemon, "jobs folder changed").await;
        }
    });
    Ok(debouncer)
}

/// Reloads and logs the outcome; shared by the watcher and SIGHUP.
pub async fn reload(daemon: &std::sync::Arc<Daemon>, why: &str) {
    match daemon.reload().await {
        Ok(errors) if errors.is_empty() => tracing::info!("{why}: jobs reloaded"),
        Ok(errors) => {
            tracing::warn!("{why}: jobs reloaded, {} file(s) rejected (previous definitions kept)", errors.len())
        }
        Err(e) => tracing::error!("{why}: reload failed: {e:#}"),
    }
}
