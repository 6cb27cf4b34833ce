//! Checks of one device type's state machine, done once per type whatever the number of
//! devices: nondeterminism (K201), dead transitions (K202), unreachable states (K203),
//! traps (K204), alert provenance (K205) and shadowed transitions (K211).

use super::encode::{inline, Vocab};
use super::solver::{Outcome, Term};
use super::{codes, SiteFacts, Verifier};
use crate::diag::Diagnostic;
use crate::ir::{Chain, DeviceType, Expr, StateId, Transition, Trigger, TypeId, VarRef};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Bfs, Reversed};
use serde_json::json;

pub(super) fn check_type(v: &mut Verifier<'_>, id: TypeId, facts: &SiteFacts) {
    let ty = v.policy.device_type(id);
    let mut live = dead_transitions(v, ty);
    // A transition waiting for an alert that nothing can raise can never fire either.
    for (i, ok) in provenance(v, id, ty, facts).into_iter().enumerate() {
        live[i] &= ok;
    }
    pairs(v, ty, &live);
    graph(v, id, ty, &live, facts);
    v.live.insert(id, live);
}

/// A transition as written: `normal -> suspicious on port_scan count 3 within 1m`.
pub(super) fn describe(ty: &DeviceType, t: &Transition) -> String {
    let from = &ty.state(t.from).name;
    let to = &ty.state(t.to).name;
    format!("{from} -> {to} {}", trigger_text(&t.trigger))
}

/// A trigger as written, guards elided: `on port_scan count 3 within 1m`, `when ... for
/// 30s`, `after 10m quiet`, `on operator reset`. Shared by [`describe`] and the state
/// machine graphs (`codegen::dot`).
pub(crate) fn trigger_text(t: &Trigger) -> String {
    match t {
        Trigger::Alert {
            alert, count: None, ..
        } => format!("on {alert}"),
        Trigger::Alert {
            alert,
            count: Some((n, w)),
            ..
        } => format!("on {alert} count {n} within {}", ms(*w)),
        Trigger::When { hold_ms: None, .. } => "when ...".into(),
        Trigger::When {
            hold_ms: Some(h), ..
        } => format!("when ... for {}", ms(*h)),
        Trigger::Quiet { after_ms } => format!("after {} quiet", ms(*after_ms)),
        Trigger::Operator { action } => format!("on operator {action}"),
    }
}

pub(super) fn ms(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms % size == 0 && ms >= size {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn label_vars(d: Diagnostic, ty: &DeviceType, guards: &[&Expr]) -> Diagnostic {
    let mut vars: Vec<VarRef> = Vec::new();
    for g in guards {
        for (var, _) in g.vars_read() {
            if !vars.contains(&var) {
                vars.push(var);
            }
        }
    }
    vars.into_iter()
        .filter(|r| r.device.is_none())
        .fold(d, |d, r| {
            let var = ty.var(r.var);
            let domain = match &var.ty {
                crate::ir::VarType::Bool => "a boolean".to_string(),
                crate::ir::VarType::Int { lo, hi } => format!("declared in {lo}..{hi}"),
                crate::ir::VarType::Enum { members } => format!("one of {}", members.join(", ")),
            };
            d.secondary(var.loc, format!("`{}` is {domain}", var.name))
        })
}

/// K202 for guards; returns which transitions can fire at all.
fn dead_transitions(v: &mut Verifier<'_>, ty: &DeviceType) -> Vec<bool> {
    let mut live = vec![true; ty.transitions.len()];
    for (i, t) in ty.transitions.iter().enumerate() {
        let Trigger::When { guard, .. } = &t.trigger else {
            continue;
        };
        let mut voc = Vocab::for_type(v.policy, ty);
        let g = voc.encode(guard);
        voc.query.facts.push(g);
        if let Some(Outcome::Unsat) = v.solve(&voc.query, guard.loc, "whether this guard can hold")
        {
            live[i] = false;
            let d = Diagnostic::error(
                codes::DEAD,
                format!("transition `{}` can never fire", describe(ty, t)),
            )
            .primary(
                guard.loc,
                "no values within the declared ranges satisfy this guard",
            )
            .help("widen the variable's declared range or fix the comparison")
            .witness(json!({ "transition": describe(ty, t), "satisfiable": false }));
            v.push(label_vars(d, ty, &[guard]));
        }
    }
    live
}

/// An alert trigger as (count, window): a plain `on A` is one alert in any window.
type AlertSpec = (u32, Option<u64>);

fn alert_spec(count: &Option<(u32, u64)>) -> AlertSpec {
    match count {
        None => (1, None),
        Some((n, w)) => (*n, Some(*w)),
    }
}

/// Whether `a` is always met at an earlier alert than `b`: fewer alerts, within a window
/// at least as long. Then the alerts that complete `b` contain an earlier group that
/// completed `a`. With equal counts, or a shorter window for fewer alerts, one alert can
/// complete both at once.
fn strictly_earlier(a: AlertSpec, b: AlertSpec) -> bool {
    let window_at_least = match (a.1, b.1) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) => x >= y,
    };
    a.0 < b.0 && window_at_least
}

