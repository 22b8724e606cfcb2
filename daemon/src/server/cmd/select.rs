//! SELECT index: recd has one database, 0.
use super::{ParseResult, parse_int, wrong_args};
use crate::resp::{self, Reply};

pub struct Select;

impl Select {
    pub fn parse(args: &[&[u8]]) -> ParseResult<Select> {
        match args {
            [db] if parse_int(db)? == 0 => Ok(Select),
            [_] => Err("ERR DB index is out of range".into()),
            _ => Err(wrong_args("select")),
        }
    }

    pub fn apply(self, out: &mut Reply) {
        resp::simple(out, "OK");
    }
}
