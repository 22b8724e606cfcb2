//! DISCARD table version (admin socket): throws away a version a publish gate held; the
//! current version and any other retained one are refused. Answers
//! `+OK table <t> version <v> discarded`.
use std::sync::Arc;

use super::{ParseResult, parse_int, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Discard {
    table: String,
    version: u64,
}

impl Discard {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Discard> {
        let [t, v] = args else { return Err(wrong_args("discard")) };
        let version = u64::try_from(parse_int(v)?).map_err(|_| super::not_integer())?;
        Ok(Discard { table: String::from_utf8_lossy(t).into_owned(), version })
    }

    /// Drops a tree and flushes: on the blocking pool.
    pub async fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        let (store, table, version) = (Arc::clone(&daemon.store), self.table.clone(), self.version);
        let discarded = super::on_blocking_pool("discard", move || store.discard_held(&table, version)).await;
        match discarded {
            Ok(info) => {
                tracing::info!(table = %self.table, version = info.version, "held version discarded");
                resp::simple(out, &format!("OK table {} version {} discarded", self.table, info.version));
            }
            Err(e) => resp::error(out, &format!("ERR {e}")),
        }
    }
}
