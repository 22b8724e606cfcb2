//! The fsyncs that make sled's writes durable (see `Handles::sync`). sled's flush writes its
//! log out with `sync_file_range`, which neither writes the file's metadata nor flushes the
//! drive's cache; sled never syncs the files it keeps large values in (`blobs/`), nor its
//! folders after it creates, renames or removes a file. Not `syncfs` either: FUSE
//! filesystems other than virtiofs ignore it, and on a shared disk it also waits for
//! everything else waiting to be written there.

use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::flusher::{FlusherMark, io_error};

/// sled's files in a data dir, and what of them is already synced.
pub(super) struct SledFiles {
    dir: PathBuf,
    /// The log, the data dir and `blobs/`, opened with the store: a write-back error the
    /// kernel records later is reported to these handles' fsync even when another handle
    /// (sled's flusher fsyncs the log on its own) has seen it first.
    log: File,
    folder: File,
    blobs: File,
    /// Syncs run one at a time, so that a failed one is seen by the next (see `Synced`).
    synced: Mutex<Synced>,
    /// The failures only sled's flusher is told of, from when sled opened the database.
    flusher: FlusherMark,
}

/// What the syncs so far made durable.
#[derive(Default)]
struct Synced {
    /// sled's files other than the log (`conf`, snapshots, blobs) as they were when last
    /// fsynced: sled writes each once, so a sync fsyncs only the new ones and those still
    /// growing, and the two folders only when a name came or went.
    files: HashMap<PathBuf, FileState>,
    /// Why a sync failed, once one has. Linux reports a write-back error to one fsync per
    /// handle and marks the lost pages clean: a later fsync would succeed with the data
    /// lost. So every later sync through these handles fails too; the store opens again
    /// (`Store::recover`), after [`forget_cached`].
    failed: Option<String>,
}

/// A file's identity and size as it was synced (sled replaces a snapshot under the same
/// name when nothing changed; the inode tells a new file from the old).
type FileState = (u64, u64, i64, i64);

#[cfg(test)]
thread_local! {
    /// Test hook: the next sync on this thread fails as an fsync reporting EIO would.
    pub(super) static FAIL_NEXT_SYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl SledFiles {
    /// Opens the handles of a data dir sled has just opened (it made `db` and `blobs/`),
    /// then syncs: sled's open writes, and what a killed daemon left in the page cache
    /// becomes durable before anything is served from it. Also fsyncs the folder holding
    /// the data dir, which recd may have just created.
    pub(super) fn open(dir: &Path, log: Option<File>, flusher: FlusherMark) -> std::io::Result<SledFiles> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Best effort: the parent may not be recd's to open, nor to sync.
            if let Err(e) = File::open(parent).and_then(|p| p.sync_all()) {
                tracing::debug!(folder = %parent.display(), error = %e, "could not fsync the data dir's folder");
            }
        }
        let files = SledFiles {
            dir: dir.to_path_buf(),
            log: log.map_or_else(|| File::open(dir.join("db")), Ok)?,
            folder: File::open(dir)?,
            blobs: File::open(dir.join("blobs"))?,
            synced: Mutex::new(Synced::default()),
            flusher,
        };
        files.sync()?;
        Ok(files)
    }

    /// sled's flusher thread's last error, where it logged one since the database opened.
    pub(super) fn flusher_failure(&self) -> Option<String> {
        self.flusher.failure()
    }

    /// fsyncs the log, then each of sled's other files not yet synced as it is now, then
    /// the folders if their names changed since the last sync.
    pub(super) fn sync(&self) -> std::io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cause) = &synced.failed {
            return Err(std::io::Error::other(format!("an earlier sync of the store failed ({cause})")));
        }
        // Checked after the fsyncs too: the flusher's fsync may have failed while they
        // waited for it, and what it lost be among what they were to make durable.
        let flusher_sound = || self.flusher.failure().map_or(Ok(()), |f| Err(io_error(f)));
        let fsynced = flusher_sound()
            .and_then(|()| self.fsync_files(&synced.files))
            .and_then(|files| flusher_sound().map(|()| files));
        match fsynced {
            Ok(files) => {
                synced.files = files;
                Ok(())
            }
            Err(e) => {
                synced.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The fsyncs of [`SledFiles::sync`]; the files' states once done.
    fn fsync_files(&self, synced: &HashMap<PathBuf, FileState>) -> std::io::Result<HashMap<PathBuf, FileState>> {
        #[cfg(test)]
        if FAIL_NEXT_SYNC.with(|f| f.replace(false)) {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        self.log.sync_all()?;
        let mut now = HashMap::with_capacity(synced.len());
        for path in sled_files(&self.dir)? {
            // sled removes old blobs and snapshots while it runs: a file gone is skipped.
            let Some(meta) = skip_gone(std::fs::metadata(&path))? else { continue };
            if !meta.is_file() {
                continue;
            }
            let state = (meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec());
            if synced.get(&path) != Some(&state) {
                let Some(file) = skip_gone(File::open(&path))? else { continue };
                file.sync_all()?;
            }
            now.insert(path, state);
        }
        if now.len() != synced.len() || now.keys().any(|p| !synced.contains_key(p)) {
            self.folder.sync_all()?;
            self.blobs.sync_all()?;
        }
        Ok(now)
    }
}

/// Drops from the page cache what it holds of sled's files in `dir`, before sled opens them
/// again after a failed write: pages whose write-back failed stay cached, marked clean,
/// and sled would read back data the disk does not hold. Best effort (dirty pages stay).
pub(super) fn forget_cached(dir: &Path) {
    for path in [dir.join("db")].into_iter().chain(sled_files(dir).unwrap_or_default()) {
        let dropped = File::open(&path)
            .and_then(|f| rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).map_err(Into::into));
        if let Err(e) = dropped {
            tracing::debug!(file = %path.display(), error = %e, "could not drop a store file's cached pages");
        }
    }
}

/// sled's files in data dir `dir` other than its log: `conf`, its snapshots, and all of
/// `blobs/`.
fn sled_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name == "conf" || name.starts_with("snap.") {
            paths.push(path);
        }
    }
    for entry in std::fs::read_dir(dir.join("blobs"))? {
        paths.push(entry?.path());
    }
    Ok(paths)
}

