//! Job files: `jobs/<name>.toml`, parsed into [`RawJob`] (`deny_unknown_fields`), then
//! validated into a [`Job`] without I/O ([`validate`]), then resolved against the disk
//! ([`Job::resolve`]: plugin and model files exist). Errors name the file, and the line
//! and field where one is known.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::time::Duration;

use serde::Deserialize;

use crate::config::Config;
use crate::fsutil;
use crate::quality::ListMetric;
use crate::schedule::{self, Schedule};
use crate::store::{Gate, HoldoutGate, TableKind};

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum JobError {
    #[error("{file}: cannot read: {message}")]
    Io { file: String, message: String },
    #[error("{file}:{line}:{column}: {message}")]
    Syntax { file: String, line: usize, column: usize, message: String },
    #[error("{file}:{line}: field `{field}`: {message}")]
    Invalid { file: String, line: usize, field: String, message: String },
}

/// A job file as written. Every field is documented for ops; see docs/jobs.md.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    /// Cron expression, 5 fields (minute..weekday), 6 with seconds first, or a macro
    /// (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`). Optional: a job without
    /// one runs only when asked (`recd run`) or after an upstream job (`after`).
    pub schedule: Option<String>,
    /// IANA time zone the schedule is read in, e.g. "Europe/Berlin". Default "UTC".
    pub timezone: Option<String>,
    /// What a tick does while the previous run is still going: "skip" (default; the
    /// skipped tick is recorded), "replace" (cancel the running run) or "queue" (run once
    /// more after it).
    pub overlap: Option<String>,
    /// After downtime, run a missed tick once if it is at most this old. Unset: missed
    /// ticks are not run.
    pub starting_deadline_seconds: Option<u64>,
    /// Extra attempts after a failed run. Default 0.
    pub retries: Option<u32>,
    /// Wait before the first retry; doubles for each further one. Default 10.
    pub retry_backoff_seconds: Option<u64>,
    /// Cap on the doubled wait. Default 360.
    pub retry_backoff_max_seconds: Option<u64>,
    /// A run still going after this long is cancelled, then killed; its version is
    /// discarded. Default 3600.
    pub timeout_seconds: Option<u64>,
    /// `true` stops scheduled and chained runs (a manual `recd run` still works).
    #[serde(default)]
    pub suspend: bool,
    /// Run this job each time one of these jobs publishes.
    #[serde(default)]
    pub after: Vec<String>,
    /// Refuse the plugin unless its file has this SHA-256 (hex).
    pub plugin_sha256: Option<String>,
    /// Output check: at most this many items per user. Default 1000.
    pub max_items_per_user: Option<u32>,
    /// Output check: a run that emits no row fails unless this is true. Default false.
    #[serde(default)]
    pub allow_empty: bool,
    /// Output check: every user must appear in this input column, "table.column".
    pub known_users: Option<String>,
    /// Output check: every item must appear in this input column, "table.column".
    pub known_items: Option<String>,
    /// Tables that answer for a user this table lacks: `<fallback>:<user>`, else
    /// `<fallback>:__default__` (what a cold-start table publishes).
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Plugin name (`<plugins_dir>/librecd_<name>.so`) or a path to a `.so`. A job runs
    /// either a plugin or a `command`.
    pub plugin: Option<String>,
    /// A program and its arguments, run instead of a plugin (training, preparation). `{output}`
    /// in an argument is the folder a model version is written to (with `produces`),
    /// `{inputs.<name>}` an input's path. A name without '/' is looked up in PATH; a
    /// relative path is from the folder of recd.toml, where the command also runs.
    pub command: Option<Vec<String>>,
    /// Environment variables the command gets beside the daemon's own.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `registry:<name>`: the command writes a model version into `{output}`, which is
    /// published as the next version of registry model `<name>` when the command succeeds.
    pub produces: Option<String>,
    /// The version's ONNX file; default: the one `.onnx` file the command wrote.
    pub model_file: Option<String>,
    /// Table the results are published to; defaults to the job name (file stem). A table
    /// has one publishing job, unless every job that names it sets `shared_table`.
    pub table: Option<String>,
    /// `true` in every job that publishes one table together (e.g. a nightly full run and
    /// an hourly refresh). Default false: a second job naming the table is an error.
    #[serde(default)]
    pub shared_table: bool,
    /// ONNX model file scored through the host callback, or `registry:<name>` for the
    /// current version of a registry model at the start of each run.
    pub model: Option<String>,
    /// Binds model inputs to features the plugin offers: `<model input> = "<feature>"`.
    /// When given, every input of the model must be bound. Unset: each input is bound to
    /// the feature of its own name.
    #[serde(default)]
    pub model_inputs: BTreeMap<String, String>,
    /// What the table holds per user: "lists" (default; sorted sets, read with ZRANGE or
    /// GET) or "hashes" (fields and values, read with HGETALL, HGET or GET).
    pub output: Option<String>,
    /// Where to score: "cpu" (default), "cuda" (strict) or "auto".
    pub device: Option<String>,
    /// Named input tables: name = "path.parquet" | "path.csv" | "table:<name>" |
    /// "registry:<model>/<file>" (a file of the model's current version).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Free-form parameters handed to the plugin, which validates them.
    #[serde(default)]
    pub params: toml::Table,
    /// What a new version must satisfy to go live; one that fails is held.
    pub gate: Option<RawGate>,
    pub description: Option<String>,
    /// Where the dashboard finds item titles: `{ input, id, title }`.
    pub item_titles: Option<RawItemTitles>,
}

/// `item_titles = { input = "items", id = "item_id", title = "description" }` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawItemTitles {
    pub input: String,
    pub id: String,
    pub title: String,
}

/// A file of the job's inputs that names items: the dashboard shows `title` beside the
/// items of a user's list (read by the daemon when a user is looked up).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemTitles {
    pub input: Input,
    pub id: String,
    pub title: String,
}

/// `[gate]` as written; see docs/jobs.md.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    pub min_users: Option<u64>,
    pub min_rows: Option<u64>,
    pub min_users_ratio: Option<f64>,
    pub min_rows_ratio: Option<f64>,
    pub max_changed_share: Option<f64>,
    pub changed_jaccard: Option<f64>,
    pub max_score_psi: Option<f64>,
    /// Command jobs: a metric of the version's `metrics.json` (higher is better). Plugin
    /// jobs with `holdout`: a list metric, `ndcg@10` by default.
    pub metric: Option<String>,
    pub max_metric_drop: Option<f64>,
    /// Plugin jobs: interactions (CSV, Parquet or Arrow) the lists are scored against.
    pub holdout: Option<String>,
    pub holdout_user_column: Option<String>,
    pub holdout_item_column: Option<String>,
}

/// A command job's gate on its model versions: `metric` of the new version's
/// `metrics.json` must be at least the current version's less `max_drop`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelGate {
    pub metric: String,
    pub max_drop: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
    Auto,
}

/// What a run's output must satisfy before it is published.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputChecks {
    pub max_items_per_user: u32,
    pub allow_empty: bool,
    pub known_users: Option<(String, String)>,
    pub known_items: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    Skip,
    Replace,
    Queue,
}

/// How a job is run: the policies of its file, with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub overlap: Overlap,
    pub starting_deadline: Option<Duration>,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub timeout: Duration,
    pub suspend: bool,
}

impl Policy {
    /// Wait before retry number `attempt` (1-based): the backoff doubled per attempt, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.retry_backoff.saturating_mul(factor).min(self.retry_backoff_max)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Csv,
    Parquet,
    /// An Arrow IPC file.
    ArrowIpc,
    /// A published table (`table:<name>`); the runner exports it as Arrow IPC for the
    /// worker: columns user, item, score, rank (1 = best).
    Table,
}

