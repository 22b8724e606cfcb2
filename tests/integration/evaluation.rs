//! `recd eval` end to end: a published table read over the socket, scored against
//! held-out interactions, with every number computed by hand for this small case.

use crate::util::TestDaemon;

fn close(report: &serde_json::Value, key: &str, want: f64) {
    let got = report[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {report}"));
    assert!((got - want).abs() < 1e-9, "{key}: got {got}, want {want}");
}

#[test]
fn eval_reports_hand_computed_metrics() {
    // table t: u1 -> a (3), b (2), c (1)
    let d = TestDaemon::start(&[("j", "plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n")]);
    d.run_job("j");
    let truth = d.dir.path().join("truth.csv");
    std::fs::write(
        &truth,
        "user_id,item_id,ts\nu1,x,2020-12-01T00:00:00\nu1,b,2021-01-05T00:00:00\nu1,z,2021-01-06T00:00:00\nu2,x,2020-12-02T00:00:00\n",
    )
    .unwrap();
    let cats = d.dir.path().join("cats.csv");
    std::fs::write(&cats, "item_id,category\na,toys\nb,books\n").unwrap();
    let categories = format!("{}:category", cats.display());
    let out = d.cli(&[
        "eval",
        "t",
        "--truth",
        truth.to_str().unwrap(),
        "--cutoff",
        "2021-01-01",
        "--k",
        "2",
        "--categories",
        &categories,
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // past: u1 had x, u2 had x. held out for u1: {b, z}; u2 has nothing new (not counted).
    // u1's top 2 is [a, b]: one hit at rank 2.
    assert_eq!(r["users"], 1);
    assert_eq!(r["users_with_list"], 1);
    close(&r, "precision", 0.5);
    close(&r, "recall", 0.5);
    close(&r, "ndcg", (1.0 / 3f64.log2()) / (1.0 + 1.0 / 3f64.log2()));
    close(&r, "map", 0.25);
    close(&r, "hit_rate", 1.0);
    close(&r, "coverage", 2.0 / 3.0); // a, b shown of catalogue {x, b, z}
    close(&r, "novelty", 1.0); // a and b unseen in the past: -log2(1/2 users)
    close(&r, "intra_list_diversity", 1.0); // toys vs books
    // calibration: u1 had only x (no category), the list has none of that: q~ = 0.01 p
    close(&r, "calibration_kl", 100f64.ln());
    // Several categories per item: a is toys and books (two rows), b "books|games" split by
    // the separator. Distance 1 - Jaccard({books, toys}, {books, games}) = 1 - 1/3; x is
    // toys: p = (toys 1), q = a's halves + b's halves = (books 1/2, toys 1/4, games 1/4).
    let many = d.dir.path().join("many.csv");
    std::fs::write(
        &many,
        "item_id,category
a,toys
a,books
b,books|games
x,toys
",
    )
    .unwrap();
    let categories = format!("{}:category", many.display());
    let args = ["eval", "t", "--truth", truth.to_str().unwrap(), "--cutoff", "2021-01-01", "--k", "2", "--json"];
    let out = d.cli(&[&args[..], &["--categories", &categories, "--category-separator", "|"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    close(&r, "intra_list_diversity", 2.0 / 3.0);
    close(&r, "calibration_kl", (1.0f64 / (0.99 * 0.25 + 0.01)).ln());
    let human = d.cli(&["eval", "t", "--truth", truth.to_str().unwrap(), "--cutoff", "2021-01-01", "--k", "2"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("ndcg@k") && text.contains("intra-list diversity  n/a"), "{text}");

    // Embedding diversity: u1's top 2 is [a, b]; each pair's distance is (1 - cosine) / 2.
    let ild = |a: [f32; 2], b: [f32; 2]| {
        let file = d.dir.path().join("emb.parquet");
        write_embeddings(&file, &[("a", a), ("b", b), ("c", [1.0, 1.0])]);
        let embeddings = format!("{}:embedding", file.display());
        let args = ["eval", "t", "--truth", truth.to_str().unwrap(), "--cutoff", "2021-01-01", "--k", "2"];
        let out = d.cli(&[&args[..], &["--embeddings", &embeddings, "--json"]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        r["embedding_diversity"].as_f64().unwrap()
    };
    assert!((ild([1.0, 0.0], [0.0, 2.0]) - 0.5).abs() < 1e-9, "orthogonal");
    assert!(ild([1.0, 1.0], [3.0, 3.0]).abs() < 1e-9, "one direction");
    assert!((ild([1.0, 0.0], [-1.0, 0.0]) - 1.0).abs() < 1e-9, "opposite");
}

/// A Parquet file of (item_id, embedding: fixed_size_list<float32, 2>), as
/// train_ranking.py writes item_factors.parquet.
fn write_embeddings(path: &std::path::Path, rows: &[(&str, [f32; 2])]) {
    use arrow_array::{FixedSizeListArray, Float32Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;
    let values = Float32Array::from(rows.iter().flat_map(|(_, v)| v.iter().copied()).collect::<Vec<f32>>());
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let emb = FixedSizeListArray::new(item.clone(), 2, Arc::new(values), None);
    let schema = Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("embedding", DataType::FixedSizeList(item, 2), false),
    ]);
    let ids = StringArray::from(rows.iter().map(|(i, _)| *i).collect::<Vec<_>>());
    let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ids), Arc::new(emb)]).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Interactions with a cut-off at 2021-01-01: u1 had one item before (b after), u3 two
/// (q after), u4 none (a after).
fn cold_and_warm_truth(d: &TestDaemon) -> std::path::PathBuf {
    let truth = d.dir.path().join("truth.csv");
    std::fs::write(
        &truth,
        "user_id,item_id,ts\nu1,x,2020-12-01T00:00:00\nu1,b,2021-01-05T00:00:00\n\
         u3,x,2020-12-01T00:00:00\nu3,y,2020-12-02T00:00:00\nu3,q,2021-01-05T00:00:00\n\
         u4,a,2021-01-07T00:00:00\n",
    )
    .unwrap();
    truth
}

/// `recd eval TABLE` at k = 2 against `truth` from 2021-01-01, as JSON.
fn eval_json(d: &TestDaemon, truth: &std::path::Path, table: &str, extra: &[&str]) -> serde_json::Value {
    let mut args =
        vec!["eval", table, "--truth", truth.to_str().unwrap(), "--cutoff", "2021-01-01", "--k", "2", "--json"];
    args.extend_from_slice(extra);
    let out = d.cli(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn max_past_items_counts_only_cold_users() {
    // table t: u1 -> a (3), b (2), c (1); u1 is cold (one item before), u3 warm (two)
    let d = TestDaemon::start(&[("j", "plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n")]);
    d.run_job("j");
    let truth = cold_and_warm_truth(&d);
    let eval = |extra: &[&str]| eval_json(&d, &truth, "t", extra);
    // everyone with something new: u1 (hit b), u3 (no list), u4 (new, no list)
    let all = eval(&[]);
    assert_eq!(all["users"], 3);
    close(&all, "hit_rate", 1.0 / 3.0);
    // at most one past item: u1 and the new u4; u3 is not counted at all
    let cold = eval(&["--max-past-items", "1"]);
    assert_eq!(cold["users"], 2);
    close(&cold, "hit_rate", 0.5);
    let new_only = eval(&["--max-past-items", "0"]);
    assert_eq!(new_only["users"], 1);
    close(&new_only, "hit_rate", 0.0);
}

#[test]
fn eval_selects_warm_or_cold_users_and_counts_fallback_answers() {
    // table t: u1 -> a (3), b (2), c (1); table t2: u9 only, falling back to t.
    let t = "plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n";
    let t2 = "plugin = \"faulty\"\ntable = \"t2\"\nfallback = [\"t\"]\n[params]\nmode = \"ok\"\nuser = \"u9\"\n";
    let d = TestDaemon::start(&[("j", t), ("k", t2)]);
    d.run_job("j");
    d.run_job("k");
    let truth = cold_and_warm_truth(&d);
    let eval = |table: &str, extra: &[&str]| eval_json(&d, &truth, table, extra);
    let warm = eval("t", &["--warm-only"]);
    assert_eq!(warm["users"], 2, "u1 and u3");
    close(&warm, "hit_rate", 0.5);
    let cold = eval("t", &["--cold-only"]);
    assert_eq!(cold["users"], 1, "u4");
    assert_eq!(eval("t", &[])["users_from_fallback"], 0);
    // t2 has no list for u1: t's answers for it, which the app is shown and eval scores,
    // unless it is asked for t2's own lists only.
    let shown = eval("t2", &[]);
    assert_eq!((shown["users"].as_u64(), shown["users_with_list"].as_u64()), (Some(3), Some(1)));
    assert_eq!(shown["users_from_fallback"], 1);
    close(&shown, "hit_rate", 1.0 / 3.0);
    let own = eval("t2", &["--own-lists-only"]);
    assert_eq!(own["users_with_list"], 0);
    close(&own, "hit_rate", 0.0);
    let both = d.cli(&[
        "eval",
        "t",
        "--truth",
        truth.to_str().unwrap(),
        "--cutoff",
        "2021-01-01",
        "--warm-only",
        "--cold-only",
    ]);
    assert!(!both.status.success(), "--warm-only and --cold-only exclude each other");
    // The CLI and the socket say where an answer came from.
    let got = d.cli(&["get", "t2", "u1"]);
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(text.starts_with("(from t:u1)\n  1  a"), "{text}");
    let own = String::from_utf8_lossy(&d.cli(&["get", "t2", "u9"]).stdout).into_owned();
    assert!(!own.contains("(from"), "{own}");
    let sourced: String = redis::cmd("GET").arg("t2:u1").arg("WITHSOURCE").query(&mut d.redis()).unwrap();
    let sourced: serde_json::Value = serde_json::from_str(&sourced).unwrap();
    assert_eq!((sourced["source"].as_str(), sourced["fallback"].as_bool()), (Some("t:u1"), Some(true)), "{sourced}");
    let plain: String = redis::cmd("GET").arg("t2:u1").query(&mut d.redis()).unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&plain).unwrap(), sourced["value"]);
    let none: Option<String> = redis::cmd("GET").arg("t2:nobody").arg("WITHSOURCE").query(&mut d.redis()).unwrap();
    assert_eq!(none, None);
}

/// `recd lineage t VERSION`'s eval record, as JSON (null without one).
fn recorded(d: &TestDaemon, version: u64) -> serde_json::Value {
    let out = d.cli(&["lineage", "t", &version.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    info["eval"].clone()
}

#[test]
fn eval_record_keeps_the_numbers_with_the_version_read() {
    let d = TestDaemon::start(&[("j", "plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n")]);
    d.run_job("j");
    let truth = cold_and_warm_truth(&d);
    let report = eval_json(&d, &truth, "t", &["--record"]);
    let kept = recorded(&d, 1);
    assert_eq!(kept["setting"], "k=2, all users, fallback answers scored", "{kept}");
    assert_eq!(kept["users"], report["users"]);
    assert_eq!(kept["cutoff"], "2021-01-01T00:00:00", "the cut-off given as 2021-01-01");
    for (kept_name, name) in
        [("ndcg@k", "ndcg"), ("recall@k", "recall"), ("hit_rate@k", "hit_rate"), ("coverage", "coverage")]
    {
        assert_eq!(kept["metrics"][kept_name], report[name], "{kept_name} in {kept}");
    }
    assert!(kept["metrics"].get("calibration_kl").is_none(), "not measured, not recorded: {kept}");

    // A new version has no record until one is made; the old version keeps its own.
    d.run_job("j");
    assert_eq!(recorded(&d, 2), serde_json::Value::Null);
    let cold = eval_json(&d, &truth, "t", &["--cold-only", "--record"]);
    assert_eq!(recorded(&d, 2)["setting"], "k=2, users new after the cut-off, fallback answers scored");
    assert_eq!(recorded(&d, 2)["metrics"]["hit_rate@k"], cold["hit_rate"]);
    assert_eq!(recorded(&d, 1), kept);

    // Refusals name what is wrong, and nothing is recorded.
    let args = ["eval", "nope", "--truth", truth.to_str().unwrap(), "--cutoff", "2021-01-01", "--record"];
    let out = d.cli(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--record: no table `nope`"), "{out:?}");
    let elsewhere = d.admin_socket().with_extension("elsewhere");
    let out = d.cli(&[&args[..6], &["--admin-socket", elsewhere.to_str().unwrap()]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-socket needs --record"), "{out:?}");
    let json = r#"{"setting":"s","cutoff":"c","users":1,"metrics":{"ndcg@k":0.5},"extra":1}"#;
    let err = redis::cmd("EVALRECORD").arg("t").arg(2).arg(json).query::<String>(&mut d.admin()).unwrap_err();
    assert!(err.to_string().contains("unknown field `extra`"), "{err}");
    let err = redis::cmd("EVALRECORD").arg("t").arg(2).arg(json).query::<String>(&mut d.redis()).unwrap_err();
    assert!(err.to_string().contains("control command: use the admin socket"), "{err}");
    assert_eq!(recorded(&d, 2)["metrics"]["hit_rate@k"], cold["hit_rate"]);
}
