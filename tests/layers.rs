//! The layers of `src/` point one way: every `crate::` and `super::` path in a module names only
//! modules of lower layers (the table in `docs/architecture.md`), so the layout cannot drift.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Macros exported at the crate root, charged to the module that defines them.
const MACRO_OWNERS: [(&str, &str); 1] = [("log_limited", "log_limit")];

/// `module → layer` from the "Layers" table of docs/architecture.md.
fn layer_table() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md"))
        .expect("docs/architecture.md is readable");
    let section = doc
        .split("\n## Layers")
        .nth(1)
        .expect("docs/architecture.md has a Layers section");
    let mut table = BTreeMap::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(layer), Some(modules)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(layer) = layer.parse::<u32>() else {
            continue;
        };
        for module in modules.split(',') {
            let name = module.trim().trim_matches('`');
            assert!(
                table.insert(name.to_string(), layer).is_none(),
                "{name} is listed twice in the layer table"
            );
        }
    }
    assert!(!table.is_empty(), "the layer table has no rows");
    table
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The module path of a file under `src/` (`src/a/b/mod.rs` → `[a, b]`).
fn module_path(file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(root().join("src"))
        .expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The source without `//` comments (doc comments mention paths that are not imports).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn identifier_at(text: &str) -> Option<String> {
    let ident: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty()).then_some(ident)
}

/// The top-level modules a `{...}` group starting at `text` names: the first segment of each
/// of its top-level items.
fn group_heads(text: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut item_start = true;
    for (i, c) in text.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    item_start = true;
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                item_start = true;
                continue;
            }
            c if c.is_whitespace() => continue,
            _ => {}
        }
        if depth == 1 && item_start {
            item_start = false;
            if let Some(ident) = identifier_at(&text[i..]) {
                heads.push(ident);
            }
        }
    }
    heads
}

/// The top-level modules `text` (the file of module `path`) reaches by `crate::` and by
/// `super::` chains that climb to the crate root.
fn referenced_modules(text: &str, path: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        if i > 0 && text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        if rest.starts_with('{') {
            found.extend(group_heads(rest));
        } else if let Some(ident) = identifier_at(rest) {
            found.insert(ident);
        }
    }
    for (i, _) in text.match_indices("super::") {
        if i > 0 && text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            continue;
        }
        let mut rest = &text[i..];
        let mut climbs = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            climbs += 1;
            rest = r;
        }
        if climbs == path.len() {
            if rest.starts_with('{') {
                found.extend(group_heads(rest));
            } else if let Some(ident) = identifier_at(rest) {
                found.insert(ident);
            }
        }
    }
    found
        .into_iter()
        .map(|m| {
            MACRO_OWNERS
                .iter()
                .find(|(mac, _)| *mac == m)
                .map_or(m, |(_, owner)| owner.to_string())
        })
        .collect()
}

#[test]
fn every_module_of_src_is_in_the_layer_table() {
    let table = layer_table();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut missing = BTreeSet::new();
    for file in &files {
        let path = module_path(file);
        let top = &path[0];
        if top == "lib" || top == "main" {
            continue;
        }
        if !table.contains_key(top) {
            missing.insert(top.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "modules missing from the layer table in docs/architecture.md: {missing:?}"
    );
}

#[test]
fn imports_point_down_the_layers() {
    let table = layer_table();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let path = module_path(file);
        let top = path[0].clone();
        let Some(&own) = table.get(&top) else {
            continue;
        };
        let text = strip_comments(&std::fs::read_to_string(file).expect("readable source"));
        for used in referenced_modules(&text, &path) {
            if used == top {
                continue;
            }
            match table.get(&used) {
                Some(&layer) if layer < own => {}
                Some(&layer) => violations.push(format!(
                    "{}: {top} (layer {own}) uses {used} (layer {layer})",
                    file.display()
                )),
                // Not a module of the crate (e.g. `crate::SomeType` re-exported at the root).
                None => {}
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports that run up or across the layers of docs/architecture.md:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_super_paths() {
    let path = vec!["dataplane".to_string()];
    let found = referenced_modules(
        "use crate::{config::X, rt::{self, Conn}};\nuse super::agent::Y;\ncrate::log_limited!(x);",
        &path,
    );
    let want: BTreeSet<String> = ["config", "rt", "agent", "log_limit"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(found, want);
    // From a nested file, one `super::` stays inside the module.
    let nested = vec!["dataplane".to_string(), "worker".to_string()];
    assert!(referenced_modules("use super::pool::X;", &nested).is_empty());
}

/// Worker-side code spawns tasks and waits on timers through the runtime seam (`rt::spawn_local`,
/// `rt::time`), never through tokio directly, so a worker runtime of its own can serve them
/// (docs/architecture.md, "io_uring worker"). Test modules may use tokio's paused clock.
#[test]
fn worker_code_takes_tasks_and_timers_from_the_runtime_seam() {
    let mut files = Vec::new();
    for dir in ["src/dataplane", "src/agent", "src/tls"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut offenders = Vec::new();
    for file in files {
        let name = file.to_string_lossy().to_string();
        if name.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("source file is readable");
        // Unit tests sit at the end of a file, after `#[cfg(test)]`.
        let code = strip_comments(text.split("#[cfg(test)]").next().unwrap_or(""));
        for needle in [
            "tokio::time::",
            "tokio::task::spawn_local",
            "tokio::task::JoinHandle",
        ] {
            if code.contains(needle) {
                offenders.push(format!("{name}: {needle}"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "use crate::rt::spawn_local / crate::rt::time instead of:\n{}",
        offenders.join("\n")
    );
}
