//! A test harness for strategy authors: runs a [`Strategy`] in-process through the very
//! ABI entry points a host calls (`create`, `run`, `destroy`, the Arrow C Data Interface
//! both ways, the host callbacks), on small in-memory tables, with a closure standing in
//! for the model. No daemon, no worker, no ONNX Runtime.
//!
//! The emitted rows are checked against the same output contract a host enforces
//! ([`crate::contract`]): schema, nulls, finite scores, one user's rows together, no item
//! twice, `max_items_per_user`, an empty result refused unless allowed, and the job's
//! known users and items when declared. A rule broken fails `run` with the host's message.
//! A panic inside a test callback (the scorer, the shard test) fails the test with that
//! panic, not an abort.
//!
//! ```
//! # use std::sync::Arc;
//! # use recd_plugin_api::arrow_array::{Float32Array, RecordBatch};
//! # use recd_plugin_api::arrow_schema::{DataType, Field, Schema};
//! # use recd_plugin_api::{OutputRows, PluginError, RunContext, Strategy};
//! use recd_plugin_api::testing::Harness;
//!
//! /// Scores one pair with the job's model and emits it.
//! struct ScoresOne;
//! impl Strategy for ScoresOne {
//!     fn new(_: &str) -> Result<Self, PluginError> { Ok(ScoresOne) }
//!     fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
//!         # let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float32, false)]));
//!         # let pairs = RecordBatch::try_new(schema, vec![Arc::new(Float32Array::from(vec![2.0]))]).unwrap();
//!         let scored = ctx.score(pairs)?;
//!         let score = recd_plugin_api::columns::numbers(scored.column(0), "score")?[0].unwrap() as f32;
//!         let mut out = OutputRows::new();
//!         out.push("u1", "i1", score);
//!         ctx.emit(out.into_batch()?)
//!     }
//! }
//!
//! // a closure stands in for the model: here, score = 10 x
//! let out = Harness::new("{}")
//!     .scorer(|batch| {
//!         let x = recd_plugin_api::columns::numbers(batch.column(0), "x").map_err(|e| e.message)?;
//!         let schema = Arc::new(Schema::new(vec![Field::new("score", DataType::Float32, false)]));
//!         let scores = Float32Array::from_iter_values(x.into_iter().map(|v| 10.0 * v.unwrap() as f32));
//!         RecordBatch::try_new(schema, vec![Arc::new(scores)]).map_err(|e| e.to_string())
//!     })
//!     .run::<ScoresOne>()
//!     .unwrap();
//! assert_eq!(out.list("u1"), [("i1".to_string(), 20.0)]);
//! ```

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use arrow_array::cast::AsArray;
use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema, to_ffi};
use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::types::Float32Type;
use arrow_array::{Array, RecordBatch, StructArray};

use crate::abi::{RecdError, RecdHost, RecdTable, code};
use crate::contract::{self, Assembler, KnownIds, OutputKind, Rules, UserSink, Violation};
use crate::sdk::{batch_from_ffi, check_entry, create_entry, destroy_entry, run_entry};
use crate::{LogLevel, PluginError, Strategy};

type Scorer = Box<dyn FnMut(&RecordBatch) -> Result<RecordBatch, String>>;

pub struct Harness {
    params: String,
    inputs: Vec<(String, RecordBatch)>,
    /// Inputs handed to `run` with no rows (the plugin's `stream_inputs`).
    streamed: Vec<String>,
    stream_batch_rows: usize,
    scorer: Option<Scorer>,
    cancel_after_polls: Option<u64>,
    in_shard: Option<fn(&str) -> bool>,
    rules: Rules,
    /// `(input, column)` every emitted user / item must appear in.
    known_users: Option<(String, String)>,
    known_items: Option<(String, String)>,
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Output {
    pub batches: Vec<RecordBatch>,
    pub logs: Vec<(LogLevel, String)>,
    pub progress: Vec<(u64, u64)>,
    /// A hashes run's rows as a host stores them: per user, in emission order, each
    /// non-null field with its value as text (numbers in their shortest exact form,
    /// booleans 1 and 0).
    pub hashes: Vec<(String, Vec<(String, String)>)>,
}

impl Output {
    /// Every emitted row as (user, item, score), in emission order.
    pub fn rows(&self) -> Vec<(String, String, f32)> {
        let mut rows = Vec::new();
        for b in &self.batches {
            let (u, i, s) = (
                b.column(0).as_string::<i32>(),
                b.column(1).as_string::<i32>(),
                b.column(2).as_primitive::<Float32Type>(),
            );
            for r in 0..b.num_rows() {
                rows.push((u.value(r).to_string(), i.value(r).to_string(), s.value(r)));
            }
        }
        rows
    }

