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
//!   the states the devices are in; a rule that reads only states fires by itself.
//!
//! The engine settles rule cascades after each input, so one input may take several steps
//! of the run at once: the replay follows the engine to the furthest step of the run it
//! matches. The goal is checked after every single state change.

use super::encode::Vocab;
use super::solver::{Outcome, Term};
use super::Verifier;
use crate::codegen::manifest as lower;
use crate::ir::{Action, Chain, DeviceId, Expr, Site, StateId, Trigger};
use kalki_model::engine::{
    Cause, Config, DeviceSpec, Effect, Engine, Input, Origin, SiteSpec, DAY_MS,
};
use serde_json::Value;
use std::collections::BTreeMap;

/// A step of an abstract run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Move {
    /// Transition `index` of the device's type.
    Transition { device: DeviceId, index: usize },
    /// Rule `index` of the site fires.
    Rule { index: usize },
}

const MINUTE_MS: u64 = 60_000;

impl Verifier<'_> {
    /// A fresh engine of a site, made once per verification from the model's parts as
    /// `kalkic build` lowers them into the bundle (`codegen::manifest`).
    pub(crate) fn engine(&mut self, site: &Site) -> Engine {
        if let Some(e) = self.engines.get(&site.name) {
            return e.restart(Config::default(), 0);
        }
        let types: Vec<_> = self
            .policy
            .device_types
            .iter()
            .map(lower::device_type)
            .collect();
        let rules: Vec<_> = site.rules.iter().map(lower::rule).collect();
        let devices = site
            .devices
            .iter()
            .map(|d| DeviceSpec {
                name: d.name.clone(),
                ty: d.ty.index(),
                states: self
                    .policy
                    .device_type(d.ty)
                    .states
                    .iter()
                    .map(|s| match &s.chain {
                        Chain::Umboxes(entries) => entries
                            .iter()
                            .map(|e| {
                                let u = self.policy.umbox(e.umbox);
                                (u.name.clone(), u.emits.clone())
                            })
                            .collect(),
                        Chain::Pass | Chain::Drop => Vec::new(),
                    })
                    .collect(),
            })
            .collect();
        let spec = SiteSpec {
            device_types: &types,
            devices,
            rules: &rules,
        };
        let e = Engine::of(&spec, Config::default(), 0);
        self.engines.insert(site.name.clone(), e.clone());
        e
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
    site: &Site,
    run: &[Move],
    goal: &dyn Fn(&[usize]) -> bool,
) -> Result<Vec<Value>, String> {
    let mut engine = v.engine(site);
    let mut sent: Vec<Value> = Vec::new();
    if goal(&engine.states()) {
        return Ok(sent);
    }
    for (k, &mv) in run.iter().enumerate() {
        let what = describe(v, site, mv);
        let step = |why: String| format!("step {} ({what}): {why}", k + 1);
        if done(site, &engine, mv) {
            continue;
        }
        ready(v, site, &engine, mv).map_err(step)?;
        // The first candidate the engine takes the step on (each tried on a copy).
        let mut taken = None;
        for inputs in concretize(v, site, &engine, mv).map_err(step)? {
            match attempt(&engine, mv, &inputs, goal) {
                Attempt::Goal(lines) => {
                    sent.extend(lines);
                    return Ok(sent);
                }
                Attempt::Taken(after, lines) => {
                    taken = Some((after, lines));
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
                    "the engine does not take it: {}",
                    where_(v, site, &engine)
                )))
            }
        }
    }
    Err(format!(
        "the engine took every step, yet the condition does not hold: {}",
        where_(v, site, &engine)
    ))
}

enum Attempt {
    /// The goal held after a state change: the inputs sent up to then.
    Goal(Vec<Value>),
    /// The step was taken: the engine after it, and the inputs sent.
    Taken(Box<Engine>, Vec<Value>),
    NotTaken,
    Refused(String),
}

/// Sends `inputs` to a copy of `engine` until it takes `mv` (or the goal holds).
fn attempt(
    engine: &Engine,
    mv: Move,
    inputs: &[(u64, Input)],
    goal: &dyn Fn(&[usize]) -> bool,
) -> Attempt {
    let mut engine = engine.clone();
    let mut sent = Vec::new();
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
            if let Effect::StateChange {
                device, to, cause, ..
            } = e
            {
                taken |= is(mv, *device, cause);
                if let Some(s) = states.get_mut(*device) {
                    *s = *to;
                }
                if goal(&states) {
                    return Attempt::Goal(sent);
                }
            }
        }
        if taken {
            return Attempt::Taken(Box::new(engine), sent);
        }
    }
    Attempt::NotTaken
}

