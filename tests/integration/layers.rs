//! The daemon's modules form layers, never a loop: a module that imports another (any
//! `crate::<module>` in its code outside `#[cfg(test)]`) may not be imported back, even
//! through others. A new cycle fails here and names the modules on it. And the worker, a
//! child process that loads plugin and model code, imports only what a run needs: the
//! loader, the wire format, job and input types, and the table-input format, never the
//! daemon, the runner, the plugin registry, the scheduler or the sockets.

use std::collections::{BTreeMap, BTreeSet};

use crate::util::root;

/// Top-level module of each source file under `daemon/src` (`server/cmd/get.rs` is in
/// `server`), and the crate modules its non-test code names.
fn module_imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("daemon/src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let module = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            let names = graph.entry(module.clone()).or_default();
            names.extend(crate_paths(code).into_iter().filter(|m| *m != module));
        }
    }
    graph
}

/// The first segment of every `crate::a::...` path and of each path in `crate::{a, b::c}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for part in inner.split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != "self" {
                    names.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if name.chars().next().is_some_and(|c| c.is_lowercase()) {
                names.insert(name);
            }
        }
    }
    names
}

/// A cycle through `start`, if there is one: depth-first search for a path back to it.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let here = path.last().unwrap().clone();
        for next in graph.get(&here).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    walk(graph, start, &mut path, &mut seen).then_some(path)
}

#[test]
fn the_daemon_modules_import_each_other_without_cycles() {
    let graph = module_imports();
    assert!(graph.len() > 20, "only {} modules found: the scan lost its way", graph.len());
    assert!(graph["server"].contains("daemon") && graph["daemon"].contains("store"), "imports not seen: {graph:?}");
    let cycles: Vec<String> = graph.keys().filter_map(|m| cycle_through(&graph, m)).map(|c| c.join(" -> ")).collect();
    assert!(cycles.is_empty(), "the daemon's modules import each other in a loop:\n{}", cycles.join("\n"));
}

#[test]
fn the_worker_imports_only_what_a_run_needs() {
    let graph = module_imports();
    // `store` for one type, the table kind a run writes, never the store's code; `job` for
    // the types of a run's spec (inputs, device).
    let allowed = ["child", "fsutil", "job", "loader", "shard", "store", "tables", "wire"];
    let beyond: Vec<&String> = graph["worker"].iter().filter(|m| !allowed.contains(&m.as_str())).collect();
    assert!(beyond.is_empty(), "the worker imports {beyond:?}");
}

#[test]
fn a_cycle_is_found_and_named() {
    // the check itself, on a graph with a loop and one without
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
        ("d".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(cycle_through(&graph, "a"), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(cycle_through(&graph, "d"), None);
    assert_eq!(
        crate_paths("use crate::{job, wire::Message};\nlet x = crate::store::Store::open(); crate::X;"),
        BTreeSet::from(["job".into(), "wire".into(), "store".into()])
    );
}
