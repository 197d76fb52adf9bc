//! The layout is the architecture. The reconciler has four layers (`desired` → `store` → `ops` →
//! `daemon`), each a folder, and no module imports from a layer above its own; no module of any
//! crate takes part in an import circle. These tests read the sources, so a change that breaks a
//! rule fails CI naming the modules and the import that broke it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: [&str; 4] = ["desired", "store", "ops", "daemon"];

/// Every module of a crate of the workspace: `desired::plan` → its source.
fn modules_of(krate: &str) -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("read src")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let stem = p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .to_owned();
            if p.is_dir() {
                let name = format!("{prefix}{stem}");
                walk(&p, &format!("{name}::"), out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let name = match (prefix, stem.as_str()) {
                    ("", "lib" | "main") => continue,
                    (pre, "mod") => pre.trim_end_matches("::").to_owned(),
                    (pre, s) => format!("{pre}{s}"),
                };
                let src = std::fs::read_to_string(&p).expect("read module");
                // Unit tests may use anything of their own module; they are not architecture.
                let src = match src.find("#[cfg(test)]") {
                    Some(i) => src[..i].to_owned(),
                    None => src,
                };
                // Comments (and doc comments) name paths without importing them.
                let src: String = src
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                out.insert(name, src);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(krate)
            .join("src"),
        "",
        &mut out,
    );
    out
}

fn modules() -> BTreeMap<String, String> {
    modules_of("reconciler")
}

/// The modules `src` refers to (`crate::a::b::Item` → the longest known module prefix).
fn imports(name: &str, src: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let parent = match name.rsplit_once("::") {
        Some((p, _)) => p.to_owned(),
        None => String::new(),
    };
    let mut out = BTreeSet::new();
    let bytes = src.as_bytes();
    for (kw, base) in [("crate::", String::new()), ("super::", parent.clone())] {
        let mut from = 0;
        while let Some(i) = src[from..].find(kw) {
            let start = from + i + kw.len();
            from = start;
            if i + from - kw.len() > 0 {
                let prev = bytes[start - kw.len() - 1];
                if prev.is_ascii_alphanumeric() || prev == b'_' {
                    continue;
                }
            }
            let path: String = src[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let mut best = None;
            while !segs.is_empty() {
                let cand = if base.is_empty() {
                    segs.join("::")
                } else {
                    format!("{base}::{}", segs.join("::"))
                };
                if known.contains(&cand) {
                    best = Some(cand);
                    break;
                }
                segs.pop();
            }
            if let Some(b) = best
                && b != name
            {
                out.insert(b);
            }
        }
    }
    // A parent module naming its own submodules (`audit::Audit` in `store`).
    for child in known.iter().filter_map(|k| {
        let (p, c) = k.rsplit_once("::").unwrap_or(("", k));
        (p == name).then_some(c)
    }) {
        let pat = format!("{child}::");
        let mut from = 0;
        while let Some(i) = src[from..].find(&pat) {
            let at = from + i;
            from = at + pat.len();
            let prev = if at == 0 { b' ' } else { bytes[at - 1] };
            if !(prev.is_ascii_alphanumeric() || prev == b'_' || prev == b':') {
                out.insert(format!("{name}::{child}"));
                break;
            }
        }
    }
    out
}

fn layer(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|l| *l == top)
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let mods = modules();
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let mut bad = Vec::new();
    for (name, src) in &mods {
        let Some(mine) = layer(name) else { continue };
        for dep in imports(name, src, &known) {
            if let Some(theirs) = layer(&dep)
                && theirs > mine
            {
                bad.push(format!(
                    "{name} (layer {}) imports {dep} (layer {})",
                    LAYERS[mine], LAYERS[theirs]
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports that run back up:\n{}",
        bad.join("\n")
    );
}

#[test]
fn there_are_no_import_circles() {
    let mut circles = Vec::new();
    for krate in ["opsrepo", "reconciler", "sitegen", "cli", "tests"] {
        for c in circles_in(&modules_of(krate)) {
            circles.push(format!("{krate}: {c}"));
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

fn circles_in(mods: &BTreeMap<String, String>) -> Vec<String> {
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let graph: BTreeMap<String, BTreeSet<String>> = mods
        .iter()
        .map(|(n, s)| (n.clone(), imports(n, s, &known)))
        .collect();
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        circles: &mut Vec<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_owned());
            circles.push(c.join(" → "));
            return;
        }
        stack.push(n.to_owned());
        for d in g.get(n).into_iter().flatten() {
            visit(d, g, stack, done, circles);
        }
        stack.pop();
        done.insert(n.to_owned());
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        visit(n, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    circles
}

#[test]
fn the_checker_sees_imports() {
    // The rules above pass vacuously if the parser finds nothing: check it on known facts.
    let mods = modules();
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let apply = imports("ops::apply", &mods["ops::apply"], &known);
    assert!(apply.contains("desired::plan"), "{apply:?}");
    assert!(apply.contains("store"), "{apply:?}");
    // A circle is found when there is one.
    let mut fake = BTreeMap::new();
    fake.insert("a".to_owned(), "use crate::b::X;".to_owned());
    fake.insert("b".to_owned(), "use crate::a::Y;".to_owned());
    assert_eq!(circles_in(&fake), vec!["a → b → a".to_owned()]);
    let back = imports("x", "use crate::daemon::api::router;", &known);
    assert!(back.contains("daemon::api"), "{back:?}");
    assert!(LAYERS.iter().all(|l| known.contains(*l)), "{known:?}");
}
