//! The site's state machines as a pure, deterministic engine: input events at a virtual
//! time in, state changes (with their causes), commands and raised alerts out, plus the
//! next moment a timer needs the engine. No wall clock, no I/O: the caller passes the
//! time (`u64` milliseconds) with every input, so a driver feeds it real time and
//! `simulate` and the tests a virtual clock. The semantics are in `docs/runtime.md`.
//!
//! A bad input (unknown device or variable, wrong type, out of range, unknown alert, an
//! alert from a µmbox not deployed in the device's state, time going backwards) is refused
//! with every problem found and changes nothing. [`Engine::validate`] is the one
//! definition of what is refused; [`Engine::validate_static`] is its part that depends on
//! neither time nor state.

use crate::bundle::Bundle;
use crate::clock::{Clock, Zone};
use crate::codes;
use crate::eval::{self, Env, Value};
use crate::manifest::{
    Action, DeviceType, Expr, ExprKind, Rule, Transition, Trigger, VarRef, VarType,
};
use miette::Diagnostic;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;
const MINUTE_MS: u64 = 60_000;

/// The longest step of time one input may take: a year and a day. The engine runs every
/// moment in between (a rule's clock window comes round every day), so an absurd jump
/// would keep it busy for ages instead of being refused.
pub const MAX_STEP_MS: u64 = 366 * DAY_MS;

/// Operator actions the language has (`on operator reset`).
pub const OPERATOR_ACTIONS: &[&str] = &["reset"];

/// How virtual time maps to the time of day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The local time of day, in milliseconds since midnight, at time 0. A driver that
    /// passes Unix milliseconds sets it to the node's offset from UTC. Unused with a zone.
    pub day_offset_ms: u64,
    /// A time zone, whose wall clock (daylight saving included) the clock windows read
    /// instead of the fixed offset.
    pub zone: Option<Zone>,
}

impl Config {
    /// A fixed offset: the local time of day at time 0, in milliseconds since midnight.
    pub fn fixed(day_offset_ms: u64) -> Config {
        Config {
            day_offset_ms,
            zone: None,
        }
    }

    /// The mapping of engine time to the wall clock this config gives.
    pub fn clock(&self) -> Clock {
        match &self.zone {
            Some(z) => Clock::Zone(z.clone()),
            None => Clock::Fixed {
                day_offset_ms: self.day_offset_ms % DAY_MS,
            },
        }
    }
}

/// An input event. Devices, variables and alerts are named as in the policy.
///
/// Its serde form (`{"kind": "reading", "device": ..., "values": {...}}`) is what the
/// shim's journal stores on disk; `runtime-shim/src/journal.rs` pins it with a test, so a
/// change here that would change the journal's format fails there.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    /// New sensed values: booleans, integers, enum members by name.
    Reading {
        device: String,
        values: BTreeMap<String, serde_json::Value>,
    },
    /// An alert for a device, from one of its µmboxes (`source`) or the device itself.
    Alert {
        device: String,
        alert: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
    },
    /// An operator action (`reset`) on a device.
    Operator { device: String, action: String },
    /// Nothing but time passing: the timers due by then fire.
    Tick,
}

impl Input {
    /// The input at `t_ms` as a line of a `kalki-shim simulate` trace (`docs/runtime.md`,
    /// "Traces"); the shim's trace parser reads it back as the same input.
    pub fn trace_line(&self, t_ms: u64) -> serde_json::Value {
        let mut line = serde_json::Map::new();
        line.insert("t_ms".into(), t_ms.into());
        match self {
            Input::Reading { device, values } => {
                line.insert("device".into(), device.clone().into());
                line.insert(
                    "reading".into(),
                    serde_json::Value::Object(values.clone().into_iter().collect()),
                );
            }
            Input::Alert {
                device,
                alert,
                source,
            } => {
                line.insert("device".into(), device.clone().into());
                line.insert("alert".into(), alert.clone().into());
                if let Some(s) = source {
                    line.insert("source".into(), s.clone().into());
                }
            }
            Input::Operator { device, action } => {
                line.insert("device".into(), device.clone().into());
                line.insert("operator".into(), action.clone().into());
            }
            Input::Tick => {}
        }
        serde_json::Value::Object(line)
    }
}

/// A state change, a command to send or an alert raised by a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    StateChange {
        device: usize,
        from: usize,
        to: usize,
        cause: Cause,
    },
    Command {
        device: usize,
        command: String,
        rule: usize,
    },
    AlertRaised {
        device: usize,
        alert: String,
        rule: usize,
    },
    /// An expression could not be evaluated (a checked bundle never causes one); the
    /// condition was taken as not holding.
    Fault { message: String },
}

/// Why a device changed state. `transition` indexes its type's `transitions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// `on ALERT [count N within T]`.
    Alert {
        transition: usize,
        alert: String,
        origin: Origin,
    },
    /// `when G`, on a reading.
    Reading { transition: usize },
    /// `when G for T`: G has held for T.
    Held { transition: usize },
    /// `after T quiet`.
    Quiet { transition: usize },
    /// `after T silent`.
    Silent { transition: usize },
    /// `on operator ACTION`.
    Operator { transition: usize, action: String },
    /// A rule's `dev -> state`.
    Rule { rule: usize },
}

/// Where an alert came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An input: from a µmbox (`Some`) or the device itself.
    Input { source: Option<String> },
    /// A rule's `raise`.
    Rule { rule: usize },
}

/// What happened at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub t_ms: u64,
    pub effects: Vec<Effect>,
    /// The rules that fired, in the order they fired: also those whose actions changed
    /// nothing (a `dev -> s` with `dev` already in `s`). What `kalkic test` counts as a
    /// rule exercised. A step is returned when it has effects or a rule fired.
    pub fired: Vec<usize>,
}

