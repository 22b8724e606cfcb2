//! diversity: re-ranks each user's list from an upstream table (input `candidates`, e.g.
//! `table:ranking`) so that the top k is not k variations of one thing. Two modes:
//!
//! `mode = "mmr"` (default): maximal marginal relevance (Carbonell & Goldstein, 1998).
//! Greedily, the next item is the candidate maximising
//! `lambda * relevance - (1 - lambda) * max similarity to the items already chosen`, where
//! relevance is the upstream score scaled to [0, 1] within the user's list. Similarity
//! (`similarity`):
//! - `category` (default): the share of categories two items have in common (Jaccard: 1 for
//!   the same single category, 0 for none shared), categories from input `items`. An item
//!   may have several: one per row, or several in one cell split by `category_separator`
//!   (e.g. `"|"`);
//! - `embedding`: the cosine of the items' vectors (input `embeddings`, e.g. the ranking
//!   model's item factors), so "near-duplicate" is a matter of degree and a candidate
//!   pointing away from what is chosen gets a bonus. An item without a vector is
//!   similar to nothing (0).
//!
//! `mode = "calibration"`: calibrated recommendations (Steck, RecSys 2018). The list's
//! category mix should match the mix of what the user had (input `interactions`): a user
//! who buys 70% kitchenware and 30% garden gets about that, not ten kitchen items and not
//! a spread over categories they never touch. Greedily, the next item maximises
//! `lambda * relevance - (1 - lambda) * KL(p || q~)`, where p is the share of each category
//! among the distinct items the user had, q the share in the list so far with the
//! candidate, and q~ = 0.99 q + 0.01 p (so KL stays finite). An item with n categories
//! counts 1/n towards each (Steck's p(g|i)); items without a category count together as one
//! category; a user without history keeps the upstream order. The same KL, over the top k, is what `recd eval --categories` reports
//! as calibration.
//!
//! `max_per_category` is a hard cap on top: an item is left out once any of its categories
//! is full. It always counts categories, so with embedding similarity it needs `items` too. Emitted scores are `k - position`, so the served order
//! is the chosen order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use recd_plugin_api::categories::{collect, jaccard};
use recd_plugin_api::columns::{booleans, column, float_lists, ids_as_strings, numbers};
use recd_plugin_api::{CheckContext, OutputRows, PluginError, RunContext, Strategy, export_plugin};
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
    /// Splits one `items` cell into several categories (`"|"` for `Drama|Comedy`).
    category_separator: Option<String>,
    #[serde(default = "default_item_column")]
    item_column: String,
    #[serde(default)]
    mode: Mode,
    /// MMR only; `None` is category.
    similarity: Option<Similarity>,
    #[serde(default = "default_embedding_column")]
    embedding_column: String,
    /// The user column of input `interactions` (calibration).
    #[serde(default = "default_user_column")]
    user_column: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Mmr,
    Calibration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Similarity {
    #[default]
    Category,
    Embedding,
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
fn default_embedding_column() -> String {
    "embedding".into()
}
fn default_user_column() -> String {
    "user_id".into()
}

/// Steck's alpha: q~ = (1 - alpha) q + alpha p keeps KL(p || q~) finite when the list lacks
/// a category the user had.
const CALIBRATION_ALPHA: f64 = 0.01;

impl Params {
    fn similarity(&self) -> Similarity {
        self.similarity.unwrap_or_default()
    }
}

struct Diversity {
    params: Params,
}

impl Strategy for Diversity {
    fn new(params_json: &str) -> Result<Self, PluginError> {
        let params: Params = recd_plugin_api::params::parse(params_json)?;
        if params.k == 0 || params.k > 1000 {
            return Err(PluginError::params(format!("params.k: must be 1..=1000, got {}", params.k)));
        }
        if !(0.0..=1.0).contains(&params.lambda) {
            return Err(PluginError::params(format!("params.lambda: must be in [0, 1], got {}", params.lambda)));
        }
        if params.category_separator.as_deref() == Some("") {
            return Err(PluginError::params("params.category_separator: must not be empty"));
        }
        if params.max_per_category == Some(0) {
            return Err(PluginError::params("params.max_per_category: must be at least 1"));
        }
        if params.mode == Mode::Calibration && params.similarity.is_some() {
            return Err(PluginError::params(
                "params.similarity: only for mode \"mmr\" (calibration compares category shares, not pairs)",
            ));
        }
        Ok(Diversity { params })
    }

    fn check(&self, ctx: &CheckContext) -> Result<(), PluginError> {
        let p = &self.params;
        for col in ["user", "item", "score"] {
            ctx.require("candidates", col, "inputs.candidates")?;
        }
        // What needs item categories, named in the error when `items` is missing (the
        // key the job set, not a column key it may never have written).
        let categories_for = match p.mode {
            Mode::Calibration => Some("mode \"calibration\""),
            Mode::Mmr if p.max_per_category.is_some() => Some("params.max_per_category"),
            Mode::Mmr if p.similarity() == Similarity::Category => Some("similarity \"category\" (the default)"),
            Mode::Mmr => None,
        };
        if let Some(why) = categories_for {
            present(ctx, "items", why)?;
            ctx.require("items", &p.item_column, "params.item_column")?;
            ctx.require("items", &p.category_column, "params.category_column")?;
        }
        if p.mode == Mode::Calibration {
            present(ctx, "interactions", "mode \"calibration\"")?;
            ctx.require("interactions", &p.user_column, "params.user_column")?;
            ctx.require("interactions", &p.item_column, "params.item_column")?;
        }
        if p.mode == Mode::Mmr && p.similarity() == Similarity::Embedding {
            present(ctx, "embeddings", "similarity \"embedding\"")?;
            ctx.require("embeddings", &p.item_column, "params.item_column")?;
            ctx.require("embeddings", &p.embedding_column, "params.embedding_column")?;
        }
        Ok(())
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
        let items = self.items(ctx)?;
        let history = match self.params.mode {
            Mode::Calibration => self.history(ctx, &items)?,
            Mode::Mmr => HashMap::new(),
        };
        let lists = candidates(ctx)?;
        let mut out = OutputRows::new();
        let total = lists.len() as u64;
        for (n, (user, list)) in lists.iter().enumerate() {
            if n % 1024 == 0 && ctx.is_cancelled() {
                return Err(PluginError::cancelled());
            }
            let picked = match self.params.mode {
                Mode::Mmr => mmr(list, &items, &self.params),
                Mode::Calibration => calibrated(list, &items, history.get(user), &self.params),
            };
            for (pos, item) in picked.iter().enumerate() {
                out.push(user, item, (picked.len() - pos) as f32);
            }
            ctx.progress(n as u64 + 1, total);
        }
        ctx.emit(out.into_batch()?)
    }
}

/// What MMR knows of items: categories (for the cap, and for category similarity) and,
/// with embedding similarity, unit vectors.
struct Items {
    /// Each item's categories, sorted and distinct.
    categories: HashMap<String, Vec<String>>,
    vectors: Option<HashMap<String, Vec<f64>>>,
}

impl Items {
    /// The item's categories (none: empty).
    fn categories_of(&self, item: &str) -> &[String] {
        self.categories.get(item).map_or(&[], Vec::as_slice)
    }

    /// Whether the cap leaves no room for `item`: one of its categories is full (items
    /// without a category are never capped).
    fn capped(&self, item: &str, per_category: &HashMap<&str, usize>, p: &Params) -> bool {
        p.max_per_category.is_some_and(|cap| {
            self.categories_of(item).iter().any(|c| per_category.get(c.as_str()).copied().unwrap_or(0) >= cap)
        })
    }

    /// Counts a picked item against each of its categories' caps.
    fn count<'a>(&'a self, item: &str, per_category: &mut HashMap<&'a str, usize>) {
        for c in self.categories_of(item) {
            *per_category.entry(c.as_str()).or_default() += 1;
        }
    }

    /// The item's weight in each category for calibration: 1/n in each of its n, or all of
    /// it in `NO_CATEGORY`.
    fn weights(&self, item: &str) -> Vec<(&str, f64)> {
        match self.categories_of(item) {
            [] => vec![(NO_CATEGORY, 1.0)],
            cats => cats.iter().map(|c| (c.as_str(), 1.0 / cats.len() as f64)).collect(),
        }
    }

    fn similarity(&self, a: &str, b: &str) -> f64 {
        match &self.vectors {
            Some(vectors) => match (vectors.get(a), vectors.get(b)) {
                (Some(x), Some(y)) => x.iter().zip(y).map(|(x, y)| x * y).sum(),
                _ => 0.0,
            },
            None => jaccard(self.categories_of(a), self.categories_of(b)),
        }
    }
}

