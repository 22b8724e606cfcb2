//! The one module that knows sled.
//!
//! Layout: tree `meta` holds `format_version` and one key `table/<name>` per table whose
//! value ([`TableMeta`], JSON) names the current version and the retained ones. Each
//! version's rows live in their own tree `data/<name>/<version>`, one key per user, the
//! value a pre-sorted encoded list ([`encode_list`]) or, for a table of hashes, the
//! user's fields ([`encode_hash`]).
//!
//! Publishing writes a whole version into a fresh tree, syncs (`Handles::sync`), then
//! replaces the table's meta key in one insert and syncs again: that insert is the atomic
//! switch. Readers resolve a table to a tree handle once per request, so one answer never
//! mixes versions.
//! On open, every data tree that no meta key references (a staged version interrupted by a
//! crash) is dropped.
//!
//! No sled batches, transactions or `checksum()`: in sled 0.34 each takes a process-wide
//! lock exclusively, and from its first use every read and insert of every tree takes that
//! lock too (see `Writers::send` in `staged`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use crate::read_cache::ReadCache;

mod codec;
mod durable;
mod evals;
mod flusher;
mod gate;
mod reserve;
mod retire;
mod runs;
mod staged;

use codec::row_hash;
pub use codec::{ListEntries, decode_hash, decode_list, stored_list_json, with_json, write_list_json};
pub use evals::EvalRecord;
pub(crate) use flusher::FlusherWatch;
pub use gate::{Gate, GateResult, HoldoutGate, HoldoutTruth};
use retire::{Retiring, drop_tree};
pub use runs::{DaemonStages, InputLineage, Lineage, PluginBuild, RunRecord, WorkerStats};
pub use staged::StagedVersion;
use staged::Unstage;

/// Huge values read into the cache when their version is published, at most (the cache
/// bounds what it keeps anyway).
const MAX_WARMED_USERS: usize = 64;

/// 2: list values carry a flag and the offset of their JSON ([`encode_list`]), which a
/// recd that knows only 1 would misread; a format-1 store is upgraded in place on open,
/// since format 2 reads every format-1 value as it is.
pub const FORMAT_VERSION: u32 = 2;
/// Formats this recd opens and marks as [`FORMAT_VERSION`] without converting a value.
const READS_IN_PLACE: &[&[u8]] = &[b"1"];
const META_TREE: &str = "meta";
const KEY_FORMAT: &[u8] = b"format_version";
const TABLE_KEY_PREFIX: &str = "table/";
/// Key `numbered/<table>`, value the highest version number a staged version of the table
/// got (big-endian u64); kept when the table is dropped.
const NUMBERED_KEY_PREFIX: &str = "numbered/";
const DATA_TREE_PREFIX: &str = "data/";
/// Run history: key `<job>\0<run id, big-endian>`, value a [`RunRecord`] as JSON.
const HISTORY_TREE: &str = "history";
/// Scheduler state: key `tick/<job>`, value the last scheduled tick (RFC 3339).
const STATE_TREE: &str = "state";

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error(
        "another process holds the lock on {}: is another recd serving this data_dir? Stop it, or give this recd a data_dir of its own",
        .0.join("db").display()
    )]
    Locked(std::path::PathBuf),
    #[error("{0}")]
    Busy(String),
    #[error(
        "store format version {found} is not supported (this recd writes {FORMAT_VERSION}); keep the data dir of the recd that wrote it, or move it with that recd's `recd migrate` (docs/operations.md)"
    )]
    Format { found: String },
    #[error("corrupt metadata for table `{table}`: {reason}")]
    Meta { table: String, reason: String },
    #[error("no table `{0}`")]
    NoTable(String),
    #[error("migrate: {0}")]
    Migrate(String),
    #[error("table `{table}` keeps no version {version} (retained: {retained})")]
    NotRetained { table: String, version: String, retained: String },
    #[error(
        "table `{table}` has no held version {version} (held: {held}); only a version a gate held can be discarded"
    )]
    NotHeld { table: String, version: u64, held: String },
    /// A write failed (a full disk, an I/O error) and the store has not been opened again
    /// yet: published versions keep serving, nothing is written.
    #[error("the store cannot be written: {0}")]
    Unavailable(String),
    /// A table shared by jobs serves the version of the run that began last: one that
    /// began earlier and ends later would put older results back.
    #[error(
        "table `{table}` version {version} is not published: version {current} (job `{job}`, run {run_id}), from a run that began after this one, was published first; its rows are dropped"
    )]
    Superseded { table: String, version: u64, current: u64, job: String, run_id: u64 },
    #[error(
        "the data disk is nearly full: {free_mib} MiB free in {dir}, less than the {min_mib} MiB recd keeps free (`disk_reserve_mb`), so the version is not written on and its rows are dropped: free space on that disk"
    )]
    DiskNearlyFull { dir: String, free_mib: u64, min_mib: u64 },
}

/// Which published versions a table keeps: at most `count` (the current one included),
/// and none older than `max_age` except the current one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub count: usize,
    pub max_age: Option<std::time::Duration>,
}

/// The held versions of a table, for messages: "3, 5" or "none".
fn held_list(meta: &TableMeta) -> String {
    let held: Vec<String> = meta.versions.iter().filter(|v| v.held).map(|v| v.version.to_string()).collect();
    if held.is_empty() { "none".into() } else { held.join(", ") }
}

/// The retained versions of a table, for messages: "3, 4, 5".
pub(crate) fn retained_list(meta: &TableMeta) -> String {
    meta.versions.iter().map(|v| v.version.to_string()).collect::<Vec<_>>().join(", ")
}

/// One retained version of a table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionInfo {
    pub version: u64,
    pub published_at: String,
    pub job: String,
    pub run_id: u64,
    pub users: u64,
    pub rows: u64,
    /// The wrapping sum, over every user, of FNV-1a of (user, 0xff, stored value): the same
    /// in whatever order the rows came, so [`Store::verify`] recomputes it from the stored
    /// version and proves it is exactly what was published.
    pub checksum: u64,
    /// Failed a publish gate: stored, not served, until promoted or discarded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// What the job's `[gate]` measured and why it failed (absent without a gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateResult>,
    /// Where the version came from (absent for versions published before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// The latest `recd eval --record` of this version (absent until one is recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalRecord>,
}

/// What a table's values are: Redis sorted sets (ZRANGE...) or hashes (HGETALL...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    #[default]
    Lists,
    Hashes,
}

