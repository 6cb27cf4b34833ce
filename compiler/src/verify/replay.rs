//! Witness replay: a run the verifier reports (a `reachable` proved, a `never` refuted)
//! is driven through the runtime engine (`kalki_model::engine`, the reference semantics)
//! before it is printed, with concrete inputs found by the solver for every step. A run
//! the engine does not follow is not reported as a fact: the verdict becomes unknown
//! (K213) with the step where the engine parted from it. A replayed run is attached to the
//! finding as a `kalki-shim simulate` trace.
//!
//! The abstract run says which transition or rule moves which device; a step becomes
//! inputs like this:
//!
//! - `on ALERT [count N within T]`: N alerts at one moment, from the device itself when
//!   its type declares the alert, else from a µmbox deployed in its state that emits it;
//! - `when G [for T]`: a reading that satisfies G and none of the other guards out of the
//!   state, sent as often as the longest window G reads (so every aggregate equals it),
//!   at a time of day G accepts; then T of time;
//! - `after T quiet`: T of time; `on operator A`: the operator action;
//! - a rule: readings of the devices whose values it reads, satisfying its condition in
//!   the states the devices are in; a rule that reads only states fires by itself. For an
//!   `on` rule that held at its last evaluation, readings that make it false come first.
//!
//! The engine settles rule cascades after each input, so one input may take several steps
//! of the run at once: the replay follows the engine to the furthest step of the run it
//! matches. The goal is checked after every single state change.

use super::encode::Vocab;
use super::solver::{Model, Outcome, Term};
use super::Verifier;
use crate::codegen::manifest as lower;
use crate::ir::{Action, DeviceId, Expr, Site, StateId, Trigger, TypeId};
use kalki_model::engine::{
    Cause, Config, DeviceSpec, Effect, Engine, Input, Origin, SiteSpec, DAY_MS,
};
use kalki_model::manifest as m;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// A step of an abstract run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Move {
    /// Transition `index` of the device's type.
    Transition { device: DeviceId, index: usize },
    /// Rule `index` of the site fires.
    Rule { index: usize },
}

const MINUTE_MS: u64 = 60_000;

/// The part of a site a run is replayed on: the devices the assertion depends on (its
/// cone of influence, first, in order) and those whose values the rules acting on them
/// read, and those rules. Exact for the cone: nothing else can move or alert its devices.
/// A replay costs what the cone costs, not what the site does.
pub(crate) struct Part<'s> {
    site: &'s Site,
    /// Part index → site device.
    devices: Vec<DeviceId>,
    /// Site device → part index.
    pos: HashMap<DeviceId, usize>,
    /// Part rule index → site rule.
    rules: Vec<usize>,
    engine: Engine,
}

impl<'s> Part<'s> {
    /// The part of `site` with the devices `cone` and the rules `rules` (site indices).
    pub(crate) fn new(
        v: &Verifier<'_>,
        site: &'s Site,
        cone: &[DeviceId],
        rules: &[usize],
    ) -> Self {
        let mut devices: Vec<DeviceId> = cone.to_vec();
        for &ri in rules {
            for d in site.rules[ri].cond.devices_read() {
                if !devices.contains(&d) {
                    devices.push(d);
                }
            }
        }
        let pos: HashMap<DeviceId, usize> =
            devices.iter().enumerate().map(|(i, d)| (*d, i)).collect();
        let at = |d: u32| pos.get(&DeviceId(d)).and_then(|p| u32::try_from(*p).ok());
        let lowered: Vec<m::Rule> = rules
            .iter()
            .map(|&ri| {
                let mut r = lower::rule(&site.rules[ri]);
                remap(&mut r.cond, &at);
                // Actions on devices outside the part change nothing in it.
                r.actions.retain_mut(|a| match a {
                    m::Action::Goto { device, .. }
                    | m::Action::Escalate { device, .. }
                    | m::Action::Raise { device, .. }
                    | m::Action::Command { device, .. } => match at(*device) {
                        Some(p) => {
                            *device = p;
                            true
                        }
                        None => false,
                    },
                });
                r
            })
            .collect();
        let specs = devices
            .iter()
            .map(|&d| {
                let dev = &site.devices[d.index()];
                DeviceSpec {
                    name: dev.name.clone(),
                    ty: dev.ty.index(),
                    states: v
                        .policy
                        .device_type(dev.ty)
                        .states
                        .iter()
                        .map(|s| v.policy.chain_emits(s.chain.as_ref()))
                        .collect(),
                }
            })
            .collect();
        // Only the part's types, in order of first use.
        let mut used: Vec<TypeId> = Vec::new();
        for d in &devices {
            let t = site.devices[d.index()].ty;
            if !used.contains(&t) {
                used.push(t);
            }
        }
        let types: Vec<m::DeviceType> = used
            .iter()
            .map(|t| lower::device_type(v.policy.device_type(*t)))
            .collect();
        let mut specs: Vec<DeviceSpec> = specs;
        for (spec, d) in specs.iter_mut().zip(&devices) {
            let t = site.devices[d.index()].ty;
            spec.ty = used.iter().position(|u| *u == t).unwrap_or(usize::MAX);
        }
        let spec = SiteSpec {
            device_types: &types,
            devices: specs,
            rules: &lowered,
        };
        Part {
            site,
            devices,
            pos,
            rules: rules.to_vec(),
            engine: Engine::of(&spec, Config::default(), 0),
        }
    }

