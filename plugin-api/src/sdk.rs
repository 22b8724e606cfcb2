//! The Rust SDK: a strategy is one [`Strategy`] impl plus one [`export_plugin!`](crate::export_plugin) call.

use std::any::Any;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use arrow_array::ffi_stream::{FFI_ArrowArrayStream, RecordBatchStreamReader};
use arrow_array::{Array, RecordBatch, StructArray};

use crate::abi::{RecdError, RecdHost, RecdTable, code, level};

/// An error a strategy returns: a code from [`crate::abi::code`] and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub code: i32,
    pub message: String,
}

impl PluginError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        PluginError { code, message: message.into() }
    }
    pub fn params(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_PARAMS, message)
    }
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_INPUT, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, message)
    }
    pub fn cancelled() -> Self {
        Self::new(code::CANCELLED, "run cancelled by the host")
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// A recommendation strategy. `new` validates the job's `[params]` (given as JSON);
/// `run` reads inputs, scores through the host and emits rows.
pub trait Strategy: Sized + 'static {
    fn new(params_json: &str) -> Result<Self, PluginError>;
    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError>;
    /// Checks the job against its inputs' schemas (and model inputs) before any run, so
    /// `recd validate` catches an unknown column. Default: nothing to check.
    fn check(&self, ctx: &CheckContext) -> Result<(), PluginError> {
        let _ = ctx;
        Ok(())
    }
}

/// What [`Strategy::check`] sees: the job's input tables with their schemas and no rows,
/// and the model-inputs table when the job has a model.
pub struct CheckContext {
    inputs: Vec<(String, RecordBatch)>,
}

impl CheckContext {
    pub fn new(inputs: Vec<(String, RecordBatch)>) -> CheckContext {
        CheckContext { inputs }
    }

    /// The (empty) input table `name`, or an `INVALID_INPUT` error naming it.
    pub fn input(&self, name: &str) -> Result<&RecordBatch, PluginError> {
        find_input(&self.inputs, name)
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.inputs.iter().any(|(n, _)| n == name)
    }

    /// The names of the job's input tables, in the job file's order.
    pub fn input_names(&self) -> Vec<&str> {
        input_names(&self.inputs)
    }

    /// Fails unless input `input` has `column`; the error names the job key `key` that
    /// asked for it: `params.user_column: input `interactions` has no column `uid` (...)`.
    pub fn require(&self, input: &str, column: &str, key: &str) -> Result<(), PluginError> {
        let batch = self.input(input).map_err(|e| PluginError::params(format!("inputs: {e} ({key} needs it)")))?;
        crate::columns::column(batch, input, column).map(|_| ()).map_err(|e| PluginError::params(format!("{key}: {e}")))
    }

    /// The job's model inputs, or None when the job has no model.
    pub fn model_inputs(&self) -> Result<Option<Vec<crate::model::ModelInput>>, PluginError> {
        match self.inputs.iter().find(|(n, _)| n == crate::abi::MODEL_INPUTS_TABLE) {
            Some((_, b)) => crate::model::read_model_inputs(b).map(Some),
            None => Ok(None),
        }
    }
}

fn input_names(inputs: &[(String, RecordBatch)]) -> Vec<&str> {
    inputs.iter().map(|(n, _)| n.as_str()).filter(|n| *n != crate::abi::MODEL_INPUTS_TABLE).collect()
}

fn find_input<'b>(inputs: &'b [(String, RecordBatch)], name: &str) -> Result<&'b RecordBatch, PluginError> {
    inputs.iter().find(|(n, _)| n == name).map(|(_, b)| b).ok_or_else(|| {
        let have = input_names(inputs);
        PluginError::input(format!("missing input table `{name}` (the job provides: {})", have.join(", ")))
    })
}

/// What a running strategy can see and do.
pub struct RunContext<'a> {
    host: &'a RecdHost,
    inputs: Vec<(String, RecordBatch)>,
}

