//! The churn strategy through the daemon: one hash per customer (HGETALL, HGET, GET as
//! JSON), probabilities equal to ONNX Runtime's Python binding on features computed here
//! from the Parquet data, and the high-risk retention list.

use std::collections::{BTreeMap, HashMap};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, TimestampMillisecondType, TimestampSecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::oracle::python_scores;
use crate::util::{TestDaemon, root, shipped_job};

const DAY: f64 = 86_400.0;

/// One customer's invoices: invoice -> (earliest line time, value).
type Invoices = BTreeMap<String, (f64, f64)>;

/// Per customer, their invoices of non-cancelled lines; and the newest line's time.
fn invoices() -> (BTreeMap<String, Invoices>, f64) {
    let file = std::fs::File::open(root().join("data/demo/retail.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let mut out: BTreeMap<String, Invoices> = BTreeMap::new();
    let mut newest = f64::MIN;
    for batch in reader {
        let b = batch.unwrap();
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        let (users, invoices, cancelled) = (col("user_id"), col("invoice"), col("cancelled"));
        let (quantity, price, ts) = (col("quantity"), col("price"), col("ts"));
        let times: Vec<f64> = match ts.as_primitive_opt::<TimestampSecondType>() {
            Some(t) => t.values().iter().map(|&v| v as f64).collect(),
            None => ts.as_primitive::<TimestampMillisecondType>().values().iter().map(|&v| v as f64 / 1000.0).collect(),
        };
        for (r, &time) in times.iter().enumerate() {
            newest = newest.max(time);
            if cancelled.as_boolean().value(r) {
                continue;
            }
            let value =
                f64::from(quantity.as_primitive::<Int32Type>().value(r)) * price.as_primitive::<Float64Type>().value(r);
            let user = users.as_string::<i32>().value(r).to_string();
            let e = out
                .entry(user)
                .or_default()
                .entry(invoices.as_string::<i32>().value(r).to_string())
                .or_insert((times[r], 0.0));
            e.0 = e.0.min(times[r]);
            e.1 += value;
        }
    }
    (out, newest)
}

/// The five features, as models/churn/README.md defines them.
fn features(invoices: &Invoices, t: f64) -> [f64; 5] {
    let times: Vec<f64> = invoices.values().map(|v| v.0).collect();
    let last = times.iter().cloned().fold(f64::MIN, f64::max);
    let first = times.iter().cloned().fold(f64::MAX, f64::min);
    let recent = times.iter().filter(|&&x| x >= t - 90.0 * DAY).count() as f64;
    let prior = times.iter().filter(|&&x| x < t - 90.0 * DAY && x >= t - 180.0 * DAY).count() as f64;
    let monetary: f64 = invoices.values().map(|v| v.1).sum();
    [(t - last) / DAY, times.len() as f64, monetary, (t - first) / DAY, (1.0 + recent).ln() - (1.0 + prior).ln()]
}

fn hgetall(conn: &mut redis::Connection, key: &str) -> Vec<(String, String)> {
    redis::cmd("HGETALL").arg(key).query(conn).unwrap()
}

#[test]
fn churn_publishes_a_hash_per_customer_scored_as_onnx_runtime_scores_it() {
    let d = TestDaemon::start(&[("churn", &shipped_job("churn"))]);
    d.run_job("churn");
    let (by_user, newest) = invoices();
    // Default as_of: one second after the newest line.
    let as_of = newest + 1.0;
    // Every 40th customer, plus the first and last.
    let users: Vec<&String> = by_user.keys().enumerate().filter(|(i, _)| i % 40 == 0).map(|(_, u)| u).collect();
    let feats: Vec<[f64; 5]> = users.iter().map(|u| features(&by_user[*u], as_of)).collect();
    let names = ["recency_days", "frequency", "monetary", "tenure_days", "trend"];
    let inputs: Vec<(&str, Vec<f64>)> =
        names.iter().enumerate().map(|(k, n)| (*n, feats.iter().map(|f| f[k]).collect())).collect();
    let want = python_scores("models/churn/churn.onnx", &inputs, "probability");

    let mut conn = d.redis();
    for ((user, f), p) in users.iter().zip(&feats).zip(&want) {
        let hash = hgetall(&mut conn, &format!("churn:{user}"));
        let fields: Vec<&str> = hash.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(fields, ["probability", "tier", "recency_days", "frequency", "monetary", "tenure_days", "trend"]);
        let map: HashMap<&str, &str> = hash.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let got: f64 = map["probability"].parse().unwrap();
        assert!((got - p).abs() < 1e-5, "{user}: probability {got}, onnxruntime {p}");
        let tier = if got >= 0.7 {
            "high"
        } else if got >= 0.4 {
            "medium"
        } else {
            "low"
        };
        assert_eq!(map["tier"], tier, "{user}");
        for (k, name) in names.iter().enumerate() {
            let v: f64 = map[name].parse().unwrap();
            assert!((v - f[k]).abs() <= 1e-9 * f[k].abs().max(1.0), "{user} {name}: {v} vs {}", f[k]);
        }
        // GET gives the same hash as a JSON object, numbers as numbers
        let json: String = redis::cmd("GET").arg(format!("churn:{user}")).query(&mut conn).unwrap();
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["tier"], tier);
        assert!((json["probability"].as_f64().unwrap() - got).abs() < 1e-12);
    }
    let published: i64 = by_user.len() as i64;
    let status = d.cli(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains(&format!("{published} users")), "every customer with a purchase gets a hash: {status}");

    // Type checks as Redis makes them
    let k = format!("churn:{}", users[0]);
    assert_eq!(d.redis_cli(&["TYPE", &k]).trim(), "hash");
    assert!(d.redis_cli(&["ZRANGE", &k, "0", "-1"]).starts_with("WRONGTYPE"));
    assert_eq!(d.redis_cli(&["HGET", "churn:no-such-customer", "tier"]).trim(), "");
}

#[test]
fn the_retention_list_ranks_the_high_risk_customers() {
    let d =
        TestDaemon::start(&[("churn", &shipped_job("churn")), ("churn-retention", &shipped_job("churn-retention"))]);
    d.run_job("churn");
    // chained: runs after churn publishes
    let mut conn = d.redis();
    let list: Vec<(String, f64)> = d.wait_for("the chained retention run", 60, || {
        let l: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg("churn-retention:high")
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut conn)
            .ok()?;
        (!l.is_empty()).then_some(l)
    });
    let high = {
        let (by_user, _) = invoices();
        by_user
            .keys()
            .filter(|u| {
                let tier: String = redis::cmd("HGET").arg(format!("churn:{u}")).arg("tier").query(&mut conn).unwrap();
                tier == "high"
            })
            .count()
    };
    assert_eq!(list.len(), high, "every high-tier customer is on the list");
    assert!(list.windows(2).all(|w| w[0].1 >= w[1].1), "most likely to churn first");
    for (user, p) in list.iter().step_by(25) {
        let stored: f64 = redis::cmd("HGET").arg(format!("churn:{user}")).arg("probability").query(&mut conn).unwrap();
        assert!((stored - p).abs() < 1e-6 && *p >= 0.7, "{user}: list {p}, hash {stored}");
    }
}