    /// One user's rows as (item, score), in emission order.
    pub fn list(&self, user: &str) -> Vec<(String, f32)> {
        self.rows().into_iter().filter(|(u, _, _)| u == user).map(|(_, i, s)| (i, s)).collect()
    }

    /// One user's hash fields as a host stores them (`None`: no row for the user).
    pub fn hash(&self, user: &str) -> Option<&[(String, String)]> {
        self.hashes.iter().find(|(u, _)| u == user).map(|(_, fields)| fields.as_slice())
    }

    /// Users with at least one row.
    pub fn users(&self) -> Vec<String> {
        let set: BTreeMap<String, ()> = self.rows().into_iter().map(|(u, _, _)| (u, ())).collect();
        set.into_keys().collect()
    }
}

struct HostState {
    /// Every input whole, for `open_stream`.
    inputs: Vec<(String, RecordBatch)>,
    stream_batch_rows: usize,
    scorer: Option<Scorer>,
    out: Output,
    polls: u64,
    cancel_after_polls: Option<u64>,
    in_shard: Option<fn(&str) -> bool>,
    checks: OutputChecks,
    /// A panic in a test callback, re-raised once the run is over.
    panic: Option<Box<dyn std::any::Any + Send>>,
}

/// The host's output checks, as the harness runs them on every emitted batch.
struct OutputChecks {
    assembler: Assembler,
    users: SeenUsers,
    known_users: Option<KnownIds>,
    known_items: Option<KnownIds>,
    /// The first rule broken; the run fails with it whatever the plugin returns.
    violation: Option<Violation>,
}

/// Users seen so far, and each hash row as stored.
#[derive(Default)]
struct SeenUsers {
    seen: HashSet<String>,
    hashes: Vec<(String, Vec<(String, String)>)>,
}

impl UserSink for SeenUsers {
    type Error = Violation;
    fn first_time(&mut self, user: &str) -> Result<bool, Violation> {
        Ok(self.seen.insert(user.to_string()))
    }
    fn list(&mut self, _: &str, _: &mut Vec<(&str, f32)>) -> Result<(), Violation> {
        Ok(())
    }
    fn hash(&mut self, user: &str, fields: Vec<(String, String)>) -> Result<(), Violation> {
        self.hashes.push((user.to_string(), fields));
        Ok(())
    }
}

impl OutputChecks {
    /// Checks one emitted batch as a host does: schema and known ids where it is emitted,
    /// then the row rules where it is stored.
    fn emit(&mut self, batch: &RecordBatch) -> Result<(), Violation> {
        if let Some(v) = &self.violation {
            return Err(v.clone());
        }
        let first_row = self.assembler.rows();
        let (users, items) = (self.known_users.as_ref(), self.known_items.as_ref());
        let result = contract::check_emitted(self.assembler.kind(), batch, users, items, first_row)
            .and_then(|()| self.assembler.add(batch, &mut self.users));
        if let Err(v) = &result {
            self.violation = Some(v.clone());
        }
        result
    }
}

/// The ids of `(input, column)`, read from the whole input.
fn known_ids(inputs: &[(String, RecordBatch)], at: Option<&(String, String)>) -> Result<Option<KnownIds>, PluginError> {
    let Some((table, column)) = at else { return Ok(None) };
    let batch = &inputs
        .iter()
        .find(|(n, _)| n == table)
        .ok_or_else(|| PluginError::input(format!("known ids {table}.{column}: the harness has no input `{table}`")))?
        .1;
    KnownIds::read(table, column, [Ok(batch)]).map(Some)
}

/// Runs a test callback; a panic in it is kept for the end of the run (a panic cannot
/// unwind through the plugin's C frames).
fn guarded<T>(st: &mut HostState, f: impl FnOnce(&mut HostState) -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(|| f(st))) {
        Ok(v) => Some(v),
        Err(payload) => {
            st.panic.get_or_insert(payload);
            None
        }
    }
}

