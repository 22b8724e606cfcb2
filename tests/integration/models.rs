//! Command jobs and the model registry: a training command publishes model versions that a
//! chained scoring job reads as `registry:<name>`; a failing, empty or hanging command
//! publishes nothing; versions are listed, rolled back and promoted.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::oracle::{model_scores_in, purchases, vocab_ids_in};
use crate::util::{TestDaemon, root, sha256sum, shipped_job};

/// The shipped training script on the demo data, as a command job: the popularity family
/// without validation (seconds, where choosing the family takes minutes).
fn train_job() -> String {
    let r = root().display().to_string();
    format!(
        r#"description = "retrains the ranking model"
command = ["python3", "{r}/scripts/train_ranking.py", "--data", "{{inputs.interactions}}",
           "--out", "{{output}}", "--family", "popularity", "--no-validation"]
produces = "registry:ranking"
model_file = "mf.onnx"
timeout_seconds = 300

[env]
PYTHONPATH = "{r}/.deps/pytools"

[inputs]
interactions = "{r}/data/demo/retail.parquet"
"#
    )
}

/// The shipped ranking job scoring with the registry's current version and its vocabularies,
/// run after each training.
fn scoring_job() -> String {
    let r = root().display().to_string();
    let job = shipped_job("ranking")
        .replace("schedule = \"0 3 * * *\"", "after = [\"train\"]")
        .replace(&format!("\"{r}/models/ranking/mf.onnx\""), "\"registry:ranking\"")
        .replace(&format!("\"{r}/models/ranking/users.csv\""), "\"registry:ranking/users.csv\"")
        .replace(&format!("\"{r}/models/ranking/items.csv\""), "\"registry:ranking/items.csv\"")
        .replace("fallback = [\"cold-start\"]", "");
    assert!(job.contains("model = \"registry:ranking\"") && job.contains("registry:ranking/items.csv"), "{job}");
    job
}

fn version_dir(d: &TestDaemon, version: u64) -> PathBuf {
    d.dir.path().join(format!("data/models/ranking/{version}"))
}

/// The newest run of `job` once it has one with run id above `after`.
fn run_after(d: &TestDaemon, job: &str, after: u64) -> serde_json::Value {
    d.wait_for(&format!("a run of {job} after run {after}"), 120, || {
        d.history(job).into_iter().find(|r| r["run_id"].as_u64().unwrap_or(0) > after && r["status"] != "running")
    })
}

fn cli_ok(d: &TestDaemon, args: &[&str]) -> String {
    let out = d.cli(args);
    assert!(out.status.success(), "recd {args:?}: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_training_command_publishes_model_versions_that_the_chained_ranking_job_scores_with() {
    let d = TestDaemon::start(&[("train", &train_job()), ("ranking", &scoring_job())]);
    // Before any version the scoring job loads (its model is checked at its first run) and
    // a run of it fails saying why.
    let status = cli_ok(&d, &["status"]);
    assert!(!status.contains("job file errors"), "{status}");
    let early = d.cli(&["run", "ranking"]);
    let said = String::from_utf8_lossy(&early.stderr);
    assert!(said.contains("registry model `ranking` has no version yet"), "{said}");

    let report = d.run_job("train");
    assert!(report.contains("published registry model ranking version 1 (mf.onnx, sha256 "), "{report}");
    let train = &d.history("train")[0];
    assert_eq!(train["produced"], "ranking@1", "{train}");
    assert!(train["output"].as_str().unwrap().contains("wrote "), "the command's output is kept: {train}");

    // The version on disk: what the command wrote, hashed as recd recorded it.
    let v1 = version_dir(&d, 1);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v1.join("recd-version.json")).unwrap()).unwrap();
    assert_eq!(meta["model_sha256"], sha256sum(&v1.join("mf.onnx")).as_str());
    for file in meta["files"].as_array().unwrap() {
        let name = file["name"].as_str().unwrap();
        assert_eq!(file["sha256"], sha256sum(&v1.join(name)).as_str(), "{name}");
    }
    let users = vocab_ids_in(&v1, "users.csv");
    assert_eq!(meta["metrics"]["users"].as_f64(), Some(users.len() as f64), "{meta}");
    assert_eq!(std::fs::read_to_string(d.dir.path().join("data/models/ranking/CURRENT")).unwrap().trim(), "1");

    // The chained run scored with version 1 and its vocabularies.
    let scored = run_after(&d, "ranking", train["run_id"].as_u64().unwrap());
    assert_eq!(scored["status"], "ok", "{scored}");
    assert_eq!(scored["trigger"], "after train");
    assert_eq!(scored["models"], serde_json::json!(["ranking@1"]));
    assert_eq!(scored["model_sha256"], meta["model_sha256"]);
    assert_eq!(scored["users"], users.len(), "every user of version 1's vocabulary has a list");
    check_lists_against_model(&d, &v1);
    check_lineage(&d, &v1, &scored, train);

    // A second training: version 2, scored in the next chained run; then a rollback to 1.
    let before = scored["run_id"].as_u64().unwrap();
    assert!(d.run_job("train").contains("registry model ranking version 2"));
    let second = run_after(&d, "ranking", before + 1);
    assert_eq!(second["models"], serde_json::json!(["ranking@2"]), "{second}");
    let listing = cli_ok(&d, &["models"]);
    assert!(listing.contains("ranking: current version 2"), "{listing}");
    assert!(listing.contains("version 1: published"), "{listing}");
    assert!(listing.contains(&format!("used by: ranking run {} (ok)", scored["run_id"])), "{listing}");
    assert!(listing.contains(&format!("users={}", users.len())), "{listing}");
    let rolled = cli_ok(&d, &["models", "rollback", "ranking"]);
    assert!(rolled.starts_with("OK model ranking version 1"), "{rolled}");
    d.run_job("ranking");
    assert_eq!(d.history("ranking")[0]["models"], serde_json::json!(["ranking@1"]));
    assert!(cli_ok(&d, &["models", "promote", "ranking", "2"]).starts_with("OK model ranking version 2"));
    let refused = d.cli(&["models", "promote", "ranking", "7"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("has no version 7 (versions: 1, 2)"));
}

