//! Checks of one device type's state machine, done once per type whatever the number of
//! devices: nondeterminism (K201), dead transitions (K202), unreachable states (K203),
//! traps (K204), alert provenance (K205) and shadowed transitions (K211).
//!
//! A transition that can never fire (dead, unsourced or shadowed) is no edge of the state
//! graph: it neither reaches a state (K203) nor leads out of one (K204).

use super::encode::{inline, Reading, Vocab};
use super::solver::{Outcome, Sort, Term, VarIx};
use super::{codes, SiteFacts, Verifier};
use crate::codegen::manifest as lower;
use crate::diag::Diagnostic;
use crate::ir::{
    Chain, CmpOp, DeviceType, Expr, ExprKind, StateId, Transition, Trigger, Ty, TypeId, VarRef,
    VarType,
};
use kalki_model::eval;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Bfs, Reversed};
use serde_json::json;
use std::collections::HashMap;

pub(super) fn check_type(v: &mut Verifier<'_>, id: TypeId, facts: &SiteFacts) {
    let ty = v.policy.device_type(id);
    let mut live = dead_transitions(v, ty);
    // A transition waiting for an alert that nothing can raise can never fire either.
    for (i, ok) in provenance(v, id, ty, facts).into_iter().enumerate() {
        live[i] &= ok;
    }
    // Nor can a shadowed one (K211): another out of its state always fires first.
    let quiet_from_entry = never_alerted(v, id, ty, facts);
    for i in pairs(v, ty, &live, quiet_from_entry) {
        live[i] = false;
    }
    graph(v, id, ty, &live, facts);
    v.live.insert(id, live);
}