impl<'a> RunContext<'a> {
    /// The input table `name`, or an `INVALID_INPUT` error naming it.
    pub fn input(&self, name: &str) -> Result<&RecordBatch, PluginError> {
        find_input(&self.inputs, name)
    }

    /// The names of the job's input tables not yet taken, in the job file's order.
    pub fn input_names(&self) -> Vec<&str> {
        input_names(&self.inputs)
    }

    /// Moves input `name` out of the context, so its memory is freed as soon as the
    /// strategy drops it (the host keeps no copy): for a big table read once, such as the
    /// interactions a strategy turns into its own compact form. Later `input(name)` calls
    /// fail as for a missing table.
    pub fn take_input(&mut self, name: &str) -> Result<RecordBatch, PluginError> {
        find_input(&self.inputs, name)?;
        let at = self.inputs.iter().position(|(n, _)| n == name).expect("found above");
        Ok(self.inputs.remove(at).1)
    }

    /// Input `name` as a stream of record batches, read from its source as they are
    /// pulled, projected onto `columns` (in that order; empty: every column). For a table
    /// too big to hold whole: declare it in `export_plugin!(..., stream_inputs = "...")`
    /// and the host never reads it before the run ([`RunContext::input`] then has its
    /// schema and no rows). Each call reads the input anew from its start, so a strategy
    /// can make two passes. Needs a host of ABI 1.2 or later, which is any host that
    /// loads a plugin built with this SDK.
    pub fn input_stream(&self, name: &str, columns: &[&str]) -> Result<InputStream, PluginError> {
        let c_name = CString::new(name).map_err(|_| PluginError::input(format!("input name {name:?} holds a NUL")))?;
        let c_columns = columns
            .iter()
            .map(|c| CString::new(*c).map_err(|_| PluginError::input(format!("column name {c:?} holds a NUL"))))
            .collect::<Result<Vec<_>, _>>()?;
        let pointers: Vec<*const c_char> = c_columns.iter().map(|c| c.as_ptr()).collect();
        let mut stream = FFI_ArrowArrayStream::empty();
        let mut err = RecdError::new();
        // SAFETY: the names outlive the call; the host fills `stream`, which we then own.
        let rc = unsafe {
            (self.host.open_stream)(
                self.host.ctx,
                c_name.as_ptr(),
                pointers.as_ptr(),
                pointers.len(),
                &mut stream,
                &mut err,
            )
        };
        if rc != code::OK {
            return Err(PluginError::new(rc, err.message()));
        }
        let reader = RecordBatchStreamReader::try_new(stream).map_err(|e| stream_error(name, &e))?;
        Ok(InputStream { name: name.to_string(), reader })
    }

    /// The job's model inputs and the features bound to them; an error if the job has no
    /// model.
    pub fn model_inputs(&self) -> Result<Vec<crate::model::ModelInput>, PluginError> {
        match self.model_inputs_table() {
            Some(b) => crate::model::read_model_inputs(b),
            None => Err(PluginError::params("this strategy scores with a model: the job needs `model`")),
        }
    }

    /// How many rows per [`score`](Self::score) call the host prefers for the job's
    /// model, if it has a preference: a model on a GPU wants far larger calls than one on
    /// the CPU. A strategy that sizes its batches itself uses this when the job sets no
    /// size of its own.
    pub fn preferred_batch_rows(&self) -> Option<usize> {
        crate::model::preferred_batch_rows(self.model_inputs_table()?)
    }

    fn model_inputs_table(&self) -> Option<&RecordBatch> {
        self.inputs.iter().find(|(n, _)| n == crate::abi::MODEL_INPUTS_TABLE).map(|(_, b)| b)
    }

