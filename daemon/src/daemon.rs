//! The serving process's state and the life of a run: job definitions (last good per
//! file), which jobs are running, paused or queued, and the policies applied when a run is
//! asked for: overlap, suspension, retries with backoff, chains, run history.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::import;
use crate::job::{self, Job, JobError, Overlap};
use crate::metrics::Metrics;
use crate::plugins::{self, ProbeCache, Registry};
use crate::run::{self, RunControl, RunError, RunReport};
use crate::schedule;
use crate::scheduler::Scheduler;
use crate::shard::Shard;
use crate::store::{RunRecord, Store};

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
    #[error("job `{0}` is suspended")]
    Suspended(String),
    /// The overlap policy turned the trigger away (recorded as a `skipped` run).
    #[error("skipped: {0}")]
    Skipped(String),
    #[error("run {run_id} of job {job} failed: {error}")]
    Failed { run_id: u64, job: String, error: RunError },
}

pub struct Daemon {
    pub config: Config,
    pub store: Arc<Store>,
    pub metrics: Metrics,
    pub plugins: Registry,
    probes: ProbeCache,
    jobs: RwLock<JobSet>,
    states: Mutex<HashMap<String, JobState>>,
    /// Woken when a run's slot frees (or the daemon shuts down): a queued or replacing run
    /// waits on it instead of polling.
    slot_freed: tokio::sync::Notify,
    next_run_id: AtomicU64,
    scheduler: Mutex<Option<Arc<Scheduler>>>,
    shutting_down: AtomicBool,
    /// Run records the store could not take (a failed write): kept here, shown by
    /// `recd history`, and written once the store is opened again.
    unrecorded: Mutex<Vec<RunRecord>>,
}

#[derive(Default, Clone)]
pub struct JobSet {
    pub jobs: BTreeMap<String, Job>,
    /// Per file, the error that keeps its previous definition (if any) in force.
    pub errors: BTreeMap<String, JobError>,
}

#[derive(Default)]
struct JobState {
    running: Option<Arc<RunControl>>,
    queued: bool,
}

/// What asked for a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Manual,
    Schedule(DateTime<Utc>),
    CatchUp(DateTime<Utc>),
    Retry(u32),
    After(String),
}

impl Trigger {
    /// Every run that starts by itself (schedule, catch-up, chain, retry) honours
    /// `suspend` and `recd pause`; only a manual run does not.
    fn is_automatic(&self) -> bool {
        !matches!(self, Trigger::Manual)
    }
}

impl Trigger {
    fn tick(&self) -> Option<DateTime<Utc>> {
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
            Trigger::Retry(n) => write!(f, "retry {n}"),
            Trigger::After(up) => write!(f, "after {up}"),
        }
    }
}

impl Daemon {
    pub fn new(config: Config, store: Store) -> Arc<Daemon> {
        // Run ids only need to be unique and increasing across restarts.
        let seed = Utc::now().timestamp_millis().max(0) as u64;
        Arc::new(Daemon {
            plugins: Registry::new(&config.data_dir),
            probes: plugins::new_probe_cache(),
            config,
            store: Arc::new(store),
            metrics: Metrics::default(),
            jobs: RwLock::new(JobSet::default()),
            states: Mutex::new(HashMap::new()),
            slot_freed: tokio::sync::Notify::new(),
            next_run_id: AtomicU64::new(seed),
            scheduler: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            unrecorded: Mutex::new(Vec::new()),
        })
    }

    /// Starts the timers; first runs, once, each missed tick that is within its job's
    /// `starting_deadline_seconds` (the daemon was down when it was due).
    pub async fn start_scheduler(self: &Arc<Self>) -> anyhow::Result<()> {
        let now = Utc::now();
        for (name, job) in self.jobs().jobs {
            let Some(sched) = &job.schedule else { continue };
            let last = self.store.last_tick(&name)?;
            if let (Some(deadline), Some(last)) = (job.policy.starting_deadline, last)
                && let Some(missed) = schedule::missed_tick_to_run(sched, last, now, deadline)
            {
                tracing::info!(job = %name, missed = %missed, "running a tick missed while the daemon was down");
                self.spawn_trigger(&name, Trigger::CatchUp(missed));
            }
            self.store.set_last_tick(&name, now)?;
        }
        let scheduler = Scheduler::start().await?;
        *self.scheduler.lock().expect("scheduler") = Some(scheduler);
        self.sync_schedule().await;
        Ok(())
    }

