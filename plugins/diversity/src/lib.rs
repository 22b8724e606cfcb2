//! diversity: re-ranks each user's list from an upstream table (input `candidates`, e.g.
//! `table:ranking`) by maximal marginal relevance (Carbonell & Goldstein, 1998), so that
//! items of the same category do not crowd the top.
//!
//! Greedily, the next item is the candidate maximising
//! `lambda * relevance - (1 - lambda) * similarity to the items already chosen`, where
//! relevance is the upstream score scaled to [0, 1] within the user's list and similarity
//! is 1 for an item sharing a category with a chosen one, else 0 (categories from input
//! `items`). `max_per_category` is a hard cap on top. Emitted scores are `k - position`,
//! so the served order is the chosen order.

use std::collections::{BTreeMap, HashMap};

use recd_plugin_api::columns::{column, ids_as_strings, numbers};
use recd_plugin_api::{OutputRows, PluginError, RunContext, Strategy, export_plugin};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default = "default_lambda")]
    lambda: f64,
    max_per_category: Option<usize>,
    #[serde(default = "default_category_column")]
    category_column: String,
    #[serde(default = "default_item_column")]
    item_column: String,
}

fn default_k() -> usize {
    10
}
fn default_lambda() -> f64 {
    0.7
}
fn default_category_column() -> String {
    "category".into()
}
fn default_item_column() -> String {
    "item_id".into()
}

struct Diversity {
    params: Params,
}

impl Strategy for Diversity {
    fn new(params_json: &str) -> Result<Self, PluginError> {
        let params: Params =
            serde_json::from_str(params_json).map_err(|e| PluginError::params(format!("params: {e}")))?;
        if params.k == 0 || params.k > 1000 {
            return Err(PluginError::params(format!("params.k: must be 1..=1000, got {}", params.k)));
        }
        if !(0.0..=1.0).contains(&params.lambda) {
            return Err(PluginError::params(format!("params.lambda: must be in [0, 1], got {}", params.lambda)));
        }
        if params.max_per_category == Some(0) {
            return Err(PluginError::params("params.max_per_category: must be at least 1"));
        }
        Ok(Diversity { params })
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
        let categories = self.categories(ctx)?;
        let lists = candidates(ctx)?;
        let mut out = OutputRows::new();
        let total = lists.len() as u64;
        for (n, (user, list)) in lists.iter().enumerate() {
            if n % 1024 == 0 && ctx.is_cancelled() {
                return Err(PluginError::cancelled());
            }
            let picked = mmr(list, &categories, &self.params);
            for (pos, item) in picked.iter().enumerate() {
                out.push(user, item, (picked.len() - pos) as f32);
            }
            ctx.progress(n as u64 + 1, total);
        }
        ctx.emit(out.into_batch()?)
    }
}

impl Diversity {
    fn categories(&self, ctx: &RunContext<'_>) -> Result<HashMap<String, String>, PluginError> {
        let batch = ctx.input("items")?;
        let p = &self.params;
        let items = ids_as_strings(column(batch, "items", &p.item_column)?, &p.item_column)?;
        let cats = column(batch, "items", &p.category_column)
            .map_err(|e| PluginError::params(format!("params.category_column: {e}")))?;
        let cats = ids_as_strings(cats, &p.category_column)?;
        Ok(items.into_iter().zip(cats).filter_map(|(i, c)| Some((i?, c?))).collect())
    }
}

/// Each user's candidates as (item, score), best first.
fn candidates(ctx: &RunContext<'_>) -> Result<BTreeMap<String, Vec<(String, f64)>>, PluginError> {
    let t = "candidates";
    let batch = ctx.input(t)?;
    let users = ids_as_strings(column(batch, t, "user")?, "user")?;
    let items = ids_as_strings(column(batch, t, "item")?, "item")?;
    let scores = numbers(column(batch, t, "score")?, "score")?;
    let mut lists: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for ((u, i), s) in users.into_iter().zip(items).zip(scores) {
        if let (Some(u), Some(i), Some(s)) = (u, i, s) {
            lists.entry(u).or_default().push((i, s));
        }
    }
    for list in lists.values_mut() {
        list.sort_by(|a, b| b.1.total_cmp(&a.1));
    }
    Ok(lists)
}

