//! A crate's module graph, from its parsed sources (syn): for every `.rs` file under `src/`,
//! its module path and every path it names, resolved to where it points.
//!
//! What counts as naming a path: each leaf of a `use` tree (`use crate::{a, b::c}` names
//! `crate::a` and `crate::b::c`), every `syn::Path` in items, expressions, types, patterns and
//! attributes, and every `a::b` chain of tokens inside a macro invocation (`format!`,
//! `tokio::select!` and friends are opaque to the parser).
//!
//! How a path is resolved: `crate::` stays, `self::` and `super::` are resolved against the
//! module the path is written in, a leading `::` names an external crate, and a bare first
//! segment goes through the module's `use` aliases (`use std::time::Instant; Instant::now()`
//! names `std::time::Instant::now`) or its child modules. A `crate::` path that goes through a
//! re-export (`pub use config::HubConfig;` in lib.rs) is followed to the item's own module.
//!
//! Module paths come from file paths: `foo.rs` and `foo/mod.rs` are `foo`, `foo/bar.rs` is
//! `foo::bar`; `lib.rs` and `main.rs` are crate roots, and so is each binary under `bin/`
//! (which is a crate of its own). Not modelled: `#[path]`, glob imports (`use x::*` names `x`,
//! nothing behind it), the scoping of a `use` inside a block (it counts for its whole module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::visit::Visit;

/// Which crate a file belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Root {
    Lib,
    Bin(String),
}

/// One path a file names.
#[derive(Debug, Clone)]
pub struct Ref {
    /// Resolved: `crate::store::Store`, `std::fs::read`, `axum::Router`.
    pub path: Vec<String>,
    /// As written, for messages.
    pub written: String,
    /// In test-only code (`#[cfg(test)]`, `#[test]`).
    pub test: bool,
}

impl Ref {
    pub fn starts_with(&self, prefix: &[&str]) -> bool {
        self.path.len() >= prefix.len() && self.path.iter().zip(prefix).all(|(a, b)| a == b)
    }

    /// The top-level module of a `crate::` path.
    pub fn crate_top(&self) -> Option<&str> {
        match self.path.as_slice() {
            [c, top, ..] if c == "crate" => Some(top),
            _ => None,
        }
    }

    pub fn resolved(&self) -> String {
        self.path.join("::")
    }
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resolved = self.resolved();
        if resolved == self.written {
            write!(f, "{resolved}")
        } else {
            write!(f, "{} (= {resolved})", self.written)
        }
    }
}

/// One source file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Relative to the workspace, for messages.
    pub file: PathBuf,
    pub root: Root,
    /// The file's module path (empty for a crate root).
    pub module: Vec<String>,
    pub refs: Vec<Ref>,
    /// `use` aliases per module defined in this file (the file's and inline ones).
    aliases: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>,
    /// Modules defined in this file (the file's and inline ones) and declared in it.
    modules: BTreeSet<Vec<String>>,
}

impl SourceFile {
    /// The file's top-level module (`api` for `api/fleet.rs`), none for a crate root.
    pub fn top(&self) -> Option<&str> {
        self.module.first().map(String::as_str)
    }
}

/// Every file of a crate's `src/`.
#[derive(Debug, Clone)]
pub struct Crate {
    pub files: Vec<SourceFile>,
}

impl Crate {
    /// Parses every `.rs` file under `src`; `label` is the prefix of the paths messages show.
    pub fn load(src: &Path, label: &str) -> Self {
        let mut paths = Vec::new();
        walk(src, &mut paths);
        paths.sort();
        let files = paths
            .into_iter()
            .map(|p| {
                let rel = p.strip_prefix(src).expect("under src");
                let text =
                    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                let (root, module) = module_of(rel);
                (
                    test_modules(&module, &text),
                    parse(&Path::new(label).join(rel), root, module, &text),
                )
            })
            .collect::<Vec<_>>();
        // A file that is a `#[cfg(test)] mod x;` of its parent is test code as a whole (a
        // `tests.rs` beside its module, the hub's `testkit`).
        let tests: Vec<(Root, Vec<String>)> = files
            .iter()
            .flat_map(|(t, f)| t.iter().map(|m| (f.root.clone(), m.clone())))
            .collect();
        let mut files: Vec<SourceFile> = files.into_iter().map(|(_, f)| f).collect();
        for f in &mut files {
            if tests
                .iter()
                .any(|(root, m)| *root == f.root && f.module.starts_with(m))
            {
                for r in &mut f.refs {
                    r.test = true;
                }
            }
        }
        Self::from_files(files)
    }

