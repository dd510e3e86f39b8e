//! Layers without circles: no module of the protocol core (`node/core/src`) or of the
//! server (`node/src/server`) imports, directly or through others, a module that imports
//! it. A circle means two concepts cannot be understood, tested or moved apart; the fix
//! is to move the shared part down into a module both import.
//!
//! The unit is a top-level module (a file or a directory directly under the root); its
//! test code (`tests.rs` files and a trailing `#[cfg(test)] mod tests { ... }`) does not
//! count, since tests may reach across layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The production part of a file: everything before its `#[cfg(test)] mod tests {`.
fn production_text(text: &str) -> &str {
    let mut end = text.len();
    for (at, _) in text.match_indices("#[cfg(test)]") {
        if text[at..]
            .trim_start_matches("#[cfg(test)]")
            .trim_start()
            .starts_with("mod tests {")
        {
            end = end.min(at);
        }
    }
    &text[..end]
}

/// The top-level modules `text` names after `prefix` (`crate::` or `crate::server::`),
/// in paths and in `use prefix{a, b::c}` groups.
fn references(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        let rest = &text[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            found.extend(group_heads(group));
        } else {
            found.extend(identifier(rest));
        }
    }
    found
}

fn identifier(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The first segment of every path in a `{a, b::c, d::{e, f}}` group (after its `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let (mut depth, mut at_head) = (0, true);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_head = true,
            c if at_head && depth == 0 && !c.is_whitespace() => {
                heads.extend(identifier(&group[i..]));
                at_head = false;
            }
            _ => {}
        }
    }
    heads
}

/// Which top-level module of `root` imports which, through `prefix`.
fn import_graph(root: &Path, prefix: &str) -> Graph {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let relative = file.strip_prefix(root).expect("under the root");
        let top = relative.components().next().expect("a path").as_os_str();
        let module = top.to_string_lossy().trim_end_matches(".rs").to_string();
        let is_test = file.file_name().is_some_and(|n| n == "tests.rs");
        if is_test || ["lib", "main", "mod"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        let targets = graph.entry(module.clone()).or_default();
        for target in references(production_text(&text), prefix) {
            if target != module {
                targets.insert(target);
            }
        }
    }
    graph
}

/// Every circle in `graph`, each as the path that closes it (`a -> b -> a`).
fn circles(graph: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for start in graph.keys() {
        let mut path = vec![start.clone()];
        walk(graph, start, &mut path, &mut found);
    }
    found
}

fn walk(graph: &Graph, start: &str, path: &mut Vec<String>, found: &mut Vec<String>) {
    let here = path.last().expect("a non-empty path").clone();
    for next in graph.get(&here).into_iter().flatten() {
        if next == start {
            // Reported once, from its smallest member.
            if path.iter().all(|m| m.as_str() >= start) {
                found.push(format!("{} -> {start}", path.join(" -> ")));
            }
        } else if !path.contains(next) && next.as_str() > start {
            path.push(next.clone());
            walk(graph, start, path, found);
            path.pop();
        }
    }
}

fn assert_no_circles(dir: &str, prefix: &str) {
    let graph = import_graph(&workspace().join(dir), prefix);
    assert!(graph.len() > 5, "{dir}: found only {:?}", graph.keys());
    let found = circles(&graph);
    assert!(
        found.is_empty(),
        "{dir} has import circles:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_core_has_no_import_circles() {
    assert_no_circles("node/core/src", "crate::");
}

#[test]
fn the_server_has_no_import_circles() {
    assert_no_circles("node/src/server", "crate::server::");
}

#[test]
fn the_checker_finds_a_circle_through_use_groups_and_paths_but_not_in_tests() {
    let a = "use crate::{b::Thing, c};\nfn f() { crate::d::g(); }\n#[cfg(test)]\nmod tests {\n use crate::e;\n}\n";
    assert_eq!(
        references(production_text(a), "crate::"),
        ["b", "c", "d"].map(String::from).into()
    );
    let mut graph = Graph::new();
    graph.insert("a".into(), ["b".into()].into());
    graph.insert("b".into(), ["c".into()].into());
    graph.insert("c".into(), ["a".into(), "d".into()].into());
    assert_eq!(circles(&graph), vec!["a -> b -> c -> a".to_string()]);
    graph.get_mut("c").unwrap().remove("a");
    assert!(circles(&graph).is_empty());
}