impl Harness {
    /// `params_json`: the job's `[params]` as the host hands them over (a JSON object).
    pub fn new(params_json: &str) -> Harness {
        Harness {
            params: params_json.to_string(),
            inputs: Vec::new(),
            streamed: Vec::new(),
            stream_batch_rows: 1024,
            scorer: None,
            cancel_after_polls: None,
            in_shard: None,
            rules: Rules::lists(contract::DEFAULT_MAX_ITEMS_PER_USER),
            known_users: None,
            known_items: None,
        }
    }

    /// Hands input `name` to `run` with its schema and no rows, as a host does for an
    /// input the plugin declares in `export_plugin!(..., stream_inputs = "...")`: the
    /// strategy must read it with `RunContext::input_stream`.
    pub fn streamed(mut self, name: &str) -> Harness {
        self.streamed.push(name.to_string());
        self
    }

    /// Rows per batch of the streams `input_stream` opens (default 1,024); small values
    /// make a small table cross in many batches.
    pub fn stream_batch_rows(mut self, rows: usize) -> Harness {
        self.stream_batch_rows = rows.max(1);
        self
    }

    pub fn input(mut self, name: &str, batch: RecordBatch) -> Harness {
        self.inputs.push((name.to_string(), batch));
        self
    }

    /// Declares the model's inputs as the host would: (input, bound feature, dtype) rows
    /// of the `__model_inputs` table (replacing any declared before), from a host with no
    /// preferred batch size.
    pub fn model_inputs(self, rows: &[(&str, &str, &str)]) -> Harness {
        self.model_inputs_preferring(rows, 0)
    }

