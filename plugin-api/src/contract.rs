//! The output contract: what a run's rows must be for a host to publish them. The recd
//! worker, the daemon that writes the rows and [`crate::testing::Harness`] all check
//! through this module, so a strategy that passes its harness tests passes the host.
//!
//! - **Schema** ([`check_schema`]): lists are `(user Utf8, item Utf8, score Float32)`;
//!   hashes are `user Utf8` first, then at least one field of a type a hash value can be
//!   written from (Utf8, Boolean, Float32/64, Int32/64, UInt32/64).
//! - **Rows** ([`Assembler`]): no null user, item or score; finite scores and float fields;
//!   item ids of at most [`MAX_ITEM_BYTES`]; one user's rows together (a user whose rows
//!   come back after another user's is refused); no item twice in a user's list; at most
//!   `max_items_per_user` items a user; one row per user in a hash table; at least one row
//!   unless the job allows an empty result.
//! - **Known ids** ([`KnownIds`]): when a job names `known_users`/`known_items`, every
//!   emitted user/item must appear in that input column.
//!
//! ```
//! use recd_plugin_api::contract::{Assembler, OutputKind, Rules, UserSink, Violation};
//! # use std::sync::Arc;
//! # use recd_plugin_api::arrow_array::{RecordBatch, StringArray, Float32Array};
//! # use recd_plugin_api::arrow_schema::{DataType, Field, Schema};
//! # let schema = Arc::new(Schema::new(vec![
//! #     Field::new("user", DataType::Utf8, false),
//! #     Field::new("item", DataType::Utf8, false),
//! #     Field::new("score", DataType::Float32, false),
//! # ]));
//! # let batch = |users: Vec<&str>| RecordBatch::try_new(schema.clone(), vec![
//! #     Arc::new(StringArray::from(users.clone())),
//! #     Arc::new(StringArray::from(vec!["i"; users.len()])),
//! #     Arc::new(Float32Array::from(vec![1.0; users.len()])),
//! # ]).unwrap();
//! /// Counts users; `first_time` is what lets the assembler see a user come back.
//! #[derive(Default)]
//! struct Count(std::collections::HashSet<String>);
//! impl UserSink for Count {
//!     type Error = Violation;
//!     fn first_time(&mut self, user: &str) -> Result<bool, Violation> {
//!         Ok(self.0.insert(user.to_string()))
//!     }
//!     fn list(&mut self, _: &str, _: &mut Vec<(&str, f32)>) -> Result<(), Violation> { Ok(()) }
//!     fn hash(&mut self, _: &str, _: Vec<(String, String)>) -> Result<(), Violation> { Ok(()) }
//! }
//! let mut sink = Count::default();
//! let mut rows = Assembler::new(Rules::lists(10));
//! rows.add(&batch(vec!["u1", "u2"]), &mut sink).unwrap();
//! let err = rows.add(&batch(vec!["u1"]), &mut sink).unwrap_err();
//! assert_eq!(err.to_string(), "output row 2: rows of user \"u1\" are not contiguous");
//! ```

use std::collections::HashSet;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Schema};

use crate::abi::output;

/// The longest item id a list can hold, in bytes (the store keeps each id's length in 16
/// bits).
pub const MAX_ITEM_BYTES: usize = u16::MAX as usize;

/// The longest user id, in bytes, and the longest field name of a hash: a host reads its
/// stream as untrusted, and one row must not cost it gigabytes (field names are stored
/// with a 16-bit length).
pub const MAX_USER_BYTES: usize = u16::MAX as usize;

/// `max_items_per_user` when a job does not set it.
pub const DEFAULT_MAX_ITEMS_PER_USER: usize = 1000;

/// What a table holds per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Ranked `(item, score)` lists.
    Lists,
    /// Field/value hashes, one row per user.
    Hashes,
}

/// The limits a job sets on its output (its `[checks]`-style keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub kind: OutputKind,
    /// Lists only: the most items one user's list may hold.
    pub max_items_per_user: usize,
    /// Whether a run that emits no row may publish an empty table.
    pub allow_empty: bool,
}

