//! ZSCORE key member: the list is walked in place until the member; the bytes walked count
//! towards the connection's batch, so a pipeline of them on a huge list yields to the
//! thread's other connections as a long reply does.
use std::sync::Arc;

use super::{ParseResult, with_list_value, wrong_args};
use crate::daemon::Daemon;
use crate::resp::Reply;
use crate::store::ListEntries;

pub struct ZScore<'a> {
    key: &'a [u8],
    member: &'a [u8],
}

impl<'a> ZScore<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<ZScore<'a>> {
        match args {
            [k, m] => Ok(ZScore { key: k, member: m }),
            _ => Err(wrong_args("zscore")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        with_list_value(daemon, self.key, out, |list, out| {
            let mut entries = ListEntries::new(list);
            let found = entries.by_ref().find(|(m, _)| *m == self.member);
            out.read_more(entries.position());
            match found {
                Some((_, score)) => out.double(score),
                None => out.null(),
            }
        });
    }
}