    /// As [`model_inputs`](Self::model_inputs), from a host that prefers `batch_rows`
    /// rows per `score` call, as a recd worker whose model runs on a GPU does.
    pub fn model_inputs_preferring(self, rows: &[(&str, &str, &str)], batch_rows: u64) -> Harness {
        use arrow_array::{StringArray, UInt64Array};
        use arrow_schema::{DataType, Field, Schema};
        use std::sync::Arc;
        let col = |i: usize| -> Arc<dyn Array> {
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| [r.0, r.1, r.2][i])))
        };
        let mut fields: Vec<Field> =
            ["input", "feature", "dtype"].iter().map(|n| Field::new(*n, DataType::Utf8, false)).collect();
        fields.push(Field::new("batch_rows", DataType::UInt64, false));
        let preferred: Arc<dyn Array> = Arc::new(UInt64Array::from(vec![batch_rows; rows.len()]));
        let columns = vec![col(0), col(1), col(2), preferred];
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("model inputs table");
        let mut h = self;
        h.inputs.retain(|(n, _)| n != crate::abi::MODEL_INPUTS_TABLE);
        h.input(crate::abi::MODEL_INPUTS_TABLE, batch)
    }

    /// Stands in for the job's model: gets the batch the strategy asked to score (one
    /// column per model input) and returns one column per model output.
    pub fn scorer(mut self, f: impl FnMut(&RecordBatch) -> Result<RecordBatch, String> + 'static) -> Harness {
        self.scorer = Some(Box::new(f));
        self
    }

    /// Expects hash rows (a job with `output = "hashes"`): `user` utf8, then field columns.
    pub fn hashes(mut self) -> Harness {
        self.rules.kind = OutputKind::Hashes;
        self
    }

    /// As a job's `max_items_per_user` (default 1000, as in a job).
    pub fn max_items_per_user(mut self, max: usize) -> Harness {
        self.rules.max_items_per_user = max;
        self
    }

    /// As a job's `allow_empty = true`: a run that emits nothing passes.
    pub fn allow_empty(mut self) -> Harness {
        self.rules.allow_empty = true;
        self
    }

    /// As a job's `known_users = "input.column"`: every emitted user must appear there.
    pub fn known_users(mut self, input: &str, column: &str) -> Harness {
        self.known_users = Some((input.to_string(), column.to_string()));
        self
    }

    /// As a job's `known_items = "input.column"`: every emitted item must appear there.
    pub fn known_items(mut self, input: &str, column: &str) -> Harness {
        self.known_items = Some((input.to_string(), column.to_string()));
        self
    }

    /// Answers `in_shard` with `keeps` (default: every user is in), as a host does in a
    /// sharded run; unlike a host, the harness keeps whatever rows the plugin emits.
    pub fn shard(mut self, keeps: fn(&str) -> bool) -> Harness {
        self.in_shard = Some(keeps);
        self
    }

    /// Answers "cancelled" from the `polls`-th cancellation check on.
    pub fn cancel_after(mut self, polls: u64) -> Harness {
        self.cancel_after_polls = Some(polls);
        self
    }

    /// Checks the job as a host does before any run: create, then `check` with each input
    /// cut to zero rows (the model-inputs table kept whole), then destroy.
    pub fn check<S: Strategy>(self) -> Result<(), PluginError> {
        let inputs: Vec<(String, RecordBatch)> = self
            .inputs
            .into_iter()
            .map(|(name, batch)| {
                let batch = if name == crate::abi::MODEL_INPUTS_TABLE { batch } else { batch.slice(0, 0) };
                (name, batch)
            })
            .collect();
        let names = table_names(&inputs);
        let mut tables = abi_tables(inputs, &names)?;
        let instance = create::<S>(&self.params)?;
        let mut err = RecdError::new();
        // SAFETY: instance from create_entry::<S>; tables outlive the call.
        let rc = unsafe { check_entry::<S>(instance, tables.as_mut_ptr(), tables.len(), &mut err) };
        // SAFETY: created above, not used again.
        unsafe { destroy_entry::<S>(instance) };
        drop(tables);
        if rc != code::OK {
            return Err(PluginError::new(rc, err.message()));
        }
        Ok(())
    }

    /// Runs `S` once: create (params validation), run, destroy.
    pub fn run<S: Strategy>(self) -> Result<Output, PluginError> {
        if let Some(name) = self.streamed.iter().find(|s| !self.inputs.iter().any(|(n, _)| n == *s)) {
            return Err(PluginError::input(format!("Harness::streamed({name:?}) names no input")));
        }
        let handed: Vec<(String, RecordBatch)> = self
            .inputs
            .iter()
            .map(|(name, batch)| {
                let rows = if self.streamed.contains(name) { 0 } else { batch.num_rows() };
                (name.clone(), batch.slice(0, rows))
            })
            .collect();
        let names = table_names(&handed);
        let mut tables = abi_tables(handed, &names)?;
        let rules = self.rules;
        let checks = OutputChecks {
            assembler: Assembler::new(rules),
            users: SeenUsers::default(),
            known_users: known_ids(&self.inputs, self.known_users.as_ref())?,
            known_items: known_ids(&self.inputs, self.known_items.as_ref())?,
            violation: None,
        };
        let instance = create::<S>(&self.params)?;
        let mut state = HostState {
            inputs: self.inputs,
            stream_batch_rows: self.stream_batch_rows,
            scorer: self.scorer,
            out: Output::default(),
            polls: 0,
            cancel_after_polls: self.cancel_after_polls,
            in_shard: self.in_shard,
            checks,
            panic: None,
        };
        let host = RecdHost {
            ctx: (&mut state as *mut HostState).cast(),
            score: score_cb,
            emit: emit_cb,
            log: log_cb,
            progress: progress_cb,
            is_cancelled: is_cancelled_cb,
            open_stream: open_stream_cb,
            in_shard: in_shard_cb,
        };
        let mut err = RecdError::new();
        // SAFETY: instance from create_entry::<S>; tables and host outlive the call.
        let rc = unsafe { run_entry::<S>(instance, &host, tables.as_mut_ptr(), tables.len(), &mut err) };
        // SAFETY: created above, not used again.
        unsafe { destroy_entry::<S>(instance) };
        drop(tables);
        if let Some(payload) = state.panic.take() {
            resume_unwind(payload);
        }
        // A broken rule fails the run as the host fails it, whatever the plugin made of
        // the refused emit.
        let checks = &mut state.checks;
        let finished = match checks.violation.take() {
            Some(v) => Err(v),
            None if rc == code::OK => checks.assembler.finish(&mut checks.users),
            None => Ok(()),
        };
        finished.map_err(|v| PluginError::new(code::HOST, v.to_string()))?;
        if rc != code::OK {
            return Err(PluginError::new(rc, err.message()));
        }
        state.out.hashes = std::mem::take(&mut state.checks.users.hashes);
        Ok(state.out)
    }
}

