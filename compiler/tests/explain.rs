//! The explanations of `kalkic explain` (`compiler/explain/*.md`, read through
//! `kalki_compiler::explain`) are kept honest here:
//!
//! - every code of the registry has an explanation with a description, an example and a
//!   fix (`tests/codes.rs` checks that the registry holds exactly the declared codes, and
//!   the docs' tables exactly the registry's);
//! - every policy example (a ` ```kalki ` block) is compiled as `kalkic build` would
//!   (check, verify, then the emitted rules) and must report its code; every fixed
//!   version (` ```kalki fixed `) must report no error at all;
//! - the real `kalkic explain` prints them, refuses unknown codes, and the SARIF rules
//!   carry the same texts.
//!
//! The S codes' examples (trace lines, bundle edits) are run in
//! `runtime-shim/tests/explain.rs`, where the trace reader is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{repo_root, MemLoader};
use kalki_compiler::explain::{self, blocks, Block};
use kalki_compiler::verify::{self, z3::Z3Solver};
use std::path::PathBuf;
use std::process::Command;

/// K codes no policy can show: an unreadable file (a usage error), the checks on the
/// emitted rules (the code generator does not emit interfering or fail-open rules, so only
/// hand-crafted rule sets show them: tests/dataplane.rs), a site too large for one bridge
/// (65,279 ports), and a condition 129 levels deep (too long to read). Their texts say how
/// to see them instead; they must have no ` ```kalki ` block.
const NO_POLICY_EXAMPLE: &[&str] = &["K112", "K113", "K208", "K212", "K214"];