/// Fails unless the job has input `input`, saying what needs it.
fn present(ctx: &CheckContext, input: &str, why: &str) -> Result<(), PluginError> {
    ctx.input(input).map(|_| ()).map_err(|e| PluginError::params(format!("inputs: {e} ({why} needs it)")))
}

impl Diversity {
    fn items(&self, ctx: &RunContext<'_>) -> Result<Items, PluginError> {
        let p = &self.params;
        if p.mode == Mode::Calibration {
            return Ok(Items { categories: self.categories(ctx)?, vectors: None });
        }
        let (categories, vectors) = match p.similarity() {
            Similarity::Category => (self.categories(ctx)?, None),
            // categories only feed the cap here: without one, `items` is not needed
            Similarity::Embedding if p.max_per_category.is_none() => (HashMap::new(), Some(embeddings(ctx, p)?)),
            Similarity::Embedding => {
                let categories = self.categories(ctx).map_err(|e| {
                    PluginError::new(e.code, format!("params.max_per_category counts categories: {}", e.message))
                })?;
                (categories, Some(embeddings(ctx, p)?))
            }
        };
        Ok(Items { categories, vectors })
    }

    fn categories(&self, ctx: &RunContext<'_>) -> Result<HashMap<String, Vec<String>>, PluginError> {
        let batch = ctx.input("items")?;
        let p = &self.params;
        let items = ids_as_strings(column(batch, "items", &p.item_column)?, &p.item_column)?;
        let cats = column(batch, "items", &p.category_column)
            .map_err(|e| PluginError::params(format!("params.category_column: {e}")))?;
        let cats = ids_as_strings(cats, &p.category_column)?;
        Ok(collect(items.into_iter().zip(cats), p.category_separator.as_deref()))
    }

