//! EVALRECORD table version json (admin socket; `recd eval --record` sends it): keeps an
//! evaluation's numbers with the version it read, replacing that version's earlier record.
//! `json` is `{"setting":..,"cutoff":..,"users":..,"metrics":{name: value}}`. Answers
//! `+OK table <t> version <v> eval recorded`.
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::{ParseResult, parse_int, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};
use crate::store;

pub struct EvalRecord {
    table: String,
    version: u64,
    record: store::EvalRecord,
}

/// The request's JSON as sent: unknown fields refused, then checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    setting: String,
    cutoff: String,
    users: u64,
    metrics: BTreeMap<String, f64>,
}

impl RawRecord {
    /// The record to keep, or why it cannot be kept, naming the field.
    fn validate(self) -> Result<store::EvalRecord, String> {
        if self.setting.trim().is_empty() {
            return Err("field `setting` is empty".into());
        }
        if self.metrics.is_empty() {
            return Err("field `metrics` has no metric".into());
        }
        if let Some((name, v)) = self.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("field `metrics.{name}` is {v}, not a finite number"));
        }
        let RawRecord { setting, cutoff, users, metrics } = self;
        Ok(store::EvalRecord { recorded_at: String::new(), setting, cutoff, users, metrics })
    }
}

impl EvalRecord {
    pub fn parse(args: &[&[u8]]) -> ParseResult<EvalRecord> {
        let [t, v, json] = args else { return Err(wrong_args("evalrecord")) };
        let version = u64::try_from(parse_int(v)?).map_err(|_| super::not_integer())?;
        let raw: RawRecord =
            serde_json::from_slice(json).map_err(|e| format!("ERR evalrecord: the record is not valid: {e}"))?;
        let record = raw.validate().map_err(|e| format!("ERR evalrecord: {e}"))?;
        Ok(EvalRecord { table: String::from_utf8_lossy(t).into_owned(), version, record })
    }

    /// Writes and flushes the store: on the blocking pool, never on a serving thread.
    pub async fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        let store = Arc::clone(&daemon.store);
        let (table, version) = (self.table.clone(), self.version);
        let recorded =
            super::on_blocking_pool("evalrecord", move || store.record_eval(&table, version, self.record)).await;
        match recorded {
            Ok(_) => {
                tracing::info!(table = %self.table, version, "eval recorded");
                resp::simple(out, &format!("OK table {} version {version} eval recorded", self.table));
            }
            Err(e) => resp::error(out, &format!("ERR {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(setting: &str, ndcg: f64) -> RawRecord {
        RawRecord {
            setting: setting.into(),
            cutoff: "2021-01-01T00:00:00".into(),
            users: 3,
            metrics: BTreeMap::from([("ndcg@k".to_string(), ndcg)]),
        }
    }

    #[test]
    fn validate_names_the_field_a_record_cannot_be_kept_for() {
        assert_eq!(raw("k=10", 0.3).validate().unwrap().metrics["ndcg@k"], 0.3);
        assert_eq!(raw(" ", 0.3).validate().err(), Some("field `setting` is empty".into()));
        let nan = raw("k=10", f64::NAN).validate().err();
        assert_eq!(nan, Some("field `metrics.ndcg@k` is NaN, not a finite number".into()));
        let mut none = raw("k=10", 0.3);
        none.metrics.clear();
        assert_eq!(none.validate().err(), Some("field `metrics` has no metric".into()));
    }
}
