//! A version being written: rows go to a fresh data tree in batches; nothing reads it
//! until [`Store::publish`] makes it current.

use super::codec::{encode_hash, encode_list, row_hash, served_list_len};
use super::{MAX_WARMED_USERS, Store, StoreError, TableKind};
use crate::read_cache::LARGE_VALUE_BYTES;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Takes a version off the staging list once it is published or discarded, however that
/// ends.
pub(super) struct Unstage<'s>(pub(super) &'s Store, pub(super) String);

impl Drop for Unstage<'_> {
    fn drop(&mut self) {
        self.0.staging.lock().expect("staging").remove(&self.1);
    }
}

/// A version being written; invisible to readers until [`Store::publish`].
pub struct StagedVersion {
    pub table: String,
    pub(super) job: String,
    pub(super) run_id: u64,
    pub version: u64,
    pub kind: TableKind,
    pub(super) tree: sled::Tree,
    /// Rows staged and not yet handed to the writers: (user, encoded value).
    pub(super) batch: Vec<(Box<str>, Vec<u8>)>,
    /// Where full batches go; started with the first one, with `writer_threads` threads.
    pub(super) writers: Option<Writers>,
    pub(super) writer_threads: usize,
    /// Nanoseconds the writer threads spent applying batches, summed over them.
    pub(super) applying: Arc<AtomicU64>,
    pub users: u64,
    pub rows: u64,
    /// Published with the version: see [`TableMeta::fallback`].
    pub fallback: Vec<String>,
    /// Users whose value is at least [`LARGE_VALUE_BYTES`], read into the cache at publish.
    pub(super) large_users: Vec<String>,
    /// See [`VersionInfo::checksum`].
    pub(super) checksum: u64,
    /// Published with the version: see [`VersionInfo::lineage`].
    pub lineage: Option<super::Lineage>,
    /// Checked by the writer threads before each batch (none without a disk reserve).
    pub(super) free_space: Option<Arc<super::reserve::FreeSpace>>,
}

impl StagedVersion {
    /// Adds one user's list (any order; it is sorted here as Redis orders a sorted set).
    pub fn put_user<S: AsRef<str>>(&mut self, user: &str, list: &mut [(S, f32)]) -> Result<(), StoreError> {
        let value = encode_list(list);
        self.put(user, value, list.len())
    }

    /// Adds one user's hash: field names and values, in the order HGETALL gives them.
    pub fn put_hash(&mut self, user: &str, fields: &[(String, String)]) -> Result<(), StoreError> {
        self.put(user, encode_hash(fields), 1)
    }

    pub(super) fn put(&mut self, user: &str, value: Vec<u8>, rows: usize) -> Result<(), StoreError> {
        // Sized as the read cache will hold it: a list gains its JSON there.
        let served = match self.kind {
            TableKind::Lists => served_list_len(&value),
            TableKind::Hashes => value.len(),
        };
        if served >= LARGE_VALUE_BYTES && self.large_users.len() < MAX_WARMED_USERS {
            self.large_users.push(user.to_string());
        }
        self.checksum = self.checksum.wrapping_add(row_hash(user.as_bytes(), &value));
        self.batch.push((user.into(), value));
        self.users += 1;
        self.rows += rows as u64;
        if self.batch.len() >= BATCH_USERS {
            self.send_pending()?;
        }
        Ok(())
    }

    /// The nanoseconds the writer threads spend applying this version's rows to its tree,
    /// summed over them (read it after publishing for the whole of it).
    pub fn write_nanos(&self) -> Arc<AtomicU64> {
        self.applying.clone()
    }

    /// The checksum of the rows staged so far (see [`VersionInfo::checksum`]).
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// Whether `user` is already written to this version (pending rows included).
    pub fn contains_user(&mut self, user: &str) -> Result<bool, StoreError> {
        self.write_pending()?;
        Ok(self.tree.contains_key(user.as_bytes())?)
    }

    /// Hands the pending rows to the writer threads (without waiting for them).
    fn send_pending(&mut self) -> Result<(), StoreError> {
        if !self.batch.is_empty() {
            let writers = self.writers.get_or_insert_with(|| {
                Writers::start(&self.tree, &self.applying, self.writer_threads, self.free_space.clone())
            });
            writers.send(std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_USERS)))?;
        }
        Ok(())
    }

    /// Writes every row staged so far into the version's tree and waits until they are
    /// there (before a lookup in it, and before publishing).
    pub(super) fn write_pending(&mut self) -> Result<(), StoreError> {
        self.send_pending()?;
        self.writers.as_mut().map_or(Ok(()), Writers::wait)
    }
}

/// Applies a version's batches of rows on the store's writer threads ([`pool`]), so the
/// thread taking the worker's rows (decoding, checks, encoding) does not wait for sled's
/// inserts, and on a host with cores to spare several batches go in at once (a sled tree
/// takes concurrent inserts; the version's checksum is a sum, whatever the order). Each
/// thread has at most two jobs queued beside the one it applies: memory stays a few
/// batches.
pub(super) struct Writers {
    tree: sled::Tree,
    applying: Arc<AtomicU64>,
    /// The first error a batch of this version met; later batches are not applied.
    failed: Arc<Mutex<Option<StoreError>>>,
    /// Checked before each batch is applied: the disk keeps its floor.
    free_space: Option<Arc<super::reserve::FreeSpace>>,
    /// Threads of the pool this version uses, and the next one's turn.
    threads: usize,
    next: usize,
}

/// Work for a writer thread.
type Job = Box<dyn FnOnce() + Send>;

