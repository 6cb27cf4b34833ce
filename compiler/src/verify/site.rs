//! Site-level checks, the only ones that look at device instances: address conflicts
//! (K209), dead rules (K202), rule conflicts (K206), integrity non-interference (K207)
//! and rules that undo a lowering transition (K217, flapping), and the facts the per-type checks take from the site's rules (their moves and raised
//! alerts, for K203, K204 and K205).

use super::encode::{inline, Vocab};
use super::solver::{value_of, ModelValue, Outcome, Term};
use super::{codes, SiteFacts, Verifier};
use crate::codegen::openflow::{ip, mac};
use crate::diag::Diagnostic;
use crate::ir::{
    Action, DeviceId, DeviceType, Expr, ExprKind, Loc, Rule, Site, StateId, Trigger, TypeId,
};
use serde_json::json;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// K209: IP, MAC and switch port identify a device; no two may share one. Needs no
/// solver, so `check` reports it ([`crate::check`]); a model with a K209 never reaches
/// the verifier. Addresses are the site's; a switch port is its bridge's, so in a site
/// on several nodes two devices on different nodes may have ports of one name, and a
/// device may not sit on its own node's uplink.
pub(crate) fn addresses(site: &Site) -> Vec<Diagnostic> {
    let mut v: Vec<Diagnostic> = Vec::new();
    let conflict =
        |v: &mut Vec<Diagnostic>, field: &str, value: String, a: (usize, Loc), b: (usize, Loc)| {
            let (da, db) = (&site.devices[a.0], &site.devices[b.0]);
            v.push(
                Diagnostic::error(
                    codes::ADDRESS,
                    format!(
                        "devices `{}` and `{}` share {field} `{value}`",
                        da.name, db.name
                    ),
                )
                .primary(b.1, format!("`{}` uses it", db.name))
                .secondary(a.1, format!("`{}` uses it too", da.name))
                .help("each device needs its own address and port, or traffic cannot be told apart")
                .witness(json!({ "field": field, "value": value, "devices": [da.name, db.name] })),
            );
        };
    let mut ips: HashMap<u32, (usize, Loc)> = HashMap::new();
    let mut macs: HashMap<[u8; 6], (usize, Loc)> = HashMap::new();
    let mut ports: HashMap<(Option<usize>, &str), (usize, Loc)> = HashMap::new();
    for (i, dev) in site.devices.iter().enumerate() {
        // A device off the switch has no address or port to share.
        let Some(d) = &dev.net else {
            continue;
        };
        match ips.get(&d.ip) {
            Some(&first) => conflict(&mut v, "IP address", ip(d.ip), first, (i, d.ip_loc)),
            None => {
                ips.insert(d.ip, (i, d.ip_loc));
            }
        }
        if let (Some(m), Some(ml)) = (d.mac, d.mac_loc) {
            match macs.get(&m) {
                Some(&first) => conflict(&mut v, "MAC address", mac(m), first, (i, ml)),
                None => {
                    macs.insert(m, (i, ml));
                }
            }
        }
        match ports.get(&(dev.node, d.port.as_str())) {
            Some(&first) => conflict(
                &mut v,
                "switch port",
                d.port.clone(),
                first,
                (i, d.port_loc),
            ),
            None => {
                ports.insert((dev.node, &d.port), (i, d.port_loc));
            }
        }
        let (uplink, uplink_loc, whose) = match dev.node.and_then(|n| site.nodes.get(n)) {
            Some(n) => (&n.uplink, n.uplink_loc, format!("node `{}`'s", n.name)),
            None => (&site.uplink, site.uplink_loc, "the site's".to_string()),
        };
        if uplink.as_deref() == Some(d.port.as_str()) {
            v.push(
                Diagnostic::error(codes::ADDRESS, format!("device `{}` sits on the uplink port `{}`", dev.name, d.port))
                    .primary(d.port_loc, "this device port ...")
                    .secondary(uplink_loc, format!("... is {whose} uplink"))
                    .help("the uplink carries every device's traffic after its chain; give the device its own port")
                    .witness(json!({ "field": "switch port", "value": d.port, "devices": [dev.name], "uplink": true })),
            );
        }
    }
    v
}

/// Devices whose values or states an expression reads, and where it reads each.
fn devices_read(e: &Expr) -> Vec<(DeviceId, Loc)> {
    e.nodes()
        .filter_map(|n| match &n.kind {
            ExprKind::Var { var } | ExprKind::Aggregate { var, .. } => {
                var.device.map(|d| (d, n.loc))
            }
            ExprKind::InState { device, .. } => Some((*device, n.loc)),
            _ => None,
        })
        .collect()
}

/// How two rules that move one device to different states meet.
enum Meet<'r> {
    /// Both hold on one change: the engine fires the first declared.
    Together,
    /// The first fires and the second holds in the states it left.
    InTurn(&'r Rule, &'r Rule),
}

