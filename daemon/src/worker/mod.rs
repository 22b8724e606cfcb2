//! `recd worker`: one job run in a child process. Reads a [`RunSpec`] on stdin, loads the
//! plugin (ABI checked first) and ONNX Runtime, reads the inputs, runs the strategy and
//! streams result rows to the daemon as Arrow IPC frames on stdout. If anything here
//! panics, aborts or hangs, only this process dies; the daemon records a failed run.

mod engine;
mod inputs;

pub use inputs::read_delimited;
pub use inputs::read_with_text as read_input_with_text;

use std::fs::File;
use std::io::{BufRead, BufWriter, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::DataType;
use recd_plugin_api::PluginError;
use recd_plugin_api::abi::{self, level};
use recd_plugin_api::contract::{self, KnownIds};

use crate::loader::{self, Host, Plugin};
use crate::store::TableKind;
use crate::wire::{self, Message, PluginDesc, Probe, ProbeRequest, RunSpec, WorkerStats};
use engine::Engine;

pub fn main() -> ExitCode {
    crate::child::die_with_parent();
    let out = match loader::take_stdout_for_frames() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("worker: cannot set up the result stream: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = BufWriter::with_capacity(1 << 20, out);
    // Filled once the plugin is loaded, so a failure after that still names the build.
    let mut loaded = None;
    let result = read_spec().and_then(|spec| {
        watch_for_cancel();
        run(&spec, &mut out, &mut loaded)
    });
    let (message, code) = match result {
        Ok(mut done) => {
            if let Message::Done { stats, .. } = &mut done {
                stats.peak_rss_bytes = peak_rss_bytes();
            }
            (done, ExitCode::SUCCESS)
        }
        Err(e) => (Message::Failed { error: format!("{e:#}"), plugin: loaded }, ExitCode::FAILURE),
    };
    if wire::write_message(&mut out, &message).is_err() {
        return ExitCode::FAILURE;
    }
    code
}

/// Set once the daemon closes our stdin: it wants the run to stop (timeout, replace,
/// shutdown), or it is gone.
static CANCELLED: AtomicBool = AtomicBool::new(false);

/// The spec is the first line of stdin.
fn read_spec() -> anyhow::Result<RunSpec> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("reading the run spec: {e}"))
}

/// After the spec, stdin stays open and silent until the daemon wants us to stop.
fn watch_for_cancel() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().lock().read(&mut sink), Ok(n) if n > 0) {}
        CANCELLED.store(true, Ordering::Relaxed);
    });
}

/// This process's peak resident memory so far (0 where /proc cannot tell).
fn peak_rss_bytes() -> u64 {
    proc_status_bytes("VmHWM:")
}

/// This process's resident memory now.
fn rss_bytes() -> u64 {
    proc_status_bytes("VmRSS:")
}

fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().strip_suffix("kB"));
    kb.and_then(|v| v.trim().parse::<u64>().ok()).map_or(0, |kb| kb * 1024)
}

/// What the daemon records of a loaded plugin: its descriptor's name, version and ABI.
fn describe(plugin: &Plugin) -> PluginDesc {
    PluginDesc { name: plugin.name.clone(), version: plugin.version.clone(), abi: plugin.abi() }
}

