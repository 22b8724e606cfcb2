//! sql: a strategy written as one SQL query over the job's inputs, run with Apache
//! DataFusion. Each `[inputs]` entry is a table of that name (`interactions`, `items`,
//! `ranking` for `table:ranking`, ...); `params.query` is a `SELECT` (CTEs, joins,
//! aggregates and window functions allowed) whose result is the table to publish:
//!
//! - a list table (`params.output = "lists"`, the default): exactly the columns `user`,
//!   `item`, `score` (ids of any integer or string type, a numeric score). Rows are ordered
//!   by user, then score (highest first), then item, and `params.k` (when set) keeps each
//!   user's first k;
//! - a hash table (`params.output = "hashes"`, with the job's `output = "hashes"`): `user`
//!   first, then one column per field. Strings, booleans and numbers are stored as they
//!   are, decimals as float64, other types (dates, times) as text.
//!
//! Only queries run: statements that define or change data (`CREATE`, `INSERT`, `COPY`,
//! `SET`) are refused, so a query cannot read or write files of its own. `recd validate`
//! plans the query against the inputs' schemas (through `check`), so an unknown table or
//! column, a type error or a result without the right columns is reported before any run.
//! Errors name `params.query` and quote DataFusion's message.

use datafusion::arrow::datatypes::{DataType as DfType, Schema as DfSchema};
use datafusion::common::TableReference;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::prelude::{cast, ident};
use futures::StreamExt;
use recd_plugin_api::columns::{column, ids_as_strings, numbers};
use recd_plugin_api::{CheckContext, LogLevel, OutputRows, PluginError, RunContext, Strategy, export_plugin};
use serde::Deserialize;

mod bridge;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The query; its result is the table.
    query: String,
    /// List tables: keep each user's first k rows (by score). None: every row.
    k: Option<usize>,
    /// What the result publishes; must agree with the job's `output` (a plugin is not
    /// told the job's, so `recd validate` could not catch a mismatch otherwise).
    #[serde(default)]
    output: Shape,
}

/// The most a list may keep per user (the host's own `max_items_per_user` cap is checked on top).
const MAX_K: usize = 10_000;

/// What the query's result publishes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Shape {
    #[default]
    Lists,
    Hashes,
}

struct Sql {
    params: Params,
}

impl Strategy for Sql {
    fn new(params_json: &str) -> Result<Self, PluginError> {
        let params: Params = recd_plugin_api::params::parse(params_json)?;
        if params.query.trim().is_empty() {
            return Err(PluginError::params("params.query: is empty"));
        }
        if let Some(k) = params.k
            && !(1..=MAX_K).contains(&k)
        {
            return Err(PluginError::params(format!("params.k: must be 1..={MAX_K}, got {k}")));
        }
        if params.k.is_some() && params.output == Shape::Hashes {
            return Err(PluginError::params("params.k: only for output \"lists\" (a hash table has one row per user)"));
        }
        Ok(Sql { params })
    }

    fn check(&self, ctx: &CheckContext) -> Result<(), PluginError> {
        let tables = ctx
            .input_names()
            .into_iter()
            .map(|name| Ok((name.to_string(), ctx.input(name)?.clone())))
            .collect::<Result<Vec<_>, PluginError>>()?;
        let runtime = runtime(1)?;
        runtime.block_on(async {
            let df = plan(&self.params.query, tables).await?;
            check_shape(df.schema().as_arrow(), self.params.output)
        })
    }

    fn run(&mut self, ctx: &mut RunContext<'_>) -> Result<(), PluginError> {
        let names: Vec<String> = ctx.input_names().into_iter().map(str::to_string).collect();
        // taken, not borrowed: each input is freed once DataFusion holds its own copy
        let tables = names
            .into_iter()
            .map(|name| Ok((name.clone(), ctx.take_input(&name)?)))
            .collect::<Result<Vec<_>, PluginError>>()?;
        let runtime = runtime(cores())?;
        // block_on polls this future on the calling thread, so every host call below (emit,
        // is_cancelled) is made from `run`'s thread, as the ABI requires; DataFusion's own
        // work runs on the runtime's worker threads
        let result = runtime.block_on(async {
            let df = plan(&self.params.query, tables).await?;
            check_shape(df.schema().as_arrow(), self.params.output)?;
            match self.params.output {
                Shape::Lists => emit_lists(df, self.params.k, ctx).await,
                Shape::Hashes => emit_hashes(df, ctx).await,
            }
        });
        // dropping the runtime waits for its worker threads to stop: none outlives `run`
        drop(runtime);
        let rows = result?;
        ctx.log(LogLevel::Info, &format!("query result: {rows} rows"));
        Ok(())
    }
}

/// The cores DataFusion may use: one thread and one partition each.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, PluginError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("recd-sql")
        .build()
        .map_err(|e| PluginError::internal(format!("starting the query engine: {e}")))
}

fn query_error(e: impl std::fmt::Display) -> PluginError {
    PluginError::params(format!("params.query: {e}"))
}

/// The query planned over `tables` (checked: names, columns, types), not yet run.
async fn plan(query: &str, tables: Vec<(String, arrow_array::RecordBatch)>) -> Result<DataFrame, PluginError> {
    let config = SessionConfig::new().with_target_partitions(cores()).with_information_schema(false);
    let session = SessionContext::new_with_config(config);
    for (name, batch) in tables {
        let batch = bridge::to_datafusion(&batch).map_err(|e| PluginError::input(format!("input `{name}`: {e}")))?;
        session
            .register_batch(TableReference::bare(name.as_str()), batch)
            .map_err(|e| PluginError::internal(format!("input `{name}` as a table: {e}")))?;
    }
    let read_only = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    session.sql_with_options(query, read_only).await.map_err(query_error)
}

