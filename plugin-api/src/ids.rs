//! [`IdIndex`]: ids by position and positions by id, compactly, for vocabularies of
//! millions of ids (a model's users).

use arrow_array::cast::AsArray;
use arrow_array::{Array, GenericStringArray, StringViewArray};
use arrow_schema::DataType;

use crate::PluginError;
use crate::columns::{ids_as_strings, numbers};

/// The ids of a vocabulary in position order, and a hash table from id to position.
///
/// A `HashMap<String, usize>` plus a `Vec<String>` cost about 100 bytes per id (two
/// heap strings, two headers, the map's slots); this keeps the id bytes in one buffer,
/// an end offset per id and a 4-byte slot per table entry: about 20 bytes per id
/// (measured on the 1M-user workload, this was most of what the vocabularies cost).
#[derive(Debug)]
pub struct IdIndex {
    bytes: Vec<u8>,
    /// `ends[p]`: where the id at position `p` ends in `bytes` (it starts at `ends[p-1]`).
    ends: Vec<u32>,
    /// Open addressing, linear probing: position + 1, or 0 for an empty slot. The length
    /// is a power of two at least twice the ids, so probes stay short.
    slots: Vec<u32>,
}

/// An id column read in place whatever its Arrow type (integers as decimal text).
pub enum IdColumn<'a> {
    Utf8(&'a GenericStringArray<i32>),
    LargeUtf8(&'a GenericStringArray<i64>),
    View(&'a StringViewArray),
    Text(Vec<Option<String>>),
}

impl<'a> IdColumn<'a> {
    /// `col` as ids; `what` names it in errors (`table.column`).
    pub fn new(col: &'a dyn Array, what: &str) -> Result<IdColumn<'a>, PluginError> {
        Ok(match col.data_type() {
            DataType::Utf8 => IdColumn::Utf8(col.as_string::<i32>()),
            DataType::LargeUtf8 => IdColumn::LargeUtf8(col.as_string::<i64>()),
            DataType::Utf8View => IdColumn::View(col.as_string_view()),
            _ => IdColumn::Text(ids_as_strings(col, what)?),
        })
    }

    pub fn len(&self) -> usize {
        match self {
            IdColumn::Utf8(a) => a.len(),
            IdColumn::LargeUtf8(a) => a.len(),
            IdColumn::View(a) => a.len(),
            IdColumn::Text(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id in `row`; `None` for a null.
    pub fn get(&self, row: usize) -> Option<&str> {
        match self {
            IdColumn::Utf8(a) => a.is_valid(row).then(|| a.value(row)),
            IdColumn::LargeUtf8(a) => a.is_valid(row).then(|| a.value(row)),
            IdColumn::View(a) => a.is_valid(row).then(|| a.value(row)),
            IdColumn::Text(v) => v[row].as_deref(),
        }
    }
}

impl IdIndex {
    /// A vocabulary table's ids by their `positions` column (each of 0..n exactly once),
    /// as a model's `user_id,index` file gives them. `what` names the table in errors.
    pub fn from_positions(ids: &dyn Array, positions: &dyn Array, what: &str) -> Result<IdIndex, PluginError> {
        let mut builder = IdIndexBuilder::new(what);
        builder.add(ids, positions)?;
        builder.finish()
    }

    fn with_capacity(n: usize) -> IdIndex {
        let slots = (2 * n).next_power_of_two().max(16);
        IdIndex { bytes: Vec::new(), ends: Vec::with_capacity(n), slots: vec![0; slots] }
    }

    /// Adds `id` at the next position; false if it is already there.
    fn push(&mut self, id: &str) -> bool {
        if 2 * (self.ends.len() + 1) > self.slots.len() {
            self.grow();
        }
        let slot = match self.probe(id) {
            Ok(_) => return false,
            Err(empty) => empty,
        };
        self.bytes.extend_from_slice(id.as_bytes());
        let end = u32::try_from(self.bytes.len()).expect("a vocabulary's ids fit in 4 GiB");
        self.ends.push(end);
        self.slots[slot] = self.ends.len() as u32;
        true
    }

    fn grow(&mut self) {
        self.slots = vec![0; (self.slots.len() * 2).max(16)];
        for p in 0..self.ends.len() {
            let Err(slot) = self.probe(self.id(p as u32)) else { unreachable!("ids are unique") };
            self.slots[slot] = p as u32 + 1;
        }
    }

    /// `Ok(position)` of `id`, or `Err(slot)`: the empty slot where it would go.
    fn probe(&self, id: &str) -> Result<u32, usize> {
        let mask = self.slots.len() - 1;
        let mut slot = hash(id.as_bytes()) as usize & mask;
        loop {
            match self.slots[slot] {
                0 => return Err(slot),
                p if self.id_bytes(p - 1) == id.as_bytes() => return Ok(p - 1),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    /// How many ids.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The position of `id`.
    pub fn get(&self, id: &str) -> Option<u32> {
        self.probe(id).ok()
    }

    /// The id at `position` (panics past the end).
    pub fn id(&self, position: u32) -> &str {
        std::str::from_utf8(self.id_bytes(position)).expect("ids are pushed as str")
    }

    /// The id at `position` as bytes: what a lookup compares, with no UTF-8 check per probe.
    fn id_bytes(&self, position: u32) -> &[u8] {
        let p = position as usize;
        let start = if p == 0 { 0 } else { self.ends[p - 1] as usize };
        &self.bytes[start..self.ends[p] as usize]
    }

    /// The position of each row's id in `col`: `None` for nulls and ids not in the index.
    /// String ids are read in place, with no copy per row.
    pub fn positions(&self, col: &dyn Array, what: &str) -> Result<Vec<Option<u32>>, PluginError> {
        let ids = IdColumn::new(col, what)?;
        Ok((0..ids.len()).map(|row| ids.get(row).and_then(|id| self.get(id))).collect())
    }
}

/// An [`IdIndex`] built from a vocabulary table that arrives in batches (a streamed
/// input), so the table itself is never held whole: `add` each batch's id and position
/// columns, then `finish`. Rows are kept in file order as they come, with 4 bytes a row
/// for its position (and 1 more while `finish` checks them). A file already in position
/// order (the usual `user_id,index` export) is then the index; any other order is copied
/// into position order at the end, the two copies alive together for that moment.
pub struct IdIndexBuilder {
    what: String,
    /// The ids in row order (in position order too while `in_order`).
    index: IdIndex,
    /// Each row's position; `u32::MAX` for a value that is not one (see `bad`).
    positions: Vec<u32>,
    in_order: bool,
    /// The first row whose index is not a whole number in 0..u32::MAX, and its value.
    bad: Option<(usize, f64)>,
    /// The first row with a null id or index.
    null: Option<usize>,
    /// The first row whose id an earlier row has, and its index.
    twice: Option<(usize, String, u32)>,
}

impl IdIndexBuilder {
    /// `what` names the table in errors.
    pub fn new(what: &str) -> IdIndexBuilder {
        IdIndexBuilder {
            what: what.to_string(),
            index: IdIndex::with_capacity(0),
            positions: Vec::new(),
            in_order: true,
            bad: None,
            null: None,
            twice: None,
        }
    }

    /// The next rows: their ids and their positions (a numeric column).
    pub fn add(&mut self, ids: &dyn Array, positions: &dyn Array) -> Result<(), PluginError> {
        let what = &self.what;
        if ids.len() != positions.len() {
            return Err(PluginError::input(format!("{what}: {} ids but {} indices", ids.len(), positions.len())));
        }
        let ids = IdColumn::new(ids, what)?;
        let positions = numbers(positions, &format!("{what}.index"))?;
        for (at, p) in positions.into_iter().enumerate() {
            let row = self.positions.len();
            let (Some(p), Some(id)) = (p, ids.get(at)) else {
                // Reported by `finish`, unless an earlier row is wrong too.
                self.null.get_or_insert(row);
                self.positions.push(u32::MAX);
                self.in_order = false;
                continue;
            };
            let whole = p.fract() == 0.0 && p >= 0.0 && p < f64::from(u32::MAX);
            if !whole && self.bad.is_none() {
                self.bad = Some((row, p));
            }
            let position = if whole { p as u32 } else { u32::MAX };
            self.in_order &= position as usize == row;
            self.positions.push(position);
            if !self.index.push(id) && self.twice.is_none() {
                self.twice = Some((row, id.to_string(), position));
            }
        }
        Ok(())
    }

    /// The index, once every row is in: each of 0..n exactly once, each id once. The
    /// first offending row is named (a bad index before a repeated id).
    pub fn finish(self) -> Result<IdIndex, PluginError> {
        let (what, n) = (&self.what, self.positions.len());
        let mut seen = vec![false; n];
        for (row, &p) in self.positions.iter().enumerate() {
            if self.null == Some(row) {
                return Err(PluginError::input(format!("{what}: row {row} has a null id or index")));
            }
            let value = match self.bad {
                Some((bad_row, value)) if bad_row == row => value,
                _ if (p as usize) < n && !seen[p as usize] => {
                    seen[p as usize] = true;
                    continue;
                }
                _ => f64::from(p),
            };
            return Err(PluginError::input(format!("{what}: row {row}: index {value} is out of 0..{n} or repeated")));
        }
        if let Some((_, id, p)) = &self.twice {
            return Err(PluginError::input(format!("{what}: id {id:?} appears twice (index {p})")));
        }
        if self.in_order {
            return Ok(self.index);
        }
        let mut row_at = vec![0u32; n];
        for (row, &p) in self.positions.iter().enumerate() {
            row_at[p as usize] = row as u32;
        }
        let mut index = IdIndex::with_capacity(n);
        index.bytes.reserve_exact(self.index.bytes.len());
        for &row in &row_at {
            index.push(self.index.id(row));
        }
        Ok(index)
    }
}

/// FNV-1a, then the high half folded in: the table masks the low bits. Ids come from the
/// job's own files, so a keyed hash (against flooding) buys nothing here.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};

    #[test]
    fn ids_map_to_their_positions_and_back_whatever_the_column_type() {
        let ids = StringArray::from(vec!["b", "7", "a"]);
        let index = IdIndex::from_positions(&ids, &Int64Array::from(vec![1, 0, 2]), "t").unwrap();
        assert_eq!((index.len(), index.id(0), index.id(1), index.id(2)), (3, "7", "b", "a"));
        assert_eq!((index.get("7"), index.get("b"), index.get("zz")), (Some(0), Some(1), None));
        let strings = StringArray::from(vec![Some("a"), None, Some("zz"), Some("7")]);
        assert_eq!(index.positions(&strings, "t.c").unwrap(), vec![Some(2), None, None, Some(0)]);
        let ints = Int64Array::from(vec![Some(7), Some(8), None]);
        assert_eq!(index.positions(&ints, "t.c").unwrap(), vec![Some(0), None, None]);
    }

    #[test]
    fn a_big_vocabulary_finds_every_id_and_no_other() {
        let n = 100_000;
        let ids: Vec<String> = (0..n).map(|i| format!("u{i:06}")).collect();
        let positions: Vec<i64> = (0..n as i64).rev().collect();
        let index =
            IdIndex::from_positions(&StringArray::from(ids.clone()), &Int64Array::from(positions), "t").unwrap();
        for (row, id) in ids.iter().enumerate() {
            let p = (n - 1 - row) as u32;
            assert_eq!((index.get(id), index.id(p)), (Some(p), id.as_str()));
        }
        assert_eq!(index.get("u100000"), None);
        assert_eq!(index.get(""), None);
    }

    #[test]
    fn a_vocabulary_built_batch_by_batch_is_the_one_read_whole() {
        let n = 1000usize;
        let ids: Vec<String> = (0..n).map(|i| format!("id{}", (i * 7919) % 10_007)).collect();
        // in position order, and shuffled (position = a permutation of the rows)
        for positions in [(0..n as i64).collect::<Vec<_>>(), (0..n as i64).map(|r| (r * 389) % n as i64).collect()] {
            let whole =
                IdIndex::from_positions(&StringArray::from(ids.clone()), &Int64Array::from(positions.clone()), "t")
                    .unwrap();
            let mut builder = IdIndexBuilder::new("t");
            for (from, to) in [(0, 1), (1, 300), (300, 300), (300, n)] {
                builder
                    .add(&StringArray::from(ids[from..to].to_vec()), &Int64Array::from(positions[from..to].to_vec()))
                    .unwrap();
            }
            let built = builder.finish().unwrap();
            assert_eq!(built.len(), n);
            for p in 0..n as u32 {
                assert_eq!(built.id(p), whole.id(p));
                assert_eq!(built.get(whole.id(p)), Some(p));
            }
        }
        // rows are counted across batches in errors
        let mut builder = IdIndexBuilder::new("t");
        builder.add(&StringArray::from(vec!["a", "b"]), &Int64Array::from(vec![1, 0])).unwrap();
        builder.add(&StringArray::from(vec!["c"]), &Int64Array::from(vec![0])).unwrap();
        assert_eq!(builder.finish().unwrap_err().message, "t: row 2: index 0 is out of 0..3 or repeated");
        let mut builder = IdIndexBuilder::new("t");
        builder.add(&StringArray::from(vec!["a"]), &Int64Array::from(vec![0])).unwrap();
        builder.add(&StringArray::from(vec![Some("b"), None]), &Int64Array::from(vec![1, 2])).unwrap();
        assert_eq!(builder.finish().unwrap_err().message, "t: row 2 has a null id or index");
        // the first offending row is named, whatever is wrong with it
        let mut builder = IdIndexBuilder::new("t");
        builder.add(&StringArray::from(vec!["a", "b"]), &Int64Array::from(vec![9, 1])).unwrap();
        builder.add(&StringArray::from(vec![None::<&str>]), &Int64Array::from(vec![2])).unwrap();
        assert_eq!(builder.finish().unwrap_err().message, "t: row 0: index 9 is out of 0..3 or repeated");
        let mut builder = IdIndexBuilder::new("t");
        let err = builder.add(&StringArray::from(vec!["a", "b"]), &Int64Array::from(vec![0])).unwrap_err();
        assert_eq!(err.message, "t: 2 ids but 1 indices");
    }

    #[test]
    fn bad_vocabularies_are_refused_with_the_row() {
        let ids = StringArray::from(vec!["a", "b", "a"]);
        let cases = [
            (vec![0.0, 1.0, 1.0], "t: row 2: index 1 is out of 0..3 or repeated"),
            (vec![0.0, 1.0, 3.0], "t: row 2: index 3 is out of 0..3 or repeated"),
            (vec![0.0, 1.0, -1.0], "t: row 2: index -1 is out of 0..3 or repeated"),
            (vec![0.0, 1.5, 2.0], "t: row 1: index 1.5 is out of 0..3 or repeated"),
            (vec![0.0, 1.0], "t: 3 ids but 2 indices"),
            (vec![0.0, 1.0, 2.0], "t: id \"a\" appears twice (index 2)"),
        ];
        for (positions, want) in cases {
            let positions = arrow_array::Float64Array::from(positions);
            let err = IdIndex::from_positions(&ids, &positions, "t").unwrap_err();
            assert_eq!(err.message, want);
        }
    }
}
