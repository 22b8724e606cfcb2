//! The run history and the scheduler's state the store keeps: one record per run (tree
//! `history`, key `<job>\0<run id>`), each job's last tick and its pause (tree `state`).

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// One run of a job, as kept in the history.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub run_id: u64,
    pub job: String,
    /// What started it: "schedule", "manual", "retry N", "after <job>", "catch-up".
    pub trigger: String,
    /// The tick a scheduled or caught-up run was for.
    #[serde(default)]
    pub scheduled_for: Option<String>,
    pub started_at: String,
    pub ended_at: String,
    pub seconds: f64,
    /// "ok", "gated" (its version is held), "failed", "timeout", "cancelled", "skipped" or
    /// "superseded" (a later run of its shared table published first).
    pub status: String,
    pub table: String,
    pub version: Option<u64>,
    pub users: u64,
    pub rows: u64,
    /// Execution provider that scored ("cpu", "cuda", "none").
    pub provider: Option<String>,
    pub error: Option<String>,
    /// The worker's own measurements (scoring time, peak memory), for runs that finished.
    #[serde(default)]
    pub worker: Option<WorkerStats>,
    /// The plugin build the run loaded (absent for skipped and imported runs, and in
    /// records written before lineage was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginBuild>,
    /// The SHA-256 of the model file the worker loaded (`<sha>+<sha>` with external data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// The daemon's own stages, for runs that published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<DaemonStages>,
    /// What the run reported beside its result, e.g. that `device = "auto"` scored on the CPU.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The registry model versions the run read, `<name>@<version>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// The registry model version a command job published, `<name>@<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produced: Option<String>,
    /// A command job's last lines of output (stdout and stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// What the job's `[gate]` measured of the version, and why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<super::GateResult>,
    /// Each input the run read: file, size, SHA-256, rows, or the table version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputLineage>,
    /// SHA-256 of the job's `[params]` as the plugin got them (JSON), or of a command's
    /// arguments and environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recd_version: Option<String>,
}

/// One input of a run, as it was when the run started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InputLineage {
    pub name: String,
    /// The file read (for a `table:` input, the table's name).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Rows the worker read (the most of any one pass over a streamed input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// A `table:` input: the version served when the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_version: Option<u64>,
    /// A `registry:` input: `<model>@<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
}

/// Where a table version came from: kept with the version, shown by `recd lineage`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Lineage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginBuild>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// Registry model versions read, `<name>@<version>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputLineage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_sha256: Option<String>,
    pub recd_version: String,
}

/// What a worker measured of its own run, kept in the run history: where its time went
/// (inputs read before the run and pulled by the plugin during it, the model's loading,
/// time inside ONNX Runtime calls with tensors in and out, emitting rows to the daemon, and
/// the plugin's own work, which is the rest of its `run`) and its peak memory. Records
/// written before a field existed read it as 0.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WorkerStats {
    /// Host scoring calls, and (user, item) pairs or rows scored in them.
    pub score_calls: u64,
    pub score_rows: u64,
    pub score_seconds: f64,
    /// The worker's peak resident memory (VmHWM), in bytes.
    pub peak_rss_bytes: u64,
    /// Reading inputs: whole tables before `run`, and streamed batches the plugin pulled.
    pub read_seconds: f64,
    /// Opening ONNX Runtime and the model (and hashing the model file).
    pub model_load_seconds: f64,
    /// Inside `emit`: checking rows, encoding them as Arrow IPC, writing them to the daemon
    /// (which includes waiting while the daemon is busy storing).
    pub emit_seconds: f64,
    /// The plugin's own work: its `run` less scoring, emitting and streamed reads
    /// (candidates, batches, top k, ...).
    pub plugin_seconds: f64,
}

impl WorkerStats {
    /// One line for logs and `recd run`: where the worker's time went.
    pub fn stages_text(&self) -> String {
        format!(
            "read {:.2}s, model load {:.2}s, plugin {:.2}s, score {:.2}s, emit {:.2}s",
            self.read_seconds, self.model_load_seconds, self.plugin_seconds, self.score_seconds, self.emit_seconds
        )
    }
}

/// Where the daemon's side of a run went: checking the streamed rows against the output
/// contract (`collect`), writing them into the staged version (`store`), and making the
/// version current with its flushes (`publish`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DaemonStages {
    pub collect_seconds: f64,
    pub store_seconds: f64,
    pub publish_seconds: f64,
}

impl DaemonStages {
    pub fn stages_text(&self) -> String {
        format!(
            "collect {:.2}s, store {:.2}s, publish {:.2}s",
            self.collect_seconds, self.store_seconds, self.publish_seconds
        )
    }
}

