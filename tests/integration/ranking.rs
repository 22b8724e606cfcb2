//! The walking skeleton's main path: the ranking job runs in a worker, scores the ONNX
//! model, publishes a table, and Redis clients read each customer's top 10.

use std::collections::HashSet;

use crate::oracle::{model_scores, purchases, vocab_ids};
use crate::util::{TestDaemon, ranking_job};

const CUSTOMERS: [&str; 5] = ["17850", "12347", "13047", "14911", "15311"];

type List = Vec<(String, f64)>;

fn read_with_crate(conn: &mut redis::Connection, key: &str) -> List {
    redis::cmd("ZREVRANGE").arg(key).arg(0).arg(9).arg("WITHSCORES").query(conn).unwrap()
}

fn read_with_cli(d: &TestDaemon, key: &str) -> List {
    let text = d.redis_cli(&["ZREVRANGE", key, "0", "9", "WITHSCORES"]);
    let lines: Vec<&str> = text.lines().collect();
    lines.chunks(2).map(|p| (p[0].to_string(), p[1].parse().unwrap())).collect()
}

#[test]
fn top_ten_are_the_models_best_unseen_items_for_both_clients() {
    let mut d = TestDaemon::start(&[("ranking", &ranking_job(""))]);
    let report = d.run_job("ranking");
    assert!(report.contains("published table ranking version 1"), "{report}");
    // lineage: the history names the build and the model, hashed independently here
    let run = &d.history("ranking")[0];
    let sha = |path: std::path::PathBuf| crate::util::sha256sum(&path);
    assert_eq!(run["model_sha256"], sha(crate::util::root().join("models/ranking/mf.onnx")).as_str(), "{run}");
    assert_eq!(run["plugin"]["sha256"], sha(crate::util::plugins_dir().join("librecd_ranking.so")).as_str(), "{run}");
    assert_eq!(run["plugin"]["name"], "ranking", "{run}");
    assert_eq!(run["plugin"]["version"], env!("CARGO_PKG_VERSION"), "{run}");
    // stages: every one measured, and together no longer than the run
    let secs = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v} in {run}"));
    let worker = ["read_seconds", "model_load_seconds", "plugin_seconds", "score_seconds", "emit_seconds"];
    let daemon = ["collect_seconds", "store_seconds", "publish_seconds"];
    for stage in worker {
        assert!(secs(&run["worker"][stage]) > 0.0, "{stage}: {run}");
    }
    for stage in daemon {
        assert!(secs(&run["stages"][stage]) > 0.0, "{stage}: {run}");
    }
    let worker_total: f64 = worker.iter().map(|s| secs(&run["worker"][*s])).sum();
    assert!(worker_total <= secs(&run["seconds"]) + 0.01, "worker stages {worker_total} s in a run of {run}");
    assert!(d.log().contains("stages: worker read "), "the run log shows the stages");

    let bought = purchases();
    let items = vocab_ids("items.csv");
    let users: HashSet<String> = vocab_ids("users.csv").into_iter().collect();
    let mut conn = d.redis();
    let mut pairs = Vec::new();
    let mut served = Vec::new();
    for c in CUSTOMERS {
        assert!(users.contains(c), "customer {c} is not in the model");
        let key = format!("ranking:{c}");
        let list = read_with_crate(&mut conn, &key);
        assert_eq!(list, read_with_cli(&d, &key), "redis-cli and the redis crate disagree on {key}");
        assert_eq!(list.len(), 10, "{key}: {list:?}");
        let distinct: HashSet<&str> = list.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(distinct.len(), 10, "{key} repeats items: {list:?}");
        assert!(list.windows(2).all(|w| w[0].1 >= w[1].1), "{key} scores increase: {list:?}");
        let mine = &bought[c];
        assert!(list.iter().all(|(i, _)| !mine.contains(i)), "{key} lists an item {c} bought: {list:?}");
        // every item the customer has not bought, for the independent top 10
        pairs.extend(items.iter().filter(|i| !mine.contains(*i)).map(|i| (c.to_string(), i.clone())));
        served.push((c, list));
    }

    let scores = model_scores(&pairs);
    for (c, list) in served {
        let mut expected: Vec<(&str, f32)> =
            pairs.iter().zip(&scores).filter(|((u, _), _)| u == c).map(|((_, i), s)| (i.as_str(), *s)).collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (item, score) in &list {
            let model = expected.iter().find(|(i, _)| i == item).map(|(_, s)| *s).expect("item is a candidate");
            assert!((model as f64 - score).abs() < 1e-5, "{c}/{item}: served {score}, model {model}");
        }
        // nothing better was left out: the 10th served is at least the 11th best overall
        let tenth = list[9].1;
        assert!(tenth >= expected[10].1 as f64 - 1e-5, "{c}: 10th {tenth} < 11th best {:?}", expected[10]);
        assert!((list[0].1 - expected[0].1 as f64).abs() < 1e-5, "{c}: best differs");
    }
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log());
}

