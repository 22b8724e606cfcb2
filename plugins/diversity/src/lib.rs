//! diversity: re-ranks each user's list from an upstream table (input `candidates`, e.g.
//! `table:ranking`) by maximal marginal relevance (Carbonell & Goldstein, 1998), so that
//! similar items do not crowd the top.
//!
//! Greedily, the next item is the candidate maximising
//! `lambda * relevance - (1 - lambda) * max similarity to the items already chosen`, where
//! relevance is the upstream score scaled to [0, 1] within the user's list. Similarity
//! (`similarity`):
//! - `category` (default): 1 for two items of the same category, else 0 (categories from
//!   input `items`);
//! - `embedding`: the cosine of the items' vectors (input `embeddings`, e.g. the ranking
//!   model's item factors), so "near-duplicate" is a matter of degree and a candidate
//!   pointing away from what is chosen gets a bonus. An item without a vector is
//!   similar to nothing (0).
//!
//! `max_per_category` is a hard cap on top; it always counts categories, so with embedding
//! similarity it needs `items` too. Emitted scores are `k - position`, so the served order
//! is the chosen order.

use std::collections::{BTreeMap, HashMap};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use recd_plugin_api::columns::{column, ids_as_strings, numbers};
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
    #[serde(default = "default_item_column")]
    item_column: String,
    #[serde(default)]
    similarity: Similarity,
    #[serde(default = "default_embedding_column")]
    embedding_column: String,
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

    fn check(&self, ctx: &CheckContext) -> Result<(), PluginError> {
        let p = &self.params;
        for col in ["user", "item", "score"] {
            ctx.require("candidates", col, "inputs.candidates")?;
        }
        if p.similarity == Similarity::Category || p.max_per_category.is_some() {
            ctx.require("items", &p.item_column, "params.item_column")?;
            ctx.require("items", &p.category_column, "params.category_column")?;
        }
        if p.similarity == Similarity::Embedding {
            ctx.require("embeddings", &p.item_column, "params.item_column")?;
            ctx.require("embeddings", &p.embedding_column, "params.embedding_column")?;
        }
        Ok(())
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
        let items = self.items(ctx)?;
        let lists = candidates(ctx)?;
        let mut out = OutputRows::new();
        let total = lists.len() as u64;
        for (n, (user, list)) in lists.iter().enumerate() {
            if n % 1024 == 0 && ctx.is_cancelled() {
                return Err(PluginError::cancelled());
            }
            let picked = mmr(list, &items, &self.params);
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
    categories: HashMap<String, String>,
    vectors: Option<HashMap<String, Vec<f64>>>,
}

impl Items {
    fn similarity(&self, a: &str, b: &str) -> f64 {
        match &self.vectors {
            Some(vectors) => match (vectors.get(a), vectors.get(b)) {
                (Some(x), Some(y)) => x.iter().zip(y).map(|(x, y)| x * y).sum(),
                _ => 0.0,
            },
            None => match (self.categories.get(a), self.categories.get(b)) {
                (Some(x), Some(y)) if x == y => 1.0,
                _ => 0.0,
            },
        }
    }
}

impl Diversity {
    fn items(&self, ctx: &RunContext<'_>) -> Result<Items, PluginError> {
        let p = &self.params;
        let (categories, vectors) = match p.similarity {
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
    let rows = list_rows(col, &format!("{t}.{}", p.embedding_column))?;
    let mut vectors = HashMap::new();
    let mut first: Option<(usize, String, usize)> = None;
    for (row, (item, values)) in items.into_iter().zip(rows).enumerate() {
        let (Some(item), Some(values)) = (item, values) else { continue };
        let v = vector_values(values.as_ref(), row, &item)?;
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

/// The rows of a list column of floats (fixed-size or not); nulls as `None`.
fn list_rows(col: &dyn Array, what: &str) -> Result<Vec<Option<ArrayRef>>, PluginError> {
    let element = match col.data_type() {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => f.data_type(),
        other => {
            return Err(PluginError::input(format!("{what}: expected a list of float32 or float64, found {other}")));
        }
    };
    if !matches!(element, DataType::Float32 | DataType::Float64) {
        return Err(PluginError::input(format!(
            "{what}: expected a list of float32 or float64, found {}",
            col.data_type()
        )));
    }
    Ok(match col.data_type() {
        DataType::FixedSizeList(..) => col.as_fixed_size_list().iter().collect(),
        DataType::List(_) => col.as_list::<i32>().iter().collect(),
        _ => col.as_list::<i64>().iter().collect(),
    })
}

fn vector_values(values: &dyn Array, row: usize, item: &str) -> Result<Vec<f64>, PluginError> {
    let what = format!("input `embeddings` row {row} (item `{item}`)");
    numbers(values, &what)?
        .into_iter()
        .map(|v| v.ok_or_else(|| PluginError::input(format!("{what}: the vector has a null value"))))
        .collect()
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

/// Maximal marginal relevance over one list (best first), with the category cap.
fn mmr<'a>(list: &'a [(String, f64)], items: &Items, p: &Params) -> Vec<&'a str> {
    let (lo, hi) = list.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, s)| (lo.min(*s), hi.max(*s)));
    let relevance = |s: f64| if hi > lo { (s - lo) / (hi - lo) } else { 1.0 };
    let mut left: Vec<usize> = (0..list.len()).collect();
    // each candidate's highest similarity to the items chosen so far, kept up to date
    // pick by pick rather than recomputed (k * n similarities per list, not k^2 * n)
    let mut nearest = vec![0.0; list.len()];
    let mut picked: Vec<&str> = Vec::new();
    let mut per_category: HashMap<&str, usize> = HashMap::new();
    while picked.len() < p.k {
        let capped = |item: &str| {
            let cat = items.categories.get(item).map(String::as_str);
            p.max_per_category.zip(cat).is_some_and(|(cap, c)| per_category.get(c).copied().unwrap_or(0) >= cap)
        };
        let mut best: Option<(usize, f64)> = None;
        for (slot, &c) in left.iter().enumerate() {
            if capped(&list[c].0) {
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
        if let Some(cat) = items.categories.get(item) {
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

    use arrow_array::types::{Float32Type, Float64Type};
    use arrow_array::{FixedSizeListArray, Float32Array, ListArray, RecordBatch, StringArray};
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
        let items = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("item_id", DataType::Utf8, false),
                Field::new("category", DataType::Utf8, false),
            ])),
            vec![strings(&["a", "b", "c", "d"]), strings(&["toys", "toys", "books", "toys"])],
        )
        .unwrap();
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

    #[test]
    fn bad_params_name_the_key() {
        let cases = [
            (r#"{"lambda": 1.5}"#, "params.lambda: must be in [0, 1], got 1.5"),
            (r#"{"lambda": -0.1}"#, "params.lambda: must be in [0, 1], got -0.1"),
            (r#"{"max_per_category": 0}"#, "params.max_per_category: must be at least 1"),
            (r#"{"k": 0}"#, "params.k: must be 1..=1000, got 0"),
            (r#"{"similarity": "embedding", "lambda": 1.5}"#, "params.lambda: must be in [0, 1], got 1.5"),
            (r#"{"similarity": "cosine"}"#, "params: unknown variant `cosine`, expected `category` or `embedding`"),
        ];
        for (params, want) in cases {
            let err = Harness::new(params).run::<Diversity>().unwrap_err();
            assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_PARAMS, "{params}");
            assert!(err.message.starts_with(want), "{params}: {}", err.message);
        }
    }
}
