//! Reads a job's input tables (CSV or Parquet) into one Arrow record batch each.

use std::fs::File;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_csv::reader::Format;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::job::{Input, InputFormat};

pub fn read(input: &Input) -> anyhow::Result<RecordBatch> {
    let shown = input.path.display();
    let batches = match input.format {
        InputFormat::Csv => read_csv(input),
        InputFormat::Parquet => read_parquet(input),
        InputFormat::ArrowIpc => read_ipc(input),
        InputFormat::Table => Err(anyhow::anyhow!("table inputs are exported by the daemon before the run")),
    }
    .map_err(|e| anyhow::anyhow!("input `{}` ({shown}): {e}", input.name))?;
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => anyhow::bail!("input `{}` ({shown}) has no rows", input.name),
    };
    if batches.len() == 1 {
        return Ok(batches.into_iter().next().expect("one batch"));
    }
    Ok(arrow_select::concat::concat_batches(&schema, &batches)?)
}

/// The schema `read` would give `input`, without reading its rows (a CSV's is inferred
/// from its first rows, as `read` does). A `table:` input has the exported list schema.
pub fn schema(input: &Input) -> anyhow::Result<arrow_schema::SchemaRef> {
    match input.format {
        InputFormat::Csv => {
            let (schema, _) =
                Format::default().with_header(true).infer_schema(File::open(&input.path)?, Some(10_000))?;
            Ok(Arc::new(schema))
        }
        InputFormat::Parquet => {
            Ok(ParquetRecordBatchReaderBuilder::try_new(File::open(&input.path)?)?.schema().clone())
        }
        InputFormat::ArrowIpc => Ok(arrow_ipc::reader::FileReader::try_new(File::open(&input.path)?, None)?.schema()),
        InputFormat::Table => Ok(crate::runner::exported_table_schema()),
    }
}

fn read_csv(input: &Input) -> anyhow::Result<Vec<RecordBatch>> {
    let mut file = File::open(&input.path)?;
    let format = Format::default().with_header(true);
    let (schema, _) = format.infer_schema(&mut file, Some(10_000))?;
    let file = File::open(&input.path)?;
    let reader =
        arrow_csv::ReaderBuilder::new(Arc::new(schema)).with_format(format).with_batch_size(64 * 1024).build(file)?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

fn read_ipc(input: &Input) -> anyhow::Result<Vec<RecordBatch>> {
    let reader = arrow_ipc::reader::FileReader::try_new(File::open(&input.path)?, None)?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// The whole file as one batch, decoded straight into it: reading in small batches and
/// concatenating them held every row twice at the peak.
fn read_parquet(input: &Input) -> anyhow::Result<Vec<RecordBatch>> {
    let file = File::open(&input.path)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let rows = builder.metadata().file_metadata().num_rows().max(1) as usize;
    let reader = builder.with_batch_size(rows).build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}