#[test]
fn csv_and_parquet_inputs_give_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("retail.csv");
    write_csv_copy(&crate::util::root().join("data/demo/retail.parquet"), &csv);
    let parquet_job = ranking_job("");
    let parquet_path = format!("{}/data/demo/retail.parquet", crate::util::root().display());
    let csv_job =
        format!("table = \"ranking_csv\"\n{}", parquet_job.replace(&parquet_path, &csv.display().to_string()));
    assert!(csv_job.contains("retail.csv"));
    let d = TestDaemon::start(&[("ranking", &parquet_job), ("ranking_csv", &csv_job)]);
    d.run_job("ranking");
    d.run_job("ranking_csv");
    let mut conn = d.redis();
    for c in CUSTOMERS {
        let a: List = redis::cmd("ZREVRANGE")
            .arg(format!("ranking:{c}"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut conn)
            .unwrap();
        let b: List = redis::cmd("ZREVRANGE")
            .arg(format!("ranking_csv:{c}"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut conn)
            .unwrap();
        assert_eq!(a.len(), 10);
        assert_eq!(a, b, "customer {c}");
    }
}

/// Writes the Parquet file as CSV with arrow's writer (ids become plain text, so the CSV
/// reader infers numeric customer ids as integers: the plugin must read both).
fn write_csv_copy(parquet: &std::path::Path, csv: &std::path::Path) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(parquet).unwrap()).unwrap().build().unwrap();
    let mut writer = arrow_csv::Writer::new(std::fs::File::create(csv).unwrap());
    for batch in reader {
        writer.write(&batch.unwrap()).unwrap();
    }
}

/// Every user's served value, read with MGET (the JSON list), in vocabulary order.
fn whole_table(d: &TestDaemon, table: &str) -> Vec<Option<String>> {
    let mut conn = d.redis();
    let users = vocab_ids("users.csv");
    let mut out = Vec::with_capacity(users.len());
    for chunk in users.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|u| format!("{table}:{u}")).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut conn).unwrap();
        out.extend(values);
    }
    out
}

/// The demo interactions sorted by customer (lines of one customer in file order), as
/// CSV with the columns ranking reads.
fn write_sorted_by_user(parquet: &std::path::Path, csv: &std::path::Path) {
    use arrow_array::cast::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(parquet).unwrap()).unwrap().build().unwrap();
    let mut lines: Vec<(String, String, bool)> = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        let (users, items, cancelled) = (col("user_id"), col("item_id"), col("cancelled"));
        let (users, items, cancelled) = (users.as_string::<i32>(), items.as_string::<i32>(), cancelled.as_boolean());
        for r in 0..batch.num_rows() {
            lines.push((users.value(r).to_string(), items.value(r).to_string(), cancelled.value(r)));
        }
    }
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let mut text = String::from("user_id,item_id,cancelled\n");
    for (user, item, cancelled) in &lines {
        text.push_str(&format!("{user},{item},{cancelled}\n"));
    }
    std::fs::write(csv, text).unwrap();
}