impl Rules {
    /// Lists of at most `max_items_per_user`, an empty result refused.
    pub fn lists(max_items_per_user: usize) -> Rules {
        Rules { kind: OutputKind::Lists, max_items_per_user, allow_empty: false }
    }

    /// Hashes, an empty result refused.
    pub fn hashes() -> Rules {
        Rules { kind: OutputKind::Hashes, max_items_per_user: DEFAULT_MAX_ITEMS_PER_USER, allow_empty: false }
    }
}

/// Output that breaks the contract: the message names the row (counted from 0 over the
/// whole run) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(String);

impl Violation {
    pub fn new(message: impl Into<String>) -> Violation {
        Violation(message.into())
    }

    fn at(row: u64, message: impl std::fmt::Display) -> Violation {
        Violation(format!("output row {row}: {message}"))
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

/// The types a hash field may have.
fn is_hash_value_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8
            | DataType::Boolean
            | DataType::Float32
            | DataType::Float64
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt32
            | DataType::UInt64
    )
}

/// Checks the columns of an emitted batch for a table of `kind`.
pub fn check_schema(kind: OutputKind, schema: &Schema) -> Result<(), Violation> {
    let fields = schema.fields();
    let got = || fields.iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ");
    match kind {
        OutputKind::Lists => {
            let want =
                [(output::USER, DataType::Utf8), (output::ITEM, DataType::Utf8), (output::SCORE, DataType::Float32)];
            let ok =
                fields.len() == 3 && fields.iter().zip(&want).all(|(f, (n, t))| f.name() == n && f.data_type() == t);
            if ok {
                return Ok(());
            }
            Err(Violation(format!("output rows must be (user Utf8, item Utf8, score Float32), got ({})", got())))
        }
        OutputKind::Hashes => {
            let first_ok = fields.first().is_some_and(|f| f.name() == output::USER && f.data_type() == &DataType::Utf8);
            if !first_ok || fields.len() < 2 {
                return Err(Violation(format!("hash rows must be (user Utf8, field columns...), got ({})", got())));
            }
            match fields.iter().skip(1).find(|f| !is_hash_value_type(f.data_type())) {
                None => Ok(()),
                Some(f) => Err(Violation(format!(
                    "hash field `{}` has type {}, which cannot be a hash value",
                    f.name(),
                    f.data_type()
                ))),
            }
        }
    }
}

/// The checks a host makes where a batch is emitted, before it crosses to the writer: the
/// schema for a table of `kind`, then the known users (column 0) and, for lists, the
/// known items (column 1). `first_row` is the run-wide number of the batch's first row.
pub fn check_emitted(
    kind: OutputKind,
    batch: &RecordBatch,
    known_users: Option<&KnownIds>,
    known_items: Option<&KnownIds>,
    first_row: u64,
) -> Result<(), Violation> {
    check_schema(kind, batch.schema_ref())?;
    // A hash row's column 1 is a field name, not an item.
    let known_items = known_items.filter(|_| kind == OutputKind::Lists);
    for (column, known) in [(0, known_users), (1, known_items)] {
        if let Some(known) = known {
            known.check(batch, column, first_row)?;
        }
    }
    Ok(())
}

/// The user key of a table's list for anyone it has no list for: a job with
/// `fallback = ["t"]` answers an unknown user with `t:__default__` (docs/protocol.md).
pub const DEFAULT_USER: &str = "__default__";

/// The start of the user key of a segment's default list (`__segment__:UK`), which the
/// cold-start strategy publishes beside [`DEFAULT_USER`].
pub const SEGMENT_USER_PREFIX: &str = "__segment__:";

/// Whether `user` is one of the keys above: a default list, not a user, so no input's
/// user column has it and `known_users` lets it through.
pub fn is_default_list(user: &str) -> bool {
    user == DEFAULT_USER || user.starts_with(SEGMENT_USER_PREFIX)
}

/// The ids of one input column, which every emitted user (or item) must be among.
#[derive(Debug, Clone, Default)]
pub struct KnownIds {
    /// Where the ids come from, for messages: `"interactions.user_id"`.
    pub source: String,
    pub ids: HashSet<String>,
}

