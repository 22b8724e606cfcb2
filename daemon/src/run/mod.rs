//! The daemon's side of a run: spawn `recd worker`, feed it the spec, stage the rows it
//! streams into a new table version, and publish that version only if the worker ends
//! cleanly and every row passed the checks. Blocking code: call it off the async runtime.

use std::io::BufReader;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::job::{InputFormat, Job, OutputChecks};
use crate::models::ModelVersion;
use crate::plugins::Registry;
use crate::shard::Shard;
use crate::store::{DaemonStages, Gate, Lineage, PluginBuild, Store, TableKind, VersionInfo};

mod collect;
mod command;
mod control;
mod process;
mod table_inputs;

use crate::child::kill_group;
use crate::wire::{self, Message, RunSpec};
use collect::Collector;
pub use command::execute_command;
pub use control::RunControl;
use process::{STDERR_TAIL, Source, describe, forward, tail_text};
use table_inputs::export_table_inputs;
pub use table_inputs::{RemoveOnDrop, remove_leftover_run_dirs};

/// What a run made current.
#[derive(Debug, Clone)]
pub enum Published {
    /// A plugin job's new table version.
    Table(VersionInfo),
    /// A command job's new registry model version.
    Model(ModelVersion),
    /// A command job that produces no model.
    Nothing,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub job: String,
    pub run_id: u64,
    /// The table a plugin job publishes; empty for a command job.
    pub table: String,
    pub published: Published,
    pub provider: String,
    pub seconds: f64,
    pub stats: crate::wire::WorkerStats,
    /// Where the daemon's side of the run went.
    pub stages: DaemonStages,
    /// What the worker asked to record beside the result (e.g. `auto` scored on the CPU).
    pub warnings: Vec<String>,
    /// The registry model versions the run read (its model, its `registry:` inputs).
    pub models_used: Vec<ModelVersion>,
    /// What became of the registry versions the run read when its lists fell on the
    /// gate's holdout (see `hold_models`).
    pub models_held: Vec<String>,
}

impl RunReport {
    /// Why a gate held the version the run made (None: it is current, or there is none).
    pub fn held(&self) -> Option<String> {
        match &self.published {
            Published::Table(v) if v.held => {
                let why = v.gate.as_ref().map(|g| g.failed.join("; ")).unwrap_or_default();
                let models = match self.models_held.is_empty() {
                    true => String::new(),
                    false => format!("; registry model versions: {}", self.models_held.join(", ")),
                };
                Some(format!("table {} version {} held by its gate: {why}{models}", self.table, v.version))
            }
            Published::Model(m) if m.held => Some(format!(
                "registry model {} version {} held by its gate: {}",
                m.name,
                m.version,
                m.gate_failed.join("; ")
            )),
            _ => None,
        }
    }

    /// The table version a plugin job published.
    pub fn table_version(&self) -> Option<&VersionInfo> {
        match &self.published {
            Published::Table(v) => Some(v),
            _ => None,
        }
    }
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(held) = self.held() {
            return write!(f, "job {} run {}: {held}", self.job, self.run_id);
        }
        match &self.published {
            Published::Table(v) => write!(
                f,
                "job {} run {} published table {} version {}: {} users, {} rows in {:.2}s (provider {})",
                self.job, self.run_id, self.table, v.version, v.users, v.rows, self.seconds, self.provider
            )?,
            Published::Model(m) => write!(
                f,
                "job {} run {} published registry model {} version {} ({}, sha256 {}) in {:.2}s",
                self.job, self.run_id, m.name, m.version, m.model_file, m.model_sha256, self.seconds
            )?,
            Published::Nothing => {
                write!(f, "job {} run {} ran its command in {:.2}s", self.job, self.run_id, self.seconds)?
            }
        }
        for m in &self.models_used {
            write!(f, "; used registry model {} version {}", m.name, m.version)?;
        }
        let s = &self.stats;
        if s.score_calls > 0 {
            write!(f, "; scoring {:.2}s in {} calls", s.score_seconds, s.score_calls)?;
        }
        if s.peak_rss_bytes > 0 {
            write!(f, "; worker peak {} MiB", s.peak_rss_bytes >> 20)?;
        }
        Ok(())
    }
}

/// Why a run did not publish.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Failed(String),
    #[error("timed out after {0}s; the worker was stopped and its version discarded")]
    TimedOut(u64),
    /// The worker ended in time, the hashes of its inputs for the run's lineage did not.
    #[error(
        "timed out after {0}s hashing the run's input files for its lineage (a slow or hung file system?); nothing published"
    )]
    TimedOutHashing(u64),
    #[error("cancelled ({0}); the worker was stopped and its version discarded")]
    Cancelled(String),
    /// Another run of its shared table began later and published first: not retried.
    #[error("{0}")]
    Superseded(String),
}

