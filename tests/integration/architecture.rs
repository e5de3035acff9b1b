//! ARCHITECTURE.md's import rules, checked by reading the source tree, so they cannot rot
//! silently: each test here is one "Architecture Invariant:" line that a reading of the code
//! can decide. Code under `#[cfg(test)]` is left out (tests may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir` (relative to the root), with its source up to its first
/// `#[cfg(test)]`, comments removed.
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let base = root();
    let mut files = Vec::new();
    walk(&base.join(dir), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: String = code
                .lines()
                .map(|line| match line.trim_start() {
                    l if l.starts_with("//") => "",
                    _ => line,
                })
                .collect::<Vec<_>>()
                .join("\n");
            let rel = path.strip_prefix(&base).unwrap().to_string_lossy().replace('\\', "/");
            (rel, code)
        })
        .collect()
}

/// The top-level module of `core/src` a file belongs to (`core/src/api/edges.rs` -> `api`).
fn core_module(rel: &str) -> String {
    let inner = rel.strip_prefix("core/src/").unwrap();
    inner.split('/').next().unwrap().trim_end_matches(".rs").to_string()
}

/// The top-level core modules a file's code names: `crate::x` and `crate::{x, y::Z}`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            // Top-level items of the group: split at commas outside braces.
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain(std::iter::once(',')) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let name: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if !name.is_empty() {
                            out.insert(name);
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Files under `dir` whose code contains any of `needles`, with the needle found.
fn offenders(files: &[(String, String)], needles: &[&str], allowed: impl Fn(&str) -> bool) -> Vec<String> {
    files
        .iter()
        .filter(|(rel, _)| !allowed(rel))
        .flat_map(|(rel, code)| {
            needles
                .iter()
                .filter(|n| code.contains(**n))
                .map(move |n| format!("{rel}: `{n}`"))
        })
        .collect()
}

#[test]
fn core_modules_import_one_another_without_a_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, code) in sources("core/src") {
        let module = core_module(&rel);
        let names = imports(&code);
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(names.into_iter().filter(|n| *n != module));
    }
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("core's modules import one another in a circle: {}", cycle.join(" -> "));
        }
    }
    // The check itself sees imports (it would pass vacuously on an empty graph).
    assert!(graph.get("proxy").is_some_and(|p| p.contains("routing")), "{graph:?}");
}

#[test]
fn the_store_knows_nothing_of_http_config_or_plugins() {
    let store = sources("core/src/store");
    assert!(!store.is_empty());
    let mut bad = offenders(
        &store,
        &[
            "http::",
            "hyper",
            "portcullis_plugin_sdk",
            "crate::config",
            "crate::plugins",
            "crate::api",
        ],
        |_| false,
    );
    for (rel, code) in &store {
        for name in imports(code) {
            if !["model", "ids", "store"].contains(&name.as_str()) {
                bad.push(format!("{rel}: imports crate::{name}"));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn storage_crates_are_named_only_inside_the_store() {
    let core = sources("core/src");
    let bad = offenders(&core, &["sled::", "bincode::"], |rel| {
        rel.starts_with("core/src/store/sled/")
    });
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn no_plugin_crate_depends_on_core() {
    let mut manifests = Vec::new();
    for dir in ["plugins", "tests/plugins"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let manifest = entry.unwrap().path().join("Cargo.toml");
            if manifest.exists() {
                manifests.push(manifest);
            }
        }
    }
    assert!(manifests.len() >= 5, "{manifests:?}");
    for manifest in manifests {
        let text = std::fs::read_to_string(&manifest).unwrap();
        let value: toml::Value = text.parse().unwrap();
        for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let deps = value.get(table).and_then(|d| d.as_table());
            for (name, spec) in deps.into_iter().flatten() {
                let package = spec.get("package").and_then(|p| p.as_str()).unwrap_or(name);
                assert_ne!(package, "portcullis", "{} depends on core", manifest.display());
            }
        }
    }
}

#[test]
fn wall_clock_is_read_only_by_the_clock() {
    let core = sources("core/src");
    let bad = offenders(&core, &["SystemTime::now", "UNIX_EPOCH"], |rel| {
        rel == "core/src/clock.rs"
    });
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn unsafe_code_exists_only_at_the_plugin_boundary() {
    let mut files = sources("core/src");
    files.extend(sources("plugins"));
    let bad = offenders(&files, &["unsafe "], |rel| {
        rel == "core/src/plugins/dynamic.rs" || rel == "plugins/sdk/src/abi.rs"
    });
    assert!(bad.is_empty(), "{bad:#?}");
}
