//! What crosses between `recd serve` and a `recd worker` child.
//!
//! The daemon writes one [`RunSpec`] as JSON to the worker's stdin. The worker answers on
//! its stdout with frames: a tag byte, a little-endian u32 length, the payload. Tag `R`
//! carries result rows as a self-contained Arrow IPC stream (schema, batch, end marker);
//! tag `M` a JSON [`Message`]. The worker's stderr is its log, which the daemon forwards.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::job::{Device, Input};
use crate::store::TableKind;

pub const TAG_ROWS: u8 = b'R';
pub const TAG_MESSAGE: u8 = b'M';
/// Largest frame accepted (a batch of result rows is far smaller).
pub const MAX_FRAME: usize = 1 << 30;
/// Largest message frame accepted: a worker's `Done` or `Failed` is a few KiB, and its
/// strings go to the run history; a row frame's limit would let one take a GiB.
pub const MAX_MESSAGE_FRAME: usize = 1 << 20;
/// The longest error text kept from a worker (the rest is cut, and says so).
pub const MAX_TEXT: usize = 16 << 10;
/// The longest plugin name, version, ABI text or provider kept from a worker.
pub const MAX_NAME: usize = 1 << 10;
/// The most warnings kept from one run, and the longest kept of each: with the texts
/// above, a bounded message fits its frame even if JSON escapes every byte (6 bytes for
/// a control character).
pub const MAX_WARNINGS: usize = 64;
pub const MAX_WARNING: usize = 2 << 10;

/// Everything a worker needs for one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    pub job: String,
    pub run_id: u64,
    pub plugin: PathBuf,
    pub params_json: String,
    pub inputs: Vec<Input>,
    pub model: Option<PathBuf>,
    /// `[model_inputs]`: (model input, feature) pairs; empty binds each input to itself.
    #[serde(default)]
    pub model_inputs: Vec<(String, String)>,
    /// Lists or hashes: which rows the plugin must emit.
    #[serde(default)]
    pub output: TableKind,
    pub device: Device,
    pub onnxruntime: PathBuf,
    /// The plugin's descriptor must carry this name (the job named the plugin, not a path).
    pub expect_name: Option<String>,
    /// Output checks that need the inputs: every user / item must appear in this
    /// (input, column).
    pub known_users: Option<(String, String)>,
    pub known_items: Option<(String, String)>,
    /// The users this run computes (the plugin asks through `in_shard`).
    #[serde(default)]
    pub shard: crate::shard::Shard,
}

/// What `recd probe-plugin` reads on stdin: the parts of a job its plugin and model judge
/// before any run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeRequest {
    pub params_json: String,
    pub inputs: Vec<Input>,
    pub model: Option<PathBuf>,
    pub model_inputs: Vec<(String, String)>,
    pub onnxruntime: PathBuf,
    /// Whether the plugin's `check` runs. Not while a registry model the job reads has no
    /// version yet: then only the plugin and its params are judged before the first run.
    #[serde(default = "yes")]
    pub check: bool,
}

fn yes() -> bool {
    true
}

impl ProbeRequest {
    pub fn for_job(job: &crate::job::Job, onnxruntime: &std::path::Path) -> ProbeRequest {
        ProbeRequest {
            params_json: job.params_json.clone(),
            inputs: job.inputs.clone(),
            model: job.model.clone(),
            model_inputs: job.model_inputs.clone(),
            onnxruntime: onnxruntime.to_path_buf(),
            check: true,
        }
    }
}

/// What a plugin's descriptor says about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PluginDesc {
    pub name: String,
    pub version: String,
    pub abi: String,
}

pub use crate::store::WorkerStats;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Progress {
        done: u64,
        total: u64,
    },
    Done {
        provider: String,
        rows: u64,
        #[serde(default)]
        plugin: PluginDesc,
        #[serde(default)]
        stats: WorkerStats,
        /// The SHA-256 of the model file the worker loaded, when the job has a model.
        #[serde(default)]
        model_sha256: Option<String>,
        /// What the run should record beside its result (e.g. `auto` scored on the CPU).
        #[serde(default)]
        warnings: Vec<String>,
        /// Rows read per input (the most of any one pass over a streamed input).
        #[serde(default)]
        input_rows: std::collections::BTreeMap<String, u64>,
    },
    Failed {
        error: String,
        /// The plugin's descriptor, when the run failed after loading it.
        #[serde(default)]
        plugin: Option<PluginDesc>,
    },
}

