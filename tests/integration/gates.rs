//! Publish gates: a version that fails its job's `[gate]` is kept as held, not served, until
//! `recd promote` or `recd discard` settles it; the version served before keeps serving.

use crate::util::{TestDaemon, ranking_job, root};

/// The first `share` of the shipped model's users file (header kept), written in `dir`.
fn cut_users(dir: &std::path::Path, keep: fn(usize) -> usize) -> (std::path::PathBuf, Vec<String>) {
    let text = std::fs::read_to_string(root().join("models/ranking/users.csv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let n = keep(lines.len() - 1);
    let path = dir.join(format!("users-{n}.csv"));
    std::fs::write(&path, lines[..=n].join("\n") + "\n").unwrap();
    let dropped = lines[n + 1..].iter().map(|l| l.split(',').next().unwrap().to_string()).collect();
    (path, dropped)
}

fn list_len(d: &TestDaemon, user: &str) -> usize {
    redis::cmd("ZCARD").arg(format!("ranking:{user}")).query::<usize>(&mut d.redis()).unwrap()
}

#[test]
fn a_version_that_fails_its_gate_is_held_until_promoted_or_discarded() {
    let gate = "\n[gate]\nmin_users_ratio = 0.8\nmax_changed_share = 0.5\nmax_score_psi = 0.25\n";
    let full = ranking_job("").replace("fallback = [\"cold-start\"]", "") + gate;
    let d = TestDaemon::start(&[("ranking", &full)]);
    d.run_job("ranking");
    // The same data again: nothing changed, and the gate measured so.
    d.run_job("ranking");
    let same = &d.history("ranking")[0];
    assert_eq!(same["status"], "ok", "{same}");
    assert_eq!(same["gate"]["changed_share"], 0.0, "{same}");
    assert!(same["gate"]["score_psi"].as_f64().unwrap().abs() < 1e-9, "{same}");
    let all_users = same["users"].as_u64().unwrap();

    // Half the users: held, and version 2 keeps serving the users it lost.
    let users_path = root().join("models/ranking/users.csv").display().to_string();
    let (half, lost) = cut_users(d.dir.path(), |n| n / 2);
    d.write_job("ranking", &full.replace(&users_path, &half.display().to_string()));
    d.cli(&["reload"]);
    let out = d.cli(&["run", "ranking"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    let needed = (all_users as f64 * 0.8).ceil() as u64;
    let want = format!(
        "was gated: table ranking version 3 held by its gate: {} users, fewer than min_users_ratio 0.8 of the current version's {all_users} (at least {needed})",
        all_users / 2
    );
    assert!(said.contains(&want), "{said}");
    let run = &d.history("ranking")[0];
    assert_eq!((run["status"].as_str(), run["version"].as_u64()), (Some("gated"), Some(3)), "{run}");
    assert_eq!(list_len(&d, &lost[0]), 10, "the current version still serves {}", lost[0]);
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("ranking: current version 2, serving version 2"), "{status}");
    assert!(status.contains("version 3:") && status.contains("HELD by its gate"), "{status}");

    // Promoted, it is served and no longer held.
    let promoted = String::from_utf8_lossy(&d.cli(&["promote", "ranking", "3"]).stdout).into_owned();
    assert!(promoted.starts_with("OK table ranking version 3 promoted"), "{promoted}");
    assert_eq!(list_len(&d, &lost[0]), 0, "version 3 has no list for {}", lost[0]);

    // A quarter now: held again. Held versions survive a restart as held: version 3 keeps
    // serving the users version 4 lost.
    let (quarter, lost_again) = cut_users(d.dir.path(), |n| n / 4);
    d.write_job("ranking", &full.replace(&users_path, &quarter.display().to_string()));
    d.cli(&["reload"]);
    assert!(!d.cli(&["run", "ranking"]).status.success());
    let mut d = d;
    assert!(d.stop(), "{}", d.log());
    d.restart();
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("current version 3") && status.contains("version 4:"), "{status}");
    assert!(status.contains("HELD by its gate"), "{status}");
    assert_eq!(list_len(&d, &lost_again[0]), 10, "version 3 still serves {}", lost_again[0]);
    // A default rollback skips the held version 4 (and goes back to 2); forward to 3 again.
    let back = String::from_utf8_lossy(&d.cli(&["rollback", "ranking"]).stdout).into_owned();
    assert!(back.starts_with("OK table ranking version 2"), "{back}");
    assert!(d.cli(&["rollback", "ranking", "3"]).status.success());

    // Discarded: gone, its number not used again; the current version is not discardable.
    let refused = d.cli(&["discard", "ranking", "3"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("table `ranking` has no held version 3 (held: 4)"));
    let discarded = String::from_utf8_lossy(&d.cli(&["discard", "ranking", "4"]).stdout).into_owned();
    assert_eq!(discarded.trim(), "OK table ranking version 4 discarded");
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(!status.contains("version 4:") && status.contains("current version 3"), "{status}");
    let verify = String::from_utf8_lossy(&d.cli(&["verify"]).stdout).into_owned();
    assert!(verify.starts_with("OK"), "no data of the discarded version is left: {verify}");
    d.write_job("ranking", &full);
    d.cli(&["reload"]);
    assert!(d.run_job("ranking").contains("published table ranking version 5"), "4 is not used again");
    assert!(d.stop(), "{}", d.log());
}
