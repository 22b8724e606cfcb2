//! Template strategy: for every user of the `interactions` input, the `k` items with the
//! most distinct buyers that the user has not bought. No model. Copy this crate to start a
//! plugin: rename it, keep the `cdylib` crate type, change the strategy. See
//! docs/plugin-guide.md.

use std::collections::{BTreeMap, HashMap, HashSet};

use recd_plugin_api::columns::{column, ids_as_strings};
use recd_plugin_api::{CheckContext, LogLevel, OutputRows, PluginError, RunContext, Strategy, export_plugin};
use serde::Deserialize;

/// The job's `[params]`; unknown keys are refused with the key's name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default = "default_user_column")]
    user_column: String,
    #[serde(default = "default_item_column")]
    item_column: String,
}

fn default_k() -> usize {
    10
}
fn default_user_column() -> String {
    "user_id".into()
}
fn default_item_column() -> String {
    "item_id".into()
}

struct Popular {
    params: Params,
}

impl Strategy for Popular {
    /// Validate everything here: the host calls this before any input is read.
    fn new(params_json: &str) -> Result<Self, PluginError> {
        let params: Params = recd_plugin_api::params::parse(params_json)?;
        if params.k == 0 {
            return Err(PluginError::params("params.k: must be at least 1"));
        }
        Ok(Popular { params })
    }

    /// Called by `recd validate` and on reload, with each input's columns and no rows: a
    /// column the params name but the input lacks is reported at that params key, before
    /// any run.
    fn check(&self, ctx: &CheckContext) -> Result<(), PluginError> {
        ctx.require("interactions", &self.params.user_column, "params.user_column")?;
        ctx.require("interactions", &self.params.item_column, "params.item_column")
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
        let t = "interactions";
        let batch = ctx.input(t)?;
        let p = &self.params;
        let users = ids_as_strings(column(batch, t, &p.user_column)?, &p.user_column)?;
        let items = ids_as_strings(column(batch, t, &p.item_column)?, &p.item_column)?;
        let mut bought: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for (u, i) in users.into_iter().zip(items) {
            if let (Some(u), Some(i)) = (u, i) {
                bought.entry(u).or_default().insert(i);
            }
        }
        let mut buyers: HashMap<&str, u32> = HashMap::new();
        for set in bought.values() {
            for i in set {
                *buyers.entry(i.as_str()).or_default() += 1;
            }
        }
        let mut ranked: Vec<(&str, u32)> = buyers.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        ctx.log(LogLevel::Info, &format!("{} users, {} items", bought.len(), ranked.len()));

        let mut out = OutputRows::new();
        let total = bought.len() as u64;
        for (n, (user, mine)) in bought.iter().enumerate() {
            if n % 1000 == 0 && ctx.is_cancelled() {
                return Err(PluginError::cancelled());
            }
            for (item, count) in ranked.iter().filter(|(i, _)| !mine.contains(*i)).take(p.k) {
                out.push(user, item, *count as f32);
            }
            ctx.progress(n as u64 + 1, total);
        }
        ctx.emit(out.into_batch()?)
    }
}

export_plugin!(Popular, name = "template", version = env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use recd_plugin_api::abi::code;
    use recd_plugin_api::testing::Harness;

    fn interactions(pairs: &[(&str, &str)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("item_id", DataType::Utf8, false),
        ]);
        let users: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        let items: Vec<&str> = pairs.iter().map(|p| p.1).collect();
        RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(StringArray::from(users)), Arc::new(StringArray::from(items))],
        )
        .unwrap()
    }

    #[test]
    fn recommends_the_most_bought_items_each_user_lacks() {
        // buyers: a by u1 u2 u3, b by u1 u2, c by u3, d by u1
        let data =
            interactions(&[("u1", "a"), ("u1", "b"), ("u1", "d"), ("u2", "a"), ("u2", "b"), ("u3", "a"), ("u3", "c")]);
        let out = Harness::new(r#"{"k": 2}"#).input("interactions", data).run::<Popular>().unwrap();
        assert_eq!(out.list("u1"), [("c".to_string(), 1.0)]);
        assert_eq!(out.list("u2"), [("c".to_string(), 1.0), ("d".to_string(), 1.0)]);
        assert_eq!(out.list("u3"), [("b".to_string(), 2.0), ("d".to_string(), 1.0)]);
        assert_eq!(out.progress.last(), Some(&(3, 3)));
    }

    #[test]
    fn bad_params_and_missing_inputs_are_errors_with_their_names() {
        let err = Harness::new(r#"{"kk": 2}"#).run::<Popular>().unwrap_err();
        assert_eq!(err.code, code::INVALID_PARAMS);
        assert!(err.message.contains("unknown field `kk`"), "{}", err.message);
        let err = Harness::new("{}").run::<Popular>().unwrap_err();
        assert_eq!(err.code, code::INVALID_INPUT);
        assert!(err.message.contains("missing input table `interactions`"), "{}", err.message);
    }

    #[test]
    fn the_check_names_a_missing_column_at_its_params_key() {
        let data = interactions(&[("u1", "a")]);
        assert_eq!(Harness::new("{}").input("interactions", data.clone()).check::<Popular>(), Ok(()));
        let err =
            Harness::new(r#"{"user_column": "customer"}"#).input("interactions", data).check::<Popular>().unwrap_err();
        assert_eq!(err.code, code::INVALID_PARAMS);
        assert!(
            err.message.starts_with("params.user_column: input `interactions` has no column `customer`"),
            "{}",
            err.message
        );
        let err = Harness::new("{}").check::<Popular>().unwrap_err();
        assert!(err.message.starts_with("inputs: missing input table `interactions`"), "{}", err.message);
    }

    #[test]
    fn stops_when_the_host_cancels() {
        let data = interactions(&[("u1", "a")]);
        let err = Harness::new("{}").input("interactions", data).cancel_after(1).run::<Popular>().unwrap_err();
        assert_eq!(err.code, code::CANCELLED);
    }
}
