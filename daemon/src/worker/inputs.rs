//! Reads a job's input tables (CSV, Parquet or Arrow IPC): whole, into one record batch
//! each ([`read`]), or as a stream of batches for a plugin that pulls them ([`stream`]).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_csv::reader::Format;
use arrow_schema::{ArrowError, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::job::{Input, InputFormat};

/// The input's file, if it is a regular file (a FIFO in its place must not block the run).
fn open(input: &Input) -> anyhow::Result<File> {
    let (file, _) = crate::fsutil::open_regular(&input.path, u64::MAX)
        .map_err(|e| anyhow::anyhow!("{} {e}", input.path.display()))?;
    Ok(file)
}

pub fn read(input: &Input) -> anyhow::Result<RecordBatch> {
    read_with_text(input, &[])
}

/// [`read`], with the CSV columns named in `text` read as text whatever their values
/// look like: an id column of `017850`, `000123` would be inferred as integers and lose
/// its zeros (Parquet and Arrow files say their own types).
pub fn read_with_text(input: &Input, text: &[&str]) -> anyhow::Result<RecordBatch> {
    let batches = match input.format {
        InputFormat::Parquet => read_parquet(input),
        _ => schema(input).and_then(|full| {
            let full = as_text(&full, text);
            let every: Vec<usize> = (0..full.fields().len()).collect();
            Ok(open_batches(input, &full, &every, STREAM_BATCH_ROWS)?.collect::<Result<Vec<_>, _>>()?)
        }),
    }
    .map_err(|e| named(input, e))?;
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => anyhow::bail!("input `{}` ({}) has no rows", input.name, input.path.display()),
    };
    if batches.len() == 1 {
        return Ok(batches.into_iter().next().expect("one batch"));
    }
    Ok(arrow_select::concat::concat_batches(&schema, &batches)?)
}

/// Rows a CSV's column types are inferred from.
const INFER_ROWS: usize = 10_000;

/// The CSV columns inferred as integers whose text has a leading zero (`017850`) in the
/// rows the types were inferred from: ids, not numbers, read as text so that they keep
/// their zeros (and match the same ids read elsewhere as text).
fn zero_padded(file: File, format: Format, inferred: &SchemaRef) -> anyhow::Result<Vec<String>> {
    let ints: Vec<usize> =
        (0..inferred.fields().len()).filter(|&i| inferred.field(i).data_type().is_integer()).collect();
    if ints.is_empty() {
        return Ok(Vec::new());
    }
    let text = as_text(inferred, &ints.iter().map(|&i| inferred.field(i).name().as_str()).collect::<Vec<_>>());
    let mut reader = arrow_csv::ReaderBuilder::new(text)
        .with_format(format)
        .with_batch_size(INFER_ROWS)
        .with_projection(ints.clone())
        .build(file)?;
    let Some(batch) = reader.next().transpose()? else { return Ok(Vec::new()) };
    let padded = |col: &dyn arrow_array::Array| {
        let values = arrow_array::cast::AsArray::as_string::<i32>(col);
        values.iter().flatten().any(|v| {
            let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
            digits.len() > 1 && digits.starts_with('0')
        })
    };
    Ok(ints
        .iter()
        .enumerate()
        .filter(|(at, _)| padded(batch.column(*at).as_ref()))
        .map(|(_, &i)| inferred.field(i).name().clone())
        .collect())
}

/// A delimited text file that is not a job input's CSV (`recd init`'s source): fields
/// split by `delimiter`, and named by `names` for a file without a header row. Types are
/// inferred as for CSV inputs, zero-padded integer columns read as text.
pub fn read_delimited(path: &Path, delimiter: u8, names: Option<&[String]>) -> anyhow::Result<RecordBatch> {
    let open = || -> anyhow::Result<File> {
        let (file, _) = crate::fsutil::open_regular(path, u64::MAX).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(file)
    };
    let format = Format::default().with_delimiter(delimiter).with_header(names.is_none());
    let (inferred, _) = format.clone().infer_schema(open()?, Some(INFER_ROWS))?;
    let inferred = match names {
        None => Arc::new(inferred),
        Some(names) if names.len() == inferred.fields().len() => Arc::new(arrow_schema::Schema::new(
            inferred.fields().iter().zip(names).map(|(f, n)| f.as_ref().clone().with_name(n)).collect::<Vec<_>>(),
        )),
        Some(names) => anyhow::bail!(
            "{} column names given, but the first lines have {} fields (is the delimiter right?)",
            names.len(),
            inferred.fields().len()
        ),
    };
    let padded = zero_padded(open()?, format.clone(), &inferred)?;
    let schema = as_text(&inferred, &padded.iter().map(String::as_str).collect::<Vec<_>>());
    let reader = arrow_csv::ReaderBuilder::new(schema.clone()).with_format(format).build(open()?)?;
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(batches.iter().any(|b| b.num_rows() > 0), "no rows");
    Ok(arrow_select::concat::concat_batches(&schema, &batches)?)
}

