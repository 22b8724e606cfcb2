//! HLEN key: the number of fields.
use std::sync::Arc;

use super::{ParseResult, with_hash, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct HLen<'a>(&'a [u8]);

impl<'a> HLen<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<HLen<'a>> {
        match args {
            [k] => Ok(HLen(k)),
            _ => Err(wrong_args("hlen")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_hash(daemon, self.0, out, |fields, out| resp::integer(out, fields.len() as i64));
    }
}
