//! churn: for each customer, the probability they stop buying, scored by the job's ONNX
//! classifier from features of their purchase history, and a risk tier.
//!
//! Features as of a time T (`as_of`; default: one second after the newest line), from the
//! non-cancelled lines before T, grouped into invoices (an invoice's time is its earliest
//! line, its value the sum of quantity x price) — the definitions `scripts/train_churn.py`
//! trains with (see `models/churn/README.md`):
//! - `recency_days`: days from the newest invoice to T;
//! - `frequency`: number of invoices;
//! - `monetary`: sum of invoice values;
//! - `tenure_days`: days from the oldest invoice to T;
//! - `trend`: ln(1 + invoices in [T-90d, T)) - ln(1 + invoices in [T-180d, T-90d)).
//!
//! The job's `[model_inputs]` binds model inputs to these names (by default each input to
//! the feature of its own name); the model's `probability` output is read.
//!
//! `emit = "scores"` (a job with `output = "hashes"`): one hash per customer with
//! `probability`, `tier` ("high", "medium" or "low" by `high_risk`/`medium_risk`) and the
//! features. `emit = "retention"` (a list job): one list under the key `high`, the
//! high-risk customers by probability, at most `retention_size`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use recd_plugin_api::columns::{booleans, column, ids_as_strings, numbers, seconds};
use recd_plugin_api::model::{FeatureValues, check_features, model_column, scoring_batch};
use recd_plugin_api::{CheckContext, LogLevel, OutputRows, PluginError, RunContext, Strategy, export_plugin};
use serde::Deserialize;

/// The features this strategy computes, in the order they are stored in each hash.
const FEATURES: [&str; 5] = ["recency_days", "frequency", "monetary", "tenure_days", "trend"];
const DAY: f64 = 86_400.0;
/// Trend windows: the last 90 days against the 90 before.
const TREND_WINDOW: f64 = 90.0 * DAY;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Emit {
    Scores,
    Retention,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM:SS", in the data's (naive) time.
    as_of: Option<String>,
    #[serde(default = "default_high")]
    high_risk: f64,
    #[serde(default = "default_medium")]
    medium_risk: f64,
    #[serde(default = "default_emit")]
    emit: Emit,
    #[serde(default = "default_retention_size")]
    retention_size: usize,
    #[serde(default = "default_user_column")]
    user_column: String,
    #[serde(default = "default_invoice_column")]
    invoice_column: String,
    #[serde(default = "default_quantity_column")]
    quantity_column: String,
    #[serde(default = "default_price_column")]
    price_column: String,
    #[serde(default = "default_time_column")]
    time_column: String,
    /// Boolean column marking cancelled lines; ignored if the table lacks it.
    #[serde(default = "default_cancelled_column")]
    cancelled_column: String,
}

fn default_high() -> f64 {
    0.7
}
fn default_medium() -> f64 {
    0.4
}
fn default_emit() -> Emit {
    Emit::Scores
}
fn default_retention_size() -> usize {
    1000
}
fn default_user_column() -> String {
    "user_id".into()
}
fn default_invoice_column() -> String {
    "invoice".into()
}
fn default_quantity_column() -> String {
    "quantity".into()
}
fn default_price_column() -> String {
    "price".into()
}
fn default_time_column() -> String {
    "ts".into()
}
fn default_cancelled_column() -> String {
    "cancelled".into()
}

struct Churn {
    params: Params,
    /// `as_of` in seconds since 1970, when given.
    as_of: Option<f64>,
}

impl Strategy for Churn {
    fn new(params_json: &str) -> Result<Self, PluginError> {
        let params: Params = recd_plugin_api::params::parse(params_json)?;
        let (high, medium) = (params.high_risk, params.medium_risk);
        if !(high > 0.0 && high < 1.0) {
            return Err(PluginError::params(format!("params.high_risk: must be in (0, 1), got {high}")));
        }
        if !(medium > 0.0 && medium < high) {
            return Err(PluginError::params(format!(
                "params.medium_risk: must be in (0, high_risk = {high}), got {medium}"
            )));
        }
        if params.retention_size == 0 {
            return Err(PluginError::params("params.retention_size: must be at least 1, got 0"));
        }
        let as_of = params.as_of.as_deref().map(parse_time).transpose()?;
        Ok(Churn { params, as_of })
    }