/// Whether no device of the type can ever receive an alert: the type declares none, no
/// transition waits for one, no µmbox of its chains emits one and no site rule raises one
/// on it (the runtime refuses any other, S106). Then quiet time always counts from
/// entering the state.
fn never_alerted(v: &Verifier<'_>, id: TypeId, ty: &DeviceType, facts: &SiteFacts) -> bool {
    let awaited = ty
        .transitions
        .iter()
        .any(|t| matches!(t.trigger, Trigger::Alert { .. }));
    let emitted = ty.states.iter().any(|s| match &s.chain {
        Some(Chain::Umboxes(entries)) => entries
            .iter()
            .any(|e| !v.policy.umbox(e.umbox).emits.is_empty()),
        Some(Chain::Pass | Chain::Drop) | None => false,
    });
    let raised = facts.raised.get(&id).is_some_and(|r| !r.is_empty());
    ty.alerts.is_empty() && !awaited && !emitted && !raised
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
        Trigger::Silent { after_ms } => format!("after {} silent", ms(*after_ms)),
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
        if ms.is_multiple_of(size) && ms >= size {
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

/// K201 and K211: every pair of live transitions out of one state. Returns the
/// transitions found shadowed: they never fire.
fn pairs(
    v: &mut Verifier<'_>,
    ty: &DeviceType,
    live: &[bool],
    quiet_from_entry: bool,
) -> Vec<usize> {
    let n = ty.transitions.len();
    let mut hidden = Vec::new();
    for i in 0..n {
        for j in (i + 1)..n {
            let (a, b) = (&ty.transitions[i], &ty.transitions[j]);
            if a.from != b.from || !live[i] || !live[j] {
                continue;
            }
            match pair(v, ty, a, b, quiet_from_entry) {
                Some(Hidden::First) => hidden.push(i),
                Some(Hidden::Second) => hidden.push(j),
                None => {}
            }
        }
    }
    hidden
}

/// Which of a pair [`pair`] found shadowed.
enum Hidden {
    First,
    Second,
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

/// K201 and K211 for two live transitions `a` (declared first) and `b` out of one state,
/// by the runtime's rule for one event enabling several (`docs/runtime.md`, "One event,
/// several enabled transitions"). Returns the one found shadowed: it never fires.
fn pair(
    v: &mut Verifier<'_>,
    ty: &DeviceType,
    a: &Transition,
    b: &Transition,
    quiet_from_entry: bool,
) -> Option<Hidden> {
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
                Some(Hidden::Second)
            } else if strictly_earlier(sb, sa) {
                v.push(shadowed(ty, a, b, earlier));
                Some(Hidden::First)
            } else if a.to != b.to {
                let event = if sa == sb {
                    format!("alert `{x}`")
                } else {
                    format!("one alert `{x}` that completes both counts")
                };
                v.push(nondeterminism(ty, a, b, event, json!({})));
                // With the same count, the runtime always takes the same one: the longer
                // window, then the one declared first. The other never fires, and
                // reachability must follow the runtime, K201 or not.
                (sa.0 == sb.0).then(|| {
                    let window = |s: AlertSpec| s.1.unwrap_or(u64::MAX);
                    if window(sb) > window(sa) {
                        Hidden::First
                    } else {
                        Hidden::Second
                    }
                })
            } else if sa == sb {
                // The runtime takes the one declared first.
                v.push(shadowed(ty, b, a, "it repeats an earlier transition"));
                Some(Hidden::Second)
            } else {
                None
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
                // The runtime takes the one declared first.
                Some(Hidden::Second)
            } else {
                v.push(shadowed(ty, b, a, "it repeats an earlier transition"));
                Some(Hidden::Second)
            }
        }
        // Both count from the later of entering the state and the last alert: the shorter
        // runs out first, and of equal ones the runtime takes the one declared first.
        (Trigger::Quiet { after_ms: x }, Trigger::Quiet { after_ms: y }) => {
            if x == y && a.to != b.to {
                v.push(nondeterminism(
                    ty,
                    a,
                    b,
                    format!("{} of quiet", ms(*x)),
                    json!({}),
                ));
                None
            } else if x <= y {
                v.push(shadowed(
                    ty,
                    b,
                    a,
                    "a shorter (or equal) quiet time out of the same state fires first",
                ));
                Some(Hidden::Second)
            } else {
                v.push(shadowed(
                    ty,
                    a,
                    b,
                    "a shorter quiet time out of the same state fires first",
                ));
                Some(Hidden::First)
            }
        }
        (
            Trigger::Quiet { after_ms: q },
            Trigger::When {
                guard,
                hold_ms: Some(h),
            },
        ) => quiet_and_hold(
            v,
            ty,
            (a, *q),
            (b, guard, *h),
            true,
            quiet_from_entry,
            "no alert",
        )
        .then_some(Hidden::Second),
        (
            Trigger::When {
                guard,
                hold_ms: Some(h),
            },
            Trigger::Quiet { after_ms: q },
        ) => quiet_and_hold(
            v,
            ty,
            (b, *q),
            (a, guard, *h),
            false,
            quiet_from_entry,
            "no alert",
        )
        .then_some(Hidden::First),
        // Silence counts from the later of entering the state and the last reading: of two,
        // the shorter runs out first, and of equal ones the runtime takes the first declared.
        (Trigger::Silent { after_ms: x }, Trigger::Silent { after_ms: y }) => {
            if x == y && a.to != b.to {
                v.push(nondeterminism(
                    ty,
                    a,
                    b,
                    format!("{} of silence", ms(*x)),
                    json!({}),
                ));
                None
            } else if x <= y {
                v.push(shadowed(
                    ty,
                    b,
                    a,
                    "a shorter (or equal) silent time out of the same state fires first",
                ));
                Some(Hidden::Second)
            } else {
                v.push(shadowed(
                    ty,
                    a,
                    b,
                    "a shorter silent time out of the same state fires first",
                ));
                Some(Hidden::First)
            }
        }
        // A reading postpones one, an alert the other: neither is always first, but equal
        // ones run out together when neither comes. Where no alert can ever come, the
        // quiet time counts from entering the state and a shorter one always runs out
        // before the silence (which counts from entering or later).
        (Trigger::Quiet { after_ms: q }, Trigger::Silent { after_ms: s })
        | (Trigger::Silent { after_ms: s }, Trigger::Quiet { after_ms: q }) => {
            if quiet_from_entry && q < s {
                let silent_is_a = matches!(a.trigger, Trigger::Silent { .. });
                let (hidden, by) = if silent_is_a { (a, b) } else { (b, a) };
                v.push(shadowed(
                    ty,
                    hidden,
                    by,
                    "no alert can reach this device type, so the quiet time counts from entering the state and runs out before the silence",
                ));
                return Some(if silent_is_a {
                    Hidden::First
                } else {
                    Hidden::Second
                });
            }
            if q == s && a.to != b.to {
                v.push(nondeterminism(
                    ty,
                    a,
                    b,
                    format!("the instant {} after entering the state, with no alert and no reading since then", ms(*q)),
                    json!({}),
                ));
            }
            None
        }
        (
            Trigger::Silent { after_ms: s },
            Trigger::When {
                guard,
                hold_ms: Some(h),
            },
        ) => quiet_and_hold(v, ty, (a, *s), (b, guard, *h), true, false, "no reading")
            .then_some(Hidden::Second),
        (
            Trigger::When {
                guard,
                hold_ms: Some(h),
            },
            Trigger::Silent { after_ms: s },
        ) => quiet_and_hold(v, ty, (b, *s), (a, guard, *h), false, false, "no reading")
            .then_some(Hidden::First),
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
            if ha == hb {
                // The runtime takes the first whose guard holds: a later one whose guard
                // never holds without the earlier's never fires (what reachability must
                // follow; the overlap itself is the K201).
                if a.to != b.to && overlap(v, ty, (a, ga), (b, gb)) {
                    return holds_only_with(v, ty, gb, ga, b).then_some(Hidden::Second);
                }
                return None;
            }
            // Different hold times. A reading fires a `when G` at once, but entering the
            // state with a held guard already true starts its hold with no reading at all:
            // neither shadows the other.
            let (Some(ha), Some(hb)) = (ha, hb) else {
                return None;
            };
            // Of two holds, the shorter runs out first when its hold always starts no later
            // than the longer's: when its guard holds whenever the longer's does. Both are
            // evaluated at the same moments (entering, readings, clock boundaries), so its
            // hold then runs, uninterrupted, since the longer's started or before.
            let (first, second, gf, gs, hidden) = if ha < hb {
                (a, b, ga, gb, Hidden::Second)
            } else {
                (b, a, gb, ga, Hidden::First)
            };
            if holds_only_with(v, ty, gs, gf, second) {
                v.push(shadowed(
                    ty,
                    second,
                    first,
                    "whenever its guard holds, the other's does too, and the other needs less time",
                ));
                return Some(hidden);
            }
            None
        }
        _ => None,
    }
}