/// A refused input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("unknown device `{name}`")]
    UnknownDevice {
        name: String,
        suggestion: Option<String>,
    },
    #[error("`{device}` has no variable `{name}`")]
    UnknownVariable {
        device: String,
        name: String,
        suggestion: Option<String>,
    },
    #[error("`{device}.{var}` is {expected}, not {found}")]
    WrongType {
        device: String,
        var: String,
        expected: String,
        found: String,
    },
    #[error("`{device}.{var}` = {value} is outside its range {lo}..{hi}")]
    OutOfRange {
        device: String,
        var: String,
        value: i64,
        lo: i64,
        hi: i64,
    },
    #[error("a reading of `{device}` with no values")]
    EmptyReading { device: String },
    #[error("`{device}` cannot receive alert `{alert}`")]
    UnknownAlert {
        device: String,
        alert: String,
        suggestion: Option<String>,
    },
    #[error("`{umbox}` is not a µmbox of `{device}` that emits `{alert}`")]
    UnknownSource {
        device: String,
        alert: String,
        umbox: String,
        candidates: Vec<String>,
    },
    #[error("`{umbox}` is not deployed for `{device}` in its current state `{state}`")]
    NotDeployed {
        device: String,
        umbox: String,
        alert: String,
        /// The device's state when the alert arrives.
        state: String,
        /// The states whose chains deploy the µmbox, in declaration order.
        deployed_in: Vec<String>,
    },
    #[error("`{device}` does not report `{alert}` itself: its type does not declare it")]
    NotOwn {
        device: String,
        alert: String,
        /// The device's µmboxes that emit it.
        sources: Vec<String>,
    },
    #[error("unknown operator action `{action}`")]
    UnknownAction { action: String },
    #[error("time {t_ms} ms is before the engine's current time {now_ms} ms")]
    TimeBackwards { t_ms: u64, now_ms: u64 },
    #[error("time {t_ms} ms is more than 366 days after the engine's current time {now_ms} ms")]
    TooFarAhead { t_ms: u64, now_ms: u64 },
}

impl InputError {
    pub fn code(&self) -> &'static str {
        match self {
            InputError::UnknownDevice { .. } => codes::UNKNOWN_DEVICE,
            InputError::UnknownVariable { .. } => codes::UNKNOWN_VARIABLE,
            InputError::WrongType { .. } => codes::WRONG_TYPE,
            InputError::OutOfRange { .. } => codes::OUT_OF_RANGE,
            InputError::EmptyReading { .. } => codes::EMPTY_READING,
            InputError::UnknownAlert { .. } => codes::UNKNOWN_ALERT,
            InputError::UnknownSource { .. } => codes::UNKNOWN_SOURCE,
            InputError::NotDeployed { .. } => codes::NOT_DEPLOYED,
            InputError::NotOwn { .. } => codes::NOT_OWN,
            InputError::UnknownAction { .. } => codes::UNKNOWN_ACTION,
            InputError::TimeBackwards { .. } => codes::TIME_BACKWARDS,
            InputError::TooFarAhead { .. } => codes::TOO_FAR_AHEAD,
        }
    }

    fn help_text(&self) -> Option<String> {
        let did_you_mean = |s: &Option<String>| s.as_ref().map(|s| format!("did you mean `{s}`?"));
        match self {
            InputError::UnknownDevice { suggestion, .. }
            | InputError::UnknownVariable { suggestion, .. }
            | InputError::UnknownAlert { suggestion, .. } => did_you_mean(suggestion),
            InputError::UnknownSource { candidates, .. } => Some(if candidates.is_empty() {
                "none of its µmboxes emits it: leave `source` out for an alert from the device itself".to_string()
            } else {
                format!("it is emitted by `{}`", candidates.join("`, `"))
            }),
            InputError::NotDeployed {
                device,
                umbox,
                deployed_in,
                ..
            } => Some(format!(
                "`{umbox}` is deployed for `{device}` only in `{}`",
                deployed_in.join("`, `")
            )),
            InputError::NotOwn { sources, .. } => Some(if sources.is_empty() {
                "only a rule raises it; a device reports only the alerts its type declares"
                    .to_string()
            } else {
                format!(
                    "give the µmbox that raised it as its `source`: `{}`",
                    sources.join("`, `")
                )
            }),
            InputError::UnknownAction { .. } => Some(format!(
                "the operator actions are `{}`",
                OPERATOR_ACTIONS.join("`, `")
            )),
            InputError::EmptyReading { .. } => {
                Some("a reading reports at least one variable".to_string())
            }
            InputError::TimeBackwards { .. } => {
                Some("events are given in the order they happen".to_string())
            }
            InputError::TooFarAhead { .. } => Some(
                "the engine runs every moment in between; start a new engine after a long gap"
                    .to_string(),
            ),
            InputError::WrongType { .. } | InputError::OutOfRange { .. } => None,
        }
    }
}

impl Diagnostic for InputError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(InputError::code(self)))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help_text()
            .map(|h| Box::new(h) as Box<dyn fmt::Display + 'a>)
    }
}

/// The closest candidate to a misspelt name, if one is close enough.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let limit = (name.chars().count() / 3).max(1);
    let lower = name.to_lowercase();
    // A difference of case alone is the nearest miss (`sensor` for `SENSOR`).
    candidates
        .into_iter()
        .map(|c| {
            (
                crate::text::edit_distance(&lower, &c.to_lowercase()),
                crate::text::edit_distance(name, c),
                c,
            )
        })
        .filter(|(_, d, _)| *d <= limit)
        .min()
        .map(|(_, _, c)| c.to_string())
}

// ---------------------------------------------------------------------------------------
// The compiled site: what the manifest says, indexed for the engine. Never changes.

#[derive(Debug, Clone)]
struct TypeInfo {
    states: Vec<String>,
    initial: usize,
    vars: Vec<(String, VarType)>,
    transitions: Vec<Transition>,
    /// Per state, the transitions out of it, in declaration order.
    out: Vec<Vec<usize>>,
}

#[derive(Debug, Clone)]
struct DeviceInfo {
    name: String,
    ty: usize,
    /// The alerts it can receive: its type's, its µmboxes', those rules raise on it, and
    /// those its transitions wait for.
    alerts: BTreeSet<String>,
    /// The alerts it reports itself (no `source`): those its type declares
    /// (`docs/language.md` §5.2). Any other reaches it only from a µmbox of its chain or
    /// from a rule, as the verifier assumes (K205).
    own: BTreeSet<String>,
    /// Its µmboxes (over all its chains) and the alerts each emits.
    umboxes: BTreeMap<String, BTreeSet<String>>,
    /// Per state (indexed as its type's), the µmboxes its chain deploys: their
    /// `kalki.umbox` labels. A µmbox speaks for the device only in these states.
    deployed: Vec<BTreeSet<String>>,
    /// Per variable: the longest aggregate window over it (0: no history is kept).
    window: Vec<usize>,
    /// Per alert: the longest `within` and the largest count of its type's count
    /// triggers on it; its history keeps no more than that.
    alert_window: BTreeMap<String, (u64, usize)>,
    /// Rules that read a variable of this device.
    rules_reading_values: Vec<usize>,
    /// Rules that test this device's state.
    rules_reading_state: Vec<usize>,
}

#[derive(Debug, Clone)]
struct RuleInfo {
    name: String,
    /// `on`: fires only when the condition becomes true.
    edge: bool,
    cond: Expr,
    actions: Vec<Action>,
    /// Minutes of the day where one of its clock windows starts or ends.
    boundaries: BTreeSet<u16>,
}

