//! ZCARD key
use std::sync::Arc;

use super::{ParseResult, with_list, wrong_args};
use crate::daemon::Daemon;
use crate::server::resp::{self, Reply};

pub struct ZCard(Vec<u8>);

impl ZCard {
    pub fn parse(args: &[Vec<u8>]) -> ParseResult<ZCard> {
        match args {
            [k] => Ok(ZCard(k.clone())),
            _ => Err(wrong_args("zcard")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_list(daemon, &self.0, out, |list, out| resp::integer(out, list.len() as i64));
    }
}
