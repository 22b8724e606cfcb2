//! MGET key [key ...]: GET for each key.
use std::sync::Arc;

use super::{ParseResult, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub struct MGet<'a>(Vec<&'a [u8]>);

impl<'a> MGet<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<MGet<'a>> {
        if args.is_empty() {
            return Err(wrong_args("mget"));
        }
        Ok(MGet(args.to_vec()))
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        let mut snapshot = super::Snapshot::new(daemon);
        resp::array_len(out, self.0.len());
        for key in &self.0 {
            super::get::write_json(snapshot.get(key), out);
        }
    }
}