/// # Safety
/// `ctx` is the `HostState` the harness put in the vtable.
/// Creates an instance through the ABI entry point, as a host does.
fn create<S: Strategy>(params: &str) -> Result<*mut c_void, PluginError> {
    let mut err = RecdError::new();
    let mut instance: *mut c_void = std::ptr::null_mut();
    // SAFETY: valid pointers for the call, as a host passes them.
    let rc = unsafe { create_entry::<S>(params.as_ptr(), params.len(), &mut instance, &mut err) };
    if rc != code::OK {
        return Err(PluginError::new(rc, err.message()));
    }
    Ok(instance)
}

fn table_names(inputs: &[(String, RecordBatch)]) -> Vec<CString> {
    inputs.iter().map(|(n, _)| CString::new(n.as_str()).unwrap_or_default()).collect()
}

/// The inputs as the ABI hands them over; `names` must outlive the tables.
fn abi_tables(inputs: Vec<(String, RecordBatch)>, names: &[CString]) -> Result<Vec<RecdTable>, PluginError> {
    let mut tables = Vec::with_capacity(inputs.len());
    for ((_, batch), name) in inputs.into_iter().zip(names) {
        let (array, schema) = to_ffi(&StructArray::from(batch).into_data())
            .map_err(|e| PluginError::internal(format!("arrow export failed: {e}")))?;
        tables.push(RecdTable { name: name.as_ptr(), schema, array });
    }
    Ok(tables)
}

unsafe fn state<'a>(ctx: *mut c_void) -> &'a mut HostState {
    // SAFETY: per the caller.
    unsafe { &mut *ctx.cast::<HostState>() }
}

fn fail(err: *mut RecdError, message: &str) -> i32 {
    if !err.is_null() {
        // SAFETY: the plugin passes a valid RecdError.
        unsafe { (*err).set(code::HOST, message) };
    }
    code::HOST
}

unsafe extern "C" fn score_cb(
    ctx: *mut c_void,
    _model: *const c_char,
    in_schema: *mut FFI_ArrowSchema,
    in_array: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
    out_array: *mut FFI_ArrowArray,
    err: *mut RecdError,
) -> i32 {
    // SAFETY: the ABI contract: the input is moved to us.
    let (array, schema) = unsafe {
        (std::ptr::replace(in_array, FFI_ArrowArray::empty()), std::ptr::replace(in_schema, FFI_ArrowSchema::empty()))
    };
    let batch = match unsafe { batch_from_ffi(array, &schema) } {
        Ok(b) => b,
        Err(e) => return fail(err, &e.message),
    };
    let st = unsafe { state(ctx) };
    if st.scorer.is_none() {
        return fail(err, "the harness has no scorer (Harness::scorer)");
    }
    let result = match guarded(st, |st| (st.scorer.as_mut().expect("a scorer, checked above"))(&batch)) {
        Some(Ok(r)) => r,
        Some(Err(e)) => return fail(err, &e),
        None => return fail(err, "the harness scorer panicked"),
    };
    match to_ffi(&StructArray::from(result).into_data()) {
        Ok((array, schema)) => {
            // SAFETY: the plugin passes empty output structs it will own.
            unsafe {
                std::ptr::write(out_array, array);
                std::ptr::write(out_schema, schema);
            }
            code::OK
        }
        Err(e) => fail(err, &e.to_string()),
    }
}

unsafe extern "C" fn emit_cb(
    ctx: *mut c_void,
    schema: *mut FFI_ArrowSchema,
    array: *mut FFI_ArrowArray,
    err: *mut RecdError,
) -> i32 {
    // SAFETY: the ABI contract: the batch is moved to us.
    let (array, schema) = unsafe {
        (std::ptr::replace(array, FFI_ArrowArray::empty()), std::ptr::replace(schema, FFI_ArrowSchema::empty()))
    };
    let batch = match unsafe { batch_from_ffi(array, &schema) } {
        Ok(batch) => batch,
        Err(e) => return fail(err, &e.message),
    };
    let st = unsafe { state(ctx) };
    match st.checks.emit(&batch) {
        Ok(()) => {
            st.out.batches.push(batch);
            code::OK
        }
        Err(v) => fail(err, &v.to_string()),
    }
}

