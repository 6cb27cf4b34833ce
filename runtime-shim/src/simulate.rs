//! `kalki-shim simulate`: replays a trace on a virtual clock through the engine, firing
//! timers between events, and renders the timeline of what happened as text or JSON
//! lines. Pure: the binary reads the files and prints the result.
//!
//! MQTT messages are replayed as `kalki-shim run` takes them from a broker: a refused one
//! changes nothing and is shown where it came ([`What::Refused`]); one on a topic no
//! device binds is not shown; the end of the output counts them.

use crate::bundle::Bundle;
use crate::engine::{Cause, Effect, Engine, Step};
use crate::trace::{self, Messages, Trace, TraceError};
pub use kalki_model::replay::cause_text;
use kalki_model::replay::{cause_parts, clock, why, Happened, Replay};
use serde::Serialize;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub t_ms: u64,
    /// Local time of day, `HH:MM:SS` (with `.mmm` when not on a whole second).
    pub clock: String,
    pub device: String,
    #[serde(flatten)]
    pub what: What,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// A state change: by a transition (`trigger` as written, with where its alert came
    /// from) or by a rule.
    State {
        from: String,
        to: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        trigger: Option<String>,
        /// The µmbox that sent the alert.
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        /// The rule whose `raise` sent the alert.
        #[serde(skip_serializing_if = "Option::is_none")]
        raised_by: Option<String>,
        /// The rule whose `dev -> state` moved the device.
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        /// The MQTT topic of the message whose reading took a `when` transition.
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
    },
    Command {
        command: String,
        rule: String,
    },
    Raise {
        alert: String,
        rule: String,
    },
    Fault {
        message: String,
    },
    /// An MQTT message refused by its binding (S12x) or the engine (S1xx): one entry a
    /// problem. It changed nothing.
    Refused {
        code: String,
        topic: String,
        reason: String,
        /// The trace line of the message.
        line: usize,
    },
}

/// The whole replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeline {
    pub entries: Vec<Entry>,
    /// When the replay stopped.
    pub end_ms: u64,
    /// Every device's state at the end, in site order.
    pub states: Vec<(String, String)>,
    /// What became of the trace's MQTT messages; `None` if it has none.
    pub messages: Option<Messages>,
}

/// Parses and checks a trace against a bundle (every bad line reported), then replays it.
/// The replay stops at the last event, or at `until_ms` if that is later. With `zone` (an
/// IANA name) the clock is that zone's wall clock from the trace's first timestamp on.
pub fn simulate(
    bundle: &Bundle,
    text: &[u8],
    until_ms: Option<u64>,
    zone: Option<&str>,
) -> Result<Timeline, Vec<TraceError>> {
    let trace = trace::check_bundle_in(text, bundle, zone)?;
    Ok(replay(bundle, &trace, until_ms))
}

/// Replays a checked trace ([`kalki_model::replay`], the driver `kalkic test` shares).
pub fn replay(bundle: &Bundle, trace: &Trace, until_ms: Option<u64>) -> Timeline {
    let mut run = Replay::new(bundle, trace);
    let end_ms = until_ms.map_or(run.last_ms(), |u| u.max(run.last_ms()));
    let mut entries = Vec::new();
    run.to(usize::MAX, end_ms, &mut |engine, happened| match happened {
        Happened::Steps { steps, topic } => entries.extend(
            steps
                .iter()
                .flat_map(|s| describe(bundle, engine, s, topic)),
        ),
        Happened::Refused(r) => entries.extend(r.problems.iter().map(|p| Entry {
            t_ms: r.t_ms,
            clock: clock(engine, r.t_ms),
            device: r.device.clone(),
            what: What::Refused {
                code: p.code.to_string(),
                topic: r.topic.clone(),
                reason: p.reason.clone(),
                line: r.line,
            },
        })),
        // A checked trace is accepted; should the engine disagree, say so in place.
        Happened::Fault { line, t_ms, errors } => {
            entries.extend(errors.into_iter().map(|e| Entry {
                t_ms,
                clock: clock(engine, t_ms),
                device: String::new(),
                what: What::Fault {
                    message: format!("line {line}: {e}"),
                },
            }))
        }
    });
    let engine = run.engine();
    let states = (0..engine.device_count())
        .map(|d| {
            let s = engine.state(d).unwrap_or(0);
            (
                engine.device_name(d).to_string(),
                engine.state_name(d, s).to_string(),
            )
        })
        .collect();
    Timeline {
        entries,
        end_ms,
        states,
        messages: (trace.messages.received > 0).then(|| trace.messages.clone()),
    }
}

