//! The ops dashboard in a real browser: headless Chromium (Debian's `chromium`, which
//! `scripts/setup.sh --tests` installs) loads the page from a running daemon, runs its
//! script, and the rendered page is checked against what the daemon's sockets say. A
//! screenshot goes to the test's work folder and to `target/dashboard/dashboard.png`
//! (docs/operations.md shows a copy).

use std::path::Path;
use std::process::Command;

use crate::util::{TestDaemon, free_port, http_get, http_get_as, plugins_dir, root, shipped_job};

/// Chromium, headless, on `url`, with `args` (`--dump-dom` or `--screenshot=...`): its
/// stdout and stderr. The profile lives in `work` so runs do not share state.
fn chromium(work: &Path, url: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", work.join("chromium-profile").display()))
        // console messages to stderr, to look for errors
        .args(["--enable-logging=stderr", "--v=0"])
        // let the page's fetches finish before the DOM is taken
        .args(["--virtual-time-budget=10000", "--window-size=1280,1650"])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (scripts/setup.sh --tests installs Debian's chromium package)");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "chromium failed: {stderr}");
    (stdout, stderr)
}

/// Chromium's log lines of the page's console (`INFO:CONSOLE:<line>] "<message>", ...`).
fn console_messages(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

#[test]
fn dashboard_renders_jobs_runs_tables_and_a_users_lists_in_a_browser() {
    assert!(plugins_dir().join("librecd_faulty.so").is_file(), "build the workspace first (make test does)");
    let port = free_port();
    let ranking = format!("{}\n[gate]\nmax_changed_share = 1.0\n", shipped_job("ranking"));
    // Markup in what the daemon reports must show as text, never run.
    let failing = "description = \"<img src=x onerror=alert(1)> fails\"\nplugin = \"faulty\"\ntable = \"faulty\"\n[params]\nmode = \"error\"\n";
    let d = TestDaemon::start_with(
        &[
            ("ranking", &ranking),
            ("diversity", &shipped_job("diversity")),
            ("cold-start", &shipped_job("cold-start")),
            ("errs", failing),
        ],
        &format!("metrics_listen = \"127.0.0.1:{port}\"\ndashboard = true\n"),
    );
    d.run_job("cold-start");
    // Each ranking version's quality, recorded by `recd eval --record` for the charts.
    let truth = root().join("data/demo/retail.parquet");
    let eval = |table: &str| {
        let out = d.cli(&["eval", table, "--truth", truth.to_str().unwrap(), "--cutoff", "2011-11-01", "--record"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    d.run_job("ranking");
    eval("ranking");
    d.run_job("ranking");
    eval("ranking");
    let ok_runs = |job: &str| d.history(job).iter().filter(|r| r["status"] == "ok").count();
    d.wait_for("two diversity runs after ranking", 60, || (ok_runs("diversity") >= 2).then_some(()));
    assert!(!d.cli(&["run", "errs"]).status.success());

    // The JSON the page draws from agrees with the admin socket.
    let (head, body) = http_get(port, "/api/overview");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
    let runs = overview["runs"].as_array().unwrap();
    assert_eq!(runs.iter().filter(|r| r["job"] == "ranking" && r["status"] == "ok").count(), 2, "{body}");
    assert_eq!(runs.iter().filter(|r| r["job"] == "errs" && r["status"] == "failed").count(), 1, "{body}");
    let cold = overview["jobs"].as_array().unwrap().iter().find(|j| j["name"] == "cold-start").unwrap();
    assert_eq!(cold["timezone"], "Europe/London");
    let next = cold["next"][0].as_str().unwrap();
    assert!(next.contains("T02:30:00+00:00") || next.contains("T02:30:00+01:00"), "{cold}");
    let ranking_table = overview["tables"].as_array().unwrap().iter().find(|t| t["name"] == "ranking").unwrap();
    assert_eq!(ranking_table["serving"], 2);
    let v2 = &ranking_table["versions"][1];
    assert!(v2["gate"]["changed_share"].is_number(), "{ranking_table}");
    for v in ranking_table["versions"].as_array().unwrap() {
        // The demo's lists leave out what a user bought, after the cut-off too, so they
        // hit nothing (docs/operations.md says so).
        assert_eq!(v["eval"]["metrics"]["hit_rate@k"], 0.0, "{v}");
        assert!(v["eval"]["metrics"]["coverage"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    }
    let (_, user) = http_get(port, "/api/user?id=17850");
    let user: serde_json::Value = serde_json::from_str(&user).unwrap();
    let list = |table: &str| user["tables"].as_array().unwrap().iter().find(|t| t["table"] == table).unwrap().clone();
    let mut conn = d.redis();
    let want: Vec<String> = redis::cmd("ZREVRANGE").arg("ranking:17850").arg(0).arg(-1).query(&mut conn).unwrap();
    let ranking_list = list("ranking");
    let got: Vec<&str> =
        ranking_list["entries"].as_array().unwrap().iter().map(|e| e["item"].as_str().unwrap()).collect();
    assert_eq!(got, want);
    // A user no table has: what the fallbacks give apps, marked as not their own.
    let (_, nobody) = http_get(port, "/api/user?id=no-such-user");
    let nobody: serde_json::Value = serde_json::from_str(&nobody).unwrap();
    let fallback = nobody["tables"].as_array().unwrap().iter().find(|t| t["table"] == "ranking").unwrap();
    let default: Vec<String> =
        redis::cmd("ZREVRANGE").arg("ranking:no-such-user").arg(0).arg(-1).query(&mut conn).unwrap();
    assert_eq!(fallback["fallback"], true);
    assert_eq!(fallback["source"], "cold-start:__default__");
    assert_eq!(fallback["version"], 1, "cold-start's version, not ranking's");
    let items: Vec<&str> =
        fallback["entries"].as_array().unwrap().iter().map(|e| e["item"].as_str().unwrap()).collect();
    assert_eq!(items, default);
    // Read-only: nothing but GET, and nothing but this origin.
    let (head, _) = http_get(port, "/app.js");
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{head}");
    // A request for another host name (DNS rebinding) is refused.
    let (refused, _) = http_get_as(port, &format!("rebind.example:{port}"), "/api/overview");
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

    // The page, rendered by Chromium with its script run and its fetches answered.
    let work = d.dir.path();
    let url = format!("http://127.0.0.1:{port}/?user=17850");
    // The page writes nothing to the console: any message there is an error. First, that
    // such a message is seen at all.
    let bad = "data:text/html,<script>console.error('seen');null.x</script>";
    let (_, bad_log) = chromium(work, bad, &["--dump-dom"]);
    assert_eq!(console_messages(&bad_log).len(), 2, "console lines not found in:\n{bad_log}");
    let (dom, log) = chromium(work, &url, &["--dump-dom"]);
    let messages = console_messages(&log);
    assert!(messages.is_empty(), "console messages:\n{}", messages.join("\n"));
    assert!(dom.contains(r#"<div id="page-errors" class="banner error" hidden="">"#), "page errors:\n{dom}");
    assert!(dom.contains("updated "), "the overview was never drawn:\n{dom}");
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt; fails") && !dom.contains("<img"), "markup ran:\n{dom}");
    for job in ["ranking", "diversity", "cold-start", "errs"] {
        assert!(dom.contains(&format!(r#"<tr data-job="{job}">"#)), "no row for job {job}:\n{dom}");
    }
    assert_eq!(dom.matches(r#"data-status="failed""#).count(), 1, "one failed run in the timeline");
    assert!(dom.matches(r#"data-status="ok""#).count() >= 5, "ok runs in the timeline:\n{dom}");
    assert!(dom.contains(r#"<tr class="serving" data-version="2">"#), "ranking's serving version:\n{dom}");
    assert!(dom.contains("ranking: share of lists changed"), "the quality chart:\n{dom}");
    for chart in ["ranking ndcg@k", "ranking recall@k", "ranking coverage"] {
        assert!(dom.contains(&format!(r#"data-eval="{chart}""#)), "no {chart} chart:\n{dom}");
    }
    assert!(dom.contains("k=10, all users, fallback answers scored; latest: version 2"), "eval setting:\n{dom}");
    let ndcg = dom.split(r#"data-eval="ranking ndcg@k""#).nth(1).and_then(|c| c.split("</svg>").next()).unwrap();
    assert!(ndcg.contains(">v1</text>") && ndcg.contains(">v2</text>"), "both versions charted:\n{ndcg}");
    // The user's lists as the page shows them: ranking's items in order, and diversity's
    // with the titles of the demo items file.
    let shown = |table: &str| -> Vec<String> {
        let start = dom
            .find(&format!(r#"<div class="list" data-table="{table}">"#))
            .unwrap_or_else(|| panic!("no {table} list:\n{dom}"));
        let end = dom[start..].find("</table>").map(|e| start + e).unwrap();
        dom[start..end].split(r#"<tr data-item=""#).skip(1).map(|s| s[..s.find('"').unwrap()].to_string()).collect()
    };
    assert_eq!(shown("ranking"), want);
    let diversity: Vec<String> =
        redis::cmd("ZREVRANGE").arg("diversity:17850").arg(0).arg(-1).query(&mut conn).unwrap();
    assert_eq!(shown("diversity"), diversity);
    let titles = crate::oracle::item_descriptions();
    for (rank, item) in diversity.iter().enumerate() {
        let title = titles[item].replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let row = format!(
            r#"data-item="{item}"><td class="muted">{}</td><td class="mono">{item}</td><td>{title}</td>"#,
            rank + 1
        );
        assert!(dom.contains(&row), "no row {row:?} in:\n{dom}");
    }

    let shot = work.join("dashboard.png");
    chromium(work, &url, &[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());
    let keep = root().join("target/dashboard");
    std::fs::create_dir_all(&keep).unwrap();
    std::fs::copy(&shot, keep.join("dashboard.png")).unwrap();
}
