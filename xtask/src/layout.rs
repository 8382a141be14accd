//! `cargo xtask layout`: the controller's shape, measured and enforced (part of `cargo xtask lint`).
//!
//! - **Size budgets.** No file of ftn-controller holds more than [`MAX_FILE_LINES`] lines outside
//!   its tests, and no function (free, method or trait default) spans more than
//!   [`MAX_FN_LINES`] lines from `fn` to its closing brace. Lines are counted as they are in the
//!   file (comments and blank lines included). Test code is what `#[cfg(test)]` guards: inline
//!   items, and files declared by `#[cfg(test)] mod x;`.
//! - **Dependency order.** `lib.rs` declares its top-level modules in dependency order. A module
//!   may name (`crate::x`, in `use` trees, paths and macro bodies) only modules declared before
//!   it, so the graph has no cycle and the order written in lib.rs is the real one. Test code is
//!   exempt (a test may reach anything).
//!
//! The source is parsed with `syn`, so a function's extent and a module's imports are read from
//! the syntax tree, not guessed from indentation.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use proc_macro2::{TokenStream, TokenTree};
use syn::spanned::Spanned;
use syn::visit::Visit;

pub const MAX_FILE_LINES: usize = 800;
pub const MAX_FN_LINES: usize = 120;
/// How many of the largest files and functions the report lists.
const REPORT_TOP: usize = 8;

/// One source file of the library, with what the budgets and the order need.
struct Source {
    rel: String,
    /// Top-level module (`config` for src/config/read.rs); `None` for lib.rs.
    module: Option<String>,
    non_test_lines: usize,
    fns: Vec<(String, usize, usize)>,
    uses: BTreeMap<String, usize>,
}

pub struct Report {
    files: Vec<(String, usize)>,
    fns: Vec<(String, usize)>,
    order: Vec<String>,
    edges: BTreeMap<String, BTreeSet<String>>,
    problems: Vec<String>,
}

