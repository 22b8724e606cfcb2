//! ZREVRANGE key start stop [WITHSCORES]: by rank, best first. Options are read as Redis
//! reads ZRANGE's with the direction set: WITHSCORES (any number of times), and LIMIT with
//! a count of -1 (no limit).
use super::ParseResult;
use super::zrange::ZRange;

pub fn parse<'a>(args: &[&'a [u8]]) -> ParseResult<ZRange<'a>> {
    ZRange::parse_options(args, true)
}
