//! HISTORY job [n] (admin socket): the job's newest `n` runs (default 20), newest first,
//! as a JSON array of run records (run id, trigger, times, status, version, rows, error).
use std::sync::Arc;

use super::{ParseResult, parse_int, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct History {
    job: String,
    n: usize,
}

impl History {
    pub fn parse(args: &[&[u8]]) -> ParseResult<History> {
        let (job, n) = match args {
            [job] => (job, 20),
            [job, n] => (job, parse_int(n)?.clamp(1, crate::daemon::HISTORY_PER_JOB as i64) as usize),
            _ => return Err(wrong_args("history")),
        };
        Ok(History { job: String::from_utf8_lossy(job).into_owned(), n })
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        match daemon.history(&self.job, self.n) {
            Ok(runs) => resp::bulk(out, &serde_json::to_vec_pretty(&runs).expect("records serialise")),
            Err(e) => resp::error(out, &format!("ERR reading history: {e}")),
        }
    }
}
