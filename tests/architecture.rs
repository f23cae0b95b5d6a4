//! The architecture rule: **imports only point down, and no two modules
//! import each other.**
//!
//! The crate is built in layers, lowest first (the [`LAYERS`] table below;
//! the layout and the reasons for it are in `docs/architecture.md`):
//!
//! | floor | layer                                    | files                                  |
//! |-------|------------------------------------------|----------------------------------------|
//! | 0     | ground                                   | error, rng, yaml, device, util, layout |
//! | 1     | model/kernels below model; data beside   | `src/model/**`, `src/data/**`          |
//! | 2     | algo                                     | `src/algo/**`                          |
//! | 3     | spec                                     | `src/spec/**`                          |
//! | 4     | report                                   | `src/report/**`                        |
//! | 5     | run                                      | `src/run/**`                           |
//! | 6     | binary                                   | `src/bin/**`                           |
//!
//! A file may import files of its own layer and of any lower floor. Layers
//! that share a floor are siblings and import nothing from each other
//! (`model` and `data`), unless they are stories of one tower: a story may
//! import the stories below it (`model` may import `model/kernels`, not the
//! other way round). Separately, the files must form no import cycle; the one
//! exception is a file using its enclosing module (`super::Thing`, or
//! `crate::a::Thing` from inside `a/`), which is how a folder's `mod.rs` and
//! its children normally talk. Such imports still obey the layers.
//!
//! What counts as an import, read from every `.rs` file under `src/` with
//! comments and string literals removed: `use` declarations (grouped forms
//! included) and inline paths anywhere in code, starting with `crate::`,
//! `super::` (resolved from the module it appears in, inline `mod tests {}`
//! included) or, in `src/bin/**`, `fewshot::` (there `crate::` names the
//! binary's own modules). `self::` paths, bare relative
//! paths and external crates are not followed. A path names the file of its
//! longest prefix that is a module file (`a/b.rs` or `a/b/mod.rs`);
//! `src/lib.rs` only declares modules and is exempt.
//!
//! **When a file moves or a folder is added**, edit [`LAYERS`]: add the path
//! (or a `src/dir/**` pattern) to the layer it belongs to; the most specific
//! pattern wins, so `src/model/kernels/**` takes its files out of
//! `src/model/**`. A new layer is a new entry with its floor. Keep the table in
//! this comment and `docs/architecture.md` in step with it. A file that no
//! entry covers fails the test, so nothing slips in unlayered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::Path;

/// One layer: a named set of files on a floor.
struct Layer {
    name: &'static str,
    /// A layer may import every layer on a lower floor.
    floor: u8,
    /// On one floor, layers are siblings that may not import each other,
    /// unless both are stories of the same tower, `(tower, story)`: a
    /// story may import the lower stories of its tower.
    story: Option<(&'static str, u8)>,
    /// Paths relative to the crate root: a file, or `dir/**` for everything
    /// under `dir/`. The most specific (longest) matching entry wins.
    files: &'static [&'static str],
}

/// The layers, lowest first. Edit this when the layout changes.
const LAYERS: &[Layer] = &[
    Layer {
        name: "ground",
        floor: 0,
        story: None,
        files: &[
            "src/error.rs",
            "src/rng.rs",
            "src/yaml.rs",
            "src/device.rs",
            "src/util.rs",
            "src/layout.rs",
        ],
    },
    Layer {
        name: "model/kernels",
        floor: 1,
        story: Some(("model", 0)),
        files: &["src/model/kernels/**"],
    },
    Layer {
        name: "model",
        floor: 1,
        story: Some(("model", 1)),
        files: &["src/model/**"],
    },
    Layer {
        name: "data",
        floor: 1,
        story: None,
        files: &["src/data/**"],
    },
    Layer {
        name: "algo",
        floor: 2,
        story: None,
        files: &["src/algo/**"],
    },
    Layer {
        name: "spec",
        floor: 3,
        story: None,
        files: &["src/spec.rs", "src/spec/**"],
    },
    Layer {
        name: "report",
        floor: 4,
        story: None,
        files: &["src/report/**"],
    },
    Layer {
        name: "run",
        floor: 5,
        story: None,
        files: &["src/run/**"],
    },
    Layer {
        name: "binary",
        floor: 6,
        story: None,
        files: &["src/bin/**"],
    },
];

