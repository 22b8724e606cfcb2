//! The recd plugin contract.
//!
//! A plugin is a shared library exporting one C function,
//! [`abi::ENTRY_SYMBOL`] (`recd_plugin_entry`), that returns a pointer to a static
//! [`abi::RecdPluginV1`] descriptor. The descriptor starts with the ABI version so a
//! host can refuse a mismatch before touching anything else. Tables cross the boundary
//! through the Arrow C Data Interface; model scoring, output, logging, progress and
//! cancellation are host callbacks ([`abi::RecdHost`]). The C header
//! `include/recd_plugin.h` mirrors [`abi`] field for field.
//!
//! Rust authors do not touch the raw ABI: implement [`Strategy`] and call
//! [`export_plugin!`]. Every entry point the macro generates catches panics and turns
//! them into an error code plus message.

pub mod abi;
pub mod columns;
pub mod contract;
pub mod ids;
pub mod model;
pub mod params;
mod rows;
mod sdk;
pub mod testing;

/// The Arrow crates of the version this SDK speaks, re-exported so that a plugin need not
/// pin its own: `use recd_plugin_api::arrow_array::RecordBatch;`. A plugin that depends on
/// Arrow itself must use this same major version, or its batches are other types.
pub use {arrow_array, arrow_schema};

pub use rows::{FieldType, HashRows, HashValue, OutputRows};
pub use sdk::{CheckContext, InputStream, LogLevel, PluginError, RunContext, Strategy};

#[doc(hidden)]
pub mod __private {
    pub use crate::sdk::{check_entry, create_entry, destroy_entry, run_entry};
}
