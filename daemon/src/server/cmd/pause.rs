//! PAUSE job / RESUME job (admin socket): stop or restart scheduled and chained runs of a
//! job; kept across restarts. A manual RUN still works while paused.
use std::sync::Arc;

use super::{ParseResult, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Pause {
    job: String,
    paused: bool,
}

impl Pause {
    pub fn parse(args: &[&[u8]], paused: bool) -> ParseResult<Pause> {
        match args {
            [job] => Ok(Pause { job: String::from_utf8_lossy(job).into_owned(), paused }),
            _ => Err(wrong_args(if paused { "pause" } else { "resume" })),
        }
    }

    /// Stored and synced: on the blocking pool.
    pub async fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        let (d, paused) = (Arc::clone(daemon), self.paused);
        let set = tokio::task::spawn_blocking(move || d.set_paused(&self.job, paused))
            .await
            .unwrap_or_else(|e| Err(format!("pause task failed: {e}")));
        match set {
            Ok(()) => resp::simple(out, if paused { "OK paused" } else { "OK resumed" }),
            Err(e) => resp::error(out, &format!("ERR {e}")),
        }
    }
}