/// Runs the plugin; what a run that ended well reports to the daemon ([`Message::Done`],
/// the peak memory left for `main` to fill in last).
fn run(spec: &RunSpec, out: &mut BufWriter<File>, loaded: &mut Option<PluginDesc>) -> anyhow::Result<Message> {
    let plugin = Plugin::open(&spec.plugin)?;
    tracing::info!(plugin = %plugin.name, version = %plugin.version, "plugin loaded");
    let desc = describe(&plugin);
    *loaded = Some(desc.clone());
    if let Some(want) = &spec.expect_name
        && plugin.name.replace('-', "_") != want.replace('-', "_")
    {
        anyhow::bail!(
            "the plugin file holds plugin `{}` (version {}), but the job names plugin `{want}`",
            plugin.name,
            plugin.version
        );
    }
    let mut instance = plugin
        .create(&spec.params_json)
        .map_err(|e| anyhow::anyhow!("plugin `{}` rejected its params: {e}", plugin.name))?;
    let streamed = &plugin.stream_inputs;
    let reading = Instant::now();
    let mut tables = Vec::new();
    let input_rows: InputRows = Arc::default();
    for input in &spec.inputs {
        // A streamed input is read only when the plugin pulls it: here just its schema.
        let batch = if streamed.contains(&input.name) {
            RecordBatch::new_empty(inputs::named_schema(input)?)
        } else {
            let batch = inputs::read(input)?;
            input_rows.lock().expect("input rows").insert(input.name.clone(), batch.num_rows() as u64);
            batch
        };
        tables.push((input.name.clone(), batch));
    }
    tracing::debug!(rss_mib = rss_bytes() >> 20, streamed = ?streamed, "inputs read");
    let known_users = known_ids(&tables, &spec.inputs, streamed, spec.known_users.as_ref())?;
    let known_items = known_ids(&tables, &spec.inputs, streamed, spec.known_items.as_ref())?;
    let read_seconds = reading.elapsed().as_secs_f64();
    let loading = Instant::now();
    // Hashed just before ONNX Runtime reads it: the history names the model this run scored with.
    let model_sha256 = spec
        .model
        .as_deref()
        .map(|m| crate::fsutil::model_sha256(m).map_err(|e| anyhow::anyhow!("model file {e}")))
        .transpose()?;
    let engine = spec.model.as_deref().map(|m| Engine::open(&spec.onnxruntime, m, spec.device)).transpose()?;
    if let Some(engine) = &engine {
        let bound = bind_model_inputs(&engine.inputs(), &spec.model_inputs, engine.preferred_batch_rows())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tables.push((abi::MODEL_INPUTS_TABLE.to_string(), bound));
    }
    let model_load_seconds = loading.elapsed().as_secs_f64();
    tracing::debug!(rss_mib = rss_bytes() >> 20, "model loaded");
    let output = spec.output;
    let mut host = WorkerHost {
        engine,
        inputs: &spec.inputs,
        out,
        rows: 0,
        broken: false,
        known_users,
        known_items,
        output,
        shard: spec.shard,
        stats: WorkerStats { read_seconds, model_load_seconds, ..WorkerStats::default() },
        streamed_nanos: Arc::new(AtomicU64::new(0)),
        input_rows: Arc::clone(&input_rows),
        progress_sent: None,
    };
    let running = Instant::now();
    instance.run(&mut host, tables).map_err(|e| anyhow::anyhow!("plugin `{}` failed: {e}", plugin.name))?;
    host.out.flush()?;
    // Read after the run: under `device = "auto"` a CUDA failure moves scoring to the CPU
    // part way, with a warning.
    let (provider, warnings) = match &host.engine {
        Some(e) => (e.provider.clone(), e.warnings.clone()),
        None => ("none".to_string(), Vec::new()),
    };
    let mut stats = host.stats;
    let host_rows = host.rows;
    let streamed_seconds = host.streamed_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    stats.read_seconds += streamed_seconds;
    let inside = stats.score_seconds + stats.emit_seconds + streamed_seconds;
    stats.plugin_seconds = (running.elapsed().as_secs_f64() - inside).max(0.0);
    drop(host);
    instance.close().map_err(|e| anyhow::anyhow!("plugin `{}` failed: {e}", plugin.name))?;
    let input_rows = input_rows.lock().expect("input rows").clone();
    Ok(Message::Done { provider, rows: host_rows, plugin: desc, stats, model_sha256, warnings, input_rows })
}

