//! Replaying a checked trace through the engine on a virtual clock: the one driver of
//! `kalki-shim simulate` and `kalkic test`. Events and MQTT messages the replay refuses
//! are taken in line order, each at its time; timers fire between them at their own
//! times ([`Engine::handle`]). A caller may stop the replay at any line and time to look
//! at the engine (a test's expectation), then go on: looking changes nothing, since
//! firing the timers due by a time before the next event is what handling that event
//! does first.
//!
//! Also the words for why a device changed state ([`cause_text`]), shared by `simulate`'s
//! timeline, the shim's journal and API, and `kalkic test`'s explanations.

use crate::bundle::Bundle;
use crate::engine::{Cause, Config, Engine, Input, InputError, Origin, Step};
use crate::trace::{RefusedMessage, Trace};

/// What the replay met, in order.
#[derive(Debug)]
pub enum Happened<'t> {
    /// Steps of the engine: the timers due before an event and the event's own moment, or
    /// time passing. `topic`: the event was an MQTT message on that topic.
    Steps {
        steps: Vec<Step>,
        topic: Option<&'t str>,
    },
    /// A message refused by its binding or the engine, at its time (the timers due by then
    /// came before it as [`Happened::Steps`]). It changed nothing.
    Refused(&'t RefusedMessage),
    /// The engine refused an event of a checked trace (it never does: the trace was checked
    /// against the same engine); reported in place rather than dropped.
    Fault {
        line: usize,
        t_ms: u64,
        errors: Vec<InputError>,
    },
}

/// A replay in progress.
pub struct Replay<'t> {
    trace: &'t Trace,
    engine: Engine,
    next_event: usize,
    next_refused: usize,
}

impl<'t> Replay<'t> {
    /// Every device in its initial state at `t_ms` 0, on the trace's clock.
    pub fn new(bundle: &Bundle, trace: &'t Trace) -> Replay<'t> {
        let config = Config {
            day_offset_ms: trace.clock_ms,
            zone: trace.zone.clone(),
        };
        Replay {
            trace,
            engine: Engine::new(bundle, config, 0),
            next_event: 0,
            next_refused: 0,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The time of the trace's last event or refused message (0 for none).
    pub fn last_ms(&self) -> u64 {
        let events = self.trace.events.last().map(|e| e.t_ms);
        let refused = self.trace.refused.last().map(|r| r.t_ms);
        events.into_iter().chain(refused).max().unwrap_or(0)
    }

    /// Replays every event and refused message on a line before `line`, in line order,
    /// then lets time pass to `t_ms` (never back): the timers due by then fire.
    pub fn to(&mut self, line: usize, t_ms: u64, on: &mut dyn FnMut(&Engine, Happened<'t>)) {
        let trace = self.trace;
        loop {
            let event = trace.events.get(self.next_event).filter(|e| e.line < line);
            let refused = trace
                .refused
                .get(self.next_refused)
                .filter(|r| r.line < line);
            match (event, refused) {
                (Some(e), r) if r.is_none_or(|r| e.line < r.line) => {
                    self.next_event += 1;
                    match self.engine.handle(e.t_ms, &e.input) {
                        Ok(steps) => on(
                            &self.engine,
                            Happened::Steps {
                                steps,
                                topic: e.topic.as_deref(),
                            },
                        ),
                        Err(errors) => on(
                            &self.engine,
                            Happened::Fault {
                                line: e.line,
                                t_ms: e.t_ms,
                                errors,
                            },
                        ),
                    }
                }
                (_, Some(r)) => {
                    self.next_refused += 1;
                    // Time passes to the message (the timers due fire, as they would under
                    // `run`), and it changes nothing.
                    self.tick(r.t_ms, on);
                    on(&self.engine, Happened::Refused(r));
                }
                _ => break,
            }
        }
        self.tick(t_ms, on);
    }

    fn tick(&mut self, t_ms: u64, on: &mut dyn FnMut(&Engine, Happened<'t>)) {
        let t = t_ms.max(self.engine.now());
        if let Ok(steps) = self.engine.handle(t, &Input::Tick) {
            if !steps.is_empty() {
                on(&self.engine, Happened::Steps { steps, topic: None });
            }
        }
    }
}

/// Why a device changed state, as one line: the trigger as written with where its alert
/// came from (`on port_scan count 3 within 1m (from ids)`), or `rule NAME`. The text
/// `simulate` prints, for journals, status reports and test failures.
pub fn cause_text(bundle: &Bundle, engine: &Engine, device: usize, cause: &Cause) -> String {
    let (trigger, source, raised_by, rule) = cause_parts(bundle, engine, device, cause);
    why(&trigger, &source, &raised_by, &rule)
}

/// (trigger as written, source µmbox, raising rule, moving rule)
pub type CauseParts = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A cause in parts: the trigger as written, the µmbox that sent the alert, the rule that
/// raised it, the rule that moved the device.
pub fn cause_parts(bundle: &Bundle, engine: &Engine, device: usize, cause: &Cause) -> CauseParts {
    let trigger = |ti: usize| {
        let names = bundle.names(bundle.device_type_index(device));
        engine
            .transition(device, ti)
            .map(|t| names.trigger(&t.trigger))
    };
    let rule_name = |r: &usize| Some(engine.rule_name(*r).to_string());
    match cause {
        Cause::Alert {
            transition,
            origin: Origin::Input { source },
            ..
        } => (trigger(*transition), source.clone(), None, None),
        Cause::Alert {
            transition,
            origin: Origin::Rule { rule },
            ..
        } => (trigger(*transition), None, rule_name(rule), None),
        Cause::Reading { transition }
        | Cause::Held { transition }
        | Cause::Quiet { transition }
        | Cause::Silent { transition }
        | Cause::Operator { transition, .. } => (trigger(*transition), None, None, None),
        Cause::Rule { rule } => (None, None, None, rule_name(rule)),
    }
}

/// The parts of a cause as one line ([`cause_text`]).
pub fn why(
    trigger: &Option<String>,
    source: &Option<String>,
    raised_by: &Option<String>,
    rule: &Option<String>,
) -> String {
    match (trigger, rule) {
        (Some(tr), _) => {
            let from = match (source, raised_by) {
                (Some(s), _) => format!(" (from {s})"),
                (None, Some(r)) => format!(" (raised by rule {r})"),
                (None, None) => String::new(),
            };
            format!("{tr}{from}")
        }
        (None, Some(r)) => format!("rule {r}"),
        (None, None) => String::new(),
    }
}

/// The local time of day at `t_ms`, `HH:MM:SS` (with `.mmm` when not on a whole second),
/// in a time zone followed by its offset then (`01:59:00+01:00`).
pub fn clock(engine: &Engine, t_ms: u64) -> String {
    let tod = engine.time_of_day(t_ms);
    let (h, m, s, ms) = (
        tod / 3_600_000,
        tod / 60_000 % 60,
        tod / 1000 % 60,
        tod % 1000,
    );
    let offset = engine.clock().offset_text(t_ms).unwrap_or_default();
    if ms == 0 {
        format!("{h:02}:{m:02}:{s:02}{offset}")
    } else {
        format!("{h:02}:{m:02}:{s:02}.{ms:03}{offset}")
    }
}
