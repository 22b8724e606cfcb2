//! The docs must not cite what is gone: every file or folder path in backticks names a
//! tracked file or folder of this repository, and every Rust path the architecture doc
//! cites (`store::Store::recover`, `Daemon::unrecorded`) ends in a name that the code still
//! defines. A rename that leaves a doc behind fails here.

use std::collections::HashSet;
use std::process::Command;

use crate::util::root;

/// Docs that cite code, checked for paths.
const DOCS: &[&str] = &[
    "README.md",
    "docs/ARCHITECTURE.md",
    "docs/internals.md",
    "docs/operations.md",
    "docs/plugin-abi.md",
    "docs/jobs.md",
    "docs/guarantees.md",
];

/// Folders a doc may cite that git does not track (made by the build, setup or `make fuzz`).
const MADE_BY_TOOLS: &[&str] = &["target/", ".deps/", "var/", "fuzz/corpus/"];

/// Files a doc names as what a test writes, not as part of the repository.
const WRITTEN_BY_TESTS: &[&str] = &["zz.toml"];

fn tracked_files() -> Vec<String> {
    let out = Command::new("git").args(["ls-files"]).current_dir(root()).output().expect("git");
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// The text between backticks, outside fenced code blocks.
fn code_spans(text: &str) -> Vec<&str> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            spans.extend(line.split('`').skip(1).step_by(2));
        }
    }
    spans
}

/// A span that reads as a repository path: no spaces or placeholders, and a file
/// extension of ours or a trailing slash.
fn as_path(span: &str) -> Option<&str> {
    const EXTENSIONS: &[&str] = &[".rs", ".md", ".py", ".sh", ".toml", ".h", ".c", ".onnx", ".csv", ".parquet"];
    let placeholder = span.contains([' ', '<', '*', '{', '$', '=']);
    let absolute = span.starts_with(['/', '~', '.']) || span.contains("://");
    let shaped = EXTENSIONS.iter().any(|e| span.ends_with(e)) || (span.ends_with('/') && span.len() > 1);
    (!placeholder && !absolute && shaped).then_some(span)
}

#[test]
fn docs_cite_files_and_folders_that_exist() {
    let files = tracked_files();
    let mut folders: HashSet<String> = HashSet::new();
    for f in &files {
        let mut at = 0;
        while let Some(i) = f[at..].find('/') {
            at += i + 1;
            folders.insert(f[..at].to_string());
        }
    }
    // a doc may cite a path relative to a folder it names nearby (`server/cmd/get.rs`,
    // `get.rs`), so a cited path must be a whole tracked path or end one
    let names = |p: &str| {
        let ends = |full: &String| full == p || full.ends_with(&format!("/{p}"));
        files.iter().any(ends)
            || folders.iter().any(ends)
            || MADE_BY_TOOLS.iter().any(|m| p.starts_with(m))
            || WRITTEN_BY_TESTS.contains(&p)
    };
    let mut checked = 0;
    let mut gone = Vec::new();
    for doc in DOCS {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        for path in code_spans(&text).into_iter().filter_map(as_path) {
            checked += 1;
            if !names(path) {
                gone.push(format!("{doc}: `{path}`"));
            }
        }
    }
    assert!(gone.is_empty(), "docs cite paths that no tracked file has:\n{}", gone.join("\n"));
    assert!(checked > 200, "only {checked} cited paths found: the scan lost its way");
}

/// Names the workspace's Rust and C sources define: items, fields, enum variants, macros.
fn defined_names() -> HashSet<String> {
    let mut names = HashSet::new();
    for f in tracked_files().iter().filter(|f| f.ends_with(".rs") || f.ends_with(".h") || f.ends_with(".c")) {
        let Ok(text) = std::fs::read_to_string(root().join(f)) else { continue };
        for line in text.lines() {
            let words: Vec<&str> = line
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '!'))
                .filter(|w| !w.is_empty())
                .collect();
            for pair in words.windows(2) {
                let keyword =
                    ["fn", "struct", "enum", "mod", "const", "static", "trait", "type", "macro_rules!", "define"];
                if keyword.contains(&pair[0]) {
                    names.insert(pair[1].to_string());
                }
            }
            // fields (`name: Type`) and variants (`Name,` `Name {` `Name(`) at a line's start
            let t = line.trim_start().trim_start_matches("pub(crate) ").trim_start_matches("pub ");
            let head: String = t.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !head.is_empty() && t[head.len()..].starts_with([':', ',', '{', '(', ' ']) {
                names.insert(head);
            }
        }
    }
    names
}

/// The Rust names a code span cites, if it is one: a path (`store::Store::recover`, checked
/// by its last segment), a type (`RunControl`, CamelCase) or an item or field with an
/// underscore (`check_trust`, `max_clients`). Other crates' paths are theirs to keep.
fn cited_rust_name(span: &str) -> Option<&str> {
    let foreign =
        ["std", "core", "tokio", "sled", "arrow", "arrow_array", "arrow_ipc", "ort", "libc", "serde", "tracing"];
    let path = span.trim_end_matches("()").trim_end_matches('!');
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_');
    let segments: Vec<&str> = path.split("::").collect();
    if segments.len() > 1 {
        return (segments.iter().all(|s| word(s)) && !foreign.contains(&segments[0]))
            .then(|| segments[segments.len() - 1]);
    }
    let camel = path.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && path.chars().nth(1).is_some_and(|c| c.is_ascii_lowercase());
    let snake = path.contains('_') && path.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    (word(path) && (camel || snake)).then_some(path)
}

#[test]
fn the_architecture_docs_cite_code_that_exists() {
    let defined = defined_names();
    let mut checked = 0;
    let mut gone = Vec::new();
    for doc in ["docs/ARCHITECTURE.md", "docs/internals.md"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        for span in code_spans(&text) {
            let Some(name) = cited_rust_name(span) else { continue };
            checked += 1;
            if !defined.contains(name) {
                gone.push(format!("{doc}: `{span}`"));
            }
        }
    }
    assert!(gone.is_empty(), "the architecture docs cite code that is gone:\n{}", gone.join("\n"));
    assert!(checked > 150, "only {checked} Rust names found: the scan lost its way");
}

#[test]
fn a_cited_name_is_told_from_prose() {
    assert_eq!(cited_rust_name("store::Store::recover()"), Some("recover"));
    assert_eq!(cited_rust_name("RunControl"), Some("RunControl"));
    assert_eq!(cited_rust_name("max_clients"), Some("max_clients"));
    assert_eq!(cited_rust_name("export_plugin!"), Some("export_plugin"));
    assert_eq!(cited_rust_name("std::sync::Arc"), None);
    assert_eq!(cited_rust_name("RESP3"), None);
    assert_eq!(cited_rust_name("overlap"), None);
    assert_eq!(cited_rust_name("jobs/*.toml"), None);
}
