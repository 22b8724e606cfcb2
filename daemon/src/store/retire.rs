//! Dropping trees, and freeing what sled keeps of them afterwards.
//!
//! sled drops a tree by walking it: it reads each page back (from disk if need be) and
//! hands it to crossbeam-epoch's garbage, under one epoch guard, on the dropping thread.
//! For a version of 1,000,000 users that walk took 0.6-1.0 s on a 2-core machine, and a
//! publish spent it under the publish lock, after the switch, with the run still waiting.
//! The versions retention lets go at a publish, and those of a table dropped (`recd drop`),
//! are dropped by [`Retiring`] on a thread of its own instead, once nobody reads them (see
//! [`Retiring::lease`]). The other drops (a staged version discarded or cleared, a held
//! version discarded, trees left over at open) stay where they are: none is served, and
//! what comes next may reuse the tree's name or must see it gone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::staged::lower_priority;

/// Trees of versions retention or `recd drop` let go, dropped in the background once their
/// readers end (the leases of their servings). While a tree is listed here nothing
/// references it (the meta that let it go is written first), a verify does not report it,
/// and a new version of its table is numbered above it.
pub(super) struct Retiring {
    names: Mutex<HashSet<String>>,
    dropped: Condvar,
    /// Held by the thread walking trees: one walk at a time, as when publishes
    /// dropped their versions under the publish lock. Walks side by side would each take a
    /// core beside the runs and read their versions' pages back at once (230-360 MB for
    /// 1,000,000 users); the epoch's garbage of one may still be freed while the next walks.
    walking: Mutex<()>,
    /// Live servings per tree name: see [`Retiring::lease`].
    leases: Mutex<Leases>,
    unleased: Condvar,
    /// [`READERS_WAIT_MAX`] in milliseconds (tests change it).
    readers_wait_ms: std::sync::atomic::AtomicU64,
}

impl Default for Retiring {
    fn default() -> Self {
        Retiring {
            names: Mutex::default(),
            dropped: Condvar::new(),
            walking: Mutex::default(),
            leases: Mutex::default(),
            unleased: Condvar::new(),
            readers_wait_ms: (READERS_WAIT_MAX.as_millis() as u64).into(),
        }
    }
}

/// The servings of each tree name, counted under a token that a drop giving up on them
/// retires with the tree: the readers it left behind then neither count toward nor take
/// from a new tree of the same name (in a store from before the count of version numbers
/// given, a table dropped and published again starts at version 1), which a drop would
/// otherwise wait for in vain. (After `recover` reopens
/// the store, readers still on the old handles share the new trees' tokens until a drop
/// gives up on them.)
#[derive(Default)]
struct Leases {
    live: HashMap<Vec<u8>, (u64, usize)>,
    tokens: u64,
}

/// How long a drop waits for the readers of its trees at most before it goes ahead.
/// Requests end in milliseconds; an export of a large table input can take seconds.
const READERS_WAIT_MAX: Duration = Duration::from_secs(60);

