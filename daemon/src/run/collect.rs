//! The daemon's end of a run's result stream: rows checked against plugin-api's output
//! contract and written into the staged version.

use std::collections::HashSet;
use std::time::Instant;

use arrow_array::RecordBatch;
use recd_plugin_api::contract::{Assembler, Rules, UserSink};

use crate::job::OutputChecks;
use crate::shard::Shard;
use crate::store::StagedVersion;

/// Checks streamed rows against the output contract (the same one the worker and the
/// plugin harness use) and writes each user's output to the staged version. One user's
/// rows must be contiguous in the stream.
pub(super) struct Collector {
    /// Time inside `add` and `finish`, the store writes included.
    seconds: f64,
    rows: Assembler,
    sink: StagedSink,
}

/// Where the collector's users go: the staged version, minus the users outside the shard.
struct StagedSink {
    staged: StagedVersion,
    /// Time spent handing users to the staged version, which its writer threads apply
    /// beside this one (their time is the run's `store` stage).
    store_seconds: f64,
    done_users: SeenUsers,
    shard: Shard,
}

impl UserSink for StagedSink {
    type Error = anyhow::Error;

    fn first_time(&mut self, user: &str) -> anyhow::Result<bool> {
        self.done_users.insert(user, &mut self.staged)
    }

    fn keeps(&mut self, user: &str) -> bool {
        self.shard.is_whole() || self.shard.contains(user)
    }

    fn list(&mut self, user: &str, list: &mut Vec<(&str, f32)>) -> anyhow::Result<()> {
        let started = Instant::now();
        let put = self.staged.put_user(user, list);
        self.store_seconds += started.elapsed().as_secs_f64();
        Ok(put?)
    }

    fn hash(&mut self, user: &str, fields: Vec<(String, String)>) -> anyhow::Result<()> {
        let started = Instant::now();
        let put = self.staged.put_hash(user, &fields);
        self.store_seconds += started.elapsed().as_secs_f64();
        Ok(put?)
    }
}

impl Collector {
    pub(super) fn new(staged: StagedVersion, checks: &OutputChecks, shard: Shard) -> Self {
        let rules = Rules {
            kind: staged.kind.into(),
            max_items_per_user: checks.max_items_per_user as usize,
            allow_empty: checks.allow_empty,
        };
        Collector {
            rows: Assembler::new(rules),
            sink: StagedSink { staged, store_seconds: 0.0, done_users: SeenUsers::default(), shard },
            seconds: 0.0,
        }
    }

    /// Closes the last user; refuses an empty result unless the job allows one.
    pub(super) fn finish(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let finished = self.rows.finish(&mut self.sink);
        self.seconds += started.elapsed().as_secs_f64();
        finished
    }

    pub(super) fn add(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        let started = Instant::now();
        let added = self.rows.add(batch, &mut self.sink);
        self.seconds += started.elapsed().as_secs_f64();
        added
    }

    /// Rows received so far, kept or not.
    pub(super) fn rows(&self) -> u64 {
        self.rows.rows()
    }

    /// Seconds spent collecting so far: the checks and the encoding, less handing the
    /// users over to the staged version's writers.
    pub(super) fn collect_seconds(&self) -> f64 {
        (self.seconds - self.sink.store_seconds).max(0.0)
    }

    /// The staged version's writing time (see [`StagedVersion::write_nanos`]).
    pub(super) fn write_nanos(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.sink.staged.write_nanos()
    }

    pub(super) fn into_staged(self) -> StagedVersion {
        self.sink.staged
    }
}

/// The users a run has emitted, to refuse one that comes back: a 64-bit keyed hash each
/// (a set of the ids themselves cost about 60 bytes a user, 60 MB at a million). A hash
/// already there is confirmed in the version being written, so a collision between two
/// users is never taken for a repeat.
#[derive(Default)]
struct SeenUsers<S = std::hash::RandomState> {
    hashes: HashSet<u64>,
    keys: S,
}

impl<S: std::hash::BuildHasher> SeenUsers<S> {
    /// False if `user` was emitted before.
    fn insert(&mut self, user: &str, staged: &mut StagedVersion) -> anyhow::Result<bool> {
        if self.hashes.insert(self.keys.hash_one(user)) {
            return Ok(true);
        }
        // Every user before this one is written by now: a repeat is in the version.
        Ok(!staged.contains_user(user)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Retention, Store, TableKind};

    /// Every id hashes alike: each user after the first is a collision.
    #[derive(Default)]
    struct OneHash;
    impl std::hash::Hasher for OneHash {
        fn finish(&self) -> u64 {
            7
        }
        fn write(&mut self, _: &[u8]) {}
    }

    #[test]
    fn a_colliding_hash_is_no_repeat_but_a_user_seen_before_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Retention { count: 2, max_age: None }).unwrap();
        let mut staged = store.stage("t", "job", 1, TableKind::Lists).unwrap();
        let mut seen: SeenUsers<std::hash::BuildHasherDefault<OneHash>> = SeenUsers::default();
        for user in ["u1", "u2", "u3"] {
            assert!(seen.insert(user, &mut staged).unwrap(), "{user} is new");
            staged.put_user(user, &mut [("item", 1.0)]).unwrap();
        }
        assert!(!seen.insert("u2", &mut staged).unwrap(), "u2 came back");
        // and with real hashes
        let mut seen: SeenUsers = SeenUsers::default();
        let mut staged = store.stage("t", "job", 2, TableKind::Lists).unwrap();
        assert!(seen.insert("u1", &mut staged).unwrap());
        staged.put_user("u1", &mut [("item", 1.0)]).unwrap();
        assert!(seen.insert("u2", &mut staged).unwrap());
        assert!(!seen.insert("u1", &mut staged).unwrap());
    }
}