/// K201 for two guards with one hold time (or none) and different targets: a reading (or
/// the end of one hold time) with values that satisfy both. Returns whether there is one.
fn overlap(
    v: &mut Verifier<'_>,
    ty: &DeviceType,
    a: (&Transition, &Expr),
    b: (&Transition, &Expr),
) -> bool {
    let mut voc = Vocab::for_type(v.policy, ty);
    let (ta, tb) = (voc.encode(a.1), voc.encode(b.1));
    voc.query.facts.push(Term::And(vec![ta, tb]));
    if let Some(Outcome::Sat(model)) = v.solve(&voc.query, a.0.loc, "whether two guards overlap") {
        let values = voc.describe(&model);
        // The witness is checked by the runtime's own evaluator before it is reported.
        let reading = voc.readings(&model).remove(&None).unwrap_or_default();
        if both_hold(ty, a.1, b.1, &reading) == Some(false) {
            v.push(
                Diagnostic::error(
                    codes::INCONCLUSIVE,
                    "could not decide whether two guards overlap: the values the solver found do not enable both at run time",
                )
                .primary(a.0.loc, "undecided")
                .secondary(b.0.loc, "and this one")
                .help("an unknown result never counts as success; please report this policy")
                .witness(json!({ "reason": "witness refuted by the runtime's evaluator", "values": values })),
            );
            return true;
        }
        let event = format!("a reading with {}", inline(&values));
        let d = nondeterminism(ty, a.0, b.0, event, values);
        v.push(label_vars(d, ty, &[a.1, b.1]));
        return true;
    }
    false
}

