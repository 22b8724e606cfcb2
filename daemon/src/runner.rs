//! The daemon's side of a run: spawn `recd worker`, feed it the spec, stage the rows it
//! streams into a new table version, and publish that version only if the worker ends
//! cleanly and every row passed the checks. Blocking code: call it off the async runtime.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use recd_plugin_api::contract::{Assembler, Rules, UserSink};

use crate::config::Config;
use crate::job::{Input, InputFormat, Job, OutputChecks};
use crate::plugins::Registry;
use crate::shard::Shard;
use crate::store::{PluginBuild, StagedVersion, Store, TableKind, VersionInfo};
use crate::wire::{self, Message, RunSpec};

/// Lines of worker stderr kept to explain a crash.
const STDERR_TAIL: usize = 12;

#[derive(Debug, Clone)]
pub struct RunReport {
    pub job: String,
    pub run_id: u64,
    pub table: String,
    pub version: VersionInfo,
    pub provider: String,
    pub seconds: f64,
    pub stats: crate::wire::WorkerStats,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "job {} run {} published table {} version {}: {} users, {} rows in {:.2}s (provider {})",
            self.job,
            self.run_id,
            self.table,
            self.version.version,
            self.version.users,
            self.version.rows,
            self.seconds,
            self.provider
        )?;
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
    #[error("cancelled ({0}); the worker was stopped and its version discarded")]
    Cancelled(String),
}

impl RunError {
    /// The word run history records.
    pub fn status(&self) -> &'static str {
        match self {
            RunError::Failed(_) => "failed",
            RunError::TimedOut(_) => "timeout",
            RunError::Cancelled(_) => "cancelled",
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
        RunError::Failed(format!("store: {e}"))
    }
}

/// How long a worker asked to stop (its stdin closed, which plugins see through the
/// cancellation callback) gets before it is killed.
pub const CANCEL_GRACE: Duration = Duration::from_secs(3);

/// Lets the daemon stop a run: `cancel` asks, the watchdog enforces.
#[derive(Default)]
pub struct RunControl {
    state: Mutex<Control>,
    changed: Condvar,
}

#[derive(Default)]
struct Control {
    stop: Option<RunError>,
    done: bool,
    /// Latest progress the plugin reported, in its own units.
    progress: Option<(u64, u64)>,
    /// Last tenth of the way logged, so progress reaches the logs without flooding them.
    logged_tenth: u64,
    /// The plugin build the run loaded, as far as known yet.
    plugin: Option<PluginBuild>,
    model_sha256: Option<String>,
}

impl RunControl {
    pub fn new() -> Arc<RunControl> {
        Arc::new(RunControl::default())
    }

    /// Asks the run to stop; the first reason given is the one reported.
    pub fn cancel(&self, reason: &str) {
        let mut st = self.state.lock().expect("control lock");
        if st.stop.is_none() {
            st.stop = Some(RunError::Cancelled(reason.to_string()));
        }
        self.changed.notify_all();
    }

    /// Records progress; logs it at each further tenth of the way.
    fn set_progress(&self, done: u64, total: u64) {
        let mut st = self.state.lock().expect("control lock");
        st.progress = Some((done, total));
        let tenth = (done.saturating_mul(10)).checked_div(total).unwrap_or(0);
        if tenth > st.logged_tenth {
            st.logged_tenth = tenth;
            tracing::info!(done, total, "progress {}%", tenth * 10);
        }
    }

    /// (done, total) as the plugin last reported it.
    pub fn progress(&self) -> Option<(u64, u64)> {
        self.state.lock().expect("control lock").progress
    }

    /// The plugin build and the model (its SHA-256) the run used, as far as known: the
    /// plugin's hash from the moment it is snapshotted, its name, version and the model's
    /// hash once the worker reports them.
    pub fn lineage(&self) -> (Option<PluginBuild>, Option<String>) {
        let st = self.state.lock().expect("control lock");
        (st.plugin.clone(), st.model_sha256.clone())
    }

    fn set_plugin(&self, build: PluginBuild) {
        self.state.lock().expect("control lock").plugin = Some(build);
    }

