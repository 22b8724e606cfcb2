//! The model registry: trained models as numbered versions on disk,
//! `<data_dir>/models/<name>/<version>/`, each holding the files a command job wrote (the
//! ONNX file and any side files: vocabularies, embeddings, `metrics.json`) and
//! [`META_FILE`], what recd recorded of it. The current version is the number in
//! `<name>/CURRENT`.
//!
//! Publishing is atomic as a table's is: the command writes into a staging folder; its
//! files are hashed and synced, the folder renamed to its version number and synced, then
//! `CURRENT` is replaced by one rename of a synced file. A reader (a run pinning its model,
//! `recd validate`) reads `CURRENT` without a lock and sees the old or the new version,
//! never a mix. Only the daemon writes (one publish at a time, [`WRITE_LOCK`]); the sled
//! lock keeps a second daemon off the data dir.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::job::{Job, ModelGate};
use crate::store::Lineage;

/// What recd records in each version's folder.
pub const META_FILE: &str = "recd-version.json";
/// The training metrics a command may write beside its model: a JSON object of numbers.
pub const METRICS_FILE: &str = "metrics.json";
const CURRENT_FILE: &str = "CURRENT";
/// The number of the last version published, held or not.
const LAST_FILE: &str = "LAST";
const STAGING_PREFIX: &str = ".staging-";

/// Serialises the registry's writes (publish, rollback, retention) within the daemon.
static WRITE_LOCK: Mutex<()> = Mutex::new(());

/// Versions runs of this process have pinned, with how many runs hold each: retention
/// leaves their folders alone (a worker reads its inputs while it runs).
static PINNED: Mutex<BTreeMap<(String, u64), usize>> = Mutex::new(BTreeMap::new());

/// The versions one run pinned; released when dropped, at the end of the run.
#[derive(Debug, Default)]
pub struct Pins(Vec<(String, u64)>);

impl Pins {
    fn hold(&mut self, name: &str, version: u64) {
        *PINNED.lock().expect("pins").entry((name.to_string(), version)).or_default() += 1;
        self.0.push((name.to_string(), version));
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let mut pinned = PINNED.lock().expect("pins");
        for key in self.0.drain(..) {
            if let Some(n) = pinned.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    pinned.remove(&key);
                }
            }
        }
    }
}

fn is_pinned(name: &str, version: u64) -> bool {
    PINNED.lock().expect("pins").contains_key(&(name.to_string(), version))
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("registry model `{0}` has no version yet (a command job with `produces = \"registry:{0}\"` publishes one)")]
    NoVersion(String),
    #[error("registry model `{name}` has no version {version} (versions: {kept})")]
    NotKept { name: String, version: u64, kept: String },
    #[error("{0}")]
    Invalid(String),
    #[error("model registry: {0}")]
    Io(String),
}

fn io(context: &str, path: &Path) -> impl FnOnce(std::io::Error) -> ModelError {
    let at = format!("{context} {}", path.display());
    move |e| ModelError::Io(format!("{at}: {e}"))
}

/// One file of a version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionFile {
    /// Path within the version folder.
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What recd records of a model version ([`META_FILE`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelVersion {
    pub name: String,
    pub version: u64,
    pub published_at: String,
    /// The command job and run that produced it.
    pub job: String,
    pub run_id: u64,
    /// The ONNX file a scoring job loads.
    pub model_file: String,
    pub model_sha256: String,
    pub files: Vec<VersionFile>,
    /// The command's [`METRICS_FILE`], if it wrote one.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    pub recd_version: String,
    /// Failed the producing job's `[gate]`: kept, not current, until promoted or discarded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// Why the gate failed it (kept after a promote).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gate_failed: Vec<String>,
    /// The command run's inputs (files, hashes, registry versions) and the hash of its
    /// command line and environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
}

/// A registry model's version as a run uses it: its folder and what was recorded.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub dir: PathBuf,
    pub meta: ModelVersion,
}

pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("models")
}

