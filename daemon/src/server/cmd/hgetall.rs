//! HGETALL key: the fields and values in stored order: a map in RESP3, a flat array
//! (field, value, field, value...) in RESP2.
use std::sync::Arc;

use super::{ParseResult, with_hash, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct HGetAll<'a>(&'a [u8]);

impl<'a> HGetAll<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<HGetAll<'a>> {
        match args {
            [k] => Ok(HGetAll(k)),
            _ => Err(wrong_args("hgetall")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_hash(daemon, self.0, out, |fields, out| {
            out.map_len(fields.len());
            for (field, value) in fields {
                resp::bulk(out, field);
                resp::bulk(out, value);
            }
        });
    }
}
