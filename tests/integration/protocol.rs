//! Apps written against Redis sorted sets must work unchanged: the same read commands
//! against recd and against a real redis-server holding the same lists give the same
//! replies, for sorted sets and for hashes. Plus what is recd's own: GET/MGET as JSON,
//! read-only errors, the admin split.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value;

use crate::util::{TestDaemon, ranking_job, shipped_job};

struct RedisServer {
    child: Child,
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
}

impl RedisServer {
    fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (make setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        // Until it accepts: its socket file exists from the bind, before it listens (a
        // connection then was refused).
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, _dir: dir, socket }
    }

    fn conn(&self) -> redis::Connection {
        connect(&self.socket, false)
    }
}

/// A client connection, in RESP3 (the client sends HELLO 3 first) or RESP2.
fn connect(socket: &std::path::Path, resp3: bool) -> redis::Connection {
    let query = if resp3 { "?protocol=resp3" } else { "" };
    redis::Client::open(format!("redis+unix://{}{query}", socket.display())).unwrap().get_connection().unwrap()
}

/// Runs every case against both servers, in RESP2 and in RESP3, and compares replies.
fn compare(ours: &std::path::Path, theirs: &std::path::Path, cases: &[Vec<&str>]) {
    for resp3 in [false, true] {
        let (mut a, mut b) = (connect(ours, resp3), connect(theirs, resp3));
        for case in cases {
            assert_eq!(query(&mut a, case), query(&mut b, case), "{case:?} (resp3: {resp3})");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reply as comparable text: values as they are (scores as the double they denote),
/// errors as their full text.
fn query(conn: &mut redis::Connection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<Value>(conn) {
        Ok(v) => format!("{:?}", canonical_scores(v)),
        Err(e) => format!("error {:?} {:?}", e.code(), e.detail()),
    }
}

/// Redis 7.0 prints scores with 17 significant digits ("1.0597106999999999"), recd with
/// the fewest that read back as the same value ("1.0597107"); clients parse both to the
/// same double, so compare them as doubles.
fn canonical_scores(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(canonical_scores).collect()),
        Value::Map(pairs) => {
            Value::Map(pairs.into_iter().map(|(k, v)| (canonical_scores(k), canonical_scores(v))).collect())
        }
        Value::BulkString(b) => {
            let text = String::from_utf8_lossy(&b).into_owned();
            match text.parse::<f64>() {
                Ok(x) if text.contains('.') => Value::BulkString(format!("{x:?}").into_bytes()),
                _ => Value::BulkString(b),
            }
        }
        other => other,
    }
}

#[test]
fn read_commands_answer_exactly_as_redis_server_does() {
    let d = TestDaemon::start(&[("ranking", &ranking_job(""))]);
    d.run_job("ranking");
    let redis = RedisServer::start();
    let (mut ours, mut theirs) = (d.redis(), redis.conn());
    let users = ["17850", "12347", "13047"];
    for u in users {
        let key = format!("ranking:{u}");
        let list: Vec<(String, String)> =
            redis::cmd("ZREVRANGE").arg(&key).arg(0).arg(-1).arg("WITHSCORES").query(&mut ours).unwrap();
        for (member, score) in list {
            let _: () = redis::cmd("ZADD").arg(&key).arg(score).arg(member).query(&mut theirs).unwrap();
        }
    }
    let member: Vec<String> = redis::cmd("ZRANGE").arg("ranking:17850").arg(3).arg(3).query(&mut ours).unwrap();
    let m = member[0].as_str();
    let k = "ranking:17850";
    let cases: Vec<Vec<&str>> = vec![
        vec!["ZREVRANGE", k, "0", "9", "WITHSCORES"],
        vec!["ZREVRANGE", k, "0", "-1"],
        vec!["ZREVRANGE", k, "-3", "-1", "WITHSCORES"],
        vec!["ZREVRANGE", k, "5", "2"],
        vec!["ZREVRANGE", k, "-100", "100"],
        vec!["ZREVRANGE", k, "20", "30"],
        vec!["ZREVRANGE", "ranking:nobody", "0", "-1"],
        vec!["ZREVRANGE", "nosuchtable:17850", "0", "-1"],
        vec!["ZREVRANGE", k, "0"],
        vec!["ZREVRANGE", k, "a", "1"],
        vec!["ZREVRANGE", k, "0", "1", "WITHSCORE"],
        // options as Redis reads them for both commands: WITHSCORES again is fine, REV
        // only once and not on ZREVRANGE
        vec!["ZREVRANGE", k, "0", "1", "WITHSCORES", "WITHSCORES"],
        vec!["ZREVRANGE", k, "0", "1", "WITHSCORES", "x"],
        vec!["ZREVRANGE", k, "0", "1", "REV"],
        vec!["ZREVRANGE", k, "0", "1", "LIMIT", "0", "1"],
        vec!["ZREVRANGE", k, "0", "1", "LIMIT", "x", "1"],
        vec!["ZREVRANGE", k, "0", "1", "LIMIT", "0"],
        // a count of -1 is no limit, which a range by rank takes whatever the offset
        vec!["ZREVRANGE", k, "0", "1", "LIMIT", "0", "-1"],
        vec!["ZREVRANGE", k, "0", "1", "LIMIT", "5", "-1", "WITHSCORES"],
        vec!["ZRANGE", k, "0", "2", "LIMIT", "0", "-1", "REV"],
        vec!["ZRANGE", k, "0", "1", "LIMIT", "0", "3"],
        vec!["ZRANGE", k, "0", "1", "LIMIT", "0", "x"],
        vec!["ZRANGE", k, "0", "1", "REV", "REV"],
        vec!["ZRANGE", k, "0", "1", "WITHSCORES", "REV", "WITHSCORES"],
        vec!["ZRANGE", k, "0", "2"],
        vec!["ZRANGE", k, "0", "-1", "WITHSCORES"],
        vec!["ZRANGE", k, "0", "3", "REV", "WITHSCORES"],
        vec!["ZRANGE", k, "-2", "-1", "withscores", "rev"],
        vec!["ZRANGE", k, "0", "1", "NOPE"],
        vec!["ZRANGE", k],
        vec!["ZCARD", k],
        vec!["ZCARD", "ranking:nobody"],
        vec!["ZCARD"],
        vec!["ZSCORE", k, m],
        vec!["ZSCORE", k, "not-an-item"],
        vec!["ZSCORE", "ranking:nobody", m],
        vec!["EXISTS", k, "ranking:nobody", k, "ranking:12347"],
        vec!["EXISTS"],
        vec!["PING"],
        vec!["PING", "hello"],
        vec!["ECHO", "hi there"],
        vec!["SELECT", "0"],
        vec!["SELECT", "16"],
        vec!["SELECT", "x"],
        // integers as Redis reads them: no sign, no leading zero, no "-0"
        vec!["ZREVRANGE", k, "0", "+1"],
        vec!["ZREVRANGE", k, "0", "01"],
        vec!["ZREVRANGE", k, "-0", "1"],
        vec!["SELECT", "00"],
        vec!["HELLO", "03"],
        vec!["CLIENT", "SETNAME", "a b"],
        vec!["CLIENT", "SETNAME", "a\nb"],
        vec!["CLIENT", "SETNAME", "a", "b"],
        vec!["CLIENT", "ID", "x"],
        // what clients and redis-benchmark ask at start-up
        vec!["CONFIG", "GET", "save"],
        vec!["CONFIG", "GET", "appendonly"],
        vec!["CONFIG", "GET", "no-such-setting"],
    ];
    compare(&d.socket(), &redis.socket, &cases);
}

#[test]
fn hash_commands_answer_exactly_as_redis_server_does() {
    let d = TestDaemon::start(&[("ranking", &ranking_job("")), ("churn", &shipped_job("churn"))]);
    d.run_job("ranking");
    d.run_job("churn");
    let redis = RedisServer::start();
    let (mut ours, mut theirs) = (d.redis(), redis.conn());
    for u in ["17850", "12347"] {
        let key = format!("churn:{u}");
        let fields: Vec<(String, String)> = redis::cmd("HGETALL").arg(&key).query(&mut ours).unwrap();
        assert!(!fields.is_empty());
        for (field, value) in fields {
            let _: () = redis::cmd("HSET").arg(&key).arg(field).arg(value).query(&mut theirs).unwrap();
        }
    }
    let list: Vec<(String, String)> =
        redis::cmd("ZREVRANGE").arg("ranking:17850").arg(0).arg(-1).arg("WITHSCORES").query(&mut ours).unwrap();
    for (member, score) in list {
        let _: () = redis::cmd("ZADD").arg("ranking:17850").arg(score).arg(member).query(&mut theirs).unwrap();
    }
    let (h, z) = ("churn:17850", "ranking:17850");
    let cases: Vec<Vec<&str>> = vec![
        vec!["HGETALL", h],
        vec!["HGETALL", "churn:nobody"],
        vec!["HGETALL"],
        vec!["HGET", h, "tier"],
        vec!["HGET", h, "probability"],
        vec!["HGET", h, "nope"],
        vec!["HGET", "churn:nobody", "tier"],
        vec!["HGET", h],
        vec!["HMGET", h, "tier", "nope", "frequency"],
        vec!["HMGET", "churn:nobody", "tier"],
        vec!["HMGET", h],
        vec!["HKEYS", h],
        vec!["HVALS", "churn:12347"],
        vec!["HLEN", h],
        vec!["HLEN", "churn:nobody"],
        vec!["HEXISTS", h, "tier"],
        vec!["HEXISTS", h, "nope"],
        vec!["TYPE", h],
        vec!["TYPE", z],
        vec!["TYPE", "churn:nobody"],
        // the wrong type either way
        vec!["ZRANGE", h, "0", "-1"],
        vec!["ZSCORE", h, "tier"],
        vec!["HGETALL", z],
        vec!["HGET", z, "x"],
        vec!["EXISTS", h, z, "churn:nobody"],
    ];
    compare(&d.socket(), &redis.socket, &cases);

    // An experiment whose variants are tables of hashes: the hash commands on its keys
    // answer the user's assignment, not the variant's hash.
    let experiment = "salt = \"s1\"\n[[variant]]\nname = \"control\"\ntable = \"churn\"\nshare = 0.5\n[[variant]]\nname = \"treated\"\ntable = \"churn\"\nshare = 0.5\n";
    std::fs::write(d.jobs_dir().join("homepage.experiment.toml"), experiment).unwrap();
    assert!(d.cli(&["reload"]).status.success());
    for u in ["17850", "12347"] {
        let key = format!("homepage:{u}");
        let variant: Option<String> = redis::cmd("HGET").arg(&key).arg("variant").query(&mut ours).unwrap();
        let variant = variant.unwrap_or_default();
        assert!(variant == "control" || variant == "treated", "{key}: variant {variant:?}");
        let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(&key).query(&mut ours).unwrap();
        assert_eq!(all, [("variant".to_string(), variant), ("table".to_string(), "churn".to_string())]);
    }
}

#[test]
fn recd_specific_replies() {
    let d = TestDaemon::start(&[("ranking", &ranking_job(""))]);
    d.run_job("ranking");
    let mut conn = d.redis();
    let list: Vec<(String, f64)> =
        redis::cmd("ZREVRANGE").arg("ranking:17850").arg(0).arg(-1).arg("WITHSCORES").query(&mut conn).unwrap();

    // GET: the same list as JSON, best first; MGET with a missing key
    let json: String = redis::cmd("GET").arg("ranking:17850").query(&mut conn).unwrap();
    let parsed: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let from_json: Vec<(String, f64)> =
        parsed.iter().map(|e| (e["item"].as_str().unwrap().to_string(), e["score"].as_f64().unwrap())).collect();
    assert_eq!(from_json, list);
    let many: Vec<Option<String>> =
        redis::cmd("MGET").arg("ranking:17850").arg("ranking:nobody").query(&mut conn).unwrap();
    assert_eq!(many, vec![Some(json), None]);
    let none: Option<String> = redis::cmd("GET").arg("ranking:nobody").query(&mut conn).unwrap();
    assert_eq!(none, None);

    // writes are refused, unknown commands named, control commands kept to the admin socket
    for (args, code) in [
        (vec!["ZADD", "ranking:17850", "1", "x"], "READONLY"),
        (vec!["SET", "a", "b"], "READONLY"),
        (vec!["DEL", "ranking:17850"], "READONLY"),
        (vec!["FROB", "x"], "ERR"),
        (vec!["RUN", "ranking"], "NOPERM"),
        (vec!["RELOAD"], "NOPERM"),
        (vec!["HELLO", "4"], "NOPROTO"),
        // one database: unlike redis-server's 16, SELECT 1 is out of range
        (vec!["SELECT", "1"], "ERR"),
    ] {
        let reply = query(&mut conn, &args);
        assert!(reply.starts_with(&format!("error Some({code:?})")), "{args:?}: {reply}");
    }
    assert!(query(&mut conn, &["FROB", "x"]).contains("unknown command 'frob'"));
    let after: Vec<(String, f64)> =
        redis::cmd("ZREVRANGE").arg("ranking:17850").arg(0).arg(-1).arg("WITHSCORES").query(&mut conn).unwrap();
    assert_eq!(after, list, "a refused write changed the list");

    // pipelining: 200 commands in one write, answered in order
    let mut pipe = redis::pipe();
    for i in 0..200 {
        if i % 2 == 0 {
            pipe.cmd("ZCARD").arg("ranking:17850");
        } else {
            pipe.cmd("ECHO").arg(i.to_string());
        }
    }
    let replies: Vec<Value> = pipe.query(&mut conn).unwrap();
    for (i, r) in replies.iter().enumerate() {
        let want = if i % 2 == 0 { Value::Int(10) } else { Value::BulkString(i.to_string().into_bytes()) };
        assert_eq!(r, &want, "pipelined reply {i}");
    }

    // A pipeline far longer than the socket buffers, sent whole before any answer is read
    // (as redis-rs sends a pipe): the server reads on while it writes, so neither side
    // waits on the other.
    let long = d.redis();
    long.set_write_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    long.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut long = long;
    let mut pipe = redis::pipe();
    for _ in 0..20_000 {
        pipe.cmd("ZREVRANGE").arg("ranking:17850").arg(0).arg(-1).arg("WITHSCORES");
    }
    let replies: Vec<Vec<(String, f64)>> = pipe.query(&mut long).expect("a long pipeline is answered");
    assert_eq!(replies.len(), 20_000);
    assert!(replies.iter().all(|r| *r == list), "every pipelined reply is the list");
    // The same sent by a client that then closes its side: every request is answered
    // before the server closes.
    {
        use std::io::{Read, Write};
        let mut raw = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
        raw.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut writer = raw.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            writer.write_all(&b"ZREVRANGE ranking:17850 0 -1 WITHSCORES\r\n".repeat(20_000)).unwrap();
            writer.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        raw.read_to_end(&mut got).unwrap();
        sender.join().unwrap();
        let header = format!("*{}\r\n", 2 * list.len());
        let text = String::from_utf8(got).unwrap();
        assert_eq!(text.matches(&header).count(), 20_000, "every request of a half-closed pipeline is answered");
    }

    // HELLO 2, CLIENT and COMMAND as client libraries use them; INFO lists the table
    let hello: Vec<Value> = redis::cmd("HELLO").arg(2).arg("SETNAME").arg("app1").query(&mut conn).unwrap();
    assert!(hello.contains(&Value::BulkString(b"proto".to_vec())));
    assert!(hello.contains(&Value::Int(2)));
    // HELLO 3 switches the connection to RESP3 (a map back); HELLO 2 switches back
    let mut raw = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    {
        use std::io::{Read, Write};
        raw.write_all(b"HELLO 3\r\nZSCORE ranking:nobody x\r\nHELLO 2\r\nZSCORE ranking:nobody x\r\n").unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"$-1\r\n") {
            let n = raw.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("%7\r\n$6\r\nserver\r\n"), "{text}");
        assert!(text.contains("$5\r\nproto\r\n:3\r\n"), "{text}");
        // modules (empty), the RESP3 null, then HELLO 2's flat array and a RESP2 null
        assert!(text.contains("$7\r\nmodules\r\n*0\r\n_\r\n*14\r\n"), "{text}");
    }
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut conn).unwrap();
    assert_eq!(name, "app1");
    let info: String = redis::cmd("INFO").query(&mut conn).unwrap();
    assert!(info.contains("table_ranking:version=1,users=4321,rows=43210"), "{info}");

    // the admin socket answers control commands
    let mut admin = d.admin();
    let status: String = redis::cmd("STATUS").query(&mut admin).unwrap();
    assert!(status.contains("ranking: current version 1"), "{status}");

    // redis-cli, the tool ops reach for
    assert_eq!(d.redis_cli(&["ZCARD", "ranking:17850"]).trim(), "10");
    assert_eq!(d.redis_cli(&["PING"]).trim(), "PONG");
}

