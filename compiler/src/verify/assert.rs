//! Assertions (K210) over the product of the site's device state machines, rules included.
//!
//! The search is explicit over device states, restricted to the assertion's cone of
//! influence: the devices it names, plus the devices whose states the rules that move
//! them read, transitively. Sensed values, alert counts, timers and the clock are
//! abstracted: a transition may fire whenever its guard is satisfiable, and a rule
//! whenever it is due (see [`Node`]) and its condition is satisfiable given the current
//! states. Every real run is a run of this abstraction, so `never` proved here holds for
//! real, and `reachable` refuted here is unreachable for real (`docs/verification.md` has
//! the argument). States are stored as wide as [`StateId`].

use super::compose;
use super::encode::Vocab;
use super::machine::{alert_from_input, describe};
use super::replay::{self, Move as Taken};
use super::site::alert_outcomes;
use super::site::waits_for_state_change;
use super::solver::{Outcome, Term};
use super::symmetry::Symmetry;
use super::{codes, Verifier};
use crate::diag::Diagnostic;
use crate::ir::{
    Action, ArithOp, AssertKind, Assertion, DeviceId, Expr, ExprKind, Loc, Rule, Site, StateId,
    Trigger,
};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "reason")]
pub enum Status {
    Proved,
    Refuted,
    Unknown(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What happened: the initial states, a transition, or a rule firing.
    pub event: String,
    /// The states of the devices in the cone of influence after the step.
    pub states: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssertionResult {
    pub site: String,
    pub loc: Loc,
    pub kind: AssertKind,
    /// `"status": "proved" | "refuted" | "unknown"`, with `"reason"` when unknown.
    #[serde(flatten)]
    pub status: Status,
    /// For a proved `reachable` or a refuted `never`: the run that reaches the condition.
    pub trace: Vec<Step>,
    /// For a proved `reachable` or a refuted `never`: inputs that drive the runtime
    /// engine into the condition, as `kalki-shim simulate` trace lines (`replay`).
    pub replay: Vec<serde_json::Value>,
    /// Product states explored.
    pub explored: usize,
    /// Devices the search had to track.
    pub devices: Vec<String>,
    /// Groups of those devices that no rule ties together, each searched on its own
    /// (`docs/verification.md`, "How assertions are decided"); left out when one.
    #[serde(skip_serializing_if = "is_one")]
    pub groups: usize,
    /// `false` when the solver could not show in time that no shorter run exists (the
    /// run is real and replayed, perhaps not the shortest); left out when it is.
    #[serde(skip_serializing_if = "is_true")]
    pub shortest: bool,
    /// For a traffic assertion: the traffic that crosses, where, and how (`docs/verification.md`,
    /// "Traffic assertions").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<serde_json::Value>,
}

fn is_one(n: &usize) -> bool {
    *n <= 1
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Evaluates a state predicate (assertions only use states, booleans, connectives, and
/// counts of states compared with counts or numbers). `st` holds the state index of each
/// device of the cone, as wide as [`StateId`].
fn holds(e: &Expr, coi: &[DeviceId], st: &[u32]) -> bool {
    match &e.kind {
        ExprKind::Cmp { cmp, lhs, rhs } => match (count_of(lhs, coi, st), count_of(rhs, coi, st)) {
            (Some(a), Some(b)) => cmp.holds(&a, &b),
            _ => false,
        },
        ExprKind::Bool { value } => *value,
        ExprKind::InState { device, state } => coi
            .iter()
            .position(|d| d == device)
            .is_some_and(|i| st.get(i) == Some(&state.0)),
        ExprKind::Not { arg } => !holds(arg, coi, st),
        ExprKind::And { args } => args.iter().all(|a| holds(a, coi, st)),
        ExprKind::Or { args } => args.iter().any(|a| holds(a, coi, st)),
        _ => false,
    }
}

/// The value of a number or a count of states in an assertion.
fn count_of(e: &Expr, coi: &[DeviceId], st: &[u32]) -> Option<i64> {
    match &e.kind {
        ExprKind::Int { value } => Some(*value),
        ExprKind::Count { args } => {
            i64::try_from(args.iter().filter(|a| holds(a, coi, st)).count()).ok()
        }
        ExprKind::Neg { arg } => count_of(arg, coi, st)?.checked_neg(),
        ExprKind::Arith { arith, lhs, rhs } => {
            let (a, b) = (count_of(lhs, coi, st)?, count_of(rhs, coi, st)?);
            match arith {
                ArithOp::Add => a.checked_add(b),
                ArithOp::Sub => a.checked_sub(b),
                ArithOp::Mul => a.checked_mul(b),
            }
        }
        _ => None,
    }
}

/// (position in the cone, new state, whether it is entered even if the device is there).
type Set = (usize, u32, bool);

struct Move {
    event: String,
    /// (position in the cone, new state, whether it is entered even if the device is
    /// there already), applied in order. A transition always enters its target (a
    /// transition back into its own state too); a rule's `dev -> s` while `dev` is in
    /// `s` changes nothing.
    sets: Vec<Set>,
    /// The rule that fires (its position in the rules considered), or `None` for a
    /// transition.
    rule: Option<usize>,
    /// The transition or rule, for replay.
    taken: Taken,
}

/// A combination of states of the cone, and which rules are due: a rule that reads no
/// sensed value and no clock is only evaluated after a device it tests with `in` has
/// entered a state (`docs/runtime.md`, "Rules"), and not again before the next such entry
/// once it has fired. Rules that read values or the clock are always due (a reading or a
/// clock boundary can come at any time).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct Node {
    pub st: Vec<u32>,
    pub due: Vec<bool>,
}

/// Whether a rule moves a device of the cone or raises an alert on one.
fn acts_on(r: &Rule, in_cone: impl Fn(&DeviceId) -> bool) -> bool {
    r.actions
        .iter()
        .any(|x| x.state_target().is_some_and(|d| in_cone(&d)))
}

/// What a rule firing in states `st` can do to the cone, as the engine runs its actions:
/// its moves, then its raised alerts in order, each offered to the state the device is in
/// by then ([`alert_outcomes`]; an alert waiting for a count may or may not complete
/// it). One entry per outcome: the changes in order, and their description.
fn rule_outcomes(
    v: &Verifier<'_>,
    site: &Site,
    coi: &[DeviceId],
    st: &[u32],
    r: &Rule,
) -> Vec<(Vec<Set>, Vec<String>)> {
    let name = |p: usize, s: u32| {
        let dev = &site.devices[coi[p].index()];
        let ty = v.policy.device_type(dev.ty);
        let state = ty
            .states
            .get(StateId(s).index())
            .map_or("?", |x| x.name.as_str());
        format!("{} -> {state}", dev.name)
    };
    // (the cone's states so far, the changes, their description)
    let mut outcomes: Vec<(Vec<u32>, Vec<Set>, Vec<String>)> =
        vec![(st.to_vec(), Vec::new(), Vec::new())];
    let gotos = r
        .actions
        .iter()
        .filter(|x| matches!(x, Action::Goto { .. } | Action::Escalate { .. }));
    let raises = r
        .actions
        .iter()
        .filter(|x| matches!(x, Action::Raise { .. }));
    for x in gotos.chain(raises) {
        let Some(p) = x
            .state_target()
            .and_then(|t| coi.iter().position(|d| *d == t))
        else {
            continue;
        };
        let mut next = Vec::new();
        for (now, sets, what) in outcomes {
            match x {
                Action::Goto { state, .. } => {
                    let (mut now, mut sets, mut what) = (now, sets, what);
                    now[p] = state.0;
                    sets.push((p, state.0, false));
                    what.push(name(p, state.0));
                    next.push((now, sets, what));
                }
                // A conditional move: only from a less restrictive state.
                Action::Escalate { state, .. } => {
                    let (mut now, mut sets, mut what) = (now, sets, what);
                    if now[p] < state.0 {
                        now[p] = state.0;
                        sets.push((p, state.0, false));
                        what.push(name(p, state.0));
                    }
                    next.push((now, sets, what));
                }
                Action::Raise { alert, .. } => {
                    let ty = v.policy.device_type(site.devices[coi[p].index()].ty);
                    for taken in alert_outcomes(ty, StateId(now[p]), alert) {
                        let (mut now, mut sets, mut what) =
                            (now.clone(), sets.clone(), what.clone());
                        match taken {
                            Some(ti) => {
                                let to = ty.transitions[ti].to.0;
                                now[p] = to;
                                sets.push((p, to, true));
                                what.push(format!("raises {alert}: {}", name(p, to)));
                            }
                            None => what.push(format!(
                                "raises {alert} on {} (not enough of them yet)",
                                site.devices[coi[p].index()].name
                            )),
                        }
                        next.push((now, sets, what));
                    }
                }
                Action::Command { .. } => next.push((now, sets, what)),
            }
        }
        outcomes = next;
    }
    outcomes
        .into_iter()
        .map(|(_, sets, what)| (sets, what))
        .collect()
}

pub(super) fn check(
    v: &mut Verifier<'_>,
    site: &Site,
    live_rules: &[bool],
) -> Vec<AssertionResult> {
    site.asserts
        .iter()
        .map(|a| {
            let (result, rules, replay_failed) = decide(v, site, live_rules, a);
            report(v, site, a, &rules, &result, replay_failed);
            result
        })
        .collect()
}

/// The assertion's cone of influence: the devices it names, and the devices whose states
/// the live rules acting on them read, transitively; and those rules.
fn cone(site: &Site, live_rules: &[bool], a: &Assertion) -> (Vec<DeviceId>, Vec<usize>) {
    let mut coi: BTreeSet<DeviceId> = BTreeSet::new();
    coi.extend(Expr::states_read(&a.cond));
    loop {
        let before = coi.len();
        for (i, r) in site.rules.iter().enumerate() {
            if live_rules[i] && acts_on(r, |d| coi.contains(d)) {
                coi.extend(Expr::states_read(&r.cond));
            }
        }
        if coi.len() == before {
            break;
        }
    }
    let coi: Vec<DeviceId> = coi.into_iter().collect();
    let rules: Vec<usize> = (0..site.rules.len())
        .filter(|&i| live_rules[i] && acts_on(&site.rules[i], |d| coi.contains(d)))
        .collect();
    (coi, rules)
}

/// Past this many devices in one search, looking for symmetry (a rewrite of every rule
/// per pair of devices) costs more than it is likely to save.
const SYMMETRY_MAX_DEVICES: usize = 256;

/// The names of the states `st` of the devices `coi`, by device name.
pub(super) fn state_names(
    v: &Verifier<'_>,
    site: &Site,
    coi: &[DeviceId],
    st: &[u32],
) -> BTreeMap<String, String> {
    coi.iter()
        .zip(st)
        .map(|(d, s)| {
            let dev = &site.devices[d.index()];
            let ty = v.policy.device_type(dev.ty);
            (
                dev.name.clone(),
                ty.states
                    .get(StateId(*s).index())
                    .map_or("?".into(), |x| x.name.clone()),
            )
        })
        .collect()
}

/// A run a search found: its steps, the initial states first, and the moves, for replay.
pub(super) struct Run {
    pub trace: Vec<Step>,
    pub moves: Vec<Taken>,
    /// Shown to be a shortest run (false: the solver could not decide in time whether a
    /// shorter one exists).
    pub shortest: bool,
}

/// What deciding an assertion's condition found, by either method.
pub(super) struct Search {
    /// A run to a state where the condition holds, the shortest there is.
    pub run: Option<Run>,
    /// Nodes explored (product states, or each component's states added up).
    pub explored: usize,
    pub unknown: Option<String>,
    /// Stopped at the limit of states before an answer.
    pub bounded: bool,
}

/// The verdict on one assertion, the rules of its cone, and whether the run found failed
/// to replay on the engine. Reports nothing: [`report`] does, or the caller (traffic
/// assertions are decided as assertions over the states that let the traffic through).
///
/// Devices of the cone that no rule ties together move independently; when there are
/// several such groups, each is searched on its own and the condition is decided over
/// their product by the solver ([`super::compose`]); one group is searched whole.
pub(super) fn decide(
    v: &mut Verifier<'_>,
    site: &Site,
    live_rules: &[bool],
    a: &Assertion,
) -> (AssertionResult, Vec<usize>, bool) {
    let (coi, rules) = cone(site, live_rules, a);
    let names: Vec<String> = coi
        .iter()
        .map(|d| site.devices[d.index()].name.clone())
        .collect();
    let parts = compose::components(site, &coi, &rules);
    let large = compose::product_size(v, site, &coi) > v.opts.compose_above;
    let split = || parts.iter().any(|c| compose::splits(v, site, &coi, c));
    let by_groups = large && (parts.len() > 1 || split());
    let groups = if by_groups { parts.len() } else { 1 };
    let search = if by_groups {
        compose::decide(v, site, &coi, &rules, &parts, &a.cond)
    } else {
        whole(v, site, &coi, &rules, &a.cond, v.opts.max_states)
    };
    let Search {
        run,
        explored,
        mut unknown,
        bounded,
    } = search;
    // A run found is replayed on the engine before it is reported as a fact.
    let mut replayed = Vec::new();
    let mut replay_failed = false;
    if let (Some(run), None) = (&run, &unknown) {
        // The part's first devices are the cone, in order.
        let goal = |states: &[usize]| {
            let st: Vec<u32> = states
                .iter()
                .take(coi.len())
                .map(|s| u32::try_from(*s).unwrap_or(u32::MAX))
                .collect();
            holds(&a.cond, &coi, &st)
        };
        let part = replay::Part::new(v, site, &coi, &rules);
        match replay::replay(v, &part, &run.moves, &goal) {
            Ok(inputs) => replayed = inputs,
            Err(why) => {
                replay_failed = true;
                unknown = Some(format!(
                    "the run found does not replay on the runtime engine: {why}"
                ));
            }
        }
    }
    let found = run.is_some();
    let shortest = run.as_ref().is_none_or(|r| r.shortest);
    let tr = run.map(|r| r.trace).unwrap_or_default();
    let (status, tr) = match (a.kind, found, bounded, &unknown) {
        (AssertKind::Reachable, true, _, None) => (Status::Proved, tr),
        (AssertKind::Never, true, _, None) => (Status::Refuted, tr),
        (_, true, _, Some(why)) => (Status::Unknown(why.clone()), tr),
        (_, false, true, _) => (
            Status::Unknown(format!("stopped after {explored} product states (limit)")),
            vec![],
        ),
        (_, false, false, Some(why)) => (Status::Unknown(why.clone()), vec![]),
        (AssertKind::Reachable, false, false, None) => (Status::Refuted, vec![]),
        (AssertKind::Never, false, false, None) => (Status::Proved, vec![]),
    };
    let result = AssertionResult {
        site: site.name.clone(),
        loc: a.loc,
        kind: a.kind,
        status,
        trace: tr,
        replay: replayed,
        explored,
        devices: names,
        groups,
        shortest,
        traffic: None,
    };
    (result, rules, replay_failed)
}

/// Decides `cond` by one explicit search of the whole cone, within `budget` nodes.
pub(super) fn whole(
    v: &mut Verifier<'_>,
    site: &Site,
    coi: &[DeviceId],
    rules: &[usize],
    cond: &Expr,
    budget: usize,
) -> Search {
    // Worth looking for only where the product is large; a small one is searched as is.
    let sym = (v.opts.symmetry
        && compose::product_size(v, site, coi) > v.opts.compose_above
        && coi.len() <= SYMMETRY_MAX_DEVICES)
        .then(|| Symmetry::detect(site, coi, rules, cond))
        .flatten();
    let scope = Scope {
        devices: coi,
        rules,
        free: &[],
        sym: sym.as_ref(),
    };
    let ex = explore(v, site, &scope, Some(cond), budget);
    let run = ex.found.map(|end| {
        let path = ex.path(end);
        Run {
            trace: path
                .iter()
                .map(|&i| Step {
                    event: ex.nodes[i].event.clone(),
                    states: state_names(v, site, coi, &ex.nodes[i].node.st),
                })
                .collect(),
            moves: path.iter().filter_map(|&i| ex.nodes[i].taken).collect(),
            shortest: true,
        }
    });
    Search {
        run,
        explored: ex.nodes.len(),
        unknown: ex.unknown,
        bounded: ex.bounded,
    }
}

/// What one search covers: its devices (the cone, or a group of it), the rules acting on
/// them (site indices), the devices they read but that no rule moves (`free`, with the
/// states each reaches; see [`explore`]), and the symmetry to search once per orbit.
#[derive(Clone, Copy)]
pub(super) struct Scope<'s> {
    pub devices: &'s [DeviceId],
    pub rules: &'s [usize],
    pub free: &'s [(DeviceId, Vec<u32>)],
    pub sym: Option<&'s Symmetry>,
}

/// One node of an explicit search: its states and due rules, the node it was reached
/// from, the step that led here, and whether it is a moment between two changes of one
/// step (never expanded: nothing else happens between a step's changes).
pub(super) struct Entry {
    node: Node,
    pub parent: Option<usize>,
    pub event: String,
    pub taken: Option<Taken>,
    pub between: bool,
}

impl Entry {
    /// The state index of each device searched, in the order given to [`explore`].
    pub fn states(&self) -> &[u32] {
        &self.node.st
    }
}

/// An explicit breadth-first search over the product of some devices' machines.
pub(super) struct Explored {
    pub nodes: Vec<Entry>,
    /// The first node (fewest steps) where the goal holds.
    pub found: Option<usize>,
    /// Why a verdict from this search cannot be trusted (the solver gave up on a rule).
    pub unknown: Option<String>,
    /// The search stopped at its budget of nodes.
    pub bounded: bool,
}

impl Explored {
    /// The nodes from the initial one to `end`, in order.
    pub fn path(&self, end: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = Some(end);
        while let Some(i) = at {
            out.push(i);
            at = self.nodes[i].parent;
        }
        out.reverse();
        out
    }
}

/// Searches the product of the machines of `coi` with the rules `rules` (site indices;
/// each acts on a device of `coi`), breadth first, until `goal` holds or, without a goal,
/// until every node is found. A moment between two changes of one step is recorded where
/// the goal holds there, or always without a goal. Stops after `budget` nodes.
///
/// The rules read the states of devices of `coi`, or of the devices `free`: devices no
/// rule moves, not tracked here but taken to be in any of the states listed for each (the
/// states it can reach), whenever a rule is evaluated; a rule that reads one is always
/// due. Every run of the devices is a run of that abstraction, so a goal it never reaches
/// is never reached; a run it finds may not be one (`super::compose`).
pub(super) fn explore(
    v: &mut Verifier<'_>,
    site: &Site,
    scope: &Scope<'_>,
    goal: Option<&Expr>,
    budget: usize,
) -> Explored {
    let Scope {
        devices: coi,
        rules,
        free,
        sym,
    } = *scope;
    // The table of nodes seen is keyed by one node of each orbit of the symmetry.
    let key = |n: &Node| match sym {
        Some(s) => s.key(n),
        None => n.clone(),
    };
    let reads: Vec<BTreeSet<DeviceId>> = rules
        .iter()
        .map(|&ri| Expr::states_read(&site.rules[ri].cond).collect())
        .collect();
    // Rules that wait for a state change (see [`Node`]): a free device may change at any time.
    let waits: Vec<bool> = rules
        .iter()
        .zip(&reads)
        .map(|(&ri, read)| {
            waits_for_state_change(&site.rules[ri]) && !free.iter().any(|(f, _)| read.contains(f))
        })
        .collect();
    // Per position in the cone: the waiting rules an entry of that device makes due.
    let wakes: Vec<Vec<usize>> = coi
        .iter()
        .map(|d| {
            (0..rules.len())
                .filter(|&k| waits[k] && reads[k].contains(d))
                .collect()
        })
        .collect();
    // At the start nothing is evaluated: only rules that can be woken at any time are due.
    let init = Node {
        st: coi
            .iter()
            .map(|d| v.policy.device_type(site.devices[d.index()].ty).initial.0)
            .collect(),
        due: waits.iter().map(|w| !w).collect(),
    };
    let holds_goal = |st: &[u32]| goal.is_some_and(|g| holds(g, coi, st));
    let mut seen: HashMap<Node, usize> = HashMap::new();
    let mut seen_between: HashMap<Node, usize> = HashMap::new();
    let mut nodes: Vec<Entry> = Vec::new();
    let mut queue = VecDeque::new();
    seen.insert(key(&init), 0);
    nodes.push(Entry {
        node: init,
        parent: None,
        event: "initial states".into(),
        taken: None,
        between: false,
    });
    queue.push_back(0usize);
    let mut enabled_cache: HashMap<(usize, Vec<u32>), bool> = HashMap::new();
    let mut unknown: Option<String> = None;
    let mut found: Option<usize> = None;
    let mut bounded = false;
    // Fixed for the whole search: which transitions can fire, which devices each rule reads.
    let live: Vec<Vec<bool>> = coi
        .iter()
        .map(|d| {
            v.live
                .get(&site.devices[d.index()].ty)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    while let Some(n) = queue.pop_front() {
        let node = nodes[n].node.clone();
        let st = &node.st;
        if holds_goal(st) {
            found = Some(n);
            break;
        }
        let mut moves: Vec<Move> = Vec::new();
        for (pos, d) in coi.iter().enumerate() {
            let dev = &site.devices[d.index()];
            let ty = v.policy.device_type(dev.ty);
            for (ti, t) in ty.transitions.iter().enumerate() {
                // A transition back into its own state changes nothing here but which
                // rules are due.
                if st[pos] != t.from.0
                    || !live[pos].get(ti).copied().unwrap_or(true)
                    || (t.from == t.to && wakes[pos].is_empty())
                {
                    continue;
                }
                // An alert no input brings in this state only comes with a rule's
                // `raise`: taken below, as part of the rule's step.
                if let Trigger::Alert { alert, .. } = &t.trigger {
                    if !alert_from_input(v.policy, ty, t.from, alert) {
                        continue;
                    }
                }
                moves.push(Move {
                    event: format!("`{}`: {}", dev.name, describe(ty, t)),
                    sets: vec![(pos, t.to.0, true)],
                    rule: None,
                    taken: Taken::Transition {
                        device: *d,
                        index: ti,
                    },
                });
            }
        }
        for (k, (&ri, read)) in rules.iter().zip(&reads).enumerate() {
            if !node.due[k] {
                continue;
            }
            let r = &site.rules[ri];
            let key_states: Vec<u32> = coi
                .iter()
                .zip(st)
                .filter(|(d, _)| read.contains(d))
                .map(|(_, s)| *s)
                .collect();
            let key = (ri, key_states);
            let enabled = match enabled_cache.get(&key) {
                Some(e) => *e,
                None => {
                    let mut voc = Vocab::for_site(v.policy, site);
                    let c = voc.encode(&r.cond);
                    let mut facts = vec![c];
                    for (d, s) in coi.iter().zip(st) {
                        if read.contains(d) {
                            facts.push(voc.state_is(*d, StateId(*s)));
                        }
                    }
                    for (f, reach) in free {
                        if read.contains(f) {
                            let any = reach.iter().map(|s| voc.state_is(*f, StateId(*s)));
                            facts.push(Term::Or(any.collect()));
                        }
                    }
                    voc.query.facts.push(Term::And(facts));
                    // Undecided: assume it can fire (sound for `never`), but the verdict
                    // becomes unknown.
                    let e = match v.solve(&voc.query, r.loc, "whether a rule can fire in a state") {
                        Some(Outcome::Unsat) => false,
                        Some(_) => true,
                        None => {
                            unknown.get_or_insert_with(|| {
                                format!("the solver gave up on rule `{}`", r.name)
                            });
                            true
                        }
                    };
                    enabled_cache.insert(key, e);
                    e
                }
            };
            if !enabled {
                continue;
            }
            for (sets, what) in rule_outcomes(v, site, coi, st, r) {
                moves.push(Move {
                    event: format!("rule `{}` fires: {}", r.name, what.join(", ")),
                    sets,
                    rule: Some(k),
                    taken: Taken::Rule { index: ri },
                });
            }
        }
        for m in moves {
            let mut next = node.clone();
            // The engine makes a step's changes one at a time, each a state of the node
            // (a rule moving one device twice installs both postures): one that meets the
            // condition between two changes is reached, and recorded as such.
            let mut between = None;
            for (i, &(p, s, enters)) in m.sets.iter().enumerate() {
                // Every entry (not a rule's move to where the device already is) makes
                // the waiting rules that test the device due.
                if enters || next.st[p] != s {
                    next.st[p] = s;
                    for &w in &wakes[p] {
                        next.due[w] = true;
                    }
                }
                if i + 1 < m.sets.len()
                    && between.is_none()
                    && (goal.is_none() || holds_goal(&next.st))
                {
                    between = Some(next.clone());
                }
            }
            if let Some(mid) = between {
                // With a goal, it holds here: a node like any, found when its turn comes.
                // Without one, a moment only seen (never expanded, and no reason not to
                // reach the same states at the end of a step).
                let known = if goal.is_some() {
                    &mut seen
                } else {
                    &mut seen_between
                };
                if let std::collections::hash_map::Entry::Vacant(slot) = known.entry(key(&mid)) {
                    slot.insert(nodes.len());
                    nodes.push(Entry {
                        node: mid,
                        parent: Some(n),
                        event: format!("{} (between two of its changes)", m.event),
                        taken: Some(m.taken),
                        between: true,
                    });
                    if goal.is_some() {
                        queue.push_back(nodes.len() - 1);
                    }
                }
            }
            // A rule fires at most once per moment: what its own moves wake is lost.
            if let Some(k) = m.rule {
                if waits[k] {
                    next.due[k] = false;
                }
            }
            let k = key(&next);
            if seen.contains_key(&k) {
                continue;
            }
            if nodes.len() >= budget {
                bounded = true;
                break;
            }
            seen.insert(k, nodes.len());
            nodes.push(Entry {
                node: next,
                parent: Some(n),
                event: m.event,
                taken: Some(m.taken),
                between: false,
            });
            queue.push_back(nodes.len() - 1);
        }
        if bounded {
            break;
        }
    }

    Explored {
        nodes,
        found,
        unknown,
        bounded,
    }
}

/// The finding of a verdict that is not a proof: K210 with the run or the number of
/// combinations explored, K213 with the reason.
fn report(
    v: &mut Verifier<'_>,
    site: &Site,
    a: &Assertion,
    rules: &[usize],
    r: &AssertionResult,
    replay_failed: bool,
) {
    let (explored, names, tr, replayed) = (r.explored, &r.devices, &r.trace, &r.replay);
    let kind = match a.kind {
        AssertKind::Reachable => "reachable",
        AssertKind::Never => "never",
    };
    match &r.status {
        Status::Refuted => {
            let (msg, label, help) = if a.kind == AssertKind::Reachable {
                (
                    "assertion refuted: the condition is unreachable".to_string(),
                    format!("no run reaches this; explored {explored} combinations of states"),
                    "every run from the initial states was explored; add a transition or rule that leads there".to_string(),
                )
            } else {
                (
                    "assertion refuted: the condition can hold".to_string(),
                    match (tr.len().saturating_sub(1), r.shortest) {
                        (1, _) => "reached in 1 step".to_string(),
                        (n, true) => format!("reached in {n} steps"),
                        (n, false) => format!(
                            "reached in {n} steps (perhaps not the fewest: the solver ran out of time looking for a shorter run)"
                        ),
                    },
                    "the witness trace shows a run from the initial states that reaches it"
                        .to_string(),
                )
            };
            let steps: Vec<String> = tr.iter().map(|s| s.event.clone()).collect();
            let mut d = Diagnostic::error(codes::ASSERTION, msg)
                .primary(a.loc, label)
                .help(if steps.is_empty() { help } else { format!("{help}: {}", steps.join("; then ")) })
                .witness(json!({ "assertion": kind, "explored": explored, "devices": names, "trace": tr, "replay": replayed }));
            for &ri in rules.iter().take(4) {
                d = d.secondary(site.rules[ri].loc, "rule considered");
            }
            v.push(d);
        }
        Status::Unknown(why) => {
            let help = if replay_failed {
                "an unknown result never counts as success; the search abstracts sensed values and time, and the runtime engine did not follow the run it found: see docs/verification.md, \"Witness replay\""
            } else {
                "an unknown result never counts as success; raise --max-states or --solver-timeout-ms, or simplify the rules"
            };
            v.push(
                Diagnostic::error(
                    codes::INCONCLUSIVE,
                    format!("assertion could not be decided: {why}"),
                )
                .primary(a.loc, "neither proved nor refuted")
                .help(help)
                .witness(json!({ "assertion": kind, "explored": explored, "reason": why })),
            );
        }
        Status::Proved => {}
    }
}

#[cfg(test)]
mod tests {
    //! State indices past 65,535. A policy with that many states takes minutes to check
    //! and verify end to end, so the search is driven here on a model built by hand.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::ir::{
        Chain, Device, DeviceNet, DeviceType, Model, State, Transition, Trigger, Ty, TypeId,
        UnknownHosts,
    };
    use crate::source::SourceId;
    use crate::verify::solver::{Query, Solver};
    use crate::verify::Options;
    use kalki_lang::ast::Span;

    /// No rule, so no query is ever asked.
    struct NoSolver;
    impl Solver for NoSolver {
        fn solve(&self, _: &Query) -> Outcome {
            panic!("no query expected")
        }
    }

    const LOC: Loc = Loc {
        source: SourceId(0),
        span: Span { start: 0, end: 0 },
    };

    fn in_state(state: u32) -> Expr {
        Expr {
            kind: ExprKind::InState {
                device: DeviceId(0),
                state: StateId(state),
            },
            ty: Ty::Bool,
            loc: LOC,
        }
    }

    /// One device of a type with `states` states, `initial`, and `transitions` (from, to)
    /// on `operator reset`; the verdict of `kind in_state(target)`.
    fn verdict(
        states: u32,
        initial: u32,
        transitions: &[(u32, u32)],
        kind: AssertKind,
        target: u32,
    ) -> AssertionResult {
        let ty = DeviceType {
            name: "Big".into(),
            loc: LOC,
            vars: vec![],
            commands: vec![],
            lowering: vec![],
            alerts: vec![],
            states: (0..states)
                .map(|i| State {
                    name: format!("s{i}"),
                    loc: LOC,
                    is_final: false,
                    chain: Some(Chain::Pass),
                    chain_loc: LOC,
                })
                .collect(),
            initial: StateId(initial),
            transitions: transitions
                .iter()
                .map(|&(from, to)| Transition {
                    from: StateId(from),
                    to: StateId(to),
                    trigger: Trigger::Operator {
                        action: "reset".into(),
                    },
                    loc: LOC,
                })
                .collect(),
            params: vec![],
            telemetry: Default::default(),
        };
        let site = Site {
            name: "big".into(),
            loc: LOC,
            bridge: "br0".into(),
            uplink: None,
            uplink_loc: LOC,
            unknown_hosts: UnknownHosts::Drop,
            nodes: vec![],
            part_of: None,
            devices: vec![Device {
                name: "d".into(),
                ty: TypeId(0),
                net: Some(DeviceNet {
                    ip: 1,
                    mac: None,
                    port: "p1".into(),
                    ip_loc: LOC,
                    mac_loc: None,
                    port_loc: LOC,
                }),
                trusted: false,
                loc: LOC,
                telemetry: None,
                node: None,
            }],
            rules: vec![],
            asserts: vec![],
            traffic_asserts: vec![],
        };
        let model = Model {
            device_types: vec![ty],
            ..Model::default()
        };
        let opts = Options::default();
        let mut v = Verifier::new(&model, &NoSolver, &opts);
        let a = Assertion {
            kind,
            cond: in_state(target),
            loc: LOC,
        };
        decide(&mut v, &site, &[], &a).0
    }

    #[test]
    fn initial_state_past_u16_is_where_the_search_starts() {
        // Stored in 16 bits, state 65,536 became state 0: `reachable` refuted, `never`
        // of state 0 refuted.
        let r = verdict(65_537, 65_536, &[], AssertKind::Reachable, 65_536);
        assert!(matches!(r.status, Status::Proved), "{:?}", r.status);
        assert_eq!(r.trace[0].states["d"], "s65536");
        let r = verdict(65_537, 65_536, &[], AssertKind::Never, 0);
        assert!(matches!(r.status, Status::Proved), "{:?}", r.status);
    }

    #[test]
    fn transition_targets_past_u16_are_kept() {
        let (far, near) = (70_000, 70_000 - 65_536);
        let r = verdict(far + 1, 0, &[(0, far)], AssertKind::Reachable, far);
        assert!(matches!(r.status, Status::Proved), "{:?}", r.status);
        assert_eq!(r.trace.last().unwrap().states["d"], format!("s{far}"));
        let r = verdict(far + 1, 0, &[(0, far)], AssertKind::Never, near);
        assert!(matches!(r.status, Status::Proved), "{:?}", r.status);
    }
}
