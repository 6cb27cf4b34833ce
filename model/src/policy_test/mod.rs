//! Policy tests (`kalkic test`, `docs/tools/test.md`): scenarios of timed events with
//! expectations, in JSON Lines files next to the policy. A file holds one or more tests,
//! each a header line, then trace lines exactly as `kalki-shim simulate` reads them
//! ([`crate::trace`]) mixed with expectation lines:
//!
//! ```text
//! {"test": "an overheating thermostat is switched off"}
//! {"clock": "19:58"}                                        optional, first in its test
//! {"t_ms": 0, "device": "thermo", "reading": {"temperature": 45}}
//! {"t_ms": 61000, "expect": {"device": "thermo", "state": "suspicious"}}
//! {"expect": {"command": "thermo.set_off"}}
//! {"expect": {"rule": "main_overheat", "fired": false, "since_ms": 61000}}
//! ```
//!
//! Parsing ([`parse`]) checks everything against the bundle before anything runs: each
//! test's trace lines go through the trace checker (their codes: S201–S205, S1xx),
//! expectations name devices, states, commands and rules the bundle has (S212), and
//! every bad line is reported with its line number. Running ([`run`]) replays each test
//! through [`crate::replay`], the driver `simulate` uses, and evaluates each expectation
//! when the replay reaches its line: every line before it applied, then the timers due by
//! its time fired.

mod coverage;
mod run;

pub use coverage::{Coverage, CoverageReport, Tally};
pub use run::{run, Failure, Outcome};

use crate::bundle::Bundle;
use crate::codes;
use crate::engine::suggest;
use crate::manifest::Action;
use crate::trace::{self, line_spans, Trace};
use serde::Deserialize;
use std::collections::BTreeSet;

/// A checked test file.
#[derive(Debug, Clone)]
pub struct TestFile {
    pub tests: Vec<Test>,
}

/// One test: its trace and what it expects.
#[derive(Debug, Clone)]
pub struct Test {
    pub name: String,
    /// The header's line (1-based).
    pub line: usize,
    pub trace: Trace,
    /// In line order.
    pub expectations: Vec<Expectation>,
}

/// An expectation line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// 1-based.
    pub line: usize,
    /// When it is evaluated: its `t_ms`, or the time of the line before it in its test
    /// (0 for none).
    pub t_ms: u64,
    pub what: Expect,
}

/// What an expectation checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The device is in the state (indices into the manifest's devices and its type's
    /// states).
    State { device: usize, state: usize },
    /// A rule sent the device the command, as often as `count` says, between `since_ms`
    /// and the expectation's time.
    Command {
        device: usize,
        command: String,
        count: Count,
        since_ms: u64,
    },
    /// The rule fired (its condition held and its actions ran, whether or not they changed
    /// anything), as often as `count` says, between `since_ms` and the expectation's time.
    Rule {
        rule: usize,
        count: Count,
        since_ms: u64,
    },
}

/// How often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    AtLeastOnce,
    Never,
    Exactly(u64),
}

impl Count {
    pub fn holds(self, n: u64) -> bool {
        match self {
            Count::AtLeastOnce => n > 0,
            Count::Never => n == 0,
            Count::Exactly(k) => n == k,
        }
    }

    /// `at least once`, `never`, `exactly 2 times`.
    pub fn text(self) -> String {
        match self {
            Count::AtLeastOnce => "at least once".to_string(),
            Count::Never => "never".to_string(),
            Count::Exactly(1) => "exactly once".to_string(),
            Count::Exactly(k) => format!("exactly {k} times"),
        }
    }
}

/// A bad line of a test file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestError {
    /// 1-based; 0 for the file as a whole.
    pub line: usize,
    pub code: &'static str,
    pub message: String,
    pub help: Option<String>,
}

impl TestError {
    fn new(line: usize, code: &'static str, message: impl Into<String>) -> TestError {
        TestError {
            line,
            code,
            message: message.into(),
            help: None,
        }
    }
    fn help(mut self, help: impl Into<String>) -> TestError {
        self.help = Some(help.into());
        self
    }
}

