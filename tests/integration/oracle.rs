//! Independent expectations: purchases read straight from the Parquet demo data, the
//! model's vocabularies read from its CSVs, and scores computed by ONNX Runtime's Python
//! binding (not recd's worker, plugin or store).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};

use arrow_array::cast::AsArray;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::util::root;

/// customer id -> items bought in at least one non-cancelled line.
pub fn purchases() -> HashMap<String, HashSet<String>> {
    let file = std::fs::File::open(root().join("data/demo/retail.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for batch in reader {
        let batch = batch.unwrap();
        let users = batch.column_by_name("user_id").unwrap().as_string::<i32>().clone();
        let items = batch.column_by_name("item_id").unwrap().as_string::<i32>().clone();
        let cancelled = batch.column_by_name("cancelled").unwrap().as_boolean().clone();
        for i in 0..batch.num_rows() {
            if !cancelled.value(i) {
                out.entry(users.value(i).to_string()).or_default().insert(items.value(i).to_string());
            }
        }
    }
    out
}

/// item id -> description, from the demo items Parquet file (the jobs read the CSV).
pub fn item_descriptions() -> HashMap<String, String> {
    let file = std::fs::File::open(root().join("data/demo/items.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let mut out = HashMap::new();
    for batch in reader {
        let batch = batch.unwrap();
        let items = batch.column_by_name("item_id").unwrap().as_string::<i32>().clone();
        let descriptions = batch.column_by_name("description").unwrap().as_string::<i32>().clone();
        for i in 0..batch.num_rows() {
            out.insert(items.value(i).to_string(), descriptions.value(i).to_string());
        }
    }
    out
}

/// The ids of a vocabulary CSV (`<id>,index`) of the shipped model, in file order.
pub fn vocab_ids(file: &str) -> Vec<String> {
    vocab_ids_in(&root().join("models/ranking"), file)
}

/// The ids of a vocabulary CSV (`<id>,index`) in model folder `dir`, in file order.
pub fn vocab_ids_in(dir: &std::path::Path, file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    text.lines().skip(1).map(|l| l.split(',').next().unwrap().to_string()).collect()
}

const SCORER: &str = r#"
import csv, json, sys
import numpy as np
import onnxruntime as ort
req = json.load(sys.stdin)
def vocab(path):
    with open(path) as f:
        return {r[0]: int(r[1]) for r in csv.reader(f) if r[1] != "index"}
users, items = vocab(req["users"]), vocab(req["items"])
u = np.array([users[p[0]] for p in req["pairs"]], dtype=np.int64)
i = np.array([items[p[1]] for p in req["pairs"]], dtype=np.int64)
sess = ort.InferenceSession(req["model"], providers=["CPUExecutionProvider"])
(scores,) = sess.run(["score"], {"user": u, "item": i})
json.dump([float(s) for s in scores], sys.stdout)
"#;

/// Scores (user id, item id) pairs with the committed model through onnxruntime in Python.
pub fn model_scores(pairs: &[(String, String)]) -> Vec<f32> {
    model_scores_in(&root().join("models/ranking"), pairs)
}

/// Scores (user id, item id) pairs with `dir`'s mf.onnx and vocabularies, through
/// onnxruntime in Python.
pub fn model_scores_in(dir: &std::path::Path, pairs: &[(String, String)]) -> Vec<f32> {
    let req = serde_json::json!({
        "users": dir.join("users.csv"),
        "items": dir.join("items.csv"),
        "model": dir.join("mf.onnx"),
        "pairs": pairs.iter().map(|(u, i)| [u, i]).collect::<Vec<_>>(),
    });
    python(SCORER, &req).into_iter().map(|s| s as f32).collect()
}

/// Runs `script` with onnxruntime's Python binding on the path, `request` as JSON on its
/// stdin; it prints a JSON list of numbers.
fn python(script: &str, request: &serde_json::Value) -> Vec<f64> {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .env("PYTHONPATH", root().join(".deps/py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python scorer failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

const NAMED_SCORER: &str = r#"
import json, sys
import numpy as np
import onnxruntime as ort
req = json.load(sys.stdin)
sess = ort.InferenceSession(req["model"], providers=["CPUExecutionProvider"])
feeds = {k: np.array(v, dtype=np.float32) for k, v in req["inputs"].items()}
(out,) = sess.run([req["output"]], feeds)
json.dump([float(x) for x in out], sys.stdout)
"#;

/// Runs `model` (relative to the workspace) on float32 inputs through onnxruntime in
/// Python and returns output `output`.
pub fn python_scores(model: &str, inputs: &[(&str, Vec<f64>)], output: &str) -> Vec<f64> {
    let feeds: serde_json::Map<String, serde_json::Value> =
        inputs.iter().map(|(name, values)| (name.to_string(), serde_json::json!(values))).collect();
    let req = serde_json::json!({ "model": root().join(model), "inputs": feeds, "output": output });
    python(NAMED_SCORER, &req)
}
