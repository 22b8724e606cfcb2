//! recd's integration tests, one binary (see docs/ARCHITECTURE.md). Each test starts a real
//! `recd serve` in a temp dir (`util::TestDaemon`) and talks to it the way ops and apps
//! do: the CLI, redis-cli and the `redis` crate. Expected values come from independent
//! sources: the Parquet data read here, ONNX Runtime's Python binding, a real
//! redis-server holding the same lists.

mod oracle;
mod util;

mod adversarial;
mod c_plugin;
mod churn;
mod clients;
mod crash;
mod dashboard;
mod devices;
mod diversity;
mod docs;
mod evaluation;
mod experiments;
mod export;
mod fallback;
mod faults;
mod gates;
mod guide;
mod init;
mod jobs;
mod layers;
mod lifecycle;
mod limits;
mod models;
mod observability;
mod package;
mod plugin_platform;
mod policies;
mod powercut;
mod powercut_fs;
mod protocol;
mod publish;
mod ranking;
mod reload;
mod schedule;
mod sql;
mod strategies;