impl InputFormat {
    /// The reader a file's extension asks for: .csv, .parquet/.pq, .arrow/.ipc.
    pub fn from_path(path: &Path) -> Option<InputFormat> {
        match path.extension().and_then(|e| e.to_str())? {
            "csv" => Some(InputFormat::Csv),
            "parquet" | "pq" => Some(InputFormat::Parquet),
            "arrow" | "ipc" => Some(InputFormat::ArrowIpc),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Input {
    pub name: String,
    pub path: PathBuf,
    pub format: InputFormat,
    /// A file of a registry model's version (`registry:<model>/<file>`): `path` is the file
    /// name until the run pins the version (the registry's `pin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
}

impl Input {
    /// A data file read outside a job (`recd eval`'s files, a gate's holdout), by the
    /// format its extension names.
    pub fn file(name: &str, path: &Path) -> Option<Input> {
        Some(Input {
            name: name.into(),
            path: path.to_path_buf(),
            format: InputFormat::from_path(path)?,
            registry: None,
        })
    }
}

/// A validated job. Paths are absolute; `resolve` has checked they exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    pub file: PathBuf,
    pub schedule: Option<Schedule>,
    pub policy: Policy,
    /// Upstream jobs whose publishes trigger this one.
    pub after: Vec<String>,
    pub plugin: PathBuf,
    pub table: String,
    /// Other jobs may publish `table` too (they must say so as well).
    pub shared_table: bool,
    pub model: Option<PathBuf>,
    /// `model = "registry:<name>"`: the registry model whose current version a run scores
    /// with (`model` is set when the run pins it).
    pub registry_model: Option<String>,
    /// A command job: what it runs instead of a plugin (then `plugin` is empty and the job
    /// publishes no table).
    pub command: Option<CommandSpec>,
    /// (model input, feature) pairs of `[model_inputs]`, sorted by input.
    pub model_inputs: Vec<(String, String)>,
    pub kind: TableKind,
    pub device: Device,
    pub inputs: Vec<Input>,
    /// `[params]` as JSON, the form the plugin ABI takes.
    pub params_json: String,
    pub description: Option<String>,
    pub item_titles: Option<ItemTitles>,
    /// The plugin's own name when the job named it (then its descriptor must match).
    pub plugin_name: Option<String>,
    pub plugin_sha256: Option<String>,
    pub checks: OutputChecks,
    /// `[gate]` of a plugin job (empty: none).
    pub gate: Gate,
    pub fallback: Vec<String>,
    /// Line of the `after` key, for errors found when checking jobs together.
    pub after_line: usize,
    /// Line of `plugin`, for errors the plugin probe finds.
    pub plugin_line: usize,
    /// Line of `table` (1 when the table is the job's name), for ownership errors.
    pub table_line: usize,
}

/// What a command job runs.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    /// The program (absolute if the job gave a path) and its arguments, placeholders kept.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The registry model the command's output becomes a version of.
    pub produces: Option<String>,
    pub model_file: Option<String>,
    pub gate: Option<ModelGate>,
}

/// Keys that only plugin jobs take, refused in a command job.
const PLUGIN_ONLY: [&str; 12] = [
    "table",
    "shared_table",
    "model",
    "model_inputs",
    "output",
    "device",
    "params",
    "fallback",
    "known_users",
    "known_items",
    "max_items_per_user",
    "plugin_sha256",
];

/// Reads, parses, validates and resolves one job file.
pub fn load(file: &Path, config: &Config) -> Result<Job, JobError> {
    load_naming_files(file, config).1
}

/// [`load`], with the files whose change can change its outcome once its text is read:
/// the plugin (also when it then refuses the job: missing, untrusted), and for a job the
/// files it names refuse, its model, inputs and holdout (a data folder mounted after the
/// daemon started, an export that is not there yet).
pub fn load_naming_files(file: &Path, config: &Config) -> (Vec<PathBuf>, Result<Job, JobError>) {
    let shown = file.display().to_string();
    let parsed = read_job_file(file).and_then(|text| {
        let job = parse_and_validate(&text, &shown, &job_name(file), &config.base_dir, &config.plugins_dir)?;
        Ok((text, job))
    });
    let (text, job) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut named: Vec<PathBuf> = job.command.is_none().then(|| job.plugin.clone()).into_iter().collect();
    let data = job.data_files();
    let resolved = job.resolve(&text, config.max_input_bytes);
    if resolved.is_err() {
        named.extend(data);
    }
    (named, resolved)
}

/// A job file's text: only a regular file (symlinks followed) of at most
/// [`fsutil::MAX_JOB_FILE_BYTES`], so a FIFO or `/dev/zero` in the jobs folder is an error
/// at once, not a reload that waits forever or reads without end.
pub fn read_job_file(file: &Path) -> Result<String, JobError> {
    fsutil::read_text(file, fsutil::MAX_JOB_FILE_BYTES)
        .map_err(|e| JobError::Io { file: file.display().to_string(), message: e.to_string() })
}

pub fn job_name(file: &Path) -> String {
    file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Parses and validates without touching the disk.
pub fn parse_and_validate(
    text: &str,
    file: &str,
    name: &str,
    base: &Path,
    plugins_dir: &Path,
) -> Result<Job, JobError> {
    let raw: RawJob = toml::from_str(text).map_err(|e| syntax_error(text, file, &e))?;
    validate(raw, text, file, name, base, plugins_dir)
}

fn validate(raw: RawJob, text: &str, file: &str, name: &str, base: &Path, plugins_dir: &Path) -> Result<Job, JobError> {
    let invalid = |field: &str, message: String| JobError::Invalid {
        file: file.into(),
        line: line_of_key(text, field),
        field: field.into(),
        message,
    };
    if !valid_name(name) {
        return Err(invalid("name", format!("job name {name:?} (the file name) must be letters, digits, '-' or '_'")));
    }
    let tz = match raw.timezone.as_deref() {
        None => chrono_tz::Tz::UTC,
        Some(zone) => schedule::parse_zone(zone).map_err(|m| invalid("timezone", m))?,
    };
    let schedule =
        raw.schedule.as_deref().map(|s| Schedule::new(s, tz)).transpose().map_err(|m| invalid("schedule", m))?;
    let policy = policy(&raw, &invalid)?;
    for upstream in &raw.after {
        if !valid_name(upstream) {
            return Err(invalid("after", format!("{upstream:?} is not a job name (a file stem in the jobs folder)")));
        }
        if upstream == name {
            return Err(invalid("after", format!("job {name:?} cannot run after itself")));
        }
    }
    let table = raw.table.clone().unwrap_or_else(|| name.to_string());
    if !valid_name(&table) {
        return Err(invalid(
            "table",
            format!("{table:?} must be letters, digits, '-' or '_' (it prefixes keys as `<table>:<user>`)"),
        ));
    }
    let command = command_spec(&raw, base, &invalid)?;
    let (plugin, by_path) = match (&raw.plugin, &command) {
        (Some(p), None) => (
            plugin_path(p, base, plugins_dir)
                .ok_or_else(|| invalid("plugin", format!("{p:?} is neither a plugin name nor a path to a .so")))?,
            p.ends_with(".so") || p.contains('/'),
        ),
        (None, Some(_)) => (PathBuf::new(), true),
        (Some(_), Some(_)) => {
            return Err(invalid("command", "a job runs either a `plugin` or a `command`, not both".into()));
        }
        (None, None) => {
            return Err(invalid("plugin", "missing: a job runs a `plugin` (or a `command`)".into()));
        }
    };
    let device = match raw.device.as_deref().unwrap_or("cpu") {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda,
        "auto" => Device::Auto,
        other => return Err(invalid("device", format!("expected \"cpu\", \"cuda\" or \"auto\", got {other:?}"))),
    };
    let mut inputs = Vec::new();
    for (input, path) in &raw.inputs {
        if let Some(table) = path.strip_prefix("table:") {
            if !valid_name(table) || table == raw.table.as_deref().unwrap_or(name) {
                return Err(invalid(
                    &format!("inputs.{input}"),
                    format!("{path:?}: expected table:<another table's name>"),
                ));
            }
            if command.is_some() {
                return Err(invalid(
                    &format!("inputs.{input}"),
                    format!("{path:?}: a command job reads files, not tables"),
                ));
            }
            inputs.push(Input {
                name: input.clone(),
                path: PathBuf::from(table),
                format: InputFormat::Table,
                registry: None,
            });
            continue;
        }
        if let Some(rest) = path.strip_prefix("registry:") {
            inputs.push(registry_input(input, rest).map_err(|m| invalid(&format!("inputs.{input}"), m))?);
            continue;
        }
        let Some(format) = InputFormat::from_path(Path::new(path)) else {
            return Err(invalid(
                &format!("inputs.{input}"),
                format!("{path:?}: expected a .csv, .parquet or .arrow file, or table:<name>"),
            ));
        };
        inputs.push(Input { name: input.clone(), path: absolute(base, path), format, registry: None });
    }
    if let Some(pin) = &raw.plugin_sha256
        && (pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
    {
        return Err(invalid("plugin_sha256", format!("expected 64 lowercase hex digits, got {pin:?}")));
    }
    let kind = match raw.output.as_deref().unwrap_or("lists") {
        "lists" => TableKind::Lists,
        "hashes" => TableKind::Hashes,
        other => return Err(invalid("output", format!("expected \"lists\" or \"hashes\", got {other:?}"))),
    };
    let checks = output_checks(&raw, &inputs, kind, &invalid)?;
    let gate = match &command {
        Some(_) => Gate::default(),
        None => table_gate(raw.gate.as_ref(), kind, base, &invalid)?,
    };
    let model_inputs = model_inputs(&raw, &invalid)?;
    let item_titles = match &raw.item_titles {
        None => None,
        Some(t) => match inputs.iter().find(|i| i.name == t.input) {
            Some(input) if input.format != InputFormat::Table && input.registry.is_none() => {
                Some(ItemTitles { input: input.clone(), id: t.id.clone(), title: t.title.clone() })
            }
            Some(_) => return Err(invalid("item_titles", format!("input {:?} is not a file", t.input))),
            None => return Err(invalid("item_titles", format!("input {:?} is not one of [inputs]", t.input))),
        },
    };
    // The table itself may be a fallback: its own `__default__` list answers users it
    // has no list for (a popularity table that answers everyone).
    if let Some(bad) = raw.fallback.iter().find(|t| !valid_name(t)) {
        return Err(invalid("fallback", format!("{bad:?} is not a table name")));
    }
    let params_json = serde_json::to_string(&raw.params)
        .map_err(|e| invalid("params", format!("cannot be expressed as JSON: {e}")))?;
    let (model, registry_model) = match raw.model.as_deref() {
        Some(m) => match m.strip_prefix("registry:") {
            Some(name) if valid_name(name) => (None, Some(name.to_string())),
            Some(_) => return Err(invalid("model", format!("{m:?}: expected registry:<model name>"))),
            None => (Some(absolute(base, m)), None),
        },
        None => (None, None),
    };
    Ok(Job {
        name: name.to_string(),
        file: PathBuf::from(file),
        schedule,
        policy,
        after: raw.after,
        plugin,
        table: if command.is_some() { String::new() } else { table },
        shared_table: raw.shared_table,
        model,
        registry_model,
        command,
        model_inputs,
        kind,
        device,
        inputs,
        params_json,
        description: raw.description,
        item_titles,
        after_line: line_of_key(text, "after"),
        plugin_line: line_of_key(text, "plugin"),
        table_line: line_of_key(text, "table"),
        plugin_name: if by_path { None } else { raw.plugin.clone() },
        plugin_sha256: raw.plugin_sha256.clone(),
        checks,
        gate,
        fallback: raw.fallback.clone(),
    })
}

/// A named plugin's file in the plugins folder, or a path to a `.so`; None for neither.
fn plugin_path(plugin: &str, base: &Path, plugins_dir: &Path) -> Option<PathBuf> {
    if plugin.ends_with(".so") || plugin.contains('/') {
        Some(absolute(base, plugin))
    } else if valid_name(plugin) {
        Some(plugins_dir.join(format!("librecd_{}.so", plugin.replace('-', "_"))))
    } else {
        None
    }
}

/// `<model>/<file>` of `registry:<model>/<file>`: a file of the model's current version.
fn registry_input(input: &str, rest: &str) -> Result<Input, String> {
    let bad = || format!("\"registry:{rest}\": expected registry:<model>/<file name>");
    let (model, file) = rest.split_once('/').ok_or_else(bad)?;
    if !valid_name(model) || !valid_file_name(file) {
        return Err(bad());
    }
    let format = InputFormat::from_path(Path::new(file))
        .ok_or_else(|| format!("\"registry:{rest}\": expected a .csv, .parquet or .arrow file"))?;
    Ok(Input { name: input.into(), path: PathBuf::from(file), format, registry: Some(model.into()) })
}

/// A command job's program, environment and product; None for a plugin job. Refuses the
/// keys only plugin jobs take, and `produces`/`model_file`/`env` without a command.
fn command_spec(
    raw: &RawJob,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> JobError,
) -> Result<Option<CommandSpec>, JobError> {
    let Some(argv) = &raw.command else {
        for (key, set) in [
            ("produces", raw.produces.is_some()),
            ("model_file", raw.model_file.is_some()),
            ("env", !raw.env.is_empty()),
        ] {
            if set {
                return Err(invalid(key, "applies to command jobs; this job has no `command`".into()));
            }
        }
        return Ok(None);
    };
    let set = [
        raw.table.is_some(),
        raw.shared_table,
        raw.model.is_some(),
        !raw.model_inputs.is_empty(),
        raw.output.is_some(),
        raw.device.is_some(),
        !raw.params.is_empty(),
        !raw.fallback.is_empty(),
        raw.known_users.is_some(),
        raw.known_items.is_some(),
        raw.max_items_per_user.is_some(),
        raw.plugin_sha256.is_some(),
    ];
    if let Some((key, _)) = PLUGIN_ONLY.iter().zip(set).find(|(_, set)| *set) {
        return Err(invalid(key, "applies to plugin jobs; this job runs a `command`".into()));
    }
    if raw.allow_empty {
        return Err(invalid("allow_empty", "applies to plugin jobs; this job runs a `command`".into()));
    }
    let Some(program) = argv.first().filter(|p| !p.trim().is_empty()) else {
        return Err(invalid("command", "names no program: expected [\"program\", \"arg\", ...]".into()));
    };
    let mut argv = argv.clone();
    if program.contains('/') {
        argv[0] = absolute(base, program).display().to_string();
    }
    for name in raw.env.keys() {
        let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok || name.starts_with("RECD_") {
            return Err(invalid(
                &format!("env.{name}"),
                format!(
                    "{name:?}: expected a variable name (letters, digits, '_'), not starting with RECD_ (recd sets those)"
                ),
            ));
        }
    }
    let produces = match raw.produces.as_deref() {
        None => None,
        Some(p) => match p.strip_prefix("registry:") {
            Some(name) if valid_name(name) => Some(name.to_string()),
            _ => return Err(invalid("produces", format!("{p:?}: expected registry:<model name>"))),
        },
    };
    if let Some(file) = &raw.model_file {
        if produces.is_none() {
            return Err(invalid(
                "model_file",
                "names the ONNX file of a version the job `produces`; it produces none".into(),
            ));
        }
        if !valid_file_name(file) || !file.ends_with(".onnx") {
            return Err(invalid("model_file", format!("{file:?}: expected a file name ending in .onnx")));
        }
    }
    for (i, arg) in argv.iter().enumerate() {
        check_placeholders(arg, produces.is_some(), &raw.inputs)
            .map_err(|m| invalid("command", format!("argument {i} ({arg:?}): {m}")))?;
    }
    let mut vars = BTreeMap::new();
    for input in raw.inputs.keys() {
        if let Some(other) = vars.insert(input_env_var(input), input) {
            return Err(invalid(
                &format!("inputs.{input}"),
                format!("inputs {other:?} and {input:?} would both be {} for the command", input_env_var(input)),
            ));
        }
    }
    let gate = model_gate(raw.gate.as_ref(), produces.is_some(), invalid)?;
    Ok(Some(CommandSpec {
        argv,
        env: raw.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        produces,
        model_file: raw.model_file.clone(),
        gate,
    }))
}

/// A plugin job's `[gate]`: counts, ratios and shares in range; list comparisons on lists;
/// no model metric.
fn table_gate(
    raw: Option<&RawGate>,
    kind: TableKind,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> JobError,
) -> Result<Gate, JobError> {
    let Some(g) = raw else { return Ok(Gate::default()) };
    let share = |key: &str, v: Option<f64>, zero_ok: bool| -> Result<Option<f64>, JobError> {
        match v {
            Some(x) if !(x <= 1.0 && (x > 0.0 || (zero_ok && x == 0.0))) => {
                let range = if zero_ok { "[0, 1]" } else { "(0, 1]" };
                Err(invalid(&format!("gate.{key}"), format!("must be in {range}, got {x}")))
            }
            other => Ok(other),
        }
    };
    let gate = Gate {
        min_users: g.min_users,
        min_rows: g.min_rows,
        min_users_ratio: share("min_users_ratio", g.min_users_ratio, false)?,
        min_rows_ratio: share("min_rows_ratio", g.min_rows_ratio, false)?,
        max_changed_share: share("max_changed_share", g.max_changed_share, true)?,
        changed_jaccard: share("changed_jaccard", g.changed_jaccard, false)?.unwrap_or(0.5),
        max_score_psi: match g.max_score_psi {
            Some(x) if !(x > 0.0 && x.is_finite()) => {
                return Err(invalid("gate.max_score_psi", format!("must be a positive number, got {x}")));
            }
            other => other,
        },
        holdout: holdout_gate(g, base, invalid)?,
    };
    if g.changed_jaccard.is_some() && g.max_changed_share.is_none() {
        return Err(invalid("gate.changed_jaccard", "qualifies max_changed_share, which the gate does not set".into()));
    }
    if kind == TableKind::Hashes {
        for (key, set) in [
            ("max_changed_share", gate.max_changed_share.is_some()),
            ("max_score_psi", gate.max_score_psi.is_some()),
            ("holdout", gate.holdout.is_some()),
        ] {
            if set {
                return Err(invalid(
                    &format!("gate.{key}"),
                    "compares lists; this job has `output = \"hashes\"`".into(),
                ));
            }
        }
    }
    if gate.is_empty() {
        return Err(invalid(
            "gate",
            "sets no check (min_users, min_rows, min_users_ratio, min_rows_ratio, max_changed_share, max_score_psi, holdout)"
                .into(),
        ));
    }
    Ok(gate)
}

/// `holdout`, its columns, `metric` and `max_metric_drop` of a plugin job's `[gate]`.
fn holdout_gate(
    g: &RawGate,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> JobError,
) -> Result<Option<HoldoutGate>, JobError> {
    let Some(path) = &g.holdout else {
        let keys = [
            ("metric", g.metric.is_some()),
            ("max_metric_drop", g.max_metric_drop.is_some()),
            ("holdout_user_column", g.holdout_user_column.is_some()),
            ("holdout_item_column", g.holdout_item_column.is_some()),
        ];
        if let Some((key, _)) = keys.iter().find(|(_, set)| *set) {
            return Err(invalid(
                &format!("gate.{key}"),
                "qualifies `holdout` (interactions the lists are scored against), which the gate does not set".into(),
            ));
        }
        return Ok(None);
    };
    if InputFormat::from_path(Path::new(path)).is_none() {
        return Err(invalid("gate.holdout", format!("{path:?}: expected a .csv, .parquet or .arrow file")));
    }
    let metric = match &g.metric {
        Some(m) => m.parse().map_err(|e| invalid("gate.metric", e))?,
        None => ListMetric { kind: crate::quality::MetricKind::Ndcg, k: 10 },
    };
    let max_drop = max_metric_drop(g, invalid)?;
    let column = |key: &str, v: &Option<String>, default: &str| match v.as_deref().map(str::trim) {
        Some("") => Err(invalid(&format!("gate.{key}"), "must name a column".into())),
        Some(c) => Ok(c.to_string()),
        None => Ok(default.to_string()),
    };
    Ok(Some(HoldoutGate {
        path: absolute(base, path),
        user_column: column("holdout_user_column", &g.holdout_user_column, "user_id")?,
        item_column: column("holdout_item_column", &g.holdout_item_column, "item_id")?,
        metric,
        max_drop,
        truth: None,
    }))
}

/// A command job's `[gate]`: a metric of its model versions, and nothing else.
fn model_gate(
    raw: Option<&RawGate>,
    produces: bool,
    invalid: &dyn Fn(&str, String) -> JobError,
) -> Result<Option<ModelGate>, JobError> {
    let Some(g) = raw else { return Ok(None) };
    let table_keys = [
        ("min_users", g.min_users.is_some()),
        ("min_rows", g.min_rows.is_some()),
        ("min_users_ratio", g.min_users_ratio.is_some()),
        ("min_rows_ratio", g.min_rows_ratio.is_some()),
        ("max_changed_share", g.max_changed_share.is_some()),
        ("changed_jaccard", g.changed_jaccard.is_some()),
        ("max_score_psi", g.max_score_psi.is_some()),
        ("holdout", g.holdout.is_some()),
        ("holdout_user_column", g.holdout_user_column.is_some()),
        ("holdout_item_column", g.holdout_item_column.is_some()),
    ];
    if let Some((key, _)) = table_keys.iter().find(|(_, set)| *set) {
        return Err(invalid(
            &format!("gate.{key}"),
            "gates a table; a command job's gate takes `metric` and `max_metric_drop`".into(),
        ));
    }
    if !produces {
        return Err(invalid("gate", "gates the model versions a command `produces`; it produces none".into()));
    }
    let Some(metric) = g.metric.clone().filter(|m| !m.trim().is_empty()) else {
        return Err(invalid("gate", "needs `metric`: the name of a number in the version's metrics.json".into()));
    };
    Ok(Some(ModelGate { metric, max_drop: max_metric_drop(g, invalid)? }))
}

/// `max_metric_drop` of either gate: 0 or more, default 0.
fn max_metric_drop(g: &RawGate, invalid: &dyn Fn(&str, String) -> JobError) -> Result<f64, JobError> {
    match g.max_metric_drop.unwrap_or(0.0) {
        d if d >= 0.0 && d.is_finite() => Ok(d),
        d => Err(invalid("gate.max_metric_drop", format!("must be 0 or more, got {d}"))),
    }
}

/// Each placeholder in a command argument, a `{name}` of lower-case letters, digits, `_`,
/// `-` and `.`, is `{output}` (with `produces`) or `{inputs.<name>}` of an input the job
/// has. Other braces (`{"auc": 1}`, `${HOME}`) are left as they are.
fn check_placeholders(arg: &str, produces: bool, inputs: &BTreeMap<String, String>) -> Result<(), String> {
    for name in placeholders(arg) {
        match name.strip_prefix("inputs.") {
            Some(input) if inputs.contains_key(input) => {}
            Some(input) => {
                let names: Vec<&str> = inputs.keys().map(String::as_str).collect();
                return Err(format!("no input named {input:?} (inputs: {})", names.join(", ")));
            }
            None if name == "output" && produces => {}
            None if name == "output" => {
                return Err("{output} is the folder of a version the job `produces`; it produces none".into());
            }
            None => return Err(format!("unknown placeholder {{{name}}} (known: {{output}}, {{inputs.<name>}})")),
        }
    }
    Ok(())
}

/// The names of the `{name}` placeholders in `arg` (see [`check_placeholders`]).
pub fn placeholders(arg: &str) -> Vec<&str> {
    let is_name =
        |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        if let Some(close) = rest.find('}')
            && is_name(&rest[..close])
        {
            out.push(&rest[..close]);
            rest = &rest[close + 1..];
        }
    }
    out
}

fn model_inputs(raw: &RawJob, invalid: &dyn Fn(&str, String) -> JobError) -> Result<Vec<(String, String)>, JobError> {
    if !raw.model_inputs.is_empty() && raw.model.is_none() {
        return Err(invalid("model_inputs", "binds model inputs, but the job has no `model`".into()));
    }
    for (input, feature) in &raw.model_inputs {
        if feature.trim().is_empty() {
            return Err(invalid(&format!("model_inputs.{input}"), "names no feature".into()));
        }
    }
    Ok(raw.model_inputs.iter().map(|(i, f)| (i.clone(), f.clone())).collect())
}

fn output_checks(
    raw: &RawJob,
    inputs: &[Input],
    kind: TableKind,
    invalid: &dyn Fn(&str, String) -> JobError,
) -> Result<OutputChecks, JobError> {
    if kind == TableKind::Hashes {
        // A hash has fields, not items: item checks cannot apply.
        for (field, set) in
            [("known_items", raw.known_items.is_some()), ("max_items_per_user", raw.max_items_per_user.is_some())]
        {
            if set {
                return Err(invalid(field, "applies to lists; this job has `output = \"hashes\"`".into()));
            }
        }
    }
    let column_ref = |field: &str, v: &Option<String>| -> Result<Option<(String, String)>, JobError> {
        let Some(v) = v else { return Ok(None) };
        let Some((table, column)) = v.split_once('.') else {
            return Err(invalid(field, format!("expected \"input.column\", got {v:?}")));
        };
        if !inputs.iter().any(|i| i.name == table) {
            let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(invalid(field, format!("no input named {table:?} (inputs: {})", names.join(", "))));
        }
        Ok(Some((table.to_string(), column.to_string())))
    };
    let max = raw.max_items_per_user.unwrap_or(1000);
    if max == 0 {
        return Err(invalid("max_items_per_user", "must be at least 1".into()));
    }
    Ok(OutputChecks {
        max_items_per_user: max,
        allow_empty: raw.allow_empty,
        known_users: column_ref("known_users", &raw.known_users)?,
        known_items: column_ref("known_items", &raw.known_items)?,
    })
}

/// The largest value of each duration key, in seconds: beyond any sensible schedule, and
/// small enough that no deadline computed from one can overflow (`timeout_seconds =
/// 9223372036854775807` once passed validation and made every run's watchdog panic).
pub const DURATION_LIMITS: [(&str, u64); 4] = [
    ("timeout_seconds", 7 * 86_400),
    ("retry_backoff_seconds", 86_400),
    ("retry_backoff_max_seconds", 86_400),
    ("starting_deadline_seconds", 366 * 86_400),
];

fn policy(raw: &RawJob, invalid: &dyn Fn(&str, String) -> JobError) -> Result<Policy, JobError> {
    let overlap = match raw.overlap.as_deref().unwrap_or("skip") {
        "skip" => Overlap::Skip,
        "replace" => Overlap::Replace,
        "queue" => Overlap::Queue,
        other => return Err(invalid("overlap", format!("expected \"skip\", \"replace\" or \"queue\", got {other:?}"))),
    };
    let positive = |field: &str, v: Option<u64>, default: u64| match v {
        Some(0) => Err(invalid(field, "must be at least 1".into())),
        Some(n) => match DURATION_LIMITS.iter().find(|(f, _)| *f == field) {
            Some((_, max)) if n > *max => Err(invalid(field, format!("{n} is more than the maximum, {max}"))),
            _ => Ok(Duration::from_secs(n)),
        },
        None => Ok(Duration::from_secs(default)),
    };
    let retry_backoff = positive("retry_backoff_seconds", raw.retry_backoff_seconds, 10)?;
    // Unset, the cap is 360 s or the first wait if longer: a file that sets only
    // `retry_backoff_seconds = 600` means waits of 600 s, not an error about a key it lacks.
    let default_max = retry_backoff.as_secs().max(360);
    let retry_backoff_max = positive("retry_backoff_max_seconds", raw.retry_backoff_max_seconds, default_max)?;
    if retry_backoff_max < retry_backoff {
        return Err(invalid(
            "retry_backoff_max_seconds",
            format!("{} is less than retry_backoff_seconds ({})", retry_backoff_max.as_secs(), retry_backoff.as_secs()),
        ));
    }
    let retries = raw.retries.unwrap_or(0);
    if retries > 100 {
        return Err(invalid("retries", format!("{retries} is more than 100")));
    }
    Ok(Policy {
        overlap,
        starting_deadline: match raw.starting_deadline_seconds {
            Some(n) => Some(positive("starting_deadline_seconds", Some(n), n)?),
            None => None,
        },
        retries,
        retry_backoff,
        retry_backoff_max,
        timeout: positive("timeout_seconds", raw.timeout_seconds, 3600)?,
        suspend: raw.suspend,
    })
}

/// Checks the jobs of one folder together: every `after` names a job of the set, and the
/// `after` links form no cycle. Returns (file, error) for each job in violation.
/// Checks each job's `after` links: they name jobs in `jobs` (one among `failing`, whose
/// file is there but refused, is named as such) and form no cycle.
pub fn check_links(jobs: &BTreeMap<String, Job>, failing: &BTreeMap<String, String>) -> Vec<(String, JobError)> {
    let mut errors = Vec::new();
    for (name, job) in jobs {
        let file = job.file.display().to_string();
        for upstream in &job.after {
            if !jobs.contains_key(upstream) {
                let message = match failing.get(upstream) {
                    Some(its_file) => format!("job {upstream:?} is refused ({its_file} has errors)"),
                    None => {
                        let known: Vec<&str> = jobs.keys().map(String::as_str).collect();
                        format!("no job named {upstream:?} (jobs: {})", known.join(", "))
                    }
                };
                let line = job.after_line;
                errors.push((
                    file.clone(),
                    JobError::Invalid { file: file.clone(), line, field: "after".into(), message },
                ));
            }
        }
        if let Some(cycle) = cycle_through(name, jobs) {
            errors.push((
                file.clone(),
                JobError::Invalid {
                    file,
                    line: job.after_line,
                    field: "after".into(),
                    message: format!("cycle: {}", cycle.join(" -> ")),
                },
            ));
        }
    }
    errors
}

/// Checks that each table has one publishing job, or that every job publishing it sets
/// `shared_table`: one job file must not be able to replace another job's table (and,
/// through retention, its rollback versions). When jobs collide, the table's `owner`
/// (the job that publishes it now, if the caller knows one) keeps it, else a job named
/// like the table; every other job naming it gets an error naming the owner. With no
/// keeper, each job that does not set `shared_table` gets an error naming the others.
/// An owner among `failing` (jobs whose file is there but refused: name, file) keeps its
/// table from every job that does not share it, as if it were loaded: a broken file at
/// start-up must not hand its table to another job. Returns (file, error) for
/// each job in violation.
pub fn check_tables(
    jobs: &BTreeMap<String, Job>,
    owner: &dyn Fn(&str) -> Option<String>,
    failing: &BTreeMap<String, String>,
) -> Vec<(String, JobError)> {
    let mut by_table: BTreeMap<&str, Vec<&Job>> = BTreeMap::new();
    for job in jobs.values().filter(|j| j.command.is_none()) {
        by_table.entry(&job.table).or_default().push(job);
    }
    let mut errors = Vec::new();
    for (table, claimants) in by_table {
        let absent_owner = owner(table).filter(|o| !jobs.contains_key(o)).and_then(|o| Some((failing.get(&o)?, o)));
        if let Some((owner_file, owner)) = absent_owner {
            for job in claimants.iter().filter(|j| !j.shared_table) {
                let message = format!(
                    "table {table:?} is published by job {owner:?} ({owner_file}), whose file has errors: fix that file first (a table has one publishing job; to move it, delete {owner_file})"
                );
                errors.push(table_error(job, message));
            }
            continue;
        }
        if claimants.len() < 2 || claimants.iter().all(|j| j.shared_table) {
            continue;
        }
        let keeper = owner(table)
            .filter(|o| claimants.iter().any(|j| j.name == *o))
            .or_else(|| claimants.iter().find(|j| j.name == table).map(|j| j.name.clone()));
        // Without a keeper, the jobs that do not share the table are at fault, not those
        // that do (an edit that stops sharing a shared table is refused, not its peers).
        let at_fault = |j: &&&Job| match &keeper {
            Some(k) => j.name != *k,
            None => !j.shared_table,
        };
        for job in claimants.iter().filter(at_fault) {
            let others: Vec<String> = match &keeper {
                Some(k) => vec![k.clone()],
                None => claimants.iter().filter(|o| o.name != job.name).map(|o| o.name.clone()).collect(),
            };
            let named: Vec<String> = others.iter().map(|o| format!("job {o:?} ({})", jobs[o].file.display())).collect();
            let message = format!(
                "table {table:?} is published by {}: a table has one publishing job (name another table, or set `shared_table = true` in every job that publishes it)",
                named.join(" and ")
            );
            errors.push(table_error(job, message));
        }
    }
    errors
}

fn table_error(job: &Job, message: String) -> (String, JobError) {
    let file = job.file.display().to_string();
    (file.clone(), JobError::Invalid { file, line: job.table_line, field: "table".into(), message })
}

/// What the checks of a whole job set need beyond its jobs.
pub struct SetContext<'a> {
    /// The job that publishes a table now: it keeps the table when jobs collide.
    pub owner: &'a dyn Fn(&str) -> Option<String>,
    /// The job that produced a registry model's current version.
    pub producer: &'a dyn Fn(&str) -> Option<String>,
    /// A job's definition before this check (the daemon's last good one), put back when
    /// the job is refused.
    pub previous: &'a dyn Fn(&str) -> Option<Job>,
    /// Jobs whose file is there but was refused before the set checks: name, file.
    pub failing: BTreeMap<String, String>,
}

/// Runs the checks of a whole set (`after` links, one publisher per table, one producer
/// per registry model) until they pass, since what is left after a refusal can still fail
/// (a job taken out leaves a link dangling, a definition put back can close a cycle).
/// Each round, the refused jobs that have a new definition get their previous one back
/// (or are taken out, without one); only when every job refused is already on its
/// previous definition are those taken out. So a last good definition stays while it
/// fits with the others, and this ends. Returns (file, error) for each job refused, the
/// first error of a file first (the one about its own text).
pub fn settle(jobs: &mut BTreeMap<String, Job>, mut context: SetContext<'_>) -> Vec<(String, JobError)> {
    let mut put_back = std::collections::HashSet::new();
    let mut all = Vec::new();
    loop {
        let failing: BTreeMap<String, String> = context
            .failing
            .iter()
            .filter(|(name, _)| !jobs.contains_key(*name))
            .map(|(n, f)| (n.clone(), f.clone()))
            .collect();
        let mut refused = check_links(jobs, &failing);
        refused.extend(check_tables(jobs, context.owner, &failing));
        refused.extend(check_producers(jobs, context.producer));
        if refused.is_empty() {
            return all;
        }
        let new_ones = refused.iter().any(|(file, _)| !put_back.contains(&job_name(Path::new(file))));
        // This round acts on the jobs with a new definition only, while there are any.
        refused.retain(|(file, _)| !new_ones || !put_back.contains(&job_name(Path::new(file))));
        let mut acted = std::collections::HashSet::new();
        for (file, _) in &refused {
            let name = job_name(Path::new(file));
            if !acted.insert(name.clone()) {
                continue; // a second error of the same job this round
            }
            jobs.remove(&name);
            if let Some(previous) = (context.previous)(&name).filter(|_| new_ones) {
                jobs.insert(name.clone(), previous);
                put_back.insert(name.clone());
            }
            context.failing.insert(name, file.clone());
        }
        all.extend(refused);
    }
}

/// A registry model has one producing job: the one that produced its current version
/// (`owner`, when it is among them) keeps it, else the first by name; every other job
/// producing it gets an error.
pub fn check_producers(
    jobs: &BTreeMap<String, Job>,
    owner: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, JobError)> {
    let mut by_model: BTreeMap<&str, Vec<&Job>> = BTreeMap::new();
    for job in jobs.values() {
        if let Some(model) = job.command.as_ref().and_then(|c| c.produces.as_deref()) {
            by_model.entry(model).or_default().push(job);
        }
    }
    let mut errors = Vec::new();
    for (model, claimants) in by_model {
        let owned = owner(model).and_then(|o| claimants.iter().position(|j| j.name == o));
        let keeper = claimants[owned.unwrap_or(0)];
        for job in claimants.iter().filter(|j| j.name != keeper.name) {
            let file = job.file.display().to_string();
            let text = read_job_file(&job.file).unwrap_or_default();
            let message = format!(
                "registry model {model:?} is produced by job {:?} ({}): a registry model has one producing job",
                keeper.name,
                keeper.file.display()
            );
            let line = line_of_key(&text, "produces");
            errors.push((file.clone(), JobError::Invalid { file, line, field: "produces".into(), message }));
        }
    }
    errors
}

/// A path of `after` links from `start` back to itself, if there is one.
fn cycle_through(start: &str, jobs: &BTreeMap<String, Job>) -> Option<Vec<String>> {
    // Depth-first over "runs after" edges, downstream -> upstream.
    let mut stack: Vec<(String, Vec<String>)> = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = std::collections::HashSet::new();
    while let Some((at, path)) = stack.pop() {
        for up in jobs.get(&at).map(|j| j.after.as_slice()).unwrap_or(&[]) {
            if up == start {
                let mut cycle = path.clone();
                cycle.push(start.to_string());
                return Some(cycle);
            }
            if seen.insert(up.clone()) {
                let mut next = path.clone();
                next.push(up.clone());
                stack.push((up.clone(), next));
            }
        }
    }
    None
}

impl Job {
    /// What a run of the job makes current, for listings: `table <t>`,
    /// `registry model <m>`, or `command` for a command that produces nothing.
    pub fn publishes(&self) -> String {
        match &self.command {
            None => format!("table {}", self.table),
            Some(CommandSpec { produces: Some(m), .. }) => format!("command, registry model {m}"),
            Some(_) => "command".into(),
        }
    }

