//! An in-memory FUSE filesystem that can lose what a power cut loses, for the power-loss
//! test (`powercut.rs`). A kill -9 loses nothing a process has written (the kernel keeps
//! it); a power cut loses everything that was not synced. This filesystem keeps two
//! images: what programs see (`now`), and what the disk is known to hold (`synced`):
//!
//! - A file's contents reach `synced` when that file is fsynced (fsync or fdatasync).
//! - Creating, renaming and removing files are logged in order. With [`Names::Journal`]
//!   every sync of anything (a file or a folder) makes all of them durable, as the
//!   journals of ext4 and XFS commit metadata in order in their default modes. With
//!   [`Names::PerFolder`] (what POSIX promises) only an fsync of the folder makes its
//!   names durable.
//! - `sync_file_range`, `syncfs` and closing a file sync nothing here (FUSE does not pass
//!   the first two on).
//!
//! A cut freezes an image of the disk; the test then kills the program and mounts a fresh
//! filesystem from the frozen image. A plain cut comes right after a sync and keeps
//! nothing unsynced. A torn cut comes during a sync, before it takes effect, and keeps a
//! random part of what was not synced, as a disk whose page cache was partly written back
//! does: each 4 KiB page of a changed file is either its synced or its latest contents,
//! the length one or the other, and a random prefix of the logged name changes is kept.
//!
//! An fsync can also be made to fail as a failed write-back does: the file's unsynced
//! writes never reach the disk (reads that reach this filesystem get the disk's contents
//! back; the kernel's page cache may still hold the lost ones), and a later fsync through
//! the same handle succeeds. The error goes to the fsync that failed ([`Report::Caller`],
//! what the kernel does with a FUSE filesystem's fsync error), or once to each handle
//! open when it happened ([`Report::EveryHandle`], Linux's `errseq` for a failed
//! write-back on a local disk). The file's length goes back too, which a local disk
//! would keep: sled's next writes then leave zeros where the lost ones were. The failing
//! fsync is the file's nth, or the next one by a thread of a given name (FUSE passes the
//! calling thread's id): sled's flusher thread's, say.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    WriteFlags,
};

const ROOT: u64 = 1;
const PAGE: usize = 4096;
/// The size the filesystem reports (statfs): 4 GiB.
const TOTAL_BLOCKS: u64 = 1 << 20;
/// The kernel may cache names and attributes this long; every change goes through it.
const TTL: Duration = Duration::from_secs(1);

/// What a disk holds: folders (name → inode, and the entry's place for `readdir`), file
/// contents and modes.
#[derive(Clone, Default)]
pub struct Image {
    dirs: HashMap<u64, BTreeMap<OsString, Entry>>,
    files: HashMap<u64, Vec<u8>>,
    modes: HashMap<u64, u32>,
    /// The place the next entry gets: `readdir` resumes by place, so a name added or
    /// removed between two calls neither hides nor repeats another.
    next_place: u64,
}

#[derive(Clone, Copy)]
struct Entry {
    ino: u64,
    place: u64,
}

impl Image {
    fn empty() -> Image {
        let mut image = Image::default();
        image.dirs.insert(ROOT, BTreeMap::new());
        image.modes.insert(ROOT, 0o700);
        image.next_place = 3;
        image
    }

    fn link(&mut self, dir: u64, name: OsString, ino: u64) {
        let place = self.next_place;
        self.next_place += 1;
        self.dirs.entry(dir).or_default().insert(name, Entry { ino, place });
    }

    /// Applies one logged change of names.
    fn apply(&mut self, change: &NameChange) {
        match change {
            NameChange::Link { dir, name, ino, is_dir, mode } => {
                if *is_dir {
                    self.dirs.entry(*ino).or_default();
                } else {
                    self.files.entry(*ino).or_default();
                }
                self.modes.insert(*ino, *mode);
                self.link(*dir, name.clone(), *ino);
            }
            NameChange::Unlink { dir, name } => {
                self.dirs.entry(*dir).or_default().remove(name);
            }
            NameChange::Rename { from_dir, from, to_dir, to } => {
                if let Some(entry) = self.dirs.entry(*from_dir).or_default().remove(from) {
                    self.link(*to_dir, to.clone(), entry.ino);
                }
            }
            NameChange::Mode { ino, mode } => {
                self.modes.insert(*ino, *mode);
            }
        }
    }

    fn bytes_used(&self) -> u64 {
        self.files.values().map(|f| f.len() as u64).sum()
    }
}

