//! Regression tests for the adversarial run's findings (issue 19): files that are not
//! regular files where recd reads, one job taking over another's table, a socket path
//! that holds a file, a world-readable store, leftovers of killed runs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::{RECD, TestDaemon, plugins_dir};

fn faulty_job(extra: &str) -> String {
    format!("plugin = \"faulty\"\n{extra}\n[params]\nmode = \"ok\"\n")
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Runs `recd <args> --config <daemon's>`, failing the test if it takes over `secs`: the
/// findings were commands that never returned.
fn cli_within(d: &TestDaemon, args: &[&str], secs: u64) -> Output {
    let mut child = Command::new(RECD)
        .args(args)
        .arg("--config")
        .arg(d.config())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run recd cli");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`recd {}` did not return within {secs}s\n--- daemon log ---\n{}", args.join(" "), d.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn status(d: &TestDaemon) -> String {
    text(&cli_within(d, &["status"], 10))
}

#[test]
fn fifos_devices_and_huge_files_in_the_jobs_folder_are_errors_and_nothing_wedges() {
    let mut d = TestDaemon::start(&[("good", &faulty_job(""))]);
    let jobs = d.jobs_dir();
    mkfifo(&jobs.join("zz.toml"));
    std::os::unix::fs::symlink("/dev/zero", jobs.join("zero.toml")).unwrap();
    let mut huge = "# a comment\n".repeat(200_000);
    huge.push_str("plugin = \"faulty\"\n");
    std::fs::write(jobs.join("huge.toml"), huge).unwrap();
    std::fs::create_dir(jobs.join("folder.toml")).unwrap();

    cli_within(&d, &["reload"], 10);
    let s = status(&d);
    for want in [
        "zz.toml: cannot read: is a FIFO (named pipe), not a regular file",
        "zero.toml: cannot read: is a character device, not a regular file",
        "huge.toml: cannot read: is 2400018 bytes, more than the 1048576 bytes allowed",
        "folder.toml: cannot read: is a directory, not a regular file",
    ] {
        assert!(s.contains(want), "status lacks {want:?}:\n{s}");
    }
    // The daemon still serves, and still applies edits.
    d.run_job("good");
    std::fs::write(jobs.join("later.toml"), faulty_job("")).unwrap();
    d.wait_for("a later edit", 5, || status(&d).contains("  later: manual").then_some(()));
    // `recd validate` names each file at once too.
    let out = cli_within(&d, &["validate", &jobs.join("zz.toml").display().to_string()], 10);
    assert!(text(&out).contains("is a FIFO (named pipe), not a regular file"), "{}", text(&out));
    // And it stops when asked.
    assert!(d.stop(), "the daemon exits cleanly on SIGTERM\n{}", d.log());
}

#[test]
fn inputs_and_models_that_are_not_regular_files_are_named_as_such() {
    let d = TestDaemon::start(&[]);
    let data = d.dir.path().join("data-in");
    std::fs::create_dir_all(data.join("folder.parquet")).unwrap();
    mkfifo(&data.join("pipe.onnx"));
    mkfifo(&data.join("pipe.csv"));
    let job = |extra: &str| faulty_job(extra);
    let folder_input = format!("[inputs]\nevents = \"{}\"", data.join("folder.parquet").display());
    d.write_job("a", &job(&folder_input));
    let model = format!("model = \"{}\"", data.join("pipe.onnx").display());
    d.write_job("b", &job(&model));
    let fifo_input = format!("[inputs]\nevents = \"{}\"", data.join("pipe.csv").display());
    d.write_job("c", &job(&fifo_input));
    let fifo_holdout = format!("[gate]\nholdout = \"{}\"", data.join("pipe.csv").display());
    d.write_job("f", &job(&fifo_holdout));
    let out = cli_within(&d, &["validate"], 20);
    let said = text(&out);
    for want in [
        format!(
            "a.toml:3: field `inputs.events`: input file {} is a directory, not a regular file",
            data.join("folder.parquet").display()
        ),
        format!(
            "b.toml:2: field `model`: model file {} is a FIFO (named pipe), not a regular file",
            data.join("pipe.onnx").display()
        ),
        format!(
            "c.toml:3: field `inputs.events`: input file {} is a FIFO (named pipe), not a regular file",
            data.join("pipe.csv").display()
        ),
        format!(
            "f.toml:3: field `gate.holdout`: holdout file {} is a FIFO (named pipe), not a regular file",
            data.join("pipe.csv").display()
        ),
    ] {
        assert!(said.contains(&want), "validate lacks {want:?}:\n{said}");
    }

    // A file that was fine when the job was loaded and is replaced by a FIFO before a run:
    // the run fails at once, naming it, instead of a worker waiting for a writer.
    let csv = data.join("events.csv");
    std::fs::write(&csv, "user,item\nu1,i1\n").unwrap();
    d.write_job("e", &job(&format!("[inputs]\nevents = \"{}\"", csv.display())));
    d.wait_for("job e", 5, || status(&d).contains("  e: manual").then_some(()));
    std::fs::remove_file(&csv).unwrap();
    mkfifo(&csv);
    let out = cli_within(&d, &["run", "e"], 20);
    assert!(!out.status.success());
    assert!(
        text(&out)
            .contains(&format!("input `events`: file {} is a FIFO (named pipe), not a regular file", csv.display())),
        "{}",
        text(&out)
    );
}

#[test]
fn a_job_cannot_take_over_another_jobs_table() {
    let d = TestDaemon::start(&[("ranking", &faulty_job(""))]);
    d.run_job("ranking");
    d.run_job("ranking");
    // A newcomer naming the table is refused, naming the job that publishes it.
    d.write_job("zz", &faulty_job("table = \"ranking\""));
    let want = "zz.toml:2: field `table`: table \"ranking\" is published by job \"ranking\"";
    d.wait_for("the refusal", 5, || status(&d).contains(want).then_some(()));
    let out = cli_within(&d, &["run", "zz"], 10);
    assert!(!out.status.success() && text(&out).contains("no job named `zz`"), "{}", text(&out));
    // The real versions are still there to roll back to.
    let out = cli_within(&d, &["rollback", "ranking"], 10);
    assert!(out.status.success(), "{}", text(&out));
    let history = d.history("ranking");
    assert!(history.iter().all(|r| r["job"] == "ranking"), "{history:?}");
    // `recd validate` says the same without a daemon.
    let out = cli_within(&d, &["validate"], 20);
    assert!(text(&out).contains(want), "{}", text(&out));

    // Declared shared by both, the two jobs publish it in turn.
    d.write_job("ranking", &faulty_job("shared_table = true"));
    d.write_job("zz", &faulty_job("table = \"ranking\"\nshared_table = true"));
    d.wait_for("both jobs", 5, || {
        let s = status(&d);
        (s.contains("  zz: manual") && !s.contains("job file errors")).then_some(())
    });
    d.run_job("zz");
}

#[test]
fn only_a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("recd.toml");
    std::fs::create_dir(dir.path().join("jobs")).unwrap();
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\nsocket = \"recd.sock\"\nadmin_socket = \"admin.sock\"\njobs_dir = \"jobs\"\nplugins_dir = \"{}\"\nonnxruntime = \"x\"\n",
            plugins_dir().display()
        ),
    )
    .unwrap();
    // A regular file where the socket goes is left alone, and the daemon says why it stops.
    let file = dir.path().join("recd.sock");
    std::fs::write(&file, "precious").unwrap();
    let out = Command::new(RECD).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{} exists and is a regular file: refusing to replace it", file.display())), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    // A stale socket (its daemon gone) is replaced.
    std::fs::remove_file(&file).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&file).unwrap());
    let mut child = Command::new(RECD).args(["serve", "--config"]).arg(&config).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&file).is_err() {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the daemon did not take the stale socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_data_folder_is_private_whatever_the_umask() {
    let d = TestDaemon::start_umask(&[("j", &faulty_job(""))], 0o000);
    d.run_job("j");
    let data = d.dir.path().join("data");
    let mut seen = 0;
    let mut stack = vec![data.clone()];
    while let Some(at) = stack.pop() {
        let meta = std::fs::symlink_metadata(&at).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", at.display());
            stack.extend(std::fs::read_dir(&at).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode & 0o077, 0, "{} has mode {mode:04o}", at.display());
        }
        seen += 1;
    }
    assert!(seen > 5, "the store's own files were checked ({seen} entries)");
    // The sockets keep their configured modes.
    let socket = std::fs::metadata(d.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(socket, 0o660);
}

#[test]
fn leftovers_of_killed_runs_are_removed_at_start_and_orphaned_tables_are_shown() {
    let mut d = TestDaemon::start(&[("j", &faulty_job("")), ("gone", &faulty_job(""))]);
    d.run_job("gone");
    d.kill9();
    let leftover = d.dir.path().join("data/runs/1234/candidates.arrow");
    std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    std::fs::write(&leftover, vec![0u8; 4096]).unwrap();
    std::fs::remove_file(d.jobs_dir().join("gone.toml")).unwrap();
    d.restart();
    assert!(!leftover.parent().unwrap().exists(), "the killed run's folder is removed at start");
    let s = status(&d);
    assert!(
        s.contains("  gone: current version 1, serving version 1 (no job publishes it: `recd drop` removes it)"),
        "{s}"
    );
}

/// A tmpfs of `mib` MiB mounted at `dir` for the test's life; None (with the reason
/// printed) where this process may not mount (not root, no CAP_SYS_ADMIN).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount runs");
        if !out.status.success() {
            println!(
                "SKIPPED: cannot mount a tmpfs here ({}): the full-disk test needs root",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes 1 MiB blocks to `path` until the disk is full; returns the bytes written.
fn fill_disk(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![7u8; 1 << 20];
    let mut written = 0;
    while let Ok(n) = file.write(&block) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    let _ = file.sync_all();
    written
}

#[test]
fn the_disk_reserve_opens_a_full_disk_and_runs_stop_before_the_disk_is_full() {
    let synthetic = |users: u32, seed: u32| {
        format!("plugin = \"synthetic\"\n[params]\nusers = {users}\nitems = 100\nseed = {seed}\n")
    };
    let slow = "plugin = \"faulty\"\ntable = \"s\"\n[params]\nmode = \"slow\"\nseconds = 3\n";
    let mut d = TestDaemon::start(&[("t", &synthetic(2000, 1)), ("slow", slow)]);
    d.stop();
    let data = d.dir.path().join("data");
    std::fs::remove_dir_all(&data).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&data, 256) else { return };
    d.restart();
    let reserve = data.join(".recd-reserve");
    assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 64 << 20, "the default reserve is made at start");
    d.run_job("t");
    let served = |d: &TestDaemon| -> Vec<String> {
        redis::cmd("ZREVRANGE").arg("t:000000000007").arg(0).arg(-1).query(&mut d.redis()).unwrap()
    };
    let published = served(&d);
    assert_eq!(published.len(), 100);
    let filler = data.join("filler");
    let reserve_back = |d: &TestDaemon| {
        d.wait_for("the reserve to be made again", 20, || (!status(d).contains("disk reserve missing")).then_some(()));
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 64 << 20);
    };

    // Another program fills the disk while recd is stopped: recd gives back its reserve to
    // open the store, serves, and makes the reserve again once space is freed.
    d.stop();
    assert!(fill_disk(&filler) > 0);
    d.restart();
    assert_eq!(served(&d), published);
    assert!(!reserve.exists());
    let s = status(&d);
    assert!(s.contains("store: disk reserve missing (given back to open the store"), "{s}");
    std::fs::remove_file(&filler).unwrap();
    reserve_back(&d);

    // A run whose own rows would fill the disk is stopped while 64 MiB are still free: it
    // fails, naming the cause, its rows are dropped, and the store goes on taking writes.
    d.write_job("big", &synthetic(200_000, 2));
    d.wait_for("job big", 10, || status(&d).contains("  big: manual").then_some(()));
    let out = cli_within(&d, &["run", "big"], 120);
    assert!(!out.status.success(), "a run that would fill the disk must fail");
    assert!(text(&out).contains("the data disk is nearly full: "), "{}", text(&out));
    assert!(text(&out).contains("less than the 64 MiB recd keeps free (`disk_reserve_mb`)"), "{}", text(&out));
    let s = status(&d);
    assert!(!s.contains("not taking writes") && !s.contains("disk reserve missing"), "{s}");
    let out = cli_within(&d, &["verify"], 60);
    assert!(out.status.success(), "nothing of the stopped run is left: {}", text(&out));
    assert_eq!(served(&d), published);

    // sled keeps the stopped run's space for its next writes: a small run still publishes.
    d.run_job("slow");

    // The disk fills up under a run: it is stopped before sled's writes fail, and new
    // versions are refused with a clear error until space is freed. (Other writes, the
    // run's record say, can find the disk full too: the store then waits for space, as it
    // does without a reserve.)
    let running = {
        let config = d.config();
        std::thread::spawn(move || Command::new(RECD).args(["run", "slow", "--config"]).arg(config).output().unwrap())
    };
    d.wait_for("the slow run", 10, || status(&d).contains("[running]").then_some(()));
    assert!(fill_disk(&filler) > 0);
    let out = running.join().unwrap();
    // The free space the refusal names is read when it is made: 0 MiB, or a few if space
    // in the data folder was freed before the check (8 MiB, seen once on a loaded machine).
    let full = |out: &Output| {
        let text = text(out);
        let reserve =
            text.contains("the data disk is nearly full: ") && text.contains("less than the 64 MiB recd keeps free");
        reserve || text.contains("No space left on device")
    };
    assert!(full(&out), "{}", text(&out));
    assert_eq!(served(&d), published);
    let out = cli_within(&d, &["run", "t"], 60);
    assert!(
        !out.status.success() && (full(&out) || text(&out).contains("the store cannot be written")),
        "{}",
        text(&out)
    );
    std::fs::remove_file(&filler).unwrap();
    reserve_back(&d);
    d.wait_for("the store to take writes", 20, || (!status(&d).contains("not taking writes")).then_some(()));
    let out = cli_within(&d, &["verify"], 60);
    assert!(out.status.success(), "the failed run's rows are dropped: {}", text(&out));
    d.write_job("t", &synthetic(2000, 3));
    assert!(d.cli(&["reload"]).status.success());
    let out = d.run_job("t");
    assert!(out.contains("published table t version 2"), "{out}");
    assert_ne!(served(&d), published);
    assert!(d.stop(), "{}", d.log());
}

