//! The one place that holds libloading and `unsafe`: opening plugin libraries, checking
//! their ABI, calling their entry points, and the host callbacks they call back into.
//! Only `recd worker` uses it; the serving process never loads plugin code.
//!
//! Libraries are never closed (no `dlclose`): unloading Rust code with thread-local
//! destructors is unsound, and a worker process lives for one run anyway.

use std::ffi::{CStr, CString, c_char, c_void};
use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::{Array, RecordBatch, RecordBatchReader, StructArray};
use arrow_schema::{ArrowError, SchemaRef};
use recd_plugin_api::abi::{self, RecdError, RecdHost, RecdPluginV1, RecdTable, code};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot load plugin {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("plugin {path} does not export `recd_plugin_entry`: {message}")]
    Symbol { path: PathBuf, message: String },
    #[error("plugin {path} speaks ABI {found_major}.{found_minor}, this recd speaks ABI {host_major}.{host_minor}")]
    AbiMismatch { path: PathBuf, found_major: u32, found_minor: u32, host_major: u32, host_minor: u32 },
    #[error("plugin {path} has an invalid descriptor: {reason}")]
    Descriptor { path: PathBuf, reason: String },
}

/// An error the plugin reported (code and message), or a panic caught at the boundary.
#[derive(Debug, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct PluginCallError {
    pub code: i32,
    pub message: String,
}

/// Services the worker offers a running plugin.
pub trait Host {
    fn score(&mut self, model: Option<&str>, batch: RecordBatch) -> Result<RecordBatch, String>;
    fn emit(&mut self, batch: RecordBatch) -> Result<(), String>;
    fn log(&mut self, level: i32, message: &str);
    fn progress(&mut self, done: u64, total: u64);
    fn is_cancelled(&mut self) -> bool;
    /// Input `name` read as a stream, projected onto `columns` (empty: all).
    fn open_stream(&mut self, name: &str, columns: &[String]) -> Result<Box<dyn RecordBatchReader + Send>, String>;
    /// Whether the run computes `user` (false outside the run's shard).
    fn in_shard(&mut self, user: &str) -> bool;
}

type CheckFn = unsafe extern "C" fn(*mut c_void, *mut RecdTable, usize, *mut RecdError) -> i32;

/// The entry points of a descriptor, copied out field by field.
struct Entries {
    abi: (u32, u32),
    create: unsafe extern "C" fn(*const u8, usize, *mut *mut c_void, *mut RecdError) -> i32,
    run: unsafe extern "C" fn(*mut c_void, *const RecdHost, *mut RecdTable, usize, *mut RecdError) -> i32,
    destroy: unsafe extern "C" fn(*mut c_void),
    /// Read only from a plugin built for ABI 1.1 or later.
    check: Option<CheckFn>,
}

/// A loaded plugin whose ABI version has been checked.
pub struct Plugin {
    descriptor: Entries,
    pub name: String,
    pub version: String,
    /// The inputs it reads only as streams (ABI 1.2 `stream_inputs`; empty before 1.2).
    pub stream_inputs: Vec<String>,
}

