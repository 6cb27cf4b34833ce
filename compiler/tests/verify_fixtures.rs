//! Data-driven tests of the verifier: every fixture under `tests/fixtures/verify/` is
//! checked and verified with Z3, and gives one insta snapshot holding its source, the
//! rendered diagnostics (each with its witness) and the verdict on every assertion.
//!
//! - `kNNN_<what>.kalki` must report code `KNNN`;
//! - `kNNN_<what>_near_miss.kalki` is the closest policy that must not: no diagnostic
//!   with code `KNNN`.
//!
//! In both, the policy must pass `check` (no K0xx or K1xx diagnostic at all), every label
//! must lie inside its source, and every finding of the codes in [`WITNESS_CODES`] must
//! carry a witness. A first line `// options: max_states=N, timeout_ms=N` sets
//! [`verify::Options`] for that fixture.
//!
//! Update snapshots with
//! `INSTA_UPDATE=always cargo test -p kalki-compiler --test verify_fixtures`, then read
//! every changed snapshot before accepting it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{check_spans, filter_paths, repo_root, FsLoader};
use kalki_compiler::diag::Diagnostic;
use kalki_compiler::source::{Origin, Sources};
use kalki_compiler::verify::z3::Z3Solver;
use kalki_compiler::verify::{self, AssertionResult, Status, Verified};
use kalki_compiler::Checked;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Codes whose every finding must carry a concrete witness (values or a trace).
const WITNESS_CODES: &[&str] = &[
    "K201", "K202", "K203", "K205", "K206", "K207", "K209", "K210", "K215", "K216", "K217",
];

/// Verifier codes that must each have a triggering fixture and a near miss.
const COVERED_CODES: &[&str] = &[
    "K201", "K202", "K203", "K204", "K205", "K206", "K207", "K210", "K211", "K213", "K215", "K216",
    "K217",
];

fn fixture_dir() -> PathBuf {
    PathBuf::from("tests/fixtures/verify")
}

#[derive(Debug)]
struct Fixture {
    /// File stem, e.g. `k201_overlapping_guards`.
    stem: String,
    /// Path relative to the repository root.
    path: PathBuf,
    /// `K201`.
    code: String,
    near_miss: bool,
}

fn fixtures() -> Vec<Fixture> {
    let dir = fixture_dir();
    let mut out: Vec<Fixture> = std::fs::read_dir(repo_root().join(&dir))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            assert!(
                p.is_file() && p.extension().is_some_and(|x| x == "kalki"),
                "stray entry {} in the verify fixtures (only .kalki files)",
                p.display()
            );
            let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
            let code = stem.get(..4).unwrap_or_default().to_uppercase();
            let well_formed = code.len() == 4
                && code.starts_with('K')
                && code[1..].chars().all(|c| c.is_ascii_digit())
                && stem.get(4..5) == Some("_");
            assert!(
                well_formed,
                "fixture `{stem}` must be named kNNN_<what>[_near_miss].kalki"
            );
            Fixture {
                near_miss: stem.ends_with("_near_miss"),
                path: dir.join(p.file_name().unwrap()),
                stem,
                code,
            }
        })
        .collect();
    out.sort_by(|a, b| a.stem.cmp(&b.stem));
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

/// Options from a first line `// options: max_states=2, timeout_ms=500`.
fn options(text: &str) -> verify::Options {
    let mut opts = verify::Options::default();
    let Some(list) = text
        .lines()
        .next()
        .and_then(|l| l.trim().strip_prefix("// options:"))
    else {
        return opts;
    };
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .unwrap_or_else(|| panic!("option `{item}` is not KEY=VALUE"));
        match key.trim() {
            "max_states" => opts.max_states = value.trim().parse().unwrap(),
            "timeout_ms" => opts.timeout_ms = value.trim().parse().unwrap(),
            other => panic!("unknown option `{other}`"),
        }
    }
    opts
}

/// The source text an assertion covers, on one line.
fn assertion_text(sources: &Sources, a: &AssertionResult) -> String {
    let text = &sources.get(a.loc.source).text;
    text.get(a.loc.span.start..a.loc.span.end)
        .unwrap_or("?")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn verdicts(sources: &Sources, verified: &Verified) -> String {
    let mut out = String::new();
    if verified.assertions.is_empty() {
        out.push_str("(no assertions)\n");
    }
    for a in &verified.assertions {
        let (line, _) = sources.line_col(a.loc.source, a.loc.span.start);
        let status = match &a.status {
            Status::Proved => "proved".to_string(),
            Status::Refuted => "refuted".to_string(),
            Status::Unknown(why) => format!("unknown ({why})"),
        };
        let _ = writeln!(
            out,
            "line {line}: {status}: `{}`; explored {}, devices [{}]",
            assertion_text(sources, a),
            a.explored,
            a.devices.join(", ")
        );
        for (i, step) in a.trace.iter().enumerate() {
            let states: Vec<String> = step
                .states
                .iter()
                .map(|(d, s)| format!("{d}={s}"))
                .collect();
            let _ = writeln!(out, "  {i}. {} => {}", step.event, states.join(" "));
        }
    }
    out
}

/// The snapshot: the fixture's source, the diagnostics as `kalkic verify` shows them
/// (with witnesses), and the assertion verdicts with their traces.
fn snapshot_text(checked: &Checked, verified: Option<&Verified>) -> String {
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
    out.push_str("// ---- diagnostics\n");
    out.push_str(&kalki_compiler::render::human(
        &checked.sources,
        &checked.diagnostics,
        false,
    ));
    out.push_str("// ---- assertions\n");
    match verified {
        Some(v) => out.push_str(&verdicts(&checked.sources, v)),
        None => out.push_str("(not verified)\n"),
    }
    filter_paths(&out)
}

/// Every label lies inside its source on character boundaries, and at least one has text
/// under it.
fn check_labels(sources: &Sources, d: &Diagnostic) -> Result<(), String> {
    check_spans(sources, d)?;
    if !d.labels.iter().any(|l| !l.loc.span.is_empty()) {
        return Err(format!(
            "{} `{}` has no label with a non-empty span",
            d.code, d.message
        ));
    }
    if !d.labels.iter().any(|l| l.primary) {
        return Err(format!("{} `{}` has no primary label", d.code, d.message));
    }
    Ok(())
}

fn codes_of(diags: &[Diagnostic]) -> Vec<&'static str> {
    diags.iter().map(|d| d.code).collect()
}