impl KnownIds {
    /// The ids of column `column` of input `table`, read from `batches` one at a time (the
    /// whole input, or its batches as streamed): ids as strings (integers in decimal),
    /// nulls skipped.
    pub fn read<B: std::borrow::Borrow<RecordBatch>>(
        table: &str,
        column: &str,
        batches: impl IntoIterator<Item = Result<B, crate::PluginError>>,
    ) -> Result<KnownIds, crate::PluginError> {
        let source = format!("{table}.{column}");
        let mut ids = HashSet::new();
        for batch in batches {
            let batch = batch?;
            let array = crate::columns::column(batch.borrow(), table, column)?;
            ids.extend(crate::columns::ids_as_strings(array, &source)?.into_iter().flatten());
        }
        Ok(KnownIds { source, ids })
    }

    /// Refuses the first row whose id in `column` (0: user, 1: item) is not known.
    /// `first_row` is the run-wide number of the batch's first row.
    pub fn check(&self, batch: &RecordBatch, column: usize, first_row: u64) -> Result<(), Violation> {
        let what = if column == 0 { "user" } else { "item" };
        let values = batch
            .column(column)
            .as_string_opt::<i32>()
            .ok_or_else(|| Violation(format!("output {what} column is not utf8")))?;
        // Default lists are keyed by a name no input has (see `is_default_list`).
        let stranger = |r: usize| {
            let id = values.value(r);
            let known = self.ids.contains(id) || (column == 0 && is_default_list(id));
            !known
        };
        match (0..batch.num_rows()).find(|&r| values.is_valid(r) && stranger(r)) {
            None => Ok(()),
            Some(r) => Err(Violation::at(
                first_row + r as u64,
                format!("{what} {:?} does not appear in {}", values.value(r), self.source),
            )),
        }
    }
}

/// Where assembled output goes: the daemon's staged store version, or a harness's record.
pub trait UserSink {
    /// The sink's own failures (a store write); a contract violation converts into it.
    type Error: From<Violation>;

    /// Whether `user` is emitted for the first time in this run (false: a repeat).
    fn first_time(&mut self, user: &str) -> Result<bool, Self::Error>;

    /// Whether this host keeps `user`'s rows (false: outside the run's shard; dropped
    /// unchecked beyond the row rules).
    fn keeps(&mut self, _user: &str) -> bool {
        true
    }

    /// One user's whole list, in emission order (the sink may sort it in place).
    fn list(&mut self, user: &str, list: &mut Vec<(&str, f32)>) -> Result<(), Self::Error>;

    /// One user's hash: field name and value text, null fields left out.
    fn hash(&mut self, user: &str, fields: Vec<(String, String)>) -> Result<(), Self::Error>;
}

/// Checks a run's rows batch by batch and hands each user's output, whole, to a
/// [`UserSink`]. Memory: the current user's list only.
#[derive(Debug)]
pub struct Assembler {
    rules: Rules,
    /// Whether a user's rows are being collected, and whose (a buffer kept from user to user).
    has_user: bool,
    user_id: String,
    /// The current user's items end to end, and per item its end in `items` and its score:
    /// no allocation per row.
    items: String,
    list: Vec<(usize, f32)>,
    /// Run-wide number of the next row.
    row: u64,
    /// Row where the current user's rows began.
    user_first_row: u64,
    /// Users handed to the sink.
    users: u64,
    /// The user of the last row, when the sink does not keep them: their next rows are
    /// dropped without asking again.
    skipping: Option<String>,
    skipped_users: u64,
}

impl Assembler {
    pub fn new(rules: Rules) -> Assembler {
        Assembler {
            rules,
            has_user: false,
            user_id: String::new(),
            items: String::new(),
            list: Vec::new(),
            row: 0,
            user_first_row: 0,
            users: 0,
            skipping: None,
            skipped_users: 0,
        }
    }

    /// The kind of table the rows are for.
    pub(crate) fn kind(&self) -> OutputKind {
        self.rules.kind
    }

    /// Rows seen so far, kept or not.
    pub fn rows(&self) -> u64 {
        self.row
    }

    /// Users handed to the sink so far.
    pub fn users(&self) -> u64 {
        self.users
    }

