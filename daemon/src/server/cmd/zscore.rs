//! ZSCORE key member
use std::sync::Arc;

use super::{ParseResult, with_list, wrong_args};
use crate::daemon::Daemon;
use crate::server::resp::Reply;

pub struct ZScore {
    key: Vec<u8>,
    member: Vec<u8>,
}

impl ZScore {
    pub fn parse(args: &[Vec<u8>]) -> ParseResult<ZScore> {
        match args {
            [k, m] => Ok(ZScore { key: k.clone(), member: m.clone() }),
            _ => Err(wrong_args("zscore")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_list(daemon, &self.key, out, |list, out| match list.iter().find(|(m, _)| *m == self.member.as_slice()) {
            Some((_, score)) => out.double(*score),
            None => out.null(),
        });
    }
}