/// The value, or None where the file is gone.
fn skip_gone<T>(result: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match result {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        other => other.map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::super::flusher::FlusherErrors;
    use super::*;

    /// A mark on errors no flusher records.
    fn no_flusher_errors() -> FlusherMark {
        static NONE: FlusherErrors = FlusherErrors::new();
        FlusherMark::now(&NONE)
    }

    #[test]
    fn a_failed_sync_fails_every_later_one_until_the_files_are_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.insert(b"k", b"v").unwrap();
        let files = SledFiles::open(dir.path(), None, no_flusher_errors()).unwrap();
        assert!(files.synced.lock().unwrap().files.keys().any(|p| p.ends_with("conf")), "conf synced at open");
        files.sync().unwrap();
        FAIL_NEXT_SYNC.with(|f| f.set(true));
        assert_eq!(files.sync().unwrap_err().raw_os_error(), Some(5));
        // The write-back error is reported once; the next fsync would succeed: refused.
        let again = files.sync().unwrap_err().to_string();
        assert!(again.contains("an earlier sync of the store failed"), "{again}");
        forget_cached(dir.path());
        let reopened = SledFiles::open(dir.path(), None, no_flusher_errors()).unwrap();
        reopened.sync().unwrap();
    }

    #[test]
    fn an_error_sleds_flusher_logged_fails_the_next_sync_and_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        static ERRORS: FlusherErrors = FlusherErrors::new();
        let errors = &ERRORS;
        let files = SledFiles::open(dir.path(), None, FlusherMark::now(errors)).unwrap();
        db.insert(b"k", b"v").unwrap();
        files.sync().unwrap();
        errors.record("failed to fsync from periodic flush thread: Input/output error (os error 5)".into());
        let err = files.sync().unwrap_err().to_string();
        assert!(err.starts_with("sled's flusher thread failed: failed to fsync"), "{err}");
        let again = files.sync().unwrap_err().to_string();
        assert!(again.contains("an earlier sync of the store failed (sled's flusher thread failed"), "{again}");
        // Files opened after the error (the reopen) sync again.
        SledFiles::open(dir.path(), None, FlusherMark::now(errors)).unwrap().sync().unwrap();
    }

    #[test]
    fn a_full_disk_sleds_flusher_met_as_the_store_opens_is_seen_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let _db = sled::Config::new().path(dir.path()).open().unwrap();
        static ERRORS: FlusherErrors = FlusherErrors::new();
        let mark = FlusherMark::now(&ERRORS);
        let enospc = std::io::Error::from_raw_os_error(28);
        ERRORS.record(format!("failed to fsync from periodic flush thread: {enospc}"));
        let Err(err) = SledFiles::open(dir.path(), None, mark) else { panic!("the open's first sync fails") };
        assert!(err.to_string().starts_with("sled's flusher thread failed: failed to fsync"), "{err}");
        // What `Store::open_with` checks before it gives up the disk's reserve and tries again.
        let err = crate::store::StoreError::Sled(sled::Error::Io(err));
        assert!(crate::store::reserve::is_disk_full(&err), "{err}");
    }
}
