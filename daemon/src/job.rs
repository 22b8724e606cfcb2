//! Job files: `jobs/<name>.toml`, parsed into [`RawJob`] (`deny_unknown_fields`), then
//! validated into a [`Job`] without I/O ([`validate`]), then resolved against the disk
//! ([`Job::resolve`]: plugin and model files exist). Errors name the file, and the line
//! and field where one is known.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::Config;

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
    /// Cron expression, 5 fields (minute..weekday) or 6 with seconds first. Optional:
    /// a job without one runs only when asked (`recd run`).
    pub schedule: Option<String>,
    /// Plugin name (`<plugins_dir>/librecd_<name>.so`) or a path to a `.so`.
    pub plugin: String,
    /// Table the results are published to; defaults to the job name (file stem).
    pub table: Option<String>,
    /// ONNX model file scored through the host callback.
    pub model: Option<String>,
    /// Where to score: "cpu" (default), "cuda" (strict) or "auto".
    pub device: Option<String>,
    /// Named input tables: name = "path.parquet" | "path.csv".
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Free-form parameters handed to the plugin, which validates them.
    #[serde(default)]
    pub params: toml::Table,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Csv,
    Parquet,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Input {
    pub name: String,
    pub path: PathBuf,
    pub format: InputFormat,
}

/// A validated job. Paths are absolute; `resolve` has checked they exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    pub file: PathBuf,
    /// The 6-field (with seconds) form of the schedule, as the scheduler wants it.
    pub schedule: Option<String>,
    pub plugin: PathBuf,
    pub table: String,
    pub model: Option<PathBuf>,
    pub device: Device,
    pub inputs: Vec<Input>,
    /// `[params]` as JSON, the form the plugin ABI takes.
    pub params_json: String,
    pub description: Option<String>,
}

/// Reads, parses, validates and resolves one job file.
pub fn load(file: &Path, config: &Config) -> Result<Job, JobError> {
    let shown = file.display().to_string();
    let text =
        std::fs::read_to_string(file).map_err(|e| JobError::Io { file: shown.clone(), message: e.to_string() })?;
    let name = job_name(file);
    let job = parse_and_validate(&text, &shown, &name, &config.base_dir, &config.plugins_dir)?;
    job.resolve(&text)
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
    let raw: RawJob = toml::from_str(text).map_err(|e| {
        let (line, column) = line_col(text, e.span().map(|s| s.start).unwrap_or(0));
        JobError::Syntax { file: file.into(), line, column, message: e.message().trim().to_string() }
    })?;
    validate(raw, text, file, name, base, plugins_dir)
}

fn validate(raw: RawJob, text: &str, file: &str, name: &str, base: &Path, plugins_dir: &Path) -> Result<Job, JobError> {
    let invalid = |field: &str, message: String| JobError::Invalid {
        file: file.into(),
        line: line_of_key(text, field.rsplit('.').next().unwrap_or(field)),
        field: field.into(),
        message,
    };
    if !valid_name(name) {
        return Err(invalid("name", format!("job name {name:?} (the file name) must be letters, digits, '-' or '_'")));
    }
    let schedule = raw.schedule.as_deref().map(to_six_fields).transpose().map_err(|m| invalid("schedule", m))?;
    let table = raw.table.unwrap_or_else(|| name.to_string());
    if !valid_name(&table) {
        return Err(invalid(
            "table",
            format!("{table:?} must be letters, digits, '-' or '_' (it prefixes keys as `<table>:<user>`)"),
        ));
    }
    let plugin = if raw.plugin.ends_with(".so") || raw.plugin.contains('/') {
        absolute(base, &raw.plugin)
    } else if valid_name(&raw.plugin) {
        plugins_dir.join(format!("librecd_{}.so", raw.plugin.replace('-', "_")))
    } else {
        return Err(invalid("plugin", format!("{:?} is neither a plugin name nor a path to a .so", raw.plugin)));
    };
    let device = match raw.device.as_deref().unwrap_or("cpu") {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda,
        "auto" => Device::Auto,
        other => return Err(invalid("device", format!("expected \"cpu\", \"cuda\" or \"auto\", got {other:?}"))),
    };
    let mut inputs = Vec::new();
    for (input, path) in &raw.inputs {
        let format = match Path::new(path).extension().and_then(|e| e.to_str()) {
            Some("csv") => InputFormat::Csv,
            Some("parquet") | Some("pq") => InputFormat::Parquet,
            _ => {
                return Err(invalid(&format!("inputs.{input}"), format!("{path:?}: expected a .csv or .parquet file")));
            }
        };
        inputs.push(Input { name: input.clone(), path: absolute(base, path), format });
    }
    let params_json = serde_json::to_string(&raw.params)
        .map_err(|e| invalid("params", format!("cannot be expressed as JSON: {e}")))?;
    Ok(Job {
        name: name.to_string(),
        file: PathBuf::from(file),
        schedule,
        plugin,
        table,
        model: raw.model.as_deref().map(|m| absolute(base, m)),
        device,
        inputs,
        params_json,
        description: raw.description,
    })
}

