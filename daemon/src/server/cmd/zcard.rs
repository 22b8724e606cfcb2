//! ZCARD key: the count the stored list starts with, O(1) as in Redis.
use std::sync::Arc;

use super::{ParseResult, with_list_value, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};
use crate::store::ListEntries;

pub struct ZCard<'a>(&'a [u8]);

impl<'a> ZCard<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<ZCard<'a>> {
        match args {
            [k] => Ok(ZCard(k)),
            _ => Err(wrong_args("zcard")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_list_value(daemon, self.0, out, |list, out| resp::integer(out, ListEntries::new(list).remaining() as i64));
    }
}