/// Whether rules `a` and `b` can both fire on one change and move `d`, with values.
fn rules_meet<'r>(
    v: &mut Verifier<'_>,
    site: &Site,
    d: DeviceId,
    a: &'r Rule,
    b: &'r Rule,
) -> Option<(Meet<'r>, serde_json::Value)> {
    // An escalation moves `d` only from below its target.
    let (ca, cb) = (moves_when(a, d), moves_when(b, d));
    // `a` is declared first: when both hold, the engine fires it and then evaluates `b`
    // in the states it left. An escalation in `b` needs `d` below its target there, so
    // for it only the case in turn counts.
    let mut cases = Vec::new();
    if !escalates_only(b, d) {
        cases.push((Meet::Together, ca.clone(), cb.clone()));
    }
    // In turn differs from together only when one reads the state of a device the other
    // moves: otherwise the first's moves leave the second's condition as it was. Only
    // what a rule itself tests makes it due after the other's moves (not the state an
    // escalation needs).
    if moved_reads(&b.cond, a) || escalates_only(b, d) {
        cases.push((Meet::InTurn(a, b), ca.clone(), after_moves(&cb, a)));
    }
    if moved_reads(&a.cond, b) {
        cases.push((Meet::InTurn(b, a), cb, after_moves(&ca, b)));
    }
    // One query for them all; its model says which of them it met, in this order.
    let mut voc = Vocab::for_site(v.policy, site);
    let each: Vec<Term> = cases
        .iter()
        .map(|(_, first, second)| Term::And(vec![voc.encode(first), voc.encode(second)]))
        .collect();
    voc.query.facts.push(Term::Or(each.clone()));
    let Some(Outcome::Sat(m)) = v.solve(
        &voc.query,
        a.loc,
        "whether two rules can fire on one change",
    ) else {
        return None;
    };
    let met = each
        .iter()
        .position(|t| value_of(t, &voc.query.vars, &m) == Some(ModelValue::Bool(true)));
    let (how, _, _) = cases.into_iter().nth(met.unwrap_or(0))?;
    Some((how, voc.describe(&m)))
}

/// Whether `cond` tests the state of a device rule `r` moves.
fn moved_reads(cond: &Expr, r: &Rule) -> bool {
    cond.nodes().any(|n| match n.kind {
        ExprKind::InState { device, .. } => gotos(r).any(|(d, _, _)| d == device),
        _ => false,
    })
}

/// `cond` as read after rule `r`'s moves: each `dev in s` of a device the rule moves is
/// decided by where it moved it.
fn after_moves(cond: &Expr, r: &Rule) -> Expr {
    // Per device: where its moves leave it, in order. A `->` sets the state; an
    // `escalate` raises a known state to at least its target, or, from an unknown one,
    // leaves it at least there.
    let mut end: BTreeMap<DeviceId, Left> = BTreeMap::new();
    for (d, to, up) in r.actions.iter().filter_map(Action::moves) {
        let now = end.get(&d).copied();
        let next = match (up, now) {
            (false, _) => Left::At(to),
            (true, Some(Left::At(s))) => Left::At(s.max(to)),
            (true, Some(Left::AtLeast(s))) => Left::AtLeast(s.max(to)),
            (true, None) => Left::AtLeast(to),
        };
        end.insert(d, next);
    }
    let mut out = cond.clone();
    out.rewrite(&mut |e: &mut Expr| {
        if let ExprKind::InState { device, state } = e.kind {
            match end.get(&device) {
                Some(Left::At(to)) => {
                    e.kind = ExprKind::Bool {
                        value: *to == state,
                    }
                }
                // Below the target: never; at it: from it or from below; above: as before.
                Some(Left::AtLeast(to)) if state < *to => e.kind = ExprKind::Bool { value: false },
                Some(Left::AtLeast(to)) if state == *to => {
                    let mut up_to = below(device, StateId::from_index(to.index() + 1), e.loc);
                    std::mem::swap(e, &mut up_to);
                }
                _ => {}
            }
        }
    });
    out
}

/// Where a rule's moves leave a device.
#[derive(Clone, Copy)]
enum Left {
    At(StateId),
    /// In this state or a more restrictive one: where it was, if that was above.
    AtLeast(StateId),
}

/// `cond` with the state tests of the devices in `moves` decided by their new states.
fn after(cond: &Expr, moves: &[(DeviceId, StateId)]) -> Expr {
    let mut out = cond.clone();
    out.rewrite(&mut |e: &mut Expr| {
        if let ExprKind::InState { device, state } = e.kind {
            if let Some((_, to)) = moves.iter().rev().find(|(d, _)| *d == device) {
                e.kind = ExprKind::Bool {
                    value: *to == state,
                };
            }
        }
    });
    out
}

/// Whether an expression reads the clock.
fn reads_clock(e: &Expr) -> bool {
    e.nodes().any(|n| matches!(n.kind, ExprKind::Clock { .. }))
}

/// Whether an expression reads a sensed value of `d` (not just its state).
fn reads_values_of(e: &Expr, d: DeviceId) -> bool {
    e.vars_read().any(|(var, _)| var.device == Some(d))
}

