//! A plugin that panics or aborts fails its run only: the daemon keeps serving the tables
//! it had, and the failure is reported with the reason.

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