/// The ids of `(input, column)` as a set, for the output checks; from a streamed input
/// only that column is read, batch by batch.
fn known_ids(
    tables: &[(String, RecordBatch)],
    inputs: &[crate::job::Input],
    streamed: &[String],
    column: Option<&(String, String)>,
) -> anyhow::Result<Option<KnownIds>> {
    let Some((table, col)) = column else { return Ok(None) };
    let known = match inputs.iter().find(|i| &i.name == table && streamed.contains(table)) {
        // only that column, batch by batch
        Some(input) => {
            let batches = inputs::stream(input, std::slice::from_ref(col))?;
            KnownIds::read(table, col, batches.map(|b| b.map_err(|e| PluginError::input(e.to_string()))))
        }
        None => {
            let batch =
                &tables.iter().find(|(n, _)| n == table).ok_or_else(|| anyhow::anyhow!("no input `{table}`"))?.1;
            KnownIds::read(table, col, [Ok(batch)])
        }
    };
    Ok(Some(known.map_err(|e| anyhow::anyhow!("{e}"))?))
}

/// `recd probe-plugin PATH`: loads the plugin (ABI checked first), creates an instance
/// with the job's params, binds the model's inputs (when the job has a model) and lets the
/// plugin check the job against its inputs' schemas; prints what it found as one JSON
/// line. The daemon and `recd validate` use it to check a job before any run, without
/// loading plugin or model code themselves. Reads a [`ProbeRequest`] on stdin.
pub fn probe(path: &std::path::Path) -> ExitCode {
    crate::child::die_with_parent();
    // As in a run: whatever the plugin prints must not spoil our one line of JSON.
    let Ok(mut out) = loader::take_stdout_for_frames() else { return ExitCode::FAILURE };
    let mut text = String::new();
    let _ = std::io::stdin().read_to_string(&mut text);
    let result = match serde_json::from_str::<ProbeRequest>(&text) {
        Ok(request) => probe_job(path, &request),
        Err(e) => Probe { plugin: None, field: Some("plugin".into()), error: Some(format!("bad probe request: {e}")) },
    };
    let line = serde_json::to_string(&result).expect("probe serialises");
    if writeln!(out, "{line}").is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn probe_job(path: &std::path::Path, request: &ProbeRequest) -> Probe {
    let fail = |plugin: Option<PluginDesc>, field: &str, error: String| Probe {
        plugin,
        field: Some(field.into()),
        error: Some(error),
    };
    let plugin = match Plugin::open(path) {
        Ok(p) => p,
        Err(e) => return fail(None, "plugin", e.to_string()),
    };
    let desc = describe(&plugin);
    let mut instance = match plugin.create(&request.params_json) {
        Ok(i) => i,
        Err(e) => return fail(Some(desc), "params", e.message),
    };
    if !request.check {
        return Probe { plugin: Some(desc), field: None, error: None };
    }
    let mut tables = Vec::new();
    for input in &request.inputs {
        match inputs::schema(input) {
            Ok(schema) => tables.push((input.name.clone(), RecordBatch::new_empty(schema))),
            Err(e) => return fail(Some(desc), "inputs", format!("inputs.{}: {e:#}", input.name)),
        }
    }
    if let Some(model) = &request.model {
        let bound = Engine::open(&request.onnxruntime, model, crate::job::Device::Cpu)
            .map_err(|e| ("model", format!("{e:#}")))
            .and_then(|engine| {
                bind_model_inputs(&engine.inputs(), &request.model_inputs, 0).map_err(|e| ("model_inputs", e))
            });
        match bound {
            Ok(table) => tables.push((abi::MODEL_INPUTS_TABLE.to_string(), table)),
            Err((field, e)) => return fail(Some(desc), field, e),
        }
    }
    match instance.check(tables) {
        Ok(()) => Probe { plugin: Some(desc), field: None, error: None },
        Err(e) => {
            let field = ["model_inputs", "inputs"].into_iter().find(|f| e.message.starts_with(f)).unwrap_or("params");
            fail(Some(desc), field, e.message)
        }
    }
}

/// How often the plugin's progress reaches the daemon, at most.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

struct WorkerHost<'o> {
    engine: Option<Engine>,
    /// The job's inputs, for `open_stream`.
    inputs: &'o [crate::job::Input],
    out: &'o mut BufWriter<File>,
    rows: u64,
    known_users: Option<KnownIds>,
    known_items: Option<KnownIds>,
    output: TableKind,
    shard: crate::shard::Shard,
    stats: WorkerStats,
    /// Time the plugin spent waiting on streamed input batches (read by the stream
    /// readers it holds, on whatever thread it pulls them from).
    streamed_nanos: Arc<AtomicU64>,
    /// The daemon stopped reading: tell the plugin to stop.
    broken: bool,
    /// Rows read per input, for the run's lineage.
    input_rows: InputRows,
    /// When progress was last sent to the daemon.
    progress_sent: Option<Instant>,
}

