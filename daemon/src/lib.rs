//! `recd`: the daemon (`serve`), its per-run child (`worker`) and the ops CLI.
//!
//! A library only so that the fuzz targets in `fuzz/` can reach the parsers through
//! [`fuzzing`]; the binary (`main.rs`) calls [`cli::main`]. Nothing here is a stable API.

mod child;
pub mod cli;
mod client;
mod config;
mod daemon;
mod eval;
mod experiment;
mod export;
mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
mod holdout;
mod import;
mod job;
mod lineage;
mod loader;
mod metrics;
mod models;
mod plugins;
mod quality;
mod read_cache;
mod resp;
mod run;
mod schedule;
mod scheduler;
mod server;
mod shard;
mod store;
mod systemd;
mod tables;
mod trust;
mod watch;
mod wire;
mod worker;
