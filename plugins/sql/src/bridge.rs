//! Tables between the host's Arrow (the workspace's version) and DataFusion's (one major
//! version behind), in the Arrow IPC stream format both read and write. Safe code only: a
//! copy per table, small beside the query, where sharing buffers across the two versions
//! would need the C Data Interface and `unsafe`.

use datafusion::arrow::ipc::reader::StreamReader as DfReader;
use datafusion::arrow::ipc::writer::StreamWriter as DfWriter;
use datafusion::arrow::record_batch::RecordBatch as DfBatch;
use recd_plugin_api::PluginError;

/// A host table as a DataFusion table.
pub fn to_datafusion(batch: &arrow_array::RecordBatch) -> Result<DfBatch, String> {
    let mut bytes = Vec::new();
    {
        let mut w =
            arrow_ipc::writer::StreamWriter::try_new(&mut bytes, batch.schema_ref()).map_err(|e| e.to_string())?;
        w.write(batch).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    let mut reader = DfReader::try_new(bytes.as_slice(), None).map_err(|e| e.to_string())?;
    let schema = reader.schema();
    match reader.next() {
        Some(b) => b.map_err(|e| e.to_string()),
        None => Ok(DfBatch::new_empty(schema)),
    }
}

/// A query result batch as a host batch.
pub fn from_datafusion(batch: &DfBatch) -> Result<arrow_array::RecordBatch, PluginError> {
    let fail = |e: String| PluginError::internal(format!("query result to the host's Arrow: {e}"));
    let mut bytes = Vec::new();
    {
        let mut w = DfWriter::try_new(&mut bytes, batch.schema_ref()).map_err(|e| fail(e.to_string()))?;
        w.write(batch).map_err(|e| fail(e.to_string()))?;
        w.finish().map_err(|e| fail(e.to_string()))?;
    }
    let mut reader =
        arrow_ipc::reader::StreamReader::try_new(bytes.as_slice(), None).map_err(|e| fail(e.to_string()))?;
    let schema = reader.schema();
    match reader.next() {
        Some(b) => b.map_err(|e| fail(e.to_string())),
        None => Ok(arrow_array::RecordBatch::new_empty(schema)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
    use arrow_schema::{DataType, Field, Schema, TimeUnit};

    use super::*;

    #[test]
    fn a_table_crosses_both_ways_unchanged() {
        let schema = Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(TimestampMillisecondArray::from(vec![0, 1_000]).with_timezone("UTC")),
            ],
        )
        .unwrap();
        let there = to_datafusion(&batch).unwrap();
        assert_eq!(there.num_rows(), 2);
        assert_eq!(from_datafusion(&there).unwrap(), batch);
        let empty = RecordBatch::new_empty(batch.schema());
        assert_eq!(from_datafusion(&to_datafusion(&empty).unwrap()).unwrap(), empty);
    }
}