/// The state a conjunctive condition pins a device to, if any (`d in s and ...`).
pub(crate) fn pinned_state(e: &Expr, d: DeviceId) -> Option<StateId> {
    match &e.kind {
        ExprKind::InState { device, state } if *device == d => Some(*state),
        ExprKind::And { args } => args.iter().find_map(|a| pinned_state(a, d)),
        _ => None,
    }
}

/// Whether the engine evaluates a rule only after a state change: its condition reads no
/// sensed value and no clock, so only a device it tests with `in` entering a state makes it
/// due (`docs/runtime.md`, "Rules"; nothing is evaluated at the start).
pub(crate) fn waits_for_state_change(r: &Rule) -> bool {
    !r.cond.nodes().any(|n| {
        matches!(
            n.kind,
            ExprKind::Var { .. } | ExprKind::Aggregate { .. } | ExprKind::Clock { .. }
        )
    })
}

/// States a device may be in: `None` is any state.
type States = Option<BTreeSet<StateId>>;

/// The states a device of type `ty` may be in once alert `alert` has been offered to its
/// transitions in one of `from` ([`alert_outcomes`]).
fn after_alert(ty: &DeviceType, from: &States, alert: &str) -> States {
    let from = from.as_ref()?;
    let mut out = BTreeSet::new();
    for &s in from {
        for taken in alert_outcomes(ty, s, alert) {
            out.insert(taken.map_or(s, |ti| ty.transitions[ti].to));
        }
    }
    Some(out)
}

/// What one alert `alert` can do to a device of type `ty` in `state`, as the engine
/// decides: out of a state with an enabled transition waiting for one alert (`on A`,
/// `on A count 1 within T`) the one met first is taken, always; one that waits for a
/// count may or may not be met. `Some(transition)` taken, or `None`: nothing happens.
pub(crate) fn alert_outcomes(ty: &DeviceType, state: StateId, alert: &str) -> Vec<Option<usize>> {
    // (count, longer window first, declaration order): the engine's choice.
    let mut sure: Option<(u32, Reverse<u64>, usize)> = None;
    let mut maybe = vec![None];
    for (ti, t) in ty.transitions.iter().enumerate() {
        let Trigger::Alert {
            alert: a, count, ..
        } = &t.trigger
        else {
            continue;
        };
        if t.from != state || a != alert {
            continue;
        }
        let key = match count {
            None => (1, Reverse(u64::MAX), ti),
            Some((1, w)) => (1, Reverse(*w), ti),
            Some(_) => {
                maybe.push(Some(ti));
                continue;
            }
        };
        if sure.is_none_or(|b| key < b) {
            sure = Some(key);
        }
    }
    match sure {
        Some((_, _, ti)) => vec![Some(ti)],
        None => maybe,
    }
}