impl Plugin {
    pub fn open(path: &Path) -> Result<Plugin, LoadError> {
        let path_buf = path.to_path_buf();
        // SAFETY: loading a library runs its initialisers; plugins are trusted code that
        // the ops installed, and this runs in a throwaway worker process.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| LoadError::Open { path: path_buf.clone(), message: e.to_string() })?;
        // Never unloaded, refused or not (see the module comment): its initialisers have
        // run, and what they started may point into it.
        let lib = std::mem::ManuallyDrop::new(lib);
        // SAFETY: the symbol's type is fixed by ABI v1.
        let entry: libloading::Symbol<unsafe extern "C" fn() -> *const RecdPluginV1> =
            unsafe { lib.get(abi::ENTRY_SYMBOL) }
                .map_err(|e| LoadError::Symbol { path: path_buf.clone(), message: e.to_string() })?;
        // SAFETY: calling the entry point the plugin exports for this purpose.
        let ptr = unsafe { entry() };
        if ptr.is_null() {
            return Err(LoadError::Descriptor { path: path_buf, reason: "entry point returned NULL".into() });
        }
        // Read only the two version words before trusting the rest of the layout.
        // SAFETY: every ABI version starts with these two u32 fields.
        let (major, minor) = unsafe { ((*ptr).abi_major, (*ptr).abi_minor) };
        if major != abi::ABI_MAJOR || minor > abi::ABI_MINOR {
            return Err(LoadError::AbiMismatch {
                path: path_buf,
                found_major: major,
                found_minor: minor,
                host_major: abi::ABI_MAJOR,
                host_minor: abi::ABI_MINOR,
            });
        }
        // Fields are read one by one through the raw pointer: a 1.0 descriptor ends before
        // `check` (a 1.1 one before `stream_inputs`), so it must not be viewed as the
        // whole struct.
        // SAFETY: as for the reads below; each function pointer is read as a plain pointer
        // first, since a NULL one must not be read as a (non-nullable) function pointer.
        let missing = unsafe {
            [
                ("create", std::ptr::addr_of!((*ptr).create).cast::<*const c_void>().read()),
                ("run", std::ptr::addr_of!((*ptr).run).cast::<*const c_void>().read()),
                ("destroy", std::ptr::addr_of!((*ptr).destroy).cast::<*const c_void>().read()),
            ]
        };
        if let Some((field, _)) = missing.iter().find(|(_, p)| p.is_null()) {
            return Err(LoadError::Descriptor { path: path_buf, reason: format!("`{field}` is NULL") });
        }
        // SAFETY: the major version matches, so every field up to `destroy` exists,
        // `check` does when minor >= 1 and `stream_inputs` when minor >= 2; the descriptor
        // is static.
        let (descriptor, name, version, streams) = unsafe {
            let check = if minor >= 1 { std::ptr::addr_of!((*ptr).check).read() } else { None };
            let streams = if minor >= 2 { std::ptr::addr_of!((*ptr).stream_inputs).read() } else { std::ptr::null() };
            let entries = Entries {
                abi: (major, minor),
                create: std::ptr::addr_of!((*ptr).create).read(),
                run: std::ptr::addr_of!((*ptr).run).read(),
                destroy: std::ptr::addr_of!((*ptr).destroy).read(),
                check,
            };
            (entries, std::ptr::addr_of!((*ptr).name).read(), std::ptr::addr_of!((*ptr).version).read(), streams)
        };
        let name = static_str(name, &path_buf, "name")?;
        let version = static_str(version, &path_buf, "version")?;
        let stream_inputs =
            if streams.is_null() { String::new() } else { static_str(streams, &path_buf, "stream_inputs")? };
        let stream_inputs =
            stream_inputs.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect();
        Ok(Plugin { descriptor, name, version, stream_inputs })
    }

    /// "major.minor" of the ABI the plugin was built for.
    pub fn abi(&self) -> String {
        format!("{}.{}", self.descriptor.abi.0, self.descriptor.abi.1)
    }

    /// Creates an instance; the plugin validates `params_json` here.
    pub fn create(&self, params_json: &str) -> Result<Instance<'_>, PluginCallError> {
        let mut instance: *mut c_void = std::ptr::null_mut();
        let mut err = RecdError::new();
        // SAFETY: valid pointers for the duration of the call, per ABI v1.
        let rc = unsafe { (self.descriptor.create)(params_json.as_ptr(), params_json.len(), &mut instance, &mut err) };
        check(rc, &err)?;
        Ok(Instance { plugin: self, ptr: instance, runs: Vec::new(), destroyed: false })
    }
}

fn static_str(ptr: *const c_char, path: &Path, what: &str) -> Result<String, LoadError> {
    if ptr.is_null() {
        return Err(LoadError::Descriptor { path: path.to_path_buf(), reason: format!("{what} is NULL") });
    }
    // SAFETY: the ABI requires a static NUL-terminated string.
    Ok(unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned())
}