    fn set_reported(&self, plugin: &crate::wire::PluginDesc, model_sha256: Option<String>) {
        let mut st = self.state.lock().expect("control lock");
        if let Some(build) = st.plugin.as_mut() {
            build.name = Some(plugin.name.clone());
            build.version = Some(plugin.version.clone());
        }
        st.model_sha256 = model_sha256;
    }

    fn finish(&self) {
        self.state.lock().expect("control lock").done = true;
        self.changed.notify_all();
    }

    fn stop_reason(&self) -> Option<RunError> {
        self.state.lock().expect("control lock").stop.clone()
    }

    /// Waits for the run to end, a cancel or the timeout. When stopped: closes the worker's
    /// stdin to ask it to stop, waits `CANCEL_GRACE`, then kills it.
    fn watch(&self, timeout: Duration, stdin: ChildStdin, child: &Mutex<Child>) {
        if !self.wait_for_stop(timeout) {
            return;
        }
        drop(stdin);
        let grace_end = Instant::now() + CANCEL_GRACE;
        let mut st = self.state.lock().expect("control lock");
        while !st.done {
            let left = grace_end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self.changed.wait_timeout(st, left).expect("control lock").0;
        }
        if !st.done {
            tracing::warn!("worker did not stop within {}s of being asked: killing it", CANCEL_GRACE.as_secs());
            let _ = child.lock().expect("child lock").kill();
        }
    }

    /// Waits until the run ends by itself (false) or must be stopped (true): a cancel, or
    /// `timeout` past (then recorded as the stop reason). Any timeout is safe: one too far
    /// away for a deadline to be computed is never reached.
    fn wait_for_stop(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.state.lock().expect("control lock");
        while !st.done && st.stop.is_none() {
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(86_400),
            };
            if deadline.is_some() && left.is_zero() {
                st.stop = Some(RunError::TimedOut(timeout.as_secs()));
                break;
            }
            st = self.changed.wait_timeout(st, left).expect("control lock").0;
        }
        !st.done
    }
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
    let run_dir = config.data_dir.join("runs").join(run_id.to_string());
    let inputs = export_table_inputs(&job.inputs, store, &run_dir)?;
    let _cleanup = RemoveOnDrop(run_dir);
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
    let exe = wire::self_exe().map_err(anyhow::Error::from)?;
    let mut child = Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RunError::Failed(format!("cannot start a worker: {e}")))?;
    let stderr_tail = forward_stderr(child.stderr.take().expect("piped stderr"), job.name.clone(), run_id);
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = BufReader::with_capacity(1 << 20, child.stdout.take().expect("piped stdout"));
    // The spec is one line; stdin then stays open: closing it is how we ask the worker to
    // stop. A worker that dies at once breaks the pipe; its exit status tells why.
    let mut line = serde_json::to_vec(&spec).map_err(anyhow::Error::from)?;
    line.push(b'\n');
    let _ = stdin.write_all(&line);
    let child = Arc::new(Mutex::new(child));
    let watchdog = {
        let (control, child, timeout) = (Arc::clone(control), Arc::clone(&child), job.policy.timeout);
        std::thread::spawn(move || control.watch(timeout, stdin, &child))
    };

    let mut staged = store.stage(&job.table, &job.name, run_id, job.kind)?;
    staged.fallback = job.fallback.clone();
    let mut collector = Collector::new(staged, &job.checks, shard);
    let streamed = read_worker(&mut stdout, &mut collector, control);
    if streamed.is_err() {
        let _ = child.lock().expect("child lock").kill();
    }
    let status = child.lock().expect("child lock").wait().map_err(anyhow::Error::from)?;
    control.finish();
    let _ = watchdog.join();
    let tail = stderr_tail.join().unwrap_or_default();
    let outcome = match (control.stop_reason(), streamed) {
        (Some(stop), _) => Err(stop),
        (None, Err(e)) => Err(e.into()),
        (None, Ok(Some(Message::Done { provider, plugin, stats, model_sha256, .. }))) if status.success() => {
            control.set_reported(&plugin, model_sha256);
            plugins.remember(&job.plugin, &sha256, &plugin, Some(run_id));
            Ok((provider, stats))
        }
        (None, Ok(Some(Message::Failed { error, plugin }))) => {
            if let Some(plugin) = plugin {
                control.set_reported(&plugin, None);
                plugins.remember(&job.plugin, &sha256, &plugin, Some(run_id));
            }
            Err(RunError::Failed(error))
        }
        (None, Ok(_)) => Err(RunError::Failed(format!("worker died ({}){}", describe(status), tail_text(&tail)))),
    };
    let ((provider, stats), version) = settle(store, collector, outcome)?;
    Ok(RunReport {
        job: job.name.clone(),
        run_id,
        table: job.table.clone(),
        version,
        provider,
        seconds: started.elapsed().as_secs_f64(),
        stats,
    })
}

