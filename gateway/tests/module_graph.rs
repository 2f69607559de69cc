//! The shape of `gateway/src`, checked from its text:
//!
//! - the top-level modules (`config`, `connectors`, `log`, `sinks`, …)
//!   depend on each other without a cycle, so every arrow points down the
//!   flow and each module could become a crate of its own;
//! - no source file is over [`MAX_LINES`] lines of code (an inline
//!   `mod tests` at its end is not counted) unless its first lines say why
//!   (`//! Long because …`) or it holds tests (`tests.rs`).
//!
//! A module depends on another where its code (tests included: they would
//! be its crate's dev-dependencies) names `crate::<other>`, in a `use` or in
//! a path. Comments are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest a source file may be without saying why.
const MAX_LINES: usize = 500;

/// How a long file says why, within its first [`REASON_WITHIN`] lines.
const REASON: &str = "//! Long because";
const REASON_WITHIN: usize = 10;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its path relative to `src`.
fn rust_files(dir: &Path, src: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, src, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let relative = path
                .strip_prefix(src)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            out.push((relative, text));
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    assert!(!files.is_empty(), "no sources under {}", src.display());
    files
}

/// The top-level module a file belongs to: `config/mqtt.rs` → `config`,
/// `model.rs` → `model`.
fn top_module(relative: &str) -> String {
    let first = relative.split('/').next().expect("a path");
    first.strip_suffix(".rs").unwrap_or(first).to_string()
}

/// The code of `text`: comments (`//…` to the end of the line, `/* … */`)
/// dropped, and string literals (raw ones too) emptied to `""`, so neither
/// a comment nor a message that says `crate::x` counts as naming it.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        // A literal starts after a non-identifier (or a `b` prefix), and a
        // `"` between two `'` is a char.
        let before = &text[..i];
        let word = &before[before.trim_end_matches(is_ident).len()..];
        let after_ident = !(word.is_empty() || word == "b");
        let char_literal = before.ends_with('\'') && rest.starts_with("\"'");
        let skip = if rest.starts_with("//") {
            rest.find('\n').unwrap_or(rest.len())
        } else if let Some(comment) = rest.strip_prefix("/*") {
            comment.find("*/").map_or(rest.len(), |n| n + 4)
        } else {
            let literal = if after_ident || char_literal {
                None
            } else {
                raw_string_len(rest).or_else(|| string_len(rest))
            };
            match literal {
                Some(len) => {
                    out.push_str("\"\"");
                    len
                }
                None => {
                    let len = rest.chars().next().map_or(1, char::len_utf8);
                    out.push_str(&rest[..len]);
                    len
                }
            }
        };
        i += skip;
    }
    out
}

/// The length of the `r"…"` or `r#"…"#` literal `text` starts with.
fn raw_string_len(text: &str) -> Option<usize> {
    let body = text.strip_prefix('r')?;
    let hashes = body.len() - body.trim_start_matches('#').len();
    let body = body[hashes..].strip_prefix('"')?;
    let close = format!("\"{}", "#".repeat(hashes));
    let end = body.find(&close)?;
    Some(1 + hashes + 1 + end + close.len())
}

