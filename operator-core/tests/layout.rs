//! The operator crates' shape, checked on their sources: no module cycle (each crate's top-level
//! modules import one another one way only), no function over 80 lines, no file over 600.
//! New people work in these crates; these are the limits that keep them readable.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

const MAX_FN_LINES: usize = 80;
const MAX_FILE_LINES: usize = 600;

/// Each crate's library and binary sources, whose top-level modules must not form a cycle.
fn crates() -> [PathBuf; 2] {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    [root.join("operator/src"), root.join("operator-core/src")]
}

/// Every source of both crates: library, tests and examples.
fn all_sources() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    ["operator", "operator-core"]
        .into_iter()
        .flat_map(|krate| ["src", "tests", "examples"].map(|dir| root.join(krate).join(dir)))
        .filter(|dir| dir.is_dir())
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read source dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The source with comments, string and char literals blanked out (lines kept), so braces and
/// `crate::` inside them count for nothing.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || (c == 'r' && matches!(next, Some('"' | '#'))) {
            i = skip_string(&chars, i, &mut out);
        } else if c == '\'' && is_char_literal(&chars, i) {
            i += if next == Some('\\') { 4 } else { 3 };
            while chars.get(i - 1).is_some_and(|&c| c != '\'') {
                i += 1;
            }
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_char_literal(chars: &[char], i: usize) -> bool {
    match chars.get(i + 1) {
        Some('\\') => true,
        Some(_) => chars.get(i + 2) == Some(&'\''),
        None => false,
    }
}

/// Skips a string literal starting at `i` (plain or raw), keeping its newlines.
fn skip_string(chars: &[char], mut i: usize, out: &mut String) -> usize {
    let raw = chars[i] == 'r';
    let mut hashes = 0;
    if raw {
        i += 1;
        while chars.get(i) == Some(&'#') {
            hashes += 1;
            i += 1;
        }
        if chars.get(i) != Some(&'"') {
            out.push('r');
            return i - hashes;
        }
    }
    i += 1;
    out.push('"');
    while i < chars.len() {
        match chars[i] {
            '\\' if !raw => i += 2,
            '"' if chars[i + 1..].iter().take(hashes).all(|&c| c == '#') && chars.len() >= i + 1 + hashes => {
                out.push('"');
                return i + 1 + hashes;
            }
            '\n' => {
                out.push('\n');
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// Functions longer than the limit: (name, first line, lines).
fn long_functions(code: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        let (mut depth, mut opened) = (0i32, false);
        for (offset, body_line) in lines[start..].iter().enumerate() {
            for c in body_line.chars() {
                match c {
                    '{' => (depth, opened) = (depth + 1, true),
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if !opened && body_line.trim_end().ends_with(';') {
                break;
            }
            if opened && depth <= 0 {
                let length = offset + 1;
                if length > MAX_FN_LINES {
                    out.push((name.clone(), start + 1, length));
                }
                break;
            }
        }
    }
    out
}

fn fn_name(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "fn")?;
    let before_ok = words[..at]
        .iter()
        .all(|w| w.starts_with("pub") || matches!(*w, "async" | "const" | "unsafe" | "extern"));
    let name: String = words
        .get(at + 1)?
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (before_ok && !name.is_empty()).then_some(name)
}

/// The top-level module a file belongs to (None: the crate root).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?.trim_end_matches(".rs").to_string();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// The first segment of every path after `crate::` (a `{...}` group gives each of its items').
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let preceded_by_ident = code.len() > rest.len() + 7 && {
            let before = &code[..code.len() - rest.len() - 7];
            before
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        };
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item_start, mut end) = (0, 0, group.len());
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = i;
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(first_segment(&group[item_start..i]));
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
            out.insert(first_segment(&group[item_start..end]));
        } else {
            out.insert(first_segment(rest));
        }
    }
    out.remove("");
    out
}

fn first_segment(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Items the crate root re-exports (`pub use module::{A, B}`), so `crate::A` counts as `module`.
fn root_reexports(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for root in ["lib.rs", "main.rs"] {
        let Ok(text) = std::fs::read_to_string(src.join(root)) else {
            continue;
        };
        for line in code_only(&text).lines() {
            let Some(used) = line.trim().strip_prefix("pub use ") else {
                continue;
            };
            let module = first_segment(used);
            let items = used.split_once("::").map_or("", |(_, items)| items);
            for item in items.trim_matches(|c| "{};".contains(c)).split(',') {
                let name = item
                    .rsplit("::")
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_end_matches(['}', ';']);
                out.insert(name.to_string(), module.clone());
            }
        }
    }
    out
}

type Graph = BTreeMap<String, BTreeSet<String>>;

fn module_graph(src: &Path) -> Graph {
    let reexports = root_reexports(src);
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let Some(from) = top_module(src, &file) else {
            continue;
        };
        let code = code_only(&std::fs::read_to_string(&file).expect("read"));
        let edges = graph.entry(from.clone()).or_default();
        for name in crate_references(&code) {
            let to = reexports.get(&name).cloned().unwrap_or(name);
            if to != from {
                edges.insert(to);
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for edges in graph.values_mut() {
        edges.retain(|m| modules.contains(m));
    }
    graph
}

/// One cycle in `graph`, as the path that closes it.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
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
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_cycle_in_the_operator_crates() {
    for src in crates() {
        let graph = module_graph(&src);
        assert!(graph.len() > 3, "no modules found in {}", src.display());
        if let Some(cycle) = find_cycle(&graph) {
            panic!("module cycle in {}: {}", src.display(), cycle.join(" -> "));
        }
    }
}

#[test]
fn no_function_over_80_lines_and_no_file_over_600() {
    let mut problems = Vec::new();
    for src in all_sources() {
        for file in rust_files(&src) {
            let text = std::fs::read_to_string(&file).expect("read");
            let lines = text.lines().count();
            if lines > MAX_FILE_LINES {
                problems.push(format!("{}: {lines} lines", file.display()));
            }
            for (name, line, length) in long_functions(&code_only(&text)) {
                problems.push(format!("{}:{line}: fn {name} is {length} lines", file.display()));
            }
        }
    }
    assert!(problems.is_empty(), "over the limits:\n{}", problems.join("\n"));
}

#[test]
fn the_checks_see_cycles_long_functions_and_ignore_literals() {
    let mut graph = Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&graph), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&graph).map(|c| c.len()), Some(4), "a -> b -> c -> a");

    let refs = crate_references("use crate::{Error, reconcile::{a, b}, cache};\nlet x = crate::memory::X;");
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["Error", "cache", "memory", "reconcile"]
    );

    let long = format!(
        "fn long() {{\n{}}}\nfn short() {{ let s = \"}}}}\"; }}\n",
        "    x();\n".repeat(85)
    );
    let found = long_functions(&code_only(&long));
    assert_eq!(found, [("long".to_string(), 1, 87)]);
    let braces_in_literals = "fn f() {\n    let s = \"{\"; let c = '{'; // {\n}\nfn g() {}\n";
    assert!(long_functions(&code_only(braces_in_literals)).is_empty());
    assert_eq!(code_only(braces_in_literals).matches('{').count(), 2);
}
