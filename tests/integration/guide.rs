//! docs/plugin-guide.md is executable: this test runs every ```sh block of the guide, in
//! order, in an empty folder outside the checkout, as a reader would (the SDK a path
//! dependency on the checkout, a `recd.toml` and a job of the reader's own), then checks
//! the new plugin ran as a job, its table is served, and the checkout was left alone.

use std::process::Command;

use crate::util::root;

/// The guide's shell blocks, in order.
fn guide_steps() -> String {
    let text = std::fs::read_to_string(root().join("docs/plugin-guide.md")).unwrap();
    let mut script = String::new();
    let mut in_sh = false;
    for line in text.lines() {
        match (in_sh, line.trim_end()) {
            (false, "```sh") => in_sh = true,
            (true, "```") => in_sh = false,
            (true, l) => {
                script.push_str(l);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

#[test]
fn the_plugin_guide_works_word_by_word_from_an_empty_folder() {
    // A reader's empty folder, outside the checkout; `RECD` names the checkout, whose
    // `make demo` built recd (here: this test's build).
    let dir = tempfile::tempdir().unwrap();
    let recd_bin = std::path::PathBuf::from(crate::util::RECD);
    assert_eq!(
        recd_bin.parent(),
        Some(root().join("target/release").as_path()),
        "the guide runs $RECD/target/release/recd"
    );
    let script = guide_steps();
    assert!(script.contains("cargo build --release\n"), "the guide lost its build step");
    assert!(!script.contains("sed -i"), "the guide edits files outside its folder");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("RECD", root())
        .env("RECD_LOG", "warn")
        // a reader's own build: a target folder of its own, not the workspace's
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("bash");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the guide's steps failed:\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(stdout.contains("ok    ") && stdout.contains("hello.toml"), "{stdout}");
    assert!(stdout.contains("published table hello version 1"), "{stdout}");
    let listed = stdout.lines().skip_while(|l| !l.contains("published table hello")).skip(1).take(10).count();
    assert_eq!(listed, 10, "5 items with their scores from redis-cli:\n{stdout}");
    assert!(stdout.contains("hello 0.1.0 abi 1.3 sha256 "), "{stdout}");
    // everything it made is in the reader's folder; the checkout is as it was
    let plugin = dir.path().join("hello-plugin");
    assert!(plugin.join("target/release/librecd_hello.so").is_file());
    assert!(plugin.join("var/data").is_dir() && plugin.join("jobs/hello.toml").is_file());
    assert!(!root().join("jobs/hello.toml").exists() && !root().join("plugins/hello").exists());
}