    /// A site device's index in the part's engine.
    fn at(&self, d: DeviceId) -> usize {
        self.pos.get(&d).copied().unwrap_or(usize::MAX)
    }
}

/// Rewrites the devices an expression reads to their indices in a part (every one is in
/// it: the part holds what its rules read).
fn remap(e: &mut m::Expr, at: &dyn Fn(u32) -> Option<u32>) {
    match &mut e.kind {
        m::ExprKind::Var { var } | m::ExprKind::Aggregate { var, .. } => {
            var.device = var.device.and_then(at);
        }
        m::ExprKind::InState { device, .. } => *device = at(*device).unwrap_or(u32::MAX),
        m::ExprKind::Not { arg } | m::ExprKind::Neg { arg } => remap(arg, at),
        m::ExprKind::And { args } | m::ExprKind::Or { args } | m::ExprKind::Count { args } => {
            for a in args {
                remap(a, at);
            }
        }
        m::ExprKind::Cmp { lhs, rhs, .. } | m::ExprKind::Arith { lhs, rhs, .. } => {
            remap(lhs, at);
            remap(rhs, at);
        }
        m::ExprKind::Bool { .. } | m::ExprKind::Int { .. } | m::ExprKind::Clock { .. } => {}
    }
}

/// Drives the engine of `site` along `run` until `goal` holds of the engine's states.
/// Returns the inputs sent, as trace lines; or why the engine did not follow.
///
/// A step whose move the engine already made on its own (a rule's cascade, which fires
/// as soon as it is due where the run may have let it wait) is skipped; any other step
/// must be taken by the engine, as that transition or that rule, from where the engine is.
pub(crate) fn replay(
    v: &mut Verifier<'_>,
    part: &Part<'_>,
    run: &[Move],
    goal: &dyn Fn(&[usize]) -> bool,
) -> Result<Vec<Value>, String> {
    let site = part.site;
    let mut engine = part.engine.clone();
    let mut sent: Vec<Value> = Vec::new();
    if goal(&engine.states()) {
        return Ok(sent);
    }
    // Rules the engine fired on its own in the last step taken (a cascade): a later step
    // of the run that fires one of them is already done.
    let mut fired: Vec<usize> = Vec::new();
    for (k, &mv) in run.iter().enumerate() {
        let what = describe(v, site, mv);
        let step = |why: String| format!("step {} ({what}): {why}", k + 1);
        if let Move::Rule { index } = mv {
            if let Some(at) = fired.iter().position(|r| *r == index) {
                fired.remove(at);
                continue;
            }
        }
        if done(v, part, &engine, mv) {
            continue;
        }
        ready(v, part, &engine, mv).map_err(step)?;
        // The first candidate the engine takes the step on (each tried on a copy).
        let mut taken = None;
        for inputs in concretize(v, part, &engine, mv).map_err(step)? {
            match attempt(part, &engine, mv, &inputs, goal) {
                Attempt::Goal(lines) => {
                    sent.extend(lines);
                    return Ok(sent);
                }
                Attempt::Taken(after, lines, cascade) => {
                    taken = Some((after, lines));
                    fired = cascade;
                    break;
                }
                Attempt::Refused(why) => return Err(step(why)),
                Attempt::NotTaken => {}
            }
        }
        match taken {
            Some((after, lines)) => {
                engine = *after;
                sent.extend(lines);
            }
            None => {
                return Err(step(format!(
                    "the engine does not take it (before the step, it had {})",
                    where_(v, part, &engine)
                )))
            }
        }
    }
    Err(format!(
        "the engine took every step, yet the condition does not hold: it has {}",
        where_(v, part, &engine)
    ))
}