    /// Scores `batch` (one column per model input) with the job's model.
    pub fn score(&mut self, batch: RecordBatch) -> Result<RecordBatch, PluginError> {
        let (mut in_array, mut in_schema) = batch_to_ffi(batch)?;
        let mut out_array = FFI_ArrowArray::empty();
        let mut out_schema = FFI_ArrowSchema::empty();
        let mut err = RecdError::new();
        // SAFETY: all pointers are valid for the call; the host moves the input out
        // and fills the output structs, which we then own.
        let rc = unsafe {
            (self.host.score)(
                self.host.ctx,
                std::ptr::null(),
                &mut in_schema,
                &mut in_array,
                &mut out_schema,
                &mut out_array,
                &mut err,
            )
        };
        if rc != code::OK {
            return Err(PluginError::new(code::HOST, format!("scoring failed: {}", err.message())));
        }
        // SAFETY: the host filled a valid struct array per the ABI contract.
        unsafe { batch_from_ffi(out_array, &out_schema) }
    }

    /// Hands result rows (`user`, `item`, `score`) to the host.
    pub fn emit(&mut self, batch: RecordBatch) -> Result<(), PluginError> {
        let (mut array, mut schema) = batch_to_ffi(batch)?;
        let mut err = RecdError::new();
        // SAFETY: valid pointers; the host moves the batch out.
        let rc = unsafe { (self.host.emit)(self.host.ctx, &mut schema, &mut array, &mut err) };
        if rc != code::OK {
            return Err(PluginError::new(code::HOST, format!("emit failed: {}", err.message())));
        }
        Ok(())
    }

    pub fn log(&self, lvl: LogLevel, message: &str) {
        let l = match lvl {
            LogLevel::Error => level::ERROR,
            LogLevel::Warn => level::WARN,
            LogLevel::Info => level::INFO,
            LogLevel::Debug => level::DEBUG,
        };
        // SAFETY: message is valid for `len` bytes during the call.
        unsafe { (self.host.log)(self.host.ctx, l, message.as_ptr(), message.len()) }
    }

    pub fn progress(&self, done: u64, total: u64) {
        // SAFETY: plain values.
        unsafe { (self.host.progress)(self.host.ctx, done, total) }
    }

    /// True once the host wants the run to stop; strategies check it between batches.
    pub fn is_cancelled(&self) -> bool {
        // SAFETY: plain call with the host's context.
        unsafe { (self.host.is_cancelled)(self.host.ctx) != 0 }
    }

    /// Whether this run computes `user`: false for a user outside the shard of a sharded
    /// run (`recd run --shard I/N`), whose rows the host would drop, so a strategy can
    /// skip their work. Always true in a run of every user. Needs a host of ABI 1.3 or
    /// later, which is any host that loads a plugin built with this SDK.
    pub fn in_shard(&self, user: &str) -> bool {
        // SAFETY: the bytes outlive the call.
        unsafe { (self.host.in_shard)(self.host.ctx, user.as_ptr(), user.len()) != 0 }
    }
}

/// An input read batch by batch ([`RunContext::input_stream`]); a failed read (a
/// malformed file, a host error) ends it with an `INVALID_INPUT` error naming the input.
pub struct InputStream {
    name: String,
    reader: RecordBatchStreamReader,
}

impl InputStream {
    /// The stream's schema: the projected columns.
    pub fn schema(&self) -> arrow_schema::SchemaRef {
        arrow_array::RecordBatchReader::schema(&self.reader)
    }
}

impl Iterator for InputStream {
    type Item = Result<RecordBatch, PluginError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.reader.next().map(|r| r.map_err(|e| stream_error(&self.name, &e)))
    }
}

/// A failed stream call in the host's own words: arrow wraps them in a sentence about
/// error codes, and a host's errors cross as `ArrowError::ExternalError`; neither says
/// anything to a reader of the run's error. Named after the input unless it already is.
fn stream_error(name: &str, e: &arrow_schema::ArrowError) -> PluginError {
    let text = e.to_string();
    let message = text.split_once("Producer error: ").map_or(text.as_str(), |(_, m)| m);
    let message = message.strip_prefix("External error: ").unwrap_or(message);
    if message.contains(&format!("input `{name}`")) {
        PluginError::input(message)
    } else {
        PluginError::input(format!("input `{name}`: {message}"))
    }
}