/// The entries of a step. `topic`: the step is an MQTT message's (or a timer's before it),
/// and a `when` transition its reading took (the only [`Cause::Reading`]; timers take `for`,
/// `quiet` and `silent`) is shown as the message's.
fn describe(bundle: &Bundle, engine: &Engine, step: &Step, topic: Option<&str>) -> Vec<Entry> {
    let at = |device: usize, what: What| Entry {
        t_ms: step.t_ms,
        clock: clock(engine, step.t_ms),
        device: engine.device_name(device).to_string(),
        what,
    };
    step.effects
        .iter()
        .map(|e| match e {
            Effect::StateChange {
                device,
                from,
                to,
                cause,
            } => {
                let from = engine.state_name(*device, *from).to_string();
                let to = engine.state_name(*device, *to).to_string();
                let (trigger, source, raised_by, rule) =
                    cause_parts(bundle, engine, *device, cause);
                let topic = topic
                    .filter(|_| matches!(cause, Cause::Reading { .. }))
                    .map(str::to_string);
                let what = What::State {
                    from,
                    to,
                    trigger,
                    source,
                    raised_by,
                    rule,
                    topic,
                };
                at(*device, what)
            }
            Effect::Command {
                device,
                command,
                rule,
            } => at(
                *device,
                What::Command {
                    command: command.clone(),
                    rule: engine.rule_name(*rule).to_string(),
                },
            ),
            Effect::AlertRaised {
                device,
                alert,
                rule,
            } => at(
                *device,
                What::Raise {
                    alert: alert.clone(),
                    rule: engine.rule_name(*rule).to_string(),
                },
            ),
            Effect::Fault { message } => Entry {
                t_ms: step.t_ms,
                clock: clock(engine, step.t_ms),
                device: String::new(),
                what: What::Fault {
                    message: message.clone(),
                },
            },
        })
        .collect()
}

/// The timeline as aligned text, one line an entry, then the final states.
pub fn render_text(t: &Timeline) -> String {
    let width = t
        .entries
        .iter()
        .map(|e| e.device.chars().count())
        .chain(t.states.iter().map(|(d, _)| d.chars().count()))
        .chain(std::iter::once("device".len()))
        .max()
        .unwrap_or(6);
    let tw = t
        .entries
        .iter()
        .map(|e| e.t_ms.to_string().len())
        .chain([t.end_ms.to_string().len(), "t_ms".len()])
        .max()
        .unwrap_or(4);
    // `HH:MM:SS`, or `HH:MM:SS.mmm` (a capture's times have milliseconds).
    let cw = t
        .entries
        .iter()
        .map(|e| e.clock.len())
        .chain([8])
        .max()
        .unwrap_or(8);
    let mut out = format!(
        "{:>tw$}  {:<cw$}  {:<width$}  what\n",
        "t_ms", "clock", "device"
    );
    for e in &t.entries {
        let what = match &e.what {
            What::State {
                from,
                to,
                trigger,
                source,
                raised_by,
                rule,
                topic,
            } => {
                let why = why(trigger, source, raised_by, rule);
                match topic {
                    Some(t) => format!("{from} -> {to}  {why} (from topic {t})"),
                    None => format!("{from} -> {to}  {why}"),
                }
            }
            What::Command { command, rule } => format!("command {command}  (rule {rule})"),
            What::Raise { alert, rule } => format!("raise {alert}  (rule {rule})"),
            What::Fault { message } => format!("fault: {message}"),
            What::Refused {
                code,
                topic,
                reason,
                line,
            } => format!("refused {code} message on {topic}: {reason}  (line {line})"),
        };
        out.push_str(&format!(
            "{:>tw$}  {:<cw$}  {:<width$}  {what}\n",
            e.t_ms, e.clock, e.device
        ));
    }
    let states: Vec<String> = t.states.iter().map(|(d, s)| format!("{d} {s}")).collect();
    out.push_str(&format!("end at {} ms: {}\n", t.end_ms, states.join(", ")));
    if let Some(m) = &t.messages {
        out.push_str(&messages_text(m, t));
    }
    out
}

/// `messages: 6 received, 3 applied, 1 refused (S121 1), 1 retained ignored, 1 unbound
/// ignored (S204)`, then a note for every unbound topic that resembles a bound one.
fn messages_text(m: &Messages, t: &Timeline) -> String {
    let refused_messages = t
        .entries
        .iter()
        .filter_map(|e| match &e.what {
            What::Refused { line, .. } => Some(*line),
            _ => None,
        })
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let by_code: Vec<String> = m.refused.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let refused = if by_code.is_empty() {
        format!("{refused_messages} refused")
    } else {
        format!("{refused_messages} refused ({})", by_code.join(", "))
    };
    let mut out = format!(
        "messages: {} received, {} applied, {refused}, {} retained ignored, {} unbound ignored ({})\n",
        m.received,
        m.applied,
        m.retained_ignored,
        m.unbound,
        crate::codes::TRACE_UNBOUND_TOPIC,
    );
    for (topic, n, near) in &m.near_misses {
        out.push_str(&format!(
            "note: {n} message{} on {topic:?} ignored: no device binds it; did you mean {near:?}?\n",
            if *n == 1 { "" } else { "s" }
        ));
    }
    out
}

/// The timeline as JSON lines: one object an entry, then `{"end_ms": .., "states": {..}}`,
/// with `"messages": {..}` ([`Messages`]) if the trace has MQTT messages.
pub fn render_json(t: &Timeline) -> String {
    let mut out = String::new();
    for e in &t.entries {
        out.push_str(&serde_json::to_string(e).unwrap_or_default());
        out.push('\n');
    }
    let states: serde_json::Map<String, serde_json::Value> = t
        .states
        .iter()
        .map(|(d, s)| (d.clone(), serde_json::Value::String(s.clone())))
        .collect();
    let mut end = serde_json::json!({ "end_ms": t.end_ms, "states": states });
    if let Some(m) = &t.messages {
        end["messages"] = serde_json::to_value(m).unwrap_or_default();
    }
    out.push_str(&end.to_string());
    out.push('\n');
    out
}
