//! The layering of `wsplug-host`, as `docs/architecture.md` states it ("Allowed edges",
//! between the crate's modules, and "Inside `plugin/`", between the plugin runtime's
//! files), compared with the code both ways: every `crate::x` (or, inside `plugin/`,
//! `super::x`) a module's code names must be allowed by the table, every edge the table
//! allows must still be in the code, and each table must be a layering (no circle).
//! Reads files only: no binary, no plugin.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Each module and what it imports.
type Edges = BTreeMap<String, BTreeSet<String>>;

/// The crates the library re-exports as modules: they import nothing of the host.
const CRATES: [&str; 3] = ["conn", "http", "ws"];

/// The "Allowed edges" table of docs/architecture.md.
fn allowed() -> Edges {
    table("### Allowed edges")
}

/// The table of docs/architecture.md under `heading`: each module and what it may import.
fn table(heading: &str) -> Edges {
    let page = std::fs::read_to_string(Path::new(ROOT).join("docs/architecture.md")).expect("docs/architecture.md");
    let table = page
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/architecture.md has no {heading:?} section"));
    let name = |cell: &str| cell.trim().trim_matches('`').to_owned();
    table
        .lines()
        .skip_while(|line| !line.starts_with("| module |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').collect();
            let imports = cells[2].split(',').map(name).filter(|m| !m.is_empty()).collect();
            (name(cells[1]), imports)
        })
        .collect()
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read host/src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The top-level modules each module's code names through `crate::`, comments left out.
fn actual(modules: &BTreeSet<String>) -> Edges {
    let src = Path::new(ROOT).join("host/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges = Edges::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.iter().next().unwrap().to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if !modules.contains(&module) {
            continue; // lib.rs, main.rs
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                // `crate::` inside an identifier (`wsplug_crate::`) or a longer path does not count.
                if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let named: String = code[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !named.is_empty() && named != module {
                    edges.entry(module.clone()).or_default().insert(named);
                }
            }
        }
    }
    edges
}

/// The plugin runtime's files each file names through `super::` (the runtime's own
/// vocabulary in `mod.rs` left out), comments left out.
fn plugin_actual(modules: &BTreeSet<String>) -> Edges {
    let dir = Path::new(ROOT).join("host/src/plugin");
    let mut edges = Edges::new();
    for entry in std::fs::read_dir(&dir).expect("host/src/plugin") {
        let file = entry.expect("entry").path();
        let module = file.file_stem().unwrap().to_string_lossy().into_owned();
        if !modules.contains(&module) {
            continue; // mod.rs
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let identifier =
            |text: &str| -> String { text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("super::") {
                let rest = &code[at + 7..];
                if rest.starts_with("super::") {
                    continue; // the next match names it
                }
                // `super::x`, or each item of `super::{x, y::z}`.
                let named: Vec<String> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .map(|item| identifier(item.trim()))
                        .collect(),
                    None => vec![identifier(rest)],
                };
                for name in named {
                    if modules.contains(&name) && name != module {
                        edges.entry(module.clone()).or_default().insert(name);
                    }
                }
            }
        }
    }
    edges
}

#[test]
fn the_code_keeps_the_layering_the_architecture_page_states() {
    let allowed = allowed();
    let modules: BTreeSet<String> = allowed.keys().cloned().collect();
    assert!(modules.contains("server") && modules.contains("plugin"), "{allowed:?}");
    let actual = actual(&modules);
    compare(&allowed, &actual, &modules);
}

#[test]
fn the_plugin_runtime_keeps_the_layering_the_architecture_page_states() {
    let allowed = table("### Inside `plugin/`");
    let modules: BTreeSet<String> = allowed.keys().cloned().collect();
    assert!(
        modules.contains("supervisor") && modules.contains("instance"),
        "{allowed:?}"
    );
    compare(&allowed, &plugin_actual(&modules), &modules);
    no_circle(allowed);
}

/// Panics with every difference between the table and the code.
fn compare(allowed: &Edges, actual: &Edges, modules: &BTreeSet<String>) {
    let mut problems = Vec::new();
    for (module, imports) in actual {
        for import in imports {
            if !allowed[module].contains(import) {
                problems.push(format!("{module} imports {import}, which the table does not allow"));
            }
        }
    }
    for (module, imports) in allowed {
        for import in imports {
            let known = modules.contains(import) || CRATES.contains(&import.as_str());
            if !known {
                problems.push(format!("{module} may import {import}, which is no module"));
            } else if !actual.get(module).is_some_and(|i| i.contains(import)) {
                problems.push(format!(
                    "{module} may import {import}, but no longer does: update the table"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/architecture.md and host/src disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_allowed_edges_form_no_circle() {
    no_circle(allowed());
}

fn no_circle(allowed: Edges) {
    // Repeatedly remove modules that import nothing still present: a layering empties.
    let mut left: Edges = allowed
        .into_iter()
        .map(|(m, i)| (m, i.into_iter().filter(|x| !CRATES.contains(&x.as_str())).collect()))
        .collect();
    while !left.is_empty() {
        let bottom: Vec<String> = left
            .iter()
            .filter(|(_, imports)| imports.iter().all(|i| !left.contains_key(i)))
            .map(|(m, _)| m.clone())
            .collect();
        assert!(
            !bottom.is_empty(),
            "a circle among {:?}",
            left.keys().collect::<Vec<_>>()
        );
        for module in bottom {
            left.remove(&module);
        }
    }
}
