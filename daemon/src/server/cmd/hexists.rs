//! HEXISTS key field: 1 if the hash has the field, else 0.
use std::sync::Arc;

use super::{ParseResult, with_hash, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct HExists<'a> {
    key: &'a [u8],
    field: &'a [u8],
}

impl<'a> HExists<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<HExists<'a>> {
        match args {
            [k, f] => Ok(HExists { key: k, field: f }),
            _ => Err(wrong_args("hexists")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_hash(daemon, self.key, out, |fields, out| {
            resp::integer(out, i64::from(fields.iter().any(|(f, _)| *f == self.field)))
        });
    }
}