impl Message {
    /// The message with its texts within [`MAX_TEXT`], [`MAX_NAME`] and [`MAX_WARNING`],
    /// and at most [`MAX_WARNINGS`] warnings: what a worker writes, and all the daemon
    /// keeps of what it reads (a plugin's error text is its own, of any length).
    pub fn bounded(self) -> Message {
        let desc = |d: PluginDesc| PluginDesc {
            name: cut_text(d.name, MAX_NAME),
            version: cut_text(d.version, MAX_NAME),
            abi: cut_text(d.abi, MAX_NAME),
        };
        match self {
            Message::Progress { .. } => self,
            Message::Failed { error, plugin } => {
                Message::Failed { error: cut_text(error, MAX_TEXT), plugin: plugin.map(desc) }
            }
            Message::Done { provider, rows, plugin, stats, model_sha256, mut warnings, input_rows } => {
                if warnings.len() > MAX_WARNINGS {
                    let more = warnings.len() - (MAX_WARNINGS - 1);
                    warnings.truncate(MAX_WARNINGS - 1);
                    warnings.push(format!("… and {more} more warnings"));
                }
                Message::Done {
                    provider: cut_text(provider, MAX_NAME),
                    rows,
                    plugin: desc(plugin),
                    stats,
                    model_sha256: model_sha256.map(|s| cut_text(s, MAX_NAME)),
                    warnings: warnings.into_iter().map(|w| cut_text(w, MAX_WARNING)).collect(),
                    input_rows,
                }
            }
        }
    }
}

/// `text`, or its first `max` bytes (cut at a character boundary) and a note saying so.
pub fn cut_text(mut text: String, max: usize) -> String {
    if text.len() > max {
        text.truncate(text.floor_char_boundary(max));
        text.push_str(&format!("… (cut at {max} bytes)"));
    }
    text
}

/// The largest frame accepted with `tag`.
fn frame_limit(tag: u8) -> usize {
    if tag == TAG_MESSAGE { MAX_MESSAGE_FRAME } else { MAX_FRAME }
}

pub fn write_frame(out: &mut impl Write, tag: u8, payload: &[u8]) -> io::Result<()> {
    let (len, limit) = (payload.len(), frame_limit(tag));
    if len > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("a frame of {len} bytes is over {limit}")));
    }
    out.write_all(&[tag])?;
    out.write_all(&(payload.len() as u32).to_le_bytes())?;
    out.write_all(payload)
}

/// Writes `message` [`bounded`](Message::bounded), so that it always fits its frame.
pub fn write_message(out: &mut impl Write, message: &Message) -> io::Result<()> {
    let json = serde_json::to_vec(&message.clone().bounded()).expect("message serialises");
    write_frame(out, TAG_MESSAGE, &json)?;
    out.flush()
}

/// A batch of result rows as a row frame's payload: a self-contained Arrow IPC stream.
pub fn encode_rows(batch: &arrow_array::RecordBatch) -> Result<Vec<u8>, arrow_schema::ArrowError> {
    let mut bytes = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(bytes)
}

/// Writes `batch` as row frames of at most `limit` bytes each, its rows in order: a batch
/// too large for one is halved until its parts fit (a plugin may emit any number of rows
/// at once). Every part is encoded before the first is written, so a batch refused (a
/// row larger than a frame, one Arrow cannot encode) sends nothing. Returns how many
/// frames were written.
pub fn write_rows(out: &mut impl Write, batch: &arrow_array::RecordBatch, limit: usize) -> io::Result<usize> {
    let mut parts = Vec::new();
    encode_parts(batch, limit, usize::MAX, &mut parts)?;
    for part in &parts {
        write_frame(out, TAG_ROWS, part)?;
    }
    Ok(parts.len())
}

