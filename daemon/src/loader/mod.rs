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
        Ok(Instance { plugin: self, ptr: instance })
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

/// A plugin instance; destroyed on drop.
pub struct Instance<'p> {
    plugin: &'p Plugin,
    ptr: *mut c_void,
}

impl Instance<'_> {
    /// Runs the strategy over `inputs` with `host` answering its callbacks.
    pub fn run(&mut self, host: &mut dyn Host, inputs: Vec<(String, RecordBatch)>) -> Result<(), PluginCallError> {
        let names = table_names(&inputs);
        let mut tables = abi_tables(inputs, &names)?;
        let mut host_ref: &mut dyn Host = host;
        let vtable = RecdHost {
            ctx: (&mut host_ref as *mut &mut dyn Host).cast(),
            score: score_cb,
            emit: emit_cb,
            log: log_cb,
            progress: progress_cb,
            is_cancelled: is_cancelled_cb,
            open_stream: open_stream_cb,
            in_shard: in_shard_cb,
        };
        let mut err = RecdError::new();
        // SAFETY: the instance came from this plugin's `create`; tables and vtable outlive
        // the call; tables are moved to the plugin per the ABI.
        let rc =
            unsafe { (self.plugin.descriptor.run)(self.ptr, &vtable, tables.as_mut_ptr(), tables.len(), &mut err) };
        // Any table the plugin did not take is released when `tables` drops here.
        drop(tables);
        check(rc, &err)
    }
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
        let destroy = self.plugin.descriptor.destroy;
        let ptr = self.ptr;
        // SAFETY: ptr came from this plugin's `create` and is not used after this.
        unsafe { destroy(ptr) };
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

/// # Safety
/// `ctx` must be the `&mut &mut dyn Host` that `Instance::run` put in the vtable.
unsafe fn host<'a>(ctx: *mut c_void) -> &'a mut dyn Host {
    // SAFETY: per the caller.
    unsafe { *ctx.cast::<&mut dyn Host>() }
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
        let result = unsafe { host(ctx) }.score(model.as_deref(), batch)?;
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
        unsafe { host(ctx) }.emit(batch)
    })
}

unsafe extern "C" fn log_cb(ctx: *mut c_void, level: i32, msg: *const u8, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if msg.is_null() {
            return;
        }
        // SAFETY: the plugin passes `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(msg, len) };
        unsafe { host(ctx) }.log(level, &String::from_utf8_lossy(bytes));
    }));
}

unsafe extern "C" fn progress_cb(ctx: *mut c_void, done: u64, total: u64) {
    // SAFETY: ctx per the vtable.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { host(ctx) }.progress(done, total)));
}

unsafe extern "C" fn is_cancelled_cb(ctx: *mut c_void) -> i32 {
    // SAFETY: ctx per the vtable. A panicking host means: stop.
    catch_unwind(AssertUnwindSafe(|| unsafe { host(ctx) }.is_cancelled())).map(i32::from).unwrap_or(1)
}

unsafe extern "C" fn in_shard_cb(ctx: *mut c_void, user: *const u8, len: usize) -> i32 {
    if user.is_null() {
        return 1;
    }
    // SAFETY: ABI 1.3 contract for `in_shard`: `len` bytes at `user`. A panicking host
    // means: compute the user (the host filters the rows anyway).
    let bytes = unsafe { std::slice::from_raw_parts(user, len) };
    let user = String::from_utf8_lossy(bytes);
    catch_unwind(AssertUnwindSafe(|| unsafe { host(ctx) }.in_shard(&user))).map(i32::from).unwrap_or(1)
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
        let reader = unsafe { host(ctx) }.open_stream(&name, &columns)?;
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