/// The ranking table's version 1 and its run record name what made them, each hash
/// recomputed here with sha256sum and each row count read from the files.
fn check_lineage(d: &TestDaemon, v1: &Path, scored: &serde_json::Value, train: &serde_json::Value) {
    let version: serde_json::Value = serde_json::from_slice(&d.cli(&["lineage", "ranking"]).stdout).unwrap();
    let lineage = &version["lineage"];
    assert_eq!(version["version"], 1, "{version}");
    assert_eq!(lineage["models"], serde_json::json!(["ranking@1"]), "{lineage}");
    assert_eq!(lineage["model_sha256"], sha256sum(&v1.join("mf.onnx")).as_str());
    let plugin = crate::util::plugins_dir().join("librecd_ranking.so");
    assert_eq!(lineage["plugin"]["sha256"], sha256sum(&plugin).as_str());
    assert_eq!(lineage["recd_version"], env!("CARGO_PKG_VERSION"));
    let params = d.dir.path().join("params.json");
    std::fs::write(&params, r#"{"candidates":"unseen","k":10}"#).unwrap();
    assert_eq!(lineage["params_sha256"], sha256sum(&params).as_str(), "the hash of the params as JSON");
    let data = root().join("data/demo/retail.parquet");
    let rows = |p: &Path| {
        let file = std::fs::File::open(p).unwrap();
        parquet::file::reader::SerializedFileReader::new(file).map(|r| {
            use parquet::file::reader::FileReader;
            r.metadata().file_metadata().num_rows() as u64
        })
    };
    let input = |name: &str| lineage["inputs"].as_array().unwrap().iter().find(|i| i["name"] == name).cloned().unwrap();
    let interactions = input("interactions");
    assert_eq!(interactions["path"], data.display().to_string().as_str());
    assert_eq!(interactions["sha256"], sha256sum(&data).as_str());
    assert_eq!(interactions["bytes"], std::fs::metadata(&data).unwrap().len());
    assert_eq!(interactions["rows"], rows(&data).unwrap(), "{interactions}");
    let users = input("users");
    assert_eq!(users["registry"], "ranking@1");
    assert_eq!(users["sha256"], sha256sum(&v1.join("users.csv")).as_str());
    assert_eq!(users["rows"], vocab_ids_in(v1, "users.csv").len() as u64, "{users}");
    // The run record carries the same, and so does the training run and its model version.
    assert_eq!(scored["inputs"], lineage["inputs"], "{scored}");
    assert_eq!(scored["params_sha256"], lineage["params_sha256"]);
    assert_eq!(train["inputs"][0]["sha256"], sha256sum(&data).as_str(), "{train}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v1.join("recd-version.json")).unwrap()).unwrap();
    assert_eq!(meta["lineage"]["inputs"], train["inputs"], "{meta}");
    // `recd status --json` has the tables, their lineage and the registry.
    let status: serde_json::Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["tables"]["ranking"]["versions"][0]["lineage"], *lineage);
    assert_eq!(status["models"]["ranking"]["current"], 1);
}

/// Every served item of a few customers scores, by ONNX Runtime in Python on the
/// version's own files, as served; nothing better was left out; nothing bought is listed.
fn check_lists_against_model(d: &TestDaemon, version: &Path) {
    let bought = purchases();
    let items = vocab_ids_in(version, "items.csv");
    let mut conn = d.redis();
    let customers: Vec<String> = vocab_ids_in(version, "users.csv").into_iter().step_by(997).take(4).collect();
    for c in &customers {
        let list: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(format!("ranking:{c}"))
            .arg(0)
            .arg(9)
            .arg("WITHSCORES")
            .query(&mut conn)
            .unwrap();
        assert_eq!(list.len(), 10, "{c}");
        let mine: HashSet<String> = bought.get(c).cloned().unwrap_or_default();
        let pairs: Vec<(String, String)> =
            items.iter().filter(|i| !mine.contains(*i)).map(|i| (c.clone(), i.clone())).collect();
        let scores = model_scores_in(version, &pairs);
        let mut expected: Vec<(&str, f32)> = pairs.iter().zip(&scores).map(|((_, i), s)| (i.as_str(), *s)).collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (item, score) in &list {
            let model = expected.iter().find(|(i, _)| i == item).map(|(_, s)| *s);
            let model = model.unwrap_or_else(|| panic!("{c}/{item} is not an unseen item"));
            assert!((model as f64 - score).abs() < 1e-5, "{c}/{item}: served {score}, model {model}");
        }
        assert!(list[9].1 >= expected[10].1 as f64 - 1e-5, "{c}: a better item was left out");
    }
}

#[test]
fn a_failing_empty_or_hanging_command_publishes_nothing_and_says_why() {
    let command = |script: &str, timeout: u64| {
        format!(
            "command = [\"sh\", \"-c\", '''{script}''', \"{{output}}\"]\nproduces = \"registry:m\"\ntimeout_seconds = {timeout}\n[gate]\nmetric = \"auc\"\nmax_metric_drop = 0.05\n"
        )
    };
    let good = "echo trained; printf model > \"$0/m.onnx\"; echo '{\"auc\": 0.75}' > \"$0/metrics.json\"";
    let d = TestDaemon::start(&[("train", &command(good, 60))]);
    assert!(d.run_job("train").contains("published registry model m version 1"));

    // Exit 3 after writing a model: nothing published, the output's tail in the history.
    let rewrite = |text: String| {
        d.write_job("train", &text);
        cli_ok(&d, &["reload"]);
    };
    rewrite(command("printf x > \"$RECD_OUTPUT/m.onnx\"; echo step one; echo broken >&2; exit 3", 60));
    let failed = d.cli(&["run", "train"]);
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(said.contains("command sh ended with exit code 3; last output: broken"), "{said}");
    let run = &d.history("train")[0];
    assert_eq!(run["status"], "failed");
    assert_eq!(run["output"], "step one\nbroken", "{run}");

    // Exit 0 without a model file.
    rewrite(command("echo nothing to see", 60));
    let empty = String::from_utf8_lossy(&d.cli(&["run", "train"]).stderr).into_owned();
    assert!(empty.contains("registry model `m`: the command's output has no .onnx file (files: none)"), "{empty}");

    // A command that outlives its timeout is stopped with everything it started.
    let marker = format!("sleep 61.{}", std::process::id());
    rewrite(command(&format!("{marker} & {marker}; echo never"), 1));
    let hung = String::from_utf8_lossy(&d.cli(&["run", "train"]).stderr).into_owned();
    assert!(hung.contains("timed out after 1s"), "{hung}");
    let left = std::process::Command::new("pgrep").args(["-f", &marker]).output().unwrap();
    assert!(left.stdout.is_empty(), "processes of the command outlived it: {}", String::from_utf8_lossy(&left.stdout));

    // A version whose metric drops is held: version 1 stays current; a discard settles it.
    rewrite(command("printf m > \"$0/m.onnx\"; echo '{\"auc\": 0.5}' > \"$0/metrics.json\"", 60));
    let out = d.cli(&["run", "train"]);
    let gated = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(
        gated.contains("was gated: registry model m version 2 held by its gate: auc = 0.5 is below the current version 1's 0.75 by more than max_metric_drop 0.05"),
        "{gated}"
    );
    assert_eq!(d.history("train")[0]["status"], "gated");
    let listing = cli_ok(&d, &["models", "m"]);
    assert!(
        listing.contains("m: current version 1") && listing.contains("version 2 (held by its gate: auc = 0.5"),
        "{listing}"
    );
    assert_eq!(cli_ok(&d, &["models", "discard", "m", "2"]).trim(), "OK model m version 2 discarded");
    assert!(!d.dir.path().join("data/models/m/2").exists());

    // Through all of it version 1 stayed current, with its metrics, and no staging is left.
    let listing = cli_ok(&d, &["models", "m"]);
    assert!(listing.contains("m: current version 1") && listing.contains("metrics: auc=0.75"), "{listing}");
    let left: Vec<String> = std::fs::read_dir(d.dir.path().join("data/models/m"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.iter().filter(|n| n.starts_with('.')).count(), 0, "{left:?}");

    // A process that left the command's group keeps the output pipe open: the run still
    // ends (after the cancel grace), and the number of the discarded version 2 is not reused.
    let straggler = format!("sleep 62.{}", std::process::id());
    rewrite(command(
        &format!(
            "printf m > \"$0/m.onnx\"; echo '{{\"auc\": 0.8}}' > \"$0/metrics.json\"; setsid {straggler} & sleep 0.5"
        ),
        60,
    ));
    let started = std::time::Instant::now();
    assert!(d.run_job("train").contains("published registry model m version 3"));
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "the run waited for the straggler");
    let _ = std::process::Command::new("pkill").args(["-f", &straggler]).status();
}

/// The demo data cut at `cutoff` (epoch ms): the past as a Parquet file (what the scoring
/// job knows users bought), and the purchases from the cut-off on as a holdout CSV, with
/// each holdout user's items.
fn split_demo(dir: &Path, cutoff_ms: i64) -> (PathBuf, PathBuf, BTreeMap<String, HashSet<String>>) {
    use arrow_array::cast::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(root().join("data/demo/retail.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let past = dir.join("past.parquet");
    let mut writer = None;
    let mut holdout: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ts = batch.column_by_name("ts").unwrap().as_primitive::<arrow_array::types::TimestampMillisecondType>();
        let users = batch.column_by_name("user_id").unwrap().as_string::<i32>();
        let items = batch.column_by_name("item_id").unwrap().as_string::<i32>();
        let cancelled = batch.column_by_name("cancelled").unwrap().as_boolean();
        for i in 0..batch.num_rows() {
            if ts.value(i) >= cutoff_ms && !cancelled.value(i) {
                holdout.entry(users.value(i).into()).or_default().insert(items.value(i).into());
            }
        }
        let before: arrow_array::BooleanArray = ts.iter().map(|t| t.map(|t| t < cutoff_ms)).collect();
        let kept = arrow_select::filter::filter_record_batch(&batch, &before).unwrap();
        let w = writer.get_or_insert_with(|| {
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&past).unwrap(), batch.schema(), None).unwrap()
        });
        w.write(&kept).unwrap();
    }
    writer.unwrap().close().unwrap();
    let truth = dir.join("holdout.csv");
    let mut csv = String::from("user_id,item_id\n");
    for (user, items) in &holdout {
        for item in items {
            csv.push_str(&format!("{user},{item}\n"));
        }
    }
    std::fs::write(&truth, csv).unwrap();
    (past, truth, holdout)
}

