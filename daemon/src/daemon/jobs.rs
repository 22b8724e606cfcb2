//! The job set: every job file loaded and checked (reload), the last good definition kept
//! when a file turns bad, and pauses.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::*;
use crate::experiment;
use crate::job::InputFormat;

#[derive(Default, Clone)]
pub struct JobSet {
    pub jobs: BTreeMap<String, Job>,
    /// Per file, the error that keeps its previous definition (if any) in force.
    pub errors: BTreeMap<String, JobError>,
    /// The plugin files the jobs read at the last reload name, refused ones' included,
    /// and the data files of the jobs they refused (`job::load_naming_files`): the watcher
    /// reloads when one changes (a fixed plugin, an input that appears, clears an error).
    pub named_files: std::collections::BTreeSet<std::path::PathBuf>,
}

impl Daemon {
    /// Re-reads the jobs folder. A file that fails keeps its previous definition; a
    /// removed file removes its job. Returns the errors, if any.
    pub async fn reload(self: &Arc<Self>) -> anyhow::Result<Vec<JobError>> {
        let _turn = self.reloading.lock().await;
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
            for (file, (named, result)) in loaded {
                set.named_files.extend(named);
                let name = job::job_name(&file);
                match result {
                    Ok(job) => {
                        set.jobs.insert(name, job);
                    }
                    Err(err) => keep_previous(&mut set, &previous, &name, file.display().to_string(), err),
                }
            }
            let publishers = self.publishers();
            // A table's owner: its one publishing job in force, else the job that last
            // published it. A table several jobs in force share has none: an edit that
            // stops sharing it must not make the edited job its keeper.
            let owner = |table: &str| {
                let mut in_force = previous.jobs.values().filter(|j| j.table == table && j.command.is_none());
                match (in_force.next(), in_force.next()) {
                    (Some(only), None) => Some(only.name.clone()),
                    (Some(_), Some(_)) => None,
                    (None, _) => publishers.get(table).cloned(),
                }
            };
            // A model's producer: the job whose run made its current version.
            let data_dir = self.config.data_dir.clone();
            let producer = |model: &str| crate::models::current(&data_dir, model).ok().map(|p| p.meta.job);
            let failing = set
                .errors
                .keys()
                .map(|file| (job::job_name(std::path::Path::new(file)), file.clone()))
                .filter(|(name, _)| !set.jobs.contains_key(name))
                .collect();
            let previous_job = |name: &str| previous.jobs.get(name).cloned();
            let context = job::SetContext { owner: &owner, producer: &producer, previous: &previous_job, failing };
            for (file, err) in job::settle(&mut set.jobs, context) {
                let kept = if set.jobs.contains_key(&job::job_name(std::path::Path::new(&file))) {
                    "previous definition kept"
                } else {
                    "no definition in force"
                };
                tracing::error!(file = %file, "job file rejected, {kept}: {err}");
                // The first error about a file is about its own text; later ones, about
                // the definition put back in its place, are logged only.
                set.errors.entry(file).or_insert(err);
            }
            let in_force: Vec<_> =
                set.jobs.values().filter(|j| j.command.is_none()).map(|j| j.plugin.clone()).collect();
            set.named_files.extend(in_force);
            set.errors.values().cloned().collect::<Vec<_>>()
        };
        let daemon = Arc::clone(self);
        let experiment_errors = tokio::task::spawn_blocking(move || daemon.reload_experiments()).await?;
        let mut errors = errors;
        {
            let mut set = self.jobs.write().expect("jobs lock");
            for (file, err) in experiment_errors {
                errors.push(err.clone());
                set.errors.insert(file, err);
            }
        }
        self.sync_schedule().await;
        Ok(errors)
    }

    /// Each table's publishing job: the job that published its current version.
    pub(super) fn publishers(&self) -> HashMap<String, String> {
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
    /// `plugins::Registry::check_job`); with the files it names that the watcher follows
    /// (`job::load_naming_files`), as far as it got.
    pub(super) fn load_and_check(&self, file: &std::path::Path) -> (Vec<std::path::PathBuf>, Result<Job, JobError>) {
        let (named, loaded) = job::load_naming_files(file, &self.config);
        let job = match loaded {
            Ok(job) => job,
            Err(e) => return (named, Err(e)),
        };
        if job.command.is_some() {
            // No plugin to probe: `load` found the program.
            return (named, Ok(job));
        }
        match self.plugins.check_job(&job, &self.config, &self.probes) {
            Ok(_) => (named, Ok(job)),
            Err((field, message)) => (named, Err(job.probe_error(&field, message))),
        }
    }

    pub fn jobs(&self) -> JobSet {
        self.jobs.read().expect("jobs lock").clone()
    }

    /// The files the last reload's jobs name ([`JobSet::named_files`]), without a copy of
    /// the rest of the job set (the watcher asks every second).
    pub fn named_files(&self) -> std::collections::BTreeSet<std::path::PathBuf> {
        self.jobs.read().expect("jobs lock").named_files.clone()
    }

    pub(super) fn job(&self, name: &str) -> Result<Job, TriggerError> {
        let set = self.jobs.read().expect("jobs lock");
        set.jobs.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = set.jobs.keys().map(String::as_str).collect();
            TriggerError::NoJob { name: name.to_string(), known: known.join(", ") }
        })
    }

    pub(crate) fn is_paused(&self, name: &str) -> bool {
        self.store.paused_jobs().map(|p| p.iter().any(|j| j == name)).unwrap_or(false)
    }

    /// `recd pause|resume JOB`: stops or restarts scheduled and chained runs.
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<(), String> {
        if paused {
            self.job(name).map_err(|e| e.to_string())?;
        }
        self.store.set_paused(name, paused).map_err(|e| e.to_string())
    }
}

