//! `device = "cpu" | "cuda" | "auto"`: on a machine where ONNX Runtime cannot use CUDA
//! (CI's; the CPU build of onnxruntime has no CUDA provider), `cuda` fails the run with the
//! reason and publishes nothing, `auto` scores on the CPU, says so, and records "cpu" as
//! the provider that ran. On a GPU host the same jobs record "cuda" instead; this test
//! reads which case it is in from the ONNX Runtime build that `make setup` installed.

use crate::util::{TestDaemon, ranking_job};

fn with_device(device: &str) -> String {
    let job = ranking_job("");
    assert!(job.contains("device = \"cpu\""), "the shipped ranking job sets device = \"cpu\"");
    job.replace("device = \"cpu\"", &format!("device = \"{device}\""))
}

/// Whether the installed ONNX Runtime holds the CUDA provider library at all.
fn cuda_provider_installed() -> bool {
    let lib = crate::util::onnxruntime();
    lib.parent().is_some_and(|dir| dir.join("libonnxruntime_providers_cuda.so").exists())
}

#[test]
fn cuda_fails_clearly_and_auto_falls_back_to_cpu() {
    if cuda_provider_installed() {
        // A CUDA build (a GPU host): the strict failure cannot be shown here; instead a
        // strict run must succeed on CUDA, and `auto` must pick CUDA too.
        let d = TestDaemon::start(&[("ranking", &with_device("cuda")), ("ranking_auto", &with_device("auto"))]);
        for job in ["ranking", "ranking_auto"] {
            d.run_job(job);
            assert_eq!(d.history(job)[0]["provider"], "cuda", "{job}: {}", d.log());
        }
        return;
    }
    let d = TestDaemon::start(&[("ranking", &with_device("cuda")), ("ranking_auto", &with_device("auto"))]);

    let out = d.cli(&["run", "ranking"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a strict CUDA run succeeded without CUDA: {stderr}");
    assert!(stderr.contains("device = \"cuda\""), "the error names the job setting: {stderr}");
    assert!(stderr.contains("CUDA"), "the error says CUDA cannot be used: {stderr}");
    let failed = &d.history("ranking")[0];
    assert_eq!(failed["status"], "failed", "{failed}");
    let mut conn = d.redis();
    let exists: i64 = redis::cmd("EXISTS").arg("ranking:17850").query(&mut conn).unwrap();
    assert_eq!(exists, 0, "a failed run published nothing");

    let report = d.run_job("ranking_auto");
    assert!(report.contains("(provider cpu)"), "{report}");
    let worker = &d.history("ranking_auto")[0]["worker"];
    let calls = worker["score_calls"].as_u64().unwrap();
    assert!(calls > 0 && report.contains("; scoring ") && report.contains(&format!(" in {calls} calls")), "{report}");
    assert!(
        report.contains(&format!("; worker peak {} MiB", worker["peak_rss_bytes"].as_u64().unwrap() >> 20)),
        "{report}"
    );
    let run = &d.history("ranking_auto")[0];
    assert_eq!(run["status"], "ok", "{run}");
    assert_eq!(run["provider"], "cpu", "the provider that actually ran is recorded: {run}");
    assert!(d.log().contains("device = \"auto\": CUDA unavailable"), "auto says it fell back:\n{}", d.log());
    let warnings = run["warnings"].as_array().unwrap_or_else(|| panic!("no warnings in {run}"));
    assert!(
        warnings.len() == 1 && warnings[0].as_str().unwrap().starts_with("device = \"auto\": CUDA unavailable ("),
        "the history keeps the fallback: {run}"
    );
    let list: Vec<(String, f64)> =
        redis::cmd("ZREVRANGE").arg("ranking_auto:17850").arg(0).arg(9).arg("WITHSCORES").query(&mut conn).unwrap();
    assert_eq!(list.len(), 10, "the fallback run served its table");
}
