//! Live reload of the jobs folder: files added, edited (replaced atomically, as editors
//! save), broken and deleted while the daemon runs take effect within 2 s; a broken file
//! keeps its last good definition; SIGHUP reloads too.

use std::time::{Duration, Instant};

use crate::util::TestDaemon;

fn jobs_text(d: &TestDaemon) -> String {
    String::from_utf8_lossy(&d.cli(&["jobs", "--next", "1"]).stdout).into_owned()
}

/// Waits until `jobs` output satisfies `ok`; returns how long it took.
fn until(d: &TestDaemon, what: &str, ok: impl Fn(&str) -> bool) -> Duration {
    let started = Instant::now();
    d.wait_for(what, 5, || ok(&jobs_text(d)).then_some(()));
    started.elapsed()
}

#[test]
fn edits_renames_and_deletes_apply_within_two_seconds() {
    let d = TestDaemon::start(&[]);
    let job = |sched: &str, zone: &str| {
        format!("schedule = \"{sched}\"\ntimezone = \"{zone}\"\nplugin = \"faulty\"\n[params]\nmode = \"ok\"\n")
    };

    // added (written in place)
    std::fs::write(d.jobs_dir().join("nightly.toml"), job("0 3 * * *", "UTC")).unwrap();
    let took = until(&d, "the new job", |t| t.contains("nightly: schedule \"0 3 * * *\" (UTC)"));
    assert!(took < Duration::from_secs(2), "add took {took:?}");

    // edited by an editor's atomic save (temp file renamed over it)
    d.write_job("nightly", &job("30 2 * * *", "Europe/Berlin"));
    let took = until(&d, "the edit", |t| t.contains("nightly: schedule \"30 2 * * *\" (Europe/Berlin)"));
    assert!(took < Duration::from_secs(2), "edit took {took:?}");
    assert!(jobs_text(&d).contains(" 02:30:00 +0"), "next fire time shown in the job's zone:\n{}", jobs_text(&d));

    // broken: the last good definition stays, the error is shown with file, line and field
    d.write_job("nightly", &job("30 2 * * *", "Europe/Berln"));
    d.wait_for("the error in status", 5, || {
        let s = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
        s.contains("nightly.toml:2: field `timezone`: unknown time zone \"Europe/Berln\"").then_some(())
    });
    assert!(jobs_text(&d).contains("(Europe/Berlin)"));

    // renamed: the job follows its file name
    std::fs::rename(d.jobs_dir().join("nightly.toml"), d.jobs_dir().join("daily.toml")).unwrap();
    d.write_job("daily", &job("0 6 * * *", "UTC"));
    let took = until(&d, "the rename", |t| t.contains("daily: schedule \"0 6 * * *\"") && !t.contains("nightly"));
    assert!(took < Duration::from_secs(2), "rename took {took:?}");

    // deleted
    std::fs::remove_file(d.jobs_dir().join("daily.toml")).unwrap();
    let took = until(&d, "the delete", |t| !t.contains("daily"));
    assert!(took < Duration::from_secs(2), "delete took {took:?}");

    // editor droppings are ignored
    std::fs::write(d.jobs_dir().join(".daily.toml.swp"), "garbage").unwrap();
    std::fs::write(d.jobs_dir().join("4913"), "").unwrap();
    std::fs::write(d.jobs_dir().join("daily.toml~"), "garbage").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(!status.contains("swp") && !status.contains("4913") && !status.contains("toml~"), "{status}");
}

fn status_text(d: &TestDaemon) -> String {
    String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned()
}

