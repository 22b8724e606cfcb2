//! `recd validate [FILE...]`: every job file checked as a reload checks it (its plugin
//! probed in a throwaway process), all errors reported at once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;
use crate::{daemon, job, plugins};

/// Checks every given file (default: the jobs folder) and reports all errors at once.
/// `after` links are checked against the folder's jobs with the given files in place.
pub(super) fn validate(config: &Config, files: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let folder = daemon::job_files(&config.jobs_dir).unwrap_or_default();
    let files = if files.is_empty() { folder.clone() } else { files };
    let mut set = std::collections::BTreeMap::new();
    for file in &folder {
        if let Ok(job) = job::load(file, config) {
            set.insert(job.name.clone(), job);
        }
    }
    let mut errors: Vec<(PathBuf, String)> = Vec::new();
    let mut checked = Vec::new();
    for file in &files {
        // The plugin judges its params and its inputs' schemas, and the model its input
        // bindings, in a probe process.
        let outcome = job::load(file, config).and_then(|job| {
            if job.command.is_none() {
                plugins::probe_request(&job, config)
                    .and_then(|request| plugins::probe(&job.plugin, &request))
                    .and_then(|desc| plugins::check_name(&job, &desc))
                    .map_err(|(field, message)| job.probe_error(&field, message))?;
            }
            Ok(job)
        });
        match outcome {
            Ok(job) => {
                checked.push(job.name.clone());
                set.insert(job.name.clone(), job);
            }
            Err(e) => errors.push((file.clone(), e.to_string())),
        }
    }
    let producer = |model: &str| crate::models::current(&config.data_dir, model).ok().map(|p| p.meta.job);
    let failing = errors.iter().map(|(file, _)| (job::job_name(file), file.display().to_string())).collect();
    let context = job::SetContext { owner: &|_| None, producer: &producer, previous: &|_| None, failing };
    for (file, e) in job::settle(&mut set, context) {
        if checked.contains(&job::job_name(Path::new(&file))) {
            errors.push((PathBuf::from(file), e.to_string()));
        }
    }
    for name in &checked {
        // Not in the set: refused by the checks across files (an error above).
        let Some(job) = set.get(name) else { continue };
        if !errors.iter().any(|(f, _)| job::job_name(f) == *name) {
            let when = match (&job.schedule, job.after.is_empty()) {
                (Some(s), _) => format!("{:?} ({})", s.expr, s.tz),
                (None, false) => format!("after {}", job.after.join(", ")),
                (None, true) => "manual".into(),
            };
            println!("ok    {} ({}, schedule {when})", job.file.display(), job.publishes());
        }
    }
    for file in daemon::experiment_files(&config.jobs_dir).unwrap_or_default() {
        let (name, shown) = (crate::experiment::name_of(&file), file.display().to_string());
        match job::read_job_file(&file).and_then(|text| crate::experiment::parse(&text, &shown, &name)) {
            Ok(e) => println!("ok    {shown} (experiment, {} variants)", e.variants.len()),
            Err(e) => errors.push((file.clone(), e.to_string())),
        }
    }
    for (_, e) in &errors {
        println!("error {e}");
    }
    Ok(if errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