/// Hit rate at 10 of the served `ranking` lists over the holdout's users (a user without a
/// list scores 0), computed here from the lists as an app reads them.
fn served_hit_rate(d: &TestDaemon, holdout: &BTreeMap<String, HashSet<String>>) -> (f64, Vec<Vec<String>>) {
    let mut pipe = redis::pipe();
    for user in holdout.keys() {
        pipe.cmd("ZREVRANGE").arg(format!("ranking:{user}")).arg(0).arg(9);
    }
    let lists: Vec<Vec<String>> = pipe.query(&mut d.redis()).unwrap();
    let hits = holdout.values().zip(&lists).filter(|(items, list)| list.iter().any(|i| items.contains(i))).count();
    (hits as f64 / holdout.len() as f64, lists)
}

#[test]
fn a_model_whose_lists_fall_on_the_holdout_is_held_and_the_served_lists_stay() {
    // 2011-11-01T00:00:00Z: the scoring job knows purchases before it; the gate judges
    // lists by the purchases from it on.
    let cutoff_ms = 1_320_105_600_000;
    let dir = tempfile::tempdir().unwrap();
    let (past, holdout_path, holdout) = split_demo(dir.path(), cutoff_ms);
    let r = root().display().to_string();
    let train = |cutoff: &str| {
        train_job().replace("\"--no-validation\"]", &format!("\"--no-validation\", \"--cutoff\", \"{cutoff}\"]"))
    };
    let gate = format!(
        "\n[gate]\nholdout = \"{}\"\nmetric = \"hit_rate@10\"\nmax_metric_drop = 0.01\n",
        holdout_path.display()
    );
    let scoring = scoring_job().replace(&format!("\"{r}/data/demo/retail.parquet\""), &format!("{:?}", past)) + &gate;
    assert!(scoring.contains("past.parquet"), "{scoring}");
    let d = TestDaemon::start(&[("train", &train("2011-11-01")), ("ranking", &scoring)]);

    // Version 1, trained on everything before the cut-off: published, its hit rate measured.
    d.run_job("train");
    let first = run_after(&d, "ranking", d.history("train")[0]["run_id"].as_u64().unwrap());
    assert_eq!(first["status"], "ok", "{first}");
    let measured = &first["gate"]["holdout"];
    assert_eq!(measured["metric"], "hit_rate@10", "{first}");
    assert_eq!(measured["users"], holdout.len(), "{first}");
    let (served, lists) = served_hit_rate(&d, &holdout);
    let recorded = measured["value"].as_f64().unwrap();
    assert!((recorded - served).abs() < 1e-9, "the gate measured {recorded}, the served lists score {served}");
    assert!(served > 0.05, "a model trained before the holdout finds some of it: {served}");

    // Version 2, trained on a truncated export (two months of data): its lists fall on
    // the holdout, so the table version is held and so is the model version.
    d.write_job("train", &train("2011-01-15"));
    assert!(d.cli(&["reload"]).status.success());
    let report = d.run_job("train");
    assert!(report.contains("registry model ranking version 2"), "{report}");
    let second = run_after(&d, "ranking", first["run_id"].as_u64().unwrap() + 1);
    assert_eq!(second["status"], "gated", "{second}");
    assert_eq!(second["models"], serde_json::json!(["ranking@2"]), "{second}");
    let (value, current) =
        (second["gate"]["holdout"]["value"].as_f64().unwrap(), second["gate"]["holdout"]["current"].as_f64().unwrap());
    assert!((current - served).abs() < 1e-9, "the served version scored again on the same holdout: {second}");
    assert!(value < current - 0.01, "{second}");
    let error = second["error"].as_str().unwrap();
    assert!(error.contains("hit_rate@10") && error.contains("below the current version 1's"), "{error}");
    assert!(error.contains("registry model versions: ranking@2 held (current again: 1)"), "{error}");

    // The served lists are version 1's, the registry is back on version 1, and the next
    // run scores with it and publishes.
    assert_eq!(served_hit_rate(&d, &holdout).1, lists, "the held version is not served");
    assert_eq!(std::fs::read_to_string(d.dir.path().join("data/models/ranking/CURRENT")).unwrap().trim(), "1");
    let listing = cli_ok(&d, &["models", "ranking"]);
    assert!(listing.contains("ranking: current version 1"), "{listing}");
    assert!(listing.contains("fell on the holdout"), "{listing}");
    d.run_job("ranking");
    let third = &d.history("ranking")[0];
    assert_eq!(third["status"], "ok", "{third}");
    assert_eq!(third["models"], serde_json::json!(["ranking@1"]), "{third}");

    // Lists cut to one item by the params, with the model the served lists came from: the
    // table version is held, the model is not (the params changed, not the model).
    d.write_job("ranking", &scoring.replace("k = 10", "k = 1"));
    assert!(d.cli(&["reload"]).status.success());
    let out = d.cli(&["run", "ranking"]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let fourth = &d.history("ranking")[0];
    assert_eq!(fourth["status"], "gated", "{fourth}");
    assert_eq!(fourth["models"], serde_json::json!(["ranking@1"]), "{fourth}");
    assert!(!fourth["error"].as_str().unwrap().contains("registry model"), "{fourth}");
    assert_eq!(std::fs::read_to_string(d.dir.path().join("data/models/ranking/CURRENT")).unwrap().trim(), "1");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(version_dir(&d, 1).join("recd-version.json")).unwrap()).unwrap();
    assert!(meta.get("held").is_none(), "{meta}");
}

