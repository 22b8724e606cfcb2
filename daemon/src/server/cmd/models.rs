//! MODELS (admin socket): the model registry.
//! - `MODELS [name]`: each registry model's kept versions, newest first, with the current
//!   one marked: when and by which run it was published, the model file's SHA-256, its
//!   files, its training metrics, and the runs in the history that used it.
//! - `MODELS PROMOTE name version`: makes a kept version current (older or newer).
//! - `MODELS ROLLBACK name [version]`: by default the newest version older than the current
//!   that is not held.
//! - `MODELS DISCARD name version`: throws away a version its job's gate held.
//!
//! Answers text (a bulk string) or `+OK model <m> version <v> ...`.
use std::sync::Arc;

use super::{ParseResult, parse_int, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

enum Answer {
    Text(String),
    Done(String),
}

pub enum Models {
    List(Option<String>),
    SetCurrent { name: String, version: Option<u64> },
    Discard { name: String, version: u64 },
}

impl Models {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Models> {
        let parsed = Self::parse_args(args)?;
        // A model name is a folder name in the registry: nothing else may reach the disk.
        let name = match &parsed {
            Models::List(name) => name.as_deref(),
            Models::SetCurrent { name, .. } | Models::Discard { name, .. } => Some(name.as_str()),
        };
        match name {
            Some(n) if !crate::job::valid_name(n) => {
                Err(format!("ERR {n:?} is not a model name (letters, digits, '-' or '_')"))
            }
            _ => Ok(parsed),
        }
    }

    fn parse_args(args: &[&[u8]]) -> ParseResult<Models> {
        let text = |a: &[u8]| String::from_utf8_lossy(a).into_owned();
        let version = |v: &[u8]| -> ParseResult<u64> { u64::try_from(parse_int(v)?).map_err(|_| super::not_integer()) };
        let verb = args.first().map(|a| a.to_ascii_lowercase());
        match (verb.as_deref(), args) {
            (None, []) => Ok(Models::List(None)),
            (Some(b"promote"), [_, name, v]) => Ok(Models::SetCurrent { name: text(name), version: Some(version(v)?) }),
            (Some(b"rollback"), [_, name]) => Ok(Models::SetCurrent { name: text(name), version: None }),
            (Some(b"rollback"), [_, name, v]) => {
                Ok(Models::SetCurrent { name: text(name), version: Some(version(v)?) })
            }
            (Some(b"discard"), [_, name, v]) => Ok(Models::Discard { name: text(name), version: version(v)? }),
            (Some(b"promote" | b"rollback" | b"discard"), _) => Err(wrong_args("models")),
            (_, [name]) => Ok(Models::List(Some(text(name)))),
            _ => Err(wrong_args("models")),
        }
    }

    /// Reads and writes files (a promote syncs them): on the blocking pool.
    pub async fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        let d = Arc::clone(daemon);
        let outcome = tokio::task::spawn_blocking(move || match self {
            Models::List(name) => d.models_text(name.as_deref()).map(Answer::Text),
            Models::SetCurrent { name, version } => {
                let set = crate::models::set_current(&d.config.data_dir, &name, version).map_err(|e| e.to_string())?;
                tracing::info!(model = %name, version = set.version, "registry model version made current");
                Ok(Answer::Done(format!("OK model {name} version {} (published {})", set.version, set.published_at)))
            }
            Models::Discard { name, version } => {
                crate::models::discard(&d.config.data_dir, &name, version).map_err(|e| e.to_string())?;
                tracing::info!(model = %name, version, "held registry model version discarded");
                Ok(Answer::Done(format!("OK model {name} version {version} discarded")))
            }
        })
        .await
        .unwrap_or_else(|e| Err(format!("models task failed: {e}")));
        match outcome {
            Ok(Answer::Text(text)) => resp::bulk(out, text.as_bytes()),
            Ok(Answer::Done(line)) => resp::simple(out, &line),
            Err(e) => resp::error(out, &format!("ERR {e}")),
        }
    }
}