/// `schema` with the fields named in `text` turned to UTF-8.
fn as_text(schema: &SchemaRef, text: &[&str]) -> SchemaRef {
    if text.is_empty() {
        return schema.clone();
    }
    let fields: Vec<arrow_schema::Field> = schema
        .fields()
        .iter()
        .map(|f| match text.contains(&f.name().as_str()) {
            true => f.as_ref().clone().with_data_type(arrow_schema::DataType::Utf8),
            false => f.as_ref().clone(),
        })
        .collect();
    Arc::new(arrow_schema::Schema::new(fields))
}

/// An error about `input`, naming it and its file.
fn named(input: &Input, e: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!("input `{}` ({}): {e:#}", input.name, input.path.display())
}

/// [`schema`], its error naming the input and its file.
pub fn named_schema(input: &Input) -> anyhow::Result<SchemaRef> {
    schema(input).map_err(|e| named(input, e))
}

/// The schema `read` would give `input`, without reading its rows (a CSV's is inferred
/// from its first rows, as `read` does). A `table:` input has the exported list schema.
pub fn schema(input: &Input) -> anyhow::Result<arrow_schema::SchemaRef> {
    match input.format {
        InputFormat::Csv => {
            let (schema, _) = Format::default().with_header(true).infer_schema(open(input)?, Some(INFER_ROWS))?;
            let schema = Arc::new(schema);
            let padded = zero_padded(open(input)?, Format::default().with_header(true), &schema)?;
            let padded: Vec<&str> = padded.iter().map(String::as_str).collect();
            Ok(as_text(&schema, &padded))
        }
        InputFormat::Parquet => Ok(ParquetRecordBatchReaderBuilder::try_new(open(input)?)?.schema().clone()),
        InputFormat::ArrowIpc => Ok(arrow_ipc::reader::FileReader::try_new(open(input)?, None)?.schema()),
        InputFormat::Table => Ok(crate::tables::lists_schema()),
    }
}

