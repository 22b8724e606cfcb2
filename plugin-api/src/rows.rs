//! Building the rows a strategy emits: `(user, item, score)`, one user's rows together.

use std::sync::Arc;

use arrow_array::{Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

use crate::PluginError;
use crate::abi::output;

/// Output rows gathered one at a time; `into_batch` makes the batch `RunContext::emit` takes.
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