    /// Resolves `crate::` paths through re-exports across files.
    pub fn from_files(mut files: Vec<SourceFile>) -> Self {
        for root in files
            .iter()
            .map(|f| f.root.clone())
            .collect::<BTreeSet<_>>()
        {
            let mut modules = BTreeSet::new();
            let mut aliases = BTreeMap::new();
            for f in files.iter().filter(|f| f.root == root) {
                modules.extend(f.modules.iter().cloned());
                for (m, a) in &f.aliases {
                    aliases
                        .entry(m.clone())
                        .or_insert_with(BTreeMap::new)
                        .extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
            for f in files.iter_mut().filter(|f| f.root == root) {
                for r in &mut f.refs {
                    r.path = through_reexports(&r.path, &modules, &aliases);
                }
            }
        }
        Crate { files }
    }

    /// The library's files, crate root excluded.
    pub fn lib_modules(&self) -> impl Iterator<Item = &SourceFile> {
        self.files
            .iter()
            .filter(|f| f.root == Root::Lib && !f.module.is_empty())
    }

    /// The library's top-level modules.
    pub fn top_modules(&self) -> BTreeSet<String> {
        self.lib_modules()
            .filter_map(|f| f.top().map(str::to_owned))
            .collect()
    }

    /// The top-level modules the library's root declares (`mod x;`, with or without
    /// `#[path]` or `#[cfg(test)]`) and those found as files.
    pub fn declared_top_modules(&self) -> BTreeSet<String> {
        let mut tops = self.top_modules();
        for f in self
            .files
            .iter()
            .filter(|f| f.root == Root::Lib && f.module.is_empty())
        {
            tops.extend(
                f.modules
                    .iter()
                    .filter(|m| m.len() == 1)
                    .map(|m| m[0].clone()),
            );
        }
        tops
    }

    /// Top-level module → top-level module, from the library's `crate::` paths outside
    /// test-only code, each edge with the first reference that makes it (file, path).
    pub fn top_level_graph(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let tops = self.top_modules();
        let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for f in self.lib_modules() {
            let Some(from) = f.top() else { continue };
            let edges = graph.entry(from.to_owned()).or_default();
            for r in f.refs.iter().filter(|r| !r.test) {
                if let Some(to) = r.crate_top()
                    && to != from
                    && tops.contains(to)
                {
                    edges
                        .entry(to.to_owned())
                        .or_insert_with(|| format!("{}: {r}", f.file.display()));
                }
            }
        }
        graph
    }
}

fn walk(d: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(d)
        .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The crate and module of a file, from its path under `src/`.
/// Child modules declared test-only in `text` (`#[cfg(test)]` on the line before `mod x;`).
fn test_modules(module: &[String], text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut test_attr = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("#[path") {
            continue;
        }
        if let Some(name) = line
            .strip_prefix("mod ")
            .or_else(|| line.strip_prefix("pub mod "))
            .and_then(|r| r.strip_suffix(';'))
            && test_attr
        {
            let mut m = module.to_vec();
            m.push(name.trim().to_owned());
            out.push(m);
        }
        test_attr = line == "#[cfg(test)]";
    }
    out
}

pub fn module_of(rel: &Path) -> (Root, Vec<String>) {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().expect("a file name");
    let stem = file.trim_end_matches(".rs").to_owned();
    let root = if parts.first().map(String::as_str) == Some("bin") {
        parts.remove(0);
        // bin/foo.rs is the crate root of `foo`; bin/foo/main.rs too, with bin/foo/x.rs in it.
        if parts.is_empty() {
            return (Root::Bin(stem), vec![]);
        }
        Root::Bin(parts.remove(0))
    } else {
        Root::Lib
    };
    let root_file = match &root {
        Root::Lib => parts.is_empty() && (stem == "lib" || stem == "main"),
        Root::Bin(_) => parts.is_empty() && stem == "main",
    };
    if root_file {
        // src/main.rs beside src/lib.rs is a binary of its own.
        let root = if root == Root::Lib && stem == "main" {
            Root::Bin("main".into())
        } else {
            root
        };
        return (root, vec![]);
    }
    if stem != "mod" {
        parts.push(stem);
    }
    (root, parts)
}

/// Parses one file at `module` of crate `root`.
pub fn parse(file: &Path, root: Root, module: Vec<String>, text: &str) -> SourceFile {
    let ast = syn::parse_file(text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut v = Collector {
        module: module.clone(),
        test_depth: 0,
        raw: Vec::new(),
        uses: Vec::new(),
        modules: BTreeSet::from([module.clone()]),
    };
    v.visit_file(&ast);
    let aliases = resolve_aliases(&v.uses, &v.modules);
    let refs = v
        .raw
        .iter()
        .map(|r| Ref {
            path: resolve(r, &aliases, &v.modules, None),
            written: written(r),
            test: r.test,
        })
        .collect();
    SourceFile {
        file: file.to_path_buf(),
        root,
        module,
        refs,
        aliases,
        modules: v.modules,
    }
}

/// A path as written, in the module it is written in.
#[derive(Debug, Clone)]
struct RawPath {
    module: Vec<String>,
    leading_colon: bool,
    segments: Vec<String>,
    test: bool,
}

fn written(r: &RawPath) -> String {
    format!(
        "{}{}",
        if r.leading_colon { "::" } else { "" },
        r.segments.join("::")
    )
}

/// `name` imported (`use target as name`) in a module.
#[derive(Debug, Clone)]
struct UseAlias {
    name: String,
    target: RawPath,
}

struct Collector {
    /// The module being visited (the file's, then inline ones).
    module: Vec<String>,
    test_depth: usize,
    raw: Vec<RawPath>,
    uses: Vec<UseAlias>,
    modules: BTreeSet<Vec<String>>,
}

impl Collector {
    fn push(&mut self, leading_colon: bool, segments: Vec<String>) {
        if segments.is_empty() {
            return;
        }
        self.raw.push(RawPath {
            module: self.module.clone(),
            leading_colon,
            segments,
            test: self.test_depth > 0,
        });
    }

    fn use_tree(&mut self, leading_colon: bool, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        let leaf = |this: &mut Self, segments: Vec<String>, alias: Option<String>| {
            if segments.is_empty() {
                return;
            }
            let target = RawPath {
                module: this.module.clone(),
                leading_colon,
                segments,
                test: this.test_depth > 0,
            };
            if let Some(name) = alias.filter(|a| a != "_") {
                this.uses.push(UseAlias {
                    name,
                    target: target.clone(),
                });
            }
            this.raw.push(target);
        };
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(leading_colon, prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) if n.ident == "self" => {
                let alias = prefix.last().cloned();
                leaf(self, prefix.clone(), alias);
            }
            syn::UseTree::Name(n) => {
                let mut segments = prefix.clone();
                segments.push(n.ident.to_string());
                leaf(self, segments, Some(n.ident.to_string()));
            }
            syn::UseTree::Rename(r) => {
                let mut segments = prefix.clone();
                if r.ident != "self" {
                    segments.push(r.ident.to_string());
                }
                leaf(self, segments, Some(r.rename.to_string()));
            }
            syn::UseTree::Glob(_) => leaf(self, prefix.clone(), None),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(leading_colon, prefix, t);
                }
            }
        }
    }