enum Attempt {
    /// The goal held after a state change: the inputs sent up to then.
    Goal(Vec<Value>),
    /// The step was taken: the engine after it, the inputs sent, and the rules (site
    /// indices) that fired on the way.
    Taken(Box<Engine>, Vec<Value>, Vec<usize>),
    NotTaken,
    Refused(String),
}

/// Sends `inputs` to a copy of `engine` until it takes `mv` (or the goal holds).
fn attempt(
    part: &Part<'_>,
    engine: &Engine,
    mv: Move,
    inputs: &[(u64, Input)],
    goal: &dyn Fn(&[usize]) -> bool,
) -> Attempt {
    let mut engine = engine.clone();
    let mut sent = Vec::new();
    let mut fired: Vec<usize> = Vec::new();
    for (t_ms, input) in inputs {
        let steps = match engine.handle(*t_ms, input) {
            Ok(steps) => steps,
            Err(errors) => {
                let first = errors.first().map_or(String::new(), |e| e.to_string());
                return Attempt::Refused(format!("the engine refuses an input: {first}"));
            }
        };
        sent.push(input.trace_line(*t_ms));
        let mut states = states_before(&engine, &steps);
        let mut taken = false;
        for e in steps.iter().flat_map(|s| &s.effects) {
            let by_rule = match e {
                Effect::StateChange {
                    cause: Cause::Rule { rule },
                    ..
                }
                | Effect::StateChange {
                    cause:
                        Cause::Alert {
                            origin: Origin::Rule { rule },
                            ..
                        },
                    ..
                }
                | Effect::AlertRaised { rule, .. }
                | Effect::Command { rule, .. } => part.rules.get(*rule).copied(),
                _ => None,
            };
            if let Some(r) = by_rule.filter(|r| !fired.contains(r)) {
                fired.push(r);
            }
            if let Effect::StateChange {
                device, to, cause, ..
            } = e
            {
                taken |= is(part, mv, *device, cause);
                if let Some(s) = states.get_mut(*device) {
                    *s = *to;
                }
                if goal(&states) {
                    return Attempt::Goal(sent);
                }
            }
        }
        if taken {
            // The step's own rule is the step, not a cascade.
            if let Move::Rule { index } = mv {
                fired.retain(|r| *r != index);
            }
            return Attempt::Taken(Box::new(engine), sent, fired);
        }
    }
    Attempt::NotTaken
}

/// Whether a state change with `cause` of `device` (in the part) is the move `mv`.
fn is(part: &Part<'_>, mv: Move, device: usize, cause: &Cause) -> bool {
    match (mv, cause) {
        (Move::Rule { index }, Cause::Rule { rule })
        | (
            Move::Rule { index },
            Cause::Alert {
                origin: Origin::Rule { rule },
                ..
            },
        ) => part.rules.get(*rule) == Some(&index),
        (Move::Transition { device: d, index }, c) => {
            part.at(d) == device
                && match c {
                    Cause::Alert { transition, .. }
                    | Cause::Reading { transition }
                    | Cause::Held { transition }
                    | Cause::Quiet { transition }
                    | Cause::Silent { transition }
                    | Cause::Operator { transition, .. } => *transition == index,
                    Cause::Rule { .. } => false,
                }
        }
        _ => false,
    }
}

