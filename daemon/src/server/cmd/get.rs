//! GET key: the user's list as JSON, best first: `[{"item":"85123A","score":0.53},...]`.
//! (Redis would answer WRONGTYPE for a sorted set; recd offers both views of one list.)
use std::sync::Arc;

use super::{ParseResult, wrong_args};
use crate::daemon::Daemon;
use crate::server::resp;
use crate::store::decode_list;

pub struct Get(Vec<u8>);

impl Get {
    pub fn parse(args: &[Vec<u8>]) -> ParseResult<Get> {
        match args {
            [k] => Ok(Get(k.clone())),
            _ => Err(wrong_args("get")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Vec<u8>) {
        write_json(super::lookup(daemon, &self.0), out);
    }
}

/// Writes the JSON bulk for a stored list, or a null bulk when there is none.
pub fn write_json(stored: Option<sled::IVec>, out: &mut Vec<u8>) {
    match stored {
        None => resp::null(out),
        Some(bytes) => resp::bulk(out, &list_json(&decode_list(&bytes))),
    }
}

/// Scores are written in their shortest f32 form, the same text ZSCORE gives.
fn list_json(list: &[(&[u8], f32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + list.len() * 40);
    out.push(b'[');
    for (i, (member, score)) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"item\":");
        let item = serde_json::to_string(&String::from_utf8_lossy(member)).expect("json string");
        out.extend_from_slice(item.as_bytes());
        out.extend_from_slice(b",\"score\":");
        out.extend_from_slice(resp::format_score(*score).as_bytes());
        out.push(b'}');
    }
    out.push(b']');
    out
}
