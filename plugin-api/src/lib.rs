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
//!
//! Where to look:
//! - [`Strategy`], [`RunContext`] (inputs, [`RunContext::score`], [`RunContext::emit`],
//!   progress, cancellation, streams, shards), [`CheckContext`] (the job judged before any
//!   run), [`PluginError`] (its constructors set the code the host reports);
//! - [`params::parse`] for typed `[params]`; [`columns`] to read input columns whatever
//!   their Arrow type; [`ids::IdIndex`] for id vocabularies; [`model`] for the bound model
//!   inputs and scoring batches;
//! - [`OutputRows`] and [`HashRows`] to build output; [`contract`] for what output must be;
//! - [`testing::Harness`] to run a strategy in a unit test, through the same ABI.
//!
//! A whole strategy, run by the harness as a host would run it:
//!
//! ```
//! use std::sync::Arc;
//!
//! use recd_plugin_api::arrow_array::{RecordBatch, StringArray};
//! use recd_plugin_api::arrow_schema::{DataType, Field, Schema};
//! use recd_plugin_api::columns::{column, ids_as_strings};
//! use recd_plugin_api::testing::Harness;
//! use recd_plugin_api::{OutputRows, PluginError, RunContext, Strategy, export_plugin, params};
//!
//! /// Recommends to every user the item ids given in `[params] items`, in that order.
//! struct Fixed {
//!     items: Vec<String>,
//! }
//!
//! #[derive(serde::Deserialize)]
//! struct Params {
//!     items: Vec<String>,
//! }
//!
//! impl Strategy for Fixed {
//!     fn new(params_json: &str) -> Result<Self, PluginError> {
//!         let p: Params = params::parse(params_json)?;
//!         Ok(Fixed { items: p.items })
//!     }
//!
//!     fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
//!         let users = ids_as_strings(column(ctx.input("users")?, "users", "user_id")?, "user_id")?;
//!         let mut out = OutputRows::new();
//!         for user in users.into_iter().flatten() {
//!             for (rank, item) in self.items.iter().enumerate() {
//!                 out.push(&user, item, -(rank as f32));
//!             }
//!         }
//!         ctx.emit(out.into_batch()?)
//!     }
//! }
//!
//! export_plugin!(Fixed, name = "fixed", version = "0.1.0");
//!
//! let schema = Arc::new(Schema::new(vec![Field::new("user_id", DataType::Utf8, false)]));
//! let users = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["u1", "u2"]))]).unwrap();
//! let out = Harness::new(r#"{"items": ["a", "b"]}"#).input("users", users).run::<Fixed>().unwrap();
//! assert_eq!(out.list("u2"), [("a".to_string(), 0.0), ("b".to_string(), -1.0)]);
//! let err = Harness::new(r#"{"items": "a"}"#).run::<Fixed>().unwrap_err();
//! assert_eq!(err.message, r#"params.items: invalid type: string "a", expected a sequence"#);
//! ```

pub mod abi;
pub mod categories;
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
