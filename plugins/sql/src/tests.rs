use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use recd_plugin_api::abi::code;
use recd_plugin_api::testing::Harness;

use super::*;

/// invoice, user_id, item_id, ts (ms), cancelled:
/// i1 u1 a+b day 1; i2 u2 a+b+c day 2; i3 u2 a day 3; i4 u1 c day 4 (cancelled); i5 u3 b day 5
fn interactions() -> RecordBatch {
    let rows = [
        ("i1", "u1", "a", 1, false),
        ("i1", "u1", "b", 1, false),
        ("i2", "u2", "a", 2, false),
        ("i2", "u2", "b", 2, false),
        ("i2", "u2", "c", 2, false),
        ("i3", "u2", "a", 3, false),
        ("i4", "u1", "c", 4, true),
        ("i5", "u3", "b", 5, false),
    ];
    let day = 86_400_000i64;
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("invoice", DataType::Utf8, false),
            Field::new("user_id", DataType::Utf8, false),
            Field::new("item_id", DataType::Utf8, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("cancelled", DataType::Boolean, false),
        ])),
        vec![
            Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            Arc::new(TimestampMillisecondArray::from(rows.iter().map(|r| r.3 * day).collect::<Vec<_>>())),
            Arc::new(BooleanArray::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn params(query: &str, k: Option<usize>) -> String {
    serde_json::json!({ "query": query, "k": k }).to_string()
}

fn hash_params(query: &str) -> String {
    serde_json::json!({ "query": query, "output": "hashes" }).to_string()
}

/// Items bought together: for each item, the other items in its invoices, by invoices shared.
const TOGETHER: &str = r#"
    WITH baskets AS (SELECT DISTINCT invoice, item_id FROM interactions WHERE NOT cancelled)
    SELECT a.item_id AS "user", b.item_id AS item, COUNT(*) AS score
    FROM baskets a JOIN baskets b ON a.invoice = b.invoice AND a.item_id <> b.item_id
    GROUP BY a.item_id, b.item_id"#;

#[test]
fn a_list_query_is_ordered_by_user_and_score_and_cut_at_k() {
    let run = |k| Harness::new(&params(TOGETHER, k)).input("interactions", interactions()).run::<Sql>().unwrap();
    // a: b in i1 and i2 (2), c in i2 (1); b: a (2), c (1); c: a (1), b (1), tie by item;
    // the cancelled i4 adds nothing
    let out = run(None);
    assert_eq!(
        out.rows(),
        [("a", "b", 2.0), ("a", "c", 1.0), ("b", "a", 2.0), ("b", "c", 1.0), ("c", "a", 1.0), ("c", "b", 1.0),]
            .map(|(u, i, s)| (u.to_string(), i.to_string(), s))
    );
    let out = run(Some(1));
    assert_eq!(out.list("a"), [("b".to_string(), 2.0)]);
    assert_eq!(out.list("c"), [("a".to_string(), 1.0)]);
    assert_eq!(out.rows().len(), 3);
}

#[test]
fn integer_ids_and_any_numeric_score_are_taken() {
    let query = "SELECT CAST(1 AS BIGINT) AS \"user\", column1 AS item, column2 AS score \
                 FROM (VALUES (10, 0.5), (20, 1.5))";
    let out = Harness::new(&params(query, None)).run::<Sql>().unwrap();
    assert_eq!(out.list("1"), [("20".to_string(), 1.5), ("10".to_string(), 0.5)]);
}

#[test]
fn a_hash_query_keeps_number_and_text_types() {
    let query = r#"SELECT user_id AS "user", COUNT(DISTINCT invoice) AS invoices,
                          SUM(CASE WHEN cancelled THEN 1.0 ELSE 0.0 END) / COUNT(*) AS cancelled_share,
                          MAX(ts) AS last_bought
                   FROM interactions GROUP BY user_id ORDER BY user_id"#;
    let out = Harness::new(&hash_params(query)).input("interactions", interactions()).hashes().run::<Sql>().unwrap();
    let batch = only_batch(&out.batches);
    let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["user", "invoices", "cancelled_share", "last_bought"]);
    let users = batch.column(0).as_string::<i32>();
    assert_eq!(users.iter().flatten().collect::<Vec<_>>(), ["u1", "u2", "u3"]);
    let invoices = batch.column(1).as_primitive::<Int64Type>();
    assert_eq!(invoices.values().to_vec(), [2, 2, 1]);
    let share = batch.column(2).as_primitive::<Float64Type>();
    assert!((share.value(0) - 1.0 / 3.0).abs() < 1e-12);
    // a timestamp is not a hash value type: stored as text
    assert_eq!(batch.column(3).data_type(), &DataType::Utf8);
    assert!(batch.column(3).as_string::<i32>().value(0).starts_with("1970-01-05"));
}

fn only_batch(batches: &[RecordBatch]) -> RecordBatch {
    assert_eq!(batches.len(), 1, "one batch expected for this small result");
    batches[0].clone()
}

#[test]
fn check_plans_the_query_against_the_input_schemas() {
    let check = |query: &str| Harness::new(&params(query, None)).input("interactions", interactions()).check::<Sql>();
    assert_eq!(check(TOGETHER), Ok(()));
    let err = check("SELECT user_id AS \"user\", item AS item, 1.0 AS score FROM interactions").unwrap_err();
    assert_eq!(err.code, code::INVALID_PARAMS);
    assert!(err.message.starts_with("params.query: "), "{}", err.message);
    assert!(err.message.contains("item"), "{}", err.message);
    // an input the job does not provide is an unknown table
    let err = check("SELECT user_id AS \"user\", item_id AS item, 1.0 AS score FROM items").unwrap_err();
    assert!(err.message.starts_with("params.query: "), "{}", err.message);
    assert!(err.message.contains("items"), "{}", err.message);
    let err = check("SELECT user_id, item_id, 1.0 AS score FROM interactions").unwrap_err();
    assert_eq!(
        err.message,
        "params.query: the result's columns are (user_id, item_id, score): a list table needs exactly `user`, \
         `item`, `score` (name a column with `AS \"user\"`; for a hash table set params.output = \"hashes\")"
    );
    // a hash-shaped result for a list table is refused, and the other way round
    let err = check("SELECT user_id AS \"user\", item_id AS product, 1.0 AS score FROM interactions").unwrap_err();
    assert!(err.message.contains("(user, product, score): a list table needs exactly"), "{}", err.message);
    let hash_check =
        |query: &str| Harness::new(&hash_params(query)).input("interactions", interactions()).check::<Sql>();
    assert_eq!(hash_check("SELECT user_id AS \"user\", COUNT(*) AS n FROM interactions GROUP BY user_id"), Ok(()));
    let err = hash_check("SELECT COUNT(*) AS n, user_id AS \"user\" FROM interactions GROUP BY user_id").unwrap_err();
    assert_eq!(
        err.message,
        "params.query: the result's columns are (n, user): a hash table needs `user` first, then its fields, each \
         named once (name a column with `AS \"user\"`)"
    );
    let err = hash_check("SELECT user_id AS \"user\" FROM interactions").unwrap_err();
    assert!(err.message.starts_with("params.query: the result's columns are (user): a hash"), "{}", err.message);
    let err = check("SELECT user_id AS \"user\", item_id AS item, item_id AS score FROM interactions").unwrap_err();
    assert_eq!(err.message, "params.query: the result's `score` is Utf8, not a number");
    let err = check("SELECT * FROM (SELECT 1) AS x(").unwrap_err();
    assert!(err.message.starts_with("params.query: "), "{}", err.message);
}

#[test]
fn statements_that_define_or_change_data_are_refused() {
    for query in [
        "CREATE TABLE t AS SELECT 1 AS x",
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/recd-sql-copy.csv'",
        "INSERT INTO interactions VALUES ('x', 'u', 'i', 0, false)",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let err = Harness::new(&params(query, None)).input("interactions", interactions()).run::<Sql>().unwrap_err();
        assert_eq!(err.code, code::INVALID_PARAMS, "{query}");
        assert!(err.message.starts_with("params.query: "), "{query}: {}", err.message);
    }
    assert!(!std::path::Path::new("/tmp/recd-sql-copy.csv").exists());
}

#[test]
fn null_results_and_bad_params_name_the_problem() {
    let query = "SELECT 'u' AS \"user\", CAST(NULL AS VARCHAR) AS item, 1.0 AS score";
    let err = Harness::new(&params(query, None)).run::<Sql>().unwrap_err();
    assert_eq!(err.code, code::INVALID_INPUT);
    assert_eq!(err.message, "params.query: result row 0 has a null user, item or score");
    let cases = [
        (r#"{"query": "  "}"#, "params.query: is empty"),
        (r#"{"query": "SELECT 1", "k": 0}"#, "params.k: must be 1..=10000, got 0"),
        (r#"{}"#, "params: missing field `query`"),
        (r#"{"query": "SELECT 1", "limit": 3}"#, "params.limit: unknown field `limit`"),
        (r#"{"query": "SELECT 1", "output": "hashes", "k": 3}"#, "params.k: only for output \"lists\""),
        (
            r#"{"query": "SELECT 1", "output": "sets"}"#,
            "params.output: unknown variant `sets`, expected `lists` or `hashes`",
        ),
    ];
    for (p, want) in cases {
        let err = Harness::new(p).run::<Sql>().unwrap_err();
        assert_eq!(err.code, code::INVALID_PARAMS, "{p}");
        assert!(err.message.starts_with(want), "{p}: {}", err.message);
    }
}

#[test]
fn an_empty_result_emits_nothing_and_fails_only_where_the_job_refuses_one() {
    let query = "SELECT user_id AS \"user\", item_id AS item, 1.0 AS score FROM interactions WHERE false";
    let harness = || Harness::new(&params(query, None)).input("interactions", interactions());
    let out = harness().allow_empty().run::<Sql>().unwrap();
    assert!(out.rows().is_empty());
    let err = harness().run::<Sql>().unwrap_err();
    assert!(err.message.starts_with("the run emitted no rows"), "{err}");
}
