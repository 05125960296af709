//! docs/ kept in step with the code: every warning and error the logs can print, and every
//! handshake status, is explained in docs/troubleshooting.md; every metric the admin endpoints
//! render is listed in docs/operations.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source that ships: comment lines and everything from the first `#[cfg(test)]` removed.
fn shipped_source(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first string literal in `args` (the macro's arguments), unescaped.
fn first_literal(args: &str) -> Option<String> {
    let start = args.find('"')?;
    let mut out = String::new();
    let mut chars = args[start + 1..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

/// The arguments of a macro call whose `(` is at `open`: up to the matching `)`.
fn macro_args(text: &str, open: usize) -> &str {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in text[open..].char_indices() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced macro call at {open}");
}

/// Every `warn!`/`error!` message of the shipped source: (file, macro, message literal).
fn log_messages() -> Vec<(String, &'static str, String)> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = shipped_source(&file);
        let rel = file.strip_prefix(root()).unwrap().display().to_string();
        for level in ["warn", "error"] {
            let needle = format!("{level}!(");
            let mut from = 0;
            while let Some(i) = text[from..].find(&needle) {
                let at = from + i;
                from = at + needle.len();
                let before = text[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let args = macro_args(&text, at + needle.len() - 1);
                let message = first_literal(args)
                    .unwrap_or_else(|| panic!("{rel}: {level}! without a message literal"));
                out.push((rel.clone(), level, message));
            }
        }
    }
    out
}

/// The part of a message that does not change: the text before its first `{}` placeholder, or
/// the longest constant piece when it starts with one.
fn stable_part(message: &str) -> String {
    let mut pieces = Vec::new();
    let mut rest = message;
    while let Some(open) = rest.find('{') {
        pieces.push(&rest[..open]);
        rest = rest[open..]
            .find('}')
            .map_or("", |close| &rest[open + close + 1..]);
    }
    pieces.push(rest);
    let trim = |p: &str| {
        p.trim_matches(|c: char| c.is_whitespace() || ";:,.()".contains(c))
            .to_string()
    };
    let first = trim(pieces[0]);
    if !first.is_empty() {
        return first;
    }
    pieces
        .iter()
        .map(|p| trim(p))
        .max_by_key(String::len)
        .unwrap_or_default()
}

#[test]
fn stable_parts_of_messages() {
    assert_eq!(stable_part("agent refused: {}"), "agent refused");
    assert_eq!(stable_part("{lost}; retrying in {} ms"), "retrying in");
    assert_eq!(stable_part("plain"), "plain");
}

#[test]
fn every_warning_and_error_is_in_troubleshooting() {
    let doc = std::fs::read_to_string(root().join("docs/troubleshooting.md")).unwrap();
    let messages = log_messages();
    assert!(
        messages.len() >= 15,
        "found only {} warn!/error! sites: is the scanner broken?",
        messages.len()
    );
    let missing: Vec<String> = messages
        .iter()
        .filter(|(_, _, m)| !doc.contains(&stable_part(m)))
        .map(|(file, level, m)| {
            format!("{file}: {level}: {:?} (looked for {:?})", m, stable_part(m))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md does not explain:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_handshake_status_is_in_troubleshooting() {
    let doc = std::fs::read_to_string(root().join("docs/troubleshooting.md")).unwrap();
    for code in 0..=4 {
        let status = ringtun::protocol::Status(code);
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| {code} |")))
            .unwrap_or_else(|| panic!("no row for handshake status {code}"));
        assert!(
            row.contains(status.meaning()),
            "row of status {code} does not say {:?}: {row}",
            status.meaning()
        );
    }
}

#[test]
fn every_metric_is_in_the_operator_guide() {
    let doc = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let mut names = Vec::new();
    // The metric handlers live beside what they read.
    let files = [
        root().join("src/server/admin.rs"),
        root().join("src/server/metrics_page.rs"),
        root().join("src/server/udp_metrics.rs"),
        root().join("src/agent/admin.rs"),
    ];
    for file in files {
        let text = shipped_source(&file);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("\"ringtun_") {
            let tail = &rest[i + 1..];
            let end = tail.find('"').unwrap();
            names.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names.sort();
    names.dedup();
    assert!(names.len() >= 20, "found only {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md does not list {missing:?}"
    );
}