pub(super) fn keep_previous(set: &mut JobSet, previous: &JobSet, name: &str, file: String, err: JobError) {
    match previous.jobs.get(name) {
        Some(old) => {
            tracing::error!(file = %file, "job file rejected, previous definition kept: {err}");
            set.jobs.insert(name.to_string(), old.clone());
        }
        None => tracing::error!(file = %file, "job file rejected, and no earlier definition runs: {err}"),
    }
    set.errors.insert(file, err);
}

impl Daemon {
    /// Re-reads the experiment files of the jobs folder: a file that fails keeps its previous
    /// experiment; each one's bucket assignment is adjusted to its shares and kept in the
    /// store. Returns (file, error) for each file refused.
    fn reload_experiments(&self) -> Vec<(String, JobError)> {
        let files = experiment_files(&self.config.jobs_dir).unwrap_or_default();
        let previous = Arc::clone(&self.experiments.read().expect("experiments lock"));
        let tables: BTreeMap<String, String> = self
            .jobs()
            .jobs
            .values()
            .filter(|j| j.command.is_none())
            .map(|j| (j.table.clone(), j.name.clone()))
            .collect();
        let (mut next, mut errors) = (experiment::Experiments::new(), Vec::new());
        let files_names: Vec<String> = files.iter().map(|f| experiment::name_of(f)).collect();
        for file in files {
            let (name, shown) = (experiment::name_of(&file), file.display().to_string());
            let loaded = job::read_job_file(&file)
                .and_then(|text| experiment::parse(&text, &shown, &name))
                .and_then(|e| match tables.get(&e.name) {
                    // A key `<name>:<user>` would read the table, never the experiment.
                    Some(job) => Err(JobError::Invalid {
                        file: shown.clone(),
                        line: 1,
                        field: "name".into(),
                        message: format!("experiment {:?} has the name of a table (published by job {job:?})", e.name),
                    }),
                    None => match e.variants.iter().find(|v| files_names.contains(&v.table)) {
                        Some(v) => Err(JobError::Invalid {
                            file: shown.clone(),
                            line: 1,
                            field: "variant.table".into(),
                            message: format!("variant {:?}: {:?} is an experiment, not a table", v.name, v.table),
                        }),
                        None => Ok(e),
                    },
                })
                .and_then(|e| self.assign(e).map_err(|message| JobError::Io { file: shown.clone(), message }));
            match loaded {
                Ok(live) => {
                    next.insert(name, live);
                }
                Err(e) => {
                    // An experiment named like a table is dropped: the table takes its keys.
                    let clash = tables.contains_key(&name);
                    tracing::error!(file = %shown, "experiment file rejected{}: {e}", if clash { "" } else { ", previous definition kept" });
                    if let Some(old) = previous.get(&name).filter(|_| !clash) {
                        next.insert(name, Arc::clone(old));
                    }
                    errors.push((shown, e));
                }
            }
        }
        *self.experiments.write().expect("experiments lock") = Arc::new(next);
        errors
    }