/// The job's model and input files are still regular files within the size limit (they
/// were when the job was loaded; a file can be replaced since).
fn check_files(job: &Job, max_bytes: u64) -> Result<(), RunError> {
    if let Some(model) = &job.model {
        crate::job::check_data_file(model, max_bytes).map_err(|m| RunError::Failed(format!("model file {m}")))?;
    }
    for input in job.inputs.iter().filter(|i| i.format != InputFormat::Table) {
        crate::job::check_data_file(&input.path, max_bytes)
            .map_err(|m| RunError::Failed(format!("input `{}`: file {m}", input.name)))?;
    }
    Ok(())
}

/// Publishes the collected version when the run succeeded and its last user passes the
/// checks; discards it otherwise.
fn settle<T>(
    store: &Store,
    mut collector: Collector,
    outcome: Result<T, RunError>,
) -> Result<(T, VersionInfo), RunError> {
    match outcome.and_then(|value| collector.finish().map(|()| value).map_err(RunError::from)) {
        Ok(value) => Ok((value, store.publish(collector.into_staged())?)),
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
    let control = RunControl::default();
    let outcome = match read_worker(stream, &mut collector, &control) {
        Ok(Some(Message::Done { .. })) => Ok(()),
        Ok(Some(Message::Failed { error, .. })) => Err(RunError::Failed(error)),
        Ok(_) => Err(RunError::Failed("the stream ended before the worker's last message".into())),
        Err(e) => Err(e.into()),
    };
    settle(store, collector, outcome).map(|((), version)| version)
}

/// Removes the scratch folders of runs a killed daemon left behind (`<data_dir>/runs/<id>`:
/// exported `table:` inputs, as big as the tables). Called at start-up, before any run.
pub fn remove_leftover_run_dirs(data_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("runs")) else { return };
    for entry in entries.flatten() {
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::info!(dir = %entry.path().display(), "removed the scratch folder of an interrupted run"),
            Err(e) => {
                tracing::warn!(dir = %entry.path().display(), "cannot remove an interrupted run's scratch folder: {e}")
            }
        }
    }
}

/// Deletes a scratch folder (a run's, an export's) when its scope ends, however it ends.
pub struct RemoveOnDrop(pub std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes each `table:<name>` input, as currently served, to an Arrow IPC file the worker
/// reads (columns user, item, score, rank); other inputs pass through.
fn export_table_inputs(inputs: &[Input], store: &Store, run_dir: &std::path::Path) -> Result<Vec<Input>, RunError> {
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        if input.format != InputFormat::Table {
            out.push(input.clone());
            continue;
        }
        let table = input.path.display().to_string();
        let served = store.served(&table).ok_or_else(|| {
            RunError::Failed(format!("input `{}`: table `{table}` has not been published", input.name))
        })?;
        if served.kind != TableKind::Lists {
            return Err(RunError::Failed(format!(
                "input `{}`: table `{table}` holds hashes; only tables of lists can be inputs",
                input.name
            )));
        }
        std::fs::create_dir_all(run_dir).map_err(anyhow::Error::from)?;
        let path = run_dir.join(format!("{}.arrow", input.name));
        write_table(&served, &path).map_err(|e| RunError::Failed(format!("exporting table `{table}`: {e:#}")))?;
        out.push(Input { name: input.name.clone(), path, format: InputFormat::ArrowIpc });
    }
    Ok(out)
}