/// Whether the engine already is where `mv` leads: a rule that only moves devices, and
/// every device it moves is there.
fn done(v: &Verifier<'_>, part: &Part<'_>, engine: &Engine, mv: Move) -> bool {
    let site = part.site;
    match mv {
        // A rule's cascade may have moved the device where the transition leads (a rule
        // the search let wait, as for the rule steps below): the run goes on from there.
        Move::Transition { device, index } => {
            let ty = v.policy.device_type(site.devices[device.index()].ty);
            ty.transitions.get(index).is_some_and(|t| {
                t.from != t.to && engine.state(part.at(device)) == Some(t.to.index())
            })
        }
        Move::Rule { index } => site.rules.get(index).is_some_and(|r| {
            let mut moves = r.actions.iter().filter_map(Action::moves);
            // An escalation is where it leads in its target or above.
            !r.actions.iter().any(|a| matches!(a, Action::Raise { .. }))
                && moves.all(|(d, s, up)| {
                    engine
                        .state(part.at(d))
                        .is_some_and(|now| now == s.index() || (up && now > s.index()))
                })
        }),
    }
}

/// A transition can only be taken from its state.
fn ready(v: &Verifier<'_>, part: &Part<'_>, engine: &Engine, mv: Move) -> Result<(), String> {
    let site = part.site;
    let Move::Transition { device, index } = mv else {
        return Ok(());
    };
    let dev = &site.devices[device.index()];
    let ty = v.policy.device_type(dev.ty);
    let from = ty
        .transitions
        .get(index)
        .map(|t| t.from)
        .ok_or("no such transition")?;
    match engine.state(part.at(device)) {
        Some(s) if s == from.index() => Ok(()),
        s => Err(format!(
            "the engine has `{}` in `{}`, not in `{}`",
            dev.name,
            s.and_then(|s| ty.states.get(s))
                .map_or("?", |x| x.name.as_str()),
            ty.states.get(from.index()).map_or("?", |x| x.name.as_str())
        )),
    }
}

/// The states before `steps` happened: now's states with the steps' changes undone.
fn states_before(engine: &Engine, steps: &[kalki_model::engine::Step]) -> Vec<usize> {
    let mut states = engine.states();
    for e in steps.iter().rev().flat_map(|s| s.effects.iter().rev()) {
        if let Effect::StateChange { device, from, .. } = e {
            if let Some(s) = states.get_mut(*device) {
                *s = *from;
            }
        }
    }
    states
}

/// Every device's state in the engine, for messages.
fn where_(v: &Verifier<'_>, part: &Part<'_>, engine: &Engine) -> String {
    let parts: Vec<String> = part
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = &part.site.devices[d.index()];
            let ty = v.policy.device_type(d.ty);
            let s = engine
                .state(i)
                .and_then(|s| ty.states.get(s))
                .map_or("?", |x| x.name.as_str());
            format!("{} in `{s}`", d.name)
        })
        .collect();
    parts.join(", ")
}

fn describe(v: &Verifier<'_>, site: &Site, mv: Move) -> String {
    match mv {
        Move::Transition { device, index } => {
            let d = &site.devices[device.index()];
            let ty = v.policy.device_type(d.ty);
            match ty.transitions.get(index) {
                Some(t) => format!("`{}`: {}", d.name, super::machine::describe(ty, t)),
                None => format!("`{}`: transition {index}", d.name),
            }
        }
        Move::Rule { index } => format!(
            "rule `{}`",
            site.rules.get(index).map_or("?", |r| r.name.as_str())
        ),
    }
}

