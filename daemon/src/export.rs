//! `recd run JOB --export DIR [--shard I/N]`: one run of a job without a daemon, for a
//! batch cluster (a Kubernetes Indexed Job runs one shard per pod). The run goes through
//! the same worker, checks and staging as a daemon's (into a throwaway store in DIR), and
//! its version is written as one Parquet part with a manifest beside it: what produced it
//! (job, plugin, model and input fingerprints, shard) and what it holds (users, rows, the
//! store's order-independent checksum, the part's SHA-256). The manifest is written last,
//! by rename: a part without one is unfinished.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::fsutil::sha256_file;
use crate::job::{self, InputFormat, Job};
use crate::plugins::Registry;
use crate::run::{self, RemoveOnDrop, RunControl};
use crate::shard::Shard;
use crate::store::{Retention, ServedTable, Store, TableKind};
use crate::tables;

/// Version of the manifest's layout.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub job: String,
    pub table: String,
    pub kind: TableKind,
    pub shard: Shard,
    /// SHA-256 of the plugin library that ran (its snapshot).
    pub plugin_sha256: String,
    /// SHA-256 of the model file and of its external data file (`<model>.data`) if it has
    /// one; None for a job without a model.
    pub model_sha256: Option<String>,
    /// Per input name, the SHA-256 of its file.
    pub inputs: BTreeMap<String, String>,
    pub users: u64,
    pub rows: u64,
    /// The store's checksum of these users' values (see `store::VersionInfo::checksum`):
    /// a sum, so the parts of one run add up to the checksum of the whole table.
    pub checksum: u64,
    /// The Parquet file, beside the manifest.
    pub part: String,
    pub part_sha256: String,
    pub recd_version: String,
    pub created_at: String,
}

/// Where shard `shard` of `job` goes in `dir`: (part, manifest).
pub fn part_paths(dir: &Path, job: &str, shard: Shard) -> (PathBuf, PathBuf) {
    let stem = format!("{job}-shard-{:05}-of-{:05}", shard.index, shard.count);
    (dir.join(format!("{stem}.parquet")), dir.join(format!("{stem}.manifest.json")))
}

/// Runs `job_name` (a file in the jobs folder) for `shard`'s users and writes its part and
/// manifest into `dir`.
pub fn export(config: &Config, job_name: &str, dir: &Path, shard: Shard) -> anyhow::Result<Manifest> {
    let file = config.jobs_dir.join(format!("{job_name}.toml"));
    let job = job::load(&file, config).map_err(|e| anyhow::anyhow!("{e}"))?;
    if job.command.is_some() {
        anyhow::bail!("job {job_name} runs a command: it publishes no table to export");
    }
    // The registry lives in the real data dir, not the run's scratch store.
    let (mut job, _, _pins) = crate::models::pin(&job, &config.data_dir)?;
    // A part is a shard, not the table: the job's gate applies when the parts are imported.
    job.gate = Default::default();
    if let Some(input) = job.inputs.iter().find(|i| i.format == InputFormat::Table) {
        anyhow::bail!(
            "input `{}` reads table `{}`, which only a daemon serves: a run with --export reads files",
            input.name,
            input.path.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (part, manifest_path) = part_paths(dir, &job.name, shard);
    let scratch = RemoveOnDrop(dir.join(format!(".{}.tmp-{}", part_file_name(&part), std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let mut run_config = config.clone();
    run_config.data_dir = scratch.0.clone();
    let store = Store::open(&scratch.0, Retention { count: 1, max_age: None })?;
    let plugins = Registry::new(&scratch.0);
    let run_id = chrono::Utc::now().timestamp_micros() as u64;
    let control = RunControl::new();
    let report = run::execute(&job, run_id, &run_config, &store, &plugins, &control, shard)
        .map_err(|e| anyhow::anyhow!("job {}: {e}", job.name))?;
    let version = report.table_version().context("the run published no table")?;
    let served = store.served(&job.table).context("the run's version is not in the scratch store")?;
    // The plugin snapshot and the model the run used, as it recorded them (either file may
    // have been replaced since).
    let (build, model_sha256) = control.lineage();
    let plugin_sha256 = build.map(|b| b.sha256).context("the run recorded no plugin")?;
    let tmp_part = scratch.0.join("part.parquet");
    write_part(&served, &tmp_part)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        job: job.name.clone(),
        table: job.table.clone(),
        kind: job.kind,
        shard,
        plugin_sha256,
        model_sha256,
        inputs: input_fingerprints(&job)?,
        users: version.users,
        rows: version.rows,
        checksum: version.checksum,
        part: part_file_name(&part),
        part_sha256: sha256_file(&tmp_part)?,
        recd_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    drop(served);
    drop(store);
    std::fs::rename(&tmp_part, &part).with_context(|| format!("writing {}", part.display()))?;
    let tmp_manifest = scratch.0.join("manifest.json");
    std::fs::write(&tmp_manifest, serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::rename(&tmp_manifest, &manifest_path).with_context(|| format!("writing {}", manifest_path.display()))?;
    tracing::info!(
        job = %job.name,
        %shard,
        users = manifest.users,
        rows = manifest.rows,
        pairs_scored = report.stats.score_rows,
        "exported {} and {}",
        part.display(),
        manifest_path.display()
    );
    Ok(manifest)
}

fn part_file_name(part: &Path) -> String {
    part.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn input_fingerprints(job: &Job) -> anyhow::Result<BTreeMap<String, String>> {
    job.inputs
        .iter()
        .map(|i| Ok((i.name.clone(), sha256_file(&i.path).with_context(|| format!("input `{}`", i.name))?)))
        .collect()
}

fn write_part(served: &ServedTable, path: &Path) -> anyhow::Result<()> {
    let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = ArrowWriter::try_new(file, tables::part_schema(served.kind), Some(props))?;
    tables::table_batches(served, |batch| Ok(writer.write(&batch)?))?;
    writer.close()?;
    Ok(())
}
