//! SIGTERM during a run: the run gets the grace period, is then cancelled and its version
//! discarded; the daemon exits 0, removes its sockets, and after a restart serves the
//! previous version with no staging data left in the store.

use std::time::{Duration, Instant};

use crate::util::TestDaemon;

fn job(params: &str) -> String {
    format!("plugin = \"faulty\"\ntable = \"t\"\n[params]\n{params}\n")
}

/// Names of the data trees in a stopped daemon's store.
fn data_trees(d: &TestDaemon) -> Vec<String> {
    let db = sled::open(d.dir.path().join("data")).expect("the store opens once the daemon is gone");
    let mut names: Vec<String> = db
        .tree_names()
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .filter(|n| n.starts_with("data/"))
        .collect();
    names.sort();
    names
}

#[test]
fn sigterm_during_a_run_keeps_the_previous_version_and_leaves_no_staging_data() {
    let mut d = TestDaemon::start_with(&[("j", &job("mode = \"ok\""))], "shutdown_grace_seconds = 1\n");
    d.run_job("j");
    d.write_job("j", &job("mode = \"slow\"\nseconds = 30"));
    assert!(d.cli(&["reload"]).status.success());
    let (bin, config) = (crate::util::RECD, d.config());
    let run = std::thread::spawn(move || {
        std::process::Command::new(bin).args(["run", "j", "--config"]).arg(config).output().unwrap()
    });
    d.wait_for("the slow run", 10, || d.cli(&["status"]).stdout.windows(9).any(|w| w == b"[running]").then_some(()));
    let started = Instant::now();
    assert!(d.stop(), "the daemon must exit 0 on SIGTERM:\n{}", d.log());
    let took = started.elapsed();
    // grace (1 s) + the plugin stops when asked (it polls the cancellation callback)
    assert!(took < Duration::from_secs(6), "shutdown took {took:?}");
    assert!(!d.socket().exists() && !d.admin_socket().exists(), "sockets removed");
    let out = run.join().unwrap();
    assert!(!out.status.success(), "the interrupted run must not report success");
    assert_eq!(data_trees(&d), ["data/t/00000000000000000001"], "only the published version is left");

    d.restart();
    let items: Vec<String> = redis::cmd("ZREVRANGE").arg("t:u1").arg(0).arg(-1).query(&mut d.redis()).unwrap();
    assert_eq!(items, ["a", "b", "c"]);
    let h = d.history("j");
    assert_eq!(h[0]["status"], "cancelled", "{h:?}");
    assert!(h[0]["error"].as_str().unwrap().contains("shutting down"));
}

#[test]
fn systemd_is_told_when_the_daemon_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut d = TestDaemon::start_env(&[], "", &[("NOTIFY_SOCKET", notify.to_str().unwrap())]);
    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf).expect("READY=1 from the daemon");
    assert_eq!(&buf[..n], b"READY=1");
    // ready means serving
    assert!(d.cli(&["status"]).status.success());
    assert!(d.stop());
    let n = listener.recv(&mut buf).expect("STOPPING=1 from the daemon");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// An upgrade replaces the executable while the daemon runs: runs started afterwards still
/// get a worker (the running daemon's own binary, not whatever is at its path now).
#[test]
fn runs_still_start_after_the_executable_is_replaced_on_disk() {
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = bin_dir.path().join("recd");
    std::fs::copy(crate::util::RECD, &bin).unwrap();
    let job = "plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n";
    let mut d = TestDaemon::start(&[("t", job)]);
    d.restart_from(&bin);
    assert!(d.run_job("t").contains("version 1"));
    // as a package manager does: a new file under the same name
    std::fs::remove_file(&bin).unwrap();
    std::fs::copy(crate::util::RECD, &bin).unwrap();
    assert!(d.run_job("t").contains("version 2"));
    std::fs::remove_file(&bin).unwrap();
    assert!(d.run_job("t").contains("version 3"), "the file is gone, the running binary is not");
}