/// K202 for rules. Returns which rules can fire, and records what live rules do to each
/// device type (moves and raised alerts) for the per-type checks.
///
/// A rule can fire when its condition can hold and, for a rule that waits for a state
/// change ([`waits_for_state_change`]), when it can hold right after a device it tests
/// enters a state: the target of some transition of the device's type, or of a rule that
/// can fire (a least fixpoint, so every rule that fires in a real run is found).
pub(super) fn dead_rules(v: &mut Verifier<'_>, site: &Site, facts: &mut SiteFacts) -> Vec<bool> {
    let mut live = Vec::with_capacity(site.rules.len());
    for r in &site.rules {
        let mut voc = Vocab::for_site(v.policy, site);
        let c = voc.encode(&r.cond);
        voc.query.facts.push(c);
        let ok = !matches!(
            v.solve(&voc.query, r.loc, "whether this rule's condition can hold"),
            Some(Outcome::Unsat)
        );
        if !ok {
            v.push(
                Diagnostic::error(codes::DEAD, format!("rule `{}` can never fire", r.name))
                    .primary(r.cond.loc, "no values, states or time of day satisfy this condition")
                    .secondary(r.loc, "rule declared here")
                    .help("a device is in one state at a time, and values stay within their declared ranges")
                    .witness(json!({ "rule": r.name, "satisfiable": false })),
            );
        }
        live.push(ok);
    }

    // States a device of each type can enter after the start.
    let mut entered: HashMap<TypeId, BTreeSet<StateId>> = HashMap::new();
    for d in &site.devices {
        entered.entry(d.ty).or_insert_with(|| {
            v.policy
                .device_type(d.ty)
                .transitions
                .iter()
                .map(|t| t.to)
                .collect()
        });
    }
    // Whether rule `ri`'s condition can hold with device `d` in state `s` (cached).
    let mut holds_in: HashMap<(usize, DeviceId, StateId), bool> = HashMap::new();
    let mut can_hold = |v: &mut Verifier<'_>, ri: usize, d: DeviceId, s: StateId| -> bool {
        if let Some(&b) = holds_in.get(&(ri, d, s)) {
            return b;
        }
        let r = &site.rules[ri];
        let b = if pinned_state(&r.cond, d).is_some_and(|p| p != s) {
            false
        } else {
            let mut voc = Vocab::for_site(v.policy, site);
            let c = voc.encode(&r.cond);
            let at = voc.state_is(d, s);
            voc.query.facts.push(Term::And(vec![c, at]));
            // Undecided counts as "can hold": more rules fire, which keeps proofs sound.
            !matches!(
                v.solve(
                    &voc.query,
                    r.loc,
                    "whether a rule can hold after a state change"
                ),
                Some(Outcome::Unsat)
            )
        };
        holds_in.insert((ri, d, s), b);
        b
    };
    let waits: Vec<bool> = site.rules.iter().map(waits_for_state_change).collect();
    let reads: Vec<BTreeSet<DeviceId>> = site
        .rules
        .iter()
        .map(|r| r.cond.states_read().collect())
        .collect();
    // Rules that can be due at any time can fire whenever their condition holds; their
    // targets are entered too.
    let mut woken: Vec<bool> = waits.iter().map(|w| !w).collect();
    for (ri, r) in site.rules.iter().enumerate() {
        if live[ri] && woken[ri] {
            for (d, s, _) in gotos(r) {
                entered
                    .entry(site.devices[d.index()].ty)
                    .or_default()
                    .insert(s);
            }
        }
    }
    loop {
        let mut changed = false;
        for ri in 0..site.rules.len() {
            if !live[ri] || woken[ri] {
                continue;
            }
            let candidates: Vec<(DeviceId, StateId)> = reads[ri]
                .iter()
                .flat_map(|&d| {
                    let ty = site.devices[d.index()].ty;
                    entered.get(&ty).into_iter().flatten().map(move |&s| (d, s))
                })
                .collect();
            if candidates.into_iter().any(|(d, s)| can_hold(v, ri, d, s)) {
                woken[ri] = true;
                changed = true;
                for (d, s, _) in gotos(&site.rules[ri]) {
                    entered
                        .entry(site.devices[d.index()].ty)
                        .or_default()
                        .insert(s);
                }
            }
        }
        if !changed {
            break;
        }
    }

    for (ri, r) in site.rules.iter().enumerate() {
        if !live[ri] {
            continue;
        }
        if !woken[ri] {
            live[ri] = false;
            let names: Vec<&str> = reads[ri]
                .iter()
                .map(|d| site.devices[d.index()].name.as_str())
                .collect();
            v.push(
                Diagnostic::error(codes::DEAD, format!("rule `{}` can never fire", r.name))
                    .primary(r.cond.loc, "holds in no state a device it tests can enter")
                    .secondary(r.loc, "rule declared here")
                    .help("a rule that reads no sensed value and no clock is evaluated only when a device it tests enters a state, never at the start; test a state that is entered, or read a sensed value")
                    .witness(json!({ "rule": r.name, "satisfiable": true, "reads_states_of": names })),
            );
            continue;
        }
        // The states each device the rule acts on may be in when it fires.
        let mut from = |v: &mut Verifier<'_>, d: DeviceId| -> States {
            if waits[ri] && reads[ri].len() == 1 && reads[ri].contains(&d) {
                // Only `d` entering a state makes the rule due: it fires in one it entered.
                let ty = site.devices[d.index()].ty;
                let states: Vec<StateId> =
                    entered.get(&ty).into_iter().flatten().copied().collect();
                Some(
                    states
                        .into_iter()
                        .filter(|&s| can_hold(v, ri, d, s))
                        .collect(),
                )
            } else {
                pinned_state(&r.cond, d).map(|p| BTreeSet::from([p]))
            }
        };
        // The rule's actions, in order: its moves, then the alerts it raised, each
        // offered to the device in the state it is in at that point.
        let mut at: BTreeMap<DeviceId, States> = BTreeMap::new();
        for (d, to, up) in r.actions.iter().filter_map(Action::moves) {
            let before = match at.get(&d) {
                Some(s) => s.clone(),
                None => from(v, d),
            };
            let ty = site.devices[d.index()].ty;
            let moves = facts.rule_moves.entry(ty).or_default();
            if up {
                // An escalation moves only from below its target, and leaves the device
                // there or where it was above it.
                let n = v.policy.device_type(ty).states.len();
                let before = before.unwrap_or_else(|| (0..n).map(StateId::from_index).collect());
                moves.extend(before.iter().filter(|&&s| s < to).map(|&s| (Some(s), to)));
                at.insert(d, Some(before.iter().map(|&s| s.max(to)).collect()));
                continue;
            }
            match &before {
                Some(states) => moves.extend(states.iter().map(|&s| (Some(s), to))),
                None => moves.push((None, to)),
            }
            at.insert(d, Some(BTreeSet::from([to])));
        }
        for a in &r.actions {
            let Action::Raise { device, alert, .. } = a else {
                continue;
            };
            let here = match at.get(device) {
                Some(s) => s.clone(),
                None => from(v, *device),
            };
            let ty_id = site.devices[device.index()].ty;
            let raised = facts.raised.entry(ty_id).or_default();
            match &here {
                Some(states) => raised.extend(states.iter().map(|&s| (alert.clone(), Some(s)))),
                None => {
                    raised.insert((alert.clone(), None));
                }
            }
            let next = after_alert(v.policy.device_type(ty_id), &here, alert);
            at.insert(*device, next);
        }
    }
    live
}

