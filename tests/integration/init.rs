//! `recd init` end to end: a raw interactions file to a folder with `recd.toml`, the jobs
//! and a trained model, served by a daemon started there, every job run, lists read with
//! redis-cli and checked against the data itself. MovieLens 100K is read in place from
//! `../shared/data/ml-100k` (tab-separated, no header row); the demo data is rewritten as a
//! CSV with other column names and as a Parquet file with zoned times.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMillisecondType;
use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};

use crate::util::{RECD, TestDaemon, root};

/// 1998-03-01T00:00:00Z: MovieLens 100K runs from 1997-09-20 to 1998-04-23.
const ML_CUTOFF: i64 = 888_710_400;
/// 2011-11-15T12:00:00Z, the cut-off of the demo data's two exports.
const CUTOFF_MS: i64 = 1_321_358_400_000;

fn init(args: &[&str]) -> Output {
    // No --config: the plugins and ONNX Runtime are found through the checkout recd was
    // built in, as for a user running target/release/recd from anywhere.
    Command::new(RECD).arg("init").args(args).current_dir(std::env::temp_dir()).output().expect("recd init")
}

fn init_ok(args: &[&str]) -> String {
    let out = init(args);
    assert!(
        out.status.success(),
        "recd init {args:?} failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Entries of `dir`, by name.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// `ZREVRANGE key 0 -1 WITHSCORES` through redis-cli: (item, score), best first.
fn list(d: &TestDaemon, key: &str) -> Vec<(String, f64)> {
    let text = d.redis_cli(&["ZREVRANGE", key, "0", "-1", "WITHSCORES"]);
    let lines: Vec<&str> = text.lines().collect();
    lines.chunks(2).map(|p| (p[0].to_string(), p[1].parse().expect("a score"))).collect()
}

/// Runs popularity and waits for the chain (ranking, then diversity) to publish.
fn run_every_job(d: &TestDaemon) {
    d.run_job("popularity");
    for job in ["ranking", "diversity"] {
        d.wait_for(&format!("{job} to run after popularity"), 300, || {
            let runs = d.history(job);
            let last = runs.first()?;
            assert_ne!(last["status"], "failed", "{job}: {last}\n{}", d.log());
            (last["status"] == "ok").then_some(())
        });
    }
}

/// The first user of the model's vocabulary (users.csv: user_id,index).
fn a_model_user(home: &Path) -> String {
    let vocab = std::fs::read_to_string(home.join("models/ranking/users.csv")).unwrap();
    vocab.lines().nth(1).unwrap().split(',').next().unwrap().to_string()
}

fn assert_best_first(key: &str, items: &[(String, f64)]) {
    assert!(items.windows(2).all(|w| w[0].1 >= w[1].1), "{key}: not best first: {items:?}");
}

#[test]
fn movielens_100k_from_init_to_lists_read_with_redis_cli_and_evaluated() {
    let udata = root().join("../shared/data/ml-100k/u.data");
    assert!(
        udata.is_file(),
        "MovieLens 100K is read in place from {} (the shared data beside the checkout)",
        udata.display()
    );
    // Independent reading of the file: who had what before the cut-off.
    let text = std::fs::read_to_string(&udata).unwrap();
    let mut past: HashMap<String, HashSet<String>> = HashMap::new();
    let mut everyone = HashSet::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        everyone.insert(f[0].to_string());
        if f[3].parse::<i64>().unwrap() < ML_CUTOFF {
            past.entry(f[0].to_string()).or_default().insert(f[1].to_string());
        }
    }
    let stranger = everyone.iter().find(|u| !past.contains_key(*u)).expect("a user new after the cut-off").clone();

    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("movielens");
    // An empty folder is filled (it stays the same folder: it may be the shell's).
    std::fs::create_dir(&home).unwrap();
    let out = init_ok(&[
        home.to_str().unwrap(),
        "--interactions",
        udata.to_str().unwrap(),
        "--delimiter",
        "tab",
        "--columns",
        "user_id,item_id,rating,ts",
        "--cutoff",
        "1998-03-01",
    ]);
    assert!(out.contains("100000 interactions, 943 users, 1682 items"), "{out}");
    let rows_before: usize = past.values().map(HashSet::len).sum();
    assert!(out.contains(&format!("{rows_before} before the cut-off 1998-03-01")), "{out}");
    assert_eq!(entries(tmp.path()), ["movielens"], "nothing else is left beside the new folder");
    for file in ["recd.toml", "jobs/popularity.toml", "jobs/ranking.toml", "jobs/diversity.toml", "data/past.parquet"] {
        assert!(home.join(file).is_file(), "{file} written\n{out}");
    }
    assert!(home.join("models/ranking/mf.onnx").is_file());

    let d = TestDaemon::start_init(tmp, &home);
    run_every_job(&d);

    let user = a_model_user(&home);
    let key = format!("ranking:{user}");
    let ranked = list(&d, &key);
    assert_eq!(ranked.len(), 10, "{key}: {ranked:?}");
    assert_best_first(&key, &ranked);
    for (item, _) in &ranked {
        let id: u32 = item.parse().unwrap_or_else(|_| panic!("{key}: {item} is not a MovieLens item id"));
        assert!((1..=1682).contains(&id), "{key}: {item}");
        assert!(!past[&user].contains(item), "{key}: {item} was rated before the cut-off");
    }
    // A user first seen after the cut-off gets the popularity table's __default__.
    assert_eq!(list(&d, &format!("ranking:{stranger}")), list(&d, "popularity:__default__"));
    let diverse = list(&d, &format!("diversity:{user}"));
    assert_eq!(diverse.len(), 5, "{diverse:?}");
    let from_ranking: HashSet<&String> = ranked.iter().map(|(i, _)| i).collect();
    assert!(diverse.iter().all(|(i, _)| from_ranking.contains(i)), "diversity re-ranks ranking's list: {diverse:?}");

    // The printed eval commands, run as printed (warm users, as JSON): the model beats
    // time-decayed popularity on users with a history.
    let ndcg = |table: &str| -> f64 {
        let line = out.lines().find(|l| l.contains(&format!(" eval {table} "))).expect("an eval command");
        let out = Command::new("sh").arg("-c").arg(format!("{line} --warm-only --json")).output().unwrap();
        assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(report["users"].as_u64().unwrap() > 100, "{report}");
        report["ndcg"].as_f64().unwrap()
    };
    let (model, popularity) = (ndcg("ranking"), ndcg("popularity"));
    assert!(model > popularity, "ranking nDCG@10 {model} vs popularity {popularity}");
}

/// The demo data's columns as (user, item, epoch ms, country) rows, from 2011-09-01 on and
/// of its 500 most bought items (the trainer's time grows with the cube of the items: this
/// keeps each training to seconds).
fn demo_rows() -> Vec<(String, String, i64, String)> {
    let file = std::fs::File::open(root().join("data/demo/retail.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let from = 1_314_835_200_000; // 2011-09-01
    let mut rows: Vec<(String, String, i64, String)> = Vec::new();
    for batch in reader {
        let b = batch.unwrap();
        let s = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
        let (users, items, countries) = (s("user_id"), s("item_id"), s("country"));
        let cancelled = b.column_by_name("cancelled").unwrap().as_boolean().clone();
        let ts = b.column_by_name("ts").unwrap().as_primitive::<TimestampMillisecondType>().clone();
        for r in 0..b.num_rows() {
            if ts.value(r) >= from && !cancelled.value(r) {
                rows.push((users.value(r).into(), items.value(r).into(), ts.value(r), countries.value(r).into()));
            }
        }
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    rows.iter().for_each(|r| *counts.entry(r.1.as_str()).or_default() += 1);
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let top: HashSet<String> = ranked.iter().take(500).map(|(i, _)| i.to_string()).collect();
    rows.retain(|r| top.contains(&r.1));
    rows
}

fn item_categories() -> HashMap<String, String> {
    let text = std::fs::read_to_string(root().join("data/demo/items.csv")).unwrap();
    let mut reader = csv_rows(&text);
    let header = reader.remove(0);
    let (id, cat) =
        (header.iter().position(|h| h == "item_id").unwrap(), header.iter().position(|h| h == "category").unwrap());
    reader.into_iter().map(|r| (r[id].clone(), r[cat].clone())).collect()
}

/// A small CSV reader for the demo items file (fields may be quoted).
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| {
            let (mut fields, mut field, mut quoted) = (Vec::new(), String::new(), false);
            for c in line.chars() {
                match (c, quoted) {
                    ('"', _) => quoted = !quoted,
                    (',', false) => fields.push(std::mem::take(&mut field)),
                    _ => field.push(c),
                }
            }
            fields.push(field);
            fields
        })
        .collect()
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn init_takes_a_csv_with_other_column_names_and_a_parquet_with_zoned_times() {
    let rows = demo_rows();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("exports");
    std::fs::create_dir(&data).unwrap();

    // 1. A CSV: other names, ISO times with an offset, the segment in the file, categories
    // from an items file, a list length of 6 and a schedule in London.
    let csv = data.join("purchases.csv");
    let mut text = String::from("customer,product,when,country\n");
    for (u, i, ms, c) in &rows {
        let t = chrono::DateTime::from_timestamp_millis(*ms)
            .unwrap()
            .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap());
        text += &format!("{u},{i},{},\"{c}\"\n", t.to_rfc3339());
    }
    std::fs::write(&csv, text).unwrap();
    let home = tmp.path().join("shop");
    let items = root().join("data/demo/items.csv");
    let out = init_ok(&[
        home.to_str().unwrap(),
        "--interactions",
        csv.to_str().unwrap(),
        "--user-column",
        "customer",
        "--item-column",
        "product",
        "--time-column",
        "when",
        "--segment-column",
        "country",
        "--items",
        items.to_str().unwrap(),
        "--items-id-column",
        "item_id",
        "--category-separator",
        "|",
        "--timezone",
        "Europe/London",
        "--k",
        "6",
    ]);
    assert!(out.contains(&format!("{} interactions", rows.len())), "{out}");
    // The span in UTC: the +01:00 of each time is taken into account.
    let utc = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%d %H:%M UTC").to_string();
    let (first, last) = (rows.iter().map(|r| r.2).min().unwrap(), rows.iter().map(|r| r.2).max().unwrap());
    assert!(out.contains(&format!("from {} to {}", utc(first), utc(last))), "{out}");
    let popularity = std::fs::read_to_string(home.join("jobs/popularity.toml")).unwrap();
    assert!(popularity.contains(&format!("interactions = \"{}\"", csv.display())), "read in place:\n{popularity}");
    assert!(popularity.contains("timezone = \"Europe/London\""), "{popularity}");
    let diversity = std::fs::read_to_string(home.join("jobs/diversity.toml")).unwrap();
    assert!(diversity.contains("category_separator = \"|\""), "{diversity}");

    // Running init again on the same folder is refused and changes nothing.
    let before = std::fs::read_to_string(home.join("recd.toml")).unwrap();
    let again = init(&[home.to_str().unwrap(), "--interactions", csv.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(std::fs::read_to_string(home.join("recd.toml")).unwrap(), before);

    let categories = item_categories();
    {
        let d = TestDaemon::start_init(tempfile::tempdir().unwrap(), &home);
        run_every_job(&d);
        let user = a_model_user(&home);
        let ranked = list(&d, &format!("ranking:{user}"));
        assert_eq!(ranked.len(), 6, "{ranked:?}");
        let diverse = list(&d, &format!("diversity:{user}"));
        assert_eq!(diverse.len(), 3, "{diverse:?}");
        let mut per_category: HashMap<&str, usize> = HashMap::new();
        for (item, _) in &diverse {
            let category = categories.get(item).unwrap_or_else(|| panic!("{item} is in items.csv"));
            *per_category.entry(category).or_default() += 1;
        }
        assert!(per_category.values().all(|n| *n <= 2), "at most 2 per category: {per_category:?}");
        let uk = list(&d, "popularity:__segment__:United Kingdom");
        assert_eq!(uk.len(), 6, "a list per country: {uk:?}");
    }

    // 2. Parquet: times zoned in Berlin, ids under other names, the segment in a users
    // file, and a cut-off the jobs must not read past.
    let parquet = data.join("orders.parquet");
    let times =
        TimestampMillisecondArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>()).with_timezone("Europe/Berlin");
    write_parquet(
        &parquet,
        vec![
            ("client", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))) as ArrayRef),
            ("sku", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))) as ArrayRef),
            ("at", Arc::new(times) as ArrayRef),
        ],
    );
    let regions: HashMap<&String, &String> = rows.iter().map(|r| (&r.0, &r.3)).collect();
    let users = data.join("clients.csv");
    let mut text = String::from("client,region\n");
    for (u, c) in &regions {
        text += &format!("{u},\"{c}\"\n");
    }
    std::fs::write(&users, text).unwrap();
    let home = tmp.path().join("orders");
    init_ok(&[
        home.to_str().unwrap(),
        "--interactions",
        parquet.to_str().unwrap(),
        "--user-column",
        "client",
        "--item-column",
        "sku",
        "--time-column",
        "at",
        "--users",
        users.to_str().unwrap(),
        "--segment-column",
        "region",
        "--cutoff",
        "2011-11-15T13:00:00+01:00",
    ]);
    // Midday, in trading hours: times read an hour off (the zone ignored) would move rows
    // across the cut-off.
    let past = std::fs::File::open(home.join("data/past.parquet")).unwrap();
    let mut kept = 0;
    for batch in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(past).unwrap().build().unwrap()
    {
        let b = batch.unwrap();
        let at = b.column_by_name("at").unwrap().as_primitive::<TimestampMillisecondType>();
        assert!(at.values().iter().all(|&t| t < CUTOFF_MS), "the past holds only times before the cut-off");
        kept += b.num_rows();
    }
    assert_eq!(kept, rows.iter().filter(|r| r.2 < CUTOFF_MS).count());

    let d = TestDaemon::start_init(tempfile::tempdir().unwrap(), &home);
    run_every_job(&d);
    let user = a_model_user(&home);
    let ranked = list(&d, &format!("ranking:{user}"));
    assert_eq!(ranked.len(), 10, "{ranked:?}");
    assert_best_first(&format!("ranking:{user}"), &ranked);
    let had: HashSet<&String> = rows.iter().filter(|r| r.0 == user && r.2 < CUTOFF_MS).map(|r| &r.1).collect();
    assert!(ranked.iter().all(|(i, _)| !had.contains(i)), "nothing the user had before the cut-off");
    let country = regions[&user].clone();
    assert!(!list(&d, &format!("popularity:__segment__:{country}")).is_empty(), "segments from the users file");
    // No --items: diversity compares the model's item embeddings.
    let diverse = list(&d, &format!("diversity:{user}"));
    assert_eq!(diverse.len(), 5, "{diverse:?}");
    assert!(diverse.iter().all(|(i, _)| ranked.iter().any(|(r, _)| r == i)), "{diverse:?} re-ranks {ranked:?}");
}

