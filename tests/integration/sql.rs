//! The `sql` plugin through the daemon: the shipped `jobs/bought-together.toml` (a strategy
//! written in SQL) publishes, for each product, the products most often on the same
//! invoice; every list is checked against co-purchase counts computed here from the
//! Parquet file. Broken copies of the job are refused by `recd validate` at
//! `params.query`, before any run.

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow_array::cast::AsArray;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::util::{TestDaemon, root, shipped_job};

/// Each invoice's distinct items, cancelled lines left out.
fn baskets() -> HashMap<String, HashSet<String>> {
    let file = std::fs::File::open(root().join("data/demo/retail.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for batch in reader {
        let b = batch.unwrap();
        let invoice = b.column_by_name("invoice").unwrap().as_string::<i32>().clone();
        let item = b.column_by_name("item_id").unwrap().as_string::<i32>().clone();
        let cancelled = b.column_by_name("cancelled").unwrap().as_boolean().clone();
        for r in 0..b.num_rows() {
            if !cancelled.value(r) {
                out.entry(invoice.value(r).to_string()).or_default().insert(item.value(r).to_string());
            }
        }
    }
    out
}

/// The job's query, in Rust: for `product`, every other item shared by >= 3 invoices,
/// scored shared / sqrt(n(product) * n(other)).
fn expected(product: &str, baskets: &HashMap<String, HashSet<String>>) -> Vec<(String, f64)> {
    let mut invoices: HashMap<&str, usize> = HashMap::new();
    let mut shared: BTreeMap<&str, usize> = BTreeMap::new();
    for items in baskets.values() {
        for i in items {
            *invoices.entry(i).or_default() += 1;
        }
        if items.contains(product) {
            for i in items.iter().filter(|i| *i != product) {
                *shared.entry(i).or_default() += 1;
            }
        }
    }
    let n = invoices[product] as f64;
    shared
        .into_iter()
        .filter(|(_, s)| *s >= 3)
        .map(|(i, s)| (i.to_string(), s as f64 / (n * invoices[i] as f64).sqrt()))
        .collect()
}

#[test]
fn a_strategy_written_in_sql_publishes_lists_that_match_the_data() {
    let d = TestDaemon::start(&[("bought-together", &shipped_job("bought-together"))]);
    let out = d.run_job("bought-together");
    assert!(out.contains("published table bought-together"), "{out}");
    let baskets = baskets();
    let mut conn = d.redis();
    // a best-seller, a mid-table product, and one sold a few times
    for product in ["85123A", "22423", "84879", "21212", "23084"] {
        let served: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(format!("bought-together:{product}"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut conn)
            .unwrap();
        let mut want = expected(product, &baskets);
        assert!(!want.is_empty(), "{product}: pick products with co-purchases");
        // highest score first; ties as a Redis sorted set serves them (item id descending)
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        let n = want.len().min(10);
        assert_eq!(served.len(), n, "{product}: {served:?}");
        // the 10th score decides membership; compare scores (float32 in the store) and the
        // items whose score is clear of the cut
        for (got, w) in served.iter().zip(&want) {
            assert!((got.1 - w.1).abs() < 1e-6, "{product}: {served:?} vs {want:?}");
        }
        let cut = want[n - 1].1;
        let clear: Vec<&String> = want.iter().take(n).filter(|w| (w.1 - cut).abs() > 1e-6).map(|w| &w.0).collect();
        let got: HashSet<&String> = served.iter().map(|s| &s.0).collect();
        assert!(clear.iter().all(|i| got.contains(i)), "{product}: {served:?} lacks one of {clear:?}");
    }
}

#[test]
fn recd_validate_reports_a_broken_query_at_its_key_before_any_run() {
    let job = shipped_job("bought-together");
    let d = TestDaemon::start(&[("bought-together", &job)]);
    let query_line = job.lines().position(|l| l.starts_with("query = ")).unwrap() + 1;
    let cases = [
        // a column the input lacks
        (job.replace("SELECT DISTINCT invoice, item_id", "SELECT DISTINCT invoice_no, item_id"), "invoice_no"),
        // a table the job does not provide
        (job.replace("FROM interactions WHERE", "FROM purchases WHERE"), "purchases"),
        // a result without the list columns
        (job.replace("p.other AS item", "p.other AS product_b"), "a list table needs exactly `user`, `item`, `score`"),
        // not a query
        (job.replace("WITH baskets AS (", "DROP TABLE interactions; WITH baskets AS ("), "params.query"),
    ];
    for (text, needle) in cases {
        d.write_job("broken", &text);
        let path = d.jobs_dir().join("broken.toml");
        let out = d.cli(&["validate", path.to_str().unwrap()]);
        let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{said}");
        let at = format!("broken.toml:{query_line}: field `params.query`: params.query: ");
        assert!(said.contains(&at), "want {at:?} in {said}");
        assert!(said.contains(needle), "want {needle:?} in {said}");
    }
    // the good job still validates
    let out = d.cli(&["validate", d.jobs_dir().join("bought-together.toml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
