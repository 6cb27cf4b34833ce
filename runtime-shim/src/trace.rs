//! Trace files for `kalki-shim simulate`: timestamped input events, one JSON object a
//! line (JSON Lines). The schema is in `docs/runtime.md`:
//!
//! ```text
//! {"clock": "19:58"}                                           optional first line
//! {"t_ms": 0, "device": "thermo", "reading": {"temperature": 21, "mode": "heat"}}
//! {"t_ms": 5000, "device": "hall_cam", "alert": "port_scan", "source": "ids"}
//! {"t_ms": 9000, "device": "hall_cam", "operator": "reset"}
//! {"t_ms": 700000}                                             time passes
//! ```
//!
//! Parsing checks every line (syntax, fields, order of times) and then every event
//! against the bundle, and reports every bad line with its line number; a trace with any
//! bad line is not replayed at all.

use crate::codes;
use crate::engine::{Config, Engine, Input, InputError, DAY_MS, MAX_STEP_MS};
use miette::{Diagnostic, LabeledSpan, SourceSpan};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// The longest trace: a year and a day, the engine's longest step
/// ([`crate::engine::MAX_STEP_MS`]).
pub const MAX_T_MS: u64 = MAX_STEP_MS;

/// A parsed trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The local time of day at `t_ms` 0, in milliseconds since midnight.
    pub clock_ms: u64,
    pub events: Vec<Event>,
}

/// One event line.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// 1-based.
    pub line: usize,
    pub t_ms: u64,
    pub input: Input,
}

/// A bad trace line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// 1-based.
    pub line: usize,
    /// The line's bytes in the trace.
    pub span: (usize, usize),
    pub kind: TraceErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceErrorKind {
    /// Not a JSON object.
    Syntax(String),
    /// Missing, unknown or ill-typed fields.
    Shape(String),
    /// Earlier than the line before.
    Order { t_ms: u64, previous: u64 },
    /// Refused by the engine.
    Input(InputError),
}

impl TraceError {
    pub fn code(&self) -> &'static str {
        match &self.kind {
            TraceErrorKind::Syntax(_) => codes::TRACE_SYNTAX,
            TraceErrorKind::Shape(_) => codes::TRACE_SHAPE,
            TraceErrorKind::Order { .. } => codes::TRACE_ORDER,
            TraceErrorKind::Input(e) => e.code(),
        }
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match &self.kind {
            TraceErrorKind::Syntax(m) | TraceErrorKind::Shape(m) => write!(f, "{m}"),
            TraceErrorKind::Order { t_ms, previous } => write!(
                f,
                "`t_ms` {t_ms} is earlier than the line before ({previous})"
            ),
            TraceErrorKind::Input(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TraceError {}

impl Diagnostic for TraceError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(TraceError::code(self)))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match &self.kind {
            TraceErrorKind::Input(e) => e.help(),
            TraceErrorKind::Order { .. } => Some(Box::new("lines are in the order of their `t_ms`")),
            TraceErrorKind::Syntax(_) | TraceErrorKind::Shape(_) => Some(Box::new(
                "a line is `{\"t_ms\": N, \"device\": D, EVENT}` with EVENT one of `\"reading\": {...}`, `\"alert\": A` (and `\"source\": U`), `\"operator\": \"reset\"`, or nothing (time passes); see docs/runtime.md",
            )),
        }
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = SourceSpan::new(self.span.0.into(), self.span.1);
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some("this line".to_string()),
            span,
        ))))
    }
}

/// A line as written. Every field optional, unknown ones refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    t_ms: Option<u64>,
    clock: Option<String>,
    device: Option<String>,
    reading: Option<BTreeMap<String, serde_json::Value>>,
    alert: Option<String>,
    source: Option<String>,
    operator: Option<String>,
}

/// `HH:MM` as milliseconds since midnight.
fn time_of_day(text: &str) -> Option<u64> {
    let (h, m) = text.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || m.len() != 2 || !digits(m) {
        return None;
    }
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h * 60 + m) * 60_000 % DAY_MS)
}

/// Parses a trace: syntax, fields and order (not yet the events' meaning; see [`check`]).
pub fn parse(text: &str) -> Result<Trace, Vec<TraceError>> {
    let (trace, errors) = parse_lines(text);
    if errors.is_empty() {
        Ok(trace)
    } else {
        Err(errors)
    }
}

