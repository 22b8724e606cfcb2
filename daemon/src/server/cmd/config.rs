//! CONFIG GET parameter [parameter ...]: the few settings clients and tools ask a server
//! for at start-up (redis-benchmark asks for `save` and `appendonly`), answered as Redis
//! would for a server that never writes to disk. `*` lists them all. Settings are changed
//! in recd.toml, never over the socket.
use std::sync::Arc;

use super::{ParseResult, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

/// The parameters asked for, lower-cased.
pub struct ConfigGet(Vec<Vec<u8>>);

impl ConfigGet {
    pub fn parse(args: &[&[u8]]) -> ParseResult<ConfigGet> {
        match args {
            [sub, params @ ..] if sub.eq_ignore_ascii_case(b"get") && !params.is_empty() => {
                Ok(ConfigGet(params.iter().map(|p| p.to_ascii_lowercase()).collect()))
            }
            [sub, ..] if sub.eq_ignore_ascii_case(b"get") => Err(wrong_args("config|get")),
            [sub, ..] => Err(format!(
                "ERR CONFIG {} is not supported: recd is configured in recd.toml",
                String::from_utf8_lossy(sub).to_ascii_uppercase()
            )),
            [] => Err(wrong_args("config")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        let limits = daemon.config.limits;
        let settings = [
            ("save", String::new()),
            ("appendonly", "no".to_string()),
            ("databases", "1".to_string()),
            ("maxclients", limits.max_clients.to_string()),
            ("timeout", limits.idle_timeout.map_or(0, |d| d.as_secs()).to_string()),
            ("proto-max-bulk-len", limits.max_request_bytes.to_string()),
        ];
        let wanted: Vec<&(&str, String)> =
            settings.iter().filter(|(name, _)| self.0.iter().any(|p| p == b"*" || p == name.as_bytes())).collect();
        out.map_len(wanted.len());
        for (name, value) in wanted {
            resp::bulk(out, name.as_bytes());
            resp::bulk(out, value.as_bytes());
        }
    }
}
