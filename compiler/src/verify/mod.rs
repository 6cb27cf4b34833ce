//! The verifier: proves or refutes the properties of `docs/verification.md` on the typed
//! model. Per-type properties are checked once per device type; only site-level ones
//! (addresses, rules, trust, assertions) look at device instances.
//!
//! The solver sits behind [`solver::Solver`]; graphs use petgraph. [`dataplane`] checks
//! the emitted OpenFlow rules (translation validation, run by `kalkic build`).

mod assert;
pub mod cache;
mod compose;
pub mod dataplane;
pub mod encode;
mod machine;
mod replay;
pub(crate) mod site;
pub mod solver;
mod symmetry;
mod traffic;
pub mod z3;

pub use assert::{AssertionResult, Status, Step};
pub(crate) use machine::trigger_text;
pub(crate) use site::pinned_state;

use crate::diag::Diagnostic;
use crate::ir::{Loc, Model, StateId, TypeId};
use serde_json::json;
use solver::{Outcome, Query, Solver};
use std::collections::{BTreeSet, HashMap};

/// The stable codes of verifier findings.
pub mod codes {
    pub const NONDETERMINISM: &str = "K201";
    pub const DEAD: &str = "K202";
    pub const UNREACHABLE: &str = "K203";
    pub const TRAP: &str = "K204";
    pub const PROVENANCE: &str = "K205";
    pub const RULE_CONFLICT: &str = "K206";
    pub const INTEGRITY: &str = "K207";
    /// Checked on the emitted flows (`kalkic build`), not on the source.
    pub const DATA_PLANE: &str = "K208";
    pub const ADDRESS: &str = "K209";
    pub const ASSERTION: &str = "K210";
    pub const SHADOWED: &str = "K211";
    /// Checked on the emitted flows (`kalkic build`), not on the source.
    pub const FAIL_OPEN: &str = "K212";
    /// A property the solver or the search could not decide; never counts as success.
    pub const INCONCLUSIVE: &str = "K213";
    pub const TRAFFIC: &str = "K215";
    pub const NOT_MONOTONE: &str = "K216";
    pub const RULE_UNDOES: &str = "K217";

    /// Every K2xx code with a one-line summary (read through [`crate::explain`]).
    pub const ALL: &[(&str, &str)] = &[
        (NONDETERMINISM, "nondeterministic transitions"),
        (DEAD, "dead transition or rule"),
        (UNREACHABLE, "unreachable state"),
        (TRAP, "trap state"),
        (PROVENANCE, "awaited alert has no source"),
        (RULE_CONFLICT, "rule conflict"),
        (INTEGRITY, "integrity non-interference violated"),
        (DATA_PLANE, "data-plane interference in the emitted flows"),
        (ADDRESS, "address conflict"),
        (ASSERTION, "assertion refuted"),
        (SHADOWED, "shadowed transition"),
        (FAIL_OPEN, "fail-open: traffic bypasses a device's chain"),
        (INCONCLUSIVE, "verification inconclusive"),
        (TRAFFIC, "traffic assertion refuted"),
        (
            NOT_MONOTONE,
            "a more restrictive state lets through what a less restrictive one stops",
        ),
        (
            RULE_UNDOES,
            "a rule can undo a lowering transition it races with",
        ),
    ];
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Time limit of every solver query, in milliseconds.
    pub timeout_ms: u32,
    /// Largest number of product states an assertion search may visit.
    pub max_states: usize,
    /// An assertion whose cone has more combinations of states than this, and falls into
    /// groups no rule ties together or has a group worth splitting, is decided group by
    /// group ([`compose`]); a smaller one by one search of the whole product, which is
    /// cheaper there. `usize::MAX` always searches the whole product, for comparison.
    pub compose_above: usize,
    /// A group of devices with more combinations of states than this is first decided
    /// with the devices its rules read but do not move abstracted ([`compose`]).
    pub split_above: usize,
    /// Search devices that the rules and the condition treat alike once per orbit
    /// ([`symmetry`]); `false` for comparison.
    pub symmetry: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout_ms: 10_000,
            max_states: 1_000_000,
            compose_above: 4096,
            split_above: 4096,
            symmetry: true,
        }
    }
}

