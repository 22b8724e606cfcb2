//! What ops watch: progress of a running job, Prometheus metrics on an opt-in localhost
//! port and in INFO, JSON log lines carrying the run's span fields.

use crate::util::{TestDaemon, free_port, http_get, ranking_job};

#[test]
fn progress_metrics_and_json_logs() {
    let port = free_port();
    let extra = format!("metrics_listen = \"127.0.0.1:{port}\"\nlog_format = \"json\"\n");
    let d = TestDaemon::start_with(&[("ranking", &ranking_job(""))], &extra);
    let (bin, config) = (crate::util::RECD, d.config());
    let run = std::thread::spawn(move || {
        std::process::Command::new(bin).args(["run", "ranking", "--config"]).arg(config).output().unwrap()
    });
    let mut admin = d.admin();
    let mut seen = Vec::new();
    while !run.is_finished() {
        let p: Option<(u64, u64)> = redis::cmd("PROGRESS").arg("ranking").query(&mut admin).unwrap();
        seen.extend(p);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(run.join().unwrap().status.success());
    assert!(seen.iter().any(|&(done, total)| total == 4321 && done > 0 && done <= total), "progress seen: {seen:?}");

    // Reads on the read socket, each its own batch: each is one observation of the latency
    // histogram (the INFO below comes after the scrape).
    let mut reader = d.redis();
    for _ in 0..20 {
        let _: Vec<String> = redis::cmd("ZREVRANGE").arg("ranking:1").arg(0).arg(9).query(&mut reader).unwrap();
    }
    let (head, metrics) = http_get(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains("application/openmetrics-text"), "{head}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    for want in [
        "recd_runs_total{job=\"ranking\",status=\"ok\"} 1",
        "recd_rows_published_total{table=\"ranking\"} 43210",
        "recd_table_version{table=\"ranking\"} 1",
        "recd_run_duration_seconds_count{job=\"ranking\"} 1",
    ] {
        assert!(metrics.contains(want), "missing {want:?} in:\n{metrics}");
    }
    let value = |series: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series}:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let reads = value("recd_read_latency_seconds_count ");
    assert!(reads >= 20.0, "{reads} reads observed:\n{metrics}");
    assert_eq!(value("recd_read_latency_seconds_bucket{le=\"+Inf\"}"), reads);
    // A top-10 read answers in well under a second, so the 1 s bucket holds every read.
    assert_eq!(value("recd_read_latency_seconds_bucket{le=\"1.0\"}"), reads);
    assert!(value("recd_read_latency_seconds_sum ") > 0.0);
    // The allocator's figures: `recd` allocates through jemalloc (with the system allocator
    // jemalloc would hold next to nothing), and jemalloc documents resident ≥ allocated.
    let allocated = value("recd_allocator_allocated_bytes ");
    assert!(allocated >= 1_048_576.0, "{allocated} bytes allocated through jemalloc:\n{metrics}");
    assert!(value("recd_allocator_resident_bytes ") >= allocated, "{metrics}");
    assert!(http_get(port, "/other").0.starts_with("HTTP/1.1 404"));
    let info: String = redis::cmd("INFO").query(&mut d.redis()).unwrap();
    assert!(info.contains("# Stats") && info.contains("recd_runs_total{job=\"ranking\",status=\"ok\"} 1"), "{info}");
    assert!(info.contains("recd_read_latency_seconds_count") && !info.contains("_bucket{"), "{info}");
    assert!(info.contains("recd_allocator_resident_bytes "), "{info}");
    // jemalloc's background threads return what the daemon frees while it idles.
    let threads = std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap();
    let names: Vec<String> =
        threads.map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap_or_default()).collect();
    assert!(names.iter().any(|n| n.trim() == "jemalloc_bg_thd"), "{names:?}");

    let log = d.log();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).expect("a JSON log line")).collect();
    let started = lines.iter().find(|l| l["fields"]["message"] == "run started").expect("a run started line");
    assert_eq!(started["span"]["job"], "ranking", "{started}");
    assert!(started["span"]["run_id"].is_number() || started["span"]["run_id"].is_string(), "{started}");
    assert!(lines.iter().any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("progress "))));
}

/// The metrics listener serves 64 connections at once, and closes one that sends no request
/// within 10 s: connections left open and silent can neither lock ops out nor take the
/// daemon's file descriptors.
#[test]
fn the_metrics_listener_bounds_its_connections_and_closes_silent_ones() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let port = free_port();
    let d = TestDaemon::start_with(&[], &format!("metrics_listen = \"127.0.0.1:{port}\"\n"));
    d.wait_for("the metrics listener", 10, || TcpStream::connect(("127.0.0.1", port)).ok());
    let connect = move || {
        let connection = TcpStream::connect(("127.0.0.1", port)).unwrap();
        connection.set_read_timeout(Some(Duration::from_secs(50))).unwrap();
        connection
    };
    let opened = Instant::now();
    let mut silent: Vec<TcpStream> = (0..63).map(|_| connect()).collect();
    // The 64th is served (a request on a connection kept open), and then holds its slot.
    let mut kept = connect();
    write!(kept, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut head = [0; 15];
    kept.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK");
    silent.push(kept);
    let scrape = std::thread::spawn(move || {
        let mut connection = connect();
        write!(connection, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        connection.read_to_string(&mut answer).map(|_| answer)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!scrape.is_finished(), "a 65th connection was served while 64 held every slot");
    for (n, mut connection) in silent.into_iter().enumerate() {
        let mut rest = Vec::new();
        match connection.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a silent connection was still open after 50 s: {e}"),
        }
        if n == 0 {
            // The 10 s header timeout, well before the 60 s a connection is served at most.
            let closed_after = opened.elapsed();
            assert!(
                closed_after < Duration::from_secs(40),
                "the first silent connection closed after {closed_after:?}"
            );
        }
    }
    let answer = scrape.join().unwrap().expect("the scrape is answered once the silent connections are closed");
    assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("# EOF\n"), "{answer}");
}
