//! One registry of the compiler's diagnostic codes, checked against what uses it: every
//! code the compiler can emit (syntax K0xx, names and types K1xx, verification K2xx,
//! K214 of `kalkic build`) is in the registry the SARIF output takes its rules from, and
//! in the tables of `docs/language.md` (all codes) and `docs/verification.md` (the
//! verifier's);
//! every code those tables list exists. A code added without its documentation or its
//! SARIF rule fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::repo_root;
use kalki_compiler::codes;
use kalki_compiler::verify;
use std::collections::BTreeSet;

/// Every `pub const NAME: &str = "KNNN";` of a source file.
fn declared(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    text.lines()
        .filter(|l| l.trim_start().starts_with("pub const") && l.contains(": &str = \"K"))
        .filter_map(|l| l.split('"').nth(1).map(String::from))
        .collect()
}

/// The codes in the first column of a document's tables (`| K105 | ...`).
fn tabled(doc: &str, prefix: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(' ').next())
        .filter(|c| {
            c.len() == 4 && c.starts_with(prefix) && c[1..].chars().all(|d| d.is_ascii_digit())
        })
        .map(String::from)
        .collect()
}

/// The registry: what SARIF's rules are made of, and the syntax codes.
fn registry() -> BTreeSet<String> {
    let mut all: BTreeSet<String> = kalki_lang::SyntaxCode::ALL
        .iter()
        .map(|c| c.code().to_string())
        .collect();
    all.extend(
        codes::NAME_AND_TYPE_CODES
            .iter()
            .map(|(c, _)| c.to_string()),
    );
    all.extend(verify::codes::ALL.iter().map(|(c, _)| c.to_string()));
    all.insert(kalki_compiler::codegen::bundle::PORT_SPACE.to_string());
    all
}

#[test]
fn every_declared_code_is_in_the_registry() {
    let mut declared_codes = declared("compiler/src/codes.rs");
    declared_codes.extend(declared("compiler/src/verify/mod.rs"));
    declared_codes.extend(declared("compiler/src/codegen/bundle.rs"));
    let registry = registry();
    let missing: Vec<&String> = declared_codes.difference(&registry).collect();
    assert!(
        missing.is_empty(),
        "declared but in no registry (SARIF would have no rule for them): {missing:?}"
    );
    // And the registry names each code once.
    let n = kalki_lang::SyntaxCode::ALL.len()
        + codes::NAME_AND_TYPE_CODES.len()
        + verify::codes::ALL.len()
        + 1;
    assert_eq!(registry.len(), n, "a code is listed twice");
}

#[test]
fn the_docs_list_exactly_the_registry() {
    let registry = registry();
    let language = tabled("docs/language.md", "K");
    assert_eq!(
        language, registry,
        "docs/language.md's tables (left) and the registry (right) differ"
    );
    let verification = tabled("docs/verification.md", "K");
    let verifier: BTreeSet<String> = verify::codes::ALL
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    assert_eq!(
        verification, verifier,
        "docs/verification.md's table (left) and the verifier's codes (right) differ"
    );
}
