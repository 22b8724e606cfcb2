//! Counters for ops, in Prometheus's text format: on an opt-in localhost HTTP port
//! (`metrics_listen` in recd.toml) and in the `INFO` reply. The HTTP side is a few lines
//! of hand-written HTTP/1.0: one fixed GET, no need for an HTTP framework.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::Store;

#[derive(Default)]
pub struct Metrics {
    /// (job, status) -> runs
    runs: Mutex<BTreeMap<(String, String), u64>>,
    /// job -> (sum of seconds, count) of finished runs
    durations: Mutex<BTreeMap<String, (f64, u64)>>,
    /// table -> rows published
    rows: Mutex<BTreeMap<String, u64>>,
    read_requests: AtomicU64,
    admin_requests: AtomicU64,
    refused_clients: AtomicU64,
}

impl Metrics {
    /// A dropped table's series go with it.
    pub fn forget_table(&self, table: &str) {
        self.rows.lock().expect("metrics").remove(table);
    }

    pub fn run_finished(&self, job: &str, status: &str, seconds: f64, table: &str, rows: u64) {
        *self.runs.lock().expect("metrics").entry((job.into(), status.into())).or_default() += 1;
        if status != "skipped" {
            let mut d = self.durations.lock().expect("metrics");
            let e = d.entry(job.into()).or_default();
            e.0 += seconds;
            e.1 += 1;
        }
        if rows > 0 {
            *self.rows.lock().expect("metrics").entry(table.into()).or_default() += rows;
        }
    }

    /// A request answered, on the admin socket or the read socket.
    pub fn request(&self, admin: bool) {
        let counter = if admin { &self.admin_requests } else { &self.read_requests };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection turned away at `max_clients`.
    pub fn refused_client(&self) {
        self.refused_clients.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter and each table's current version.
    pub fn render(&self, store: &Store) -> String {
        let mut s = String::new();
        s.push_str("# HELP recd_runs_total Job runs by final status (ok, failed, timeout, cancelled, skipped).\n");
        s.push_str("# TYPE recd_runs_total counter\n");
        for ((job, status), n) in self.runs.lock().expect("metrics").iter() {
            let _ = writeln!(s, "recd_runs_total{{job=\"{job}\",status=\"{status}\"}} {n}");
        }
        s.push_str("# HELP recd_run_duration_seconds Duration of finished runs.\n");
        s.push_str("# TYPE recd_run_duration_seconds summary\n");
        for (job, (sum, count)) in self.durations.lock().expect("metrics").iter() {
            let _ = writeln!(s, "recd_run_duration_seconds_sum{{job=\"{job}\"}} {sum:.3}");
            let _ = writeln!(s, "recd_run_duration_seconds_count{{job=\"{job}\"}} {count}");
        }
        s.push_str("# HELP recd_rows_published_total Result rows published, by table.\n");
        s.push_str("# TYPE recd_rows_published_total counter\n");
        for (table, n) in self.rows.lock().expect("metrics").iter() {
            let _ = writeln!(s, "recd_rows_published_total{{table=\"{table}\"}} {n}");
        }
        s.push_str("# HELP recd_table_version Current version of each table.\n");
        s.push_str("# TYPE recd_table_version gauge\n");
        for (table, meta) in store.tables().unwrap_or_default() {
            let _ = writeln!(s, "recd_table_version{{table=\"{table}\"}} {}", meta.current);
        }
        s.push_str("# HELP recd_socket_requests_total Requests answered, by socket.\n");
        s.push_str("# TYPE recd_socket_requests_total counter\n");
        let _ =
            writeln!(s, "recd_socket_requests_total{{socket=\"read\"}} {}", self.read_requests.load(Ordering::Relaxed));
        let _ = writeln!(
            s,
            "recd_socket_requests_total{{socket=\"admin\"}} {}",
            self.admin_requests.load(Ordering::Relaxed)
        );
        s.push_str("# HELP recd_refused_clients_total Connections refused at max_clients.\n");
        s.push_str("# TYPE recd_refused_clients_total counter\n");
        let _ = writeln!(s, "recd_refused_clients_total {}", self.refused_clients.load(Ordering::Relaxed));
        s
    }
}