    /// Users whose rows the sink did not keep (counted once per run of rows).
    pub fn skipped_users(&self) -> u64 {
        self.skipped_users
    }

    /// Checks one emitted batch and passes on every user it completes.
    pub fn add<S: UserSink>(&mut self, batch: &RecordBatch, sink: &mut S) -> Result<(), S::Error> {
        // The schema is checked where rows are emitted, but a host reads its stream as
        // untrusted: a batch without columns must fail here, not panic.
        let columns = batch.num_columns();
        match self.rules.kind {
            OutputKind::Lists if columns == 3 => self.add_lists(batch, sink),
            OutputKind::Hashes if columns >= 2 => self.add_hashes(batch, sink),
            OutputKind::Lists => Err(Violation(format!(
                "worker sent rows with {columns} columns; a lists table needs user, item, score"
            ))
            .into()),
            OutputKind::Hashes => Err(Violation(format!(
                "worker sent rows with {columns} columns; a hashes table needs the user first, then its fields"
            ))
            .into()),
        }
    }

    /// Closes the last user; refuses an empty result unless the rules allow one.
    pub fn finish<S: UserSink>(&mut self, sink: &mut S) -> Result<(), S::Error> {
        self.finish_user(sink)?;
        if self.users == 0 && !self.rules.allow_empty {
            return Err(Violation::new(
                "the run emitted no rows (set `allow_empty = true` in the job to publish an empty table)",
            )
            .into());
        }
        Ok(())
    }

    /// False for a user the sink does not keep, asked once per run of that user's rows.
    fn keeps<S: UserSink>(&mut self, user: &str, sink: &mut S) -> bool {
        if self.skipping.as_deref() == Some(user) {
            return false;
        }
        if sink.keeps(user) {
            self.skipping = None;
            return true;
        }
        self.skipped_users += 1;
        let mut buffer = self.skipping.take().unwrap_or_default();
        buffer.clear();
        buffer.push_str(user);
        self.skipping = Some(buffer);
        false
    }

    fn add_lists<S: UserSink>(&mut self, batch: &RecordBatch, sink: &mut S) -> Result<(), S::Error> {
        let not = |what: &str| {
            Violation(format!("{what} column is not {}", if what == "score" { "float32" } else { "utf8" }))
        };
        let users = batch.column(0).as_string_opt::<i32>().ok_or_else(|| not("user"))?;
        let items = batch.column(1).as_string_opt::<i32>().ok_or_else(|| not("item"))?;
        let scores = batch.column(2).as_primitive_opt::<Float32Type>().ok_or_else(|| not("score"))?;
        for i in 0..batch.num_rows() {
            let row = self.row;
            self.row += 1;
            if users.is_null(i) || items.is_null(i) || scores.is_null(i) {
                return Err(Violation::at(row, "null user, item or score").into());
            }
            let (user, item, score) = (users.value(i), items.value(i), scores.value(i));
            if !score.is_finite() {
                return Err(
                    Violation::at(row, format!("user {user:?} item {item:?} has a non-finite score {score}")).into()
                );
            }
            if item.len() > MAX_ITEM_BYTES {
                return Err(Violation::at(row, format!("item id of {} bytes is too long", item.len())).into());
            }
            too_long_user(row, user)?;
            let same_user = self.has_user && self.user_id == user;
            if !same_user && !self.keeps(user, sink) {
                // The user before ends here: rows of theirs after this one are a user
                // coming back, not more of the same list.
                self.finish_user(sink)?;
                continue;
            }
            if !same_user {
                self.finish_user(sink)?;
                self.user_first_row = row;
                if !sink.first_time(user)? {
                    return Err(Violation::at(row, format!("rows of user {user:?} are not contiguous")).into());
                }
                self.has_user = true;
                self.user_id.clear();
                self.user_id.push_str(user);
            }
            // Refused at the first item past the bound, not when the user ends: the rows of
            // one user could otherwise grow without bound in the host's memory.
            if self.list.len() == self.rules.max_items_per_user {
                return Err(Violation(format!(
                    "output for user {user:?} lists more than max_items_per_user ({}) items (rows {}..{})",
                    self.rules.max_items_per_user,
                    self.user_first_row,
                    row + 1
                ))
                .into());
            }
            self.items.push_str(item);
            self.list.push((self.items.len(), score));
        }
        Ok(())
    }