impl From<TableKind> for recd_plugin_api::contract::OutputKind {
    fn from(kind: TableKind) -> Self {
        match kind {
            TableKind::Lists => Self::Lists,
            TableKind::Hashes => Self::Hashes,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableMeta {
    pub current: u64,
    /// Absent in metadata written before hashes existed: those tables hold lists.
    #[serde(default)]
    pub kind: TableKind,
    /// Tables that answer for users this one lacks (the job's `fallback`).
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Oldest first; the current one is among them.
    pub versions: Vec<VersionInfo>,
    /// The highest version number ever published or held: a discarded number is not
    /// used again (0 in metadata written before it was kept).
    #[serde(default)]
    pub last: u64,
}

/// A version being served: the handle readers use for the duration of one request.
pub struct ServedTable {
    pub version: u64,
    pub kind: TableKind,
    pub fallback: Vec<String>,
    tree: sled::Tree,
    /// This serving of the version, for the read cache: new at every publish and rollback.
    generation: u64,
    cache: Arc<ReadCache>,
    /// Keeps the tree from being dropped while this serving is read.
    _lease: retire::Lease,
}

impl ServedTable {
    /// Every (user, list) of this version, users in key order.
    pub fn iter_lists(&self) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec), StoreError>> + '_ {
        self.tree.iter().map(|r| r.map_err(StoreError::from))
    }

    /// The value of `user`, if the version has one; a list in the form it is served from,
    /// with its JSON, when it comes through the read cache.
    pub fn get(&self, user: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        let serve = |stored: &[u8]| match self.kind {
            TableKind::Lists => with_json(stored).map_or_else(|| sled::IVec::from(stored), sled::IVec::from),
            TableKind::Hashes => sled::IVec::from(stored),
        };
        self.cache.get_or_read(self.generation, user, || Ok(self.tree.get(user)?), serve)
    }
}

impl Drop for ServedTable {
    /// Nobody reads this serving any more (a publish or rollback replaced it and the last
    /// request on it ended): its cached values can never be served again.
    fn drop(&mut self) {
        self.cache.forget(self.generation);
    }
}

pub struct Store {
    dir: PathBuf,
    caches: Caches,
    /// The open database; None while it is being opened again after a failed write.
    handles: RwLock<Option<Arc<Handles>>>,
    /// The I/O error of a failed write, until the database is opened again: sled keeps the
    /// first one and refuses every later write with it, so only a reopen recovers.
    failure: Mutex<Option<String>>,
    served: RwLock<HashMap<String, Arc<ServedTable>>>,
    retention: Retention,
    /// Serialises publishes so version numbers and meta updates never race.
    publish_lock: Mutex<()>,
    /// Tables whose meta was changed but not synced (the sync failed), each with its last
    /// meta known durable (None: no entry). The change is undone at once, but where sled
    /// itself failed it refuses the undo, and its log on disk may hold the change, so
    /// [`Store::recover`] puts these back: a publish, rollback or drop reported failed
    /// does not take effect later, unless the daemon stops before the reopen.
    unsynced_meta: Mutex<HashMap<String, Option<sled::IVec>>>,
    /// Tests: the next meta sync fails as a full disk would (1), and sled refuses the
    /// undo too (2).
    #[cfg(test)]
    fail_next_meta_sync: std::sync::atomic::AtomicU8,
    /// Data trees of versions being written now: not yet referenced, and not left over.
    staging: Mutex<HashSet<String>>,
    /// Trees of versions retention or `recd drop` let go, being dropped once nobody reads
    /// them (the leases of the servings).
    retiring: Arc<Retiring>,
    read_cache: Arc<ReadCache>,
    reserve: Arc<reserve::Reserve>,
}

/// The database and its fixed trees.
struct Handles {
    db: sled::Db,
    meta: sled::Tree,
    history: sled::Tree,
    state: sled::Tree,
    /// sled's files, for [`Handles::sync`].
    files: durable::SledFiles,
}

impl Handles {
    /// Opens sled in `dir` and checks its format. sled locks its files; a database of
    /// this process that was just closed can hold the lock a moment longer (its last
    /// writes finish on sled's threads), so a lock is waited for up to `wait`.
    fn open(dir: &Path, caches: Caches, wait: std::time::Duration) -> Result<Handles, StoreError> {
        // HighThroughput: on the M workload (100k users stored per run) runs took 3.0 s
        // against 3.4 s with sled's default LowSpace, the scoring beside them 1.3 s
        // against 1.6 s (the two share the cores), and the data dir after three runs
        // was the same size (260 MB).
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(caches.sled_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS));
        // The log's handle is taken before sled opens it where it exists, so that its
        // fsyncs report any write-back error from then on (see `durable::SledFiles`).
        let log = std::fs::File::open(dir.join("db")).ok();
        let flusher = flusher::FlusherMark::now(&flusher::ERRORS);
        let deadline = std::time::Instant::now() + wait;
        let mut snapshots_checked = false;
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked(dir.to_path_buf()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e @ sled::Error::Corruption { .. }) if !snapshots_checked => {
                    snapshots_checked = true;
                    if !remove_partial_snapshots(dir).unwrap_or(false) {
                        return Err(e.into());
                    }
                }
                other => break other?,
            }
        };
        let meta = db.open_tree(META_TREE)?;
        match meta.get(KEY_FORMAT)? {
            None => {
                meta.insert(KEY_FORMAT, FORMAT_VERSION.to_string().as_bytes())?;
            }
            Some(v) if v.as_ref() == FORMAT_VERSION.to_string().as_bytes() => {}
            Some(v) if READS_IN_PLACE.contains(&v.as_ref()) => {
                tracing::info!(
                    from = %String::from_utf8_lossy(&v),
                    to = FORMAT_VERSION,
                    "store format upgraded in place (older recd builds will refuse this data dir)"
                );
                meta.insert(KEY_FORMAT, FORMAT_VERSION.to_string().as_bytes())?;
                meta.flush()?;
            }
            Some(v) => return Err(StoreError::Format { found: String::from_utf8_lossy(&v).into_owned() }),
        }
        db.flush()?;
        let files = durable::SledFiles::open(dir, log, flusher).map_err(sled::Error::Io)?;
        Ok(Handles { history: db.open_tree(HISTORY_TREE)?, state: db.open_tree(STATE_TREE)?, db, meta, files })
    }

    /// Makes everything written so far durable, before recd counts a write as done:
    /// sled's flush, then the fsyncs it leaves out ([`durable::SledFiles`]).
    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.files.sync().map_err(sled::Error::Io)?;
        Ok(())
    }
}

/// How often sled's flusher thread wakes (sled's default: 500 ms). Each wake writes out
/// the partly filled log buffer, fsyncs the log, and spends up to half the interval
/// cleaning log segments, which sled 0.34 keeps doing on an idle store once versions have
/// been dropped: after M runs an idle daemon wrote 1.9 MB/s at 500 ms (160 GB a day),
/// 0.33 at 2 s, 0.06 at 10 s. 500 ms against 10 s: M (8 alternating runs) scoring 1.19
/// against 1.20 s, daemon CPU 0.78 s both, data dir 107 against 104 MB; L (3 runs) 20.45
/// against 20.88 s, daemon CPU 9.0 against 9.8 s, 920 against 932 MB. With no flusher,
/// runs slowed one after another: it does most of the cleaning that frees segments.
/// Durability does not wait for it: what recd counts as written is synced first
/// ([`Handles::sync`]).
const SLED_FLUSH_EVERY_MS: u64 = 10_000;

/// sled's own default page cache, 1 GiB.
const SLED_DEFAULT_CACHE: u64 = 1 << 30;

/// The store's memory budgets, and the disk space it keeps for itself.
#[derive(Debug, Clone, Copy)]
pub struct Caches {
    /// sled's page cache: pages written or read, dirty pages until a flush.
    pub sled_bytes: u64,
    /// Values of current versions kept after a read ([`ReadCache`]); 0: none.
    pub read_bytes: u64,
    /// The disk reserve (see `store/reserve.rs`); 0: none.
    pub disk_reserve_bytes: u64,
}

/// How long an open waits for sled's lock (see [`Handles::open`]).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Bytes a reopen first writes (and syncs, and removes) to see that the disk takes writes
/// again: a reopen on a disk still full would fail halfway.
const PROBE_WRITE_BYTES: usize = 8 << 20;

impl Store {
    /// Opens the store with no read cache and sled's default page cache (tools, tests);
    /// the daemon uses [`Store::open_with`].
    pub fn open(dir: &Path, retention: Retention) -> Result<Store, StoreError> {
        Store::open_with(
            dir,
            retention,
            Caches { sled_bytes: SLED_DEFAULT_CACHE, read_bytes: 0, disk_reserve_bytes: 0 },
        )
    }

    pub fn open_with(dir: &Path, retention: Retention, caches: Caches) -> Result<Store, StoreError> {
        let reserve = Arc::new(reserve::Reserve::new(dir, caches.disk_reserve_bytes));
        match Store::open_once(dir, retention, caches, Arc::clone(&reserve)) {
            // sled cannot open, nor drop what a crash left staged, on a disk with no room.
            Err(e) if reserve::is_disk_full(&e) && reserve.release("to open the store") => {
                Store::open_once(dir, retention, caches, reserve)
            }
            opened => opened,
        }
    }

    fn open_once(
        dir: &Path,
        retention: Retention,
        caches: Caches,
        reserve: Arc<reserve::Reserve>,
    ) -> Result<Store, StoreError> {
        let handles = Arc::new(Handles::open(dir, caches, LOCK_WAIT)?);
        let store = Store {
            dir: dir.to_path_buf(),
            caches,
            handles: RwLock::new(Some(Arc::clone(&handles))),
            failure: Mutex::new(None),
            served: RwLock::new(HashMap::new()),
            retention: Retention { count: retention.count.max(1), ..retention },
            publish_lock: Mutex::new(()),
            unsynced_meta: Mutex::default(),
            #[cfg(test)]
            fail_next_meta_sync: Default::default(),
            staging: Mutex::new(HashSet::new()),
            retiring: Arc::default(),
            read_cache: Arc::new(ReadCache::new(caches.read_bytes)),
            reserve,
        };
        store.load_tables(&handles, &mut store.served.write().expect("served lock"))?;
        store.drop_unreferenced(&handles)?;
        handles.db.flush()?;
        store.reserve.make();
        Ok(store)
    }

    /// The open database, or why there is none.
    fn h(&self) -> Result<Arc<Handles>, StoreError> {
        self.handles.read().expect("handles lock").clone().ok_or_else(|| {
            StoreError::Unavailable(self.failure().unwrap_or_else(|| "the store is being opened again".into()))
        })
    }

    /// Runs a write: first opens the store again if an earlier write failed (and the
    /// cause is gone); a write that fails with an I/O error marks the store failed.
    fn writing<T>(&self, f: impl FnOnce(&Handles) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.recover()?;
        self.write_checked(f)
    }

    /// Why the disk reserve is not in place, while it is not (see `store/reserve.rs`).
    pub fn reserve_missing(&self) -> Option<String> {
        self.reserve.missing()
    }

    /// Makes the disk reserve again if it is missing and the disk now has room.
    pub fn keep_reserve(&self) {
        if self.reserve.missing().is_some() {
            self.reserve.make();
        }
    }

