//! Bad job files get an error naming the file and the field or line, from `recd validate`
//! and from a reload of the running daemon, which keeps serving and keeps the last good
//! definition of a broken file.

use crate::util::{TestDaemon, ranking_job, shipped_job};

fn bad_files() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let good = ranking_job("");
    vec![
        ("syntax", good.replace("k = 10", "k = "), vec!["syntax.toml:", "string values must be quoted", "expected"]),
        (
            "unknown_field",
            format!("colour = \"red\"\n{good}"),
            vec!["unknown_field.toml:1:1", "unknown field `colour`"],
        ),
        (
            "no_plugin",
            good.replace("plugin = \"ranking\"", "plugin = \"nosuch\""),
            vec!["no_plugin.toml:", "field `plugin`", "unknown plugin", "librecd_nosuch.so"],
        ),
        (
            "no_model",
            good.replace("mf.onnx", "missing.onnx"),
            vec!["no_model.toml:", "field `model`", "missing.onnx does not exist"],
        ),
        (
            "bad_cron",
            good.replace("0 3 * * *", "0 25 * * *"),
            vec!["bad_cron.toml:", "field `schedule`", "\"0 25 * * *\""],
        ),
    ]
}

const SHIPPED: [&str; 5] = ["ranking", "cold-start", "diversity", "churn", "churn-retention"];

/// `recd validate` on `text` (written as `<name>.toml`) exits 1 and says each of `wants`.
fn assert_validate_fails(d: &TestDaemon, name: &str, text: &str, wants: &[&str]) {
    let file = d.dir.path().join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let out = d.cli(&["validate", file.to_str().unwrap()]);
    let msg = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{name}: {msg}");
    for want in wants {
        assert!(msg.contains(want), "{name}: want {want:?} in {msg:?}");
    }
}

