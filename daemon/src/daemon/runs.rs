//! The life of a run: what triggered it, the overlap policy, the run itself on a blocking
//! thread, its record, retries with backoff and the jobs chained after it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};

use super::*;

/// Runs kept in the history per job.
pub const HISTORY_PER_JOB: usize = 50;

/// Why `trigger` did not end in a published version. Only `Failed` means a run happened;
/// the others are why none started.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("no job named `{name}` (jobs: {known})")]
    NoJob { name: String, known: String },
    /// `why`: "suspended" (`suspend = true` in its file) or "paused" (`recd pause`).
    #[error("job `{name}` is {why}")]
    Suspended { name: String, why: &'static str },
    /// The overlap policy turned the trigger away (recorded as a `skipped` run).
    #[error("skipped: {0}")]
    Skipped(String),
    /// A retry that a later run's outcome, or a lower `retries`, made moot.
    #[error("retry dropped: {0}")]
    RetryDropped(&'static str),
    #[error("run {run_id} of job {job} failed: {error}")]
    Failed { run_id: u64, job: String, error: RunError },
    /// The run made a version its gate held (`recd promote` or `recd discard` settle it).
    #[error("run {run_id} of job {job} was gated: {why}")]
    Gated { run_id: u64, job: String, why: String },
}

#[derive(Default)]
pub(super) struct JobState {
    pub(super) running: Option<Arc<RunControl>>,
    pub(super) queued: bool,
    /// Which retry may still start: moved on as each run of the job ends, so one chain of
    /// retries waits at a time and a success ends it.
    pub(super) retry_turn: u64,
}

/// What asked for a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Manual,
    Schedule(DateTime<Utc>),
    CatchUp(DateTime<Utc>),
    /// Retry number N of a failed run, and the job's retry turn it belongs to (see
    /// `JobState::retry_turn`).
    Retry(u32, u64),
    After(String),
}

impl Trigger {
    /// Every run that starts by itself (schedule, catch-up, chain, retry) honours
    /// `suspend` and `recd pause`; only a manual run does not.
    pub(super) fn is_automatic(&self) -> bool {
        !matches!(self, Trigger::Manual)
    }
}

impl Trigger {
    pub(super) fn tick(&self) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Schedule(t) | Trigger::CatchUp(t) => Some(*t),
            _ => None,
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Manual => write!(f, "manual"),
            Trigger::Schedule(_) => write!(f, "schedule"),
            Trigger::CatchUp(_) => write!(f, "catch-up"),
            Trigger::Retry(n, _) => write!(f, "retry {n}"),
            Trigger::After(up) => write!(f, "after {up}"),
        }
    }
}

