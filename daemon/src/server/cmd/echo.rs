//! ECHO message
use super::{ParseResult, wrong_args};
use crate::server::resp;

pub struct Echo(Vec<u8>);

impl Echo {
    pub fn parse(args: &[Vec<u8>]) -> ParseResult<Echo> {
        match args {
            [m] => Ok(Echo(m.clone())),
            _ => Err(wrong_args("echo")),
        }
    }

    pub fn apply(self, out: &mut Vec<u8>) {
        resp::bulk(out, &self.0);
    }
}