/// A change of names (or modes), logged until a sync makes it durable.
enum NameChange {
    Link { dir: u64, name: OsString, ino: u64, is_dir: bool, mode: u32 },
    Unlink { dir: u64, name: OsString },
    Rename { from_dir: u64, from: OsString, to_dir: u64, to: OsString },
    Mode { ino: u64, mode: u32 },
}

impl NameChange {
    /// Whether an fsync of `ino` (a folder, or a file for its mode) makes it durable
    /// under [`Names::PerFolder`].
    fn synced_by(&self, ino: u64) -> bool {
        match self {
            NameChange::Link { dir, .. } | NameChange::Unlink { dir, .. } => *dir == ino,
            NameChange::Rename { from_dir, to_dir, .. } => *from_dir == ino || *to_dir == ino,
            NameChange::Mode { ino: changed, .. } => *changed == ino,
        }
    }
}

/// When names become durable.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Names {
    /// At any sync, all of them in order (ext4, XFS).
    Journal,
    /// A folder's at an fsync of that folder (POSIX).
    PerFolder,
}

/// Who is told of a failed fsync (see the module comment).
#[derive(Clone, Copy, Debug)]
pub enum Report {
    Caller,
    EveryHandle,
}

/// An armed fsync failure.
#[derive(Debug)]
struct FsyncFailure {
    file: u64,
    /// How many of the file's fsyncs (by `thread`) to go until the one that fails.
    to_go: u64,
    report: Report,
    /// The name of the thread whose fsync fails (None: any thread's).
    thread: Option<String>,
}

/// The armed cut: when it happens, and what it keeps of what was not synced.
#[derive(Clone, Copy, Debug)]
pub struct Cut {
    /// The sync it comes at (counted from the mount): right after it, or, torn, during it.
    pub sync: u64,
    /// Torn: keep a random part (from this seed) of what was not synced.
    pub torn_seed: Option<u64>,
    pub names: Names,
}

struct State {
    now: Image,
    synced: Image,
    names_log: Vec<NameChange>,
    /// Files changed since their last fsync (ordered: a torn cut tears them in the same
    /// order on every run).
    dirty: BTreeSet<u64>,
    next_ino: u64,
    syncs: u64,
    cut: Option<Cut>,
    frozen: Option<Image>,
    /// Whether a torn cut had anything unsynced to tear.
    tore_unsynced: bool,
    /// A panic in a sync (a bug here): FUSE would wait forever for the reply, so it is
    /// caught, the sync fails with EIO, and the test reports it.
    broken: Option<String>,
    /// Open files' handles: the file, and how many of its write-back errors the handle
    /// has been told of.
    handles: HashMap<u64, (u64, u64)>,
    next_handle: u64,
    /// Failed write-backs so far, per file, to be told to every handle.
    write_errors: HashMap<u64, u64>,
    fail: Option<FsyncFailure>,
    failed_fsyncs: u64,
}

impl State {
    /// An fsync of `ino`, a file or a folder.
    fn sync(&mut self, ino: u64) {
        self.syncs += 1;
        let cut = self.cut.filter(|c| c.sync == self.syncs && self.frozen.is_none());
        if let Some(Cut { torn_seed: Some(seed), .. }) = cut {
            self.frozen = Some(self.cut_image(Some(seed)));
            self.tore_unsynced |= !self.names_log.is_empty() || !self.dirty.is_empty();
        }
        let journal = self.cut.is_none_or(|c| c.names == Names::Journal);
        let log = std::mem::take(&mut self.names_log);
        for change in log {
            if journal || change.synced_by(ino) {
                self.synced.apply(&change);
            } else {
                self.names_log.push(change);
            }
        }
        if let Some(data) = self.now.files.get(&ino) {
            self.synced.files.insert(ino, data.clone());
            self.dirty.remove(&ino);
        }
        if cut.is_some() && self.frozen.is_none() {
            self.frozen = Some(self.synced.clone());
        }
    }

