//! TYPE key: "zset" for a list, "hash" for a hash, "none" when absent.
use std::sync::Arc;

use super::{ParseResult, Stored, lookup, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct Type<'a>(&'a [u8]);

impl<'a> Type<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<Type<'a>> {
        match args {
            [k] => Ok(Type(k)),
            _ => Err(wrong_args("type")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        let name = match lookup(daemon, self.0) {
            Some(Stored::List(_)) => "zset",
            Some(Stored::Hash(_)) => "hash",
            None => "none",
        };
        resp::simple(out, name);
    }
}