/// Whether the runtime's evaluator (`kalki_model::eval`) finds both guards true on a
/// reading: `None` when it cannot tell from one reading (a guard reads a window of
/// readings or the clock).
fn both_hold(ty: &DeviceType, a: &Expr, b: &Expr, reading: &Reading) -> Option<bool> {
    let timeless = |e: &Expr| {
        !e.nodes()
            .any(|n| matches!(n.kind, ExprKind::Aggregate { .. } | ExprKind::Clock { .. }))
    };
    if !timeless(a) || !timeless(b) {
        return None;
    }
    let env = OneReading { ty, reading };
    let (a, b) = (lower::expr(a), lower::expr(b));
    Some(eval::holds(&a, &env).ok()? && eval::holds(&b, &env).ok()?)
}

/// One reading of a device type's values, as the evaluator reads it.
struct OneReading<'a> {
    ty: &'a DeviceType,
    reading: &'a Reading,
}

impl eval::Env for OneReading<'_> {
    fn value(&self, var: kalki_model::manifest::VarRef) -> Option<eval::Value> {
        let v = self.ty.vars.get(var.var as usize)?;
        match (self.reading.values.get(&v.name)?, &v.ty) {
            (serde_json::Value::Bool(b), _) => Some(eval::Value::Bool(*b)),
            (serde_json::Value::String(m), VarType::Enum { members }) => members
                .iter()
                .position(|x| x == m)
                .and_then(|i| i64::try_from(i).ok())
                .map(eval::Value::Int),
            (n, _) => n.as_i64().map(eval::Value::Int),
        }
    }
    fn window(
        &self,
        _: kalki_model::manifest::VarRef,
        _: usize,
    ) -> Option<impl Iterator<Item = i64> + '_> {
        None::<std::iter::Empty<i64>>
    }
    fn state(&self, _: u32) -> Option<u32> {
        None
    }
    fn minute_of_day(&self) -> u16 {
        0
    }
}

/// `after Q quiet` and `when G for H` out of one state. Quiet time counts from the later of
/// entering the state and the last alert; a hold from the later of entering the state and
/// `G` becoming true. With `Q = H` and different targets both run out at once when `G`
/// already holds on entering and no alert comes (K201). The quiet time is always first
/// only when no alert can ever come: then it counts from entering the state, before or when
/// any hold starts, and a shorter one, or an equal one declared first (the runtime's tie
/// break), shadows the hold. Otherwise an alert can postpone the quiet time past the end of
/// the hold, and a hold can start late: neither shadows the other. Returns whether the
/// hold is shadowed.
fn quiet_and_hold(
    v: &mut Verifier<'_>,
    ty: &DeviceType,
    quiet: (&Transition, u64),
    held: (&Transition, &Expr, u64),
    quiet_first_declared: bool,
    quiet_from_entry: bool,
    none_since: &str,
) -> bool {
    let ((qt, q), (ht, guard, h)) = (quiet, held);
    if q == h && qt.to != ht.to {
        let mut voc = Vocab::for_type(v.policy, ty);
        let g = voc.encode(guard);
        voc.query.facts.push(g);
        if let Some(Outcome::Sat(model)) =
            v.solve(&voc.query, guard.loc, "whether this guard can hold")
        {
            let values = voc.describe(&model);
            let event = format!(
                "the instant {} after entering the state, with {} since then and {none_since}",
                ms(q),
                inline(&values)
            );
            let (a, b) = if quiet_first_declared {
                (qt, ht)
            } else {
                (ht, qt)
            };
            let d = nondeterminism(ty, a, b, event, values);
            v.push(label_vars(d, ty, &[guard]));
        }
        return false;
    }
    if quiet_from_entry && (q < h || (q == h && quiet_first_declared)) {
        v.push(shadowed(
            ty,
            ht,
            qt,
            "no alert can reach this device type, so the quiet time counts from entering the state and runs out before the guard has held long enough",
        ));
        return true;
    }
    false
}

