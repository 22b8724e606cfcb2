//! cold-start: time-decayed popularity, globally and per segment.
//!
//! Each non-cancelled interaction counts `0.5^(age / half_life)`, its age measured from the
//! newest interaction in the data (so a run is reproducible, whatever the wall clock).
//! Emitted lists, best first:
//! - `__default__`: the k most popular items overall;
//! - `__segment__:<segment>`: the k most popular in each segment (with `segment_column`);
//! - for every user in the data: their segment's ranking, then the global one, minus what
//!   they bought, k items.
//!
//! A ranking table that declares `fallback = ["cold-start"]` answers a user it lacks with
//! that user's list here, and a user never seen with `__default__`.

use std::collections::{BTreeMap, HashMap, HashSet};

use recd_plugin_api::columns::{booleans, column, ids_as_strings, seconds};
use recd_plugin_api::{LogLevel, OutputRows, PluginError, RunContext, Strategy, export_plugin};
use serde::Deserialize;

pub const DEFAULT_USER: &str = "__default__";
pub const SEGMENT_PREFIX: &str = "__segment__:";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default = "default_half_life")]
    half_life_days: f64,
    segment_column: Option<String>,
    #[serde(default = "default_user_column")]
    user_column: String,
    #[serde(default = "default_item_column")]
    item_column: String,
    #[serde(default = "default_time_column")]
    time_column: String,
}

fn default_k() -> usize {
    10
}
fn default_half_life() -> f64 {
    30.0
}
fn default_user_column() -> String {
    "user_id".into()
}
fn default_item_column() -> String {
    "item_id".into()
}
fn default_time_column() -> String {
    "ts".into()
}

struct ColdStart {
    params: Params,
}

impl Strategy for ColdStart {
    fn new(params_json: &str) -> Result<Self, PluginError> {
        let params: Params =
            serde_json::from_str(params_json).map_err(|e| PluginError::params(format!("params: {e}")))?;
        if params.k == 0 || params.k > 1000 {
            return Err(PluginError::params(format!("params.k: must be 1..=1000, got {}", params.k)));
        }
        if !(params.half_life_days.is_finite() && params.half_life_days > 0.0) {
            return Err(PluginError::params(format!(
                "params.half_life_days: must be a positive number of days, got {}",
                params.half_life_days
            )));
        }
        Ok(ColdStart { params })
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
        let data = Interactions::read(ctx, &self.params)?;
        let half_life = self.params.half_life_days * 86_400.0;
        let newest = data.rows.iter().map(|r| r.time).fold(f64::MIN, f64::max);
        let mut global: HashMap<&str, f64> = HashMap::new();
        let mut by_segment: HashMap<&str, HashMap<&str, f64>> = HashMap::new();
        for r in &data.rows {
            let w = 0.5f64.powf((newest - r.time) / half_life);
            *global.entry(&r.item).or_default() += w;
            if let Some(seg) = &r.segment {
                *by_segment.entry(seg).or_default().entry(&r.item).or_default() += w;
            }
        }
        let global = ranked(&global);
        let segments: BTreeMap<&str, Vec<(&str, f64)>> = by_segment.iter().map(|(s, m)| (*s, ranked(m))).collect();
        ctx.log(
            LogLevel::Info,
            &format!("{} items, {} segments, {} users", global.len(), segments.len(), data.users.len()),
        );

        let mut out = OutputRows::new();
        push_list(&mut out, DEFAULT_USER, global.iter().take(self.params.k));
        for (seg, list) in &segments {
            push_list(&mut out, &format!("{SEGMENT_PREFIX}{seg}"), list.iter().take(self.params.k));
        }
        for (user, info) in &data.users {
            let seg_list = info.segment.as_deref().and_then(|s| segments.get(s)).map(Vec::as_slice).unwrap_or(&[]);
            let mut seen: HashSet<&str> = HashSet::new();
            let picks = seg_list
                .iter()
                .chain(global.iter())
                .filter(|(i, _)| !info.bought.contains(*i) && seen.insert(i))
                .take(self.params.k);
            push_list(&mut out, user, picks);
        }
        ctx.emit(out.into_batch()?)
    }
}

