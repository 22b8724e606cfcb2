//! PING [message]
use super::{ParseResult, wrong_args};
use crate::server::resp::{self, Reply};

pub struct Ping(Option<Vec<u8>>);

impl Ping {
    pub fn parse(args: &[Vec<u8>]) -> ParseResult<Ping> {
        match args {
            [] => Ok(Ping(None)),
            [m] => Ok(Ping(Some(m.clone()))),
            _ => Err(wrong_args("ping")),
        }
    }

    pub fn apply(self, out: &mut Reply) {
        match self.0 {
            None => resp::simple(out, "PONG"),
            Some(m) => resp::bulk(out, &m),
        }
    }
}
