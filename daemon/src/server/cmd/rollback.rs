//! ROLLBACK table [version] (admin socket): makes a retained version current again, by
//! default the newest one older than the current. Answers `+OK table <t> version <v>`.
use std::sync::Arc;

use super::{ParseResult, parse_int, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Rollback {
    table: String,
    version: Option<u64>,
}

impl Rollback {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Rollback> {
        let version = |v: &[u8]| -> ParseResult<u64> { u64::try_from(parse_int(v)?).map_err(|_| super::not_integer()) };
        match args {
            [t] => Ok(Rollback { table: String::from_utf8_lossy(t).into_owned(), version: None }),
            [t, v] => Ok(Rollback { table: String::from_utf8_lossy(t).into_owned(), version: Some(version(v)?) }),
            _ => Err(wrong_args("rollback")),
        }
    }

    /// Writes and flushes the store: on the blocking pool, never on a serving thread.
    pub async fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        let (store, table, version) = (Arc::clone(&daemon.store), self.table.clone(), self.version);
        let rolled = super::on_blocking_pool("rollback", move || store.rollback(&table, version)).await;
        match rolled {
            Ok(info) => {
                tracing::info!(table = %self.table, version = info.version, "rolled back");
                resp::simple(
                    out,
                    &format!("OK table {} version {} (published {})", self.table, info.version, info.published_at),
                );
            }
            Err(e) => resp::error(out, &format!("ERR {e}")),
        }
    }
}