const SHAPE_HELP: &str = "a test starts with `{\"test\": NAME}`; an expectation is `{\"t_ms\": N, \"expect\": E}` (`t_ms` optional) with E one of `{\"device\": D, \"state\": S}`, `{\"command\": \"DEVICE.COMMAND\"}` or `{\"rule\": R}`, the last two with `\"sent\"`/`\"fired\"`: false, or `\"times\": N`, and `\"since_ms\": N`; see docs/tools/test.md";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    test: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpectLine {
    t_ms: Option<u64>,
    expect: RawExpect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    device: Option<String>,
    state: Option<String>,
    command: Option<String>,
    rule: Option<String>,
    sent: Option<bool>,
    fired: Option<bool>,
    times: Option<u64>,
    since_ms: Option<u64>,
}

/// What a line of a test file is.
enum Kind {
    Header,
    Expect(usize),
    /// A trace line of the test open at it, if any.
    Trace(Option<usize>),
}

/// Parses a test file and checks it against the bundle: every bad line is reported, in
/// line order; a file with any is not run.
pub fn parse(text: &[u8], bundle: &Bundle) -> Result<TestFile, Vec<TestError>> {
    let spans = line_spans(text);
    let mut errors = Vec::new();
    let mut kinds: Vec<(usize, Kind)> = Vec::new();
    // (name, header line)
    let mut headers: Vec<(String, usize)> = Vec::new();
    let mut raw_expects: Vec<(usize, usize, RawExpectLine)> = Vec::new();
    for (i, &(start, len)) in spans.iter().enumerate() {
        let line = i + 1;
        let bytes = &text[start..start + len];
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let current = headers.len().checked_sub(1);
        let value = std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok());
        let object = value.as_ref().and_then(serde_json::Value::as_object);
        let shape = |e: serde_json::Error| {
            TestError::new(line, codes::TEST_SHAPE, e.to_string()).help(SHAPE_HELP)
        };
        match object {
            Some(o) if o.contains_key("test") => {
                match value.map(serde_json::from_value::<RawHeader>) {
                    Some(Ok(h)) if h.test.trim().is_empty() => errors.push(
                        TestError::new(line, codes::TEST_SHAPE, "a test's name is empty")
                            .help(SHAPE_HELP),
                    ),
                    Some(Ok(h)) => {
                        if let Some((_, first)) = headers.iter().find(|(n, _)| *n == h.test) {
                            errors.push(
                                TestError::new(
                                    line,
                                    codes::TEST_STRUCTURE,
                                    format!(
                                        "a second test named `{}` (the first on line {first})",
                                        h.test
                                    ),
                                )
                                .help("give each test of a file its own name"),
                            );
                        }
                        kinds.push((line, Kind::Header));
                        headers.push((h.test, line));
                    }
                    Some(Err(e)) => errors.push(shape(e)),
                    None => {}
                }
            }
            Some(o) if o.contains_key("expect") => {
                let Some(test) = current else {
                    errors.push(outside(line));
                    continue;
                };
                match value.map(serde_json::from_value::<RawExpectLine>) {
                    Some(Ok(raw)) => {
                        kinds.push((line, Kind::Expect(test)));
                        raw_expects.push((line, test, raw));
                    }
                    Some(Err(e)) => errors.push(shape(e)),
                    None => {}
                }
            }
            _ => {
                if current.is_none() {
                    errors.push(outside(line));
                }
                kinds.push((line, Kind::Trace(current)));
            }
        }
    }
    if headers.is_empty() && errors.is_empty() {
        errors.push(
            TestError::new(0, codes::TEST_STRUCTURE, "the file holds no test")
                .help("start a test with a line `{\"test\": NAME}`; see docs/tools/test.md"),
        );
    }

    // Each test's trace: the file with every other line blanked, so that the trace
    // checker's line numbers and byte offsets are the file's.
    let mut traces = Vec::with_capacity(headers.len());
    for t in 0..headers.len() {
        let mut masked = text.to_vec();
        let keep: BTreeSet<usize> = kinds
            .iter()
            .filter(|(_, k)| matches!(k, Kind::Trace(Some(x)) if *x == t))
            .map(|(line, _)| *line)
            .collect();
        for (i, &(start, len)) in spans.iter().enumerate() {
            if !keep.contains(&(i + 1)) {
                masked[start..start + len].fill(b' ');
            }
        }
        match trace::check_bundle(&masked, bundle) {
            Ok(trace) => traces.push(Some(trace)),
            Err(es) => {
                errors.extend(es.into_iter().map(|e| {
                    let prefix = format!("line {}: ", e.line);
                    let message = e.to_string();
                    let message = message.strip_prefix(&prefix).unwrap_or(&message);
                    let help = miette::Diagnostic::help(&e).map(|h| h.to_string());
                    TestError {
                        line: e.line,
                        code: e.code(),
                        message: message.to_string(),
                        help,
                    }
                }));
                traces.push(None);
            }
        }
    }

    // Expectations: names, times in order with the lines around them.
    let names = Names::of(bundle);
    let mut expectations: Vec<Vec<Expectation>> = vec![Vec::new(); headers.len()];
    for (line, test, raw) in raw_expects {
        let Some(trace) = traces.get(test).and_then(Option::as_ref) else {
            // Its trace is refused: its times are unknown, its names still checked.
            if let Err(e) = names.expect(line, raw.expect) {
                errors.push(e);
            }
            continue;
        };
        let before = line_times(trace)
            .filter(|(l, _)| *l < line)
            .map(|(_, t)| t)
            .chain(expectations[test].last().map(|e| e.t_ms))
            .max()
            .unwrap_or(0);
        let t_ms = match raw.t_ms {
            Some(t) if t < before => {
                errors.push(
                    TestError::new(
                        line,
                        codes::TRACE_ORDER,
                        format!("`t_ms` {t} is earlier than the line before ({before})"),
                    )
                    .help("lines are in the order of their `t_ms`, expectations too"),
                );
                continue;
            }
            Some(t) if t > trace::MAX_T_MS => {
                errors.push(
                    TestError::new(
                        line,
                        codes::TEST_SHAPE,
                        format!("`t_ms` {t} is beyond the longest trace, 366 days"),
                    )
                    .help(SHAPE_HELP),
                );
                continue;
            }
            Some(t) => t,
            None => before,
        };
        // A trace line after the expectation may not go back before it.
        if let Some((l, t)) = line_times(trace).find(|(l, t)| *l > line && *t < t_ms) {
            errors.push(
                TestError::new(
                    l,
                    codes::TRACE_ORDER,
                    format!("`t_ms` {t} is earlier than the expectation before it (line {line}, {t_ms})"),
                )
                .help("lines are in the order of their `t_ms`, expectations too"),
            );
        }
        match names.expect(line, raw.expect) {
            Ok(what) => expectations[test].push(Expectation { line, t_ms, what }),
            Err(e) => errors.push(e),
        }
    }
    for (t, (name, line)) in headers.iter().enumerate() {
        let has = kinds
            .iter()
            .any(|(_, k)| matches!(k, Kind::Expect(x) if *x == t));
        if !has {
            errors.push(
                TestError::new(
                    *line,
                    codes::TEST_STRUCTURE,
                    format!("test `{name}` expects nothing"),
                )
                .help("add an expectation: `{\"expect\": {\"device\": D, \"state\": S}}`, a command or a rule"),
            );
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.line);
        errors.dedup();
        return Err(errors);
    }
    let tests = headers
        .into_iter()
        .zip(traces)
        .zip(expectations)
        .filter_map(|(((name, line), trace), expectations)| {
            Some(Test {
                name,
                line,
                trace: trace?,
                expectations,
            })
        })
        .collect();
    Ok(TestFile { tests })
}