/// `scripts/train_ranking.py` with `args`, with the training packages on the path (or not).
fn train_ranking(args: &[&str], with_packages: bool) -> std::process::Output {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(root().join("scripts/train_ranking.py")).args(args).env_remove("PYTHONPATH");
    if with_packages {
        cmd.env("PYTHONPATH", root().join(".deps/pytools"));
    }
    cmd.output().unwrap()
}

#[test]
fn the_training_script_takes_any_column_names_ids_and_time_forms() {
    // Without its packages: --help works, a missing --out is a usage error.
    let help = train_ranking(&["--help"], false);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--user-column"));
    let no_out = train_ranking(&["--data", "x.csv"], false);
    assert_eq!(no_out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_out.stderr).contains("--out DIR is required"));

    // 40 users (zero-padded integer ids) x 12 items, times with a zone, as a CSV with its
    // own column names; the same lines as a Parquet with a zone-aware timestamp.
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("uid,sku,when\n");
    let (mut users, mut items, mut times) = (Vec::new(), Vec::new(), Vec::new());
    for u in 0..40u32 {
        for k in 0..6u32 {
            let item = format!("i{}", (u * 7 + k * 5) % 12);
            let at = 1_609_459_200 + i64::from(u * 3600 + k * 86_400); // from 2021-01-01T00:00Z
            let when = chrono::DateTime::from_timestamp(at, 0).unwrap().with_timezone(&chrono_tz::Europe::Berlin);
            csv.push_str(&format!("{:05},{item},{}\n", u, when.to_rfc3339()));
            users.push(format!("{u:05}"));
            items.push(item);
            times.push(at);
        }
    }
    std::fs::write(dir.path().join("lines.csv"), csv).unwrap();
    let zoned = arrow_array::TimestampSecondArray::from(times).with_timezone("Europe/Berlin");
    let batch = arrow_array::RecordBatch::try_from_iter([
        ("user_id", std::sync::Arc::new(arrow_array::StringArray::from(users)) as arrow_array::ArrayRef),
        ("item_id", std::sync::Arc::new(arrow_array::StringArray::from(items)) as _),
        ("ts", std::sync::Arc::new(zoned) as _),
    ])
    .unwrap();
    let parquet = dir.path().join("lines.parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&parquet).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    // and as an Arrow IPC file, which `recd init` may hand the trainer as it is
    let ipc = std::fs::File::create(dir.path().join("lines.arrow")).unwrap();
    let mut w = arrow_ipc::writer::FileWriter::try_new(ipc, &batch.schema()).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let fast = ["--family", "popularity", "--no-validation"];
    for (data, mapping) in [
        ("lines.csv", &["--user-column", "uid", "--item-column", "sku", "--time-column", "when"][..]),
        ("lines.parquet", &[][..]),
        ("lines.arrow", &[][..]),
    ] {
        let out = dir.path().join(format!("model-{data}"));
        let path = dir.path().join(data);
        let args = [&["--data", path.to_str().unwrap(), "--out", out.to_str().unwrap()][..], mapping, &fast].concat();
        let run = train_ranking(&args, true);
        assert!(run.status.success(), "{data}: {}", String::from_utf8_lossy(&run.stderr));
        let said = String::from_utf8_lossy(&run.stdout);
        // 2021-01-01T00:00Z to 2021-01-07T15:00Z (user 39, 5 days on), in UTC whatever the zone written
        assert!(said.contains("(2021-01-01 00:00:00 .. 2021-01-07 15:00:00)"), "{data}: {said}");
        let users = vocab_ids_in(&out, "users.csv");
        assert_eq!(users.len(), 40, "{data}");
        assert!(users.contains(&"00007".to_string()), "{data}: ids keep their zeros: {users:?}");
    }
}
