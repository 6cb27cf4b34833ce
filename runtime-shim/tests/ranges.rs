//! The compiler's integer typer (K114) against the shim's bundle check (S006), at the
//! edge of 64 bits: for every expression form that can grow (`+`, `-`, `*`, `-x`,
//! `sum(x, last N)`) and declared ranges around the points where it stops fitting, the
//! compiler refuses the policy exactly when the shim would refuse its bundle. A policy
//! `kalkic check` accepts never gives a bundle the node refuses, and no policy is refused
//! that the node could run.
//!
//! The compiler's side: the policy text with the ranges, through `kalki_compiler::check`.
//! The shim's side: the bundle of the same expression built with small ranges, its
//! manifest's variable ranges then set to the case's, through `bundle::load` (the
//! manifest is not digested: it holds the digests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{compile, load, MemReader};
use kalki_compiler::source::{LoadError, SourceLoader};
use std::path::{Path, PathBuf};

/// Bounds around the edges: `√(2⁶³)` ≈ 3037000499.98, `2⁶²`, `2⁶³ − 1`. The least i64 has
/// no literal (its magnitude does not fit), so the lowest bound written is `−(2⁶³ − 1)`.
const RANGES: [(i64, i64); 10] = [
    (0, 1),
    (0, 3_037_000_499),
    (0, 3_037_000_500),
    (-3_037_000_499, 3_037_000_499),
    (-3_037_000_500, 0),
    (0, i64::MAX),
    (-i64::MAX, 0),
    (-(1 << 62), 1 << 62),
    (1 << 62, (1 << 62) + 1),
    (-i64::MAX, i64::MAX),
];

/// The policy: two integer variables and one guard reading `expr`.
fn policy(expr: &str, a: (i64, i64), b: (i64, i64)) -> String {
    format!(
        "device type T {{
    sensed a: int in {}..{}
    sensed b: int in {}..{}
    states normal < suspicious
    initial normal
    normal {{ chain [pass] }}
    suspicious {{ chain [drop] }}
    normal -> suspicious when {expr} < 7
    suspicious -> normal on operator reset
}}
site s {{
    bridge \"br0\" uplink \"up0\"
    device d: T at 10.0.0.2 port \"p0\"
}}
",
        a.0, a.1, b.0, b.1
    )
}

struct One(String);

impl SourceLoader for One {
    fn read_file(&self, path: &Path) -> Result<String, LoadError> {
        if path == Path::new("case.kalki") {
            Ok(self.0.clone())
        } else {
            std::fs::read_to_string(common::repo_root().join(path)).map_err(|_| LoadError::NotFound)
        }
    }
}

/// Whether `kalkic check` refuses the policy for its integers (K114); any other error
/// fails the test.
fn compiler_refuses(text: &str) -> bool {
    let checked = kalki_compiler::check(&[PathBuf::from("case.kalki")], &One(text.into()));
    let errors: Vec<&str> = checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.code)
        .collect();
    assert!(
        errors.iter().all(|c| *c == "K114"),
        "{errors:?} for\n{text}"
    );
    !errors.is_empty()
}

/// Whether the shim refuses the bundle of `expr` with the variables' ranges set to `a`
/// and `b`.
fn shim_refuses(template: &MemReader, a: (i64, i64), b: (i64, i64)) -> bool {
    let mut r = template.clone();
    let mut m = r.manifest();
    for (i, (lo, hi)) in [a, b].into_iter().enumerate() {
        m["device_types"][0]["vars"][i]["type"] =
            serde_json::json!({"kind": "int", "lo": lo, "hi": hi});
    }
    r.set_manifest(&m);
    match load(&r) {
        Ok(_) => false,
        Err(errors) => {
            let codes: Vec<&str> = errors.iter().map(|e| e.code()).collect();
            assert!(codes.iter().all(|c| *c == "S006"), "{codes:?}: {errors:?}");
            true
        }
    }
}

#[test]
fn the_compiler_refuses_exactly_what_the_node_would() {
    let exprs = [
        "a + b",
        "a - b",
        "a * b",
        "-a",
        "sum(a, last 1)",
        "sum(a, last 2)",
        "sum(a, last 3)",
    ];
    let (mut refused, mut accepted) = (0, 0);
    let mut disagree = Vec::new();
    for expr in exprs {
        let template = MemReader::new(&compile(&policy(expr, (0, 1), (0, 1))));
        // The manifest's shape is what the patch expects.
        let m = template.manifest();
        assert_eq!(
            m["device_types"][0]["vars"][0]["type"],
            serde_json::json!({"kind": "int", "lo": 0, "hi": 1})
        );
        for a in RANGES {
            for b in RANGES {
                let c = compiler_refuses(&policy(expr, a, b));
                let s = shim_refuses(&template, a, b);
                if c != s {
                    disagree.push(format!(
                        "`{expr}` with a in {a:?}, b in {b:?}: compiler refuses {c}, shim {s}"
                    ));
                }
                if c {
                    refused += 1;
                } else {
                    accepted += 1;
                }
            }
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
    // Both outcomes occur: the grid straddles the edge.
    assert!(
        refused > 50 && accepted > 50,
        "{refused} refused, {accepted} accepted"
    );
}
