//! Building the rows a strategy emits: lists, `(user, item, score)` with one user's rows
//! together ([`OutputRows`]), or hashes, one row of fields per user ([`HashRows`]).

use std::sync::Arc;

use arrow_array::{Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

use crate::PluginError;
use crate::abi::output;

/// Output rows gathered one at a time; `into_batch` makes the batch `RunContext::emit` takes.
/// Push one user's rows together (the host refuses a user whose rows come back after
/// another user's), in any order of score: the host sorts each list.
///
/// ```
/// use recd_plugin_api::OutputRows;
///
/// let mut rows = OutputRows::new();
/// rows.push("u1", "i3", 0.9);
/// rows.push("u1", "i1", 0.5);
/// rows.push("u2", "i3", 0.7);
/// let batch = rows.into_batch().unwrap();
/// assert_eq!((batch.num_rows(), batch.schema().field(2).name().as_str()), (3, "score"));
/// ```
#[derive(Debug, Default)]
pub struct OutputRows {
    users: Vec<String>,
    items: Vec<String>,
    scores: Vec<f32>,
}

impl OutputRows {
    pub fn new() -> OutputRows {
        OutputRows::default()
    }

    pub fn push(&mut self, user: &str, item: &str, score: f32) {
        self.users.push(user.to_owned());
        self.items.push(item.to_owned());
        self.scores.push(score);
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The rows as a batch with the output schema (user utf8, item utf8, score float32).
    pub fn into_batch(self) -> Result<RecordBatch, PluginError> {
        let schema = Schema::new(vec![
            Field::new(output::USER, DataType::Utf8, false),
            Field::new(output::ITEM, DataType::Utf8, false),
            Field::new(output::SCORE, DataType::Float32, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(self.users)),
                Arc::new(StringArray::from(self.items)),
                Arc::new(Float32Array::from(self.scores)),
            ],
        )
        .map_err(|e| PluginError::internal(format!("building output rows: {e}")))
    }
}

/// The type of one hash field, declared once for every row of a [`HashRows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Float,
    Int,
    Bool,
}

/// One field's value in [`HashRows::push`]; `Null` leaves the field out of that user's hash.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HashValue<'a> {
    Text(&'a str),
    Float(f64),
    Int(i64),
    Bool(bool),
    Null,
}

/// One declared field's values, row by row.
#[derive(Debug)]
enum FieldValues {
    Text(Vec<Option<String>>),
    Float(Vec<Option<f64>>),
    Int(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
}

/// Hash rows (a job with `output = "hashes"`) gathered one user at a time: the fields are
/// declared once with their types, then each user's values come in that order. The batch
/// has the schema a host takes for hashes: `user` Utf8, then one column per field (Utf8,
/// Float64, Int64 or Boolean, nullable). A host stores each non-null value as text:
/// numbers in their shortest exact form, booleans as 1 and 0.
///
/// ```
/// use recd_plugin_api::{FieldType, HashRows, HashValue};
///
/// let mut rows = HashRows::new(&[("p_churn", FieldType::Float), ("tier", FieldType::Text)]);
/// rows.push("u1", &[HashValue::Float(0.83), HashValue::Text("high")]).unwrap();
/// rows.push("u2", &[HashValue::Float(0.12), HashValue::Null]).unwrap();
/// // a value of the wrong type, or too few, is refused with the field's name
/// let err = rows.push("u3", &[HashValue::Text("x"), HashValue::Null]).unwrap_err();
/// assert_eq!(err.message, "hash row of user \"u3\": field `p_churn` is declared Float, got Text(\"x\")");
/// let batch = rows.into_batch().unwrap();
/// assert_eq!((batch.num_rows(), batch.num_columns()), (2, 3));
/// ```
#[derive(Debug)]
pub struct HashRows {
    names: Vec<String>,
    users: Vec<String>,
    values: Vec<FieldValues>,
}

impl HashRows {
    /// Declares the fields, in the order each row gives its values.
    pub fn new(fields: &[(&str, FieldType)]) -> HashRows {
        let values = fields
            .iter()
            .map(|(_, t)| match t {
                FieldType::Text => FieldValues::Text(Vec::new()),
                FieldType::Float => FieldValues::Float(Vec::new()),
                FieldType::Int => FieldValues::Int(Vec::new()),
                FieldType::Bool => FieldValues::Bool(Vec::new()),
            })
            .collect();
        HashRows { names: fields.iter().map(|(n, _)| n.to_string()).collect(), users: Vec::new(), values }
    }

    /// Adds `user`'s hash: one value per declared field, in order. Nothing is added when a
    /// value is missing or of another type than its field's.
    pub fn push(&mut self, user: &str, values: &[HashValue<'_>]) -> Result<(), PluginError> {
        let bad = |message: String| PluginError::internal(format!("hash row of user {user:?}: {message}"));
        if values.len() != self.names.len() {
            return Err(bad(format!("{} values for {} declared fields", values.len(), self.names.len())));
        }
        for ((name, column), value) in self.names.iter().zip(&self.values).zip(values) {
            let fits = matches!(
                (column, value),
                (_, HashValue::Null)
                    | (FieldValues::Text(_), HashValue::Text(_))
                    | (FieldValues::Float(_), HashValue::Float(_))
                    | (FieldValues::Int(_), HashValue::Int(_))
                    | (FieldValues::Bool(_), HashValue::Bool(_))
            );
            if !fits {
                let declared = match column {
                    FieldValues::Text(_) => "Text",
                    FieldValues::Float(_) => "Float",
                    FieldValues::Int(_) => "Int",
                    FieldValues::Bool(_) => "Bool",
                };
                return Err(bad(format!("field `{name}` is declared {declared}, got {value:?}")));
            }
        }
        for (column, value) in self.values.iter_mut().zip(values) {
            match (column, *value) {
                (FieldValues::Text(v), HashValue::Text(t)) => v.push(Some(t.to_owned())),
                (FieldValues::Float(v), HashValue::Float(f)) => v.push(Some(f)),
                (FieldValues::Int(v), HashValue::Int(i)) => v.push(Some(i)),
                (FieldValues::Bool(v), HashValue::Bool(b)) => v.push(Some(b)),
                (FieldValues::Text(v), _) => v.push(None),
                (FieldValues::Float(v), _) => v.push(None),
                (FieldValues::Int(v), _) => v.push(None),
                (FieldValues::Bool(v), _) => v.push(None),
            }
        }
        self.users.push(user.to_owned());
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The rows as a batch for `RunContext::emit`.
    pub fn into_batch(self) -> Result<RecordBatch, PluginError> {
        use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array};
        let mut fields = vec![Field::new(output::USER, DataType::Utf8, false)];
        let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(self.users))];
        for (name, values) in self.names.into_iter().zip(self.values) {
            let (data_type, column): (DataType, ArrayRef) = match values {
                FieldValues::Text(v) => (DataType::Utf8, Arc::new(StringArray::from(v))),
                FieldValues::Float(v) => (DataType::Float64, Arc::new(Float64Array::from(v))),
                FieldValues::Int(v) => (DataType::Int64, Arc::new(Int64Array::from(v))),
                FieldValues::Bool(v) => (DataType::Boolean, Arc::new(BooleanArray::from(v))),
            };
            fields.push(Field::new(name, data_type, true));
            columns.push(column);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| PluginError::internal(format!("building hash rows: {e}")))
    }
}
