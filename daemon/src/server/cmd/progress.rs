//! PROGRESS job (admin socket): `[done, total]` of the job's running run as its plugin last
//! reported it, or a null reply when none is running or none was reported. `recd run`
//! polls it to draw its progress bar.
use std::sync::Arc;

use super::{ParseResult, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Progress(String);

impl Progress {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Progress> {
        match args {
            [job] => Ok(Progress(String::from_utf8_lossy(job).into_owned())),
            _ => Err(wrong_args("progress")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        match daemon.progress(&self.0) {
            Some((done, total)) => {
                resp::array_len(out, 2);
                resp::integer(out, done as i64);
                resp::integer(out, total as i64);
            }
            None => out.null(),
        }
    }
}
