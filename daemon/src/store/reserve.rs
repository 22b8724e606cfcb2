//! Disk space the store keeps for itself in a file of the data folder (`.recd-reserve`).
//!
//! sled cannot open on a disk with no free space: a daemon restarted on a full disk would
//! not start. The reserve is given back to the disk for an open that fails for space, and
//! made again as soon as the disk has room for it twice over.
//!
//! And a version being written stops once the disk has less free than the reserve's size
//! (checked by the store's writer threads before each batch, [`FreeSpace`]): a run's own
//! rows do not fill the disk, and they are dropped while there is still room to. (A disk
//! that something else fills between two checks fails sled's writes: the store then takes
//! writes again once space is freed, `Store::recover`.)
//!
//! sled keeps the space of dropped versions in its files and writes new ones into it: its
//! files do not shrink. After a run was stopped the disk can stay below that line while
//! sled has room inside; a run that begins there may write on, as long as its writes do not
//! take more than [`SLACK`] of the disk's free space, and none begins with less than twice
//! that free.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub(super) const RESERVE_FILE: &str = ".recd-reserve";

pub(super) struct Reserve {
    path: PathBuf,
    bytes: u64,
    /// Held while the file is made or given back: the two never interleave.
    work: Mutex<()>,
    /// Held only to read or note it: `recd status` reads it on the runtime's threads.
    state: Mutex<Missing>,
}

/// Why the reserve is not in place, while it is not.
#[derive(Default)]
struct Missing {
    /// What it was given back for.
    given_back: Option<String>,
    /// Why it could not be made (again).
    no_room: Option<String>,
}

impl Reserve {
    /// A reserve of `bytes` in `dir`; 0 keeps none.
    pub(super) fn new(dir: &Path, bytes: u64) -> Reserve {
        Reserve { path: dir.join(RESERVE_FILE), bytes, work: Mutex::default(), state: Mutex::default() }
    }

    /// Makes the reserve file whole if it is missing or short (and cuts it if it is longer;
    /// with a reserve of 0, removes it); while the disk has no room for it, says why in
    /// [`Reserve::missing`] and keeps what there is of it.
    pub(super) fn make(&self) {
        let _work = self.work.lock().expect("reserve work");
        if self.bytes == 0 {
            let _ = std::fs::remove_file(&self.path);
            return;
        }
        let made = allocate(&self.path, self.bytes);
        let mut state = self.state.lock().expect("reserve");
        match made {
            Ok(()) => {
                if std::mem::take(&mut *state).no_room.is_some() {
                    tracing::info!(file = %self.path.display(), "the store's disk reserve is in place again");
                }
            }
            Err(e) => {
                if state.no_room.is_none() {
                    tracing::warn!(
                        file = %self.path.display(),
                        "no room for the store's {} MiB disk reserve ({e}): free space on the data disk",
                        self.bytes >> 20
                    );
                }
                state.no_room =
                    Some(format!("no room for its {} MiB in {}: {e}", self.bytes >> 20, self.path.display()));
            }
        }
    }

    /// Gives the reserve's space back to the disk, `to` do what needs it; false when there
    /// is no reserve to give.
    pub(super) fn release(&self, to: &str) -> bool {
        let _work = self.work.lock().expect("reserve work");
        let regular = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_file());
        if self.bytes == 0 || !regular || std::fs::remove_file(&self.path).is_err() {
            return false;
        }
        tracing::warn!(file = %self.path.display(), "the data disk is full: the store's disk reserve is given back {to}");
        self.state.lock().expect("reserve").given_back = Some(format!("given back {to}"));
        true
    }

    /// Why the reserve is not in place (none when it is, or when none is kept).
    pub(super) fn missing(&self) -> Option<String> {
        let state = self.state.lock().expect("reserve");
        match (&state.given_back, &state.no_room) {
            (None, None) => None,
            (Some(why), None) | (None, Some(why)) => Some(why.clone()),
            (Some(given), Some(no_room)) => Some(format!("{given}; {no_room}")),
        }
    }

    /// The check a version that begins now makes as it is written; none without a reserve
    /// or where the disk's free space is not known.
    pub(super) fn free_space(&self) -> Result<Option<FreeSpace>, super::StoreError> {
        let Some(dir) = self.path.parent().filter(|_| self.bytes > 0) else { return Ok(None) };
        let Some(free) = free_bytes(dir) else { return Ok(None) };
        let floor = self.bytes.min(free.saturating_sub(SLACK));
        let check = FreeSpace { dir: dir.into(), floor, min_free: self.bytes };
        if free < 2 * SLACK {
            return Err(check.nearly_full(free));
        }
        Ok(Some(check))
    }
}

/// How much of the disk's free space a version that begins below the line may take.
const SLACK: u64 = 8 << 20;