    /// Marks the store failed where sled's flusher thread logged an error since the
    /// database opened ([`flusher`]): what it failed to write may be missing from the disk
    /// while recd's own fsyncs succeed. Checked every 2 s (`Daemon::watch_store`), so that
    /// an idle store opens again at the same check; a run writing meanwhile fails at its
    /// next sync ([`durable::SledFiles::sync`]).
    pub fn check_flusher(&self) {
        if self.failure().is_some() {
            return;
        }
        // Marked under the handles' lock: a reopen cannot swap in a sound database between
        // the check and the mark.
        let handles = self.handles.read().expect("handles lock");
        if let Some(cause) = handles.as_ref().and_then(|h| h.files.flusher_failure()) {
            self.mark_failed_with(cause);
        }
    }

    /// Why writes are refused now, if they are (see [`Store::recover`]).
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }

    /// After a failed write: opens the database again, once no run is writing to it and a
    /// test write to its folder succeeds (space was freed, the device is back). Nothing
    /// published is lost: every version was synced before it was made current, and sled
    /// recovers its log on open, reading it from the disk rather than from pages cached
    /// when a write-back failed ([`durable::forget_cached`]). Readers wait while it is
    /// reopened (the served versions hold the old database, which must close first). Ok
    /// when the store is sound.
    pub fn recover(&self) -> Result<(), StoreError> {
        let Some(cause) = self.failure() else { return Ok(()) };
        let _publishing = self.publish_lock.lock().expect("publish lock");
        if self.failure().is_none() {
            return Ok(()); // opened again by another caller meanwhile
        }
        let busy = self.staging.lock().expect("staging").len();
        if busy > 0 {
            return Err(StoreError::Unavailable(format!("{cause}; {busy} run(s) still write to it")));
        }
        probe_write(&self.dir).map_err(|e| {
            StoreError::Unavailable(format!("{cause}; {} still cannot be written: {e}", self.dir.display()))
        })?;
        // A retired tree's thread holds the database too, which must close before it opens.
        self.retiring.wait();
        let Some((mut served, old)) = self.take_unheld() else {
            // Tried again at the next write, or in 2 s (`Daemon::watch_store`).
            return Err(StoreError::Unavailable(format!("{cause}; reads still hold the failed database")));
        };
        close_caught((old, served.drain().collect()));
        durable::forget_cached(&self.dir);
        let handles = Arc::new(Handles::open(&self.dir, self.caches, LOCK_WAIT).map_err(|e| {
            tracing::error!("opening the store again failed: {e}");
            StoreError::Unavailable(format!("{cause}; opening it again failed: {e}"))
        })?);
        let restored = self.restore_unsynced_meta(&handles)?;
        self.load_tables(&handles, &mut served)?;
        drop(served);
        *self.handles.write().expect("handles lock") = Some(Arc::clone(&handles));
        self.drop_unreferenced(&handles)?;
        if restored {
            // Served already; writes wait until the undo is durable.
            handles.sync()?;
            self.unsynced_meta.lock().expect("unsynced meta").clear();
        } else {
            handles.db.flush()?;
        }
        self.reserve.make();
        *self.failure.lock().expect("failure lock") = None;
        tracing::info!("the store was opened again after a failed write ({cause}): writes resume");
        Ok(())
    }

    /// Takes the failed database out of the store once nothing else holds it or a table
    /// served from it (a read, an export): checked every millisecond for up to
    /// [`LOCK_WAIT`], the locks let go between checks (a read holding one table may be
    /// waiting to look up another). Returns it with the served tables' lock, which readers
    /// wait on until the reopen is done; None if something still holds it.
    fn take_unheld(&self) -> Option<(ServedGuard<'_>, Option<Arc<Handles>>)> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            let served = self.served.write().expect("served lock");
            let mut handles = self.handles.write().expect("handles lock");
            // With both locks held no new holder can appear: a clone needs one of them, or
            // a holder other than the store.
            let held = handles.as_ref().is_some_and(|h| Arc::strong_count(h) > 1)
                || served.values().any(|t| Arc::strong_count(t) > 1);
            if !held {
                let old = handles.take();
                return Some((served, old));
            }
            drop((handles, served));
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Puts back (not yet synced) the last durable meta of each table whose meta change
    /// failed to sync, where sled kept the change anyway; whether any are recorded.
    fn restore_unsynced_meta(&self, h: &Handles) -> Result<bool, StoreError> {
        let unsynced = self.unsynced_meta.lock().expect("unsynced meta");
        for (table, durable) in unsynced.iter() {
            if h.meta.get(table_key(table))? != *durable {
                tracing::warn!(table = %table, "a meta change whose sync failed is undone: it was reported failed");
                put_meta(h, table, durable.clone())?;
            }
        }
        Ok(!unsynced.is_empty())
    }

    /// Copies the store in `from` into a new store in `to` through sled's export/import,
    /// the path sled documents for moving data between its on-disk formats; a recd that
    /// changes its own format converts values on the way. `to` must not hold a store. The
    /// source is checked first (format version, every current version against its
    /// checksum) and the copy after.
    pub fn migrate(from: &Path, to: &Path) -> Result<usize, StoreError> {
        let retention = Retention { count: usize::MAX, max_age: None };
        let problems = Store::open(from, retention)?.verify()?;
        if !problems.is_empty() {
            return Err(StoreError::Migrate(format!("source fails verify: {}", problems.join("; "))));
        }
        if to.exists() && std::fs::read_dir(to).map_or(true, |mut d| d.next().is_some()) {
            return Err(StoreError::Migrate(format!("{} is not empty", to.display())));
        }
        let source = sled::Config::new().path(from).open()?;
        let target = sled::Config::new().path(to).open()?;
        target.import(source.export());
        target.flush()?;
        drop((source, target));
        let copied = Store::open(to, retention)?;
        let problems = copied.verify()?;
        if !problems.is_empty() {
            return Err(StoreError::Migrate(format!("copy fails verify: {}", problems.join("; "))));
        }
        copied.flush()?;
        Ok(copied.tables()?.len())
    }

    fn load_tables(&self, h: &Handles, served: &mut HashMap<String, Arc<ServedTable>>) -> Result<(), StoreError> {
        for entry in h.meta.scan_prefix(TABLE_KEY_PREFIX) {
            let (key, value) = entry?;
            let table = String::from_utf8_lossy(&key[TABLE_KEY_PREFIX.len()..]).into_owned();
            let meta = decode_meta(&table, &value)?;
            if meta.current == 0 {
                // Its only versions are held: nothing is served until one is promoted.
                continue;
            }
            let tree = h.db.open_tree(data_tree_name(&table, meta.current))?;
            served.insert(table, Arc::new(self.serving(meta.current, meta.kind, meta.fallback, tree)));
        }
        Ok(())
    }

    /// Drops data trees no table's meta references: versions staged when we crashed.
    fn drop_unreferenced(&self, h: &Handles) -> Result<(), StoreError> {
        let mut keep = HashSet::new();
        for (table, meta) in tables_of(h)? {
            for v in &meta.versions {
                keep.insert(data_tree_name(&table, v.version));
            }
        }
        for name in h.db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            if name.starts_with(DATA_TREE_PREFIX) && !keep.contains(&name) {
                tracing::info!(tree = %name, "dropping unpublished data left by an interrupted run");
                drop_tree(&h.db, name.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Every table with its metadata, sorted by name.
    ///
    /// Each one's `current` is the version readers get. A publish writes the table's meta
    /// a moment before the sync that makes it durable and switches readers to it: read
    /// from the meta alone, INFO and `recd status` showed, in between, a version no reader
    /// had got yet, and a kill -9 there left the one before (seen once in 50 kills of
    /// `crash.rs`).
    pub fn tables(&self) -> Result<Vec<(String, TableMeta)>, StoreError> {
        let mut tables = tables_of(&*self.h()?)?;
        let served = self.served.read().expect("served lock");
        for (name, meta) in &mut tables {
            if let Some(serving) = served.get(name) {
                meta.current = serving.version;
            }
        }
        Ok(tables)
    }

    /// A version about to become current, with a read-cache generation of its own and a
    /// lease that holds off its tree's drop while it is read.
    fn serving(&self, version: u64, kind: TableKind, fallback: Vec<String>, tree: sled::Tree) -> ServedTable {
        let generation = self.read_cache.next_generation();
        let _lease = self.retiring.lease(&tree);
        ServedTable { version, kind, fallback, tree, generation, cache: self.read_cache.clone(), _lease }
    }

    /// The version of `table` readers see now.
    pub fn served(&self, table: &str) -> Option<Arc<ServedTable>> {
        self.served.read().expect("served lock").get(table).cloned()
    }

    /// Starts a new, invisible version of `table`.
    pub fn stage(&self, table: &str, job: &str, run_id: u64, kind: TableKind) -> Result<StagedVersion, StoreError> {
        self.writing(|h| self.stage_in(h, table, job, run_id, kind))
    }

    fn stage_in(
        &self,
        h: &Handles,
        table: &str,
        job: &str,
        run_id: u64,
        kind: TableKind,
    ) -> Result<StagedVersion, StoreError> {
        let free_space = self.reserve.free_space()?;
        let _guard = self.publish_lock.lock().expect("publish lock");
        let last = table_meta(h, table)?.map(|m| m.versions.iter().map(|v| v.version).max().unwrap_or(0).max(m.last));
        // Above every number handed out before (a failed or discarded version's number
        // is not used again, nor a dropped table's: one number, one content, in the run
        // history and the logs); above versions other runs are writing for this table now
        // (two jobs may publish one table), so each run gets a tree of its own; and above
        // trees still being dropped (stores from before the count), so the name is never
        // one a retiring thread will drop.
        let mut staging = self.staging.lock().expect("staging");
        let prefix = data_tree_name(table, 0);
        let prefix = &prefix[..prefix.len() - 20];
        let retiring = self.retiring.names();
        let staged = staging.iter().chain(&retiring).filter_map(|n| n.strip_prefix(prefix)?.parse::<u64>().ok()).max();
        let numbered = numbered_key(table);
        let handed_out = match h.meta.get(&numbered)? {
            None => 0,
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Meta {
                table: table.to_owned(),
                reason: format!("the count of version numbers given is {} bytes, not 8", v.len()),
            })?),
        };
        let version = last.unwrap_or(0).max(staged.unwrap_or(0)).max(handed_out) + 1;
        // Before the tree, in sled's ordered log: a store that recovers the tree recovers
        // the count too.
        h.meta.insert(&numbered, &version.to_be_bytes())?;
        let name = data_tree_name(table, version);
        // A tree at that number may exist from a crashed run that drop_unreferenced has
        // not seen (same process): start it empty.
        drop_tree(&h.db, name.as_bytes())?;
        let tree = h.db.open_tree(&name)?;
        // Written out now, not at the flusher's next wake (up to 10 s away): a crash from
        // here to the publish then always leaves the tree for the next open to drop, and to
        // log (docs/operations.md, "Crash safety"), however few rows the run wrote; and
        // the number stays handed out.
        h.db.flush()?;
        staging.insert(name);
        drop(staging);
        Ok(StagedVersion {
            table: table.to_owned(),
            job: job.to_owned(),
            run_id,
            version,
            kind,
            tree,
            batch: Vec::new(),
            writers: None,
            writer_threads: staged::writer_threads(),
            applying: Default::default(),
            users: 0,
            rows: 0,
            fallback: Vec::new(),
            large_users: Vec::new(),
            checksum: 0,
            lineage: None,
            free_space: free_space.map(Arc::new),
        })
    }

    /// Makes `staged` the current version of its table, atomically, after it is durable;
    /// then hands the versions beyond retention to a thread that drops them.
    #[cfg(test)]
    pub fn publish(&self, staged: StagedVersion) -> Result<VersionInfo, StoreError> {
        self.publish_gated(staged, &Gate::default())
    }

    /// Like [`Store::publish`], unless the version fails `gate` against itself and the
    /// current version: then it is kept as held (`held` in the result), and the current
    /// version stays.
    pub fn publish_gated(&self, mut staged: StagedVersion, gate: &Gate) -> Result<VersionInfo, StoreError> {
        let name = data_tree_name(&staged.table, staged.version);
        let _unstage = Unstage(self, name.clone());
        // Not through `writing`'s recovery: this version was written to the database as
        // it is now, and is refused if that one has failed.
        let published = self.write_checked(|h| self.publish_in(h, &mut staged, gate));
        if published.is_err() {
            // Not published: its rows go now rather than at the next open, once its writer
            // threads are done. (A failed store drops them when it is opened again.)
            drop(staged.writers.take());
            let _ = self.drop_rows(&name);
        }
        // Its tree holds the database: let go before the run stops counting as writing
        // (`_unstage`), which lets a reopen close the database.
        drop(staged);
        published
    }

    /// Runs a write on the open database without trying to recover first; an I/O error
    /// marks the store failed.
    fn write_checked<T>(&self, f: impl FnOnce(&Handles) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if let Some(cause) = self.failure() {
            return Err(StoreError::Unavailable(cause));
        }
        let result = f(&*self.h()?);
        if let Err(StoreError::Sled(sled::Error::Io(e))) = &result {
            self.mark_failed(e);
        }
        result
    }

    fn mark_failed(&self, e: &std::io::Error) {
        self.mark_failed_with(format!("a write failed: {e}"));
    }

    fn mark_failed_with(&self, cause: String) {
        let mut failure = self.failure.lock().expect("failure lock");
        if failure.is_none() {
            tracing::error!(
                "{cause}; published versions keep serving, nothing is written until the store is opened again"
            );
            *failure = Some(cause);
        }
    }

    fn publish_in(&self, h: &Handles, staged: &mut StagedVersion, gate: &Gate) -> Result<VersionInfo, StoreError> {
        // Checked before the sync, for a version about to be thrown away, and under the lock.
        check_not_superseded(&table_meta(h, &staged.table)?, staged)?;
        staged.write_pending()?;
        h.sync()?;
        // The gate's scans run before the publish lock (they can take seconds on a large
        // table), and again under it only if the current version changed meanwhile.
        let gate_against = |current: Option<(&VersionInfo, &sled::Tree)>| {
            gate::check(gate, staged.kind, (staged.users, staged.rows), &staged.tree, current)
        };
        // Before the lock the current version is read through its serving: a racing publish
        // may have let it go, the serving's lease holds off its drop, and opening a dropped
        // tree's name would create an empty tree. Another version served is a publish
        // switching now: the check is left to the lock. Each check keeps the version it
        // compared with (0: none).
        let early = match current_version(&table_meta(h, &staged.table)?) {
            _ if gate.is_empty() => None,
            None => Some((0, gate_against(None)?)),
            Some(v) => self
                .served(&staged.table)
                .filter(|s| s.version == v.version)
                .map(|s| gate_against(Some((v, &s.tree))).map(|result| (v.version, result)))
                .transpose()?,
        };
        let _guard = self.publish_lock.lock().expect("publish lock");
        let previous = table_meta(h, &staged.table)?;
        check_not_superseded(&previous, staged)?;
        let current = current_version(&previous);
        let gated = match early {
            _ if gate.is_empty() => None,
            Some((compared, result)) if compared == current.map_or(0, |v| v.version) => Some(result),
            // Under the lock the current version's tree cannot be being dropped.
            _ => {
                let tree = current.map(|v| h.db.open_tree(data_tree_name(&staged.table, v.version))).transpose()?;
                Some(gate_against(current.zip(tree.as_ref()))?)
            }
        };
        let held = gated.as_ref().is_some_and(|g| !g.failed.is_empty());
        let info = VersionInfo {
            version: staged.version,
            published_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            job: staged.job.clone(),
            run_id: staged.run_id,
            users: staged.users,
            rows: staged.rows,
            checksum: staged.checksum,
            held,
            gate: gated,
            lineage: staged.lineage.take(),
            eval: None,
        };
        if held {
            return self.hold_in(h, staged, previous, info);
        }
        let mut meta = previous.unwrap_or(TableMeta {
            current: info.version,
            kind: staged.kind,
            fallback: Vec::new(),
            versions: Vec::new(),
            last: 0,
        });
        meta.versions.push(info.clone());
        meta.current = info.version;
        meta.last = meta.last.max(info.version);
        meta.kind = staged.kind;
        meta.fallback = staged.fallback.clone();
        let dropped = self.apply_retention(&mut meta);
        self.write_meta(h, &staged.table, Some(&meta))?;
        let serving = Arc::new(self.serving(info.version, staged.kind, meta.fallback.clone(), staged.tree.clone()));
        // Huge lists are copied into the read cache here, on the run's thread, rather than
        // by their first reader on a serving thread (about 140 ms for 275 MB).
        for user in &staged.large_users {
            let _ = serving.get(user.as_bytes());
        }
        self.served.write().expect("served lock").insert(staged.table.clone(), serving);
        self.retiring.retire(&h.db, dropped.into_iter().map(|v| data_tree_name(&staged.table, v)).collect());
        Ok(info)
    }

    /// Keeps a version that failed its gate: listed among the table's versions, its tree
    /// durable, the current version and what is served unchanged. A table's first version
    /// can be held too: then the table has no current version (`current` 0) until a promote.
    fn hold_in(
        &self,
        h: &Handles,
        staged: &StagedVersion,
        previous: Option<TableMeta>,
        info: VersionInfo,
    ) -> Result<VersionInfo, StoreError> {
        let mut meta = previous.unwrap_or(TableMeta {
            current: 0,
            kind: staged.kind,
            fallback: staged.fallback.clone(),
            versions: Vec::new(),
            last: 0,
        });
        meta.versions.push(info.clone());
        meta.last = meta.last.max(info.version);
        self.write_meta(h, &staged.table, Some(&meta))?;
        Ok(info)
    }

    /// Throws a held version away (`recd discard`); only a held version, never the current one.
    pub fn discard_held(&self, table: &str, version: u64) -> Result<VersionInfo, StoreError> {
        self.writing(|h| {
            let _guard = self.publish_lock.lock().expect("publish lock");
            let mut meta = table_meta(h, table)?.ok_or_else(|| StoreError::NoTable(table.to_owned()))?;
            let Some(at) = meta.versions.iter().position(|v| v.version == version && v.held) else {
                return Err(StoreError::NotHeld { table: table.to_owned(), version, held: held_list(&meta) });
            };
            let dropped = meta.versions.remove(at);
            self.write_meta(h, table, Some(&meta))?;
            // Discarded from here on: a tree left by a failed drop goes at the next open.
            if let Err(e) = drop_tree(&h.db, data_tree_name(table, version).as_bytes()) {
                tracing::warn!(table, version, "the discarded version's rows are dropped at the next open: {e}");
                if let sled::Error::Io(io) = &e {
                    self.mark_failed(io);
                }
            }
            Ok(dropped)
        })
    }

    /// Removes `table` and every version it keeps (`recd drop`). The meta entry goes
    /// first, flushed: a crash before the trees are dropped leaves only unreferenced
    /// trees, which the next start drops. New requests stop seeing the table at once; its
    /// trees are dropped in the background once the requests under way have ended.
    pub fn drop_table(&self, table: &str) -> Result<TableMeta, StoreError> {
        self.writing(|h| {
            let _guard = self.publish_lock.lock().expect("publish lock");
            let meta = table_meta(h, table)?.ok_or_else(|| StoreError::NoTable(table.to_owned()))?;
            // A run or import still writing a version would publish it after the drop and
            // bring the table back without its history.
            let prefix = format!("{DATA_TREE_PREFIX}{table}/");
            if self.staging.lock().expect("staging").iter().any(|n| n.starts_with(&prefix)) {
                return Err(StoreError::Busy(format!(
                    "a run or import is writing a version of table `{table}`: drop it once that ends"
                )));
            }
            self.write_meta(h, table, None)?;
            self.served.write().expect("served lock").remove(table);
            self.retiring.retire(&h.db, meta.versions.iter().map(|v| data_tree_name(table, v.version)).collect());
            Ok(meta)
        })
    }

    /// Drops from `meta` the versions retention no longer keeps (never the current one);
    /// returns their numbers, whose trees the caller drops once the meta is written.
    fn apply_retention(&self, meta: &mut TableMeta) -> Vec<u64> {
        let now = chrono::Utc::now();
        let too_old = |v: &VersionInfo| {
            let Some(max_age) = self.retention.max_age else { return false };
            let published = chrono::DateTime::parse_from_rfc3339(&v.published_at).map(|t| t.to_utc());
            published.is_ok_and(|t| (now - t).to_std().is_ok_and(|age| age > max_age))
        };
        let mut dropped = Vec::new();
        let current = meta.current;
        // A held version waits for ops to settle it.
        meta.versions.retain(|v| {
            let keep = v.version == current || v.held || !too_old(v);
            if !keep {
                dropped.push(v.version);
            }
            keep
        });
        // Held versions are not counted: they cannot push out the versions a rollback needs.
        while meta.versions.iter().filter(|v| !v.held).count() > self.retention.count {
            let Some(at) = meta.versions.iter().position(|v| v.version != current && !v.held) else { break };
            dropped.push(meta.versions.remove(at).version);
        }
        dropped
    }

    /// Makes a retained version of `table` current again, atomically (one meta insert,
    /// flushed): `version`, or by default the newest one older than the current. Later
    /// publishes number on from the highest number ever given.
    pub fn rollback(&self, table: &str, version: Option<u64>) -> Result<VersionInfo, StoreError> {
        self.writing(|h| self.rollback_in(h, table, version))
    }

    fn rollback_in(&self, h: &Handles, table: &str, version: Option<u64>) -> Result<VersionInfo, StoreError> {
        let _guard = self.publish_lock.lock().expect("publish lock");
        let mut meta = table_meta(h, table)?.ok_or_else(|| StoreError::NoTable(table.to_owned()))?;
        let target = match version {
            Some(v) => meta.versions.iter().find(|i| i.version == v),
            None => meta.versions.iter().filter(|i| i.version < meta.current && !i.held).max_by_key(|i| i.version),
        }
        .cloned()
        .ok_or_else(|| StoreError::NotRetained {
            table: table.to_owned(),
            version: version.map_or("older than the current one".into(), |v| v.to_string()),
            retained: retained_list(&meta),
        })?;
        meta.current = target.version;
        // A held version made current is promoted: it is no longer held.
        let mut target = target;
        target.held = false;
        if let Some(v) = meta.versions.iter_mut().find(|v| v.version == target.version) {
            v.held = false;
        }
        let tree = h.db.open_tree(data_tree_name(table, target.version))?;
        self.write_meta(h, table, Some(&meta))?;
        let served = self.serving(target.version, meta.kind, meta.fallback, tree);
        self.served.write().expect("served lock").insert(table.to_owned(), Arc::new(served));
        Ok(target)
    }

    /// Recomputes the current version of every table from its stored rows and compares
    /// users, rows and checksum with what was published; also finds data trees no table
    /// references (staging left behind). One line per finding; empty: all sound.
    pub fn verify(&self) -> Result<Vec<String>, StoreError> {
        // Publishes wait while a verify runs: a version switched halfway through the scan
        // would read as a mismatch. Taken before the database: a reopen holds it while it
        // waits for the old database to be let go.
        let _guard = self.publish_lock.lock().expect("publish lock");
        // Only reads: it answers while writes are refused too (a full disk), when it is
        // most wanted.
        self.verify_in(&*self.h()?)
    }

    /// [`Store::verify`], under the publish lock. Trees still being dropped are listed in
    /// `retiring`.
    fn verify_in(&self, h: &Handles) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        let mut referenced = HashSet::new();
        for (table, meta) in tables_of(h)? {
            referenced.extend(meta.versions.iter().map(|v| data_tree_name(&table, v.version)));
            if meta.current == 0 {
                continue;
            }
            let Some(info) = meta.versions.iter().find(|v| v.version == meta.current) else {
                problems.push(format!("{table}: current version {} is not among the retained ones", meta.current));
                continue;
            };
            let (mut users, mut rows, mut checksum) = (0u64, 0u64, 0u64);
            // Opening a tree by a name sled does not have would create it: a read-only
            // check says it is missing instead.
            let name = data_tree_name(&table, info.version);
            if !h.db.tree_names().iter().any(|n| n.as_ref() == name.as_bytes()) {
                problems.push(format!("{table}: current version {}'s data is missing", info.version));
                continue;
            }
            for entry in h.db.open_tree(name)?.iter() {
                let (user, value) = entry?;
                users += 1;
                rows += match meta.kind {
                    TableKind::Lists => decode_list(&value).len() as u64,
                    TableKind::Hashes => 1,
                };
                checksum = checksum.wrapping_add(row_hash(&user, &value));
            }
            if (users, rows, checksum) != (info.users, info.rows, info.checksum) {
                problems.push(format!(
                    "{table} version {}: stored {users} users, {rows} rows, checksum {checksum:016x}; published {} users, {} rows, checksum {:016x}",
                    info.version, info.users, info.rows, info.checksum
                ));
            }
        }
        let staging = self.staging.lock().expect("staging").clone();
        let retiring = self.retiring.names();
        for name in h.db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            let known = referenced.contains(&name) || staging.contains(&name) || retiring.contains(&name);
            if name.starts_with(DATA_TREE_PREFIX) && !known {
                problems.push(format!("unreferenced data tree {name}"));
            }
        }
        Ok(problems)
    }

    /// Throws a staged version away.
    pub fn discard(&self, mut staged: StagedVersion) -> Result<(), StoreError> {
        // Its writer threads finish before its tree goes.
        drop(staged.writers.take());
        let name = data_tree_name(&staged.table, staged.version);
        let _unstage = Unstage(self, name.clone());
        let dropped = self.drop_rows(&name);
        drop(staged);
        dropped
    }

    /// Drops the tree of a version that will not be published (a failed store drops it
    /// when it is opened again).
    fn drop_rows(&self, name: &str) -> Result<(), StoreError> {
        self.write_checked(|h| Ok(drop_tree(&h.db, name.as_bytes()).map(drop)?))
    }

    /// Writes `table`'s meta (None: removes the table) and syncs it: the one step that makes
    /// a change to it durable. A change whose sync fails is undone ([`Store::unsynced_meta`]).
    /// Callers hold the publish lock.
    fn write_meta(&self, h: &Handles, table: &str, meta: Option<&TableMeta>) -> Result<(), StoreError> {
        let value = meta.map(|meta| sled::IVec::from(serde_json::to_vec(meta).expect("meta serialises")));
        let before = put_meta(h, table, value)?;
        let (failure, refuse_undo) = self.injected_sync_failure();
        match failure.map_or_else(|| h.sync(), Err) {
            Ok(()) => {
                // Everything written before is durable too, undone changes included (with
                // the store not failed: then a later sync of the same files would say
                // nothing of the one that failed).
                if self.failure().is_none() {
                    self.unsynced_meta.lock().expect("unsynced meta").clear();
                }
                Ok(())
            }
            Err(e) => Err(self.undo_meta(h, table, before, e, refuse_undo)),
        }
    }

    /// After `table`'s meta sync failed with `e`: puts `before` back at once, before the
    /// publish lock goes. The next change of this table then starts from the durable meta,
    /// and what sled writes out later (its flusher, its close) holds the undo. Recorded for
    /// the reopen too, in case sled failed and refuses the undo; the first value recorded
    /// is the durable one.
    fn undo_meta(
        &self,
        h: &Handles,
        table: &str,
        before: Option<sled::IVec>,
        e: StoreError,
        refuse: bool,
    ) -> StoreError {
        self.unsynced_meta.lock().expect("unsynced meta").entry(table.to_owned()).or_insert(before.clone());
        let undone = if refuse {
            Err(sled::Error::Io(std::io::Error::from_raw_os_error(28)))
        } else {
            put_meta(h, table, before).map(drop)
        };
        match (&e, undone) {
            (_, Err(undo)) => self.mark_failed_with(format!(
                "a meta sync failed ({e}) and so did its undo ({undo}): the table `{table}` is put back when the store is opened again"
            )),
            (StoreError::Sled(sled::Error::Io(io)), Ok(())) => self.mark_failed(io),
            _ => {}
        }
        e
    }

    /// Tests: the failure injected in place of the next meta sync, and whether the undo is
    /// refused too.
    fn injected_sync_failure(&self) -> (Option<StoreError>, bool) {
        #[cfg(test)]
        match self.fail_next_meta_sync.swap(0, std::sync::atomic::Ordering::Relaxed) {
            0 => {}
            mode => return (Some(sled::Error::Io(std::io::Error::from_raw_os_error(28)).into()), mode == 2),
        }
        (None, false)
    }

    /// Makes every write so far durable, the drops of retired versions included.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.retiring.wait();
        self.write_checked(Handles::sync)
    }
}