/// The whole file as one batch, decoded straight into it: reading in small batches and
/// concatenating them held every row twice at the peak.
fn read_parquet(input: &Input) -> anyhow::Result<Vec<RecordBatch>> {
    let file = open(input)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let rows = builder.metadata().file_metadata().num_rows().max(1) as usize;
    let reader = builder.with_batch_size(rows).build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// Rows per batch of a streamed input: big enough that per-batch costs vanish, small
/// enough that a batch of a few columns stays within a few MB.
const STREAM_BATCH_ROWS: usize = 64 * 1024;

/// Input `input` as a stream of batches of at most [`STREAM_BATCH_ROWS`] rows, projected
/// onto `columns` in that order (empty: every column). Only the asked-for columns are
/// decoded. A column the input lacks is an error here; a file that turns out to have no
/// rows ends the stream with an error, as [`read`] refuses it.
pub fn stream(input: &Input, columns: &[String]) -> anyhow::Result<Box<dyn RecordBatchReader + Send>> {
    stream_in(input, columns, STREAM_BATCH_ROWS)
}

fn stream_in(
    input: &Input,
    columns: &[String],
    batch_rows: usize,
) -> anyhow::Result<Box<dyn RecordBatchReader + Send>> {
    let full = named_schema(input)?;
    let wanted: Vec<&str> = columns.iter().map(String::as_str).collect();
    let order = if wanted.is_empty() {
        (0..full.fields().len()).collect()
    } else {
        recd_plugin_api::columns::positions(&full, &input.name, &wanted).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    // Formats project in file order: read the columns sorted, then put them in the order asked.
    let mut read_cols = order.clone();
    read_cols.sort_unstable();
    read_cols.dedup();
    let batches = open_batches(input, &full, &read_cols, batch_rows).map_err(|e| named(input, e))?;
    let read_schema = Arc::new(full.project(&read_cols)?);
    let reorder: Vec<usize> = order.iter().map(|c| read_cols.binary_search(c).expect("a read column")).collect();
    let out_schema = Arc::new(read_schema.project(&reorder)?);
    Ok(Box::new(InputReader {
        batches,
        reorder,
        schema: out_schema,
        rows: 0,
        what: format!("input `{}` ({})", input.name, input.path.display()),
    }))
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

/// The input's batches with columns `read_cols` (ascending positions in `full`).
fn open_batches(input: &Input, full: &SchemaRef, read_cols: &[usize], batch_rows: usize) -> anyhow::Result<Batches> {
    let file = open(input)?;
    Ok(match input.format {
        InputFormat::Csv => Box::new(
            arrow_csv::ReaderBuilder::new(full.clone())
                .with_format(Format::default().with_header(true))
                .with_batch_size(batch_rows)
                .with_projection(read_cols.to_vec())
                .build(file)?,
        ),
        InputFormat::Parquet => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
            let mask = ProjectionMask::roots(builder.parquet_schema(), read_cols.iter().copied());
            Box::new(builder.with_projection(mask).with_batch_size(batch_rows).build()?)
        }
        InputFormat::ArrowIpc => Box::new(arrow_ipc::reader::FileReader::try_new(file, Some(read_cols.to_vec()))?),
        InputFormat::Table => anyhow::bail!("table inputs are exported by the daemon before the run"),
    })
}

/// A streamed input: its batches with the columns in the order asked, and an error at the
/// end when it had no rows at all.
struct InputReader {
    batches: Batches,
    reorder: Vec<usize>,
    schema: SchemaRef,
    rows: u64,
    what: String,
}

impl Iterator for InputReader {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Empty batches (a file may hold some) are skipped: a consumer never sees one.
        let next = loop {
            match self.batches.next() {
                Some(Ok(batch)) if batch.num_rows() == 0 => continue,
                other => break other,
            }
        };
        let Some(next) = next else {
            // Once: `rows` is set past zero so a reader polled again just ends.
            if self.rows == 0 {
                self.rows = u64::MAX;
                return Some(Err(ArrowError::ExternalError(format!("{} has no rows", self.what).into())));
            }
            return None;
        };
        Some(
            next.and_then(|batch| {
                self.rows = self.rows.saturating_add(batch.num_rows() as u64);
                let columns = self.reorder.iter().map(|&c| batch.column(c).clone()).collect();
                RecordBatch::try_new(self.schema.clone(), columns)
            })
            .map_err(|e| ArrowError::ExternalError(format!("{}: {e}", self.what).into())),
        )
    }
}

impl RecordBatchReader for InputReader {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    /// 10 rows: user u0..u9, n 0..9, note x0..x9.
    fn table() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("note", DataType::Utf8, false),
        ]);
        let users: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
        let notes: Vec<String> = (0..10).map(|i| format!("x{i}")).collect();
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(users)),
                Arc::new(Int64Array::from((0..10).collect::<Vec<i64>>())),
                Arc::new(StringArray::from(notes)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn csv_ids_with_leading_zeros_are_read_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.csv");
        std::fs::write(&path, "user_id,item_id,n\n017850,0042,7\n000123,9,8\n").unwrap();
        let input = Input { name: "ids".into(), path, format: InputFormat::Csv, registry: None };
        // Zero-padded in the rows types are inferred from: text, whatever is asked.
        let inferred = read(&input).unwrap();
        let as_read = |b: &RecordBatch, c: usize| -> Vec<String> {
            b.column(c).as_string::<i32>().iter().map(|v| v.unwrap().into()).collect()
        };
        assert_eq!(as_read(&inferred, 0), ["017850", "000123"]);
        assert_eq!(as_read(&inferred, 1), ["0042", "9"]);
        // Plain integers stay integers, unless asked for as text.
        let plain = dir.path().join("plain.csv");
        std::fs::write(&plain, "user_id,n\n17850,7\n-0,8\n").unwrap();
        let plain = Input { name: "plain".into(), path: plain, format: InputFormat::Csv, registry: None };
        assert_eq!(read(&plain).unwrap().column(0).as_primitive::<Int64Type>().value(0), 17850);
        assert_eq!(as_read(&read_with_text(&plain, &["user_id"]).unwrap(), 0), ["17850", "-0"]);
        let batch = read_with_text(&input, &["user_id", "item_id"]).unwrap();
        let text = |c: usize| -> Vec<String> {
            batch.column(c).as_string::<i32>().iter().map(|v| v.unwrap().into()).collect()
        };
        assert_eq!(text(0), ["017850", "000123"]);
        assert_eq!(text(1), ["0042", "9"]);
        assert_eq!(batch.column(2).as_primitive::<Int64Type>().values().to_vec(), [7, 8], "other columns as inferred");
    }

    /// The same table in each format the worker reads.
    fn files(dir: &std::path::Path, batch: &RecordBatch) -> Vec<Input> {
        let csv = dir.join("t.csv");
        let mut text = String::from("user,n,note\n");
        for r in 0..batch.num_rows() {
            text += &format!("u{r},{r},x{r}\n");
        }
        std::fs::write(&csv, text).unwrap();
        let parquet = dir.join("t.parquet");
        let mut w =
            parquet::arrow::ArrowWriter::try_new(File::create(&parquet).unwrap(), batch.schema(), None).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        let ipc = dir.join("t.arrow");
        let mut w = arrow_ipc::writer::FileWriter::try_new(File::create(&ipc).unwrap(), &batch.schema()).unwrap();
        w.write(batch).unwrap();
        w.finish().unwrap();
        [(csv, InputFormat::Csv), (parquet, InputFormat::Parquet), (ipc, InputFormat::ArrowIpc)]
            .into_iter()
            .map(|(path, format)| Input { name: "t".into(), path, format, registry: None })
            .collect()
    }

    #[test]
    fn a_stream_projects_in_the_order_asked_in_batches_for_every_format() {
        let dir = tempfile::tempdir().unwrap();
        for input in files(dir.path(), &table()) {
            let cols = ["note".to_string(), "n".to_string()];
            let reader = stream_in(&input, &cols, 4).unwrap();
            let names: Vec<String> = reader.schema().fields().iter().map(|f| f.name().clone()).collect();
            assert_eq!(names, ["note", "n"], "{:?}", input.format);
            let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
            // IPC keeps the file's one batch; CSV and Parquet cut it as asked
            let sizes: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
            let want: &[usize] = if input.format == InputFormat::ArrowIpc { &[10] } else { &[4, 4, 2] };
            assert_eq!(sizes, want, "{:?}", input.format);
            let mut notes = Vec::new();
            let mut ns = Vec::new();
            for b in &batches {
                notes.extend(b.column(0).as_string::<i32>().iter().map(|v| v.unwrap().to_string()));
                ns.extend(b.column(1).as_primitive::<Int64Type>().values().iter().copied());
            }
            assert_eq!(notes, (0..10).map(|i| format!("x{i}")).collect::<Vec<_>>());
            assert_eq!(ns, (0..10).collect::<Vec<i64>>());
            // no projection: every column, in file order
            let all = stream_in(&input, &[], 4).unwrap();
            assert_eq!(all.schema().fields().len(), 3);
        }
    }

    #[test]
    fn a_missing_column_and_an_empty_input_are_errors_naming_the_input() {
        let dir = tempfile::tempdir().unwrap();
        for input in files(dir.path(), &table()) {
            let err = stream_in(&input, &["score".to_string()], 4).map(|_| ()).unwrap_err().to_string();
            assert_eq!(err, "input `t` has no column `score` (columns: user, n, note)", "{:?}", input.format);
        }
        for input in files(dir.path(), &table().slice(0, 0)) {
            let mut reader = stream_in(&input, &[], 4).unwrap();
            let err = reader.next().unwrap().unwrap_err().to_string();
            assert!(err.ends_with(&format!("input `t` ({}) has no rows", input.path.display())), "{err}");
            assert!(reader.next().is_none(), "{:?}", input.format);
        }
    }
}