/// K201 and K211: every pair of live transitions out of one state.
fn pairs(v: &mut Verifier<'_>, ty: &DeviceType, live: &[bool]) {
    let n = ty.transitions.len();
    for i in 0..n {
        for j in (i + 1)..n {
            let (a, b) = (&ty.transitions[i], &ty.transitions[j]);
            if a.from != b.from || !live[i] || !live[j] {
                continue;
            }
            pair(v, ty, a, b);
        }
    }
}

fn nondeterminism(
    ty: &DeviceType,
    a: &Transition,
    b: &Transition,
    event: String,
    values: serde_json::Value,
) -> Diagnostic {
    let state = &ty.state(a.from).name;
    let msg = format!(
        "nondeterministic transitions out of `{state}` in `{}`",
        ty.name
    );
    Diagnostic::error(codes::NONDETERMINISM, msg)
        .primary(a.loc, format!("goes to `{}`", ty.state(a.to).name))
        .secondary(b.loc, format!("goes to `{}`", ty.state(b.to).name))
        .help(format!(
            "both are enabled by {event}; make their conditions exclusive or merge them"
        ))
        .witness(json!({
            "device_type": ty.name,
            "state": state,
            "event": event,
            "values": values,
            "transitions": [describe(ty, a), describe(ty, b)],
        }))
}

fn shadowed(ty: &DeviceType, hidden: &Transition, by: &Transition, why: &str) -> Diagnostic {
    Diagnostic::warning(
        codes::SHADOWED,
        format!("transition `{}` never fires", describe(ty, hidden)),
    )
    .primary(hidden.loc, "shadowed")
    .secondary(by.loc, "this one always fires first")
    .help(why.to_string())
    .witness(json!({ "shadowed": describe(ty, hidden), "by": describe(ty, by) }))
}