impl RunError {
    /// The word run history records.
    pub fn status(&self) -> &'static str {
        match self {
            RunError::Failed(_) => "failed",
            RunError::TimedOut(_) | RunError::TimedOutHashing(_) => "timeout",
            RunError::Cancelled(_) => "cancelled",
            RunError::Superseded(_) => "superseded",
        }
    }
}

impl From<anyhow::Error> for RunError {
    fn from(e: anyhow::Error) -> Self {
        RunError::Failed(format!("{e:#}"))
    }
}

impl From<crate::store::StoreError> for RunError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Superseded { .. } => RunError::Superseded(e.to_string()),
            e => RunError::Failed(format!("store: {e}")),
        }
    }
}

/// Starts hashing the run's inputs for its lineage on a thread of its own
/// ([`crate::lineage::inputs`]); its outcome is waited for with [`RunControl::wait_beside`],
/// within the run's timeout.
fn hash_inputs_beside(
    written: &[crate::job::Input],
    read: &[crate::job::Input],
    table_versions: std::collections::BTreeMap<String, u64>,
    models: &[crate::models::ModelVersion],
) -> std::sync::mpsc::Receiver<Vec<crate::store::InputLineage>> {
    let (written, read, models) = (written.to_vec(), read.to_vec(), models.to_vec());
    let (hashed, outcome) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = hashed.send(crate::lineage::inputs(&written, &read, &table_versions, &models));
    });
    outcome
}

