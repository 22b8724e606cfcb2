//! Live reload: watches the jobs folder (the folder, not the files: editors save by writing
//! a temp file and renaming it over the original) and reloads after changes settle.
//! Access events are ignored, or our own reads of the files would trigger reloads forever.
//!
//! Folder events do not see everything the job set is read from: an edit of a job file
//! through a symlink (the event is in the target's folder), a jobs folder swapped or made
//! anew (the watch stays on the old one), a plugin file replaced (it lives elsewhere), an
//! input that a refused job waits for appearing. So every [`POLL`] the watcher also looks
//! at what those paths lead to, and reloads when that changed, as Prometheus's file discovery backs its events with a periodic re-read.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use crate::daemon::{self, Daemon};

/// How long changes must be quiet before a reload.
const SETTLE: Duration = Duration::from_millis(300);

/// How often the sources of the job set are looked at besides the folder's events.
const POLL: Duration = Duration::from_secs(1);

type FolderWatch = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// The watch on the jobs folder; it ends when this is dropped.
pub struct JobsWatcher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JobsWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The jobs folder and its files as the first reload will read them: taken before it, so
/// that an edit made while it runs is seen by the watcher that starts after it.
pub struct Baseline(Sources);

pub fn baseline(dir: &Path) -> Baseline {
    let (folder, job_files) = job_sources(dir);
    Baseline(Sources { folder, job_files, named: Vec::new() })
}

/// Starts watching `dir` for `daemon`, whose job set was loaded after `baseline`.
pub fn watch_jobs(dir: &Path, daemon: Weak<Daemon>, baseline: Baseline) -> JobsWatcher {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let folder = new_debouncer(SETTLE, None, move |result: DebounceEventResult| match result {
        Ok(events) => {
            if events.iter().any(|e| !matches!(e.kind, EventKind::Access(_))) {
                let _ = tx.send(());
            }
        }
        Err(errors) => errors.iter().for_each(|e| tracing::warn!("watching the jobs folder: {e}")),
    });
    let mut folder = folder
        .map_err(|e| tracing::warn!("cannot watch folders ({e}): changes to the jobs apply within {POLL:?} instead"))
        .ok();
    if let Some(folder) = &mut folder {
        start_watching(folder, dir);
    }
    let named = daemon.upgrade().map(|d| stamped(d.named_files().into_iter().collect())).unwrap_or_default();
    let seen = Sources { named, ..baseline.0 };
    let task = tokio::spawn(follow(dir.to_path_buf(), daemon, folder, rx, seen));
    JobsWatcher { task }
}

fn start_watching(folder: &mut FolderWatch, dir: &Path) {
    if let Err(e) = folder.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!("cannot watch the jobs folder {} ({e}): changes apply within {POLL:?}", dir.display());
    }
}

/// Reloads after the folder's events settle, and when [`Sources`] differ from those the
/// last reload read and have stayed so for a look (a file being written is not read half
/// way); watches the folder anew when the path leads to another one.
async fn follow(
    dir: PathBuf,
    daemon: Weak<Daemon>,
    mut folder: Option<FolderWatch>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<()>,
    mut seen: Sources,
) {
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Without a folder watch (or once it ended), the looks alone.
    let mut events_open = folder.is_some();
    let mut changing: Option<Sources> = None;
    loop {
        let event = tokio::select! {
            event = events.recv(), if events_open => {
                while events.try_recv().is_ok() {}
                events_open = event.is_some();
                event.is_some()
            }
            _ = poll.tick() => false,
        };
        let Some(daemon) = daemon.upgrade() else { return };
        let now = sources_now(&dir, &daemon).await;
        if !event {
            if now == seen {
                changing = None;
                continue;
            }
            // Changed since the last reload: reloaded once it is the same at the next look.
            if changing.as_ref() != Some(&now) {
                changing = Some(now);
                continue;
            }
        }
        changing = None;
        if now.folder != seen.folder
            && let Some(folder) = &mut folder
        {
            tracing::info!("jobs folder {} is another folder now: watching it", dir.display());
            let _ = folder.unwatch(&dir);
            start_watching(folder, &dir);
        }
        reload(&daemon, if event { "jobs folder changed" } else { "job files, plugins or data files changed" }).await;
        seen = read_by_the_reload(now, daemon.named_files());
    }
}

/// What a reload read, from the sources looked at before it (`before`) and the files the
/// reloaded jobs name (`named`): each file as it was before the reload where it was looked
/// at then, else unknown (a plugin replaced while the reload ran shows as a change at the
/// next look, at the cost of one reload more when a job names a new one).
fn read_by_the_reload(before: Sources, named: BTreeSet<PathBuf>) -> Sources {
    let named = named
        .into_iter()
        .map(|path| {
            let stamp = before.named.iter().find(|(p, _)| *p == path).and_then(|(_, s)| s.clone());
            (path, stamp)
        })
        .collect();
    Sources { named, ..before }
}

async fn sources_now(dir: &Path, daemon: &Arc<Daemon>) -> Sources {
    let (dir, daemon) = (dir.to_path_buf(), Arc::clone(daemon));
    tokio::task::spawn_blocking(move || Sources::now(&dir, &daemon)).await.unwrap_or_default()
}

/// What the job set is read from, as the file system shows it now: the folder the jobs
/// path leads to, each job and experiment file (through a symlink, its target), the
/// plugin file of each job the last reload read (in force or refused) and the data files
/// of those it refused, by identity, size and change times.
#[derive(Default, PartialEq)]
struct Sources {
    /// The folder's device and inode (its times change with every temp file in it).
    folder: Option<(u64, u64)>,
    job_files: Stamps,
    named: Stamps,
}

/// Files and their stamps (None: not there, or not known).
type Stamps = Vec<(PathBuf, Option<FileStamp>)>;

#[derive(Clone, PartialEq)]
struct FileStamp {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            device: m.dev(),
            inode: m.ino(),
            size: m.size(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
        })
    }
}

impl Sources {
    fn now(dir: &Path, daemon: &Daemon) -> Sources {
        let (folder, job_files) = job_sources(dir);
        Sources { folder, job_files, named: stamped(daemon.named_files().into_iter().collect()) }
    }
}

/// Reloads and logs the outcome; shared by the watcher and SIGHUP.
pub async fn reload(daemon: &Arc<Daemon>, why: &str) {
    match daemon.reload().await {
        Ok(errors) if errors.is_empty() => tracing::info!("{why}: jobs reloaded"),
        Ok(errors) => {
            tracing::warn!("{why}: jobs reloaded, {} file(s) rejected (previous definitions kept)", errors.len())
        }
        Err(e) => tracing::error!("{why}: reload failed: {e:#}"),
    }
}

/// The folder's identity and each job and experiment file's stamp.
fn job_sources(dir: &Path) -> (Option<(u64, u64)>, Stamps) {
    let mut job_files = daemon::job_files(dir).unwrap_or_default();
    job_files.extend(daemon::experiment_files(dir).unwrap_or_default());
    (FileStamp::of(dir).map(|f| (f.device, f.inode)), stamped(job_files))
}

fn stamped(paths: Vec<PathBuf>) -> Stamps {
    paths
        .into_iter()
        .map(|path| {
            let stamp = FileStamp::of(&path);
            (path, stamp)
        })
        .collect()
}