impl Drop for Store {
    /// A tree half dropped when the process ends can stay in the data dir for good (sled
    /// lets go of its name before it walks its pages): its drop finishes first.
    fn drop(&mut self) {
        self.retiring.wait();
        if self.failure.get_mut().unwrap_or_else(|e| e.into_inner()).is_some() {
            let handles = self.handles.get_mut().unwrap_or_else(|e| e.into_inner()).take();
            let tables = self.served.get_mut().unwrap_or_else(|e| e.into_inner()).drain().collect();
            close_caught((handles, tables));
        }
    }
}

/// Refuses `staged` when its table's current version was staged after it (version numbers
/// are given in the order runs begin): see [`StoreError::Superseded`]. A version made
/// current by a rollback counts like any other.
fn check_not_superseded(meta: &Option<TableMeta>, staged: &StagedVersion) -> Result<(), StoreError> {
    match current_version(meta) {
        Some(current) if current.version > staged.version => Err(StoreError::Superseded {
            table: staged.table.clone(),
            version: staged.version,
            current: current.version,
            job: current.job.clone(),
            run_id: current.run_id,
        }),
        _ => Ok(()),
    }
}

/// The current version's entry in `meta`, if the table has one.
fn current_version(meta: &Option<TableMeta>) -> Option<&VersionInfo> {
    meta.as_ref().and_then(|m| m.versions.iter().find(|v| v.version == m.current))
}

