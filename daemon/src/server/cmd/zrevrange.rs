//! ZREVRANGE key start stop [WITHSCORES]: by rank, best first. Options are read as Redis
//! reads ZRANGE's with the direction set: WITHSCORES (any number of times) only.
use super::zrange::ZRange;
use super::{ParseResult, wrong_args};

pub fn parse<'a>(args: &[&'a [u8]]) -> ParseResult<ZRange<'a>> {
    if args.len() < 3 {
        return Err(wrong_args("zrevrange"));
    }
    ZRange::parse_options(args, true)
}
