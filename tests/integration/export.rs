//! `recd run JOB --export DIR [--shard I/N]`: a run without a daemon, written as a Parquet
//! part and a manifest per shard. The parts of N shard processes together hold the table a
//! daemon publishes for the same job, row for row and score for score; `recd import`
//! publishes a complete set as one version and refuses any other with the reason.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};

use crate::util::{RECD, TestDaemon, shipped_job};

/// Per user, the (item, score, rank) rows of a part, in file order.
type Rows = BTreeMap<String, Vec<(String, f32, u32)>>;

fn export_cmd(d: &TestDaemon, out: &Path, shard: Option<&str>) -> Command {
    let mut cmd = Command::new(RECD);
    cmd.args(["run", "ranking", "--export"]).arg(out).arg("--config").arg(d.config());
    if let Some(shard) = shard {
        cmd.args(["--shard", shard]);
    }
    cmd.env_remove("JOB_COMPLETION_INDEX").env_remove("RECD_SHARDS").stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn manifest(out: &Path, stem: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join(format!("{stem}.manifest.json"))).expect("manifest written");
    serde_json::from_str(&text).unwrap()
}

/// Reads a part, checking its manifest's counts and SHA-256 against the file.
fn read_part(out: &Path, stem: &str) -> (serde_json::Value, Rows) {
    let m = manifest(out, stem);
    let path = out.join(m["part"].as_str().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(m["part_sha256"], format!("{:x}", Sha256::digest(&bytes)), "{stem}: part hash");
    let mut rows = Rows::new();
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap().build().unwrap();
    for batch in reader {
        let batch = batch.unwrap();
        let (users, items) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>());
        let scores = batch.column(2).as_primitive::<Float32Type>();
        let ranks = batch.column(3).as_primitive::<UInt32Type>();
        for i in 0..batch.num_rows() {
            let row = (items.value(i).to_string(), scores.value(i), ranks.value(i));
            rows.entry(users.value(i).to_string()).or_default().push(row);
        }
    }
    assert_eq!(m["users"].as_u64().unwrap(), rows.len() as u64, "{stem}: users");
    assert_eq!(m["rows"].as_u64().unwrap(), rows.values().map(Vec::len).sum::<usize>() as u64, "{stem}: rows");
    (m, rows)
}

/// FNV-1a, 64-bit, written out here again: the shard rule is part of the format.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Every user's list as the daemon serves it: (item, score, rank), best first.
fn served(d: &TestDaemon, users: impl Iterator<Item = String>) -> Rows {
    let mut redis = d.redis();
    let mut rows = Rows::new();
    for user in users {
        let flat: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(format!("ranking:{user}"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut redis)
            .unwrap();
        let list = flat.chunks(2).enumerate().map(|(rank, p)| (p[0].clone(), p[1].parse().unwrap(), rank as u32 + 1));
        rows.insert(user, list.collect());
    }
    rows
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn four_shard_processes_imported_give_the_table_of_one_whole_run() {
    let d = TestDaemon::start(&[("ranking", &shipped_job("ranking"))]);
    d.run_job("ranking");
    let (out, whole_dir) = (d.dir.path().join("export"), d.dir.path().join("whole"));
    // Four shard processes at once, and one run of every user; none uses the daemon.
    let mut children: Vec<_> =
        (0..4).map(|i| export_cmd(&d, &out, Some(&format!("{i}/4"))).spawn().expect("spawn recd run")).collect();
    children.push(export_cmd(&d, &whole_dir, None).spawn().unwrap());
    let mut scored = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let done = child.wait_with_output().unwrap();
        assert_ok(&done, &format!("export {i}"));
        let log = String::from_utf8_lossy(&done.stderr).into_owned();
        let pairs = log.split("pairs_scored=").nth(1).and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok());
        scored.push(pairs.unwrap_or_else(|| panic!("export {i} logs no pairs_scored:\n{log}")));
    }
    // Ranking asks `in_shard`: each shard scores only its users' pairs.
    assert_eq!(scored[..4].iter().sum::<u64>(), scored[4], "pairs scored by the shards and by the whole run");
    assert!(scored[..4].iter().all(|&n| n < scored[4] / 3), "{scored:?}");

    let (whole_manifest, whole) = read_part(&whole_dir, "ranking-shard-00000-of-00001");
    let mut union = Rows::new();
    let mut checksum = 0u64;
    for i in 0..4u64 {
        let (m, rows) = read_part(&out, &format!("ranking-shard-{i:05}-of-00004"));
        assert_eq!((m["shard"]["index"].as_u64(), m["shard"]["count"].as_u64()), (Some(i), Some(4)));
        assert!(rows.len() > 900, "shard {i} holds {} users of 4,321", rows.len());
        for (user, list) in rows {
            assert_eq!(fnv1a(user.as_bytes()) % 4, i, "user {user} in shard {i}");
            assert!(union.insert(user.clone(), list).is_none(), "user {user} in two shards");
        }
        checksum = checksum.wrapping_add(m["checksum"].as_u64().unwrap());
        for key in ["plugin_sha256", "model_sha256", "inputs", "job", "table"] {
            assert_eq!(m[key], whole_manifest[key], "shard {i}: {key}");
        }
    }
    assert_eq!(union, whole, "the four shards hold the whole run's rows");
    assert_eq!(checksum, whole_manifest["checksum"].as_u64().unwrap(), "shard checksums add up to the whole's");

    // ... and the daemon's table, for every user, best first.
    let published = &d.history("ranking")[0];
    assert_eq!(published["users"].as_u64().unwrap(), union.len() as u64);
    assert_eq!(served(&d, union.keys().cloned()), union, "the daemon's run");
    // Nothing of the runs is left behind but the parts and their manifests.
    assert_eq!(files_in(&out).len(), 8, "{:?}", files_in(&out));

    // Imported, the four parts are the next version, the same table as the daemon's run.
    let imported = d.cli(&["import", "ranking", out.to_str().unwrap()]);
    assert_ok(&imported, "recd import");
    let said = String::from_utf8_lossy(&imported.stdout);
    assert!(said.contains("version 2: 4321 users, 43210 rows from 4 parts (job ranking)"), "{said}");
    let record = &d.history("ranking")[0];
    assert_eq!((record["trigger"].as_str(), record["version"].as_u64()), (Some("import"), Some(2)));
    assert_eq!(served(&d, union.keys().cloned()), union, "the imported version");
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    let line = status.lines().find(|l| l.trim_start().starts_with("version 2:")).expect("version 2 in status");
    assert!(line.ends_with(&format!("checksum {checksum}")), "the manifests' sum in status: {line}");
    assert_ok(&d.cli(&["verify"]), "recd verify");
}