/// Timed inputs that should make the engine take `mv` now: candidates, to be tried in
/// order.
fn concretize(
    v: &mut Verifier<'_>,
    part: &Part<'_>,
    engine: &Engine,
    mv: Move,
) -> Result<Vec<Vec<(u64, Input)>>, String> {
    let site = part.site;
    let now = engine.now();
    match mv {
        Move::Transition { device, index } => {
            let dev = &site.devices[device.index()];
            let ty = v.policy.device_type(dev.ty);
            let t = ty.transitions.get(index).ok_or("no such transition")?;
            match &t.trigger {
                Trigger::Alert { alert, count, .. } => {
                    let n = count.map_or(1, |(n, _)| n);
                    let input = alert_input(v, engine, site, device, t.from, alert)?;
                    Ok(vec![(0..n).map(|_| (now, input.clone())).collect()])
                }
                Trigger::When { guard, hold_ms } => {
                    // Not the other guards out of the state: the engine takes the first
                    // that holds, and a held one may run out first. Failing that, not
                    // the ones declared before it (a later one may hold too: the engine
                    // takes this one first), and failing that the guard alone.
                    let rivals = |earlier_only: bool| -> Vec<&Expr> {
                        ty.transitions
                            .iter()
                            .enumerate()
                            .filter(|(i, o)| *i != index && o.from == t.from)
                            .filter(|(i, _)| !earlier_only || *i < index)
                            .filter_map(|(_, o)| match &o.trigger {
                                Trigger::When { guard, .. } => Some(guard),
                                _ => None,
                            })
                            .collect()
                    };
                    let (others, earlier) = (rivals(false), rivals(true));
                    let mut candidates =
                        readings(v, site, engine, device, guard, &[&others, &earlier])?;
                    if let Some(h) = hold_ms {
                        // A quiet time out of the state that is not longer than the hold
                        // runs out first unless alerts keep postponing it: a second
                        // round of candidates sends one, that no transition out of the
                        // state waits for, every half quiet time.
                        let quiet = ty
                            .transitions
                            .iter()
                            .filter(|o| o.from == t.from)
                            .filter_map(|o| match o.trigger {
                                Trigger::Quiet { after_ms } => Some(after_ms),
                                _ => None,
                            })
                            .min()
                            .filter(|q| q <= h);
                        let pause = quiet.and_then(|q| {
                            let alert = harmless_alert(v, engine, site, device, t.from)?;
                            Some(((q / 2).max(1), alert))
                        });
                        let mut more = Vec::new();
                        for inputs in &mut candidates {
                            let at = inputs.last().map_or(now, |(t, _)| *t);
                            if let Some((every, alert)) = &pause {
                                let mut with = inputs.clone();
                                let mut t_ms = at + every;
                                while t_ms < at.saturating_add(*h) {
                                    with.push((t_ms, alert.clone()));
                                    t_ms += every;
                                }
                                with.push((at.saturating_add(*h), Input::Tick));
                                more.push(with);
                            }
                            inputs.push((at.saturating_add(*h), Input::Tick));
                        }
                        candidates.extend(more);
                        // A silent time out of the state that is not longer than the
                        // hold runs out first unless the device keeps reporting: the
                        // reading that starts the hold is repeated every half silent time.
                        let silent = ty
                            .transitions
                            .iter()
                            .filter(|o| o.from == t.from)
                            .filter_map(|o| match o.trigger {
                                Trigger::Silent { after_ms } => Some(after_ms),
                                _ => None,
                            })
                            .min()
                            .filter(|s| s <= h);
                        if let Some(s) = silent {
                            let every = (s / 2).max(1);
                            for inputs in &mut candidates {
                                let last = inputs.iter().rev().find_map(|(t, i)| match i {
                                    Input::Reading { device: d, .. } if *d == dev.name => {
                                        Some((*t, i.clone()))
                                    }
                                    _ => None,
                                });
                                if let Some((at, reading)) = last {
                                    let mut t_ms = at + every;
                                    while t_ms < at.saturating_add(*h) {
                                        inputs.push((t_ms, reading.clone()));
                                        t_ms += every;
                                    }
                                    // In time order; the hold's end stays after the
                                    // readings of its instant.
                                    inputs.sort_by_key(|(t, _)| *t);
                                }
                            }
                        }
                    }
                    Ok(candidates)
                }
                Trigger::Quiet { after_ms } | Trigger::Silent { after_ms } => {
                    Ok(vec![vec![(now.saturating_add(*after_ms), Input::Tick)]])
                }
                Trigger::Operator { action } => Ok(vec![vec![(
                    now,
                    Input::Operator {
                        device: dev.name.clone(),
                        action: action.clone(),
                    },
                )]]),
            }
        }
        Move::Rule { index } => {
            let rule = site.rules.get(index).ok_or("no such rule")?;
            let mut voc = Vocab::for_site(v.policy, site);
            let mut facts = vec![voc.encode(&rule.cond)];
            for (i, s) in engine.states().iter().enumerate() {
                facts.push(voc.state_is(part.devices[i], StateId::from_index(*s)));
            }
            voc.query.facts.push(Term::And(facts));
            voc.steady();
            let model = match v.solver.solve(&voc.query) {
                Outcome::Sat(m) => m,
                Outcome::Unsat => {
                    return Err(
                        "no reading makes its condition hold in the states the devices are in"
                            .into(),
                    )
                }
                Outcome::Unknown(why) => return Err(format!("the solver gave up: {why}")),
            };
            let at = aligned(engine, voc.minute(&model));
            let sends = |voc: &Vocab<'_>, model: &Model| {
                let mut inputs = Vec::new();
                for (d, r) in voc.readings(model) {
                    let Some(d) = d else { continue };
                    let name = site.devices[d.index()].name.clone();
                    for _ in 0..r.repeat.max(1) {
                        inputs.push((
                            at,
                            Input::Reading {
                                device: name.clone(),
                                values: r.values.clone().into_iter().collect(),
                            },
                        ));
                    }
                }
                inputs
            };
            let mut inputs = sends(&voc, &model);
            if inputs.is_empty() {
                // A rule that reads only states is evaluated by the engine on its own;
                // time passing gives it a clock boundary if it reads the clock.
                inputs.push((at, Input::Tick));
                return Ok(vec![inputs]);
            }
            let mut candidates = vec![inputs.clone()];
            if rule.edge {
                // An `on` rule that held at its last evaluation fires only once it has
                // been false: readings that make it false first, then the same ones.
                let mut voc = Vocab::for_site(v.policy, site);
                let mut facts = vec![Term::Not(Box::new(voc.encode(&rule.cond)))];
                for (i, s) in engine.states().iter().enumerate() {
                    facts.push(voc.state_is(part.devices[i], StateId::from_index(*s)));
                }
                voc.query.facts.push(Term::And(facts));
                voc.steady();
                if let Outcome::Sat(m) = v.solver.solve(&voc.query) {
                    let mut first = sends(&voc, &m);
                    if !first.is_empty() {
                        first.append(&mut inputs);
                        candidates.push(first);
                    }
                }
            }
            Ok(candidates)
        }
    }
}

