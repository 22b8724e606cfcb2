//! ABI v1: the `#[repr(C)]` types shared with `include/recd_plugin.h`.
//!
//! Ownership rules (the Arrow C Data Interface's "move" semantics):
//! - input tables handed to `run` are moved to the plugin, which releases them;
//! - a batch handed to `emit` or `score` is moved to the host (the host sets the
//!   caller's structs to released/empty);
//! - a batch returned by `score` is owned by the plugin, which releases it;
//! - error messages are copied into a caller-provided fixed buffer, so no string
//!   ever needs freeing across the boundary.

use std::ffi::{c_char, c_void};

pub use arrow_array::ffi_stream::FFI_ArrowArrayStream;
pub use arrow_data::ffi::FFI_ArrowArray;
pub use arrow_schema::ffi::FFI_ArrowSchema;

/// Incremented on any incompatible change to the types below.
pub const ABI_MAJOR: u32 = 1;
/// Incremented on compatible additions (new trailing fields, new codes).
pub const ABI_MINOR: u32 = 3;

/// Name of the one exported entry point: `const RecdPluginV1 *recd_plugin_entry(void)`.
pub const ENTRY_SYMBOL: &[u8] = b"recd_plugin_entry\0";

/// Capacity of [`RecdError::message`], including the terminating NUL.
pub const ERROR_MESSAGE_CAP: usize = 1024;

/// Status codes returned by every fallible entry point and callback.
pub mod code {
    pub const OK: i32 = 0;
    /// The `[params]` of the job are invalid for this plugin.
    pub const INVALID_PARAMS: i32 = 1;
    /// An input table is missing or has the wrong shape.
    pub const INVALID_INPUT: i32 = 2;
    /// The run stopped because the host asked it to.
    pub const CANCELLED: i32 = 3;
    /// A host callback failed (scoring, emitting); the message says why.
    pub const HOST: i32 = 4;
    /// The plugin panicked; the panic was caught at the boundary.
    pub const PANIC: i32 = 5;
    /// Any other failure inside the plugin.
    pub const INTERNAL: i32 = 6;
}

/// Log levels for [`RecdHost::log`].
pub mod level {
    pub const ERROR: i32 = 1;
    pub const WARN: i32 = 2;
    pub const INFO: i32 = 3;
    pub const DEBUG: i32 = 4;
}

/// An error as a value: a code from [`code`] and a NUL-terminated UTF-8 message.
#[repr(C)]
pub struct RecdError {
    pub code: i32,
    pub message: [c_char; ERROR_MESSAGE_CAP],
}

impl RecdError {
    pub fn new() -> Self {
        RecdError { code: code::OK, message: [0; ERROR_MESSAGE_CAP] }
    }

    /// Stores `code` and as much of `message` as fits (cut at a char boundary).
    pub fn set(&mut self, code: i32, message: &str) {
        self.code = code;
        let mut end = message.len().min(ERROR_MESSAGE_CAP - 1);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        for (dst, src) in self.message.iter_mut().zip(&message.as_bytes()[..end]) {
            *dst = *src as c_char;
        }
        self.message[end] = 0;
    }