/// Items by decayed weight, best first; ties by item id.
fn ranked<'a>(weights: &HashMap<&'a str, f64>) -> Vec<(&'a str, f64)> {
    let mut v: Vec<(&str, f64)> = weights.iter().map(|(i, w)| (*i, *w)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    v
}

struct Row {
    item: String,
    time: f64,
    segment: Option<String>,
}

#[derive(Default)]
struct UserInfo {
    bought: HashSet<String>,
    segment: Option<String>,
}

struct Interactions {
    rows: Vec<Row>,
    users: BTreeMap<String, UserInfo>,
}

impl Interactions {
    fn read(ctx: &RunContext<'_>, p: &Params) -> Result<Interactions, PluginError> {
        let t = "interactions";
        let batch = ctx.input(t)?;
        let users = ids_as_strings(column(batch, t, &p.user_column)?, &format!("{t}.{}", p.user_column))?;
        let items = ids_as_strings(column(batch, t, &p.item_column)?, &format!("{t}.{}", p.item_column))?;
        let times = seconds(column(batch, t, &p.time_column)?, &format!("{t}.{}", p.time_column))?;
        let segments = match &p.segment_column {
            Some(c) => ids_as_strings(
                column(batch, t, c).map_err(|e| PluginError::params(format!("params.segment_column: {e}")))?,
                c,
            )?,
            None => vec![None; batch.num_rows()],
        };
        let cancelled = match batch.column_by_name("cancelled") {
            Some(c) => booleans(c.as_ref(), "cancelled")?,
            None => vec![Some(false); batch.num_rows()],
        };
        let mut rows = Vec::with_capacity(batch.num_rows());
        let mut out_users: BTreeMap<String, UserInfo> = BTreeMap::new();
        for r in 0..batch.num_rows() {
            let (Some(user), Some(item), Some(time)) = (&users[r], &items[r], times[r]) else { continue };
            if cancelled[r] == Some(true) {
                continue;
            }
            let info = out_users.entry(user.clone()).or_default();
            info.bought.insert(item.clone());
            if segments[r].is_some() {
                info.segment = segments[r].clone(); // the latest row's segment wins
            }
            rows.push(Row { item: item.clone(), time, segment: segments[r].clone() });
        }
        if rows.is_empty() {
            return Err(PluginError::input("input `interactions` has no usable rows"));
        }
        Ok(Interactions { rows, users: out_users })
    }
}

/// Adds one list's rows.
fn push_list<'a>(out: &mut OutputRows, user: &str, picks: impl Iterator<Item = &'a (&'a str, f64)>) {
    for (item, w) in picks {
        out.push(user, item, *w as f32);
    }
}

export_plugin!(ColdStart, name = "cold-start", version = env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use arrow_array::Int64Array;
    use recd_plugin_api::testing::Harness;

    const DAY: i64 = 86_400;

    /// (user, item, day, country)
    fn data(rows: &[(&str, &str, i64, &str)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("item_id", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("country", DataType::Utf8, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.2 * DAY).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn recent_interactions_weigh_more_and_segments_get_their_own_lists() {
        // newest interaction: day 30. Half-life 10 days: weights day 30 = 1, day 20 = 0.5, day 0 = 0.125.
        // a: 3 old buys (0.375); b: 1 new (1.0); c: 1 at day 20 (0.5), only in FR.
        let rows = [
            ("u1", "a", 0, "UK"),
            ("u2", "a", 0, "UK"),
            ("u3", "a", 0, "UK"),
            ("u4", "b", 30, "UK"),
            ("u5", "c", 20, "FR"),
        ];
        let out = Harness::new(r#"{"k": 3, "half_life_days": 10, "segment_column": "country"}"#)
            .input("interactions", data(&rows))
            .run::<ColdStart>()
            .unwrap();
        let items = |u: &str| out.list(u).into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(items(DEFAULT_USER), ["b", "c", "a"]);
        let default = out.list(DEFAULT_USER);
        assert!((default[2].1 - 0.375).abs() < 1e-6, "{default:?}");
        assert_eq!(items("__segment__:UK"), ["b", "a"]);
        assert_eq!(items("__segment__:FR"), ["c"]);
        // u5 (FR) bought c: FR's list is spent, then the global ranking fills in
        assert_eq!(items("u5"), ["b", "a"]);
        // u1 (UK) bought a
        assert_eq!(items("u1"), ["b", "c"]);
    }

    #[test]
    fn bad_params_name_the_key() {
        let cases = [
            (r#"{"half_life_days": -1}"#, "params.half_life_days: must be a positive number of days, got -1"),
            (r#"{"k": 0}"#, "params.k: must be 1..=1000, got 0"),
            (r#"{"halflife": 3}"#, "params: unknown field `halflife`"),
        ];
        for (params, want) in cases {
            let err = Harness::new(params).run::<ColdStart>().unwrap_err();
            assert!(err.message.starts_with(want), "{params}: {}", err.message);
        }
        let err = Harness::new(r#"{"segment_column": "planet"}"#)
            .input("interactions", data(&[("u1", "a", 0, "UK")]))
            .run::<ColdStart>()
            .unwrap_err();
        assert!(
            err.message.contains("params.segment_column: input `interactions` has no column `planet`"),
            "{}",
            err.message
        );
    }
}
