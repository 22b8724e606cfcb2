//! COMMAND [COUNT | DOCS ... | INFO ...]: enough for redis-cli and client libraries,
//! which probe it at start-up and cope with an empty answer.
use crate::resp::{self, Reply};

use super::ParseResult;

pub enum CommandCmd {
    Count,
    Info(usize),
    Empty,
}

impl CommandCmd {
    pub fn parse(args: &[&[u8]]) -> ParseResult<CommandCmd> {
        Ok(match args.first().map(|a| a.to_ascii_lowercase()) {
            Some(sub) if sub == b"count" => CommandCmd::Count,
            Some(sub) if sub == b"info" => CommandCmd::Info(args.len() - 1),
            _ => CommandCmd::Empty,
        })
    }

    pub fn apply(self, out: &mut Reply) {
        match self {
            CommandCmd::Count => resp::integer(out, 0),
            CommandCmd::Info(n) => {
                resp::array_len(out, n);
                (0..n).for_each(|_| out.null());
            }
            CommandCmd::Empty => resp::array_len(out, 0),
        }
    }
}