    /// The message as text (lossy for invalid UTF-8 from a foreign plugin).
    pub fn message(&self) -> String {
        let bytes: Vec<u8> = self.message.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Default for RecdError {
    fn default() -> Self {
        Self::new()
    }
}

/// One named input table, as a struct array whose fields are the table's columns.
#[repr(C)]
pub struct RecdTable {
    /// NUL-terminated name, valid for the duration of `run`.
    pub name: *const c_char,
    pub schema: FFI_ArrowSchema,
    pub array: FFI_ArrowArray,
}

/// Services the host offers to a running plugin. All callbacks take `ctx` first.
#[repr(C)]
pub struct RecdHost {
    pub ctx: *mut c_void,
    /// Scores a batch with a model of the job (`model` NULL: the job's model). The input
    /// is a struct array with one field per model input, named as the model names them;
    /// it is moved to the host. The output, one field per model output, is written to
    /// `out_schema`/`out_array` and owned by the caller.
    pub score: unsafe extern "C" fn(
        ctx: *mut c_void,
        model: *const c_char,
        in_schema: *mut FFI_ArrowSchema,
        in_array: *mut FFI_ArrowArray,
        out_schema: *mut FFI_ArrowSchema,
        out_array: *mut FFI_ArrowArray,
        err: *mut RecdError,
    ) -> i32,
    /// Hands result rows to the host (moved). Every batch has the same schema:
    /// `user` utf8, `item` utf8, `score` float32; one user's rows are contiguous.
    pub emit: unsafe extern "C" fn(
        ctx: *mut c_void,
        schema: *mut FFI_ArrowSchema,
        array: *mut FFI_ArrowArray,
        err: *mut RecdError,
    ) -> i32,
    /// Writes a log line (UTF-8, `len` bytes, not NUL-terminated) at a [`level`].
    pub log: unsafe extern "C" fn(ctx: *mut c_void, level: i32, msg: *const u8, len: usize),
    /// Reports progress in the plugin's own units (users, rows...).
    pub progress: unsafe extern "C" fn(ctx: *mut c_void, done: u64, total: u64),
    /// Non-zero once the host wants the run to stop; poll it between batches.
    pub is_cancelled: unsafe extern "C" fn(ctx: *mut c_void) -> i32,
    /// Since 1.2 (a plugin built for 1.2 may call it; hosts that accept 1.2 plugins
    /// provide it). Opens input `name` (NUL-terminated) as an Arrow C stream of record
    /// batches, read from its source as the plugin pulls them, written to `out` and owned
    /// by the plugin (which releases it). `columns[0..n_columns)` (NUL-terminated names)
    /// projects the stream onto those columns, in that order; `n_columns` 0: every
    /// column. Any input of the job can be opened, any number of times (each stream
    /// reads the input from its start); an input the plugin declares in
    /// [`RecdPluginV1::stream_inputs`] is read only this way.
    pub open_stream: unsafe extern "C" fn(
        ctx: *mut c_void,
        name: *const c_char,
        columns: *const *const c_char,
        n_columns: usize,
        out: *mut FFI_ArrowArrayStream,
        err: *mut RecdError,
    ) -> i32,
    /// Since 1.3 (a plugin built for 1.3 may call it; hosts that accept 1.3 plugins
    /// provide it). Non-zero if this run computes `user` (UTF-8, `len` bytes). A run can
    /// be one shard of a bigger one (`recd run --shard I/N`): the host keeps only the rows
    /// of its shard's users, so a plugin may skip the others' work. Calling it is never
    /// required; in a run of every user it is always non-zero.
    pub in_shard: unsafe extern "C" fn(ctx: *mut c_void, user: *const u8, len: usize) -> i32,
}

/// The descriptor a plugin exports. `abi_major` and `abi_minor` come first and stay
/// first in every future version, so any host can read them safely.
#[repr(C)]
pub struct RecdPluginV1 {
    pub abi_major: u32,
    pub abi_minor: u32,
    /// NUL-terminated, static.
    pub name: *const c_char,
    /// NUL-terminated, static.
    pub version: *const c_char,
    /// Validates `params` (a JSON object, UTF-8, `len` bytes) and creates an instance.
    pub create: unsafe extern "C" fn(
        params_json: *const u8,
        len: usize,
        instance: *mut *mut c_void,
        err: *mut RecdError,
    ) -> i32,
    /// Runs the strategy once over `inputs` (moved to the plugin).
    pub run: unsafe extern "C" fn(
        instance: *mut c_void,
        host: *const RecdHost,
        inputs: *mut RecdTable,
        n_inputs: usize,
        err: *mut RecdError,
    ) -> i32,
    /// Frees an instance made by `create`.
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
    /// Since 1.1 (hosts read it only from plugins whose `abi_minor >= 1`; NULL: none).
    /// Checks a job before any run, as `recd validate` and reloads do: `inputs` are the
    /// job's tables with their real schemas and no rows, plus the model-inputs table when
    /// the job has a model (moved to the plugin, as in `run`). Must not call back into a
    /// host: there is none. Errors name the job key at fault (`params.<key>: ...`).
    pub check: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            inputs: *mut RecdTable,
            n_inputs: usize,
            err: *mut RecdError,
        ) -> i32,
    >,
    /// Since 1.2 (hosts read it only from plugins whose `abi_minor >= 2`; NULL or empty:
    /// none). NUL-terminated, static: the comma-separated names of the inputs this plugin
    /// reads only as streams ([`RecdHost::open_stream`]). The host does not read them
    /// before `run`: `run` gets each of them with its schema and no rows, so a big table
    /// never has to sit in memory whole.
    pub stream_inputs: *const c_char,
}

// SAFETY: the descriptor is immutable static data: pointers to static strings and
// function pointers, safe to read from any thread.
unsafe impl Sync for RecdPluginV1 {}

/// Name of the extra input table a run gets when its job has a model: one row per model
/// input (columns `input`, `feature`, `dtype`); see `recd_plugin_api::model`.
pub const MODEL_INPUTS_TABLE: &str = "__model_inputs";

/// Column names of the rows a plugin emits.
pub mod output {
    pub const USER: &str = "user";
    pub const ITEM: &str = "item";
    pub const SCORE: &str = "score";
}

/// The C header must not drift from these definitions: compile a probe against it with the
/// system C compiler and compare every size, offset and constant with Rust's view.
#[cfg(test)]
mod header_drift {
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    use super::*;

