//! `recd import TABLE DIR...`: the parts `recd run --export` wrote for TABLE, checked as a
//! set and published as one new version, atomically, like any run. Refused with the reason,
//! and nothing published, unless the manifests agree (one job, plugin, model and inputs,
//! one shard count), every shard is there exactly once, and every part matches its
//! manifest: SHA-256, users, rows, shard of each user and checksum.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::export::{self, Manifest};
use crate::fsutil::sha256_file;
use crate::store::{
    Gate, InputLineage, Lineage, PluginBuild, StagedVersion, Store, StoreError, TableKind, VersionInfo,
};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Refused(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

fn refused(text: impl Into<String>) -> ImportError {
    ImportError::Refused(text.into())
}

/// What an import published.
pub struct Imported {
    pub job: String,
    pub parts: usize,
    pub version: VersionInfo,
}

/// What the manifests say of the run that made the parts (they agree on it, or the import
/// is refused): the plugin and model hashes, each input's hash, the recd that ran it.
fn lineage_of(manifest: &Manifest) -> Lineage {
    Lineage {
        plugin: Some(PluginBuild { sha256: manifest.plugin_sha256.clone(), ..PluginBuild::default() }),
        model_sha256: manifest.model_sha256.clone(),
        inputs: manifest
            .inputs
            .iter()
            .map(|(name, sha)| InputLineage {
                name: name.clone(),
                sha256: Some(sha.clone()),
                ..InputLineage::default()
            })
            .collect(),
        recd_version: manifest.recd_version.clone(),
        ..Lineage::default()
    }
}

/// A manifest and the file it was read from.
struct Found {
    file: PathBuf,
    manifest: Manifest,
}

/// Publishes the parts in `dirs` as one version of `table`, through `gate` (the gate of the
/// job that publishes the table: a held import is not served).
pub fn import(store: &Store, table: &str, dirs: &[PathBuf], run_id: u64, gate: &Gate) -> Result<Imported, ImportError> {
    let found = read_manifests(table, dirs)?;
    let parts = complete_set(&found)?;
    let first = &parts[0].manifest;
    let mut staged = store.stage(table, &first.job, run_id, first.kind)?;
    staged.fallback = store.served(table).map(|t| t.fallback.clone()).unwrap_or_default();
    match load_parts(&mut staged, &parts) {
        Ok(()) => {
            staged.lineage = Some(lineage_of(first));
            let version = store.publish_gated(staged, gate)?;
            Ok(Imported { job: first.job.clone(), parts: parts.len(), version })
        }
        Err(e) => {
            store.discard(staged)?;
            Err(e)
        }
    }
}

/// Every manifest of `table` in `dirs` (others' are left alone).
fn read_manifests(table: &str, dirs: &[PathBuf]) -> Result<Vec<Found>, ImportError> {
    let mut found = Vec::new();
    let mut other_tables = std::collections::BTreeSet::new();
    for dir in dirs {
        let entries = std::fs::read_dir(dir).map_err(|e| refused(format!("{}: {e}", dir.display())))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
            .collect();
        files.sort();
        for file in files {
            let text = crate::fsutil::read_text(&file, crate::fsutil::MAX_JOB_FILE_BYTES)
                .map_err(|e| refused(format!("{} {e}", file.display())))?;
            let manifest: Manifest = serde_json::from_str(&text)
                .map_err(|e| refused(format!("{}: not a recd manifest: {e}", file.display())))?;
            if manifest.format != export::MANIFEST_FORMAT {
                return Err(refused(format!(
                    "{}: manifest format {} (this recd reads {})",
                    file.display(),
                    manifest.format,
                    export::MANIFEST_FORMAT
                )));
            }
            if manifest.table == table {
                found.push(Found { file, manifest });
            } else {
                other_tables.insert(manifest.table);
            }
        }
    }
    if found.is_empty() {
        let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        let others = if other_tables.is_empty() {
            String::new()
        } else {
            format!(" (it has parts of: {})", other_tables.into_iter().collect::<Vec<_>>().join(", "))
        };
        return Err(refused(format!("no exported part of table `{table}` in {}{others}", shown.join(", "))));
    }
    Ok(found)
}

/// The parts in shard order, once each, if they make one run's full set.
fn complete_set(found: &[Found]) -> Result<Vec<&Found>, ImportError> {
    let first = &found[0];
    for other in &found[1..] {
        if let Some((field, a, b)) = differing_field(&first.manifest, &other.manifest) {
            return Err(refused(format!(
                "parts of different runs: {} and {} differ in `{field}` ({a} against {b})",
                first.file.display(),
                other.file.display(),
            )));
        }
    }
    let count = first.manifest.shard.count;
    let mut by_index: BTreeMap<u32, &Found> = BTreeMap::new();
    for f in found {
        if let Some(before) = by_index.insert(f.manifest.shard.index, f) {
            return Err(refused(format!(
                "shard {} appears twice: {} and {}",
                f.manifest.shard,
                before.file.display(),
                f.file.display()
            )));
        }
    }
    let missing: Vec<String> = (0..count).filter(|i| !by_index.contains_key(i)).map(|i| i.to_string()).collect();
    if !missing.is_empty() {
        let have: Vec<String> = by_index.keys().map(u32::to_string).collect();
        return Err(refused(format!(
            "shards missing of {count}: {} (found {})",
            missing.join(", "),
            if have.is_empty() { "none".to_string() } else { have.join(", ") }
        )));
    }
    Ok(by_index.into_values().collect())
}

/// A manifest field parts of one run share: its name and its value as text.
type SharedField = (&'static str, fn(&Manifest) -> String);

/// The first field two parts of one run must share and these do not, with both values.
fn differing_field(a: &Manifest, b: &Manifest) -> Option<(&'static str, String, String)> {
    let fields: [SharedField; 6] = [
        ("job", |m| m.job.clone()),
        ("kind", |m| format!("{:?}", m.kind).to_lowercase()),
        ("shard.count", |m| m.shard.count.to_string()),
        ("plugin_sha256", |m| m.plugin_sha256.clone()),
        ("model_sha256", |m| m.model_sha256.clone().unwrap_or_else(|| "no model".into())),
        ("inputs", |m| serde_json::to_string(&m.inputs).unwrap_or_default()),
    ];
    fields.into_iter().find_map(|(name, text)| {
        let (x, y) = (text(a), text(b));
        (x != y).then_some((name, x, y))
    })
}

fn load_parts(staged: &mut StagedVersion, parts: &[&Found]) -> Result<(), ImportError> {
    for part in parts {
        load_part(staged, part)?;
    }
    Ok(())
}

/// Checks one part's file against its manifest and stages its rows.
fn load_part(staged: &mut StagedVersion, found: &Found) -> Result<(), ImportError> {
    let m = &found.manifest;
    let dir = found.file.parent().unwrap_or(Path::new("."));
    if m.part.contains('/') || m.part.starts_with('.') {
        return Err(refused(format!(
            "{}: part {:?} is not a file name beside the manifest",
            found.file.display(),
            m.part
        )));
    }
    let path = dir.join(&m.part);
    let fail = |what: String| refused(format!("part {}: {what}", path.display()));
    let sha = sha256_file(&path).map_err(|e| fail(e.to_string()))?;
    if sha != m.part_sha256 {
        return Err(fail(format!(
            "its SHA-256 is {sha}, its manifest says {}: the file is damaged or not the one exported",
            m.part_sha256
        )));
    }
    let (users0, rows0, checksum0) = (staged.users, staged.rows, staged.checksum());
    let (file, _) = crate::fsutil::open_regular(&path, u64::MAX).map_err(|e| fail(e.to_string()))?;
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(file).and_then(|b| b.build()).map_err(|e| fail(e.to_string()))?;
    let want = match m.kind {
        TableKind::Lists => crate::tables::lists_schema(),
        TableKind::Hashes => crate::tables::hashes_schema(),
    };
    let mut user = UserRows::default();
    for batch in reader {
        let batch = batch.map_err(|e| fail(e.to_string()))?;
        check_schema(&batch, &want).map_err(fail)?;
        user.add(&batch, m, staged).map_err(|e| match e {
            ImportError::Refused(text) => fail(text),
            other => other,
        })?;
    }
    user.finish(m.kind, staged)?;
    let (users, rows) = (staged.users - users0, staged.rows - rows0);
    if (users, rows) != (m.users, m.rows) {
        return Err(fail(format!("{users} users and {rows} rows, its manifest says {} and {}", m.users, m.rows)));
    }
    if staged.checksum().wrapping_sub(checksum0) != m.checksum {
        return Err(fail("its rows do not give its manifest's checksum".into()));
    }
    Ok(())
}

fn check_schema(batch: &RecordBatch, want: &SchemaRef) -> Result<(), String> {
    let have = batch.schema();
    let same = have.fields().len() == want.fields().len()
        && have.fields().iter().zip(want.fields()).all(|(h, w)| h.name() == w.name() && h.data_type() == w.data_type());
    if same {
        return Ok(());
    }
    let list = |s: &arrow_schema::Schema| -> String {
        s.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
    };
    Err(format!("columns ({}), expected ({})", list(&have), list(want)))
}

/// The rows of the user being read (a part holds each user's rows together, in order).
#[derive(Default)]
struct UserRows {
    user: Option<String>,
    /// The last user begun, kept after their rows are staged.
    last: Option<String>,
    list: Vec<(String, f32)>,
    fields: Vec<(String, String)>,
    row: u64,
}

impl UserRows {
    fn add(&mut self, batch: &RecordBatch, m: &Manifest, staged: &mut StagedVersion) -> Result<(), ImportError> {
        let (users, keys) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>());
        for i in 0..batch.num_rows() {
            let row = self.row;
            self.row += 1;
            if batch.columns().iter().any(|c| c.is_null(i)) {
                return Err(refused(format!("row {row} has a null")));
            }
            let user = users.value(i);
            if self.user.as_deref() != Some(user) {
                self.finish(m.kind, staged)?;
                if !m.shard.contains(user) {
                    return Err(refused(format!("row {row}: user {user:?} is not in shard {}", m.shard)));
                }
                // Parts list users in key order: a user out of order is a damaged or a
                // hand-made part (and one user twice would publish only their last list).
                if let Some(before) = self.last.as_deref().filter(|b| *b >= user) {
                    return Err(refused(format!(
                        "row {row}: user {user:?} after {before:?}: a part lists users in key order"
                    )));
                }
                self.last = Some(user.to_string());
                self.user = Some(user.to_string());
            }
            match m.kind {
                TableKind::Lists => {
                    let score = batch.column(2).as_primitive::<Float32Type>().value(i);
                    let rank = batch.column(3).as_primitive::<UInt32Type>().value(i);
                    if rank as usize != self.list.len() + 1 {
                        return Err(refused(format!(
                            "row {row}: user {user:?} has rank {rank} where {} comes next",
                            self.list.len() + 1
                        )));
                    }
                    self.list.push((keys.value(i).to_string(), score));
                }
                TableKind::Hashes => {
                    let value = batch.column(2).as_string::<i32>().value(i);
                    self.fields.push((keys.value(i).to_string(), value.to_string()));
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, kind: TableKind, staged: &mut StagedVersion) -> Result<(), ImportError> {
        let Some(user) = self.user.take() else { return Ok(()) };
        match kind {
            TableKind::Lists => staged.put_user(&user, &mut self.list)?,
            TableKind::Hashes => staged.put_hash(&user, &self.fields)?,
        }
        self.list.clear();
        self.fields.clear();
        Ok(())
    }
}