/// The library's root: it declares the modules and is exempt from the rule.
const LIB_ROOT: &str = "src/lib.rs";

impl Layer {
    /// Whether a file of this layer may import a file of `lower`.
    fn may_import(&self, lower: &Layer) -> bool {
        self.name == lower.name
            || lower.floor < self.floor
            || matches!(
                (self.story, lower.story),
                (Some((tower, story)), Some((other, below)))
                    if lower.floor == self.floor && tower == other && below < story
            )
    }

    /// How specifically this layer claims `file`: the length of its longest
    /// matching entry.
    fn claim(&self, file: &str) -> Option<usize> {
        self.files
            .iter()
            .filter(|pattern| match pattern.strip_suffix("**") {
                Some(dir) => file.starts_with(dir),
                None => file == **pattern,
            })
            .map(|pattern| pattern.len())
            .max()
    }
}

fn layer_of<'a>(file: &str, layers: &'a [Layer]) -> Option<&'a Layer> {
    layers
        .iter()
        .filter_map(|layer| layer.claim(file).map(|len| (len, layer)))
        .max_by_key(|(len, _)| *len)
        .map(|(_, layer)| layer)
}

// ---------------------------------------------------------------------------
// Tokens: Rust source without comments, strings and character literals.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

struct Token {
    tok: Tok,
    line: usize,
}