#[test]
fn a_full_disk_fails_the_run_and_the_store_takes_writes_again_once_space_is_freed() {
    let synthetic = |seed: u32| format!("plugin = \"synthetic\"\n[params]\nusers = 20000\nitems = 20\nseed = {seed}\n");
    // No disk reserve: the store fails as sled does, and waits for space to be freed.
    let mut d = TestDaemon::start_with(&[("t", &synthetic(1))], "disk_reserve_mb = 0\n");
    d.stop();
    let data = d.dir.path().join("data");
    std::fs::remove_dir_all(&data).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&data, 160) else { return };
    let plugin_copy = d.dir.path().join("librecd_copy.so");
    std::fs::copy(plugins_dir().join("librecd_faulty.so"), &plugin_copy).unwrap();
    std::fs::set_permissions(&plugin_copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        d.jobs_dir().join("copy.toml"),
        format!("plugin = \"{}\"\n[params]\nmode = \"ok\"\n", plugin_copy.display()),
    )
    .unwrap();
    d.restart();
    d.run_job("t");
    let mut redis = d.redis();
    let before: Vec<String> = redis::cmd("ZREVRANGE").arg("t:000000000007").arg(0).arg(-1).query(&mut redis).unwrap();
    assert_eq!(before.len(), 20);

    // The disk fills up: the run fails, naming the cause, and nothing served changes.
    let filler = data.join("filler");
    assert!(fill_disk(&filler) > 0);
    d.write_job("t", &synthetic(2));
    let out = cli_within(&d, &["run", "t"], 60);
    assert!(!out.status.success(), "a run on a full disk must fail");
    assert!(text(&out).contains("No space left on device"), "{}", text(&out));
    let now: Vec<String> = redis::cmd("ZREVRANGE").arg("t:000000000007").arg(0).arg(-1).query(&mut redis).unwrap();
    assert_eq!(now, before, "the published version keeps serving");
    let s = status(&d);
    assert!(s.contains("store: not taking writes"), "{s}");
    assert!(s.contains("failed"), "the failed run is shown: {s}");
    // A new plugin build cannot be snapshotted: refused before copying, nothing left over.
    let mut bytes = std::fs::read(&plugin_copy).unwrap();
    bytes.extend_from_slice(b"a new build");
    std::fs::write(&plugin_copy, bytes).unwrap();
    let out = cli_within(&d, &["run", "copy"], 30);
    assert!(text(&out).contains("not enough free space in"), "{}", text(&out));
    let leftovers: Vec<String> = std::fs::read_dir(data.join("plugins"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Space is freed: without a restart, runs publish again and verify is clean.
    std::fs::remove_file(&filler).unwrap();
    d.wait_for("the store to take writes again", 20, || {
        (!status(&d).contains("store: not taking writes")).then_some(())
    });
    let out = d.run_job("t");
    let version = out
        .split("published table t version ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok());
    // 2, or 3 where the failed run's number was given durably before the disk filled up
    assert!(matches!(version, Some(2 | 3)), "{out}");
    let out = cli_within(&d, &["verify"], 30);
    assert!(out.status.success(), "{}", text(&out));
    let after: Vec<String> = redis::cmd("ZREVRANGE").arg("t:000000000007").arg(0).arg(-1).query(&mut redis).unwrap();
    assert_ne!(after, before, "the new version is served");
    let statuses: Vec<String> = d.history("t").iter().map(|r| r["status"].as_str().unwrap().to_string()).collect();
    assert_eq!(statuses, ["ok", "failed", "ok"], "the failed run is in the history");
    d.run_job("copy");
    assert!(d.stop(), "{}", d.log());
}
