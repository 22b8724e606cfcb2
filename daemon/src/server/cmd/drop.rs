//! DROP table (admin socket): removes a table no job publishes any more, with every
//! version it keeps; readers stop seeing it at once. Refused while a job publishes the
//! table, another job falls back to it, or an experiment serves it. Answers
//! `+OK table <t> dropped (<n> versions)`.
use std::sync::Arc;

use super::{ParseResult, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Drop {
    table: String,
}

impl Drop {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Drop> {
        let [t] = args else { return Err(wrong_args("drop")) };
        Ok(Drop { table: String::from_utf8_lossy(t).into_owned() })
    }

    /// Removes the table's meta entry and syncs (its trees go to the `recd-retire` thread):
    /// on the blocking pool.
    pub async fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        if let Err(why) = daemon.table_in_use(&self.table) {
            resp::error(out, &format!("ERR table `{}` {why}", self.table));
            return;
        }
        let (store, table) = (Arc::clone(&daemon.store), self.table.clone());
        let dropped = super::on_blocking_pool("drop", move || store.drop_table(&table)).await;
        match dropped {
            Ok(meta) => {
                daemon.metrics.forget_table(&self.table);
                tracing::info!(table = %self.table, versions = meta.versions.len(), "table dropped");
                resp::simple(out, &format!("OK table {} dropped ({} versions)", self.table, meta.versions.len()));
            }
            Err(e) => resp::error(out, &format!("ERR {e}")),
        }
    }
}