/// Rows read per input: a whole input's, or the most one pass over a streamed input read.
type InputRows = Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>;

impl WorkerHost<'_> {
    /// Checks a batch of output rows (schema, known ids) and writes it to the daemon.
    fn send_rows(&mut self, batch: RecordBatch) -> Result<(), String> {
        let (users, items) = (self.known_users.as_ref(), self.known_items.as_ref());
        contract::check_emitted(self.output.into(), &batch, users, items, self.rows).map_err(|e| e.to_string())?;
        match wire::write_rows(self.out, &batch, wire::MAX_FRAME) {
            Ok(_) => {
                self.rows += batch.num_rows() as u64;
                Ok(())
            }
            // The batch itself (a row too large, a batch Arrow cannot encode), not the pipe.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData) => {
                Err(e.to_string())
            }
            Err(e) => {
                self.broken = true;
                Err(format!("the daemon stopped reading results: {e}"))
            }
        }
    }
}

impl Host for WorkerHost<'_> {
    fn score(&mut self, model: Option<&str>, batch: RecordBatch) -> Result<RecordBatch, String> {
        if let Some(name) = model {
            return Err(format!("unknown model `{name}`: a v1 job has one model, pass NULL"));
        }
        let engine = self.engine.as_mut().ok_or("the job declares no `model` to score with")?;
        let started = std::time::Instant::now();
        let scored = engine.score(&batch);
        self.stats.score_seconds += started.elapsed().as_secs_f64();
        self.stats.score_calls += 1;
        self.stats.score_rows += batch.num_rows() as u64;
        scored
    }

    fn emit(&mut self, batch: RecordBatch) -> Result<(), String> {
        let started = Instant::now();
        let sent = self.send_rows(batch);
        self.stats.emit_seconds += started.elapsed().as_secs_f64();
        sent
    }

    fn log(&mut self, lvl: i32, message: &str) {
        match lvl {
            level::ERROR => tracing::error!(target: "plugin", "{message}"),
            level::WARN => tracing::warn!(target: "plugin", "{message}"),
            level::INFO => tracing::info!(target: "plugin", "{message}"),
            _ => tracing::debug!(target: "plugin", "{message}"),
        }
    }

    /// Sent at most every [`PROGRESS_EVERY`], and at the end: a plugin that reports each
    /// of a million users would otherwise cost a frame, a flush and a parse each.
    fn progress(&mut self, done: u64, total: u64) {
        let due = self.progress_sent.is_none_or(|sent| sent.elapsed() >= PROGRESS_EVERY) || done >= total;
        if !due {
            return;
        }
        self.progress_sent = Some(Instant::now());
        if wire::write_message(self.out, &Message::Progress { done, total }).is_err() {
            self.broken = true;
        }
    }

    fn in_shard(&mut self, user: &str) -> bool {
        self.shard.contains(user)
    }

    fn is_cancelled(&mut self) -> bool {
        self.broken || CANCELLED.load(Ordering::Relaxed)
    }

    fn open_stream(
        &mut self,
        name: &str,
        columns: &[String],
    ) -> Result<Box<dyn arrow_array::RecordBatchReader + Send>, String> {
        let input = self.inputs.iter().find(|i| i.name == name).ok_or_else(|| {
            let have: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
            format!("missing input table `{name}` (the job provides: {})", have.join(", "))
        })?;
        let reader = inputs::stream(input, columns).map_err(|e| format!("{e:#}"))?;
        Ok(Box::new(TimedReader {
            inner: reader,
            nanos: Arc::clone(&self.streamed_nanos),
            input: name.to_string(),
            rows: 0,
            counts: Arc::clone(&self.input_rows),
        }))
    }
}

