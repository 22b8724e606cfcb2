//! Counters and histograms for ops, written in the OpenMetrics text format by
//! `prometheus-client`: served on the opt-in localhost HTTP listener (`metrics_listen` in
//! recd.toml, `GET /metrics`) and shown in the `INFO` reply.
//!
//! Run metrics change once per run and use the library's own types. The read socket's
//! request counter and latency histogram are on the hot path of every read, so they are
//! plain atomics ([`LatencyHistogram`]): the library's histogram takes a lock per
//! observation, which 50 clients on two cores would contend for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::store::Store;

/// Upper bounds of the run-duration buckets, in seconds: from a small job (a tenth of a
/// second) to the longest a scheduled job should take (an hour).
const RUN_SECONDS_BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// Upper bounds of the read-latency buckets, in seconds: 10 µs (a cached top-10 list) to
/// 1 s (a client that reads a huge list slowly).
const READ_SECONDS_BUCKETS: [f64; 14] =
    [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.25, 1.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    job: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SocketLabel {
    socket: String,
}

type RunHistograms = Family<JobLabel, Histogram, fn() -> Histogram>;

pub struct Metrics {
    runs: Family<RunLabels, Counter>,
    run_seconds: RunHistograms,
    rows: Family<TableLabel, Counter>,
    read_requests: AtomicU64,
    admin_requests: AtomicU64,
    refused_clients: Counter,
    read_latency: LatencyHistogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            runs: Family::default(),
            run_seconds: Family::new_with_constructor(|| Histogram::new(RUN_SECONDS_BUCKETS)),
            rows: Family::default(),
            read_requests: AtomicU64::new(0),
            admin_requests: AtomicU64::new(0),
            refused_clients: Counter::default(),
            read_latency: LatencyHistogram::default(),
        }
    }
}

impl Metrics {
    /// A dropped table's series go with it.
    pub fn forget_table(&self, table: &str) {
        self.rows.remove(&TableLabel { table: table.into() });
    }

    pub fn run_finished(&self, job: &str, status: &str, seconds: f64, table: &str, rows: u64) {
        self.runs.get_or_create(&RunLabels { job: job.into(), status: status.into() }).inc();
        if status != "skipped" {
            self.run_seconds.get_or_create(&JobLabel { job: job.into() }).observe(seconds);
        }
        if rows > 0 {
            self.rows.get_or_create(&TableLabel { table: table.into() }).inc_by(rows);
        }
    }

