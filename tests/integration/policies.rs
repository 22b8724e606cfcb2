//! Scheduling policies, each against a real daemon and the faulty test plugin: timeout,
//! overlap skip / replace / queue, retries with backoff, chains, suspend and pause, and
//! running a tick missed during downtime.

use std::process::Output;
use std::time::{Duration, Instant};

use chrono::DateTime;

use crate::util::TestDaemon;

/// A job of the faulty plugin publishing table `t`; `policy` lines go before `[params]`.
fn job(policy: &str, params: &str) -> String {
    format!("plugin = \"faulty\"\ntable = \"t\"\n{policy}\n[params]\n{params}\n")
}

fn statuses(d: &TestDaemon, name: &str) -> Vec<String> {
    d.history(name).iter().map(|r| r["status"].as_str().unwrap().to_string()).collect()
}

fn err(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `recd run JOB` on another thread.
fn run_in_background(d: &TestDaemon, name: &str) -> std::thread::JoinHandle<Output> {
    let (bin, config, name) = (crate::util::RECD, d.config(), name.to_string());
    std::thread::spawn(move || {
        std::process::Command::new(bin).args(["run", &name, "--config"]).arg(config).output().unwrap()
    })
}

fn ts(v: &serde_json::Value, field: &str) -> DateTime<chrono::FixedOffset> {
    DateTime::parse_from_rfc3339(v[field].as_str().unwrap()).unwrap()
}

#[test]
fn a_run_past_its_timeout_is_killed_and_the_previous_version_stays() {
    let d = TestDaemon::start(&[("j", &job("", "mode = \"ok\""))]);
    d.run_job("j");
    d.write_job("j", &job("timeout_seconds = 1", "mode = \"hang\""));
    assert!(d.cli(&["reload"]).status.success());
    let started = Instant::now();
    let out = d.cli(&["run", "j"]);
    let took = started.elapsed();
    assert!(!out.status.success());
    assert!(err(&out).contains("timed out after 1s"), "{}", err(&out));
    // asked to stop at 1 s, killed after the 3 s grace since "hang" ignores the request
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let mut conn = d.redis();
    let items: Vec<String> = redis::cmd("ZREVRANGE").arg("t:u1").arg(0).arg(-1).query(&mut conn).unwrap();
    assert_eq!(items, ["a", "b", "c"]);
    assert_eq!(statuses(&d, "j"), ["timeout", "ok"]);
}

#[test]
fn overlap_skip_records_the_skipped_tick() {
    let d = TestDaemon::start(&[("j", &job("", "mode = \"slow\"\nseconds = 1.5"))]);
    let first = run_in_background(&d, "j");
    d.wait_for("the first run to start", 10, || {
        d.cli(&["status"]).stdout.windows(9).any(|w| w == b"[running]").then_some(())
    });
    let second = d.cli(&["run", "j"]);
    assert!(!second.status.success());
    assert!(err(&second).contains("skipped: the previous run is still going (overlap = \"skip\")"), "{}", err(&second));
    assert!(first.join().unwrap().status.success());
    // history is ordered by run id, given when a run starts or is skipped: newest first
    assert_eq!(statuses(&d, "j"), ["skipped", "ok"]);
}

#[test]
fn a_shared_tables_run_that_began_first_and_ends_last_is_superseded_not_published_or_retried() {
    let shared = |params: &str| {
        format!(
            "plugin = \"faulty\"\ntable = \"t\"\nshared_table = true\nretries = 2\nretry_backoff_seconds = 1\n[params]\n{params}\n"
        )
    };
    let pids = tempfile::tempdir().unwrap();
    let pid = pids.path().join("nightly.pid");
    let nightly = format!("mode = \"slow\"\nseconds = 3\nuser = \"old\"\npid_file = \"{}\"", pid.display());
    let d = TestDaemon::start(&[("nightly", &shared(&nightly)), ("hourly", &shared("mode = \"ok\"\nuser = \"new\""))]);
    let nightly = run_in_background(&d, "nightly");
    // The plugin runs once its version is staged (the worker gets its spec after that).
    d.wait_for("the nightly run's plugin", 10, || pid.exists().then_some(()));
    d.run_job("hourly");
    let nightly = nightly.join().unwrap();
    assert!(!nightly.status.success());
    let want = "table `t` version 1 is not published: version 2 (job `hourly`, run ";
    assert!(err(&nightly).contains(want), "{}", err(&nightly));
    let mut conn = d.redis();
    let mut served = |user: &str| -> Vec<String> {
        redis::cmd("ZREVRANGE").arg(format!("t:{user}")).arg(0).arg(-1).query(&mut conn).unwrap()
    };
    assert_eq!(served("new"), ["a", "b", "c"]);
    assert_eq!(served("old"), Vec::<String>::new());
    // Not retried: a retry would put the older results back (its backoff is 1 s).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(statuses(&d, "nightly"), ["superseded"]);
    let out = d.cli(&["verify"]);
    assert!(out.status.success(), "nothing of the superseded version is left: {}", err(&out));
}

#[test]
fn overlap_replace_cancels_the_running_run() {
    let d = TestDaemon::start(&[("j", &job("overlap = \"replace\"", "mode = \"slow\"\nseconds = 1.5"))]);
    let first = run_in_background(&d, "j");
    d.wait_for("the first run to start", 10, || {
        d.cli(&["status"]).stdout.windows(9).any(|w| w == b"[running]").then_some(())
    });
    let second = d.cli(&["run", "j"]);
    assert!(second.status.success(), "{}", err(&second));
    let first = first.join().unwrap();
    assert!(!first.status.success());
    assert!(err(&first).contains("cancelled (replaced by a newer run"), "{}", err(&first));
    assert_eq!(statuses(&d, "j"), ["ok", "cancelled"]);
    // the cancelled run published nothing: the replacement is version 2, the number the
    // cancelled run took as it began not given again
    assert_eq!(d.history("j")[0]["version"], 2);
    let info: String = redis::cmd("INFO").query(&mut d.redis()).unwrap();
    assert!(info.contains("table_t:version=2,") && info.contains("retained=2\r\n"), "{info}");
}

#[test]
fn overlap_queue_runs_once_more_after_the_running_run() {
    let d = TestDaemon::start(&[("j", &job("overlap = \"queue\"", "mode = \"slow\"\nseconds = 1"))]);
    let first = run_in_background(&d, "j");
    d.wait_for("the first run to start", 10, || {
        d.cli(&["status"]).stdout.windows(9).any(|w| w == b"[running]").then_some(())
    });
    let queued = run_in_background(&d, "j");
    std::thread::sleep(Duration::from_millis(300));
    let third = d.cli(&["run", "j"]);
    assert!(err(&third).contains("skipped: a run is already queued"), "{}", err(&third));
    assert!(first.join().unwrap().status.success());
    let queued = queued.join().unwrap();
    assert!(queued.status.success(), "{}", err(&queued));
    let history = d.history("j");
    // by run id: the queued run got its id when it started, after the third was skipped
    assert_eq!(statuses(&d, "j"), ["ok", "skipped", "ok"]);
    // the queued run started after the first one ended
    assert!(ts(&history[0], "started_at") >= ts(&history[2], "ended_at"));
}

/// A run that waits for its turn runs the job as its file stands when the turn comes: an
/// edit made meanwhile applies, and a job deleted meanwhile does not run.
#[test]
fn a_queued_run_runs_the_job_as_it_stands_when_its_turn_comes() {
    let slow = |seconds: u32, user: &str| {
        job("overlap = \"queue\"", &format!("mode = \"slow\"\nseconds = {seconds}\nuser = \"{user}\""))
    };
    let d = TestDaemon::start(&[("j", &slow(4, "first"))]);
    let wait_running = || {
        d.wait_for("a run to start", 10, || {
            d.cli(&["status"]).stdout.windows(9).any(|w| w == b"[running]").then_some(())
        })
    };
    // Reloads so far, and a wait for one more (the watcher's, or its look's).
    let reloads = || d.log().matches("jobs reloaded").count();
    let reloaded_since = |before: usize| {
        d.wait_for("a reload", 10, || (d.log().matches("jobs reloaded").count() > before).then_some(()))
    };
    let first = run_in_background(&d, "j");
    wait_running();
    let queued = run_in_background(&d, "j");
    std::thread::sleep(Duration::from_millis(300));
    let before = reloads();
    d.write_job("j", &slow(0, "edited"));
    reloaded_since(before);
    assert!(first.join().unwrap().status.success());
    let queued = queued.join().unwrap();
    assert!(queued.status.success(), "{}", err(&queued));
    assert_eq!(d.redis_cli(&["EXISTS", "t:edited"]).trim(), "1", "the queued run ran the edited job");
    assert_eq!(d.redis_cli(&["EXISTS", "t:first"]).trim(), "0", "the queued run ran the edited job");

    let before = reloads();
    d.write_job("j", &slow(4, "first"));
    reloaded_since(before);
    let first = run_in_background(&d, "j");
    wait_running();
    let queued = run_in_background(&d, "j");
    std::thread::sleep(Duration::from_millis(300));
    let before = reloads();
    std::fs::remove_file(d.jobs_dir().join("j.toml")).unwrap();
    reloaded_since(before);
    assert!(first.join().unwrap().status.success());
    let queued = queued.join().unwrap();
    assert!(!queued.status.success());
    assert!(err(&queued).contains("no job named `j`"), "{}", err(&queued));
}

#[test]
fn failed_runs_are_retried_with_doubling_backoff() {
    let d = TestDaemon::start(&[]);
    let state = d.dir.path().join("flaky-count");
    let params = format!("mode = \"flaky\"\nfail_first = 2\nstate_file = \"{}\"", state.display());
    d.write_job("j", &job("retries = 3\nretry_backoff_seconds = 1", &params));
    assert!(d.cli(&["reload"]).status.success());
    let out = d.cli(&["run", "j"]);
    assert!(err(&out).contains("flaky failure 1 of 2"), "{}", err(&out));
    let history = d.wait_for("a successful retry", 15, || {
        let h = d.history("j");
        (h.len() == 3).then_some(h)
    });
    let triggers: Vec<&str> = history.iter().map(|r| r["trigger"].as_str().unwrap()).collect();
    assert_eq!(triggers, ["retry 2", "retry 1", "manual"]);
    assert_eq!(statuses(&d, "j"), ["ok", "failed", "failed"]);
    let gap = |later: usize, earlier: usize| ts(&history[later], "started_at") - ts(&history[earlier], "ended_at");
    assert!(gap(1, 2) >= chrono::TimeDelta::milliseconds(1000), "first backoff {:?}", gap(1, 2));
    assert!(gap(0, 1) >= chrono::TimeDelta::milliseconds(2000), "second backoff {:?}", gap(0, 1));
}

#[test]
fn a_waiting_retry_is_dropped_by_a_later_success_or_a_lower_retries() {
    let d = TestDaemon::start(&[]);
    let state = d.dir.path().join("flaky-count");
    let params = format!("mode = \"flaky\"\nfail_first = 1\nstate_file = \"{}\"", state.display());
    // 5 s: room for a run and a reload on a slow machine before a retry would start.
    let policy = "retries = 1\nretry_backoff_seconds = 5";
    d.write_job("j", &job(policy, &params));
    let failing = job(policy, "mode = \"error\"").replace("\"t\"", "\"t2\"");
    d.write_job("k", &failing);
    assert!(d.cli(&["reload"]).status.success());
    // j fails, and succeeds by hand while its retry waits out the backoff; k fails, and
    // its file is edited to `retries = 0` meanwhile.
    assert!(!d.cli(&["run", "j"]).status.success());
    let failed = std::time::Instant::now();
    assert!(d.cli(&["run", "j"]).status.success());
    assert!(!d.cli(&["run", "k"]).status.success());
    d.write_job("k", &failing.replace("retries = 1", "retries = 0"));
    assert!(d.cli(&["reload"]).status.success());
    // Past both backoffs with room to spare: neither retry ran, or was even skipped.
    std::thread::sleep(std::time::Duration::from_secs(8).saturating_sub(failed.elapsed()));
    assert_eq!(statuses(&d, "j"), ["ok", "failed"]);
    assert_eq!(statuses(&d, "k"), ["failed"]);
    // A failure whose retry nothing makes moot is still retried.
    d.write_job("k", &failing.replace("retry_backoff_seconds = 5", "retry_backoff_seconds = 1"));
    assert!(d.cli(&["reload"]).status.success());
    assert!(!d.cli(&["run", "k"]).status.success());
    let history = d.wait_for("k's retry", 10, || {
        let h = d.history("k");
        (h.len() == 3).then_some(h)
    });
    assert_eq!(history[0]["trigger"], "retry 1");
}

#[test]
fn a_job_runs_after_its_upstream_publishes() {
    let up = "plugin = \"faulty\"\ntable = \"up\"\n[params]\nmode = \"ok\"\n";
    let down = "plugin = \"faulty\"\ntable = \"down\"\nafter = [\"up\"]\n[params]\nmode = \"ok\"\nuser = \"u2\"\n";
    let d = TestDaemon::start(&[("up", up), ("down", down)]);
    d.run_job("up");
    let history = d.wait_for("the chained run", 10, || {
        let h = d.history("down");
        (!h.is_empty() && h[0]["status"] == "ok").then_some(h)
    });
    assert_eq!(history[0]["trigger"], "after up");
    let n: i64 = redis::cmd("ZCARD").arg("down:u2").query(&mut d.redis()).unwrap();
    assert_eq!(n, 3);
    // The history as printed ends its last line; a job with a schedule and an upstream
    // shows both.
    let printed = d.cli(&["history", "down"]);
    assert!(printed.stdout.ends_with(b"]\n"), "{:?}", String::from_utf8_lossy(&printed.stdout));
    d.write_job("down", &down.replace("after = ", "schedule = \"0 3 * * *\"\nafter = "));
    assert!(d.cli(&["reload"]).status.success());
    let jobs = String::from_utf8_lossy(&d.cli(&["jobs"]).stdout).into_owned();
    let line = jobs.lines().find(|l| l.starts_with("down: ")).unwrap_or_default();
    assert!(line.contains("schedule \"0 3 * * *\"") && line.contains(", after up,"), "{jobs}");
}

#[test]
fn suspend_and_pause_stop_scheduled_runs_until_lifted() {
    let every_second = "schedule = \"* * * * * *\"";
    let d = TestDaemon::start(&[("j", &job(&format!("{every_second}\nsuspend = true"), "mode = \"ok\""))]);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(d.history("j").is_empty(), "a suspended job ran");
    // lifting `suspend` in the file (live reload) lets the schedule fire
    d.write_job("j", &job(every_second, "mode = \"ok\""));
    d.wait_for("a scheduled run", 10, || (!d.history("j").is_empty()).then_some(()));
    // Ticks fall on whole seconds, whatever the fraction of the second the job was loaded at.
    let tick = d.history("j")[0]["scheduled_for"].as_str().unwrap().to_string();
    assert!(tick.ends_with(".000Z"), "scheduled for {tick}");
    assert!(d.cli(&["pause", "j"]).status.success());
    std::thread::sleep(Duration::from_millis(1200)); // a run already under way may finish
    let paused_at = d.history("j").len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(d.history("j").len(), paused_at, "a paused job ran");
    assert!(String::from_utf8_lossy(&d.cli(&["status"]).stdout).contains("[paused]"));
    assert!(d.log().contains("no run: job `j` is paused"), "the log names a pause a pause:\n{}", d.log());
    assert!(d.cli(&["resume", "j"]).status.success());
    d.wait_for("a run after resume", 10, || (d.history("j").len() > paused_at).then_some(()));
}

#[test]
fn a_tick_missed_during_downtime_runs_once_within_the_deadline() {
    let every_two = "schedule = \"*/2 * * * * *\"";
    let with_deadline = job(&format!("{every_two}\nstarting_deadline_seconds = 60"), "mode = \"ok\"");
    let without = format!("plugin = \"faulty\"\ntable = \"t2\"\n{every_two}\n[params]\nmode = \"ok\"\n");
    let mut d = TestDaemon::start(&[("j", &with_deadline), ("k", &without)]);
    d.wait_for("scheduled runs", 10, || (!d.history("j").is_empty() && !d.history("k").is_empty()).then_some(()));
    assert!(d.stop());
    std::thread::sleep(Duration::from_secs(3)); // at least one tick of each is missed
    d.restart();
    let caught_up =
        d.wait_for("the catch-up run", 10, || d.history("j").into_iter().find(|r| r["trigger"] == "catch-up"));
    assert_eq!(caught_up["status"], "ok");
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.history("k").iter().all(|r| r["trigger"] != "catch-up"), "k has no deadline: no catch-up");
}

