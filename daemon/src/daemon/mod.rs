//! The serving process's state and the life of a run: job definitions (last good per
//! file), which jobs are running, paused or queued, and the policies applied when a run is
//! asked for: overlap, suspension, retries with backoff, chains, run history.
//!
//! `jobs.rs` keeps the job set (reload, pause), `runs.rs` the life of a run (trigger,
//! overlap, retries, chains, records), `report.rs` the text of STATUS and JOBS.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::import;
use crate::job::{self, Job, JobError, Overlap};
use crate::metrics::Metrics;
use crate::models;
use crate::plugins::{self, ProbeCache, Registry};
use crate::run::{self, RunControl, RunError, RunReport};
use crate::schedule;
use crate::scheduler::Scheduler;
use crate::shard::Shard;
use crate::store::{RunRecord, Store, StoreError};

/// The serving process: config, store, plugins, jobs and the state of their runs.
pub struct Daemon {
    pub config: Config,
    pub store: Arc<Store>,
    pub metrics: Metrics,
    pub plugins: Registry,
    probes: ProbeCache,
    jobs: RwLock<JobSet>,
    /// Held through each reload (the watcher's, SIGHUP's, `recd reload`'s): one at a time,
    /// in the order they began, so a slow one cannot put back what a newer one read.
    reloading: tokio::sync::Mutex<()>,
    /// The live experiments, read on the serving path (apart from the job set, which is
    /// cloned by whoever reads it).
    experiments: RwLock<Arc<crate::experiment::Experiments>>,
    states: Mutex<HashMap<String, JobState>>,
    /// Woken when a run's slot frees (or the daemon shuts down): a queued or replacing run
    /// waits on it instead of polling.
    slot_freed: tokio::sync::Notify,
    next_run_id: AtomicU64,
    scheduler: Mutex<Option<Arc<Scheduler>>>,
    shutting_down: AtomicBool,
    /// Run records not in the store yet: each waits here while it is written, and those
    /// the store could not take (a failed write) until it is opened again. `recd history`
    /// shows them.
    unrecorded: Mutex<Vec<RunRecord>>,
    /// Held by the one thread writing `unrecorded` to the store.
    recording: Mutex<()>,
}

mod jobs;
mod report;
mod runs;

pub use jobs::{JobSet, experiment_files, job_files};
use runs::JobState;
pub use runs::{HISTORY_PER_JOB, Trigger, TriggerError};

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
            reloading: tokio::sync::Mutex::new(()),
            experiments: RwLock::new(Arc::default()),
            states: Mutex::new(HashMap::new()),
            slot_freed: tokio::sync::Notify::new(),
            next_run_id: AtomicU64::new(seed),
            scheduler: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            unrecorded: Mutex::new(Vec::new()),
            recording: Mutex::new(()),
        })
    }

    /// Starts the timers; first runs, once, each missed tick that is within its job's
    /// `starting_deadline_seconds` (the daemon was down when it was due).
    pub async fn start_scheduler(self: &Arc<Self>) -> anyhow::Result<()> {
        let daemon = Arc::clone(self);
        // Each tick recorded is a sync of the store's files: on the blocking pool.
        let missed = tokio::task::spawn_blocking(move || daemon.record_start_ticks(Utc::now())).await??;
        for (name, tick) in missed {
            tracing::info!(job = %name, missed = %tick, "running a tick missed while the daemon was down");
            self.spawn_trigger(&name, Trigger::CatchUp(tick));
        }
        let scheduler = Scheduler::start().await?;
        *self.scheduler.lock().expect("scheduler") = Some(scheduler);
        self.sync_schedule().await;
        Ok(())
    }

    /// Records `now` as each scheduled job's last tick, and returns the ticks missed while
    /// the daemon was down that are within their job's deadline, one per job at most.
    fn record_start_ticks(&self, now: DateTime<Utc>) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let mut missed = Vec::new();
        for (name, job) in self.jobs().jobs {
            let Some(sched) = &job.schedule else { continue };
            let last = self.store.last_tick(&name)?;
            if let (Some(deadline), Some(last)) = (job.policy.starting_deadline, last)
                && let Some(tick) = schedule::missed_tick_to_run(sched, last, now, deadline)
            {
                missed.push((name.clone(), tick));
            }
            self.store.set_last_tick(&name, now)?;
        }
        Ok(missed)
    }

    pub(super) async fn sync_schedule(self: &Arc<Self>) {
        let jobs = self.jobs().jobs;
        let scheduler = self.scheduler.lock().expect("scheduler").clone();
        if let Some(s) = scheduler {
            let me: Arc<dyn crate::scheduler::OnTick> = Arc::clone(self) as _;
            s.sync(&jobs, Arc::downgrade(&me)).await;
        }
    }

    /// A scheduled tick of `name` is due: recorded (a sync of the store's files, on the
    /// blocking pool), then run.
    pub fn on_tick(self: &Arc<Self>, name: &str, tick: DateTime<Utc>) {
        let (daemon, name) = (Arc::clone(self), name.to_string());
        tokio::spawn(async move {
            let (store, job) = (Arc::clone(&daemon.store), name.clone());
            let recorded = tokio::task::spawn_blocking(move || store.advance_last_tick(&job, tick))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            if let Err(e) = recorded {
                tracing::error!(job = %name, "recording the tick: {e}");
            }
            daemon.spawn_trigger(&name, Trigger::Schedule(tick));
        });
    }

    pub(super) fn spawn_trigger(self: &Arc<Self>, name: &str, trigger: Trigger) {
        let (daemon, name) = (Arc::clone(self), name.to_string());
        tokio::spawn(async move {
            match daemon.trigger(&name, trigger.clone()).await {
                // logged where it failed, with the run's span
                Ok(_) | Err(TriggerError::Failed { .. }) => {}
                Err(e) => tracing::info!(job = %name, %trigger, "no run: {e}"),
            }
        });
    }

    /// While a failed write keeps the store closed to writes: tries to open it again
    /// every `every` (see `Store::recover`), then writes the run records that waited. An
    /// error of sled's flusher counts as a failed write (`Store::check_flusher`).
    /// While the disk reserve is missing, tries to make it again as often.
    pub fn watch_store(self: &Arc<Self>, every: Duration) {
        let daemon = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(daemon) = daemon.upgrade() else { return };
                daemon.store.check_flusher();
                if daemon.store.failure().is_none() && daemon.store.reserve_missing().is_some() {
                    let store = Arc::clone(&daemon.store);
                    let _ = tokio::task::spawn_blocking(move || store.keep_reserve()).await;
                }
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
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl crate::scheduler::OnTick for Daemon {
    fn on_tick(self: Arc<Self>, job: &str, tick: DateTime<Utc>) {
        Daemon::on_tick(&self, job, tick);
    }
}
