//! Soak test (`make soak`; not part of `make test`): the release daemon for SOAK_MINUTES
//! (default 30) with jobs firing every few seconds, job files edited and broken and plugin
//! files replaced at random, and 50 clients reading without pause. Afterwards it reports the
//! errors seen (target 0), the daemon's memory over time (target flat) and read latency
//! percentiles per window, as Markdown on stdout and in `target/soak/report.md` (every RSS
//! sample in `target/soak/rss.csv`).
//!
//! Errors counted: a failed read or an empty answer where a list must exist, a failed run, a
//! broken job file the daemon does not report, a store `VERIFY` finding, a daemon that dies.
//! The breakage it injects (an invalid job file, a plugin file swapped mid-schedule) is
//! expected to be refused or absorbed, and is counted apart.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser)]
struct Args {
    /// How long the daemon runs under load
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Clients reading the socket without pause
    #[arg(long, default_value_t = 50)]
    readers: usize,
    /// Report windows, in minutes
    #[arg(long, default_value_t = 5.0)]
    window_minutes: f64,
    /// Extra `recd.toml` lines (e.g. "read_cache_mb = 0"), after the soak's own
    #[arg(long, default_value = "")]
    config: String,
}

/// Users of the synthetic job's table (`synth:<12 digits>`).
const SYNTH_USERS: u64 = 20_000;
/// The shipped jobs the soak runs, each on a schedule of a few seconds (`None`: runs after
/// its upstream, as shipped).
const SHIPPED: [(&str, Option<&str>); 4] = [
    ("cold-start", Some("*/6 * * * * *")),
    ("ranking", Some("*/10 * * * * *")),
    ("diversity", None),
    ("churn", Some("*/15 * * * * *")),
];
/// Plugin files the soak replaces while their jobs keep firing.
const SWAPPED: [&str; 2] = ["librecd_synthetic.so", "librecd_cold_start.so"];
/// Invalid versions of a job file, one per kind of mistake ops make.
const BROKEN: [&str; 3] = [
    "schedule = \"*/6 * * * * *\"\nplugin = \"cold-start\"\nmax_items_per_user = ten\n",
    "schedule = \"61 * * * *\"\nplugin = \"cold-start\"\n",
    "schedule = \"*/6 * * * * *\"\nplugin = \"cold-start\"\nmax_itmes_per_user = 10\n",
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
    let soak = Soak::set_up(&root, &args.config)?;
    let mut daemon = soak.start_daemon()?;
    let outcome = soak.run(&args, &mut daemon);
    let _ = Command::new("kill").arg("-TERM").arg(daemon.id().to_string()).status();
    let exit = daemon.wait()?;
    let outcome = outcome?;
    let report = outcome.render(&args, &soak, exit.success());
    std::fs::write(soak.dir.join("report.md"), &report)?;
    // Every 5-second sample, to plot or to judge a plateau finer than the report's windows.
    let samples: String = outcome.rss_mib.iter().map(|(at, mib)| format!("{at:.3},{mib:.1}\n")).collect();
    std::fs::write(soak.dir.join("rss.csv"), format!("minutes,daemon_rss_mib\n{samples}"))?;
    println!("{report}");
    Ok(())
}

struct Soak {
    root: PathBuf,
    dir: PathBuf,
    customers: Vec<String>,
}

/// What the load, the mutator and the sampler saw.
struct Outcome {
    windows: Vec<Window>,
    reads: u64,
    read_errors: u64,
    empty_answers: u64,
    first_read_error: Option<String>,
    mutations: Mutations,
    runs: Vec<(String, String, u64)>,
    verify: String,
    log_errors: Vec<String>,
    rss_mib: Vec<(f64, f64)>,
    store_mib: Vec<(f64, f64)>,
    elapsed: Duration,
}

#[derive(Default)]
struct Mutations {
    job_edits: u64,
    plugin_swaps: u64,
    broken_files: u64,
    broken_reported: u64,
    /// Runs of the broken job that finished while its file was broken: its last good
    /// schedule kept running.
    runs_while_broken: u64,
    problems: Vec<String>,
}