/// The length of the `"…"` literal `text` starts with (not a `'"'` char).
fn string_len(text: &str) -> Option<usize> {
    let body = text.strip_prefix('"')?;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i + 2),
            _ => {}
        }
    }
    Some(text.len())
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules `code` names as `crate::<module>`, including
/// those in a group, `crate::{a::X, b}`.
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| is_ident(c) || c == '$');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue; // e.g. `$crate::` in a macro or `some_crate::`
        }
        let after = rest.trim_start();
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            let mut chars = group.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && is_ident(c) => {
                        let name: String =
                            group[i..].chars().take_while(|&c| is_ident(c)).collect();
                        for _ in 1..name.chars().count() {
                            chars.next();
                        }
                        found.insert(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = after.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Module → the other top-level modules it names, with one file that does
/// so for each arrow (to say where it comes from).
fn module_graph() -> BTreeMap<String, BTreeMap<String, String>> {
    // The crate roots declare the modules; they are not one.
    let files: Vec<(String, String)> = sources()
        .into_iter()
        .filter(|(f, _)| f != "lib.rs" && f != "main.rs")
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|(f, _)| top_module(f)).collect();
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (file, text) in &files {
        let from = top_module(file);
        let arrows = graph.entry(from.clone()).or_default();
        for to in crate_references(&code_of(text)) {
            if to != from && modules.contains(&to) {
                arrows.entry(to).or_insert_with(|| file.clone());
            }
        }
    }
    graph
}

/// Cycles among the modules, each a list where every module names the
/// next and the last names the first: for each arrow that lies on some
/// cycle, the shortest such cycle. Empty when the graph has none.
fn cycles(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    // Tarjan's strongly connected components.
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<&'a str>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.graph.get(node).into_iter().flat_map(BTreeMap::keys) {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.push(top);
                    if top == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.components.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    // Within each component, for every arrow, the shortest cycle through
    // it: together they show every arrow that has to go.
    let mut found: Vec<Vec<String>> = Vec::new();
    for component in &walk.components {
        let inside: BTreeSet<&str> = component.iter().copied().collect();
        for &from in &inside {
            for to in graph[from].keys().filter(|t| inside.contains(t.as_str())) {
                let mut cycle = vec![from.to_string()];
                cycle.extend(shortest_path(graph, to, from, &inside));
                cycle.pop(); // `from` again
                let first = (0..cycle.len())
                    .min_by_key(|&i| &cycle[i])
                    .expect("non-empty");
                cycle.rotate_left(first);
                if !found.contains(&cycle) {
                    found.push(cycle);
                }
            }
        }
    }
    found.sort_by(|a, b| a.len().cmp(&b.len()).then(a.cmp(b)));
    found
}

/// The shortest path from `start` to `end` within `inside`, both included.
fn shortest_path(
    graph: &BTreeMap<String, BTreeMap<String, String>>,
    start: &str,
    end: &str,
    inside: &BTreeSet<&str>,
) -> Vec<String> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    let mut seen = BTreeSet::from([start]);
    while let Some(node) = queue.pop_front() {
        if node == end {
            let mut path = vec![node.to_string()];
            let mut at = node;
            while at != start {
                at = came_from[at];
                path.push(at.to_string());
            }
            path.reverse();
            return path;
        }
        for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
            let next = next.as_str();
            if inside.contains(next) && seen.insert(next) {
                came_from.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    unreachable!("{end} is reachable from {start} in a strongly connected component")
}

/// `a → b (a/file.rs) → … → a`, naming a file behind each arrow.
fn describe(cycle: &[String], graph: &BTreeMap<String, BTreeMap<String, String>>) -> String {
    let mut shown = cycle[0].clone();
    for (i, from) in cycle.iter().enumerate() {
        let to = &cycle[(i + 1) % cycle.len()];
        shown.push_str(&format!(" → {to} ({})", graph[from][to]));
    }
    shown
}

/// The modules bottom up: each layer names only modules in layers below
/// it. Only for a graph without cycles.
fn layers(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    while depth.len() < graph.len() {
        let before = depth.len();
        for (module, arrows) in graph {
            if depth.contains_key(module.as_str()) {
                continue;
            }
            let below: Option<Vec<usize>> = arrows
                .keys()
                .map(|to| depth.get(to.as_str()).copied())
                .collect();
            if let Some(below) = below {
                let d = below.into_iter().max().map_or(0, |d| d + 1);
                depth.insert(module, d);
            }
        }
        assert!(depth.len() > before, "the graph has a cycle");
    }
    let mut layers: Vec<Vec<String>> = Vec::new();
    for (module, d) in depth {
        if layers.len() <= d {
            layers.resize(d + 1, Vec::new());
        }
        layers[d].push(module.to_string());
    }
    layers
}

#[test]
fn top_level_modules_have_no_cycle() {
    let graph = module_graph();
    let found = cycles(&graph);
    let shown: Vec<String> = found.iter().map(|c| describe(c, &graph)).collect();
    for cycle in &shown {
        println!("cycle: {cycle}");
    }
    if found.is_empty() {
        for (i, layer) in layers(&graph).iter().enumerate() {
            println!("layer {i}: {}", layer.join(", "));
        }
    }
    assert!(
        found.is_empty(),
        "top-level modules of gateway/src depend on each other in a cycle:\n  {}\n\
         move what both use to a module below them",
        shown.join("\n  ")
    );
}

#[test]
fn long_files_say_why() {
    let mut unexplained = Vec::new();
    for (file, text) in sources() {
        // An inline test module at the end is the file's tests, not its code.
        let code = match text.rfind("\n#[cfg(test)]\nmod tests {") {
            Some(at) => &text[..at],
            None => text.as_str(),
        };
        let lines = code.lines().count();
        let is_tests = file == "tests.rs" || file.ends_with("/tests.rs");
        let says_why = text
            .lines()
            .take(REASON_WITHIN)
            .any(|l| l.trim_start().starts_with(REASON));
        if lines > MAX_LINES && !is_tests && !says_why {
            unexplained.push(format!("{file} ({lines} lines of code)"));
        }
    }
    assert!(
        unexplained.is_empty(),
        "files over {MAX_LINES} lines whose first {REASON_WITHIN} lines do not say why \
         (`{REASON} …`):\n  {}",
        unexplained.join("\n  ")
    );
}

#[test]
fn the_reference_scanner_reads_uses_groups_and_paths() {
    let code = code_of(
        "use crate::config::Secret;\n\
         use crate::{log::Log, sinks::{a, b}, model};\n\
         // use crate::admin;\n\
         /* crate::app */\n\
         let url = \"https://x\"; let c = '\"'; x(crate::metrics::inc());\n\
         panic!(\"see crate::cli\"); let raw = r#\"crate::fleet \"quoted\"\"#;\n\
         $crate::ignored; other_crate::ignored;\n",
    );
    let found: Vec<String> = crate_references(&code).into_iter().collect();
    assert_eq!(found, ["config", "log", "metrics", "model", "sinks"]);
}

#[test]
fn a_cycle_is_found_and_shown() {
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut arrow = |from: &str, to: &str| {
        graph
            .entry(from.into())
            .or_default()
            .insert(to.into(), format!("{from}.rs"));
        graph.entry(to.into()).or_default();
    };
    arrow("app", "config");
    arrow("config", "sinks");
    arrow("sinks", "speaker_api");
    arrow("speaker_api", "config");
    arrow("sinks", "model");
    let found = cycles(&graph);
    assert_eq!(found, [["config", "sinks", "speaker_api"]]);
    assert_eq!(
        describe(&found[0], &graph),
        "config → sinks (config.rs) → speaker_api (sinks.rs) → config (speaker_api.rs)"
    );

    graph.get_mut("config").expect("config").clear();
    assert!(cycles(&graph).is_empty());
    assert_eq!(
        layers(&graph),
        [
            vec!["config", "model"],
            vec!["app", "speaker_api"],
            vec!["sinks"]
        ]
    );
}
