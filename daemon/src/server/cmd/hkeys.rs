//! HKEYS key / HVALS key: a hash's field names, or its values, in stored order.
use std::sync::Arc;

use super::{ParseResult, with_hash, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

#[derive(Clone, Copy)]
pub enum Part {
    Fields,
    Values,
}

pub struct HKeys<'a> {
    key: &'a [u8],
    part: Part,
}

impl<'a> HKeys<'a> {
    pub fn parse(args: &[&'a [u8]], part: Part) -> ParseResult<HKeys<'a>> {
        match args {
            [k] => Ok(HKeys { key: k, part }),
            _ => Err(wrong_args(match part {
                Part::Fields => "hkeys",
                Part::Values => "hvals",
            })),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_hash(daemon, self.key, out, |fields, out| {
            resp::array_len(out, fields.len());
            for (field, value) in fields {
                resp::bulk(out, if matches!(self.part, Part::Fields) { field } else { value });
            }
        });
    }
}
