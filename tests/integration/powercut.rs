//! Power loss: the data dir lives on `powercut_fs`, an in-memory FUSE filesystem that
//! keeps only what was synced. A run publishes a new version of a table; the power is cut
//! at each sync the daemon makes, from its start until `recd run` reports the publish and
//! once after: right after the sync keeping nothing unsynced, and during it keeping a
//! random part of what was not synced; with names made durable the way ext4's journal
//! does, and only by an fsync of their folder. After each cut the daemon starts on what
//! the disk kept and must serve one whole version, the old or the new, and the new one
//! whenever the cut came after `recd run` said it was published.

use std::io::Write;
use std::path::Path;

use crate::powercut_fs::{Cut, Image, Mounted, Names, PowerCutFs};
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

#[test]
fn a_power_cut_at_any_sync_leaves_one_whole_version_and_loses_no_publish() {
    let mut d = TestDaemon::start(&[("t", &job(1))]);
    d.stop();
    let data = d.dir.path().join("data");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir(&data).unwrap();

    // Version 1, published on the filesystem; what its disk holds once the daemon stopped
    // is the starting image of every cut.
    let Some((fs, mounted)) = mount(None, &data) else { return };
    d.restart();
    d.run_job("t");
    let old = lists(&d);
    assert_eq!(old.last().unwrap().len(), 10_000);
    assert!(std::fs::read_dir(data.join("blobs")).unwrap().count() > 0, "the big list is in a blob");
    assert!(d.stop());
    let start = fs.cut_now(None);
    drop(mounted);

    // Version 2 with nothing cut: the lists every cut is checked against, and how many
    // syncs a pass makes.
    d.write_job("t", &job(2));
    let (fs, mounted) = mount(Some(start.clone()), &data).unwrap();
    d.restart();
    assert_eq!(lists(&d), old, "version 1 was synced before the daemon stopped");
    d.run_job("t");
    let new = lists(&d);
    assert_ne!(new, old);
    // Two more than this pass made: sled's flusher can add one in a slower pass.
    let syncs = fs.syncs() + 2;
    d.kill9();
    drop(mounted);

    let (mut published, mut kept_old, mut torn) = (0, 0, false);
    for sync in 1..=syncs {
        for (torn_seed, names) in [
            (None, Names::Journal),
            (Some(sync), Names::Journal),
            (None, Names::PerFolder),
            (Some(sync), Names::PerFolder),
        ] {
            let cut = Cut { sync, torn_seed, names };
            let (fs, mounted) = mount(Some(start.clone()), &data).unwrap();
            fs.arm(cut);
            d.restart();
            d.run_job("t");
            let acknowledged_at = fs.syncs();
            let image = fs.frozen().unwrap_or_else(|| fs.cut_now(torn_seed));
            assert_eq!(fs.broken(), None);
            torn |= fs.tore_unsynced();
            d.kill9();
            drop(mounted);

            let (_fs, mounted) = mount(Some(image), &data).unwrap();
            d.restart();
            let what = format!("{cut:?} (run acknowledged at sync {acknowledged_at})");
            d.assert_verified(&what);
            let served = lists(&d);
            assert!(served == old || served == new, "{what}: the lists served are neither version's");
            if sync >= acknowledged_at {
                assert!(served == new, "{what}: the published version was lost");
            }
            published += usize::from(served == new);
            kept_old += usize::from(served == old);
            d.kill9();
            drop(mounted);
        }
    }
    eprintln!("{} cuts: {published} served the new version, {kept_old} the old", syncs * 4);
    assert!(published > 0 && kept_old > 0, "the cuts landed before and after the publish");
    assert!(torn, "no torn cut had anything unsynced to tear");
}
