//! A K201 witness (values that enable two guards) is checked by the runtime's own
//! evaluator before it is reported: with a solver that returns wrong values, the
//! finding becomes K213 (undecided), never a K201 on values that do not enable both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kalki_compiler::source::{LoadError, SourceLoader};
use kalki_compiler::verify::solver::{ModelValue, Outcome, Query, Solver};
use kalki_compiler::verify::{self, z3::Z3Solver};
use std::path::{Path, PathBuf};

const POLICY: &str = r#"
device type Gauge {
    sensed x: int in 0..10

    states low < high < alarm
    initial low

    low   { chain [pass] }
    high  { chain [pass] }
    alarm { chain [drop] }

    low   -> high  when x >= 2
    low   -> alarm when x <= 2
    high  -> low   on operator reset
    alarm -> low   on operator reset
}
"#;

struct One;

impl SourceLoader for One {
    fn read_file(&self, _: &Path) -> Result<String, LoadError> {
        Ok(POLICY.to_string())
    }
}

/// Z3, but every integer of a model it finds is moved by 5: values no longer a model.
struct Lying(Z3Solver);

impl Solver for Lying {
    fn solve(&self, q: &Query) -> Outcome {
        match self.0.solve(q) {
            Outcome::Sat(mut m) => {
                for v in m.values_mut() {
                    if let ModelValue::Int(i) = v {
                        *i += 5;
                    }
                }
                Outcome::Sat(m)
            }
            o => o,
        }
    }
}

fn codes(solver: &dyn Solver) -> Vec<&'static str> {
    let (checked, _) = kalki_compiler::verify(
        &[PathBuf::from("gauge.kalki")],
        &One,
        solver,
        &verify::Options::default(),
    );
    checked.diagnostics.iter().map(|d| d.code).collect()
}

#[test]
fn an_overlap_is_reported_with_values_the_runtime_agrees_with() {
    assert_eq!(codes(&Z3Solver::new(10_000)), ["K201"]);
}

#[test]
fn values_the_runtime_refutes_make_the_finding_undecided() {
    let found = codes(&Lying(Z3Solver::new(10_000)));
    assert!(found.contains(&"K213"), "{found:?}");
    assert!(!found.contains(&"K201"), "{found:?}");
}