    /// An error the plugin probe reported about key `field` ("plugin" or "params").
    /// A plugin message that starts with `params.<key>` points at that key's line.
    pub fn probe_error(&self, field: &str, message: String) -> JobError {
        let file = self.file.display().to_string();
        let text = read_job_file(&self.file).unwrap_or_default();
        // Errors about a table's key say so first: `params.k: ...`, `model_inputs.user: ...`.
        let section = ["params", "model_inputs", "inputs"].into_iter().find(|s| *s == field);
        let Some(section) = section else {
            let line = if field == "plugin" { self.plugin_line } else { line_of_key(&text, field) };
            return JobError::Invalid { file, line, field: field.into(), message };
        };
        let header = line_of_key(&text, section);
        let key = message
            .strip_prefix(section)
            .and_then(|m| m.strip_prefix('.'))
            .and_then(|m| m.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next())
            .filter(|k| !k.is_empty());
        let keyed = key.and_then(|k| {
            let path = format!("{section}.{k}");
            key_line(&text, &path).map(|line| (path, line))
        });
        let (field, line) = keyed.unwrap_or((section.into(), header));
        JobError::Invalid { file, line, field, message }
    }

    /// Checks that the files the job names are what it says (the I/O half of validation):
    /// the plugin exists and is trusted (and matches its pin), the model and inputs are
    /// regular files of at most `max_input_bytes`. A directory, FIFO or device in their
    /// place is named as such.
    pub fn resolve(self, text: &str, max_input_bytes: u64) -> Result<Job, JobError> {
        let file = self.file.display().to_string();
        let refuse = |field: &str, message: String| JobError::Invalid {
            file: file.clone(),
            line: line_of_key(text, field),
            field: field.into(),
            message,
        };
        match &self.command {
            Some(command) => {
                find_program(&command.argv[0]).map_err(|m| refuse("command", m))?;
            }
            None => self.resolve_plugin(&refuse)?,
        }
        if let Some(model) = &self.model {
            check_data_file(model, max_input_bytes).map_err(|m| refuse("model", format!("model file {m}")))?;
        }
        for input in self.inputs.iter().filter(|i| i.format != InputFormat::Table && i.registry.is_none()) {
            check_data_file(&input.path, max_input_bytes)
                .map_err(|m| refuse(&format!("inputs.{}", input.name), format!("input file {m}")))?;
        }
        if let Some(h) = &self.gate.holdout {
            check_data_file(&h.path, max_input_bytes)
                .map_err(|m| refuse("gate.holdout", format!("holdout file {m}")))?;
        }
        Ok(self)
    }