/// Sets `table`'s meta entry to `value` (None: removes it), not synced; the entry before.
fn put_meta(h: &Handles, table: &str, value: Option<sled::IVec>) -> sled::Result<Option<sled::IVec>> {
    match value {
        Some(value) => h.meta.insert(table_key(table), value),
        None => h.meta.remove(table_key(table)),
    }
}

fn table_meta(h: &Handles, table: &str) -> Result<Option<TableMeta>, StoreError> {
    match h.meta.get(table_key(table))? {
        None => Ok(None),
        Some(v) => decode_meta(table, &v).map(Some),
    }
}

fn tables_of(h: &Handles) -> Result<Vec<(String, TableMeta)>, StoreError> {
    let mut out = Vec::new();
    for entry in h.meta.scan_prefix(TABLE_KEY_PREFIX) {
        let (key, value) = entry?;
        let table = String::from_utf8_lossy(&key[TABLE_KEY_PREFIX.len()..]).into_owned();
        let meta = decode_meta(&table, &value)?;
        out.push((table, meta));
    }
    Ok(out)
}

/// Removes the snapshot files sled left unfinished; whether there were any. sled 0.34
/// writes a snapshot (at each open) to `snap.<lsn>.generating` and renames it once whole,
/// but on open reads the newest-named `snap.*` file, such a leftover included: after a
/// snapshot write that failed for space the store would not open again, even once space
/// was freed ("corrupted data"). Only called after an open failed that way: the open that
/// wrote the file never finished, so sled does not need it (the snapshot before it and the
/// log hold everything).
fn remove_partial_snapshots(dir: &Path) -> Result<bool, StoreError> {
    let mut removed = false;
    for entry in std::fs::read_dir(dir).map_err(sled::Error::Io)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %entry.path().display(), "removing a snapshot sled left unfinished");
            std::fs::remove_file(entry.path()).map_err(sled::Error::Io)?;
            removed = true;
        }
    }
    Ok(removed)
}