unsafe extern "C" fn log_cb(ctx: *mut c_void, level: i32, msg: *const u8, len: usize) {
    // SAFETY: `len` readable bytes.
    let text = String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(msg, len) }).into_owned();
    let level = match level {
        crate::abi::level::ERROR => LogLevel::Error,
        crate::abi::level::WARN => LogLevel::Warn,
        crate::abi::level::INFO => LogLevel::Info,
        _ => LogLevel::Debug,
    };
    unsafe { state(ctx) }.out.logs.push((level, text));
}

unsafe extern "C" fn progress_cb(ctx: *mut c_void, done: u64, total: u64) {
    unsafe { state(ctx) }.out.progress.push((done, total));
}

/// Serves an in-memory input as a stream of `stream_batch_rows` slices, projected as asked.
unsafe extern "C" fn open_stream_cb(
    ctx: *mut c_void,
    name: *const c_char,
    columns: *const *const c_char,
    n_columns: usize,
    out: *mut FFI_ArrowArrayStream,
    err: *mut RecdError,
) -> i32 {
    // SAFETY: per the ABI: a C string name, n_columns C strings, a writable stream.
    let name = unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy().into_owned();
    let wanted: Vec<String> = (0..n_columns)
        .map(|i| unsafe { std::ffi::CStr::from_ptr(*columns.add(i)) }.to_string_lossy().into_owned())
        .collect();
    let st = unsafe { state(ctx) };
    let Some((_, batch)) = st.inputs.iter().find(|(n, _)| *n == name) else {
        return fail(err, &format!("missing input table `{name}`"));
    };
    let batch = if wanted.is_empty() {
        batch.clone()
    } else {
        let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let projected = crate::columns::positions(batch.schema_ref(), &name, &wanted)
            .and_then(|at| batch.project(&at).map_err(|e| PluginError::internal(e.to_string())));
        match projected {
            Ok(b) => b,
            // As a host answers: RECD_HOST, whatever went wrong.
            Err(e) => return fail(err, &e.message),
        }
    };
    let step = st.stream_batch_rows;
    let mut slices: Vec<Result<RecordBatch, arrow_schema::ArrowError>> =
        (0..batch.num_rows()).step_by(step).map(|at| Ok(batch.slice(at, step.min(batch.num_rows() - at)))).collect();
    if slices.is_empty() {
        // As a host ends the stream of an input without rows.
        slices.push(Err(arrow_schema::ArrowError::ExternalError(format!("input `{name}` has no rows").into())));
    }
    let reader = arrow_array::RecordBatchIterator::new(slices, batch.schema());
    // SAFETY: the plugin passes an empty stream struct it will own.
    unsafe { std::ptr::write(out, FFI_ArrowArrayStream::new(Box::new(reader))) };
    code::OK
}

unsafe extern "C" fn in_shard_cb(ctx: *mut c_void, user: *const u8, len: usize) -> i32 {
    let st = unsafe { state(ctx) };
    // SAFETY: per the ABI, `len` bytes at `user`.
    let user = String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(user, len) });
    let keeps = st.in_shard;
    // A panicking shard test answers "not in the shard"; the panic is re-raised after the run.
    i32::from(guarded(st, |_| keeps.is_none_or(|keeps| keeps(&user))).unwrap_or(false))
}