#[derive(Debug, Clone)]
struct Site {
    types: Vec<TypeInfo>,
    devices: Vec<DeviceInfo>,
    rules: Vec<RuleInfo>,
    /// Minutes where a clock window of a `when ... for` guard starts or ends.
    guard_boundaries: BTreeSet<u16>,
    /// Every boundary, of guards and rules.
    boundaries: BTreeSet<u16>,
    /// Operator actions: the language's and any the manifest's transitions use.
    actions: BTreeSet<String>,
}

fn clock_boundaries(e: &Expr) -> impl Iterator<Item = u16> + '_ {
    e.nodes().flat_map(|n| match n.kind {
        ExprKind::Clock { from, to } => vec![from, to],
        _ => vec![],
    })
}

/// What the engine runs: a site's device types, devices and rules, with the µmboxes each
/// device's states deploy. Made from a loaded bundle ([`SiteSpec::of`]) on the node, or
/// straight from the compiler's model by the verifier's witness replay: one engine, one
/// meaning, for both.
#[derive(Debug, Clone)]
pub struct SiteSpec<'a> {
    pub device_types: &'a [DeviceType],
    pub devices: Vec<DeviceSpec>,
    pub rules: &'a [Rule],
}

/// A device of a [`SiteSpec`].
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub name: String,
    /// Index into [`SiteSpec::device_types`].
    pub ty: usize,
    /// Per state of its type, in the type's order: the µmboxes its chain deploys (their
    /// `kalki.umbox` names), each with the alerts it emits.
    pub states: Vec<Vec<(String, Vec<String>)>>,
}

impl<'a> SiteSpec<'a> {
    /// The site of a loaded bundle: the µmboxes of a state are its container manifests.
    pub fn of(bundle: &'a Bundle) -> SiteSpec<'a> {
        let m = &bundle.manifest;
        let devices = m
            .devices
            .iter()
            .enumerate()
            .map(|(di, d)| DeviceSpec {
                name: d.name.clone(),
                // A checked bundle has a type for every device.
                ty: bundle.device_type_index(di).unwrap_or(usize::MAX),
                states: d
                    .states
                    .iter()
                    .map(|s| {
                        // A device off the switch has no µmboxes to raise alerts.
                        s.switch
                            .iter()
                            .flat_map(|p| &p.containers)
                            .filter_map(|path| bundle.containers.get(path))
                            .map(|c| {
                                let umbox =
                                    c.labels.get("kalki.umbox").cloned().unwrap_or_default();
                                (umbox, c.emits.clone())
                            })
                            .collect()
                    })
                    .collect(),
            })
            .collect();
        SiteSpec {
            device_types: &m.device_types,
            devices,
            rules: &m.rules,
        }
    }
}

impl Site {
    fn new(spec: &SiteSpec<'_>) -> Site {
        let types: Vec<TypeInfo> = spec
            .device_types
            .iter()
            .map(|t| {
                let mut out = vec![Vec::new(); t.states.len()];
                for (i, tr) in t.transitions.iter().enumerate() {
                    if let Some(o) = out.get_mut(tr.from as usize) {
                        o.push(i);
                    }
                }
                TypeInfo {
                    states: t.states.clone(),
                    initial: t.initial as usize,
                    vars: t
                        .vars
                        .iter()
                        .map(|v| (v.name.clone(), v.ty.clone()))
                        .collect(),
                    transitions: t.transitions.clone(),
                    out,
                }
            })
            .collect();

        let mut devices: Vec<DeviceInfo> = Vec::new();
        for d in &spec.devices {
            let ty_ix = d.ty;
            let t = spec.device_types.get(d.ty);
            let own: BTreeSet<String> = t
                .map(|t| t.alerts.iter().cloned().collect())
                .unwrap_or_default();
            let mut alerts = own.clone();
            let mut alert_window: BTreeMap<String, (u64, usize)> = BTreeMap::new();
            let mut window = vec![0usize; t.map_or(0, |t| t.vars.len())];
            for tr in t.map(|t| t.transitions.as_slice()).unwrap_or_default() {
                match &tr.trigger {
                    Trigger::Alert { alert, count } => {
                        alerts.insert(alert.clone());
                        if let Some((n, w)) = count {
                            let e = alert_window.entry(alert.clone()).or_insert((0, 0));
                            *e = (e.0.max(*w), e.1.max(*n as usize));
                        }
                    }
                    Trigger::When { guard, .. } => note_windows(guard, None, &mut window),
                    _ => {}
                }
            }
            let mut umboxes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let mut deployed = Vec::with_capacity(d.states.len());
            for s in &d.states {
                let mut here = BTreeSet::new();
                for (umbox, emits) in s {
                    alerts.extend(emits.iter().cloned());
                    umboxes
                        .entry(umbox.clone())
                        .or_default()
                        .extend(emits.iter().cloned());
                    here.insert(umbox.clone());
                }
                deployed.push(here);
            }
            devices.push(DeviceInfo {
                name: d.name.clone(),
                ty: ty_ix,
                alerts,
                own,
                umboxes,
                deployed,
                window,
                alert_window,
                rules_reading_values: Vec::new(),
                rules_reading_state: Vec::new(),
            });
        }

        let mut rules = Vec::new();
        for (ri, r) in spec.rules.iter().enumerate() {
            for n in r.cond.nodes() {
                match &n.kind {
                    ExprKind::Var { var } | ExprKind::Aggregate { var, .. } => {
                        if let Some(d) = var.device.and_then(|d| devices.get_mut(d as usize)) {
                            push_once(&mut d.rules_reading_values, ri);
                        }
                    }
                    ExprKind::InState { device, .. } => {
                        if let Some(d) = devices.get_mut(*device as usize) {
                            push_once(&mut d.rules_reading_state, ri);
                        }
                    }
                    _ => {}
                }
            }
            // The windows a rule reads of each device's values (not one pass per device:
            // a site has thousands).
            for n in r.cond.nodes() {
                if let ExprKind::Aggregate { var, last, .. } = &n.kind {
                    let d = var.device.and_then(|d| devices.get_mut(d as usize));
                    if let Some(w) = d.and_then(|d| d.window.get_mut(var.var as usize)) {
                        *w = (*w).max(*last as usize);
                    }
                }
            }
            for a in &r.actions {
                if let Action::Raise { device, alert } = a {
                    if let Some(d) = devices.get_mut(*device as usize) {
                        d.alerts.insert(alert.clone());
                    }
                }
            }
            rules.push(RuleInfo {
                name: r.name.clone(),
                edge: r.edge,
                cond: r.cond.clone(),
                actions: r.actions.clone(),
                boundaries: clock_boundaries(&r.cond).collect(),
            });
        }

        let guard_boundaries: BTreeSet<u16> = types
            .iter()
            .flat_map(|t| &t.transitions)
            .filter_map(|tr| match &tr.trigger {
                Trigger::When {
                    guard,
                    hold_ms: Some(_),
                } => Some(guard),
                _ => None,
            })
            .flat_map(clock_boundaries)
            .collect();
        let boundaries = rules
            .iter()
            .flat_map(|r| r.boundaries.iter().copied())
            .chain(guard_boundaries.iter().copied())
            .collect();
        let actions =
            OPERATOR_ACTIONS
                .iter()
                .map(|a| a.to_string())
                .chain(types.iter().flat_map(|t| &t.transitions).filter_map(
                    |tr| match &tr.trigger {
                        Trigger::Operator { action } => Some(action.clone()),
                        _ => None,
                    },
                ))
                .collect();
        Site {
            types,
            devices,
            rules,
            guard_boundaries,
            boundaries,
            actions,
        }
    }