/// Stops a version being written once its disk has less than `floor` bytes free.
pub(crate) struct FreeSpace {
    dir: std::sync::Arc<Path>,
    floor: u64,
    /// The reserve's size, for the message.
    min_free: u64,
}

impl FreeSpace {
    /// Whether the disk still has its floor free (checked before each batch is applied).
    pub(super) fn check(&self) -> Result<(), super::StoreError> {
        match free_bytes(&self.dir) {
            Some(free) if free < self.floor => Err(self.nearly_full(free)),
            _ => Ok(()),
        }
    }

    fn nearly_full(&self, free: u64) -> super::StoreError {
        super::StoreError::DiskNearlyFull {
            dir: self.dir.display().to_string(),
            free_mib: free >> 20,
            min_mib: self.min_free >> 20,
        }
    }
}

/// Allocates `bytes` to the file at `path` (created if missing; never through a symlink)
/// and syncs it. Blocks are allocated, not written, where the filesystem can; a sparse file
/// would hold nothing back. Only done while the disk keeps as much again free: an
/// allocation that failed halfway would take the last free blocks from the store's own
/// writes for a moment. On error the file is left as it was.
fn allocate(path: &Path, bytes: u64) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let existed = match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => {
            return Err(std::io::Error::other(format!("{} is not a regular file: remove it", path.display())));
        }
        found => found.is_ok(),
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    if file.metadata()?.len() > bytes {
        file.set_len(bytes)?;
    }
    let meta = file.metadata()?;
    let allocated = (meta.blocks() * 512).min(meta.len());
    if allocated >= bytes {
        return Ok(());
    }
    let needed = bytes - allocated;
    let free = free_bytes(path.parent().unwrap_or(path)).unwrap_or(u64::MAX);
    let filled = if free < needed.saturating_mul(2) {
        let message = format!("{} MiB free; it is made once {} MiB are", free >> 20, needed.saturating_mul(2) >> 20);
        Err(std::io::Error::new(std::io::ErrorKind::StorageFull, message))
    } else {
        fill(&mut file, bytes)
    };
    match filled.and_then(|()| file.sync_all()) {
        Ok(()) => Ok(()),
        Err(e) if existed => {
            let _ = file.set_len(meta.len());
            Err(e)
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// Allocates `bytes` to `file`, writing zeros where the filesystem cannot allocate ahead.
fn fill(file: &mut std::fs::File, bytes: u64) -> std::io::Result<()> {
    match rustix::fs::fallocate(&*file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        Ok(()) => Ok(()),
        // Filesystems without fallocate: zeros written hold the blocks as well.
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL) => {
            write_zeros(file, bytes)
        }
        Err(e) => Err(e.into()),
    }
}

fn write_zeros(file: &mut std::fs::File, bytes: u64) -> std::io::Result<()> {
    use std::io::{Seek as _, Write as _};
    file.seek(std::io::SeekFrom::Start(0))?;
    let block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// The bytes free on the disk holding `dir` for an unprivileged writer; None where the
/// filesystem does not say (no `statvfs`, or no blocks counted).
fn free_bytes(dir: &Path) -> Option<u64> {
    let fs = rustix::fs::statvfs(dir).ok()?;
    (fs.f_blocks > 0).then(|| fs.f_bavail.saturating_mul(fs.f_frsize))
}

/// Whether `e` is the disk running out of space.
pub(super) fn is_disk_full(e: &super::StoreError) -> bool {
    matches!(e, super::StoreError::Sled(sled::Error::Io(io))
        if io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_made_whole_given_back_once_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::new(dir.path(), 3 << 20);
        reserve.make();
        let file = dir.path().join(RESERVE_FILE);
        let size = |f: &Path| std::fs::metadata(f).map(|m| (m.len(), std::os::unix::fs::MetadataExt::blocks(&m) * 512));
        let (len, allocated) = size(&file).unwrap();
        assert!(len == 3 << 20 && allocated >= 3 << 20, "allocated, not sparse: {len} bytes, {allocated} allocated");
        assert_eq!(reserve.missing(), None);
        assert!(reserve.release("to test"));
        assert!(!file.exists());
        assert_eq!(reserve.missing().as_deref(), Some("given back to test"));
        assert!(!reserve.release("twice"), "nothing left to give back");
        reserve.make();
        assert_eq!((size(&file).unwrap().0, reserve.missing()), (3 << 20, None));
        // A smaller reserve cuts the file; none removes it.
        Reserve::new(dir.path(), 1 << 20).make();
        assert_eq!(size(&file).unwrap().0, 1 << 20);
        let none = Reserve::new(dir.path(), 0);
        none.make();
        assert!(!file.exists());
        assert!(!none.release("to test") && none.missing().is_none());
    }
}
