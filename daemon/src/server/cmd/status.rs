//! STATUS [JSON] (admin socket): tables with their versions, jobs, job file errors, as text;
//! with `JSON`, as one JSON object: each table's metadata (every retained version with its
//! gate results and lineage), each registry model's versions, each job's line, the job
//! file errors.
use std::sync::Arc;

use super::{ParseResult, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Status {
    json: bool,
}

impl Status {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Status> {
        match args {
            [] => Ok(Status { json: false }),
            [j] if j.eq_ignore_ascii_case(b"json") => Ok(Status { json: true }),
            _ => Err(wrong_args("status")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        if !self.json {
            return resp::bulk(out, daemon.status_text().as_bytes());
        }
        match daemon.status_json() {
            Ok(value) => resp::bulk(out, &serde_json::to_vec_pretty(&value).expect("status serialises")),
            Err(e) => resp::error(out, &format!("ERR {e}")),
        }
    }
}