/// Which plugin build a run used: the file's content hash (known from the snapshot, so
/// also for a run that failed), and what its descriptor says (once a worker read it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PluginBuild {
    /// The plugin file the job names.
    pub path: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Store {
    /// Appends a run to its job's history and keeps the newest `keep` of that job.
    pub fn record_run(&self, record: &RunRecord, keep: usize) -> Result<(), StoreError> {
        self.writing(|h| {
            let prefix = history_prefix(&record.job);
            let mut key = prefix.clone();
            key.extend_from_slice(&record.run_id.to_be_bytes());
            h.history.insert(key, serde_json::to_vec(record).expect("record serialises"))?;
            let keys: Vec<sled::IVec> = h.history.scan_prefix(&prefix).keys().collect::<Result<_, _>>()?;
            for old in keys.iter().take(keys.len().saturating_sub(keep)) {
                h.history.remove(old)?;
            }
            h.sync()
        })
    }

    /// The newest `n` runs of `job`, newest first.
    pub fn history(&self, job: &str, n: usize) -> Result<Vec<RunRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.h()?.history.scan_prefix(history_prefix(job)).rev().take(n) {
            let (_, value) = entry?;
            if let Ok(record) = serde_json::from_slice(&value) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// The last tick the scheduler handled for `job` (run, skipped or missed on purpose).
    pub fn last_tick(&self, job: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        let Some(v) = self.h()?.state.get(format!("tick/{job}"))? else { return Ok(None) };
        Ok(parse_tick(&v))
    }

    /// Records `tick` as `job`'s last tick (at start: whatever is stored, even a tick
    /// ahead of a clock that was set back).
    pub fn set_last_tick(&self, job: &str, tick: chrono::DateTime<chrono::Utc>) -> Result<(), StoreError> {
        self.writing(|h| {
            h.state.insert(format!("tick/{job}"), tick.to_rfc3339().as_bytes())?;
            h.sync()
        })
    }

    /// Records `tick` as `job`'s last tick unless a later one is recorded: scheduled ticks
    /// are written from the blocking pool, and two of a fast schedule may land out of
    /// order. Synced either way.
    pub fn advance_last_tick(&self, job: &str, tick: chrono::DateTime<chrono::Utc>) -> Result<(), StoreError> {
        let text = tick.to_rfc3339();
        self.writing(|h| {
            h.state.fetch_and_update(format!("tick/{job}"), |stored| match stored {
                Some(v) if parse_tick(v).is_some_and(|last| last >= tick) => Some(v.to_vec()),
                _ => Some(text.as_bytes().to_vec()),
            })?;
            // Synced even when the stored tick is kept: it may be a later tick whose writer
            // has not synced yet, and the caller counts its tick recorded once this returns.
            h.sync()
        })
    }

    /// Jobs paused with `recd pause` (kept across restarts).
    pub fn paused_jobs(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for key in self.h()?.state.scan_prefix("paused/").keys() {
            out.push(String::from_utf8_lossy(&key?["paused/".len()..]).into_owned());
        }
        Ok(out)
    }

    /// A value the daemon keeps in the state tree under `key` (an experiment's bucket
    /// assignment, `experiment/<name>`).
    pub fn state_value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.h()?.state.get(key)?.map(|v| v.to_vec()))
    }

    /// Writes `value` under `key` in the state tree, flushed.
    pub fn set_state_value(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.writing(|h| {
            h.state.insert(key, value)?;
            h.sync()
        })
    }

    pub fn set_paused(&self, job: &str, paused: bool) -> Result<(), StoreError> {
        let key = format!("paused/{job}");
        self.writing(|h| {
            if paused {
                h.state.insert(key, &b"1"[..])?;
            } else {
                h.state.remove(key)?;
            }
            h.sync()
        })
    }
}

fn parse_tick(stored: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(&String::from_utf8_lossy(stored)).ok().map(|t| t.to_utc())
}

fn history_prefix(job: &str) -> Vec<u8> {
    let mut p = job.as_bytes().to_vec();
    p.push(0);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Retention;

    #[test]
    fn a_tick_recorded_late_never_moves_the_last_tick_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Retention { count: 2, max_age: None }).unwrap();
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        store.advance_last_tick("j", at("2026-12-06T10:00:02Z")).unwrap();
        store.advance_last_tick("j", at("2026-12-06T10:00:01Z")).unwrap();
        assert_eq!(store.last_tick("j").unwrap(), Some(at("2026-12-06T10:00:02Z")));
        store.advance_last_tick("j", at("2026-12-06T10:00:03Z")).unwrap();
        assert_eq!(store.last_tick("j").unwrap(), Some(at("2026-12-06T10:00:03Z")));
        // At start the daemon writes its own clock's time, whatever is stored.
        store.set_last_tick("j", at("2026-12-06T09:00:00Z")).unwrap();
        assert_eq!(store.last_tick("j").unwrap(), Some(at("2026-12-06T09:00:00Z")));
        assert_eq!(store.last_tick("other").unwrap(), None);
    }

    #[test]
    fn history_keeps_the_newest_runs_per_job_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let record = |job: &str, run_id: u64| RunRecord {
            run_id,
            job: job.into(),
            trigger: "manual".into(),
            scheduled_for: None,
            started_at: String::new(),
            ended_at: String::new(),
            seconds: 0.0,
            status: "ok".into(),
            table: job.into(),
            ..RunRecord::default()
        };
        {
            let store = Store::open(dir.path(), Retention { count: 2, max_age: None }).unwrap();
            for id in [5, 300, 7, 1000] {
                store.record_run(&record("a", id), 3).unwrap();
            }
            store.record_run(&record("ab", 1), 3).unwrap();
        }
        let store = Store::open(dir.path(), Retention { count: 2, max_age: None }).unwrap();
        let ids: Vec<u64> = store.history("a", 10).unwrap().iter().map(|r| r.run_id).collect();
        assert_eq!(ids, vec![1000, 300, 7]);
        assert_eq!(store.history("ab", 10).unwrap().len(), 1);
    }
}