#[test]
fn every_explanation_has_a_description_an_example_and_a_fix() {
    let mut bad = Vec::new();
    for c in explain::all() {
        let text = c.text;
        if c.description().len() < 40 {
            bad.push(format!(
                "{}: no description before the first heading",
                c.code
            ));
        }
        for section in ["\n## Example\n", "\n## Fix\n"] {
            if !text.contains(section) {
                bad.push(format!("{}: no `{}` section", c.code, section.trim()));
            }
        }
        if text.contains("TODO") {
            bad.push(format!("{}: unfinished", c.code));
        }
        if text.lines().filter(|l| l.starts_with("```")).count() % 2 != 0 {
            bad.push(format!("{}: a code block is not closed", c.code));
        }
        // The summary is the table's: an explanation does not repeat it as a title.
        if text.starts_with('#') {
            bad.push(format!("{}: starts with a heading", c.code));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The codes `kalkic build` reports on one file, with its options (`max-states=N`).
fn reported(source: &str, info: &[String]) -> Vec<(String, bool)> {
    let mut opts = verify::Options::default();
    for o in info {
        if let Some(n) = o.strip_prefix("max-states=") {
            opts.max_states = n.parse().unwrap();
        }
    }
    let loader = MemLoader::new([("example.kalki", source.to_string())]);
    let built = kalki_compiler::build(
        &[PathBuf::from("example.kalki")],
        &loader,
        &Z3Solver::new(opts.timeout_ms),
        &opts,
        None,
    );
    assert!(built.checked.unreadable.is_empty());
    built
        .checked
        .diagnostics
        .iter()
        .map(|d| (d.code.to_string(), d.is_error()))
        .collect()
}

#[test]
fn every_policy_example_reports_its_code_and_every_fix_does_not() {
    let mut failures = Vec::new();
    for c in explain::all().iter().filter(|c| c.code.starts_with('K')) {
        let kalki: Vec<Block> = blocks(c.text)
            .into_iter()
            .filter(|b| b.info.first().is_some_and(|l| l == "kalki"))
            .collect();
        let (fixed, examples): (Vec<&Block>, Vec<&Block>) = kalki
            .iter()
            .partition(|b| b.info.iter().any(|i| i == "fixed"));
        if NO_POLICY_EXAMPLE.contains(&c.code) {
            if !kalki.is_empty() {
                failures.push(format!(
                    "{}: has a policy example; take it off NO_POLICY_EXAMPLE",
                    c.code
                ));
            }
            continue;
        }
        if examples.is_empty() {
            failures.push(format!("{}: no ```kalki example", c.code));
        }
        for b in examples {
            let got = reported(&b.text, &b.info);
            if !got.iter().any(|(code, _)| code == c.code) {
                failures.push(format!(
                    "{}: the example does not report it; it reports {got:?}",
                    c.code
                ));
            }
        }
        for b in fixed {
            let got = reported(&b.text, &b.info);
            if got.iter().any(|(code, error)| code == c.code || *error) {
                failures.push(format!(
                    "{}: the fixed version still reports {got:?}",
                    c.code
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The test above can fail: an example that does not show its code is caught.
#[test]
fn a_wrong_example_would_be_caught() {
    let k105 = explain::lookup("K105").unwrap();
    let example = blocks(k105.text)
        .into_iter()
        .find(|b| b.info == ["kalki"])
        .unwrap();
    assert!(reported(&example.text, &[])
        .iter()
        .any(|(c, _)| c == "K105"));
    let fixed = example.text.replace("temperature == heating", "heating");
    assert!(!reported(&fixed, &[]).iter().any(|(c, _)| c == "K105"));
}

fn kalkic(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_kalkic"))
        .current_dir(repo_root())
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap(),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

#[test]
fn explain_prints_the_explanation_in_any_case() {
    let (code, out, err) = kalkic(&["explain", "k105"]);
    assert_eq!(code, 0, "{err}");
    let k105 = explain::lookup("K105").unwrap();
    assert!(
        out.starts_with(&format!("K105: {}\n", k105.summary)),
        "{out}"
    );
    assert!(
        out.contains("## Example") && out.contains("## Fix"),
        "{out}"
    );
    // Fences keep their language only.
    assert!(
        out.contains("```kalki\n") && !out.contains("kalki fixed"),
        "{out}"
    );
    let (code, out, _) = kalkic(&["explain", "S104"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("S104: "), "{out}");
}

#[test]
fn an_unknown_code_is_a_usage_error_with_the_nearest_codes() {
    let (code, out, err) = kalkic(&["explain", "K118"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(
        err.contains("`K118` is not a Kalki diagnostic code"),
        "{err}"
    );
    assert!(err.contains("did you mean K117, K116, K115?"), "{err}");
    let (code, _, err) = kalkic(&["explain", "E0308"]);
    assert_eq!(code, 2);
    assert!(err.contains("kalkic explain --list"), "{err}");
    // Any text is an unknown code, not a crash.
    for odd in ["K-9223372036854775808", "S99999999999999999999", "", "é"] {
        let (code, _, err) = kalkic(&["explain", odd]);
        assert_eq!(code, 2, "{odd}: {err}");
        assert!(
            err.contains("is not a Kalki diagnostic code"),
            "{odd}: {err}"
        );
    }
    let (code, _, _) = kalkic(&["explain"]);
    assert_eq!(code, 2, "a code or --list is required");
}

#[test]
fn explain_list_names_every_code_once() {
    let (code, out, _) = kalkic(&["explain", "--list"]);
    assert_eq!(code, 0);
    for c in explain::all() {
        let line = format!("  {}  {}\n", c.code, c.summary);
        assert_eq!(out.matches(&line).count(), 1, "{}: {out}", c.code);
    }
}

#[test]
fn sarif_rules_carry_the_explanation() {
    let (code, out, _) = kalkic(&[
        "check",
        "--format",
        "sarif",
        "tests/fixtures/check/errors/k105_compare_mismatch.kalki",
    ]);
    assert_eq!(code, 1);
    let sarif: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rules = sarif["runs"][0]["tool"]["driver"]["rules"]
        .as_array()
        .unwrap();
    let k105 = explain::lookup("K105").unwrap();
    let rule = rules.iter().find(|r| r["id"] == "K105").unwrap();
    assert_eq!(rule["shortDescription"]["text"], k105.summary);
    assert_eq!(rule["fullDescription"]["text"], k105.description());
    let markdown = rule["help"]["markdown"].as_str().unwrap();
    assert!(markdown.contains(&explain::markdown(k105)), "{markdown}");
    assert!(!markdown.contains("kalki fixed"), "{markdown}");
    assert_eq!(rule["help"]["text"], explain::render(k105));
    // Syntax codes have rules too.
    let (_, out, _) = kalkic(&[
        "check",
        "--format",
        "sarif",
        "tests/fixtures/check/errors/k003_unclosed_device_type.kalki",
    ]);
    let sarif: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rule = &sarif["runs"][0]["tool"]["driver"]["rules"][0];
    assert_eq!(rule["id"], "K003");
    assert_eq!(
        rule["shortDescription"]["text"],
        explain::lookup("K003").unwrap().summary
    );
}

#[test]
fn explain_help_documents_its_exit_codes() {
    let (code, out, _) = kalkic(&["explain", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Exit codes"), "{out}");
    assert!(out.contains("2  unknown code, or usage error"), "{out}");
    let (_, out, _) = kalkic(&["--help"]);
    assert!(out.contains("explain"), "{out}");
}

/// Every code is filed under its own family: `S212` under S2xx, `K105` under K1xx (K214,
/// the build's one code, has a family of its own).
#[test]
fn every_code_is_filed_under_its_family() {
    for c in explain::all() {
        let title = c.family.title();
        let family = format!("{}xx", &c.code[..2]);
        assert!(
            title.starts_with(&family) || title.starts_with(c.code),
            "{} filed under {title}",
            c.code
        );
    }
}
