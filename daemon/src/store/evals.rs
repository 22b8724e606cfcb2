//! `recd eval --record`: the numbers of an evaluation kept with the version it read, for
//! the dashboard's quality charts and `recd lineage`. A version keeps its latest record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Handles, Store, StoreError, VersionInfo, retained_list, table_meta};

/// One evaluation of one version, as `recd eval` measured it.
/// Stored data: unknown fields are kept out of the way, not refused, so a store a later
/// recd wrote still opens (the admin socket's `EVALRECORD` refuses them in a request).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    /// When the daemon stored it (RFC 3339, ms); set by the daemon, not the caller.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recorded_at: String,
    /// What was measured, in words ("k=10, all users, ..."): records with the same setting
    /// compare across versions, others do not.
    pub setting: String,
    /// The held-out truth's cut-off (`2011-11-01T00:00:00`).
    pub cutoff: String,
    /// Users counted.
    pub users: u64,
    /// Metric name (`ndcg@k`, `roc_auc`, ...) to value; only the ones measured.
    pub metrics: BTreeMap<String, f64>,
}

impl Store {
    /// Keeps `record` with `table`'s retained `version` (replacing an earlier record), in
    /// one flushed meta write; returns the version with it.
    pub fn record_eval(&self, table: &str, version: u64, mut record: EvalRecord) -> Result<VersionInfo, StoreError> {
        record.recorded_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.writing(|h| self.record_eval_in(h, table, version, record))
    }

    fn record_eval_in(
        &self,
        h: &Handles,
        table: &str,
        version: u64,
        record: EvalRecord,
    ) -> Result<VersionInfo, StoreError> {
        // The publish lock: a publish or retention rewriting the meta at the same time
        // would drop this record or bring back a version it dropped.
        let _guard = self.publish_lock.lock().expect("publish lock");
        let mut meta = table_meta(h, table)?.ok_or_else(|| StoreError::NoTable(table.to_owned()))?;
        let Some(info) = meta.versions.iter_mut().find(|v| v.version == version) else {
            let retained = retained_list(&meta);
            return Err(StoreError::NotRetained { table: table.to_owned(), version: version.to_string(), retained });
        };
        info.eval = Some(record);
        let info = info.clone();
        self.write_meta(h, table, Some(&meta))?;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Retention, TableKind};

    fn record(setting: &str, ndcg: f64) -> EvalRecord {
        EvalRecord {
            recorded_at: String::new(),
            setting: setting.into(),
            cutoff: "2021-01-01T00:00:00".into(),
            users: 3,
            metrics: BTreeMap::from([("ndcg@k".to_string(), ndcg)]),
        }
    }

    fn publish(store: &Store, round: u64) {
        let mut staged = store.stage("t", "job", round, TableKind::Lists).unwrap();
        staged.put_user("u", &mut [("i", 1.0)]).unwrap();
        store.publish(staged).unwrap();
    }

    fn evals(store: &Store) -> Vec<(u64, Option<f64>)> {
        let (_, meta) = store.tables().unwrap().remove(0);
        meta.versions.iter().map(|v| (v.version, v.eval.as_ref().map(|e| e.metrics["ndcg@k"]))).collect()
    }

    #[test]
    fn a_record_stays_with_its_version_through_publishes_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { count: 2, max_age: None };
        {
            let store = Store::open(dir.path(), retention).unwrap();
            publish(&store, 1);
            let info = store.record_eval("t", 1, record("k=10", 0.25)).unwrap();
            assert!(info.eval.as_ref().unwrap().recorded_at.ends_with('Z'), "the daemon dates it: {info:?}");
            // a second record of the same version replaces the first
            store.record_eval("t", 1, record("k=10", 0.5)).unwrap();
            publish(&store, 2);
            assert_eq!(evals(&store), vec![(1, Some(0.5)), (2, None)]);
            store.rollback("t", Some(1)).unwrap();
            store.rollback("t", Some(2)).unwrap();
            assert_eq!(evals(&store), vec![(1, Some(0.5)), (2, None)], "switching keeps records");
            let err = store.record_eval("t", 7, record("k=10", 0.1)).unwrap_err().to_string();
            assert_eq!(err, "table `t` keeps no version 7 (retained: 1, 2)");
            assert!(matches!(store.record_eval("nope", 1, record("k=10", 0.1)), Err(StoreError::NoTable(_))));
        }
        let store = Store::open(dir.path(), retention).unwrap();
        assert_eq!(evals(&store), vec![(1, Some(0.5)), (2, None)], "the record is durable");
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
        // retention drops version 1 and its record with it
        publish(&store, 3);
        assert_eq!(evals(&store), vec![(2, None), (3, None)]);
    }

    #[test]
    fn metadata_without_a_record_or_with_fields_unknown_here_still_reads() {
        let old = r#"{"version":1,"published_at":"2026-01-01T00:00:00Z","job":"j","run_id":1,"users":1,"rows":1,"checksum":7}"#;
        assert_eq!(serde_json::from_str::<VersionInfo>(old).unwrap().eval, None);
        let later = r#"{"setting":"k=10","cutoff":"c","users":1,"metrics":{"ndcg@k":0.5},"recorded_at":"t","new":1}"#;
        assert_eq!(serde_json::from_str::<EvalRecord>(later).unwrap().metrics["ndcg@k"], 0.5);
    }
}
