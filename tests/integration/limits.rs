//! Limits of the read socket (recd.toml): clients at once, request size, idle time (replies
//! unread included); a client that stops reading never delays the others, and one that never pauses does not
//! hold up shutdown; the serving threads' busy polling ends when requests stop.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::util::TestDaemon;

/// Connects and sends PING; the first reply line.
fn ping(d: &TestDaemon) -> (UnixStream, String) {
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // a refused client may find the socket closed before it writes: read the reply anyway
    let _ = s.write_all(b"PING\r\n");
    let mut buf = [0u8; 128];
    let n = s.read(&mut buf).unwrap_or(0);
    (s, String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A well-behaved client reads the faulty plugin's 3-item list 200 times within 5 s.
fn assert_served_promptly(d: &TestDaemon) {
    let mut conn = d.redis();
    let started = Instant::now();
    for _ in 0..200 {
        let list: Vec<String> = redis::cmd("ZREVRANGE").arg("t:u1").arg(0).arg(-1).query(&mut conn).unwrap();
        assert_eq!(list.len(), 3);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[test]
fn clients_beyond_max_clients_are_refused_as_redis_refuses_them() {
    let d = TestDaemon::start_with(&[], "max_clients = 3\n");
    // TestDaemon::start's readiness probe connects and leaves at once; until the daemon
    // has seen it go, it still holds a slot: try again until three clients are in.
    let held: Vec<UnixStream> = d.wait_for("three clients served", 5, || {
        let conns: Vec<(UnixStream, String)> = (0..3).map(|_| ping(&d)).collect();
        conns.iter().all(|(_, reply)| reply == "+PONG\r\n").then(|| conns.into_iter().map(|(s, _)| s).collect())
    });
    let (_, reply) = ping(&d);
    assert_eq!(reply, "-ERR max number of clients reached\r\n");
    // the admin socket is not counted: ops always get in
    assert!(d.cli(&["status"]).status.success());
    drop(held);
    d.wait_for("a free slot once clients leave", 5, || (ping(&d).1 == "+PONG\r\n").then_some(()));
}

#[test]
fn oversized_requests_and_idle_clients_are_closed() {
    let d = TestDaemon::start_with(&[], "max_request_bytes = 2048\nidle_timeout_seconds = 1\n");
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // a 100 kB argument, sent in part: the request cannot be complete within the limit
    s.write_all(b"*2\r\n$4\r\nECHO\r\n$100000\r\n").unwrap();
    s.write_all(&[b'x'; 4000]).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert_eq!(reply, "-ERR request larger than max_request_bytes (2048): closing\r\n");

    // within the limit all is well, and a silent client is closed after the idle time
    let (mut s, reply) = ping(&d);
    assert_eq!(reply, "+PONG\r\n");
    let started = Instant::now();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "closed without a reply");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "{waited:?}");
}

#[test]
fn a_client_that_stops_reading_does_not_delay_others() {
    let job = "plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n";
    let d = TestDaemon::start(&[("t", job)]);
    d.run_job("t");
    // A pipelines millions of requests and never reads the answers: its socket buffer
    // fills, the server's writes to it block, and the server reads ahead until its
    // read-ahead bound (64 MiB) is full.
    let mut stalled = UnixStream::connect(d.socket()).unwrap();
    stalled.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let request = b"ZREVRANGE t:u1 0 -1 WITHSCORES\r\n".repeat(1000);
    let mut blocked = false;
    for _ in 0..4000 {
        if stalled.write_all(&request).is_err() {
            blocked = true; // the server stopped reading from A: it is blocked on A, as intended
            break;
        }
    }
    assert!(blocked, "the server read 128 MB ahead from a client that reads nothing");
    // B is served as usual, at once
    assert_served_promptly(&d);
    drop(stalled);
}

#[test]
fn a_client_that_stops_reading_and_sending_is_closed_after_the_idle_time() {
    let d = TestDaemon::start_with(&[], "idle_timeout_seconds = 1\n");
    let mut stalled = UnixStream::connect(d.socket()).unwrap();
    stalled.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let arg = "x".repeat(8000);
    let requests = format!("*2\r\n$4\r\nECHO\r\n$8000\r\n{arg}\r\n").repeat(100);
    // Replies unread, the server's writes block; it reads ahead (64 MiB), then stops.
    let blocked = (0..2000).any(|_| stalled.write_all(requests.as_bytes()).is_err());
    assert!(blocked, "the server read 1.6 GB ahead from a client that reads nothing");
    // Nothing moves now: the replies it owes do not keep the connection, which is closed
    // (a write fails instead of waiting), as Redis closes a client idle with output pending.
    d.wait_for("the stalled client closed", 8, || match stalled.write(b"PING\r\n") {
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => Some(()),
        _ => None,
    });
    // and others are served as before
    let (_, reply) = ping(&d);
    assert_eq!(reply, "+PONG\r\n");
}

/// Sends `bytes` on a fresh connection; everything the server answers until it closes.
fn answer_to(d: &TestDaemon, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn malformed_frames_and_thousands_of_idle_clients_leave_others_served() {
    let job = "plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n";
    let d = TestDaemon::start(&[("t", job)]);
    d.run_job("t");
    // Each malformed frame gets the protocol error redis-server 7 sends for it (its
    // answers, recorded), and the connection is closed; what came before it on the
    // connection is answered.
    let cases: [(&[u8], &str); 7] = [
        (b"*abc\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n$-5\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\n:5\r\n", "-ERR Protocol error: expected '$', got ':'\r\n"),
        (b"PING\r\n*2\r\n$4\r\nECHO\r\n$zz\r\n", "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"),
        // lengths as Redis reads numbers: no sign, no leading zero
        (b"*+1\r\n$4\r\nPING\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n$+4\r\nPING\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
        (b"*01\r\n$4\r\nPING\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
    ];
    for (bytes, want) in cases {
        assert_eq!(answer_to(&d, bytes), want, "{:?}", String::from_utf8_lossy(bytes));
    }
    // Stricter than Redis, which takes any two bytes after a bulk string: recd wants CRLF.
    let got = answer_to(&d, b"*1\r\n$4\r\nPINGxx");
    assert_eq!(got, "-ERR Protocol error: bulk string not terminated by CRLF\r\n");
    // Bytes that are no command: an error, as Redis answers, and the client may go on.
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0xff, 0xfe, b'*', b'\r', b'\n']).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"+PONG\r\n") {
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"-ERR unknown command"), "{:?}", String::from_utf8_lossy(&got));
    // 3,000 clients connect and say nothing; a well-behaved one is served throughout.
    let idle: Vec<UnixStream> = (0..3000).map(|_| UnixStream::connect(d.socket()).unwrap()).collect();
    assert_served_promptly(&d);
    // ... and a new client still gets in.
    assert_eq!(ping(&d).1, "+PONG\r\n");
    drop(idle);
    assert!(d.cli(&["status"]).status.success());
}

#[test]
fn a_client_that_never_pauses_does_not_hold_up_shutdown() {
    let job = "plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n";
    let mut d = TestDaemon::start(&[("t", job)]);
    d.run_job("t");
    // One thread writes requests without end, another reads the answers as they come: the
    // server always has input waiting on this connection.
    let writer = UnixStream::connect(d.socket()).unwrap();
    let mut reader = writer.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let request = b"ZREVRANGE t:u1 0 -1 WITHSCORES\r\n".repeat(500);
        let mut w = &writer;
        while w.write_all(&request).is_ok() {}
    });
    let (tx, answered) = std::sync::mpsc::channel();
    let drain = std::thread::spawn(move || {
        let (mut buf, mut total, mut tx) = (vec![0u8; 1 << 16], 0usize, Some(tx));
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            total += n;
            if total > 1 << 20
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    answered.recv_timeout(Duration::from_secs(10)).expect("the flood is being answered");
    assert!(d.stop(), "the daemon exits on SIGTERM while a client floods it\n{}", d.log());
    flood.join().unwrap();
    drain.join().unwrap();
}

/// CPU time the daemon's serving threads have used, in clock ticks, and how many there are.
fn serving_ticks(d: &TestDaemon) -> (u64, usize) {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap();
    let serving: Vec<u64> = tasks
        .map(|t| t.unwrap().path())
        .filter(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.starts_with("recd-serve-")))
        .map(|t| {
            let stat = std::fs::read_to_string(t.join("stat")).unwrap();
            // fields after the command's closing parenthesis: utime and stime are 12th and 13th
            let fields: Vec<u64> =
                stat.rsplit_once(')').unwrap().1.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
            fields[11] + fields[12]
        })
        .collect();
    (serving.iter().sum(), serving.len())
}

#[test]
fn serving_threads_stop_looking_for_requests_once_they_stop_coming() {
    // Requests back to back grow the busy-poll window (up to 50 µs by default); it must
    // still end after the last one, not keep a core busy.
    let d = TestDaemon::start(&[]);
    let mut conn = d.redis();
    for _ in 0..5_000 {
        let _: String = redis::cmd("PING").query(&mut conn).unwrap();
    }
    let (before, threads) = serving_ticks(&d);
    assert!(threads >= 1, "no thread named recd-serve-*");
    std::thread::sleep(Duration::from_secs(1));
    let used = serving_ticks(&d).0 - before;
    let clk_tck = std::process::Command::new("getconf").arg("CLK_TCK").output().unwrap().stdout;
    let per_second: u64 = String::from_utf8_lossy(&clk_tck).trim().parse().unwrap();
    assert!(used <= per_second / 20, "serving threads used {used} ticks (of {per_second}) in an idle second: over 5%");
    let _: String = redis::cmd("PING").query(&mut conn).unwrap();
}
