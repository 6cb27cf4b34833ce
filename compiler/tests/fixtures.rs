//! Data-driven tests of `kalkic check`: every fixture under `tests/fixtures/check/` gives
//! one insta snapshot holding its source and the rendered diagnostics (colours off).
//!
//! - `errors/kNNN_*.kalki` must report code `KNNN`, and every diagnostic must point at
//!   source (a label with a non-empty span; K003, the end of the file, may be empty).
//! - `clean/*.kalki` must report nothing at all.
//! - A subdirectory is one multi-file case whose roots are all its `.kalki` files.
//!
//! Update snapshots with `INSTA_UPDATE=always cargo test -p kalki-compiler --test fixtures`
//! (or `cargo insta review`), then read every changed snapshot before accepting it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{check_spans, filter_paths, repo_root, FsLoader};
use kalki_compiler::source::Origin;
use kalki_compiler::Checked;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Errors,
    Clean,
}

/// One fixture: a file, or a directory of files checked together.
#[derive(Debug)]
struct Case {
    /// `errors/k101_missing_file` (no extension), relative to the fixture root.
    name: String,
    /// Root files, relative to the repository root.
    roots: Vec<PathBuf>,
    expect: Expect,
}

fn fixture_root() -> PathBuf {
    PathBuf::from("tests/fixtures/check")
}

fn kalki_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "kalki"))
        .map(|p| dir.join(p.file_name().unwrap()))
        .collect();
    out.sort();
    out
}

fn cases(expect: Expect) -> Vec<Case> {
    let sub = match expect {
        Expect::Errors => "errors",
        Expect::Clean => "clean",
    };
    let dir = fixture_root().join(sub);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(repo_root().join(&dir))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into())
        .collect();
    entries.sort();
    let mut out = Vec::new();
    for entry in entries {
        let rel = dir.join(&entry);
        let abs = repo_root().join(&rel);
        let stem = entry
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap()
            .to_string();
        let roots = if abs.is_dir() {
            let files = kalki_files(&rel);
            assert!(
                !files.is_empty(),
                "fixture directory {} holds no .kalki files",
                rel.display()
            );
            files
        } else if entry.extension().is_some_and(|x| x == "kalki") {
            vec![rel.clone()]
        } else {
            panic!(
                "stray file {} in the fixtures (only .kalki files and directories)",
                rel.display()
            );
        };
        out.push(Case {
            name: format!("{sub}/{stem}"),
            roots,
            expect,
        });
    }
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

/// The snapshot text: every local source the check read, then the diagnostics.
fn snapshot_text(checked: &Checked) -> String {
    let mut out = String::new();
    for (_, f) in checked.sources.iter() {
        if let Origin::File(_) = f.origin {
            let _ = writeln!(out, "// ---- {}", f.name);
            out.push_str(&f.text);
            if !f.text.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    for (p, e) in &checked.unreadable {
        let _ = writeln!(out, "// ---- {} (unreadable: {e})", p.display());
    }
    out.push_str("// ---- diagnostics\n");
    out.push_str(&kalki_compiler::render::human(
        &checked.sources,
        &checked.diagnostics,
        false,
    ));
    filter_paths(&out)
}

fn check_case(case: &Case, checked: &Checked) -> Result<(), String> {
    if !checked.unreadable.is_empty() {
        return Err(format!("unreadable roots: {:?}", checked.unreadable));
    }
    let diags = &checked.diagnostics;
    for d in diags {
        check_spans(&checked.sources, d)?;
    }
    match case.expect {
        Expect::Clean => {
            if !diags.is_empty() {
                let codes: Vec<&str> = diags.iter().map(|d| d.code).collect();
                return Err(format!("a clean fixture reported {codes:?}"));
            }
        }
        Expect::Errors => {
            let stem = case.name.rsplit('/').next().unwrap_or_default();
            let code = stem.get(..4).unwrap_or_default().to_uppercase();
            let well_formed = code.len() == 4
                && code.starts_with('K')
                && code[1..].chars().all(|c| c.is_ascii_digit());
            if !well_formed {
                return Err(format!(
                    "error fixture `{stem}` must be named kNNN_description"
                ));
            }
            if !diags.iter().any(|d| d.code == code) {
                let codes: Vec<&str> = diags.iter().map(|d| d.code).collect();
                return Err(format!("expected {code}, got {codes:?}"));
            }
            for d in diags {
                let located = d.labels.iter().any(|l| !l.loc.span.is_empty());
                let eof = d.code == "K003" && !d.labels.is_empty();
                if !located && !eof {
                    return Err(format!(
                        "{} `{}` has no label with a non-empty span",
                        d.code, d.message
                    ));
                }
            }
        }
    }
    Ok(())
}

fn run(expect: Expect) {
    let loader = FsLoader { base: repo_root() };
    let mut failures: Vec<String> = Vec::new();
    let all = cases(expect);
    for case in &all {
        let checked = kalki_compiler::check(&case.roots, &loader);
        if let Err(why) = check_case(case, &checked) {
            failures.push(format!("{}: {why}", case.name));
        }
        let text = snapshot_text(&checked);
        let snap_name = case.name.replace('/', "__");
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            insta::with_settings!({
                snapshot_path => "snapshots/check",
                prepend_module_to_snapshot => false,
                omit_expression => true,
                description => format!("kalkic check {}", case.name),
            }, {
                insta::assert_snapshot!(snap_name, text);
            });
        }));
        if outcome.is_err() {
            failures.push(format!("{}: snapshot differs", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n  {}",
        failures.len(),
        all.len(),
        failures.join("\n  ")
    );
}

#[test]
fn error_fixtures() {
    run(Expect::Errors);
}

#[test]
fn clean_fixtures() {
    run(Expect::Clean);
}

/// Every syntax and name/type code has at least one fixture.
#[test]
fn every_front_end_code_has_a_fixture() {
    let names: Vec<String> = cases(Expect::Errors).into_iter().map(|c| c.name).collect();
    let mut codes: Vec<String> = ["K001", "K002", "K003", "K004"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    codes.extend(
        kalki_compiler::codes::NAME_AND_TYPE_CODES
            .iter()
            .map(|(c, _)| c.to_string())
            // K112 (unreadable file) is a usage error: see tests/cli.rs.
            .filter(|c| c != kalki_compiler::codes::UNREADABLE),
    );
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| {
            let prefix = format!("errors/{}_", c.to_lowercase());
            !names.iter().any(|n| n.starts_with(&prefix))
        })
        .collect();
    assert!(missing.is_empty(), "codes without a fixture: {missing:?}");
}

/// Collect, don't stop: three mistakes in three items give exactly three diagnostics.
#[test]
fn three_syntax_errors_give_three_diagnostics() {
    let loader = FsLoader { base: repo_root() };
    let root = fixture_root().join("errors/k002_three_errors_three_items.kalki");
    let checked = kalki_compiler::check(&[root], &loader);
    let codes: Vec<&str> = checked.diagnostics.iter().map(|d| d.code).collect();
    assert_eq!(codes, ["K002", "K002", "K002"]);
}

/// No snapshot outlives its fixture (a renamed or deleted fixture leaves one behind).
#[test]
fn no_stale_snapshots() {
    let names: Vec<String> = [Expect::Errors, Expect::Clean]
        .into_iter()
        .flat_map(cases)
        .map(|c| format!("{}.snap", c.name.replace('/', "__")))
        .collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/check");
    let stale: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|f| f.ends_with(".snap") && !names.contains(f))
        .collect();
    assert!(stale.is_empty(), "snapshots without a fixture: {stale:?}");
}
