//! Jobs with a `schedule` run on their own, through tokio-cron-scheduler.

use std::time::{Duration, Instant};

use crate::util::TestDaemon;

#[test]
fn a_scheduled_job_publishes_without_being_asked() {
    // 6 fields: every second
    let job = "schedule = \"* * * * * *\"\nplugin = \"faulty\"\ntable = \"ticks\"\n[params]\nmode = \"ok\"\n";
    let d = TestDaemon::start(&[("ticker", job)]);
    let mut conn = d.redis();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n: i64 = redis::cmd("ZCARD").arg("ticks:u1").query(&mut conn).unwrap();
        if n == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the scheduled job never published:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // never early: each scheduled run starts at or after the tick it is for
    for run in d.history("ticker") {
        let at = |f: &str| chrono::DateTime::parse_from_rfc3339(run[f].as_str().unwrap()).unwrap();
        assert!(at("started_at") >= at("scheduled_for"), "ran early: {run}");
    }
    // it keeps firing: a later version replaces the first
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info: String = redis::cmd("INFO").query(&mut conn).unwrap();
        if !info.contains("table_ticks:version=1,") && info.contains("table_ticks:version=") {
            break;
        }
        assert!(Instant::now() < deadline, "no second scheduled run:\n{info}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
