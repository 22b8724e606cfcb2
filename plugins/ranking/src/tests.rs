use super::*;
use arrow_array::BooleanArray;
use arrow_array::StringArray;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use recd_plugin_api::testing::Harness;
use std::sync::Arc;

fn strings(name: &str, values: &[&str]) -> (Field, Arc<dyn arrow_array::Array>) {
    (Field::new(name, DataType::Utf8, false), Arc::new(StringArray::from(values.to_vec())))
}

fn table(columns: Vec<(Field, Arc<dyn arrow_array::Array>)>) -> RecordBatch {
    let (fields, arrays): (Vec<Field>, Vec<_>) = columns.into_iter().unzip();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

fn vocab(id: &str, ids: &[&str]) -> RecordBatch {
    let index: Vec<i64> = (0..ids.len() as i64).collect();
    table(vec![strings(id, ids), (Field::new("index", DataType::Int64, false), Arc::new(Int64Array::from(index)))])
}

/// u1 bought d; u2 bought a, and b in a cancelled line only.
fn harness(params: &str) -> Harness {
    harness_with_items(params, vocab("item_id", &["a", "b", "c", "d"]))
}

fn harness_with_items(params: &str, items: RecordBatch) -> Harness {
    let interactions = table(vec![
        strings("user_id", &["u1", "u2", "u2"]),
        strings("item_id", &["d", "a", "b"]),
        (Field::new("cancelled", DataType::Boolean, false), Arc::new(BooleanArray::from(vec![false, false, true]))),
    ]);
    // a stand-in model: u1 likes higher item indices, u2 lower ones
    let model = |batch: &RecordBatch| {
        let users = batch.column_by_name("user").unwrap().as_primitive::<Int64Type>();
        let items = batch.column_by_name("item").unwrap().as_primitive::<Int64Type>();
        let scores: Vec<f32> = users
            .values()
            .iter()
            .zip(items.values())
            .map(|(&u, &i)| if u == 0 { i as f32 } else { -(i as f32) })
            .collect();
        Ok(table(vec![(Field::new("score", DataType::Float32, false), Arc::new(Float32Array::from(scores)))]))
    };
    // The interactions cross as a stream, as from a host: in batches of two lines.
    Harness::new(params)
        .input("interactions", interactions)
        .streamed("interactions")
        .stream_batch_rows(2)
        .input("users", vocab("user_id", &["u1", "u2"]))
        .streamed("users")
        .input("items", items)
        .model_inputs(&[("user", "user", "int64"), ("item", "item", "int64")])
        .scorer(model)
}

fn list(out: &recd_plugin_api::testing::Output, user: &str) -> Vec<String> {
    out.list(user).into_iter().map(|(i, _)| i).collect()
}

#[test]
fn top_k_keeps_the_best_in_rank_order_ties_by_item() {
    // A small deterministic generator; many ties (scores from 8 values).
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut top = TopK::default();
    // Values the group check must not skip wrongly: a NaN (ranks first, as total_cmp
    // orders it, and the host then refuses it), both zeros, infinities.
    let special = [f32::NAN, -0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY];
    // Scores from 8 values (many ties at the cut), or from 2^20 (few ties, so a floor a
    // little too high would cut a candidate that ranks).
    let cases = [0usize, 1, 5, 10, 11, 37, 500, 1001].into_iter();
    for (n, odd, spread) in cases.flat_map(|n| [(n, false, 8), (n, true, 8), (n, false, 1 << 20), (n, true, 1 << 20)]) {
        let scores: Vec<f32> = (0..n)
            .map(|_| match next() % (64 * spread) {
                r if odd && r < 5 => special[r as usize],
                r => (r % spread) as f32 / 4.0,
            })
            .collect();
        let items: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % 1009).collect();
        for k in [1usize, 3, 10] {
            top.select(&scores, &items, k);
            let best = &top.best;
            let mut all: Vec<(f32, i64)> = scores.iter().copied().zip(items.iter().copied()).collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            all.truncate(k);
            let bits = |l: &[(f32, i64)]| l.iter().map(|&(s, i)| (s.to_bits(), i)).collect::<Vec<_>>();
            assert_eq!(bits(best), bits(&all), "n={n} k={k} special values {odd} spread {spread}");
        }
    }
}

