//! `kalkic test` (`docs/tools/test.md`): a policy compiled into its bundle in memory, its
//! test files run on it by the runtime's engine (`kalki_model::policy_test`, through the
//! replay `kalki-shim simulate` uses), and the results as text or JSON. Pure: the binary
//! finds and reads the files, and prints.

use crate::diag::Diagnostic;
use crate::source::SourceLoader;
use crate::{check, codegen, Checked};
use kalki_model::bundle::Bundle;
use kalki_model::policy_test::{self, Coverage, CoverageReport, Outcome, Tally, TestError};
use serde_json::{json, Value};
use std::path::PathBuf;

/// A policy compiled for its tests.
pub struct Compiled {
    pub checked: Checked,
    pub bundle: Result<Bundle, NoBundle>,
}

/// Why there is no bundle to test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoBundle {
    /// The policy has errors (in `Compiled::checked.diagnostics`).
    Errors,
    /// No site to test: none, several and none named (`--site`), or an unknown name.
    Site(crate::NoSite),
    /// The bundle's own loader refused it (never expected: the compiler's bundles load).
    Refused(Vec<String>),
}

impl NoBundle {
    pub fn text(&self) -> String {
        match self {
            NoBundle::Errors => "the policy has errors".to_string(),
            NoBundle::Site(why) => why.to_string(),
            NoBundle::Refused(why) => format!("its bundle is refused: {}", why.join("; ")),
        }
    }
}

/// Checks the policy and builds its site's bundle in memory, without verifying it or
/// proving its rule sets (the tests exercise behaviour, which is all in the manifest),
/// then loads it as the shim would.
pub fn compile(roots: &[PathBuf], loader: &dyn SourceLoader, site: Option<&str>) -> Compiled {
    let mut checked = check(roots, loader);
    let clean =
        checked.unreadable.is_empty() && !checked.diagnostics.iter().any(Diagnostic::is_error);
    let bundle = match checked.model.as_ref().filter(|_| clean) {
        None => Err(NoBundle::Errors),
        Some(model) => match crate::pick_site(model, site) {
            Ok(site) => match codegen::bundle::unproved(model, site, &checked.sources) {
                Ok(b) => kalki_model::bundle::load(&b.files).map_err(|errs| {
                    NoBundle::Refused(errs.iter().map(ToString::to_string).collect())
                }),
                Err(findings) => {
                    checked.diagnostics.extend(findings);
                    Err(NoBundle::Errors)
                }
            },
            Err(why) => Err(NoBundle::Site(why)),
        },
    };
    crate::sort(&mut checked.diagnostics);
    Compiled { checked, bundle }
}

/// A test file's results.
#[derive(Debug, Clone)]
pub struct FileResult {
    /// As shown to the user.
    pub file: String,
    /// Its bad lines: then no test of it ran.
    pub errors: Vec<TestError>,
    pub outcomes: Vec<Outcome>,
}

/// Runs every test of every file on the bundle; the coverage is of all of them together.
/// A file with errors runs none of its tests.
pub fn run(bundle: &Bundle, files: &[(String, Vec<u8>)]) -> (Vec<FileResult>, CoverageReport) {
    let mut coverage = Coverage::new(bundle);
    let results = files
        .iter()
        .map(|(file, text)| match policy_test::parse(text, bundle) {
            Ok(parsed) => FileResult {
                file: file.clone(),
                errors: Vec::new(),
                outcomes: parsed
                    .tests
                    .iter()
                    .map(|t| policy_test::run(bundle, t, &mut coverage))
                    .collect(),
            },
            Err(errors) => FileResult {
                file: file.clone(),
                errors,
                outcomes: Vec::new(),
            },
        })
        .collect();
    (results, coverage.report(bundle))
}

/// One policy's results.
#[derive(Debug, Clone)]
pub struct PolicyResult {
    /// The directory or file given for it, as shown to the user.
    pub policy: String,
    /// Why its tests could not run (the policy's diagnostics are reported apart).
    pub no_bundle: Option<String>,
    pub files: Vec<FileResult>,
    /// With `--coverage` or `--threshold`, when its tests ran.
    pub coverage: Option<CoverageReport>,
}

impl PolicyResult {
    pub fn below(&self, threshold: Option<f64>) -> bool {
        match (threshold, &self.coverage) {
            (Some(t), Some(c)) => !c.total.meets(t),
            _ => false,
        }
    }
}

/// Counts over every policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub tests: usize,
    pub passed: usize,
    pub failed: usize,
    /// Bad lines of test files.
    pub errors: usize,
    /// Policies whose tests could not run.
    pub not_run: usize,
    /// Policies below the coverage threshold.
    pub below: usize,
}

impl Summary {
    pub fn of(results: &[PolicyResult], threshold: Option<f64>) -> Summary {
        let mut s = Summary::default();
        for p in results {
            s.not_run += usize::from(p.no_bundle.is_some());
            s.below += usize::from(p.below(threshold));
            for f in &p.files {
                s.errors += f.errors.len();
                for o in &f.outcomes {
                    s.tests += 1;
                    if o.passed() {
                        s.passed += 1;
                    } else {
                        s.failed += 1;
                    }
                }
            }
        }
        s
    }

    /// Whether everything passed: `kalkic test` exits 0.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.errors == 0 && self.not_run == 0 && self.below == 0
    }
}

fn tally(t: &Tally) -> String {
    format!("{}/{} ({:.1}%)", t.covered, t.total, t.percent)
}