/// Whether guard `g` holds (evaluates to a known true) only when guard `other` does too,
/// in the runtime's three-valued logic ([`Known`]). Undecided: no (reported as K213).
fn holds_only_with(
    v: &mut Verifier<'_>,
    ty: &DeviceType,
    g: &Expr,
    other: &Expr,
    t: &Transition,
) -> bool {
    let mut voc = Vocab::for_type(v.policy, ty);
    // Every variable the walk below reads exists before it adds its own.
    voc.encode(g);
    voc.encode(other);
    let mut k = Known {
        voc: &mut voc,
        ty,
        readings: HashMap::new(),
    };
    let (holds, _) = k.truth(g);
    let (other_holds, _) = k.truth(other);
    voc.query
        .facts
        .push(Term::And(vec![holds, Term::negate(other_holds)]));
    matches!(
        v.solve(&voc.query, t.loc, "whether a guard implies another"),
        Some(Outcome::Unsat)
    )
}

/// Guards as the runtime evaluates them (`docs/runtime.md`, "Values"): a variable never
/// reported, and an aggregate over fewer readings than its window, are unknown; unknowns
/// propagate through comparisons and arithmetic, `and` and `or` follow Kleene's logic,
/// and a guard holds only when it is a known true. So `max(t, last 3) > 5` does not hold
/// after one reading `t = 9`, although `t > 5` does. Each variable `x` gets the number of
/// its readings so far: `x` is known once it is at least 1, `agg(x, last N)` once it is at
/// least N.
struct Known<'a, 'm> {
    /// Its variables must all exist already: the walk adds solver variables behind the
    /// vocabulary's back, so a model of this query cannot be described.
    voc: &'a mut Vocab<'m>,
    ty: &'a DeviceType,
    readings: HashMap<VarRef, VarIx>,
}

impl Known<'_, '_> {
    /// At least `n` readings of `r`.
    fn read(&mut self, r: VarRef, n: u32) -> Term {
        if n == 0 {
            // `last 0` has no value, ever.
            return Term::Bool(false);
        }
        let ix = match self.readings.get(&r) {
            Some(&ix) => ix,
            None => {
                let name = self.ty.vars.get(r.var.index()).map_or("?", |v| &v.name);
                let name = match r.device {
                    None => format!("readings({name})"),
                    Some(d) => format!("readings({}.{name})", d.index()),
                };
                let ix = self.voc.query.vars.len();
                let hi = i64::from(u32::MAX);
                self.voc.query.vars.push((name, Sort::Int { lo: 0, hi }));
                self.readings.insert(r, ix);
                ix
            }
        };
        Term::cmp(CmpOp::Ge, Term::Var(ix), Term::Int(i64::from(n)))
    }

    /// Whether an integer (or enum) expression has a value.
    fn valued(&mut self, e: &Expr) -> Term {
        match &e.kind {
            ExprKind::Var { var } => self.read(*var, 1),
            ExprKind::Aggregate { var, last, .. } => self.read(*var, *last),
            ExprKind::Neg { arg } => self.valued(arg),
            ExprKind::Arith { lhs, rhs, .. } => Term::And(vec![self.valued(lhs), self.valued(rhs)]),
            // Known when every condition counted is.
            ExprKind::Count { args } => Term::And(
                args.iter()
                    .map(|a| {
                        let (t, f) = self.truth(a);
                        Term::Or(vec![t, f])
                    })
                    .collect(),
            ),
            _ => Term::Bool(true),
        }
    }

