//! `recd worker`: one job run in a child process. Reads a [`RunSpec`] on stdin, loads the
//! plugin (ABI checked first) and ONNX Runtime, reads the inputs, runs the strategy and
//! streams result rows to the daemon as Arrow IPC frames on stdout. If anything here
//! panics, aborts or hangs, only this process dies; the daemon records a failed run.

mod engine;
mod inputs;

use std::fs::File;
use std::io::{BufRead, BufWriter, Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow_array::RecordBatch;
use arrow_schema::DataType;
use recd_plugin_api::abi::{self, level};

use crate::loader::{self, Host, Plugin};
use crate::wire::{self, Message, RunSpec};
use engine::Engine;

pub fn main() -> ExitCode {
    let out = match loader::take_stdout_for_frames() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("worker: cannot set up the result stream: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let result = read_spec().and_then(|spec| {
        watch_for_cancel();
        run(&spec, &mut out)
    });
    let (message, code) = match result {
        Ok((provider, rows)) => (Message::Done { provider, rows }, ExitCode::SUCCESS),
        Err(e) => (Message::Failed { error: format!("{e:#}") }, ExitCode::FAILURE),
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

fn run(spec: &RunSpec, out: &mut BufWriter<File>) -> anyhow::Result<(String, u64)> {
    let plugin = Plugin::open(&spec.plugin)?;
    tracing::info!(plugin = %plugin.name, version = %plugin.version, "plugin loaded");
    let mut instance = plugin
        .create(&spec.params_json)
        .map_err(|e| anyhow::anyhow!("plugin `{}` rejected its params: {e}", plugin.name))?;
    let mut tables = Vec::new();
    for input in &spec.inputs {
        tables.push((input.name.clone(), inputs::read(input)?));
    }
    let engine = spec.model.as_deref().map(|m| Engine::open(&spec.onnxruntime, m, spec.device)).transpose()?;
    let provider = engine.as_ref().map(|e| e.provider.clone()).unwrap_or_else(|| "none".into());
    let mut host = WorkerHost { engine, out, rows: 0, broken: false };
    instance.run(&mut host, tables).map_err(|e| anyhow::anyhow!("plugin `{}` failed: {e}", plugin.name))?;
    host.out.flush()?;
    Ok((provider, host.rows))
}

struct WorkerHost<'o> {
    engine: Option<Engine>,
    out: &'o mut BufWriter<File>,
    rows: u64,
    /// The daemon stopped reading: tell the plugin to stop.
    broken: bool,
}

impl Host for WorkerHost<'_> {
    fn score(&mut self, model: Option<&str>, batch: RecordBatch) -> Result<RecordBatch, String> {
        if let Some(name) = model {
            return Err(format!("unknown model `{name}`: a v1 job has one model, pass NULL"));
        }
        let engine = self.engine.as_mut().ok_or("the job declares no `model` to score with")?;
        engine.score(&batch)
    }

    fn emit(&mut self, batch: RecordBatch) -> Result<(), String> {
        check_output_schema(&batch)?;
        let mut bytes = Vec::new();
        {
            let mut w =
                arrow_ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema()).map_err(|e| e.to_string())?;
            w.write(&batch).map_err(|e| e.to_string())?;
            w.finish().map_err(|e| e.to_string())?;
        }
        self.rows += batch.num_rows() as u64;
        wire::write_frame(self.out, wire::TAG_ROWS, &bytes).map_err(|e| {
            self.broken = true;
            format!("the daemon stopped reading results: {e}")
        })
    }

    fn log(&mut self, lvl: i32, message: &str) {
        match lvl {
            level::ERROR => tracing::error!(target: "plugin", "{message}"),
            level::WARN => tracing::warn!(target: "plugin", "{message}"),
            level::INFO => tracing::info!(target: "plugin", "{message}"),
            _ => tracing::debug!(target: "plugin", "{message}"),
        }
    }

    fn progress(&mut self, done: u64, total: u64) {
        if wire::write_message(self.out, &Message::Progress { done, total }).is_err() {
            self.broken = true;
        }
    }

    fn is_cancelled(&mut self) -> bool {
        self.broken || CANCELLED.load(Ordering::Relaxed)
    }
}

/// Rows must be (`user` utf8, `item` utf8, `score` float32); checked here so a bad plugin
/// fails with a message naming what it sent.
fn check_output_schema(batch: &RecordBatch) -> Result<(), String> {
    let want = [
        (abi::output::USER, DataType::Utf8),
        (abi::output::ITEM, DataType::Utf8),
        (abi::output::SCORE, DataType::Float32),
    ];
    let schema = batch.schema();
    let ok = schema.fields().len() == 3
        && schema.fields().iter().zip(&want).all(|(f, (n, t))| f.name() == n && f.data_type() == t);
    if ok {
        return Ok(());
    }
    let got: Vec<String> = schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect();
    Err(format!("output rows must be (user Utf8, item Utf8, score Float32), got ({})", got.join(", ")))
}