    /// The experiment with its buckets: the stored assignment adjusted to its shares (and
    /// stored again when that moved any bucket).
    fn assign(&self, experiment: experiment::Experiment) -> Result<Arc<experiment::Live>, String> {
        let key = format!("experiment/{}", experiment.name);
        let stored: Option<experiment::Assignment> =
            self.store.state_value(&key).map_err(|e| e.to_string())?.and_then(|v| serde_json::from_slice(&v).ok());
        let assignment = experiment.assign(stored.as_ref());
        if stored.as_ref() != Some(&assignment) {
            let bytes = serde_json::to_vec(&assignment).expect("an assignment serialises");
            self.store.set_state_value(&key, &bytes).map_err(|e| format!("storing its assignment: {e}"))?;
            tracing::info!(experiment = %experiment.name, "experiment assignment stored");
        }
        Ok(Arc::new(experiment::Live { experiment, assignment }))
    }

    /// The live experiment named `name`, if there is one (read path: only for a key whose
    /// table does not exist).
    pub fn experiment(&self, name: &str) -> Option<Arc<experiment::Live>> {
        self.experiments.read().expect("experiments lock").get(name).cloned()
    }

    /// Why `table` cannot be dropped now (`recd drop`): a job publishes it, another job
    /// falls back to it, or an experiment serves it; Ok when nothing does.
    pub fn table_in_use(&self, table: &str) -> Result<(), String> {
        let jobs = self.jobs();
        if let Some(job) = jobs.jobs.values().find(|j| j.table == table) {
            return Err(format!("is published by job `{}` ({}): remove that job first", job.name, job.file.display()));
        }
        if let Some(job) = jobs.jobs.values().find(|j| j.table != table && j.fallback.iter().any(|f| f == table)) {
            return Err(format!("is a fallback of job `{}` ({})", job.name, job.file.display()));
        }
        let reads = |j: &&Job| j.inputs.iter().any(|i| i.format == InputFormat::Table && i.path.as_os_str() == table);
        if let Some(job) = jobs.jobs.values().find(reads) {
            return Err(format!("is an input of job `{}` ({})", job.name, job.file.display()));
        }
        for (name, live) in self.experiments().iter() {
            if live.experiment.variants.iter().any(|v| v.table == table) {
                return Err(format!("is a variant of experiment `{name}`"));
            }
        }
        Ok(())
    }

    /// Every live experiment.
    pub fn experiments(&self) -> Arc<experiment::Experiments> {
        Arc::clone(&self.experiments.read().expect("experiments lock"))
    }
}

/// The experiment files (`*.experiment.toml`) of the jobs folder, sorted.
pub fn experiment_files(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("jobs folder {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.ends_with(experiment::SUFFIX) && !n.starts_with('.')
            })
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The `*.toml` files of the jobs folder, sorted, experiment files apart.
pub fn job_files(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("jobs folder {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(experiment::SUFFIX)))
        .collect();
    files.sort();
    Ok(files)
}