fn gotos(r: &Rule) -> impl Iterator<Item = (DeviceId, StateId, Loc)> + '_ {
    r.actions
        .iter()
        .filter_map(|a| a.moves().map(|(d, s, _)| (d, s, a.loc())))
}

/// Whether rule `r` moves `d` only by `escalate` (a move that needs `d` below its target).
fn escalates_only(r: &Rule, d: DeviceId) -> bool {
    let mut moves = r
        .actions
        .iter()
        .filter_map(Action::moves)
        .filter(|m| m.0 == d);
    moves.next().is_some_and(|m| m.2) && moves.all(|m| m.2)
}

/// `d in s` for the states below `to` (less restrictive): where an `escalate d to to`
/// moves the device.
fn below(d: DeviceId, to: StateId, loc: Loc) -> Expr {
    let args: Vec<Expr> = (0..to.index())
        .map(|i| Expr {
            kind: ExprKind::InState {
                device: d,
                state: StateId::from_index(i),
            },
            ty: crate::ir::Ty::Bool,
            loc,
        })
        .collect();
    Expr {
        kind: ExprKind::Or { args },
        ty: crate::ir::Ty::Bool,
        loc,
    }
}

/// Rule `r`'s condition for firing with an effect on `d`'s state: a rule that moves `d`
/// only by `escalate` moves it only from below its (lowest) target.
fn moves_when(r: &Rule, d: DeviceId) -> Expr {
    if !escalates_only(r, d) {
        return r.cond.clone();
    }
    let Some(to) = r
        .actions
        .iter()
        .filter_map(Action::moves)
        .filter(|m| m.0 == d)
        .map(|m| m.1)
        .min()
    else {
        return r.cond.clone();
    };
    Expr {
        kind: ExprKind::And {
            args: vec![r.cond.clone(), below(d, to, r.cond.loc)],
        },
        ty: crate::ir::Ty::Bool,
        loc: r.cond.loc,
    }
}

/// K206: two rules, or a rule and a transition, that can fire on the same change and send
/// one device to different states.
pub(super) fn conflicts(v: &mut Verifier<'_>, site: &Site, live: &[bool]) {
    // Group rule moves by device, so only rules touching one device are compared.
    let mut by_device: BTreeMap<DeviceId, Vec<(usize, StateId, Loc)>> = BTreeMap::new();
    for (i, r) in site.rules.iter().enumerate() {
        if !live[i] {
            continue;
        }
        for (d, s, l) in gotos(r) {
            by_device.entry(d).or_default().push((i, s, l));
        }
    }
    for (d, moves) in &by_device {
        let dev = &site.devices[d.index()];
        let ty = v.policy.device_type(dev.ty);
        for x in 0..moves.len() {
            for y in (x + 1)..moves.len() {
                let ((ri, si, li), (rj, sj, lj)) = (moves[x], moves[y]);
                if si == sj || ri == rj {
                    continue;
                }
                let (a, b) = (&site.rules[ri], &site.rules[rj]);
                let Some((how, values)) = rules_meet(v, site, *d, a, b) else {
                    continue;
                };
                let (msg, help) = match how {
                    Meet::Together => (
                        format!("rules `{}` and `{}` can send `{}` to different states", a.name, b.name, dev.name),
                        format!("both conditions hold with {}; the engine fires the one declared first, silently: make them exclusive", inline(&values)),
                    ),
                    Meet::InTurn(first, second) => (
                        format!("rules `{}` and `{}` move `{}` twice on one change", first.name, second.name, dev.name),
                        format!("with {}, `{}` fires and then, in the state it left, `{}`: the device passes through a state for no time at all; make the second exclusive of the first's target", inline(&values), first.name, second.name),
                    ),
                };
                v.push(
                    Diagnostic::error(codes::RULE_CONFLICT, msg)
                        .primary(li, format!("sends it to `{}`", ty.state(si).name))
                        .secondary(lj, format!("sends it to `{}`", ty.state(sj).name))
                        .secondary(a.cond.loc, "holds ...")
                        .secondary(b.cond.loc, "... together with this")
                        .help(help)
                        .witness(json!({ "device": dev.name, "rules": [a.name, b.name], "targets": [ty.state(si).name, ty.state(sj).name], "values": values })),
                );
            }
        }
        // A rule against the device's own guards, on one change: a reading of the device
        // that the rule reads the values of (a guard without hold), or a clock edge where
        // a held guard runs out and a rule that reads the clock is due. The engine takes
        // the transition first and then evaluates the rule, in the state entered.
        for &(ri, s, l) in moves {
            let r = &site.rules[ri];
            // A rule that tests the device's state acts on the state it finds, by design
            // (`when d in suspicious and ... then d -> attack` escalates on entry).
            if Expr::states_read(&r.cond).any(|x| x == *d) {
                continue;
            }
            let on_reading = reads_values_of(&r.cond, *d);
            let on_clock = reads_clock(&r.cond);
            for t in &ty.transitions {
                let Trigger::When { guard, hold_ms } = &t.trigger else {
                    continue;
                };
                let together = if hold_ms.is_none() {
                    on_reading
                } else {
                    on_clock
                };
                if t.to == s || !together {
                    continue;
                }
                let mut voc = Vocab::for_site(v.policy, site);
                // The guard holds in `from`; the rule, on the same values, in `to`.
                let g = voc.encode_for(*d, guard);
                let from = voc.state_is(*d, t.from);
                let then = voc.encode(&after(&moves_when(r, *d), &[(*d, t.to)]));
                voc.query.facts.push(Term::And(vec![then, g, from]));
                if let Some(Outcome::Sat(m)) = v.solve(
                    &voc.query,
                    r.loc,
                    "whether a rule and a transition can fire together",
                ) {
                    let values = voc.describe(&m);
                    v.push(
                        Diagnostic::error(codes::RULE_CONFLICT, format!("a transition of `{}` and then rule `{}` move `{}` twice on one {}", ty.name, r.name, dev.name, if hold_ms.is_none() { "reading" } else { "clock edge" }))
                            .primary(l, format!("sends it to `{}`", ty.state(s).name))
                            .secondary(t.loc, format!("sends it to `{}`", ty.state(t.to).name))
                            .secondary(r.cond.loc, "this condition holds ...")
                            .secondary(guard.loc, "... on the same reading as this guard")
                            .help(format!("with {}, the transition fires and then, in the state it entered, the rule: the device passes through `{}` for no time at all", inline(&values), ty.state(t.to).name))
                            .witness(json!({ "device": dev.name, "rule": r.name, "transition_from": ty.state(t.from).name, "targets": [ty.state(s).name, ty.state(t.to).name], "values": values })),
                    );
                }
            }
        }
    }
}