/// Maximal marginal relevance over one list (best first), with the category cap.
fn mmr<'a>(list: &'a [(String, f64)], categories: &HashMap<String, String>, p: &Params) -> Vec<&'a str> {
    let (lo, hi) = list.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, s)| (lo.min(*s), hi.max(*s)));
    let relevance = |s: f64| if hi > lo { (s - lo) / (hi - lo) } else { 1.0 };
    let mut left: Vec<usize> = (0..list.len()).collect();
    let mut picked: Vec<&str> = Vec::new();
    let mut per_category: HashMap<&str, usize> = HashMap::new();
    while picked.len() < p.k {
        let mut best: Option<(usize, f64)> = None;
        for (slot, &c) in left.iter().enumerate() {
            let (item, score) = (&list[c].0, list[c].1);
            let cat = categories.get(item).map(String::as_str);
            if let (Some(cat), Some(cap)) = (cat, p.max_per_category)
                && per_category.get(cat).copied().unwrap_or(0) >= cap
            {
                continue;
            }
            let similar = cat.is_some_and(|c| per_category.contains_key(c));
            let value = p.lambda * relevance(score) - (1.0 - p.lambda) * if similar { 1.0 } else { 0.0 };
            // strictly greater: ties keep the upstream order
            if best.is_none_or(|(_, v)| value > v) {
                best = Some((slot, value));
            }
        }
        let Some((slot, _)) = best else { break };
        let c = left.remove(slot);
        let item = list[c].0.as_str();
        if let Some(cat) = categories.get(item) {
            *per_category.entry(cat.as_str()).or_default() += 1;
        }
        picked.push(item);
    }
    picked
}

export_plugin!(Diversity, name = "diversity", version = env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Float32Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use recd_plugin_api::testing::Harness;

    fn strings(values: &[&str]) -> Arc<StringArray> {
        Arc::new(StringArray::from(values.to_vec()))
    }

    fn run(params: &str) -> Vec<String> {
        // u1: a 1.0 toys, b 0.9 toys, c 0.5 books, d 0.1 games
        let candidates = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("user", DataType::Utf8, false),
                Field::new("item", DataType::Utf8, false),
                Field::new("score", DataType::Float32, false),
            ])),
            vec![
                strings(&["u1"; 4]),
                strings(&["a", "b", "c", "d"]),
                Arc::new(Float32Array::from(vec![1.0, 0.9, 0.5, 0.1])),
            ],
        )
        .unwrap();
        let items = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("item_id", DataType::Utf8, false),
                Field::new("category", DataType::Utf8, false),
            ])),
            vec![strings(&["a", "b", "c", "d"]), strings(&["toys", "toys", "books", "games"])],
        )
        .unwrap();
        let out =
            Harness::new(params).input("candidates", candidates).input("items", items).run::<Diversity>().unwrap();
        out.list("u1").into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn mmr_trades_relevance_for_variety_as_lambda_says() {
        // lambda 1: relevance only
        assert_eq!(run(r#"{"k": 3, "lambda": 1.0}"#), ["a", "b", "c"]);
        // lambda 0.5: relevance scaled to a 1, b 0.889, c 0.444, d 0. After a, b scores
        // 0.5*0.889 - 0.5 = -0.056, c 0.222, d 0: c; then d (0) beats b (-0.056).
        assert_eq!(run(r#"{"k": 3, "lambda": 0.5}"#), ["a", "c", "d"]);
        // a hard cap of one per category, even with lambda 1
        assert_eq!(run(r#"{"k": 3, "lambda": 1.0, "max_per_category": 1}"#), ["a", "c", "d"]);
    }

    #[test]
    fn bad_params_name_the_key() {
        let cases = [
            (r#"{"lambda": 1.5}"#, "params.lambda: must be in [0, 1], got 1.5"),
            (r#"{"lambda": -0.1}"#, "params.lambda: must be in [0, 1], got -0.1"),
            (r#"{"max_per_category": 0}"#, "params.max_per_category: must be at least 1"),
            (r#"{"k": 0}"#, "params.k: must be 1..=1000, got 0"),
        ];
        for (params, want) in cases {
            let err = Harness::new(params).run::<Diversity>().unwrap_err();
            assert!(err.message.starts_with(want), "{params}: {}", err.message);
        }
    }
}