/// Runs `job` once in a worker process and publishes its table, unless `control` stops it
/// or it outlives the job's timeout.
/// `shard`: the users whose rows are kept ([`Shard::WHOLE`] for every user); the rows of
/// the others are dropped as they arrive.
pub fn execute(
    job: &Job,
    run_id: u64,
    config: &Config,
    store: &Store,
    plugins: &Registry,
    control: &Arc<RunControl>,
    shard: Shard,
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    // Registry references become the current versions' files, read once for the whole run.
    // Held until the run ends: retention keeps the pinned versions' files.
    let (pinned, models_used, _pins) =
        crate::models::pin(job, &config.data_dir).map_err(|e| RunError::Failed(e.to_string()))?;
    control.set_models(models_used.iter().map(|m| format!("{}@{}", m.name, m.version)).collect());
    let (original, job) = (job, &pinned);
    // The worker loads a snapshot: replacing the plugin file cannot touch this run.
    // Held until the run ends: no prune removes it while the worker loads it.
    let snapshot = plugins.snapshot(&job.plugin, job.plugin_sha256.as_deref()).map_err(RunError::Failed)?;
    let sha256 = snapshot.sha256.clone();
    control.set_plugin(PluginBuild {
        path: job.plugin.display().to_string(),
        sha256: sha256.clone(),
        ..PluginBuild::default()
    });
    check_files(job, config.max_input_bytes)?;
    let gate = crate::holdout::loaded(&job.gate).map_err(RunError::Failed)?;
    let run_dir = config.data_dir.join("runs").join(run_id.to_string());
    let (inputs, table_versions) = export_table_inputs(&job.inputs, store, &run_dir)?;
    let _cleanup = RemoveOnDrop(run_dir);
    // Inputs are hashed beside the worker's run (a hash is kept while its file is unchanged).
    let lineage_inputs = hash_inputs_beside(&original.inputs, &inputs, table_versions, &models_used);
    let spec = RunSpec {
        job: job.name.clone(),
        run_id,
        plugin: snapshot.path.clone(),
        expect_name: job.plugin_name.clone(),
        known_users: job.checks.known_users.clone(),
        known_items: job.checks.known_items.clone(),
        params_json: job.params_json.clone(),
        inputs,
        model: job.model.clone(),
        model_inputs: job.model_inputs.clone(),
        output: job.kind,
        device: job.device,
        onnxruntime: config.onnxruntime.clone(),
        shard,
    };
    // The spec is one line; stdin then stays open: closing it is how we ask the worker to
    // stop. A worker that dies at once breaks the pipe; its exit status tells why.
    let mut line = serde_json::to_vec(&spec).map_err(anyhow::Error::from)?;
    line.push(b'\n');
    let exe = wire::self_exe().map_err(anyhow::Error::from)?;
    // A group of its own: what the plugin starts (a helper left running) ends with the run,
    // and cannot hold the run's pipes open past it.
    let mut child = Command::new(exe)
        .arg("worker")
        .env(crate::child::PARENT_PID_VAR, std::process::id().to_string())
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RunError::Failed(format!("cannot start a worker: {e}")))?;
    let worker_pid = child.id();
    let stderr = forward(child.stderr.take().expect("piped stderr"), Source::Worker, &job.name, run_id, STDERR_TAIL);
    let stdin = child.stdin.take().expect("piped stdin");
    // Read so that a process the plugin forked outside the worker's group cannot hold the
    // run once the worker has ended (the watchdog's kill misses it).
    let stdout = child.stdout.take().expect("piped stdout");
    let stdout = crate::child::GroupOutput::new(stdout, worker_pid, "the worker", control::CANCEL_GRACE);
    let mut stdout = BufReader::with_capacity(1 << 20, stdout);
    // Staged before the worker has its spec: the version's number is taken before the
    // plugin reads anything, so numbers follow the order runs begin (see
    // `StoreError::Superseded`).
    let mut staged = match store.stage(&job.table, &job.name, run_id, job.kind) {
        Ok(staged) => staged,
        Err(e) => {
            // Killed while unreaped: its group id cannot be another's yet.
            drop(stdin);
            kill_group(worker_pid);
            let _ = child.wait();
            return Err(e.into());
        }
    };
    // Written beside the watchdog: a worker stuck before it reads a spec larger than the
    // pipe's buffer is still timed out.
    let stdin = match crate::child::write_beside(stdin, line) {
        Ok(stdin) => stdin,
        Err(e) => {
            kill_group(worker_pid);
            let _ = child.wait();
            store.discard(staged)?;
            return Err(RunError::Failed(format!("cannot write the worker's spec: {e}")));
        }
    };
    let watchdog = {
        let (control, timeout) = (Arc::clone(control), job.policy.timeout);
        std::thread::spawn(move || control.watch(timeout, stdin, worker_pid))
    };

    staged.fallback = job.fallback.clone();
    let mut collector = Collector::new(staged, &job.checks, shard);
    let streamed = read_worker(&mut stdout, &mut collector, control);
    if streamed.is_err() {
        kill_group(worker_pid);
    }
    // What the plugin left running ends with the run. The group is killed while the worker
    // is not reaped yet, and the watchdog is stopped before it is: until then its id stays
    // taken, and no other group can have it.
    crate::child::wait_unreaped(worker_pid);
    kill_group(worker_pid);
    // Past a `Done`, read while the worker is unreaped (`GroupOutput` waits on its id) and
    // its group gone (what a helper it left there held open is closed by now).
    let streamed = streamed.and_then(|last| ended_after(last, &mut stdout));
    control.finish();
    let _ = watchdog.join();
    let status = match child.wait() {
        Ok(status) => status,
        Err(e) => {
            store.discard(collector.into_staged())?;
            return Err(anyhow::Error::from(e).into());
        }
    };
    let tail = stderr.tail(control::CANCEL_GRACE);
    // Within the run's timeout: a file system that hangs a read must not hold the run's
    // slot for ever (the hashing thread is left to end by itself).
    let mut input_lineage = control.wait_beside(job.policy.timeout, &lineage_inputs).unwrap_or_default();
    // The build the worker reports, in the run's lineage and the plugin registry.
    let record_build = |plugin: Option<wire::PluginDesc>, model_sha256: Option<String>| {
        if let Some(plugin) = plugin {
            control.set_reported(&plugin, model_sha256);
            plugins.remember(&job.plugin, &sha256, &plugin, Some(run_id));
        }
    };
    let outcome = match (control.stop_reason(), streamed) {
        (Some(stop), _) => Err(stop),
        // A stream cut short by the worker's death: its death says why (a signal, the OOM
        // killer's SIGKILL), not the half frame.
        (None, Err(e)) if !status.success() && is_cut_short(&e) => {
            Err(RunError::Failed(format!("worker died ({}){}", describe(status), tail_text(&tail))))
        }
        (None, Err(e)) => Err(e.into()),
        (None, Ok(Some(Message::Done { provider, plugin, stats, model_sha256, warnings, input_rows, .. })))
            if status.success() =>
        {
            record_build(Some(plugin), model_sha256);
            for input in &mut input_lineage {
                input.rows = input_rows.get(&input.name).copied();
            }
            Ok((provider, stats, warnings))
        }
        (None, Ok(Some(Message::Failed { error, plugin }))) => {
            record_build(plugin, None);
            Err(RunError::Failed(error))
        }
        (None, Ok(_)) => Err(RunError::Failed(format!("worker died ({}){}", describe(status), tail_text(&tail)))),
    };
    // Ops know the file they dropped in, not the run's snapshot of it.
    let outcome = outcome.map_err(|e| match e {
        RunError::Failed(message) => {
            let snapshot_path = snapshot.path.display().to_string();
            let short = sha256.get(..12).unwrap_or(&sha256);
            RunError::Failed(message.replace(&snapshot_path, &format!("{} (sha256 {short}…)", job.plugin.display())))
        }
        other => other,
    });
    let params_sha256 = crate::lineage::sha256_text(&job.params_json);
    control.set_inputs(input_lineage.clone(), params_sha256.clone());
    let (plugin_build, model_sha256) = control.lineage();
    let lineage = Lineage {
        plugin: plugin_build,
        model_sha256,
        models: models_used.iter().map(|m| format!("{}@{}", m.name, m.version)).collect(),
        inputs: input_lineage,
        params_sha256: Some(params_sha256),
        recd_version: env!("CARGO_PKG_VERSION").into(),
    };
    let ((provider, stats, warnings), version, stages) = settle(store, collector, outcome, &gate, Some(lineage))?;
    // The version the holdout compared with, when the new lists fell on it.
    let fell_against = version.gate.as_ref().and_then(|g| g.holdout.as_ref()).filter(|h| h.dropped);
    let models_held = match fell_against.and_then(|h| h.current_version) {
        Some(served) => hold_models(
            &config.data_dir,
            &models_used,
            (served, lineage_of(store, &job.table, served)),
            &job.table,
            version.version,
        ),
        None => Vec::new(),
    };
    let report = RunReport {
        job: job.name.clone(),
        run_id,
        table: job.table.clone(),
        published: Published::Table(version),
        provider,
        seconds: started.elapsed().as_secs_f64(),
        stats,
        stages,
        warnings,
        models_used,
        models_held,
    };
    tracing::info!("stages: worker {}; daemon {}", report.stats.stages_text(), report.stages.stages_text());
    Ok(report)
}

