//! Every shipped job, as shipped (only its schedule moved to a few seconds from now), runs
//! from the scheduler, the chained ones after their upstream, and every strategy's table
//! is readable over the socket, a never-seen user included.

use crate::util::{TestDaemon, shipped_job};

/// The job with its `schedule` firing once, `at` (UTC), and no `timezone`.
fn scheduled_at(job: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    let cron = at.format("%S %M %H %d %m *").to_string();
    shipped_job(job)
        .lines()
        .filter(|l| !l.starts_with("timezone"))
        .map(|l| if l.starts_with("schedule") { format!("schedule = \"{cron}\"") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
}

const JOBS: [&str; 5] = ["cold-start", "ranking", "diversity", "churn", "churn-retention"];

#[test]
fn every_strategy_runs_on_schedule_and_serves_over_the_socket() {
    let d = TestDaemon::start(&[]);
    let mut conn = d.redis();
    let published = |conn: &mut redis::Connection, table: &str| {
        let info: String = redis::cmd("INFO").query(conn).unwrap_or_default();
        info.contains(&format!("table_{table}:"))
    };
    // The jobs arrive by live reload, due a few seconds after the reload is done. A loaded
    // machine can take longer than that to check them (probes load the models): then the
    // tick has passed unfired and the jobs are written again with a later one.
    for attempt in 1..=3 {
        let at = chrono::Utc::now() + chrono::Duration::seconds(4 * attempt);
        for job in JOBS {
            d.write_job(job, &scheduled_at(job, at));
        }
        let reload = d.cli(&["reload"]);
        assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline && !published(&mut conn, "cold-start") {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if published(&mut conn, "cold-start") {
            break;
        }
    }
    for table in JOBS {
        d.wait_for(&format!("table {table}"), 90, || published(&mut conn, table).then_some(()));
    }
    for job in ["cold-start", "ranking", "churn"] {
        let runs = d.history(job);
        assert_eq!(runs[0]["trigger"], "schedule", "{job}: {runs:?}");
    }
    assert_eq!(d.history("diversity")[0]["trigger"], "after ranking");
    let list = |conn: &mut redis::Connection, key: &str| -> Vec<String> {
        redis::cmd("ZREVRANGE").arg(key).arg(0).arg(-1).query(conn).unwrap()
    };
    assert_eq!(list(&mut conn, "ranking:17850").len(), 10);
    assert_eq!(list(&mut conn, "diversity:17850").len(), 5);
    assert_eq!(list(&mut conn, "cold-start:__default__").len(), 10);
    assert!(!list(&mut conn, "churn-retention:high").is_empty());
    // a user no job has ever seen still gets a list, through the fallback
    assert_eq!(list(&mut conn, "ranking:someone-new"), list(&mut conn, "cold-start:__default__"));
    let churn: Vec<(String, String)> = redis::cmd("HGETALL").arg("churn:17850").query(&mut conn).unwrap();
    assert_eq!(churn[1].0, "tier");
}