// Calls into the plugin are plain calls: the entry points are `extern "C"`, so a panic
// that escapes a plugin built without the SDK's guards cannot unwind into us; Rust aborts
// the worker instead, and the run fails like any other crash (SIGABRT). That is the
// isolation: it ends at the worker process.

fn check(rc: i32, err: &RecdError) -> Result<(), PluginCallError> {
    if rc == code::OK {
        return Ok(());
    }
    let mut message = err.message();
    if message.is_empty() {
        message = "plugin failed without a message".into();
    }
    Err(PluginCallError { code: rc, message })
}

/// A plugin instance; destroyed by [`Instance::close`], or on drop.
pub struct Instance<'p> {
    plugin: &'p Plugin,
    ptr: *mut c_void,
    /// The contexts of the runs so far, to report calls refused after them.
    runs: Vec<&'static HostCtx>,
    /// `destroy` was called (`ptr` may be NULL: a plugin need not make an instance).
    destroyed: bool,
}

impl Instance<'_> {
    /// Runs the strategy over `inputs` with `host` answering its callbacks. A callback the
    /// plugin called against the ABI's rules (see [`HostCtx`]) fails the run.
    pub fn run(&mut self, host: &mut dyn Host, inputs: Vec<(String, RecordBatch)>) -> Result<(), PluginCallError> {
        let names = table_names(&inputs);
        let mut tables = abi_tables(inputs, &names)?;
        let mut host_ref: &mut dyn Host = host;
        let ctx = HostCtx::open(&mut host_ref);
        self.runs.push(ctx);
        // Leaked with its context: a plugin that kept the vtable's address past `run` reads
        // live memory, and its calls are refused.
        let vtable: &'static RecdHost = Box::leak(Box::new(RecdHost {
            ctx: std::ptr::from_ref(ctx).cast_mut().cast(),
            score: score_cb,
            emit: emit_cb,
            log: log_cb,
            progress: progress_cb,
            is_cancelled: is_cancelled_cb,
            open_stream: open_stream_cb,
            in_shard: in_shard_cb,
        }));
        let mut err = RecdError::new();
        // SAFETY: the instance came from this plugin's `create`; tables and vtable outlive
        // the call; tables are moved to the plugin per the ABI.
        let rc = unsafe { (self.plugin.descriptor.run)(self.ptr, vtable, tables.as_mut_ptr(), tables.len(), &mut err) };
        ctx.close();
        // Any table the plugin did not take is released when `tables` drops here.
        drop(tables);
        ctx.refused()?;
        check(rc, &err)
    }

    /// Destroys the instance; an error if the plugin called the host after a run returned
    /// (from `destroy`, or a thread it left running), which was refused.
    pub fn close(mut self) -> Result<(), PluginCallError> {
        self.destroy();
        self.runs.iter().try_for_each(|ctx| ctx.refused())
    }

    fn destroy(&mut self) {
        if !std::mem::replace(&mut self.destroyed, true) {
            // SAFETY: ptr came from this plugin's `create` and is not used after this.
            unsafe { (self.plugin.descriptor.destroy)(self.ptr) };
        }
    }
}

/// What a host callback's `ctx` points at. The ABI allows callbacks only on the thread
/// that called `run`, while `run` executes, and not from inside another callback (a
/// release callback the host runs while it holds the host): any other call would alias
/// or outlive the `&mut dyn Host` on `run`'s stack. Such a call is refused (a callback
/// with an error to fill returns `RECD_HOST`; `log` and `progress` do nothing;
/// `is_cancelled` says stop, from then on also on `run`'s thread; `in_shard` says
/// compute), and the run fails with the first one made before the instance is closed.
/// Leaked, never freed (a worker does one run): a plugin that kept the pointer finds a
/// closed context, not freed memory.
struct HostCtx {
    /// The `&mut dyn Host` on `run`'s stack: read only on `thread`, while `open`.
    host: *mut c_void,
    thread: std::thread::ThreadId,
    open: AtomicBool,
    /// A callback is running (only `thread` sets it).
    busy: AtomicBool,
    /// A call was refused: `is_cancelled` says stop from then on, so the run, failed
    /// already, ends early.
    any_refused: AtomicBool,
    /// The first refused call, said once.
    refused: Mutex<Option<String>>,
}