/// Whether a state change with `cause` of `device` is the move `mv`.
fn is(mv: Move, device: usize, cause: &Cause) -> bool {
    match (mv, cause) {
        (Move::Rule { index }, Cause::Rule { rule })
        | (
            Move::Rule { index },
            Cause::Alert {
                origin: Origin::Rule { rule },
                ..
            },
        ) => index == *rule,
        (Move::Transition { device: d, index }, c) => {
            d.index() == device
                && match c {
                    Cause::Alert { transition, .. }
                    | Cause::Reading { transition }
                    | Cause::Held { transition }
                    | Cause::Quiet { transition }
                    | Cause::Operator { transition, .. } => *transition == index,
                    Cause::Rule { .. } => false,
                }
        }
        _ => false,
    }
}

/// Whether the engine already is where `mv` leads: a rule that only moves devices, and
/// every device it moves is there.
fn done(site: &Site, engine: &Engine, mv: Move) -> bool {
    match mv {
        Move::Transition { .. } => false,
        Move::Rule { index } => site.rules.get(index).is_some_and(|r| {
            let mut moves = r.actions.iter().filter_map(|a| match a {
                Action::Goto { device, state, .. } => Some((device, state)),
                _ => None,
            });
            !r.actions.iter().any(|a| matches!(a, Action::Raise { .. }))
                && moves.all(|(d, s)| engine.state(d.index()) == Some(s.index()))
        }),
    }
}

/// A transition can only be taken from its state.
fn ready(v: &Verifier<'_>, site: &Site, engine: &Engine, mv: Move) -> Result<(), String> {
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
    match engine.state(device.index()) {
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
fn where_(v: &Verifier<'_>, site: &Site, engine: &Engine) -> String {
    let parts: Vec<String> = site
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let ty = v.policy.device_type(d.ty);
            let s = engine
                .state(i)
                .and_then(|s| ty.states.get(s))
                .map_or("?", |x| x.name.as_str());
            format!("{} in `{s}`", d.name)
        })
        .collect();
    format!("it has {}", parts.join(", "))
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
    site: &Site,
    engine: &Engine,
    mv: Move,
) -> Result<Vec<Vec<(u64, Input)>>, String> {
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
                    // that holds, and a held one may run out first.
                    let others: Vec<&Expr> = ty
                        .transitions
                        .iter()
                        .enumerate()
                        .filter(|(i, o)| *i != index && o.from == t.from)
                        .filter_map(|(_, o)| match &o.trigger {
                            Trigger::When { guard, .. } => Some(guard),
                            _ => None,
                        })
                        .collect();
                    let mut candidates = readings(v, site, engine, device, guard, &others)?;
                    if let Some(h) = hold_ms {
                        for inputs in &mut candidates {
                            let at = inputs.last().map_or(now, |(t, _)| *t);
                            inputs.push((at.saturating_add(*h), Input::Tick));
                        }
                    }
                    Ok(candidates)
                }
                Trigger::Quiet { after_ms } => {
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
            for (d, s) in engine.states().iter().enumerate() {
                facts.push(voc.state_is(DeviceId::from_index(d), StateId::from_index(*s)));
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
            let mut inputs = Vec::new();
            for (d, r) in voc.readings(&model) {
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
            if inputs.is_empty() {
                // A rule that reads only states is evaluated by the engine on its own;
                // time passing gives it a clock boundary if it reads the clock.
                inputs.push((at, Input::Tick));
            }
            Ok(vec![inputs])
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
    others: &[&Expr],
) -> Result<Vec<Vec<(u64, Input)>>, String> {
    let mut out = Vec::new();
    let mut last = None;
    for exclusive in [true, false] {
        let mut voc = Vocab::for_site(v.policy, site);
        let mut facts = vec![voc.encode_for(device, guard)];
        if exclusive {
            for o in others {
                let t = voc.encode_for(device, o);
                facts.push(Term::negate(t));
            }
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
                for values in parts(&r.values) {
                    let input = Input::Reading {
                        device: name.clone(),
                        values,
                    };
                    out.push((0..r.repeat.max(1)).map(|_| (at, input.clone())).collect());
                }
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
    if let Some(Chain::Umboxes(entries)) = ty.states.get(state.index()).map(|s| &s.chain) {
        sources.extend(
            entries
                .iter()
                .map(|e| Some(v.policy.umbox(e.umbox).name.clone())),
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
