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

/// Fields in stored order; a value that is a JSON number, exactly as stored, is written
/// as one (its own text: `0.10` stays `0.10`, and 23 digits keep all of them), anything
/// else as a string.
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
        if is_json_number(value) {
            out.extend_from_slice(value);
        } else {
            let text = String::from_utf8_lossy(value);
            out.extend_from_slice(serde_json::to_string(&text).expect("json string").as_bytes());
        }
    }
    out.push(b'}');
    out
}

/// Whether `text` is a number by JSON's grammar (RFC 8259), nothing around it:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(text: &[u8]) -> bool {
    fn digits(text: &[u8]) -> usize {
        text.iter().take_while(|b| b.is_ascii_digit()).count()
    }
    let mut at = usize::from(text.first() == Some(&b'-'));
    match text.get(at) {
        Some(b'0') => at += 1,
        Some(b'1'..=b'9') => at += digits(&text[at..]),
        _ => return false,
    }
    if text.get(at) == Some(&b'.') {
        let n = digits(&text[at + 1..]);
        if n == 0 {
            return false;
        }
        at += 1 + n;
    }
    if matches!(text.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(text.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let n = digits(&text[at..]);
        if n == 0 {
            return false;
        }
        at += n;
    }
    at == text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_values_that_are_json_numbers_are_written_as_stored_and_others_as_strings() {
        let numbers = ["0", "-0", "12", "0.10", "1E5", "-2.5e-3", "12345678901234567890123"];
        let strings = ["", "-", "01", "1.", ".5", "1e", "1e+", " 12 ", "12 ", "+1", "0x10", "NaN", "1.5.2", "--1"];
        for n in numbers {
            assert!(is_json_number(n.as_bytes()), "{n}");
        }
        for s in strings {
            assert!(!is_json_number(s.as_bytes()), "{s:?}");
        }
        let fields: Vec<(&[u8], &[u8])> =
            vec![(b"score", b"0.10"), (b"big", b"12345678901234567890123"), (b"seg", b" 12 ")];
        let json = String::from_utf8(hash_json(&fields)).unwrap();
        assert_eq!(json, r#"{"score":0.10,"big":12345678901234567890123,"seg":" 12 "}"#);
        // What a JSON parser makes of it: the same values.
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["seg"], " 12 ");
    }
}