fn batch_to_ffi(batch: RecordBatch) -> Result<(FFI_ArrowArray, FFI_ArrowSchema), PluginError> {
    let data = StructArray::from(batch).into_data();
    to_ffi(&data).map_err(|e| PluginError::internal(format!("arrow export failed: {e}")))
}

/// Imports a struct array from the C Data Interface as a record batch.
///
/// # Safety
/// `array` and `schema` must be valid, as produced by an Arrow C Data Interface producer.
pub(crate) unsafe fn batch_from_ffi(
    array: FFI_ArrowArray,
    schema: &FFI_ArrowSchema,
) -> Result<RecordBatch, PluginError> {
    // SAFETY: forwarded from the caller.
    let data =
        unsafe { from_ffi(array, schema) }.map_err(|e| PluginError::internal(format!("arrow import failed: {e}")))?;
    let array = arrow_array::make_array(data);
    let structs = array
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| PluginError::internal("expected a struct array for a table"))?;
    Ok(RecordBatch::from(structs))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs `f`, turning an error or a panic into a code written to `err`.
fn guarded(err: *mut RecdError, f: impl FnOnce() -> Result<(), PluginError>) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(f));
    let (rc, message) = match outcome {
        Ok(Ok(())) => return code::OK,
        Ok(Err(e)) => (e.code, e.message),
        Err(payload) => (code::PANIC, format!("plugin panicked: {}", panic_message(&*payload))),
    };
    if !err.is_null() {
        // SAFETY: the host passes a valid, exclusive RecdError.
        unsafe { (*err).set(rc, &message) };
    }
    if rc == code::OK { code::INTERNAL } else { rc }
}

/// `create` entry point generated by [`export_plugin!`](crate::export_plugin).
///
/// # Safety
/// Called by the host per the ABI: `params` valid for `len` bytes, `instance` and `err` valid.
pub unsafe extern "C" fn create_entry<S: Strategy>(
    params: *const u8,
    len: usize,
    instance: *mut *mut c_void,
    err: *mut RecdError,
) -> i32 {
    guarded(err, || {
        let bytes = if params.is_null() || len == 0 {
            &b"{}"[..]
        } else {
            // SAFETY: the host guarantees `len` readable bytes.
            unsafe { std::slice::from_raw_parts(params, len) }
        };
        let text = std::str::from_utf8(bytes).map_err(|_| PluginError::params("params are not valid UTF-8"))?;
        let strategy = S::new(text)?;
        // SAFETY: `instance` is a valid out-pointer.
        unsafe { *instance = Box::into_raw(Box::new(strategy)).cast() };
        Ok(())
    })
}

/// `run` entry point generated by [`export_plugin!`](crate::export_plugin).
///
/// # Safety
/// Called by the host per the ABI with an instance from `create_entry::<S>`.
pub unsafe extern "C" fn run_entry<S: Strategy>(
    instance: *mut c_void,
    host: *const RecdHost,
    inputs: *mut RecdTable,
    n_inputs: usize,
    err: *mut RecdError,
) -> i32 {
    guarded(err, || {
        // SAFETY: per the ABI, pointers are valid for the call and inputs are moved to us.
        let (strategy, host, batches) = unsafe { (&mut *instance.cast::<S>(), &*host, take_tables(inputs, n_inputs)?) };
        let mut ctx = RunContext { host, inputs: batches };
        strategy.run(&mut ctx)
    })
}