/// A retry that comes due while a later run of the job is going is dropped: that run's
/// end supersedes it, so it neither cancels the run (`overlap = "replace"`) nor waits
/// behind it.
#[test]
fn a_retry_due_while_a_later_run_is_going_leaves_that_run_alone() {
    let d = TestDaemon::start(&[]);
    // 5 s: room for a reload and a run's start on a slow machine before the retry is due.
    let policy = "overlap = \"replace\"\nretries = 1\nretry_backoff_seconds = 5";
    d.write_job("j", &job(policy, "mode = \"error\""));
    assert!(d.cli(&["reload"]).status.success());
    assert!(!d.cli(&["run", "j"]).status.success());
    // While the retry waits, the job (an edit keeps the retry) runs by hand for 8 s.
    d.write_job("j", &job(policy, "mode = \"slow\"\nseconds = 8"));
    assert!(d.cli(&["reload"]).status.success());
    let out = d.cli(&["run", "j"]);
    assert!(out.status.success(), "the run by hand: {}", err(&out));
    assert_eq!(statuses(&d, "j"), ["ok", "failed"], "no retry ran, none was cancelled or skipped");
}

/// An edit that stops one job sharing a table that others share is refused, and that job
/// keeps its last good definition; the job it shared with is untouched, whichever way
/// the names sort.
#[test]
fn an_edit_that_stops_sharing_a_shared_table_is_refused_not_its_peer() {
    let shared = "plugin = \"faulty\"\ntable = \"t\"\nshared_table = true\n[params]\nmode = \"ok\"\n";
    let alone = shared.replace("shared_table = true\n", "");
    let d = TestDaemon::start(&[("a", shared), ("b", shared)]);
    for (edited, peer) in [("a", "b"), ("b", "a")] {
        d.write_job(edited, &alone);
        d.cli(&["reload"]);
        let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
        let refused = format!("{edited}.toml:2: field `table`: table \"t\" is published by job \"{peer}\"");
        assert!(status.contains(&refused), "{status}");
        assert!(!status.contains(&format!("{peer}.toml:2: field `table`")), "{status}");
        // Both still run: the edited job on its last good definition.
        d.run_job(edited);
        d.run_job(peer);
        d.write_job(edited, shared);
        assert!(d.cli(&["reload"]).status.success());
    }
}
