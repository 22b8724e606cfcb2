//! Power loss: the data dir lives on `powercut_fs`, an in-memory FUSE filesystem that
//! keeps only what was synced. A run publishes a new version of a table, then a rollback
//! makes the old one current again (and, in tests of their own, a promote makes a held
//! version current, a drop removes a table); the power is cut at each sync the daemon
//! makes, from its start until the CLI reports the change and twice after: right after
//! the sync keeping nothing unsynced, and during it keeping a random part of what was not
//! synced; with names made durable the way ext4's journal does, and only by an fsync of
//! their folder. After each cut the daemon starts on what the disk kept and must serve
//! one whole version, the one before or the one after; the one after whenever the cut
//! came after the CLI said it was done, and at every sync after one whose cut kept it.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::powercut_fs::{Cut, Image, Mounted, Names, PowerCutFs, Report};
use crate::util::TestDaemon;

const USERS: u32 = 100;

/// 100 users with 30 items each, and one with 10,000, whose list sled keeps in a file of
/// its own (`blobs/`): a value over a quarter of its 512 KiB log segment.
fn job(seed: u32) -> String {
    format!(
        "plugin = \"synthetic\"\nmax_items_per_user = 10000\n[params]\nusers = {USERS}\nitems = 30\nseed = {seed}\nbig_users = 1\nbig_items = 10000\n"
    )
}

/// Every user's list, in order.
fn lists(d: &TestDaemon) -> Vec<Vec<String>> {
    let mut conn = d.redis();
    let users = (0..USERS).map(|u| format!("t:{u:012}")).chain(["t:big-0".to_string()]);
    users.map(|user| redis::cmd("ZREVRANGE").arg(user).arg(0).arg(-1).query(&mut conn).unwrap()).collect()
}

/// Mounts a filesystem holding `image` at `data`, or None (with the reason printed past
/// the test harness's capture) where this process may not mount FUSE filesystems.
fn mount(image: Option<Image>, data: &Path) -> Option<(PowerCutFs, Mounted)> {
    let fs = PowerCutFs::new(image);
    match fs.mount(data) {
        Ok(mounted) => Some((fs, mounted)),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: cannot mount a FUSE filesystem here ({e}): the power-loss test needs /dev/fuse and root"
            );
            None
        }
    }
}

/// What the daemon serves and keeps that a pass checks: [`lists`] or [`lists_and_held`].
type Observe = dyn Fn(&TestDaemon) -> Vec<Vec<String>>;

/// Every user's list, then the versions the job's gate holds (as `recd status` names
/// them: `version 2`).
fn lists_and_held(d: &TestDaemon) -> Vec<Vec<String>> {
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    let held = status.lines().filter(|l| l.contains("HELD by its gate"));
    let held = held.map(|l| l.trim().split(':').next().unwrap().to_string()).collect();
    let mut all = lists(d);
    all.push(held);
    all
}

/// The disk's image once `action` has run on the daemon started on `start`, what it then
/// observes, and how many cut points a pass has: the syncs it made, and two more (sled's
/// flusher can add one in a slower pass). The daemon is stopped cleanly.
fn reference_pass(
    d: &mut TestDaemon,
    data: &Path,
    start: &Image,
    action: &dyn Fn(&TestDaemon),
    observe: &Observe,
) -> (Image, Vec<Vec<String>>, u64) {
    let (fs, mounted) = mount(Some(start.clone()), data).unwrap();
    d.restart();
    action(d);
    let lists = observe(d);
    let syncs = fs.syncs() + 2;
    assert!(d.stop());
    let image = fs.cut_now(None);
    drop(mounted);
    (image, lists, syncs)
}