    /// The files on disk `resolve` checks besides the plugin: model, inputs, holdout.
    fn data_files(&self) -> Vec<PathBuf> {
        let inputs = self.inputs.iter().filter(|i| i.format != InputFormat::Table && i.registry.is_none());
        let model = self.model.iter().cloned();
        model.chain(inputs.map(|i| i.path.clone())).chain(self.gate.holdout.iter().map(|h| h.path.clone())).collect()
    }

    /// The plugin exists and is trusted, and matches its pin.
    fn resolve_plugin(&self, refuse: &dyn Fn(&str, String) -> JobError) -> Result<(), JobError> {
        if let Err(e) = fsutil::check_regular(&self.plugin, u64::MAX) {
            let what = if e == fsutil::FileError::Missing { "unknown plugin: file" } else { "plugin file" };
            return Err(refuse("plugin", format!("{what} {} {e}", self.plugin.display())));
        }
        crate::trust::check_trust(&self.plugin).map_err(|m| refuse("plugin", m))?;
        if let Some(pin) = &self.plugin_sha256 {
            let sha = crate::fsutil::sha256_file(&self.plugin).map_err(|e| refuse("plugin", e.to_string()))?;
            if &sha != pin {
                return Err(refuse("plugin_sha256", format!("the plugin file has sha256 {sha}, not the pinned one")));
            }
        }
        Ok(())
    }
}

/// Where a command's program is: a path as given (a regular, executable file), or the first
/// match of a bare name in PATH.
pub fn find_program(program: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let path = PathBuf::from(program);
        return if executable(&path) { Ok(path) } else { Err(format!("program {program} is not an executable file")) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("program {program:?} is not found in PATH"))
}

/// Whether an input or model file can be read: "<path> <why not>" when it cannot.
pub fn check_data_file(path: &Path, max_bytes: u64) -> Result<(), String> {
    fsutil::check_regular(path, max_bytes).map_err(|e| format!("{} {e}", path.display()))
}

fn absolute(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

/// The variable a command job's input path is in: `RECD_INPUT_<NAME>`, the name in upper
/// case with '-' as '_'.
pub fn input_env_var(input: &str) -> String {
    let name: String = input.chars().map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() }).collect();
    format!("RECD_INPUT_{name}")
}

