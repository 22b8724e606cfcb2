//! Fires scheduled jobs. recd computes each next fire time itself ([`Schedule`], correct in
//! every time zone and across DST) and arms a one-shot timer for it in tokio-cron-scheduler;
//! when it fires, the job's tick is handed to the daemon and the next one is armed. A job
//! whose schedule changes (reload) gets a new generation; timers of an old generation do
//! nothing when they fire.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use chrono::{DateTime, Utc};
use tokio_cron_scheduler::{Job as CronJob, JobScheduler};
use uuid::Uuid;

use crate::job::Job;
use crate::schedule::Schedule;

/// What a tick is handed to (the daemon): the scheduler knows nothing else of it.
pub trait OnTick: Send + Sync + 'static {
    fn on_tick(self: Arc<Self>, job: &str, tick: DateTime<Utc>);
}

pub struct Scheduler {
    inner: JobScheduler,
    entries: Mutex<HashMap<String, Entry>>,
    next_generation: AtomicU64,
}

struct Entry {
    schedule: Schedule,
    generation: u64,
    timer: Option<Uuid>,
}

impl Scheduler {
    pub async fn start() -> anyhow::Result<Arc<Scheduler>> {
        let inner = JobScheduler::new().await?;
        inner.start().await?;
        Ok(Arc::new(Scheduler { inner, entries: Mutex::new(HashMap::new()), next_generation: AtomicU64::new(1) }))
    }

    /// Makes the timers match `jobs`: new schedules are armed, changed ones re-armed,
    /// removed ones dropped. Suspension is checked when a tick fires, not here.
    pub async fn sync(self: &Arc<Self>, jobs: &BTreeMap<String, Job>, daemon: Weak<dyn OnTick>) {
        let mut stale = Vec::new();
        let mut fresh = Vec::new();
        {
            let mut entries = self.entries.lock().expect("entries");
            entries.retain(|name, entry| {
                let keep = jobs.get(name).and_then(|j| j.schedule.as_ref()) == Some(&entry.schedule);
                if !keep {
                    stale.extend(entry.timer);
                }
                keep
            });
            for (name, job) in jobs {
                if let (Some(schedule), false) = (&job.schedule, entries.contains_key(name)) {
                    let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                    entries.insert(name.clone(), Entry { schedule: schedule.clone(), generation, timer: None });
                    fresh.push((name.clone(), generation));
                }
            }
        }
        for timer in stale {
            let _ = self.inner.remove(&timer).await;
        }
        for (name, generation) in fresh {
            self.arm(name, generation, Utc::now(), daemon.clone()).await;
        }
    }

    /// Arms the timer for the first tick of `name` after `after`. (Boxed with an explicit
    /// `Send`: the timer re-arms itself, and a recursive `async fn` cannot prove it.)
    fn arm(
        self: &Arc<Self>,
        name: String,
        generation: u64,
        after: DateTime<Utc>,
        daemon: Weak<dyn OnTick>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let me = Arc::clone(self);
        Box::pin(async move { me.arm_now(name, generation, after, daemon).await })
    }

