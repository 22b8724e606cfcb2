//! INFO [section]: server facts and one line per table with its current version.
use std::fmt::Write as _;
use std::sync::Arc;

use super::ParseResult;
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

/// The Redis version whose read commands recd follows; some clients read it.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

pub struct Info;

impl Info {
    pub fn parse(_args: &[&[u8]]) -> ParseResult<Info> {
        Ok(Info)
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        let mut s = String::new();
        let _ = write!(
            s,
            "# Server\r\nredis_version:{REDIS_COMPAT_VERSION}\r\nrecd_version:{}\r\nredis_mode:standalone\r\nprocess_id:{}\r\n\r\n# Tables\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        );
        if let Ok(tables) = daemon.store.tables() {
            for (name, meta) in tables {
                let cur = meta.versions.iter().find(|v| v.version == meta.current);
                let versions: Vec<String> = meta.versions.iter().map(|v| v.version.to_string()).collect();
                let _ = write!(
                    s,
                    "table_{name}:version={},users={},rows={},published_at={},retained={}\r\n",
                    meta.current,
                    cur.map(|v| v.users).unwrap_or(0),
                    cur.map(|v| v.rows).unwrap_or(0),
                    cur.map(|v| v.published_at.as_str()).unwrap_or(""),
                    versions.join("|")
                );
            }
        }
        s.push_str("\r\n# Stats\r\n");
        // Sums and counts only: the buckets are for Prometheus, dozens of lines each.
        let text = daemon.metrics.render(&daemon.store);
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.contains("_bucket{")) {
            let _ = write!(s, "{line}\r\n");
        }
        resp::bulk(out, s.as_bytes());
    }
}
