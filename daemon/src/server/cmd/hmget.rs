//! HMGET key field [field ...]: one value (or null) per field asked.
use std::sync::Arc;

use super::{ParseResult, with_hash, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct HMGet<'a> {
    key: &'a [u8],
    fields: Vec<&'a [u8]>,
}

impl<'a> HMGet<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<HMGet<'a>> {
        match args {
            [k, fields @ ..] if !fields.is_empty() => Ok(HMGet { key: k, fields: fields.to_vec() }),
            _ => Err(wrong_args("hmget")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_hash(daemon, self.key, out, |stored, out| {
            resp::array_len(out, self.fields.len());
            for want in &self.fields {
                match stored.iter().find(|(f, _)| *f == *want) {
                    Some((_, value)) => resp::bulk(out, value),
                    None => out.null(),
                }
            }
        });
    }
}