/// A plain file name (of a registry model version's files): no path separators, not
/// hidden, not `..`.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/') && !name.contains('\0')
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A TOML or type error, located, and naming the key when the error sits on a `key = value`
/// line and the parser's message does not name it already.
fn syntax_error(text: &str, file: &str, e: &toml::de::Error) -> JobError {
    let offset = e.span().map(|s| s.start).unwrap_or(0);
    let (line, column) = crate::config::line_col(text, offset);
    let mut message = e.message().trim().to_string();
    if let Some(key) = key_on_line(text, line)
        && !message.contains("field `")
    {
        message = format!("field `{key}`: {message}");
    } else if let Some(table) = header_on_line(text, line)
        && !message.contains("field `")
    {
        // `[params]` twice: the parser says only "duplicate key".
        let twice =
            if message == "duplicate key" { format!(": [{table}] appears more than once") } else { String::new() };
        message = format!("field `{table}`: {message}{twice}");
    }
    JobError::Syntax { file: file.into(), line, column, message }
}

/// The name of the `[table]` header on `line` (1-based), if that line is one.
fn header_on_line(text: &str, line: usize) -> Option<String> {
    let this = text.lines().nth(line.checked_sub(1)?)?.trim();
    let name = this.strip_prefix('[')?.strip_suffix(']')?.trim().trim_matches(|c| c == '[' || c == ']').trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// The dotted key assigned on `line` (1-based), with its `[table]` prefix.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let this = lines.get(line.checked_sub(1)?)?.trim_start();
    let (key, _) = this.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        return None;
    }
    let table = lines[..line - 1].iter().rev().map(|l| l.trim()).find(|l| l.starts_with('['));
    Some(match table.map(|t| t.trim_matches(|c| c == '[' || c == ']').trim()) {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

/// The line of key `path` (`schedule`, `inputs.events`, `gate.holdout.users`; `[n]` picks
/// an element of an array of tables) in the job file `text`, found by TOML's own parse, so
/// a key is found in its table and however it is written (quoted, dotted, inline).
pub fn key_line(text: &str, path: &str) -> Option<usize> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let mut table = document.get_ref();
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (key, index) = match segment.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let (found, value) = table.iter().find(|(k, _)| k.get_ref() == key)?;
        if segments.peek().is_none() {
            return Some(text[..found.span().start].matches('\n').count() + 1);
        }
        table = match value.get_ref() {
            toml::de::DeValue::Table(t) => t,
            toml::de::DeValue::Array(a) => a.get(index.unwrap_or(0))?.get_ref().as_table()?,
            _ => return None,
        };
    }
    None
}