/// The folder a run's command writes its model version into.
pub fn staging_dir(data_dir: &Path, name: &str, run_id: u64) -> PathBuf {
    root(data_dir).join(name).join(format!("{STAGING_PREFIX}{run_id}"))
}

/// Registry model names, sorted.
pub fn names(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root(data_dir))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(CURRENT_FILE).is_file() || e.path().join(LAST_FILE).is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The version `CURRENT` names; None before the first publish.
pub fn current_version(data_dir: &Path, name: &str) -> Result<Option<u64>, ModelError> {
    let file = root(data_dir).join(name).join(CURRENT_FILE);
    match fsutil::read_text(&file, 64) {
        Ok(text) => {
            text.trim().parse().map(Some).map_err(|_| {
                ModelError::Io(format!("{} holds {:?}, not a version number", file.display(), text.trim()))
            })
        }
        Err(fsutil::FileError::Missing) => Ok(None),
        Err(e) => Err(ModelError::Io(format!("{} {e}", file.display()))),
    }
}

/// The current version of `name`, with its folder.
pub fn current(data_dir: &Path, name: &str) -> Result<Pinned, ModelError> {
    let version = current_version(data_dir, name)?.ok_or_else(|| ModelError::NoVersion(name.into()))?;
    version_of(data_dir, name, version)
}

/// One kept version of `name`.
pub fn version_of(data_dir: &Path, name: &str, version: u64) -> Result<Pinned, ModelError> {
    let dir = root(data_dir).join(name).join(version.to_string());
    let file = dir.join(META_FILE);
    let text = fsutil::read_text(&file, fsutil::MAX_JOB_FILE_BYTES).map_err(|e| match e {
        fsutil::FileError::Missing => {
            ModelError::NotKept { name: name.into(), version, kept: kept_list(data_dir, name) }
        }
        e => ModelError::Io(format!("{} {e}", file.display())),
    })?;
    let meta = serde_json::from_str(&text).map_err(|e| ModelError::Io(format!("{}: {e}", file.display())))?;
    Ok(Pinned { dir, meta })
}

/// The kept versions of `name`, oldest first.
pub fn versions(data_dir: &Path, name: &str) -> Result<Vec<ModelVersion>, ModelError> {
    version_numbers(data_dir, name).into_iter().map(|v| version_of(data_dir, name, v).map(|p| p.meta)).collect()
}

/// The numbers of the complete versions of `name` (a folder with its [`META_FILE`]).
fn version_numbers(data_dir: &Path, name: &str) -> Vec<u64> {
    let mut numbers: Vec<u64> = std::fs::read_dir(root(data_dir).join(name))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.parse().ok()?;
            e.path().join(META_FILE).is_file().then_some(n)
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

fn kept_list(data_dir: &Path, name: &str) -> String {
    let kept: Vec<String> = version_numbers(data_dir, name).iter().map(u64::to_string).collect();
    if kept.is_empty() { "none".into() } else { kept.join(", ") }
}

/// What a publish needs besides the staged folder.
pub struct Publish<'a> {
    pub job: &'a str,
    pub run_id: u64,
    /// The ONNX file; None: the one `.onnx` file at the folder's top.
    pub model_file: Option<&'a str>,
    /// Largest file accepted (`max_input_bytes`: a scoring run reads it).
    pub max_bytes: u64,
    /// Versions kept besides the current one's.
    pub keep: usize,
    /// The producing job's gate on its versions' metrics.
    pub gate: Option<&'a ModelGate>,
    pub lineage: Lineage,
}

