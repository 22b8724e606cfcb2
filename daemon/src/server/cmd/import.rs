//! IMPORT table dir [dir ...] (admin socket): publishes the parts `recd run --export` wrote
//! for the table as one new version, or refuses the set with the reason and publishes
//! nothing. Answers `+OK table <t> version <v>: <users> users, <rows> rows from <n> parts`.
use std::path::PathBuf;
use std::sync::Arc;

use super::{ParseResult, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Import {
    table: String,
    dirs: Vec<PathBuf>,
}

impl Import {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Import> {
        match args {
            [table, dirs @ ..] if !dirs.is_empty() => Ok(Import {
                table: String::from_utf8_lossy(table).into_owned(),
                dirs: dirs.iter().map(|d| PathBuf::from(String::from_utf8_lossy(d).into_owned())).collect(),
            }),
            _ => Err(wrong_args("import")),
        }
    }

    pub async fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        match daemon.import(&self.table, self.dirs).await {
            Ok(imported) if imported.version.held => {
                let v = &imported.version;
                let why = v.gate.as_ref().map(|g| g.failed.join("; ")).unwrap_or_default();
                resp::error(
                    out,
                    &format!("ERR imported as table {} version {}, held by its gate: {why}", self.table, v.version),
                );
            }
            Ok(imported) => {
                let v = &imported.version;
                let text = format!(
                    "OK table {} version {}: {} users, {} rows from {} parts (job {})",
                    self.table, v.version, v.users, v.rows, imported.parts, imported.job
                );
                resp::simple(out, &text);
            }
            Err(e) => resp::error(out, &format!("ERR {e}")),
        }
    }
}