    fn finish_user<S: UserSink>(&mut self, sink: &mut S) -> Result<(), S::Error> {
        if !std::mem::take(&mut self.has_user) {
            return Ok(());
        }
        let user = self.user_id.as_str();
        let first = self.user_first_row;
        let mut start = 0;
        let mut list: Vec<(&str, f32)> = Vec::with_capacity(self.list.len());
        for &(end, score) in &self.list {
            list.push((&self.items[start..end], score));
            start = end;
        }
        if let Some(at) = first_repeat(&list) {
            return Err(
                Violation::at(first + at as u64, format!("user {user:?} lists item {:?} twice", list[at].0)).into()
            );
        }
        sink.list(user, &mut list)?;
        self.users += 1;
        self.items.clear();
        self.list.clear();
        Ok(())
    }

    /// One row per user: column 0 the user, every other non-null cell a field.
    fn add_hashes<S: UserSink>(&mut self, batch: &RecordBatch, sink: &mut S) -> Result<(), S::Error> {
        let users = batch.column(0).as_string_opt::<i32>().ok_or_else(|| Violation::new("user column is not utf8"))?;
        let schema = batch.schema();
        check_field_names(&schema)?;
        for i in 0..batch.num_rows() {
            let row = self.row;
            self.row += 1;
            if users.is_null(i) {
                return Err(Violation::at(row, "null user").into());
            }
            let user = users.value(i);
            too_long_user(row, user)?;
            if !self.keeps(user, sink) {
                continue;
            }
            if !sink.first_time(user)? {
                return Err(Violation::at(
                    row,
                    format!("user {user:?} has a second row (a hash table has one row per user)"),
                )
                .into());
            }
            let mut fields = Vec::with_capacity(batch.num_columns() - 1);
            for (field, column) in schema.fields().iter().zip(batch.columns()).skip(1) {
                let value = cell_text(column.as_ref(), i)
                    .map_err(|e| Violation::at(row, format!("user {user:?} field `{}`: {e}", field.name())))?;
                if let Some(value) = value {
                    fields.push((field.name().clone(), value));
                }
            }
            sink.hash(user, fields)?;
            self.users += 1;
        }
        Ok(())
    }
}

/// Refuses a user id longer than [`MAX_USER_BYTES`].
fn too_long_user(row: u64, user: &str) -> Result<(), Violation> {
    match user.len() {
        0..=MAX_USER_BYTES => Ok(()),
        n => Err(Violation::at(row, format!("user id of {n} bytes is too long (at most {MAX_USER_BYTES})"))),
    }
}

/// Refuses a hash table's field names that are too long to store or given twice.
fn check_field_names(schema: &Schema) -> Result<(), Violation> {
    let names: Vec<&str> = schema.fields().iter().skip(1).map(|f| f.name().as_str()).collect();
    if let Some(long) = names.iter().find(|n| n.len() > MAX_USER_BYTES) {
        return Err(Violation(format!("a field name of {} bytes is too long (at most {MAX_USER_BYTES})", long.len())));
    }
    match (1..names.len()).find(|&at| names[..at].contains(&names[at])) {
        Some(at) => Err(Violation(format!("field `{}` is given twice", names[at]))),
        None => Ok(()),
    }
}

/// The position of the first item that an earlier one repeats. Lists are short (a job's
/// `max_items_per_user`, 10 in most): comparing pairs costs less than a set built per user.
pub fn first_repeat(list: &[(&str, f32)]) -> Option<usize> {
    if list.len() <= 64 {
        return (1..list.len()).find(|&at| list[..at].iter().any(|(item, _)| *item == list[at].0));
    }
    let mut seen = HashSet::with_capacity(list.len());
    list.iter().position(|(item, _)| !seen.insert(*item))
}

