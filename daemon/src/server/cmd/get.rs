//! GET key: the user's value as JSON. A list, best first:
//! `[{"item":"85123A","score":0.53},...]`; a hash, as an object whose numeric values are
//! JSON numbers: `{"probability":0.81,"tier":"high"}`.
//! (Redis would answer WRONGTYPE; recd offers both views of one value.)
//!
//! GET key WITHSOURCE (recd extension):
//! `{"source":"cold-start:__default__","fallback":true,"value":[...]}`, the key that
//! answered (the table's own, or a fallback's user or default) and the value; null when
//! nothing answers.
use std::sync::Arc;

use super::{ParseResult, Snapshot, Stored, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};
use crate::store::{decode_hash, decode_list, stored_list_json, write_list_json};

pub struct Get<'a> {
    key: &'a [u8],
    with_source: bool,
}

impl<'a> Get<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<Get<'a>> {
        match args {
            [k] => Ok(Get { key: k, with_source: false }),
            [k, option] if option.eq_ignore_ascii_case(b"withsource") => Ok(Get { key: k, with_source: true }),
            // Anything else is what Redis says of a GET with more than a key.
            _ => Err(wrong_args("get")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        if !self.with_source {
            return write_json(super::lookup(daemon, self.key), out);
        }
        match Snapshot::new(daemon).get_sourced(self.key) {
            None => out.null(),
            Some((stored, source, fallback)) => {
                let mut json = b"{\"source\":".to_vec();
                json.extend_from_slice(serde_json::to_string(&source).expect("json string").as_bytes());
                json.extend_from_slice(if fallback {
                    b",\"fallback\":true,\"value\":"
                } else {
                    b",\"fallback\":false,\"value\":"
                });
                json.extend_from_slice(&json_of(&stored));
                json.push(b'}');
                resp::bulk(out, &json);
            }
        }
    }
}

/// The JSON of a stored value, as GET answers it.
fn json_of(stored: &Stored) -> Vec<u8> {
    match stored {
        Stored::List(bytes) => match stored_list_json(bytes) {
            Some(json) => json.to_vec(),
            None => {
                let mut json = Vec::new();
                write_list_json(&decode_list(bytes), &mut json);
                json
            }
        },
        Stored::Hash(bytes) => hash_json(&decode_hash(bytes)),
    }
}

/// Writes the JSON bulk for a stored value, or a null bulk when there is none.
pub fn write_json(stored: Option<Stored>, out: &mut Reply) {
    match stored {
        None => out.null(),
        Some(Stored::List(bytes)) => match stored_list_json(&bytes) {
            Some(json) => {
                let at = bytes.len() - json.len();
                out.bulk_stored(&bytes, at..bytes.len());
            }
            None => {
                let mut json = Vec::new();
                write_list_json(&decode_list(&bytes), &mut json);
                resp::bulk(out, &json);
            }
        },
        Some(Stored::Hash(bytes)) => resp::bulk(out, &hash_json(&decode_hash(&bytes))),
    }
}

/// Fields in stored order; a value that reads as a JSON number is written as one,
/// anything else as a string.
fn hash_json(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + fields.len() * 24);
    out.push(b'{');
    for (i, (field, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let name = serde_json::to_string(&String::from_utf8_lossy(field)).expect("json string");
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let text = String::from_utf8_lossy(value);
        match serde_json::from_str::<serde_json::Number>(&text) {
            Ok(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Err(_) => out.extend_from_slice(serde_json::to_string(&text).expect("json string").as_bytes()),
        }
    }
    out.push(b'}');
    out
}