    /// (known true, known false) of a condition.
    fn truth(&mut self, e: &Expr) -> (Term, Term) {
        let known = |k: Term, x: Term| {
            (
                Term::And(vec![k.clone(), x.clone()]),
                Term::And(vec![k, Term::negate(x)]),
            )
        };
        match &e.kind {
            ExprKind::Bool { value } => (Term::Bool(*value), Term::Bool(!*value)),
            ExprKind::Var { var } => {
                let k = self.read(*var, 1);
                known(k, self.voc.encode(e))
            }
            ExprKind::InState { .. } | ExprKind::Clock { .. } => {
                known(Term::Bool(true), self.voc.encode(e))
            }
            ExprKind::Not { arg } => {
                let (t, f) = self.truth(arg);
                (f, t)
            }
            ExprKind::And { args } => {
                let (t, f): (Vec<Term>, Vec<Term>) = args.iter().map(|a| self.truth(a)).unzip();
                (Term::And(t), Term::Or(f))
            }
            ExprKind::Or { args } => {
                let (t, f): (Vec<Term>, Vec<Term>) = args.iter().map(|a| self.truth(a)).unzip();
                (Term::Or(t), Term::And(f))
            }
            ExprKind::Cmp { cmp, lhs, rhs } if matches!(lhs.ty, Ty::Bool) => {
                let ((lt, lf), (rt, rf)) = (self.truth(lhs), self.truth(rhs));
                let k = Term::And(vec![
                    Term::Or(vec![lt.clone(), lf]),
                    Term::Or(vec![rt.clone(), rf]),
                ]);
                let same = Term::iff(lt, rt);
                match cmp {
                    CmpOp::Eq => known(k, same),
                    CmpOp::Ne => known(k, Term::negate(same)),
                    // Refused by the type checker; the runtime would fault: never holds.
                    _ => (Term::Bool(false), Term::Bool(false)),
                }
            }
            ExprKind::Cmp { lhs, rhs, .. } => {
                let k = Term::And(vec![self.valued(lhs), self.valued(rhs)]);
                known(k, self.voc.encode(e))
            }
            // Integer expressions are no conditions (the type checker sees to it).
            ExprKind::Int { .. }
            | ExprKind::Aggregate { .. }
            | ExprKind::Neg { .. }
            | ExprKind::Arith { .. }
            | ExprKind::Count { .. } => (Term::Bool(false), Term::Bool(false)),
        }
    }
}

/// Whether an input can bring `alert` to a device of type `ty` in `state`: the type
/// declares it (the device reports it), or a µmbox of the state's chain emits it. The
/// engine accepts exactly these (S111, S112); any other alert comes from a rule's `raise`.
pub(crate) fn alert_from_input(
    policy: &crate::ir::Model,
    ty: &DeviceType,
    state: StateId,
    alert: &str,
) -> bool {
    ty.alerts.iter().any(|a| a == alert)
        || policy
            .chain_emits(ty.state(state).chain.as_ref())
            .iter()
            .any(|(_, emits)| emits.iter().any(|x| x == alert))
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
        let chain = v.policy.chain_emits(state.chain.as_ref());
        // A rule raises it in this state: the rule does not pin the device to another.
        let raised = facts.raised.get(&id).is_some_and(|r| {
            r.iter()
                .any(|(a, pinned)| a == alert && pinned.is_none_or(|p| p == t.from))
        });
        if alert_from_input(v.policy, ty, t.from, alert) || raised {
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
            None => "off the switch: no µmbox".to_string(),
            Some(Chain::Pass) => "`pass`: no µmbox".to_string(),
            Some(Chain::Drop) => "`drop`: no µmbox".to_string(),
            Some(Chain::Umboxes(_)) => format!(
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
