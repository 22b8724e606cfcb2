//! The text of STATUS, JOBS and MODELS: tables, jobs and their schedules, errors, recent
//! runs, registry models.

use std::fmt::Write as _;

use chrono::Utc;

use super::*;

impl Daemon {
    /// Human-readable state: tables and their versions, jobs with their next ticks and
    /// recent runs, job file errors.
    pub fn status_text(&self) -> String {
        let mut s = String::new();
        let jobs = self.jobs();
        if let Some(failure) = self.store.failure() {
            let waiting = self.unrecorded.lock().expect("unrecorded").len();
            let _ = writeln!(
                s,
                "store: not taking writes ({failure}); published versions keep serving; it is opened again once a test write succeeds ({waiting} run record(s) waiting)"
            );
        }
        if let Some(why) = self.store.reserve_missing() {
            let _ = writeln!(
                s,
                "store: disk reserve missing ({why}); free space on the data disk: until the reserve is made again, a restart on a full disk may not open the store"
            );
        }
        let _ = writeln!(s, "tables:");
        match self.store.tables() {
            Ok(tables) => {
                for (name, meta) in tables {
                    let serving = self.store.served(&name).map(|t| t.version).unwrap_or(0);
                    // Served until removed: say so, or a deleted job's table looks alive.
                    let orphan = if jobs.jobs.values().any(|j| j.table == name) {
                        ""
                    } else {
                        " (no job publishes it: `recd drop` removes it)"
                    };
                    let _ =
                        writeln!(s, "  {name}: current version {}, serving version {serving}{orphan}", meta.current);
                    for v in meta.versions.iter().rev() {
                        let held = match (&v.gate, v.held) {
                            (Some(g), true) => format!(" HELD by its gate: {}", g.failed.join("; ")),
                            _ => String::new(),
                        };
                        let _ = writeln!(
                            s,
                            "    version {}: {} users, {} rows, published {} by job {} run {}, checksum {}{held}",
                            v.version, v.users, v.rows, v.published_at, v.job, v.run_id, v.checksum
                        );
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(s, "  error reading tables: {e}");
            }
        }
        let set = jobs;
        let _ = writeln!(s, "jobs:");
        for (name, job) in &set.jobs {
            let _ = writeln!(s, "  {name}: {}", self.job_line(job));
            if let Some(d) = &job.description {
                let _ = writeln!(s, "    {d}");
            }
            for r in self.history(name, 5).unwrap_or_default() {
                let what = match (&r.status[..], &r.error) {
                    ("ok", _) if r.version.is_none() => match &r.produced {
                        Some(m) => format!("published registry model version {m}"),
                        None => "command ok".into(),
                    },
                    ("ok", _) => format!("version {} ({} users, {} rows)", r.version.unwrap_or(0), r.users, r.rows),
                    (_, Some(e)) => e.clone(),
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "    run {} [{}] {} {} {:.2}s: {what}",
                    r.run_id, r.trigger, r.started_at, r.status, r.seconds
                );
            }
        }
        let experiments = self.experiments();
        if !experiments.is_empty() {
            let _ = writeln!(s, "experiments:");
            for (name, live) in experiments.iter() {
                let e = &live.experiment;
                let variants: Vec<String> = e
                    .variants
                    .iter()
                    .map(|v| format!("{} -> table {} {}%", v.name, v.table, v.share * 100.0))
                    .collect();
                let _ = writeln!(s, "  {name}: salt {:?}: {}", e.salt, variants.join(", "));
            }
        }
        if !set.errors.is_empty() {
            let _ = writeln!(s, "job file errors:");
            for e in set.errors.values() {
                let _ = writeln!(s, "  {e}");
            }
        }
        s
    }

    /// Whether a run of the job is going now.
    pub(crate) fn is_running(&self, name: &str) -> bool {
        self.states.lock().expect("states").get(name).is_some_and(|s| s.running.is_some())
    }

    /// One job's schedule, state and next tick, for `recd status`.
    pub(super) fn job_line(&self, job: &Job) -> String {
        let running = self.is_running(&job.name);
        let mut flags = Vec::new();
        if running {
            flags.push("running".to_string());
            if let Some((done, total)) = self.progress(&job.name) {
                flags.push(format!("{done}/{total}"));
            }
        }
        if job.policy.suspend {
            flags.push("suspended".into());
        }
        if self.is_paused(&job.name) {
            flags.push("paused".into());
        }
        let after = (!job.after.is_empty()).then(|| format!("after {}", job.after.join(", ")));
        let when = match (&job.schedule, after) {
            (Some(sched), after) => {
                let next = sched.upcoming(Utc::now(), 1).first().map(schedule::show).unwrap_or_default();
                let after = after.map(|a| format!(", {a}")).unwrap_or_default();
                format!("schedule {:?} ({}), next {next}{after}", sched.expr, sched.tz)
            }
            (None, Some(after)) => after,
            (None, None) => "manual".into(),
        };
        let flags = if flags.is_empty() { String::new() } else { format!(" [{}]", flags.join(", ")) };
        format!("{when}, {}{flags}", job.publishes())
    }

    /// `recd jobs`: each job with its next `n` fire times in its zone.
    pub fn jobs_text(&self, n: usize) -> String {
        let mut s = String::new();
        let now = Utc::now();
        for (name, job) in self.jobs().jobs {
            let _ = writeln!(s, "{name}: {}", self.job_line(&job));
            if let Some(sched) = &job.schedule {
                for t in sched.upcoming(now, n) {
                    let _ = writeln!(s, "    {}", schedule::show(&t));
                }
            }
        }
        s
    }

    /// `recd models [NAME]`: each registry model's kept versions, newest first, and the runs
    /// in the history that read each one.
    pub fn models_text(&self, only: Option<&str>) -> Result<String, String> {
        let data_dir = &self.config.data_dir;
        let names = match only {
            Some(name) => {
                if models::versions(data_dir, name).map_err(|e| e.to_string())?.is_empty() {
                    return Err(models::ModelError::NoVersion(name.to_string()).to_string());
                }
                vec![name.to_string()]
            }
            None => models::names(data_dir),
        };
        let jobs = self.jobs();
        let mut s = String::new();
        for name in names {
            let current = models::current_version(data_dir, &name).map_err(|e| e.to_string())?;
            let _ = writeln!(s, "{name}: current version {}", current.unwrap_or(0));
            let readers = jobs.jobs.values().filter(|j| {
                j.registry_model.as_deref() == Some(name.as_str())
                    || j.inputs.iter().any(|i| i.registry.as_deref() == Some(name.as_str()))
            });
            let runs: Vec<RunRecord> =
                readers.flat_map(|j| self.history(&j.name, HISTORY_PER_JOB).unwrap_or_default()).collect();
            for v in models::versions(data_dir, &name).map_err(|e| e.to_string())?.iter().rev() {
                let mark = if Some(v.version) == current {
                    " (current)".to_string()
                } else if v.held {
                    format!(" (held by its gate: {})", v.gate_failed.join("; "))
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "  version {}{mark}: published {} by job {} run {}; {} sha256 {}",
                    v.version, v.published_at, v.job, v.run_id, v.model_file, v.model_sha256
                );
                let files: Vec<String> = v.files.iter().map(|f| format!("{} ({} bytes)", f.name, f.bytes)).collect();
                let _ = writeln!(s, "    files: {}", files.join(", "));
                if !v.metrics.is_empty() {
                    let metrics: Vec<String> = v.metrics.iter().map(|(k, m)| format!("{k}={m}")).collect();
                    let _ = writeln!(s, "    metrics: {}", metrics.join(", "));
                }
                let tag = format!("{name}@{}", v.version);
                let mut used: Vec<&RunRecord> = runs.iter().filter(|r| r.models.contains(&tag)).collect();
                used.sort_by_key(|r| std::cmp::Reverse(r.run_id));
                if !used.is_empty() {
                    let shown: Vec<String> =
                        used.iter().map(|r| format!("{} run {} ({})", r.job, r.run_id, r.status)).collect();
                    let _ = writeln!(s, "    used by: {}", shown.join(", "));
                }
            }
        }
        if s.is_empty() {
            s.push_str("no registry models (a command job with `produces = \"registry:<name>\"` publishes them)\n");
        }
        Ok(s)
    }

    /// `recd status --json`: what `status_text` says, as data.
    pub fn status_json(&self) -> Result<serde_json::Value, String> {
        let tables: serde_json::Map<String, serde_json::Value> = self
            .store
            .tables()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(name, meta)| (name, serde_json::to_value(&meta).expect("meta serialises")))
            .collect();
        let data_dir = &self.config.data_dir;
        let models: serde_json::Map<String, serde_json::Value> = models::names(data_dir)
            .into_iter()
            .map(|name| {
                let versions = models::versions(data_dir, &name).unwrap_or_default();
                let current = models::current_version(data_dir, &name).ok().flatten();
                (name, serde_json::json!({ "current": current, "versions": versions }))
            })
            .collect();
        let set = self.jobs();
        let jobs: serde_json::Map<String, serde_json::Value> =
            set.jobs.values().map(|j| (j.name.clone(), serde_json::Value::String(self.job_line(j)))).collect();
        let errors: Vec<String> = set.errors.values().map(|e| e.to_string()).collect();
        let experiments: serde_json::Map<String, serde_json::Value> = self
            .experiments()
            .iter()
            .map(|(name, live)| {
                let e = &live.experiment;
                let variants: Vec<serde_json::Value> = e
                    .variants
                    .iter()
                    .map(|v| serde_json::json!({ "name": v.name, "table": v.table, "share": v.share }))
                    .collect();
                (name.clone(), serde_json::json!({ "salt": e.salt, "variants": variants }))
            })
            .collect();
        Ok(serde_json::json!({
            "tables": tables, "models": models, "experiments": experiments, "jobs": jobs, "job_errors": errors
        }))
    }
}