#[test]
fn an_incomplete_or_mixed_set_of_parts_is_refused_and_nothing_is_published() {
    let d = TestDaemon::start(&[("ranking", &shipped_job("ranking"))]);
    d.run_job("ranking");
    let out = d.dir.path().join("export");
    for i in 0..4 {
        assert_ok(&export_cmd(&d, &out, Some(&format!("{i}/4"))).output().unwrap(), "export");
    }
    let before = served(&d, ["12347", "17850", "18287"].into_iter().map(String::from));
    assert!(before.values().all(|list| list.len() == 10), "{before:?}");
    let runs = d.history("ranking").len();
    // A copy of the four parts, `change`d.
    let variant = |name: &str, change: &dyn Fn(&Path)| {
        let dir = d.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files_in(&out) {
            std::fs::copy(out.join(&f), dir.join(&f)).unwrap();
        }
        change(&dir);
        dir.to_str().unwrap().to_string()
    };
    let shard_file = |dir: &Path, i: u32, ext: &str| dir.join(format!("ranking-shard-{i:05}-of-00004.{ext}"));
    let missing = variant("missing", &|dir| {
        std::fs::remove_file(shard_file(dir, 2, "manifest.json")).unwrap();
        std::fs::remove_file(shard_file(dir, 2, "parquet")).unwrap();
    });
    let mixed_model = variant("mixed", &|dir| {
        let path = shard_file(dir, 3, "manifest.json");
        let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        m["model_sha256"] = serde_json::json!("0".repeat(64));
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    });
    let corrupted = variant("corrupted", &|dir| {
        let path = shard_file(dir, 1, "parquet");
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
    });
    let whole = d.dir.path().join("whole");
    assert_ok(&export_cmd(&d, &whole, None).output().unwrap(), "whole export");
    let out = out.to_str().unwrap();
    let cases: [(&str, Vec<&str>, &str); 5] = [
        ("a missing shard", vec![&missing], "shards missing of 4: 2 (found 0, 1, 3)"),
        ("a duplicated shard", vec![out, out], "shard 0/4 appears twice"),
        ("mixed model versions", vec![&mixed_model], "differ in `model_sha256`"),
        ("a corrupted part", vec![&corrupted], "the file is damaged or not the one exported"),
        ("parts of two runs", vec![out, whole.to_str().unwrap()], "differ in `shard.count` (4 against 1)"),
    ];
    for (what, dirs, want) in cases {
        let mut args = vec!["import", "ranking"];
        args.extend(dirs);
        let run = d.cli(&args);
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && err.contains(want), "{what}: expected {want:?}, got: {err}");
        assert_eq!(d.history("ranking").len(), runs, "{what}: nothing recorded as published");
        assert_eq!(served(&d, before.keys().cloned()), before, "{what}: the served table is unchanged");
    }
    // No version was left half-written.
    assert_ok(&d.cli(&["verify"]), "recd verify");
}

#[test]
fn an_indexed_jobs_environment_picks_the_shard_and_bad_shards_are_refused() {
    let d = TestDaemon::start(&[("ranking", &shipped_job("ranking"))]);
    let out = d.dir.path().join("export");
    let pod = export_cmd(&d, &out, None).env("JOB_COMPLETION_INDEX", "2").env("RECD_SHARDS", "3").output().unwrap();
    assert_ok(&pod, "export as pod 2 of 3");
    let m = manifest(&out, "ranking-shard-00002-of-00003");
    assert_eq!((m["shard"]["index"].as_u64(), m["shard"]["count"].as_u64()), (Some(2), Some(3)));

    let refused = |cmd: &mut Command, want: &str| {
        let run = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && err.contains(want), "expected an error with {want:?}, got: {err}");
    };
    refused(export_cmd(&d, &out, None).env("JOB_COMPLETION_INDEX", "1"), "RECD_SHARDS is not");
    refused(
        export_cmd(&d, &out, None).env("JOB_COMPLETION_INDEX", "3").env("RECD_SHARDS", "3"),
        "expected 0 <= index < count",
    );
    refused(&mut export_cmd(&d, &out, Some("4/4")), "--shard \"4/4\": expected I/N");
    refused(
        Command::new(RECD).args(["run", "ranking", "--shard", "0/2", "--config"]).arg(d.config()),
        "--shard needs --export",
    );
    let left: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(left.len(), 2, "only pod 2's part and manifest: {left:?}");
}