    /// Each user's category shares (p in the module doc) over the distinct items they had
    /// in input `interactions`; rows marked `cancelled` (when that column exists) do not count.
    fn history(&self, ctx: &RunContext<'_>, items: &Items) -> Result<HashMap<String, Shares>, PluginError> {
        let t = "interactions";
        let p = &self.params;
        let batch = ctx
            .input(t)
            .map_err(|e| PluginError::new(e.code, format!("mode \"calibration\" needs input `{t}`: {}", e.message)))?;
        let users = ids_as_strings(column(batch, t, &p.user_column)?, &format!("{t}.{}", p.user_column))?;
        let its = ids_as_strings(column(batch, t, &p.item_column)?, &format!("{t}.{}", p.item_column))?;
        let cancelled = match batch.column_by_name("cancelled") {
            Some(c) => booleans(c.as_ref(), &format!("{t}.cancelled"))?,
            None => vec![None; batch.num_rows()],
        };
        // ordered: the fractional weights then add up to the same last bits on every run
        let mut had: HashMap<String, BTreeSet<String>> = HashMap::new();
        for ((u, i), c) in users.into_iter().zip(its).zip(cancelled) {
            if let (Some(u), Some(i), false) = (u, i, c == Some(true)) {
                had.entry(u).or_default().insert(i);
            }
        }
        Ok(had.into_iter().map(|(u, set)| (u, shares(set.iter().map(|i| items.weights(i))))).collect())
    }
}

/// A distribution over categories: each category's share, summing to 1 (ordered, so that
/// sums over it come out the same on every run).
type Shares = BTreeMap<String, f64>;

/// How items without a category are counted in calibration (one category of their own).
const NO_CATEGORY: &str = "";

fn shares<'a>(items: impl Iterator<Item = Vec<(&'a str, f64)>>) -> Shares {
    let mut counts: Shares = BTreeMap::new();
    let mut n = 0.0;
    for weights in items {
        for (c, w) in weights {
            *counts.entry(c.to_string()).or_default() += w;
        }
        n += 1.0;
    }
    counts.values_mut().for_each(|v| *v /= n);
    counts
}

/// KL(p || q~), q~ = (1 - alpha) q + alpha p, where q is the category mix of the `picked`
/// items whose weights `mix` sums, plus one more item with weights `added`.
fn calibration_kl(p: &Shares, mix: &HashMap<&str, f64>, picked: usize, added: &[(&str, f64)]) -> f64 {
    let n = (picked + 1) as f64;
    p.iter()
        .map(|(g, &pg)| {
            let extra: f64 = added.iter().filter(|(c, _)| *c == g.as_str()).map(|(_, w)| w).sum();
            let weight = mix.get(g.as_str()).copied().unwrap_or(0.0) + extra;
            let q = (1.0 - CALIBRATION_ALPHA) * (weight / n) + CALIBRATION_ALPHA * pg;
            pg * (pg / q).ln()
        })
        .sum()
}

/// Each item's vector from input `embeddings`, scaled to unit length so that a dot product
/// is the cosine. Null and all-zero vectors are left out (no direction: similar to
/// nothing); every other vector must have the first one's length.
fn embeddings(ctx: &RunContext<'_>, p: &Params) -> Result<HashMap<String, Vec<f64>>, PluginError> {
    let t = "embeddings";
    let batch = ctx
        .input(t)
        .map_err(|e| PluginError::new(e.code, format!("similarity \"embedding\" needs input `{t}`: {}", e.message)))?;
    let items = ids_as_strings(column(batch, t, &p.item_column)?, &p.item_column)?;
    let col = column(batch, t, &p.embedding_column)
        .map_err(|e| PluginError::params(format!("params.embedding_column: {e}")))?;
    let rows = float_lists(col, &format!("{t}.{}", p.embedding_column))?;
    let mut vectors = HashMap::new();
    let mut first: Option<(usize, String, usize)> = None;
    for (row, (item, v)) in items.into_iter().zip(rows).enumerate() {
        let (Some(item), Some(v)) = (item, v) else { continue };
        match &first {
            None => first = Some((row, item.clone(), v.len())),
            Some((r0, i0, n)) if v.len() != *n => {
                return Err(PluginError::input(format!(
                    "input `{t}` row {row} (item `{item}`): vector of {} values, but row {r0} (item `{i0}`) has {n}",
                    v.len()
                )));
            }
            Some(_) => {}
        }
        match unit(v) {
            Some(u) => vectors.insert(item, u),
            None => vectors.remove(&item), // the latest row for an item wins
        };
    }
    Ok(vectors)
}

