//! Readers during a publish see the old version or the new one, whole: never a mix, an
//! empty answer or an error.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::oracle::vocab_ids;
use crate::util::{TestDaemon, ranking_job};

type List = Vec<(String, f64)>;

fn read(conn: &mut redis::Connection, user: &str) -> redis::RedisResult<List> {
    redis::cmd("ZREVRANGE").arg(format!("ranking:{user}")).arg(0).arg(-1).arg("WITHSCORES").query(conn)
}

#[test]
fn readers_see_only_complete_versions_while_a_new_one_is_published() {
    let d = TestDaemon::start(&[("ranking", &ranking_job(""))]);
    d.run_job("ranking");
    let users: Vec<String> = vocab_ids("users.csv").into_iter().step_by(97).collect();
    let mut conn = d.redis();
    let old: HashMap<String, List> = users.iter().map(|u| (u.clone(), read(&mut conn, u).unwrap())).collect();
    assert!(old.values().all(|l| l.len() == 10));

    // The next version keeps 5 items per user: the same model and candidates, so each new
    // list is the first half of the old one, and a reader can tell which version it got.
    let job = ranking_job("").replace("k = 10", "k = 5");
    std::fs::write(d.jobs_dir().join("ranking.toml"), job).unwrap();
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (stop, users, old) = (stop.clone(), users.clone(), old.clone());
            let mut conn = d.redis();
            std::thread::spawn(move || {
                let (mut saw_old, mut saw_new) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    for u in &users {
                        let list = read(&mut conn, u).unwrap_or_else(|e| panic!("read of {u} failed: {e}"));
                        let before = &old[u];
                        if &list == before {
                            saw_old += 1;
                        } else if list[..] == before[..5] {
                            saw_new += 1;
                        } else {
                            panic!("user {u}: neither version: {list:?} (old {before:?})");
                        }
                    }
                }
                (saw_old, saw_new)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let report = d.run_job("ranking");
    assert!(report.contains("version 2"), "{report}");
    // after the publish returns, every read sees the new version
    for u in &users {
        assert_eq!(read(&mut conn, u).unwrap(), old[u][..5].to_vec(), "user {u} after publish");
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let (mut saw_old, mut saw_new) = (0, 0);
    for r in readers {
        let (o, n) = r.join().expect("reader saw a mixed, empty or failed answer");
        saw_old += o;
        saw_new += n;
    }
    assert!(saw_old > 0 && saw_new > 0, "readers must overlap the publish: old {saw_old}, new {saw_new}");
}

#[test]
fn recd_rollback_serves_a_retained_version_again() {
    // the faulty plugin's "ok" mode with a different user each version tells them apart
    let job = |user: &str| format!("plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\nuser = \"{user}\"\n");
    let d = TestDaemon::start(&[("t", &job("first"))]);
    d.run_job("t");
    d.write_job("t", &job("second"));
    assert!(d.cli(&["reload"]).status.success());
    assert!(d.run_job("t").contains("version 2"));
    let mut conn = d.redis();
    let exists =
        |conn: &mut redis::Connection, key: &str| -> i64 { redis::cmd("EXISTS").arg(key).query(conn).unwrap() };
    assert_eq!((exists(&mut conn, "t:first"), exists(&mut conn, "t:second")), (0, 1));

    let out = d.cli(&["rollback", "t"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK table t version 1"), "{out:?}");
    assert_eq!((exists(&mut conn, "t:first"), exists(&mut conn, "t:second")), (1, 0));
    let info: String = redis::cmd("INFO").query(&mut conn).unwrap();
    assert!(info.contains("table_t:version=1,") && info.contains("retained=1|2"), "{info}");
    assert!(d.cli(&["verify"]).status.success());

    let out = d.cli(&["rollback", "t", "7"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("table `t` keeps no version 7 (retained: 1, 2)"), "{out:?}");
    // apps cannot roll back
    let refused = redis::cmd("ROLLBACK").arg("t").query::<String>(&mut conn).unwrap_err();
    assert_eq!(refused.code(), Some("NOPERM"));
    // forward again
    assert!(String::from_utf8_lossy(&d.cli(&["rollback", "t", "2"]).stdout).starts_with("OK table t version 2"));
    assert_eq!(exists(&mut conn, "t:second"), 1);
}
