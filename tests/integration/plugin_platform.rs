//! What the daemon guarantees around plugins: output is checked before anything is
//! published; untrusted or unpinned files are refused; a new build dropped in is used by
//! the next run while a running one keeps its code; `recd plugins` says what is loaded.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::c_plugin::compile_c_with;
use crate::util::{TestDaemon, plugins_dir, root};

fn faulty_job(mode: &str, extra: &str) -> String {
    format!("plugin = \"faulty\"\ntable = \"t\"\n{extra}\n[params]\nmode = \"{mode}\"\ncount = 7\n")
}

#[test]
fn bad_output_is_refused_with_the_rows_named_and_nothing_is_published() {
    let d = TestDaemon::start(&[("j", &faulty_job("ok", ""))]);
    d.run_job("j");
    let users_csv = d.dir.path().join("users.csv");
    std::fs::write(&users_csv, "user_id\nu1\nu2\n").unwrap();
    let known = format!("known_users = \"users.user_id\"\n[inputs]\nusers = \"{}\"", users_csv.display());
    let cases = [
        ("nan", "", "output row 1: user \"u1\" item \"b\" has a non-finite score NaN"),
        ("dup", "", "output row 1: user \"u1\" lists item \"a\" twice"),
        (
            "many",
            "max_items_per_user = 5",
            "output for user \"u1\" lists more than max_items_per_user (5) items (rows 0..6)",
        ),
        ("empty", "", "the run emitted no rows (set `allow_empty = true` in the job to publish an empty table)"),
        ("stranger", known.as_str(), "output row 1: user \"nobody\" does not appear in users.user_id"),
        ("scattered", "", "output row 2: rows of user \"u1\" are not contiguous"),
        (
            "badschema",
            "",
            "output rows must be (user Utf8, item Utf8, score Float32), got (user Utf8, item Utf8, score Float64)",
        ),
    ];
    for (mode, extra, want) in cases {
        d.write_job("j", &faulty_job(mode, extra));
        let reload = d.cli(&["reload"]);
        assert!(reload.status.success(), "{mode}: {}", String::from_utf8_lossy(&reload.stderr));
        let out = d.cli(&["run", "j"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{mode}: want {want:?} in {err}");
        let info: String = redis::cmd("INFO").query(&mut d.redis()).unwrap();
        assert!(info.contains("table_t:version=1,users=1,rows=3"), "{mode} published something:\n{info}");
    }
    // an empty table is fine when the job says so
    d.write_job("j", &faulty_job("empty", "allow_empty = true"));
    assert!(d.cli(&["reload"]).status.success());
    // numbered after the refused runs, whose numbers are not given again
    let want = format!("version {}: 0 users, 0 rows", cases.len() + 2);
    let out = d.run_job("j");
    assert!(out.contains(&want), "want {want:?} in {out}");
}

fn copy_plugin(from: &str, to: &Path) {
    std::fs::copy(plugins_dir().join(from), to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn untrusted_or_unpinned_plugin_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let so = dir.path().join("librecd_faulty.so");
    copy_plugin("librecd_faulty.so", &so);
    let job = |extra: &str| format!("plugin = \"{}\"\ntable = \"t\"\n{extra}\n[params]\nmode = \"ok\"\n", so.display());
    let d = TestDaemon::start(&[("j", &job(""))]);
    d.run_job("j");

    std::fs::set_permissions(&so, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = d.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is writable by group or others (mode 0777): refusing to load it (chmod go-w)"), "{err}");
    assert!(!d.cli(&["run", "j"]).status.success(), "a run must refuse the file too");
    std::fs::set_permissions(&so, std::fs::Permissions::from_mode(0o755)).unwrap();

    // a file owned by another user: only root can make one, which is how CI runs
    let me = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    if me == 0 {
        std::os::unix::fs::chown(&so, Some(12345), None).unwrap();
        let err = String::from_utf8_lossy(&d.cli(&["reload"]).stderr).into_owned();
        assert!(err.contains("is owned by uid 12345, not by recd (uid 0) or root: refusing to load it"), "{err}");
        std::os::unix::fs::chown(&so, Some(0), None).unwrap();
    }

    let wrong = "0".repeat(64);
    d.write_job("j", &job(&format!("plugin_sha256 = \"{wrong}\"")));
    let err = String::from_utf8_lossy(&d.cli(&["reload"]).stderr).into_owned();
    assert!(err.contains("field `plugin_sha256`: the plugin file has sha256"), "{err}");
    let sha = crate::util::sha256sum(&so);
    d.write_job("j", &job(&format!("plugin_sha256 = \"{sha}\"")));
    assert!(d.cli(&["reload"]).status.success());
    assert!(d.run_job("j").contains("version 2"));
}

#[test]
fn a_new_build_is_used_by_the_next_run_while_a_running_one_keeps_its_code() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // a slow run of the faulty plugin, whose file is overwritten in place mid-run
    let slow_so = dir.path().join("librecd_slowone.so");
    copy_plugin("librecd_faulty.so", &slow_so);
    let slow =
        format!("plugin = \"{}\"\ntable = \"slow\"\n[params]\nmode = \"slow\"\nseconds = 1.5\n", slow_so.display());
    // the C plugin in version 0.1.0, then 0.2.0
    let recent = root().join("plugins/recent/recent.c");
    let build = tempfile::tempdir().unwrap();
    let v1 = compile_c_with(&recent, build.path(), "v1", &["-DRECENT_VERSION=\"0.1.0\""]);
    let v2 = compile_c_with(&recent, build.path(), "v2", &["-DRECENT_VERSION=\"0.2.0\""]);
    let recent_so = dir.path().join("librecd_recent.so");
    std::fs::copy(&v1, &recent_so).unwrap();
    let recent_job = format!(
        "plugin = \"{}\"\n[inputs]\ninteractions = \"{}/data/demo/retail.parquet\"\n[params]\nk = 3\n",
        recent_so.display(),
        root().display()
    );
    let d = TestDaemon::start(&[("slowone", &slow), ("recent", &recent_job)]);

    let (bin, config) = (crate::util::RECD, d.config());
    let running = std::thread::spawn(move || {
        std::process::Command::new(bin).args(["run", "slowone", "--config"]).arg(config).output().unwrap()
    });
    // Running is not enough: the file is overwritten only once the worker has loaded its
    // snapshot (under load, an overwrite between the run's start and its snapshot made
    // the run load the new file, which is right, and failed this test).
    d.wait_for("the slow run's worker to load its plugin", 10, || {
        d.log().lines().any(|l| l.contains("plugin loaded") && l.contains("slowone")).then_some(())
    });
    // overwrite in place, not atomically, with another plugin's bytes
    std::fs::write(&slow_so, std::fs::read(plugins_dir().join("librecd_template.so")).unwrap()).unwrap();
    let out = running.join().unwrap();
    assert!(out.status.success(), "the running run must finish on its code: {}", String::from_utf8_lossy(&out.stderr));
    // the next run gets the new file: the template plugin, which rejects these params
    let out = d.cli(&["run", "slowone"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("plugin `template` rejected its params"));
    // each run's history names the build it ran, the failed one too
    let (template, faulty) = (
        crate::util::sha256sum(&plugins_dir().join("librecd_template.so")),
        crate::util::sha256sum(&plugins_dir().join("librecd_faulty.so")),
    );
    let runs = d.history("slowone");
    let builds: Vec<(&str, &str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap(),
                r["plugin"]["name"].as_str().unwrap(),
                r["plugin"]["sha256"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(builds, [("failed", "template", template.as_str()), ("ok", "faulty", faulty.as_str())], "{runs:?}");
    let plugins = String::from_utf8_lossy(&d.cli(&["plugins"]).stdout).into_owned();
    let slow_line = plugins.lines().find(|l| l.ends_with(&slow_so.display().to_string())).expect("slowone listed");
    assert!(
        slow_line.starts_with(&format!("template {} abi 1.3 sha256 {template} ", env!("CARGO_PKG_VERSION"))),
        "{plugins}"
    );
    let failed_run = runs[0]["run_id"].as_u64().unwrap();
    assert!(slow_line.contains(&format!(" last_run {failed_run} /")), "{plugins}");

    d.run_job("recent");
    let plugins = String::from_utf8_lossy(&d.cli(&["plugins"]).stdout).into_owned();
    assert!(plugins.contains(&format!("recent 0.1.0 abi 1.3 sha256 {}", crate::util::sha256sum(&v1))), "{plugins}");
    let first_seen = |text: &str| {
        let line = text.lines().find(|l| l.starts_with("recent ")).expect("recent listed").to_string();
        line.split(" first_seen ").nth(1).unwrap().split(' ').next().unwrap().to_string()
    };
    let v1_seen = first_seen(&plugins);
    d.run_job("recent");
    let plugins = String::from_utf8_lossy(&d.cli(&["plugins"]).stdout).into_owned();
    assert_eq!(first_seen(&plugins), v1_seen, "a second run of one build leaves its first_seen: {plugins}");
    std::fs::copy(&v2, &recent_so).unwrap(); // in place
    d.run_job("recent");
    let plugins = String::from_utf8_lossy(&d.cli(&["plugins"]).stdout).into_owned();
    assert!(plugins.contains(&format!("recent 0.2.0 abi 1.3 sha256 {}", crate::util::sha256sum(&v2))), "{plugins}");
    assert_ne!(first_seen(&plugins), v1_seen, "{plugins}");
    assert!(plugins.contains(&recent_so.display().to_string()));
    let runs = d.history("recent");
    assert_eq!(runs[0]["plugin"]["version"], "0.2.0");
    assert_eq!(runs[1]["plugin"]["version"], "0.1.0");
}