pub fn check(root: &Path) -> Result<Report> {
    let src = root.join("ftn-controller/src");
    let lib =
        fs::read_to_string(src.join("lib.rs")).context("reading ftn-controller/src/lib.rs")?;
    let lib = syn::parse_file(&lib).map_err(|e| anyhow!("ftn-controller/src/lib.rs: {e}"))?;
    let order: Vec<String> = lib
        .items
        .iter()
        .filter_map(|i| match i {
            syn::Item::Mod(m) if !is_cfg_test(&m.attrs) => Some(m.ident.to_string()),
            _ => None,
        })
        .collect();
    let mut sources = Vec::new();
    let mut test_files = BTreeSet::new();
    let mut files = Vec::new();
    collect_files(&src, &mut files)?;
    files.sort();
    // Declared-test files first (a `#[cfg(test)] mod tests;` names its file).
    let mut parsed = Vec::new();
    for path in files {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let file = syn::parse_file(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        for item in &file.items {
            if let syn::Item::Mod(m) = item {
                if m.content.is_none() && is_cfg_test(&m.attrs) {
                    let dir = module_dir(&path);
                    test_files.insert(dir.join(format!("{}.rs", m.ident)));
                    test_files.insert(dir.join(m.ident.to_string()).join("mod.rs"));
                }
            }
        }
        parsed.push((path, text, file));
    }
    for (path, text, file) in parsed {
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let inner = path.strip_prefix(&src).unwrap_or(&path);
        // main.rs and cli.rs are the binary: they use the library from outside.
        let first = inner
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        let module = match first.as_deref() {
            Some("lib.rs") => None,
            Some("main.rs") | Some("cli.rs") => Some("(bin)".to_string()),
            Some(f) => Some(f.trim_end_matches(".rs").to_string()),
            None => None,
        };
        if test_files.contains(&path) {
            continue;
        }
        let mut v = Visitor::default();
        v.visit_file(&file);
        let total = text.lines().count();
        sources.push(Source {
            rel,
            module,
            non_test_lines: total - v.test_lines,
            fns: v.fns,
            uses: v.uses,
        });
    }

    let mut problems = Vec::new();
    let mut file_sizes = Vec::new();
    let mut fn_sizes = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &sources {
        file_sizes.push((s.rel.clone(), s.non_test_lines));
        if s.non_test_lines > MAX_FILE_LINES {
            problems.push(format!(
                "{}: {} lines outside tests (budget {MAX_FILE_LINES})",
                s.rel, s.non_test_lines
            ));
        }
        for (name, line, len) in &s.fns {
            fn_sizes.push((format!("{}:{line} {name}", s.rel), *len));
            if *len > MAX_FN_LINES {
                problems.push(format!(
                    "{}:{line}: fn {name} is {len} lines (budget {MAX_FN_LINES})",
                    s.rel
                ));
            }
        }
        let Some(module) = &s.module else { continue };
        if module == "(bin)" {
            continue;
        }
        let Some(pos) = order.iter().position(|m| m == module) else {
            problems.push(format!(
                "{}: module `{module}` is not declared in lib.rs",
                s.rel
            ));
            continue;
        };
        for (dep, line) in &s.uses {
            if dep == module {
                continue;
            }
            edges.entry(module.clone()).or_default().insert(dep.clone());
            match order.iter().position(|m| m == dep) {
                Some(d) if d < pos => {}
                Some(_) => problems.push(format!(
                    "{}:{line}: `{module}` names `crate::{dep}`, which lib.rs declares after it \
                     (a module may use only those declared before it)",
                    s.rel
                )),
                None => problems.push(format!(
                    "{}:{line}: `crate::{dep}` is not a module declared in lib.rs",
                    s.rel
                )),
            }
        }
    }
    file_sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    fn_sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(Report {
        files: file_sizes,
        fns: fn_sizes,
        order,
        edges,
        problems,
    })
}

impl Report {
    pub fn print(&self) {
        println!("dependency order (lib.rs): {}", self.order.join(" -> "));
        for m in &self.order {
            let deps: Vec<&str> = self
                .edges
                .get(m)
                .map(|d| d.iter().map(String::as_str).collect())
                .unwrap_or_default();
            println!(
                "  {m:<10} uses {}",
                if deps.is_empty() {
                    "-".to_string()
                } else {
                    deps.join(", ")
                }
            );
        }
        println!("largest files (lines outside tests, budget {MAX_FILE_LINES}):");
        for (f, n) in self.files.iter().take(REPORT_TOP) {
            println!("  {n:>5}  {f}");
        }
        println!("largest functions (lines, budget {MAX_FN_LINES}):");
        for (f, n) in self.fns.iter().take(REPORT_TOP) {
            println!("  {n:>5}  {f}");
        }
    }

    pub fn verdict(&self) -> Result<()> {
        if self.problems.is_empty() {
            println!("layout: ok (no module uses one declared after it; every budget met)");
            return Ok(());
        }
        for p in &self.problems {
            eprintln!("layout: {p}");
        }
        bail!(
            "layout: {} problem(s) in ftn-controller/src",
            self.problems.len()
        )
    }
}

pub fn run(root: &Path) -> Result<()> {
    let report = check(root)?;
    report.print();
    report.verdict()
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The directory where `mod x;` in this file looks for x.rs.
fn module_dir(file: &Path) -> PathBuf {
    let parent = file.parent().unwrap_or(Path::new("."));
    match file.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs") | Some("lib.rs") | Some("main.rs") => parent.to_path_buf(),
        _ => parent.join(file.file_stem().unwrap_or_default()),
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .map(|m| m.path().is_ident("test"))
                .unwrap_or(false)
    })
}

#[derive(Default)]
struct Visitor {
    test_lines: usize,
    fns: Vec<(String, usize, usize)>,
    uses: BTreeMap<String, usize>,
    impl_of: Option<String>,
}

impl Visitor {
    fn note_use(&mut self, name: &syn::Ident) {
        let line = name.span().start().line;
        self.uses.entry(name.to_string()).or_insert(line);
    }

    fn note_fn(&mut self, name: String, span: proc_macro2::Span) {
        let (start, end) = (span.start().line, span.end().line);
        self.fns.push((name, start, end + 1 - start));
    }

