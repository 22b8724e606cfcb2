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
            self.write_pending()?;
        }
        Ok(())
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

    pub(super) fn write_pending(&mut self) -> Result<(), StoreError> {
        if self.pending > 0 {
            self.tree.apply_batch(std::mem::take(&mut self.batch))?;
            self.pending = 0;
        }
        Ok(())
    }
}