/// Encodes `batch` into `parts` of at most `limit` bytes; `whole` is what the batch it was
/// split from encoded to.
fn encode_parts(
    batch: &arrow_array::RecordBatch,
    limit: usize,
    whole: usize,
    parts: &mut Vec<Vec<u8>>,
) -> io::Result<()> {
    let bytes = encode_rows(batch).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let (rows, len) = (batch.num_rows(), bytes.len());
    if len <= limit {
        parts.push(bytes);
        return Ok(());
    }
    if rows < 2 {
        let message = format!("one row of {len} bytes is over the {limit} a frame holds");
        return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    }
    if len >= whole {
        // Arrow writes some sliced columns whole (views, dictionaries): halving gains nothing.
        let message = format!(
            "a batch of {rows} rows encodes to {len} bytes however it is split, over the {limit} a frame holds: emit smaller batches"
        );
        return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    }
    drop(bytes);
    let half = rows / 2;
    encode_parts(&batch.slice(0, half), limit, len, parts)?;
    encode_parts(&batch.slice(half, rows - half), limit, len, parts)
}

/// A row frame whose payload is not a readable Arrow IPC stream.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error("worker sent unreadable rows: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("worker sent a malformed Arrow IPC stream (the decoder panicked: {0})")]
    DecoderPanicked(String),
}