/// Makes the folder a command wrote (`staged`) the next version of `name`, and current.
/// Checks it first: regular files only, within the size limit, the model file present,
/// `metrics.json` an object of numbers. The folder is moved, not copied.
pub fn publish(data_dir: &Path, name: &str, staged: &Path, p: &Publish<'_>) -> Result<ModelVersion, ModelError> {
    // The command may have replaced its folder: only a real folder becomes a version.
    if !std::fs::symlink_metadata(staged).is_ok_and(|m| m.is_dir()) {
        return Err(ModelError::Invalid(format!(
            "the command's output folder {} is no longer a folder",
            staged.display()
        )));
    }
    let files = list_files(staged, p.max_bytes)?;
    let model_file = match p.model_file {
        Some(f) if files.iter().any(|v| v.name == f) => f.to_string(),
        Some(f) => return Err(invalid_output(format!("has no {f} (the job's `model_file`)"), &files)),
        None => {
            let onnx: Vec<&VersionFile> =
                files.iter().filter(|f| f.name.ends_with(".onnx") && !f.name.contains('/')).collect();
            match onnx.as_slice() {
                [one] => one.name.clone(),
                [] => return Err(invalid_output("has no .onnx file".into(), &files)),
                _ => return Err(invalid_output("has several .onnx files: name one with `model_file`".into(), &files)),
            }
        }
    };
    let metrics = read_metrics(staged)?;
    let _lock = WRITE_LOCK.lock().expect("registry lock");
    let version = next_version(data_dir, name)?;
    let model_sha256 = files.iter().find(|f| f.name == model_file).map(|f| f.sha256.clone()).unwrap_or_default();
    let gate_failed = match p.gate {
        Some(gate) => check_metric(data_dir, name, gate, &metrics)?,
        None => Vec::new(),
    };
    let meta = ModelVersion {
        name: name.into(),
        version,
        published_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        job: p.job.into(),
        run_id: p.run_id,
        model_file,
        model_sha256,
        files,
        metrics,
        recd_version: env!("CARGO_PKG_VERSION").into(),
        held: !gate_failed.is_empty(),
        gate_failed,
        lineage: Some(p.lineage.clone()),
    };
    write_synced(&staged.join(META_FILE), &serde_json::to_vec_pretty(&meta).expect("meta serialises"))?;
    sync_dir(staged)?;
    let dir = root(data_dir).join(name).join(version.to_string());
    std::fs::rename(staged, &dir).map_err(io("cannot move the version into", &dir))?;
    sync_dir(dir.parent().expect("a version has a parent"))?;
    if meta.held {
        return Ok(meta);
    }
    set_current_locked(data_dir, name, version)?;
    drop_old(data_dir, name, version, p.keep);
    Ok(meta)
}

/// Why a version with `metrics` fails `gate` against the current version (empty: it
/// passes). Without a current version, or one without the metric, only the metric's
/// presence is checked.
fn check_metric(
    data_dir: &Path,
    name: &str,
    gate: &ModelGate,
    metrics: &BTreeMap<String, f64>,
) -> Result<Vec<String>, ModelError> {
    let Some(new) = metrics.get(&gate.metric) else {
        return Ok(vec![format!("{METRICS_FILE} has no `{}` (the gate's metric)", gate.metric)]);
    };
    let Some(current) = current_version(data_dir, name)? else { return Ok(Vec::new()) };
    let before = version_of(data_dir, name, current)?.meta;
    match before.metrics.get(&gate.metric) {
        Some(old) if *new < old - gate.max_drop => Ok(vec![format!(
            "{} = {new} is below the current version {current}'s {old} by more than max_metric_drop {}",
            gate.metric, gate.max_drop
        )]),
        _ => Ok(Vec::new()),
    }
}

/// Throws a held version away (`recd models discard`): only a held one, never the current.
pub fn discard(data_dir: &Path, name: &str, version: u64) -> Result<ModelVersion, ModelError> {
    let _lock = WRITE_LOCK.lock().expect("registry lock");
    let pinned = version_of(data_dir, name, version)?;
    if !pinned.meta.held || current_version(data_dir, name)? == Some(version) {
        return Err(ModelError::Invalid(format!(
            "registry model `{name}` version {version} is not held; only a version its gate held can be discarded"
        )));
    }
    remove_version(data_dir, name, version).map_err(io("cannot remove", &pinned.dir))?;
    Ok(pinned.meta)
}

