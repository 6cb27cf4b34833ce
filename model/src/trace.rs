//! Trace files for `kalki-shim simulate` (and the event lines of `kalkic test`'s test
//! files, [`crate::policy_test`]): timestamped input events, one JSON object a
//! line (JSON Lines). The schema is in `docs/runtime.md`:
//!
//! ```text
//! {"clock": "19:58"}                                           optional first line
//! {"t_ms": 0, "device": "thermo", "reading": {"temperature": 21, "mode": "heat"}}
//! {"t_ms": 5000, "device": "hall_cam", "alert": "port_scan", "source": "ids"}
//! {"t_ms": 9000, "device": "hall_cam", "operator": "reset"}
//! {"t_ms": 700000}                                             time passes
//! {"t_ms": 8000, "topic": "tele/plug/SENSOR", "payload": "{\"ENERGY\":{\"Power\":2900}}"}
//! {"t_ms": 8000, "topic": "tele/plug/SENSOR", "payload_base64": "e30="}
//! {"tst":"2026-12-03T05:43:44.203449Z+0000","topic":"tele/plug/SENSOR","qos":0,"retain":0,"payloadlen":2,"payload":"{}"}
//! ```
//!
//! The last three are MQTT messages: the first two as written by hand, the third a line
//! of `mosquitto_sub -F %j` as it prints it (`tst` is local time, a literal `Z`, then the
//! offset from UTC), its time taken relative to the trace's first such line. A message is
//! read as the bundle's binding of its topic reads it ([`crate::telemetry::decode`])
//! and replayed as its device's reading.
//!
//! Parsing checks every line (syntax, fields and order of times) and then every event
//! against the bundle, and reports every bad line with its line number; a trace with any
//! bad line is not replayed at all. A message, though, is what a device sent, not an
//! authoring mistake, and is taken as `kalki-shim run` takes it: one on a topic no device
//! binds is ignored (`run` never subscribes to it), one its binding (S12x) or the engine
//! (S1xx) refuses is kept as a [`RefusedMessage`], replayed as changing nothing; both are
//! counted ([`Messages`]).
//!
//! A trace is read as bytes, line by line. A line that is not UTF-8 is malformed (S201),
//! except a `mosquitto_sub -F %j` line whose payload alone is not UTF-8 (mosquitto_sub
//! 2.0.11 writes such payload bytes raw inside the JSON string): its payload is read as
//! those bytes, as newer mosquitto_subs write them as an array.

use crate::bundle::Bundle;
use crate::clock::Zone;
use crate::codes;
use crate::engine::{suggest, Config, Engine, Input, InputError, DAY_MS, MAX_STEP_MS};
use crate::telemetry::{self, Topics};
use miette::{Diagnostic, LabeledSpan, SourceSpan};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The longest trace: a year and a day, the engine's longest step
/// ([`crate::engine::MAX_STEP_MS`]).
pub const MAX_T_MS: u64 = MAX_STEP_MS;

/// A checked trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The local time of day at `t_ms` 0, in milliseconds since midnight: the `clock`
    /// header's, else the local time of the first `mosquitto_sub` line, else midnight.
    pub clock_ms: u64,
    /// The time zone whose wall clock the trace is replayed on (`simulate --time-zone`),
    /// with `t_ms` 0 at the trace's first timestamp; `None`: `clock_ms`, a fixed offset.
    pub zone: Option<Zone>,
    /// The inputs to replay, messages read into readings included.
    pub events: Vec<Event>,
    /// The messages refused, in line order: replayed as changing nothing.
    pub refused: Vec<RefusedMessage>,
    /// What became of the trace's messages.
    pub messages: Messages,
}

/// A message its binding or the engine refuses, as `run` refuses it: it changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedMessage {
    /// 1-based.
    pub line: usize,
    pub t_ms: u64,
    pub topic: String,
    /// The device whose binding reads the topic.
    pub device: String,
    /// Every problem: the binding's (S12x), or else the engine's with the reading (S1xx).
    pub problems: Vec<Problem>,
}

/// One reason a message is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: &'static str,
    pub reason: String,
}

/// The trace's messages counted as `kalki-shim status` counts them under `run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Messages {
    /// Every well-formed message line (retained and unbound ones included).
    pub received: u64,
    /// Read into a reading the engine accepts.
    pub applied: u64,
    /// Refused messages by code; a message with problems of two codes counts under both,
    /// once each.
    pub refused: BTreeMap<String, u64>,
    /// Retained (`mosquitto_sub`'s `retain` 1): an old value, ignored.
    pub retained_ignored: u64,
    /// On a topic no device binds (S204): ignored.
    pub unbound: u64,
    /// Unbound topics that are near misses of a bound one (a topic misspelt by hand is
    /// ignored too): the topic, how many of its messages, the bound topic it resembles.
    #[serde(skip)]
    pub near_misses: Vec<(String, u64, String)>,
}

/// One event line.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// 1-based.
    pub line: usize,
    pub t_ms: u64,
    pub input: Input,
    /// The MQTT topic of a line that was a message: `input` is the reading it decoded to.
    pub topic: Option<String>,
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
    /// A `mosquitto_sub` line earlier than the first one, which is `t_ms` 0.
    BeforeFirst { tst: String, first: String },
    /// A hand-written event the engine refuses.
    Input(InputError),
    /// A `mosquitto_sub` line whose `payload` is not the whole payload (`payloadlen`).
    PayloadLost { payloadlen: u64, got: usize },
}

impl TraceError {
    pub fn code(&self) -> &'static str {
        match &self.kind {
            TraceErrorKind::Syntax(_) => codes::TRACE_SYNTAX,
            TraceErrorKind::Shape(_) => codes::TRACE_SHAPE,
            TraceErrorKind::Order { .. } | TraceErrorKind::BeforeFirst { .. } => codes::TRACE_ORDER,
            TraceErrorKind::Input(e) => e.code(),
            TraceErrorKind::PayloadLost { .. } => codes::TRACE_PAYLOAD_LOST,
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
            TraceErrorKind::BeforeFirst { tst, first } => write!(
                f,
                "`{tst}` is earlier than the trace's first timestamp (`{first}`), its `t_ms` 0"
            ),
            TraceErrorKind::Input(e) => write!(f, "{e}"),
            TraceErrorKind::PayloadLost { payloadlen, got } => write!(
                f,
                "the message's payload was {payloadlen} bytes, the line holds {got}"
            ),
        }
    }
}

