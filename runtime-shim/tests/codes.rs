//! The runtime's codes (S0xx bundle, S1xx input and S2xx trace and test files of the model,
//! the shim's S3xx API and S4xx journal; all declared in `kalki-model` and re-exported by
//! the shim): every code declared is in `codes::ALL` (the model's) or `codes::SHIM`, and
//! `docs/runtime.md`'s tables name
//! exactly those (a range such as `S102–S108` counts for each code in it). A code added
//! without its documentation, or documented without existing, fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::repo_root;
use kalki_shim::codes;
use std::collections::BTreeSet;

fn number(code: &str) -> Option<u32> {
    let digits = code.strip_prefix('S')?;
    (digits.len() == 3 && digits.chars().all(|c| c.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Every `Snnn` in the table rows of `docs/runtime.md`, ranges expanded.
fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join("docs/runtime.md")).unwrap();
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with('|')) {
        for cell in line.split('|') {
            for part in cell.split(',') {
                let part = part.trim();
                match part.split_once('–') {
                    Some((a, b)) => {
                        if let (Some(a), Some(b)) = (number(a.trim()), number(b.trim())) {
                            out.extend((a..=b).map(|n| format!("S{n:03}")));
                        }
                    }
                    None => {
                        if number(part).is_some() {
                            out.insert(part.to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

/// Every `pub const NAME: &str = "Snnn";` of a source file.
fn declared(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    text.lines()
        .filter(|l| l.trim_start().starts_with("pub const") && l.contains(": &str = \"S"))
        .filter_map(|l| l.split('"').nth(1).map(String::from))
        .collect()
}

#[test]
fn the_docs_list_exactly_the_codes() {
    // The model's codes (S0xx bundle, S1xx input, S2xx trace and test files) and the
    // shim's own (S3xx, S4xx).
    let mut declared_codes = declared("model/src/codes.rs");
    declared_codes.extend(declared("runtime-shim/src/codes.rs"));
    let registry: Vec<&str> = codes::ALL
        .iter()
        .chain(codes::SHIM)
        .map(|(c, _)| *c)
        .collect();
    let all: BTreeSet<String> = registry.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        declared_codes, all,
        "declared (left) and codes::ALL + codes::SHIM (right) differ"
    );
    assert_eq!(registry.len(), all.len(), "a code is listed twice");
    assert_eq!(
        documented(),
        all,
        "docs/runtime.md's tables (left) and the codes (right) differ"
    );
}
