//! What the tests of a policy exercised: the states each device was in, the transitions
//! of each device type some device took, and the site rules that fired.

use crate::bundle::Bundle;
use crate::engine::{Cause, Effect, Engine, Step};
use serde::Serialize;

/// Coverage gathered over any number of test runs of one bundle.
#[derive(Debug, Clone)]
pub struct Coverage {
    /// Per device, per state of its type: the device was in it.
    states: Vec<Vec<bool>>,
    /// Per device type, per transition: a device of the type took it.
    transitions: Vec<Vec<bool>>,
    /// Per device type: a device of the site has it (other types are not counted).
    used: Vec<bool>,
    /// Per rule: it fired.
    rules: Vec<bool>,
}

/// Covered out of total.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tally {
    pub covered: usize,
    pub total: usize,
    /// `covered / total` in percent, rounded down to a tenth (100 for a total of 0).
    pub percent: f64,
}

impl Tally {
    fn new(covered: usize, total: usize) -> Tally {
        let tenths = (covered * 1000).checked_div(total).unwrap_or(1000);
        Tally {
            covered,
            total,
            percent: tenths as f64 / 10.0,
        }
    }

    /// Whether the exact share is at least `percent` (no rounding up).
    pub fn meets(&self, percent: f64) -> bool {
        self.covered as f64 * 100.0 >= percent * self.total as f64
    }
}

/// A state a device was never in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateRef {
    pub device: String,
    pub state: String,
}

/// A transition no device of its type took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransitionRef {
    pub device_type: String,
    pub from: String,
    pub to: String,
    /// As written in the policy (`on port_scan count 3 within 1m`).
    pub trigger: String,
}

/// The coverage of a policy's tests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoverageReport {
    /// States per device (a device's initial state counts: every test starts there).
    pub states: Tally,
    /// Transitions per device type.
    pub transitions: Tally,
    /// Site rules.
    pub rules: Tally,
    /// All three together: what `--threshold` compares.
    pub total: Tally,
    pub never_in: Vec<StateRef>,
    pub never_taken: Vec<TransitionRef>,
    pub never_fired: Vec<String>,
}

impl Coverage {
    pub fn new(bundle: &Bundle) -> Coverage {
        let m = &bundle.manifest;
        let mut used = vec![false; m.device_types.len()];
        let states = (0..m.devices.len())
            .map(|d| {
                if let Some(u) = bundle.device_type_index(d).and_then(|t| used.get_mut(t)) {
                    *u = true;
                }
                vec![false; bundle.device_type(d).map_or(0, |t| t.states.len())]
            })
            .collect();
        Coverage {
            states,
            transitions: m
                .device_types
                .iter()
                .map(|t| vec![false; t.transitions.len()])
                .collect(),
            used,
            rules: vec![false; m.rules.len()],
        }
    }

    /// Every device's current state (a test's start).
    pub(crate) fn here(&mut self, engine: &Engine) {
        for (d, s) in engine.states().into_iter().enumerate() {
            self.mark_state(d, s);
        }
    }

    fn mark_state(&mut self, device: usize, state: usize) {
        if let Some(x) = self.states.get_mut(device).and_then(|v| v.get_mut(state)) {
            *x = true;
        }
    }

    pub(crate) fn step(&mut self, bundle: &Bundle, step: &Step) {
        for e in &step.effects {
            if let Effect::StateChange {
                device, to, cause, ..
            } = e
            {
                self.mark_state(*device, *to);
                let transition = match cause {
                    Cause::Alert { transition, .. }
                    | Cause::Reading { transition }
                    | Cause::Held { transition }
                    | Cause::Quiet { transition }
                    | Cause::Silent { transition }
                    | Cause::Operator { transition, .. } => Some(*transition),
                    Cause::Rule { .. } => None,
                };
                let slot = transition.and_then(|ti| {
                    let ty = bundle.device_type_index(*device)?;
                    self.transitions.get_mut(ty)?.get_mut(ti)
                });
                if let Some(x) = slot {
                    *x = true;
                }
            }
        }
        for &r in &step.fired {
            if let Some(x) = self.rules.get_mut(r) {
                *x = true;
            }
        }
    }

    pub fn report(&self, bundle: &Bundle) -> CoverageReport {
        let m = &bundle.manifest;
        let mut never_in = Vec::new();
        let mut states = (0, 0);
        for (d, seen) in self.states.iter().enumerate() {
            let Some(ty) = bundle.device_type(d) else {
                continue;
            };
            for (s, &was) in seen.iter().enumerate() {
                states.1 += 1;
                if was {
                    states.0 += 1;
                } else {
                    never_in.push(StateRef {
                        device: m
                            .devices
                            .get(d)
                            .map_or("?", |x| x.name.as_str())
                            .to_string(),
                        state: ty.states.get(s).map_or("?", String::as_str).to_string(),
                    });
                }
            }
        }
        let mut never_taken = Vec::new();
        let mut transitions = (0, 0);
        for (t, taken) in self.transitions.iter().enumerate() {
            let (Some(ty), true) = (
                m.device_types.get(t),
                self.used.get(t).copied().unwrap_or(false),
            ) else {
                continue;
            };
            let names = bundle.names(Some(t));
            for (i, &was) in taken.iter().enumerate() {
                transitions.1 += 1;
                if was {
                    transitions.0 += 1;
                    continue;
                }
                let Some(tr) = ty.transitions.get(i) else {
                    continue;
                };
                let state = |s: u32| {
                    ty.states
                        .get(s as usize)
                        .map_or("?", String::as_str)
                        .to_string()
                };
                never_taken.push(TransitionRef {
                    device_type: ty.name.clone(),
                    from: state(tr.from),
                    to: state(tr.to),
                    trigger: names.trigger(&tr.trigger),
                });
            }
        }
        let never_fired: Vec<String> = self
            .rules
            .iter()
            .zip(&m.rules)
            .filter(|(fired, _)| !**fired)
            .map(|(_, r)| r.name.clone())
            .collect();
        let rules = (self.rules.len() - never_fired.len(), self.rules.len());
        CoverageReport {
            states: Tally::new(states.0, states.1),
            transitions: Tally::new(transitions.0, transitions.1),
            rules: Tally::new(rules.0, rules.1),
            total: Tally::new(
                states.0 + transitions.0 + rules.0,
                states.1 + transitions.1 + rules.1,
            ),
            never_in,
            never_taken,
            never_fired,
        }
    }
}