/// The served tables, locked for writing.
type ServedGuard<'s> = RwLockWriteGuard<'s, HashMap<String, Arc<ServedTable>>>;

/// The failed database and the tables served from it, taken out of the store.
type FailedDatabase = (Option<Arc<Handles>>, Vec<(String, Arc<ServedTable>)>);

/// Drops what holds a failed database, catching a panic: sled fsyncs its log as the
/// database closes and panics if that fails, as it does when a failed write-back is
/// reported to sled's own handle too (Linux reports one to each handle open when it
/// happened). Uncaught, the panic would poison the store's locks.
fn close_caught(database: FailedDatabase) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(database))).is_err() {
        tracing::warn!("sled panicked closing the failed database (it does when its closing fsync fails)");
    }
}

/// Writes, syncs and removes a scratch file in `dir`: whether the disk takes writes.
fn probe_write(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".recd-write-probe");
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&vec![0u8; PROBE_WRITE_BYTES])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

fn table_key(table: &str) -> Vec<u8> {
    format!("{TABLE_KEY_PREFIX}{table}").into_bytes()
}

fn numbered_key(table: &str) -> Vec<u8> {
    format!("{NUMBERED_KEY_PREFIX}{table}").into_bytes()
}

fn data_tree_name(table: &str, version: u64) -> String {
    format!("{DATA_TREE_PREFIX}{table}/{version:020}")
}

