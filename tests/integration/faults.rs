//! A plugin that panics or aborts fails its run only: the daemon keeps serving the tables
//! it had, and the failure is reported with the reason.

use std::time::{Duration, Instant};

use crate::util::{TestDaemon, plugins_dir, ranking_job};

fn faulty_job(mode: &str) -> String {
    format!("plugin = \"faulty\"\ntable = \"faulty\"\nshared_table = true\n[params]\nmode = \"{mode}\"\n")
}

#[test]
fn panicking_and_aborting_plugins_fail_their_runs_and_serving_goes_on() {
    assert!(plugins_dir().join("librecd_faulty.so").is_file(), "build the workspace first (make test does)");
    let mut d = TestDaemon::start(&[
        ("ranking", &ranking_job("")),
        ("fine", &faulty_job("ok")),
        ("panics", &faulty_job("panic")),
        ("aborts", &faulty_job("abort")),
        ("segfaults", &faulty_job("segv")),
        ("errs", &faulty_job("error")),
        ("orphans", &faulty_job("orphan").replace("mode = ", "seconds = 30\nmode = ")),
    ]);
    d.run_job("ranking");
    d.run_job("fine");
    let mut conn = d.redis();
    let before: Vec<(String, f64)> =
        redis::cmd("ZREVRANGE").arg("ranking:17850").arg(0).arg(-1).arg("WITHSCORES").query(&mut conn).unwrap();
    let faulty_before: Vec<String> = redis::cmd("ZREVRANGE").arg("faulty:u1").arg(0).arg(-1).query(&mut conn).unwrap();
    assert_eq!(faulty_before, ["a", "b", "c"]);

    let cases = [
        ("panics", "plugin panicked: faulty plugin was asked to panic"),
        ("aborts", "SIGABRT"),
        ("segfaults", "SIGSEGV"),
        ("errs", "faulty plugin was asked to fail"),
        // a process forked outside the worker's group holds its result stream: the run
        // ends 3 s after the worker's death, not when that process lets go
        ("orphans", "the worker ended, but a process it started outside its process group still held its output open"),
    ];
    for (job, want) in cases {
        let out = d.cli(&["run", job]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "run of {job} should fail");
        assert!(err.contains(want), "run of {job}: want {want:?} in {err:?}");
        assert!(d.is_running(), "daemon died after {job}:\n{}", d.log());
    }

    let after: Vec<(String, f64)> =
        redis::cmd("ZREVRANGE").arg("ranking:17850").arg(0).arg(-1).arg("WITHSCORES").query(&mut conn).unwrap();
    assert_eq!(before, after);
    // the failed runs targeted table `faulty`: it still serves its last good version
    let faulty_after: Vec<String> = redis::cmd("ZREVRANGE").arg("faulty:u1").arg(0).arg(-1).query(&mut conn).unwrap();
    assert_eq!(faulty_after, faulty_before);
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("faulty: current version 1"), "{status}");
    assert!(status.contains("failed") && status.contains("SIGABRT"), "{status}");
}

fn faulty_with(mode: &str, params: &str) -> String {
    format!("{}{params}\n", faulty_job(mode))
}

/// Whether process `pid` runs (exists and is not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| !s.contains("State:\tZ"))
}

/// The process's peak resident memory, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn read_pid(file: &std::path::Path, d: &TestDaemon) -> u32 {
    d.wait_for("the plugin's pid file", 20, || std::fs::read_to_string(file).ok()?.trim().parse().ok())
}

/// What a plugin does outside its own call cannot hold the daemon: a line of 256 MiB on
/// stderr is logged cut (the daemon's memory does not grow by it), lines that are not
/// UTF-8 do not stop the logging, and a helper process the plugin leaves running ends
/// with its run instead of holding the run open.
#[test]
fn a_plugins_endless_output_and_left_over_helpers_end_with_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let helper_file = dir.path().join("helper.pid");
    let d = TestDaemon::start(&[
        ("spews", &faulty_with("spew", "count = 256")),
        ("helps", &faulty_with("helper", &format!("state_file = \"{}\"", helper_file.display()))),
    ]);
    let before = peak_kib(d.pid());
    let out = d.cli(&["run", "spews"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("faulty plugin spewed"));
    let grown = peak_kib(d.pid()) - before;
    assert!(grown < 64 * 1024, "the daemon's peak grew by {grown} KiB");
    let log = d.log();
    assert!(log.contains("(cut at 4096 bytes)"), "the long line is logged cut");
    assert!(log.contains("after the spew"), "the lines after one that is not UTF-8 are logged");

    let started = Instant::now();
    let out = d.cli(&["run", "helps"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("faulty plugin left a helper running"));
    assert!(started.elapsed() < Duration::from_secs(60), "the run waited for its helper: {:?}", started.elapsed());
    let helper = read_pid(&helper_file, &d);
    d.wait_for("the helper to end", 5, || (!alive(helper)).then_some(()));
}

/// A worker whose daemon is killed (SIGKILL: no chance to stop it) ends too, even with a
/// plugin that never returns.
#[test]
fn a_worker_ends_with_its_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("worker.pid");
    let mut d =
        TestDaemon::start(&[("hangs", &faulty_with("hang", &format!("pid_file = \"{}\"", pid_file.display())))]);
    let (bin, config) = (crate::util::RECD, d.config());
    let run = std::thread::spawn(move || {
        std::process::Command::new(bin).args(["run", "hangs", "--config"]).arg(config).output().unwrap()
    });
    let worker = read_pid(&pid_file, &d);
    assert!(alive(worker));
    d.kill9();
    d.wait_for("the worker to end", 5, || (!alive(worker)).then_some(()));
    assert!(!run.join().unwrap().status.success());
}
