//! ZCARD key
use std::sync::Arc;

use super::{ParseResult, with_list, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct ZCard<'a>(&'a [u8]);

impl<'a> ZCard<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<ZCard<'a>> {
        match args {
            [k] => Ok(ZCard(k)),
            _ => Err(wrong_args("zcard")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_list(daemon, self.0, out, |list, out| resp::integer(out, list.len() as i64));
    }
}