    const PROBE: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include "recd_plugin.h"
#define S(t) printf(#t " %zu\n", sizeof(t));
#define O(t, f) printf(#t "." #f " %zu\n", offsetof(t, f));
#define C(n) printf(#n " %lld\n", (long long)(n));
int main(void) {
    S(RecdError) O(RecdError, code) O(RecdError, message)
    S(RecdTable) O(RecdTable, name) O(RecdTable, schema) O(RecdTable, array)
    S(RecdHost) O(RecdHost, ctx) O(RecdHost, score) O(RecdHost, emit) O(RecdHost, log)
    O(RecdHost, progress) O(RecdHost, is_cancelled) O(RecdHost, open_stream) O(RecdHost, in_shard)
    S(RecdPluginV1) O(RecdPluginV1, abi_major) O(RecdPluginV1, abi_minor) O(RecdPluginV1, name)
    O(RecdPluginV1, version) O(RecdPluginV1, create) O(RecdPluginV1, run) O(RecdPluginV1, destroy)
    O(RecdPluginV1, check) O(RecdPluginV1, stream_inputs)
    S(struct ArrowSchema) S(struct ArrowArray) S(struct ArrowArrayStream)
    C(RECD_ABI_MAJOR) C(RECD_ABI_MINOR) C(RECD_ERROR_MESSAGE_CAP)
    C(RECD_OK) C(RECD_INVALID_PARAMS) C(RECD_INVALID_INPUT) C(RECD_CANCELLED) C(RECD_HOST)
    C(RECD_PANIC) C(RECD_INTERNAL) C(RECD_LOG_ERROR) C(RECD_LOG_WARN) C(RECD_LOG_INFO) C(RECD_LOG_DEBUG)
    printf("RECD_ENTRY_SYMBOL %s\n", RECD_ENTRY_SYMBOL);
    return 0;
}
"#;

    fn rust_view() -> Vec<String> {
        let entry = std::str::from_utf8(&ENTRY_SYMBOL[..ENTRY_SYMBOL.len() - 1]).unwrap();
        let lines = [
            ("RecdError", size_of::<RecdError>()),
            ("RecdError.code", offset_of!(RecdError, code)),
            ("RecdError.message", offset_of!(RecdError, message)),
            ("RecdTable", size_of::<RecdTable>()),
            ("RecdTable.name", offset_of!(RecdTable, name)),
            ("RecdTable.schema", offset_of!(RecdTable, schema)),
            ("RecdTable.array", offset_of!(RecdTable, array)),
            ("RecdHost", size_of::<RecdHost>()),
            ("RecdHost.ctx", offset_of!(RecdHost, ctx)),
            ("RecdHost.score", offset_of!(RecdHost, score)),
            ("RecdHost.emit", offset_of!(RecdHost, emit)),
            ("RecdHost.log", offset_of!(RecdHost, log)),
            ("RecdHost.progress", offset_of!(RecdHost, progress)),
            ("RecdHost.is_cancelled", offset_of!(RecdHost, is_cancelled)),
            ("RecdHost.open_stream", offset_of!(RecdHost, open_stream)),
            ("RecdHost.in_shard", offset_of!(RecdHost, in_shard)),
            ("RecdPluginV1", size_of::<RecdPluginV1>()),
            ("RecdPluginV1.abi_major", offset_of!(RecdPluginV1, abi_major)),
            ("RecdPluginV1.abi_minor", offset_of!(RecdPluginV1, abi_minor)),
            ("RecdPluginV1.name", offset_of!(RecdPluginV1, name)),
            ("RecdPluginV1.version", offset_of!(RecdPluginV1, version)),
            ("RecdPluginV1.create", offset_of!(RecdPluginV1, create)),
            ("RecdPluginV1.run", offset_of!(RecdPluginV1, run)),
            ("RecdPluginV1.destroy", offset_of!(RecdPluginV1, destroy)),
            ("RecdPluginV1.check", offset_of!(RecdPluginV1, check)),
            ("RecdPluginV1.stream_inputs", offset_of!(RecdPluginV1, stream_inputs)),
            ("struct ArrowSchema", size_of::<FFI_ArrowSchema>()),
            ("struct ArrowArray", size_of::<FFI_ArrowArray>()),
            ("struct ArrowArrayStream", size_of::<FFI_ArrowArrayStream>()),
        ];
        let consts = [
            ("RECD_ABI_MAJOR", ABI_MAJOR as i64),
            ("RECD_ABI_MINOR", ABI_MINOR as i64),
            ("RECD_ERROR_MESSAGE_CAP", ERROR_MESSAGE_CAP as i64),
            ("RECD_OK", code::OK as i64),
            ("RECD_INVALID_PARAMS", code::INVALID_PARAMS as i64),
            ("RECD_INVALID_INPUT", code::INVALID_INPUT as i64),
            ("RECD_CANCELLED", code::CANCELLED as i64),
            ("RECD_HOST", code::HOST as i64),
            ("RECD_PANIC", code::PANIC as i64),
            ("RECD_INTERNAL", code::INTERNAL as i64),
            ("RECD_LOG_ERROR", level::ERROR as i64),
            ("RECD_LOG_WARN", level::WARN as i64),
            ("RECD_LOG_INFO", level::INFO as i64),
            ("RECD_LOG_DEBUG", level::DEBUG as i64),
        ];
        let mut out: Vec<String> = lines.iter().map(|(n, v)| format!("{n} {v}")).collect();
        out.extend(consts.iter().map(|(n, v)| format!("{n} {v}")));
        out.push(format!("RECD_ENTRY_SYMBOL {entry}"));
        out
    }