    /// The disk as a power cut now would leave it.
    fn cut_image(&self, torn_seed: Option<u64>) -> Image {
        let mut image = self.synced.clone();
        let Some(seed) = torn_seed else { return image };
        let mut rng = XorShift::new(seed);
        let kept = rng.below(self.names_log.len() as u64 + 1) as usize;
        for change in &self.names_log[..kept] {
            image.apply(change);
        }
        for ino in &self.dirty {
            let (Some(old), Some(new)) = (image.files.get(ino), self.now.files.get(ino)) else { continue };
            let len = if rng.below(2) == 0 { old.len() } else { new.len() };
            let mut torn = vec![0u8; len];
            for start in (0..len).step_by(PAGE) {
                let end = (start + PAGE).min(len);
                let from = if rng.below(2) == 0 { old } else { new };
                if from.len() > start {
                    let have = end.min(from.len());
                    torn[start..have].copy_from_slice(&from[start..have]);
                }
            }
            image.files.insert(*ino, torn);
        }
        image
    }

    /// The armed write-back failure, if this fsync of `ino` by the thread `caller` is the
    /// one: the file's writes since its last sync are lost. Whether this fsync must report
    /// it now (else each handle open now is told once, this one included).
    fn fail_write_back(&mut self, ino: u64, caller: u32) -> bool {
        let armed =
            |f: &&mut FsyncFailure| f.file == ino && f.thread.as_ref().is_none_or(|t| *t == thread_name(caller));
        let Some(fail) = self.fail.as_mut().filter(armed) else { return false };
        fail.to_go -= 1;
        if fail.to_go > 0 {
            return false;
        }
        let report = fail.report;
        self.fail = None;
        self.failed_fsyncs += 1;
        let disk = self.synced.files.get(&ino).cloned().unwrap_or_default();
        self.now.files.insert(ino, disk);
        self.dirty.remove(&ino);
        match report {
            Report::Caller => true,
            Report::EveryHandle => {
                *self.write_errors.entry(ino).or_default() += 1;
                false
            }
        }
    }

    /// Whether handle `fh` has a write-back error of its file not yet reported to it (and
    /// counts it reported).
    fn unreported_error(&mut self, fh: u64) -> bool {
        let Some((ino, told)) = self.handles.get_mut(&fh) else { return false };
        let errors = self.write_errors.get(ino).copied().unwrap_or(0);
        std::mem::replace(told, errors) < errors
    }

    /// A new handle of `ino`, told of the write-back errors so far.
    fn open_handle(&mut self, ino: u64) -> FileHandle {
        let fh = self.next_handle;
        self.next_handle += 1;
        let errors = self.write_errors.get(&ino).copied().unwrap_or(0);
        self.handles.insert(fh, (ino, errors));
        FileHandle(fh)
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size) = match (self.now.dirs.get(&ino), self.now.files.get(&ino)) {
            (Some(_), _) => (FileType::Directory, 4096),
            (None, Some(data)) => (FileType::RegularFile, data.len() as u64),
            (None, None) => return None,
        };
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm: (self.now.modes.get(&ino).copied().unwrap_or(0o600) & 0o7777) as u16,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn child(&self, dir: u64, name: &OsStr) -> Result<u64, Errno> {
        let entries = self.now.dirs.get(&dir).ok_or(Errno::ENOTDIR)?;
        entries.get(name).map(|e| e.ino).ok_or(Errno::ENOENT)
    }

    fn change(&mut self, change: NameChange) {
        self.now.apply(&change);
        self.names_log.push(change);
    }