    /// Every `a::b…` chain in a macro's tokens (and in nested groups).
    fn tokens(&mut self, tokens: TokenStream) {
        let tts: Vec<TokenTree> = tokens.into_iter().collect();
        let is_colon = |t: Option<&TokenTree>, joint: bool| {
            matches!(t, Some(TokenTree::Punct(p))
                if p.as_char() == ':' && (!joint || p.spacing() == Spacing::Joint))
        };
        let path_sep = |i: usize| is_colon(tts.get(i), true) && is_colon(tts.get(i + 1), false);
        let mut i = 0;
        while i < tts.len() {
            match &tts[i] {
                TokenTree::Group(g) => {
                    self.tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(first) => {
                    // `::x` opens a path unless it continues something (`<T>::x`,
                    // `Vec::<u8>::x`): after `>` or an identifier, it is not a crate name.
                    let leading_colon = i >= 2
                        && path_sep(i - 2)
                        && !matches!(i.checked_sub(3).map(|k| &tts[k]), Some(TokenTree::Ident(_)))
                        && !matches!(i.checked_sub(3).map(|k| &tts[k]),
                            Some(TokenTree::Punct(p)) if p.as_char() == '>');
                    let mut segments = vec![first.to_string()];
                    let mut j = i + 1;
                    while path_sep(j) {
                        match tts.get(j + 2) {
                            Some(TokenTree::Ident(next)) => {
                                segments.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if segments.len() > 1 || leading_colon {
                        self.push(leading_colon, segments);
                    }
                    i = j;
                }
                _ => i += 1,
            }
        }
    }
}

fn is_test_attr(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        let p = a.path();
        if p.segments.last().is_some_and(|s| s.ident == "test") {
            return true;
        }
        if !p.is_ident("cfg") {
            return false;
        }
        match &a.meta {
            syn::Meta::List(l) => has_ident(l.tokens.clone(), "test"),
            _ => false,
        }
    })
}

fn has_ident(tokens: TokenStream, name: &str) -> bool {
    tokens.into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == name,
        TokenTree::Group(g) => has_ident(g.stream(), name),
        _ => false,
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        ExternCrate(i) => &i.attrs,
        Fn(i) => &i.attrs,
        ForeignMod(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Macro(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        TraitAlias(i) => &i.attrs,
        Type(i) => &i.attrs,
        Union(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let test = is_test_attr(item_attrs(item));
        self.test_depth += usize::from(test);
        syn::visit::visit_item(self, item);
        self.test_depth -= usize::from(test);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        let test = is_test_attr(&f.attrs);
        self.test_depth += usize::from(test);
        syn::visit::visit_impl_item_fn(self, f);
        self.test_depth -= usize::from(test);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        self.modules.insert(self.module.clone());
        if let Some((_, items)) = &m.content {
            for attr in &m.attrs {
                self.visit_attribute(attr);
            }
            for item in items {
                self.visit_item(item);
            }
        }
        self.module.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(u.leading_colon.is_some(), &mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.push(
            p.leading_colon.is_some(),
            p.segments.iter().map(|s| s.ident.to_string()).collect(),
        );
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        syn::visit::visit_macro(self, m);
        self.tokens(m.tokens.clone());
    }
}

type Aliases = BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>;

/// Each module's `use` aliases, their targets resolved (a `use` may go through another:
/// `use edgefleet_common::telemetry; use telemetry::topic;`).
fn resolve_aliases(uses: &[UseAlias], modules: &BTreeSet<Vec<String>>) -> Aliases {
    let mut aliases: Aliases = BTreeMap::new();
    for _ in 0..4 {
        let mut next: Aliases = BTreeMap::new();
        for u in uses {
            let target = resolve(&u.target, &aliases, modules, Some(&u.name));
            next.entry(u.target.module.clone())
                .or_default()
                .insert(u.name.clone(), target);
        }
        if next == aliases {
            break;
        }
        aliases = next;
    }
    aliases
}

/// Resolves a path in the module it is written in; `skip` is an alias not to go through
/// (the one being defined).
fn resolve(
    r: &RawPath,
    aliases: &Aliases,
    modules: &BTreeSet<Vec<String>>,
    skip: Option<&str>,
) -> Vec<String> {
    let segs = &r.segments;
    if r.leading_colon {
        return segs.clone();
    }
    let in_crate = |module: &[String], rest: &[String]| -> Vec<String> {
        std::iter::once("crate".to_owned())
            .chain(module.iter().cloned())
            .chain(rest.iter().cloned())
            .collect()
    };
    match segs[0].as_str() {
        "crate" => segs.clone(),
        "self" => in_crate(&r.module, &segs[1..]),
        "super" => {
            let ups = segs.iter().take_while(|s| *s == "super").count();
            let base = &r.module[..r.module.len().saturating_sub(ups)];
            in_crate(base, &segs[ups..])
        }
        first => {
            if Some(first) != skip
                && let Some(target) = aliases.get(&r.module).and_then(|a| a.get(first))
            {
                return target.iter().chain(&segs[1..]).cloned().collect();
            }
            let mut child = r.module.clone();
            child.push(first.to_owned());
            if modules.contains(&child) {
                return in_crate(&r.module, segs);
            }
            segs.clone()
        }
    }
}

/// `crate::a::X::y` where `X` is not a module of `a` but a name `a` imports: the import's
/// target (a re-export, followed to the item's own module).
fn through_reexports(
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
    aliases: &Aliases,
) -> Vec<String> {
    let mut path = path.to_vec();
    'again: for _ in 0..8 {
        if path.first().map(String::as_str) != Some("crate") {
            break;
        }
        for i in 1..path.len() {
            let module = path[1..i].to_vec();
            let mut child = module.clone();
            child.push(path[i].clone());
            if modules.contains(&child) {
                continue;
            }
            if let Some(target) = aliases.get(&module).and_then(|a| a.get(&path[i]))
                && target.as_slice() != &path[..=i]
            {
                path = target.iter().chain(&path[i + 1..]).cloned().collect();
                continue 'again;
            }
            break 'again;
        }
        break;
    }
    path
}

/// The cycles of a graph: one per strongly connected component with more than one node,
/// as `a -> b -> a`, each edge followed by its witness.
pub fn cycles(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<String> {
    let nodes: BTreeSet<&String> = graph
        .iter()
        .flat_map(|(a, es)| std::iter::once(a).chain(es.keys()))
        .collect();
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for m in graph.get(&n).into_iter().flat_map(BTreeMap::keys) {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(*n) || !reachable[n].contains(*n) {
            continue;
        }
        // n's component: what n reaches that reaches n.
        let component: BTreeSet<String> = reachable[n]
            .iter()
            .filter(|m| reachable.get(m).is_some_and(|r| r.contains(*n)))
            .cloned()
            .collect();
        done.extend(component.iter().cloned());
        // A shortest cycle through n, inside the component (BFS back to n).
        let mut parent: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([(*n).clone()]);
        'bfs: while let Some(a) = queue.pop_front() {
            for b in graph.get(&a).into_iter().flat_map(BTreeMap::keys) {
                if !component.contains(b) || parent.contains_key(b) {
                    continue;
                }
                parent.insert(b.clone(), a.clone());
                if b == *n {
                    break 'bfs;
                }
                queue.push_back(b.clone());
            }
        }
        let mut path = vec![(*n).clone()];
        let mut at = parent[*n].clone();
        while at != **n {
            path.push(at.clone());
            at = parent[&at].clone();
        }
        path.push((*n).clone());
        path.reverse();
        let mut text = path.join(" -> ");
        for w in path.windows(2) {
            text.push_str(&format!(
                "\n    {} -> {}: {}",
                w[0], w[1], graph[&w[0]][&w[1]]
            ));
        }
        if component.len() > path.len() - 1 {
            let all: Vec<&String> = component.iter().collect();
            text.push_str(&format!("\n    (one cycle among {all:?})"));
        }
        out.push(text);
    }
    out
}