    fn ty(&self, device: usize) -> Option<&TypeInfo> {
        self.types.get(self.devices.get(device)?.ty)
    }
}

fn push_once(v: &mut Vec<usize>, x: usize) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// Records, per variable, the longest aggregate window read over it: over the guard's
/// own device (`device: None`) when `this` is `None`, else over device `this`.
fn note_windows(e: &Expr, this: Option<u32>, window: &mut [usize]) {
    for n in e.nodes() {
        if let ExprKind::Aggregate { var, last, .. } = &n.kind {
            if var.device == this {
                if let Some(w) = window.get_mut(var.var as usize) {
                    *w = (*w).max(*last as usize);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The changing part.

#[derive(Debug, Clone)]
struct DeviceRt {
    state: usize,
    entered_at: u64,
    last_alert: Option<u64>,
    /// When the device last reported (any reading).
    last_reading: Option<u64>,
    values: Vec<Option<Value>>,
    /// Per integer variable, its last readings (oldest first), as many as the longest
    /// window over it.
    history: Vec<VecDeque<i64>>,
    /// Per alert, when it arrived, as far back as the longest window counting it.
    alerts: BTreeMap<String, VecDeque<u64>>,
    /// `when G for T` transitions out of the current state whose guard holds: since when.
    holds: BTreeMap<usize, u64>,
}

#[derive(Debug, Clone)]
struct Rt {
    now: u64,
    clock: Clock,
    /// Shared between copies until one changes (`Arc::make_mut`): a look ahead, or the
    /// verifier's replay trying inputs on a copy, costs one pointer per device.
    devices: Vec<Arc<DeviceRt>>,
    /// Per rule, whether its condition held at its last evaluation (false before the
    /// first): an `on` rule fires only when it goes from not holding to holding.
    held: Vec<bool>,
}

/// An input after validation: indices, typed values.
#[derive(Debug, Clone)]
enum Resolved {
    Reading {
        device: usize,
        values: Vec<(usize, Value)>,
    },
    Alert {
        device: usize,
        alert: String,
        source: Option<String>,
    },
    Operator {
        device: usize,
        action: String,
    },
    Tick,
}

/// The effects of one moment, the rules to evaluate and the rules that have fired.
struct Moment {
    effects: Vec<Effect>,
    dirty: BTreeSet<usize>,
    fired: Vec<bool>,
    /// The rules that fired, in order.
    order: Vec<usize>,
}

impl Moment {
    fn new(rules: usize) -> Self {
        Moment {
            effects: Vec::new(),
            dirty: BTreeSet::new(),
            fired: vec![false; rules],
            order: Vec::new(),
        }
    }
    fn mark(&mut self, rules: &[usize]) {
        self.dirty.extend(rules.iter().copied());
    }
}

/// What guards and conditions read.
struct View<'a> {
    rt: &'a Rt,
    /// The device whose guard is evaluated (`VarRef { device: None }` means it).
    this: Option<usize>,
}

impl View<'_> {
    fn device_of(&self, var: VarRef) -> Option<&DeviceRt> {
        let d = match var.device {
            Some(d) => d as usize,
            None => self.this?,
        };
        self.rt.devices.get(d).map(|d| &**d)
    }
}

impl Env for View<'_> {
    fn value(&self, var: VarRef) -> Option<Value> {
        self.device_of(var)?
            .values
            .get(var.var as usize)
            .copied()
            .flatten()
    }
    fn window(&self, var: VarRef, n: usize) -> Option<impl Iterator<Item = i64> + '_> {
        let h = self.device_of(var)?.history.get(var.var as usize)?;
        let skip = h.len().checked_sub(n)?;
        (n > 0).then(|| h.iter().skip(skip).copied())
    }
    fn state(&self, device: u32) -> Option<u32> {
        self.rt
            .devices
            .get(device as usize)
            .and_then(|d| u32::try_from(d.state).ok())
    }
    fn minute_of_day(&self) -> u16 {
        self.rt.clock.minute_of_day(self.rt.now)
    }
}

/// The site's state machines.
#[derive(Debug, Clone)]
pub struct Engine {
    /// Shared by clones: a look ahead (see [`Engine::state_at`]) copies only `rt`.
    site: Arc<Site>,
    rt: Rt,
}

impl Engine {
    /// Every device in its initial state at time `start_ms`, nothing reported yet.
    /// Nothing is evaluated at the start: rules wait for a change of what they read.
    pub fn new(bundle: &Bundle, config: Config, start_ms: u64) -> Engine {
        Engine::of(&SiteSpec::of(bundle), config, start_ms)
    }

    /// [`Engine::new`] of a site given by its parts.
    pub fn of(spec: &SiteSpec<'_>, config: Config, start_ms: u64) -> Engine {
        Engine::start(Arc::new(Site::new(spec)), config, start_ms)
    }

    /// A fresh engine of the same site, as [`Engine::new`] of its bundle would make,
    /// without indexing the bundle again: for a replay on another clock.
    pub fn restart(&self, config: Config, start_ms: u64) -> Engine {
        Engine::start(self.site.clone(), config, start_ms)
    }

    fn start(site: Arc<Site>, config: Config, start_ms: u64) -> Engine {
        let devices = site
            .devices
            .iter()
            .map(|d| {
                let t = site.types.get(d.ty);
                Arc::new(DeviceRt {
                    state: t.map_or(0, |t| t.initial),
                    entered_at: start_ms,
                    last_alert: None,
                    last_reading: None,
                    values: vec![None; d.window.len()],
                    history: vec![VecDeque::new(); d.window.len()],
                    alerts: BTreeMap::new(),
                    holds: BTreeMap::new(),
                })
            })
            .collect();
        let rules = site.rules.len();
        Engine {
            site,
            rt: Rt {
                now: start_ms,
                clock: config.clock(),
                devices,
                held: vec![false; rules],
            },
        }
    }

    /// The engine's current time.
    pub fn now(&self) -> u64 {
        self.rt.now
    }

    /// The local time of day at `t_ms`, in milliseconds since midnight.
    pub fn time_of_day(&self, t_ms: u64) -> u64 {
        self.rt.clock.time_of_day(t_ms)
    }

    /// The mapping of engine time to the wall clock.
    pub fn clock(&self) -> &Clock {
        &self.rt.clock
    }

    pub fn device_count(&self) -> usize {
        self.site.devices.len()
    }

    pub fn device_name(&self, device: usize) -> &str {
        self.site
            .devices
            .get(device)
            .map_or("?", |d| d.name.as_str())
    }

    pub fn device_index(&self, name: &str) -> Option<usize> {
        self.site.devices.iter().position(|d| d.name == name)
    }

    pub fn state_name(&self, device: usize, state: usize) -> &str {
        self.site
            .ty(device)
            .and_then(|t| t.states.get(state))
            .map_or("?", String::as_str)
    }

    pub fn rule_name(&self, rule: usize) -> &str {
        self.site.rules.get(rule).map_or("?", |r| r.name.as_str())
    }

    /// Transition `transition` of a device's type.
    pub fn transition(&self, device: usize, transition: usize) -> Option<&Transition> {
        self.site.ty(device)?.transitions.get(transition)
    }

    /// A device's current state.
    pub fn state(&self, device: usize) -> Option<usize> {
        self.rt.devices.get(device).map(|d| d.state)
    }

    /// Every device's state, in device order (what the node is brought to).
    pub fn states(&self) -> Vec<usize> {
        self.rt.devices.iter().map(|d| d.state).collect()
    }

    /// The earliest time at which a timer needs the engine: a `when ... for` hold or an
    /// `after ... quiet` period running out, or the clock reaching a boundary of a window
    /// that a rule or a held guard reads. Call [`Engine::handle`] with [`Input::Tick`] then.
    pub fn next_deadline(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        for (di, d) in self.rt.devices.iter().enumerate() {
            let Some(t) = self.site.ty(di) else { continue };
            for &ti in t.out.get(d.state).into_iter().flatten() {
                match t.transitions.get(ti).map(|tr| &tr.trigger) {
                    Some(Trigger::When {
                        hold_ms: Some(h), ..
                    }) => {
                        if let Some(since) = d.holds.get(&ti) {
                            consider(since.saturating_add(*h));
                        }
                    }
                    Some(Trigger::Quiet { after_ms }) => {
                        consider(quiet_base(d).saturating_add(*after_ms));
                    }
                    Some(Trigger::Silent { after_ms }) => {
                        consider(silent_base(d).saturating_add(*after_ms));
                    }
                    _ => {}
                }
            }
        }
        if let Some(b) = self.next_boundary(self.rt.now) {
            consider(b);
        }
        next
    }

    /// The first clock boundary strictly after `t`: a window's `HH:MM`, or the wall
    /// clock jumping (daylight saving).
    fn next_boundary(&self, t: u64) -> Option<u64> {
        self.rt
            .clock
            .next_boundary(t, self.site.boundaries.iter().copied())
    }

    /// Checks an input at time `t_ms` without applying it: `Ok` exactly when
    /// [`Engine::handle`] would accept it. Everything [`Engine::validate_static`] checks,
    /// and what depends on time and state: `t_ms` fits the engine's clock (S109, S110) and
    /// an alert's `source` is deployed in the device's state when the alert arrives, after
    /// the timers due by then have fired (S111).
    pub fn validate(&self, t_ms: u64, input: &Input) -> Result<(), Vec<InputError>> {
        self.resolve(Some(t_ms), input).map(|_| ())
    }

    /// Checks what of an input depends on neither time nor state, against the site alone:
    /// every refusal but S109, S110 and S111. The same answer from any engine of the
    /// bundle, fresh or not; an input it accepts may still be refused by
    /// [`Engine::validate`].
    pub fn validate_static(&self, input: &Input) -> Result<(), Vec<InputError>> {
        self.resolve(None, input).map(|_| ())
    }

    /// Applies an input at time `t_ms`: first the timers due by then fire (each moment
    /// its own step), then the input. Returns the steps that had effects. A refused input
    /// changes nothing, not even the time.
    pub fn handle(&mut self, t_ms: u64, input: &Input) -> Result<Vec<Step>, Vec<InputError>> {
        let resolved = self.resolve(Some(t_ms), input)?;
        let mut steps = self.advance_to(t_ms);
        let mut m = Moment::new(self.site.rules.len());
        let now = self.rt.now;
        match resolved {
            Resolved::Tick => {}
            Resolved::Reading { device, values } => self.reading(device, &values, now, &mut m),
            Resolved::Alert {
                device,
                alert,
                source,
            } => self.alert(device, &alert, Origin::Input { source }, now, &mut m),
            Resolved::Operator { device, action } => self.operator(device, &action, now, &mut m),
        }
        self.settle(now, &mut m);
        if !m.effects.is_empty() || !m.order.is_empty() {
            steps.push(Step {
                t_ms: now,
                effects: m.effects,
                fired: m.order,
            });
        }
        Ok(steps)
    }

    /// The one definition of a valid input: everything at time `at`, or (`None`) only what
    /// depends on neither time nor state.
    fn resolve(&self, at: Option<u64>, input: &Input) -> Result<Resolved, Vec<InputError>> {
        let mut errors = Vec::new();
        // The time the input would be applied at, if it fits the clock: only then does
        // the devices' state at that time mean something.
        let at = at.filter(|&t_ms| {
            if t_ms < self.rt.now {
                errors.push(InputError::TimeBackwards {
                    t_ms,
                    now_ms: self.rt.now,
                });
                false
            } else if t_ms - self.rt.now > MAX_STEP_MS {
                errors.push(InputError::TooFarAhead {
                    t_ms,
                    now_ms: self.rt.now,
                });
                false
            } else {
                true
            }
        });
        let device = |name: &str, errors: &mut Vec<InputError>| {
            let i = self.device_index(name);
            if i.is_none() {
                errors.push(InputError::UnknownDevice {
                    name: name.to_string(),
                    suggestion: suggest(name, self.site.devices.iter().map(|d| d.name.as_str())),
                });
            }
            i
        };
        let resolved = match input {
            Input::Tick => Some(Resolved::Tick),
            Input::Reading {
                device: name,
                values,
            } => {
                let d = device(name, &mut errors);
                if values.is_empty() {
                    errors.push(InputError::EmptyReading {
                        device: name.clone(),
                    });
                }
                d.and_then(|d| {
                    self.resolve_values(d, values, &mut errors)
                        .map(|values| Resolved::Reading { device: d, values })
                })
            }
            Input::Alert {
                device: name,
                alert,
                source,
            } => device(name, &mut errors).and_then(|d| {
                let info = self.site.devices.get(d)?;
                if !info.alerts.contains(alert) {
                    errors.push(InputError::UnknownAlert {
                        device: name.clone(),
                        alert: alert.clone(),
                        suggestion: suggest(alert, info.alerts.iter().map(String::as_str)),
                    });
                    return None;
                }
                // The device's µmboxes that emit it, for the help of a refusal.
                let emitters = || {
                    info.umboxes
                        .iter()
                        .filter(|(_, e)| e.contains(alert))
                        .map(|(u, _)| u.clone())
                        .collect()
                };
                if source.is_none() && !info.own.contains(alert) {
                    errors.push(InputError::NotOwn {
                        device: name.clone(),
                        alert: alert.clone(),
                        sources: emitters(),
                    });
                    return None;
                }
                if let Some(s) = source {
                    let ok = info.umboxes.get(s).is_some_and(|e| e.contains(alert));
                    if !ok {
                        errors.push(InputError::UnknownSource {
                            device: name.clone(),
                            alert: alert.clone(),
                            umbox: s.clone(),
                            candidates: emitters(),
                        });
                        return None;
                    }
                    // Only a µmbox of the chain in force speaks for the device.
                    let state = at.and_then(|t| self.state_at(d, t));
                    let deployed = |st: usize| info.deployed.get(st).is_some_and(|u| u.contains(s));
                    if let Some(state) = state.filter(|&st| !deployed(st)) {
                        errors.push(InputError::NotDeployed {
                            device: name.clone(),
                            umbox: s.clone(),
                            alert: alert.clone(),
                            state: self.state_name(d, state).to_string(),
                            deployed_in: (0..info.deployed.len())
                                .filter(|&st| deployed(st))
                                .map(|st| self.state_name(d, st).to_string())
                                .collect(),
                        });
                        return None;
                    }
                }
                Some(Resolved::Alert {
                    device: d,
                    alert: alert.clone(),
                    source: source.clone(),
                })
            }),
            Input::Operator {
                device: name,
                action,
            } => {
                let d = device(name, &mut errors);
                if !self.site.actions.contains(action) {
                    errors.push(InputError::UnknownAction {
                        action: action.clone(),
                    });
                }
                d.map(|d| Resolved::Operator {
                    device: d,
                    action: action.clone(),
                })
            }
        };
        match resolved {
            Some(r) if errors.is_empty() => Ok(r),
            _ => Err(errors),
        }
    }

    /// A device's state at `t_ms` (not before the engine's time), once the timers due by
    /// then have fired: the state an input at `t_ms` meets. When a timer is due, it is
    /// found on a copy; the engine is unchanged.
    fn state_at(&self, device: usize, t_ms: u64) -> Option<usize> {
        if self.next_deadline().is_none_or(|d| d > t_ms) {
            return self.state(device);
        }
        let mut ahead = self.clone();
        ahead.advance_to(t_ms);
        ahead.state(device)
    }

    fn resolve_values(
        &self,
        device: usize,
        values: &BTreeMap<String, serde_json::Value>,
        errors: &mut Vec<InputError>,
    ) -> Option<Vec<(usize, Value)>> {
        let t = self.site.ty(device)?;
        let dname = self.device_name(device).to_string();
        let mut out = Vec::new();
        let before = errors.len();
        for (name, json) in values {
            let Some(vi) = t.vars.iter().position(|(n, _)| n == name) else {
                errors.push(InputError::UnknownVariable {
                    device: dname.clone(),
                    name: name.clone(),
                    suggestion: suggest(name, t.vars.iter().map(|(n, _)| n.as_str())),
                });
                continue;
            };
            let wrong = |expected: String| InputError::WrongType {
                device: dname.clone(),
                var: name.clone(),
                expected,
                found: describe_json(json),
            };
            let value = match (&t.vars[vi].1, json) {
                (VarType::Bool, serde_json::Value::Bool(b)) => Value::Bool(*b),
                (VarType::Bool, _) => {
                    errors.push(wrong("a boolean".to_string()));
                    continue;
                }
                (VarType::Int { lo, hi }, serde_json::Value::Number(n)) if n.as_i64().is_some() => {
                    let v = n.as_i64().unwrap_or(0);
                    if v < *lo || v > *hi {
                        errors.push(InputError::OutOfRange {
                            device: dname.clone(),
                            var: name.clone(),
                            value: v,
                            lo: *lo,
                            hi: *hi,
                        });
                        continue;
                    }
                    Value::Int(v)
                }
                (VarType::Int { lo, hi }, _) => {
                    errors.push(wrong(format!("an integer in {lo}..{hi}")));
                    continue;
                }
                (VarType::Enum { members }, serde_json::Value::String(s))
                    if members.contains(s) =>
                {
                    let i = members.iter().position(|m| m == s).unwrap_or(0);
                    Value::Int(i64::try_from(i).unwrap_or(0))
                }
                (VarType::Enum { members }, _) => {
                    errors.push(wrong(format!("one of {}", members.join(", "))));
                    continue;
                }
            };
            out.push((vi, value));
        }
        (errors.len() == before).then_some(out)
    }

    /// Fires the timers due at or before `t`, moment by moment, and moves to `t`.
    fn advance_to(&mut self, t: u64) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut last = None;
        while let Some(d) = self.next_deadline() {
            // Every moment moves time strictly forward: a fired timer's device changes
            // state (its timers restart after `d`), boundaries are taken after `now`.
            // Only at the end of time (deadlines saturate at `u64::MAX`) could a moment
            // come back; it is not run twice.
            if d > t || last == Some(d) {
                break;
            }
            last = Some(d);
            self.rt.now = d.max(self.rt.now);
            let (effects, fired) = self.fire_timers(d);
            if !effects.is_empty() || !fired.is_empty() {
                steps.push(Step {
                    t_ms: d,
                    effects,
                    fired,
                });
            }
        }
        self.rt.now = t.max(self.rt.now);
        steps
    }

    /// The effects of the timers due at `at`, and the rules that fired.
    fn fire_timers(&mut self, at: u64) -> (Vec<Effect>, Vec<usize>) {
        let mut m = Moment::new(self.site.rules.len());
        for di in 0..self.rt.devices.len() {
            let Some(d) = self.rt.devices.get(di) else {
                continue;
            };
            let Some(t) = self.site.ty(di) else { continue };
            // Due timers of this device; the shorter duration first (the verifier's
            // "the shorter fires first"), then declaration order.
            let mut due: Vec<(u64, usize, Timer)> = Vec::new();
            for &ti in t.out.get(d.state).into_iter().flatten() {
                match t.transitions.get(ti).map(|tr| &tr.trigger) {
                    Some(Trigger::When {
                        hold_ms: Some(h), ..
                    }) if d.holds.get(&ti).is_some_and(|s| s.saturating_add(*h) <= at) => {
                        due.push((*h, ti, Timer::Held));
                    }
                    Some(Trigger::Quiet { after_ms })
                        if quiet_base(d).saturating_add(*after_ms) <= at =>
                    {
                        due.push((*after_ms, ti, Timer::Quiet));
                    }
                    Some(Trigger::Silent { after_ms })
                        if silent_base(d).saturating_add(*after_ms) <= at =>
                    {
                        due.push((*after_ms, ti, Timer::Silent));
                    }
                    _ => {}
                }
            }
            // The shorter first, then the one declared first (K201 rejects equal
            // timers with different targets).
            if let Some(&(_, ti, timer)) = due.iter().min_by_key(|(ms, ti, _)| (*ms, *ti)) {
                let cause = match timer {
                    Timer::Held => Cause::Held { transition: ti },
                    Timer::Quiet => Cause::Quiet { transition: ti },
                    Timer::Silent => Cause::Silent { transition: ti },
                };
                self.take(di, ti, cause, at, &mut m);
            }
        }
        let minute = self.rt.clock.minute_of_day(at);
        let on_boundary = self.time_of_day(at).is_multiple_of(MINUTE_MS);
        // When the wall clock jumps (daylight saving), every window may have opened or
        // closed, whatever its boundaries: all that read the clock are evaluated.
        let jump = self.rt.clock.jumps_at(at);
        if (on_boundary && self.site.guard_boundaries.contains(&minute))
            || (jump && !self.site.guard_boundaries.is_empty())
        {
            for di in 0..self.rt.devices.len() {
                self.refresh_holds(di, at, &mut m);
            }
        }
        if on_boundary || jump {
            let rules: Vec<usize> = (0..self.site.rules.len())
                .filter(|&r| {
                    let b = &self.site.rules[r].boundaries;
                    b.contains(&minute) || (jump && !b.is_empty())
                })
                .collect();
            m.mark(&rules);
        }
        self.settle(at, &mut m);
        (m.effects, m.order)
    }

    fn holds(&self, e: &Expr, this: Option<usize>, m: &mut Moment) -> bool {
        let view = View { rt: &self.rt, this };
        match eval::holds(e, &view) {
            Ok(b) => b,
            Err(err) => {
                let whose = this.map_or("a rule".to_string(), |d| {
                    format!("a guard of `{}`", self.device_name(d))
                });
                m.effects.push(Effect::Fault {
                    message: format!("{whose}: {err}"),
                });
                false
            }
        }
    }

    /// Takes transition `ti` of device `di`.
    fn take(&mut self, di: usize, ti: usize, cause: Cause, at: u64, m: &mut Moment) {
        let Some(to) = self
            .site
            .ty(di)
            .and_then(|t| t.transitions.get(ti))
            .map(|tr| tr.to as usize)
        else {
            return;
        };
        self.enter(di, to, cause, at, m);
    }

    /// Moves a device into `to` (also when it is already there: a transition back into
    /// its own state restarts the state's timers).
    fn enter(&mut self, di: usize, to: usize, cause: Cause, at: u64, m: &mut Moment) {
        let Some(d) = self.rt.devices.get_mut(di).map(Arc::make_mut) else {
            return;
        };
        let from = d.state;
        d.state = to;
        d.entered_at = at;
        d.holds.clear();
        m.effects.push(Effect::StateChange {
            device: di,
            from,
            to,
            cause,
        });
        self.refresh_holds(di, at, m);
        if let Some(info) = self.site.devices.get(di) {
            m.mark(&info.rules_reading_state);
        }
    }

    /// Starts or cancels the holds of the current state's `when ... for` guards.
    fn refresh_holds(&mut self, di: usize, at: u64, m: &mut Moment) {
        let Some(t) = self.site.ty(di) else { return };
        let Some(state) = self.state(di) else { return };
        let held: Vec<(usize, bool)> = t
            .out
            .get(state)
            .into_iter()
            .flatten()
            .filter_map(|&ti| match t.transitions.get(ti).map(|tr| &tr.trigger) {
                Some(Trigger::When {
                    guard,
                    hold_ms: Some(_),
                }) => Some((ti, self.holds(guard, Some(di), m))),
                _ => None,
            })
            .collect();
        let Some(d) = self.rt.devices.get_mut(di).map(Arc::make_mut) else {
            return;
        };
        for (ti, now_holds) in held {
            if now_holds {
                d.holds.entry(ti).or_insert(at);
            } else {
                d.holds.remove(&ti);
            }
        }
    }

    fn reading(&mut self, di: usize, values: &[(usize, Value)], at: u64, m: &mut Moment) {
        let Some(info) = self.site.devices.get(di) else {
            return;
        };
        let Some(d) = self.rt.devices.get_mut(di).map(Arc::make_mut) else {
            return;
        };
        d.last_reading = Some(at);
        for &(vi, v) in values {
            if let Some(slot) = d.values.get_mut(vi) {
                *slot = Some(v);
            }
            let keep = info.window.get(vi).copied().unwrap_or(0);
            if let (Value::Int(x), Some(h)) = (v, d.history.get_mut(vi)) {
                if keep > 0 {
                    h.push_back(x);
                    while h.len() > keep {
                        h.pop_front();
                    }
                }
            }
        }
        m.mark(&info.rules_reading_values);
        // `when G` (no hold): the first, in declaration order, whose guard now holds.
        let Some(t) = self.site.ty(di) else { return };
        let state = self.state(di).unwrap_or(0);
        let mut fired = None;
        for &ti in t.out.get(state).into_iter().flatten() {
            if let Some(Trigger::When {
                guard,
                hold_ms: None,
            }) = t.transitions.get(ti).map(|tr| &tr.trigger)
            {
                if self.holds(guard, Some(di), m) {
                    fired = Some(ti);
                    break;
                }
            }
        }
        match fired {
            Some(ti) => self.take(di, ti, Cause::Reading { transition: ti }, at, m),
            None => self.refresh_holds(di, at, m),
        }
    }

    fn alert(&mut self, di: usize, alert: &str, origin: Origin, at: u64, m: &mut Moment) {
        let Some(info) = self.site.devices.get(di) else {
            return;
        };
        let Some(d) = self.rt.devices.get_mut(di).map(Arc::make_mut) else {
            return;
        };
        d.last_alert = Some(at);
        // Alerts are counted per device, whatever its state (docs/runtime.md).
        let keep = info.alert_window.get(alert).copied();
        let count_in = |d: &DeviceRt, within: u64| {
            d.alerts.get(alert).map_or(0, |h| {
                h.iter()
                    .filter(|&&t| t >= at.saturating_sub(within))
                    .count()
            })
        };
        if let Some((within, count)) = keep {
            // Only the newest `count` alerts within the longest window can complete a
            // count: a flood of alerts costs no memory.
            let h = d.alerts.entry(alert.to_string()).or_default();
            h.push_back(at);
            while h.len() > count || h.front().is_some_and(|&t| t < at.saturating_sub(within)) {
                h.pop_front();
            }
        }
        let Some(t) = self.site.ty(di) else { return };
        let Some(d) = self.rt.devices.get(di) else {
            return;
        };
        // Of the enabled transitions, the one met first: fewer alerts, then a longer
        // window (`on A` before `on A count 3 within 1m`), then declaration order.
        let mut best: Option<(u32, Reverse<u64>, usize)> = None;
        for &ti in t.out.get(d.state).into_iter().flatten() {
            let Some(Trigger::Alert { alert: a, count }) =
                t.transitions.get(ti).map(|tr| &tr.trigger)
            else {
                continue;
            };
            if a != alert {
                continue;
            }
            let (n, within) = count.unwrap_or((1, u64::MAX));
            let met = count.is_none() || count_in(d, within) >= n as usize;
            let key = (n, Reverse(within), ti);
            if met && best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        if let Some((_, _, ti)) = best {
            let cause = Cause::Alert {
                transition: ti,
                alert: alert.to_string(),
                origin,
            };
            self.take(di, ti, cause, at, m);
        }
    }

    fn operator(&mut self, di: usize, action: &str, at: u64, m: &mut Moment) {
        let Some(t) = self.site.ty(di) else { return };
        let Some(state) = self.state(di) else { return };
        let found = t.out.get(state).into_iter().flatten().copied().find(|&ti| {
            matches!(t.transitions.get(ti).map(|tr| &tr.trigger),
                Some(Trigger::Operator { action: a }) if a == action)
        });
        if let Some(ti) = found {
            let cause = Cause::Operator {
                transition: ti,
                action: action.to_string(),
            };
            self.take(di, ti, cause, at, m);
        }
    }

    /// Evaluates the rules that something they read has changed for, lowest index first,
    /// until none is left; each rule fires at most once per moment.
    fn settle(&mut self, at: u64, m: &mut Moment) {
        loop {
            let next = m
                .dirty
                .iter()
                .copied()
                .find(|&r| !m.fired.get(r).copied().unwrap_or(true));
            let Some(r) = next else { break };
            m.dirty.remove(&r);
            let Some(rule) = self.site.rules.get(r) else {
                continue;
            };
            let (cond, edge) = (rule.cond.clone(), rule.edge);
            let holds = self.holds(&cond, None, m);
            let before = self
                .rt
                .held
                .get_mut(r)
                .is_some_and(|h| std::mem::replace(h, holds));
            // A `when` rule fires whenever it holds; an `on` rule only when it has just
            // become true.
            if !holds || (edge && before) {
                continue;
            }
            if let Some(f) = m.fired.get_mut(r) {
                *f = true;
            }
            m.order.push(r);
            let actions = rule.actions.clone();
            let mut raised = Vec::new();
            for a in actions {
                match a {
                    Action::Goto { device, state } => {
                        let (di, to) = (device as usize, state as usize);
                        if self.state(di).is_some_and(|s| s != to) {
                            self.enter(di, to, Cause::Rule { rule: r }, at, m);
                        }
                    }
                    // Only up the posture order (states in declaration order, least
                    // restrictive first): in `to` or above it, nothing happens.
                    Action::Escalate { device, state } => {
                        let (di, to) = (device as usize, state as usize);
                        if self.state(di).is_some_and(|s| s < to) {
                            self.enter(di, to, Cause::Rule { rule: r }, at, m);
                        }
                    }
                    Action::Command { device, command } => m.effects.push(Effect::Command {
                        device: device as usize,
                        command,
                        rule: r,
                    }),
                    Action::Raise { device, alert } => {
                        m.effects.push(Effect::AlertRaised {
                            device: device as usize,
                            alert: alert.clone(),
                            rule: r,
                        });
                        raised.push((device as usize, alert));
                    }
                }
            }
            // The rule's actions are one step; the alerts it raised arrive after it.
            for (di, alert) in raised {
                self.alert(di, &alert, Origin::Rule { rule: r }, at, m);
            }
        }
    }
}

/// Quiet time counts from entering the state or the last alert, whichever is later.
fn quiet_base(d: &DeviceRt) -> u64 {
    d.last_alert.map_or(d.entered_at, |a| a.max(d.entered_at))
}

/// Silent time counts from entering the state or the last reading, whichever is later. A
/// device that never reported has been silent since it entered its state (since the
/// engine started, in its initial state).
fn silent_base(d: &DeviceRt) -> u64 {
    d.last_reading.map_or(d.entered_at, |r| r.max(d.entered_at))
}

/// The timers that can move a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Held,
    Quiet,
    Silent,
}

fn describe_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".to_string(),
        serde_json::Value::Bool(b) => format!("the boolean {b}"),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => format!("the integer {n}"),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::String(s) => format!("the string {s:?}"),
        serde_json::Value::Array(_) => "an array".to_string(),
        serde_json::Value::Object(_) => "an object".to_string(),
    }
}

#[cfg(test)]
mod suggest_tests {
    use super::suggest;

    #[test]
    fn a_difference_of_case_is_the_nearest_miss() {
        let topics = ["tele/tasmota_ABC123/LWT", "tele/tasmota_ABC123/SENSOR"];
        assert_eq!(
            suggest("tele/tasmota_ABC123/sensor", topics).as_deref(),
            Some("tele/tasmota_ABC123/SENSOR")
        );
        assert_eq!(suggest("camm", ["cam", "lock"]).as_deref(), Some("cam"));
        assert_eq!(suggest("zzzz", ["cam", "lock"]), None);
    }
}