impl std::error::Error for TraceError {}

impl Diagnostic for TraceError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(TraceError::code(self)))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let text = |s: String| Some(Box::new(s) as Box<dyn fmt::Display + 'a>);
        match &self.kind {
            TraceErrorKind::Input(e) => e.help(),
            TraceErrorKind::Order { .. } => Some(Box::new("lines are in the order of their `t_ms`")),
            TraceErrorKind::BeforeFirst { .. } => Some(Box::new(
                "a trace's first timestamp (`tst` or `at`) is its `t_ms` 0; the lines after it are in the order of their times",
            )),
            TraceErrorKind::Syntax(_) | TraceErrorKind::Shape(_) => Some(Box::new(
                "a line is `{\"t_ms\": N, \"device\": D, EVENT}` (or `\"at\": TIMESTAMP`, RFC 3339, for `t_ms`: the first timestamp is `t_ms` 0) with EVENT one of `\"reading\": {...}`, `\"alert\": A` (and `\"source\": U`), `\"operator\": \"reset\"`, or nothing (time passes); or an MQTT message `{\"t_ms\": N, \"topic\": T, \"payload\": TEXT}` (or `\"payload_base64\"`); or a line of `mosquitto_sub -F %j`; see docs/runtime.md",
            )),
            TraceErrorKind::PayloadLost { payloadlen, got } if (*got as u64) < *payloadlen => text(
                "mosquitto_sub 2.0.11's `-F %j` cuts a payload at its first NUL byte; write the line by hand with the payload as `payload_base64`"
                    .to_string(),
            ),
            TraceErrorKind::PayloadLost { .. } => text(
                "the line holds more than the message had: it was edited, or its `payloadlen` is wrong; correct `payloadlen` or drop it"
                    .to_string(),
            ),
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

/// `Some` even for `null`, so that a present `"payload": null` differs from none.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// A line as written. Every field optional, unknown ones refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    t_ms: Option<u64>,
    /// An RFC 3339 timestamp instead of `t_ms`.
    at: Option<String>,
    clock: Option<String>,
    device: Option<String>,
    reading: Option<BTreeMap<String, serde_json::Value>>,
    alert: Option<String>,
    source: Option<String>,
    operator: Option<String>,
    topic: Option<String>,
    #[serde(default, deserialize_with = "present")]
    payload: Option<serde_json::Value>,
    payload_base64: Option<String>,
    // What `mosquitto_sub -F %j` adds: `tst` (required there), and fields that do not
    // matter to a reading (`payloadlen` is checked against the payload).
    tst: Option<String>,
    qos: Option<IgnoredAny>,
    retain: Option<serde_json::Value>,
    payloadlen: Option<u64>,
    mid: Option<IgnoredAny>,
    properties: Option<IgnoredAny>,
}

impl Raw {
    /// The names of the fields present, in declaration order.
    fn fields(&self) -> Vec<&'static str> {
        [
            ("t_ms", self.t_ms.is_some()),
            ("at", self.at.is_some()),
            ("clock", self.clock.is_some()),
            ("device", self.device.is_some()),
            ("reading", self.reading.is_some()),
            ("alert", self.alert.is_some()),
            ("source", self.source.is_some()),
            ("operator", self.operator.is_some()),
            ("topic", self.topic.is_some()),
            ("payload", self.payload.is_some()),
            ("payload_base64", self.payload_base64.is_some()),
            ("tst", self.tst.is_some()),
            ("qos", self.qos.is_some()),
            ("retain", self.retain.is_some()),
            ("payloadlen", self.payloadlen.is_some()),
            ("mid", self.mid.is_some()),
            ("properties", self.properties.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// `HH:MM` as milliseconds since midnight.
/// serde_json's message for one line, without its "line 1" (the line is the file's, and
/// the report already names it): `trailing characters at column 75`.
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(what) if e.column() > 0 => format!("{what} at column {}", e.column()),
        Some(what) => what.to_string(),
        None => text,
    }
}

fn time_of_day(text: &str) -> Option<u64> {
    let (h, m) = text.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || m.len() != 2 || !digits(m) {
        return None;
    }
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h * 60 + m) * 60_000 % DAY_MS)
}

/// When a `mosquitto_sub` line's message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    /// Milliseconds since the Unix epoch.
    utc_ms: i64,
    /// The local time of day, milliseconds since midnight.
    tod_ms: u64,
}

/// A `tst` as `mosquitto_sub -F %j` writes it: local time, microseconds, a literal `Z`
/// and the offset from UTC (`2026-12-03T11:14:21.444793Z+0530`; strftime's
/// `%Y-%m-%dT%H:%M:%S.ffffffZ%z`). Also RFC 3339 (`...+05:30`, `...Z` for UTC). Fractions
/// below the millisecond are dropped.
fn parse_tst(s: &str) -> Option<Stamp> {
    if s.len() < 19 || !s.is_char_boundary(19) {
        return None;
    }
    let (date_time, rest) = s.split_at(19);
    let b = date_time.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = &date_time[from..to];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    if [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')]
        .iter()
        .any(|&(i, c)| b[i] != c)
    {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, se) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 60
    {
        return None;
    }
    let (ms, rest) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 || n > 9 {
                return None;
            }
            let ms: i64 = format!("{:0<3}", &r[..n.min(3)]).parse().ok()?;
            (ms, &r[n..])
        }
        None => (0, rest),
    };
    let (utc, zone) = match rest.strip_prefix('Z') {
        Some(z) => (true, z),
        None => (false, rest),
    };
    let offset_min = if zone.is_empty() {
        if !utc {
            return None;
        }
        0
    } else {
        let (sign, hm) = match (zone.strip_prefix('+'), zone.strip_prefix('-')) {
            (Some(hm), _) => (1, hm),
            (_, Some(hm)) => (-1, hm),
            _ => return None,
        };
        let hm = match hm.split_once(':') {
            Some((hh, mm)) if hh.len() == 2 && mm.len() == 2 => format!("{hh}{mm}"),
            Some(_) => return None,
            None => hm.to_string(),
        };
        if hm.len() != 4 || !hm.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let (oh, om): (i64, i64) = (hm[..2].parse().ok()?, hm[2..].parse().ok()?);
        if oh > 23 || om > 59 {
            return None;
        }
        sign * (oh * 60 + om)
    };
    let tod_ms = ((h * 3600 + mi * 60 + se) * 1000 + ms) as u64 % DAY_MS;
    let local_ms =
        days_from_civil(y, mo, d) * DAY_MS as i64 + (h * 3600 + mi * 60 + se) * 1000 + ms;
    Some(Stamp {
        utc_ms: local_ms - offset_min * 60_000,
        tod_ms,
    })
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Standard base64 (RFC 4648, `+/`), padding optional; `None` if malformed.
fn base64(s: &str) -> Option<Vec<u8>> {
    let body = s.trim_end_matches('=');
    let pad = s.len() - body.len();
    if pad > 2 || (pad > 0 && !s.len().is_multiple_of(4)) || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // The bits left over are padding, zero in a canonical encoding.
    (acc == 0).then_some(out)
}

