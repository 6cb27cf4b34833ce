//! The Kalki policy compiler: name resolution, type checking, verification and code
//! generation, chained by the few-line functions below. The core is pure: sources come
//! in through [`source::SourceLoader`], results go out as data ([`diag::Diagnostic`],
//! [`ir::Model`]); only the `kalkic` binary touches files and terminals.
// Only the binaries write to the terminal (docs/ARCHITECTURE.md, "Invariants").
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod codegen;
pub mod codes;
pub mod diag;
pub mod explain;
pub mod init;
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
    check_program(roots, loader).0
}

/// [`check`], also returning the resolved modules (syntax trees, imports, scopes) for
/// tools that answer questions about the text, such as the language server. The
/// program's `sources` have moved into [`Checked::sources`].
pub fn check_program(roots: &[PathBuf], loader: &dyn SourceLoader) -> (Checked, resolve::Program) {
    let mut diags = Diagnostics::default();
    let mut program = resolve::load(roots, loader, &mut diags);
    // A file with syntax errors has a partial tree: checking it would only add echoes.
    let model = (!program.syntax_errors).then(|| typeck::typeck(&program, &mut diags));
    // Two devices on one address (K209) need no solver: a site that cannot be told apart
    // on the wire is an error of `check`, and such a model never reaches the verifier.
    if let Some(m) = model.as_ref().filter(|_| !diags.has_errors()) {
        for site in &m.sites {
            diags.items.extend(verify::site::addresses(site));
        }
    }
    let model = model.filter(|_| !diags.has_errors());
    sort(&mut diags.items);
    let checked = Checked {
        sources: std::mem::take(&mut program.sources),
        diagnostics: diags.items,
        model,
        unreadable: std::mem::take(&mut program.unreadable_roots),
    };
    (checked, program)
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
    /// No site to build: a bundle is one site's.
    Site(NoSite),
}

/// Why no site was chosen for a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoSite {
    /// The policy declares no site.
    None,
    /// The policy declares these sites and none was named.
    Many(Vec<String>),
    /// The named site is not among the policy's sites.
    Unknown { name: String, sites: Vec<String> },
}

impl std::fmt::Display for NoSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoSite::None => write!(
                f,
                "the policy declares no site; a bundle is built for one site"
            ),
            NoSite::Many(sites) => write!(
                f,
                "the policy declares {} sites ({}); name one with --site",
                sites.len(),
                sites.join(", ")
            ),
            NoSite::Unknown { name, sites } if sites.is_empty() => {
                write!(f, "no site `{name}`: the policy declares no site")
            }
            NoSite::Unknown { name, sites } => write!(
                f,
                "no site `{name}`: the policy declares {}",
                sites.join(", ")
            ),
        }
    }
}

/// The site a bundle is built for: the one named, or the only one.
pub fn pick_site<'m>(model: &'m ir::Model, name: Option<&str>) -> Result<&'m ir::Site, NoSite> {
    let names = || {
        model
            .sites
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    };
    match (name, model.sites.as_slice()) {
        (Some(n), sites) => sites
            .iter()
            .find(|s| s.name == n)
            .ok_or_else(|| NoSite::Unknown {
                name: n.to_string(),
                sites: names(),
            }),
        (None, [site]) => Ok(site),
        (None, []) => Err(NoSite::None),
        (None, _) => Err(NoSite::Many(names())),
    }
}

/// The one way from sources to a bundle, as `kalkic build` does it: check, verify (every
/// site), and for a policy without errors, generate the rule sets of the site named (or of
/// its only site), prove them (translation validation) and assemble the bundle. Pure:
/// writing it is the caller's ([`codegen::bundle::Bundle::write_to`]).
pub fn build(
    roots: &[PathBuf],
    loader: &dyn SourceLoader,
    solver: &dyn verify::solver::Solver,
    opts: &verify::Options,
    site: Option<&str>,
) -> Built {
    let (mut checked, verified) = verify(roots, loader, solver, opts);
    let assertions = verified.map(|v| v.assertions).unwrap_or_default();
    let clean = checked.unreadable.is_empty()
        && !checked.diagnostics.iter().any(diag::Diagnostic::is_error);
    let bundle = match checked.model.as_ref().filter(|_| clean) {
        None => Err(NoBundle::Errors),
        Some(model) => match pick_site(model, site) {
            Ok(site) => {
                codegen::bundle::build(model, site, &checked.sources, solver).map_err(|findings| {
                    checked.diagnostics.extend(findings);
                    NoBundle::Errors
                })
            }
            Err(why) => Err(NoBundle::Site(why)),
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
