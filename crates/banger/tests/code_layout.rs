//! Two layout rules of the source tree, checked from the files themselves
//! (no privileges, no daemon): production files stay small enough to read
//! in one sitting, and no top-level module of banger-core imports one that
//! imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Production files allowed over [`MAX_LINES`], each with a reason the
/// lead accepted; paths relative to the workspace root.
const LONG_FILES_ALLOWED: &[&str] = &[];

const MAX_LINES: usize = 600;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file beneath `dir`, sorted, leaving out test-only files
/// (`tests.rs`) and test directories (`tests/`).
fn production_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display()));
        for e in entries {
            let e = e.unwrap_or_else(|e| panic!("reading {}: {e}", d.display()));
            let p = e.path();
            let name = e.file_name();
            let ty = e
                .file_type()
                .unwrap_or_else(|err| panic!("stat {}: {err}", p.display()));
            if ty.is_dir() {
                if name != "tests" {
                    todo.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") && name != "tests.rs" {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The lines of `text` before its test module: everything from a
/// `#[cfg(test)]` that opens `mod tests` (further attributes may sit in
/// between) onward is test code.
fn production_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let opens_tests = |i: usize| {
        lines[i + 1..]
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty() && !l.starts_with("#["))
            .is_some_and(|l| {
                let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
                l.strip_prefix("mod tests")
                    .is_some_and(|rest| rest.starts_with([' ', '{', ';']))
            })
    };
    let end = (0..lines.len())
        .find(|&i| lines[i].trim() == "#[cfg(test)]" && opens_tests(i))
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

fn relative(p: &Path) -> String {
    let root = workspace_root()
        .canonicalize()
        .expect("workspace root exists");
    let p = p.canonicalize().unwrap_or_else(|_| p.to_owned());
    p.strip_prefix(&root).unwrap_or(&p).display().to_string()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn no_production_file_is_over_600_lines() {
    let crates = workspace_root().join("crates");
    let mut src_dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
        .expect("crates/")
        .map(|e| e.expect("crates/ entry").path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    src_dirs.sort();
    assert!(!src_dirs.is_empty(), "no crates/*/src under {crates:?}");
    let mut long = Vec::new();
    for file in src_dirs.iter().flat_map(|d| production_files(d)) {
        let rel = relative(&file);
        let n = production_lines(&read(&file)).len();
        if n > MAX_LINES && !LONG_FILES_ALLOWED.contains(&rel.as_str()) {
            long.push((n, rel));
        }
    }
    long.sort_by(|a, b| b.cmp(a));
    assert!(
        long.is_empty(),
        "{} production file(s) over {MAX_LINES} lines (test modules not counted; split them, or justify one in LONG_FILES_ALLOWED):\n{}",
        long.len(),
        long.iter()
            .map(|(n, f)| format!("  {n:>5}  {f}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A reference from one module to another: where it is written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Site {
    file: String,
    line: usize,
}

/// banger-core's top-level modules: `src/x.rs` and `src/x/` are both
/// module `x`, and every file beneath `src/x/` belongs to it.
fn core_modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for file in production_files(src) {
        let rel = file.strip_prefix(src).expect("beneath src");
        let mut parts = rel.components();
        let first = parts
            .next()
            .expect("a file name")
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        let name = match first.strip_suffix(".rs") {
            Some(n) if parts.next().is_none() => n.to_owned(),
            _ => first,
        };
        if name == "lib" || name == "main" {
            continue;
        }
        modules.entry(name).or_default().push(file);
    }
    modules
}

/// The text of a line outside `//` comments (doc links name modules
/// without importing them).
fn code_of(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

/// Identifiers right after each `crate::` in `code`: `crate::a::B` gives
/// `a`, `crate::{a, b::C}` gives `a` and `b`.
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        // `foo_crate::x` is another path.
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        out.push(ident(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out
}

/// Module -> module it references -> where.
type Graph = BTreeMap<String, BTreeMap<String, Vec<Site>>>;

/// Joins the lines of a `use crate::{..}` group spread over several lines,
/// so the group parses as one; returns (line number, text) pairs.
fn statements(lines: &[&str]) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut open: Option<(usize, String, i32)> = None;
    for (i, line) in lines.iter().enumerate() {
        let code = code_of(line);
        if let Some((at, mut text, depth)) = open.take() {
            text.push(' ');
            text.push_str(code);
            let depth = depth + brace_balance(code);
            if depth > 0 {
                open = Some((at, text, depth));
            } else {
                out.push((at, text));
            }
            continue;
        }
        let depth = brace_balance(code);
        if code.contains("crate::{") && depth > 0 {
            open = Some((i + 1, code.to_owned(), depth));
        } else {
            out.push((i + 1, code.to_owned()));
        }
    }
    out.extend(open.map(|(at, text, _)| (at, text)));
    out
}

fn brace_balance(code: &str) -> i32 {
    code.chars()
        .map(|c| match c {
            '{' => 1,
            '}' => -1,
            _ => 0,
        })
        .sum()
}

/// Names the crate root re-exports (`pub use m::{A, B as C}` in lib.rs),
/// each with the module it comes from: `crate::A` depends on `m`.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for (_, code) in statements(&production_lines(lib)) {
        let Some(path) = code.trim().strip_prefix("pub use ") else {
            continue;
        };
        let path = path.trim().trim_end_matches(';').trim();
        let path = path.strip_prefix("crate::").unwrap_or(path);
        let Some((module, rest)) = path.split_once("::") else {
            continue;
        };
        let items = rest.trim().trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let item = item.trim();
            let visible = item
                .rsplit_once(" as ")
                .map_or(item, |(_, alias)| alias)
                .rsplit("::")
                .next()
                .unwrap_or(item)
                .trim();
            if !visible.is_empty() {
                names.insert(visible.to_owned(), module.trim().to_owned());
            }
        }
    }
    names
}

fn core_graph(src: &Path) -> Graph {
    let modules = core_modules(src);
    let reexports = root_reexports(&read(&src.join("lib.rs")));
    let mut graph = Graph::new();
    for (module, files) in &modules {
        let edges = graph.entry(module.clone()).or_default();
        for file in files {
            let text = read(file);
            for (line, code) in statements(&production_lines(&text)) {
                for name in crate_paths(&code) {
                    let target = reexports.get(&name).cloned().unwrap_or(name);
                    if target != *module && modules.contains_key(&target) {
                        edges.entry(target).or_default().push(Site {
                            file: relative(file),
                            line,
                        });
                    }
                }
            }
        }
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flat_map(|e| e.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.found.push(scc);
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
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found.sort();
    walk.found
}

/// One cycle's modules, each pair that imports both ways, and every edge
/// inside it with the places it is written.
fn describe(graph: &Graph, scc: &[String]) -> String {
    let inside: BTreeSet<&str> = scc.iter().map(String::as_str).collect();
    let mut out = format!("cycle among {}:\n", scc.join(", "));
    for a in scc {
        for (b, sites) in &graph[a] {
            if !inside.contains(b.as_str()) {
                continue;
            }
            let back = graph[b].contains_key(a);
            let mark = if back { "<->" } else { " ->" };
            let shown: Vec<String> = sites
                .iter()
                .take(4)
                .map(|s| format!("{}:{}", s.file, s.line))
                .collect();
            let more = sites.len().saturating_sub(shown.len());
            out.push_str(&format!(
                "    {a} {mark} {b}: {}{}\n",
                shown.join(", "),
                if more > 0 {
                    format!(" (+{more} more)")
                } else {
                    String::new()
                }
            ));
        }
    }
    out
}

#[test]
fn no_banger_core_module_imports_one_that_imports_it_back() {
    // `crate::Core` counts as a use of the module lib.rs re-exports it from.
    let src = workspace_root().join("crates/banger-core/src");
    let graph = core_graph(&src);
    assert!(graph.len() > 1, "no modules found in {}", src.display());
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "{} import cycle(s) between banger-core's top-level modules (`use crate::x` / `crate::x::` and names lib.rs re-exports, test modules not counted; `<->` marks a pair importing each other):\n{}",
        found.len(),
        found
            .iter()
            .map(|scc| describe(&graph, scc))
            .collect::<String>()
    );
}

#[test]
fn the_parsers_read_what_the_rules_need() {
    assert_eq!(
        crate_paths("use crate::{a::B, c, d::{e, f}}; x = crate::g::h(); my_crate::z"),
        ["a", "c", "d", "g"]
    );
    let text =
        "fn a() {}\n#[cfg(test)]\nfn helper() {}\n#[cfg(test)]\n#[allow(x)]\nmod tests {\n}\n";
    assert_eq!(production_lines(text).len(), 3);
    assert_eq!(
        statements(&[
            "use crate::{",
            "    a,",
            "    b::C,",
            "};",
            "crate::d::e();"
        ]),
        [
            (1, "use crate::{     a,     b::C, };".to_owned()),
            (5, "crate::d::e();".to_owned()),
        ]
    );
    assert_eq!(
        root_reexports("pub mod a;\npub use a::{A, B as C};\npub use d::E;\n"),
        BTreeMap::from([
            ("A".to_owned(), "a".to_owned()),
            ("C".to_owned(), "a".to_owned()),
            ("E".to_owned(), "d".to_owned()),
        ])
    );
    let mut g = Graph::new();
    let site = || {
        vec![Site {
            file: "f".into(),
            line: 1,
        }]
    };
    g.entry("a".into()).or_default().insert("b".into(), site());
    g.entry("b".into()).or_default().insert("c".into(), site());
    g.entry("c".into()).or_default().insert("a".into(), site());
    g.entry("d".into()).or_default().insert("a".into(), site());
    assert_eq!(cycles(&g), [["a", "b", "c"]]);
}