struct Window {
    latency: Histogram<u64>,
    rss_mib: f64,
    store_mib: f64,
}

impl Soak {
    /// A fresh `target/soak/` with its own config, jobs and plugin copies.
    fn set_up(root: &Path, extra_config: &str) -> anyhow::Result<Soak> {
        let dir = root.join("target/soak");
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["jobs", "plugins", "var"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let release = root.join("target/release");
        for entry in std::fs::read_dir(&release)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if name.starts_with("librecd_") && name.ends_with(".so") {
                std::fs::copy(&path, dir.join("plugins").join(&name))?;
            }
        }
        for so in SWAPPED {
            if !dir.join("plugins").join(so).exists() {
                bail!("{so} is not in {}: run `cargo build --release --workspace` first", release.display());
            }
        }
        let onnxruntime = root.join(".deps/py/onnxruntime/capi/libonnxruntime.so.1.31.1");
        let metrics_port = free_port()?;
        let config = format!(
            "data_dir = \"var/data\"\nsocket = \"var/recd.sock\"\nadmin_socket = \"var/recd-admin.sock\"\n\
             jobs_dir = \"jobs\"\nplugins_dir = \"plugins\"\nonnxruntime = \"{}\"\nretain_versions = 2\n\
             metrics_listen = \"127.0.0.1:{metrics_port}\"\n{extra_config}\n",
            onnxruntime.display()
        );
        std::fs::write(dir.join("recd.toml"), config)?;
        for (job, schedule) in SHIPPED {
            std::fs::write(dir.join("jobs").join(format!("{job}.toml")), shipped_job(root, job, schedule)?)?;
        }
        std::fs::write(dir.join("jobs/synth.toml"), synth_job(1, 20, 4))?;
        let users = std::fs::read_to_string(root.join("models/ranking/users.csv"))?;
        let customers = users.lines().skip(1).filter_map(|l| l.split(',').next()).map(str::to_owned).collect();
        Ok(Soak { root: root.to_path_buf(), dir, customers })
    }