/// An event line before it is checked against the bundle.
#[derive(Debug, Clone, PartialEq)]
enum Pending {
    Input(Input),
    /// An MQTT message, read against the bundle's bindings by [`check`].
    Message {
        topic: String,
        payload: Vec<u8>,
    },
}

/// The well-formed lines of a trace.
#[derive(Debug, Default)]
struct Parsed {
    /// The `clock` header's.
    header: Option<u64>,
    /// The first `mosquitto_sub` line's time, `t_ms` 0 of those lines.
    first_capture: Option<(Stamp, String)>,
    /// (line, t_ms, event)
    events: Vec<(usize, u64, Pending)>,
    /// Retained messages (not in `events`).
    retained: u64,
}

impl Parsed {
    fn clock_ms(&self) -> u64 {
        self.header
            .or(self.first_capture.as_ref().map(|(s, _)| s.tod_ms))
            .unwrap_or(0)
    }
}

/// Parses a trace: syntax, fields and order (not yet the events' meaning; see [`check`]).
#[cfg(test)]
fn parse(text: impl AsRef<[u8]>) -> Result<Parsed, Vec<TraceError>> {
    let (parsed, errors) = parse_lines(text.as_ref());
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

/// The well-formed lines, and the errors of the others.
fn parse_lines(text: &[u8]) -> (Parsed, Vec<TraceError>) {
    let mut errors = Vec::new();
    let mut parsed = Parsed::default();
    let mut previous: Option<u64> = None;
    let mut first = true;
    for (i, (start, len)) in line_spans(text).into_iter().enumerate() {
        let line = i + 1;
        let bytes = &text[start..start + len];
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let err = |kind| TraceError {
            line,
            span: (start, len),
            kind,
        };
        let recovered;
        let content = match std::str::from_utf8(bytes) {
            Ok(c) => c,
            Err(e) => match capture_with_raw_payload(bytes) {
                Some(c) => {
                    recovered = c;
                    recovered.as_str()
                }
                None => {
                    errors.push(err(TraceErrorKind::Syntax(format!(
                        "not UTF-8 text: byte {:#04x} at column {}",
                        bytes[e.valid_up_to()],
                        e.valid_up_to() + 1
                    ))));
                    first = false;
                    continue;
                }
            },
        };
        let value: serde_json::Value = match serde_json::from_str(content) {
            Ok(v) => v,
            Err(e) => {
                errors.push(err(TraceErrorKind::Syntax(format!(
                    "not JSON: {}",
                    json_error(&e)
                ))));
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
        let (t_ms, event) = match line_event(raw, is_first) {
            Ok(Line::Header(clock_ms)) => {
                parsed.header = Some(clock_ms);
                continue;
            }
            Ok(Line::Event(t_ms, event)) => (t_ms, event),
            Ok(Line::Capture {
                stamp,
                tst,
                retained,
                event,
            }) => {
                let (base, first_tst) = parsed
                    .first_capture
                    .get_or_insert_with(|| (stamp, tst.clone()));
                let Ok(t_ms) = u64::try_from(stamp.utc_ms - base.utc_ms) else {
                    errors.push(err(TraceErrorKind::BeforeFirst {
                        tst,
                        first: first_tst.clone(),
                    }));
                    continue;
                };
                if t_ms > MAX_T_MS {
                    errors.push(err(TraceErrorKind::Shape(format!(
                        "`{tst}` is more than 366 days after the trace's first timestamp (`{first_tst}`), beyond the longest trace"
                    ))));
                    continue;
                }
                if retained {
                    // The broker's stored copy of an old value, sent because of the
                    // subscription: `run` ignores it, and so does the replay. It still
                    // marks when the recording began.
                    parsed.retained += 1;
                    continue;
                }
                (t_ms, event)
            }
            Err(kind) => {
                errors.push(err(kind));
                continue;
            }
        };
        if let Some(p) = previous.filter(|&p| t_ms < p) {
            errors.push(err(TraceErrorKind::Order { t_ms, previous: p }));
            continue;
        }
        previous = Some(t_ms);
        parsed.events.push((line, t_ms, event));
    }
    (parsed, errors)
}

enum Line {
    Header(u64),
    Event(u64, Pending),
    /// A `mosquitto_sub -F %j` line: its time (and its `tst` as written), whether the
    /// broker sent it as a retained message, and its message.
    Capture {
        stamp: Stamp,
        tst: String,
        retained: bool,
        event: Pending,
    },
}

/// The fields a `mosquitto_sub -F %j` line may have.
const CAPTURE_FIELDS: &[&str] = &[
    "tst",
    "topic",
    "qos",
    "retain",
    "payloadlen",
    "mid",
    "properties",
    "payload",
];

fn line_event(mut raw: Raw, first: bool) -> Result<Line, TraceErrorKind> {
    let shape = |m: &str| TraceErrorKind::Shape(m.to_string());
    let fields = raw.fields();
    let only = |allowed: &[&str], what: &str| {
        let extra: Vec<String> = fields
            .iter()
            .filter(|f| !allowed.contains(f))
            .map(|f| format!("`{f}`"))
            .collect();
        if extra.is_empty() {
            Ok(())
        } else {
            Err(TraceErrorKind::Shape(format!(
                "{} does not go with {what}",
                extra.join(", ")
            )))
        }
    };
    if let Some(clock) = &raw.clock {
        if !first || fields.len() != 1 {
            return Err(shape(
                "`clock` belongs in a header line of its own, the first line of the trace",
            ));
        }
        return time_of_day(clock).map(Line::Header).ok_or_else(|| {
            TraceErrorKind::Shape(format!("`clock` is `{clock}`, not a time of day `HH:MM`"))
        });
    }
    if let Some(tst) = raw.tst {
        only(CAPTURE_FIELDS, "a line of `mosquitto_sub -F %j` (`tst`)")?;
        let stamp = parse_tst(&tst).ok_or_else(|| {
            TraceErrorKind::Shape(format!(
                "`tst` is `{tst}`, not a time as `mosquitto_sub -F %j` writes it (`2026-12-03T20:15:00.123456Z+0100`)"
            ))
        })?;
        let topic = raw.topic.ok_or_else(|| shape("missing `topic`"))?;
        let payload = match raw.payload {
            None => return Err(shape("missing `payload`")),
            Some(serde_json::Value::String(s)) => s.into_bytes(),
            // An empty payload.
            Some(serde_json::Value::Null) => Vec::new(),
            // Newer `mosquitto_sub`s write a payload that is not printable as its bytes.
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| shape("`payload` is an array that is not of bytes (0 to 255)"))?,
            Some(_) => {
                return Err(shape(
                    "`payload` is a string, `null` (empty) or an array of bytes",
                ))
            }
        };
        if let Some(n) = raw.payloadlen {
            if n != payload.len() as u64 {
                return Err(TraceErrorKind::PayloadLost {
                    payloadlen: n,
                    got: payload.len(),
                });
            }
        }
        let retained = match raw.retain {
            None => false,
            Some(v) if v == 0 || v == false => false,
            Some(v) if v == 1 || v == true => true,
            Some(_) => return Err(shape("`retain` is 0 or 1")),
        };
        return Ok(Line::Capture {
            stamp,
            tst,
            retained,
            event: Pending::Message { topic, payload },
        });
    }
    if let Some(at) = raw.at.take() {
        // A line timed by the wall clock: as a capture's `tst`, the trace's first
        // timestamp is `t_ms` 0 and this line is as far after it as its time says.
        if raw.t_ms.is_some() {
            return Err(shape("`at` or `t_ms`, not both: a line has one time"));
        }
        let stamp = parse_tst(&at).ok_or_else(|| {
            TraceErrorKind::Shape(format!(
                "`at` is `{at}`, not an RFC 3339 timestamp (`2026-03-29T01:59:00+01:00`, `...Z` for UTC)"
            ))
        })?;
        raw.t_ms = Some(0);
        return match line_event(raw, first)? {
            Line::Event(_, event) => Ok(Line::Capture {
                stamp,
                tst: at,
                retained: false,
                event,
            }),
            other => Ok(other),
        };
    }
    let t_ms = raw.t_ms.ok_or_else(|| {
        shape("missing `t_ms` (milliseconds since the start of the trace) or `at` (an RFC 3339 timestamp)")
    })?;
    if t_ms > MAX_T_MS {
        return Err(TraceErrorKind::Shape(format!(
            "`t_ms` {t_ms} is beyond the longest trace, 366 days ({MAX_T_MS} ms)"
        )));
    }
    if let Some(topic) = raw.topic {
        only(
            &["t_ms", "topic", "payload", "payload_base64"],
            "an MQTT message (`topic`)",
        )?;
        let payload = match (raw.payload, raw.payload_base64) {
            (Some(serde_json::Value::String(s)), None) => s.into_bytes(),
            (Some(_), None) => {
                return Err(shape(
                    "`payload` is the payload's text as a JSON string (a payload that is not text goes in `payload_base64`)",
                ))
            }
            (None, Some(b)) => {
                base64(&b).ok_or_else(|| shape("`payload_base64` is not base64 (RFC 4648)"))?
            }
            (None, None) => return Err(shape("missing `payload` (or `payload_base64`)")),
            (Some(_), Some(_)) => {
                return Err(shape("`payload` or `payload_base64`, not both"))
            }
        };
        return Ok(Line::Event(t_ms, Pending::Message { topic, payload }));
    }
    only(
        &["t_ms", "device", "reading", "alert", "source", "operator"],
        "a line without a `topic` (only an MQTT message has a payload)",
    )?;
    let kinds = [
        raw.reading.is_some(),
        raw.alert.is_some(),
        raw.operator.is_some(),
    ];
    let one_event = || shape("one event a line: `reading`, `alert` or `operator`");
    let input = match (raw.device, raw.reading, raw.alert, raw.operator) {
        _ if kinds.iter().filter(|k| **k).count() > 1 => return Err(one_event()),
        (None, None, None, None) => Input::Tick,
        (None, ..) => return Err(shape("missing `device`")),
        (Some(_), None, None, None) => {
            return Err(shape(
                "a `device` but no event: add `reading`, `alert` or `operator`",
            ))
        }
        (Some(device), Some(values), None, None) => Input::Reading { device, values },
        (Some(device), None, Some(alert), None) => Input::Alert {
            device,
            alert,
            source: raw.source.clone(),
        },
        (Some(device), None, None, Some(action)) => Input::Operator { device, action },
        _ => return Err(one_event()),
    };
    if raw.source.is_some() && !matches!(input, Input::Alert { .. }) {
        return Err(shape("`source` goes with an `alert`"));
    }
    Ok(Line::Event(t_ms, Pending::Input(input)))
}

/// Parses a trace and checks every event against the site of `engine` (left unchanged),
/// with no MQTT bindings: every message line is on a topic no device binds, and is
/// ignored and counted. [`check_bundle`] reads messages with the bundle's bindings.
pub fn check<T: AsRef<[u8]> + ?Sized>(text: &T, engine: &Engine) -> Result<Trace, Vec<TraceError>> {
    check_with(text.as_ref(), engine, None, None)
}

/// Parses a trace and checks every event against `bundle`: a message is read as the
/// binding of its topic reads it, and becomes its device's reading; then every event is
/// applied in order to a fresh engine of the site on the trace's clock, as `simulate`
/// replays them, so each is checked against the time and states it will meet (an alert's
/// `source` must be deployed in its device's state then); a refused line is left out for
/// the lines after it. Reports every bad line, in line order.
///
/// Messages are taken as `run` takes them, not as errors: one on a topic no device binds
/// is ignored, one its binding or the engine refuses is a [`RefusedMessage`]; both are
/// counted in [`Trace::messages`].
pub fn check_bundle<T: AsRef<[u8]> + ?Sized>(
    text: &T,
    bundle: &Bundle,
) -> Result<Trace, Vec<TraceError>> {
    check_bundle_in(text, bundle, None)
}

/// [`check_bundle`] on the wall clock of a time zone (`simulate --time-zone`): the
/// trace's first timestamp (`at`, or a capture's `tst`) is `t_ms` 0 and fixes the date,
/// so a trace without one, or with a `clock` header (a time of day without a date), is
/// refused (S202, on its first line).
pub fn check_bundle_in<T: AsRef<[u8]> + ?Sized>(
    text: &T,
    bundle: &Bundle,
    zone: Option<&str>,
) -> Result<Trace, Vec<TraceError>> {
    check_with(
        text.as_ref(),
        &Engine::new(bundle, Config::default(), 0),
        Some(bundle),
        zone,
    )
}

fn check_with(
    text: &[u8],
    engine: &Engine,
    bundle: Option<&Bundle>,
    zone: Option<&str>,
) -> Result<Trace, Vec<TraceError>> {
    let (parsed, mut errors) = parse_lines(text);
    let spans = line_spans(text);
    let topics = bundle.map(|b| Topics::new(&b.manifest)).unwrap_or_default();
    let clock_ms = parsed.clock_ms();
    let zone = match zone {
        None => None,
        Some(name) => {
            let first = spans
                .iter()
                .position(|&(start, len)| {
                    !text[start..start + len].iter().all(u8::is_ascii_whitespace)
                })
                .unwrap_or(0);
            let at_first = |m: String| TraceError {
                line: first + 1,
                span: spans.get(first).copied().unwrap_or((0, 0)),
                kind: TraceErrorKind::Shape(m),
            };
            match (&parsed.header, &parsed.first_capture) {
                (Some(_), _) => {
                    errors.push(at_first(format!(
                        "a `clock` header gives a time of day without a date: on the time zone `{name}` the trace's times are its timestamps (`at`)"
                    )));
                    None
                }
                (None, None) => {
                    errors.push(at_first(format!(
                        "the trace has no timestamp: on the time zone `{name}` its first line needs `at` (an RFC 3339 timestamp), its `t_ms` 0"
                    )));
                    None
                }
                (None, Some((stamp, _))) => match Zone::named(name, stamp.utc_ms) {
                    Ok(z) => Some(z),
                    Err(m) => {
                        errors.push(at_first(m));
                        None
                    }
                },
            }
        }
    };
    let mut ahead = engine.restart(
        Config {
            day_offset_ms: clock_ms,
            zone: zone.clone(),
        },
        0,
    );
    let mut events = Vec::new();
    let mut refused = Vec::new();
    let mut messages = Messages {
        received: parsed.retained,
        retained_ignored: parsed.retained,
        ..Messages::default()
    };
    let mut unbound: BTreeMap<String, u64> = BTreeMap::new();
    for (line, t_ms, pending) in parsed.events {
        let span = spans.get(line - 1).copied().unwrap_or((0, 0));
        let at = |kind| TraceError { line, span, kind };
        let t = t_ms.max(ahead.now());
        let (input, topic) = match pending {
            Pending::Input(input) => {
                if let Err(es) = ahead.handle(t, &input) {
                    errors.extend(es.into_iter().map(|e| at(TraceErrorKind::Input(e))));
                }
                events.push(Event {
                    line,
                    t_ms,
                    input,
                    topic: None,
                });
                continue;
            }
            Pending::Message { topic, payload } => {
                messages.received += 1;
                match message_reading(bundle, &topics, &topic, &payload) {
                    Read::Reading(input) => (input, topic),
                    Read::Unbound => {
                        messages.unbound += 1;
                        *unbound.entry(topic).or_insert(0) += 1;
                        continue;
                    }
                    Read::Refused { device, problems } => {
                        refused.push(RefusedMessage {
                            line,
                            t_ms,
                            topic,
                            device,
                            problems,
                        });
                        continue;
                    }
                }
            }
        };
        // A reading the engine refuses changes nothing, as under `run`.
        match ahead.handle(t, &input) {
            Ok(_) => {
                messages.applied += 1;
                events.push(Event {
                    line,
                    t_ms,
                    input,
                    topic: Some(topic),
                });
            }
            Err(es) => {
                let device = match &input {
                    Input::Reading { device, .. } => device.clone(),
                    _ => String::new(),
                };
                refused.push(RefusedMessage {
                    line,
                    t_ms,
                    topic,
                    device,
                    problems: es
                        .iter()
                        .map(|e| Problem {
                            code: e.code(),
                            reason: e.to_string(),
                        })
                        .collect(),
                });
            }
        }
    }
    for r in &refused {
        let codes: std::collections::BTreeSet<&str> = r.problems.iter().map(|p| p.code).collect();
        for c in codes {
            *messages.refused.entry(c.to_string()).or_insert(0) += 1;
        }
    }
    messages.near_misses = unbound
        .into_iter()
        .filter_map(|(topic, n)| {
            let near = suggest(&topic, topics.topics())?;
            Some((topic, n, near))
        })
        .collect();
    if errors.is_empty() {
        Ok(Trace {
            clock_ms,
            zone,
            events,
            refused,
            messages,
        })
    } else {
        errors.sort_by_key(|e| e.line);
        Err(errors)
    }
}

/// What a message is read as.
enum Read {
    Reading(Input),
    /// No device binds its topic.
    Unbound,
    /// Its binding cannot read it (S12x).
    Refused {
        device: String,
        problems: Vec<Problem>,
    },
}

/// The reading a message carries: its topic's binding reads its payload for the device
/// that binds it.
fn message_reading(bundle: Option<&Bundle>, topics: &Topics, topic: &str, payload: &[u8]) -> Read {
    let Some(bundle) = bundle else {
        return Read::Unbound;
    };
    match topics.read(&bundle.manifest, topic, payload) {
        telemetry::Message::Reading(input) => Read::Reading(input),
        telemetry::Message::Unbound => Read::Unbound,
        telemetry::Message::Refused { device, refusals } => Read::Refused {
            device,
            problems: refusals
                .iter()
                .map(|r| Problem {
                    code: r.code(),
                    reason: r.to_string(),
                })
                .collect(),
        },
    }
}

/// Byte offset and length of every line, line breaks (`\n`, `\r\n`) excluded.
pub(crate) fn line_spans(text: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut offset = 0;
    for l in text.split_inclusive(|&b| b == b'\n') {
        let mut len = l.len();
        while len > 0 && matches!(l[len - 1], b'\n' | b'\r') {
            len -= 1;
        }
        out.push((offset, len));
        offset += l.len();
    }
    out
}

/// A trace's text for showing its lines in reports: every byte that is not part of UTF-8
/// text becomes one `?`, so that byte offsets ([`TraceError::span`]) stay right.
pub fn display_text(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len());
                out.extend(std::iter::repeat_n('?', n));
                rest = &bad[n..];
            }
        }
    }
}

