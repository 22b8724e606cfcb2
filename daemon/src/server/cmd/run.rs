//! RUN job (admin socket): runs the job now, waits, and answers with what was published.
use std::sync::Arc;

use super::{ParseResult, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Run(String);

impl Run {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Run> {
        match args {
            [job] => Ok(Run(String::from_utf8_lossy(job).into_owned())),
            _ => Err(wrong_args("run")),
        }
    }

    pub async fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        match daemon.run_job(&self.0).await {
            Ok(report) => resp::simple(out, &report.to_string()),
            Err(e) => resp::error(out, &format!("ERR {e}")),
        }
    }
}
