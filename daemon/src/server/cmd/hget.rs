//! HGET key field
use std::sync::Arc;

use super::{ParseResult, with_hash, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct HGet<'a> {
    key: &'a [u8],
    field: &'a [u8],
}

impl<'a> HGet<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<HGet<'a>> {
        match args {
            [k, f] => Ok(HGet { key: k, field: f }),
            _ => Err(wrong_args("hget")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_hash(daemon, self.key, out, |fields, out| match fields.iter().find(|(f, _)| *f == self.field) {
            Some((_, value)) => resp::bulk(out, value),
            None => out.null(),
        });
    }
}