/// Splits source into identifiers, `::` and single punctuation characters,
/// dropping whitespace, comments (line, doc and nested block), string, byte
/// and raw string literals, character literals, lifetimes and numbers.
fn tokenize(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let is_ident = |ch: char| ch == '_' || ch.is_alphanumeric();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Advances past `c[from..to]`, counting the newlines in it.
    let skip = |from: usize, to: usize, line: &mut usize| {
        *line += c[from..to.min(c.len())]
            .iter()
            .filter(|&&ch| ch == '\n')
            .count();
        to
    };
    // The end of a quoted literal whose opening quote is at `open`.
    let quoted_end = |open: usize, quote: char| {
        let mut j = open + 1;
        while j < c.len() && c[j] != quote {
            j += if c[j] == '\\' { 2 } else { 1 };
        }
        j + 1
    };
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i = skip(i, i + 1, &mut line);
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let (mut j, mut depth) = (i + 2, 1);
            while j < c.len() && depth > 0 {
                if c[j] == '/' && at(j + 1) == '*' {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && at(j + 1) == '/' {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            i = skip(i, j, &mut line);
        } else if ch == '"' {
            i = skip(i, quoted_end(i, '"'), &mut line);
        } else if ch == '\'' {
            // A character literal ('x', '\n', '\u{1F600}') or a lifetime.
            if at(i + 1) == '\\' {
                i = quoted_end(i, '\'');
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else if ch.is_ascii_digit() {
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
        } else if is_ident(ch) {
            let start = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            match (word.as_str(), at(i)) {
                // Raw strings: r"..", r#".."#, br"..", cr#".."#.
                ("r" | "br" | "cr", '"' | '#') if raw_string_start(&c, i) => {
                    let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
                    let mut j = i + hashes + 1;
                    let closes = |j: usize| {
                        c[j] == '"'
                            && c.get(j + 1..j + 1 + hashes)
                                .is_some_and(|t| t.iter().all(|&h| h == '#'))
                    };
                    while j < c.len() && !closes(j) {
                        j += 1;
                    }
                    i = skip(i, j + 1 + hashes, &mut line);
                }
                // Raw identifiers: r#type.
                ("r", '#') => {}
                ("b" | "c", '"') => i = skip(i, quoted_end(i, '"'), &mut line),
                ("b", '\'') => i = quoted_end(i, '\''),
                _ => out.push(Token {
                    tok: Tok::Ident(word),
                    line,
                }),
            }
        } else {
            out.push(Token {
                tok: Tok::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    out
}

/// Whether `c[at..]` (after an `r`, `br` or `cr`) opens a raw string:
/// `#`s, if any, then a quote.
fn raw_string_start(c: &[char], at: usize) -> bool {
    c[at..].iter().find(|&&ch| ch != '#') == Some(&'"')
}

// ---------------------------------------------------------------------------
// Files, modules and the paths that name them.

/// Where a file sits: the crate it belongs to and its module path there.
struct Unit {
    /// The folder `crate::` paths start from: `src` or `src/bin/<name>`.
    base: String,
    /// The crate's root file.
    root: String,
    /// The file's module path inside its crate (`[]` for the root).
    module: Vec<String>,
}

impl Unit {
    fn of(file: &str) -> Unit {
        let stem = file.trim_end_matches(".rs");
        let (base, root, rest) = match stem.strip_prefix("src/bin/") {
            // src/bin/<name>/main.rs and its modules.
            Some(rest) if rest.contains('/') => {
                let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
                let base = format!("src/bin/{name}");
                (base.clone(), format!("{base}/main.rs"), rest.to_string())
            }
            // A single-file binary, src/bin/<name>.rs.
            Some(_) => ("src/bin".to_string(), file.to_string(), String::new()),
            None => {
                let rest = stem.strip_prefix("src/").unwrap_or(stem);
                ("src".to_string(), LIB_ROOT.to_string(), rest.to_string())
            }
        };
        let mut module: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let crate_root = if base == "src" { "lib" } else { "main" };
        if module.last().is_some_and(|m| m == "mod") || module == [crate_root] {
            module.pop();
        }
        Unit { base, root, module }
    }

    fn is_binary(&self) -> bool {
        self.base.starts_with("src/bin")
    }
}

/// The file defining the longest prefix of `path` (a module path from the
/// crate root at `base`, possibly ending in items) that is a module file.
fn resolve(files: &BTreeSet<String>, base: &str, root: &str, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .flat_map(|k| {
            let dir = format!("{base}/{}", path[..k].join("/"));
            [format!("{dir}.rs"), format!("{dir}/mod.rs")]
        })
        .chain([root.to_string()])
        .find(|candidate| files.contains(candidate))
}

/// One reference from a file to another.
struct Import {
    from: String,
    to: String,
    line: usize,
    /// The path as written (a grouped `use` expanded to one path per leaf).
    text: String,
}

/// A path read from the source, with the inline module it appeared in.
struct RawPath {
    segments: Vec<String>,
    line: usize,
    inline: Vec<String>,
}

/// The `crate::`, `super::` (and, for binaries, `fewshot::`) paths in a
/// file's tokens.
fn raw_paths(toks: &[Token]) -> Vec<RawPath> {
    let ident = |i: usize| ident_at(toks, i);
    let is = |i: usize, t: &Tok| toks.get(i).is_some_and(|tok| &tok.tok == t);
    let names = |inline: &[(String, usize)]| -> Vec<String> {
        inline.iter().map(|(name, _)| name.clone()).collect()
    };
    let mut out = Vec::new();
    // Inline modules (`mod tests { .. }`) and the brace depth inside them.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < toks.len() {
        match (&toks[i].tok, ident(i)) {
            (Tok::Punct('{'), _) => depth += 1,
            (Tok::Punct('}'), _) => {
                if inline.last().is_some_and(|&(_, d)| d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            (_, Some("mod")) if is(i + 2, &Tok::Punct('{')) => {
                if let Some(name) = ident(i + 1) {
                    depth += 1;
                    inline.push((name.to_string(), depth));
                    i += 3;
                    continue;
                }
            }
            (_, Some("use")) => {
                i += 1;
                let mut leaves = Vec::new();
                use_tree(toks, &mut i, &[], &mut leaves);
                let inline = names(&inline);
                out.extend(leaves.into_iter().map(|(segments, line)| RawPath {
                    segments,
                    line,
                    inline: inline.clone(),
                }));
                continue;
            }
            (_, Some(first @ ("crate" | "super" | "fewshot")))
                if is(i + 1, &Tok::PathSep)
                    && !(i > 0 && is(i - 1, &Tok::PathSep))
                    && !(i > 1 && ident(i - 1) == Some("in") && is(i - 2, &Tok::Punct('('))) =>
            {
                let mut segments = vec![first.to_string()];
                let mut line = toks[i].line;
                i += 1;
                while is(i, &Tok::PathSep) {
                    let Some(next) = ident(i + 1) else { break };
                    segments.push(next.to_string());
                    line = toks[i + 1].line;
                    i += 2;
                }
                out.push(RawPath {
                    segments,
                    line,
                    inline: names(&inline),
                });
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn ident_at(toks: &[Token], i: usize) -> Option<&str> {
    match toks.get(i).map(|t| &t.tok) {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

/// Reads one use tree at `toks[*i]`, pushing every leaf path (prefixed by
/// `prefix`) with the line of its last segment; leaves `*i` after the tree.
fn use_tree(toks: &[Token], i: &mut usize, prefix: &[String], out: &mut Vec<(Vec<String>, usize)>) {
    let mut path = prefix.to_vec();
    let mut line = toks.get(*i).map_or(0, |t| t.line);
    while let Some(token) = toks.get(*i) {
        match &token.tok {
            Tok::PathSep => *i += 1,
            Tok::Ident(name) if name != "as" => {
                path.push(name.clone());
                line = token.line;
                *i += 1;
                if toks.get(*i).is_none_or(|t| t.tok != Tok::PathSep) {
                    break;
                }
            }
            Tok::Punct('*') => {
                path.push("*".to_string());
                line = token.line;
                *i += 1;
                break;
            }
            Tok::Punct('{') => {
                *i += 1;
                while let Some(token) = toks.get(*i) {
                    match token.tok {
                        Tok::Punct('}') => {
                            *i += 1;
                            return;
                        }
                        Tok::Punct(',') => *i += 1,
                        _ => {
                            let before = *i;
                            use_tree(toks, i, &path, out);
                            if *i == before {
                                *i += 1;
                            }
                        }
                    }
                }
                return;
            }
            _ => break,
        }
    }
    if ident_at(toks, *i) == Some("as") {
        *i += 2;
    }
    if path.len() > prefix.len() {
        out.push((path, line));
    }
}

/// Every `.rs` file under `dir`, as paths relative to `root` with `/`.
fn rust_files(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let parts: Vec<_> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect();
            out.insert(parts.join("/"));
        }
    }
}

/// Every import between two files of the crate at `root`, by file and line.
fn imports(root: &Path, files: &BTreeSet<String>) -> Vec<Import> {
    let mut out = Vec::new();
    for file in files {
        let src =
            fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("reading {file}: {e}"));
        let unit = Unit::of(file);
        for raw in raw_paths(&tokenize(&src)) {
            let (first, rest) = raw.segments.split_first().expect("a path has a segment");
            let (base, root_file, mut path) = match first.as_str() {
                "crate" => (unit.base.as_str(), unit.root.as_str(), Vec::new()),
                "fewshot" if unit.is_binary() => ("src", LIB_ROOT, Vec::new()),
                "super" => {
                    let mut here: Vec<String> =
                        unit.module.iter().chain(&raw.inline).cloned().collect();
                    if here.pop().is_none() {
                        continue;
                    }
                    (unit.base.as_str(), unit.root.as_str(), here)
                }
                _ => continue,
            };
            let mut rest = rest.iter().peekable();
            if first == "super" {
                while rest.next_if(|s| *s == "super").is_some() {
                    if path.pop().is_none() {
                        break;
                    }
                }
            }
            path.extend(rest.filter(|s| *s != "*" && *s != "self").cloned());
            let Some(to) = resolve(files, base, root_file, &path) else {
                continue;
            };
            let mut text = raw.segments.join("::");
            if let Some(trimmed) = text.strip_suffix("::self") {
                text = trimmed.to_string();
            }
            if to != *file && to != LIB_ROOT && file != LIB_ROOT {
                out.push(Import {
                    from: file.clone(),
                    to,
                    line: raw.line,
                    text,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.from, a.line).cmp(&(&b.from, b.line)));
    out
}

/// Whether `ancestor`'s module encloses `file`'s (same crate).
fn encloses(ancestor: &str, file: &str) -> bool {
    let (outer, inner) = (Unit::of(ancestor), Unit::of(file));
    outer.base == inner.base
        && outer.module.len() < inner.module.len()
        && inner.module.starts_with(&outer.module)
}

// ---------------------------------------------------------------------------
// The rule.

/// Every breach of the rule in the crate at `root`: files no layer covers,
/// imports that point up or sideways, and import cycles.
fn violations(root: &Path, layers: &[Layer]) -> Vec<String> {
    let mut files = BTreeSet::new();
    rust_files(root, &root.join("src"), &mut files);
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| *f != LIB_ROOT && layer_of(f, layers).is_none())
        .map(|f| format!("{f} belongs to no layer: add it to LAYERS"))
        .collect();

    let imports = imports(root, &files);
    for import in &imports {
        let (Some(from), Some(to)) = (layer_of(&import.from, layers), layer_of(&import.to, layers))
        else {
            continue;
        };
        if !from.may_import(to) {
            out.push(format!(
                "{}:{} imports {} (layer '{}') from layer '{}'",
                import.from, import.line, import.text, to.name, from.name
            ));
        }
    }

    // The cycle graph: a file using an enclosing module is normal Rust.
    let mut graph: BTreeMap<&str, BTreeMap<&str, &Import>> = BTreeMap::new();
    for import in imports.iter().filter(|i| !encloses(&i.to, &i.from)) {
        graph
            .entry(import.from.as_str())
            .or_default()
            .entry(import.to.as_str())
            .or_insert(import);
    }
    for component in strongly_connected(&graph) {
        out.push(describe_cycle(&graph, &component));
    }
    out.dedup();
    out
}

/// The strongly connected components of more than one file (Tarjan).
fn strongly_connected<'a>(
    graph: &BTreeMap<&'a str, BTreeMap<&'a str, &Import>>,
) -> Vec<BTreeSet<&'a str>> {
    struct Tarjan<'g, 'a> {
        graph: &'g BTreeMap<&'a str, BTreeMap<&'a str, &'g Import>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<BTreeSet<&'a str>>,
    }
    impl<'a> Tarjan<'_, 'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            let graph = self.graph;
            for &w in graph.get(v).into_iter().flat_map(BTreeMap::keys) {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.insert(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for &v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.found.sort();
    t.found
}

/// The shortest cycle through the component's first file, import by
/// import, the last one closing it.
fn describe_cycle(
    graph: &BTreeMap<&str, BTreeMap<&str, &Import>>,
    component: &BTreeSet<&str>,
) -> String {
    let start = *component.first().expect("a component has files");
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    let mut last = start;
    'search: while let Some(v) = queue.pop_front() {
        for &w in graph[v].keys().filter(|w| component.contains(*w)) {
            if w == start {
                last = v;
                break 'search;
            }
            if !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    let mut cycle = vec![last];
    while let Some(&prev) = came_from.get(cycle[cycle.len() - 1]) {
        cycle.push(prev);
    }
    cycle.reverse();
    cycle.push(start);
    let steps: Vec<String> = cycle
        .windows(2)
        .map(|pair| {
            let import = graph[pair[0]][pair[1]];
            format!("{}:{} imports {}", import.from, import.line, import.text)
        })
        .collect();
    let (closing, leading) = steps.split_last().expect("a cycle has imports");
    let mut message = format!("import cycle {}: ", cycle.join(" -> "));
    for step in leading {
        message += &format!("{step}, ");
    }
    message += &format!("and {closing} closes it");
    let others: Vec<&str> = component
        .iter()
        .copied()
        .filter(|f| !cycle.contains(f))
        .collect();
    if !others.is_empty() {
        message += &format!(" (the same tangle also holds {})", others.join(", "));
    }
    message
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn the_tree_holds_the_rule() {
    let found = violations(Path::new(env!("CARGO_MANIFEST_DIR")), LAYERS);
    assert!(
        found.is_empty(),
        "{} breach(es) of the architecture rule (see the top of tests/architecture.rs):\n{}\n",
        found.len(),
        found.join("\n")
    );
}

/// A throwaway crate with the given files.
fn plant(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary folder");
    for (path, text) in files {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().expect("a file has a folder")).expect("creating folders");
        fs::write(path, text).expect("writing a planted file");
    }
    dir
}

fn found(files: &[(&str, &str)]) -> Vec<String> {
    violations(plant(files).path(), LAYERS)
}

#[test]
fn a_planted_upward_import_is_caught() {
    assert_eq!(
        found(&[
            ("src/lib.rs", "pub mod algo;\npub mod report;\npub mod error;\npub use error::Error;\n"),
            ("src/error.rs", "pub struct Error;\n"),
            ("src/algo/mod.rs", "use crate::error::Error;\nuse crate::Error as E;\n\nuse crate::report::Row;\n"),
            ("src/report/mod.rs", "use crate::algo::Algorithm;\npub struct Row;\n"),
            ("src/model/kernels/ops.rs", "use crate::model::params::Params;\n"),
            ("src/model/params.rs", "use crate::model::kernels::ops::conv;\nuse crate::data::Split;\n"),
            ("src/model/learner.rs", ""),
            ("src/data/mod.rs", "use crate::model::learner;\n"),
            ("src/stray.rs", "use crate::error::Error;\n"),
        ]),
        [
            "src/stray.rs belongs to no layer: add it to LAYERS",
            "src/algo/mod.rs:4 imports crate::report::Row (layer 'report') from layer 'algo'",
            "src/data/mod.rs:1 imports crate::model::learner (layer 'model') from layer 'data'",
            "src/model/kernels/ops.rs:1 imports crate::model::params::Params (layer 'model') from layer 'model/kernels'",
            "src/model/params.rs:2 imports crate::data::Split (layer 'data') from layer 'model'",
            "import cycle src/algo/mod.rs -> src/report/mod.rs -> src/algo/mod.rs: \
             src/algo/mod.rs:4 imports crate::report::Row, \
             and src/report/mod.rs:1 imports crate::algo::Algorithm closes it",
            "import cycle src/model/kernels/ops.rs -> src/model/params.rs -> src/model/kernels/ops.rs: \
             src/model/kernels/ops.rs:1 imports crate::model::params::Params, \
             and src/model/params.rs:1 imports crate::model::kernels::ops::conv closes it",
        ]
    );
}

#[test]
fn a_planted_cycle_is_caught() {
    assert_eq!(
        found(&[
            // A parent and its children talking both ways is no cycle.
            (
                "src/run/mod.rs",
                "pub mod a;\nuse crate::run::a::A;\npub struct Shared;\n"
            ),
            (
                "src/run/a.rs",
                "use super::Shared;\nuse crate::run::b::B;\npub struct A;\n"
            ),
            ("src/run/b.rs", "pub struct B;\nuse crate::run::c::{C};\n"),
            (
                "src/run/c.rs",
                "pub struct C;\n\nfn f() {\n    crate::run::a::A;\n}\n"
            ),
            // d and e only point into the cycle.
            ("src/run/d.rs", "use crate::run::a::A;\n"),
            ("src/run/e.rs", "use crate::run::{d, e};\n"),
            // Binaries' own modules cycle among themselves too.
            (
                "src/bin/bench/main.rs",
                "mod plan;\nmod run;\nuse crate::plan::Args;\n"
            ),
            (
                "src/bin/bench/plan.rs",
                "use crate::run::Spec;\nuse super::Cli;\n"
            ),
            ("src/bin/bench/run.rs", "use crate::plan::Args;\n"),
        ]),
        [
            "import cycle src/bin/bench/plan.rs -> src/bin/bench/run.rs -> src/bin/bench/plan.rs: \
             src/bin/bench/plan.rs:1 imports crate::run::Spec, \
             and src/bin/bench/run.rs:1 imports crate::plan::Args closes it",
            "import cycle src/run/a.rs -> src/run/b.rs -> src/run/c.rs -> src/run/a.rs: \
             src/run/a.rs:2 imports crate::run::b::B, src/run/b.rs:2 imports crate::run::c::C, \
             and src/run/c.rs:4 imports crate::run::a::A closes it",
        ]
    );
    // One more edge pulls d into the tangle, off the shortest cycle.
    assert_eq!(
        found(&[
            ("src/run/a.rs", "use crate::run::b::B;\n"),
            (
                "src/run/b.rs",
                "use crate::run::a::A;\nuse crate::run::d::D;\n"
            ),
            ("src/run/d.rs", "use crate::run::a::A;\n"),
        ]),
        [
            "import cycle src/run/a.rs -> src/run/b.rs -> src/run/a.rs: \
          src/run/a.rs:1 imports crate::run::b::B, \
          and src/run/b.rs:1 imports crate::run::a::A closes it \
          (the same tangle also holds src/run/d.rs)"
        ]
    );
}

#[test]
fn grouped_and_inline_paths_are_read() {
    assert_eq!(
        found(&[
            (
                "src/algo/mod.rs",
                "use crate::{\n    error::Error,\n    report::{stats::{mean, sd as stdev}, self},\n    run::*,\n};\n\
                 pub(in crate::algo) fn f() -> Result<(), Error> {\n    \
                     let x = crate::spec::parse::<u8>(\"\")?;\n    \
                     Ok(<crate::report::Row as Default>::default())\n}\n",
            ),
            ("src/report/mod.rs", "pub mod stats;\n"),
            ("src/report/stats.rs", ""),
            ("src/run/mod.rs", ""),
            ("src/spec/mod.rs", ""),
            ("src/error.rs", ""),
        ]),
        [
            "src/algo/mod.rs:3 imports crate::report::stats::mean (layer 'report') from layer 'algo'",
            "src/algo/mod.rs:3 imports crate::report::stats::sd (layer 'report') from layer 'algo'",
            "src/algo/mod.rs:3 imports crate::report (layer 'report') from layer 'algo'",
            "src/algo/mod.rs:4 imports crate::run::* (layer 'run') from layer 'algo'",
            "src/algo/mod.rs:7 imports crate::spec::parse (layer 'spec') from layer 'algo'",
            "src/algo/mod.rs:8 imports crate::report::Row (layer 'report') from layer 'algo'",
        ]
    );
    // In a binary, `fewshot::` names the library and `crate::` the binary.
    let upside_down = [
        Layer {
            name: "cli",
            floor: 0,
            story: None,
            files: &["src/bin/**"],
        },
        Layer {
            name: "lib",
            floor: 1,
            story: None,
            files: &["src/run/**"],
        },
    ];
    let tree = plant(&[
        ("src/run/mod.rs", ""),
        (
            "src/bin/bench/main.rs",
            "mod run;\nfn main() {\n    fewshot::run::go();\n}\n",
        ),
        (
            "src/bin/bench/run.rs",
            "use fewshot::{run::{self}};\nuse crate::run::x;\n",
        ),
    ]);
    assert_eq!(
        violations(tree.path(), &upside_down),
        [
            "src/bin/bench/main.rs:3 imports fewshot::run::go (layer 'lib') from layer 'cli'",
            "src/bin/bench/run.rs:1 imports fewshot::run (layer 'lib') from layer 'cli'",
        ]
    );
}

#[test]
fn comments_and_strings_are_ignored() {
    let algo = r####"//! See crate::report::Row and [`crate::run`].
/// Returns a crate::report::Row.
// use crate::report::Row;
/* crate::run::x /* nested: crate::report */ still a comment: crate::run */
#[doc = "crate::report::Row"]
fn f<'a>(s: &'a str) -> &'a str {
    let _ = ("crate::report::x", "\"crate::run::y\"", b"crate::run");
    let _ = (r"crate::report", r#"a "quoted" crate::report"#, br##"crate::run"#"##);
    let _ = ('"', '\'', b'"', '\u{22}', "\\");
    let r#type = 1;
    crate::report::g(r#type);
    s
}
"####;
    assert_eq!(
        found(&[
            ("src/algo/mod.rs", algo),
            ("src/report/mod.rs", ""),
            ("src/run/mod.rs", "")
        ]),
        ["src/algo/mod.rs:11 imports crate::report::g (layer 'report') from layer 'algo'"]
    );
}

#[test]
fn super_is_resolved() {
    assert_eq!(
        found(&[
            ("src/model/mod.rs", "pub mod kernels;\npub mod learner;\n"),
            ("src/model/learner.rs", "use super::kernels::ops::conv;\n"),
            ("src/model/kernels/mod.rs", "pub mod ops;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n"),
            (
                "src/model/kernels/ops.rs",
                "use super::super::learner::Learner;\nfn f() {\n    super::helper();\n}\n\
                 mod tests {\n    mod deeper {\n        use super::super::f;\n    }\n    use super::super::super::Thing;\n}\n",
            ),
            ("src/data/mod.rs", "pub mod omniglot;\npub fn image_side() {}\n"),
            ("src/data/omniglot.rs", "use super::image_side;\nuse super::super::model::learner;\n"),
            ("src/error.rs", "#[cfg(test)]\nmod tests {\n    use super::*;\n}\n"),
        ]),
        [
            "src/data/omniglot.rs:2 imports super::super::model::learner (layer 'model') from layer 'data'",
            "src/model/kernels/ops.rs:1 imports super::super::learner::Learner (layer 'model') from layer 'model/kernels'",
            "src/model/kernels/ops.rs:9 imports super::super::super::Thing (layer 'model') from layer 'model/kernels'",
            "import cycle src/model/kernels/ops.rs -> src/model/learner.rs -> src/model/kernels/ops.rs: \
             src/model/kernels/ops.rs:1 imports super::super::learner::Learner, \
             and src/model/learner.rs:1 imports super::kernels::ops::conv closes it",
        ]
    );
}