/// Edits that no folder event shows: a job file's symlink target rewritten, its plugin
/// replaced by a broken file and then restored (a copy beside the shipped ones), a plugin
/// installed after its job, and a job's input that appears after the job was refused.
#[test]
fn edits_through_a_symlink_and_a_replaced_plugin_apply_too() {
    let outside = tempfile::tempdir().unwrap();
    let plugin = outside.path().join("librecd_faulty.so");
    std::fs::copy(crate::util::plugins_dir().join("librecd_faulty.so"), &plugin).unwrap();
    let target = outside.path().join("linked.toml");
    let job = |zone: &str| {
        format!(
            "schedule = \"0 3 * * *\"\ntimezone = \"{zone}\"\nplugin = \"{}\"\n[params]\nmode = \"ok\"\n",
            plugin.display()
        )
    };
    std::fs::write(&target, job("UTC")).unwrap();
    let d = TestDaemon::start(&[]);
    std::os::unix::fs::symlink(&target, d.jobs_dir().join("linked.toml")).unwrap();
    until(&d, "the linked job", |t| t.contains("linked: schedule \"0 3 * * *\" (UTC)"));

    // rewritten in place, where the jobs folder sees nothing
    std::fs::write(&target, job("Europe/Berlin")).unwrap();
    d.wait_for("the edit of the link's target", 15, || jobs_text(&d).contains("(Europe/Berlin)").then_some(()));

    // the plugin broken, then restored: the error shows, then goes
    let good = std::fs::read(&plugin).unwrap();
    let tmp = outside.path().join("tmp.so");
    std::fs::write(&tmp, b"not a shared library").unwrap();
    std::fs::rename(&tmp, &plugin).unwrap();
    d.wait_for("the plugin's error", 15, || status_text(&d).contains("linked.toml:3: field `plugin`").then_some(()));
    std::fs::write(&tmp, good).unwrap();
    std::fs::rename(&tmp, &plugin).unwrap();
    d.wait_for("the error to clear", 15, || (!status_text(&d).contains("field `plugin`")).then_some(()));

    // a new job whose plugin is not installed yet: refused, then loaded once it is
    let later = outside.path().join("librecd_later.so");
    d.write_job("later", &format!("plugin = \"{}\"\n[params]\nmode = \"ok\"\n", later.display()));
    d.wait_for("the missing plugin's error", 15, || {
        status_text(&d).contains("later.toml:1: field `plugin`").then_some(())
    });
    std::fs::write(&tmp, std::fs::read(&plugin).unwrap()).unwrap();
    std::fs::rename(&tmp, &later).unwrap();
    d.wait_for("the installed plugin", 15, || jobs_text(&d).contains("later: manual").then_some(()));
    assert!(!status_text(&d).contains("field `plugin`"), "{}", status_text(&d));

    // a new job whose input is not there yet (a data folder not mounted yet): refused,
    // then loaded once the file appears, without an edit or `recd reload`
    let input = outside.path().join("mounted-later").join("events.csv");
    let job = format!("plugin = \"faulty\"\n[inputs]\nevents = \"{}\"\n[params]\nmode = \"ok\"\n", input.display());
    d.write_job("waits", &job);
    d.wait_for("the missing input's error", 15, || {
        status_text(&d).contains("waits.toml:3: field `inputs.events`").then_some(())
    });
    std::fs::create_dir(input.parent().unwrap()).unwrap();
    std::fs::write(&input, "user_id,item_id\nu1,a\n").unwrap();
    d.wait_for("the job once its input is there", 15, || jobs_text(&d).contains("waits: manual").then_some(()));
    assert!(!status_text(&d).contains("inputs.events"), "{}", status_text(&d));
}

/// A job whose file is broken when the daemon starts keeps its table: another job naming
/// the table is refused, and the table's versions stay for the job once its file is fixed.
#[test]
fn a_broken_job_file_at_start_up_keeps_its_table_from_other_jobs() {
    let ok = "plugin = \"faulty\"\n[params]\nmode = \"ok\"\n";
    let mut d = TestDaemon::start(&[("t1", ok)]);
    d.run_job("t1");
    d.run_job("t1");
    assert!(d.stop());
    d.write_job("t1", &format!("device = \"tpu\"\n{ok}"));
    d.write_job("zz", &format!("table = \"t1\"\n{ok}"));
    d.restart();
    let status = status_text(&d);
    assert!(
        status.contains("zz.toml:1: field `table`: table \"t1\" is published by job \"t1\"")
            && status.contains("whose file has errors"),
        "{status}"
    );
    let out = d.cli(&["run", "zz"]);
    assert!(!out.status.success(), "zz ran");
    d.write_job("t1", ok);
    d.wait_for("t1 back", 5, || status_text(&d).contains("t1: manual").then_some(()));
    assert!(status_text(&d).contains("t1: current version 2"), "{}", status_text(&d));
    assert!(d.cli(&["run", "t1"]).status.success());
}