    async fn arm_now(self: Arc<Self>, name: String, generation: u64, after: DateTime<Utc>, daemon: Weak<dyn OnTick>) {
        let Some(tick) = self.schedule_of(&name, generation).and_then(|s| s.next_after(after)) else { return };
        let delay = (tick - Utc::now()).to_std().unwrap_or_default();
        // Ticks lie before the year 5000 (croner's horizon): always a valid instant, but
        // checked rather than trusted.
        let Some(at) = std::time::Instant::now().checked_add(delay) else {
            tracing::error!(job = %name, %tick, "next tick is too far away to arm a timer for");
            return;
        };
        let me = Arc::downgrade(&self);
        let job_name = name.clone();
        let timer = CronJob::new_one_shot_at_instant_async(at, move |_id, _lock| {
            let (me, daemon, name) = (me.clone(), daemon.clone(), job_name.clone());
            Box::pin(async move {
                let Some(me) = me.upgrade() else { return };
                // tokio-cron-scheduler keeps whole seconds and polls every ~500 ms, so its
                // timer can go off up to a second early: wait out the rest, never run early
                // (a 00:00 job must not see the previous day).
                if let Ok(rest) = (tick - Utc::now()).to_std() {
                    tokio::time::sleep(rest).await;
                }
                let Some(schedule) = me.schedule_of(&name, generation) else {
                    return; // re-scheduled or removed since this timer was armed
                };
                if let Some(d) = daemon.upgrade() {
                    d.on_tick(&name, tick);
                }
                let (after, missed) = resume_point(&schedule, tick, Utc::now());
                if let Some(first) = missed {
                    tracing::warn!(job = %name, %tick, first_missed = %first, "the clock passed later ticks \
                        while this one waited (a suspend, or the clock set forward): they are not run");
                }
                me.arm(name, generation, after, daemon).await;
            })
        });
        let id = match timer {
            Ok(timer) => self.inner.add(timer).await,
            Err(e) => {
                tracing::error!(job = %name, "cannot arm the next tick: {e}");
                return;
            }
        };
        match id {
            Ok(id) => {
                if let Some(entry) = self.entries.lock().expect("entries").get_mut(&name)
                    && entry.generation == generation
                {
                    entry.timer = Some(id);
                }
            }
            Err(e) => tracing::error!(job = %name, "cannot arm the next tick: {e}"),
        }
    }

    fn schedule_of(&self, name: &str, generation: u64) -> Option<Schedule> {
        let entries = self.entries.lock().expect("entries");
        entries.get(name).filter(|e| e.generation == generation).map(|e| e.schedule.clone())
    }

    pub async fn shutdown(&self) {
        let mut inner = self.inner.clone();
        if let Err(e) = inner.shutdown().await {
            tracing::warn!("scheduler shutdown: {e}");
        }
    }
}

/// How late past a tick the clock may be before the ticks in between count as missed.
const MISSED_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// Where the next tick is looked for once `tick` has fired at `now`, and the first tick
/// passed over. After a suspend, or with the wall clock set forward, a timer fires hours
/// late, and arming from `tick` would fire every tick in between back to back. They are not run, as ticks missed while the daemon was down are
/// not (`starting_deadline_seconds` is looked at only at start).
fn resume_point(
    schedule: &Schedule,
    tick: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
    match schedule.next_after(tick) {
        Some(next) if next < now - MISSED_AFTER => (now, Some(next)),
        _ => (tick, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn ticks_the_clock_passed_while_a_timer_waited_are_skipped_not_replayed() {
        let every_minute = Schedule::new("* * * * *", chrono_tz::Tz::UTC).unwrap();
        let tick = at("2026-12-07T10:00:00Z");
        // On time, or a few seconds late: the next tick follows this one.
        assert_eq!(resume_point(&every_minute, tick, at("2026-12-07T10:00:00.3Z")), (tick, None));
        assert_eq!(resume_point(&every_minute, tick, at("2026-12-07T10:01:03Z")), (tick, None));
        // Three hours late (a suspend): the next tick is the first after now.
        let now = at("2026-12-07T13:00:05Z");
        let (after, missed) = resume_point(&every_minute, tick, now);
        assert_eq!((after, missed), (now, Some(at("2026-12-07T10:01:00Z"))));
        assert_eq!(every_minute.next_after(after), Some(at("2026-12-07T13:01:00Z")));
        // A daily job an hour late missed nothing.
        let daily = Schedule::new("0 2 * * *", chrono_tz::Tz::UTC).unwrap();
        let two = at("2026-12-07T02:00:00Z");
        assert_eq!(resume_point(&daily, two, at("2026-12-07T03:00:00Z")), (two, None));
    }
}