impl HostCtx {
    fn open(host: &mut &mut dyn Host) -> &'static HostCtx {
        Box::leak(Box::new(HostCtx {
            host: std::ptr::from_mut(host).cast(),
            thread: std::thread::current().id(),
            open: AtomicBool::new(true),
            busy: AtomicBool::new(false),
            any_refused: AtomicBool::new(false),
            refused: Mutex::new(None),
        }))
    }

    fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    fn refused(&self) -> Result<(), PluginCallError> {
        match self.refused.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            Some(message) => Err(PluginCallError { code: code::HOST, message }),
            None => Ok(()),
        }
    }

    /// The host, for callback `name`, if the call keeps the ABI's rules.
    fn enter(&self, name: &str) -> Result<Entered<'_>, String> {
        let broken = if std::thread::current().id() != self.thread {
            "from a thread other than the one that called `run`"
        } else if !self.open.load(Ordering::Acquire) {
            "after `run` returned"
        } else if self.busy.swap(true, Ordering::Acquire) {
            "from inside another host callback"
        } else {
            return Ok(Entered { ctx: self });
        };
        let message = format!(
            "the plugin called the host's `{name}` {broken}, which was refused \
             (callbacks are for the thread running `run`, while it runs)"
        );
        self.any_refused.store(true, Ordering::Release);
        let mut first = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            tracing::warn!("{message}");
            *first = Some(message.clone());
        }
        Err(message)
    }
}

/// A callback's hold on the host, let go when the callback ends.
struct Entered<'a> {
    ctx: &'a HostCtx,
}

impl Entered<'_> {
    fn host(&mut self) -> &mut dyn Host {
        // SAFETY: `enter` checked that this is `run`'s thread, that `run` is executing (so
        // the `&mut dyn Host` it points at is live) and that no other callback holds it.
        unsafe { &mut **self.ctx.host.cast::<&mut dyn Host>() }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.ctx.busy.store(false, Ordering::Release);
    }
}

/// The checked host behind a callback's `ctx`.
///
/// # Safety
/// `ctx` must be the context `Instance::run` put in the vtable (a leaked [`HostCtx`]).
unsafe fn enter<'a>(ctx: *mut c_void, name: &str) -> Result<Entered<'a>, String> {
    // SAFETY: per the caller; leaked, so valid for ever.
    unsafe { &*ctx.cast::<HostCtx>() }.enter(name)
}

impl Instance<'_> {
    /// The plugin's pre-run check of a job against its (zero-row) input tables; Ok when
    /// the plugin has no check (ABI 1.0, or a NULL entry).
    pub fn check(&mut self, inputs: Vec<(String, RecordBatch)>) -> Result<(), PluginCallError> {
        let Some(check_fn) = self.plugin.descriptor.check else { return Ok(()) };
        let names = table_names(&inputs);
        let mut tables = abi_tables(inputs, &names)?;
        let mut err = RecdError::new();
        // SAFETY: the instance came from this plugin's `create`; the tables outlive the
        // call and are moved to the plugin per the ABI.
        let rc = unsafe { check_fn(self.ptr, tables.as_mut_ptr(), tables.len(), &mut err) };
        drop(tables);
        check(rc, &err)
    }
}

impl Drop for Instance<'_> {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// The inputs' names as C strings, for [`abi_tables`] to point into.
fn table_names(inputs: &[(String, RecordBatch)]) -> Vec<CString> {
    inputs.iter().map(|(n, _)| CString::new(n.as_str()).unwrap_or_default()).collect()
}