/// The next version number: above every version kept, and above the last one ever
/// published ([`LAST_FILE`]), so a discarded or dropped number is never used again.
fn next_version(data_dir: &Path, name: &str) -> Result<u64, ModelError> {
    let folder = root(data_dir).join(name);
    let last = match fsutil::read_text(&folder.join(LAST_FILE), 64) {
        Ok(text) => text.trim().parse().unwrap_or(0),
        Err(_) => 0,
    };
    let kept = version_numbers(data_dir, name).last().copied().unwrap_or(0);
    let version = last.max(kept).max(current_version(data_dir, name)?.unwrap_or(0)) + 1;
    std::fs::create_dir_all(&folder).map_err(io("cannot create", &folder))?;
    let tmp = folder.join(format!("{LAST_FILE}.tmp"));
    write_synced(&tmp, format!("{version}\n").as_bytes())?;
    std::fs::rename(&tmp, folder.join(LAST_FILE)).map_err(io("cannot replace", &folder.join(LAST_FILE)))?;
    Ok(version)
}

fn invalid_output(why: String, files: &[VersionFile]) -> ModelError {
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    ModelError::Invalid(format!(
        "the command's output {why} (files: {})",
        if names.is_empty() { "none".into() } else { names.join(", ") }
    ))
}

/// Every file under `dir` (relative names, sorted), hashed and synced; anything but
/// folders and regular files is refused (a symlink could point anywhere).
fn list_files(dir: &Path, max_bytes: u64) -> Result<Vec<VersionFile>, ModelError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let entries = std::fs::read_dir(dir.join(&rel)).map_err(io("cannot read", &dir.join(&rel)))?;
        for entry in entries {
            let entry = entry.map_err(io("cannot read", &dir.join(&rel)))?;
            let name = rel.join(entry.file_name());
            let kind = entry.file_type().map_err(io("cannot read", &entry.path()))?;
            if kind.is_dir() {
                stack.push(name);
                continue;
            }
            let shown = name.display().to_string();
            if !kind.is_file() {
                return Err(ModelError::Invalid(format!(
                    "the command's output {shown} is {}, not a regular file",
                    fsutil::kind_name(&kind)
                )));
            }
            if shown == META_FILE {
                return Err(ModelError::Invalid(format!(
                    "the command's output must not hold {META_FILE} (recd writes it)"
                )));
            }
            let (mut file, meta) = fsutil::open_regular(&entry.path(), max_bytes)
                .map_err(|e| ModelError::Invalid(format!("the command's output {shown} {e}")))?;
            let sha256 = fsutil::sha256_of(&mut file).map_err(io("cannot read", &entry.path()))?;
            file.sync_all().map_err(io("cannot sync", &entry.path()))?;
            out.push(VersionFile { name: shown, bytes: meta.len(), sha256 });
        }
        sync_dir(&dir.join(&rel))?;
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn read_metrics(dir: &Path) -> Result<BTreeMap<String, f64>, ModelError> {
    let file = dir.join(METRICS_FILE);
    let text = match fsutil::read_text(&file, fsutil::MAX_JOB_FILE_BYTES) {
        Ok(t) => t,
        Err(fsutil::FileError::Missing) => return Ok(BTreeMap::new()),
        Err(e) => return Err(ModelError::Invalid(format!("the command's {METRICS_FILE} {e}"))),
    };
    let bad = |why: String| ModelError::Invalid(format!("the command's {METRICS_FILE}: {why}"));
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let object = value.as_object().ok_or_else(|| bad("expected an object of metric names to numbers".into()))?;
    object
        .iter()
        .map(|(k, v)| match v.as_f64() {
            Some(n) => Ok((k.clone(), n)),
            None => Err(bad(format!("metric {k:?} is {v}, not a number"))),
        })
        .collect()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let mut file = std::fs::File::create(path).map_err(io("cannot write", path))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io("cannot write", path))
}

fn sync_dir(dir: &Path) -> Result<(), ModelError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("cannot sync", dir))
}

/// Points `CURRENT` at `version`: a synced temporary file renamed over it.
fn set_current_locked(data_dir: &Path, name: &str, version: u64) -> Result<(), ModelError> {
    let folder = root(data_dir).join(name);
    let tmp = folder.join(format!("{CURRENT_FILE}.tmp"));
    write_synced(&tmp, format!("{version}\n").as_bytes())?;
    std::fs::rename(&tmp, folder.join(CURRENT_FILE)).map_err(io("cannot replace", &folder.join(CURRENT_FILE)))?;
    sync_dir(&folder)
}

