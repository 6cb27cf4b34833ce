//! Running a test: its trace replayed by [`crate::replay`] (the driver `simulate` uses),
//! each expectation evaluated when the replay reaches its line, after every line before
//! it and the timers due by its time.

use super::{Count, Coverage, Expect, Expectation, Test};
use crate::bundle::Bundle;
use crate::engine::{Effect, Engine};
use crate::replay::{cause_text, clock, Happened, Replay};
use serde::Serialize;

/// How a test went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub name: String,
    /// The header's line.
    pub line: usize,
    /// How many expectations it has.
    pub expectations: usize,
    /// Every expectation that failed, in line order (none: the test passed).
    pub failures: Vec<Failure>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// An expectation that did not hold, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The expectation's line.
    pub line: usize,
    pub t_ms: u64,
    /// The local time of day at `t_ms`.
    pub clock: String,
    /// What the line expects (`` `thermo` in `suspicious` ``).
    pub expected: String,
    /// What happened instead, and why (`` `thermo` is in `normal`, its initial state ``).
    pub actual: String,
}

/// What the replay did so far.
#[derive(Default)]
struct Record {
    /// Per device: its last state change (time, cause in words, from state).
    changed: Vec<Option<(u64, String, String)>>,
    /// (time, device, command, rule)
    commands: Vec<(u64, usize, String, usize)>,
    /// (time, rule)
    fired: Vec<(u64, usize)>,
}

/// Runs a test, adding what it exercised to `coverage`.
pub fn run(bundle: &Bundle, test: &Test, coverage: &mut Coverage) -> Outcome {
    let mut replay = Replay::new(bundle, &test.trace);
    coverage.here(replay.engine());
    let mut record = Record {
        changed: vec![None; replay.engine().device_count()],
        ..Record::default()
    };
    let mut failures = Vec::new();
    for x in &test.expectations {
        replay.to(x.line, x.t_ms, &mut |e, h| {
            observe(bundle, &mut record, coverage, e, h)
        });
        if let Some(f) = check(replay.engine(), x, &record) {
            failures.push(f);
        }
    }
    // The rest of the trace, for coverage.
    let end = replay.last_ms();
    replay.to(usize::MAX, end, &mut |e, h| {
        observe(bundle, &mut record, coverage, e, h)
    });
    Outcome {
        name: test.name.clone(),
        line: test.line,
        expectations: test.expectations.len(),
        failures,
    }
}

/// Notes what the replay did, for the expectations and the coverage.
fn observe(
    bundle: &Bundle,
    record: &mut Record,
    coverage: &mut Coverage,
    engine: &Engine,
    happened: Happened<'_>,
) {
    let Happened::Steps { steps, .. } = happened else {
        return;
    };
    for step in &steps {
        coverage.step(bundle, step);
        record
            .fired
            .extend(step.fired.iter().map(|&r| (step.t_ms, r)));
        for e in &step.effects {
            match e {
                Effect::StateChange {
                    device,
                    from,
                    cause,
                    ..
                } => {
                    if let Some(slot) = record.changed.get_mut(*device) {
                        *slot = Some((
                            step.t_ms,
                            cause_text(bundle, engine, *device, cause),
                            engine.state_name(*device, *from).to_string(),
                        ));
                    }
                }
                Effect::Command {
                    device,
                    command,
                    rule,
                } => record
                    .commands
                    .push((step.t_ms, *device, command.clone(), *rule)),
                Effect::AlertRaised { .. } | Effect::Fault { .. } => {}
            }
        }
    }
}

fn at(engine: &Engine, t_ms: u64) -> String {
    format!("{t_ms} ms ({})", clock(engine, t_ms))
}