    fn start_daemon(&self) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.join("daemon.log"))?;
        let child = Command::new(self.root.join("target/release/recd"))
            .args(["serve", "--config"])
            .arg(self.dir.join("recd.toml"))
            .env("RECD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start target/release/recd (cargo build --release --workspace)")?;
        Ok(child)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("var/recd.sock")
    }

    fn run(&self, args: &Args, daemon: &mut Child) -> anyhow::Result<Outcome> {
        self.wait_for_tables(daemon)?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(args.minutes * 60.0);
        let window = Duration::from_secs_f64(args.window_minutes * 60.0);
        let windows = (args.minutes / args.window_minutes).ceil() as usize;
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..args.readers)
            .map(|i| {
                let reader = Reader::new(self.socket(), self.customers.clone(), i as u64, windows, window);
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || reader.run(started, &stop))
            })
            .collect();
        let mutator = {
            let (dir, stop) = (self.dir.clone(), Arc::clone(&stop));
            std::thread::spawn(move || mutate(&dir, &stop))
        };
        let pid = daemon.id();
        let (mut rss_mib, mut store_mib) = (Vec::new(), Vec::new());
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(5).min(deadline.saturating_duration_since(Instant::now())));
            let minutes = started.elapsed().as_secs_f64() / 60.0;
            if let Some(status) = daemon.try_wait()? {
                stop.store(true, Ordering::Relaxed);
                bail!("the daemon exited after {minutes:.1} min: {status}");
            }
            rss_mib.push((minutes, rss_kib(pid)? as f64 / 1024.0));
            if store_mib.last().is_none_or(|(at, _)| minutes - at >= 1.0) {
                store_mib.push((minutes, dir_bytes(&self.dir.join("var/data")) as f64 / (1 << 20) as f64));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let mut totals = ReaderTotals::new(windows);
        for r in readers {
            totals.merge(r.join().expect("a reader thread"));
        }
        let mutations = mutator.join().expect("the mutator thread");
        let verify = match redis::cmd("VERIFY").query::<String>(&mut admin(&self.dir)?) {
            Ok(ok) => ok,
            Err(e) => format!("ERR {e}"),
        };
        let windows = totals
            .windows
            .into_iter()
            .enumerate()
            .map(|(i, latency)| {
                let end = (i + 1) as f64 * args.window_minutes;
                let last_before =
                    |series: &[(f64, f64)]| series.iter().rev().find(|(at, _)| *at <= end).map_or(0.0, |(_, m)| *m);
                Window { latency, rss_mib: last_before(&rss_mib), store_mib: last_before(&store_mib) }
            })
            .collect();
        Ok(Outcome {
            windows,
            reads: totals.reads,
            read_errors: totals.errors,
            empty_answers: totals.empty,
            first_read_error: totals.first_error,
            mutations,
            runs: self.runs()?,
            verify,
            log_errors: self.log_errors()?,
            rss_mib,
            store_mib,
            elapsed,
        })
    }

    /// Waits until every table the readers ask has been published once.
    fn wait_for_tables(&self, daemon: &mut Child) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = daemon.try_wait()? {
                bail!("the daemon exited at start: {status} (see {})", self.dir.join("daemon.log").display());
            }
            let ready = self.socket().exists()
                && redis::Client::open(format!("redis+unix://{}", self.socket().display()))
                    .and_then(|c| c.get_connection())
                    .is_ok_and(|mut c| {
                        ["synth:000000000000", "ranking:__none__", "diversity:__none__", "cold-start:__default__"]
                            .iter()
                            .all(|key| redis::cmd("ZCARD").arg(*key).query::<u64>(&mut c).is_ok_and(|n| n > 0))
                    });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("tables not published within 180 s (see {})", self.dir.join("daemon.log").display());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// (job, status, runs) from the daemon's metrics.
    fn runs(&self) -> anyhow::Result<Vec<(String, String, u64)>> {
        let config = std::fs::read_to_string(self.dir.join("recd.toml"))?;
        let addr = config.lines().find_map(|l| l.strip_prefix("metrics_listen = ")).context("metrics address")?;
        let mut stream = std::net::TcpStream::connect(addr.trim_matches('"'))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        let mut runs = Vec::new();
        for line in text.lines().filter_map(|l| l.strip_prefix("recd_runs_total{job=\"")) {
            let (job, rest) = line.split_once("\",status=\"").context("runs line")?;
            let (status, n) = rest.split_once("\"} ").context("runs line")?;
            runs.push((job.to_owned(), status.to_owned(), n.trim().parse()?));
        }
        Ok(runs)
    }

    /// Daemon log lines at ERROR, but for the job files the mutator broke on purpose.
    fn log_errors(&self) -> anyhow::Result<Vec<String>> {
        let log = std::fs::read_to_string(self.dir.join("daemon.log"))?;
        Ok(log.lines().filter(|l| l.contains(" ERROR ") && !l.contains("cold-start.toml")).map(str::to_owned).collect())
    }
}

/// A shipped job file with its paths made absolute and its schedule every few seconds.
fn shipped_job(root: &Path, name: &str, schedule: Option<&str>) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(root.join("jobs").join(format!("{name}.toml")))?;
    let mut job: toml::Table = toml::from_str(&text)?;
    if let Some(s) = schedule {
        job.insert("schedule".into(), s.into());
    }
    job.remove("timezone");
    let absolute = |v: &mut toml::Value| {
        if let Some(p) = v.as_str().filter(|p| !p.starts_with("table:")) {
            *v = root.join(p).display().to_string().into();
        }
    };
    if let Some(model) = job.get_mut("model") {
        absolute(model);
    }
    if let Some(inputs) = job.get_mut("inputs").and_then(|i| i.as_table_mut()) {
        inputs.iter_mut().for_each(|(_, v)| absolute(v));
    }
    Ok(toml::to_string(&job)?)
}

fn synth_job(seed: u64, items: u32, every: u32) -> String {
    format!(
        "schedule = \"*/{every} * * * * *\"\nplugin = \"synthetic\"\nmax_items_per_user = 100\n\n\
         [params]\nusers = {SYNTH_USERS}\nitems = {items}\ncatalogue = 5000\nseed = {seed}\n"
    )
}