    /// A request answered, on the admin socket or the read socket.
    pub fn request(&self, admin: bool) {
        let counter = if admin { &self.admin_requests } else { &self.read_requests };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `requests` read requests answered together (one pipelined batch), `elapsed` from
    /// the start of the serving turn that answered them to their replies written.
    pub fn read_latency(&self, elapsed: Duration, requests: u64) {
        self.read_latency.observe(elapsed.as_secs_f64(), requests);
    }

    /// A connection turned away at `max_clients`.
    pub fn refused_client(&self) {
        self.refused_clients.inc();
    }

    /// The OpenMetrics text of every metric and each table's current version.
    pub fn render(&self, store: &Store) -> String {
        let mut registry = Registry::default();
        registry.register(
            "recd_runs",
            "Job runs by final status (ok, failed, timeout, cancelled, skipped)",
            self.runs.clone(),
        );
        registry.register(
            "recd_run_duration_seconds",
            "Duration of finished runs (skipped runs are not counted)",
            self.run_seconds.clone(),
        );
        registry.register("recd_rows_published", "Result rows published, by table", self.rows.clone());
        let versions = Family::<TableLabel, Gauge>::default();
        for (table, meta) in store.tables().unwrap_or_default() {
            versions.get_or_create(&TableLabel { table }).set(meta.current as i64);
        }
        registry.register("recd_table_version", "Current version of each table", versions);
        let requests = Family::<SocketLabel, Counter>::default();
        for (socket, counter) in [("read", &self.read_requests), ("admin", &self.admin_requests)] {
            requests.get_or_create(&SocketLabel { socket: socket.into() }).inc_by(counter.load(Ordering::Relaxed));
        }
        registry.register("recd_socket_requests", "Requests answered, by socket", requests);
        registry.register("recd_refused_clients", "Connections refused at max_clients", self.refused_clients.clone());
        registry.register(
            "recd_read_latency_seconds",
            "Read socket: time from the serving turn that answered a request to its reply written (a pipelined batch shares one time)",
            self.read_latency.snapshot(),
        );
        register_allocator(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

/// The allocator's gauges, read at each render; left out, with a warning, if jemalloc does
/// not answer.
fn register_allocator(registry: &mut Registry) {
    let (allocated, resident) = match allocator_bytes() {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!("reading the allocator's statistics failed: {e}");
            return;
        }
    };
    let gauge_of = |bytes: usize| {
        let gauge = Gauge::<i64>::default();
        gauge.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        gauge
    };
    registry.register(
        "recd_allocator_allocated_bytes",
        "Bytes the daemon holds through its allocator (jemalloc's stats.allocated)",
        gauge_of(allocated),
    );
    registry.register(
        "recd_allocator_resident_bytes",
        "Bytes the allocator keeps resident: the allocated bytes, freed pages not yet returned to the system, its own metadata (jemalloc's stats.resident)",
        gauge_of(resident),
    );
}

/// jemalloc's allocated and resident bytes, refreshed first: it caches its statistics
/// until its epoch advances. One refresh and read at a time, so a scrape beside an INFO
/// cannot pair figures of two refreshes.
fn allocator_bytes() -> Result<(usize, usize), tikv_jemalloc_ctl::Error> {
    static REFRESH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = REFRESH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tikv_jemalloc_ctl::epoch::advance()?;
    Ok((tikv_jemalloc_ctl::stats::allocated::read()?, tikv_jemalloc_ctl::stats::resident::read()?))
}

/// A histogram of fixed buckets that observes without a lock: one atomic add per bucket
/// hit, one for the count and one for the sum (in nanoseconds).
#[derive(Debug)]
struct LatencyHistogram {
    /// Observations per bucket of [`READ_SECONDS_BUCKETS`], the last one above them all.
    buckets: [AtomicU64; READ_SECONDS_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    fn observe(&self, seconds: f64, n: u64) {
        let bucket =
            READ_SECONDS_BUCKETS.iter().position(|&upper| seconds <= upper).unwrap_or(READ_SECONDS_BUCKETS.len());
        self.buckets[bucket].fetch_add(n, Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_nanos.fetch_add((seconds * 1e9) as u64 * n, Ordering::Relaxed);
    }

    /// Each bucket's own count, read once (the encoder makes them cumulative).
    fn snapshot(&self) -> LatencySnapshot {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| (READ_SECONDS_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), b.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' total, so `+Inf` and `_count` always agree in one scrape.
        let count = buckets.iter().map(|b| b.1).sum();
        LatencySnapshot { sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9, count, buckets }
    }
}

#[derive(Debug)]
struct LatencySnapshot {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl TypedMetric for LatencySnapshot {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencySnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let h = LatencyHistogram::default();
        h.observe(0.000_004, 3); // first bucket (≤ 10 µs)
        h.observe(0.000_1, 1); // on a bound: ≤ 100 µs
        h.observe(0.000_2, 1); // ≤ 250 µs
        h.observe(5.0, 2); // above every bound
        let s = h.snapshot();
        assert_eq!(s.count, 7);
        let at = |upper: f64| s.buckets.iter().find(|b| b.0 == upper).unwrap().1;
        assert_eq!((at(1e-5), at(5e-5), at(1e-4), at(2.5e-4), at(1.0), at(f64::INFINITY)), (3, 0, 1, 1, 0, 2));
        assert_eq!(s.buckets.len(), READ_SECONDS_BUCKETS.len() + 1);
        assert!((s.sum - (0.000_012 + 0.000_1 + 0.000_2 + 10.0)).abs() < 1e-6, "{}", s.sum);
    }
}
