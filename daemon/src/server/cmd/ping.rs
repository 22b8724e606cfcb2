//! PING [message]
use super::{ParseResult, wrong_args};
use crate::resp::{self, Reply};

pub struct Ping<'a>(Option<&'a [u8]>);

impl<'a> Ping<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<Ping<'a>> {
        match args {
            [] => Ok(Ping(None)),
            [m] => Ok(Ping(Some(*m))),
            _ => Err(wrong_args("ping")),
        }
    }

    pub fn apply(self, out: &mut Reply) {
        match self.0 {
            None => resp::simple(out, "PONG"),
            Some(m) => resp::bulk(out, m),
        }
    }
}