/// ROC AUC by definition: over all (churned, stayed) pairs, the share the model orders
/// right, ties counting one half.
fn auc_by_pairs(scored: &[(f64, bool)]) -> f64 {
    let (pos, neg): (Vec<_>, Vec<_>) = scored.iter().partition(|(_, churned)| *churned);
    let mut right = 0.0;
    for (p, _) in &pos {
        for (n, _) in &neg {
            right += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    right / (pos.len() * neg.len()) as f64
}

#[test]
fn recd_eval_churn_scores_a_temporal_holdout() {
    let job = format!("{}as_of = \"2011-09-09\"\n", shipped_job("churn"));
    let d = TestDaemon::start(&[("churn", &job)]);
    d.run_job("churn");
    let truth = root().join("data/demo/retail.parquet");
    let args = ["eval", "churn", "--churn", "--truth", truth.to_str().unwrap(), "--cutoff", "2011-09-09", "--json"];
    let out = d.cli(&[&args[..], &["--record"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // A list flag with --churn, or a churn flag without it, is refused rather than ignored.
    for extra in [&["--k", "5"][..], &["--cold-only"][..]] {
        let out = d.cli(&[&args[..], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let named = stderr.contains("cannot be used with") && stderr.contains(&format!("'{}", extra[0]));
        assert!(!out.status.success() && named, "{extra:?}: {out:?}");
    }
    let lists = ["eval", "churn", "--truth", truth.to_str().unwrap(), "--cutoff", "2011-09-09", "--horizon-days", "30"];
    let out = d.cli(&lists);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("required arguments were not provided:\n  --churn"),
        "{out:?}"
    );
    // --record kept the same numbers with the version read, for the dashboard
    let lineage: serde_json::Value = serde_json::from_slice(&d.cli(&["lineage", "churn"]).stdout).unwrap();
    let kept = &lineage["eval"];
    assert_eq!(kept["setting"], "churn within 90 days, field probability", "{lineage}");
    assert_eq!(kept["users"], report["users_scored"]);
    for name in ["roc_auc", "log_loss", "log_loss_base_rate", "brier", "brier_base_rate", "base_rate"] {
        assert_eq!(kept["metrics"][name], report[name], "{name} in {kept}");
    }

    // Independently: who bought before the cut-off, and who bought again within 90 days.
    let cutoff =
        chrono::NaiveDate::from_ymd_opt(2011, 9, 9).unwrap().and_time(chrono::NaiveTime::MIN).and_utc().timestamp()
            as f64;
    let (by_user, _) = invoices();
    let mut conn = d.redis();
    let mut scored = Vec::new();
    let mut tiers: std::collections::HashMap<String, (usize, usize)> = std::collections::HashMap::new();
    for (user, inv) in &by_user {
        if !inv.values().any(|v| v.0 < cutoff) {
            continue;
        }
        let churned = !inv.values().any(|v| v.0 >= cutoff && v.0 < cutoff + 90.0 * DAY);
        let p: f64 = redis::cmd("HGET").arg(format!("churn:{user}")).arg("probability").query(&mut conn).unwrap();
        let tier: String = redis::cmd("HGET").arg(format!("churn:{user}")).arg("tier").query(&mut conn).unwrap();
        scored.push((p, churned));
        let t = tiers.entry(tier).or_insert((0usize, 0usize));
        t.0 += 1;
        t.1 += usize::from(churned);
    }
    let churned = scored.iter().filter(|s| s.1).count();
    assert_eq!(report["users"], scored.len());
    assert_eq!(report["users_scored"], scored.len());
    assert_eq!(report["churned"], churned);
    let auc = auc_by_pairs(&scored);
    assert!((report["roc_auc"].as_f64().unwrap() - auc).abs() < 1e-9, "{report} vs {auc}");
    let log_loss =
        -scored.iter().map(|(p, c)| if *c { p.ln() } else { (1.0 - p).ln() }).sum::<f64>() / scored.len() as f64;
    assert!((report["log_loss"].as_f64().unwrap() - log_loss).abs() < 1e-9);
    let brier = scored.iter().map(|(p, c)| (p - if *c { 1.0 } else { 0.0 }).powi(2)).sum::<f64>() / scored.len() as f64;
    assert!((report["brier"].as_f64().unwrap() - brier).abs() < 1e-9);
    // every scored user is in one reliability bin; each tier's precision is its churn rate
    let binned: u64 = report["reliability"].as_array().unwrap().iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(binned as usize, scored.len());
    let reported = report["tiers"].as_array().unwrap();
    assert_eq!(reported.len(), tiers.len(), "{reported:?}");
    for t in reported {
        let (users, churned) = tiers[t["tier"].as_str().unwrap()];
        assert_eq!((t["users"].as_u64().unwrap() as usize, t["churned"].as_u64().unwrap() as usize), (users, churned));
        assert!((t["precision"].as_f64().unwrap() - churned as f64 / users as f64).abs() < 1e-12);
    }
    // the ROC curve runs from (0, 0) to (1, 1)
    let roc = report["roc"].as_array().unwrap();
    assert_eq!((roc[0][0].as_f64(), roc[0][1].as_f64()), (Some(0.0), Some(0.0)));
    assert_eq!((roc[roc.len() - 1][0].as_f64(), roc[roc.len() - 1][1].as_f64()), (Some(1.0), Some(1.0)));
    // the model must beat chance and the constant predictor on this holdout
    assert!(auc > 0.7, "auc {auc}");
    assert!(log_loss < report["log_loss_base_rate"].as_f64().unwrap());
}