/// Makes a kept version current again (`recd models rollback|promote`): `version`, or by
/// default the newest one older than the current.
pub fn set_current(data_dir: &Path, name: &str, version: Option<u64>) -> Result<ModelVersion, ModelError> {
    let _lock = WRITE_LOCK.lock().expect("registry lock");
    let held = |v: u64| version_of(data_dir, name, v).is_ok_and(|p| p.meta.held);
    let target = match version {
        // A first version held by its gate can be promoted: there is no current one yet.
        Some(v) => v,
        None => {
            let now = current_version(data_dir, name)?.ok_or_else(|| ModelError::NoVersion(name.into()))?;
            *version_numbers(data_dir, name).iter().rev().find(|v| **v < now && !held(**v)).ok_or_else(|| {
                ModelError::Invalid(format!(
                    "registry model `{name}` has no version older than the current one, {now} (versions: {})",
                    kept_list(data_dir, name)
                ))
            })?
        }
    };
    let mut pinned = version_of(data_dir, name, target)?;
    if pinned.meta.held {
        // Promoted: no longer held (the gate's reasons stay in its record).
        pinned.meta.held = false;
        write_meta(&pinned)?;
    }
    set_current_locked(data_dir, name, target)?;
    Ok(pinned.meta)
}

/// What [`hold`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Held; it was current, and `now` is current again.
    RolledBack { now: u64 },
    /// Held; it was not current (`now` is).
    Marked { now: Option<u64> },
    /// Not held: it is current and no other version can take its place.
    NoOther,
}

/// Holds `version` after the lists a scoring job made with it failed that job's holdout
/// gate: it is marked held with `reason`, and if it is current, `back_to` (the version the
/// served lists came from) or else the newest older version not held is made current
/// first, so `CURRENT` never names a held version, whatever fails half way.
pub fn hold(
    data_dir: &Path,
    name: &str,
    version: u64,
    back_to: Option<u64>,
    reason: &str,
) -> Result<Holding, ModelError> {
    let _lock = WRITE_LOCK.lock().expect("registry lock");
    let mut pinned = version_of(data_dir, name, version)?;
    let current = current_version(data_dir, name)?;
    let usable = |v: u64| v != version && version_of(data_dir, name, v).is_ok_and(|p| !p.meta.held);
    let holding = if current == Some(version) {
        let older = || version_numbers(data_dir, name).into_iter().rev().find(|v| *v < version && usable(*v));
        let Some(target) = back_to.filter(|v| usable(*v)).or_else(older) else { return Ok(Holding::NoOther) };
        set_current_locked(data_dir, name, target)?;
        Holding::RolledBack { now: target }
    } else {
        Holding::Marked { now: current }
    };
    if !pinned.meta.held {
        pinned.meta.held = true;
        pinned.meta.gate_failed.push(reason.to_string());
        write_meta(&pinned)?;
    }
    Ok(holding)
}

/// Replaces a version's [`META_FILE`] with `pinned.meta` (synced, then renamed).
fn write_meta(pinned: &Pinned) -> Result<(), ModelError> {
    let tmp = pinned.dir.join(format!(".{META_FILE}.tmp"));
    write_synced(&tmp, &serde_json::to_vec_pretty(&pinned.meta).expect("meta serialises"))?;
    std::fs::rename(&tmp, pinned.dir.join(META_FILE)).map_err(io("cannot replace", &pinned.dir.join(META_FILE)))?;
    sync_dir(&pinned.dir)
}