/// `v` scaled to length 1; None for a vector with no direction (zero, or not finite).
fn unit(v: Vec<f64>) -> Option<Vec<f64>> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| v.into_iter().map(|x| x / norm).collect())
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

/// Scores scaled to [0, 1] within one list (all 1 when they are all equal).
fn relevance_scale(list: &[(String, f64)]) -> impl Fn(f64) -> f64 {
    let (lo, hi) = list.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, s)| (lo.min(*s), hi.max(*s)));
    move |s: f64| if hi > lo { (s - lo) / (hi - lo) } else { 1.0 }
}

/// Calibrated re-ranking over one list (best first), with the category cap; without a
/// history, the first k the cap allows.
fn calibrated<'a>(list: &'a [(String, f64)], items: &Items, history: Option<&Shares>, p: &Params) -> Vec<&'a str> {
    let relevance = relevance_scale(list);
    let mut left: Vec<usize> = (0..list.len()).collect();
    let mut per_category: HashMap<&str, usize> = HashMap::new();
    let mut mix: HashMap<&str, f64> = HashMap::new();
    let mut picked: Vec<&str> = Vec::new();
    while picked.len() < p.k {
        // the KL after one more item depends only on that item's categories: once per set
        let mut kl_after: HashMap<&[String], f64> = HashMap::new();
        let mut best: Option<(usize, f64)> = None;
        for (slot, &c) in left.iter().enumerate() {
            let item = list[c].0.as_str();
            if items.capped(item, &per_category, p) {
                continue;
            }
            let kl = match history {
                Some(h) => *kl_after
                    .entry(items.categories_of(item))
                    .or_insert_with(|| calibration_kl(h, &mix, picked.len(), &items.weights(item))),
                None => 0.0,
            };
            let value = p.lambda * relevance(list[c].1) - (1.0 - p.lambda) * kl;
            // strictly greater: ties keep the upstream order
            if best.is_none_or(|(_, v)| value > v) {
                best = Some((slot, value));
            }
        }
        let Some((slot, _)) = best else { break };
        let item = list[left.remove(slot)].0.as_str();
        items.count(item, &mut per_category);
        for (c, w) in items.weights(item) {
            *mix.entry(c).or_default() += w;
        }
        picked.push(item);
    }
    picked
}

/// Maximal marginal relevance over one list (best first), with the category cap.
fn mmr<'a>(list: &'a [(String, f64)], items: &Items, p: &Params) -> Vec<&'a str> {
    let relevance = relevance_scale(list);
    let mut left: Vec<usize> = (0..list.len()).collect();
    // each candidate's highest similarity to the items chosen so far, kept up to date
    // pick by pick rather than recomputed (k * n similarities per list, not k^2 * n)
    let mut nearest = vec![0.0; list.len()];
    let mut picked: Vec<&str> = Vec::new();
    let mut per_category: HashMap<&str, usize> = HashMap::new();
    while picked.len() < p.k {
        let mut best: Option<(usize, f64)> = None;
        for (slot, &c) in left.iter().enumerate() {
            if items.capped(&list[c].0, &per_category, p) {
                continue;
            }
            let value = p.lambda * relevance(list[c].1) - (1.0 - p.lambda) * nearest[c];
            // strictly greater: ties keep the upstream order
            if best.is_none_or(|(_, v)| value > v) {
                best = Some((slot, value));
            }
        }
        let Some((slot, _)) = best else { break };
        let item = list[left.remove(slot)].0.as_str();
        for &c in &left {
            let s = items.similarity(&list[c].0, item);
            // the first pick sets it outright: a negative cosine is a bonus, not below "none"
            nearest[c] = if picked.is_empty() { s } else { nearest[c].max(s) };
        }
        items.count(item, &mut per_category);
        picked.push(item);
    }
    picked
}