/// Cuts the power at each of `syncs` syncs of a pass that starts the daemon on `start` and
/// runs `action` (four cuts a sync: plain and torn, names journaled and per folder), and
/// checks each time that what the daemon started on what the disk kept observes is
/// `before` or `after`; `after` once `action` had returned, and at every later sync once a
/// plain cut kept it (a torn cut comes during its sync, before it takes effect). Returns
/// how many served each, and whether a torn cut had anything to tear.
fn cut_at_every_sync(
    d: &mut TestDaemon,
    data: &Path,
    start: &Image,
    action: &dyn Fn(&TestDaemon),
    observe: &Observe,
    (before, after): (&[Vec<String>], &[Vec<String>]),
    syncs: u64,
) -> (usize, usize, bool) {
    let (mut served_after, mut served_before, mut torn) = (0, 0, false);
    // Per names rule: the first sync whose plain cut kept `after`, and when that pass was
    // acknowledged. Passes whose syncs number the same are compared (sled's flusher can
    // add a sync, which shifts the numbering).
    let mut kept_from: [Option<(u64, u64)>; 2] = [None, None];
    for sync in 1..=syncs {
        for (torn_seed, names) in [
            (None, Names::Journal),
            (Some(sync), Names::Journal),
            (None, Names::PerFolder),
            (Some(sync), Names::PerFolder),
        ] {
            let cut = Cut { sync, torn_seed, names };
            let (fs, mounted) = mount(Some(start.clone()), data).unwrap();
            fs.arm(cut);
            d.restart();
            action(d);
            let acknowledged_at = fs.syncs();
            let image = fs.frozen().unwrap_or_else(|| fs.cut_now(torn_seed));
            assert_eq!(fs.broken(), None);
            torn |= fs.tore_unsynced();
            d.kill9();
            drop(mounted);

            let (_fs, mounted) = mount(Some(image), data).unwrap();
            d.restart();
            let what = format!("{cut:?} (acknowledged at sync {acknowledged_at})");
            d.assert_verified(&what);
            let served = observe(d);
            assert!(served == before || served == after, "{what}: the lists served are neither version's");
            // A torn cut comes during its sync, before it takes effect: during the last sync
            // before the CLI's answer, the CLI had not answered yet.
            let acknowledged = if torn_seed.is_some() { sync > acknowledged_at } else { sync >= acknowledged_at };
            if acknowledged {
                assert!(served == after, "{what}: the acknowledged change was lost");
            }
            let kept_from = &mut kept_from[usize::from(names == Names::Journal)];
            match *kept_from {
                Some((kept, same)) if same == acknowledged_at => {
                    assert!(sync <= kept || served == after, "{what}: the change a cut at sync {kept} kept was lost");
                }
                None if torn_seed.is_none() && served == after => *kept_from = Some((sync, acknowledged_at)),
                _ => {}
            }
            served_after += usize::from(served == after);
            served_before += usize::from(served == before);
            d.kill9();
            drop(mounted);
        }
    }
    (served_after, served_before, torn)
}

/// A daemon, stopped, whose data dir is a new disk holding version 1 of table `t` (its one
/// big list in a blob file); the disk's image then, the start of a pass's cuts; and what
/// `observe` saw of version 1. None where FUSE cannot be mounted here.
fn version_1_on_a_new_disk(observe: &Observe) -> Option<(TestDaemon, PathBuf, Image, Vec<Vec<String>>)> {
    let mut d = TestDaemon::start(&[("t", &job(1))]);
    let data = empty_data_dir(&mut d);
    let (fs, mounted) = mount(None, &data)?;
    d.restart();
    d.run_job("t");
    let seen = observe(&d);
    assert_eq!(lists(&d).last().unwrap().len(), 10_000);
    assert!(std::fs::read_dir(data.join("blobs")).unwrap().count() > 0, "the big list is in a blob");
    assert!(d.stop());
    let start = fs.cut_now(None);
    drop(mounted);
    Some((d, data, start, seen))
}

/// A fresh data dir for `d`, to mount a filesystem on.
fn empty_data_dir(d: &mut TestDaemon) -> PathBuf {
    d.stop();
    let data = d.dir.path().join("data");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    data
}

