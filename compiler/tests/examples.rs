//! The shipped policies must check clean: every `examples/*/` directory (all its `.kalki`
//! files together) and every standard-library module. Each gets a snapshot of what the
//! check reports, so a change in their diagnostics shows up in review.
//!
//! No directory is skipped silently: an empty `examples/`, or an example directory with no
//! `.kalki` file, fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{repo_root, FsLoader, MemLoader};
use kalki_compiler::ir::Model;
use kalki_compiler::source::SourceId;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

fn example_dirs() -> Vec<PathBuf> {
    let root = repo_root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("examples"))
        .expect("examples/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| PathBuf::from("examples").join(p.file_name().unwrap()))
        .collect();
    dirs.sort();
    dirs
}

fn kalki_files(dir: &PathBuf) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "kalki"))
        .map(|p| dir.join(p.file_name().unwrap()))
        .collect();
    files.sort();
    files
}

/// What a model declares in the sources `keep` selects, by name: a compact summary for
/// snapshots (imported modules are left out, so a stdlib change does not touch every
/// example's snapshot).
fn summary(model: &Model, keep: impl Fn(SourceId) -> bool) -> String {
    let mut out = String::new();
    for u in model.umboxes.iter().filter(|u| keep(u.loc.source)) {
        let _ = writeln!(out, "umbox {} emits [{}]", u.name, u.emits.join(", "));
    }
    for t in model.device_types.iter().filter(|t| keep(t.loc.source)) {
        let states: Vec<&str> = t.states.iter().map(|s| s.name.as_str()).collect();
        let vars: Vec<&str> = t.vars.iter().map(|v| v.name.as_str()).collect();
        let _ = writeln!(
            out,
            "device type {}: states [{}], sensed [{}], commands [{}], {} transitions",
            t.name,
            states.join(" < "),
            vars.join(", "),
            t.commands.join(", "),
            t.transitions.len()
        );
    }
    for s in model.sites.iter().filter(|s| keep(s.loc.source)) {
        let _ = writeln!(
            out,
            "site {}: {} devices, {} rules, {} assertions",
            s.name,
            s.devices.len(),
            s.rules.len(),
            s.asserts.len()
        );
    }
    out
}

/// Asserts one snapshot under `snapshots/examples`; false if it differs (insta has
/// printed the diff), so every case is still checked.
fn snapshot(name: &str, text: &str) -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        insta::with_settings!({
            snapshot_path => "snapshots/examples",
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(name, text);
        });
    }))
    .is_ok()
}

#[test]
fn every_example_checks_without_errors() {
    let dirs = example_dirs();
    assert!(!dirs.is_empty(), "examples/ holds no example directory");
    let loader = FsLoader { base: repo_root() };
    let mut failures = Vec::new();
    for dir in &dirs {
        let files = kalki_files(dir);
        if files.is_empty() {
            failures.push(format!("{}: no .kalki files", dir.display()));
            continue;
        }
        let checked = kalki_compiler::check(&files, &loader);
        let rendered = kalki_compiler::render::human(&checked.sources, &checked.diagnostics, false);
        if !checked.unreadable.is_empty() || checked.diagnostics.iter().any(|d| d.is_error()) {
            failures.push(format!(
                "{}: {:?}\n{rendered}",
                dir.display(),
                checked.unreadable
            ));
            continue;
        }
        let mut text = String::new();
        for f in &files {
            let _ = writeln!(text, "// ---- {}", f.display());
        }
        if let Some(model) = &checked.model {
            text.push_str(&summary(model, |s| model.roots.contains(&s)));
        }
        text.push_str("// ---- diagnostics\n");
        text.push_str(&rendered);
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if !snapshot(&name, &text) {
            failures.push(format!("{}: snapshot differs", dir.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_stdlib_module_checks_clean() {
    let mut failures = Vec::new();
    for (module, _) in kalki_compiler::stdlib::MODULES {
        let import = format!("import std::{}::*\n", module.replace('/', "::"));
        let loader = MemLoader::new([("root.kalki", import)]);
        let checked = kalki_compiler::check(&[PathBuf::from("root.kalki")], &loader);
        let rendered = kalki_compiler::render::human(&checked.sources, &checked.diagnostics, false);
        if !checked.diagnostics.is_empty() {
            failures.push(format!("std::{module}:\n{rendered}"));
            continue;
        }
        let model = checked.model.expect("a clean check has a model");
        let own = format!("std::{}", module.replace('/', "::"));
        let this = checked
            .sources
            .iter()
            .find(|(_, f)| f.name == own)
            .map(|(id, _)| id);
        let declared = summary(&model, |s| Some(s) == this);
        if declared.is_empty() {
            failures.push(format!("{own} declares nothing"));
            continue;
        }
        let text = format!("{declared}// ---- diagnostics\n{rendered}");
        let name = format!("std__{}", module.replace('/', "__"));
        if !snapshot(&name, &text) {
            failures.push(format!("std::{module}: snapshot differs"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every ` ```kalki ` block of the docs and the README is a complete file the compiler
/// accepts without errors (language.md says so of its own; fragments use plain fences).
#[test]
fn every_kalki_block_of_the_docs_checks_without_errors() {
    let root = repo_root();
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.push(root.join("README.md"));
    pages.sort();
    let mut blocks = 0;
    let mut failures = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let mut lines = text.lines().enumerate();
        while let Some((i, line)) = lines.next() {
            if line.trim() != "```kalki" {
                continue;
            }
            let body: Vec<&str> = lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| l.trim() != "```")
                .collect();
            blocks += 1;
            let loader = MemLoader::new([("block.kalki", body.join("\n"))]);
            let checked = kalki_compiler::check(&[PathBuf::from("block.kalki")], &loader);
            if checked.diagnostics.iter().any(|d| d.is_error()) {
                let rendered =
                    kalki_compiler::render::human(&checked.sources, &checked.diagnostics, false);
                failures.push(format!(
                    "{}:{}: {rendered}",
                    page.strip_prefix(&root).unwrap().display(),
                    i + 1
                ));
            }
        }
    }
    assert!(blocks >= 10, "only {blocks} kalki blocks found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
