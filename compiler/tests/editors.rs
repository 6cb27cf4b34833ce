//! The editor files in `editors/` stay in step with the language: every keyword of the
//! lexer is highlighted as one, nothing else is, and the VS Code manifest points at files
//! that exist.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn json(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The keywords: the alphabetic `#[token("...")]`s of the lexer.
fn lexer_keywords() -> BTreeSet<String> {
    let lexer = std::fs::read_to_string(root().join("lang/src/lexer.rs")).unwrap();
    let words: BTreeSet<String> = lexer
        .split("#[token(\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
        .map(str::to_string)
        .collect();
    assert!(words.len() > 50, "read too few keywords: {words:?}");
    words
}

#[test]
fn grammar_highlights_every_keyword_of_the_lexer() {
    let grammar = json("editors/vscode/syntaxes/kalki.tmLanguage.json");
    let patterns = grammar["repository"]["keywords"]["patterns"]
        .as_array()
        .unwrap();
    let mut highlighted = BTreeSet::new();
    for p in patterns {
        let m = p["match"].as_str().unwrap();
        let inner = m
            .strip_prefix("\\b(")
            .and_then(|m| m.strip_suffix(")\\b"))
            .unwrap_or_else(|| panic!("not a `\\b(a|b)\\b` pattern: {m}"));
        for w in inner.split('|') {
            assert!(highlighted.insert(w.to_string()), "`{w}` listed twice");
        }
    }
    let lexer = lexer_keywords();
    let missing: Vec<_> = lexer.difference(&highlighted).collect();
    let extra: Vec<_> = highlighted.difference(&lexer).collect();
    assert!(
        missing.is_empty(),
        "keywords the grammar misses: {missing:?}"
    );
    assert!(extra.is_empty(), "not keywords of the lexer: {extra:?}");
}

#[test]
fn vscode_manifest_points_at_its_files() {
    let dir = root().join("editors/vscode");
    let manifest = json("editors/vscode/package.json");
    let main = manifest["main"].as_str().unwrap();
    assert!(dir.join(main).is_file(), "{main}");
    let lang = &manifest["contributes"]["languages"][0];
    assert_eq!(lang["extensions"][0], ".kalki");
    let config = lang["configuration"].as_str().unwrap();
    assert!(dir.join(config).is_file(), "{config}");
    json("editors/vscode/language-configuration.json");
    let grammar = manifest["contributes"]["grammars"][0]["path"]
        .as_str()
        .unwrap();
    assert!(dir.join(grammar).is_file(), "{grammar}");
    let scope = json("editors/vscode/syntaxes/kalki.tmLanguage.json")["scopeName"].clone();
    assert_eq!(manifest["contributes"]["grammars"][0]["scopeName"], scope);
    // The extension starts the server as `kalkic lsp`.
    let js = std::fs::read_to_string(dir.join(main)).unwrap();
    assert!(js.contains("\"lsp\""), "{main} does not start `kalkic lsp`");
}
