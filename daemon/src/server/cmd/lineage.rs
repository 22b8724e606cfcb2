//! LINEAGE table [version] (admin socket): one version of a table (default: the current
//! one) as JSON: its counts, checksum, gate results and lineage (plugin build, model and
//! registry versions, each input's file, size, SHA-256 and rows or table version, the
//! params' hash, the recd that made it).
use std::sync::Arc;

use super::{ParseResult, parse_int, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Lineage {
    table: String,
    version: Option<u64>,
}

impl Lineage {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Lineage> {
        let text = |a: &[u8]| String::from_utf8_lossy(a).into_owned();
        let version = |v: &[u8]| -> ParseResult<u64> { u64::try_from(parse_int(v)?).map_err(|_| super::not_integer()) };
        match args {
            [t] => Ok(Lineage { table: text(t), version: None }),
            [t, v] => Ok(Lineage { table: text(t), version: Some(version(v)?) }),
            _ => Err(wrong_args("lineage")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        let tables = match daemon.store.tables() {
            Ok(t) => t,
            Err(e) => return resp::error(out, &format!("ERR {e}")),
        };
        let Some((_, meta)) = tables.into_iter().find(|(name, _)| *name == self.table) else {
            return resp::error(out, &format!("ERR no table `{}`", self.table));
        };
        let want = self.version.unwrap_or(meta.current);
        match meta.versions.iter().find(|v| v.version == want) {
            Some(v) => resp::bulk(out, &serde_json::to_vec_pretty(v).expect("a version serialises")),
            None => resp::error(
                out,
                &format!(
                    "ERR table `{}` keeps no version {want} (retained: {})",
                    self.table,
                    crate::store::retained_list(&meta)
                ),
            ),
        }
    }
}