    async fn sync_schedule(self: &Arc<Self>) {
        let jobs = self.jobs().jobs;
        let scheduler = self.scheduler.lock().expect("scheduler").clone();
        if let Some(s) = scheduler {
            let me: Arc<dyn crate::scheduler::OnTick> = Arc::clone(self) as _;
            s.sync(&jobs, Arc::downgrade(&me)).await;
        }
    }

    /// A scheduled tick of `name` is due.
    pub fn on_tick(self: &Arc<Self>, name: &str, tick: DateTime<Utc>) {
        if let Err(e) = self.store.set_last_tick(name, tick) {
            tracing::error!(job = %name, "recording the tick: {e}");
        }
        self.spawn_trigger(name, Trigger::Schedule(tick));
    }

    fn spawn_trigger(self: &Arc<Self>, name: &str, trigger: Trigger) {
        let (daemon, name) = (Arc::clone(self), name.to_string());
        tokio::spawn(async move {
            match daemon.trigger(&name, trigger.clone()).await {
                // logged where it failed, with the run's span
                Ok(_) | Err(TriggerError::Failed { .. }) => {}
                Err(e) => tracing::info!(job = %name, %trigger, "no run: {e}"),
            }
        });
    }

    /// Re-reads the jobs folder. A file that fails keeps its previous definition; a
    /// removed file removes its job. Returns the errors, if any.
    pub async fn reload(self: &Arc<Self>) -> anyhow::Result<Vec<JobError>> {
        let files = job_files(&self.config.jobs_dir)?;
        // Parsing is cheap; checking plugins spawns probe processes: off the runtime.
        let daemon = Arc::clone(self);
        let loaded = tokio::task::spawn_blocking(move || {
            files.iter().map(|file| (file.clone(), daemon.load_and_check(file))).collect::<Vec<_>>()
        })
        .await?;
        let errors = {
            let mut set = self.jobs.write().expect("jobs lock");
            let previous = std::mem::take(&mut *set);
            for (file, result) in loaded {
                let name = job::job_name(&file);
                match result {
                    Ok(job) => {
                        set.jobs.insert(name, job);
                    }
                    Err(err) => keep_previous(&mut set, &previous, &name, file.display().to_string(), err),
                }
            }
            let publishers = self.publishers();
            let owner = |table: &str| {
                let running = previous.jobs.values().find(|j| j.table == table).map(|j| j.name.clone());
                running.or_else(|| publishers.get(table).cloned())
            };
            let mut refused = job::check_links(&set.jobs);
            refused.extend(job::check_tables(&set.jobs, &owner));
            for (file, err) in refused {
                let name = job::job_name(std::path::Path::new(&file));
                set.jobs.remove(&name);
                keep_previous(&mut set, &previous, &name, file, err);
            }
            set.errors.values().cloned().collect()
        };
        self.sync_schedule().await;
        Ok(errors)
    }

    /// Each table's publishing job: the job that published its current version.
    fn publishers(&self) -> HashMap<String, String> {
        let tables = self.store.tables().unwrap_or_default();
        tables
            .into_iter()
            .filter_map(|(table, meta)| {
                let current = meta.versions.iter().find(|v| v.version == meta.current)?;
                Some((table, current.job.clone()))
            })
            .collect()
    }

    /// A job file parsed, validated, resolved, and its plugin checked (see
    /// `plugins::Registry::check_job`).
    fn load_and_check(&self, file: &std::path::Path) -> Result<Job, JobError> {
        let job = job::load(file, &self.config)?;
        self.plugins
            .check_job(&job, &self.config.onnxruntime, &self.probes)
            .map_err(|(field, message)| job.probe_error(&field, message))?;
        Ok(job)
    }

    pub fn jobs(&self) -> JobSet {
        self.jobs.read().expect("jobs lock").clone()
    }