fn decode_meta(table: &str, bytes: &[u8]) -> Result<TableMeta, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Meta { table: table.to_owned(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::encode_list;

    /// A data dir marked with format `version`, holding nothing else.
    fn marked_store(version: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree(META_TREE).unwrap().insert(KEY_FORMAT, version.as_bytes()).unwrap();
        db.flush().unwrap();
        dir
    }

    #[test]
    fn a_format_1_store_is_upgraded_in_place_and_other_formats_are_refused() {
        let dir = marked_store("1");
        let retention = Retention { count: 2, max_age: None };
        let store = Store::open(dir.path(), retention).unwrap();
        let marked = store.h().unwrap().meta.get(KEY_FORMAT).unwrap().unwrap();
        assert_eq!(marked.as_ref(), FORMAT_VERSION.to_string().as_bytes());
        drop(store);
        let dir = marked_store("7");
        let err = Store::open(dir.path(), retention).err().expect("format 7 is refused").to_string();
        assert!(err.contains("store format version 7 is not supported (this recd writes 2)"), "{err}");
    }

    #[test]
    fn reads_through_the_cache_follow_publishes_and_rollbacks() {
        let dir = tempfile::tempdir().unwrap();
        let caches = Caches { sled_bytes: 1 << 24, read_bytes: 1 << 20, disk_reserve_bytes: 0 };
        let store = Store::open_with(dir.path(), Retention { count: 3, max_age: None }, caches).unwrap();
        let score = |store: &Store| {
            let value = store.served("t").unwrap().get(b"u").unwrap().unwrap();
            decode_list(&value)[0].1
        };
        for round in 1..=2u64 {
            let mut staged = store.stage("t", "job", round, TableKind::Lists).unwrap();
            staged.put_user("u", &mut [("i", round as f32)]).unwrap();
            store.publish(staged).unwrap();
            // read twice: the second comes from the cache
            assert_eq!(score(&store), round as f32);
            assert_eq!(score(&store), round as f32);
        }
        store.rollback("t", Some(1)).unwrap();
        assert_eq!(score(&store), 1.0);
        store.rollback("t", Some(2)).unwrap();
        assert_eq!(score(&store), 2.0);
    }

    #[test]
    fn publish_switches_versions_and_keeps_the_retained_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Retention { count: 2, max_age: None }).unwrap();
        for round in 1..=3u64 {
            let mut staged = store.stage("t", "job", round, TableKind::Lists).unwrap();
            staged.put_user("u", &mut [("i", round as f32)]).unwrap();
            let info = store.publish(staged).unwrap();
            assert_eq!(info.version, round);
        }
        let served = store.served("t").unwrap();
        assert_eq!(served.version, 3);
        let value = served.get(b"u").unwrap().unwrap();
        assert_eq!(decode_list(&value)[0].1, 3.0);
        let (_, meta) = store.tables().unwrap().remove(0);
        let kept: Vec<u64> = meta.versions.iter().map(|v| v.version).collect();
        assert_eq!(kept, vec![2, 3]);
    }

    fn publish_value(store: &Store, round: u64) -> VersionInfo {
        let mut staged = store.stage("t", "job", round, TableKind::Lists).unwrap();
        staged.put_user("u", &mut [("i", round as f32)]).unwrap();
        staged.put_user("v", &mut [("j", 1.0), ("k", 2.0)]).unwrap();
        store.publish(staged).unwrap()
    }

    fn served_score(store: &Store) -> f32 {
        let value = store.served("t").unwrap().get(b"u").unwrap().unwrap();
        decode_list(&value)[0].1
    }

    #[test]
    fn rollback_makes_a_retained_version_current_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Retention { count: 3, max_age: None }).unwrap();
            for round in 1..=3 {
                publish_value(&store, round);
            }
            assert_eq!(store.rollback("t", None).unwrap().version, 2);
            assert_eq!(served_score(&store), 2.0);
            assert_eq!(store.rollback("t", Some(1)).unwrap().version, 1);
            assert_eq!(served_score(&store), 1.0);
            let err = store.rollback("t", Some(9)).unwrap_err().to_string();
            assert_eq!(err, "table `t` keeps no version 9 (retained: 1, 2, 3)");
            assert!(matches!(store.rollback("nope", None), Err(StoreError::NoTable(_))));
            assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        }
        let store = Store::open(dir.path(), Retention { count: 3, max_age: None }).unwrap();
        assert_eq!(served_score(&store), 1.0, "the rollback is durable");
        // the next publish numbers on from the highest kept and drops the oldest other than it
        assert_eq!(publish_value(&store, 4).version, 4);
        let (_, meta) = store.tables().unwrap().remove(0);
        assert_eq!(meta.versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn versions_older_than_max_age_are_dropped_but_never_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { count: 10, max_age: Some(std::time::Duration::from_millis(50)) };
        let store = Store::open(dir.path(), retention).unwrap();
        publish_value(&store, 1);
        std::thread::sleep(std::time::Duration::from_millis(120));
        publish_value(&store, 2);
        let (_, meta) = store.tables().unwrap().remove(0);
        assert_eq!(meta.versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![2]);
        std::thread::sleep(std::time::Duration::from_millis(120));
        // old, but current: kept
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        store.flush().unwrap();
        assert!(!store.h().unwrap().db.tree_names().iter().any(|n| n.as_ref() == data_tree_name("t", 1).as_bytes()));
    }

    #[test]
    fn migrate_copies_every_table_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("old"), dir.path().join("new"));
        {
            let store = Store::open(&from, Retention { count: 3, max_age: None }).unwrap();
            publish_value(&store, 1);
            publish_value(&store, 2);
            store.rollback("t", Some(1)).unwrap();
        }
        assert_eq!(Store::migrate(&from, &to).unwrap(), 1);
        let store = Store::open(&to, Retention { count: 3, max_age: None }).unwrap();
        assert_eq!(served_score(&store), 1.0, "the current version, rolled back, is kept");
        let (_, meta) = store.tables().unwrap().remove(0);
        assert_eq!(meta.versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2]);
        let err = Store::migrate(&from, &to).unwrap_err().to_string();
        assert!(err.ends_with("is not empty"), "{err}");
    }

    #[test]
    fn two_runs_writing_one_table_at_once_get_versions_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Retention { count: 3, max_age: None }).unwrap();
        let mut a = store.stage("t", "job-a", 1, TableKind::Lists).unwrap();
        let mut b = store.stage("t", "job-b", 2, TableKind::Lists).unwrap();
        assert_eq!((a.version, b.version), (1, 2));
        a.put_user("u", &mut [("a", 1.0)]).unwrap();
        b.put_user("u", &mut [("b", 1.0)]).unwrap();
        store.discard(b).unwrap();
        assert_eq!(store.publish(a).unwrap().version, 1, "discarding b left a's tree alone");
        assert_eq!(decode_list(&store.served("t").unwrap().get(b"u").unwrap().unwrap())[0].0, b"a");
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        // b's number is not given again, nor a number given before a reopen.
        let c = store.stage("t", "job-c", 3, TableKind::Lists).unwrap();
        assert_eq!(c.version, 3);
        store.discard(c).unwrap();
        drop(store);
        let store = Store::open(dir.path(), Retention { count: 3, max_age: None }).unwrap();
        assert_eq!(store.stage("t", "job-d", 4, TableKind::Lists).unwrap().version, 4);
    }

    #[test]
    fn a_snapshot_sled_left_half_written_does_not_keep_the_store_from_opening() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { count: 3, max_age: None };
        publish_value(&Store::open(dir.path(), retention).unwrap(), 1);
        // What a snapshot write cut short by a full disk leaves: newer than any whole one.
        let partial = dir.path().join("snap.FFFFFFFFFFFFFFFF.generating");
        std::fs::write(&partial, b"cut").unwrap();
        let store = Store::open(dir.path(), retention).unwrap();
        assert_eq!(served_score(&store), 1.0);
        assert!(!partial.exists());
    }

    #[test]
    fn a_run_that_began_first_and_ends_last_does_not_replace_the_newer_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Retention { count: 3, max_age: None }).unwrap();
        let mut nightly = store.stage("t", "nightly", 1, TableKind::Lists).unwrap();
        let mut hourly = store.stage("t", "hourly", 2, TableKind::Lists).unwrap();
        nightly.put_user("u", &mut [("old", 1.0)]).unwrap();
        hourly.put_user("u", &mut [("new", 1.0)]).unwrap();
        assert_eq!(store.publish(hourly).unwrap().version, 2);
        let err = store.publish(nightly).unwrap_err();
        assert!(matches!(err, StoreError::Superseded { version: 1, current: 2, run_id: 2, .. }), "{err}");
        assert!(err.to_string().contains("version 2 (job `hourly`, run 2), from a run that began after"), "{err}");
        assert_eq!(decode_list(&store.served("t").unwrap().get(b"u").unwrap().unwrap())[0].0, b"new");
        // Its rows are gone at once (verify lists a tree nothing references).
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        // A version staged after a rollback still publishes: it began after the current one.
        publish_value(&store, 3);
        store.rollback("t", Some(2)).unwrap();
        assert_eq!(publish_value(&store, 4).version, 4);
        assert_eq!(store.rollback("t", None).unwrap().version, 3, "the rollback goes to the version before");
    }

    #[test]
    fn a_reopen_waits_for_reads_of_the_failed_database_and_gives_it_back_while_they_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Retention { count: 3, max_age: None }).unwrap();
        publish_value(&store, 1);
        store.mark_failed_with("a test failure".into());
        // A read holding a served table past the wait: the database is given back.
        let reading = store.served("t").unwrap();
        let err = store.recover().unwrap_err().to_string();
        assert!(err.contains("a test failure; reads still hold the failed database"), "{err}");
        assert_eq!(served_score(&store), 1.0, "still served");
        assert!(store.tables().is_ok() && store.failure().is_some());
        // A read that looks up another table while the reopen waits, then ends: the reopen
        // goes on (the wait holds no lock such a read needs).
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let another = store.served("t").unwrap();
                drop((another, reading));
            });
            store.recover().unwrap();
        });
        assert!(store.failure().is_none());
        assert_eq!(served_score(&store), 1.0);
    }

    #[test]
    fn a_meta_change_whose_sync_failed_never_takes_effect_once_the_store_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { count: 3, max_age: None };
        let store = Store::open(dir.path(), retention).unwrap();
        let current =
            |store: &Store| store.tables().unwrap().into_iter().map(|(t, m)| (t, m.current)).collect::<Vec<_>>();
        // 1: the sync fails; 2: sled refuses the undo too.
        let fail_next_sync =
            |store: &Store, mode: u8| store.fail_next_meta_sync.store(mode, std::sync::atomic::Ordering::Relaxed);
        let publish_failing = |store: &Store, mode: u8, score: f32| {
            fail_next_sync(store, mode);
            let mut staged = store.stage("t", "job", 9, TableKind::Lists).unwrap();
            staged.put_user("u", &mut [("i", score)]).unwrap();
            assert!(store.publish(staged).unwrap_err().to_string().contains("os error 28"));
            assert!(store.failure().is_some(), "the store is marked failed");
        };
        let t = |v: u64| vec![("t".to_string(), v)];
        publish_value(&store, 1);
        // A publish whose meta sync fails is reported failed, and stays so: undone at once.
        publish_failing(&store, 1, 2.0);
        assert_eq!((current(&store), served_score(&store)), (t(1), 1.0));
        store.recover().unwrap();
        assert_eq!((current(&store), served_score(&store)), (t(1), 1.0));
        assert_eq!(store.verify().unwrap(), Vec::<String>::new(), "the failed version's rows are dropped");
        // Where sled refuses the undo, the reopen puts the durable meta back.
        publish_failing(&store, 2, 2.0);
        let stored: Vec<_> = tables_of(&store.h().unwrap()).unwrap().into_iter().map(|(t, m)| (t, m.current)).collect();
        assert_eq!(stored, t(3), "sled kept the change (3: the failed 2's number is not given again)");
        // What `tables` (INFO, `recd status`) calls current is what readers get, not the meta.
        assert_eq!((current(&store), served_score(&store)), (t(1), 1.0));
        store.recover().unwrap();
        assert_eq!((current(&store), served_score(&store)), (t(1), 1.0));
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        // So do a rollback and a drop. The failed publishes' numbers are not used again.
        let v = publish_value(&store, 3).version;
        assert_eq!(v, 4, "after version 1 and the failed 2 and 3");
        fail_next_sync(&store, 1);
        assert!(store.rollback("t", Some(1)).is_err());
        store.recover().unwrap();
        assert_eq!((current(&store), served_score(&store)), (t(v), 3.0));
        fail_next_sync(&store, 1);
        assert!(store.drop_table("t").is_err());
        store.recover().unwrap();
        assert_eq!((current(&store), served_score(&store)), (t(v), 3.0));
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        // A store closed right after a failed publish, with no reopen, comes back without it.
        publish_failing(&store, 1, 4.0);
        drop(store);
        let store = Store::open(dir.path(), retention).unwrap();
        assert_eq!((current(&store), served_score(&store)), (t(v), 3.0));
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn rows_applied_by_several_writer_threads_are_all_in_the_version_and_a_discard_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Retention { count: 2, max_age: None }).unwrap();
        let user = |u: usize| format!("user-{u:05}");
        let mut staged = store.stage("t", "job", 1, TableKind::Lists).unwrap();
        staged.writer_threads = 3;
        let applying = staged.write_nanos();
        // Five batches of 4,096 users and a partial one, over three threads.
        for u in 0..21_000 {
            staged.put_user(&user(u), &mut [(format!("i{u}"), (u + 1) as f32), ("common".into(), 0.5)]).unwrap();
        }
        let info = store.publish(staged).unwrap();
        assert_eq!((info.users, info.rows), (21_000, 42_000));
        assert!(applying.load(std::sync::atomic::Ordering::Relaxed) > 0);
        let served = store.served("t").unwrap();
        for u in [0, 4_095, 4_096, 12_345, 20_479, 20_480, 20_999] {
            let value = served.get(user(u).as_bytes()).unwrap().unwrap();
            let list = decode_list(&value);
            let items: Vec<&[u8]> = list.iter().map(|(item, _)| *item).collect();
            assert_eq!(items, [format!("i{u}").as_bytes(), b"common"], "user {u}");
        }
        // What is stored sums to the checksum taken as the rows were staged.
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        // A version discarded while its threads write: they finish, its tree goes, and
        // the published one is untouched.
        let mut doomed = store.stage("t", "job", 2, TableKind::Lists).unwrap();
        doomed.writer_threads = 3;
        for u in 0..13_000 {
            doomed.put_user(&user(u), &mut [("x", 1.0)]).unwrap();
        }
        store.discard(doomed).unwrap();
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        assert_eq!(store.served("t").unwrap().version, 1);
        let names: Vec<String> =
            store.h().unwrap().db.tree_names().iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
        assert!(!names.iter().any(|n| n == &data_tree_name("t", 2)), "{names:?}");
    }

    #[test]
    fn verify_does_not_count_a_version_being_written_as_left_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Retention { count: 2, max_age: None }).unwrap();
        publish_value(&store, 1);
        let mut staged = store.stage("t", "job", 2, TableKind::Lists).unwrap();
        staged.put_user("u", &mut [("i", 1.0)]).unwrap();
        staged.write_pending().unwrap();
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        store.discard(staged).unwrap();
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn verify_finds_a_version_that_differs_from_what_was_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Retention { count: 2, max_age: None }).unwrap();
        publish_value(&store, 1);
        // the checksum does not depend on the order rows were streamed in
        let mut a = store.stage("t", "job", 2, TableKind::Lists).unwrap();
        a.put_user("v", &mut [("j", 1.0), ("k", 2.0)]).unwrap();
        a.put_user("u", &mut [("i", 1.0)]).unwrap();
        assert_eq!(a.checksum, store.tables().unwrap()[0].1.versions[0].checksum);
        store.discard(a).unwrap();
        store.served("t").unwrap().tree.insert(b"u", encode_list(&mut [("x", 9.0)])).unwrap();
        let problems = store.verify().unwrap();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("t version 1: stored 2 users, 3 rows, checksum"), "{problems:?}");
    }

    #[test]
    fn a_published_huge_list_is_in_the_read_cache_before_anyone_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let caches = Caches { sled_bytes: 64 << 20, read_bytes: 64 << 20, disk_reserve_bytes: 0 };
        let store = Store::open_with(dir.path(), Retention { count: 2, max_age: None }, caches).unwrap();
        let mut staged = store.stage("t", "job", 1, TableKind::Lists).unwrap();
        let mut big: Vec<(String, f32)> = (0..40_000).map(|i| (format!("item-{i:05}"), i as f32)).collect();
        staged.put_user("big", &mut big).unwrap();
        staged.put_user("small", &mut [("i", 1.0)]).unwrap();
        store.publish(staged).unwrap();
        let served = store.served("t").unwrap();
        assert!(store.read_cache.holds_large(served.generation, b"big"));
        assert!(!store.read_cache.holds_large(served.generation, b"small"));
        assert_eq!(decode_list(&served.get(b"big").unwrap().unwrap()).len(), 40_000);
    }

    #[test]
    fn staged_data_left_by_a_crash_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Retention { count: 2, max_age: None }).unwrap();
            let mut staged = store.stage("t", "job", 1, TableKind::Lists).unwrap();
            staged.put_user("u", &mut [("i", 1.0)]).unwrap();
            staged.write_pending().unwrap();
            store.flush().unwrap();
            // dropped without publish or discard, as a crash would leave it
        }
        let store = Store::open(dir.path(), Retention { count: 2, max_age: None }).unwrap();
        assert!(store.served("t").is_none());
        let names: Vec<String> =
            store.h().unwrap().db.tree_names().iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
        assert!(!names.iter().any(|n| n.starts_with(DATA_TREE_PREFIX)), "left: {names:?}");
    }

    #[test]
    fn a_gate_compares_with_the_current_version_while_the_served_one_lags() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Retention { count: 3, max_age: None }).unwrap();
        let lists = |item: &str, run: u64| {
            let mut staged = store.stage("t", "job", run, TableKind::Lists).unwrap();
            for u in 0..100 {
                staged.put_user(&format!("user-{u}"), &mut [(item, 1.0)]).unwrap();
            }
            staged
        };
        store.publish(lists("a", 1)).unwrap();
        let first = store.served("t").unwrap();
        store.publish(lists("b", 2)).unwrap();
        // As while a publish of version 2 switches: its meta written, version 1 still served.
        store.served.write().unwrap().insert("t".into(), first);
        let gate = Gate { max_changed_share: Some(0.5), changed_jaccard: 0.5, ..Gate::default() };
        let info = store.publish_gated(lists("b", 3), &gate).unwrap();
        assert!(!info.held, "compared with version 1's lists, not the current version's: {:?}", info.gate);
        assert_eq!(info.gate.and_then(|g| g.changed_share), Some(0.0));
    }
}