impl Retiring {
    /// Drops the trees `names` on a `recd-retire` thread and returns at once (if none can
    /// start, on this thread, after their readers' wait too). Call it after the meta that
    /// lets them go is durable: a crash before a tree is dropped then leaves it
    /// unreferenced, for the next open to drop.
    pub(super) fn retire(self: &Arc<Self>, db: &sled::Db, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        self.listed().extend(names.iter().cloned());
        let (retiring, db_for_thread, names_for_thread) = (Arc::clone(self), db.clone(), names.clone());
        let spawned = std::thread::Builder::new().name("recd-retire".into()).spawn(move || {
            // Background work, as the store's writers: reads and runs come first.
            lower_priority();
            if retiring.drop_trees(db_for_thread, &names_for_thread) {
                collect_epoch_garbage();
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("no thread to drop retired versions ({e}): dropping them on this one");
            if self.drop_trees(db.clone(), &names) {
                start_reclaiming();
            }
        }
    }

    /// Drops `names`' trees; whether any was there to drop.
    fn drop_trees(&self, db: sled::Db, names: &[String]) -> bool {
        let dropping = Dropping { retiring: self, db: Some(db), names };
        // Before the turn: a slow reader of one table holds up no other table's drops.
        self.wait_for_readers(names);
        let _turn = self.walking.lock().unwrap_or_else(PoisonError::into_inner);
        let db = dropping.db.as_ref().expect("the database");
        let mut any = false;
        for name in names {
            match db.drop_tree(name.as_bytes()) {
                Ok(dropped) => any |= dropped,
                // sled refuses every later write with the same error, and an unreferenced
                // tree still named is dropped at the next open.
                Err(e) => tracing::warn!(tree = %name, "dropping a version let go failed: {e}"),
            }
        }
        any
    }

    /// Waits until every tree handed to [`Retiring::retire`] is dropped (not yet freed):
    /// before a flush that must hold the drops, before the database is opened again. It
    /// waits for an empty list, so a caller must not let publishes add to it meanwhile
    /// (`recover` holds the publish lock; the others run with no runs left). A drop waits
    /// for its readers first, up to [`READERS_WAIT_MAX`].
    pub(super) fn wait(&self) {
        drop(self.dropped.wait_while(self.listed(), |names| !names.is_empty()).unwrap_or_else(PoisonError::into_inner));
    }

    /// Marks `tree` as being served until the lease goes: a drop of the tree waits
    /// for it (up to [`READERS_WAIT_MAX`]). A request or a table export under way on a
    /// version a publish has just replaced, or a table just dropped, then ends on that
    /// version, where sled would answer it with an error (`CollectionNotFound`) once the
    /// tree is dropped.
    pub(super) fn lease(self: &Arc<Self>, tree: &sled::Tree) -> Lease {
        let name = tree.name().to_vec();
        let mut leases = self.leased();
        let Leases { live, tokens } = &mut *leases;
        let (token, count) = live.entry(name.clone()).or_insert_with(|| {
            *tokens += 1;
            (*tokens, 0)
        });
        *count += 1;
        Lease { retiring: Arc::clone(self), name, token: *token }
    }

    /// Waits until no serving of `names`' trees is left, or [`READERS_WAIT_MAX`] has passed;
    /// then the readers left, if any, no longer count for these names.
    fn wait_for_readers(&self, names: &[String]) {
        let wait_max = Duration::from_millis(self.readers_wait_ms.load(std::sync::atomic::Ordering::Relaxed));
        let (mut leases, waited) = self
            .unleased
            .wait_timeout_while(self.leased(), wait_max, |leases| {
                names.iter().any(|n| leases.live.contains_key(n.as_bytes()))
            })
            .unwrap_or_else(PoisonError::into_inner);
        if waited.timed_out() {
            names.iter().for_each(|n| {
                leases.live.remove(n.as_bytes());
            });
            drop(leases);
            let secs = wait_max.as_secs_f64();
            tracing::warn!(trees = ?names, "dropping versions still read after {secs}s: their readers get errors");
        }
    }

    fn leased(&self) -> MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The trees being dropped now.
    pub(super) fn names(&self) -> HashSet<String> {
        self.listed().clone()
    }

    /// The list, whatever a panic on another thread left it in.
    fn listed(&self) -> MutexGuard<'_, HashSet<String>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A serving's hold on its tree ([`Retiring::lease`]).
pub(super) struct Lease {
    retiring: Arc<Retiring>,
    name: Vec<u8>,
    token: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut leases = self.retiring.leased();
        // Not counted any more if a drop gave up waiting for it.
        let Some((token, count)) = leases.live.get_mut(&self.name) else { return };
        if *token != self.token {
            return;
        }
        *count -= 1;
        if *count == 0 {
            leases.live.remove(&self.name);
            self.retiring.unleased.notify_all();
        }
    }
}

/// Drops being done: however they end, a panic included, the database is let go of (one
/// being opened again must be closed first), then the names, so no waiter hangs.
struct Dropping<'r> {
    retiring: &'r Retiring,
    db: Option<sled::Db>,
    names: &'r [String],
}

impl Drop for Dropping<'_> {
    fn drop(&mut self) {
        drop(self.db.take());
        let mut listed = self.retiring.listed();
        self.names.iter().for_each(|n| {
            listed.remove(n);
        });
        self.retiring.dropped.notify_all();
    }
}

/// Drops a tree on this thread; a thread of its own then frees its pages' memory
/// ([`collect_epoch_garbage`]).
pub(super) fn drop_tree(db: &sled::Db, name: impl AsRef<[u8]>) -> sled::Result<bool> {
    let dropped = db.drop_tree(name)?;
    if dropped {
        start_reclaiming();
    }
    Ok(dropped)
}

/// Starts a `recd-reclaim` thread that frees what dropped trees left to the epoch.
fn start_reclaiming() {
    let spawned = std::thread::Builder::new().name("recd-reclaim".into()).spawn(|| {
        lower_priority();
        collect_epoch_garbage();
    });
    if let Err(e) = spawned {
        tracing::warn!("no thread to free a dropped version's memory ({e}): later store work frees it");
    }
}