fn outside(line: usize) -> TestError {
    TestError::new(line, codes::TEST_STRUCTURE, "a line outside any test")
        .help("a test starts with a header line `{\"test\": NAME}`; the lines after it, up to the next header, are the test's")
}

/// The line and time of every line of a trace that the replay takes: events and refused
/// messages.
fn line_times(trace: &Trace) -> impl Iterator<Item = (usize, u64)> + '_ {
    trace
        .events
        .iter()
        .map(|e| (e.line, e.t_ms))
        .chain(trace.refused.iter().map(|r| (r.line, r.t_ms)))
}

/// The bundle's names that expectations use.
struct Names<'a> {
    bundle: &'a Bundle,
    devices: Vec<&'a str>,
    rules: Vec<&'a str>,
    /// Per device, the commands rules send it.
    commands: Vec<BTreeSet<&'a str>>,
}

impl<'a> Names<'a> {
    fn of(bundle: &'a Bundle) -> Names<'a> {
        let m = &bundle.manifest;
        let mut commands = vec![BTreeSet::new(); m.devices.len()];
        for r in &m.rules {
            for a in &r.actions {
                if let Action::Command { device, command } = a {
                    if let Some(c) = commands.get_mut(*device as usize) {
                        c.insert(command.as_str());
                    }
                }
            }
        }
        Names {
            bundle,
            devices: m.devices.iter().map(|d| d.name.as_str()).collect(),
            rules: m.rules.iter().map(|r| r.name.as_str()).collect(),
            commands,
        }
    }

    fn device(&self, line: usize, name: &str) -> Result<usize, TestError> {
        self.devices.iter().position(|d| *d == name).ok_or_else(|| {
            unknown(
                line,
                format!("the site has no device `{name}`"),
                name,
                self.devices.iter().copied(),
            )
        })
    }

    fn expect(&self, line: usize, raw: RawExpect) -> Result<Expect, TestError> {
        let shape = |m: &str| TestError::new(line, codes::TEST_SHAPE, m).help(SHAPE_HELP);
        let kinds = [
            raw.state.is_some(),
            raw.command.is_some(),
            raw.rule.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(shape(
                "an expectation checks one thing: a `state` (with its `device`), a `command` or a `rule`",
            ));
        }
        let count = |yes: Option<bool>, key: &str| match (yes, raw.times) {
            (Some(_), Some(_)) => Err(shape(&format!("`{key}` or `times`, not both"))),
            (Some(true) | None, None) => Ok(Count::AtLeastOnce),
            (Some(false), None) => Ok(Count::Never),
            (None, Some(0)) => Ok(Count::Never),
            (None, Some(n)) => Ok(Count::Exactly(n)),
        };
        if let Some(state) = raw.state {
            if raw.sent.is_some()
                || raw.fired.is_some()
                || raw.times.is_some()
                || raw.since_ms.is_some()
            {
                return Err(shape(
                    "a state expectation has only `device` and `state`: a state holds at one time",
                ));
            }
            let name = raw
                .device
                .ok_or_else(|| shape("a `state` needs its `device`"))?;
            let device = self.device(line, &name)?;
            let states = self
                .bundle
                .device_type(device)
                .map(|t| t.states.as_slice())
                .unwrap_or_default();
            let state_ix = states.iter().position(|s| *s == state).ok_or_else(|| {
                unknown(
                    line,
                    format!("`{name}` has no state `{state}`"),
                    &state,
                    states.iter().map(String::as_str),
                )
            })?;
            return Ok(Expect::State {
                device,
                state: state_ix,
            });
        }
        if raw.device.is_some() {
            return Err(shape(
                "`device` goes with a `state`; a command is written `\"command\": \"DEVICE.COMMAND\"`",
            ));
        }
        let since_ms = raw.since_ms.unwrap_or(0);
        if let Some(command) = raw.command {
            if raw.fired.is_some() {
                return Err(shape("a command is `sent` (or not), a rule `fired`"));
            }
            let count = count(raw.sent, "sent")?;
            let Some((dev, cmd)) = command.rsplit_once('.') else {
                return Err(shape(&format!(
                    "`{command}` is not `DEVICE.COMMAND`: name the device the command goes to"
                )));
            };
            let device = self.device(line, dev)?;
            let sent = self.commands.get(device).cloned().unwrap_or_default();
            if !sent.contains(cmd) {
                let e = TestError::new(
                    line,
                    codes::TEST_UNKNOWN,
                    format!("no rule sends `{dev}` the command `{cmd}`"),
                );
                return Err(match suggest(cmd, sent.iter().copied()) {
                    Some(s) => e.help(format!("did you mean `{dev}.{s}`?")),
                    None if sent.is_empty() => e.help(format!("no rule sends `{dev}` a command")),
                    None => e.help(format!(
                        "rules send `{dev}`: `{}`",
                        sent.iter().copied().collect::<Vec<_>>().join("`, `")
                    )),
                });
            }
            return Ok(Expect::Command {
                device,
                command: cmd.to_string(),
                count,
                since_ms,
            });
        }
        let name = raw.rule.unwrap_or_default();
        if raw.sent.is_some() {
            return Err(shape("a rule `fired` (or not), a command is `sent`"));
        }
        let count = count(raw.fired, "fired")?;
        let rule = self.rules.iter().position(|r| *r == name).ok_or_else(|| {
            unknown(
                line,
                format!("the site has no rule `{name}`"),
                &name,
                self.rules.iter().copied(),
            )
        })?;
        Ok(Expect::Rule {
            rule,
            count,
            since_ms,
        })
    }
}

fn unknown<'a>(
    line: usize,
    message: String,
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> TestError {
    let e = TestError::new(line, codes::TEST_UNKNOWN, message);
    match suggest(name, candidates) {
        Some(s) => e.help(format!("did you mean `{s}`?")),
        None => e,
    }
}
