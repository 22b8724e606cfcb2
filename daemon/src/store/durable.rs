//! The fsyncs that make sled's writes durable (see `Handles::sync`). sled's flush writes its
//! log out with `sync_file_range`, which neither writes the file's metadata nor flushes the
//! drive's cache; sled never syncs the files it keeps large values in (`blobs/`), nor its
//! folders after it creates, renames or removes a file. Not `syncfs` either: FUSE
//! filesystems other than virtiofs ignore it, and on a shared disk it also waits for
//! everything else waiting to be written there.

use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// sled's files in a data dir, and what of them is already synced.
pub(super) struct SledFiles {
    dir: PathBuf,
    /// The log, the data dir and `blobs/`, opened with the store: a write-back error the
    /// kernel records later is reported to these handles' fsync even when another handle
    /// (sled's flusher fsyncs the log on its own) has seen it first.
    log: File,
    folder: File,
    blobs: File,
    /// sled's other files (`conf`, snapshots, blobs) as they were when last fsynced. sled
    /// writes each of them once, so a sync fsyncs only the new ones and the ones still
    /// growing, and the two folders only when a name came or went.
    synced: Mutex<HashMap<PathBuf, (u64, SystemTime)>>,
}

impl SledFiles {
    /// Opens the handles of a data dir sled has just opened (it made `db` and `blobs/`),
    /// and fsyncs the folder holding the data dir, which recd may have just created.
    pub(super) fn open(dir: &Path) -> std::io::Result<SledFiles> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Best effort: the parent may not be recd's to open, nor to sync.
            if let Err(e) = File::open(parent).and_then(|p| p.sync_all()) {
                tracing::debug!(folder = %parent.display(), error = %e, "could not fsync the data dir's folder");
            }
        }
        Ok(SledFiles {
            dir: dir.to_path_buf(),
            log: File::open(dir.join("db"))?,
            folder: File::open(dir)?,
            blobs: File::open(dir.join("blobs"))?,
            synced: Mutex::new(HashMap::new()),
        })
    }

    /// fsyncs the log, then each of sled's other files not yet synced as it is now, then
    /// the folders if their names changed since the last sync.
    pub(super) fn sync(&self) -> std::io::Result<()> {
        self.log.sync_all()?;
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let mut now = HashMap::with_capacity(synced.len());
        let blobs = self.dir.join("blobs");
        for (folder, all) in [(self.dir.as_path(), false), (blobs.as_path(), true)] {
            for entry in std::fs::read_dir(folder)? {
                let path = entry?.path();
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if !(all || name == "conf" || name.starts_with("snap.")) {
                    continue;
                }
                // sled removes old blobs and snapshots while it runs: a file gone is skipped.
                let Some(state) = skip_gone(std::fs::metadata(&path))? else { continue };
                if !state.is_file() {
                    continue;
                }
                let state = (state.len(), state.modified()?);
                if synced.get(&path) != Some(&state) {
                    let Some(file) = skip_gone(File::open(&path))? else { continue };
                    file.sync_all()?;
                }
                now.insert(path, state);
            }
        }
        let names_changed = now.len() != synced.len() || now.keys().any(|p| !synced.contains_key(p));
        // Recorded only once the folders are synced: a failed sync is tried again whole.
        if names_changed {
            self.folder.sync_all()?;
            self.blobs.sync_all()?;
        }
        *synced = now;
        Ok(())
    }
}

/// The value, or None where the file is gone.
fn skip_gone<T>(result: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match result {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        other => other.map(Some),
    }
}