fn check_fixture(
    fx: &Fixture,
    checked: &Checked,
    verified: Option<&Verified>,
) -> Result<(), String> {
    if !checked.unreadable.is_empty() {
        return Err(format!("unreadable: {:?}", checked.unreadable));
    }
    let diags = &checked.diagnostics;
    let front_end: Vec<&str> = codes_of(diags)
        .into_iter()
        .filter(|c| c.starts_with("K0") || c.starts_with("K1"))
        .collect();
    if !front_end.is_empty() {
        return Err(format!("the policy does not check: {front_end:?}"));
    }
    let Some(verified) = verified else {
        return Err("the policy checked clean but was not verified".into());
    };
    for d in diags {
        check_labels(&checked.sources, d)?;
        if WITNESS_CODES.contains(&d.code) && d.witness.is_none() {
            return Err(format!("{} `{}` has no witness", d.code, d.message));
        }
    }
    // Every refuted assertion is one K210 (K215 for a traffic assertion), every undecided
    // one a K213.
    for (traffic, code) in [(false, "K210"), (true, "K215")] {
        let refuted = verified
            .assertions
            .iter()
            .filter(|a| matches!(a.status, Status::Refuted) && a.traffic.is_some() == traffic)
            .count();
        let found = diags.iter().filter(|d| d.code == code).count();
        if refuted != found {
            return Err(format!("{refuted} refuted assertions but {found} {code}"));
        }
    }
    let undecided = verified
        .assertions
        .iter()
        .filter(|a| matches!(a.status, Status::Unknown(_)))
        .count();
    let k213 = diags.iter().filter(|d| d.code == "K213").count();
    if undecided > k213 {
        return Err(format!("{undecided} undecided assertions but {k213} K213"));
    }
    let has = diags.iter().any(|d| d.code == fx.code);
    let right = has != fx.near_miss;
    let codes = codes_of(diags);
    match (right, fx.near_miss) {
        (true, _) => Ok(()),
        (false, true) => Err(format!(
            "a near miss must not report {}, got {codes:?}",
            fx.code
        )),
        (false, false) => Err(format!("expected {}, got {codes:?}", fx.code)),
    }
}

#[test]
fn verify_fixtures() {
    let loader = FsLoader { base: repo_root() };
    let all = fixtures();
    let mut failures: Vec<String> = Vec::new();
    for fx in &all {
        let text = std::fs::read_to_string(repo_root().join(&fx.path)).unwrap();
        let opts = options(&text);
        // A fresh solver per fixture, so witness values cannot depend on earlier fixtures.
        let solver = Z3Solver::new(opts.timeout_ms);
        let (checked, verified) =
            kalki_compiler::verify(std::slice::from_ref(&fx.path), &loader, &solver, &opts);
        if let Err(why) = check_fixture(fx, &checked, verified.as_ref()) {
            failures.push(format!("{}: {why}", fx.stem));
        }
        let snap = snapshot_text(&checked, verified.as_ref());
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            insta::with_settings!({
                snapshot_path => "snapshots/verify",
                prepend_module_to_snapshot => false,
                omit_expression => true,
                description => format!("kalkic verify {}", fx.path.display()),
            }, {
                insta::assert_snapshot!(fx.stem.clone(), snap);
            });
        }));
        if outcome.is_err() {
            failures.push(format!("{}: snapshot differs", fx.stem));
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

/// Every verifier code has at least one fixture that triggers it and one near miss.
#[test]
fn every_verifier_code_has_fixtures() {
    let all = fixtures();
    let mut missing = Vec::new();
    for code in COVERED_CODES {
        for near in [false, true] {
            let found = all.iter().any(|f| f.code == *code && f.near_miss == near);
            if !found {
                missing.push(format!(
                    "{code} ({})",
                    if near { "near miss" } else { "trigger" }
                ));
            }
        }
    }
    assert!(missing.is_empty(), "missing fixtures: {missing:?}");
}

/// Every entry of the known-wrong list names a fixture that exists.
#[test]
fn options_line_is_parsed() {
    let o = options("// options: max_states=2, timeout_ms=500\nsite s {}");
    assert_eq!((o.max_states, o.timeout_ms), (2, 500));
    let d = options("// a comment\n");
    assert_eq!(d.max_states, verify::Options::default().max_states);
}