/// The lineage of version `version` of `table`, if it is kept and has one.
fn lineage_of(store: &Store, table: &str, version: u64) -> Option<Lineage> {
    let tables = store.tables().ok()?;
    let (_, meta) = tables.into_iter().find(|(name, _)| name == table)?;
    meta.versions.into_iter().find(|v| v.version == version)?.lineage
}

/// After a version's lists fell on the holdout against the `served` version: each
/// registry version the run read (its model, its `registry:` inputs) that differs from
/// the one the served lists were made with is held too, and that model's current version
/// goes back to the served one. Without this the next run would score with the same
/// model and be held again. A version the served lists also came from stays: the data or
/// the params changed, not the model. Returns one note per registry version read but
/// one that stayed for that reason, e.g. `ranking@2 held (current again: 1)`.
fn hold_models(
    data_dir: &std::path::Path,
    used: &[ModelVersion],
    (served, lineage): (u64, Option<Lineage>),
    table: &str,
    version: u64,
) -> Vec<String> {
    use crate::models::Holding;
    let served_with = |name: &str| {
        lineage.as_ref()?.models.iter().find_map(|m| m.strip_prefix(name)?.strip_prefix('@')?.parse::<u64>().ok())
    };
    let mut notes = Vec::new();
    for m in used {
        let what = format!("{}@{}", m.name, m.version);
        let before = match served_with(&m.name) {
            Some(v) if v == m.version => continue,
            Some(v) => v,
            None => {
                notes.push(format!(
                    "{what} not held: version {served} of {table} does not record which {} made it",
                    m.name
                ));
                continue;
            }
        };
        let reason = format!("table {table} version {version} made with it fell on the holdout");
        notes.push(match crate::models::hold(data_dir, &m.name, m.version, Some(before), &reason) {
            Ok(Holding::RolledBack { now }) => format!("{what} held (current again: {now})"),
            Ok(Holding::Marked { now: Some(now) }) => format!("{what} held (current: {now})"),
            Ok(Holding::Marked { now: None }) => format!("{what} held"),
            Ok(Holding::NoOther) => format!("{what} not held: no other version of {} to make current", m.name),
            Err(e) => format!("{what} not held: {e}"),
        });
    }
    notes
}

/// The job's model and input files are still regular files within the size limit (they
/// were when the job was loaded; a file can be replaced since).
pub(super) fn check_files(job: &Job, max_bytes: u64) -> Result<(), RunError> {
    if let Some(model) = &job.model {
        crate::job::check_data_file(model, max_bytes).map_err(|m| RunError::Failed(format!("model file {m}")))?;
    }
    for input in job.inputs.iter().filter(|i| i.format != InputFormat::Table && i.registry.is_none()) {
        crate::job::check_data_file(&input.path, max_bytes)
            .map_err(|m| RunError::Failed(format!("input `{}`: file {m}", input.name)))?;
    }
    if let Some(h) = &job.gate.holdout {
        crate::job::check_data_file(&h.path, max_bytes)
            .map_err(|m| RunError::Failed(format!("gate holdout: file {m}")))?;
    }
    Ok(())
}

