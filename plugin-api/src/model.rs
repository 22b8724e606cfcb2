//! Model inputs as the job binds them. The host hands a run whose job has a model one
//! extra input table, [`MODEL_INPUTS_TABLE`], with one row per input of the model: its
//! name, the feature the job's `[model_inputs]` binds to it (by default, the input's own
//! name) and the element type the model wants. A strategy builds each scoring batch from
//! it: for every row, the named feature's values as a column named after the input, via
//! [`model_column`]. Column `batch_rows` (the same in every row) is how many rows per
//! `score` call the host prefers for the model's device, 0 for no preference
//! ([`preferred_batch_rows`]).

use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch};
use arrow_schema::{Field, Schema};

use crate::PluginError;
use crate::columns::{column, ids_as_strings};

pub use crate::abi::MODEL_INPUTS_TABLE;

/// One input of the job's model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInput {
    /// The model's name for the input.
    pub input: String,
    /// The feature the job binds to it.
    pub feature: String,
    /// Element type the model wants: "int64", "int32", "float32" or "float64".
    pub dtype: String,
}

/// Reads the [`MODEL_INPUTS_TABLE`] batch.
pub fn read_model_inputs(batch: &RecordBatch) -> Result<Vec<ModelInput>, PluginError> {
    let t = MODEL_INPUTS_TABLE;
    let get = |name: &str| -> Result<Vec<String>, PluginError> {
        let values = ids_as_strings(column(batch, t, name)?, &format!("{t}.{name}"))?;
        Ok(values.into_iter().map(Option::unwrap_or_default).collect())
    };
    let (inputs, features, dtypes) = (get("input")?, get("feature")?, get("dtype")?);
    Ok(inputs
        .into_iter()
        .zip(features)
        .zip(dtypes)
        .map(|((input, feature), dtype)| ModelInput { input, feature, dtype })
        .collect())
}

/// The rows per `score` call the host prefers ([`MODEL_INPUTS_TABLE`] column
/// `batch_rows`): None when it has none (0, or a host older than the column). A recd
/// worker prefers none on the CPU, where the strategy's own rule knows its work best,
/// and a size chosen for the GPU's free memory on CUDA.
pub fn preferred_batch_rows(batch: &RecordBatch) -> Option<usize> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt64Type;
    let rows = batch.column_by_name("batch_rows")?.as_primitive_opt::<UInt64Type>()?;
    rows.iter().flatten().next().filter(|&n| n > 0).and_then(|n| usize::try_from(n).ok())
}

/// A feature's values for a batch of rows.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValues {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// The column for model input `input` from a feature's values, in the model's type.
/// Integers convert to any numeric type; fractional values only to floats.
pub fn model_column(input: &ModelInput, values: FeatureValues) -> Result<ArrayRef, PluginError> {
    let wrong = |have: &str| {
        PluginError::input(format!(
            "model input `{}` wants {}, but feature `{}` holds {have}",
            input.input, input.dtype, input.feature
        ))
    };
    let column: ArrayRef = match (input.dtype.as_str(), values) {
        ("int64", FeatureValues::Int(v)) => Arc::new(Int64Array::from(v)),
        ("int32", FeatureValues::Int(v)) => {
            let v: Result<Vec<i32>, _> = v.into_iter().map(i32::try_from).collect();
            Arc::new(Int32Array::from(v.map_err(|_| wrong("values beyond int32"))?))
        }
        ("float32", FeatureValues::Int(v)) => Arc::new(Float32Array::from_iter_values(v.into_iter().map(|x| x as f32))),
        ("float64", FeatureValues::Int(v)) => Arc::new(Float64Array::from_iter_values(v.into_iter().map(|x| x as f64))),
        ("float32", FeatureValues::Float(v)) => {
            Arc::new(Float32Array::from_iter_values(v.into_iter().map(|x| x as f32)))
        }
        ("float64", FeatureValues::Float(v)) => Arc::new(Float64Array::from(v)),
        ("int64" | "int32", FeatureValues::Float(_)) => return Err(wrong("fractional numbers")),
        (other, _) => {
            return Err(PluginError::input(format!(
                "model input `{}` has element type {other}, which recd cannot feed",
                input.input
            )));
        }
    };
    Ok(column)
}

/// A scoring batch from (input name, column) pairs.
pub fn scoring_batch(columns: Vec<(String, ArrayRef)>) -> Result<RecordBatch, PluginError> {
    let fields: Vec<Field> = columns.iter().map(|(n, c)| Field::new(n, c.data_type().clone(), false)).collect();
    let arrays = columns.into_iter().map(|(_, c)| c).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| PluginError::internal(format!("building the scoring batch: {e}")))
}

/// Checks every bound feature is one the strategy offers; the error names the job key.
pub fn check_features(
    inputs: &[ModelInput],
    offered: &dyn Fn(&str) -> bool,
    offered_text: &str,
) -> Result<(), PluginError> {
    match inputs.iter().find(|i| !offered(&i.feature)) {
        None => Ok(()),
        Some(i) => Err(PluginError::params(format!(
            "model_inputs.{}: unknown feature `{}` (this strategy offers: {offered_text})",
            i.input, i.feature
        ))),
    }
}