/// Readings of `device` that make `guard` hold, as candidates: values that make none of
/// `others` hold first, then values for `guard` alone; each whole, then with only some of
/// its values (the rest left as they were, or unknown if never reported: a guard that
/// reads an unknown value does not hold, so leaving one out can keep an earlier
/// transition from firing).
fn readings(
    v: &mut Verifier<'_>,
    site: &Site,
    engine: &Engine,
    device: DeviceId,
    guard: &Expr,
    exclusions: &[&[&Expr]],
) -> Result<Vec<Vec<(u64, Input)>>, String> {
    let mut out = Vec::new();
    let mut last = None;
    // Each set of guards to keep off in turn, then none.
    let none: &[&Expr] = &[];
    for others in exclusions.iter().copied().chain([none]) {
        let mut voc = Vocab::for_site(v.policy, site);
        let mut facts = vec![voc.encode_for(device, guard)];
        for o in others {
            let t = voc.encode_for(device, o);
            facts.push(Term::negate(t));
        }
        voc.query.facts.push(Term::And(facts));
        voc.steady();
        match v.solver.solve(&voc.query) {
            Outcome::Sat(model) => {
                let at = aligned(engine, voc.minute(&model));
                let r = voc
                    .readings(&model)
                    .remove(&Some(device))
                    .unwrap_or_default();
                let name = &site.devices[device.index()].name;
                // A guard that reads no value of the device (only the clock): a held one
                // needs only time to reach `at`; one without a hold is evaluated on a
                // reading, of any value (the engine refuses a reading of none), so each
                // sensed variable with a value of its domain is a candidate.
                if r.values.is_empty() {
                    out.push(vec![(at, Input::Tick)]);
                    let ty = v.policy.device_type(site.devices[device.index()].ty);
                    for var in &ty.vars {
                        for value in domain_samples(&var.ty) {
                            let values = BTreeMap::from([(var.name.clone(), value)]);
                            out.push(vec![(
                                at,
                                Input::Reading {
                                    device: name.clone(),
                                    values,
                                },
                            )]);
                        }
                    }
                    break;
                }
                for values in parts(&r.values) {
                    let input = Input::Reading {
                        device: name.clone(),
                        values,
                    };
                    out.push((0..r.repeat.max(1)).map(|_| (at, input.clone())).collect());
                }
                // Values for the guard alone only when none keep the others off: a
                // query less per step.
                break;
            }
            Outcome::Unsat => last = Some("no reading satisfies the guard".to_string()),
            Outcome::Unknown(why) => last = Some(format!("the solver gave up: {why}")),
        }
    }
    if out.is_empty() {
        return Err(last.unwrap_or_default());
    }
    Ok(out)
}