/// What the verifier found: diagnostics and the verdict on every assertion.
#[derive(Debug, Default)]
pub struct Verified {
    pub diagnostics: Vec<Diagnostic>,
    pub assertions: Vec<AssertionResult>,
}

/// What the sites' rules that can fire do to each device type (`site::dead_rules`): the
/// moves they make and the alerts they raise, each with a state the device may be in at
/// that point (`None`: any state). A rule's actions run in order (moves first, then its
/// raised alerts), so an alert is offered in the state the rule's moves, and the alerts it
/// raised before, left the device in: not necessarily a state the rule's condition pins.
#[derive(Debug, Default)]
pub(crate) struct SiteFacts {
    /// (a state the move may start from, its target).
    pub rule_moves: HashMap<TypeId, Vec<(Option<StateId>, StateId)>>,
    /// (alert, a state the device may be in when the alert is offered to it).
    pub raised: HashMap<TypeId, BTreeSet<(String, Option<StateId>)>>,
}

pub(crate) struct Verifier<'a> {
    pub policy: &'a Model,
    solver: &'a dyn Solver,
    pub opts: &'a Options,
    diags: Vec<Diagnostic>,
    /// Per device type: which transitions can fire at all (not dead).
    pub live: HashMap<TypeId, Vec<bool>>,
}

impl<'a> Verifier<'a> {
    pub fn new(policy: &'a Model, solver: &'a dyn Solver, opts: &'a Options) -> Self {
        Verifier {
            policy,
            solver,
            opts,
            diags: Vec::new(),
            live: HashMap::new(),
        }
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// Runs a query; an undecided one is reported here (K213) and yields `None`.
    pub fn solve(&mut self, q: &Query, loc: Loc, what: &str) -> Option<Outcome> {
        match self.solver.solve(q) {
            Outcome::Unknown(why) => {
                self.push(
                    Diagnostic::error(codes::INCONCLUSIVE, format!("could not decide {what}: {why}"))
                        .primary(loc, "undecided")
                        .help("an unknown result never counts as success; raise --solver-timeout-ms or simplify the condition")
                        .witness(json!({ "reason": why })),
                );
                None
            }
            o => Some(o),
        }
    }
}

/// Verifies a checked model.
pub fn verify(model: &Model, solver: &dyn Solver, opts: &Options) -> Verified {
    let mut v = Verifier::new(model, solver, opts);
    let mut facts = SiteFacts::default();
    let mut live_rules = Vec::new();
    for s in &model.sites {
        live_rules.push(site::dead_rules(&mut v, s, &mut facts));
    }
    for id in types_to_check(model) {
        machine::check_type(&mut v, id, &facts);
        traffic::monotone(&mut v, id);
    }
    let mut assertions = Vec::new();
    for (s, live) in model.sites.iter().zip(&live_rules) {
        site::conflicts(&mut v, s, live);
        site::integrity(&mut v, s, live);
        site::undoes(&mut v, s, live);
        assertions.extend(assert::check(&mut v, s, live));
        assertions.extend(traffic::check(&mut v, s, live));
    }
    Verified {
        diagnostics: v.diags,
        assertions,
    }
}

/// Device types declared in the root files or used by a site's devices; library types
/// nobody uses are not verified on every compile. The state machine graphs
/// (`codegen::dot`) draw the same types.
pub(crate) fn types_to_check(model: &Model) -> Vec<TypeId> {
    let mut used: BTreeSet<TypeId> = model
        .sites
        .iter()
        .flat_map(|s| s.devices.iter().map(|d| d.ty))
        .collect();
    for (i, t) in model.device_types.iter().enumerate() {
        if model.roots.contains(&t.loc.source) {
            used.insert(TypeId::from_index(i));
        }
    }
    used.into_iter().collect()
}
