//! docs/plugin-guide.md is executable: this test copies the checkout to a temp folder and
//! runs every ```sh block of the guide there, in order, as a reader would, then checks the
//! new plugin ran as a job and its table is served.

use std::path::Path;
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

/// The checkout's files (tracked and untracked, not ignored) copied to `dest`.
fn copy_checkout(dest: &Path) {
    let out = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(root())
        .output()
        .expect("git");
    for path in out.stdout.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        let rel = Path::new(std::str::from_utf8(path).unwrap());
        let (from, to) = (root().join(rel), dest.join(rel));
        if from.is_file() {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&from, &to).unwrap();
        }
    }
}

#[test]
fn the_plugin_guide_works_word_by_word() {
    let dir = tempfile::tempdir().unwrap();
    let checkout = dir.path().join("recd");
    copy_checkout(&checkout);
    // `make setup` has run in a reader's checkout: share this build's target folder, so
    // only the new plugin compiles (and recd, its deps and the ranking plugin are there).
    std::os::unix::fs::symlink(crate::util::plugins_dir().parent().unwrap(), checkout.join("target")).unwrap();
    let script = guide_steps();
    assert!(script.contains("cargo build --release -p recd-hello"), "the guide lost its build step");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&checkout)
        .env("RECD_LOG", "warn")
        .output()
        .expect("bash");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the guide's steps failed:\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(stdout.contains("ok    ") && stdout.contains("hello.toml"), "{stdout}");
    assert!(stdout.contains("published table hello version 1"), "{stdout}");
    let listed = stdout.lines().skip_while(|l| !l.contains("published table hello")).skip(1).take(10).count();
    assert_eq!(listed, 10, "5 items with their scores from redis-cli:\n{stdout}");
    assert!(stdout.contains("hello 0.1.0 abi 1.3 sha256 "), "{stdout}");
}