/// Publishes the collected version when the run succeeded and its last user passes the
/// checks; discards it otherwise.
fn settle<T>(
    store: &Store,
    mut collector: Collector,
    outcome: Result<T, RunError>,
    gate: &Gate,
    lineage: Option<Lineage>,
) -> Result<(T, VersionInfo, DaemonStages), RunError> {
    match outcome.and_then(|value| collector.finish().map(|()| value).map_err(RunError::from)) {
        Ok(value) => {
            let (collect_seconds, writing) = (collector.collect_seconds(), collector.write_nanos());
            let publishing = Instant::now();
            let mut staged = collector.into_staged();
            staged.lineage = lineage;
            let version = store.publish_gated(staged, gate)?;
            // Read after the publish, which waits for the last rows to be written.
            let store_seconds = writing.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9;
            let stages =
                DaemonStages { collect_seconds, store_seconds, publish_seconds: publishing.elapsed().as_secs_f64() };
            Ok((value, version, stages))
        }
        Err(e) => {
            store.discard(collector.into_staged())?;
            Err(e)
        }
    }
}

/// A worker's stdout taken as a run takes it (the same frames, checks, and publish or
/// discard), with no worker process: what the `result_stream` fuzz target drives.
pub fn publish_stream(
    store: &Store,
    table: &str,
    kind: TableKind,
    checks: &OutputChecks,
    shard: Shard,
    stream: &mut impl std::io::Read,
) -> Result<VersionInfo, RunError> {
    let staged = store.stage(table, "fuzz", 0, kind)?;
    let mut collector = Collector::new(staged, checks, shard);
    let control = RunControl::new();
    let read = read_worker(stream, &mut collector, &control);
    let outcome = match read.and_then(|last| ended_after(last, stream)) {
        Ok(Some(Message::Done { .. })) => Ok(()),
        Ok(Some(Message::Failed { error, .. })) => Err(RunError::Failed(error)),
        Ok(_) => Err(RunError::Failed("the stream ended before the worker's last message".into())),
        Err(e) => Err(e.into()),
    };
    settle(store, collector, outcome, &Gate::default(), None).map(|((), version, _)| version)
}

/// Whether reading the worker's stream failed because it ended in the middle of a frame.
fn is_cut_short(error: &anyhow::Error) -> bool {
    error.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof)
}

/// Reads frames until the worker's final message or end of stream.
fn read_worker(
    stdout: &mut impl std::io::Read,
    collector: &mut Collector,
    control: &RunControl,
) -> anyhow::Result<Option<Message>> {
    while let Some((tag, payload)) = wire::read_frame(stdout)? {
        match tag {
            wire::TAG_ROWS => {
                for batch in wire::decode_rows(payload)? {
                    collector.add(&batch)?;
                }
            }
            wire::TAG_MESSAGE => match serde_json::from_slice::<Message>(&payload)? {
                Message::Progress { done, total } => control.set_progress(done, total),
                last => return counted_as_received(collector, last.bounded()).map(Some),
            },
            other => anyhow::bail!("worker sent an unknown frame tag {other:#x}"),
        }
    }
    Ok(None)
}

/// The worker's last message, if it is no `Done` whose count of rows differs from the
/// rows received: rows lost or added on the way fail the run rather than publish what the
/// worker did not report.
fn counted_as_received(collector: &Collector, last: Message) -> anyhow::Result<Message> {
    if let Message::Done { rows, .. } = &last
        && *rows != collector.rows()
    {
        anyhow::bail!("the worker reported {rows} result rows but sent {}", collector.rows());
    }
    Ok(last)
}

/// The worker's last message, once the stream has ended after a `Done` (in a run, with
/// the worker's process group gone): a byte more fails the run. A read that gives up (a
/// process outside the group still holds the stream, see `child::GroupOutput`) found
/// nothing more. After a `Failed`, what follows is not read: the run fails with the
/// plugin's own error.
fn ended_after(last: Option<Message>, stdout: &mut impl std::io::Read) -> anyhow::Result<Option<Message>> {
    if matches!(last, Some(Message::Done { .. })) && matches!(stdout.read(&mut [0u8]), Ok(1..)) {
        anyhow::bail!("the worker sent more after its last message");
    }
    Ok(last)
}
