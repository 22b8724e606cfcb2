//! How a stored value is laid out: a list (sorted, with GET's JSON pre-encoded) or a
//! hash's fields, and the per-row hash a version's checksum sums.

/// Encodes a list best first: score descending, ties by member descending, which is the
/// order Redis's ZREVRANGE gives. Layout (little-endian): u32 count; per entry f32 score,
/// u16 length, member bytes. GET's JSON is not stored: it is about two thirds of a list's
/// bytes, and sled writes a value several times over while a version is written
/// (measured on the M workload: 228 MB written per run with it, 95 MB without, and the
/// whole job 0.45 s shorter). The read cache adds it when it keeps a value
/// ([`with_json`]), so a GET of a cached list is still one lookup and one copy.
pub fn encode_list<S: AsRef<str>>(list: &mut [(S, f32)]) -> Vec<u8> {
    list.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.as_ref().cmp(a.0.as_ref())));
    let len: usize = list.iter().map(|(m, _)| 6 + m.as_ref().len()).sum();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(list.len() as u32).to_le_bytes());
    for (member, score) in list.iter() {
        let member = member.as_ref();
        out.extend_from_slice(&score.to_le_bytes());
        out.extend_from_slice(&(member.len() as u16).to_le_bytes());
        out.extend_from_slice(member.as_bytes());
    }
    out
}

/// A stored list in the form it is served from: u32 count with [`HAS_JSON`] set, u32
/// offset of the JSON, the entries as stored, then the list as GET's JSON, found through
/// the offset without walking the entries. None when `bytes` carries its JSON already
/// (values format 2 wrote before the JSON left the store).
pub fn with_json(bytes: &[u8]) -> Option<Vec<u8>> {
    let word = u32::from_le_bytes(bytes.get(..4)?.try_into().expect("4 bytes"));
    if word & HAS_JSON != 0 {
        return None;
    }
    let mut reader = ListEntries::new(bytes);
    let entries: Vec<(&[u8], f32)> = reader.by_ref().collect();
    let stored = &bytes[4..reader.position()];
    let mut out = Vec::with_capacity(8 + 2 * stored.len() + entries.len() * 24);
    out.extend_from_slice(&(word | HAS_JSON).to_le_bytes());
    let json_at = u32::try_from(8 + stored.len()).ok()?;
    out.extend_from_slice(&json_at.to_le_bytes());
    out.extend_from_slice(stored);
    write_list_json(&entries, &mut out);
    Some(out)
}

/// A lower bound of a stored list's size once [`with_json`] adds its JSON: each entry's
/// JSON holds its member and more than the 6 bytes of score and length the entry takes.
pub fn served_list_len(stored: &[u8]) -> usize {
    2 * stored.len()
}

/// Marks, in a list's count word, a value that carries its JSON and the offset of it.
const HAS_JSON: u32 = 1 << 31;

/// Writes `[{"item":"85123A","score":0.53},...]`; scores in their shortest f32 form, the
/// same text ZSCORE gives.
pub fn write_list_json(list: &[(&[u8], f32)], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, (member, score)) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"item\":");
        // Written in place (this runs for every item a run publishes); ids are UTF-8 from
        // Arrow, the lossy path is for anything else.
        match std::str::from_utf8(member) {
            Ok(text) => serde_json::to_writer(&mut *out, text).expect("json string"),
            Err(_) => serde_json::to_writer(&mut *out, &String::from_utf8_lossy(member)).expect("json string"),
        }
        out.extend_from_slice(b",\"score\":");
        crate::resp::write_score(out, *score);
        out.push(b'}');
    }
    out.push(b']');
}

/// The entries of an encoded list, best first, read in place.
pub struct ListEntries<'a> {
    bytes: &'a [u8],
    at: usize,
    left: usize,
}

