//! ZSCORE key member
use std::sync::Arc;

use super::{ParseResult, with_list, wrong_args};
use crate::daemon::Daemon;
use crate::resp::Reply;

pub struct ZScore<'a> {
    key: &'a [u8],
    member: &'a [u8],
}

impl<'a> ZScore<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<ZScore<'a>> {
        match args {
            [k, m] => Ok(ZScore { key: k, member: m }),
            _ => Err(wrong_args("zscore")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_list(daemon, self.key, out, |list, out| match list.iter().find(|(m, _)| *m == self.member) {
            Some((_, score)) => out.double(*score),
            None => out.null(),
        });
    }
}
