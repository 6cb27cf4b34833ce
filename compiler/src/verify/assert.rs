//! Assertions (K210) over the product of the site's device state machines, rules included.
//!
//! The search is explicit over device states, restricted to the assertion's cone of
//! influence: the devices it names, plus the devices whose states the rules that move
//! them read, transitively. Sensed values, alert counts, timers and the clock are
//! abstracted: a transition may fire whenever its guard is satisfiable, and a rule
//! whenever its condition is satisfiable given the current states. Every real run is a
//! run of this abstraction, so `never` proved here holds for real, and `reachable`
//! refuted here is unreachable for real (`docs/verification.md` has the argument).

use super::encode::Vocab;
use super::machine::describe;
use super::solver::{Outcome, Term};
use super::{codes, Verifier};
use crate::diag::Diagnostic;
use crate::ir::{Action, AssertKind, Assertion, DeviceId, Expr, ExprKind, Loc, Site};
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
    /// Product states explored.
    pub explored: usize,
    /// Devices the search had to track.
    pub devices: Vec<String>,
}

/// The devices whose states an expression tests.
fn in_states(e: &Expr) -> impl Iterator<Item = DeviceId> + '_ {
    e.nodes().filter_map(|n| match &n.kind {
        ExprKind::InState { device, .. } => Some(*device),
        _ => None,
    })
}

/// Evaluates a state predicate (assertions only use states, booleans and connectives).
fn holds(e: &Expr, coi: &[DeviceId], st: &[u16]) -> bool {
    match &e.kind {
        ExprKind::Bool { value } => *value,
        ExprKind::InState { device, state } => coi
            .iter()
            .position(|d| d == device)
            .is_some_and(|i| usize::from(st[i]) == state.index()),
        ExprKind::Not { arg } => !holds(arg, coi, st),
        ExprKind::And { args } => args.iter().all(|a| holds(a, coi, st)),
        ExprKind::Or { args } => args.iter().any(|a| holds(a, coi, st)),
        _ => false,
    }
}

struct Move {
    event: String,
    /// (position in the cone, new state)
    sets: Vec<(usize, u16)>,
}

pub(super) fn check(
    v: &mut Verifier<'_>,
    site: &Site,
    live_rules: &[bool],
) -> Vec<AssertionResult> {
    site.asserts
        .iter()
        .map(|a| check_one(v, site, live_rules, a))
        .collect()
}