/// One client: reads without pause, a random key of a random table each time, and times it.
struct Reader {
    socket: PathBuf,
    customers: Vec<String>,
    rng: u64,
    totals: ReaderTotals,
    window: Duration,
}

struct ReaderTotals {
    windows: Vec<Histogram<u64>>,
    reads: u64,
    errors: u64,
    empty: u64,
    first_error: Option<String>,
}

impl ReaderTotals {
    fn new(windows: usize) -> Self {
        let histogram = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        ReaderTotals {
            windows: (0..windows).map(|_| histogram()).collect(),
            reads: 0,
            errors: 0,
            empty: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, other: ReaderTotals) {
        for (mine, theirs) in self.windows.iter_mut().zip(&other.windows) {
            mine.add(theirs).expect("same bounds");
        }
        self.reads += other.reads;
        self.errors += other.errors;
        self.empty += other.empty;
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

impl Reader {
    fn new(socket: PathBuf, customers: Vec<String>, seed: u64, windows: usize, window: Duration) -> Self {
        Reader {
            socket,
            customers,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (seed + 1),
            totals: ReaderTotals::new(windows),
            window,
        }
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn run(mut self, started: Instant, stop: &AtomicBool) -> ReaderTotals {
        let mut conn = None;
        while !stop.load(Ordering::Relaxed) {
            let c = match conn.take() {
                Some(c) => c,
                None => match redis::Client::open(format!("redis+unix://{}", self.socket.display()))
                    .and_then(|c| c.get_connection())
                {
                    Ok(c) => c,
                    Err(e) => {
                        self.error(format!("connect: {e}"));
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                },
            };
            conn = self.read_one(c, started);
        }
        self.totals
    }

    /// One read; the connection back unless it failed.
    fn read_one(&mut self, mut conn: redis::Connection, started: Instant) -> Option<redis::Connection> {
        let pick = self.next();
        let at = (self.next() % self.customers.len() as u64) as usize;
        let customer = self.customers[at].clone();
        let (command, key) = match pick % 10 {
            0..=5 => ("ZREVRANGE", format!("synth:{:012}", self.next() % SYNTH_USERS)),
            // Customers the model lacks fall back to cold-start, new ones to its default.
            6 | 7 => (
                "ZREVRANGE",
                if pick.is_multiple_of(7) { format!("ranking:new-{pick}") } else { format!("ranking:{customer}") },
            ),
            8 => ("ZREVRANGE", format!("diversity:{customer}")),
            _ => ("GET", "cold-start:__default__".to_owned()),
        };
        let t = Instant::now();
        let reply: redis::RedisResult<usize> = if command == "GET" {
            redis::cmd("GET").arg(&key).query::<Option<String>>(&mut conn).map(|v| v.map_or(0, |s| s.len()))
        } else {
            redis::cmd(command).arg(&key).arg(0).arg(9).query::<Vec<String>>(&mut conn).map(|v| v.len())
        };
        let micros = t.elapsed().as_micros() as u64;
        let window = (started.elapsed().as_secs_f64() / self.window.as_secs_f64()) as usize;
        if let Some(h) = self.totals.windows.get_mut(window) {
            h.saturating_record(micros.max(1));
        }
        self.totals.reads += 1;
        match reply {
            Ok(0) => {
                self.totals.empty += 1;
                self.error(format!("{command} {key}: empty"));
                Some(conn)
            }
            Ok(_) => Some(conn),
            Err(e) => {
                self.totals.errors += 1;
                self.error(format!("{command} {key}: {e}"));
                None
            }
        }
    }

    fn error(&mut self, what: String) {
        self.totals.first_error.get_or_insert(what);
    }
}

/// Every 8 to 15 s, one of: edit the synthetic job (seed, list length, schedule); break
/// cold-start's job file for 10 s, then restore it; replace a plugin file with a different
/// one (the same code with other trailing bytes, as a rebuild gives).
fn mutate(dir: &Path, stop: &AtomicBool) -> Mutations {
    let mut m = Mutations::default();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let sleep = |secs: u64| {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let originals: Vec<Vec<u8>> =
        SWAPPED.iter().map(|so| std::fs::read(dir.join("plugins").join(so)).expect("plugin")).collect();
    let good_cold_start = std::fs::read_to_string(dir.join("jobs/cold-start.toml")).expect("cold-start job");
    while !stop.load(Ordering::Relaxed) {
        sleep(8 + next() % 8);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let result = match next() % 3 {
            0 => {
                m.job_edits += 1;
                let text = synth_job(next() % 1000, 10 + (next() % 21) as u32, 3 + (next() % 3) as u32);
                write_file(&dir.join("jobs/synth.toml"), text.as_bytes(), next() % 2 == 0)
            }
            1 => break_job_for_a_while(dir, &good_cold_start, BROKEN[(next() % 3) as usize], &mut m, &sleep),
            _ => {
                m.plugin_swaps += 1;
                let i = (next() % SWAPPED.len() as u64) as usize;
                let mut bytes = originals[i].clone();
                bytes.extend_from_slice(&next().to_le_bytes());
                write_file(&dir.join("plugins").join(SWAPPED[i]), &bytes, true)
            }
        };
        if let Err(e) = result {
            m.problems.push(format!("{e:#}"));
        }
    }
    m
}

/// Writes cold-start's job file broken, checks the daemon names it in STATUS and that the
/// job's last good schedule keeps running, then restores the file.
fn break_job_for_a_while(
    dir: &Path,
    good: &str,
    broken: &str,
    m: &mut Mutations,
    sleep: &dyn Fn(u64),
) -> anyhow::Result<()> {
    m.broken_files += 1;
    let last_run_before = cold_start_ok_runs(&mut admin(dir)?, 0)?.into_iter().max().unwrap_or(0);
    write_file(&dir.join("jobs/cold-start.toml"), broken.as_bytes(), true)?;
    sleep(10);
    let status: String = redis::cmd("STATUS").query(&mut admin(dir)?)?;
    let errors = status.split_once("job file errors:").map_or("", |(_, errors)| errors);
    if errors.lines().any(|l| l.contains("cold-start.toml:")) {
        m.broken_reported += 1;
    } else {
        m.problems.push(format!("broken cold-start.toml not reported in STATUS:\n{status}"));
    }
    m.runs_while_broken += cold_start_ok_runs(&mut admin(dir)?, last_run_before)?.len() as u64;
    write_file(&dir.join("jobs/cold-start.toml"), good.as_bytes(), true)
}

/// A connection to the soak daemon's admin socket.
fn admin(dir: &Path) -> anyhow::Result<redis::Connection> {
    let url = format!("redis+unix://{}", dir.join("var/recd-admin.sock").display());
    Ok(redis::Client::open(url)?.get_connection()?)
}

/// Run ids of cold-start's runs after `after` that published, from its kept history.
fn cold_start_ok_runs(admin: &mut redis::Connection, after: u64) -> anyhow::Result<Vec<u64>> {
    let history: String = redis::cmd("HISTORY").arg("cold-start").arg(50).query(admin)?;
    let runs: Vec<serde_json::Value> = serde_json::from_str(&history)?;
    Ok(runs
        .iter()
        .filter(|r| r["status"] == "ok")
        .filter_map(|r| r["run_id"].as_u64())
        .filter(|&id| id > after)
        .collect())
}

/// Replaces a file the way tools do: `atomic` writes a temporary file and renames it over
/// (editors, deploys); otherwise it is truncated and written in place, which a watcher may
/// catch half-written.
fn write_file(path: &Path, bytes: &[u8], atomic: bool) -> anyhow::Result<()> {
    if atomic {
        let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap_or_default().to_string_lossy()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
    } else {
        std::fs::File::create(path)?.write_all(bytes)?;
    }
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: u64 = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!("{} cores ({}), {:.0} GiB memory", cores, model.unwrap_or("unknown CPU"), kib as f64 / (1 << 20) as f64)
}

impl Outcome {
    fn render(&self, args: &Args, soak: &Soak, clean_exit: bool) -> String {
        let mut s = String::new();
        let failed_runs: u64 =
            self.runs.iter().filter(|(_, status, _)| status != "ok" && status != "skipped").map(|r| r.2).sum();
        let verify_ok = self.verify.starts_with("OK");
        let errors = self.read_errors
            + self.empty_answers
            + failed_runs
            + self.mutations.problems.len() as u64
            + self.log_errors.len() as u64
            + u64::from(!verify_ok)
            + u64::from(!clean_exit);
        let _ = writeln!(
            s,
            "### Soak: {:.0} minutes, {} readers ({})\n",
            self.elapsed.as_secs_f64() / 60.0,
            args.readers,
            machine()
        );
        let _ = writeln!(s, "**Errors: {errors}** (target 0)\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| reads | {} ({:.0}/s) |", self.reads, self.reads as f64 / self.elapsed.as_secs_f64());
        let _ = writeln!(s, "| failed reads, empty answers | {}, {} |", self.read_errors, self.empty_answers);
        if let Some(e) = &self.first_read_error {
            let _ = writeln!(s, "| first read problem | `{e}` |");
        }
        let runs = |status: &str| {
            self.runs
                .iter()
                .filter(|r| r.1 == status)
                .map(|r| format!("{} {}", r.0, r.2))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "| runs ok | {} |", runs("ok"));
        let _ = writeln!(s, "| runs skipped (a tick while the last run was going) | {} |", runs("skipped"));
        let _ = writeln!(s, "| runs failed, timed out, cancelled | {failed_runs} |");
        let m = &self.mutations;
        let _ = writeln!(s, "| job file edits | {} |", m.job_edits);
        let _ = writeln!(s, "| plugin files replaced | {} |", m.plugin_swaps);
        let _ = writeln!(
            s,
            "| job file broken / reported in STATUS | {} / {} (its last good schedule ran {} times meanwhile) |",
            m.broken_files, m.broken_reported, m.runs_while_broken
        );
        let _ = writeln!(s, "| mutator problems | {} |", m.problems.len());
        let _ = writeln!(s, "| ERROR lines in the daemon log (broken file aside) | {} |", self.log_errors.len());
        let _ = writeln!(s, "| VERIFY at the end | {} |", self.verify.lines().next().unwrap_or(""));
        let _ = writeln!(s, "| stopped cleanly on SIGTERM | {clean_exit} |");
        let first = self.rss_mib.first().map_or(0.0, |r| r.1);
        let peak = self.rss_mib.iter().map(|r| r.1).fold(0.0, f64::max);
        let last = self.rss_mib.last().map_or(0.0, |r| r.1);
        let _ = writeln!(s, "| daemon RSS first / peak / last | {first:.0} / {peak:.0} / {last:.0} MiB |");
        let store = |i: Option<&(f64, f64)>| i.map_or(0.0, |r| r.1);
        let _ = writeln!(
            s,
            "| store on disk first / last | {:.0} / {:.0} MiB |",
            store(self.store_mib.first()),
            store(self.store_mib.last())
        );
        let _ = writeln!(
            s,
            "\n| minutes | reads/s | p50 µs | p99 µs | p99.9 µs | max µs | daemon RSS MiB | store on disk MiB |\n|---|---|---|---|---|---|---|---|"
        );
        for (i, w) in self.windows.iter().enumerate() {
            let secs =
                (args.window_minutes * 60.0).min(self.elapsed.as_secs_f64() - i as f64 * args.window_minutes * 60.0);
            let h = &w.latency;
            let _ = writeln!(
                s,
                "| {:.0}–{:.0} | {:.0} | {} | {} | {} | {} | {:.0} | {:.0} |",
                i as f64 * args.window_minutes,
                (i + 1) as f64 * args.window_minutes,
                h.len() as f64 / secs.max(1.0),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                w.rss_mib,
                w.store_mib
            );
        }
        for line in self.log_errors.iter().take(5).chain(m.problems.iter().take(5)) {
            let _ = writeln!(s, "\n    {line}");
        }
        let _ = writeln!(s, "\nWork files, daemon log: {}", soak.dir.display());
        s
    }
}