/// The inputs as the ABI hands them to `run` or `check`; `names` must outlive the tables.
fn abi_tables(inputs: Vec<(String, RecordBatch)>, names: &[CString]) -> Result<Vec<RecdTable>, PluginCallError> {
    let mut tables = Vec::with_capacity(inputs.len());
    for ((_, batch), name) in inputs.into_iter().zip(names) {
        let (array, schema) =
            export_batch(batch).map_err(|e| PluginCallError { code: code::INVALID_INPUT, message: e })?;
        tables.push(RecdTable { name: name.as_ptr(), schema, array });
    }
    Ok(tables)
}

fn export_batch(batch: RecordBatch) -> Result<(FFI_ArrowArray, FFI_ArrowSchema), String> {
    to_ffi(&StructArray::from(batch).into_data()).map_err(|e| format!("arrow export failed: {e}"))
}

/// Takes a batch the plugin moved to us.
///
/// # Safety
/// Pointers must be valid Arrow C Data Interface structs (possibly released).
unsafe fn import_batch(schema: *mut FFI_ArrowSchema, array: *mut FFI_ArrowArray) -> Result<RecordBatch, String> {
    if schema.is_null() || array.is_null() {
        return Err("NULL array or schema".into());
    }
    // SAFETY: per the caller; replacing with empty structs is the C interface's move.
    let (array, schema) = unsafe {
        (std::ptr::replace(array, FFI_ArrowArray::empty()), std::ptr::replace(schema, FFI_ArrowSchema::empty()))
    };
    // SAFETY: the producer promises a valid array for this schema.
    let data = unsafe { from_ffi(array, &schema) }.map_err(|e| format!("arrow import failed: {e}"))?;
    // arrow takes an imported array's offsets, UTF-8 and counts on trust: checked here, so
    // that a plugin's bad offsets (a string column past 2 GiB) or invalid UTF-8 fail its
    // call instead of being read out of bounds.
    data.validate_full().map_err(|e| format!("the plugin's batch is not valid Arrow data: {e}"))?;
    let array = arrow_array::make_array(data);
    let structs =
        array.as_any().downcast_ref::<StructArray>().ok_or("expected a struct array (one field per column)")?;
    if structs.null_count() > 0 {
        return Err("the batch's struct array has null rows".into());
    }
    Ok(RecordBatch::from(structs))
}

fn set_err(err: *mut RecdError, code: i32, message: &str) {
    if !err.is_null() {
        // SAFETY: the plugin passes a valid RecdError it owns.
        unsafe { (*err).set(code, message) };
    }
}

/// Runs a callback body, turning a host-side panic into an error code: a panic must
/// never unwind into plugin frames.
fn callback(err: *mut RecdError, f: impl FnOnce() -> Result<(), String>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => code::OK,
        Ok(Err(message)) => {
            set_err(err, code::HOST, &message);
            code::HOST
        }
        Err(_) => {
            set_err(err, code::HOST, "host panicked in a callback");
            code::HOST
        }
    }
}

unsafe extern "C" fn score_cb(
    ctx: *mut c_void,
    model: *const c_char,
    in_schema: *mut FFI_ArrowSchema,
    in_array: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
    out_array: *mut FFI_ArrowArray,
    err: *mut RecdError,
) -> i32 {
    callback(err, || {
        // SAFETY: ABI v1 contract for `score`.
        let batch = unsafe { import_batch(in_schema, in_array) }?;
        let model = (!model.is_null()).then(|| unsafe { CStr::from_ptr(model) }.to_string_lossy().into_owned());
        // SAFETY: ctx per the vtable.
        let result = unsafe { enter(ctx, "score") }?.host().score(model.as_deref(), batch)?;
        let (array, schema) = export_batch(result)?;
        if out_schema.is_null() || out_array.is_null() {
            return Err("NULL output pointers".into());
        }
        // SAFETY: the plugin gave us writable, empty output structs.
        unsafe {
            std::ptr::write(out_array, array);
            std::ptr::write(out_schema, schema);
        }
        Ok(())
    })
}

