//! Cron scheduling with tokio-cron-scheduler. Each job with a `schedule` gets one cron
//! entry that asks the daemon to run it; an overlapping tick is skipped by
//! `Daemon::run_job`. (Time zones, DST, policies and history come with the scheduling
//! work; see docs/ARCHITECTURE.md.)

use std::collections::BTreeMap;
use std::sync::Weak;

use tokio_cron_scheduler::{Job as CronJob, JobScheduler};
use uuid::Uuid;

use crate::daemon::Daemon;
use crate::job::Job;

pub struct Scheduler {
    inner: JobScheduler,
    /// job name -> (cron entry, its 6-field schedule)
    entries: BTreeMap<String, (Uuid, String)>,
}

impl Scheduler {
    pub async fn start() -> anyhow::Result<Scheduler> {
        let inner = JobScheduler::new().await?;
        inner.start().await?;
        Ok(Scheduler { inner, entries: BTreeMap::new() })
    }

    /// Makes the cron entries match `jobs`: adds new schedules, replaces changed ones,
    /// removes those of deleted jobs.
    pub async fn sync(&mut self, jobs: &BTreeMap<String, Job>, daemon: Weak<Daemon>) -> anyhow::Result<()> {
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(name, (_, sched))| jobs.get(*name).and_then(|j| j.schedule.as_ref()) != Some(sched))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some((id, _)) = self.entries.remove(&name) {
                self.inner.remove(&id).await?;
            }
        }
        for (name, job) in jobs {
            let Some(schedule) = &job.schedule else { continue };
            if self.entries.contains_key(name) {
                continue;
            }
            let (job_name, weak) = (name.clone(), daemon.clone());
            let entry = CronJob::new_async(schedule.as_str(), move |_id, _lock| {
                let (name, weak) = (job_name.clone(), weak.clone());
                Box::pin(async move {
                    let Some(daemon) = weak.upgrade() else { return };
                    if let Err(e) = daemon.run_job(&name).await {
                        tracing::warn!(job = %name, "scheduled run: {e}");
                    }
                })
            })
            .map_err(|e| anyhow::anyhow!("job {name}: schedule {schedule:?}: {e}"))?;
            let id = self.inner.add(entry).await?;
            self.entries.insert(name.clone(), (id, schedule.clone()));
        }
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        if let Err(e) = self.inner.shutdown().await {
            tracing::warn!("scheduler shutdown: {e}");
        }
    }
}