unsafe extern "C" fn is_cancelled_cb(ctx: *mut c_void) -> i32 {
    let st = unsafe { state(ctx) };
    st.polls += 1;
    i32::from(st.cancel_after_polls.is_some_and(|n| st.polls >= n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OutputRows, RunContext};
    use arrow_array::StringArray;
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    /// Takes `interactions` out, then checks it is gone and `items` still there.
    struct TakesInput;

    impl Strategy for TakesInput {
        fn new(_: &str) -> Result<Self, PluginError> {
            Ok(TakesInput)
        }
        fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
            let taken = ctx.take_input("interactions")?;
            let gone = ctx.input("interactions").map(|_| ()).unwrap_err();
            assert!(gone.message.contains("missing input table `interactions`"), "{gone}");
            assert!(ctx.take_input("interactions").is_err());
            let items = ctx.input("items")?.num_rows();
            let mut out = OutputRows::new();
            out.push("u", &format!("{}+{items}", taken.num_rows()), 1.0);
            drop(taken);
            ctx.emit(out.into_batch()?)
        }
    }

    fn ids(n: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let values: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(values))]).unwrap()
    }

    /// Reads `interactions` as a stream (twice, projected) and reports what it saw.
    struct Streams;

    impl Strategy for Streams {
        fn new(_: &str) -> Result<Self, PluginError> {
            Ok(Streams)
        }
        fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
            let handed = ctx.input("interactions")?;
            let mut seen = vec![format!("handed {} rows, {} columns", handed.num_rows(), handed.num_columns())];
            for _pass in 0..2 {
                let stream = ctx.input_stream("interactions", &["item", "user"])?;
                let names: Vec<String> = stream.schema().fields().iter().map(|f| f.name().clone()).collect();
                let mut rows = Vec::new();
                for batch in stream {
                    let batch = batch?;
                    let (items, users) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>());
                    rows.push(
                        (0..batch.num_rows())
                            .map(|r| format!("{}{}", users.value(r), items.value(r)))
                            .collect::<Vec<_>>()
                            .join(" "),
                    );
                }
                seen.push(format!("{} | {}", names.join(","), rows.join(" / ")));
            }
            let err = ctx.input_stream("interactions", &["nope"]).map(|_| ()).unwrap_err();
            seen.push(err.message);
            let mut out = OutputRows::new();
            for (i, line) in seen.iter().enumerate() {
                // Numbered: two passes read alike, and a list holds an item once.
                out.push("u", &format!("{i} {line}"), i as f32);
            }
            ctx.emit(out.into_batch()?)
        }
    }

    #[test]
    fn a_streamed_input_comes_with_no_rows_and_streams_in_slices_as_often_as_asked() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8, false),
            Field::new("item", DataType::Utf8, false),
            Field::new("n", DataType::Utf8, false),
        ]));
        let col = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as Arc<dyn Array>;
        let batch =
            RecordBatch::try_new(schema, vec![col(&["a", "b", "c"]), col(&["1", "2", "3"]), col(&["x", "y", "z"])])
                .unwrap();
        let out = Harness::new("{}")
            .input("interactions", batch)
            .streamed("interactions")
            .stream_batch_rows(2)
            .run::<Streams>()
            .unwrap();
        let lines: Vec<String> =
            out.list("u").into_iter().map(|(line, _)| line.split_once(' ').unwrap().1.to_string()).collect();
        assert_eq!(
            lines,
            [
                "handed 0 rows, 3 columns",
                "item,user | a1 b2 / c3",
                "item,user | a1 b2 / c3",
                "input `interactions` has no column `nope` (columns: user, item, n)",
            ]
        );
    }

    #[test]
    fn a_taken_input_leaves_the_context() {
        let out = Harness::new("{}").input("interactions", ids(3)).input("items", ids(2)).run::<TakesInput>().unwrap();
        assert_eq!(out.list("u"), vec![("3+2".to_string(), 1.0)]);
    }

    /// Emits the rows its params spell: `user:item:score` separated by `,`, one batch per
    /// `;`-separated group.
    struct Spelled(String);

    impl Strategy for Spelled {
        fn new(params: &str) -> Result<Self, PluginError> {
            Ok(Spelled(params.to_string()))
        }
        fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
            // (The SDK hands empty params over as `{}`.)
            for group in self.0.split(';').filter(|g| g.contains(':')) {
                let mut out = OutputRows::new();
                for row in group.split(',') {
                    let parts: Vec<&str> = row.split(':').collect();
                    out.push(parts[0], parts[1], parts[2].parse().expect("a score"));
                }
                ctx.emit(out.into_batch()?)?;
            }
            Ok(())
        }
    }

    fn run_spelled(rows: &str) -> Result<Output, PluginError> {
        Harness::new(rows).input("items", ids(3)).run::<Spelled>()
    }

    #[test]
    fn the_harness_refuses_what_the_host_refuses_with_the_host_message() {
        let cases = [
            ("u1:a:1,u1:b:NaN", "output row 1: user \"u1\" item \"b\" has a non-finite score NaN"),
            ("u1:a:1,u2:a:1;u1:b:1", "output row 2: rows of user \"u1\" are not contiguous"),
            ("u1:a:1,u1:a:2", "output row 1: user \"u1\" lists item \"a\" twice"),
            ("", "the run emitted no rows (set `allow_empty = true` in the job to publish an empty table)"),
        ];
        for (rows, want) in cases {
            let err = run_spelled(rows).unwrap_err();
            assert_eq!((err.code, err.message.as_str()), (code::HOST, want), "{rows}");
        }
        assert_eq!(run_spelled("u1:a:1,u1:b:0.5;u2:c:1").unwrap().list("u1"), [("a".into(), 1.0), ("b".into(), 0.5)]);
        let empty = Harness::new("").allow_empty().run::<Spelled>().unwrap();
        assert!(empty.batches.is_empty());
        let err = Harness::new("u1:a:1,u1:b:1,u1:c:1").max_items_per_user(2).run::<Spelled>().unwrap_err();
        assert_eq!(err.message, "output for user \"u1\" lists more than max_items_per_user (2) items (rows 0..3)");
    }

    #[test]
    fn known_users_and_items_are_enforced_when_declared() {
        // `ids(3)` holds "0", "1", "2".
        let harness = || Harness::new("0:1:1,0:2:1;2:7:1").input("items", ids(3));
        assert!(harness().run::<Spelled>().is_ok());
        assert!(harness().known_users("items", "id").run::<Spelled>().is_ok());
        let err = harness().known_items("items", "id").run::<Spelled>().unwrap_err();
        assert_eq!(err.message, "output row 2: item \"7\" does not appear in items.id");
        let err = harness().known_items("items", "nope").run::<Spelled>().unwrap_err();
        assert_eq!(err.message, "input `items` has no column `nope` (columns: id)");
    }

    /// Scores one batch and emits its first score.
    struct ScoresOnce;

    impl Strategy for ScoresOnce {
        fn new(_: &str) -> Result<Self, PluginError> {
            Ok(ScoresOnce)
        }
        fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
            let scored = ctx.score(ids(2))?;
            let score = scored.column(0).as_primitive::<Float32Type>().value(0);
            let mut out = OutputRows::new();
            out.push("u", "i", score);
            ctx.emit(out.into_batch()?)
        }
    }

    #[test]
    #[should_panic(expected = "the scorer's own assertion")]
    fn a_panicking_scorer_fails_the_test_with_its_own_panic() {
        let _ = Harness::new("{}")
            .scorer(|_| -> Result<RecordBatch, String> { panic!("the scorer's own assertion") })
            .run::<ScoresOnce>();
    }

    /// Emits two users' hashes through the hash-row builder.
    struct Hashes;

    impl Strategy for Hashes {
        fn new(_: &str) -> Result<Self, PluginError> {
            Ok(Hashes)
        }
        fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
            use crate::{FieldType, HashRows, HashValue};
            let fields =
                [("p", FieldType::Float), ("tier", FieldType::Text), ("n", FieldType::Int), ("vip", FieldType::Bool)];
            let mut rows = HashRows::new(&fields);
            rows.push(
                "u1",
                &[HashValue::Float(0.25), HashValue::Text("high"), HashValue::Int(-3), HashValue::Bool(true)],
            )?;
            rows.push("u2", &[HashValue::Float(1e-7), HashValue::Null, HashValue::Int(0), HashValue::Bool(false)])?;
            ctx.emit(rows.into_batch()?)
        }
    }

    #[test]
    fn hash_rows_are_stored_as_a_host_stores_them() {
        let out = Harness::new("{}").hashes().run::<Hashes>().unwrap();
        let text = |fields: &[(&str, &str)]| -> Vec<(String, String)> {
            fields.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect()
        };
        assert_eq!(
            out.hash("u1"),
            Some(text(&[("p", "0.25"), ("tier", "high"), ("n", "-3"), ("vip", "1")]).as_slice())
        );
        assert_eq!(out.hash("u2"), Some(text(&[("p", "0.0000001"), ("n", "0"), ("vip", "0")]).as_slice()));
        assert_eq!(out.hash("u3"), None);
        // the same rows where the job wants lists are refused, as a host refuses them
        let err = Harness::new("{}").run::<Hashes>().unwrap_err();
        assert!(err.message.starts_with("output rows must be (user Utf8, item Utf8, score Float32)"), "{err}");
    }
}
