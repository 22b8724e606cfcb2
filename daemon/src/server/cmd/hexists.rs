//! HEXISTS key field: 1 if the hash has the field, else 0.
use std::sync::Arc;

use super::{ParseResult, with_hash, wrong_args};
use crate::daemon::Daemon;
use crate::server::resp::{self, Reply};

pub struct HExists {
    key: Vec<u8>,
    field: Vec<u8>,
}

impl HExists {
    pub fn parse(args: &[Vec<u8>]) -> ParseResult<HExists> {
        match args {
            [k, f] => Ok(HExists { key: k.clone(), field: f.clone() }),
            _ => Err(wrong_args("hexists")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_hash(daemon, &self.key, out, |fields, out| {
            resp::integer(out, i64::from(fields.iter().any(|(f, _)| *f == self.field.as_slice())))
        });
    }
}