#[test]
fn validate_names_file_and_field_for_each_bad_file() {
    let d = TestDaemon::start(&[]);
    for (name, text, wants) in bad_files() {
        assert_validate_fails(&d, name, &text, &wants);
    }
    // all files at once, as a job repository's CI would: every error, exit 1
    let files: Vec<String> = bad_files()
        .iter()
        .map(|(name, _, _)| d.dir.path().join(format!("{name}.toml")).display().to_string())
        .collect();
    let args: Vec<&str> = std::iter::once("validate").chain(files.iter().map(String::as_str)).collect();
    let out = d.cli(&args);
    let msg = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(msg.lines().filter(|l| l.starts_with("error ")).count(), bad_files().len(), "{msg}");
    let good = d.dir.path().join("good.toml");
    std::fs::write(&good, ranking_job("")).unwrap();
    let out = d.cli(&["validate", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Strategy params, input columns and model bindings are judged before any run, by the
/// plugin and the model in a probe process; each error names the job key at fault.
#[test]
fn validate_checks_params_columns_and_model_bindings() {
    let d = TestDaemon::start(&[]);
    let ranking = shipped_job("ranking");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "negative_half_life",
            shipped_job("cold-start").replace("half_life_days = 30", "half_life_days = -3"),
            vec!["field `params.half_life_days`", "must be a positive number of days, got -3"],
        ),
        (
            // a type error names the key and its line, not a position in internal JSON
            "wrong_type",
            shipped_job("cold-start").replace("k = 10\n", "k = \"ten\"\n"),
            vec!["wrong_type.toml:15: field `params.k`: params.k: invalid type: string \"ten\", expected usize\n"],
        ),
        (
            "unknown_key",
            shipped_job("cold-start").replace("half_life_days = 30", "halflife_days = 30"),
            vec![
                "unknown_key.toml:16: field `params.halflife_days`: params.halflife_days: unknown field `halflife_days`",
            ],
        ),
        (
            "lambda",
            shipped_job("diversity").replace("lambda = 0.7", "lambda = 1.5"),
            vec!["field `params.lambda`", "must be in [0, 1], got 1.5"],
        ),
        (
            "unknown_column",
            shipped_job("cold-start").replace("segment_column = \"country\"", "segment_column = \"Country\""),
            vec!["field `params.segment_column`", "input `interactions` has no column `Country`"],
        ),
        (
            "unbound_model_input",
            ranking.replace("item = \"item\"\n", ""),
            vec![
                "field `model_inputs`",
                "model input `item` is not bound to a feature (the model's inputs: user, item)",
            ],
        ),
        (
            "unknown_model_input",
            ranking.replace("item = \"item\"\n", "item = \"item\"\nprice = \"items.price\"\n"),
            vec!["field `model_inputs.price`", "the model has no input `price`"],
        ),
        (
            "unknown_feature",
            shipped_job("churn").replace("frequency = \"frequency\"", "frequency = \"visits\""),
            vec!["field `model_inputs.frequency`", "unknown feature `visits`"],
        ),
        (
            "feature_column",
            ranking.replace("item = \"item\"\n", "item = \"items.popularity\"\n"),
            vec!["field `model_inputs.item`", "input `items` has no column `popularity`"],
        ),
    ];
    for (name, text, wants) in cases {
        assert!(!SHIPPED.iter().any(|j| shipped_job(j) == text), "{name}: the case must change the file");
        assert_validate_fails(&d, name, &text, &wants);
    }
    // and the shipped jobs pass, checked together (diversity runs after ranking)
    let shipped = d.dir.path().join("shipped");
    std::fs::create_dir_all(&shipped).unwrap();
    let mut args = vec!["validate".to_string()];
    for job in SHIPPED {
        let file = shipped.join(format!("{job}.toml"));
        std::fs::write(&file, shipped_job(job)).unwrap();
        args.push(file.display().to_string());
    }
    let out = d.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_broken_job_file_keeps_its_last_good_definition_and_the_table_keeps_serving() {
    let d = TestDaemon::start(&[("ranking", &ranking_job(""))]);
    d.run_job("ranking");
    let mut conn = d.redis();
    let before: Vec<String> = redis::cmd("ZREVRANGE").arg("ranking:17850").arg(0).arg(-1).query(&mut conn).unwrap();

    for (name, text, wants) in bad_files() {
        // break the live job file itself, and drop a new bad file beside it
        std::fs::write(d.jobs_dir().join("ranking.toml"), &text).unwrap();
        std::fs::write(d.jobs_dir().join(format!("{name}.toml")), &text).unwrap();
        let out = d.cli(&["reload"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: reload should report errors");
        assert!(err.contains("ranking.toml"), "{name}: {err}");
        for want in &wants[1..] {
            assert!(err.contains(want), "{name}: want {want:?} in {err:?}");
        }
        let now: Vec<String> = redis::cmd("ZREVRANGE").arg("ranking:17850").arg(0).arg(-1).query(&mut conn).unwrap();
        assert_eq!(now, before, "{name}: the table changed");
        std::fs::remove_file(d.jobs_dir().join(format!("{name}.toml"))).unwrap();
    }
    // the last good definition of ranking.toml still runs
    let report = d.run_job("ranking");
    assert!(report.contains("version 2"), "{report}");
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("job file errors:") && status.contains("ranking.toml"), "{status}");
}

/// The cases of `tests/fixtures/invalid_jobs.txt` (also checked message by message in the
/// unit tests of `daemon/src/job.rs`): (name, job text, message with `{file}`).
fn invalid_cases() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(crate::util::root().join("tests/fixtures/invalid_jobs.txt")).unwrap();
    text.split("\n### ")
        .skip(1)
        .map(|chunk| {
            let (name, rest) = chunk.split_once('\n').unwrap();
            let (job, want) = rest.split_once(">>> ").unwrap();
            (name.to_string(), job.to_string(), want.trim_end().to_string())
        })
        .collect()
}

#[test]
fn no_invalid_file_disturbs_the_running_schedule() {
    let good = "schedule = \"0 */10 * * * *\"\nplugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n";
    let d = TestDaemon::start(&[("j", good)]);
    d.run_job("j");
    let jobs = || String::from_utf8_lossy(&d.cli(&["jobs", "--next", "2"]).stdout).into_owned();
    let schedule_before = jobs();
    assert!(schedule_before.contains("j: schedule \"0 */10 * * * *\" (UTC)"), "{schedule_before}");
    let file = d.jobs_dir().join("j.toml").display().to_string();
    let cases = invalid_cases();
    assert!(cases.len() >= 30);
    for (name, text, want) in &cases {
        d.write_job("j", text);
        let out = d.cli(&["reload"]);
        let err = String::from_utf8_lossy(&out.stderr);
        let want = want.replace("{file}", &file);
        assert!(err.contains(&want), "{name}:\n  got: {err}\n want: {want}");
        let now = jobs();
        // same definition, same next fire times (unless a 10-minute boundary just passed)
        assert!(now.contains("j: schedule \"0 */10 * * * *\" (UTC)"), "{name} disturbed the schedule:\n{now}");
    }
    // the schedule may have fired during the loop (it fires every ten minutes), so the
    // version number is not known; that the run publishes is what matters
    let report = d.run_job("j");
    assert!(report.contains("published table t version"), "{report}");
}
