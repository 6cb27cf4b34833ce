//! One registry of the diagnostic codes (`kalki_compiler::explain`), checked against what
//! uses it: every code the compiler can emit (syntax K0xx, names and types K1xx,
//! verification K2xx, K214 of `kalkic build`) and every code of the runtime (S0xx–S4xx,
//! declared in kalki-model) is in the registry that `kalkic explain` and the SARIF rules
//! read, with an explanation, and nothing else is; the tables of `docs/language.md` (all K
//! codes) and `docs/verification.md` (the verifier's) list exactly the registry's codes
//! (`runtime-shim/tests/codes.rs` checks `docs/runtime.md`). A code added without its
//! documentation, its explanation or its SARIF rule fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::repo_root;
use kalki_compiler::explain;
use std::collections::BTreeSet;

/// Every `pub const NAME: &str = "XNNN";` of a source file, for prefix `X`.
fn declared(path: &str, prefix: char) -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    let marker = format!(": &str = \"{prefix}");
    text.lines()
        .filter(|l| l.trim_start().starts_with("pub const") && l.contains(&marker))
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

/// The registry's codes starting with `prefix`.
fn registry(prefix: char) -> BTreeSet<String> {
    explain::all()
        .iter()
        .filter(|c| c.code.starts_with(prefix))
        .map(|c| c.code.to_string())
        .collect()
}

#[test]
fn the_registry_holds_exactly_the_declared_codes() {
    let mut k: BTreeSet<String> = kalki_lang::SyntaxCode::ALL
        .iter()
        .map(|c| c.code().to_string())
        .collect();
    for file in [
        "compiler/src/codes.rs",
        "compiler/src/verify/mod.rs",
        "compiler/src/codegen/bundle.rs",
    ] {
        k.extend(declared(file, 'K'));
    }
    assert_eq!(
        k,
        registry('K'),
        "declared K codes (left) and the registry's (right) differ"
    );
    let mut s = declared("model/src/codes.rs", 'S');
    s.extend(declared("runtime-shim/src/codes.rs", 'S'));
    assert_eq!(
        s,
        registry('S'),
        "declared S codes (left) and the registry's (right) differ"
    );
    let listed: Vec<&str> = explain::all().iter().map(|c| c.code).collect();
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(listed.len(), unique.len(), "a code is listed twice");
    // Every explanation belongs to a code, every code has one.
    let texts: BTreeSet<&str> = explain::explanations().iter().map(|(c, _)| *c).collect();
    assert_eq!(
        texts, unique,
        "explanations (left) and codes (right) differ"
    );
}

#[test]
fn the_docs_list_exactly_the_registry() {
    let language = tabled("docs/language.md", "K");
    assert_eq!(
        language,
        registry('K'),
        "docs/language.md's tables (left) and the registry (right) differ"
    );
    let verification = tabled("docs/verification.md", "K");
    let verifier: BTreeSet<String> = explain::all()
        .iter()
        .filter(|c| c.family == explain::Family::Verifier)
        .map(|c| c.code.to_string())
        .collect();
    assert_eq!(
        verification, verifier,
        "docs/verification.md's table (left) and the verifier's codes (right) differ"
    );
}