    fn check(&self, ctx: &CheckContext) -> Result<(), PluginError> {
        let p = &self.params;
        for (col, key) in [
            (&p.user_column, "params.user_column"),
            (&p.invoice_column, "params.invoice_column"),
            (&p.quantity_column, "params.quantity_column"),
            (&p.price_column, "params.price_column"),
            (&p.time_column, "params.time_column"),
        ] {
            ctx.require("interactions", col, key)?;
        }
        match ctx.model_inputs()? {
            Some(bound) => check_features(&bound, &|f| FEATURES.contains(&f), &FEATURES.join(", ")),
            None => Err(PluginError::params("model: churn scores with a classifier; the job needs `model`")),
        }
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
        let bound = ctx.model_inputs()?;
        check_features(&bound, &|f| FEATURES.contains(&f), &FEATURES.join(", "))?;
        let features = self.features(ctx)?;
        ctx.log(LogLevel::Info, &format!("{} customers with purchases before as_of", features.users.len()));
        let mut probability = Vec::with_capacity(features.users.len());
        const BATCH: usize = 65_536;
        for start in (0..features.users.len()).step_by(BATCH) {
            if ctx.is_cancelled() {
                return Err(PluginError::cancelled());
            }
            let end = (start + BATCH).min(features.users.len());
            let mut columns = Vec::with_capacity(bound.len());
            for input in &bound {
                let values = features.column(&input.feature)[start..end].to_vec();
                columns.push((input.input.clone(), model_column(input, FeatureValues::Float(values))?));
            }
            probability.extend(read_probability(&ctx.score(scoring_batch(columns)?)?, end - start)?);
            ctx.progress(end as u64, features.users.len() as u64);
        }
        match self.params.emit {
            Emit::Scores => ctx.emit(self.hashes(&features, &probability)?),
            Emit::Retention => ctx.emit(self.retention(&features, &probability)?),
        }
    }
}

fn parse_time(text: &str) -> Result<f64, PluginError> {
    let parsed = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map(|d| d.and_time(chrono::NaiveTime::MIN)));
    parsed.map(|t| t.and_utc().timestamp() as f64).map_err(|_| {
        PluginError::params(format!("params.as_of: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS, got {text:?}"))
    })
}

/// The model's `probability` output, one per customer, each in [0, 1].
fn read_probability(output: &RecordBatch, rows: usize) -> Result<Vec<f32>, PluginError> {
    let col = column(output, "model output", "probability")?;
    let values = numbers(col, "model output `probability`")?;
    if values.len() != rows {
        return Err(PluginError::input(format!("model returned {} probabilities for {rows} customers", values.len())));
    }
    values
        .into_iter()
        .map(|v| match v {
            Some(p) if (0.0..=1.0).contains(&p) => Ok(p as f32),
            other => Err(PluginError::input(format!("model output `probability` must be in [0, 1], got {other:?}"))),
        })
        .collect()
}

/// Per customer (sorted by id), each feature's value.
struct Features {
    users: Vec<String>,
    values: Vec<Vec<f64>>,
}

impl Features {
    fn column(&self, name: &str) -> &[f64] {
        let at = FEATURES.iter().position(|f| *f == name).expect("checked against FEATURES");
        &self.values[at]
    }
}

/// One customer's invoices as (time, value), keyed by invoice id (ordered, so sums are
/// added in the same order on every run and published bytes are reproducible).
type Invoices = BTreeMap<String, (f64, f64)>;

