//! The Debian package (`make deb`, scripts/deb/build.sh): built from this build, checked
//! with dpkg-deb's own eyes (control, conffiles, contents, maintainer scripts), its
//! systemd unit verified by `systemd-analyze verify` where that is installed, and then
//! unpacked into a temporary root and run from there: the packaged binary serves, its
//! workers load the packaged plugins and ONNX Runtime, and every shipped demo job runs
//! on the packaged demo data.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{TestDaemon, root};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every `/a/b` of `from` in the file's text becomes `<root>/a/b`: the unpacked package
/// sees its own files, as an installed one sees them at `/`.
fn relocate(file: &Path, prefixes: &[&str], root: &Path) {
    let mut text = std::fs::read_to_string(file).unwrap();
    for prefix in prefixes {
        text = text.replace(&format!("\"{prefix}"), &format!("\"{}{prefix}", root.display()));
    }
    std::fs::write(file, text).unwrap();
}

fn workspace_version() -> String {
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let line = cargo.lines().find(|l| l.starts_with("version = ")).unwrap();
    line.trim_start_matches("version = ").trim_matches('"').to_string()
}

#[test]
fn the_debian_package_installs_a_layout_that_runs_every_demo_job() {
    let work = tempfile::tempdir().unwrap();
    // gzip: the archive's compression is dpkg-deb's business; xz (what `make deb` uses)
    // takes a minute on two cores.
    let deb = run(Command::new(root().join("scripts/deb/build.sh")).arg(work.path()).env("DEB_COMPRESS", "gzip"));
    let deb = PathBuf::from(deb.trim());
    let version = workspace_version();
    assert_eq!(deb.file_name().unwrap().to_str().unwrap(), format!("recd_{version}_amd64.deb"));

    let control = run(Command::new("dpkg-deb").arg("--field").arg(&deb));
    for want in ["Package: recd", &format!("Version: {version}"), "Architecture: amd64", "Depends: libc6 (>= 2."] {
        assert!(control.contains(want), "{want:?} not in:\n{control}");
    }
    let unpacked = work.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(unpacked.join("DEBIAN")));
    let shipped_jobs: Vec<String> = std::fs::read_dir(root().join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    let conffiles = std::fs::read_to_string(unpacked.join("DEBIAN/conffiles")).unwrap();
    assert!(conffiles.lines().any(|l| l == "/etc/recd/recd.toml"), "{conffiles}");
    for job in &shipped_jobs {
        assert!(conffiles.lines().any(|l| l == format!("/etc/recd/jobs/{job}")), "{job} not a conffile");
    }
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(unpacked.join("DEBIAN").join(script)));
    }
    let bin = unpacked.join("usr/bin/recd");
    let sections = run(Command::new("readelf").args(["-S", "--wide"]).arg(&bin));
    assert!(!sections.contains(".debug_info"), "the packaged binary is not stripped");
    for file in
        ["usr/lib/recd/libonnxruntime.so.1.31.1", "lib/systemd/system/recd.service", "usr/include/recd/recd_plugin.h"]
    {
        assert!(unpacked.join(file).is_file(), "{file} missing");
    }
    // The store is the recd user's: made by postinst, never by an unpack (which would
    // reset its owner on every upgrade).
    assert!(!unpacked.join("var/lib/recd").exists());
    let link = std::fs::read_link(unpacked.join("usr/lib/recd/libonnxruntime.so")).unwrap();
    assert_eq!(link, Path::new("libonnxruntime.so.1.31.1"));
    // Nothing group- or world-writable (the plugin trust check would refuse the folder).
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for line in listing.lines() {
        let mode = line.split_whitespace().next().unwrap();
        assert!(mode.starts_with('l') || (&mode[5..6] != "w" && &mode[8..9] != "w"), "writable: {line}");
    }
    // Depends names the package of every library the binaries load, as dpkg -S finds it.
    let depends = run(Command::new("dpkg-deb").args(["--field"]).arg(&deb).arg("Depends"));
    let elves = [
        bin.clone(),
        unpacked.join("usr/lib/recd/libonnxruntime.so.1.31.1"),
        unpacked.join("usr/lib/recd/plugins/librecd_ranking.so"),
    ];
    for elf in &elves {
        let dynamic = run(Command::new("readelf").arg("-d").arg(elf));
        for lib in dynamic.lines().filter_map(|l| l.split("Shared library: [").nth(1)).map(|l| l.trim_end_matches(']'))
        {
            let owner = run(Command::new("sh").arg("-c").arg(format!("dpkg -S '*/{lib}' | head -1 | cut -d: -f1")));
            let owner = owner.trim();
            assert!(!owner.is_empty() && depends.contains(owner), "{lib} ({owner}) is not in Depends: {depends}");
        }
    }
    assert!(unpacked.join("usr/share/recd/scripts/train_ranking.py").is_file(), "recd init's trainer");

    // The unit the package installs is the one docs/operations.md shows.
    let unit = std::fs::read_to_string(unpacked.join("lib/systemd/system/recd.service")).unwrap();
    let unit_body: String = unit.lines().skip_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect();
    let ops = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    assert!(ops.contains(&unit_body), "docs/operations.md does not show the packaged unit:\n{unit_body}");
    if Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success()) {
        // The unit as shipped, but for ExecStart's binary, which is in the unpacked tree (a
        // `--root` would also look for systemd's own units and /bin/kill there).
        let copy = work.path().join("unit/recd.service");
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::write(&copy, unit.replace("ExecStart=/usr/bin/recd", &format!("ExecStart={}", bin.display())))
            .unwrap();
        let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !err.contains("recd.service"), "systemd-analyze verify:\n{err}");
    } else {
        eprintln!("systemd-analyze is not installed: the unit was not verified");
    }

    // `recd init` finds the packaged plugins, ONNX Runtime and trainer beside the binary:
    // what stops it here is the missing data, checked after them.
    let init = Command::new(&bin)
        .arg("init")
        .arg(work.path().join("setup"))
        .args(["--interactions", "/nonexistent.csv"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&init.stderr);
    assert!(!init.status.success() && err.contains("/nonexistent.csv does not exist"), "{err}");

    // Run it from the unpacked root, paths moved under it as a chroot would see them.
    relocate(
        &unpacked.join("etc/recd/recd.toml"),
        &["/var/lib/recd", "/run/recd", "/etc/recd", "/usr/lib/recd"],
        &unpacked,
    );
    for job in &shipped_jobs {
        relocate(&unpacked.join("etc/recd/jobs").join(job), &["/usr/share/recd"], &unpacked);
    }
    std::fs::create_dir_all(unpacked.join("run/recd")).unwrap();
    let config = unpacked.join("etc/recd/recd.toml");
    let d = TestDaemon::start_installed(
        tempfile::tempdir().unwrap(),
        &bin,
        &config,
        &unpacked.join("run/recd/recd.sock"),
        &unpacked.join("run/recd/admin.sock"),
    );
    let recd = |args: &[&str]| run(Command::new(&bin).args(args).arg("--config").arg(&config));
    let status = recd(&["status"]);
    for job in &shipped_jobs {
        assert!(status.contains(&format!("  {}: ", job.trim_end_matches(".toml"))), "{job} not loaded:\n{status}");
    }
    // The jobs with a schedule, run now; the `after` ones follow them on their own.
    for job in ["cold-start", "ranking", "churn", "bought-together"] {
        recd(&["run", job]);
    }
    for job in ["diversity", "churn-retention"] {
        let ok = || d.history(job).iter().any(|r| r["status"] == "ok").then_some(());
        d.wait_for(&format!("{job} to run after its upstream job"), 120, ok);
    }
    let top = d.redis_cli(&["ZREVRANGE", "ranking:17850", "0", "-1"]);
    assert_eq!(top.lines().count(), 10, "{top}");
    let tier = d.redis_cli(&["HGET", "churn:17850", "tier"]);
    assert!(["low", "medium", "high"].contains(&tier.trim()), "{tier}");
    for table in ["cold-start:__default__", "diversity:17850", "bought-together:85123A"] {
        assert!(!d.redis_cli(&["ZREVRANGE", table, "0", "-1"]).trim().is_empty(), "{table} is empty");
    }
}