    fn make(&mut self, dir: u64, name: &OsStr, is_dir: bool, mode: u32) -> Result<FileAttr, Errno> {
        if !self.now.dirs.contains_key(&dir) {
            return Err(Errno::ENOTDIR);
        }
        if self.child(dir, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.change(NameChange::Link { dir, name: name.to_owned(), ino, is_dir, mode: mode & 0o7777 });
        self.attr(ino).ok_or(Errno::EIO)
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut Vec<u8>, Errno> {
        self.dirty.insert(ino);
        self.now.files.get_mut(&ino).ok_or(Errno::EISDIR)
    }
}

/// xorshift64: the torn pages differ cut to cut, the same on every test run.
struct XorShift(u64);

impl XorShift {
    /// Seeded through splitmix64, so that nearby seeds diverge at once.
    fn new(seed: u64) -> XorShift {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The filesystem; clones share one state (one is mounted, the test keeps another).
#[derive(Clone)]
pub struct PowerCutFs(Arc<Mutex<State>>);

impl PowerCutFs {
    /// A filesystem holding `image` (an empty one for a new disk).
    pub fn new(image: Option<Image>) -> PowerCutFs {
        let image = image.unwrap_or_else(Image::empty);
        let next_ino = image.dirs.keys().chain(image.files.keys()).max().copied().unwrap_or(ROOT) + 1;
        PowerCutFs(Arc::new(Mutex::new(State {
            synced: image.clone(),
            now: image,
            names_log: Vec::new(),
            dirty: BTreeSet::new(),
            next_ino,
            syncs: 0,
            cut: None,
            frozen: None,
            tore_unsynced: false,
            broken: None,
            handles: HashMap::new(),
            next_handle: 1,
            write_errors: HashMap::new(),
            fail: None,
            failed_fsyncs: 0,
        })))
    }

    /// Mounts it at `dir` until the returned guard is dropped.
    pub fn mount(&self, dir: &Path) -> std::io::Result<Mounted> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("recd-powercut".into())];
        let session = fuser::spawn_mount(self.clone(), dir, &config)?;
        Ok(Mounted { dir: dir.to_path_buf(), session: Some(session) })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    /// Arms a cut; its names rule holds from now on.
    pub fn arm(&self, cut: Cut) {
        let mut s = self.state();
        s.cut = Some(cut);
        s.frozen = None;
    }

    /// Makes the `nth` fsync from now of file `name` (in the filesystem's root) fail as a
    /// failed write-back does, told as `report` says (see the module comment).
    pub fn fail_fsync(&self, name: &str, nth: u64, report: Report) {
        self.arm_fsync_failure(name, nth, report, None);
    }

    /// Makes the next fsync of file `name` by a thread named `thread` (of any process) fail
    /// as [`PowerCutFs::fail_fsync`] does.
    pub fn fail_fsync_by(&self, name: &str, thread: &str, report: Report) {
        self.arm_fsync_failure(name, 1, report, Some(thread.to_string()));
    }

    fn arm_fsync_failure(&self, name: &str, nth: u64, report: Report, thread: Option<String>) {
        let mut s = self.state();
        let file = s.child(ROOT, OsStr::new(name)).expect("the file to fail an fsync of");
        assert!(s.now.files.contains_key(&file), "{name} is not a file");
        s.fail = Some(FsyncFailure { file, to_go: nth, report, thread });
    }

    /// How many fsyncs failed so far.
    pub fn failed_fsyncs(&self) -> u64 {
        self.state().failed_fsyncs
    }

    /// Whether a torn cut found anything unsynced (else it equals a plain cut).
    pub fn tore_unsynced(&self) -> bool {
        self.state().tore_unsynced
    }

    /// What went wrong inside the filesystem, if anything did.
    pub fn broken(&self) -> Option<String> {
        self.state().broken.clone()
    }

    /// An fsync of `ino` through handle `fh` (None for a folder) by the thread `caller`: as
    /// Linux does, it syncs what it can, then reports a write-back error that handle was
    /// not yet told of.
    fn sync(&self, ino: u64, fh: Option<u64>, caller: u32, reply: ReplyEmpty) {
        let synced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut s = self.state();
            let failed_here = s.fail_write_back(ino, caller);
            s.sync(ino);
            failed_here | fh.is_some_and(|fh| s.unreported_error(fh))
        }));
        match synced {
            Ok(false) => reply.ok(),
            Ok(true) => reply.error(Errno::EIO),
            Err(panic) => {
                let what =
                    panic.downcast_ref::<&str>().map(|s| s.to_string()).or(panic.downcast_ref::<String>().cloned());
                self.state().broken = Some(what.unwrap_or_else(|| "a panic".into()));
                reply.error(Errno::EIO)
            }
        }
    }

    /// The image the armed cut froze, if it happened.
    pub fn frozen(&self) -> Option<Image> {
        self.state().frozen.clone()
    }

    /// The disk as a power cut right now would leave it.
    pub fn cut_now(&self, torn_seed: Option<u64>) -> Image {
        self.state().cut_image(torn_seed)
    }
}