#[test]
fn in_a_shard_only_its_users_are_scored_and_their_lists_are_unchanged() {
    for overlap in [false, true] {
        let params = format!(r#"{{"k": 2, "overlap": {overlap}}}"#);
        let whole = harness(&params).run::<Ranking>().unwrap();
        let last_progress = |out: &recd_plugin_api::testing::Output| out.progress.last().copied();
        let shard = harness(&params).shard(|user| user == "u2").run::<Ranking>().unwrap();
        assert_eq!(shard.users(), ["u2"], "overlap {overlap}");
        assert_eq!(shard.list("u2"), whole.list("u2"), "overlap {overlap}");
        assert!(said(&shard, "a shard of the run: 1 of 2 users are other shards'"), "{:?}", shard.logs);
        // progress still counts every user, skipped or not
        assert_eq!(last_progress(&shard), last_progress(&whole));
        assert!(!said(&whole, "a shard of the run"));
    }
}

#[test]
fn top_k_of_unseen_items_by_model_score() {
    let out = harness(r#"{"k": 2}"#).run::<Ranking>().unwrap();
    assert_eq!(list(&out, "u1"), ["c", "b"]);
    // a cancelled line is not a purchase: b stays a candidate for u2
    assert_eq!(list(&out, "u2"), ["b", "c"]);
    assert_eq!(out.list("u2")[0].1, -1.0);
}

/// Runs over users u1, u2 and items a..d with `interactions` streamed one line per
/// batch, scoring each pair by `score(items)`.
fn one_line_batches(
    params: &str,
    interactions: RecordBatch,
    score: impl Fn(&[i64]) -> Vec<f32> + 'static,
) -> recd_plugin_api::testing::Output {
    Harness::new(params)
        .input("interactions", interactions)
        .streamed("interactions")
        .stream_batch_rows(1)
        .input("users", vocab("user_id", &["u1", "u2"]))
        .input("items", vocab("item_id", &["a", "b", "c", "d"]))
        .model_inputs(&[("user", "user", "int64"), ("item", "item", "int64")])
        .scorer(move |batch: &RecordBatch| {
            let items = batch.column_by_name("item").unwrap().as_primitive::<Int64Type>();
            let scores = Float32Array::from(score(items.values()));
            Ok(table(vec![(Field::new("score", DataType::Float32, false), Arc::new(scores))]))
        })
        .run::<Ranking>()
        .unwrap()
}

#[test]
fn purchases_from_a_stream_of_many_batches_count_once_and_skip_unknown_ids() {
    // u1 bought d twice (in different batches), u2 bought a and an item the model does
    // not know, and a user the model does not know bought c: one line per batch.
    let interactions = table(vec![
        strings("user_id", &["u1", "u2", "u9", "u2", "u1"]),
        strings("item_id", &["d", "a", "c", "x", "d"]),
    ]);
    // scores by item index: d, c, b, a
    let out = one_line_batches(r#"{"k": 4}"#, interactions, |items| items.iter().map(|&i| i as f32).collect());
    assert_eq!(list(&out, "u1"), ["c", "b", "a"]);
    assert_eq!(list(&out, "u2"), ["d", "c", "b"]);
    assert_eq!(out.users(), ["u1", "u2"]);
}

#[test]
fn a_purchase_streamed_twice_counts_one_buyer_in_the_popular_pool() {
    // u1 bought d twice (two batches), u2 bought a: one buyer each, so the tie goes to
    // the lower index and the pool of one is [a]. Counted twice, d would take it.
    let interactions = table(vec![strings("user_id", &["u1", "u2", "u1"]), strings("item_id", &["d", "a", "d"])]);
    let params = r#"{"k": 1, "candidates": "popular", "popular_pool": 1}"#;
    let out = one_line_batches(params, interactions, |items| vec![1.0; items.len()]);
    assert_eq!(list(&out, "u1"), ["a"]);
    assert!(list(&out, "u2").is_empty());
}

/// Interactions of 60 users over 40 items: duplicates (counted once, a rare item
/// bought five times by each of five users stays out of a pool of 12), cancelled
/// lines, lines of a user and of an item the model does not know, and users 55..60
/// with no line. As
/// (user, item, cancelled), in an order where each user's lines are together.
fn grouped_lines() -> Vec<(String, String, bool)> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut lines = Vec::new();
    for u in 0..55 {
        for _ in 0..1 + next(12) {
            let item = if next(25) == 0 { "zz".to_string() } else { format!("i{}", next(40) * next(40) / 40) };
            lines.push((format!("u{u}"), item, next(8) == 0));
            if next(30) == 0 {
                lines.push(("stranger".to_string(), "i1".to_string(), false));
            }
        }
        // five users buy a rare item five times each: five buyers, not 25
        if u >= 50 {
            lines.extend(std::iter::repeat_n((format!("u{u}"), "i39".to_string(), false), 5));
        }
    }
    lines
}

fn lines_table(lines: &[(String, String, bool)]) -> RecordBatch {
    let users: Vec<&str> = lines.iter().map(|l| l.0.as_str()).collect();
    let items: Vec<&str> = lines.iter().map(|l| l.1.as_str()).collect();
    let cancelled = BooleanArray::from(lines.iter().map(|l| l.2).collect::<Vec<_>>());
    table(vec![
        strings("user_id", &users),
        strings("item_id", &items),
        (Field::new("cancelled", DataType::Boolean, false), Arc::new(cancelled)),
    ])
}

/// Ranks 60 users over 40 items with a model whose score mixes user and item.
fn rank_lines(params: &str, lines: &[(String, String, bool)], batch_rows: usize) -> recd_plugin_api::testing::Output {
    let users: Vec<String> = (0..60).map(|u| format!("u{u}")).collect();
    let items: Vec<String> = (0..40).map(|i| format!("i{i}")).collect();
    let (users, items): (Vec<&str>, Vec<&str>) =
        (users.iter().map(String::as_str).collect(), items.iter().map(String::as_str).collect());
    Harness::new(params)
        .input("interactions", lines_table(lines))
        .streamed("interactions")
        .stream_batch_rows(batch_rows)
        .input("users", vocab("user_id", &users))
        .streamed("users")
        .input("items", vocab("item_id", &items))
        .model_inputs(&[("user", "user", "int64"), ("item", "item", "int64")])
        .scorer(|batch: &RecordBatch| {
            let users = batch.column_by_name("user").unwrap().as_primitive::<Int64Type>();
            let items = batch.column_by_name("item").unwrap().as_primitive::<Int64Type>();
            let scores: Vec<f32> =
                users.values().iter().zip(items.values()).map(|(&u, &i)| ((u * 7 + i * 13) % 17) as f32).collect();
            Ok(table(vec![(Field::new("score", DataType::Float32, false), Arc::new(Float32Array::from(scores)))]))
        })
        .run::<Ranking>()
        .unwrap()
}

fn said(out: &recd_plugin_api::testing::Output, text: &str) -> bool {
    out.logs.iter().any(|(_, line)| line.contains(text))
}

#[test]
fn grouped_interactions_read_one_user_at_a_time_give_the_lists_of_held_ones() {
    let grouped = grouped_lines();
    // The same lines in another order: u0's last line moved to the end.
    let mut moved = grouped.clone();
    let last_of_u0 = moved.iter().rposition(|l| l.0 == "u0").unwrap();
    let line = moved.remove(last_of_u0);
    moved.push(line);
    // And fully interleaved: every third line first.
    let interleaved: Vec<_> = (0..3).flat_map(|r| grouped.iter().skip(r).step_by(3).cloned()).collect();
    for params in [
        r#"{"k": 5, "batch_pairs": 50}"#,
        r#"{"k": 5, "batch_pairs": 50, "overlap": true}"#,
        r#"{"k": 3, "candidates": "popular", "popular_pool": 12, "batch_pairs": 7}"#,
        r#"{"k": 3, "candidates": "popular", "popular_pool": 12, "overlap": true}"#,
        r#"{"k": 4, "batch_pairs": 9, "overlap": true, "ranking_threads": 3}"#,
    ] {
        let reference = rank_lines(params, &grouped, 1024);
        assert!(said(&reference, "grouped by user: purchases are read one user at a time"), "{:?}", reference.logs);
        let mut want = reference.rows();
        want.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        // every user the model knows has a list, those without a line too
        assert_eq!(reference.users().len(), 60, "{params}");
        for (lines, batch_rows, grouped_path) in
            [(&grouped, 3, true), (&moved, 1024, false), (&interleaved, 5, false), (&interleaved, 1024, false)]
        {
            let out = rank_lines(params, lines, batch_rows);
            let path = if grouped_path { "grouped by user" } else { "not grouped by user" };
            assert!(said(&out, path), "{params}: {:?}", out.logs);
            let mut got = out.rows();
            got.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
            assert_eq!(got, want, "{params}, {path}, {batch_rows} rows a batch");
        }
    }
    // The first user seen again is named.
    let out = rank_lines(r#"{"k": 1}"#, &moved, 1024);
    assert!(said(&out, &format!("user \"u0\" again at row {}", moved.len() - 1)), "{:?}", out.logs);
}

#[test]
fn overlapped_batches_stop_cleanly_on_cancel_and_on_a_scoring_error() {
    // One user per batch (batch_pairs = 1), batches built on the second thread.
    let params = r#"{"k": 2, "batch_pairs": 1, "overlap": true}"#;
    let err = harness(params).cancel_after(1).run::<Ranking>().unwrap_err();
    assert_eq!(err.code, recd_plugin_api::abi::code::CANCELLED, "{err:?}");
    let err = harness(params).scorer(|_| Err("model exploded".into())).run::<Ranking>().unwrap_err();
    assert!(err.message.contains("model exploded"), "{err:?}");
    // With several ranking threads too, and a scoring error late in the run.
    let many = r#"{"k": 2, "batch_pairs": 1, "overlap": true, "ranking_threads": 4}"#;
    let err = harness(many).cancel_after(2).run::<Ranking>().unwrap_err();
    assert_eq!(err.code, recd_plugin_api::abi::code::CANCELLED, "{err:?}");
    let mut calls = 0;
    let failing_second = move |batch: &RecordBatch| {
        calls += 1;
        if calls == 2 {
            return Err("model exploded on call 2".to_string());
        }
        let scores = Float32Array::from(vec![1.0f32; batch.num_rows()]);
        Ok(table(vec![(Field::new("score", DataType::Float32, false), Arc::new(scores))]))
    };
    let err = harness(many).scorer(failing_second).run::<Ranking>().unwrap_err();
    assert!(err.message.contains("model exploded on call 2"), "{err:?}");
    // and without a fault every way gives the same lists
    let overlapped = harness(params).run::<Ranking>().unwrap();
    let pooled = harness(many).run::<Ranking>().unwrap();
    for user in ["u1", "u2"] {
        assert_eq!(list(&pooled, user), list(&overlapped, user));
    }
    let sequential = harness(r#"{"k": 2, "batch_pairs": 1, "overlap": false}"#).run::<Ranking>().unwrap();
    for user in ["u1", "u2"] {
        assert_eq!(list(&overlapped, user), list(&sequential, user));
    }
}

#[test]
fn unavailable_items_do_not_take_places_in_the_popular_pool() {
    // buyers: a 1, d 1; b is out of stock. A pool of 2 is [a, d] either way, but
    // with b marked as bought by everyone it used to crowd one of them out.
    let items = vocab("item_id", &["a", "b", "c", "d"]);
    let available: Arc<dyn arrow_array::Array> = Arc::new(BooleanArray::from(vec![true, false, true, true]));
    let mut columns: Vec<(Field, Arc<dyn arrow_array::Array>)> =
        items.schema().fields().iter().zip(items.columns()).map(|(f, c)| (f.as_ref().clone(), c.clone())).collect();
    columns.push((Field::new("in_stock", DataType::Boolean, false), available));
    let params = r#"{"k": 2, "candidates": "popular", "popular_pool": 2, "available_column": "in_stock"}"#;
    let out = harness_with_items(params, table(columns)).run::<Ranking>().unwrap();
    assert_eq!(list(&out, "u1"), ["a"]);
    assert_eq!(list(&out, "u2"), ["d"]);
}

#[test]
fn popular_pool_limits_candidates_to_the_most_bought_items() {
    // buyers: a 1 (u2), d 1 (u1); pool of 2 = [a, d]
    let out = harness(r#"{"k": 2, "candidates": "popular", "popular_pool": 2}"#).run::<Ranking>().unwrap();
    assert_eq!(list(&out, "u1"), ["a"]);
    assert_eq!(list(&out, "u2"), ["d"]);
}

#[test]
fn unavailable_items_are_never_recommended() {
    let items = vocab("item_id", &["a", "b", "c", "d"]);
    let available: Arc<dyn arrow_array::Array> = Arc::new(BooleanArray::from(vec![true, false, true, true]));
    let mut columns: Vec<(Field, Arc<dyn arrow_array::Array>)> =
        items.schema().fields().iter().zip(items.columns()).map(|(f, c)| (f.as_ref().clone(), c.clone())).collect();
    columns.push((Field::new("in_stock", DataType::Boolean, false), available));
    let out =
        harness_with_items(r#"{"k": 2, "available_column": "in_stock"}"#, table(columns)).run::<Ranking>().unwrap();
    // u2 would get b first (see above); b is out of stock
    assert_eq!(list(&out, "u2"), ["c", "d"]);
    assert_eq!(list(&out, "u1"), ["c", "a"]);
}

#[test]
fn an_upstream_pool_limits_each_users_candidates() {
    let pool = table(vec![strings("user", &["u1", "u1", "u2", "u2"]), strings("item", &["a", "b", "d", "zz"])]);
    let out = harness(r#"{"k": 2, "candidates": "upstream"}"#).input("pool", pool).run::<Ranking>().unwrap();
    assert_eq!(list(&out, "u1"), ["b", "a"]);
    // an item the model does not know (zz) is skipped
    assert_eq!(list(&out, "u2"), ["d"]);
}

#[test]
fn model_inputs_bind_ids_and_item_columns_under_the_models_names() {
    let mut items = vocab("item_id", &["a", "b", "c", "d"]);
    let price: Arc<dyn arrow_array::Array> = Arc::new(arrow_array::Float64Array::from(vec![4.0, 1.0, 3.0, 2.0]));
    let mut columns: Vec<(Field, Arc<dyn arrow_array::Array>)> =
        items.schema().fields().iter().zip(items.columns()).map(|(f, c)| (f.as_ref().clone(), c.clone())).collect();
    columns.push((Field::new("price", DataType::Float64, false), price));
    items = table(columns);
    // a model scoring by price alone, with its own input names and output name
    let model = |batch: &RecordBatch| {
        let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        if names != ["uid", "cost"] {
            return Err(format!("scoring batch columns {names:?}"));
        }
        let cost = batch.column_by_name("cost").unwrap().as_primitive::<arrow_array::types::Float32Type>();
        let schema = Schema::new(vec![Field::new("logit", DataType::Float32, false)]);
        Ok(RecordBatch::try_new(Arc::new(schema), vec![Arc::new(cost.clone())]).unwrap())
    };
    let out = harness_with_items(r#"{"k": 2, "score_output": "logit"}"#, items.clone())
        .model_inputs(&[("uid", "user", "int64"), ("cost", "items.price", "float32")])
        .scorer(model)
        .run::<Ranking>()
        .unwrap();
    // u1 bought d: a (4) then c (3); u2 bought a: c (3) then d (2)... b (1) last
    assert_eq!(list(&out, "u1"), ["a", "c"]);
    assert_eq!(list(&out, "u2"), ["c", "d"]);

    let err = harness_with_items("{}", items.clone())
        .model_inputs(&[("uid", "user", "int64"), ("cost", "items.weight", "float32")])
        .run::<Ranking>()
        .unwrap_err();
    assert!(err.message.starts_with("model_inputs.cost: input `items` has no column `weight`"), "{}", err.message);
    let err =
        harness_with_items("{}", items).model_inputs(&[("uid", "customer", "int64")]).run::<Ranking>().unwrap_err();
    assert!(err.message.starts_with("model_inputs.uid: unknown feature `customer`"), "{}", err.message);
}

#[test]
fn the_check_finds_unknown_columns_and_features_before_a_run() {
    assert_eq!(harness("{}").check::<Ranking>(), Ok(()));
    let cases = [
        (
            harness(r#"{"user_column": "customer"}"#),
            "params.user_column: input `interactions` has no column `customer`",
        ),
        (
            harness(r#"{"available_column": "in_stock"}"#),
            "params.available_column: input `items` has no column `in_stock`",
        ),
        (
            harness("{}").model_inputs(&[("user", "user", "int64"), ("item", "items.price", "float32")]),
            "model_inputs.item: input `items` has no column `price`",
        ),
        (harness("{}").model_inputs(&[("user", "age", "int64")]), "model_inputs.user: unknown feature `age`"),
        (harness(r#"{"candidates": "upstream"}"#), "inputs: missing input table `pool`"),
    ];
    for (h, want) in cases {
        let err = h.check::<Ranking>().unwrap_err();
        assert!(err.message.starts_with(want), "{}", err.message);
    }
}

#[test]
fn params_are_checked_before_anything_runs() {
    let cases = [
        (r#"{"k": 0}"#, "params.k: must be 1..=10000, got 0"),
        (r#"{"kk": 1}"#, "params.kk: unknown field `kk`"),
        (
            r#"{"k": 5, "candidates": "popular", "popular_pool": 3}"#,
            "params.popular_pool: must be at least k (5), got 3",
        ),
        (r#"{"candidates": "recent"}"#, "params.candidates: unknown variant `recent`"),
    ];
    for (params, want) in cases {
        let err = harness(params).run::<Ranking>().unwrap_err();
        assert_eq!(err.code, recd_plugin_api::abi::code::INVALID_PARAMS, "{params}");
        assert!(err.message.starts_with(want), "{params}: {}", err.message);
    }
}

#[test]
fn a_batch_holds_the_jobs_size_else_the_hosts_preferred_size_else_the_plugins_own() {
    // u1 and u2 have three unseen items each; a batch ends with the user that fills it.
    let calls = |params: &str, host_prefers: u64| -> Vec<usize> {
        let sizes = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = sizes.clone();
        let model = move |batch: &RecordBatch| {
            seen.borrow_mut().push(batch.num_rows());
            let scores = Float32Array::from(vec![0.5f32; batch.num_rows()]);
            Ok(table(vec![(Field::new("score", DataType::Float32, false), Arc::new(scores))]))
        };
        let inputs = [("user", "user", "int64"), ("item", "item", "int64")];
        let run = harness(params).model_inputs_preferring(&inputs, host_prefers).scorer(model).run::<Ranking>();
        assert_eq!(run.unwrap().users(), ["u1", "u2"], "{params}, host prefers {host_prefers}");
        sizes.take()
    };
    // No preference anywhere: the plugin's rule (at least 4,096 pairs): one call.
    assert_eq!(calls(r#"{"k": 2}"#, 0), [6]);
    // The host prefers one row a call (as for a GPU, in larger numbers): a user a call.
    assert_eq!(calls(r#"{"k": 2}"#, 1), [3, 3]);
    // The job's own size wins over the host's, both ways.
    assert_eq!(calls(r#"{"k": 2, "batch_pairs": 100}"#, 1), [6]);
    assert_eq!(calls(r#"{"k": 2, "batch_pairs": 1}"#, 100), [3, 3]);
}