/// Moves the tables the host handed over into record batches.
///
/// # Safety
/// `inputs` must point to `n_inputs` valid tables per the ABI (or be unused when 0).
unsafe fn take_tables(inputs: *mut RecdTable, n_inputs: usize) -> Result<Vec<(String, RecordBatch)>, PluginError> {
    // SAFETY: per the caller.
    let tables = if n_inputs == 0 { &mut [][..] } else { unsafe { std::slice::from_raw_parts_mut(inputs, n_inputs) } };
    let mut batches = Vec::with_capacity(tables.len());
    for table in tables.iter_mut() {
        // SAFETY: name is a valid C string; we take ownership of the arrays by swapping in
        // released placeholders (the C Data Interface's move).
        let name = unsafe { CStr::from_ptr(table.name) }.to_string_lossy().into_owned();
        let array = std::mem::replace(&mut table.array, FFI_ArrowArray::empty());
        let schema = std::mem::replace(&mut table.schema, FFI_ArrowSchema::empty());
        let batch = unsafe { batch_from_ffi(array, &schema) }?;
        batches.push((name, batch));
    }
    Ok(batches)
}

/// `check` entry point generated by [`export_plugin!`](crate::export_plugin) (ABI 1.1).
///
/// # Safety
/// Called by the host per the ABI with an instance from `create_entry::<S>`.
pub unsafe extern "C" fn check_entry<S: Strategy>(
    instance: *mut c_void,
    inputs: *mut RecdTable,
    n_inputs: usize,
    err: *mut RecdError,
) -> i32 {
    guarded(err, || {
        // SAFETY: per the ABI, the instance is ours and the tables are moved to us.
        let (strategy, batches) = unsafe { (&*instance.cast::<S>(), take_tables(inputs, n_inputs)?) };
        strategy.check(&CheckContext::new(batches))
    })
}

/// `destroy` entry point generated by [`export_plugin!`](crate::export_plugin).
///
/// # Safety
/// `instance` must come from `create_entry::<S>` and not be used afterwards.
pub unsafe extern "C" fn destroy_entry<S: Strategy>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // A panic in Drop must not cross the C boundary; there is nothing to report it to.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: created by Box::into_raw in create_entry::<S>.
        drop(unsafe { Box::from_raw(instance.cast::<S>()) });
    }));
}

/// Exports a [`Strategy`] as a recd plugin:
/// `export_plugin!(MyStrategy, name = "my-strategy", version = env!("CARGO_PKG_VERSION"));`
///
/// With `stream_inputs = "interactions"` (a literal: comma-separated input names) the
/// host hands those inputs to `run` with no rows, and the strategy reads them with
/// [`RunContext::input_stream`].
#[macro_export]
macro_rules! export_plugin {
    ($strategy:ty, name = $name:expr, version = $version:expr $(,)?) => {
        $crate::export_plugin!($strategy, name = $name, version = $version, stream_inputs = "");
    };
    ($strategy:ty, name = $name:expr, version = $version:expr, stream_inputs = $streams:expr $(,)?) => {
        static __RECD_PLUGIN_DESCRIPTOR: $crate::abi::RecdPluginV1 = $crate::abi::RecdPluginV1 {
            abi_major: $crate::abi::ABI_MAJOR,
            abi_minor: $crate::abi::ABI_MINOR,
            name: concat!($name, "\0").as_ptr().cast(),
            version: concat!($version, "\0").as_ptr().cast(),
            create: $crate::__private::create_entry::<$strategy>,
            run: $crate::__private::run_entry::<$strategy>,
            destroy: $crate::__private::destroy_entry::<$strategy>,
            check: Some($crate::__private::check_entry::<$strategy>),
            stream_inputs: concat!($streams, "\0").as_ptr().cast(),
        };

        /// The plugin's one entry point (ABI v1).
        #[unsafe(no_mangle)]
        pub extern "C" fn recd_plugin_entry() -> *const $crate::abi::RecdPluginV1 {
            &__RECD_PLUGIN_DESCRIPTOR
        }
    };
}