#[test]
fn a_failed_fsync_fails_its_run_and_what_is_acknowledged_after_it_survives_a_power_cut() {
    let mut d = TestDaemon::start(&[("t", &job(1))]);
    let data = empty_data_dir(&mut d);
    if mount(None, &data).is_none() {
        return;
    }
    for report in [Report::Caller, Report::EveryHandle] {
        let mut tries = 0;
        while !fail_an_fsync_then_cut(&mut d, report) {
            tries += 1;
            assert!(tries < 3, "{report:?}: three tries were too slow");
        }
    }
}

/// Makes the daemon's job `t` the one of `seed`, now.
fn set_job(d: &TestDaemon, seed: u32) {
    d.write_job("t", &job(seed));
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "recd reload: {}", String::from_utf8_lossy(&out.stderr));
}

/// On a new disk: publishes version 1, fails the log's next fsync during the run of
/// version 2, publishes version 3, cuts the power, and checks version 3 is served. False
/// (and nothing checked after the failed run) where the failed run ended, or the store
/// was opened again, later than 9 s after the daemon was started: sled's flusher fsyncs
/// the log as the store opens and every 10 s after (`SLED_FLUSH_EVERY_MS`), and the
/// failure must hit the run's own fsync, and, told to every handle, sled's as it closes.
fn fail_an_fsync_then_cut(d: &mut TestDaemon, report: Report) -> bool {
    let data = empty_data_dir(d);
    d.write_job("t", &job(1));
    let (fs, mounted) = mount(None, &data).unwrap();
    let started = std::time::Instant::now();
    d.restart();
    d.run_job("t");
    let v1 = lists(d);

    // The run of version 2: the first fsync of sled's log loses what it should have written.
    set_job(d, 2);
    fs.fail_fsync("db", 1, report);
    let out = d.cli(&["run", "t"]);
    let too_slow = |d: &mut TestDaemon, what: &str| {
        let slow = started.elapsed() > std::time::Duration::from_secs(9);
        if slow {
            eprintln!("{report:?}: {what} {:?} after the start: again", started.elapsed());
            assert_eq!(fs.broken(), None);
            d.kill9();
        }
        slow
    };
    if too_slow(d, "the failed run ended") {
        return false;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(fs.failed_fsyncs(), 1, "{report:?}: the log was fsynced during the run");
    assert!(!out.status.success() && err.contains("Input/output error"), "{report:?}: {err}");
    assert_eq!(lists(d), v1, "{report:?}: version 1 keeps serving");

    // The store was opened again, on what the disk holds, at the next write (the failed
    // run's record); the next run publishes version 3. Where sled's closing fsync failed
    // too, its panic was caught.
    d.wait_for("the store opened again", 10, || d.log().contains("the store was opened again").then_some(()));
    if too_slow(d, "the store was opened again") {
        return false;
    }
    let caught = d.log().contains("sled panicked closing the failed database");
    assert_eq!(caught, matches!(report, Report::EveryHandle), "{report:?}: {}", d.log());
    let history = publish_then_cut(d, &fs, mounted, &data, &v1, &format!("{report:?}"));
    assert!(history.contains("Input/output error"), "{report:?}: the failed run is recorded:\n{history}");
    true
}

/// Once the store opened again after a failed fsync: publishes a new version (job seed
/// 3), cuts the power, and checks that the daemon started on what the disk kept serves
/// it. Returns that daemon's `recd history t`.
fn publish_then_cut(
    d: &mut TestDaemon,
    fs: &PowerCutFs,
    mounted: Mounted,
    data: &Path,
    before: &[Vec<String>],
    what: &str,
) -> String {
    set_job(d, 3);
    d.run_job("t");
    let after = lists(d);
    assert!(after != before && after.last().unwrap().len() == 10_000, "{what}: the new version is served");
    assert_eq!(fs.broken(), None);

    // The power is cut: what was acknowledged after the failure is on the disk.
    let image = fs.cut_now(None);
    d.kill9();
    drop(mounted);
    let (fs, _mounted) = mount(Some(image), data).unwrap();
    d.restart();
    d.assert_verified(&format!("{what}: after the failed fsync and the cut"));
    let served = lists(d);
    let which = if served == before { "the previous version's" } else { "neither version's" };
    assert!(served == after, "{what}: the new version was acknowledged after the failed fsync; the lists are {which}");
    let history = String::from_utf8_lossy(&d.cli(&["history", "t"]).stdout).into_owned();
    assert_eq!(fs.broken(), None);
    d.kill9();
    history
}

#[test]
fn an_fsync_failure_told_to_sleds_flusher_alone_opens_the_store_again() {
    // sled's own log lines are not printed: the watch sees them all the same.
    let mut d = TestDaemon::start_env(&[("t", &job(1))], "", &[("RECD_LOG", "info,sled=off")]);
    let data = empty_data_dir(&mut d);
    let Some((fs, mounted)) = mount(None, &data) else { return };
    d.restart();
    d.run_job("t");
    let v1 = lists(&d);

    // sled's flusher thread fsyncs the log every 10 s (`SLED_FLUSH_EVERY_MS`), and can
    // first spend up to 5 s cleaning it. Its next fsync fails, told to it alone, as a FUSE
    // filesystem tells it: whatever it had written is lost, and recd's own fsyncs would
    // succeed from now on. sled only logs the error; recd counts it a failed write and
    // opens the store again (at its check every 2 s, nothing writing).
    fs.fail_fsync_by("db", "log flusher", Report::Caller);
    d.wait_for("sled's flusher to fsync the log", 30, || (fs.failed_fsyncs() == 1).then_some(()));
    let reopened = "the store was opened again after a failed write (sled's flusher thread failed: \
                    failed to fsync from periodic flush thread: Input/output error";
    d.wait_for("the store opened again", 10, || d.log().contains(reopened).then_some(()));
    assert!(!d.log().contains("sled::flusher"), "RECD_LOG=info,sled=off printed sled's line");
    assert_eq!(lists(&d), v1, "version 1 keeps serving");
    let history = publish_then_cut(&mut d, &fs, mounted, &data, &v1, "the flusher's failed fsync");
    assert!(!history.contains("failed"), "no run failed:\n{history}");
}

#[test]
fn a_power_cut_at_any_sync_of_a_publish_or_rollback_keeps_one_whole_version_and_what_was_acknowledged() {
    let Some((mut d, data, start, old)) = version_1_on_a_new_disk(&lists) else { return };

    // A run publishing version 2, first with nothing cut (the lists every cut is checked
    // against; version 1 was synced before the daemon stopped), then cut at each sync.
    d.write_job("t", &job(2));
    let publish = |d: &TestDaemon| {
        assert_eq!(lists(d), old, "version 1 is served at start");
        d.run_job("t");
    };
    let (published_image, new, syncs) = reference_pass(&mut d, &data, &start, &publish, &lists);
    assert_ne!(new, old);
    let (published, kept_old, torn) = cut_at_every_sync(&mut d, &data, &start, &publish, &lists, (&old, &new), syncs);
    eprintln!("run: {} cuts, {published} served the new version, {kept_old} the old", syncs * 4);
    assert!(published > 0 && kept_old > 0, "the cuts landed before and after the publish");
    assert!(torn, "no torn cut had anything unsynced to tear");

    // A rollback to version 1, cut at each sync the same way.
    let rollback = |d: &TestDaemon| {
        let out = d.cli(&["rollback", "t"]);
        assert!(out.status.success(), "recd rollback: {}", String::from_utf8_lossy(&out.stderr));
    };
    let (_, rolled_back, syncs) = reference_pass(&mut d, &data, &published_image, &rollback, &lists);
    assert_eq!(rolled_back, old);
    let (back, kept_new, _) =
        cut_at_every_sync(&mut d, &data, &published_image, &rollback, &lists, (&new, &old), syncs);
    eprintln!("rollback: {} cuts, {back} served version 1 again, {kept_new} version 2", syncs * 4);
    assert!(back > 0 && kept_new > 0, "the cuts landed before and after the rollback");
}

#[test]
fn a_power_cut_at_any_sync_of_a_drop_keeps_the_table_whole_or_gone() {
    let Some((mut d, data, start, kept)) = version_1_on_a_new_disk(&lists) else { return };
    // Its job goes: a table a job publishes cannot be dropped.
    std::fs::remove_file(d.jobs_dir().join("t.toml")).unwrap();

    let drop_table = |d: &TestDaemon| {
        assert_eq!(lists(d), kept, "the table is served at start");
        let out = d.cli(&["drop", "t"]);
        assert!(out.status.success(), "recd drop: {}", String::from_utf8_lossy(&out.stderr));
    };
    let (_, gone, syncs) = reference_pass(&mut d, &data, &start, &drop_table, &lists);
    assert!(gone.iter().all(|list| list.is_empty()), "the dropped table's lists are gone");
    let (dropped, kept_whole, _) = cut_at_every_sync(&mut d, &data, &start, &drop_table, &lists, (&kept, &gone), syncs);
    eprintln!("drop: {} cuts, {dropped} left the table gone, {kept_whole} whole", syncs * 4);
    assert!(dropped > 0 && kept_whole > 0, "the cuts landed before and after the drop");
}

#[test]
fn a_power_cut_at_any_sync_of_a_held_publish_or_its_promote_keeps_what_was_acknowledged() {
    let Some((mut d, data, start, old)) = version_1_on_a_new_disk(&lists_and_held) else { return };

    // A run of version 2 that its gate holds: version 1 keeps serving, and version 2 is
    // kept, held, once the CLI answered.
    d.write_job("t", &format!("{}[gate]\nmin_users = 1000000\n", job(2)));
    let hold = |d: &TestDaemon| {
        assert_eq!(lists_and_held(d), old, "version 1 is served at start, nothing held");
        let out = d.cli(&["run", "t"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("table t version 2 held by its gate"), "{err}");
    };
    let (held_image, held, syncs) = reference_pass(&mut d, &data, &start, &hold, &lists_and_held);
    assert_eq!(held[..=USERS as usize], old[..=USERS as usize], "version 1 keeps serving");
    assert_eq!(held.last().unwrap(), &["version 2"]);
    let (kept_held, lost, _) = cut_at_every_sync(&mut d, &data, &start, &hold, &lists_and_held, (&old, &held), syncs);
    eprintln!("hold: {} cuts, {kept_held} kept version 2 held, {lost} had not kept it", syncs * 4);
    assert!(kept_held > 0 && lost > 0, "the cuts landed before and after the hold");

    // Its promote, cut the same way.
    let promote = |d: &TestDaemon| {
        assert_eq!(lists_and_held(d), held, "version 1 is served at start, version 2 held");
        let out = d.cli(&["promote", "t", "2"]);
        assert!(out.status.success(), "recd promote: {}", String::from_utf8_lossy(&out.stderr));
    };
    let (_, new, syncs) = reference_pass(&mut d, &data, &held_image, &promote, &lists_and_held);
    assert!(new != held && new[USERS as usize].len() == 10_000, "version 2 is served once promoted");
    assert!(new.last().unwrap().is_empty(), "version 2 is no longer held");
    let (promoted, kept_old, _) =
        cut_at_every_sync(&mut d, &data, &held_image, &promote, &lists_and_held, (&held, &new), syncs);
    eprintln!("promote: {} cuts, {promoted} served version 2, {kept_old} version 1", syncs * 4);
    assert!(promoted > 0 && kept_old > 0, "the cuts landed before and after the promote");
}