#[test]
fn init_refuses_a_bad_mapping_before_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("new");
    let retail = root().join("data/demo/retail.parquet");
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["--timezone", "Europe/Londn"], "--timezone Europe/Londn: not an IANA time zone"),
        (vec!["--user-column", "customer"], "--user-column customer: "),
        (vec!["--cutoff", "2001-01-01"], "--cutoff 2001-01-01: no interaction is before it"),
        (vec!["--cutoff", "2030-01-01"], "none is left for `recd eval`"),
        (vec!["--items", "/nonexistent/items.csv"], "/nonexistent/items.csv"),
    ];
    for (extra, expected) in cases {
        let mut args = vec![home.to_str().unwrap(), "--interactions", retail.to_str().unwrap()];
        args.extend(extra.iter().copied());
        let out = init(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in:\n{stderr}");
        assert!(entries(tmp.path()).is_empty(), "{args:?} left {:?}", entries(tmp.path()));
    }
    // A column list in the error, and a file recd cannot read without a delimiter.
    let out = init(&[home.to_str().unwrap(), "--interactions", retail.to_str().unwrap(), "--time-column", "when"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("(it has: invoice, user_id, item_id"), "{out:?}");
    let tsv: PathBuf = tmp.path().join("ratings.data");
    std::fs::write(&tsv, "1\t2\t5\t881250949\n").unwrap();
    let out = init(&[home.to_str().unwrap(), "--interactions", tsv.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--delimiter"), "{out:?}");
    assert_eq!(entries(tmp.path()), ["ratings.data"]);

    // A setup that fails validation once in place (a trainer that writes no real model) is
    // taken out again: a new folder goes, an existing empty one is left empty.
    let trainer = tmp.path().join("bad_trainer.py");
    std::fs::write(
        &trainer,
        "import os, sys\nout = sys.argv[sys.argv.index('--out') + 1]\nos.makedirs(out)\n\
         open(os.path.join(out, 'mf.onnx'), 'w').write('not a model')\n\
         open(os.path.join(out, 'users.csv'), 'w').write('user_id,index\\n17850,0\\n')\n\
         open(os.path.join(out, 'items.csv'), 'w').write('item_id,index\\n85123A,0\\n')\n\
         open(os.path.join(out, 'item_factors.parquet'), 'w').write('')\n\
         open(os.path.join(out, 'metrics.json'), 'w').write('{}')\n",
    )
    .unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for target in [&home, &empty] {
        let args = [target.to_str().unwrap(), "--interactions", retail.to_str().unwrap(), "--trainer"];
        let out = init(&[&args[..], &[trainer.to_str().unwrap()]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("do not validate"), "{stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("error"), "validate's errors are shown");
    }
    assert_eq!(entries(tmp.path()), ["bad_trainer.py", "empty", "ratings.data"]);
    assert!(entries(&empty).is_empty(), "{:?}", entries(&empty));
}
