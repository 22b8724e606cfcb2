//! Where a version came from: each input's file (size, SHA-256), the table version of a
//! `table:` input, the registry version of a `registry:` input, and the hash of the job's
//! params. Kept with each run record, table version and model version.
//!
//! Hashing a large input costs a pass over it, so a file's hash is kept for as long as the
//! file is unchanged (same size, modification time, inode and change time): a job reading
//! the same export every hour hashes it once. (A rewrite in place, to the same size, within
//! one tick of the file system's clock would keep its old hash: exports are written anew.)

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::job::{Input, InputFormat};
use crate::models::ModelVersion;
use crate::store::InputLineage;

/// (path, size, mtime ns, inode, ctime ns) -> SHA-256.
type Key = (PathBuf, u64, i128, u64, i128);
static HASHES: Mutex<Option<HashMap<Key, String>>> = Mutex::new(None);
/// Hashes kept at most; the cache is emptied when it grows past this.
const MAX_KEPT: usize = 4096;

/// A file's size and SHA-256, from the cache while the file is unchanged.
pub fn fingerprint(path: &Path) -> std::io::Result<(u64, String)> {
    let meta = std::fs::metadata(path)?;
    let nanos = |s: i64, ns: i64| i128::from(s) * 1_000_000_000 + i128::from(ns);
    let key = (
        path.to_path_buf(),
        meta.len(),
        nanos(meta.mtime(), meta.mtime_nsec()),
        meta.ino(),
        nanos(meta.ctime(), meta.ctime_nsec()),
    );
    if let Some(sha) = HASHES.lock().expect("hash cache").as_ref().and_then(|c| c.get(&key)) {
        return Ok((meta.len(), sha.clone()));
    }
    let sha = crate::fsutil::sha256_file(path)?;
    let mut cache = HASHES.lock().expect("hash cache");
    let cache = cache.get_or_insert_with(HashMap::new);
    if cache.len() >= MAX_KEPT {
        cache.clear();
    }
    cache.insert(key, sha.clone());
    Ok((meta.len(), sha))
}

/// Each input of a run: `job` as written (its `registry:` names), `run_inputs` as the run
/// reads them (files pinned), the table versions a `table:` input was exported at, and
/// the registry versions pinned. A file that cannot be hashed is listed without a hash.
pub fn inputs(
    job: &[Input],
    run_inputs: &[Input],
    table_versions: &BTreeMap<String, u64>,
    models: &[ModelVersion],
) -> Vec<InputLineage> {
    job.iter()
        .zip(run_inputs)
        .map(|(written, read)| {
            let mut lineage = InputLineage { name: written.name.clone(), ..InputLineage::default() };
            if written.format == InputFormat::Table {
                lineage.path = format!("table:{}", written.path.display());
                lineage.table_version = table_versions.get(&written.name).copied();
                return lineage;
            }
            lineage.path = read.path.display().to_string();
            lineage.registry = written
                .registry
                .as_ref()
                .and_then(|name| models.iter().find(|m| &m.name == name).map(|m| format!("{}@{}", m.name, m.version)));
            match fingerprint(&read.path) {
                Ok((bytes, sha)) => {
                    lineage.bytes = Some(bytes);
                    lineage.sha256 = Some(sha);
                }
                Err(e) => tracing::warn!(input = %written.name, "cannot hash the input for its lineage: {e}"),
            }
            lineage
        })
        .collect()
}

/// The SHA-256 of a text (a job's params as JSON, a command line).
pub fn sha256_text(text: &str) -> String {
    use sha2::{Digest, Sha256};
    crate::fsutil::hex(&Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_hashed_again_and_an_unchanged_one_comes_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.csv");
        std::fs::write(&file, "abc").unwrap();
        // sha256("abc"), computed independently
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(fingerprint(&file).unwrap(), (3, abc.to_string()));
        assert_eq!(fingerprint(&file).unwrap(), (3, abc.to_string()));
        // Past the file system's timestamp tick (a few ms): a rewrite within one tick, in
        // place and of the same size, is the one change this cache cannot see.
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::write(&file, "abd").unwrap();
        let (bytes, sha) = fingerprint(&file).unwrap();
        assert_eq!(bytes, 3);
        assert_ne!(sha, abc, "rewritten in place: size equal, hash new");
        assert_eq!(sha256_text("abc"), abc);
    }
}
