//! The read-only ops dashboard (`dashboard = true`, on the `metrics_listen` listener): one
//! page and its script and style, embedded in the binary, and two JSON endpoints it polls.
//! Nothing on the page changes the daemon, and it fetches nothing from elsewhere (its
//! Content-Security-Policy allows this origin only).
//!
//! - `GET /api/overview`: jobs (schedule, next ticks in their zone, paused, suspended,
//!   running, last run), the runs of the last day, tables with every kept version (size,
//!   checksum, lineage, gate results) and which one serves, job file errors.
//! - `GET /api/user?id=U`: what an app reading `<table>:U` gets from each table now, with
//!   item titles where a job names them (`item_titles = { input, id, title }`).
//!
//! It runs on the listener's own thread at the lowest CPU priority ([`super::http::spawn`]),
//! not on the read socket's serving threads, so a page being polled does not take turns
//! with reads.

mod titles;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::cmd::{Snapshot, Stored};
use crate::daemon::Daemon;
use crate::store::{RunRecord, TableKind, decode_hash, decode_list};

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// This origin only: no fonts, scripts or images from anywhere else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:";

/// Runs of each job read for the timeline (newest first): all the history keeps.
const RUNS_PER_JOB: usize = crate::daemon::HISTORY_PER_JOB;

/// Items of a user's list shown per table.
const ITEMS_SHOWN: usize = 50;

pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/", get(|| asset(PAGE, "text/html; charset=utf-8")))
        .route("/app.js", get(|| asset(SCRIPT, "text/javascript; charset=utf-8")))
        .route("/style.css", get(|| asset(STYLE, "text/css; charset=utf-8")))
        .route("/api/overview", get(overview))
        .route("/api/user", get(user))
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CONTENT_SECURITY_POLICY, CSP)], body).into_response()
}

async fn overview(State(daemon): State<Arc<Daemon>>) -> Response {
    // The store reads are short but blocking (sled): off the async threads.
    blocking(move || overview_json(&daemon, Utc::now())).await
}

/// `f`'s JSON on a blocking thread; a 500 with the reason if it panicked.
async fn blocking(f: impl FnOnce() -> Value + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => Json(value).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct UserQuery {
    id: String,
}

async fn user(State(daemon): State<Arc<Daemon>>, Query(q): Query<UserQuery>) -> Response {
    blocking(move || user_json(&daemon, &q.id)).await
}

#[derive(Serialize)]
struct JobView {
    name: String,
    description: Option<String>,
    file: String,
    table: String,
    schedule: Option<String>,
    timezone: Option<String>,
    /// The next three ticks in the job's zone, RFC 3339 with the zone's offset.
    next: Vec<String>,
    after: Vec<String>,
    paused: bool,
    suspended: bool,
    running: bool,
    progress: Option<(u64, u64)>,
    last_run: Option<RunRecord>,
}

fn overview_json(daemon: &Daemon, now: DateTime<Utc>) -> Value {
    let set = daemon.jobs();
    let day_ago = now - Duration::hours(24);
    let mut jobs = Vec::new();
    let mut runs = Vec::new();
    for job in set.jobs.values() {
        let history = daemon.history(&job.name, RUNS_PER_JOB).unwrap_or_default();
        let next = job.schedule.as_ref().map(|s| s.upcoming(now, 3).iter().map(|t| t.to_rfc3339()).collect());
        jobs.push(JobView {
            name: job.name.clone(),
            description: job.description.clone(),
            file: job.file.display().to_string(),
            table: job.table.clone(),
            schedule: job.schedule.as_ref().map(|s| s.expr.clone()),
            timezone: job.schedule.as_ref().map(|s| s.tz.name().to_string()),
            next: next.unwrap_or_default(),
            after: job.after.clone(),
            paused: daemon.is_paused(&job.name),
            suspended: job.policy.suspend,
            running: daemon.is_running(&job.name),
            progress: daemon.progress(&job.name),
            last_run: history.first().cloned(),
        });
        runs.extend(history.into_iter().take_while(|r| started(r).is_some_and(|t| t >= day_ago)));
    }
    runs.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    json!({
        "now": now.to_rfc3339(),
        "version": env!("CARGO_PKG_VERSION"),
        "store_failure": daemon.store.failure(),
        "jobs": jobs,
        "runs": runs,
        "tables": tables_json(daemon),
        "job_errors": set.errors.values().map(|e| e.to_string()).collect::<Vec<_>>(),
    })
}

fn started(r: &RunRecord) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&r.started_at).ok().map(|t| t.with_timezone(&Utc))
}

/// Every table with its kept versions, oldest first, and the version serving now.
fn tables_json(daemon: &Daemon) -> Value {
    let tables = match daemon.store.tables() {
        Ok(tables) => tables,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    let list: Vec<Value> = tables
        .into_iter()
        .map(|(name, meta)| {
            let serving = daemon.store.served(&name).map(|t| t.version);
            let versions: Vec<Value> = meta
                .versions
                .iter()
                .map(|v| {
                    let mut value = serde_json::to_value(v).unwrap_or_default();
                    // A u64 loses its low bits as a JavaScript number: the page shows this.
                    value["checksum_hex"] = format!("{:x}", v.checksum).into();
                    value
                })
                .collect();
            json!({
                "name": name, "current": meta.current, "serving": serving, "kind": meta.kind,
                "fallback": meta.fallback, "versions": versions,
            })
        })
        .collect();
    Value::Array(list)
}

/// What `<table>:<user>` reads as in every table now (fallbacks applied, as for apps),
/// and which key answered it, all from one snapshot of the served versions.
fn user_json(daemon: &Daemon, user: &str) -> Value {
    let titles = titles::for_jobs(daemon);
    let tables = daemon.store.tables().unwrap_or_default();
    let mut snapshot = Snapshot::new(daemon);
    let found: Vec<Value> = tables
        .iter()
        .map(|(table, meta)| {
            let key = format!("{table}:{user}");
            let (entries, source, fallback) = match snapshot.get_sourced(key.as_bytes()) {
                None => (Value::Null, None, false),
                Some((stored, source, fallback)) => (entries_json(stored, &titles), Some(source), fallback),
            };
            // The version of the table that answered, as the snapshot holds it.
            let answered = source.as_deref().and_then(|s| s.split_once(':')).map(|(t, _)| t.to_string());
            let version = answered.as_deref().and_then(|t| snapshot.version(t));
            let kind = if meta.kind == TableKind::Hashes { "hashes" } else { "lists" };
            json!({
                "table": table, "kind": kind, "source": source, "fallback": fallback,
                "version": version, "entries": entries,
            })
        })
        .collect();
    json!({ "user": user, "tables": found, "title_errors": titles.errors })
}

fn entries_json(stored: Stored, titles: &titles::Titles) -> Value {
    match stored {
        Stored::List(bytes) => Value::Array(
            decode_list(&bytes)
                .into_iter()
                .take(ITEMS_SHOWN)
                .map(|(item, score)| {
                    let item = String::from_utf8_lossy(item).into_owned();
                    json!({ "title": titles.get(&item), "item": item, "score": score })
                })
                .collect(),
        ),
        Stored::Hash(bytes) => Value::Object(
            decode_hash(&bytes)
                .into_iter()
                .map(|(f, v)| (String::from_utf8_lossy(f).into_owned(), String::from_utf8_lossy(v).into()))
                .collect(),
        ),
    }
}