/// Decodes a row frame's payload (an Arrow IPC stream) into its batches.
///
/// A worker's stdout is not trusted to be well formed: the plugin shares the worker's
/// process and can write to it. arrow-ipc returns an error for most malformed streams but
/// panics on some: a buffer whose offset lies past the message body (found by the
/// `result_stream` fuzz target; its input is the seed `bad-arrow-buffer-past-body`), and
/// unsupported schema fields (apache/arrow-rs#10437). Such a panic is caught here and fails
/// the run like any other malformed frame; the daemon and its served tables are untouched.
pub fn decode_rows(payload: Vec<u8>) -> Result<Vec<arrow_array::RecordBatch>, RowsError> {
    // The closure owns the payload and returns owned batches: nothing it could leave half
    // updated outlives a panic, so asserting unwind safety is sound.
    let decode = std::panic::AssertUnwindSafe(move || {
        arrow_ipc::reader::StreamReader::try_new(io::Cursor::new(payload), None)?.collect::<Result<Vec<_>, _>>()
    });
    match std::panic::catch_unwind(decode) {
        Ok(batches) => Ok(batches?),
        Err(panic) => Err(RowsError::DecoderPanicked(panic_text(panic.as_ref()))),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_string(),
        (_, Some(text)) => text.clone(),
        _ => "no message".into(),
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame(input: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match input.read_exact(&mut header[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    input.read_exact(&mut header[1..])?;
    let len = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
    let limit = frame_limit(header[0]);
    if len > limit {
        let what = if header[0] == TAG_MESSAGE { "message frame" } else { "frame" };
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {what} of {len} bytes is over the limit of {limit} bytes"),
        ));
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload)?;
    Ok(Some((header[0], payload)))
}

/// What `recd probe-plugin` prints.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    pub plugin: Option<PluginDesc>,
    /// The job file key the error is about: "plugin" or "params".
    pub field: Option<String>,
    pub error: Option<String>,
}

/// This very executable, to start workers and probes with. `/proc/self/exe` names the
/// running binary's inode, so it still works after an upgrade replaced the file on disk
/// (`current_exe` would give the path, now of another file or of none).
pub fn self_exe() -> std::io::Result<std::path::PathBuf> {
    let proc_exe = std::path::PathBuf::from("/proc/self/exe");
    if proc_exe.exists() { Ok(proc_exe) } else { std::env::current_exe() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        write_frame(&mut buf, TAG_ROWS, b"abc").unwrap();
        write_message(&mut buf, &Message::Progress { done: 1, total: 2 }).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some((TAG_ROWS, b"abc".to_vec())));
        let (tag, json) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(tag, TAG_MESSAGE);
        assert_eq!(serde_json::from_slice::<Message>(&json).unwrap(), Message::Progress { done: 1, total: 2 });
        assert_eq!(read_frame(&mut r).unwrap(), None);
        // a truncated frame is an error, not a clean end
        let mut cut = &buf[..3];
        assert!(read_frame(&mut cut).is_err());
    }

    #[test]
    fn a_message_frame_has_a_small_limit_and_its_texts_are_bounded() {
        // A row frame may be large; a message frame over 1 MiB is refused from its header.
        let mut big = Vec::new();
        big.push(TAG_MESSAGE);
        big.extend(((MAX_MESSAGE_FRAME + 1) as u32).to_le_bytes());
        let e = read_frame(&mut &big[..]).unwrap_err();
        assert_eq!(e.to_string(), "a message frame of 1048577 bytes is over the limit of 1048576 bytes");
        big[0] = TAG_ROWS;
        assert_eq!(
            read_frame(&mut &big[..]).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof,
            "a row frame's length is fine"
        );
        // A plugin's error of 2 MB, in a character cut at the limit, is written cut.
        let error = "x".repeat(MAX_TEXT - 1) + &"é".repeat(1_000_000);
        let mut buf = Vec::new();
        write_message(&mut buf, &Message::Failed { error, plugin: None }).unwrap();
        let (_, json) = read_frame(&mut &buf[..]).unwrap().unwrap();
        let Message::Failed { error, .. } = serde_json::from_slice(&json).unwrap() else { panic!() };
        assert_eq!(error, "x".repeat(MAX_TEXT - 1) + "… (cut at 16384 bytes)");
        // Names and warnings too.
        let done = Message::Done {
            provider: "cpu".into(),
            rows: 3,
            plugin: PluginDesc { name: "n".repeat(5000), version: "1".into(), abi: "1.3".into() },
            stats: WorkerStats::default(),
            model_sha256: None,
            warnings: (0..100).map(|i| format!("warning {i}")).collect(),
            input_rows: Default::default(),
        };
        let Message::Done { plugin, warnings, rows, .. } = done.bounded() else { panic!() };
        assert_eq!(plugin.name, "n".repeat(1024) + "… (cut at 1024 bytes)");
        assert_eq!((plugin.version.as_str(), rows), ("1", 3));
        assert_eq!(warnings.len(), MAX_WARNINGS);
        assert_eq!(warnings[62], "warning 62");
        assert_eq!(warnings[63], "… and 37 more warnings");
        // Texts JSON escapes six times over still fit the frame, bounded.
        let escaped = "\u{1}".repeat(100_000);
        let worst = Message::Done {
            provider: escaped.clone(),
            rows: 0,
            plugin: PluginDesc { name: escaped.clone(), version: escaped.clone(), abi: escaped.clone() },
            stats: WorkerStats::default(),
            model_sha256: Some(escaped.clone()),
            warnings: vec![escaped.clone(); 1000],
            input_rows: Default::default(),
        };
        write_message(&mut Vec::new(), &worst).unwrap();
        write_message(&mut Vec::new(), &Message::Failed { error: escaped, plugin: None }).unwrap();
    }

    #[test]
    fn a_batch_too_large_for_a_frame_is_written_as_several_in_order() {
        use arrow_array::{Int64Array, RecordBatch};
        let column = Int64Array::from_iter_values(0..10_000);
        let batch = RecordBatch::try_from_iter([("n", std::sync::Arc::new(column) as arrow_array::ArrayRef)]).unwrap();
        let mut buf = Vec::new();
        let frames = write_rows(&mut buf, &batch, 8 * 1024).unwrap();
        assert!(frames > 8, "{frames} frames");
        let (mut r, mut seen) = (&buf[..], Vec::new());
        while let Some((tag, payload)) = read_frame(&mut r).unwrap() {
            assert_eq!(tag, TAG_ROWS);
            assert!(payload.len() <= 8 * 1024);
            for part in decode_rows(payload).unwrap() {
                let n = part.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                seen.extend(n.values().iter().copied());
            }
        }
        assert_eq!(seen, (0..10_000).collect::<Vec<i64>>());
        // one row that cannot fit says so
        assert!(write_rows(&mut Vec::new(), &batch.slice(0, 1), 16).is_err());
    }
}
