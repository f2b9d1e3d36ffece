//! The daemon's modules form no import circle (STYLE.md, "No import circles"):
//! configuration is read once into plain values everything below it takes, and the poll
//! loop (`lib.rs`) sits on top. Every `crate::<module>` a module's source names counts,
//! doc links included.

use std::collections::{BTreeMap, BTreeSet};

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    modules
        .iter()
        .map(|m| {
            let text = std::fs::read_to_string(src.join(format!("{m}.rs"))).unwrap();
            let uses = modules
                .iter()
                .filter(|other| *other != m && text.contains(&format!("crate::{other}")))
                .cloned()
                .collect();
            (m.clone(), uses)
        })
        .collect()
}

/// A circle through `at`, if the graph has one reachable from it.
fn circle(g: &BTreeMap<String, BTreeSet<String>>, at: &str, path: &mut Vec<String>) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|p| p == at) {
        let mut c = path[i..].to_vec();
        c.push(at.to_owned());
        return Some(c);
    }
    path.push(at.to_owned());
    for next in g.get(at).into_iter().flatten() {
        if let Some(c) = circle(g, next, path) {
            return Some(c);
        }
    }
    path.pop();
    None
}

#[test]
fn the_daemons_modules_import_each_other_in_no_circle() {
    let g = graph();
    assert!(g.len() > 5, "the modules were found: {g:?}");
    assert!(g["workspace"].contains("config"), "references are seen: {g:?}");
    for m in g.keys() {
        if let Some(c) = circle(&g, m, &mut Vec::new()) {
            panic!("an import circle: {}", c.join(" → "));
        }
    }
}