impl Churn {
    fn column<'b>(
        &self,
        batch: &'b RecordBatch,
        key: &str,
        name: &str,
    ) -> Result<&'b dyn arrow_array::Array, PluginError> {
        column(batch, "interactions", name).map_err(|e| PluginError::params(format!("params.{key}: {e}")))
    }

    fn features(&self, ctx: &RunContext<'_>) -> Result<Features, PluginError> {
        let t = "interactions";
        let batch = ctx.input(t)?;
        let p = &self.params;
        let users =
            ids_as_strings(self.column(batch, "user_column", &p.user_column)?, &format!("{t}.{}", p.user_column))?;
        let invoices = ids_as_strings(
            self.column(batch, "invoice_column", &p.invoice_column)?,
            &format!("{t}.{}", p.invoice_column),
        )?;
        let quantity =
            numbers(self.column(batch, "quantity_column", &p.quantity_column)?, &format!("{t}.{}", p.quantity_column))?;
        let price = numbers(self.column(batch, "price_column", &p.price_column)?, &format!("{t}.{}", p.price_column))?;
        let time = seconds(self.column(batch, "time_column", &p.time_column)?, &format!("{t}.{}", p.time_column))?;
        let cancelled = match batch.column_by_name(&p.cancelled_column) {
            Some(col) => booleans(col.as_ref(), &format!("{t}.{}", p.cancelled_column))?,
            None => vec![Some(false); batch.num_rows()],
        };
        let as_of = self.as_of.unwrap_or_else(|| time.iter().flatten().fold(f64::MIN, |a, &b| a.max(b)) + 1.0);
        let mut by_user: HashMap<&str, Invoices> = HashMap::new();
        for r in 0..batch.num_rows() {
            let (Some(user), Some(invoice), Some(q), Some(price), Some(ts)) =
                (&users[r], &invoices[r], quantity[r], price[r], time[r])
            else {
                continue;
            };
            if cancelled[r] == Some(true) || ts >= as_of {
                continue;
            }
            let entry = by_user.entry(user).or_default().entry(invoice.clone()).or_insert((ts, 0.0));
            entry.0 = entry.0.min(ts);
            entry.1 += q * price;
        }
        let mut ids: Vec<&str> = by_user.keys().copied().collect();
        ids.sort_unstable();
        let mut values = vec![Vec::with_capacity(ids.len()); FEATURES.len()];
        for id in &ids {
            for (column, value) in values.iter_mut().zip(customer_features(&by_user[id], as_of)) {
                column.push(value);
            }
        }
        Ok(Features { users: ids.into_iter().map(str::to_owned).collect(), values })
    }

    fn tier(&self, p: f32) -> &'static str {
        let p = f64::from(p);
        if p >= self.params.high_risk {
            "high"
        } else if p >= self.params.medium_risk {
            "medium"
        } else {
            "low"
        }
    }

    /// One row per customer: user, probability, tier, then the features.
    fn hashes(&self, features: &Features, probability: &[f32]) -> Result<RecordBatch, PluginError> {
        let mut fields = vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("probability", DataType::Float32, false),
            Field::new("tier", DataType::Utf8, false),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(features.users.iter())),
            Arc::new(Float32Array::from(probability.to_vec())),
            Arc::new(StringArray::from_iter_values(probability.iter().map(|&p| self.tier(p)))),
        ];
        for (name, values) in FEATURES.iter().zip(&features.values) {
            fields.push(Field::new(*name, DataType::Float64, false));
            columns.push(Arc::new(Float64Array::from(values.clone())));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| PluginError::internal(format!("building the churn rows: {e}")))
    }

    /// The list `high`: high-risk customers, most likely to churn first.
    fn retention(&self, features: &Features, probability: &[f32]) -> Result<RecordBatch, PluginError> {
        let mut high: Vec<(f32, &str)> = probability
            .iter()
            .zip(&features.users)
            .filter(|(p, _)| self.tier(**p) == "high")
            .map(|(p, u)| (*p, u.as_str()))
            .collect();
        high.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        high.truncate(self.params.retention_size);
        let mut out = OutputRows::new();
        for (p, user) in high {
            out.push("high", user, p);
        }
        out.into_batch()
    }
}

/// The five features of one customer's invoices as of `as_of`, in [`FEATURES`] order.
fn customer_features(invoices: &Invoices, as_of: f64) -> [f64; 5] {
    let (mut first, mut last, mut monetary) = (f64::MAX, f64::MIN, 0.0);
    let (mut recent, mut prior) = (0u32, 0u32);
    for &(time, value) in invoices.values() {
        first = first.min(time);
        last = last.max(time);
        monetary += value;
        if time >= as_of - TREND_WINDOW {
            recent += 1;
        } else if time >= as_of - 2.0 * TREND_WINDOW {
            prior += 1;
        }
    }
    let trend = f64::from(recent).ln_1p() - f64::from(prior).ln_1p();
    [(as_of - last) / DAY, invoices.len() as f64, monetary, (as_of - first) / DAY, trend]
}