fn pair(v: &mut Verifier<'_>, ty: &DeviceType, a: &Transition, b: &Transition) {
    match (&a.trigger, &b.trigger) {
        (
            Trigger::Alert {
                alert: x,
                count: cx,
                ..
            },
            Trigger::Alert {
                alert: y,
                count: cy,
                ..
            },
        ) if x == y => {
            let (sa, sb) = (alert_spec(cx), alert_spec(cy));
            let earlier = "it waits for more of the same alerts than an earlier-firing transition";
            if strictly_earlier(sa, sb) {
                v.push(shadowed(ty, b, a, earlier));
            } else if strictly_earlier(sb, sa) {
                v.push(shadowed(ty, a, b, earlier));
            } else if a.to != b.to {
                let event = if sa == sb {
                    format!("alert `{x}`")
                } else {
                    format!("one alert `{x}` that completes both counts")
                };
                v.push(nondeterminism(ty, a, b, event, json!({})));
            } else if sa == sb {
                v.push(shadowed(ty, b, a, "it repeats an earlier transition"));
            }
        }
        (Trigger::Operator { action: x }, Trigger::Operator { action: y }) if x == y => {
            if a.to != b.to {
                v.push(nondeterminism(
                    ty,
                    a,
                    b,
                    format!("operator action `{x}`"),
                    json!({}),
                ));
            } else {
                v.push(shadowed(ty, b, a, "it repeats an earlier transition"));
            }
        }
        (Trigger::Quiet { after_ms: x }, Trigger::Quiet { after_ms: y }) => {
            if x == y && a.to != b.to {
                v.push(nondeterminism(
                    ty,
                    a,
                    b,
                    format!("{} of quiet", ms(*x)),
                    json!({}),
                ));
            } else if x <= y {
                v.push(shadowed(
                    ty,
                    b,
                    a,
                    "a shorter (or equal) quiet time out of the same state fires first",
                ));
            } else {
                v.push(shadowed(
                    ty,
                    a,
                    b,
                    "a shorter quiet time out of the same state fires first",
                ));
            }
        }
        (
            Trigger::When {
                guard: ga,
                hold_ms: ha,
            },
            Trigger::When {
                guard: gb,
                hold_ms: hb,
            },
        ) => {
            let mut voc = Vocab::for_type(v.policy, ty);
            let (ta, tb) = (voc.encode(ga), voc.encode(gb));
            if ha == hb {
                if a.to == b.to {
                    return;
                }
                voc.query.facts.push(Term::And(vec![ta, tb]));
                if let Some(Outcome::Sat(model)) =
                    v.solve(&voc.query, a.loc, "whether two guards overlap")
                {
                    let values = voc.describe(&model);
                    let event = format!("a reading with {}", inline(&values));
                    let d = nondeterminism(ty, a, b, event, values);
                    v.push(label_vars(d, ty, &[ga, gb]));
                }
                return;
            }
            // Different hold times: the shorter wins whenever the longer's guard implies it.
            let (first, second, tf, ts) = if ha.unwrap_or(0) < hb.unwrap_or(0) {
                (a, b, ta, tb)
            } else {
                (b, a, tb, ta)
            };
            voc.query.facts.push(Term::And(vec![ts, Term::negate(tf)]));
            if let Some(Outcome::Unsat) =
                v.solve(&voc.query, second.loc, "whether a guard implies another")
            {
                v.push(shadowed(
                    ty,
                    second,
                    first,
                    "whenever its guard holds, the other's does too, and the other needs less time",
                ));
            }
        }
        _ => {}
    }
}

/// K205: an alert transition must wait for something its state deploys.
/// Returns, per transition, whether its trigger has a source (always true for
/// non-alert triggers).
fn provenance(v: &mut Verifier<'_>, id: TypeId, ty: &DeviceType, facts: &SiteFacts) -> Vec<bool> {
    let mut sourced = vec![true; ty.transitions.len()];
    for (i, t) in ty.transitions.iter().enumerate() {
        let Trigger::Alert { alert, loc, .. } = &t.trigger else {
            continue;
        };
        let state = ty.state(t.from);
        let chain: Vec<(String, Vec<String>)> = match &state.chain {
            Chain::Umboxes(entries) => entries
                .iter()
                .map(|e| {
                    let u = v.policy.umbox(e.umbox);
                    (u.name.clone(), u.emits.clone())
                })
                .collect(),
            Chain::Pass | Chain::Drop => vec![],
        };
        let from_chain = chain.iter().any(|(_, emits)| emits.contains(alert));
        let declared = ty.alerts.contains(alert);
        // A rule raises it in this state: the rule does not pin the device to another.
        let raised = facts.raised.get(&id).is_some_and(|r| {
            r.iter()
                .any(|(a, pinned)| a == alert && pinned.is_none_or(|p| p == t.from))
        });
        if from_chain || declared || raised {
            continue;
        }
        sourced[i] = false;
        let emitters: Vec<&str> = v
            .policy
            .umboxes
            .iter()
            .filter(|u| u.emits.contains(alert))
            .map(|u| u.name.as_str())
            .collect();
        let help = if emitters.is_empty() {
            format!("no µmbox emits `{alert}`; declare it in the type (`alerts {alert}`) if the device or a rule raises it")
        } else {
            format!(
                "add a µmbox that emits `{alert}` to `{}`'s chain: {}",
                state.name,
                emitters.join(", ")
            )
        };
        let shown = match &state.chain {
            Chain::Pass => "`pass`: no µmbox".to_string(),
            Chain::Drop => "`drop`: no µmbox".to_string(),
            Chain::Umboxes(_) => format!(
                "chain [{}] emits {}",
                chain
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                {
                    let mut all: Vec<&str> = chain
                        .iter()
                        .flat_map(|(_, e)| e.iter().map(String::as_str))
                        .collect();
                    all.sort_unstable();
                    all.dedup();
                    if all.is_empty() {
                        "nothing".to_string()
                    } else {
                        all.join(", ")
                    }
                }
            ),
        };
        v.push(
            Diagnostic::error(codes::PROVENANCE, format!("nothing deployed in `{}` can raise `{alert}`", state.name))
                .primary(*loc, "waits for this alert")
                .secondary(state.chain_loc, shown)
                .help(help)
                .witness(json!({
                    "device_type": ty.name,
                    "state": state.name,
                    "alert": alert,
                    "chain": chain.iter().map(|(n, e)| json!({"umbox": n, "emits": e})).collect::<Vec<_>>(),
                })),
        );
    }
    sourced
}