fn write_table(served: &crate::store::ServedTable, path: &std::path::Path) -> anyhow::Result<()> {
    let schema = crate::tables::lists_schema();
    let mut writer = arrow_ipc::writer::FileWriter::try_new(std::fs::File::create(path)?, &schema)?;
    crate::tables::table_batches(served, |batch| Ok(writer.write(&batch)?))?;
    writer.finish()?;
    Ok(())
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
                done_or_failed => return Ok(Some(done_or_failed)),
            },
            other => anyhow::bail!("worker sent an unknown frame tag {other:#x}"),
        }
    }
    Ok(None)
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(sig)) => format!("killed by signal {sig}{}", signal_name(sig)),
        (Some(code), _) => format!("exit code {code}"),
        _ => "unknown status".into(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => " (SIGABRT, the plugin aborted)",
        libc::SIGSEGV => " (SIGSEGV, invalid memory access)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() { String::new() } else { format!("; last worker output: {}", tail.join(" | ")) }
}

/// Forwards the worker's log lines into ours (under the run's span fields) and keeps the
/// last few to explain a crash.
fn forward_stderr(stderr: std::process::ChildStderr, job: String, run_id: u64) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            tracing::info!(target: "worker", job = %job, run_id, "{line}");
            let mut t = tail.lock().expect("tail");
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
        tail.lock().expect("tail").iter().cloned().collect()
    })
}

/// Checks streamed rows against the output contract (the same one the worker and the
/// plugin harness use) and writes each user's output to the staged version. One user's
/// rows must be contiguous in the stream.
struct Collector {
    rows: Assembler,
    sink: StagedSink,
}

/// Where the collector's users go: the staged version, minus the users outside the shard.
struct StagedSink {
    staged: StagedVersion,
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
        Ok(self.staged.put_user(user, list)?)
    }

    fn hash(&mut self, user: &str, fields: Vec<(String, String)>) -> anyhow::Result<()> {
        Ok(self.staged.put_hash(user, &fields)?)
    }
}

impl Collector {
    fn new(staged: StagedVersion, checks: &OutputChecks, shard: Shard) -> Self {
        let rules = Rules {
            kind: staged.kind.into(),
            max_items_per_user: checks.max_items_per_user as usize,
            allow_empty: checks.allow_empty,
        };
        Collector { rows: Assembler::new(rules), sink: StagedSink { staged, done_users: SeenUsers::default(), shard } }
    }

    /// Closes the last user; refuses an empty result unless the job allows one.
    fn finish(&mut self) -> anyhow::Result<()> {
        self.rows.finish(&mut self.sink)
    }

    fn add(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        self.rows.add(batch, &mut self.sink)
    }

    fn into_staged(self) -> StagedVersion {
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
    use crate::store::Retention;

    /// Every id hashes alike: each user after the first is a collision.
    #[derive(Default)]
    struct OneHash;
    impl std::hash::Hasher for OneHash {
        fn finish(&self) -> u64 {
            7
        }
        fn write(&mut self, _: &[u8]) {}
    }

    proptest::proptest! {
        /// Whatever the timeout (a validated job's is at most a week, but nothing here
        /// relies on it), the watchdog computes no overflowing deadline: a run that ended
        /// is left alone, a cancelled one is stopped.
        #[test]
        fn the_watchdog_takes_any_timeout(secs in proptest::prelude::any::<u64>(), nanos in 0u32..1_000_000_000) {
            let timeout = Duration::new(secs, nanos);
            let ended = RunControl::new();
            ended.finish();
            proptest::prop_assert!(!ended.wait_for_stop(timeout));
            let cancelled = RunControl::new();
            cancelled.cancel("test");
            proptest::prop_assert!(cancelled.wait_for_stop(timeout));
        }
    }

    #[test]
    fn a_run_past_its_timeout_is_stopped_as_timed_out() {
        let control = RunControl::new();
        assert!(control.wait_for_stop(Duration::from_millis(20)));
        assert_eq!(control.stop_reason().map(|e| e.status()), Some("timeout"));
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