/// `recd migrate` copies a stopped daemon's store into a new data dir, which then serves
/// the same tables.
#[test]
fn recd_migrate_moves_the_store_to_a_new_data_dir() {
    let job = "plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n";
    let mut d = TestDaemon::start(&[("t", job)]);
    d.run_job("t");
    assert!(d.stop());
    let (from, to) = (d.dir.path().join("data"), d.dir.path().join("data2"));
    let out = d.cli(&["migrate", "--from", from.to_str().unwrap(), "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("migrated 1 tables"));
    let config = std::fs::read_to_string(d.config()).unwrap().replace("data_dir = \"data\"", "data_dir = \"data2\"");
    std::fs::write(d.config(), config).unwrap();
    std::fs::remove_dir_all(&from).unwrap();
    d.restart();
    assert!(d.cli(&["verify"]).status.success());
    let list: Vec<String> = redis::cmd("ZREVRANGE").arg("t:u1").arg(0).arg(-1).query(&mut d.redis()).unwrap();
    assert_eq!(list.len(), 3);
}

#[test]
fn a_second_daemon_on_the_same_data_dir_says_another_holds_it() {
    let d = TestDaemon::start(&[]);
    let config = std::fs::read_to_string(d.config())
        .unwrap()
        .replace("\"recd.sock\"", "\"second.sock\"")
        .replace("\"admin.sock\"", "\"second-admin.sock\"");
    let second = d.dir.path().join("second.toml");
    std::fs::write(&second, config).unwrap();
    let out = std::process::Command::new(crate::util::RECD).args(["serve", "--config"]).arg(&second).output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    let lock = d.dir.path().join("data/db");
    assert!(
        said.contains(&format!(
            "another process holds the lock on {}: is another recd serving this data_dir?",
            lock.display()
        )),
        "{said}"
    );
    assert!(!said.contains("WouldBlock"), "{said}");
    let pong: String = redis::cmd("PING").query(&mut d.redis()).unwrap();
    assert_eq!(pong, "PONG", "the first daemon keeps serving");
}

/// jemalloc's allocated bytes, as INFO reports them.
fn allocated_bytes(d: &TestDaemon) -> f64 {
    let info: String = redis::cmd("INFO").query(&mut d.redis()).unwrap();
    let line =
        info.lines().find(|l| l.starts_with("recd_allocator_allocated_bytes ")).expect("allocated bytes in INFO");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_dropped_version_gives_its_memory_back() {
    // 120,000 lists of 20: about 60 MB of sled pages in memory. With one version kept, each
    // publish drops the one before; sled reads a dropped tree's pages back to free them and
    // left them allocated until later work collected them, so the daemon held one version
    // more until enough other work came along. A thread of its own now frees them within
    // seconds. Measured: 59 MB allocated after the first publish, then 126 MB 3 s after
    // two drops without that thread, 63-64 MB with it (drops made by the publish then).
    let job = "plugin = \"synthetic\"\n[params]\nusers = 120000\nitems = 20\n";
    let d = TestDaemon::start_with(&[("t", job)], "retain_versions = 1\nstore_cache_mb = 16\n");
    d.run_job("t");
    let one_version = allocated_bytes(&d);
    d.run_job("t");
    d.run_job("t");
    // Read once, after a pause: a read of the store (INFO reads it) pins, and enough
    // pins would collect the pages with or without the reclaim thread. The drop itself
    // runs after the publish, on a thread of its own, which then collects for 2 s.
    std::thread::sleep(Duration::from_secs(4));
    let after_drops = allocated_bytes(&d);
    eprintln!("allocated: {:.0} MB after one publish, {:.0} MB after two drops", one_version / 1e6, after_drops / 1e6);
    assert!(
        after_drops - one_version < 20e6,
        "allocated {:.0} MB after one publish, still {:.0} MB 4 s after two drops",
        one_version / 1e6,
        after_drops / 1e6
    );
    let list: Vec<String> = redis::cmd("ZREVRANGE").arg("t:000000000007").arg(0).arg(-1).query(&mut d.redis()).unwrap();
    assert_eq!(list.len(), 20);
}