impl<'a> ListEntries<'a> {
    pub fn new(bytes: &'a [u8]) -> ListEntries<'a> {
        let word = bytes.get(..4).map_or(0, |n| u32::from_le_bytes(n.try_into().expect("4 bytes")));
        let at = if word & HAS_JSON != 0 { 8 } else { 4 };
        ListEntries { bytes, at, left: (word & !HAS_JSON) as usize }
    }

    /// Entries not yet read (the list's length, before the first `next`).
    pub fn remaining(&self) -> usize {
        self.left
    }

    /// Where the next entry starts, to [`ListEntries::resume`] from.
    pub fn position(&self) -> usize {
        self.at
    }

    /// The entries of `bytes` from byte `at` (a [`ListEntries::position`]), `left` of them.
    pub fn resume(bytes: &'a [u8], at: usize, left: usize) -> ListEntries<'a> {
        ListEntries { bytes, at, left }
    }
}

/// The list as GET's JSON when the value carries it, or None for a value written before
/// the JSON was added (or whose offset does not point at it).
pub fn stored_list_json(bytes: &[u8]) -> Option<&[u8]> {
    let word = u32::from_le_bytes(bytes.get(..4)?.try_into().expect("4 bytes"));
    if word & HAS_JSON == 0 {
        return None;
    }
    let at = bytes.get(4..8).map_or(0, |n| u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize);
    // A damaged offset (inside the header, past the end, not at a JSON array) gives
    // None, so GET builds the JSON from the entries instead of sending other bytes.
    bytes.get(at..).filter(|json| at >= 8 && json.first() == Some(&b'['))
}

impl<'a> Iterator for ListEntries<'a> {
    type Item = (&'a [u8], f32);

    fn next(&mut self) -> Option<(&'a [u8], f32)> {
        if self.left == 0 {
            return None;
        }
        let head = self.bytes.get(self.at..self.at + 6)?;
        let score = f32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let len = u16::from_le_bytes(head[4..6].try_into().expect("2 bytes")) as usize;
        let member = self.bytes.get(self.at + 6..self.at + 6 + len)?;
        self.at += 6 + len;
        self.left -= 1;
        Some((member, score))
    }
}

/// Decodes [`encode_list`]'s entries into (member, score) pairs, best first.
pub fn decode_list(bytes: &[u8]) -> Vec<(&[u8], f32)> {
    ListEntries::new(bytes).collect()
}

/// Encodes a user's hash in field order. Layout: u32 count, then per field u16 name
/// length, name bytes, u32 value length, value bytes (little-endian).
pub fn encode_hash(fields: &[(String, String)]) -> Vec<u8> {
    let len: usize = fields.iter().map(|(f, v)| 6 + f.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    for (field, value) in fields {
        out.extend_from_slice(&(field.len() as u16).to_le_bytes());
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Decodes [`encode_hash`]'s bytes into (field, value) pairs, in stored order.
pub fn decode_hash(bytes: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let Some(count) = bytes.get(..4) else { return out };
    let n = u32::from_le_bytes(count.try_into().expect("4 bytes")) as usize;
    let mut at = 4;
    while out.len() < n {
        let Some(name_len) = bytes.get(at..at + 2) else { break };
        let name_len = u16::from_le_bytes(name_len.try_into().expect("2 bytes")) as usize;
        let name_end = at + 2 + name_len;
        let Some(value_len) = bytes.get(name_end..name_end + 4) else { break };
        let value_len = u32::from_le_bytes(value_len.try_into().expect("4 bytes")) as usize;
        let value_end = name_end + 4 + value_len;
        if value_end > bytes.len() {
            break;
        }
        out.push((&bytes[at + 2..name_end], &bytes[name_end + 4..value_end]));
        at = value_end;
    }
    out
}

/// One stored row's contribution to a version's checksum.
pub(super) fn row_hash(user: &[u8], value: &[u8]) -> u64 {
    let mut h = crate::shard::Fnv64::new();
    h.write(user);
    h.write(&[0xff]);
    h.write(value);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_in_field_order() {
        let fields = vec![("tier".to_string(), "high".to_string()), ("p".to_string(), String::new())];
        let bytes = encode_hash(&fields);
        let decoded = decode_hash(&bytes);
        assert_eq!(decoded, vec![(&b"tier"[..], &b"high"[..]), (&b"p"[..], &b""[..])]);
        // a truncated value yields the complete fields only
        assert_eq!(decode_hash(&bytes[..bytes.len() - 3]).len(), 1);
    }

    #[test]
    fn lists_round_trip_in_redis_order() {
        let mut list = vec![("b".to_string(), 1.0), ("a".to_string(), 2.0), ("c".to_string(), 1.0)];
        let bytes = encode_list(&mut list);
        let decoded = decode_list(&bytes);
        let members: Vec<&[u8]> = decoded.iter().map(|(m, _)| *m).collect();
        // score desc; equal scores by member descending, as ZREVRANGE orders them
        assert_eq!(members, vec![&b"a"[..], b"c", b"b"]);
        assert_eq!(decoded[0].1, 2.0);
        // GET's JSON is not stored; the served form adds it, found without walking the
        // entries, and decodes to the same entries
        let mut json = Vec::new();
        write_list_json(&decoded, &mut json);
        assert_eq!(stored_list_json(&bytes), None);
        let served = with_json(&bytes).unwrap();
        assert_eq!(stored_list_json(&served), Some(&json[..]));
        assert_eq!(decode_list(&served), decoded);
        assert_eq!(with_json(&served), None, "a value with its JSON is served as it is");
        assert!(served.len() >= served_list_len(&bytes));
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"[{"item":"a","score":2},{"item":"c","score":1},{"item":"b","score":1}]"#
        );
        // a value in the layout before the JSON (bare count, entries) still decodes
        let mut old = 1u32.to_le_bytes().to_vec();
        old.extend_from_slice(&5.0f32.to_le_bytes());
        old.extend_from_slice(&1u16.to_le_bytes());
        old.push(b'x');
        assert_eq!(stored_list_json(&old), None);
        assert_eq!(decode_list(&old), vec![(&b"x"[..], 5.0)]);
    }

    #[test]
    fn a_damaged_json_offset_falls_back_to_the_entries() {
        let mut list = vec![("a".to_string(), 1.0)];
        let good = with_json(&encode_list(&mut list)).unwrap();
        for at in [0u32, 4, 9, good.len() as u32 + 5] {
            let mut bad = good.clone();
            bad[4..8].copy_from_slice(&at.to_le_bytes());
            assert_eq!(stored_list_json(&bad), None, "offset {at}");
            assert_eq!(decode_list(&bad), vec![(&b"a"[..], 1.0)]);
        }
    }
}