/// How long the reclaim thread keeps collecting after a drop, at least: a thread pinned in
/// an older epoch for a while (another drop's walk, a read waiting on the disk) holds back
/// what expires after it.
const RECLAIM_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// Collects the epoch's garbage for at least [`RECLAIM_FOR`]: rounds of 1,024 flushes
/// (each frees up to 512 objects once their epoch has passed), 10 ms apart. With nothing
/// left to free a round costs about 0.15 ms of CPU where 21 threads have pinned (measured
/// on a 2-core machine; each flush looks at every thread's epoch).
///
/// A dropped tree's pages are freed only as pins collect the epoch's garbage (up to eight
/// expired bags of 64 per collection, on every 128th pin of each thread and on each
/// flush), and freeing a page runs a closure that scans sled's whole free-page list, so
/// that work grows with the square of the pages dropped. Left to chance, a dropped
/// 1M-user version stayed allocated, 230-360 MB, until other threads had pinned enough
/// (the next run's writers, or about a minute of an idle daemon's flusher), its closures
/// running on whichever threads pinned, the serving threads among them
/// (docs/internals.md, "Store layout and publish protocol", Retention). This thread frees
/// it within seconds and does most of that work itself; other threads' pins still collect
/// a share.
fn collect_epoch_garbage() {
    let started = std::time::Instant::now();
    while started.elapsed() < RECLAIM_FOR {
        for _ in 0..1024 {
            crossbeam_epoch::pin().flush();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::debug!(seconds = started.elapsed().as_secs_f64(), "collected a dropped tree's pages");
}

#[cfg(test)]
mod tests {
    use super::super::{Retention, Store, TableKind, data_tree_name};
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::time::Duration;

    fn data_trees(db: &sled::Db) -> Vec<String> {
        let mut names: Vec<String> = db.tree_names().iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
        names.retain(|n| n.starts_with("data/"));
        names.sort();
        names
    }

    fn staged(store: &Store, run: u64) -> super::super::StagedVersion {
        let mut staged = store.stage("t", "job", run, TableKind::Lists).unwrap();
        for u in 0..2_000 {
            staged.put_user(&format!("user-{u}"), &mut [("i", run as f32)]).unwrap();
        }
        staged
    }

    /// Makes `store` one written before version numbers were counted (table `t`).
    fn forget_numbers_given(store: &Store) {
        store.h().unwrap().meta.remove(super::super::numbered_key("t")).unwrap();
    }

    fn keep_one(dir: &std::path::Path) -> Store {
        Store::open(dir, Retention { count: 1, max_age: None }).unwrap()
    }

    /// Publishes versions 1 and 2 of table `t`, holding the thread that drops version 1
    /// before its walk, as a slow drop would, until the guard goes (`walking`: the store's).
    fn publish_two_holding_the_drop<'w>(store: &Store, walking: &'w Mutex<()>) -> MutexGuard<'w, ()> {
        store.publish(staged(store, 1)).unwrap();
        let turn = walking.lock().unwrap();
        assert_eq!(store.publish(staged(store, 2)).unwrap().version, 2);
        turn
    }

    #[test]
    fn a_publish_leaves_the_drop_to_a_thread_and_a_flush_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = keep_one(dir.path());
        let turn = publish_two_holding_the_drop(&store, &store.retiring.walking);
        let db = store.h().unwrap().db.clone();
        assert_eq!(data_trees(&db), [data_tree_name("t", 1), data_tree_name("t", 2)]);
        assert_eq!(store.served("t").unwrap().version, 2);
        // Unreferenced, but being dropped: not a left-over.
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        std::thread::scope(|s| {
            let flush = s.spawn(|| store.flush());
            std::thread::sleep(Duration::from_millis(300));
            assert!(!flush.is_finished(), "a flush returned before the drop it must hold");
            drop(turn);
            flush.join().unwrap().unwrap();
        });
        assert_eq!(data_trees(&db), [data_tree_name("t", 2)]);
    }

    #[test]
    fn closing_the_store_waits_for_a_drop_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let store = keep_one(dir.path());
        let retiring = Arc::clone(&store.retiring);
        let turn = publish_two_holding_the_drop(&store, &retiring.walking);
        std::thread::scope(|s| {
            let close = s.spawn(move || drop(store));
            std::thread::sleep(Duration::from_millis(300));
            assert!(!close.is_finished(), "the store closed with a drop under way");
            drop(turn);
            close.join().unwrap();
        });
        // Nothing is left half dropped, nor for the next open to drop. (sled's threads of a
        // database just closed can hold its lock a moment longer.)
        let open = || {
            std::thread::sleep(Duration::from_millis(20));
            sled::Config::new().path(dir.path()).open()
        };
        let started = std::time::Instant::now();
        let db = std::iter::repeat_with(open)
            .find(|db| db.is_ok() || started.elapsed() > Duration::from_secs(5))
            .unwrap()
            .unwrap();
        assert_eq!(data_trees(&db), [data_tree_name("t", 2)]);
    }

    #[test]
    fn a_version_being_dropped_keeps_its_number_from_a_new_version_of_its_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = keep_one(dir.path());
        let turn = publish_two_holding_the_drop(&store, &store.retiring.walking);
        // Dropped and published again, in a store from before the count of numbers given
        // (the count would number it 3 anyway): numbered above the trees of versions 1 and
        // 2, which still wait for their thread.
        store.drop_table("t").unwrap();
        forget_numbers_given(&store);
        let again = staged(&store, 3);
        assert_eq!(again.version, 3, "numbered above the trees being dropped");
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        drop(turn);
        store.retiring.wait();
        store.publish(again).unwrap();
        let served = store.served("t").unwrap();
        assert_eq!(served.version, 3);
        assert!(served.get(b"user-1999").unwrap().is_some());
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        assert_eq!(data_trees(&store.h().unwrap().db), [data_tree_name("t", 3)]);
    }

    /// Reads `user-0` from `served` once its tree could have been dropped (`dropped` says
    /// whether it was, within a second), then lets go of it: the drop waits for it, so the
    /// read finds version `version`'s value.
    fn read_while_it_could_be_dropped(
        served: Arc<super::super::ServedTable>,
        version: u64,
        dropped: impl Fn() -> bool,
    ) {
        let started = std::time::Instant::now();
        while !dropped() && started.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!dropped(), "version {version}'s tree went while a reader held it");
        let list = served.get(b"user-0").expect("a read of the version let go").expect("its value");
        assert_eq!(super::super::decode_list(&list), [(&b"i"[..], version as f32)]);
    }

    /// Publishes version 1 of `t` and holds its serving, as a request under way would.
    fn publish_one_and_read_it(store: &Store) -> (Arc<super::super::ServedTable>, sled::Db) {
        store.publish(staged(store, 1)).unwrap();
        (store.served("t").unwrap(), store.h().unwrap().db.clone())
    }

    #[test]
    fn a_replaced_version_being_read_is_dropped_once_its_readers_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = keep_one(dir.path());
        let (reader, db) = publish_one_and_read_it(&store);
        store.publish(staged(&store, 2)).unwrap();
        read_while_it_could_be_dropped(reader, 1, || !data_trees(&db).contains(&data_tree_name("t", 1)));
        store.flush().unwrap();
        assert_eq!(data_trees(&db), [data_tree_name("t", 2)]);
    }

    #[test]
    fn readers_a_drop_gave_up_on_do_not_hold_off_a_new_tree_of_the_same_name() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let store = keep_one(dir.path());
        store.retiring.readers_wait_ms.store(300, Ordering::Relaxed);
        let (stale, db) = publish_one_and_read_it(&store);
        store.drop_table("t").unwrap();
        store.retiring.wait();
        assert_eq!(data_trees(&db), Vec::<String>::new(), "the drop went ahead after its wait");
        // Published again once its trees are gone, in a store from before the count of
        // numbers given: version 1, the tree name of the old one. Its drop (by the next
        // publish) would wait the full minute for the old reader.
        forget_numbers_given(&store);
        store.retiring.readers_wait_ms.store(60_000, Ordering::Relaxed);
        store.publish(staged(&store, 1)).unwrap();
        assert_eq!(data_trees(&db), [data_tree_name("t", 1)]);
        let started = std::time::Instant::now();
        store.publish(staged(&store, 2)).unwrap();
        store.retiring.wait();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the new version 1's drop waited for the old one's reader"
        );
        assert_eq!(data_trees(&db), [data_tree_name("t", 2)]);
        drop(stale);
        let served = store.served("t").unwrap();
        assert_eq!(served.get(b"user-0").unwrap().map(|l| super::super::decode_list(&l)[0].1), Some(2.0));
    }

    #[test]
    fn a_dropped_table_being_read_is_dropped_once_its_readers_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = keep_one(dir.path());
        let (reader, db) = publish_one_and_read_it(&store);
        assert_eq!(store.drop_table("t").unwrap().current, 1);
        assert!(store.served("t").is_none(), "new requests no longer see the table");
        read_while_it_could_be_dropped(reader, 1, || data_trees(&db).is_empty());
        store.flush().unwrap();
        assert_eq!(data_trees(&db), Vec::<String>::new());
    }
}
