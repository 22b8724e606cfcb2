//! A/B experiments: `<experiment>:<user>` reads the user's variant's list, `HGET ... variant`
//! names it; the assignment is deterministic, follows the shares, survives restarts and a
//! share change moves only the users it must.

use std::collections::BTreeMap;

use crate::util::TestDaemon;

const USERS: u64 = 100_000;

fn synthetic(seed: u32) -> String {
    format!("plugin = \"synthetic\"\n[params]\nusers = {USERS}\nitems = 5\ncatalogue = 20\nseed = {seed}\n")
}

fn experiment(a: f64, b: f64) -> String {
    format!(
        "salt = \"homepage-1\"\n[[variant]]\nname = \"control\"\ntable = \"a\"\nshare = {a}\n[[variant]]\ntable = \"b\"\nshare = {b}\n"
    )
}

/// Each user's variant, read with HGET, all in one pipeline.
fn variants(d: &TestDaemon) -> Vec<String> {
    let mut pipe = redis::pipe();
    for u in 0..USERS {
        pipe.cmd("HGET").arg(format!("homepage:{u:012}")).arg("variant");
    }
    pipe.query::<Vec<String>>(&mut d.redis()).unwrap()
}

#[test]
fn experiment_reads_follow_a_deterministic_assignment_and_a_share_change_moves_only_what_it_must() {
    let mut d = TestDaemon::start(&[("a", &synthetic(1)), ("b", &synthetic(2))]);
    d.run_job("a");
    d.run_job("b");
    std::fs::write(d.jobs_dir().join("homepage.experiment.toml"), experiment(0.3, 0.7)).unwrap();
    let reload = d.cli(&["reload"]);
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));

    let first = variants(&d);
    let count = |v: &[String], name: &str| v.iter().filter(|x| *x == name).count() as f64 / USERS as f64;
    assert!((count(&first, "control") - 0.3).abs() < 0.01, "control share {}", count(&first, "control"));
    assert!((count(&first, "b") - 0.7).abs() < 0.01);
    // A user's list is their variant's table's list, and HGETALL names both.
    let mut conn = d.redis();
    for u in (0..USERS).step_by(997) {
        let user = format!("{u:012}");
        let table = if first[u as usize] == "control" { "a" } else { "b" };
        let mine: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(format!("homepage:{user}"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut conn)
            .unwrap();
        let theirs: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(format!("{table}:{user}"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut conn)
            .unwrap();
        assert!(!mine.is_empty());
        assert_eq!(mine, theirs, "{user}");
        let all: BTreeMap<String, String> =
            redis::cmd("HGETALL").arg(format!("homepage:{user}")).query(&mut conn).unwrap();
        assert_eq!(
            all,
            BTreeMap::from([("variant".into(), first[u as usize].clone()), ("table".into(), table.into())])
        );
    }

    // The same after a restart: the assignment is kept.
    assert!(d.stop(), "{}", d.log());
    d.restart();
    assert_eq!(variants(&d), first, "a restart keeps every user's variant");

    // 0.3/0.7 -> 0.4/0.6: only users moving from b to control, about 10% of them.
    d.write_job("homepage.experiment", &experiment(0.4, 0.6));
    assert!(d.cli(&["reload"]).status.success());
    let second = variants(&d);
    let moved: Vec<usize> = (0..USERS as usize).filter(|&u| first[u] != second[u]).collect();
    assert!(moved.iter().all(|&u| first[u] == "b" && second[u] == "control"), "only b -> control moves");
    let share = moved.len() as f64 / USERS as f64;
    assert!((share - 0.1).abs() < 0.01, "{share} of the users moved, 0.1 must");

    // A bad file keeps the experiment as it was, and says why.
    d.write_job("homepage.experiment", &experiment(0.5, 0.6));
    let _ = d.cli(&["reload"]);
    assert_eq!(variants(&d), second);
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains("homepage.experiment.toml:") && status.contains("the shares add up to 1.1, not 1"),
        "{status}"
    );
    assert!(status.contains("homepage: salt \"homepage-1\""), "{status}");
    check_eval_per_variant(&d, &second);
    assert!(d.stop(), "{}", d.log());
}

/// `recd eval` on the experiment scores each variant over its own users: the hit rate of
/// each, counted here from the variant tables' lists, is the report's.
fn check_eval_per_variant(d: &TestDaemon, variants: &[String]) {
    // One held-out purchase per user, of item-3 (some lists hold it, some not); Parquet,
    // so the zero-padded ids stay strings.
    let truth = d.dir.path().join("truth.parquet");
    let users: Vec<String> = (0..USERS).map(|u| format!("{u:012}")).collect();
    let batch = arrow_array::RecordBatch::try_from_iter([
        ("user_id", std::sync::Arc::new(arrow_array::StringArray::from(users)) as arrow_array::ArrayRef),
        ("item_id", std::sync::Arc::new(arrow_array::StringArray::from(vec!["item-3"; USERS as usize])) as _),
        (
            "ts",
            std::sync::Arc::new(arrow_array::TimestampSecondArray::from(vec![1_609_545_600i64; USERS as usize])) as _,
        ),
    ])
    .unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&truth).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let out = d.cli(&["eval", "homepage", "--truth", truth.to_str().unwrap(), "--cutoff", "2021-01-01", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut conn = d.redis();
    let mut hits: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for u in 0..USERS {
        let variant = variants[u as usize].as_str();
        let table = if variant == "control" { "a" } else { "b" };
        let list: Vec<String> =
            redis::cmd("ZREVRANGE").arg(format!("{table}:{u:012}")).arg(0).arg(9).query(&mut conn).unwrap();
        let e = hits.entry(variant).or_default();
        e.0 += 1;
        e.1 += usize::from(list.iter().any(|i| i == "item-3"));
    }
    let reported = report["variants"].as_array().unwrap_or_else(|| panic!("no variants in {report}"));
    assert_eq!(reported.len(), 2, "{report}");
    for v in reported {
        let (users, hit) = hits[v["variant"].as_str().unwrap()];
        assert_eq!(v["users"], users, "{v}");
        assert!((v["hit_rate"].as_f64().unwrap() - hit as f64 / users as f64).abs() < 1e-9, "{v}: {hit} of {users}");
    }
    assert_eq!(report["users"], USERS);
}