unsafe extern "C" fn emit_cb(
    ctx: *mut c_void,
    schema: *mut FFI_ArrowSchema,
    array: *mut FFI_ArrowArray,
    err: *mut RecdError,
) -> i32 {
    callback(err, || {
        // SAFETY: ABI v1 contract for `emit`.
        let batch = unsafe { import_batch(schema, array) }?;
        // SAFETY: ctx per the vtable.
        unsafe { enter(ctx, "emit") }?.host().emit(batch)
    })
}

unsafe extern "C" fn log_cb(ctx: *mut c_void, level: i32, msg: *const u8, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if msg.is_null() {
            return;
        }
        // SAFETY: the plugin passes `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(msg, len) };
        // SAFETY: ctx per the vtable.
        if let Ok(mut entered) = unsafe { enter(ctx, "log") } {
            entered.host().log(level, &String::from_utf8_lossy(bytes));
        }
    }));
}

unsafe extern "C" fn progress_cb(ctx: *mut c_void, done: u64, total: u64) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: ctx per the vtable.
        if let Ok(mut entered) = unsafe { enter(ctx, "progress") } {
            entered.host().progress(done, total);
        }
    }));
}

unsafe extern "C" fn is_cancelled_cb(ctx: *mut c_void) -> i32 {
    // SAFETY: ctx per the vtable. A panicking host, or a call refused, means: stop.
    let stop = |mut e: Entered| e.ctx.any_refused.load(Ordering::Acquire) || e.host().is_cancelled();
    catch_unwind(AssertUnwindSafe(|| unsafe { enter(ctx, "is_cancelled") }.map(stop)))
        .map_or(1, |cancelled| i32::from(cancelled.unwrap_or(true)))
}

unsafe extern "C" fn in_shard_cb(ctx: *mut c_void, user: *const u8, len: usize) -> i32 {
    if user.is_null() {
        return 1;
    }
    // SAFETY: ABI 1.3 contract for `in_shard`: `len` bytes at `user`. A panicking host, or
    // a call refused, means: compute the user (the host filters the rows anyway).
    let bytes = unsafe { std::slice::from_raw_parts(user, len) };
    let user = String::from_utf8_lossy(bytes);
    // SAFETY: ctx per the vtable.
    catch_unwind(AssertUnwindSafe(|| unsafe { enter(ctx, "in_shard") }.map(|mut e| e.host().in_shard(&user))))
        .map_or(1, |computes| i32::from(computes.unwrap_or(true)))
}

unsafe extern "C" fn open_stream_cb(
    ctx: *mut c_void,
    name: *const c_char,
    columns: *const *const c_char,
    n_columns: usize,
    out: *mut FFI_ArrowArrayStream,
    err: *mut RecdError,
) -> i32 {
    callback(err, || {
        if name.is_null() || out.is_null() || (n_columns > 0 && columns.is_null()) {
            return Err("open_stream: NULL name, columns or output stream".into());
        }
        // SAFETY: `columns` holds `n_columns` pointers (ABI 1.2 contract for `open_stream`).
        if (0..n_columns).any(|i| unsafe { *columns.add(i) }.is_null()) {
            return Err("open_stream: a NULL column name".into());
        }
        // SAFETY: ABI 1.2 contract for `open_stream`: C strings, `n_columns` of them.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        let columns: Vec<String> =
            (0..n_columns).map(|i| unsafe { CStr::from_ptr(*columns.add(i)) }.to_string_lossy().into_owned()).collect();
        // SAFETY: ctx per the vtable.
        let reader = unsafe { enter(ctx, "open_stream") }?.host().open_stream(&name, &columns)?;
        // SAFETY: the plugin gave us a writable, empty stream struct it will own.
        unsafe { std::ptr::write(out, FFI_ArrowArrayStream::new(Box::new(Guarded { reader, poisoned: false }))) };
        Ok(())
    })
}