/// The well-formed lines, and the errors of the others.
fn parse_lines(text: &str) -> (Trace, Vec<TraceError>) {
    let mut errors = Vec::new();
    let mut trace = Trace {
        clock_ms: 0,
        events: Vec::new(),
    };
    let mut previous: Option<u64> = None;
    let mut first = true;
    let mut offset = 0;
    for (i, raw_line) in text.split_inclusive('\n').enumerate() {
        let line = i + 1;
        let start = offset;
        offset += raw_line.len();
        let content = raw_line.trim_end_matches(['\n', '\r']);
        if content.trim().is_empty() {
            continue;
        }
        let err = |kind| TraceError {
            line,
            span: (start, content.len()),
            kind,
        };
        let value: serde_json::Value = match serde_json::from_str(content) {
            Ok(v) => v,
            Err(e) => {
                errors.push(err(TraceErrorKind::Syntax(format!("not JSON: {e}"))));
                first = false;
                continue;
            }
        };
        if !value.is_object() {
            errors.push(err(TraceErrorKind::Syntax("not a JSON object".to_string())));
            first = false;
            continue;
        }
        let raw: Raw = match serde_json::from_value(value) {
            Ok(r) => r,
            Err(e) => {
                errors.push(err(TraceErrorKind::Shape(e.to_string())));
                first = false;
                continue;
            }
        };
        let is_first = std::mem::replace(&mut first, false);
        match line_event(raw, is_first) {
            Ok(Line::Header(clock_ms)) => trace.clock_ms = clock_ms,
            Ok(Line::Event(t_ms, input)) => {
                if let Some(p) = previous.filter(|&p| t_ms < p) {
                    errors.push(err(TraceErrorKind::Order { t_ms, previous: p }));
                    continue;
                }
                previous = Some(t_ms);
                trace.events.push(Event { line, t_ms, input });
            }
            Err(m) => errors.push(err(TraceErrorKind::Shape(m))),
        }
    }
    (trace, errors)
}

enum Line {
    Header(u64),
    Event(u64, Input),
}

fn line_event(raw: Raw, first: bool) -> Result<Line, String> {
    if let Some(clock) = &raw.clock {
        let only = raw.t_ms.is_none()
            && raw.device.is_none()
            && raw.reading.is_none()
            && raw.alert.is_none()
            && raw.source.is_none()
            && raw.operator.is_none();
        if !first || !only {
            return Err(
                "`clock` belongs in a header line of its own, the first line of the trace"
                    .to_string(),
            );
        }
        return time_of_day(clock)
            .map(Line::Header)
            .ok_or_else(|| format!("`clock` is `{clock}`, not a time of day `HH:MM`"));
    }
    let t_ms = raw
        .t_ms
        .ok_or_else(|| "missing `t_ms` (milliseconds since the start of the trace)".to_string())?;
    if t_ms > MAX_T_MS {
        return Err(format!(
            "`t_ms` {t_ms} is beyond the longest trace, 366 days ({MAX_T_MS} ms)"
        ));
    }
    let kinds = [
        raw.reading.is_some(),
        raw.alert.is_some(),
        raw.operator.is_some(),
    ];
    let input = match (raw.device, raw.reading, raw.alert, raw.operator) {
        _ if kinds.iter().filter(|k| **k).count() > 1 => {
            return Err("one event a line: `reading`, `alert` or `operator`".to_string())
        }
        (None, None, None, None) => Input::Tick,
        (None, ..) => return Err("missing `device`".to_string()),
        (Some(_), None, None, None) => {
            return Err("a `device` but no event: add `reading`, `alert` or `operator`".to_string())
        }
        (Some(device), Some(values), None, None) => Input::Reading { device, values },
        (Some(device), None, Some(alert), None) => Input::Alert {
            device,
            alert,
            source: raw.source.clone(),
        },
        (Some(device), None, None, Some(action)) => Input::Operator { device, action },
        _ => return Err("one event a line: `reading`, `alert` or `operator`".to_string()),
    };
    if raw.source.is_some() && !matches!(input, Input::Alert { .. }) {
        return Err("`source` goes with an `alert`".to_string());
    }
    Ok(Line::Event(t_ms, input))
}

/// Parses a trace and checks every event against the site of `engine` (left unchanged).
/// The events are applied in order to a fresh engine of the site on the trace's clock, as
/// `simulate` replays them, so each is checked against the time and states it will meet
/// (an alert's `source` must be deployed in its device's state then); a refused line is
/// left out for the lines after it. Reports every bad line, in line order.
pub fn check(text: &str, engine: &Engine) -> Result<Trace, Vec<TraceError>> {
    let (trace, mut errors) = parse_lines(text);
    let spans = line_spans(text);
    let config = Config {
        day_offset_ms: trace.clock_ms,
    };
    let mut ahead = engine.restart(config, 0);
    for ev in &trace.events {
        let t = ev.t_ms.max(ahead.now());
        if let Err(es) = ahead.handle(t, &ev.input) {
            let span = spans.get(ev.line - 1).copied().unwrap_or((0, 0));
            errors.extend(es.into_iter().map(|e| TraceError {
                line: ev.line,
                span,
                kind: TraceErrorKind::Input(e),
            }));
        }
    }
    if errors.is_empty() {
        Ok(trace)
    } else {
        errors.sort_by_key(|e| e.line);
        Err(errors)
    }
}

