//! HGETALL key: field, value, field, value... (RESP2's flat array), in stored order.
use std::sync::Arc;

use super::{ParseResult, with_hash, wrong_args};
use crate::daemon::Daemon;
use crate::server::resp;

pub struct HGetAll(Vec<u8>);

impl HGetAll {
    pub fn parse(args: &[Vec<u8>]) -> ParseResult<HGetAll> {
        match args {
            [k] => Ok(HGetAll(k.clone())),
            _ => Err(wrong_args("hgetall")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Vec<u8>) {
        with_hash(daemon, &self.0, out, |fields, out| {
            resp::array_len(out, 2 * fields.len());
            for (field, value) in fields {
                resp::bulk(out, field);
                resp::bulk(out, value);
            }
        });
    }
}