/// Removes versions beyond the newest `keep`, never the current one.
fn drop_old(data_dir: &Path, name: &str, current: u64, keep: usize) {
    let numbers = version_numbers(data_dir, name);
    // A held version waits for ops to settle it, and does not count; a pinned one is
    // being read by a run.
    let held = |v: u64| version_of(data_dir, name, v).is_ok_and(|p| p.meta.held);
    let numbers: Vec<u64> = numbers.into_iter().filter(|v| !held(*v)).collect();
    let excess = numbers.len().saturating_sub(keep.max(1));
    for v in numbers.into_iter().filter(|v| *v != current && !is_pinned(name, *v)).take(excess) {
        if let Err(e) = remove_version(data_dir, name, v) {
            tracing::warn!("registry model {name}: cannot remove version {v}: {e}");
        }
    }
}

/// Takes a version folder out of the registry in one rename (to a staging name, which a
/// start after a crash removes), then deletes it.
fn remove_version(data_dir: &Path, name: &str, version: u64) -> std::io::Result<()> {
    let folder = root(data_dir).join(name);
    let gone = folder.join(format!("{STAGING_PREFIX}drop-{version}"));
    std::fs::rename(folder.join(version.to_string()), &gone)?;
    std::fs::File::open(&folder)?.sync_all()?;
    std::fs::remove_dir_all(&gone)
}