    fn use_tree(&mut self, tree: &syn::UseTree, at_crate: bool) {
        match tree {
            syn::UseTree::Path(p) if !at_crate && p.ident == "crate" => {
                self.use_tree(&p.tree, true)
            }
            syn::UseTree::Path(p) if at_crate => self.note_use(&p.ident),
            syn::UseTree::Name(n) if at_crate => self.note_use(&n.ident),
            syn::UseTree::Rename(r) if at_crate => self.note_use(&r.ident),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(t, at_crate);
                }
            }
            _ => {}
        }
    }

    fn tokens(&mut self, tokens: &TokenStream) {
        let list: Vec<TokenTree> = tokens.clone().into_iter().collect();
        for (i, t) in list.iter().enumerate() {
            match t {
                TokenTree::Group(g) => self.tokens(&g.stream()),
                TokenTree::Ident(id) if id == "crate" => {
                    // `crate :: name`: two ':' puncts, then the module.
                    if let (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(m)),
                    ) = (list.get(i + 1), list.get(i + 2), list.get(i + 3))
                    {
                        if a.as_char() == ':' && b.as_char() == ':' {
                            self.note_use(m);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// A `#[cfg(test)]` item: its lines are test lines and nothing inside it is visited.
    fn skip_test(&mut self, attrs: &[syn::Attribute], span: proc_macro2::Span) -> bool {
        if !is_cfg_test(attrs) {
            return false;
        }
        let first = attrs
            .iter()
            .map(|a| a.span().start().line)
            .min()
            .unwrap_or(span.start().line);
        self.test_lines += span.end().line + 1 - first;
        true
    }
}

impl<'ast> Visit<'ast> for Visitor {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Type(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => &[],
        };
        if self.skip_test(attrs, item.span()) {
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&u.tree, false);
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        let ty = match &*i.self_ty {
            syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
            _ => None,
        };
        let saved = std::mem::replace(&mut self.impl_of, ty);
        syn::visit::visit_item_impl(self, i);
        self.impl_of = saved;
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if self.skip_test(&f.attrs, f.span()) {
            return;
        }
        let name = match &self.impl_of {
            Some(t) => format!("{t}::{}", f.sig.ident),
            None => f.sig.ident.to_string(),
        };
        let span = f
            .sig
            .fn_token
            .span
            .join(f.block.brace_token.span.close())
            .unwrap_or(f.span());
        self.note_fn(name, span);
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        let span = f
            .sig
            .fn_token
            .span
            .join(f.block.brace_token.span.close())
            .unwrap_or(f.span());
        self.note_fn(f.sig.ident.to_string(), span);
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(block) = &f.default {
            let span = f
                .sig
                .fn_token
                .span
                .join(block.brace_token.span.close())
                .unwrap_or(f.span());
            self.note_fn(f.sig.ident.to_string(), span);
        }
        syn::visit::visit_trait_item_fn(self, f);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let mut segs = p.segments.iter();
        if let (Some(first), Some(second)) = (segs.next(), segs.next()) {
            if first.ident == "crate" && p.segments.len() > 2 {
                self.note_use(&second.ident);
            }
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(&m.tokens);
        syn::visit::visit_macro(self, m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throw-away ftn-controller/src tree under the system's temp directory.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str, files: &[(&str, String)]) -> Tree {
            let root =
                std::env::temp_dir().join(format!("ftn-layout-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            for (path, text) in files {
                let p = root.join("ftn-controller/src").join(path);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, text).unwrap();
            }
            Tree(root)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn long_fn(name: &str, lines: usize) -> String {
        format!(
            "pub fn {name}() {{\n{}}}\n",
            "    let _ = 1;\n".repeat(lines - 2)
        )
    }

    #[test]
    fn a_use_of_a_later_module_and_an_oversized_function_are_reported() {
        let tree = Tree::new(
            "bad",
            &[
                ("lib.rs", "pub mod a;\npub mod b;\n".into()),
                ("a.rs", "use crate::b::X;\npub fn f(_: X) {}\n".into()),
                (
                    "b/mod.rs",
                    format!("pub struct X;\n{}", long_fn("long", MAX_FN_LINES + 1)),
                ),
            ],
        );
        let r = check(&tree.0).unwrap();
        let all = r.problems.join("\n");
        assert_eq!(r.problems.len(), 2, "{all}");
        assert!(
            all.contains("a.rs:1: `a` names `crate::b`, which lib.rs declares after it"),
            "{all}"
        );
        assert!(
            all.contains(&format!("fn long is {} lines", MAX_FN_LINES + 1)),
            "{all}"
        );
    }

    #[test]
    fn earlier_modules_tests_and_macros_are_read_right() {
        let tree = Tree::new(
            "good",
            &[
                ("lib.rs", "pub mod a;\npub mod b;\n".into()),
                (
                    "a.rs",
                    // Test code may use anything; a fn at the budget passes.
                    format!(
                        "{}#[cfg(test)]\nmod tests {{ use crate::b::Y; }}\n#[cfg(test)]\nmod more;\n",
                        long_fn("at_budget", MAX_FN_LINES)
                    ),
                ),
                ("a/more.rs", "use crate::b::Y;\n".into()),
                (
                    "b.rs",
                    "pub struct Y;\npub fn g() { let _ = format!(\"{:?}\", crate::a::at_budget()); }\n"
                        .into(),
                ),
            ],
        );
        let r = check(&tree.0).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        // The use inside format!'s tokens is seen.
        assert_eq!(r.edges["b"].iter().collect::<Vec<_>>(), vec!["a"]);
        assert!(
            !r.edges.contains_key("a"),
            "test code counted: {:?}",
            r.edges
        );
    }
}
