//! ECHO message
use super::{ParseResult, wrong_args};
use crate::resp::{self, Reply};

pub struct Echo<'a>(&'a [u8]);

impl<'a> Echo<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<Echo<'a>> {
        match args {
            [m] => Ok(Echo(m)),
            _ => Err(wrong_args("echo")),
        }
    }

    pub fn apply(self, out: &mut Reply) {
        resp::bulk(out, self.0);
    }
}