/// Lists need exactly (user, item, score) in any order, with a numeric score; hashes need
/// `user` first and at least one field after it.
fn check_shape(schema: &DfSchema, output: Shape) -> Result<(), PluginError> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let listed = names.join(", ");
    match output {
        Shape::Lists => {
            let mut sorted = names.clone();
            sorted.sort_unstable();
            if sorted != ["item", "score", "user"] {
                return Err(query_error(format!(
                    "the result's columns are ({listed}): a list table needs exactly `user`, `item`, `score` (name a \
                     column with `AS \"user\"`; for a hash table set params.output = \"hashes\")"
                )));
            }
            let score = schema.field_with_name("score").expect("present").data_type();
            if !score.is_numeric() {
                return Err(query_error(format!("the result's `score` is {score}, not a number")));
            }
        }
        Shape::Hashes => {
            if names.len() < 2 || names[0] != "user" || names[1..].contains(&"user") {
                return Err(query_error(format!(
                    "the result's columns are ({listed}): a hash table needs `user` first, then its fields, each \
                     named once (name a column with `AS \"user\"`)"
                )));
            }
        }
    }
    Ok(())
}

/// Runs a list query: ordered by user, score (highest first), item; each user's first k
/// kept; emitted in batches that end at a user's last row.
async fn emit_lists(df: DataFrame, k: Option<usize>, ctx: &mut RunContext<'_>) -> Result<u64, PluginError> {
    let df = df
        .select(vec![
            cast(ident("user"), DfType::Utf8).alias("user"),
            cast(ident("item"), DfType::Utf8).alias("item"),
            cast(ident("score"), DfType::Float32).alias("score"),
        ])
        .and_then(|df| {
            df.sort(vec![
                ident("user").sort(true, false),
                ident("score").sort(false, false),
                ident("item").sort(true, false),
            ])
        })
        .map_err(query_error)?;
    let mut stream = df.execute_stream().await.map_err(query_error)?;
    let mut out = OutputRows::new();
    let (mut current, mut kept, mut row, mut emitted) = (String::new(), 0usize, 0u64, 0u64);
    while let Some(batch) = stream.next().await {
        if ctx.is_cancelled() {
            return Err(PluginError::cancelled());
        }
        let batch = bridge::from_datafusion(&batch.map_err(query_error)?)?;
        let users = ids_as_strings(column(&batch, "result", "user")?, "user")?;
        let items = ids_as_strings(column(&batch, "result", "item")?, "item")?;
        let scores = numbers(column(&batch, "result", "score")?, "score")?;
        for ((user, item), score) in users.into_iter().zip(items).zip(scores) {
            let (Some(user), Some(item), Some(score)) = (user, item, score) else {
                return Err(PluginError::input(format!(
                    "params.query: result row {row} has a null user, item or score"
                )));
            };
            row += 1;
            if user != current {
                if out.len() >= 65_536 {
                    emitted += out.len() as u64;
                    ctx.emit(std::mem::take(&mut out).into_batch()?)?;
                }
                current = user;
                kept = 0;
            }
            if k.is_none_or(|k| kept < k) {
                out.push(&current, &item, score as f32);
                kept += 1;
            }
        }
    }
    emitted += out.len() as u64;
    if !out.is_empty() {
        ctx.emit(out.into_batch()?)?;
    }
    Ok(emitted)
}

/// Runs a hash query: `user` as text, fields of types a hash stores as they are, the
/// rest as text.
async fn emit_hashes(df: DataFrame, ctx: &mut RunContext<'_>) -> Result<u64, PluginError> {
    let columns: Vec<_> = df
        .schema()
        .as_arrow()
        .fields()
        .iter()
        .map(|f| {
            let name = f.name();
            let target = if name == "user" { DfType::Utf8 } else { hash_type(f.data_type()) };
            cast(ident(name), target).alias(name)
        })
        .collect();
    let df = df.select(columns).map_err(query_error)?;
    let mut stream = df.execute_stream().await.map_err(query_error)?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        if ctx.is_cancelled() {
            return Err(PluginError::cancelled());
        }
        let batch = bridge::from_datafusion(&batch.map_err(query_error)?)?;
        if batch.num_rows() > 0 {
            rows += batch.num_rows() as u64;
            ctx.emit(batch)?;
        }
    }
    Ok(rows)
}

/// The type a hash field is stored as: the types the host takes as they are, text otherwise.
fn hash_type(t: &DfType) -> DfType {
    match t {
        DfType::Boolean
        | DfType::Int32
        | DfType::Int64
        | DfType::UInt32
        | DfType::UInt64
        | DfType::Float32
        | DfType::Float64
        | DfType::Utf8 => t.clone(),
        DfType::Int8 | DfType::Int16 => DfType::Int32,
        DfType::UInt8 | DfType::UInt16 => DfType::UInt32,
        DfType::Float16
        | DfType::Decimal32(..)
        | DfType::Decimal64(..)
        | DfType::Decimal128(..)
        | DfType::Decimal256(..) => DfType::Float64,
        _ => DfType::Utf8,
    }
}

export_plugin!(Sql, name = "sql", version = env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests;