export_plugin!(Diversity, name = "diversity", version = env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::types::{Float32Type, Float64Type};
    use arrow_array::{Array, FixedSizeListArray, Float32Array, ListArray, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use recd_plugin_api::testing::Harness;

    fn strings(values: &[&str]) -> Arc<StringArray> {
        Arc::new(StringArray::from(values.to_vec()))
    }

    /// Input `items`: (item_id, category).
    fn item_categories(items: &[&str], categories: &[&str]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("item_id", DataType::Utf8, false),
            Field::new("category", DataType::Utf8, false),
        ]);
        RecordBatch::try_new(Arc::new(schema), vec![strings(items), strings(categories)]).unwrap()
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
        let items = item_categories(&["a", "b", "c", "d"], &["toys", "toys", "books", "games"]);
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

    fn candidates(rows: &[(&str, f32)]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("user", DataType::Utf8, false),
                Field::new("item", DataType::Utf8, false),
                Field::new("score", DataType::Float32, false),
            ])),
            vec![
                strings(&vec!["u1"; rows.len()]),
                strings(&rows.iter().map(|r| r.0).collect::<Vec<_>>()),
                Arc::new(Float32Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    fn embeddings(items: &[&str], vectors: Arc<dyn Array>) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("item_id", DataType::Utf8, false),
            Field::new("embedding", vectors.data_type().clone(), true),
        ]);
        RecordBatch::try_new(Arc::new(schema), vec![strings(items), vectors]).unwrap()
    }

    /// a 1.0 [1, 0, 0]; b 0.9 [0.48, 0.14, 0] (length 0.5, cosine 0.96 with a); c 0.5
    /// [0, 0, 2] (orthogonal to both); d 0.7 with a null vector. Relevance: a 1, b 0.8,
    /// d 0.4, c 0.
    fn near_duplicates() -> (RecordBatch, RecordBatch) {
        let vectors = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
            [
                Some(vec![Some(1.0), Some(0.0), Some(0.0)]),
                Some(vec![Some(0.48), Some(0.14), Some(0.0)]),
                Some(vec![Some(0.0), Some(0.0), Some(2.0)]),
                None,
            ],
            3,
        );
        let list = [("a", 1.0), ("b", 0.9), ("c", 0.5), ("d", 0.7)];
        (candidates(&list), embeddings(&["a", "b", "c", "d"], Arc::new(vectors)))
    }

    fn run_embedding(params: &str) -> Vec<String> {
        let (candidates, embeddings) = near_duplicates();
        let out = Harness::new(params)
            .input("candidates", candidates)
            .input("embeddings", embeddings)
            .run::<Diversity>()
            .unwrap();
        out.list("u1").into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn the_check_names_missing_columns_and_inputs_before_a_run() {
        let (cands, emb) = near_duplicates();
        let ok = Harness::new(r#"{"similarity": "embedding"}"#)
            .input("candidates", cands.clone())
            .input("embeddings", emb.clone());
        assert_eq!(ok.check::<Diversity>(), Ok(()));
        let err = Harness::new(r#"{"similarity": "embedding", "embedding_column": "vec"}"#)
            .input("candidates", cands.clone())
            .input("embeddings", emb)
            .check::<Diversity>()
            .unwrap_err();
        assert!(
            err.message.starts_with("params.embedding_column: input `embeddings` has no column `vec`"),
            "{}",
            err.message
        );
        let err = Harness::new("{}").input("candidates", cands).check::<Diversity>().unwrap_err();
        assert!(err.message.starts_with("inputs: missing input table `items`"), "{}", err.message);
    }

    #[test]
    fn embedding_similarity_pushes_near_duplicates_down() {
        // lambda 1: relevance only
        assert_eq!(run_embedding(r#"{"k": 4, "lambda": 1, "similarity": "embedding"}"#), ["a", "b", "d", "c"]);
        // lambda 0.5, after a: b 0.5*0.8 - 0.5*0.96 = -0.08; d (no vector) 0.2; c 0 - 0 = 0:
        // d. Then c 0 beats b -0.08 (d adds no similarity). (A dot product of raw vectors,
        // 0.48, would rank b before c.)
        assert_eq!(run_embedding(r#"{"k": 4, "lambda": 0.5, "similarity": "embedding"}"#), ["a", "d", "c", "b"]);
    }

    #[test]
    fn embedding_vectors_may_be_float64_lists_and_opposites_get_a_bonus() {
        // a 1.0 [2, 0]; b 0.6 [0, 3] (orthogonal to a and c); c 0.2 [-1, 0] (cosine -1 with
        // a). Relevance: a 1, b 0.5, c 0.
        let vectors = ListArray::from_iter_primitive::<Float64Type, _, _>([
            Some(vec![Some(2.0), Some(0.0)]),
            Some(vec![Some(0.0), Some(3.0)]),
            Some(vec![Some(-1.0), Some(0.0)]),
        ]);
        let run = |params: &str| {
            let out = Harness::new(params)
                .input("candidates", candidates(&[("a", 1.0), ("b", 0.6), ("c", 0.2)]))
                .input("embeddings", embeddings(&["a", "b", "c"], Arc::new(vectors.clone())))
                .run::<Diversity>()
                .unwrap();
            out.list("u1").into_iter().map(|(i, _)| i).collect::<Vec<_>>()
        };
        assert_eq!(run(r#"{"lambda": 1, "similarity": "embedding"}"#), ["a", "b", "c"]);
        // lambda 0.5, after a: b 0.25 - 0 = 0.25; c 0 - 0.5*(-1) = 0.5: c, which would lose
        // (0 < 0.25) were a negative cosine floored at "no similarity"
        assert_eq!(run(r#"{"lambda": 0.5, "similarity": "embedding"}"#), ["a", "c", "b"]);
    }

    #[test]
    fn embedding_similarity_with_a_category_cap_needs_items() {
        let (candidates, embeddings) = near_duplicates();
        let items = item_categories(&["a", "b", "c", "d"], &["toys", "toys", "books", "toys"]);
        let params = r#"{"k": 4, "lambda": 1, "similarity": "embedding", "max_per_category": 1}"#;
        let out = Harness::new(params)
            .input("candidates", candidates.clone())
            .input("embeddings", embeddings.clone())
            .input("items", items)
            .run::<Diversity>()
            .unwrap();
        // one toy (a), then b and d are capped
        assert_eq!(out.list("u1").into_iter().map(|(i, _)| i).collect::<Vec<_>>(), ["a", "c"]);

        let err = Harness::new(params)
            .input("candidates", candidates)
            .input("embeddings", embeddings)
            .run::<Diversity>()
            .unwrap_err();
        assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_INPUT);
        assert!(
            err.message.starts_with("params.max_per_category counts categories: missing input table `items`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bad_embeddings_are_reported_with_their_row() {
        let list = candidates(&[("a", 1.0), ("b", 0.5)]);
        let params = r#"{"similarity": "embedding"}"#;
        let fail = |embeddings: Option<RecordBatch>| {
            let mut h = Harness::new(params).input("candidates", list.clone());
            if let Some(e) = embeddings {
                h = h.input("embeddings", e);
            }
            h.run::<Diversity>().unwrap_err()
        };
        let err = fail(None);
        assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_INPUT);
        assert_eq!(
            err.message,
            "similarity \"embedding\" needs input `embeddings`: missing input table `embeddings` (the job provides: candidates)"
        );

        let ragged = ListArray::from_iter_primitive::<Float32Type, _, _>([
            Some(vec![Some(1.0), Some(0.0)]),
            None,
            Some(vec![Some(1.0), Some(0.0), Some(0.0)]),
        ]);
        let err = fail(Some(embeddings(&["a", "x", "b"], Arc::new(ragged))));
        assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_INPUT);
        assert_eq!(err.message, "input `embeddings` row 2 (item `b`): vector of 3 values, but row 0 (item `a`) has 2");

        let err = fail(Some(embeddings(&["a"], strings(&["[1, 0]"]))));
        assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_INPUT);
        assert_eq!(err.message, "embeddings.embedding: expected a list of float32 or float64, found Utf8");

        let err = Harness::new(r#"{"similarity": "embedding", "embedding_column": "factors"}"#)
            .input("candidates", list.clone())
            .input("embeddings", embeddings(&["a"], strings(&["[1, 0]"])))
            .run::<Diversity>()
            .unwrap_err();
        assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_PARAMS);
        assert!(
            err.message.starts_with("params.embedding_column: input `embeddings` has no column `factors`"),
            "{}",
            err.message
        );
    }

    /// u1 had two toys and a book (p: toys 2/3, books 1/3) and a game they cancelled; u2
    /// had nothing. Both get the list of `run`: a 1.0 toys, b 0.9 toys, c 0.5 books, d 0.1 games.
    fn run_calibration(params: &str) -> (Vec<String>, Vec<String>) {
        let list = [("a", 1.0), ("b", 0.9), ("c", 0.5), ("d", 0.1)];
        let rows: Vec<(&str, &str, f32)> =
            ["u1", "u2"].iter().flat_map(|u| list.iter().map(move |(i, s)| (*u, *i, *s as f32))).collect();
        let candidates = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("user", DataType::Utf8, false),
                Field::new("item", DataType::Utf8, false),
                Field::new("score", DataType::Float32, false),
            ])),
            vec![
                strings(&rows.iter().map(|r| r.0).collect::<Vec<_>>()),
                strings(&rows.iter().map(|r| r.1).collect::<Vec<_>>()),
                Arc::new(Float32Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        let items = item_categories(
            &["a", "b", "c", "d", "h1", "h2", "h3", "h4"],
            &["toys", "toys", "books", "games", "toys", "toys", "books", "games"],
        );
        let interactions = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("user_id", DataType::Utf8, false),
                Field::new("item_id", DataType::Utf8, false),
                Field::new("cancelled", DataType::Boolean, false),
            ])),
            vec![
                strings(&["u1", "u1", "u1", "u1", "u1"]),
                strings(&["h1", "h2", "h2", "h3", "h4"]),
                Arc::new(arrow_array::BooleanArray::from(vec![false, false, false, false, true])),
            ],
        )
        .unwrap();
        let out = Harness::new(params)
            .input("candidates", candidates)
            .input("items", items)
            .input("interactions", interactions)
            .run::<Diversity>()
            .unwrap();
        let list = |u: &str| out.list(u).into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        (list("u1"), list("u2"))
    }

    #[test]
    fn calibration_matches_the_lists_category_mix_to_the_users_history() {
        // lambda 1: relevance only
        let (u1, u2) = run_calibration(r#"{"k": 3, "lambda": 1, "mode": "calibration"}"#);
        assert_eq!(u1, ["a", "b", "c"]);
        assert_eq!(u2, ["a", "b", "c"]);
        // lambda 0, calibration only, against p = (toys 2/3, books 1/3), q~ = 0.99 q + 0.01 p:
        // first a toy (KL 1.267; a book 2.706, a game 4.605); then a book (0.056; another toy
        // 1.267); then a toy (0: the mix is exact). Were the cancelled game counted, p would
        // be (1/2, 1/4, 1/4) and the third pick d (KL 0.057 against b's 0.937).
        // u2 has no history: the upstream order.
        let (u1, u2) = run_calibration(r#"{"k": 3, "lambda": 0, "mode": "calibration"}"#);
        assert_eq!(u1, ["a", "c", "b"]);
        assert_eq!(u2, ["a", "b", "c"]);
        // lambda 0.5, second pick: b 0.5 * 0.889 - 0.5 * 1.267 = -0.19 loses to c 0.5 * 0.444
        // - 0.5 * 0.056 = 0.19
        let (u1, _) = run_calibration(r#"{"k": 3, "lambda": 0.5, "mode": "calibration"}"#);
        assert_eq!(u1, ["a", "c", "b"]);
        // the cap holds in calibration too
        let (u1, _) = run_calibration(r#"{"k": 3, "lambda": 1, "mode": "calibration", "max_per_category": 1}"#);
        assert_eq!(u1, ["a", "c", "d"]);
    }

    #[test]
    fn calibration_kl_is_steck_kl_with_alpha() {
        let p: Shares = [("toys".to_string(), 2.0 / 3.0), ("books".to_string(), 1.0 / 3.0)].into();
        let kl = calibration_kl(&p, &HashMap::from([("toys", 1.0)]), 1, &[("books", 1.0)]);
        // q = (1/2, 1/2): q~ = 0.99 * 1/2 + 0.01 p
        let want = 2.0 / 3.0 * ((2.0f64 / 3.0) / (0.495 + 0.01 * 2.0 / 3.0)).ln()
            + 1.0 / 3.0 * ((1.0f64 / 3.0) / (0.495 + 0.01 / 3.0)).ln();
        assert!((kl - want).abs() < 1e-12, "{kl} vs {want}");
        assert!((want - 0.0555).abs() < 1e-3, "{want}");
        // an exact mix gives 0
        assert!(calibration_kl(&p, &HashMap::from([("toys", 1.0), ("books", 1.0)]), 2, &[("toys", 1.0)]).abs() < 1e-12);
        // an item in both categories counts half in each: after a toy and it, q = (3/4, 1/4)
        let half = calibration_kl(&p, &HashMap::from([("toys", 1.0)]), 1, &[("toys", 0.5), ("books", 0.5)]);
        let want = 2.0 / 3.0 * ((2.0f64 / 3.0) / (0.99 * 0.75 + 0.01 * 2.0 / 3.0)).ln()
            + 1.0 / 3.0 * ((1.0f64 / 3.0) / (0.99 * 0.25 + 0.01 / 3.0)).ln();
        assert!((half - want).abs() < 1e-12, "{half} vs {want}");
    }

    /// Candidates a 1.0, b 0.9, c 0.8, d 0.7 for u1; `items` rows as given.
    fn run_with_items(params: &str, items: &[(&str, &str)]) -> Vec<String> {
        let cands = candidates(&[("a", 1.0), ("b", 0.9), ("c", 0.8), ("d", 0.7)]);
        let ids: Vec<&str> = items.iter().map(|r| r.0).collect();
        let cats: Vec<&str> = items.iter().map(|r| r.1).collect();
        let out = Harness::new(params)
            .input("candidates", cands)
            .input("items", item_categories(&ids, &cats))
            .run::<Diversity>()
            .unwrap();
        out.list("u1").into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn an_item_has_every_category_of_its_rows_or_of_its_separated_cell() {
        // a: drama+comedy, b: comedy, c: drama, d: war. Cap 1 per category: after a, both
        // b and c are full, so d; with one category per item (the last row) c would follow.
        let rows = [("a", "drama"), ("a", "comedy"), ("b", "comedy"), ("c", "drama"), ("d", "war")];
        assert_eq!(run_with_items(r#"{"k": 3, "lambda": 1, "max_per_category": 1}"#, &rows), ["a", "d"]);
        let cells = [("a", "drama|comedy"), ("b", "comedy"), ("c", "drama"), ("d", "war")];
        let split = r#"{"k": 3, "lambda": 1, "max_per_category": 1, "category_separator": "|"}"#;
        assert_eq!(run_with_items(split, &cells), ["a", "d"]);
        // Without the separator "drama|comedy" is one category of its own: nothing is full.
        assert_eq!(run_with_items(r#"{"k": 3, "lambda": 1, "max_per_category": 1}"#, &cells), ["a", "b", "c"]);
        // MMR by Jaccard: after a, b and c are half alike (1/2), d not at all. lambda 0.5:
        // b 0.5 * 0.667 - 0.5 * 0.5 = 0.083, c 0.5 * 0.333 - 0.25 = -0.083, d 0 - 0 = 0: b.
        assert_eq!(run_with_items(r#"{"k": 2, "lambda": 0.5}"#, &rows), ["a", "b"]);
        // lambda 0.4: b 0.4 * 0.667 - 0.6 * 0.5 = -0.033 loses to d's 0.
        assert_eq!(run_with_items(r#"{"k": 2, "lambda": 0.4}"#, &rows), ["a", "d"]);
        let empty = Harness::new(r#"{"category_separator": ""}"#).check::<Diversity>();
        assert!(empty.unwrap_err().message.contains("params.category_separator"));
    }

    #[test]
    fn a_missing_items_input_is_blamed_on_the_key_that_needs_it() {
        let (cands, _) = near_duplicates();
        let missing = |params: &str| {
            Harness::new(params).input("candidates", cands.clone()).check::<Diversity>().unwrap_err().message
        };
        let capped = missing(r#"{"similarity": "embedding", "max_per_category": 2}"#);
        assert!(capped.starts_with("inputs: missing input table `items`"), "{capped}");
        assert!(capped.ends_with("(params.max_per_category needs it)"), "{capped}");
        assert!(!capped.contains("item_column"), "{capped}");
        let default = missing("{}");
        assert!(default.ends_with("(similarity \"category\" (the default) needs it)"), "{default}");
    }

    #[test]
    fn calibration_needs_interactions_and_takes_no_similarity() {
        let (cands, _) = near_duplicates();
        let items = item_categories(&["a"], &["toys"]);
        let err = Harness::new(r#"{"mode": "calibration"}"#)
            .input("candidates", cands.clone())
            .input("items", items.clone())
            .check::<Diversity>()
            .unwrap_err();
        assert!(err.message.starts_with("inputs: missing input table `interactions`"), "{}", err.message);
        assert!(err.message.contains("(mode \"calibration\" needs it)"), "{}", err.message);
        let err = Harness::new(r#"{"mode": "calibration"}"#)
            .input("candidates", cands)
            .input("items", items)
            .run::<Diversity>()
            .unwrap_err();
        assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_INPUT);
        assert!(
            err.message.starts_with("mode \"calibration\" needs input `interactions`: missing input table"),
            "{}",
            err.message
        );
        let err = Harness::new(r#"{"mode": "calibration", "similarity": "embedding"}"#).run::<Diversity>().unwrap_err();
        assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_PARAMS);
        assert!(err.message.starts_with("params.similarity: only for mode \"mmr\""), "{}", err.message);
    }

    #[test]
    fn bad_params_name_the_key() {
        let cases = [
            (r#"{"lambda": 1.5}"#, "params.lambda: must be in [0, 1], got 1.5"),
            (r#"{"lambda": -0.1}"#, "params.lambda: must be in [0, 1], got -0.1"),
            (r#"{"max_per_category": 0}"#, "params.max_per_category: must be at least 1"),
            (r#"{"k": 0}"#, "params.k: must be 1..=1000, got 0"),
            (r#"{"similarity": "embedding", "lambda": 1.5}"#, "params.lambda: must be in [0, 1], got 1.5"),
            (
                r#"{"similarity": "cosine"}"#,
                "params.similarity: unknown variant `cosine`, expected `category` or `embedding`",
            ),
            (r#"{"mode": "kl"}"#, "params.mode: unknown variant `kl`, expected `mmr` or `calibration`"),
        ];
        for (params, want) in cases {
            let err = Harness::new(params).run::<Diversity>().unwrap_err();
            assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_PARAMS, "{params}");
            assert!(err.message.starts_with(want), "{params}: {}", err.message);
        }
    }
}
