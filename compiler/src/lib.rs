//! The Kalki policy compiler: name resolution, type checking, verification and code
//! generation, chained by the few-line functions below. The core is pure: sources come
//! in through [`source::SourceLoader`], results go out as data ([`diag::Diagnostic`],
//! [`ir::Model`]); only the `kalkic` binary touches files and terminals.
// Only the binaries write to the terminal (docs/ARCHITECTURE.md, "Invariants").
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod codegen;
pub mod codes;
pub mod diag;
pub mod ir;
pub mod policy_test;
pub mod render;
pub mod resolve;
pub mod source;
pub mod stdlib;
pub mod typeck;
pub mod verify;

use diag::Diagnostics;
use source::{LoadError, SourceLoader, Sources};
use std::path::PathBuf;

/// What `check` found: every diagnostic, the sources they point into, and the typed model
/// when there were no errors.
pub struct Checked {
    pub sources: Sources,
    pub diagnostics: Vec<diag::Diagnostic>,
    pub model: Option<ir::Model>,
    /// Root files that could not be read at all (a usage error).
    pub unreadable: Vec<(PathBuf, LoadError)>,
}

/// Parse, resolve and type-check the roots and everything they import.
pub fn check(roots: &[PathBuf], loader: &dyn SourceLoader) -> Checked {
    let mut diags = Diagnostics::default();
    let program = resolve::load(roots, loader, &mut diags);
    // A file with syntax errors has a partial tree: checking it would only add echoes.
    let model = (!program.syntax_errors).then(|| typeck::typeck(&program, &mut diags));
    let model = model.filter(|_| !diags.has_errors());
    sort(&mut diags.items);
    Checked {
        sources: program.sources,
        diagnostics: diags.items,
        model,
        unreadable: program.unreadable_roots,
    }
}

/// Check, then verify the model if it checked clean. Diagnostics of both phases, sorted.
pub fn verify(
    roots: &[PathBuf],
    loader: &dyn SourceLoader,
    solver: &dyn verify::solver::Solver,
    opts: &verify::Options,
) -> (Checked, Option<verify::Verified>) {
    let mut checked = check(roots, loader);
    let verified = checked
        .model
        .as_ref()
        .map(|m| verify::verify(m, solver, opts));
    if let Some(v) = &verified {
        checked.diagnostics.extend(v.diagnostics.iter().cloned());
    }
    sort(&mut checked.diagnostics);
    (checked, verified)
}

/// What `build` made: everything `verify` found plus the emitted rule sets' findings
/// (K208, K212, K213, K214), and the bundle when there were no errors.
pub struct Built {
    pub checked: Checked,
    pub assertions: Vec<verify::AssertionResult>,
    pub bundle: Result<codegen::bundle::Bundle, NoBundle>,
}

/// Why `build` made no bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoBundle {
    /// The policy has errors (in `Built::checked.diagnostics`).
    Errors,
    /// The policy declares no site, or more than one: a bundle is one site's.
    Sites(usize),
}

/// The one way from sources to a bundle, as `kalkic build` does it: check, verify, and
/// for a policy without errors and with exactly one site, generate its rule sets, prove
/// them (translation validation) and assemble the bundle. Pure: writing it is the
/// caller's ([`codegen::bundle::Bundle::write_to`]).
pub fn build(
    roots: &[PathBuf],
    loader: &dyn SourceLoader,
    solver: &dyn verify::solver::Solver,
    opts: &verify::Options,
) -> Built {
    let (mut checked, verified) = verify(roots, loader, solver, opts);
    let assertions = verified.map(|v| v.assertions).unwrap_or_default();
    let clean = checked.unreadable.is_empty()
        && !checked.diagnostics.iter().any(diag::Diagnostic::is_error);
    let bundle = match checked.model.as_ref().filter(|_| clean) {
        None => Err(NoBundle::Errors),
        Some(model) => match model.sites.as_slice() {
            [site] => {
                codegen::bundle::build(model, site, &checked.sources, solver).map_err(|findings| {
                    checked.diagnostics.extend(findings);
                    NoBundle::Errors
                })
            }
            sites => Err(NoBundle::Sites(sites.len())),
        },
    };
    sort(&mut checked.diagnostics);
    Built {
        checked,
        assertions,
        bundle,
    }
}

/// Orders diagnostics by file, position and code, so output is stable.
pub fn sort(diags: &mut [diag::Diagnostic]) {
    diags.sort_by_key(|d| {
        let at = d.main_loc().map(|l| (l.source, l.span.start, l.span.end));
        (at, d.code)
    });
}
