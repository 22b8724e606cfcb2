//! A version being written: rows go to a fresh data tree in batches; nothing reads it
//! until [`Store::publish`] makes it current.

use super::codec::{encode_hash, encode_list, row_hash, served_list_len};
use super::{MAX_WARMED_USERS, Store, StoreError, TableKind};
use crate::read_cache::LARGE_VALUE_BYTES;

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
    pub(super) batch: sled::Batch,
    /// Where full batches go; started with the first one, with `writer_threads` threads.
    pub(super) writers: Option<Writers>,
    pub(super) writer_threads: usize,
    /// Nanoseconds the writer threads spent applying batches, summed over them.
    pub(super) applying: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub(super) pending: usize,
    pub users: u64,
    pub rows: u64,
    /// Published with the version: see [`TableMeta::fallback`].
    pub fallback: Vec<String>,
    /// Users whose value is at least [`LARGE_VALUE_BYTES`], read into the cache at publish.
    pub(super) large_users: Vec<String>,
    /// See [`VersionInfo::checksum`].
    pub(super) checksum: u64,
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
        self.batch.insert(user.as_bytes(), value);
        self.users += 1;
        self.rows += rows as u64;
        self.pending += 1;
        if self.pending >= 4096 {
            self.send_pending()?;
        }
        Ok(())
    }

    /// The nanoseconds the writer threads spend applying this version's rows to its tree,
    /// summed over them (read it after publishing for the whole of it).
    pub fn write_nanos(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
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
        if self.pending > 0 {
            let writers =
                self.writers.get_or_insert_with(|| Writers::start(&self.tree, &self.applying, self.writer_threads));
            writers.send(std::mem::take(&mut self.batch))?;
            self.pending = 0;
        }
        Ok(())
    }

    /// Writes every row staged so far into the version's tree and waits until they are
    /// there (before a lookup in it, and before publishing).
    pub(super) fn write_pending(&mut self) -> Result<(), StoreError> {
        self.send_pending()?;
        match self.writers.take() {
            Some(writers) => writers.finish(),
            None => Ok(()),
        }
    }
}

/// Applies a version's batches of rows on threads of their own, so the thread taking
/// the worker's rows (decoding, checks, encoding) does not wait for sled's inserts, and
/// on a host with cores to spare several batches go in at once (a sled tree takes
/// concurrent inserts; the version's checksum is a sum, whatever the order). Each thread
/// has at most one batch queued beside the one it applies: memory stays a few batches.
pub(super) struct Writers {
    queues: Vec<std::sync::mpsc::SyncSender<sled::Batch>>,
    threads: Vec<std::thread::JoinHandle<Result<(), sled::Error>>>,
    next: usize,
}

impl Writers {
    fn start(tree: &sled::Tree, applying: &std::sync::Arc<std::sync::atomic::AtomicU64>, count: usize) -> Writers {
        let (mut queues, mut threads) = (Vec::new(), Vec::new());
        for _ in 0..count.max(1) {
            let (tx, rx) = std::sync::mpsc::sync_channel::<sled::Batch>(1);
            let (tree, applying) = (tree.clone(), applying.clone());
            threads.push(std::thread::spawn(move || {
                rx.into_iter().try_for_each(|batch| {
                    let started = std::time::Instant::now();
                    let applied = tree.apply_batch(batch);
                    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    applying.fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
                    applied
                })
            }));
            queues.push(tx);
        }
        Writers { queues, threads, next: 0 }
    }

    /// Queues a batch for the next thread in turn. A thread that stopped on an error
    /// ends the writing: every thread is waited for and that error returned.
    fn send(&mut self, batch: sled::Batch) -> Result<(), StoreError> {
        let at = self.next % self.queues.len();
        self.next += 1;
        if self.queues[at].send(batch).is_ok() {
            return Ok(());
        }
        let writers = std::mem::replace(self, Writers { queues: Vec::new(), threads: Vec::new(), next: 0 });
        let stopped = sled::Error::ReportableBug("a store writer stopped".into());
        Err(writers.finish().err().unwrap_or(stopped.into()))
    }

    /// Waits until every queued batch is applied; the first error of any thread.
    fn finish(mut self) -> Result<(), StoreError> {
        self.queues.clear();
        let mut result = Ok(());
        for thread in self.threads.drain(..) {
            let applied =
                thread.join().unwrap_or_else(|_| Err(sled::Error::ReportableBug("a store writer panicked".into())));
            if let (Ok(()), Err(e)) = (&result, applied) {
                result = Err(e.into());
            }
        }
        result
    }
}

impl Drop for Writers {
    /// A version dropped unpublished: its threads finish what they hold before its tree
    /// is dropped.
    fn drop(&mut self) {
        self.queues.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Store writer threads per version: a quarter of the cores, 1 to 4 (the collecting
/// thread and the worker need the others).
pub(super) fn writer_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get() / 4).clamp(1, 4)
}