impl Daemon {
    /// `recd import TABLE DIR...`: publishes exported parts as one version of `table` (see
    /// [`import::import`]), recorded in the history of the job that exported them.
    pub async fn import(
        self: &Arc<Self>,
        table: &str,
        dirs: Vec<std::path::PathBuf>,
    ) -> Result<import::Imported, String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("the daemon is shutting down".into());
        }
        let run_id = self.next_run_id.fetch_add(1, Ordering::Relaxed);
        let (daemon, name) = (Arc::clone(self), table.to_string());
        let started = Utc::now();
        let span = tracing::info_span!("import", table = %table, run_id);
        let gate = self.jobs().jobs.values().find(|j| j.table == table).map(|j| j.gate.clone()).unwrap_or_default();
        let outcome = tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            let gate = crate::holdout::loaded(&gate).map_err(import::ImportError::Refused)?;
            import::import(&daemon.store, &name, &dirs, run_id, &gate)
        })
        .await
        .map_err(|e| format!("import task failed: {e}"))?;
        match outcome {
            Ok(imported) => {
                let ended = Utc::now();
                let v = &imported.version;
                tracing::info!(
                    table,
                    version = v.version,
                    users = v.users,
                    rows = v.rows,
                    "imported {} parts",
                    imported.parts
                );
                self.write_record(RunRecord {
                    run_id,
                    job: imported.job.clone(),
                    trigger: "import".into(),
                    scheduled_for: None,
                    started_at: stamp(started),
                    ended_at: stamp(ended),
                    seconds: (ended - started).num_milliseconds() as f64 / 1000.0,
                    status: if v.held { "gated" } else { "ok" }.into(),
                    table: table.to_string(),
                    version: Some(v.version),
                    users: v.users,
                    rows: v.rows,
                    gate: v.gate.clone(),
                    error: v.held.then(|| {
                        let why = v.gate.as_ref().map(|g| g.failed.join("; ")).unwrap_or_default();
                        format!("table {table} version {} held by its gate: {why}", v.version)
                    }),
                    ..RunRecord::default()
                })
                .await;
                Ok(imported)
            }
            Err(e) => {
                tracing::warn!(table, "import refused: {e}");
                Err(e.to_string())
            }
        }
    }

    /// `recd run JOB`: runs it now (overlap policy applies) and waits for the outcome.
    pub async fn run_job(self: &Arc<Self>, name: &str) -> Result<RunReport, TriggerError> {
        self.trigger(name, Trigger::Manual).await
    }

    /// Runs `name` for `trigger`, applying its policies, and records the run.
    pub async fn trigger(self: &Arc<Self>, name: &str, trigger: Trigger) -> Result<RunReport, TriggerError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(TriggerError::ShuttingDown);
        }
        let job = self.runnable(name, &trigger)?;
        self.retry_due(name, &trigger)?;
        let control = self.acquire(&job, &trigger).await?;
        // A run that waited for its turn (`overlap = "queue"` or `"replace"`) runs the job
        // as it is now: its file may have changed, turned `suspend` on, or gone meanwhile,
        // and a retry may have become moot.
        let job = match self.runnable(name, &trigger).and_then(|job| self.retry_due(name, &trigger).map(|()| job)) {
            Ok(job) => job,
            Err(e) => {
                self.release(name);
                return Err(e);
            }
        };
        let run_id = self.next_run_id.fetch_add(1, Ordering::Relaxed);
        let started = Utc::now();
        let (daemon, run_job) = (Arc::clone(self), job.clone());
        let span = tracing::info_span!("run", job = %name, run_id, trigger = %trigger);
        let worker_control = Arc::clone(&control);
        let result = tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            tracing::info!(table = %run_job.table, "run started");
            let (config, store, plugins) = (&daemon.config, &daemon.store, &daemon.plugins);
            match &run_job.command {
                Some(command) => run::execute_command(&run_job, command, run_id, config, &worker_control),
                None => run::execute(&run_job, run_id, config, store, plugins, &worker_control, Shard::WHOLE),
            }
        })
        .await
        .unwrap_or_else(|e| Err(RunError::Failed(format!("run task failed: {e}"))));
        // Listed before the slot is freed (shutdown waits for the slots, then writes what is
        // listed), written after it: a sync does not hold up a queued or skipped trigger.
        self.record(&job, run_id, &trigger, started, &result, &control);
        // Before the slot is freed: a run that takes it next and ends first must not see
        // its own outcome overtaken by this one's.
        let retry_turn = self.next_retry_turn(name);
        self.release(name);
        self.write_listed_records().await;
        match &result {
            Ok(report) if report.held().is_some() => {
                // Nothing new is served: nothing downstream runs, and a retry would be gated the same.
                tracing::warn!(%trigger, "{report}");
                return Err(TriggerError::Gated {
                    run_id,
                    job: name.to_string(),
                    why: report.held().unwrap_or_default(),
                });
            }
            Ok(report) => {
                tracing::info!(%trigger, "{report}");
                self.start_downstream(name);
            }
            Err(e @ RunError::Superseded(_)) => tracing::warn!(job = %name, run_id, %trigger, "run superseded: {e}"),
            Err(e) => {
                tracing::error!(job = %name, run_id, %trigger, "run failed: {e}");
                self.schedule_retry(&job, &trigger, e, retry_turn);
            }
        }
        result.map_err(|error| TriggerError::Failed { run_id, job: name.to_string(), error })
    }

    /// The job's definition in force, if `trigger` may run it now: an automatic trigger
    /// honours `suspend` and `recd pause`.
    fn runnable(&self, name: &str, trigger: &Trigger) -> Result<Job, TriggerError> {
        let job = self.job(name)?;
        if trigger.is_automatic() {
            let why = if job.policy.suspend { Some("suspended") } else { self.is_paused(name).then_some("paused") };
            if let Some(why) = why {
                return Err(TriggerError::Suspended { name: name.to_string(), why });
            }
        }
        Ok(job)
    }

    /// Claims the job for a new run according to its overlap policy.
    pub(super) async fn acquire(
        self: &Arc<Self>,
        job: &Job,
        trigger: &Trigger,
    ) -> Result<Arc<RunControl>, TriggerError> {
        let mut waiting_in_queue = false;
        loop {
            // Registered before the slot is looked at, so a release in between still wakes us.
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.shutting_down.load(Ordering::Relaxed) {
                return Err(TriggerError::ShuttingDown);
            }
            // The lock is let go before the skip is recorded (an await).
            let skipped = {
                let mut states = self.states.lock().expect("states");
                let st = states.entry(job.name.clone()).or_default();
                let Some(running) = &st.running else {
                    if waiting_in_queue {
                        st.queued = false;
                    }
                    let control = RunControl::new();
                    st.running = Some(Arc::clone(&control));
                    return Ok(control);
                };
                // A retry that meets a running run is moot: that run's end supersedes it
                // (see `retry_due`). It must not cancel the run (`replace`) nor take the
                // queue's place (`queue`) only to drop itself once it gets the slot.
                if matches!(trigger, Trigger::Retry(..)) {
                    return Err(TriggerError::RetryDropped("a later run of the job is going"));
                }
                match job.policy.overlap {
                    Overlap::Skip => Some("the previous run is still going (overlap = \"skip\")"),
                    Overlap::Replace => {
                        running.cancel("replaced by a newer run (overlap = \"replace\")");
                        None
                    }
                    Overlap::Queue if !waiting_in_queue && st.queued => {
                        Some("a run is already queued (overlap = \"queue\")")
                    }
                    Overlap::Queue if !waiting_in_queue => {
                        st.queued = true;
                        waiting_in_queue = true;
                        None
                    }
                    Overlap::Queue => None,
                }
            };
            if let Some(reason) = skipped {
                return Err(self.skip(job, trigger, reason).await);
            }
            freed.await;
        }
    }

    pub(super) fn release(&self, name: &str) {
        if let Some(st) = self.states.lock().expect("states").get_mut(name) {
            st.running = None;
        }
        self.slot_freed.notify_waiters();
    }

    /// Records a tick that did not run, and returns the reason.
    pub(super) async fn skip(self: &Arc<Self>, job: &Job, trigger: &Trigger, reason: &str) -> TriggerError {
        let run_id = self.next_run_id.fetch_add(1, Ordering::Relaxed);
        let now = Utc::now();
        self.write_record(RunRecord {
            run_id,
            job: job.name.clone(),
            trigger: trigger.to_string(),
            scheduled_for: trigger.tick().map(stamp),
            started_at: stamp(now),
            ended_at: stamp(now),
            seconds: 0.0,
            status: "skipped".into(),
            table: job.table.clone(),
            version: None,
            users: 0,
            rows: 0,
            error: Some(reason.to_string()),
            ..RunRecord::default()
        })
        .await;
        TriggerError::Skipped(reason.to_string())
    }

    /// Lists the run's record for the store (see [`Daemon::write_listed_records`]).
    pub(super) fn record(
        &self,
        job: &Job,
        run_id: u64,
        trigger: &Trigger,
        started: DateTime<Utc>,
        result: &Result<RunReport, RunError>,
        control: &RunControl,
    ) {
        let ended = Utc::now();
        let (plugin, model_sha256) = control.lineage();
        let (models, output) = control.models_and_output();
        let (inputs, params_sha256) = control.inputs();
        let mut record = RunRecord {
            run_id,
            job: job.name.clone(),
            trigger: trigger.to_string(),
            scheduled_for: trigger.tick().map(stamp),
            started_at: stamp(started),
            ended_at: stamp(ended),
            seconds: (ended - started).num_milliseconds() as f64 / 1000.0,
            status: "ok".into(),
            table: job.table.clone(),
            plugin,
            model_sha256,
            models,
            output,
            inputs,
            params_sha256,
            recd_version: Some(env!("CARGO_PKG_VERSION").into()),
            ..RunRecord::default()
        };
        match result {
            Ok(r) => {
                match &r.published {
                    run::Published::Table(v) => {
                        record.version = Some(v.version);
                        record.users = v.users;
                        record.rows = v.rows;
                        record.gate.clone_from(&v.gate);
                    }
                    run::Published::Model(m) => record.produced = Some(format!("{}@{}", m.name, m.version)),
                    run::Published::Nothing => {}
                }
                if let Some(held) = r.held() {
                    record.status = "gated".into();
                    record.error = Some(held);
                }
                record.provider = Some(r.provider.clone());
                record.worker = Some(r.stats);
                record.stages = Some(r.stages);
                record.warnings.clone_from(&r.warnings);
            }
            Err(e) => {
                record.status = e.status().into();
                record.error = Some(e.to_string());
            }
        }
        self.list_record(record);
    }

    /// Counts a finished run and lists its record for the store.
    fn list_record(&self, record: RunRecord) {
        self.metrics.run_finished(&record.job, &record.status, record.seconds, &record.table, record.rows);
        self.unrecorded.lock().expect("unrecorded").push(record);
    }

    /// Lists a record and writes it.
    pub(super) async fn write_record(self: &Arc<Self>, record: RunRecord) {
        self.list_record(record);
        self.write_listed_records().await;
    }

    /// Writes the listed records. Each write syncs the store's files (a journal commit,
    /// longer while other programs write to the filesystem): on the blocking pool, never
    /// on the runtime's threads. A record the task could not write waits in memory for
    /// `watch_store`.
    async fn write_listed_records(self: &Arc<Self>) {
        let daemon = Arc::clone(self);
        if let Err(e) = tokio::task::spawn_blocking(move || daemon.write_unrecorded()).await {
            tracing::error!("writing run records: {e}");
        }
    }

    /// Writes the run records waiting for the store, oldest first; those it cannot write
    /// wait for the next try. One writer at a time, and the list is not locked while a
    /// record is written (a sync): `history` and `STATUS` read it from the runtime's
    /// threads. A record is taken off the list once written, so readers see it in one
    /// place or both (`history` keeps one), never in neither.
    pub fn write_unrecorded(&self) {
        // Guards nothing but the turn: a panic while writing leaves nothing to repair.
        let _one_writer = self.recording.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let Some(record) = self.unrecorded.lock().expect("unrecorded").first().cloned() else { return };
            if let Err(e) = self.store.record_run(&record, HISTORY_PER_JOB) {
                let waiting = self.unrecorded.lock().expect("unrecorded").len();
                tracing::warn!(job = %record.job, run_id = record.run_id, waiting, "run record kept in memory until the store takes writes again: {e}");
                return;
            }
            self.unrecorded.lock().expect("unrecorded").retain(|r| r.run_id != record.run_id);
        }
    }

    /// The newest `n` runs of `job`, newest first, those waiting for the store included.
    pub fn history(&self, job: &str, n: usize) -> Result<Vec<RunRecord>, String> {
        let mut runs: Vec<RunRecord> =
            self.unrecorded.lock().expect("unrecorded").iter().rev().filter(|r| r.job == job).cloned().collect();
        match self.store.history(job, n) {
            Ok(stored) => runs.extend(stored),
            Err(e) if runs.is_empty() => return Err(e.to_string()),
            Err(e) => tracing::warn!("reading the run history: {e}"),
        }
        runs.sort_by_key(|r| std::cmp::Reverse(r.run_id));
        runs.dedup_by_key(|r| r.run_id);
        runs.truncate(n);
        Ok(runs)
    }

    /// Retries a failed run after its backoff, as part of `turn` (the retry turn its end
    /// took): a run of the job that ends meanwhile makes it moot (`retry_due`).
    pub(super) fn schedule_retry(self: &Arc<Self>, job: &Job, trigger: &Trigger, err: &RunError, turn: u64) {
        if matches!(err, RunError::Cancelled(_) | RunError::Superseded(_)) {
            return;
        }
        let attempt = match trigger {
            Trigger::Retry(n, _) => n + 1,
            _ => 1,
        };
        if attempt > job.policy.retries {
            return;
        }
        let wait = job.policy.backoff(attempt);
        tracing::info!(job = %job.name, attempt, "retrying in {}s", wait.as_secs_f64());
        let (daemon, name) = (Arc::clone(self), job.name.clone());
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            daemon.spawn_trigger(&name, Trigger::Retry(attempt, turn));
        });
    }

    /// Moves the job's retry turn on as a run of it ends, whatever its outcome: a retry
    /// still waiting is moot (one chain of retries at a time, a success ends it). Gives the
    /// new turn.
    fn next_retry_turn(&self, name: &str) -> u64 {
        let mut states = self.states.lock().expect("states");
        let state = states.entry(name.to_string()).or_default();
        state.retry_turn += 1;
        state.retry_turn
    }

    /// For a retry: Err when it must not start, because a later run of the job ended
    /// (succeeded, or failed and started its own retries) or the job's file now allows
    /// fewer retries. (A job that is gone gets "no job" from `runnable`.)
    fn retry_due(&self, name: &str, trigger: &Trigger) -> Result<(), TriggerError> {
        let Trigger::Retry(attempt, turn) = *trigger else { return Ok(()) };
        let now = self.states.lock().expect("states").get(name).map(|s| s.retry_turn);
        if now != Some(turn) {
            return Err(TriggerError::RetryDropped("a later run of the job ended meanwhile"));
        }
        match self.job(name) {
            Ok(job) if attempt > job.policy.retries => {
                Err(TriggerError::RetryDropped("the job's `retries` is lower now"))
            }
            _ => Ok(()),
        }
    }

    /// Starts the jobs that run `after` this one.
    pub(super) fn start_downstream(self: &Arc<Self>, name: &str) {
        let downstream: Vec<String> =
            self.jobs().jobs.values().filter(|j| j.after.iter().any(|a| a == name)).map(|j| j.name.clone()).collect();
        for job in downstream {
            self.spawn_trigger(&job, Trigger::After(name.to_string()));
        }
    }

    /// Progress of the job's running run, if one is going and has reported any.
    pub fn progress(&self, name: &str) -> Option<(u64, u64)> {
        let states = self.states.lock().expect("states");
        states.get(name)?.running.as_ref()?.progress()
    }
}
