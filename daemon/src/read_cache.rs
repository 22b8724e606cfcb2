//! A bounded cache of stored values in front of sled, for the read path.
//!
//! Profiling `GET` under redis-benchmark (100k users, random keys, 50 clients, -P 16)
//! showed close to half the serving thread in sled's B-tree descent (page-cache lookups,
//! LRU bookkeeping, binary searches), against a hash probe for Redis. Published versions
//! never change, so a value, once read, can be kept and served again as is.
//!
//! Entries are keyed by the *serving generation* of a version (a number handed out each
//! time a version becomes current, see [`ReadCache::next_generation`]) and the user key.
//! A publish or rollback starts a new generation, so an entry of a version no longer
//! current can never be served; when the last handle on that version goes, its entries
//! are dropped ([`ReadCache::forget`]) rather than left to age out, so the cache holds
//! what is served now and not stale copies up to its capacity. Memory is bounded by the weight
//! capacity (bytes of values and keys); values are copied out of sled's node buffers on
//! insert so an entry never pins a whole node.
//!
//! Values of [`LARGE_VALUE_BYTES`] or more (a list of millions of items) are kept apart,
//! in a small map of their own: quick_cache refuses an item heavier than one shard's share
//! of the capacity, so each read of such a value copied it out of sled again, on the
//! serving thread (about 140 ms for a 5M-item list while other clients waited).
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::{Equivalent, Weighter, sync::Cache};
use smallvec::SmallVec;

/// (generation, user). The user bytes sit inline in the entry for ids up to 32 bytes:
/// a probe then compares the key without a second cache miss on a heap copy (profiled:
/// that miss, in `memcmp`, was about a third of the probe).
type Key = (u64, SmallVec<[u8; 32]>);

/// A lookup key borrowing the user bytes; hashes exactly as the owned [`Key`] does.
struct KeyRef<'a>(u64, &'a [u8]);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As the owned key hashes: the tuple's fields in order, the SmallVec as its slice.
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && self.1 == key.1.as_slice()
    }
}

#[derive(Clone)]
struct Bytes;

impl Weighter<Key, sled::IVec> for Bytes {
    fn weight(&self, key: &Key, value: &sled::IVec) -> u64 {
        // Never zero: zero-weight entries are never evicted.
        (key.1.len() + value.len() + 48) as u64
    }
}

pub struct ReadCache {
    /// None when the configured capacity is 0: every read goes to sled.
    cache: Option<Cache<Key, sled::IVec, Bytes>>,
    /// Values of at least [`LARGE_VALUE_BYTES`], within half the capacity.
    large: Mutex<LargeValues>,
    /// How many values `large` holds: a miss looks there only when it holds any, so the
    /// common case (no huge lists) takes no lock and makes no key.
    large_count: AtomicU64,
    generations: AtomicU64,
}

/// Values this big or bigger are kept in [`LargeValues`].
pub const LARGE_VALUE_BYTES: usize = 1 << 20;

#[derive(Default)]
struct LargeValues {
    values: HashMap<(u64, Vec<u8>), sled::IVec>,
    bytes: u64,
    capacity: u64,
}

impl LargeValues {
    /// Keeps `value` if it fits, making room by dropping the oldest generations' values
    /// first (those of a version no longer served go with `forget` anyway).
    fn insert(&mut self, generation: u64, user: &[u8], value: sled::IVec) {
        let weight = value.len() as u64;
        if weight > self.capacity {
            return;
        }
        while self.bytes + weight > self.capacity {
            let Some(oldest) = self.values.keys().min().cloned() else { break };
            if let Some(v) = self.values.remove(&oldest) {
                self.bytes -= v.len() as u64;
            }
        }
        if let Some(old) = self.values.insert((generation, user.to_vec()), value) {
            self.bytes -= old.len() as u64;
        }
        self.bytes += weight;
    }
}

impl ReadCache {
    /// A cache holding up to `capacity_bytes` of keys and values; 0 disables it.
    pub fn new(capacity_bytes: u64) -> ReadCache {
        // quick_cache sizes its tables from an item estimate; recommendation values run
        // from a few hundred bytes to a few kB.
        let cache = (capacity_bytes > 0)
            .then(|| Cache::with_weighter((capacity_bytes / 2048).max(64) as usize, capacity_bytes, Bytes));
        let large = LargeValues { capacity: capacity_bytes / 2, ..LargeValues::default() };
        ReadCache { cache, large: Mutex::new(large), large_count: AtomicU64::new(0), generations: AtomicU64::new(1) }
    }

