//! ECHO message
use super::{ParseResult, wrong_args};
use crate::server::resp::{self, Reply};

pub struct Echo(Vec<u8>);

impl Echo {
    pub fn parse(args: &[Vec<u8>]) -> ParseResult<Echo> {
        match args {
            [m] => Ok(Echo(m.clone())),
            _ => Err(wrong_args("echo")),
        }
    }

    pub fn apply(self, out: &mut Reply) {
        resp::bulk(out, &self.0);
    }
}