/// A reader whose panics become errors: its `next` runs inside the plugin's call to the
/// stream's `get_next`, and a panic must never unwind into plugin frames. After a panic it
/// ends (its state may be torn). Error texts lose their NUL bytes: arrow's exported
/// `get_next` turns the message into a C string and panics, in an `extern "C"` frame,
/// on a NUL, and a CSV parse error quotes the row it could not read.
struct Guarded {
    reader: Box<dyn RecordBatchReader + Send>,
    poisoned: bool,
}

impl Iterator for Guarded {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.poisoned {
            return None;
        }
        match catch_unwind(AssertUnwindSafe(|| self.reader.next())) {
            Ok(Some(Err(e))) => Some(Err(ArrowError::ExternalError(e.to_string().replace('\0', "\\0").into()))),
            Ok(next) => next,
            Err(_) => {
                self.poisoned = true;
                Some(Err(ArrowError::ExternalError("host panicked reading an input stream".into())))
            }
        }
    }
}

impl RecordBatchReader for Guarded {
    fn schema(&self) -> SchemaRef {
        self.reader.schema()
    }
}

/// Gives the worker a private handle on its original stdout for result frames, and points
/// fd 1 at stderr, so a plugin that prints cannot corrupt the frame stream.
pub fn take_stdout_for_frames() -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain fd syscalls on the process's own descriptors.
    unsafe {
        // Close-on-exec: a process the plugin starts must not hold the result stream open
        // (the daemon reads it to its end).
        let fd = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 || libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(File::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::ffi_stream::RecordBatchStreamReader;
    use arrow_array::{Int64Array, RecordBatchIterator};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    /// The context `Counting::progress` calls `log` through (0: none), as a plugin's release
    /// callback could from inside a callback.
    static REENTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Counts the `log` calls that reach it.
    #[derive(Default)]
    struct Counting {
        logs: usize,
    }

    impl Host for Counting {
        fn score(&mut self, _: Option<&str>, batch: RecordBatch) -> Result<RecordBatch, String> {
            Ok(batch)
        }
        fn emit(&mut self, _: RecordBatch) -> Result<(), String> {
            Ok(())
        }
        fn log(&mut self, _: i32, _: &str) {
            self.logs += 1;
        }
        fn progress(&mut self, _: u64, _: u64) {
            let ctx = REENTER.load(Ordering::SeqCst);
            // SAFETY: a context of the test below, a message of 2 bytes.
            unsafe { log_cb(ctx as *mut c_void, 3, b"in".as_ptr(), 2) };
        }
        fn is_cancelled(&mut self) -> bool {
            false
        }
        fn open_stream(&mut self, _: &str, _: &[String]) -> Result<Box<dyn RecordBatchReader + Send>, String> {
            Err("none".into())
        }
        fn in_shard(&mut self, _: &str) -> bool {
            false
        }
    }

    /// A context over `host`, and its address as the vtable carries it.
    fn context(host: &mut &mut dyn Host) -> (&'static HostCtx, *mut c_void) {
        let ctx = HostCtx::open(host);
        (ctx, std::ptr::from_ref(ctx).cast_mut().cast())
    }

    // SAFETY (the calls below): each passes a context made by `context`, as a plugin
    // passes the vtable's, and a message of 2 bytes.
    #[test]
    fn callbacks_off_the_run_thread_inside_another_or_after_the_run_are_refused() {
        let log = |ctx: *mut c_void| unsafe { log_cb(ctx, 3, b"hi".as_ptr(), 2) };
        let mut counting = Counting::default();
        let mut host: &mut dyn Host = &mut counting;
        // On the run's thread, while it runs: each call reaches the host.
        let (ctx, ptr) = context(&mut host);
        log(ptr);
        assert_eq!((unsafe { is_cancelled_cb(ptr) }, unsafe { in_shard_cb(ptr, b"u".as_ptr(), 1) }), (0, 0));
        assert!(ctx.refused().is_ok());
        // From another thread: refused, answered "stop" and "compute", and said once.
        let addr = ptr as usize;
        std::thread::spawn(move || {
            let ptr = addr as *mut c_void;
            log(ptr);
            assert_eq!((unsafe { is_cancelled_cb(ptr) }, unsafe { in_shard_cb(ptr, b"u".as_ptr(), 1) }), (1, 1));
            let mut err = RecdError::new();
            let (mut array, mut schema) = export_batch(batch()).unwrap();
            assert_eq!(unsafe { emit_cb(ptr, &mut schema, &mut array, &mut err) }, code::HOST);
            assert!(err.message().contains("`emit` from a thread other than"), "{}", err.message());
        })
        .join()
        .unwrap();
        assert_eq!(
            ctx.refused().unwrap_err().message,
            "the plugin called the host's `log` from a thread other than the one that called `run`, which was \
             refused (callbacks are for the thread running `run`, while it runs)"
        );
        assert_eq!(unsafe { is_cancelled_cb(ptr) }, 1, "a run with a refused call is told to stop");
        // From inside another callback.
        let (ctx, ptr) = context(&mut host);
        REENTER.store(ptr as usize, Ordering::SeqCst);
        unsafe { progress_cb(ptr, 1, 2) };
        REENTER.store(0, Ordering::SeqCst);
        assert!(ctx.refused().unwrap_err().message.contains("`log` from inside another host callback"));
        // After the run returned.
        let (ctx, ptr) = context(&mut host);
        ctx.close();
        log(ptr);
        assert!(ctx.refused().unwrap_err().message.contains("`log` after `run` returned"));
        assert_eq!(counting.logs, 1, "only the call on the run's thread, while it ran, reached the host");
    }

    /// A reader that gives one batch, then `fault`, then (unless it panicked) one more batch.
    struct Faulty {
        step: u32,
        panic: bool,
    }

    impl Iterator for Faulty {
        type Item = Result<RecordBatch, ArrowError>;
        fn next(&mut self) -> Option<Self::Item> {
            self.step += 1;
            match self.step {
                1 | 3 => Some(Ok(batch())),
                2 if self.panic => panic!("reader bug"),
                2 => Some(Err(ArrowError::ParseError("Row data: 'a\0b'".into()))),
                _ => None,
            }
        }
    }

    impl RecordBatchReader for Faulty {
        fn schema(&self) -> SchemaRef {
            batch().schema()
        }
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap()
    }

    /// What a plugin reading the exported stream sees, one line per item.
    fn consume(reader: Box<dyn RecordBatchReader + Send>) -> Vec<String> {
        let stream = FFI_ArrowArrayStream::new(Box::new(Guarded { reader, poisoned: false }));
        let reader = RecordBatchStreamReader::try_new(stream).unwrap();
        reader.map(|r| r.map(|b| format!("{} rows", b.num_rows())).unwrap_or_else(|e| e.to_string())).collect()
    }

    #[test]
    fn a_guarded_stream_turns_a_nul_in_an_error_and_a_panic_into_errors() {
        // Unguarded, the NUL would panic inside arrow's extern "C" get_next and abort.
        let seen = consume(Box::new(Faulty { step: 0, panic: false }));
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0], "2 rows");
        assert!(seen[1].contains("Row data: 'a\\0b'"), "{}", seen[1]);
        assert_eq!(seen[2], "2 rows");
        // after a panic the stream ends: the reader's state may be torn
        let seen = consume(Box::new(Faulty { step: 0, panic: true }));
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[1].contains("host panicked reading an input stream"), "{}", seen[1]);
        // a plain reader passes through as it is
        let plain = RecordBatchIterator::new(vec![Ok(batch())], batch().schema());
        assert_eq!(consume(Box::new(plain)), ["2 rows"]);
    }
}
