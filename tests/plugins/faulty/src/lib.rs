//! A plugin that misbehaves on request, for the daemon's fault-isolation tests. `mode`:
//! - "ok" emits three fixed rows for `user` (default "u1"); "slow" takes `seconds`,
//!   checking cancellation, then does the same; "flaky" fails its first `fail_first`
//!   runs (counted in `state_file`), then does the same;
//! - "panic", "abort", "segv" (a write through a null pointer), "error", and "hang"
//!   (never checks cancellation);
//! - bad output the host must refuse before publishing: "nan", "dup", "many" (`count`
//!   items for one user), "empty", "stranger" (an unknown user), "scattered" (one user's
//!   rows apart), "badschema";
//! - misbehaviour outside the plugin's own thread: "helper" starts `sleep 600` (its
//!   process id written to `state_file`; it holds the worker's output open) and fails;
//!   "spew" writes `count` MiB to stderr with no newline, then a line that is not UTF-8
//!   and the line "after the spew", and fails; "orphan" forks a process that holds every
//!   file the worker has open (its result stream too) for `seconds`, in a process group
//!   of its own, then aborts.
//!
//! With `pid_file`, the plugin first writes its process id there.

use std::sync::Arc;

use arrow_array::{Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use recd_plugin_api::{PluginError, RunContext, Strategy, export_plugin};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    mode: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    seconds: f64,
    #[serde(default)]
    state_file: Option<String>,
    #[serde(default)]
    fail_first: u32,
    #[serde(default)]
    count: u32,
    #[serde(default)]
    pid_file: Option<String>,
}

struct Faulty {
    params: Params,
}

impl Strategy for Faulty {
    fn new(params_json: &str) -> Result<Self, PluginError> {
        let params: Params =
            serde_json::from_str(params_json).map_err(|e| PluginError::params(format!("params: {e}")))?;
        Ok(Faulty { params })
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
        if let Some(file) = &self.params.pid_file {
            std::fs::write(file, std::process::id().to_string()).map_err(|e| PluginError::internal(e.to_string()))?;
        }
        match self.params.mode.as_str() {
            "ok" => ctx.emit(rows(self.params.user.as_deref().unwrap_or("u1"))),
            "panic" => panic!("faulty plugin was asked to panic"),
            "abort" => std::process::abort(),
            // SAFETY: none; the point is an invalid memory access the host must survive.
            "segv" => unsafe {
                std::ptr::null_mut::<u8>().write_volatile(1);
                unreachable!("the write above faults")
            },
            "error" => Err(PluginError::internal("faulty plugin was asked to fail")),
            "hang" => loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            },
            "slow" => {
                let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(self.params.seconds);
                while std::time::Instant::now() < end {
                    if ctx.is_cancelled() {
                        return Err(PluginError::cancelled());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                ctx.emit(rows(self.params.user.as_deref().unwrap_or("u1")))
            }
            "flaky" => {
                let file = self
                    .params
                    .state_file
                    .as_deref()
                    .ok_or_else(|| PluginError::params("params.state_file: required"))?;
                let runs: u32 = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0) + 1;
                std::fs::write(file, runs.to_string()).map_err(|e| PluginError::internal(e.to_string()))?;
                if runs <= self.params.fail_first {
                    return Err(PluginError::internal(format!("flaky failure {runs} of {}", self.params.fail_first)));
                }
                ctx.emit(rows(self.params.user.as_deref().unwrap_or("u1")))
            }
            // bad output, which the host must refuse before publishing
            "nan" => ctx.emit(batch(&["u1", "u1"], &["a", "b"], &[1.0, f32::NAN])),
            "dup" => ctx.emit(batch(&["u1", "u1"], &["a", "a"], &[2.0, 1.0])),
            "many" => {
                let n = self.params.count as usize;
                let items: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
                let items: Vec<&str> = items.iter().map(String::as_str).collect();
                let scores: Vec<f32> = (0..n).map(|i| i as f32).collect();
                ctx.emit(batch(&vec!["u1"; n], &items, &scores))
            }
            "empty" => Ok(()),
            "stranger" => ctx.emit(batch(&["u1", "nobody"], &["a", "b"], &[1.0, 1.0])),
            "scattered" => ctx.emit(batch(&["u1", "u2", "u1"], &["a", "b", "c"], &[1.0, 1.0, 1.0])),
            "badschema" => {
                let schema = Schema::new(vec![
                    Field::new("user", DataType::Utf8, false),
                    Field::new("item", DataType::Utf8, false),
                    Field::new("score", DataType::Float64, false),
                ]);
                let b = RecordBatch::try_new(
                    Arc::new(schema),
                    vec![
                        Arc::new(StringArray::from(vec!["u1"])),
                        Arc::new(StringArray::from(vec!["a"])),
                        Arc::new(arrow_array::Float64Array::from(vec![1.0])),
                    ],
                )
                .expect("static batch");
                ctx.emit(b)
            }
            "helper" => {
                let helper = std::process::Command::new("sleep")
                    .arg("600")
                    .spawn()
                    .map_err(|e| PluginError::internal(format!("starting the helper: {e}")))?;
                let file = self
                    .params
                    .state_file
                    .as_deref()
                    .ok_or_else(|| PluginError::params("params.state_file: required"))?;
                std::fs::write(file, helper.id().to_string()).map_err(|e| PluginError::internal(e.to_string()))?;
                Err(PluginError::internal("faulty plugin left a helper running"))
            }
            "orphan" => {
                use std::os::unix::process::CommandExt;
                let hold = std::time::Duration::from_secs_f64(self.params.seconds);
                let mut command = std::process::Command::new("true");
                command.process_group(0);
                // SAFETY: the closure only sleeps, which a forked child may do; until it
                // returns the child has not exec'd, so it holds every descriptor of ours.
                unsafe {
                    command.pre_exec(move || {
                        std::thread::sleep(hold);
                        Ok(())
                    })
                };
                // `spawn` waits for the exec, so on a thread of its own.
                std::thread::spawn(move || command.spawn().map(|mut c| c.wait()));
                std::thread::sleep(std::time::Duration::from_millis(300));
                std::process::abort()
            }
            "spew" => {
                use std::io::Write;
                let mut err = std::io::stderr().lock();
                let mib = vec![b'x'; 1 << 20];
                for _ in 0..self.params.count {
                    let _ = err.write_all(&mib);
                }
                let _ = err.write_all(b"\n\xff\xfe not UTF-8\nafter the spew\n");
                Err(PluginError::internal("faulty plugin spewed"))
            }
            other => Err(PluginError::params(format!("params.mode: unknown mode `{other}`"))),
        }
    }
}

fn batch(users: &[&str], items: &[&str], scores: &[f32]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("item", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(users.to_vec())),
            Arc::new(StringArray::from(items.to_vec())),
            Arc::new(Float32Array::from(scores.to_vec())),
        ],
    )
    .expect("static batch")
}

fn rows(user: &str) -> RecordBatch {
    batch(&[user, user, user], &["a", "b", "c"], &[3.0, 2.0, 1.0])
}

export_plugin!(Faulty, name = "faulty", version = env!("CARGO_PKG_VERSION"));
