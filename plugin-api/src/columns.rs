//! Small helpers strategies need to read input columns whatever their Arrow type: a CSV
//! reader infers ids as integers where a Parquet file holds strings, counts come as any
//! integer or float width. Every error names the input and the column.
//!
//! ```
//! use std::sync::Arc;
//! use recd_plugin_api::arrow_array::{Int64Array, RecordBatch, StringArray};
//! use recd_plugin_api::arrow_schema::{DataType, Field, Schema};
//! use recd_plugin_api::columns::{column, ids_as_strings, numbers};
//!
//! let schema = Arc::new(Schema::new(vec![
//!     Field::new("user_id", DataType::Int64, false),
//!     Field::new("quantity", DataType::Int64, true),
//! ]));
//! let batch = RecordBatch::try_new(schema, vec![
//!     Arc::new(Int64Array::from(vec![17850, 13047])),
//!     Arc::new(Int64Array::from(vec![Some(6), None])),
//! ]).unwrap();
//! let ids = ids_as_strings(column(&batch, "interactions", "user_id").unwrap(), "user_id").unwrap();
//! assert_eq!(ids, [Some("17850".to_string()), Some("13047".to_string())]);
//! let quantity = numbers(column(&batch, "interactions", "quantity").unwrap(), "quantity").unwrap();
//! assert_eq!(quantity, [Some(6.0), None]);
//! let err = column(&batch, "interactions", "item_id").map(|_| ()).unwrap_err();
//! assert_eq!(err.message, "input `interactions` has no column `item_id` (columns: user_id, quantity)");
//! ```

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;

use crate::PluginError;

/// The column `name` of `batch`, or an `INVALID_INPUT` error naming the table and column.
pub fn column<'b>(batch: &'b RecordBatch, table: &str, name: &str) -> Result<&'b dyn Array, PluginError> {
    let at = positions(batch.schema_ref(), table, &[name])?[0];
    Ok(batch.column(at).as_ref())
}

/// The positions of `columns` in `schema`, in that order, for a projection; an
/// `INVALID_INPUT` error names the first column input `table` lacks.
pub fn positions(schema: &arrow_schema::Schema, table: &str, columns: &[&str]) -> Result<Vec<usize>, PluginError> {
    columns
        .iter()
        .map(|name| {
            schema.index_of(name).map_err(|_| {
                let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                PluginError::input(format!("input `{table}` has no column `{name}` (columns: {})", have.join(", ")))
            })
        })
        .collect()
}

/// Reads an id column as strings: utf8 as is, integers in decimal. CSV readers infer
/// numeric ids as integers, Parquet files usually hold them as strings; both mean the same id.
pub fn ids_as_strings(col: &dyn Array, what: &str) -> Result<Vec<Option<String>>, PluginError> {
    let out = match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().iter().map(|v| v.map(str::to_owned)).collect(),
        DataType::LargeUtf8 => col.as_string::<i64>().iter().map(|v| v.map(str::to_owned)).collect(),
        DataType::Utf8View => col.as_string_view().iter().map(|v| v.map(str::to_owned)).collect(),
        DataType::Int64 => ints(col.as_primitive::<Int64Type>().iter()),
        DataType::Int32 => ints(col.as_primitive::<Int32Type>().iter()),
        DataType::UInt64 => ints(col.as_primitive::<UInt64Type>().iter()),
        DataType::UInt32 => ints(col.as_primitive::<UInt32Type>().iter()),
        other => {
            return Err(PluginError::input(format!("{what}: expected a string or integer id column, found {other}")));
        }
    };
    Ok(out)
}

fn ints<T: ToString>(it: impl Iterator<Item = Option<T>>) -> Vec<Option<String>> {
    it.map(|v| v.map(|x| x.to_string())).collect()
}

/// Reads a numeric column as f64 (nulls as `None`).
pub fn numbers(col: &dyn Array, what: &str) -> Result<Vec<Option<f64>>, PluginError> {
    let out = match col.data_type() {
        DataType::Float64 => col.as_primitive::<Float64Type>().iter().collect(),
        DataType::Float32 => col.as_primitive::<Float32Type>().iter().map(|v| v.map(f64::from)).collect(),
        DataType::Int64 => col.as_primitive::<Int64Type>().iter().map(|v| v.map(|x| x as f64)).collect(),
        DataType::Int32 => col.as_primitive::<Int32Type>().iter().map(|v| v.map(f64::from)).collect(),
        other => {
            return Err(PluginError::input(format!("{what}: expected a numeric column, found {other}")));
        }
    };
    Ok(out)
}

/// Reads a column of float vectors (a fixed-size list, list or large list of float32 or
/// float64), one per row; a null row as `None`. A null inside a vector is an error naming
/// its row (counted from 0).
pub fn float_lists(col: &dyn Array, what: &str) -> Result<Vec<Option<Vec<f64>>>, PluginError> {
    let element = match col.data_type() {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => f.data_type(),
        _ => &DataType::Null,
    };
    if !matches!(element, DataType::Float32 | DataType::Float64) {
        return Err(PluginError::input(format!(
            "{what}: expected a list of float32 or float64, found {}",
            col.data_type()
        )));
    }
    let rows: Vec<Option<arrow_array::ArrayRef>> = match col.data_type() {
        DataType::FixedSizeList(..) => col.as_fixed_size_list().iter().collect(),
        DataType::List(_) => col.as_list::<i32>().iter().collect(),
        _ => col.as_list::<i64>().iter().collect(),
    };
    rows.into_iter()
        .enumerate()
        .map(|(row, values)| {
            let Some(values) = values else { return Ok(None) };
            let vector: Option<Vec<f64>> = numbers(values.as_ref(), what)?.into_iter().collect();
            vector.map(Some).ok_or_else(|| PluginError::input(format!("{what} row {row}: the vector has a null value")))
        })
        .collect()
}