/// K203 and K204 over the state graph: live transitions, plus moves made by site rules.
fn graph(v: &mut Verifier<'_>, id: TypeId, ty: &DeviceType, live: &[bool], facts: &SiteFacts) {
    let mut g: DiGraph<StateId, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..ty.states.len())
        .map(|i| g.add_node(StateId::from_index(i)))
        .collect();
    for (t, ok) in ty.transitions.iter().zip(live) {
        if *ok {
            g.update_edge(nodes[t.from.index()], nodes[t.to.index()], ());
        }
    }
    for (from, to) in facts.rule_moves.get(&id).into_iter().flatten() {
        let froms: Vec<usize> = match from {
            Some(f) => vec![f.index()],
            None => (0..ty.states.len()).collect(),
        };
        for f in froms {
            g.update_edge(nodes[f], nodes[to.index()], ());
        }
    }
    let Some(&init) = nodes.get(ty.initial.index()) else {
        return;
    };
    let mut reachable = vec![false; ty.states.len()];
    let mut bfs = Bfs::new(&g, init);
    while let Some(n) = bfs.next(&g) {
        reachable[g[n].index()] = true;
    }
    let mut back = vec![false; ty.states.len()];
    let rev = Reversed(&g);
    let mut bfs = Bfs::new(rev, init);
    while let Some(n) = bfs.next(rev) {
        back[g[n].index()] = true;
    }
    let names = |flags: &[bool], want: bool| -> Vec<String> {
        ty.states
            .iter()
            .zip(flags)
            .filter(|(_, f)| **f == want)
            .map(|(s, _)| s.name.clone())
            .collect()
    };
    for (i, s) in ty.states.iter().enumerate() {
        if !reachable[i] {
            let into: Vec<&Transition> = ty
                .transitions
                .iter()
                .filter(|t| t.to.index() == i)
                .collect();
            let mut d = Diagnostic::error(
                codes::UNREACHABLE,
                format!("state `{}` of `{}` is unreachable", s.name, ty.name),
            )
            .primary(s.loc, "no path leads here from the initial state")
            .secondary(ty.state(ty.initial).loc, "initial state")
            .help(if facts.rule_moves.get(&id).is_some_and(|m| m.iter().any(|(_, to)| to.index() == i)) {
                "the site rules that move devices here require them to be in states that are unreachable".to_string()
            } else if into.is_empty() {
                format!(
                    "no transition enters `{}`; add one, e.g. `{} -> {} on ALERT`",
                    s.name,
                    ty.state(ty.initial).name,
                    s.name
                )
            } else {
                "every transition into it starts from an unreachable state or can never fire".into()
            })
            .witness(json!({
                "device_type": ty.name,
                "state": s.name,
                "reachable": names(&reachable, true),
            }));
            for t in into.iter().take(3) {
                d = d.secondary(t.loc, "enters it, but never fires from a reachable state");
            }
            v.push(d);
        } else if !back[i] && !s.is_final {
            v.push(
                Diagnostic::warning(
                    codes::TRAP,
                    format!("state `{}` of `{}` is a trap", s.name, ty.name),
                )
                .primary(s.loc, "no path leads back to the initial state from here")
                .help(format!(
                    "add a way back (e.g. `{} -> {} on operator reset`) or declare it `final {}`",
                    s.name,
                    ty.state(ty.initial).name,
                    s.name
                ))
                .witness(json!({
                    "device_type": ty.name,
                    "state": s.name,
                    "can_reach_initial": names(&back, true),
                })),
            );
        }
    }
}