export_plugin!(Churn, name = "churn", version = env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float32Type;
    use arrow_array::{BooleanArray, Int32Array, TimestampSecondArray};
    use recd_plugin_api::testing::Harness;

    const T0: i64 = 1_300_000_000; // as_of in the tests: 2011-03-13T07:06:40

    fn at(days_before: f64) -> i64 {
        T0 - (days_before * DAY) as i64
    }

    /// u1: invoice A (2 lines, 10 and 100 days... see below), u2: one invoice, u3 only cancelled.
    fn interactions() -> RecordBatch {
        // (user, invoice, quantity, price, days before T0, cancelled)
        let rows: [(&str, &str, i32, f64, f64, bool); 8] = [
            ("u1", "A", 2, 1.5, 10.0, false),
            ("u1", "A", 1, 4.0, 9.5, false), // same invoice, later line: time stays 10 days
            ("u1", "B", 1, 10.0, 100.0, false),
            ("u1", "C", 3, 1.0, 200.0, false),
            ("u1", "X", -1, 10.0, 5.0, true),  // cancelled: ignored
            ("u1", "Z", 1, 99.0, -1.0, false), // after as_of: ignored
            ("u2", "D", 1, 2.0, 30.0, false),
            ("u3", "E", -2, 3.0, 3.0, true),
        ];
        let schema = Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("invoice", DataType::Utf8, false),
            Field::new("quantity", DataType::Int32, false),
            Field::new("price", DataType::Float64, false),
            Field::new("ts", DataType::Timestamp(arrow_schema::TimeUnit::Second, None), false),
            Field::new("cancelled", DataType::Boolean, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(TimestampSecondArray::from_iter_values(rows.iter().map(|r| at(r.4)))),
                Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.5)))),
            ],
        )
        .unwrap()
    }

    fn as_of_param() -> String {
        let t = chrono::DateTime::from_timestamp(T0, 0).unwrap().naive_utc();
        t.format("%Y-%m-%dT%H:%M:%S").to_string()
    }

    /// A stand-in model: probability = min(recency / 100, 1), read from input `r`.
    fn harness(params: &str) -> Harness {
        let hashes = !params.contains("retention");
        let h = Harness::new(params).input("interactions", interactions()).model_inputs(&[(
            "r",
            "recency_days",
            "float32",
        )]);
        let h = if hashes { h.hashes() } else { h };
        h.scorer(|batch: &RecordBatch| {
            let r = batch.column_by_name("r").ok_or("no column r")?.as_primitive::<Float32Type>();
            let p: Vec<f32> = r.values().iter().map(|v| (v / 100.0).min(1.0)).collect();
            let schema = Schema::new(vec![Field::new("probability", DataType::Float32, false)]);
            RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Float32Array::from(p))]).map_err(|e| e.to_string())
        })
    }

    /// (user, field) -> value as f64 (tier as 0/1/2 for low/medium/high).
    fn cell(out: &recd_plugin_api::testing::Output, user: &str, field: &str) -> f64 {
        let batch = &out.batches[0];
        let users = batch.column(0).as_string::<i32>();
        let row = (0..batch.num_rows()).find(|&r| users.value(r) == user).expect("user row");
        let col = batch.column_by_name(field).expect("field");
        match col.data_type() {
            DataType::Utf8 => {
                ["low", "medium", "high"].iter().position(|t| *t == col.as_string::<i32>().value(row)).unwrap() as f64
            }
            _ => numbers(col.as_ref(), field).unwrap()[row].unwrap(),
        }
    }

    #[test]
    fn features_follow_the_documented_definitions() {
        let out = harness(&format!(r#"{{"as_of": "{}"}}"#, as_of_param())).run::<Churn>().unwrap();
        let users: Vec<&str> = out.batches[0].column(0).as_string::<i32>().iter().flatten().collect();
        assert_eq!(users, ["u1", "u2"], "u3 has only a cancelled line");
        // u1's invoices before as_of: A (10 days ago, 2*1.5 + 1*4 = 7), B (100 days, 10), C (200 days, 3)
        assert_eq!(cell(&out, "u1", "frequency"), 3.0);
        assert_eq!(cell(&out, "u1", "monetary"), 20.0);
        assert!((cell(&out, "u1", "recency_days") - 10.0).abs() < 1e-9);
        assert!((cell(&out, "u1", "tenure_days") - 200.0).abs() < 1e-9);
        // recent window [T-90d, T): A; prior [T-180d, T-90d): B; C is older than both
        assert!((cell(&out, "u1", "trend") - (2f64.ln() - 2f64.ln())).abs() < 1e-12);
        assert!((cell(&out, "u2", "trend") - 2f64.ln()).abs() < 1e-12);
        assert_eq!(cell(&out, "u2", "monetary"), 2.0);
    }

    #[test]
    fn probability_comes_from_the_bound_model_input_and_sets_the_tier() {
        let params = format!(r#"{{"as_of": "{}", "high_risk": 0.25, "medium_risk": 0.2}}"#, as_of_param());
        let out = harness(&params).run::<Churn>().unwrap();
        assert!((cell(&out, "u1", "probability") - 0.1).abs() < 1e-6);
        assert!((cell(&out, "u2", "probability") - 0.3).abs() < 1e-6);
        assert_eq!(cell(&out, "u1", "tier"), 0.0, "0.1 < medium_risk 0.2: low");
        assert_eq!(cell(&out, "u2", "tier"), 2.0, "0.3 >= high_risk 0.25: high");
    }

    #[test]
    fn retention_lists_the_high_risk_customers_most_likely_first() {
        let params =
            format!(r#"{{"as_of": "{}", "emit": "retention", "high_risk": 0.05, "medium_risk": 0.01}}"#, as_of_param());
        let out = harness(&params).run::<Churn>().unwrap();
        let list: Vec<String> = out.list("high").into_iter().map(|(u, _)| u).collect();
        assert_eq!(list, ["u2", "u1"]);
        let params =
            format!(r#"{{"as_of": "{}", "emit": "retention", "high_risk": 0.2, "medium_risk": 0.1}}"#, as_of_param());
        let out = harness(&params).run::<Churn>().unwrap();
        assert_eq!(out.list("high").len(), 1, "only u2 (0.3) is at or above 0.2");
    }

    #[test]
    fn lines_at_or_after_as_of_and_cancelled_lines_are_left_out() {
        // as_of 50 days earlier: A (10 days before T0) and Z are in the future
        let earlier = chrono::DateTime::from_timestamp(at(50.0), 0).unwrap().naive_utc().format("%Y-%m-%dT%H:%M:%S");
        let out = harness(&format!(r#"{{"as_of": "{earlier}"}}"#)).run::<Churn>().unwrap();
        assert_eq!(cell(&out, "u1", "frequency"), 2.0);
        assert!((cell(&out, "u1", "recency_days") - 50.0).abs() < 1e-9);
        let users: Vec<&str> = out.batches[0].column(0).as_string::<i32>().iter().flatten().collect();
        assert_eq!(users, ["u1"], "u2's only invoice is 30 days before T0, after this as_of");
    }

    #[test]
    fn bad_params_and_bindings_name_the_key() {
        let cases = [
            (r#"{"high_risk": 1.5}"#, "params.high_risk: must be in (0, 1), got 1.5"),
            (r#"{"medium_risk": 0.9}"#, "params.medium_risk: must be in (0, high_risk = 0.7), got 0.9"),
            (r#"{"as_of": "yesterday"}"#, "params.as_of: expected YYYY-MM-DD"),
            (r#"{"emit": "lists"}"#, "params.emit: unknown variant `lists`"),
            (r#"{"price_column": "cost"}"#, "params.price_column: input `interactions` has no column `cost`"),
        ];
        for (params, want) in cases {
            let err = harness(params).run::<Churn>().unwrap_err();
            assert!(err.message.starts_with(want), "{params}: {}", err.message);
        }
        let err = Harness::new("{}")
            .input("interactions", interactions())
            .model_inputs(&[("r", "age", "float32")])
            .run::<Churn>()
            .unwrap_err();
        assert!(err.message.starts_with("model_inputs.r: unknown feature `age`"), "{}", err.message);
        // the same findings before any run, from the schemas alone
        let err = Harness::new("{}")
            .input("interactions", interactions())
            .model_inputs(&[("r", "age", "float32")])
            .check::<Churn>()
            .unwrap_err();
        assert!(err.message.starts_with("model_inputs.r: unknown feature `age`"), "{}", err.message);
        let err = Harness::new(r#"{"invoice_column": "order"}"#)
            .input("interactions", interactions())
            .model_inputs(&[("r", "recency_days", "float32")])
            .check::<Churn>()
            .unwrap_err();
        assert!(
            err.message.starts_with("params.invoice_column: input `interactions` has no column `order`"),
            "{}",
            err.message
        );
        let err = Harness::new("{}").input("interactions", interactions()).check::<Churn>().unwrap_err();
        assert!(err.message.starts_with("model: churn scores with a classifier"), "{}", err.message);
        let err = Harness::new("{}")
            .input("interactions", interactions())
            .model_inputs(&[("r", "age", "float32")])
            .run::<Churn>()
            .unwrap_err();
        assert!(
            err.message.starts_with("model_inputs.r: unknown feature `age` (this strategy offers: recency_days,"),
            "{}",
            err.message
        );
    }
}