fn check_one(
    v: &mut Verifier<'_>,
    site: &Site,
    live_rules: &[bool],
    a: &Assertion,
) -> AssertionResult {
    // Cone of influence.
    let mut coi: BTreeSet<DeviceId> = BTreeSet::new();
    coi.extend(in_states(&a.cond));
    loop {
        let before = coi.len();
        for (i, r) in site.rules.iter().enumerate() {
            let moves_coi = r
                .actions
                .iter()
                .any(|x| matches!(x, Action::Goto { device, .. } if coi.contains(device)));
            if live_rules[i] && moves_coi {
                coi.extend(in_states(&r.cond));
            }
        }
        if coi.len() == before {
            break;
        }
    }
    let coi: Vec<DeviceId> = coi.into_iter().collect();
    let names: Vec<String> = coi
        .iter()
        .map(|d| site.devices[d.index()].name.clone())
        .collect();
    let rules: Vec<usize> = (0..site.rules.len())
        .filter(|&i| {
            live_rules[i]
                && site.rules[i]
                    .actions
                    .iter()
                    .any(|x| matches!(x, Action::Goto { device, .. } if coi.contains(device)))
        })
        .collect();

    let state_names = |st: &[u16]| -> BTreeMap<String, String> {
        coi.iter()
            .zip(st)
            .map(|(d, s)| {
                let dev = &site.devices[d.index()];
                let ty = v.policy.device_type(dev.ty);
                (
                    dev.name.clone(),
                    ty.states
                        .get(usize::from(*s))
                        .map_or("?".into(), |x| x.name.clone()),
                )
            })
            .collect()
    };

    let init: Vec<u16> = coi
        .iter()
        .map(|d| {
            u16::try_from(
                v.policy
                    .device_type(site.devices[d.index()].ty)
                    .initial
                    .index(),
            )
            .unwrap_or(0)
        })
        .collect();
    let mut seen: HashMap<Vec<u16>, usize> = HashMap::new();
    // (state, parent, event)
    let mut nodes: Vec<(Vec<u16>, Option<usize>, String)> = Vec::new();
    let mut queue = VecDeque::new();
    seen.insert(init.clone(), 0);
    nodes.push((init, None, "initial states".into()));
    queue.push_back(0usize);
    let mut enabled_cache: HashMap<(usize, Vec<u16>), bool> = HashMap::new();
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
    let reads: Vec<BTreeSet<DeviceId>> = rules
        .iter()
        .map(|&ri| in_states(&site.rules[ri].cond).collect())
        .collect();

    while let Some(n) = queue.pop_front() {
        let st = nodes[n].0.clone();
        if holds(&a.cond, &coi, &st) {
            found = Some(n);
            break;
        }
        let mut moves: Vec<Move> = Vec::new();
        for (pos, d) in coi.iter().enumerate() {
            let dev = &site.devices[d.index()];
            let ty = v.policy.device_type(dev.ty);
            for (ti, t) in ty.transitions.iter().enumerate() {
                if usize::from(st[pos]) != t.from.index()
                    || !live[pos].get(ti).copied().unwrap_or(true)
                    || t.from == t.to
                {
                    continue;
                }
                let sets = vec![(pos, u16::try_from(t.to.index()).unwrap_or(0))];
                moves.push(Move {
                    event: format!("`{}`: {}", dev.name, describe(ty, t)),
                    sets,
                });
            }
        }
        for (&ri, read) in rules.iter().zip(&reads) {
            let r = &site.rules[ri];
            let key_states: Vec<u16> = coi
                .iter()
                .zip(&st)
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
                    for (d, s) in coi.iter().zip(&st) {
                        if read.contains(d) {
                            facts.push(voc.state_is(*d, crate::ir::StateId(u32::from(*s))));
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
            let sets: Vec<(usize, u16)> = r
                .actions
                .iter()
                .filter_map(|x| match x {
                    Action::Goto { device, state, .. } => coi
                        .iter()
                        .position(|d| d == device)
                        .map(|p| (p, u16::try_from(state.index()).unwrap_or(0))),
                    _ => None,
                })
                .collect();
            let targets: Vec<String> = sets
                .iter()
                .map(|(p, s)| {
                    let dev = &site.devices[coi[*p].index()];
                    let ty = v.policy.device_type(dev.ty);
                    format!(
                        "{} -> {}",
                        dev.name,
                        ty.states
                            .get(usize::from(*s))
                            .map_or("?", |x| x.name.as_str())
                    )
                })
                .collect();
            moves.push(Move {
                event: format!("rule `{}` fires: {}", r.name, targets.join(", ")),
                sets,
            });
        }
        for m in moves {
            let mut next = st.clone();
            for (p, s) in &m.sets {
                next[*p] = *s;
            }
            if seen.contains_key(&next) {
                continue;
            }
            if nodes.len() >= v.opts.max_states {
                bounded = true;
                break;
            }
            seen.insert(next.clone(), nodes.len());
            nodes.push((next, Some(n), m.event));
            queue.push_back(nodes.len() - 1);
        }
        if bounded {
            break;
        }
    }

    let trace = |end: usize| -> Vec<Step> {
        let mut out = Vec::new();
        let mut at = Some(end);
        while let Some(i) = at {
            let (st, parent, event) = &nodes[i];
            out.push(Step {
                event: event.clone(),
                states: state_names(st),
            });
            at = *parent;
        }
        out.reverse();
        out
    };
    let explored = nodes.len();
    let (status, tr) = match (a.kind, found, bounded, &unknown) {
        (AssertKind::Reachable, Some(n), _, None) => (Status::Proved, trace(n)),
        (AssertKind::Never, Some(n), _, None) => (Status::Refuted, trace(n)),
        (_, Some(n), _, Some(why)) => (Status::Unknown(why.clone()), trace(n)),
        (_, None, true, _) => (
            Status::Unknown(format!("stopped after {explored} product states (limit)")),
            vec![],
        ),
        (_, None, false, Some(why)) => (Status::Unknown(why.clone()), vec![]),
        (AssertKind::Reachable, None, false, None) => (Status::Refuted, vec![]),
        (AssertKind::Never, None, false, None) => (Status::Proved, vec![]),
    };
    let kind = match a.kind {
        AssertKind::Reachable => "reachable",
        AssertKind::Never => "never",
    };
    match &status {
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
                    format!("reached in {} steps", tr.len().saturating_sub(1)),
                    "the witness trace shows a run from the initial states that reaches it"
                        .to_string(),
                )
            };
            let steps: Vec<String> = tr.iter().map(|s| s.event.clone()).collect();
            let mut d = Diagnostic::error(codes::ASSERTION, msg)
                .primary(a.loc, label)
                .help(if steps.is_empty() { help } else { format!("{help}: {}", steps.join("; then ")) })
                .witness(json!({ "assertion": kind, "explored": explored, "devices": names, "trace": tr }));
            for &ri in rules.iter().take(4) {
                d = d.secondary(site.rules[ri].loc, "rule considered");
            }
            v.push(d);
        }
        Status::Unknown(why) => {
            v.push(
                Diagnostic::error(codes::INCONCLUSIVE, format!("assertion could not be decided: {why}"))
                    .primary(a.loc, "neither proved nor refuted")
                    .help("an unknown result never counts as success; raise --max-states or --solver-timeout-ms, or simplify the rules")
                    .witness(json!({ "assertion": kind, "explored": explored, "reason": why })),
            );
        }
        Status::Proved => {}
    }
    AssertionResult {
        site: site.name.clone(),
        loc: a.loc,
        kind: a.kind,
        status,
        trace: tr,
        explored,
        devices: names,
    }
}
