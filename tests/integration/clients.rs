//! Real Redis clients against recd: redis-py (PyPI) in RESP2 and RESP3 and
//! redis-benchmark (Debian's redis-tools), besides redis-cli and the `redis` crate used
//! everywhere else. Expected values are read with the `redis` crate.

use std::process::Command;

use crate::util::{TestDaemon, ranking_job, root};

const REDIS_PY: &str = r#"
import json, sys
import redis
sock = sys.argv[1]
out = {}
for proto in (2, 3):
    r = redis.Redis(unix_socket_path=sock, protocol=proto)
    top = r.zrevrange("ranking:17850", 0, 9, withscores=True)
    out[f"top{proto}"] = [[m.decode(), s] for m, s in top]
    out[f"score{proto}"] = r.zscore("ranking:17850", top[0][0])
    out[f"missing{proto}"] = r.zscore("ranking:17850", "no-such-item")
    pipe = r.pipeline(transaction=False)
    for _ in range(50):
        pipe.zcard("ranking:17850")
        pipe.exists("ranking:17850", "ranking:nobody")
    out[f"pipeline{proto}"] = pipe.execute()
    got = r.mget(["ranking:17850", "nosuchtable:x"])
    out[f"mget{proto}"] = [None if v is None else json.loads(v) for v in got]
    out[f"type{proto}"] = r.type("ranking:17850").decode()
    errors = []
    try:
        r.set("a", "b")
    except redis.exceptions.ReadOnlyError as e:
        errors.append(["ReadOnlyError", str(e)])
    try:
        r.execute_command("FROB", "x")
    except redis.exceptions.ResponseError as e:
        errors.append(["ResponseError", str(e)])
    try:
        r.execute_command("RUN", "ranking")
    except redis.exceptions.ResponseError as e:
        errors.append(["ResponseError", str(e)])
    out[f"errors{proto}"] = errors
json.dump(out, sys.stdout)
"#;

#[test]
fn redis_py_reads_recd_in_resp2_and_resp3() {
    let d = TestDaemon::start(&[("ranking", &ranking_job(""))]);
    d.run_job("ranking");
    let out = Command::new("python3")
        .args(["-c", REDIS_PY])
        .arg(d.socket())
        .env("PYTHONPATH", root().join(".deps/py"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "redis-py: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let mut conn = d.redis();
    let want: Vec<(String, f64)> =
        redis::cmd("ZREVRANGE").arg("ranking:17850").arg(0).arg(9).arg("WITHSCORES").query(&mut conn).unwrap();
    let json: String = redis::cmd("GET").arg("ranking:17850").query(&mut conn).unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    for proto in [2, 3] {
        let top: Vec<(String, f64)> = serde_json::from_value(got[format!("top{proto}")].clone()).unwrap();
        assert_eq!(top, want, "resp{proto}");
        assert_eq!(got[format!("score{proto}")], want[0].1);
        assert_eq!(got[format!("missing{proto}")], serde_json::Value::Null);
        let pipeline: Vec<i64> = serde_json::from_value(got[format!("pipeline{proto}")].clone()).unwrap();
        assert_eq!(pipeline, [10, 1].repeat(50), "resp{proto}: 100 pipelined replies in order");
        assert_eq!(got[format!("mget{proto}")], serde_json::json!([json, null]));
        assert_eq!(got[format!("type{proto}")], "zset");
        let errors = &got[format!("errors{proto}")];
        assert_eq!(errors[0][0], "ReadOnlyError", "{errors}");
        assert_eq!(errors[1][0], "ResponseError");
        assert!(errors[1][1].as_str().unwrap().contains("unknown command 'frob'"), "{errors}");
        assert!(errors[2][1].as_str().unwrap().contains("control command"), "{errors}");
    }
}

#[test]
fn redis_benchmark_runs_against_recd_without_errors() {
    let d = TestDaemon::start(&[("ranking", &ranking_job(""))]);
    d.run_job("ranking");
    let out = Command::new("redis-benchmark")
        .arg("-s")
        .arg(d.socket())
        .args(["-n", "2000", "-c", "8", "-P", "4", "-q", "ZREVRANGE", "ranking:17850", "0", "9", "WITHSCORES"])
        .output()
        .expect("redis-benchmark (make setup installs redis-tools)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("requests per second"), "{text}");
    assert!(!text.contains("ERR") && !text.contains("rror"), "{text}");
    // it asks for CONFIG at start and gets an answer (no "Could not fetch server CONFIG")
    assert!(!text.contains("WARNING"), "{text}");
}