#[test]
fn streamed_batches_give_the_same_table_as_one_whole_table_batch() {
    // The same job four times: in small batches built on a thread of their own while
    // the one before is scored (about 130 batches), in the same batches built one after
    // the other, as one batch holding every (user, candidate) pair of the table at once,
    // and over the interactions sorted by customer, which ranking reads one customer at
    // a time instead of holding every customer's purchases. Popular candidates keep the
    // one batch small enough.
    let params = "candidates = \"popular\"\npopular_pool = 300";
    let base = ranking_job("").replace("candidates = \"unseen\"", params);
    assert!(base.contains("popular_pool = 300"));
    let dir = tempfile::tempdir().unwrap();
    let retail = crate::util::root().join("data/demo/retail.parquet");
    let sorted = dir.path().join("sorted.csv");
    write_sorted_by_user(&retail, &sorted);
    let by_user = base.replace(&retail.display().to_string(), &sorted.display().to_string());
    assert_ne!(by_user, base, "the shipped job reads its interactions elsewhere");
    let job = |table: &str, base: &str, extra: &str| format!("table = \"{table}\"\n{base}{extra}\n");
    let jobs = [
        ("overlapped", job("overlapped", &base, "batch_pairs = 10000\noverlap = true")),
        ("sequential", job("sequential", &base, "batch_pairs = 10000\noverlap = false")),
        ("whole", job("whole", &base, "batch_pairs = 100000000")),
        ("by-user", job("by_user", &by_user, "batch_pairs = 10000\noverlap = true")),
    ];
    let named: Vec<(&str, &str)> = jobs.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let mut d = TestDaemon::start(&named);
    for (name, _) in &jobs {
        d.run_job(name);
    }
    let calls = |job: &str| d.history(job)[0]["worker"]["score_calls"].as_u64().unwrap();
    assert_eq!(calls("whole"), 1, "the whole table is scored in one call");
    for job in ["overlapped", "sequential", "by-user"] {
        assert!(calls(job) > 100, "{job} is scored in many batches: {}", calls(job));
    }
    let log = d.log();
    assert!(log.contains("interactions are grouped by user: purchases are read one user at a time"), "{log}");
    assert!(log.contains("interactions are not grouped by user"), "{log}");
    let whole = whole_table(&d, "whole");
    assert_eq!(whole.len(), 4321);
    assert_eq!(whole.iter().filter(|v| v.is_some()).count(), 4321, "every user has a list");
    for table in ["overlapped", "sequential", "by_user"] {
        for (i, (x, y)) in whole_table(&d, table).iter().zip(&whole).enumerate() {
            assert_eq!(x, y, "user #{i} differs between the {table} and the whole-table run");
        }
    }
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log());
}

/// Ranking reads its interactions as a stream (ABI 1.2), so the worker's `known_users`
/// check over that input reads just the user column, batch by batch. Over the demo data
/// every customer the model knows bought something; over a file with two of them, the
/// third customer the model lists is the first refused, which only a check that read
/// the file's rows (not the empty table the plugin is handed) can say.
#[test]
fn known_users_from_the_streamed_interactions_are_read_from_the_file() {
    let job = ranking_job("").replace("known_users = \"users.user_id\"", "known_users = \"interactions.user_id\"");
    assert!(job.contains("known_users = \"interactions.user_id\""), "the shipped job changed: {job}");
    let users = vocab_ids("users.csv");
    let item = &vocab_ids("items.csv")[0];
    let dir = tempfile::tempdir().unwrap();
    let two = dir.path().join("two.csv");
    std::fs::write(&two, format!("user_id,item_id\n{},{item}\n{},{item}\n", users[0], users[1])).unwrap();
    let retail = format!("{}/data/demo/retail.parquet", crate::util::root().display());
    let small = job.replace(&retail, &two.display().to_string());
    assert_ne!(small, job, "the shipped job reads its interactions elsewhere");
    let d = TestDaemon::start(&[
        ("ranking", &job),
        ("small", &small.replace("\"ranking\"", "\"ranking\"\ntable = \"small\"")),
    ]);
    assert!(d.run_job("ranking").contains("published table ranking version 1"));
    let out = d.cli(&["run", "small"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("user \"{}\" does not appear in interactions.user_id", users[2])), "{err}");
}