/// How a rule's action can lower a device's protection.
enum Lowering {
    /// `dev -> state`, or an alert the rule raises driving `dev` down: from a state to a
    /// lower one.
    Posture {
        from: StateId,
        to: StateId,
        raised: Option<String>,
    },
    /// A command the device type declares `lowering`.
    Command(String),
}

/// K207: integrity. A rule that reads data of a device not marked `trusted` must not
/// lower another device's protection by any path: a move to a less restrictive state, an
/// alert it raises that drives the device's own transition down, or a command its type
/// declares `lowering` (`unlock`, `disarm`). A device's own data is trusted for itself.
pub(super) fn integrity(v: &mut Verifier<'_>, site: &Site, live: &[bool]) {
    let tainted = tainted_states(site, live);
    for (i, r) in site.rules.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let where_read = devices_read(&r.cond);
        for a in &r.actions {
            let (d, l) = (a.device(), a.loc());
            let untrusted = untrusted_sources(site, r, d, &tainted);
            if untrusted.is_empty() {
                continue;
            }
            let Some((how, values)) = lowering(v, site, r, a) else {
                continue;
            };
            let dev = &site.devices[d.index()];
            let ty = v.policy.device_type(dev.ty);
            let names: Vec<&str> = untrusted
                .iter()
                .map(|e| site.devices[e.index()].name.as_str())
                .collect();
            let sources = untrusted
                .iter()
                .map(|e| {
                    let dev = &site.devices[e.index()];
                    if dev.trusted {
                        format!("`{}` (whose state untrusted data sets)", dev.name)
                    } else {
                        format!("`{}`", dev.name)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            let (msg, label, witness) = match &how {
                Lowering::Posture { from, to, raised } => {
                    let (from, to) = (&ty.state(*from).name, &ty.state(*to).name);
                    let through = raised
                        .as_ref()
                        .map_or(String::new(), |a| format!(" through `raise {a}`"));
                    (
                        format!("rule `{}` lowers `{}` from `{from}` to `{to}`{through} on data from untrusted {sources}", r.name, dev.name),
                        "de-escalation",
                        json!({ "rule": r.name, "device": dev.name, "from": from, "to": to, "raised": raised, "untrusted": names, "values": values }),
                    )
                }
                Lowering::Command(c) => (
                    format!("rule `{}` sends `{}.{c}`, a lowering command, on data from untrusted {sources}", r.name, dev.name),
                    "lowers protection",
                    json!({ "rule": r.name, "device": dev.name, "command": c, "untrusted": names, "values": values }),
                ),
            };
            let mut diag = Diagnostic::error(codes::INTEGRITY, msg)
                .primary(l, label)
                .help(format!("a compromised device could unlock another; mark the source `trusted` if it is, or lower `{}` on its own data or by `on operator reset`", dev.name))
                .witness(witness);
            for (e, at) in &where_read {
                if untrusted.contains(e) {
                    diag = diag.secondary(
                        *at,
                        format!("reads untrusted `{}`", site.devices[e.index()].name),
                    );
                }
            }
            for e in &untrusted {
                let dev_e = &site.devices[e.index()];
                let label = if dev_e.trusted {
                    "marked `trusted`, but untrusted data sets its state"
                } else {
                    "not marked `trusted`"
                };
                diag = diag.secondary(dev_e.loc, label);
            }
            v.push(diag);
        }
    }
}

/// The devices whose state data from an untrusted device can set: a live rule that
/// moves a device (or raises an alert on it) while reading another device that is not
/// `trusted`, or the state of one so set, taints the state of the device it acts on. A
/// least fixpoint: what K207 must treat as untrusted when a rule reads that state.
fn tainted_states(site: &Site, live: &[bool]) -> BTreeSet<DeviceId> {
    let mut tainted = BTreeSet::new();
    loop {
        let before = tainted.len();
        for (i, r) in site.rules.iter().enumerate() {
            if !live[i] {
                continue;
            }
            for a in &r.actions {
                let Some(d) = a.state_target() else {
                    continue;
                };
                if !untrusted_sources(site, r, d, &tainted).is_empty() {
                    tainted.insert(d);
                }
            }
        }
        if tainted.len() == before {
            return tainted;
        }
    }
}

/// The devices rule `r` reads untrusted data of, for an action on `d` (whose own data is
/// trusted for it): a device not marked `trusted`, or one whose state the rule tests and
/// untrusted data can set (`tainted`: trust does not launder through a state). In order.
fn untrusted_sources(
    site: &Site,
    r: &Rule,
    d: DeviceId,
    tainted: &BTreeSet<DeviceId>,
) -> Vec<DeviceId> {
    let states: BTreeSet<DeviceId> = r.cond.states_read().collect();
    let read: BTreeSet<DeviceId> = r.cond.devices_read().collect();
    read.into_iter()
        .filter(|e| {
            *e != d
                && (!site.devices[e.index()].trusted || (states.contains(e) && tainted.contains(e)))
        })
        .collect()
}

/// Whether action `a` of rule `r` can lower its device's protection, with values under
/// which the rule fires so. A move or a raised alert lowers a posture when the rule can
/// fire with the device in a stricter state than the one it ends in; a raised alert meets
/// the state the rule's moves left the device in (`docs/runtime.md`, "Rules").
fn lowering(
    v: &mut Verifier<'_>,
    site: &Site,
    r: &Rule,
    a: &Action,
) -> Option<(Lowering, serde_json::Value)> {
    let fires_in = |v: &mut Verifier<'_>, d: DeviceId, s: Option<StateId>| {
        let mut voc = Vocab::for_site(v.policy, site);
        let mut facts = vec![voc.encode(&r.cond)];
        if let Some(s) = s {
            facts.push(voc.state_is(d, s));
        }
        voc.query.facts.push(Term::And(facts));
        match v.solve(&voc.query, r.loc, "whether a rule lowers a protection") {
            Some(Outcome::Sat(m)) => Some(voc.describe(&m)),
            _ => None,
        }
    };
    let d = a.device();
    let ty = v.policy.device_type(site.devices[d.index()].ty);
    match a {
        Action::Command { command, .. } => {
            if !ty.lowering.contains(command) {
                return None;
            }
            let values = fires_in(v, d, None)?;
            Some((Lowering::Command(command.clone()), values))
        }
        Action::Goto { state: target, .. } => {
            // A de-escalation: the rule can fire while the device is more restrictive.
            for s in (target.index() + 1..ty.states.len()).map(StateId::from_index) {
                if let Some(values) = fires_in(v, d, Some(s)) {
                    let how = Lowering::Posture {
                        from: s,
                        to: *target,
                        raised: None,
                    };
                    return Some((how, values));
                }
            }
            None
        }
        // Only up the posture order: never a de-escalation.
        Action::Escalate { .. } => None,
        Action::Raise { alert, .. } => {
            // The state the alert meets: where the rule's moves of the device leave it,
            // or where it was.
            let moved = |s: StateId| {
                r.actions
                    .iter()
                    .filter_map(Action::moves)
                    .filter(|m| m.0 == d)
                    .fold(s, |now, (_, to, up)| if up { now.max(to) } else { to })
            };
            for s in (0..ty.states.len()).map(StateId::from_index) {
                let meets = moved(s);
                let down = alert_outcomes(ty, meets, alert)
                    .into_iter()
                    .flatten()
                    .find_map(|ti| {
                        let to = ty.transitions[ti].to;
                        (to.index() < meets.index()).then_some(to)
                    });
                let Some(to) = down else { continue };
                if let Some(values) = fires_in(v, d, Some(s)) {
                    let how = Lowering::Posture {
                        from: meets,
                        to,
                        raised: Some(alert.clone()),
                    };
                    return Some((how, values));
                }
            }
            None
        }
    }
}

/// K217: a rule that can undo a transition it races with. A transition `A -> L` that
/// lowers a device (an operator reset, a quiet time running out, any trigger) and a live
/// rule that moves the device to a state above `L`: a `when` rule that can hold with the
/// device in `L` moves it straight back up (the rule is evaluated again on the state
/// change or on the next reading), and the device flaps. An `on` rule fires only when
/// its condition becomes true, so only a transition that itself makes it true (false
/// with the device in `A`, true in `L`, all else the same) is undone.
pub(super) fn undoes(v: &mut Verifier<'_>, site: &Site, live: &[bool]) {
    for (ri, r) in site.rules.iter().enumerate() {
        if !live[ri] {
            continue;
        }
        // The highest move of each device the rule makes.
        let mut targets: BTreeMap<DeviceId, (StateId, Loc)> = BTreeMap::new();
        for a in &r.actions {
            if let Some((d, to, _)) = a.moves() {
                if targets.get(&d).is_none_or(|(s, _)| to > *s) {
                    targets.insert(d, (to, a.loc()));
                }
            }
        }
        for (&d, &(high, move_loc)) in &targets {
            let dev = &site.devices[d.index()];
            let ty = v.policy.device_type(dev.ty);
            // A `when` rule that does not test `d`'s state asks the same question of every
            // lowering transition without a guard: ask it once (a site has thousands).
            let reads_d = Expr::states_read(&r.cond).any(|x| x == d);
            // A rule that reads only states, not `d`'s, is not evaluated again when `d` is
            // lowered: it fires again only when a device it tests enters a state, which is
            // a new event, not the lowering undone.
            if waits_for_state_change(r) && !reads_d {
                continue;
            }
            let mut asked: Option<Option<serde_json::Value>> = None;
            for t in &ty.transitions {
                if t.to >= t.from || high <= t.to {
                    continue;
                }
                let same_for_all =
                    !r.edge && !reads_d && !matches!(t.trigger, Trigger::When { .. });
                let values = match (&asked, same_for_all) {
                    (Some(known), true) => known.clone(),
                    _ => {
                        let mut voc = Vocab::for_site(v.policy, site);
                        let mut facts = if r.edge {
                            let was = voc.encode(&after(&r.cond, &[(d, t.from)]));
                            let is = voc.encode(&after(&r.cond, &[(d, t.to)]));
                            vec![Term::Not(Box::new(was)), is]
                        } else {
                            vec![voc.encode(&r.cond)]
                        };
                        // The state, unless the condition does not read it (then the
                        // answer is the same for every lowering transition).
                        if !same_for_all {
                            facts.push(voc.state_is(d, t.to));
                        }
                        // A guard lowers the device on values where it holds: the rule
                        // sees them. (After a quiet time, an alert or the operator,
                        // values are free.)
                        if let Trigger::When { guard, .. } = &t.trigger {
                            facts.push(voc.encode_for(d, guard));
                        }
                        voc.query.facts.push(Term::And(facts));
                        let found = match v.solve(
                            &voc.query,
                            r.loc,
                            "whether a rule can undo a lowering transition",
                        ) {
                            Some(Outcome::Sat(m)) => Some(voc.describe(&m)),
                            _ => None,
                        };
                        if same_for_all {
                            asked = Some(found.clone());
                        }
                        found
                    }
                };
                let Some(values) = values else {
                    continue;
                };
                let (from, low, up) = (
                    &ty.state(t.from).name,
                    &ty.state(t.to).name,
                    &ty.state(high).name,
                );
                let what = super::machine::describe(ty, t);
                let undone = if matches!(t.trigger, Trigger::Operator { .. }) {
                    "the reset is undone"
                } else {
                    "the lowering is undone"
                };
                let back = if high >= t.from { "back " } else { "" };
                let (label, help) = if r.edge {
                    (
                        "becomes true when the device is lowered",
                        format!("with {}, the condition is false in `{from}` and true in `{low}`: lowering `{}` itself makes the rule fire. Let the condition not depend on `{}`'s state (an `escalate` never lowers, so it needs no `{} in ...` test)", inline(&values), dev.name, dev.name, dev.name),
                    )
                } else {
                    (
                        "holds in the lowered state",
                        format!("with {}, the condition holds in `{low}` and the rule fires again at the next change of what it reads: write `rule {} on ...` to fire when the condition becomes true, not while it stays true", inline(&values), r.name),
                    )
                };
                v.push(
                    Diagnostic::warning(
                        codes::RULE_UNDOES,
                        format!("after `{what}`, rule `{}` can move `{}` {back}to `{up}` at once: {undone}", r.name, dev.name),
                    )
                    .primary(move_loc, format!("moves it to `{up}`"))
                    .secondary(t.loc, format!("lowers it to `{low}`"))
                    .secondary(r.cond.loc, label)
                    .help(help)
                    .witness(json!({ "device": dev.name, "rule": r.name, "edge": r.edge, "transition": what, "lowered_to": low, "target": up, "values": values })),
                );
            }
        }
    }
}