/// `None` when the expectation holds.
fn check(engine: &Engine, x: &Expectation, record: &Record) -> Option<Failure> {
    let failure = |expected: String, actual: String| Failure {
        line: x.line,
        t_ms: x.t_ms,
        clock: clock(engine, x.t_ms),
        expected,
        actual,
    };
    let window = |since_ms: u64| {
        if since_ms == 0 {
            format!("by {}", at(engine, x.t_ms))
        } else {
            format!("from {} to {}", at(engine, since_ms), at(engine, x.t_ms))
        }
    };
    match &x.what {
        Expect::State { device, state } => {
            let now = engine.state(*device)?;
            if now == *state {
                return None;
            }
            let name = engine.device_name(*device);
            let why = match record.changed.get(*device).cloned().flatten() {
                Some((t, cause, from)) => {
                    format!(
                        "since {}: {from} -> {}  {cause}",
                        at(engine, t),
                        engine.state_name(*device, now)
                    )
                }
                None => "its initial state: nothing moved it".to_string(),
            };
            Some(failure(
                format!(
                    "`{name}` in `{}` at {}",
                    engine.state_name(*device, *state),
                    at(engine, x.t_ms)
                ),
                format!(
                    "`{name}` is in `{}`, {why}",
                    engine.state_name(*device, now)
                ),
            ))
        }
        Expect::Command {
            device,
            command,
            count,
            since_ms,
        } => {
            let sent: Vec<&(u64, usize, String, usize)> = record
                .commands
                .iter()
                .filter(|(t, d, c, _)| d == device && c == command && t >= since_ms)
                .collect();
            if count.holds(sent.len() as u64) {
                return None;
            }
            let name = format!("{}.{command}", engine.device_name(*device));
            let times: Vec<String> = sent
                .iter()
                .take(5)
                .map(|(t, _, _, r)| {
                    format!("at {} (rule {})", at(engine, *t), engine.rule_name(*r))
                })
                .collect();
            let actual = if sent.is_empty() {
                let others: Vec<String> = record
                    .commands
                    .iter()
                    .filter(|(t, d, _, _)| d == device && t >= since_ms)
                    .take(5)
                    .map(|(t, _, c, _)| format!("`{c}` at {}", at(engine, *t)))
                    .collect();
                if others.is_empty() {
                    format!(
                        "`{name}` was not sent, and no other command went to `{}`",
                        engine.device_name(*device)
                    )
                } else {
                    format!(
                        "`{name}` was not sent; `{}` was sent {}",
                        engine.device_name(*device),
                        others.join(", ")
                    )
                }
            } else {
                format!(
                    "`{name}` was sent {}: {}{}",
                    times_text(sent.len()),
                    times.join(", "),
                    more(sent.len())
                )
            };
            let expected = match count {
                Count::Never => format!("no command `{name}` {}", window(*since_ms)),
                _ => format!(
                    "command `{name}` sent {} {}",
                    count.text(),
                    window(*since_ms)
                ),
            };
            Some(failure(expected, actual))
        }
        Expect::Rule {
            rule,
            count,
            since_ms,
        } => {
            let fired: Vec<u64> = record
                .fired
                .iter()
                .filter(|(t, r)| r == rule && t >= since_ms)
                .map(|(t, _)| *t)
                .collect();
            if count.holds(fired.len() as u64) {
                return None;
            }
            let name = engine.rule_name(*rule);
            let actual = if fired.is_empty() {
                format!("rule `{name}` did not fire")
            } else {
                let times: Vec<String> = fired
                    .iter()
                    .take(5)
                    .map(|t| format!("at {}", at(engine, *t)))
                    .collect();
                format!(
                    "rule `{name}` fired {}: {}{}",
                    times_text(fired.len()),
                    times.join(", "),
                    more(fired.len())
                )
            };
            let expected = match count {
                Count::Never => format!("rule `{name}` not to fire {}", window(*since_ms)),
                _ => format!(
                    "rule `{name}` to fire {} {}",
                    count.text(),
                    window(*since_ms)
                ),
            };
            Some(failure(expected, actual))
        }
    }
}

fn times_text(n: usize) -> String {
    match n {
        1 => "once".to_string(),
        n => format!("{n} times"),
    }
}

fn more(n: usize) -> String {
    if n > 5 {
        format!(", and {} more", n - 5)
    } else {
        String::new()
    }
}