/// A streamed input whose reads are timed: the run's `read` stage, apart from the plugin's.
struct TimedReader {
    inner: Box<dyn arrow_array::RecordBatchReader + Send>,
    nanos: Arc<AtomicU64>,
    /// The input's name and the rows this pass read, recorded in `counts` as it reads.
    input: String,
    rows: u64,
    counts: InputRows,
}

impl Iterator for TimedReader {
    type Item = Result<RecordBatch, arrow_schema::ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let started = Instant::now();
        let batch = self.inner.next();
        self.nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if let Some(Ok(b)) = &batch {
            self.rows += b.num_rows() as u64;
            // Kept as it grows: a reader the plugin still holds at the end is counted too.
            let mut counts = self.counts.lock().expect("input rows");
            let seen = counts.entry(self.input.clone()).or_default();
            *seen = (*seen).max(self.rows);
        }
        batch
    }
}

impl arrow_array::RecordBatchReader for TimedReader {
    fn schema(&self) -> arrow_schema::SchemaRef {
        self.inner.schema()
    }
}

/// The `__model_inputs` table a plugin reads to build scoring batches: one row per model
/// input with the feature bound to it and the element type the model wants. With no
/// `[model_inputs]` in the job each input is bound to the feature of its own name; with
/// one, it must bind exactly the model's inputs. Every row also carries `batch_rows`, the
/// rows per call the host prefers for the model's device (0: none, the plugin's rule).
pub fn bind_model_inputs(
    model: &[(String, String)],
    binding: &[(String, String)],
    batch_rows: u64,
) -> Result<RecordBatch, String> {
    use arrow_array::{StringArray, UInt64Array};
    use arrow_schema::{Field, Schema};
    let names: Vec<&str> = model.iter().map(|(n, _)| n.as_str()).collect();
    if let Some((input, _)) = binding.iter().find(|(i, _)| !names.contains(&i.as_str())) {
        return Err(format!(
            "model_inputs.{input}: the model has no input `{input}` (its inputs: {})",
            names.join(", ")
        ));
    }
    let mut features = Vec::with_capacity(model.len());
    for (name, _) in model {
        match binding.iter().find(|(i, _)| i == name) {
            Some((_, feature)) => features.push(feature.clone()),
            None if binding.is_empty() => features.push(name.clone()),
            None => {
                return Err(format!(
                    "model_inputs: model input `{name}` is not bound to a feature (the model's inputs: {})",
                    names.join(", ")
                ));
            }
        }
    }
    let schema = Schema::new(vec![
        Field::new("input", DataType::Utf8, false),
        Field::new("feature", DataType::Utf8, false),
        Field::new("dtype", DataType::Utf8, false),
        Field::new("batch_rows", DataType::UInt64, false),
    ]);
    RecordBatch::try_new(
        std::sync::Arc::new(schema),
        vec![
            std::sync::Arc::new(StringArray::from_iter_values(names.iter())),
            std::sync::Arc::new(StringArray::from(features)),
            std::sync::Arc::new(StringArray::from_iter_values(model.iter().map(|(_, t)| t.as_str()))),
            std::sync::Arc::new(UInt64Array::from(vec![batch_rows; model.len()])),
        ],
    )
    .map_err(|e| e.to_string())
}
