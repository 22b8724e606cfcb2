//! GET key: the user's value as JSON. A list, best first:
//! `[{"item":"85123A","score":0.53},...]`; a hash, as an object whose numeric values are
//! JSON numbers: `{"probability":0.81,"tier":"high"}`.
//! (Redis would answer WRONGTYPE; recd offers both views of one value.)
use std::sync::Arc;

use super::Stored;
use super::{ParseResult, wrong_args};
use crate::daemon::Daemon;
use crate::resp::{self, Reply};
use crate::store::{decode_hash, decode_list, stored_list_json, write_list_json};

pub struct Get<'a>(&'a [u8]);

impl<'a> Get<'a> {
    pub fn parse(args: &[&'a [u8]]) -> ParseResult<Get<'a>> {
        match args {
            [k] => Ok(Get(k)),
            _ => Err(wrong_args("get")),
        }
    }

    pub fn apply(self, daemon: &Arc<Daemon>, out: &mut Reply) {
        write_json(super::lookup(daemon, self.0), out);
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