/// A range longer than one part of a reply (2,048 entries) is written in parts, with other
/// clients served in between; the reply must be the very one Redis gives, whatever range
/// and direction, in RESP2 and RESP3, also pipelined behind and before other requests.
#[test]
fn long_ranges_written_in_parts_answer_exactly_as_redis_server_does() {
    let items = 20_000;
    let job = format!(
        "plugin = \"synthetic\"\nmax_items_per_user = {items}\n[params]\nusers = 3\nitems = 5\nbig_users = 1\nbig_items = {items}\n"
    );
    let d = TestDaemon::start(&[("s", &job)]);
    d.run_job("s");
    let redis = RedisServer::start();
    let mut theirs = redis.conn();
    for chunk in (0..items).collect::<Vec<u32>>().chunks(5000) {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg("s:big-0");
        for item in chunk {
            zadd.arg(items - item).arg(format!("big-item-{item}"));
        }
        let _: () = zadd.query(&mut theirs).unwrap();
    }
    let k = "s:big-0";
    let cases: Vec<Vec<&str>> = vec![
        vec!["ZREVRANGE", k, "0", "-1", "WITHSCORES"],
        vec!["ZREVRANGE", k, "0", "-1"],
        vec!["ZRANGE", k, "0", "-1", "WITHSCORES"],
        vec!["ZRANGE", k, "0", "-1", "REV"],
        vec!["ZREVRANGE", k, "8190", "16400", "WITHSCORES"],
        vec!["ZRANGE", k, "3", "-5", "WITHSCORES"],
        vec!["ZRANGE", k, "-8193", "-1"],
        vec!["ZREVRANGE", k, "19999", "25000"],
        vec!["ZCARD", k],
    ];
    compare(&d.socket(), &redis.socket, &cases);
    // Pipelined: a small read, a long one, a small one, answered in order.
    {
        let pipe = |socket: &std::path::Path| {
            let mut conn = connect(socket, false);
            let replies: Vec<Value> = redis::pipe()
                .cmd("ZCARD")
                .arg(k)
                .cmd("ZREVRANGE")
                .arg(k)
                .arg(0)
                .arg(-1)
                .cmd("ZREVRANGE")
                .arg(k)
                .arg(0)
                .arg(2)
                .query(&mut conn)
                .unwrap();
            format!("{:?}", replies)
        };
        assert_eq!(pipe(&d.socket()), pipe(&redis.socket));
    }
}