impl Job {
    /// Checks that the files the job names exist (the I/O half of validation).
    pub fn resolve(self, text: &str) -> Result<Job, JobError> {
        let file = self.file.display().to_string();
        let missing = |field: &str, what: &str, path: &Path| JobError::Invalid {
            file: file.clone(),
            line: line_of_key(text, field.rsplit('.').next().unwrap_or(field)),
            field: field.into(),
            message: format!("{what} {} does not exist", path.display()),
        };
        if !self.plugin.is_file() {
            return Err(missing("plugin", "unknown plugin: file", &self.plugin));
        }
        if let Some(model) = &self.model
            && !model.is_file()
        {
            return Err(missing("model", "model file", model));
        }
        for input in &self.inputs {
            if !input.path.is_file() {
                return Err(missing(&format!("inputs.{}", input.name), "input file", &input.path));
            }
        }
        Ok(self)
    }
}

fn absolute(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Accepts classic 5-field cron (minute first) and 6-field cron with seconds; returns the
/// 6-field form. Validation follows classic cron (day-of-month OR day-of-week); note that
/// tokio-cron-scheduler 0.15 fires with AND and in UTC: issue 3 replaces its matching.
pub fn to_six_fields(expr: &str) -> Result<String, String> {
    let expr = expr.trim();
    let six = if expr.starts_with('@') {
        expr.to_string()
    } else {
        match expr.split_whitespace().count() {
            5 => format!("0 {expr}"),
            6 => expr.to_string(),
            n => {
                return Err(format!(
                    "{expr:?}: expected 5 fields (min hour day month weekday) or 6 (with seconds first), found {n}"
                ));
            }
        }
    };
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .dom_and_dow(false)
        .build()
        .parse(&six)
        .map_err(|e| format!("{expr:?}: {e}"))?;
    Ok(six)
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Line where `key = ...` is written, or 1 when the key is absent.
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Job, String> {
        parse_and_validate(text, "jobs/j.toml", "j", Path::new("/base"), Path::new("/plugins"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn table_of_parse_and_validation_errors() {
        let cases: &[(&str, &str)] = &[
            ("plugin = \"ranking\"\nschedul = \"* * * * *\"\n", "jobs/j.toml:2:1: unknown field `schedul`"),
            (
                "plugin = \"ranking\"\nschedule = \"* * *\"\n",
                "jobs/j.toml:2: field `schedule`: \"* * *\": expected 5 fields",
            ),
            ("plugin = \"ranking\"\nschedule = \"61 * * * *\"\n", "jobs/j.toml:2: field `schedule`: \"61 * * * *\""),
            ("plugin = \"ranking\"\ndevice = \"tpu\"\n", "jobs/j.toml:2: field `device`: expected \"cpu\""),
            (
                "plugin = \"ranking\"\n[inputs]\nx = \"a.json\"\n",
                "jobs/j.toml:3: field `inputs.x`: \"a.json\": expected a .csv or .parquet",
            ),
            ("plugin = \"ranking\"\ntable = \"a:b\"\n", "jobs/j.toml:2: field `table`"),
            ("plugin = [1]\n", "jobs/j.toml:1:10: invalid type"),
            ("schedule = \"* * * * *\"\n", "missing field `plugin`"),
            ("plugin = \"ranking\"\nk = \n", "jobs/j.toml:2:5"),
        ];
        for (text, want) in cases {
            let err = check(text).expect_err(text);
            assert!(err.contains(want), "for {text:?}\n got: {err}\nwant: {want}");
        }
    }

    #[test]
    fn valid_job_resolves_names_and_paths() {
        let job = check(
            "schedule = \"30 2 * * *\"\nplugin = \"ranking\"\nmodel = \"m.onnx\"\n[inputs]\ni = \"d/i.parquet\"\n[params]\nk = 5\n",
        )
        .unwrap();
        assert_eq!(job.schedule.as_deref(), Some("0 30 2 * * *"));
        assert_eq!(job.plugin, PathBuf::from("/plugins/librecd_ranking.so"));
        assert_eq!(job.model, Some(PathBuf::from("/base/m.onnx")));
        assert_eq!(job.inputs[0].format, InputFormat::Parquet);
        assert_eq!(job.params_json, r#"{"k":5}"#);
        assert_eq!(job.table, "j");
    }
}