impl fuser::Filesystem for PowerCutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = self.state();
        match s.child(parent.0, name).and_then(|ino| s.attr(ino).ok_or(Errno::EIO)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        if let Some(mode) = mode {
            s.change(NameChange::Mode { ino: ino.0, mode: mode & 0o7777 });
        }
        if let Some(size) = size {
            match s.file_mut(ino.0) {
                Ok(data) => data.resize(size as usize, 0),
                Err(e) => return reply.error(e),
            }
        }
        match s.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match self.state().make(parent.0, name, true, mode & !umask) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        match s.make(parent.0, name, false, mode & !umask) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), s.open_handle(attr.ino.0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent.0, name, false, reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent.0, name, true, reply)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let moved = match s.child(parent.0, name) {
            Ok(ino) => ino,
            Err(e) => return reply.error(e),
        };
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        if let Ok(target) = s.child(newparent.0, newname) {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return reply.error(Errno::EEXIST);
            }
            match (s.now.dirs.get(&moved), s.now.dirs.get(&target)) {
                (_, Some(d)) if !d.is_empty() => return reply.error(Errno::ENOTEMPTY),
                (Some(_), None) => return reply.error(Errno::ENOTDIR),
                (None, Some(_)) => return reply.error(Errno::EISDIR),
                _ => {}
            }
            if target == moved {
                return reply.ok();
            }
        }
        s.change(NameChange::Rename {
            from_dir: parent.0,
            from: name.to_owned(),
            to_dir: newparent.0,
            to: newname.to_owned(),
        });
        reply.ok()
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.state();
        match s.attr(ino.0) {
            Some(_) => reply.opened(s.open_handle(ino.0), FopenFlags::empty()),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().handles.remove(&fh.0);
        reply.ok()
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.state();
        let Some(data) = s.now.files.get(&ino.0) else { return reply.error(Errno::EISDIR) };
        let start = (offset as usize).min(data.len());
        let end = (start + size as usize).min(data.len());
        reply.data(&data[start..end])
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        let data = match s.file_mut(ino.0) {
            Ok(data) => data,
            Err(e) => return reply.error(e),
        };
        let end = offset as usize + bytes.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(bytes);
        reply.written(bytes.len() as u32)
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock: fuser::LockOwner, reply: ReplyEmpty) {
        reply.ok()
    }

    fn fsync(&self, req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // FUSE passes the calling thread's id as the request's pid.
        self.sync(ino.0, Some(fh.0), req.pid(), reply)
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let s = self.state();
        let Some(entries) = s.now.dirs.get(&ino.0) else { return reply.error(Errno::ENOTDIR) };
        // "." and ".." take places 1 and 2; the kernel passes back the place last read.
        let dots = [
            (OsString::from("."), Entry { ino: ino.0, place: 1 }),
            (OsString::from(".."), Entry { ino: ROOT, place: 2 }),
        ];
        let mut all: Vec<(&OsString, Entry)> =
            dots.iter().map(|(n, e)| (n, *e)).chain(entries.iter().map(|(n, e)| (n, *e))).collect();
        all.sort_by_key(|(_, e)| e.place);
        for (name, entry) in all.into_iter().filter(|(_, e)| e.place > offset) {
            let kind = if s.now.dirs.contains_key(&entry.ino) { FileType::Directory } else { FileType::RegularFile };
            if reply.add(INodeNo(entry.ino), entry.place, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.sync(ino.0, None, req.pid(), reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let used = self.state().now.bytes_used().div_ceil(PAGE as u64);
        let free = TOTAL_BLOCKS.saturating_sub(used);
        reply.statfs(TOTAL_BLOCKS, free, free, 1 << 20, 1 << 20, PAGE as u32, 255, PAGE as u32)
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        match self.state().file_mut(ino.0) {
            Ok(data) => {
                let end = (offset + length) as usize;
                if data.len() < end {
                    data.resize(end, 0);
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted `PowerCutFs`. Dropping it detaches the mount even while a process still uses
/// it (fuser's own unmount fails then, and a failed test would leave the mount behind).
pub struct Mounted {
    dir: std::path::PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        drop(self.session.take());
    }
}

impl PowerCutFs {
    fn remove(&self, dir: u64, name: &OsStr, want_dir: bool, reply: ReplyEmpty) {
        let mut s = self.state();
        let ino = match s.child(dir, name) {
            Ok(ino) => ino,
            Err(e) => return reply.error(e),
        };
        match (s.now.dirs.get(&ino), want_dir) {
            (Some(_), false) => return reply.error(Errno::EISDIR),
            (None, true) => return reply.error(Errno::ENOTDIR),
            (Some(entries), true) if !entries.is_empty() => return reply.error(Errno::ENOTEMPTY),
            _ => {}
        }
        s.change(NameChange::Unlink { dir, name: name.to_owned() });
        reply.ok()
    }
}

/// The name a thread (by its id) gave itself, as `/proc` shows it: at most 15 bytes.
fn thread_name(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{tid}/comm")).map(|n| n.trim_end().to_string()).unwrap_or_default()
}
