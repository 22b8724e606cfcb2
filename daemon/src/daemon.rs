//! The serving process's state: configuration, the store, the current job definitions
//! (last good per file), the scheduler, and which jobs are running.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::Config;
use crate::job::{self, Job, JobError};
use crate::runner::{self, RunReport};
use crate::scheduler::Scheduler;
use crate::store::Store;

pub struct Daemon {
    pub config: Config,
    pub store: Arc<Store>,
    jobs: RwLock<JobSet>,
    running: Mutex<HashSet<String>>,
    last_runs: Mutex<BTreeMap<String, String>>,
    next_run_id: AtomicU64,
    scheduler: tokio::sync::Mutex<Option<Scheduler>>,
}

#[derive(Default, Clone)]
pub struct JobSet {
    pub jobs: BTreeMap<String, Job>,
    /// Per file, the error that keeps its previous definition (if any) in force.
    pub errors: BTreeMap<String, JobError>,
}

impl Daemon {
    pub fn new(config: Config, store: Store) -> Arc<Daemon> {
        // Run ids only need to be unique and increasing across restarts.
        let seed = chrono::Utc::now().timestamp_millis().max(0) as u64;
        Arc::new(Daemon {
            config,
            store: Arc::new(store),
            jobs: RwLock::new(JobSet::default()),
            running: Mutex::new(HashSet::new()),
            last_runs: Mutex::new(BTreeMap::new()),
            next_run_id: AtomicU64::new(seed),
            scheduler: tokio::sync::Mutex::new(None),
        })
    }

    pub async fn start_scheduler(self: &Arc<Self>) -> anyhow::Result<()> {
        let scheduler = Scheduler::start().await?;
        *self.scheduler.lock().await = Some(scheduler);
        self.sync_schedule().await
    }

    pub async fn stop_scheduler(&self) {
        if let Some(mut s) = self.scheduler.lock().await.take() {
            s.shutdown().await;
        }
    }

    async fn sync_schedule(self: &Arc<Self>) -> anyhow::Result<()> {
        let jobs = self.jobs.read().expect("jobs lock").jobs.clone();
        if let Some(s) = self.scheduler.lock().await.as_mut() {
            s.sync(&jobs, Arc::downgrade(self)).await?;
        }
        Ok(())
    }

    /// Re-reads the jobs folder. A file that fails keeps its previous definition; a
    /// removed file removes its job. Returns the errors, if any.
    pub async fn reload(self: &Arc<Self>) -> anyhow::Result<Vec<JobError>> {
        let dir = self.config.jobs_dir.clone();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| anyhow::anyhow!("jobs folder {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let errors = {
            let mut set = self.jobs.write().expect("jobs lock");
            let previous = std::mem::take(&mut *set);
            for file in &files {
                let name = job::job_name(file);
                match job::load(file, &self.config) {
                    Ok(job) => {
                        set.jobs.insert(name, job);
                    }
                    Err(err) => {
                        tracing::error!(file = %file.display(), "job file rejected, previous definition kept: {err}");
                        if let Some(old) = previous.jobs.get(&name) {
                            set.jobs.insert(name, old.clone());
                        }
                        set.errors.insert(file.display().to_string(), err);
                    }
                }
            }
            set.errors.values().cloned().collect()
        };
        self.sync_schedule().await?;
        Ok(errors)
    }

    pub fn jobs(&self) -> JobSet {
        self.jobs.read().expect("jobs lock").clone()
    }

    /// Runs `name` now in a worker and publishes its table. A job already running is not
    /// started twice.
    pub async fn run_job(self: &Arc<Self>, name: &str) -> Result<RunReport, String> {
        let job = {
            let set = self.jobs.read().expect("jobs lock");
            match set.jobs.get(name) {
                Some(job) => job.clone(),
                None => {
                    let known: Vec<&str> = set.jobs.keys().map(String::as_str).collect();
                    return Err(format!("no job named `{name}` (jobs: {})", known.join(", ")));
                }
            }
        };
        let _guard = RunningGuard::take(self, name)?;
        let run_id = self.next_run_id.fetch_add(1, Ordering::Relaxed);
        let daemon = Arc::clone(self);
        let span = tracing::info_span!("run", job = %name, run_id);
        let result = tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            tracing::info!(table = %job.table, "run started");
            runner::execute(&job, run_id, &daemon.config, &daemon.store)
        })
        .await
        .map_err(|e| format!("run task failed: {e}"))?
        .map_err(|e| format!("run {run_id} of job {name} failed: {e:#}"));
        let line = match &result {
            Ok(report) => {
                tracing::info!("{report}");
                format!("ok: {report}")
            }
            Err(e) => {
                tracing::error!("{e}");
                format!("failed: {e}")
            }
        };
        self.last_runs.lock().expect("last runs").insert(name.to_string(), line);
        result
    }

    /// Human-readable state: tables and their versions, jobs, job file errors.
    pub fn status_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "tables:");
        match self.store.tables() {
            Ok(tables) => {
                for (name, meta) in tables {
                    let serving = self.store.served(&name).map(|t| t.version).unwrap_or(0);
                    let _ = writeln!(s, "  {name}: current version {}, serving version {serving}", meta.current);
                    for v in meta.versions.iter().rev() {
                        let _ = writeln!(
                            s,
                            "    version {}: {} users, {} rows, published {} by job {} run {}",
                            v.version, v.users, v.rows, v.published_at, v.job, v.run_id
                        );
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(s, "  error reading tables: {e}");
            }
        }
        let set = self.jobs();
        let running = self.running.lock().expect("running").clone();
        let last = self.last_runs.lock().expect("last runs").clone();
        let _ = writeln!(s, "jobs:");
        for (name, job) in &set.jobs {
            let state = if running.contains(name) { " (running)" } else { "" };
            let sched = job.schedule.as_deref().unwrap_or("manual");
            let _ = writeln!(s, "  {name}{state}: schedule {sched:?}, table {}", job.table);
            if let Some(d) = &job.description {
                let _ = writeln!(s, "    {d}");
            }
            if let Some(l) = last.get(name) {
                let _ = writeln!(s, "    last run {l}");
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
}

/// Marks a job as running for as long as it lives.
struct RunningGuard {
    daemon: Arc<Daemon>,
    name: String,
}

impl RunningGuard {
    fn take(daemon: &Arc<Daemon>, name: &str) -> Result<RunningGuard, String> {
        if !daemon.running.lock().expect("running").insert(name.to_string()) {
            return Err(format!("job `{name}` is already running"));
        }
        Ok(RunningGuard { daemon: Arc::clone(daemon), name: name.to_string() })
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.daemon.running.lock().expect("running").remove(&self.name);
    }
}
