//! EXISTS key [key ...]: how many of the keys exist (repeats count again, as in Redis).
use std::sync::Arc;

use super::{ParseResult, Snapshot, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Exists<'a>(Vec<&'a [u8]>);

impl<'a> Exists<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<Exists<'a>> {
        if args.is_empty() {
            return Err(wrong_args("exists"));
        }
        Ok(Exists(args.to_vec()))
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        let mut snapshot = Snapshot::new(daemon);
        let n = self.0.iter().filter(|k| snapshot.get(k).is_some()).count();
        resp::integer(out, n as i64);
    }
}
