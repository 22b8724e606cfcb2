//! A plugin that misbehaves on request, for the daemon's fault-isolation tests.
//! `mode`: "ok" emits three fixed rows for `user` (default "u1"); "panic" panics in run;
//! "abort" aborts the process; "error" returns an error; "hang" loops forever
//! without checking cancellation.

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
        match self.params.mode.as_str() {
            "ok" => ctx.emit(rows(self.params.user.as_deref().unwrap_or("u1"))),
            "panic" => panic!("faulty plugin was asked to panic"),
            "abort" => std::process::abort(),
            "error" => Err(PluginError::internal("faulty plugin was asked to fail")),
            "hang" => loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            },
            other => Err(PluginError::params(format!("params.mode: unknown mode `{other}`"))),
        }
    }
}

fn rows(user: &str) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("item", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(vec![user, user, user])),
            Arc::new(StringArray::from(vec!["a", "b", "c"])),
            Arc::new(Float32Array::from(vec![3.0, 2.0, 1.0])),
        ],
    )
    .expect("static batch")
}

export_plugin!(Faulty, name = "faulty", version = env!("CARGO_PKG_VERSION"));
