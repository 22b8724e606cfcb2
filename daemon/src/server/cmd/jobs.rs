//! JOBS [n] (admin socket): each job with its next `n` fire times (default 3) in its zone.
use std::sync::Arc;

use super::{ParseResult, parse_int, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Jobs(usize);

impl Jobs {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Jobs> {
        match args {
            [] => Ok(Jobs(3)),
            [n] => Ok(Jobs(parse_int(n)?.clamp(0, 100) as usize)),
            _ => Err(wrong_args("jobs")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        resp::bulk(out, daemon.jobs_text(self.0).as_bytes());
    }
}
