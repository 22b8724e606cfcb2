//! PROMOTE table version (admin socket): makes a retained version current, a held one
//! (kept by a publish gate) included, which is then no longer held. The switch is the one
//! `ROLLBACK` makes. Answers `+OK table <t> version <v> promoted (published ...)`.
use std::sync::Arc;

use super::{ParseResult, parse_int, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Promote {
    table: String,
    version: u64,
}

impl Promote {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Promote> {
        let [t, v] = args else { return Err(wrong_args("promote")) };
        let version = u64::try_from(parse_int(v)?).map_err(|_| super::not_integer())?;
        Ok(Promote { table: String::from_utf8_lossy(t).into_owned(), version })
    }

    /// Writes and flushes the store: on the blocking pool, never on a serving thread.
    pub async fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        let (store, table, version) = (Arc::clone(&daemon.store), self.table.clone(), self.version);
        let promoted = super::on_blocking_pool("promote", move || store.rollback(&table, Some(version))).await;
        match promoted {
            Ok(info) => {
                tracing::info!(table = %self.table, version = info.version, "promoted");
                let line = format!(
                    "OK table {} version {} promoted (published {})",
                    self.table, info.version, info.published_at
                );
                resp::simple(out, &line);
            }
            Err(e) => resp::error(out, &format!("ERR {e}")),
        }
    }
}