/// The store's writer threads ([`MAX_WRITER_THREADS`]; a version uses
/// [`writer_threads`] of them), one queue each, for the life of the process. Long-lived
/// on purpose: sled frees what an insert replaces through crossbeam-epoch, and the
/// garbage a thread defers is reclaimed as that thread goes on working. Threads started
/// for a version and ended at its publish left theirs behind: the daemon grew by about
/// 180 MB a run of the M workload (2.2 GB after 12), where one thread doing it all
/// stays flat.
fn pool() -> &'static [std::sync::mpsc::SyncSender<Job>] {
    static POOL: OnceLock<Vec<std::sync::mpsc::SyncSender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        (0..MAX_WRITER_THREADS)
            .map(|i| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(2);
                std::thread::Builder::new()
                    .name(format!("store-writer-{i}"))
                    .spawn(move || {
                        // Background work: reads on the socket and the worker's model come
                        // first. A writer that lags fills its queue, which holds the
                        // collecting thread and so the worker: it cannot fall far behind.
                        lower_priority();
                        rx.into_iter().for_each(|job| job())
                    })
                    .expect("starting a store writer thread");
                tx
            })
            .collect()
    })
}

impl Writers {
    fn start(
        tree: &sled::Tree,
        applying: &Arc<AtomicU64>,
        threads: usize,
        free_space: Option<Arc<super::reserve::FreeSpace>>,
    ) -> Writers {
        let threads = threads.clamp(1, pool().len());
        Writers { tree: tree.clone(), applying: applying.clone(), failed: Arc::default(), free_space, threads, next: 0 }
    }

    /// Queues a batch for the next thread in turn; the error a batch before met, if any.
    /// The writer inserts the rows one at a time, not as a `sled::Batch`. A version needs no
    /// atomic batch: nothing reads it while its writers run (a lookup and the publish wait
    /// for them), and a crash leaves it unreferenced, dropped on open. And sled 0.34 applies
    /// a batch holding a process-wide lock exclusively, a lock that from the first batch on
    /// every read and insert of every tree takes too: reads of the served table waited for
    /// each batch of 4,096 rows (the slowest read during an M run 23-78 ms, 2.3-3.3 ms with
    /// inserts) and the writer threads took turns. Without batches the daemon also used 16%
    /// less CPU per M run and peaked at 159 MiB against 263. The writer copies each row into
    /// sled itself: what sled keeps is then allocated on the writer thread, not on the
    /// collecting thread too (under glibc's malloc, an arena per thread, with the rows
    /// encoded on one thread and kept by another the daemon's peak was about twice the
    /// inline writer's: 814 against 411 MiB on the L workload).
    fn send(&mut self, rows: Vec<(Box<str>, Vec<u8>)>) -> Result<(), StoreError> {
        self.check()?;
        let (tree, applying, failed) = (self.tree.clone(), self.applying.clone(), self.failed.clone());
        let free_space = self.free_space.clone();
        let job: Job = Box::new(move || {
            if failed.lock().expect("writer errors").is_some() {
                return;
            }
            // Here, not as the batch is queued: only the batches other threads apply now
            // can go to the disk beside this one.
            if let Err(e) = free_space.as_ref().map_or(Ok(()), |f| f.check()) {
                failed.lock().expect("writer errors").get_or_insert(e);
                return;
            }
            let started = std::time::Instant::now();
            let applied = rows.iter().try_for_each(|(user, value)| tree.insert(&**user, value.as_slice()).map(drop));
            drop(rows);
            applying.fetch_add(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
            if let Err(e) = applied {
                failed.lock().expect("writer errors").get_or_insert(e.into());
            }
        });
        let at = self.next % self.threads;
        self.next += 1;
        pool()[at].send(job).map_err(|_| sled::Error::ReportableBug("a store writer thread ended".into()))?;
        Ok(())
    }

    /// The error a batch of this version met, if any (kept: later batches stay unapplied).
    fn check(&self) -> Result<(), StoreError> {
        match &*self.failed.lock().expect("writer errors") {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Waits until every batch queued so far is applied (each thread's queue is in
    /// order: a marker behind them answers once they are); the first error of any.
    fn wait(&mut self) -> Result<(), StoreError> {
        // The threads given a batch since the last wait; none are left after this one.
        let used = self.threads.min(std::mem::take(&mut self.next));
        let answers: Vec<_> = pool()[..used]
            .iter()
            .map(|queue| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
                let _ = queue.send(Box::new(move || {
                    let _ = tx.send(());
                }));
                rx
            })
            .collect();
        for answer in answers {
            answer.recv().map_err(|_| sled::Error::ReportableBug("a store writer thread ended".into()))?;
        }
        self.check()
    }
}

impl Drop for Writers {
    /// A version dropped unpublished: what its threads hold is applied before its tree
    /// goes.
    fn drop(&mut self) {
        let _ = self.wait();
    }
}

/// Gives the calling thread [`WRITER_NICENESS`], as the store's background threads run.
/// (Linux applies a thread id's niceness to that thread alone.)
pub(super) fn lower_priority() {
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), WRITER_NICENESS);
}

/// The writer threads' niceness (0 is the daemon's own). With it the M workload's scoring
/// stage went from 0.72-0.88 s to 0.60-0.66 s in one A/B on this 2-core machine, the
/// whole job a little faster too.
const WRITER_NICENESS: i32 = 10;

/// Users per batch handed to a writer.
const BATCH_USERS: usize = 4096;

/// Threads in the pool; a version uses [`writer_threads`] of them.
const MAX_WRITER_THREADS: usize = 4;

/// The writer threads a version uses: a quarter of the cores, 1 to 4 (the collecting
/// thread and the worker need the others).
pub(super) fn writer_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get() / 4).clamp(1, MAX_WRITER_THREADS)
}