/// [`key_line`], or for a file TOML cannot parse the first line that sets or opens the
/// path's last key; line 1 when there is none.
pub fn line_of_key(text: &str, path: &str) -> usize {
    if let Some(line) = key_line(text, path) {
        return line;
    }
    let key = path.rsplit('.').next().unwrap_or(path);
    let key = key.split_once('[').map_or(key, |(k, _)| k);
    let (header, array) = (format!("[{key}]"), format!("[[{key}]]"));
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.trim_end() == header
                || l.trim_end() == array
        })
        .map(|i| i + 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, job) for a file `jobs/<name>.toml` holding `text`.
    fn named(name: &str, text: &str) -> (String, Job) {
        let job = parse_and_validate(text, &format!("jobs/{name}.toml"), name, Path::new("/"), Path::new("/"));
        (name.to_string(), job.unwrap())
    }

    fn check(text: &str) -> Result<Job, String> {
        parse_and_validate(text, "jobs/j.toml", "j", Path::new("/base"), Path::new("/plugins"))
            .map_err(|e| e.to_string())
    }

    /// Cases of `tests/fixtures/invalid_jobs.txt`: (name, job text, expected message).
    pub(crate) fn invalid_cases() -> Vec<(String, String, String)> {
        let text = include_str!("../../tests/fixtures/invalid_jobs.txt");
        let mut cases = Vec::new();
        for chunk in text.split("\n### ").skip(1) {
            let (name, rest) = chunk.split_once('\n').expect("case name line");
            let (job, want) = rest.split_once(">>> ").expect("a `>>> message` line");
            cases.push((name.to_string(), job.to_string(), want.trim_end().to_string()));
        }
        cases
    }

    /// Each TOML example in docs/jobs.md, docs/operations.md and docs/your-data.md, marked
    /// `<!-- example: KIND ... -->` above it, is valid: a job example `whole` as it is,
    /// else merged into its base job (a shipped job, or a minimal command job), the
    /// example's keys and tables over the base's; an `experiment` file; a `config`.
    #[test]
    fn every_example_in_the_docs_validates() {
        let mut seen = 0;
        for (doc, text) in [
            ("docs/jobs.md", include_str!("../../docs/jobs.md")),
            ("docs/operations.md", include_str!("../../docs/operations.md")),
            ("docs/your-data.md", include_str!("../../docs/your-data.md")),
        ] {
            for (kind, block) in toml_examples(doc, text) {
                let checked = match kind.as_str() {
                    "experiment" => {
                        crate::experiment::parse(&block, "x.experiment.toml", "x").map(drop).map_err(|e| e.to_string())
                    }
                    "config" => crate::config::Config::parse(&block, "recd.toml", Path::new("/base"))
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    job => check(&job_example(job, &block)).map(drop),
                };
                if let Err(e) = checked {
                    panic!("{doc}: a {kind} example is not valid: {e}\n{block}");
                }
                seen += 1;
            }
        }
        assert!(seen >= 15, "only {seen} examples found");
    }

    /// The ```toml blocks of a doc, each with the kind its marker line names.
    fn toml_examples(doc: &str, text: &str) -> Vec<(String, String)> {
        let (mut out, mut marker, mut lines) = (Vec::new(), None, text.lines());
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("<!-- example: ") {
                marker = rest.split_whitespace().next().map(str::to_string);
            } else if line == "```toml" {
                let kind = marker.take().unwrap_or_else(|| panic!("{doc}: a toml block without an example marker"));
                let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
                out.push((kind, block.join("\n")));
            }
        }
        out
    }

    /// A job example merged into its base job, as TOML.
    fn job_example(kind: &str, block: &str) -> String {
        fn merge(into: &mut toml::Table, from: toml::Table) {
            for (key, value) in from {
                match (into.get_mut(&key), value) {
                    (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                    (_, value) => {
                        into.insert(key, value);
                    }
                }
            }
        }
        let base = match kind {
            "whole" => return block.to_string(),
            "ranking" => include_str!("../../jobs/ranking.toml"),
            "churn" => include_str!("../../jobs/churn.toml"),
            "command" => "command = [\"true\"]\nproduces = \"registry:m\"\n",
            other => panic!("unknown example kind {other:?}"),
        };
        let mut job: toml::Table = base.parse().unwrap();
        merge(&mut job, block.parse().unwrap_or_else(|e| panic!("not TOML: {e}\n{block}")));
        toml::to_string(&job).unwrap()
    }

    #[test]
    fn every_invalid_job_file_gets_its_exact_message() {
        let cases = invalid_cases();
        assert!(cases.len() >= 30, "only {} cases", cases.len());
        let mut bad = Vec::new();
        for (name, text, want) in &cases {
            let want = want.replace("{file}", "jobs/j.toml");
            let got = check(text).expect_err(name);
            if got != want {
                bad.push(format!("{name}: {text:?}\n   got: {got}\n  want: {want}"));
            }
        }
        assert!(bad.is_empty(), "{} of {} messages differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
    }

    #[test]
    fn after_links_must_name_jobs_and_form_no_cycle() {
        let job = |name: &str, after: &str| named(name, &format!("plugin = \"x\"\nafter = [{after}]\n"));
        let set: BTreeMap<String, Job> =
            [job("a", "\"b\""), job("b", "\"c\""), job("c", "\"a\""), job("d", "\"a\", \"zz\"")].into_iter().collect();
        let errors: Vec<String> = check_links(&set, &BTreeMap::new()).into_iter().map(|(_, e)| e.to_string()).collect();
        assert_eq!(
            errors,
            [
                "jobs/a.toml:2: field `after`: cycle: a -> b -> c -> a",
                "jobs/b.toml:2: field `after`: cycle: b -> c -> a -> b",
                "jobs/c.toml:2: field `after`: cycle: c -> a -> b -> c",
                "jobs/d.toml:2: field `after`: no job named \"zz\" (jobs: a, b, c, d)",
            ]
        );
    }

    proptest::proptest! {
        /// Any value of a duration key either is refused, naming the key, or gives a policy
        /// whose deadlines and retry waits can all be computed without overflow.
        #[test]
        fn every_duration_key_is_bounded(key in 0usize..4, value in 0u64..=i64::MAX as u64, attempt in proptest::prelude::any::<u32>()) {
            let (field, max) = DURATION_LIMITS[key];
            // The other backoff key is set so that only the one under test can be wrong.
            let other = match field {
                "retry_backoff_seconds" => "retry_backoff_max_seconds = 86400",
                "retry_backoff_max_seconds" => "retry_backoff_seconds = 1",
                _ => "",
            };
            let text = format!("plugin = \"x\"\n{field} = {value}\n{other}\n");
            match check(&text) {
                Err(e) => {
                    proptest::prop_assert!(value == 0 || value > max, "{value} refused: {e}");
                    proptest::prop_assert!(e.starts_with(&format!("jobs/j.toml:2: field `{field}`:")), "{e}");
                }
                Ok(job) => {
                    proptest::prop_assert!(value >= 1 && value <= max);
                    let p = &job.policy;
                    let now = std::time::Instant::now();
                    for d in [p.timeout, p.retry_backoff, p.retry_backoff_max, p.starting_deadline.unwrap_or_default()] {
                        proptest::prop_assert!(now.checked_add(d).is_some());
                        proptest::prop_assert!(chrono::TimeDelta::from_std(d).is_ok());
                    }
                    proptest::prop_assert!(p.backoff(attempt) <= p.retry_backoff_max.max(p.retry_backoff));
                }
            }
        }
    }

    #[test]
    fn a_table_has_one_publishing_job_unless_all_declare_it_shared() {
        let job = |name: &str, extra: &str| named(name, &format!("plugin = \"x\"\n{extra}\n"));
        let errors = |jobs: Vec<(String, Job)>, owner: Option<&str>| -> Vec<String> {
            let set: BTreeMap<String, Job> = jobs.into_iter().collect();
            check_tables(&set, &|_| owner.map(String::from), &BTreeMap::new())
                .into_iter()
                .map(|(_, e)| e.to_string())
                .collect()
        };
        let why = "a table has one publishing job (name another table, or set `shared_table = true` in every job that publishes it)";
        // The job named like the table keeps it; the newcomer is refused.
        assert_eq!(
            errors(vec![job("ranking", ""), job("zz", "table = \"ranking\"")], None),
            [format!(
                "jobs/zz.toml:2: field `table`: table \"ranking\" is published by job \"ranking\" (jobs/ranking.toml): {why}"
            )]
        );
        // The job that publishes the table now keeps it, whatever the names.
        assert_eq!(
            errors(vec![job("ranking", ""), job("zz", "table = \"ranking\"")], Some("zz")),
            [format!(
                "jobs/ranking.toml:1: field `table`: table \"ranking\" is published by job \"zz\" (jobs/zz.toml): {why}"
            )]
        );
        // Nobody owns it: each is told of the others.
        assert_eq!(
            errors(vec![job("a", "table = \"t\""), job("b", "table = \"t\"")], None),
            [
                format!("jobs/a.toml:2: field `table`: table \"t\" is published by job \"b\" (jobs/b.toml): {why}"),
                format!("jobs/b.toml:2: field `table`: table \"t\" is published by job \"a\" (jobs/a.toml): {why}"),
            ]
        );
        // Shared only when every publisher says so.
        let shared = "table = \"t\"\nshared_table = true";
        assert!(errors(vec![job("a", shared), job("b", shared)], None).is_empty());
        assert_eq!(errors(vec![job("a", shared), job("b", "table = \"t\"")], Some("a")).len(), 1);
        // Nobody owns it, and one job stops sharing it: that job is at fault, not its peer.
        assert_eq!(
            errors(vec![job("a", "table = \"t\""), job("b", shared)], None),
            [format!("jobs/a.toml:2: field `table`: table \"t\" is published by job \"b\" (jobs/b.toml): {why}")]
        );
        // So an edit that stops sharing is refused and keeps its last good definition,
        // whichever way the names sort; the peer is untouched.
        for (edited, peer) in [("a", "b"), ("b", "a")] {
            let previous = vec![job(edited, shared), job(peer, shared)];
            let (in_force, errs) = settled(vec![job(edited, "table = \"t\""), job(peer, shared)], previous);
            let mut expected = vec![edited.to_string(), peer.to_string()];
            expected.sort();
            assert_eq!(in_force, expected);
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].starts_with(&format!("jobs/{edited}.toml:2: field `table`")), "{}", errs[0]);
        }
    }

    #[test]
    fn a_table_whose_publisher_has_a_broken_file_is_not_taken_by_another_job() {
        let job = |name: &str, extra: &str| named(name, &format!("plugin = \"x\"\n{extra}\n"));
        let set: BTreeMap<String, Job> =
            [job("zz", "table = \"t1\""), job("shared", "table = \"t1\"\nshared_table = true")].into_iter().collect();
        let failing = BTreeMap::from([("t1".to_string(), "jobs/t1.toml".to_string())]);
        let errors: Vec<String> =
            check_tables(&set, &|_| Some("t1".into()), &failing).into_iter().map(|(_, e)| e.to_string()).collect();
        assert_eq!(
            errors,
            [
                "jobs/zz.toml:2: field `table`: table \"t1\" is published by job \"t1\" (jobs/t1.toml), whose file has errors: fix that file first (a table has one publishing job; to move it, delete jobs/t1.toml)"
            ]
        );
        // Its file deleted, the table is free to move to the job that names it.
        let moved: BTreeMap<String, Job> = [job("zz", "table = \"t1\"")].into_iter().collect();
        assert!(check_tables(&moved, &|_| Some("t1".into()), &BTreeMap::new()).is_empty());
    }

    /// Runs [`settle`] over `jobs` with `previous` as the last good definitions and no
    /// table owners; returns what is left in force and the errors, in order.
    fn settled(jobs: Vec<(String, Job)>, previous: Vec<(String, Job)>) -> (Vec<String>, Vec<String>) {
        let mut set: BTreeMap<String, Job> = jobs.into_iter().collect();
        let previous: BTreeMap<String, Job> = previous.into_iter().collect();
        let previous_job = |name: &str| previous.get(name).cloned();
        let context =
            SetContext { owner: &|_| None, producer: &|_| None, previous: &previous_job, failing: BTreeMap::new() };
        let errors = settle(&mut set, context).into_iter().map(|(_, e)| e.to_string()).collect();
        let in_force = set
            .values()
            .map(|j| format!("{}{}", j.name, j.after.iter().map(|a| format!(" after {a}")).collect::<String>()))
            .collect();
        (in_force, errors)
    }

    #[test]
    fn a_definition_put_back_is_checked_again_and_a_cycle_never_goes_live() {
        let job = |name: &str, extra: &str| named(name, &format!("plugin = \"x\"\n{extra}\n"));
        // In force: la after lb. The edit points la at lc and at lc's table (refused, so
        // la's old link comes back) and lb after la: with la's old link, a cycle.
        let previous = vec![job("la", "after = [\"lb\"]"), job("lb", ""), job("lc", "")];
        let edited = vec![job("la", "after = [\"lc\"]\ntable = \"lc\""), job("lb", "after = [\"la\"]"), job("lc", "")];
        let (in_force, errors) = settled(edited, previous);
        assert_eq!(in_force, ["la after lb", "lb", "lc"], "both keep their last good definitions");
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors[0].starts_with("jobs/la.toml:3: field `table`: table \"lc\" is published by job \"lc\""),
            "{}",
            errors[0]
        );
        assert_eq!(errors[1], "jobs/lb.toml:2: field `after`: cycle: lb -> la -> lb");
        // Put back, two old definitions can still clash with each other: then they go too.
        let previous = vec![job("la", "after = [\"lb\"]"), job("lb", "after = [\"la\"]")];
        let edited = vec![
            job("la", "after = [\"lc\"]\ntable = \"lc\""),
            job("lb", "after = [\"lc\"]\ntable = \"lc\""),
            job("lc", ""),
        ];
        let (in_force, errors) = settled(edited, previous);
        assert_eq!(in_force, ["lc"]);
        assert_eq!(errors.len(), 4, "{errors:#?}");
    }

    #[test]
    fn a_link_to_a_refused_job_is_refused_too() {
        let job = |name: &str, after: &str| named(name, &format!("plugin = \"x\"\nafter = [\"{after}\"]\n"));
        let (in_force, errors) = settled(vec![job("ca", "cb"), job("cb", "ca"), job("cc", "ca")], vec![]);
        assert_eq!(in_force, Vec::<String>::new());
        assert_eq!(
            errors,
            [
                "jobs/ca.toml:2: field `after`: cycle: ca -> cb -> ca",
                "jobs/cb.toml:2: field `after`: cycle: cb -> ca -> cb",
                "jobs/cc.toml:2: field `after`: job \"ca\" is refused (jobs/ca.toml has errors)",
            ]
        );
    }

    #[test]
    fn a_key_is_found_in_its_own_table_however_it_is_written() {
        let text = "\"schedule\" = \"* * * * *\"\nplugin = \"x\"\n[params]\nitems = 3\n\n[inputs]\nitems = \"i.csv\"\ngate.min_users_ratio = 0.5\n[[variant]]\ntable = \"a\"\n[[variant]]\ntable = \"b\"\n";
        assert_eq!(line_of_key(text, "schedule"), 1);
        assert_eq!(line_of_key(text, "params.items"), 4);
        assert_eq!(line_of_key(text, "inputs.items"), 7);
        assert_eq!(line_of_key(text, "inputs.gate.min_users_ratio"), 8);
        assert_eq!(line_of_key(text, "variant[1].table"), 12);
        assert_eq!(line_of_key(text, "inputs"), 6);
        // Not a key of the file: the old rule, then line 1.
        assert_eq!(line_of_key(text, "params.nothere"), 1);
        // A file TOML cannot read: the first line that sets the last key.
        assert_eq!(line_of_key("plugin = \"x\"\n[inputs]\nitems = \"i.csv\"\n=\n", "inputs.items"), 3);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let job =
            check("plugin = \"x\"\nretries = 5\nretry_backoff_seconds = 10\nretry_backoff_max_seconds = 35\n").unwrap();
        let waits: Vec<u64> = (1..=5).map(|n| job.policy.backoff(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 35, 35, 35]);
        // With no cap set it is 360 s, or the first wait where that is longer.
        let job = check("plugin = \"x\"\nretries = 5\nretry_backoff_seconds = 100\n").unwrap();
        let waits: Vec<u64> = (1..=4).map(|n| job.policy.backoff(n).as_secs()).collect();
        assert_eq!(waits, [100, 200, 360, 360]);
        let job = check("plugin = \"x\"\nretries = 2\nretry_backoff_seconds = 600\n").unwrap();
        assert_eq!(job.policy.backoff(2).as_secs(), 600);
        let err = check("plugin = \"x\"\nretry_backoff_seconds = 600\nretry_backoff_max_seconds = 60\n").unwrap_err();
        assert!(err.to_string().contains("60 is less than retry_backoff_seconds (600)"), "{err}");
    }

    #[test]
    fn valid_job_resolves_names_and_paths() {
        let job = check(
            "schedule = \"30 2 * * *\"\nplugin = \"ranking\"\nmodel = \"m.onnx\"\n[inputs]\ni = \"d/i.parquet\"\n[params]\nk = 5\n",
        )
        .unwrap();
        assert_eq!(job.schedule.as_ref().map(|s| s.expr.as_str()), Some("30 2 * * *"));
        assert_eq!(job.plugin, PathBuf::from("/plugins/librecd_ranking.so"));
        assert_eq!(job.model, Some(PathBuf::from("/base/m.onnx")));
        assert_eq!(job.inputs[0].format, InputFormat::Parquet);
        assert_eq!(job.params_json, r#"{"k":5}"#);
        assert_eq!(job.table, "j");
    }
}