/// Staging folders a crash left behind (their runs are gone); called at start.
pub fn remove_leftover_staging(data_dir: &Path) {
    for model in std::fs::read_dir(root(data_dir)).into_iter().flatten().filter_map(|e| e.ok()) {
        for entry in std::fs::read_dir(model.path()).into_iter().flatten().filter_map(|e| e.ok()) {
            if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The job with its registry references made concrete: the model file and the input files
/// of the current version of each registry model it names, read once, so every reference
/// to one model in a run is to the same version. Also returns the versions pinned, and
/// [`Pins`] that keep retention off them while held.
pub fn pin(job: &Job, data_dir: &Path) -> Result<(Job, Vec<ModelVersion>, Pins), ModelError> {
    let mut pins = Pins::default();
    if job.registry_model.is_none() && job.inputs.iter().all(|i| i.registry.is_none()) {
        return Ok((job.clone(), Vec::new(), pins));
    }
    let _lock = WRITE_LOCK.lock().expect("registry lock");
    let mut pinned: BTreeMap<String, Pinned> = BTreeMap::new();
    let mut get = |name: &str| -> Result<Pinned, ModelError> {
        if let Some(p) = pinned.get(name) {
            return Ok(p.clone());
        }
        let p = current(data_dir, name)?;
        pins.hold(name, p.meta.version);
        pinned.insert(name.into(), p.clone());
        Ok(p)
    };
    let mut job = job.clone();
    if let Some(name) = &job.registry_model {
        let p = get(name)?;
        job.model = Some(p.dir.join(&p.meta.model_file));
        job.registry_model = None;
    }
    for input in job.inputs.iter_mut() {
        let Some(name) = &input.registry else { continue };
        let p = get(name).map_err(|e| match e {
            ModelError::NoVersion(_) => e,
            e => ModelError::Invalid(format!("inputs.{}: {e}", input.name)),
        })?;
        let file = input.path.display().to_string();
        if !p.meta.files.iter().any(|f| f.name == file) {
            let names: Vec<&str> = p.meta.files.iter().map(|f| f.name.as_str()).collect();
            return Err(ModelError::Invalid(format!(
                "inputs.{}: registry model `{name}` version {} has no file {file} (files: {})",
                input.name,
                p.meta.version,
                names.join(", ")
            )));
        }
        input.path = p.dir.join(&file);
        input.registry = None;
    }
    Ok((job, pinned.into_values().map(|p| p.meta).collect(), pins))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(data: &Path, name: &str, run: u64, files: &[(&str, &str)]) -> PathBuf {
        let dir = staging_dir(data, name, run);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, text) in files {
            std::fs::write(dir.join(f), text).unwrap();
        }
        dir
    }

    fn publish_one(data: &Path, run: u64, files: &[(&str, &str)]) -> Result<ModelVersion, ModelError> {
        let staged = stage(data, "m", run, files);
        publish(
            data,
            "m",
            &staged,
            &Publish {
                job: "train",
                run_id: run,
                model_file: None,
                max_bytes: 1 << 20,
                keep: 2,
                gate: None,
                lineage: Lineage::default(),
            },
        )
    }

    #[test]
    fn versions_publish_in_order_hashed_and_old_ones_are_dropped() {
        let data = tempfile::tempdir().unwrap();
        assert_eq!(current(data.path(), "m").unwrap_err(), ModelError::NoVersion("m".into()));
        let v1 =
            publish_one(data.path(), 7, &[("a.onnx", "one"), ("users.csv", "u"), ("metrics.json", "{\"ndcg\": 0.25}")])
                .unwrap();
        assert_eq!((v1.version, v1.model_file.as_str(), v1.run_id), (1, "a.onnx", 7));
        // sha256("one"), computed independently
        assert_eq!(v1.model_sha256, "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed");
        assert_eq!(v1.metrics, BTreeMap::from([("ndcg".to_string(), 0.25)]));
        assert_eq!(
            v1.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["a.onnx", "metrics.json", "users.csv"]
        );
        assert!(!staging_dir(data.path(), "m", 7).exists(), "the staging folder became the version");
        for run in 8..=10 {
            publish_one(data.path(), run, &[("a.onnx", &run.to_string())]).unwrap();
        }
        let kept: Vec<u64> = versions(data.path(), "m").unwrap().iter().map(|v| v.version).collect();
        assert_eq!(kept, [3, 4]);
        let now = current(data.path(), "m").unwrap();
        assert_eq!(now.meta.version, 4);
        assert_eq!(std::fs::read_to_string(now.dir.join("a.onnx")).unwrap(), "10");
        assert_eq!(names(data.path()), ["m"]);
    }

    #[test]
    fn rollback_and_promote_move_current_among_kept_versions() {
        let data = tempfile::tempdir().unwrap();
        for run in 1..=2 {
            publish_one(data.path(), run, &[("a.onnx", "x")]).unwrap();
        }
        assert_eq!(set_current(data.path(), "m", None).unwrap().version, 1);
        assert!(set_current(data.path(), "m", None).unwrap_err().to_string().contains("no version older"));
        assert_eq!(set_current(data.path(), "m", Some(2)).unwrap().version, 2);
        assert_eq!(
            set_current(data.path(), "m", Some(9)).unwrap_err().to_string(),
            "registry model `m` has no version 9 (versions: 1, 2)"
        );
        // A publish after a rollback numbers on from the highest version.
        set_current(data.path(), "m", Some(1)).unwrap();
        assert_eq!(publish_one(data.path(), 3, &[("a.onnx", "y")]).unwrap().version, 3);
    }

    #[test]
    fn bad_output_is_refused_and_nothing_changes() {
        let data = tempfile::tempdir().unwrap();
        publish_one(data.path(), 1, &[("a.onnx", "x")]).unwrap();
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("users.csv", "u")], "the command's output has no .onnx file (files: users.csv)"),
            (&[("a.onnx", "x"), ("b.onnx", "y")], "has several .onnx files"),
            (&[("a.onnx", "x"), ("metrics.json", "{\"auc\": \"high\"}")], "metric \"auc\" is \"high\", not a number"),
            (&[("a.onnx", "x"), ("metrics.json", "[1]")], "expected an object"),
        ];
        for (run, (files, want)) in (2..).zip(cases) {
            let err = publish_one(data.path(), run, files).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        let staged = stage(data.path(), "m", 9, &[("a.onnx", "x")]);
        std::os::unix::fs::symlink("/etc/passwd", staged.join("link")).unwrap();
        let err = publish(
            data.path(),
            "m",
            &staged,
            &Publish {
                job: "t",
                run_id: 9,
                model_file: None,
                max_bytes: 1 << 20,
                keep: 2,
                gate: None,
                lineage: Lineage::default(),
            },
        );
        assert!(err.unwrap_err().to_string().contains("link is a symlink, not a regular file"), "symlinks are refused");
        assert_eq!(current(data.path(), "m").unwrap().meta.version, 1);
        assert_eq!(versions(data.path(), "m").unwrap().len(), 1);
    }

    #[test]
    fn holding_a_current_version_makes_the_served_one_current_again() {
        let data = tempfile::tempdir().unwrap();
        let current = || current_version(data.path(), "m").unwrap();
        let is_held = |v| version_of(data.path(), "m", v).unwrap().meta.held;
        for run in 1..=3 {
            publish_one(data.path(), run, &[("a.onnx", "x")]).unwrap();
        }
        // Retention kept 2 and 3; 3 is current.
        assert_eq!(hold(data.path(), "m", 3, Some(2), "fell").unwrap(), Holding::RolledBack { now: 2 });
        assert!(is_held(3));
        assert_eq!(version_of(data.path(), "m", 3).unwrap().meta.gate_failed, ["fell"]);
        assert_eq!(current(), Some(2));
        // Holding again changes nothing.
        assert_eq!(hold(data.path(), "m", 3, Some(2), "fell").unwrap(), Holding::Marked { now: Some(2) });
        assert_eq!(version_of(data.path(), "m", 3).unwrap().meta.gate_failed, ["fell"]);
        // The only usable version cannot be held: nothing would be current.
        assert_eq!(hold(data.path(), "m", 2, None, "last").unwrap(), Holding::NoOther);
        assert!(!is_held(2));
        // The served version gone (1, dropped): the newest older one not held.
        publish_one(data.path(), 4, &[("a.onnx", "x")]).unwrap();
        assert_eq!(hold(data.path(), "m", 4, Some(1), "fell").unwrap(), Holding::RolledBack { now: 2 });
        // A version that is not current is only marked.
        publish_one(data.path(), 5, &[("a.onnx", "x")]).unwrap();
        assert_eq!(hold(data.path(), "m", 2, None, "also").unwrap(), Holding::Marked { now: Some(5) });
        assert!(is_held(2));
        assert_eq!(current(), Some(5));
    }

    #[test]
    fn a_version_whose_metric_drops_is_held_until_promoted_or_discarded() {
        let data = tempfile::tempdir().unwrap();
        let gate = ModelGate { metric: "ndcg".into(), max_drop: 0.01 };
        let with = |run: u64, metrics: &str| {
            let staged = stage(data.path(), "m", run, &[("a.onnx", "x"), ("metrics.json", metrics)]);
            let p = Publish {
                job: "t",
                run_id: run,
                model_file: None,
                max_bytes: 1 << 20,
                keep: 1,
                gate: Some(&gate),
                lineage: Lineage::default(),
            };
            publish(data.path(), "m", &staged, &p).unwrap()
        };
        assert!(!with(1, "{\"ndcg\": 0.30}").held);
        assert!(!with(2, "{\"ndcg\": 0.295}").held, "within max_metric_drop");
        let dropped = with(3, "{\"ndcg\": 0.25}");
        assert!(dropped.held);
        assert_eq!(
            dropped.gate_failed,
            ["ndcg = 0.25 is below the current version 2's 0.295 by more than max_metric_drop 0.01"]
        );
        let missing = with(4, "{\"auc\": 0.9}");
        assert_eq!(missing.gate_failed, ["metrics.json has no `ndcg` (the gate's metric)"]);
        assert_eq!(current_version(data.path(), "m").unwrap(), Some(2), "held versions are not current");
        // Held versions outlive retention (keep 1), are skipped by a default rollback,
        // and only they can be discarded.
        assert_eq!(versions(data.path(), "m").unwrap().iter().map(|v| v.version).collect::<Vec<_>>(), [2, 3, 4]);
        assert!(discard(data.path(), "m", 2).is_err());
        assert_eq!(discard(data.path(), "m", 4).unwrap().version, 4);
        let promoted = set_current(data.path(), "m", Some(3)).unwrap();
        assert!(!promoted.held && !promoted.gate_failed.is_empty());
        assert!(!current(data.path(), "m").unwrap().meta.held);
        assert_eq!(set_current(data.path(), "m", None).unwrap().version, 2);
        assert_eq!(with(5, "{\"ndcg\": 0.3}").version, 5, "a discarded number is not used again");
    }
}
