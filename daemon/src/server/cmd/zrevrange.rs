//! ZREVRANGE key start stop [WITHSCORES]: by rank, best first.
use super::zrange::ZRange;
use super::{ParseResult, parse_int, wrong_args};

pub fn parse<'a>(args: &[&'a [u8]]) -> ParseResult<ZRange<'a>> {
    let (key, start, stop, withscores) = match args {
        [k, a, b] => (k, a, b, false),
        [k, a, b, w] if w.eq_ignore_ascii_case(b"withscores") => (k, a, b, true),
        [_, _, _, _] => return Err("ERR syntax error".into()),
        _ => return Err(wrong_args("zrevrange")),
    };
    Ok(ZRange { key, start: parse_int(start)?, stop: parse_int(stop)?, rev: true, withscores })
}