/// A few values of a variable's domain: both booleans, an integer range's ends, an
/// enumeration's first and last members.
fn domain_samples(ty: &crate::ir::VarType) -> Vec<Value> {
    use crate::ir::VarType;
    match ty {
        VarType::Bool => vec![Value::Bool(false), Value::Bool(true)],
        VarType::Int { lo, hi } => vec![Value::from(*lo), Value::from(*hi)],
        VarType::Enum { members } => {
            let mut out: Vec<Value> = members
                .first()
                .into_iter()
                .map(|m| Value::from(m.as_str()))
                .collect();
            out.extend(
                members
                    .last()
                    .filter(|_| members.len() > 1)
                    .map(|m| Value::from(m.as_str())),
            );
            out
        }
    }
}

/// The values whole, then every non-empty part of them, smaller parts first (up to 6
/// values: a guard reads few).
fn parts(values: &BTreeMap<String, Value>) -> Vec<BTreeMap<String, Value>> {
    let all: Vec<(&String, &Value)> = values.iter().collect();
    let mut out = vec![values.clone()];
    if all.len() < 2 || all.len() > 6 {
        return out;
    }
    let mut masks: Vec<u32> = (1..(1u32 << all.len()) - 1).collect();
    masks.sort_by_key(|m| m.count_ones());
    for m in masks {
        out.push(
            all.iter()
                .enumerate()
                .filter(|(i, _)| m & (1 << i) != 0)
                .map(|(_, (k, v))| ((*k).clone(), (*v).clone()))
                .collect(),
        );
    }
    out
}

/// The first time from now whose minute of the day is `minute` (now when there is none).
fn aligned(engine: &Engine, minute: Option<u16>) -> u64 {
    let now = engine.now();
    let Some(m) = minute else { return now };
    let local = engine.time_of_day(now);
    let want = u64::from(m) * MINUTE_MS;
    if local / MINUTE_MS == u64::from(m) {
        return now;
    }
    now + (want + DAY_MS - local) % DAY_MS
}

/// An alert `device` may receive in `state` from an input that no transition out of the
/// state waits for: one that only postpones the state's quiet time.
fn harmless_alert(
    v: &Verifier<'_>,
    engine: &Engine,
    site: &Site,
    device: DeviceId,
    state: StateId,
) -> Option<Input> {
    let ty = v.policy.device_type(site.devices[device.index()].ty);
    let awaited: Vec<&str> = ty
        .transitions
        .iter()
        .filter(|t| t.from == state)
        .filter_map(|t| match &t.trigger {
            Trigger::Alert { alert, .. } => Some(alert.as_str()),
            _ => None,
        })
        .collect();
    let mut alerts: Vec<String> = ty.alerts.clone();
    for (_, emits) in v.policy.chain_emits(ty.state(state).chain.as_ref()) {
        alerts.extend(emits);
    }
    alerts
        .iter()
        .filter(|a| !awaited.contains(&a.as_str()))
        .find_map(|a| alert_input(v, engine, site, device, state, a).ok())
}

/// An alert for `device` in `state` that the engine accepts: from the device itself when
/// its type declares the alert, else from a µmbox of the state's chain.
fn alert_input(
    v: &Verifier<'_>,
    engine: &Engine,
    site: &Site,
    device: DeviceId,
    state: StateId,
    alert: &str,
) -> Result<Input, String> {
    let dev = &site.devices[device.index()];
    let ty = v.policy.device_type(dev.ty);
    let mut sources: Vec<Option<String>> = vec![None];
    if let Some(s) = ty.states.get(state.index()) {
        sources.extend(
            v.policy
                .chain_emits(s.chain.as_ref())
                .into_iter()
                .map(|(u, _)| Some(u)),
        );
    }
    sources
        .into_iter()
        .map(|source| Input::Alert {
            device: dev.name.clone(),
            alert: alert.to_string(),
            source,
        })
        .find(|input| engine.validate(engine.now(), input).is_ok())
        .ok_or_else(|| {
            format!(
                "nothing the engine accepts reports `{alert}` to `{}` in state `{}` (only a rule raises it)",
                dev.name,
                ty.states.get(state.index()).map_or("?", |s| s.name.as_str())
            )
        })
}