/// A `mosquitto_sub -F %j` line that is not UTF-8 only because of its payload, rewritten
/// with the payload as the array of its bytes (as newer mosquitto_subs write a payload that
/// is not text): mosquitto_sub 2.0.11 ends a line with `"payload":"...."}`, the payload's
/// bytes raw in the string, but `"`, `\` and control characters escaped. `None` for any
/// other line; one that is not a `mosquitto_sub` line (no `tst`) is refused when parsed.
fn capture_with_raw_payload(line: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"payload\":\"";
    // No string before the payload can hold the key: a `"` in it is escaped.
    let at = line.windows(KEY.len()).position(|w| w == KEY)?;
    let prefix = std::str::from_utf8(&line[..at]).ok()?;
    // `"tst":` outside a string: a `mosquitto_sub` line's field.
    if !prefix.contains("\"tst\":") {
        return None;
    }
    let mut end = line.len();
    while end > 0 && line[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    let body = line.get(at + KEY.len()..end)?.strip_suffix(b"\"}")?;
    let payload = unescape_bytes(body)?;
    let items: Vec<String> = payload.iter().map(u8::to_string).collect();
    Some(format!("{prefix}\"payload\":[{}]}}", items.join(",")))
}

/// The bytes of the inside of a JSON string whose unescaped characters are taken as raw
/// bytes, UTF-8 or not; `None` if it is not such a string (an unescaped `"` or control
/// character, a bad escape).
fn unescape_bytes(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    let hex4 = |i: usize| -> Option<u32> {
        let h = std::str::from_utf8(s.get(i..i + 4)?).ok()?;
        if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(h, 16).ok()
    };
    while i < s.len() {
        let b = s[i];
        match b {
            b'"' | 0..=0x1f => return None,
            b'\\' => {
                let e = *s.get(i + 1)?;
                i += 2;
                let c = match e {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        let hi = hex4(i)?;
                        i += 4;
                        let code = if (0xd800..0xdc00).contains(&hi) {
                            if s.get(i..i + 2)? != b"\\u" {
                                return None;
                            }
                            let lo = hex4(i + 2)?;
                            if !(0xdc00..0xe000).contains(&lo) {
                                return None;
                            }
                            i += 6;
                            0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                        } else {
                            hi
                        };
                        char::from_u32(code)?
                    }
                    _ => return None,
                };
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
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

    fn codes_of(text: &str) -> Vec<(usize, &'static str)> {
        errors(text).into_iter().map(|(l, c, _)| (l, c)).collect()
    }

    fn message(topic: &str, payload: &[u8]) -> Pending {
        Pending::Message {
            topic: topic.into(),
            payload: payload.to_vec(),
        }
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
            "{\"t_ms\": 20}\n",
            "{\"t_ms\": 21, \"topic\": \"tele/p/SENSOR\", \"payload\": \"{\\\"ENERGY\\\":{\\\"Power\\\":2900}}\"}\n",
            "{\"t_ms\": 22, \"topic\": \"bin\", \"payload_base64\": \"AP8=\"}",
        ))
        .unwrap();
        assert_eq!(t.clock_ms(), (19 * 60 + 58) * 60_000);
        let lines: Vec<usize> = t.events.iter().map(|e| e.0).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9]);
        assert!(
            matches!(&t.events[0].2, Pending::Input(Input::Reading { device, values }) if device == "d" && values.len() == 2)
        );
        assert_eq!(
            t.events[1].2,
            Pending::Input(Input::Alert {
                device: "d".into(),
                alert: "a".into(),
                source: Some("ids".into())
            })
        );
        assert_eq!(
            t.events[3].2,
            Pending::Input(Input::Operator {
                device: "d".into(),
                action: "reset".into()
            })
        );
        assert_eq!(t.events[4].2, Pending::Input(Input::Tick));
        assert_eq!(t.events[4].1, 20);
        assert_eq!(
            t.events[5].2,
            message("tele/p/SENSOR", br#"{"ENERGY":{"Power":2900}}"#)
        );
        assert_eq!(t.events[6].2, message("bin", &[0, 0xff]));
    }

    /// Lines exactly as mosquitto_sub 2.0.11 (`-F %j`, TZ=Asia/Kolkata) printed them
    /// from a local broker: local time with a literal `Z` and the offset; a retained
    /// message first (the start of the recording, `t_ms` 0, not replayed: `run` ignores
    /// retained messages); control characters escaped; an empty payload as `null`.
    #[test]
    fn mosquitto_sub_json_lines() {
        let t = parse(concat!(
            r#"{"tst":"2026-12-03T11:14:21.444793Z+0530","topic":"tele/x/ret","qos":0,"retain":1,"payloadlen":4,"payload":"23.5"}"#,
            "\n",
            r#"{"tst":"2026-12-03T11:14:21.908345Z+0530","topic":"tele/x/bin","qos":0,"retain":0,"payloadlen":8,"payload":"a\u0001b\tc\"d\\"}"#,
            "\n",
            r#"{"tst":"2026-12-03T11:14:21.916175Z+0530","topic":"tele/x/empty","qos":0,"retain":0,"payloadlen":0,"payload":null}"#,
            "\n",
            // What a newer mosquitto_sub writes for a payload that is not printable, with
            // QoS 1 (`mid`), in another zone: the same instant is 05:45:21.922 UTC.
            r#"{"tst":"2026-12-03T02:15:21.922927Z-0330","topic":"a b/c","qos":1,"retain":0,"payloadlen":2,"mid":7,"payload":[0,255]}"#,
            "\n",
            // Time passing after the capture, on its clock.
            r#"{"t_ms": 70000}"#,
        ))
        .unwrap();
        // t_ms 0 is the first line's instant, the clock its local time of day.
        assert_eq!(t.clock_ms(), ((11 * 60 + 14) * 60 + 21) * 1000 + 444);
        let got: Vec<(u64, Pending)> = t.events.into_iter().map(|(_, t, p)| (t, p)).collect();
        assert_eq!(
            got,
            [
                (464, message("tele/x/bin", b"a\x01b\tc\"d\\")),
                (472, message("tele/x/empty", b"")),
                (60_478, message("a b/c", &[0, 255])),
                (70_000, Pending::Input(Input::Tick)),
            ]
        );
    }

    #[test]
    fn at_lines_count_from_the_first_timestamp() {
        let t = parse(concat!(
            "{\"at\": \"2026-03-29T01:59:00+01:00\", \"device\": \"d\", \"reading\": {\"x\": 1}}\n",
            "{\"t_ms\": 30000}\n",
            "{\"at\": \"2026-03-29T01:00:00Z\"}\n",
            "{\"at\": \"2026-03-29T03:01:00.5+02:00\"}\n",
        ))
        .unwrap();
        let times: Vec<u64> = t.events.iter().map(|(_, t_ms, _)| *t_ms).collect();
        assert_eq!(times, [0, 30_000, 60_000, 120_500]);
        // The first timestamp's own offset gives the time of day without a zone.
        assert_eq!(t.clock_ms(), (60 + 59) * 60_000);
    }

    #[test]
    fn bad_at_lines_are_located() {
        let errs = errors(concat!(
            "{\"at\": \"2026-03-29T02:00:00+01:00\"}\n",
            "{\"at\": \"2026-03-29T01:00:00+01:00\"}\n",
            "{\"at\": \"2026-03-29 02:00\"}\n",
            "{\"at\": \"2026-03-29T02:01:00+01:00\", \"t_ms\": 60000}\n",
            "{\"t_ms\": 5000}\n",
            "{\"at\": \"2026-03-29T02:00:01+01:00\"}\n",
        ));
        let got: Vec<(usize, &str)> = errs.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert_eq!(
            got,
            [
                (2, codes::TRACE_ORDER),
                (3, codes::TRACE_SHAPE),
                (4, codes::TRACE_SHAPE),
                (6, codes::TRACE_ORDER),
            ],
            "{errs:#?}"
        );
        assert!(
            errs[0]
                .2
                .contains("earlier than the trace's first timestamp (`2026-03-29T02:00:00+01:00`)"),
            "{}",
            errs[0].2
        );
        assert!(
            errs[1].2.contains("not an RFC 3339 timestamp"),
            "{}",
            errs[1].2
        );
        assert!(
            errs[2].2.contains("`at` or `t_ms`, not both"),
            "{}",
            errs[2].2
        );
        assert!(
            errs[3]
                .2
                .contains("`t_ms` 1000 is earlier than the line before (5000)"),
            "{}",
            errs[3].2
        );
    }

    #[test]
    fn a_clock_header_wins_over_the_capture_time() {
        let t = parse(concat!(
            "{\"clock\": \"23:59\"}\n",
            r#"{"tst":"2026-12-03T11:14:21.444793Z+0000","topic":"t","payload":"1"}"#,
        ))
        .unwrap();
        assert_eq!(t.clock_ms(), (23 * 60 + 59) * 60_000);
    }

    #[test]
    fn bad_message_lines() {
        let got = codes_of(concat!(
            "{\"t_ms\": 0, \"payload\": \"x\"}\n",
            "{\"t_ms\": 0, \"topic\": \"t\"}\n",
            "{\"t_ms\": 0, \"topic\": \"t\", \"payload\": \"x\", \"payload_base64\": \"eA==\"}\n",
            "{\"t_ms\": 0, \"topic\": \"t\", \"payload\": {\"a\": 1}}\n",
            "{\"t_ms\": 0, \"topic\": \"t\", \"payload_base64\": \"e*==\"}\n",
            "{\"t_ms\": 0, \"topic\": \"t\", \"device\": \"d\", \"payload\": \"x\"}\n",
            "{\"topic\": \"t\", \"payload\": \"x\"}\n",
            "{\"t_ms\": 0, \"topic\": \"t\", \"payload\": \"x\", \"qos\": 0}\n",
            "{\"tst\": \"2026-12-03T11:14:21Z\", \"topic\": \"t\", \"t_ms\": 0, \"payload\": \"x\"}\n",
            "{\"tst\": \"2026-12-03T11:14:21\", \"topic\": \"t\", \"payload\": \"x\"}\n",
            "{\"tst\": \"2026-12-03T11:14:21Z\", \"payload\": \"x\"}\n",
            "{\"tst\": \"2026-12-03T11:14:21Z\", \"topic\": \"t\"}\n",
            "{\"tst\": \"2026-12-03T11:14:21Z\", \"topic\": \"t\", \"payload\": [256]}\n",
            "{\"tst\": \"2026-12-03T11:14:21Z\", \"topic\": \"t\", \"payload\": 5}\n",
            // mosquitto_sub 2.0.11 cuts a payload at a NUL: 4 bytes sent, 2 written.
            "{\"tst\": \"2026-12-03T11:14:21Z\", \"topic\": \"t\", \"payloadlen\": 4, \"payload\": \"ab\"}\n",
            "{\"tst\": \"2026-12-03T11:14:22Z\", \"topic\": \"t\", \"payload\": \"x\"}\n",
            "{\"tst\": \"2026-12-03T11:14:20.999Z\", \"topic\": \"t\", \"payload\": \"x\"}\n",
            "{\"tst\": \"2027-12-05T11:14:22Z\", \"topic\": \"t\", \"payload\": \"x\"}\n",
            "{\"tst\": \"2026-12-03T11:14:23Z\", \"topic\": \"t\", \"payload\": \"x\"}\n",
            // Lines by hand and captured ones share one order of `t_ms`.
            "{\"t_ms\": 999, \"topic\": \"t\", \"payload\": \"x\"}\n",
        ));
        use codes::{TRACE_ORDER as O, TRACE_PAYLOAD_LOST as L, TRACE_SHAPE as S};
        assert_eq!(
            got,
            [
                (1, S),
                (2, S),
                (3, S),
                (4, S),
                (5, S),
                (6, S),
                (7, S),
                (8, S),
                (9, S),
                (10, S),
                (11, S),
                (12, S),
                (13, S),
                (14, S),
                (15, L),
                // 16 is the first capture line that reads: t_ms 0 at 11:14:22.
                (17, O),
                (18, S),
                (20, O),
            ]
        );
        let errs = errors("{\"t_ms\": 0, \"topic\": \"t\", \"device\": \"d\", \"payload\": \"x\"}");
        assert!(
            errs[0]
                .2
                .contains("`device` does not go with an MQTT message"),
            "{errs:?}"
        );
        let errs = errors(concat!(
            "{\"tst\": \"2026-12-03T11:14:22Z\", \"topic\": \"t\", \"payload\": \"x\"}\n",
            "{\"tst\": \"2026-12-03T11:14:20.999Z\", \"topic\": \"t\", \"payload\": \"x\"}\n",
        ));
        assert!(
            errs[0]
                .2
                .contains("earlier than the trace's first timestamp (`2026-12-03T11:14:22Z`)"),
            "{errs:?}"
        );
    }

    #[test]
    fn capture_times() {
        let at = |s| parse_tst(s).map(|t| (t.utc_ms, t.tod_ms));
        let utc = days_from_civil(2026, 12, 3) * DAY_MS as i64 + (5 * 3600 + 44 * 60 + 21) * 1000;
        let want = Some((utc + 444, ((11 * 60 + 14) * 60 + 21) * 1000 + 444));
        assert_eq!(at("2026-12-03T11:14:21.444793Z+0530"), want);
        assert_eq!(at("2026-12-03T11:14:21.444+05:30"), want);
        assert_eq!(at("2026-12-03T11:14:21.4449+0530"), want);
        assert_eq!(
            at("2026-12-03T02:14:21.444945Z-0330"),
            Some((utc + 444, ((2 * 60 + 14) * 60 + 21) * 1000 + 444))
        );
        assert_eq!(
            at("2026-12-03T05:44:21Z"),
            Some((utc, ((5 * 60 + 44) * 60 + 21) * 1000))
        );
        assert_eq!(at("1970-01-01T00:00:00.5Z"), Some((500, 500)));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for bad in [
            "2026-12-03T11:14:21",
            "2026-12-03T11:14:21.Z",
            "2026-12-03 11:14:21Z",
            "2026-02-29T11:14:21Z",
            "2026-13-01T11:14:21Z",
            "2026-12-03T24:00:00Z",
            "2026-12-03T11:14:21Z+05",
            "2026-12-03T11:14:21+5:30",
            "2026-12-03T11:14:21.1234567890Z",
            "1796276624.203311752",
            "2026-12-03T11:14:21Zé",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
        assert!(at("2024-02-29T00:00:00Z").is_some());
    }

    #[test]
    fn base64_payloads() {
        let cases: [(&str, &[u8]); 6] = [
            ("", b""),
            ("Zg==", b"f"),
            ("Zm8=", b"fo"),
            ("Zm9v", b"foo"),
            ("Zm9vYg", b"foob"),
            ("AP8+/w==", &[0, 0xff, 0x3e, 0xff]),
        ];
        for (text, bytes) in cases {
            assert_eq!(base64(text).as_deref(), Some(bytes), "{text}");
        }
        for bad in ["Z", "Zg=", "Zh==", "Zm9v=", "Zm9v====", "Zm 9v", "Zm-v"] {
            assert_eq!(base64(bad), None, "{bad}");
        }
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
        assert_eq!(
            parse("{\"clock\": \"0:05\"}").unwrap().clock_ms(),
            5 * 60_000
        );
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
        let back: Vec<(u64, Pending)> = t.events.into_iter().map(|(_, t, p)| (t, p)).collect();
        let sent: Vec<(u64, Pending)> = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| (i as u64 * 10, Pending::Input(input)))
            .collect();
        assert_eq!(back, sent);
    }

    /// mosquitto_sub 2.0.11 writes a payload that is not UTF-8 raw inside the JSON string
    /// (escaping only `"`, `\\` and control characters): such a line is read, its payload
    /// those bytes. Any other line that is not UTF-8 is malformed, located by its number.
    #[test]
    fn lines_that_are_not_utf8() {
        let mut text: Vec<u8> = Vec::new();
        // 1: a capture line, its payload `\xff"\x01` with an escaped quote and control
        // character, and `é` (UTF-8) and a surrogate pair around an invalid sequence.
        text.extend_from_slice(br#"{"tst":"2026-12-03T11:14:21.444793Z+0530","topic":"tele/x/bin","qos":0,"retain":0,"payloadlen":11,"payload":""#);
        text.extend_from_slice(b"\xff\\\"\\u0001\xc3\xa9\xe2\x82\\ud83d\\ude00\"}");
        text.push(b'\n');
        // 2: the same, its `payloadlen` wrong: the bytes are counted as sent.
        text.extend_from_slice(
            br#"{"tst":"2026-12-03T11:14:22Z+0530","topic":"t","payloadlen":2,"payload":""#,
        );
        text.extend_from_slice(b"a\xffb\"}");
        text.push(b'\n');
        // 3: a line by hand.
        text.extend_from_slice(b"{\"t_ms\": 1000, \"topic\": \"t\", \"payload\": \"\xff\"}\r\n");
        // 4: a capture line whose topic is not UTF-8.
        text.extend_from_slice(
            b"{\"tst\":\"2026-12-03T11:14:23Z+0530\",\"topic\":\"t\xff\",\"payload\":\"x\"}\n",
        );
        // 5: an unescaped quote in the raw payload.
        text.extend_from_slice(
            b"{\"tst\":\"2026-12-03T11:14:23Z+0530\",\"topic\":\"t\",\"payload\":\"\xff\"\"}\n",
        );
        // 6: fine.
        text.extend_from_slice(b"{\"t_ms\": 5000}\n");
        // Text as in the file, for the first line's payload.
        let first = text.split(|&b| b == b'\n').next().unwrap();
        let mut only_first = first.to_vec();
        only_first.push(b'\n');
        let t = parse(&only_first).unwrap();
        assert_eq!(
            t.events,
            [(
                1,
                0,
                message("tele/x/bin", b"\xff\"\x01\xc3\xa9\xe2\x82\xf0\x9f\x98\x80")
            )]
        );
        let errs = parse(&text).unwrap_err();
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.code())).collect();
        assert_eq!(
            got,
            [
                (2, codes::TRACE_PAYLOAD_LOST),
                (3, codes::TRACE_SYNTAX),
                (4, codes::TRACE_SYNTAX),
                (5, codes::TRACE_SYNTAX),
            ],
            "{errs:#?}"
        );
        assert!(
            errs[1]
                .to_string()
                .contains("not UTF-8 text: byte 0xff at column 42"),
            "{}",
            errs[1]
        );
        // Spans are byte offsets in the file, and its text for reports keeps them.
        let shown = display_text(&text);
        assert_eq!(shown.len(), text.len());
        let (at, len) = errs[1].span;
        assert_eq!(
            &shown[at..at + len],
            "{\"t_ms\": 1000, \"topic\": \"t\", \"payload\": \"?\"}"
        );
        assert_eq!(display_text(b"a\xe2\x82b\xff"), "a??b?");
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