/// Byte offset and length of every line, line breaks excluded.
fn line_spans(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut offset = 0;
    for l in text.split_inclusive('\n') {
        out.push((offset, l.trim_end_matches(['\n', '\r']).len()));
        offset += l.len();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn errors(text: &str) -> Vec<(usize, &'static str, String)> {
        parse(text)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.line, e.code(), e.to_string()))
            .collect()
    }

    #[test]
    fn every_kind_of_line() {
        let t = parse(concat!(
            "{\"clock\": \"19:58\"}\n",
            "\n",
            "{\"t_ms\": 0, \"device\": \"d\", \"reading\": {\"x\": 1, \"on\": true}}\n",
            "{\"t_ms\": 5, \"device\": \"d\", \"alert\": \"a\", \"source\": \"ids\"}\n",
            "{\"t_ms\": 5, \"device\": \"d\", \"alert\": \"a\"}\n",
            "{\"t_ms\": 9, \"device\": \"d\", \"operator\": \"reset\"}\n",
            "{\"t_ms\": 20}",
        ))
        .unwrap();
        assert_eq!(t.clock_ms, (19 * 60 + 58) * 60_000);
        let lines: Vec<usize> = t.events.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7]);
        assert!(
            matches!(&t.events[0].input, Input::Reading { device, values } if device == "d" && values.len() == 2)
        );
        assert_eq!(
            t.events[1].input,
            Input::Alert {
                device: "d".into(),
                alert: "a".into(),
                source: Some("ids".into())
            }
        );
        assert_eq!(
            t.events[3].input,
            Input::Operator {
                device: "d".into(),
                action: "reset".into()
            }
        );
        assert_eq!(t.events[4].input, Input::Tick);
        assert_eq!(t.events[4].t_ms, 20);
    }

    #[test]
    fn bad_lines_are_all_reported_with_their_numbers() {
        let errs = errors(concat!(
            "{\"t_ms\": 10}\n",
            "{\"t_ms\": 11, \"device\": \"d\", \"alret\": \"a\"}\n",
            "not json\n",
            "[1, 2]\n",
            "{\"device\": \"d\", \"alert\": \"a\"}\n",
            "{\"t_ms\": 5, \"device\": \"d\", \"alert\": \"a\", \"operator\": \"reset\"}\n",
            "{\"t_ms\": 5, \"alert\": \"a\"}\n",
            "{\"t_ms\": 5, \"device\": \"d\"}\n",
            "{\"t_ms\": 5, \"device\": \"d\", \"operator\": \"reset\", \"source\": \"x\"}\n",
            "{\"t_ms\": 4}\n",
            "{\"clock\": \"20:00\"}\n",
            "{\"t_ms\": -1}\n",
            "{\"t_ms\": 31622400001}\n",
        ));
        let got: Vec<(usize, &str)> = errs.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert_eq!(
            got,
            [
                (2, codes::TRACE_SHAPE),
                (3, codes::TRACE_SYNTAX),
                (4, codes::TRACE_SYNTAX),
                (5, codes::TRACE_SHAPE),
                (6, codes::TRACE_SHAPE),
                (7, codes::TRACE_SHAPE),
                (8, codes::TRACE_SHAPE),
                (9, codes::TRACE_SHAPE),
                (10, codes::TRACE_ORDER),
                (11, codes::TRACE_SHAPE),
                (12, codes::TRACE_SHAPE),
                (13, codes::TRACE_SHAPE),
            ],
            "{errs:#?}"
        );
        assert!(errs[0].2.contains("unknown field `alret`"), "{}", errs[0].2);
        assert!(
            errs[8].2.contains("earlier than the line before (10)"),
            "{}",
            errs[8].2
        );
    }

    #[test]
    fn clock_header() {
        assert_eq!(parse("{\"clock\": \"0:05\"}").unwrap().clock_ms, 5 * 60_000);
        for bad in ["24:00", "7:5", "12:60", "noon", "12:00:00"] {
            let text = format!("{{\"clock\": \"{bad}\"}}");
            assert_eq!(errors(&text)[0].1, codes::TRACE_SHAPE, "{bad}");
        }
    }

    #[test]
    fn the_engine_writes_lines_this_parser_reads_back() {
        let inputs = [
            Input::Reading {
                device: "d".into(),
                values: [
                    ("x".to_string(), serde_json::json!(3)),
                    ("m".to_string(), serde_json::json!("heat")),
                ]
                .into_iter()
                .collect(),
            },
            Input::Alert {
                device: "d".into(),
                alert: "scan".into(),
                source: Some("ids".into()),
            },
            Input::Alert {
                device: "d".into(),
                alert: "tamper".into(),
                source: None,
            },
            Input::Operator {
                device: "d".into(),
                action: "reset".into(),
            },
            Input::Tick,
        ];
        let text: String = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| format!("{}\n", input.trace_line(i as u64 * 10)))
            .collect();
        let t = parse(&text).unwrap();
        let back: Vec<(u64, Input)> = t.events.into_iter().map(|e| (e.t_ms, e.input)).collect();
        let sent: Vec<(u64, Input)> = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| (i as u64 * 10, input))
            .collect();
        assert_eq!(back, sent);
    }

    #[test]
    fn spans_cover_the_line() {
        let text = "{\"t_ms\": 0}\r\n{\"t_ms\": x}\r\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e[0].line, 2);
        assert_eq!(
            &text[e[0].span.0..e[0].span.0 + e[0].span.1],
            "{\"t_ms\": x}"
        );
    }
}