    #[test]
    fn c_header_matches_the_rust_definitions() {
        let dir = std::env::temp_dir().join(format!("recd-header-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("probe.c");
        let exe = dir.join("probe");
        std::fs::write(&src, PROBE).unwrap();
        let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
        let cc = Command::new("cc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", include, "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .expect("a C compiler (cc)");
        assert!(cc.status.success(), "the header does not compile: {}", String::from_utf8_lossy(&cc.stderr));
        let run = Command::new(&exe).output().unwrap();
        let c_view: Vec<String> = String::from_utf8(run.stdout).unwrap().lines().map(str::to_owned).collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(c_view, rust_view());
    }
}

/// The docs must state the ABI version this crate defines: every sentence that gives "the"
/// version (the header's first line, the README's layout table, the reference and the
/// architecture doc, `validate --json` examples, the refusal message) is read back and
/// compared with `ABI_MAJOR`/`ABI_MINOR`. Lines of a table are history (what 1.1 added, a
/// 1.0 host's message) and are skipped.
#[cfg(test)]
mod docs_version {
    use super::{ABI_MAJOR, ABI_MINOR};

    /// The version right after each `marker` in `text`, with the line it is on.
    fn stated<'t>(text: &'t str, marker: &str) -> Vec<(&'t str, String)> {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('|')) {
            for (at, _) in line.match_indices(marker) {
                let rest = &line[at + marker.len()..];
                let v: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
                out.push((line, v.trim_end_matches('.').to_string()));
            }
        }
        out
    }

    #[test]
    fn docs_state_the_abi_version_this_crate_defines() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        let want = format!("{ABI_MAJOR}.{ABI_MINOR}");
        let checks: [(&str, &[&str]); 5] = [
            ("plugin-api/include/recd_plugin.h", &["the recd plugin ABI, version "]),
            ("README.md", &["ABI v1 ("]),
            ("docs/plugin-abi.md", &["Version described here: **ABI ", "this recd speaks ABI ", "\"abi\":\""]),
            ("docs/ARCHITECTURE.md", &["Plugins speak the C ABI "]),
            ("docs/operations.md", &["this recd speaks ABI "]),
        ];
        let mut found = 0;
        for (file, markers) in checks {
            let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            for marker in markers {
                for (line, v) in stated(&text, marker) {
                    assert_eq!(v, want, "{file} states ABI {v}, plugin-api defines {want}: {line}");
                    found += 1;
                }
            }
            let minor = format!("RECD_ABI_MINOR {ABI_MINOR}");
            for line in text.lines().filter(|l| l.contains("`RECD_ABI_MINOR ")) {
                assert!(line.contains(&minor), "{file} gives another RECD_ABI_MINOR than {ABI_MINOR}: {line}");
            }
        }
        // each marker above is there at least once: a reworded sentence fails here, not silently
        assert!(found >= 9, "only {found} version statements found");
    }
}