    /// A number no version served before has had.
    pub fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed)
    }

    /// Drops every entry of `generation`, a serving that has ended. One pass over the
    /// cache, shard by shard; it runs once per publish or rollback.
    pub fn forget(&self, generation: u64) {
        if let Some(cache) = &self.cache {
            cache.retain(|key, _| key.0 != generation);
        }
        let mut large = self.large.lock().expect("large values");
        let mut freed = 0;
        large.values.retain(|key, v| {
            let keep = key.0 != generation;
            if !keep {
                freed += v.len() as u64;
            }
            keep
        });
        large.bytes -= freed;
        self.large_count.store(large.values.len() as u64, Ordering::Relaxed);
    }

    /// Whether a large value of `user` in `generation` is held.
    #[cfg(test)]
    pub fn holds_large(&self, generation: u64, user: &[u8]) -> bool {
        self.large.lock().expect("large values").values.contains_key(&(generation, user.to_vec()))
    }

    /// Bytes of keys and values held.
    #[cfg(test)]
    fn weight(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.weight())
    }

    /// The value of `user` in `generation`, from the cache or else from `read`; what is
    /// read is kept for the next reader in the form `serve` makes of it (a list gains its
    /// JSON there), and that form is returned. Absent keys are not cached; with the cache
    /// off, the value is returned as read.
    pub fn get_or_read<E>(
        &self,
        generation: u64,
        user: &[u8],
        read: impl FnOnce() -> Result<Option<sled::IVec>, E>,
        serve: impl FnOnce(&[u8]) -> sled::IVec,
    ) -> Result<Option<sled::IVec>, E> {
        let Some(cache) = &self.cache else { return read() };
        if let Some(hit) = cache.get(&KeyRef(generation, user)) {
            return Ok(Some(hit));
        }
        if self.large_count.load(Ordering::Relaxed) > 0
            && let Some(hit) = self.large.lock().expect("large values").values.get(&(generation, user.to_vec()))
        {
            return Ok(Some(hit.clone()));
        }
        let Some(value) = read()? else { return Ok(None) };
        // A copy either way: an entry never pins one of sled's node buffers.
        let kept = serve(&value);
        if kept.len() >= LARGE_VALUE_BYTES {
            let mut large = self.large.lock().expect("large values");
            large.insert(generation, user, kept.clone());
            self.large_count.store(large.values.len() as u64, Ordering::Relaxed);
        } else {
            cache.insert((generation, SmallVec::from_slice(user)), kept.clone());
        }
        Ok(Some(kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_a_generation_frees_its_entries_and_keeps_the_others() {
        let cache = ReadCache::new(1 << 20);
        let (old, new) = (cache.next_generation(), cache.next_generation());
        let calls = std::cell::Cell::new(0);
        for user in 0..100u32 {
            let user = user.to_le_bytes();
            cache.get_or_read(old, &user, read_counting(&calls, &[1; 500]), as_is).unwrap();
            cache.get_or_read(new, &user, read_counting(&calls, &[2; 100]), as_is).unwrap();
        }
        let both = cache.weight();
        cache.forget(old);
        assert_eq!(cache.weight(), both - 100 * (4 + 500 + 48));
        // The other generation is still served from the cache.
        let before = calls.get();
        let v = cache.get_or_read(new, &7u32.to_le_bytes(), read_counting(&calls, b"x"), as_is).unwrap().unwrap();
        assert_eq!((v.as_ref(), calls.get()), (&[2; 100][..], before));
    }

    #[test]
    fn the_served_form_is_kept_and_returned_and_made_once() {
        let cache = ReadCache::new(1 << 20);
        let (calls, made) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        let serve = |v: &[u8]| {
            made.set(made.get() + 1);
            sled::IVec::from([v, b"+json"].concat())
        };
        for _ in 0..3 {
            let v = cache.get_or_read(1, b"u", read_counting(&calls, b"list"), serve).unwrap().unwrap();
            assert_eq!(v.as_ref(), b"list+json");
        }
        assert_eq!((calls.get(), made.get()), (1, 1));
    }

    /// Keeps a value as it was read.
    fn as_is(value: &[u8]) -> sled::IVec {
        sled::IVec::from(value)
    }

    fn read_counting<'a>(
        calls: &'a std::cell::Cell<u32>,
        value: &'a [u8],
    ) -> impl FnOnce() -> Result<Option<sled::IVec>, ()> + 'a {
        move || {
            calls.set(calls.get() + 1);
            Ok(Some(sled::IVec::from(value)))
        }
    }

    #[test]
    fn a_value_is_read_once_per_generation() {
        let cache = ReadCache::new(1 << 20);
        let calls = std::cell::Cell::new(0);
        let g = cache.next_generation();
        for _ in 0..3 {
            let v = cache.get_or_read(g, b"u1", read_counting(&calls, b"old"), as_is).unwrap().unwrap();
            assert_eq!(v.as_ref(), b"old");
        }
        assert_eq!(calls.get(), 1);
        // A new generation (a publish) never sees the old generation's value.
        let g2 = cache.next_generation();
        assert_ne!(g, g2);
        let v = cache.get_or_read(g2, b"u1", read_counting(&calls, b"new"), as_is).unwrap().unwrap();
        assert_eq!(v.as_ref(), b"new");
        assert_eq!(calls.get(), 2);
        // Keys differ by their bytes, not only their hash prefix.
        let v = cache.get_or_read(g2, b"u10", read_counting(&calls, b"other"), as_is).unwrap().unwrap();
        assert_eq!(v.as_ref(), b"other");
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn absent_keys_and_a_disabled_cache_always_read() {
        let cache = ReadCache::new(0);
        let calls = std::cell::Cell::new(0);
        for _ in 0..2 {
            cache.get_or_read(1, b"u", read_counting(&calls, b"v"), as_is).unwrap();
        }
        assert_eq!(calls.get(), 2);
        let cache = ReadCache::new(1 << 20);
        let mut misses = 0;
        for _ in 0..2 {
            let got: Result<_, ()> = cache.get_or_read(
                1,
                b"nobody",
                || {
                    misses += 1;
                    Ok(None)
                },
                as_is,
            );
            assert!(got.unwrap().is_none());
        }
        assert_eq!(misses, 2);
    }

    #[test]
    fn large_values_are_kept_apart_within_half_the_capacity_and_forgotten_with_their_generation() {
        let cache = ReadCache::new(8 * LARGE_VALUE_BYTES as u64);
        let calls = std::cell::Cell::new(0);
        let big = vec![3u8; 3 * LARGE_VALUE_BYTES / 2];
        let g = cache.next_generation();
        for _ in 0..3 {
            let v = cache.get_or_read(g, b"big", read_counting(&calls, &big), as_is).unwrap().unwrap();
            assert_eq!(v.len(), big.len());
        }
        assert_eq!(calls.get(), 1, "a large value is read from the store once");
        // Half the capacity (4 MiB) holds two of them: a third pushes out the oldest.
        let g2 = cache.next_generation();
        cache.get_or_read(g2, b"big", read_counting(&calls, &big), as_is).unwrap();
        let g3 = cache.next_generation();
        cache.get_or_read(g3, b"big", read_counting(&calls, &big), as_is).unwrap();
        assert!(cache.large.lock().unwrap().bytes <= 4 * LARGE_VALUE_BYTES as u64);
        cache.get_or_read(g, b"big", read_counting(&calls, &big), as_is).unwrap();
        assert_eq!(calls.get(), 4, "the oldest generation's copy was dropped for room");
        cache.forget(g3);
        let large = cache.large.lock().unwrap();
        assert!(large.values.keys().all(|k| k.0 != g3));
        assert_eq!(large.bytes, large.values.values().map(|v| v.len() as u64).sum::<u64>());
    }

    #[test]
    fn memory_stays_within_the_capacity() {
        let cache = ReadCache::new(64 * 1024);
        let value = vec![7u8; 1000];
        for user in 0..1000u32 {
            let key = user.to_le_bytes();
            cache.get_or_read(1, &key, || Ok::<_, ()>(Some(sled::IVec::from(value.as_slice()))), as_is).unwrap();
        }
        let held = cache.cache.as_ref().unwrap().weight();
        assert!(held <= 64 * 1024, "holds {held} bytes");
        assert!(held > 0);
    }
}