    fn job(&self, name: &str) -> Result<Job, TriggerError> {
        let set = self.jobs.read().expect("jobs lock");
        set.jobs.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = set.jobs.keys().map(String::as_str).collect();
            TriggerError::NoJob { name: name.to_string(), known: known.join(", ") }
        })
    }

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
        let outcome = tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            import::import(&daemon.store, &name, &dirs, run_id)
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
                    status: "ok".into(),
                    table: table.to_string(),
                    version: Some(v.version),
                    users: v.users,
                    rows: v.rows,
                    ..RunRecord::default()
                });
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
        let job = self.job(name)?;
        if trigger.is_automatic() && (job.policy.suspend || self.is_paused(name)) {
            return Err(TriggerError::Suspended(name.to_string()));
        }
        let control = self.acquire(&job, &trigger).await?;
        let run_id = self.next_run_id.fetch_add(1, Ordering::Relaxed);
        let started = Utc::now();
        let (daemon, run_job) = (Arc::clone(self), job.clone());
        let span = tracing::info_span!("run", job = %name, run_id, trigger = %trigger);
        let worker_control = Arc::clone(&control);
        let result = tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            tracing::info!(table = %run_job.table, "run started");
            let (config, store, plugins) = (&daemon.config, &daemon.store, &daemon.plugins);
            run::execute(&run_job, run_id, config, store, plugins, &worker_control, Shard::WHOLE)
        })
        .await
        .unwrap_or_else(|e| Err(RunError::Failed(format!("run task failed: {e}"))));
        self.release(name);
        self.record(&job, run_id, &trigger, started, &result, &control);
        match &result {
            Ok(report) => {
                tracing::info!(%trigger, "{report}");
                self.start_downstream(name);
            }
            Err(e) => {
                tracing::error!(job = %name, run_id, %trigger, "run failed: {e}");
                self.schedule_retry(&job, &trigger, e);
            }
        }
        result.map_err(|error| TriggerError::Failed { run_id, job: name.to_string(), error })
    }

    /// Claims the job for a new run according to its overlap policy.
    async fn acquire(&self, job: &Job, trigger: &Trigger) -> Result<Arc<RunControl>, TriggerError> {
        let mut waiting_in_queue = false;
        loop {
            // Registered before the slot is looked at, so a release in between still wakes us.
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.shutting_down.load(Ordering::Relaxed) {
                return Err(TriggerError::ShuttingDown);
            }
            {
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
                match job.policy.overlap {
                    Overlap::Skip => {
                        drop(states);
                        return Err(self.skip(job, trigger, "the previous run is still going (overlap = \"skip\")"));
                    }
                    Overlap::Replace => running.cancel("replaced by a newer run (overlap = \"replace\")"),
                    Overlap::Queue if !waiting_in_queue => {
                        if st.queued {
                            drop(states);
                            return Err(self.skip(job, trigger, "a run is already queued (overlap = \"queue\")"));
                        }
                        st.queued = true;
                        waiting_in_queue = true;
                    }
                    Overlap::Queue => {}
                }
            }
            freed.await;
        }
    }

    fn release(&self, name: &str) {
        if let Some(st) = self.states.lock().expect("states").get_mut(name) {
            st.running = None;
        }
        self.slot_freed.notify_waiters();
    }

    /// Records a tick that did not run, and returns the reason.
    fn skip(&self, job: &Job, trigger: &Trigger, reason: &str) -> TriggerError {
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
        });
        TriggerError::Skipped(reason.to_string())
    }

    fn record(
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
            version: None,
            users: 0,
            rows: 0,
            provider: None,
            error: None,
            worker: None,
            plugin,
            model_sha256,
        };
        match result {
            Ok(r) => {
                record.version = Some(r.version.version);
                record.users = r.version.users;
                record.rows = r.version.rows;
                record.provider = Some(r.provider.clone());
                record.worker = Some(r.stats);
            }
            Err(e) => {
                record.status = e.status().into();
                record.error = Some(e.to_string());
            }
        }
        self.write_record(record);
    }

    fn write_record(&self, record: RunRecord) {
        self.metrics.run_finished(&record.job, &record.status, record.seconds, &record.table, record.rows);
        self.unrecorded.lock().expect("unrecorded").push(record);
        self.write_unrecorded();
    }

    /// Writes the run records waiting for the store, oldest first; those it cannot write
    /// wait for the next try.
    fn write_unrecorded(&self) {
        let mut waiting = self.unrecorded.lock().expect("unrecorded");
        while let Some(record) = waiting.first() {
            if let Err(e) = self.store.record_run(record, HISTORY_PER_JOB) {
                tracing::warn!(job = %record.job, run_id = record.run_id, waiting = waiting.len(), "run record kept in memory until the store takes writes again: {e}");
                return;
            }
            waiting.remove(0);
        }
    }

    /// While a failed write keeps the store closed to writes: tries to open it again
    /// every `every` (see `Store::recover`), then writes the run records that waited.
    pub fn watch_store(self: &Arc<Self>, every: Duration) {
        let daemon = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(daemon) = daemon.upgrade() else { return };
                let waiting = !daemon.unrecorded.lock().expect("unrecorded").is_empty();
                if daemon.store.failure().is_none() && !waiting {
                    continue;
                }
                let store = Arc::clone(&daemon.store);
                let recovered = tokio::task::spawn_blocking(move || store.recover()).await;
                if let Ok(Ok(())) = recovered {
                    let d = Arc::clone(&daemon);
                    let _ = tokio::task::spawn_blocking(move || d.write_unrecorded()).await;
                }
            }
        });
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

    fn schedule_retry(self: &Arc<Self>, job: &Job, trigger: &Trigger, err: &RunError) {
        if matches!(err, RunError::Cancelled(_)) {
            return;
        }
        let attempt = match trigger {
            Trigger::Retry(n) => n + 1,
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
            daemon.spawn_trigger(&name, Trigger::Retry(attempt));
        });
    }

    /// Starts the jobs that run `after` this one.
    fn start_downstream(self: &Arc<Self>, name: &str) {
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

    fn is_paused(&self, name: &str) -> bool {
        self.store.paused_jobs().map(|p| p.iter().any(|j| j == name)).unwrap_or(false)
    }

    /// `recd pause|resume JOB`: stops or restarts scheduled and chained runs.
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<(), String> {
        if paused {
            self.job(name).map_err(|e| e.to_string())?;
        }
        self.store.set_paused(name, paused).map_err(|e| e.to_string())
    }

    /// Stops new runs, lets running ones finish for up to `grace`, then cancels them and
    /// waits for their workers to end (their versions are discarded).
    pub async fn shutdown(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.slot_freed.notify_waiters();
        let scheduler = self.scheduler.lock().expect("scheduler").take();
        if let Some(s) = scheduler {
            s.shutdown().await;
        }
        let deadline = tokio::time::Instant::now().checked_add(grace);
        let mut cancelled = false;
        loop {
            let running: Vec<Arc<RunControl>> =
                self.states.lock().expect("states").values().filter_map(|s| s.running.clone()).collect();
            if running.is_empty() {
                return;
            }
            if !cancelled && deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                tracing::warn!(runs = running.len(), "grace period over: cancelling running runs");
                running.iter().for_each(|c| c.cancel("the daemon is shutting down"));
                cancelled = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

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
        let _ = writeln!(s, "tables:");
        match self.store.tables() {
            Ok(tables) => {
                for (name, meta) in tables {
                    let serving = self.store.served(&name).map(|t| t.version).unwrap_or(0);
                    // Served until removed: say so, or a deleted job's table looks alive.
                    let orphan =
                        if jobs.jobs.values().any(|j| j.table == name) { "" } else { " (no job publishes it)" };
                    let _ =
                        writeln!(s, "  {name}: current version {}, serving version {serving}{orphan}", meta.current);
                    for v in meta.versions.iter().rev() {
                        let _ = writeln!(
                            s,
                            "    version {}: {} users, {} rows, published {} by job {} run {}, checksum {}",
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
        if !set.errors.is_empty() {
            let _ = writeln!(s, "job file errors:");
            for e in set.errors.values() {
                let _ = writeln!(s, "  {e}");
            }
        }
        s
    }

    /// One job's schedule, state and next tick, for `recd status`.
    fn job_line(&self, job: &Job) -> String {
        let running = self.states.lock().expect("states").get(&job.name).is_some_and(|s| s.running.is_some());
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
        let when = match &job.schedule {
            Some(sched) => {
                let next = sched.upcoming(Utc::now(), 1).first().map(schedule::show).unwrap_or_default();
                format!("schedule {:?} ({}), next {next}", sched.expr, sched.tz)
            }
            None if !job.after.is_empty() => format!("after {}", job.after.join(", ")),
            None => "manual".into(),
        };
        let flags = if flags.is_empty() { String::new() } else { format!(" [{}]", flags.join(", ")) };
        format!("{when}, table {}{flags}", job.table)
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
}

fn keep_previous(set: &mut JobSet, previous: &JobSet, name: &str, file: String, err: JobError) {
    tracing::error!(file = %file, "job file rejected, previous definition kept: {err}");
    if let Some(old) = previous.jobs.get(name) {
        set.jobs.insert(name.to_string(), old.clone());
    }
    set.errors.insert(file, err);
}

/// The `*.toml` files of the jobs folder, sorted.
pub fn job_files(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("jobs folder {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    Ok(files)
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
impl crate::scheduler::OnTick for Daemon {
    fn on_tick(self: Arc<Self>, job: &str, tick: DateTime<Utc>) {
        Daemon::on_tick(&self, job, tick);
    }
}
