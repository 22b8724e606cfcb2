//! A table version as Arrow record batches: the rows of a `table:<name>` input (handed to
//! a worker as an Arrow IPC file) and of an exported part (Parquet). One schema each for
//! lists and hashes.

use std::sync::Arc;

use arrow_array::{Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::store::{self, ServedTable, TableKind};

/// Rows per batch written (a part's or a `table:` input's).
const BATCH_ROWS: usize = 65_536;

/// Columns of an exported part of a table of lists: one row per (user, item), users in
/// key order, each user's items best first (`rank` 1).
pub fn lists_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("item", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
        Field::new("rank", DataType::UInt32, false),
    ]))
}

/// Columns of an exported part of a table of hashes: one row per (user, field), fields in
/// the order HGETALL gives them.
pub fn hashes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("field", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
    ]))
}

pub fn part_schema(kind: TableKind) -> SchemaRef {
    match kind {
        TableKind::Lists => lists_schema(),
        TableKind::Hashes => hashes_schema(),
    }
}

/// Hands `served`'s rows to `write` as record batches of about [`BATCH_ROWS`] rows, in
/// [`lists_schema`] or [`hashes_schema`] (a `table:` input is the former, a part either).
pub fn table_batches(
    served: &ServedTable,
    mut write: impl FnMut(RecordBatch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let schema = part_schema(served.kind);
    let mut rows = PartRows::default();
    for entry in served.iter_lists() {
        let (user, value) = entry?;
        let user = String::from_utf8_lossy(&user);
        match served.kind {
            TableKind::Lists => {
                for (rank, (item, score)) in store::decode_list(&value).into_iter().enumerate() {
                    rows.push(&user, &String::from_utf8_lossy(item), Cell::Score(score, rank as u32 + 1));
                }
            }
            TableKind::Hashes => {
                for (field, text) in store::decode_hash(&value) {
                    let text = String::from_utf8_lossy(text).into_owned();
                    rows.push(&user, &String::from_utf8_lossy(field), Cell::Text(text));
                }
            }
        }
        if rows.len() >= BATCH_ROWS {
            write(rows.take(&schema, served.kind)?)?;
        }
    }
    write(rows.take(&schema, served.kind)?)
}

enum Cell {
    Score(f32, u32),
    Text(String),
}

/// A batch of a part's rows being gathered.
#[derive(Default)]
struct PartRows {
    users: Vec<String>,
    keys: Vec<String>,
    scores: Vec<f32>,
    ranks: Vec<u32>,
    texts: Vec<String>,
}

impl PartRows {
    fn push(&mut self, user: &str, key: &str, cell: Cell) {
        self.users.push(user.to_owned());
        self.keys.push(key.to_owned());
        match cell {
            Cell::Score(score, rank) => {
                self.scores.push(score);
                self.ranks.push(rank);
            }
            Cell::Text(text) => self.texts.push(text),
        }
    }

    fn len(&self) -> usize {
        self.users.len()
    }

    fn take(&mut self, schema: &SchemaRef, kind: TableKind) -> anyhow::Result<RecordBatch> {
        let rows = std::mem::take(self);
        let (users, keys) = (Arc::new(StringArray::from(rows.users)), Arc::new(StringArray::from(rows.keys)));
        let columns: Vec<arrow_array::ArrayRef> = match kind {
            TableKind::Lists => {
                vec![users, keys, Arc::new(Float32Array::from(rows.scores)), Arc::new(UInt32Array::from(rows.ranks))]
            }
            TableKind::Hashes => vec![users, keys, Arc::new(StringArray::from(rows.texts))],
        };
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}