#[test]
fn sighup_reloads_the_jobs_folder() {
    let d = TestDaemon::start(&[]);
    std::fs::write(d.jobs_dir().join("j.toml"), "plugin = \"faulty\"\n[params]\nmode = \"ok\"\n").unwrap();
    d.wait_for("the watcher's reload", 5, || jobs_text(&d).contains("j: manual").then_some(()));
    let pid = d.pid();
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    d.wait_for("the SIGHUP reload", 5, || d.log().contains("SIGHUP: jobs reloaded").then_some(()));
    assert!(d.cli(&["status"]).status.success(), "the daemon keeps serving after SIGHUP");
}

#[test]
fn a_deleted_jobs_table_stays_until_dropped_and_drop_refuses_a_table_in_use() {
    let publisher = "plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n";
    let reader = "plugin = \"faulty\"\ntable = \"t2\"\nfallback = [\"t\"]\n[params]\nmode = \"ok\"\n";
    let d = TestDaemon::start(&[("a", publisher), ("c", reader)]);
    d.run_job("a");
    let drop = |table: &str| {
        let out = d.cli(&["drop", table]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, said) = drop("t");
    assert!(!ok && said.contains("table `t` is published by job `a`"), "{said}");
    std::fs::remove_file(d.jobs_dir().join("a.toml")).unwrap();
    assert!(d.cli(&["reload"]).status.success());
    // The job is gone; its table still serves, as before.
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains("  t: current version 1, serving version 1 (no job publishes it: `recd drop` removes it)"),
        "{status}"
    );
    let (ok, said) = drop("t");
    assert!(!ok && said.contains("table `t` is a fallback of job `c`"), "{said}");
    d.write_job("c", &reader.replace("fallback = [\"t\"]\n", ""));
    assert!(d.cli(&["reload"]).status.success());
    let (ok, said) = drop("t");
    assert!(ok && said.starts_with("OK table t dropped (1 versions)"), "{said}");
    let gone = |d: &TestDaemon| {
        let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
        let info: String = redis::cmd("INFO").query(&mut d.redis()).unwrap();
        let n: i64 = redis::cmd("ZCARD").arg("t:u1").query(&mut d.redis()).unwrap();
        !status.contains("  t: current version") && !info.contains("table=\"t\"") && n == 0
    };
    assert!(gone(&d), "the table shows after its drop");
    let (ok, said) = drop("t");
    assert!(!ok && said.contains("no table `t`"), "{said}");
    let mut d = d;
    assert!(d.stop());
    d.restart();
    assert!(gone(&d), "the table is back after a restart");
}

#[test]
fn a_table_a_run_is_still_writing_is_not_dropped() {
    let ok = "plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n";
    let d = TestDaemon::start(&[("a", ok)]);
    d.run_job("a");
    d.write_job("a", &ok.replace("mode = \"ok\"", "mode = \"slow\"\nseconds = 3.0"));
    assert!(d.cli(&["reload"]).status.success());
    let run = std::thread::scope(|s| {
        let run = s.spawn(|| d.cli(&["run", "a"]));
        d.wait_for("the slow run", 10, || {
            String::from_utf8_lossy(&d.cli(&["jobs"]).stdout).contains("[running").then_some(())
        });
        // Past the run's start (plugin snapshot, worker start): it is writing its version.
        std::thread::sleep(std::time::Duration::from_millis(1000));
        // The job is deleted while its run goes on: the run's version is not lost, and the
        // table cannot be dropped under it.
        std::fs::remove_file(d.jobs_dir().join("a.toml")).unwrap();
        assert!(d.cli(&["reload"]).status.success());
        let drop = d.cli(&["drop", "t"]);
        let said = String::from_utf8_lossy(&drop.stderr).into_owned();
        assert!(
            !drop.status.success() && said.contains("a run or import is writing a version of table `t`"),
            "{said} {}\n{}",
            String::from_utf8_lossy(&drop.stdout),
            d.log()
        );
        run.join().unwrap()
    });
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("  t: current version 2"), "{status}");
    let drop = d.cli(&["drop", "t"]);
    assert!(drop.status.success(), "{}", String::from_utf8_lossy(&drop.stderr));
}