/// The bad lines of the test files, one diagnostic each (`error[S212]: FILE:LINE: ...`,
/// then its help): what the binary prints on standard error.
pub fn errors_text(results: &[PolicyResult]) -> String {
    let mut out = String::new();
    for f in results.iter().flat_map(|p| &p.files) {
        for e in &f.errors {
            let at = if e.line == 0 {
                f.file.clone()
            } else {
                format!("{}:{}", f.file, e.line)
            };
            out.push_str(&format!("error[{}]: {at}: {}\n", e.code, e.message));
            if let Some(h) = &e.help {
                out.push_str(&format!("  help: {h}\n"));
            }
        }
    }
    out
}

/// The results as text: a line per test, the first failed expectation of each failed
/// test explained, the test files not run, the coverage, a summary.
pub fn human(results: &[PolicyResult], threshold: Option<f64>) -> String {
    let mut out = String::new();
    for p in results {
        out.push_str(&format!("{}\n", p.policy));
        if let Some(why) = &p.no_bundle {
            out.push_str(&format!("  not run: {why}\n"));
        }
        for f in &p.files {
            if !f.errors.is_empty() {
                let n = f.errors.len();
                out.push_str(&format!(
                    "  not run  {}: {n} bad line{} (on standard error)\n",
                    f.file,
                    if n == 1 { "" } else { "s" }
                ));
            }
            for o in &f.outcomes {
                let verdict = if o.passed() { "ok  " } else { "FAIL" };
                out.push_str(&format!("  {verdict}  {}:{}  {}\n", f.file, o.line, o.name));
                if let Some(x) = o.failures.first() {
                    out.push_str(&format!(
                        "        {}:{}: expected {}\n        but {}\n",
                        f.file, x.line, x.expected, x.actual
                    ));
                    if o.failures.len() > 1 {
                        let more = o.failures.len() - 1;
                        out.push_str(&format!(
                            "        ({more} more expectation{} of this test failed)\n",
                            if more == 1 { "" } else { "s" }
                        ));
                    }
                }
            }
        }
        if let Some(c) = &p.coverage {
            out.push_str(&format!(
                "  coverage {}: states {}, transitions {}, rules {}\n",
                tally(&c.total),
                tally(&c.states),
                tally(&c.transitions),
                tally(&c.rules)
            ));
            if !c.never_in.is_empty() {
                let list: Vec<String> = c
                    .never_in
                    .iter()
                    .map(|s| format!("{} {}", s.device, s.state))
                    .collect();
                out.push_str(&format!("    never in: {}\n", list.join(", ")));
            }
            for t in &c.never_taken {
                out.push_str(&format!(
                    "    never taken: {}: {} -> {}  {}\n",
                    t.device_type, t.from, t.to, t.trigger
                ));
            }
            if !c.never_fired.is_empty() {
                out.push_str(&format!("    never fired: {}\n", c.never_fired.join(", ")));
            }
            if let Some(t) = threshold.filter(|_| p.below(threshold)) {
                out.push_str(&format!(
                    "  coverage {:.1}% is below the threshold {t}%\n",
                    c.total.percent
                ));
            }
        }
    }
    let s = Summary::of(results, threshold);
    out.push_str(&format!(
        "{} test{}: {} passed, {} failed",
        s.tests,
        if s.tests == 1 { "" } else { "s" },
        s.passed,
        s.failed
    ));
    if s.errors > 0 {
        out.push_str(&format!(
            "; {} error{} in test files",
            s.errors,
            if s.errors == 1 { "" } else { "s" }
        ));
    }
    if s.not_run > 0 {
        out.push_str(&format!(
            "; {} polic{} not run",
            s.not_run,
            if s.not_run == 1 { "y" } else { "ies" }
        ));
    }
    if s.below > 0 {
        out.push_str(&format!("; {} below the coverage threshold", s.below));
    }
    out.push('\n');
    out
}

/// The results as one JSON document (schema: `compiler/tests/schemas/test.schema.json`).
/// `diagnostics`: per policy, its diagnostics as `kalkic check --format json` gives them.
pub fn json(results: &[PolicyResult], diagnostics: &[Value], threshold: Option<f64>) -> Value {
    let policies: Vec<Value> = results
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let files: Vec<Value> = p
                .files
                .iter()
                .map(|f| {
                    let errors: Vec<Value> = f
                        .errors
                        .iter()
                        .map(|e| {
                            json!({"line": e.line, "code": e.code, "message": e.message,
                                   "help": e.help})
                        })
                        .collect();
                    let tests: Vec<Value> = f
                        .outcomes
                        .iter()
                        .map(|o| {
                            json!({"name": o.name, "line": o.line, "passed": o.passed(),
                                   "expectations": o.expectations, "failures": o.failures})
                        })
                        .collect();
                    json!({"file": f.file, "errors": errors, "tests": tests})
                })
                .collect();
            json!({
                "policy": p.policy,
                "not_run": p.no_bundle,
                "diagnostics": diagnostics.get(i).cloned().unwrap_or_else(|| json!([])),
                "files": files,
                "coverage": p.coverage,
                "below_threshold": p.below(threshold),
            })
        })
        .collect();
    let s = Summary::of(results, threshold);
    json!({
        "policies": policies,
        "threshold": threshold,
        "summary": {"tests": s.tests, "passed": s.passed, "failed": s.failed,
                    "errors": s.errors, "not_run": s.not_run, "below_threshold": s.below},
        "ok": s.ok(),
    })
}