/// A hash field's value as Redis would hold it: text; numbers in their shortest exact
/// form; booleans as 1 and 0. Null: no field.
pub fn cell_text(column: &dyn Array, row: usize) -> Result<Option<String>, String> {
    if column.is_null(row) {
        return Ok(None);
    }
    let finite = |v: f64| if v.is_finite() { Ok(()) } else { Err(format!("non-finite value {v}")) };
    let text = match column.data_type() {
        DataType::Utf8 => column.as_string::<i32>().value(row).to_string(),
        DataType::Boolean => (if column.as_boolean().value(row) { "1" } else { "0" }).to_string(),
        DataType::Float32 => {
            let v = column.as_primitive::<Float32Type>().value(row);
            finite(f64::from(v))?;
            v.to_string()
        }
        DataType::Float64 => {
            let v = column.as_primitive::<Float64Type>().value(row);
            finite(v)?;
            v.to_string()
        }
        DataType::Int32 => column.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => column.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::UInt32 => column.as_primitive::<UInt32Type>().value(row).to_string(),
        DataType::UInt64 => column.as_primitive::<UInt64Type>().value(row).to_string(),
        other => return Err(format!("type {other} cannot be a hash value")),
    };
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float32Array, StringArray};
    use arrow_schema::Field;
    use std::sync::Arc;

    /// Records what reaches it, as a harness does.
    #[derive(Default)]
    struct Record {
        seen: HashSet<String>,
        lists: Vec<(String, Vec<(String, f32)>)>,
        hashes: Vec<(String, Vec<(String, String)>)>,
        drop_users_starting: Option<char>,
    }

    impl UserSink for Record {
        type Error = Violation;
        fn first_time(&mut self, user: &str) -> Result<bool, Violation> {
            Ok(self.seen.insert(user.to_string()))
        }
        fn keeps(&mut self, user: &str) -> bool {
            self.drop_users_starting.is_none_or(|c| !user.starts_with(c))
        }
        fn list(&mut self, user: &str, list: &mut Vec<(&str, f32)>) -> Result<(), Violation> {
            self.lists.push((user.into(), list.iter().map(|(i, s)| (i.to_string(), *s)).collect()));
            Ok(())
        }
        fn hash(&mut self, user: &str, fields: Vec<(String, String)>) -> Result<(), Violation> {
            self.hashes.push((user.into(), fields));
            Ok(())
        }
    }

    fn rows(rows: &[(&str, &str, f32)]) -> RecordBatch {
        let mut out = crate::OutputRows::new();
        for &(user, item, score) in rows {
            out.push(user, item, score);
        }
        out.into_batch().unwrap()
    }

    fn assemble(rules: Rules, batches: &[RecordBatch], sink: &mut Record) -> Result<(), Violation> {
        let mut a = Assembler::new(rules);
        for b in batches {
            a.add(b, sink)?;
        }
        a.finish(sink)
    }

    #[test]
    fn lists_reach_the_sink_whole_even_across_batches() {
        let mut sink = Record::default();
        let batches = [rows(&[("u1", "a", 2.0), ("u1", "b", 1.0), ("u2", "a", 3.0)]), rows(&[("u2", "c", 0.5)])];
        assemble(Rules::lists(10), &batches, &mut sink).unwrap();
        let want = vec![
            ("u1".to_string(), vec![("a".to_string(), 2.0), ("b".to_string(), 1.0)]),
            ("u2".to_string(), vec![("a".to_string(), 3.0), ("c".to_string(), 0.5)]),
        ];
        assert_eq!(sink.lists, want);
    }

    #[test]
    fn each_row_rule_names_the_row_that_breaks_it() {
        let cases: [(Rules, Vec<RecordBatch>, &str); 7] = [
            (
                Rules::lists(10),
                vec![rows(&[("u1", "a", 1.0), ("u1", "b", f32::NAN)])],
                "output row 1: user \"u1\" item \"b\" has a non-finite score NaN",
            ),
            (
                Rules::lists(10),
                vec![rows(&[("u1", "a", 1.0), ("u2", "a", 1.0)]), rows(&[("u1", "c", 1.0)])],
                "output row 2: rows of user \"u1\" are not contiguous",
            ),
            (
                Rules::lists(10),
                vec![rows(&[("u1", "a", 1.0), ("u1", "b", 1.0), ("u1", "a", 0.0)])],
                "output row 2: user \"u1\" lists item \"a\" twice",
            ),
            (
                Rules::lists(2),
                vec![rows(&[("u0", "a", 1.0), ("u1", "a", 1.0), ("u1", "b", 1.0), ("u1", "c", 1.0)])],
                "output for user \"u1\" lists more than max_items_per_user (2) items (rows 1..4)",
            ),
            (
                Rules::lists(10),
                vec![rows(&[])],
                "the run emitted no rows (set `allow_empty = true` in the job to publish an empty table)",
            ),
            (
                Rules::lists(10),
                vec![rows(&[("u1", &"x".repeat(MAX_ITEM_BYTES + 1), 1.0)])],
                "output row 0: item id of 65536 bytes is too long",
            ),
            (
                Rules::lists(10),
                vec![rows(&[("u1", "a", 1.0), (&"u".repeat(MAX_USER_BYTES + 1), "a", 1.0)])],
                "output row 1: user id of 65536 bytes is too long (at most 65535)",
            ),
        ];
        for (rules, batches, want) in cases {
            let err = assemble(rules, &batches, &mut Record::default()).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        let empty_allowed = Rules { allow_empty: true, ..Rules::lists(10) };
        assert_eq!(assemble(empty_allowed, &[rows(&[])], &mut Record::default()), Ok(()));
    }

    #[test]
    fn users_the_sink_does_not_keep_are_dropped_and_counted_once_per_run_of_rows() {
        let mut sink = Record { drop_users_starting: Some('x'), ..Record::default() };
        let mut a = Assembler::new(Rules::lists(10));
        let batch = rows(&[("x1", "a", 1.0), ("x1", "b", 1.0), ("u1", "a", 1.0), ("x2", "a", 1.0)]);
        a.add(&batch, &mut sink).unwrap();
        a.finish(&mut sink).unwrap();
        assert_eq!((a.users(), a.skipped_users(), a.rows()), (1, 2, 4));
        assert_eq!(sink.lists.len(), 1);
        // A kept user's rows on both sides of a dropped user's are a user coming back, not
        // one list (a shard must not hide scattered rows).
        let mut sink = Record { drop_users_starting: Some('x'), ..Record::default() };
        let batch = rows(&[("u1", "a", 1.0), ("x1", "a", 1.0), ("u1", "b", 1.0)]);
        let refused = assemble(Rules::lists(10), &[batch], &mut sink).unwrap_err();
        assert_eq!(refused.to_string(), "output row 2: rows of user \"u1\" are not contiguous");
        assert_eq!(sink.lists, vec![("u1".to_string(), vec![("a".to_string(), 1.0)])]);
    }

    #[test]
    fn hashes_take_one_row_per_user_and_write_values_as_redis_holds_them() {
        let schema = Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("p", DataType::Float32, true),
            Field::new("flag", DataType::Boolean, false),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["u1", "u2", "u1"])),
                Arc::new(Float32Array::from(vec![Some(0.25), None, Some(1.0)])),
                Arc::new(arrow_array::BooleanArray::from(vec![true, false, true])),
            ],
        )
        .unwrap();
        let mut sink = Record::default();
        let err = assemble(Rules::hashes(), &[batch], &mut sink).unwrap_err();
        assert_eq!(err.to_string(), "output row 2: user \"u1\" has a second row (a hash table has one row per user)");
        let want = vec![
            ("u1".to_string(), vec![("p".to_string(), "0.25".to_string()), ("flag".to_string(), "1".to_string())]),
            ("u2".to_string(), vec![("flag".to_string(), "0".to_string())]),
        ];
        assert_eq!(sink.hashes, want);
    }

    /// What a host refuses of a hash stream that skipped the worker's schema check: a
    /// field name given twice or too long to store, a batch of users alone.
    #[test]
    fn hash_batches_a_stored_value_could_not_hold_are_refused() {
        let batch = |names: &[&str]| {
            let mut fields = vec![Field::new("user", DataType::Utf8, false)];
            let mut columns: Vec<arrow_array::ArrayRef> = vec![Arc::new(StringArray::from(vec!["u1"]))];
            for name in names {
                fields.push(Field::new(*name, DataType::Utf8, false));
                columns.push(Arc::new(StringArray::from(vec!["v"])));
            }
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
        };
        let long = "f".repeat(MAX_USER_BYTES + 1);
        let cases = [
            (vec!["a", "b", "a"], "field `a` is given twice".to_string()),
            (vec!["a", long.as_str()], "a field name of 65536 bytes is too long (at most 65535)".to_string()),
            (vec![], "worker sent rows with 1 columns; a hashes table needs the user first, then its fields".into()),
        ];
        for (names, want) in cases {
            let err = assemble(Rules::hashes(), &[batch(&names)], &mut Record::default()).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        assert_eq!(assemble(Rules::hashes(), &[batch(&["a", "b"])], &mut Record::default()), Ok(()));
    }

    #[test]
    fn schemas_are_checked_per_kind() {
        let lists = rows(&[]).schema();
        assert_eq!(check_schema(OutputKind::Lists, &lists), Ok(()));
        // A list's columns are also a valid hash: two text/number fields.
        assert_eq!(check_schema(OutputKind::Hashes, &lists), Ok(()));
        let user_only = Schema::new(vec![Field::new("user", DataType::Utf8, false)]);
        let err = check_schema(OutputKind::Hashes, &user_only).unwrap_err();
        assert_eq!(err.to_string(), "hash rows must be (user Utf8, field columns...), got (user Utf8)");
        let nested =
            Schema::new(vec![Field::new("user", DataType::Utf8, false), Field::new("v", DataType::Date32, false)]);
        let err = check_schema(OutputKind::Hashes, &nested).unwrap_err();
        assert_eq!(err.to_string(), "hash field `v` has type Date32, which cannot be a hash value");
        let err = check_schema(OutputKind::Lists, &nested).unwrap_err();
        assert_eq!(
            err.to_string(),
            "output rows must be (user Utf8, item Utf8, score Float32), got (user Utf8, v Date32)"
        );
    }

    #[test]
    fn known_ids_refuse_the_first_stranger() {
        let known = KnownIds { source: "items.item_id".into(), ids: ["a".to_string()].into() };
        let batch = rows(&[("u1", "a", 1.0), ("u1", "z", 1.0)]);
        assert_eq!(
            known.check(&batch, 1, 10).unwrap_err().to_string(),
            "output row 11: item \"z\" does not appear in items.item_id"
        );
        assert_eq!(known.check(&batch.slice(0, 1), 1, 0), Ok(()));
    }

    #[test]
    fn known_users_let_default_lists_through_and_known_items_do_not() {
        let known = KnownIds { source: "interactions.user_id".into(), ids: ["u1".to_string()].into() };
        let batch = rows(&[("u1", "a", 1.0), ("__default__", "a", 1.0), ("__segment__:UK", "a", 1.0)]);
        assert_eq!(known.check(&batch, 0, 0), Ok(()));
        let stranger = rows(&[("__default__", "a", 1.0), ("u9", "a", 1.0)]);
        assert_eq!(
            known.check(&stranger, 0, 0).unwrap_err().to_string(),
            "output row 1: user \"u9\" does not appear in interactions.user_id"
        );
        let items = KnownIds { source: "items.item_id".into(), ids: ["a".to_string()].into() };
        assert!(items.check(&rows(&[("u1", "__default__", 1.0)]), 1, 0).is_err(), "an item is never a default list");
    }

    #[test]
    fn the_first_repeated_item_is_found_in_short_and_long_lists() {
        for n in [0usize, 1, 2, 10, 64, 65, 300] {
            let names: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
            let list: Vec<(&str, f32)> = names.iter().map(|n| (n.as_str(), 1.0)).collect();
            assert_eq!(first_repeat(&list), None, "n={n}");
            for (first, again) in [(0, n.saturating_sub(1)), (n / 3, n / 2)] {
                if again <= first {
                    continue;
                }
                let mut list = list.clone();
                list[again].0 = names[first].as_str();
                assert_eq!(first_repeat(&list), Some(again), "n={n}: item {first} again at {again}");
            }
        }
    }
}
