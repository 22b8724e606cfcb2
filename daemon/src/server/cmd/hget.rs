//! HGET key field
use std::sync::Arc;

use super::{ParseResult, with_hash, wrong_args};
use crate::daemon::Daemon;
use crate::server::resp::{self, Reply};

pub struct HGet {
    key: Vec<u8>,
    field: Vec<u8>,
}

impl HGet {
    pub fn parse(args: &[Vec<u8>]) -> ParseResult<HGet> {
        match args {
            [k, f] => Ok(HGet { key: k.clone(), field: f.clone() }),
            _ => Err(wrong_args("hget")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_hash(daemon, &self.key, out, |fields, out| {
            match fields.iter().find(|(f, _)| *f == self.field.as_slice()) {
                Some((_, value)) => resp::bulk(out, value),
                None => out.null(),
            }
        });
    }
}