/// Reads a boolean column (nulls as `None`).
pub fn booleans(col: &dyn Array, what: &str) -> Result<Vec<Option<bool>>, PluginError> {
    match col.data_type() {
        DataType::Boolean => Ok(col.as_boolean().iter().collect()),
        other => Err(PluginError::input(format!("{what}: expected a boolean column, found {other}"))),
    }
}

/// Integers above this are epoch milliseconds, not seconds: milliseconds since 1970 pass
/// it in March 1973, seconds only in the year 5138.
pub const EPOCH_MS_ABOVE: i64 = 100_000_000_000;

/// Reads a time column as seconds since 1970 (fractions kept): any Arrow timestamp unit,
/// or plain integers, epoch seconds or, when every value's magnitude passes
/// [`EPOCH_MS_ABOVE`], epoch milliseconds. A column with values on both sides of it is
/// refused: one stray value must not turn every time into 1970. Nulls as `None`.
pub fn seconds(col: &dyn Array, what: &str) -> Result<Vec<Option<f64>>, PluginError> {
    use arrow_array::types::{
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
    };
    use arrow_schema::TimeUnit;
    let scaled = |values: Vec<Option<i64>>, per_second: f64| {
        values.into_iter().map(|v| v.map(|x| x as f64 / per_second)).collect()
    };
    Ok(match col.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            scaled(col.as_primitive::<TimestampSecondType>().iter().collect(), 1.0)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            scaled(col.as_primitive::<TimestampMillisecondType>().iter().collect(), 1e3)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            scaled(col.as_primitive::<TimestampMicrosecondType>().iter().collect(), 1e6)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            scaled(col.as_primitive::<TimestampNanosecondType>().iter().collect(), 1e9)
        }
        DataType::Int64 => {
            let values: Vec<Option<i64>> = col.as_primitive::<Int64Type>().iter().collect();
            let large = |v: &i64| v.unsigned_abs() > EPOCH_MS_ABOVE as u64;
            let millis = values.iter().flatten().any(large);
            if millis && !values.iter().flatten().all(large) {
                return Err(PluginError::input(format!(
                    "{what}: mixes epoch seconds and milliseconds (values on both sides of {EPOCH_MS_ABOVE})"
                )));
            }
            scaled(values, if millis { 1e3 } else { 1.0 })
        }
        other => {
            return Err(PluginError::input(format!("{what}: expected a timestamp or integer seconds, found {other}")));
        }
    })
}

#[cfg(test)]
mod tests {
    use arrow_array::types::{Float32Type, Float64Type};
    use arrow_array::{FixedSizeListArray, Int64Array, ListArray, StringArray};

    use super::*;

    #[test]
    fn integer_times_are_epoch_seconds_or_by_their_size_milliseconds() {
        let secs = Int64Array::from(vec![Some(1_609_459_200), None, Some(0)]);
        assert_eq!(seconds(&secs, "ts").unwrap(), [Some(1_609_459_200.0), None, Some(0.0)]);
        let millis = Int64Array::from(vec![Some(1_609_459_200_500), None, Some(1_609_459_201_000)]);
        assert_eq!(seconds(&millis, "ts").unwrap(), [Some(1_609_459_200.5), None, Some(1_609_459_201.0)]);
        let mixed = Int64Array::from(vec![Some(1_609_459_200), Some(253_402_300_799_000)]);
        assert!(seconds(&mixed, "ts").unwrap_err().message.contains("mixes epoch seconds and milliseconds"));
    }

    #[test]
    fn float_lists_reads_every_list_shape_and_names_a_bad_row() {
        let fixed = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
            [Some(vec![Some(1.5), Some(-2.0)]), None, Some(vec![Some(0.0), Some(4.0)])],
            2,
        );
        assert_eq!(float_lists(&fixed, "e").unwrap(), [Some(vec![1.5, -2.0]), None, Some(vec![0.0, 4.0])]);
        let ragged = ListArray::from_iter_primitive::<Float64Type, _, _>([Some(vec![Some(0.25)]), Some(vec![]), None]);
        assert_eq!(float_lists(&ragged, "e").unwrap(), [Some(vec![0.25]), Some(vec![]), None]);
        let holed = ListArray::from_iter_primitive::<Float64Type, _, _>([Some(vec![Some(1.0)]), Some(vec![None])]);
        assert_eq!(float_lists(&holed, "e").unwrap_err().message, "e row 1: the vector has a null value");
        let text = StringArray::from(vec!["[1, 2]"]);
        assert_eq!(
            float_lists(&text, "e").unwrap_err().message,
            "e: expected a list of float32 or float64, found Utf8"
        );
    }
}
