//! ARCHITECTURE.md's import rules, checked by reading the source tree, so they cannot rot
//! silently: each test here is one "Architecture Invariant:" line that a reading of the code
//! can decide. Code under `#[cfg(test)]` is left out (tests may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir` (relative to the root) that is not test code, with its source
/// less its `#[cfg(test)]` items and whole-line comments. A file that is a `#[cfg(test)] mod x;`
/// is test code.
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
    let read: Vec<(PathBuf, String, Vec<String>)> = files
        .into_iter()
        .map(|path| {
            let (code, test_modules) = without_test_items(&std::fs::read_to_string(&path).unwrap());
            (path, code, test_modules)
        })
        .collect();
    // The files of `#[cfg(test)] mod x;` declarations: `x.rs` or `x/mod.rs` beside a `mod.rs`,
    // `lib.rs` or `main.rs`, under `foo/` for a `foo.rs`.
    let test_files: BTreeSet<PathBuf> = read
        .iter()
        .flat_map(|(path, _, modules)| {
            let parent = path.parent().unwrap();
            let stem = path.file_stem().unwrap().to_string_lossy();
            let dir = if ["mod", "lib", "main"].contains(&stem.as_ref()) {
                parent.to_path_buf()
            } else {
                parent.join(stem.as_ref())
            };
            modules
                .iter()
                .flat_map(move |m| [dir.join(format!("{m}.rs")), dir.join(m).join("mod.rs")])
        })
        .collect();
    read.into_iter()
        .filter(|(path, _, _)| !test_files.contains(path))
        .map(|(path, code, _)| {
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

/// `text` without its `#[cfg(test)]` items, and the names of the modules among them declared
/// without a body (`mod x;`, whose file is test code).
fn without_test_items(text: &str) -> (String, Vec<String>) {
    const MARK: &str = "#[cfg(test)]";
    let mut code = String::new();
    let mut test_modules = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        code.push_str(&rest[..at]);
        let item = &rest[at + MARK.len()..];
        let end = item_end(item);
        let head = item[..end].trim();
        if let Some(declaration) = head.strip_suffix(';') {
            if let Some(name) = declaration.split_whitespace().last() {
                test_modules.push(name.to_string());
            }
        }
        rest = &item[end..];
    }
    code.push_str(rest);
    (code, test_modules)
}

/// Where the item that `code` starts with ends: after its first `;` outside braces, or after
/// the `}` that closes its first `{`. Braces in string literals (raw ones too) and character
/// literals are not counted.
fn item_end(code: &str) -> usize {
    let bytes = code.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'r' if bytes.get(i + 1).is_some_and(|b| *b == b'#' || *b == b'"')
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')) =>
            {
                let hashes = bytes[i + 1..].iter().take_while(|b| **b == b'#').count();
                if bytes.get(i + 1 + hashes) == Some(&b'"') {
                    let close = format!("\"{}", "#".repeat(hashes));
                    let body = i + 2 + hashes;
                    i = code[body..]
                        .find(&close)
                        .map_or(bytes.len(), |at| body + at + close.len());
                    continue;
                }
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 2,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            b';' if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
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
    // A crate's path (`sled::Db`, `use bincode::..`), not the store's own module of that name
    // (`self::sled::SledStore`, through which `store::open` opens the backend).
    fn names_crate(code: &str, krate: &str) -> bool {
        let path = format!("{krate}::");
        code.match_indices(&path).any(|(at, _)| {
            let before = &code[..at];
            !before.ends_with("::") && !before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        })
    }
    let core = sources("core/src");
    let mut bad = Vec::new();
    for (rel, code) in &core {
        for krate in ["sled", "bincode"] {
            if names_crate(code, krate) && !rel.starts_with("core/src/store/sled/") {
                bad.push(format!("{rel}: names the crate `{krate}`"));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
    // The check sees the crates where they are named.
    assert!(core
        .iter()
        .any(|(rel, code)| rel.starts_with("core/src/store/sled/") && names_crate(code, "sled")));
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
    let bad = offenders(
        &core,
        &[
            "SystemTime::now",
            "UNIX_EPOCH",
            "OffsetDateTime::now",
            "Utc::now",
            "Local::now",
        ],
        |rel| rel == "core/src/clock.rs",
    );
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

/// The methods a trait of `store/mod.rs` declares (`fn name`), in order.
fn store_trait_methods(trait_name: &str) -> Vec<String> {
    let store = sources("core/src/store");
    let (_, code) = store.iter().find(|(rel, _)| rel == "core/src/store/mod.rs").unwrap();
    let start = code
        .find(&format!("pub trait {trait_name}"))
        .unwrap_or_else(|| panic!("no trait {trait_name} in store/mod.rs"));
    let body = &code[start..];
    let body = &body[..body.find("\n}").unwrap()];
    body.split("fn ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// Whether a store method writes (by the verbs the traits name their writes with).
fn is_write(method: &str) -> bool {
    [
        "put_",
        "create_",
        "update_",
        "delete_",
        "replace_",
        "save_",
        "flush_",
        "kv_put",
        "kv_take",
        "kv_delete",
        "kv_incr",
        "take_",
        "touch_",
    ]
    .iter()
    .any(|verb| method.starts_with(verb))
        || method.ends_with("get_or_insert")
        || method.contains("purge")
        || method == "try_lease"
}

#[test]
fn accounts_is_the_only_writer_of_people_and_the_only_code_that_ends_sessions() {
    // People (users, links), members (with their sign-in links and console sessions): every
    // write; edge sessions: every ending.
    let people_writes: Vec<String> = ["Directory", "Members"]
        .iter()
        .flat_map(|t| store_trait_methods(t))
        .filter(|m| is_write(m))
        .collect();
    let session_endings: Vec<String> = store_trait_methods("SessionStore")
        .into_iter()
        .filter(|m| m.starts_with("delete_"))
        .collect();
    assert!(!people_writes.is_empty() && !session_endings.is_empty());
    assert!(
        people_writes.iter().any(|m| m == "update_member") && people_writes.iter().any(|m| m == "take_sign_in_link"),
        "{people_writes:?}"
    );
    let calls: Vec<String> = people_writes
        .iter()
        .chain(&session_endings)
        .map(|m| format!(".{m}("))
        .collect();
    let needles: Vec<&str> = calls.iter().map(String::as_str).collect();
    let core = sources("core/src");
    let in_accounts = |rel: &str| rel.starts_with("core/src/accounts/");
    let bad = offenders(&core, &needles, |rel| {
        rel.starts_with("core/src/store/") || in_accounts(rel)
    });
    assert!(bad.is_empty(), "{bad:#?}");
    // The check sees the calls it looks for (it would pass vacuously on names nobody calls).
    let seen = offenders(&core, &needles, |rel| !in_accounts(rel));
    assert!(seen.len() >= 4, "accounts calls too few of {needles:?}: {seen:#?}");
}

#[test]
fn faces_hold_no_locks_and_never_rebuild_derived_state() {
    let mut faces = sources("core/src/api");
    faces.extend(
        sources("core/src")
            .into_iter()
            .filter(|(rel, _)| rel == "core/src/provisioning.rs"),
    );
    assert!(faces.len() >= 3, "{faces:?}");
    let locks = ["Mutex", "RwLock", ".lock("];
    // Derived state: the route table and the session index, rebuilt or changed only by their
    // followers and owners, never by a face.
    let rebuilds = [
        "rebuild_routes",
        "RouteTable::build",
        "routes.store(",
        "retain_routes",
        "sessions.insert(",
        "sessions.remove",
        "sessions.apply_ended(",
        "sessions.resync(",
        "sessions.set_applied(",
        "sessions.load(",
    ];
    let mut bad = offenders(&faces, &locks, |_| false);
    bad.extend(offenders(&faces, &rebuilds, |_| false));
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn derived_state_changes_only_in_the_follower() {
    // Who may swap the route table and who may take sessions out of the index: the follower
    // alone (`derived.rs`); the index's own file defines the methods. A session becomes live
    // by being written (`accounts::start_session`) or read on a miss, never removed elsewhere.
    let core = sources("core/src");
    assert!(core
        .iter()
        .any(|(rel, code)| rel == "core/src/derived.rs" && code.contains("apply_ended(")));
    let swaps = [
        "routes.store(",
        "RouteTable::build(",
        ".apply_ended(",
        ".resync(",
        ".set_applied(",
    ];
    let bad = offenders(&core, &swaps, |rel| {
        rel == "core/src/derived.rs" || rel == "core/src/sessions.rs"
    });
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn the_gate_names_no_plugin_no_signin_and_no_store_write() {
    let core = sources("core/src");
    let (_, gate) = core.iter().find(|(rel, _)| rel == "core/src/gate.rs").unwrap();
    let mut bad = Vec::new();
    // `plugins`, `signin` and `modules` run plugins; `accounts`, `state` (the whole store) and
    // `configure` write.
    for name in imports(gate) {
        if [
            "plugins",
            "signin",
            "modules",
            "provisioning",
            "accounts",
            "state",
            "configure",
        ]
        .contains(&name.as_str())
        {
            bad.push(format!("imports crate::{name}"));
        }
    }
    if gate.to_lowercase().contains("plugin") {
        bad.push("names a plugin".to_string());
    }
    if gate.contains("signin::") {
        bad.push("names `signin::`".to_string());
    }
    let store_writes: Vec<String> = [
        "ConfigObjects",
        "ApiKeys",
        "Directory",
        "Members",
        "SessionStore",
        "PluginKv",
        "Metadata",
        "Leases",
    ]
    .iter()
    .flat_map(|t| store_trait_methods(t))
    .filter(|m| is_write(m))
    .collect();
    assert!(store_writes.iter().any(|m| m == "put_session"), "{store_writes:?}");
    let mut calls: Vec<String> = store_writes.iter().map(|m| format!(".{m}(")).collect();
    // The session index's methods that write through to the store.
    calls.extend(["sessions.insert(", ".renew_access_token(", ".persist_activity("].map(String::from));
    for call in calls {
        if gate.contains(&call) {
            bad.push(format!("calls `{call}`"));
        }
    }
    assert!(bad.is_empty(), "gate.rs: {bad:#?}");
}
