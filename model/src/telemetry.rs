//! Telemetry bindings: how a device's MQTT messages become readings, and its commands
//! messages (`docs/language.md`, §5.6). One definition for the compiler (which writes them
//! into the bundle, topics filled in per device), the shim's MQTT client (`kalki-shim
//! run`) and its replay of recorded messages (`kalki-shim simulate`, whose trace format
//! takes message lines and `mosquitto_sub -F %j` captures).
//!
//! A message becomes one reading of every field its binding names, or nothing: any field
//! that cannot be read refuses the whole message ([`decode`]), and the engine then checks
//! the reading as it checks any other (types, ranges: S103, S104).

use crate::manifest::{DeviceType, VarType};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a device's readings come from and where its commands go (topics as the device
/// uses them: the type's `{param}` holes are filled in).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct Telemetry {
    /// The topics it publishes readings on, each with how a message maps to variables.
    pub topics: Vec<Binding>,
    /// How each of its commands is published.
    pub commands: Vec<Publish>,
}

impl Telemetry {
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.commands.is_empty()
    }

    /// The telemetry with every `{name}` hole of its topics and payloads replaced by its
    /// value (`fill` gives the value of a hole, `None` to leave it).
    pub fn filled(&self, fill: impl Fn(&str) -> Option<String>) -> Telemetry {
        let f = |s: &str| fill_holes(s, &fill);
        Telemetry {
            topics: self
                .topics
                .iter()
                .map(|b| Binding {
                    topic: f(&b.topic),
                    ..b.clone()
                })
                .collect(),
            commands: self
                .commands
                .iter()
                .map(|p| Publish {
                    command: p.command.clone(),
                    topic: f(&p.topic),
                    payload: f(&p.payload),
                })
                .collect(),
        }
    }
}

/// The `{name}` holes of `template`, in order.
pub fn holes(template: &str) -> Result<Vec<&str>, &'static str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err("an unclosed `{`");
        };
        out.push(&after[..close]);
        rest = &after[close + 1..];
    }
    Ok(out)
}

fn fill_holes(template: &str, fill: &impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        match fill(&after[..close]) {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[open..open + close + 2]),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// `telemetry "TOPIC" json|text { VAR = ..., ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct Binding {
    /// An exact topic: no `+` or `#`.
    pub topic: String,
    pub format: Format,
    /// At least one.
    pub fields: Vec<Field>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON object; each field names a path into it.
    Json,
    /// The payload is the value itself (`ON`, `Offline`, `23.5`), without surrounding
    /// whitespace.
    Text,
}

/// One variable of a reading: where its value is, and how it is converted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct Field {
    pub var: String,
    /// Keys from the JSON object down to the value; empty for a text payload.
    pub path: Vec<String>,
    /// Multiply by `mul` and divide by `div` (exactly, before rounding); `1`, `1` when
    /// not scaled.
    pub mul: i64,
    pub div: i64,
    /// How a value that is not a whole number after scaling becomes one; `None`: such a
    /// value is refused.
    pub round: Option<Round>,
    /// Payload values to variable values (`"ON"` to `true`); empty: the value is taken
    /// as it is (a JSON boolean for a `bool`, a number for an `int`, a member's name for
    /// an `enum`).
    pub map: Vec<MapEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Round {
    /// To the nearest integer, halves away from zero (`2.5` to 3, `-2.5` to −3).
    Nearest,
    /// Towards −∞.
    Down,
    /// Towards +∞.
    Up,
}

/// `"ON" = true`: a payload value and the variable's value for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct MapEntry {
    pub from: Scalar,
    pub to: Scalar,
}

/// A boolean, an integer or a string (an enum member's name, for `to`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Str(String),
}

impl Scalar {
    fn json(&self) -> serde_json::Value {
        match self {
            Scalar::Bool(b) => (*b).into(),
            Scalar::Int(i) => (*i).into(),
            Scalar::Str(s) => s.clone().into(),
        }
    }
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// `command NAME publish "TOPIC" "PAYLOAD"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct Publish {
    pub command: String,
    pub topic: String,
    pub payload: String,
}

/// The largest payload read; a longer one is refused unread (no device sends more in
/// one reading, and a broker can deliver up to 256 MB).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Why a message was refused. Every problem of the message is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the payload is {len} bytes, more than {MAX_PAYLOAD}")]
    TooLarge { len: usize },
    #[error("the payload is not UTF-8 text")]
    NotText,
    #[error("the payload is not a JSON object: {reason}")]
    NotJson { reason: String },
    #[error("`{var}`: the payload has no `{path}`")]
    Missing { var: String, path: String },
    #[error("`{var}`: {found} where {expected} was expected")]
    WrongType {
        var: String,
        expected: String,
        found: String,
    },
    #[error("`{var}`: {found} is none of the binding's values ({known})")]
    Unmapped {
        var: String,
        found: String,
        known: String,
    },
    #[error("`{var}`: {found} is not a whole number{scaled} and the binding does not round")]
    NotWhole {
        var: String,
        found: String,
        scaled: String,
    },
    #[error("`{var}`: {found} does not fit a 64-bit integer{scaled}")]
    TooBig {
        var: String,
        found: String,
        scaled: String,
    },
}

impl Refusal {
    /// The stable code (S12x) of the refusal.
    pub fn code(&self) -> &'static str {
        use crate::codes;
        match self {
            Refusal::TooLarge { .. } | Refusal::NotText | Refusal::NotJson { .. } => {
                codes::BAD_PAYLOAD
            }
            Refusal::Missing { .. } => codes::MISSING_FIELD,
            Refusal::WrongType { .. } | Refusal::Unmapped { .. } => codes::FIELD_TYPE,
            Refusal::NotWhole { .. } | Refusal::TooBig { .. } => codes::NOT_WHOLE,
        }
    }
}

/// The reading a message on `binding`'s topic carries, as the values of an
/// [`crate::engine::Input::Reading`]; the engine checks them as any reading (S103, S104).
/// `ty` is the device's type (the variables' types say how an unmapped value is read).
pub fn decode(
    ty: &DeviceType,
    binding: &Binding,
    payload: &[u8],
) -> Result<BTreeMap<String, serde_json::Value>, Vec<Refusal>> {
    if payload.len() > MAX_PAYLOAD {
        return Err(vec![Refusal::TooLarge { len: payload.len() }]);
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        return Err(vec![Refusal::NotText]);
    };
    let root = match binding.format {
        Format::Json => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(other) => {
                return Err(vec![Refusal::NotJson {
                    reason: format!("it is {}", kind(&other)),
                }])
            }
            Err(e) => {
                return Err(vec![Refusal::NotJson {
                    reason: e.to_string(),
                }])
            }
        },
        Format::Text => text_value(text.trim()),
    };
    let mut values = BTreeMap::new();
    let mut refusals = Vec::new();
    for f in &binding.fields {
        match field(ty, f, &root, binding.format) {
            Ok(v) => {
                values.insert(f.var.clone(), v);
            }
            Err(r) => refusals.push(r),
        }
    }
    if refusals.is_empty() {
        Ok(values)
    } else {
        Err(refusals)
    }
}

/// A text payload as the JSON value it reads as: `true`/`false`, a number, or else the
/// string itself.
fn text_value(text: &str) -> serde_json::Value {
    match text {
        "true" => true.into(),
        "false" => false.into(),
        _ => match Decimal::parse(text) {
            Some(_) => serde_json::from_str(text).unwrap_or_else(|_| text.into()),
            None => text.into(),
        },
    }
}

fn kind(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(b) => format!("the boolean {b}"),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::String(s) => format!("the string {s:?}"),
        serde_json::Value::Array(_) => "an array".into(),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

fn field(
    ty: &DeviceType,
    f: &Field,
    root: &serde_json::Value,
    format: Format,
) -> Result<serde_json::Value, Refusal> {
    let mut v = root;
    for (i, key) in f.path.iter().enumerate() {
        match v.get(key) {
            Some(next) => v = next,
            None => {
                return Err(Refusal::Missing {
                    var: f.var.clone(),
                    path: f.path[..=i].join("."),
                })
            }
        }
    }
    let var_ty = ty.vars.iter().find(|x| x.name == f.var).map(|x| &x.ty);
    if !f.map.is_empty() {
        return map(f, v);
    }
    match var_ty {
        Some(VarType::Bool) => match v {
            serde_json::Value::Bool(_) => Ok(v.clone()),
            other => Err(Refusal::WrongType {
                var: f.var.clone(),
                expected: "a boolean".into(),
                found: kind(other),
            }),
        },
        Some(VarType::Int { .. }) => number(f, v, format),
        Some(VarType::Enum { .. }) => match v {
            serde_json::Value::String(_) => Ok(v.clone()),
            other => Err(Refusal::WrongType {
                var: f.var.clone(),
                expected: "a member's name".into(),
                found: kind(other),
            }),
        },
        // The loader refuses a binding of an undeclared variable; the engine would too.
        None => Ok(v.clone()),
    }
}

fn map(f: &Field, v: &serde_json::Value) -> Result<serde_json::Value, Refusal> {
    let key = match v {
        serde_json::Value::Bool(b) => Some(Scalar::Bool(*b)),
        serde_json::Value::Number(n) => n.as_i64().map(Scalar::Int),
        serde_json::Value::String(s) => Some(Scalar::Str(s.clone())),
        _ => None,
    };
    // A text payload `1` reads as the number 1, and a map may name it as `"1"`.
    let text_key = match v {
        serde_json::Value::Number(n) => Some(Scalar::Str(n.to_string())),
        serde_json::Value::Bool(b) => Some(Scalar::Str(b.to_string())),
        _ => None,
    };
    for e in &f.map {
        if Some(&e.from) == key.as_ref() || Some(&e.from) == text_key.as_ref() {
            return Ok(e.to.json());
        }
    }
    Err(Refusal::Unmapped {
        var: f.var.clone(),
        found: kind(v),
        known: f
            .map
            .iter()
            .map(|e| e.from.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn number(f: &Field, v: &serde_json::Value, format: Format) -> Result<serde_json::Value, Refusal> {
    let serde_json::Value::Number(n) = v else {
        return Err(Refusal::WrongType {
            var: f.var.clone(),
            expected: if format == Format::Text {
                "a number".into()
            } else {
                "a JSON number".into()
            },
            found: kind(v),
        });
    };
    // The decimal the device wrote: serde_json keeps integers exact, and a float's
    // shortest round-trip form is the decimal it was parsed from (up to 17 digits).
    let text = n.to_string();
    let scaled = if (f.mul, f.div) == (1, 1) {
        String::new()
    } else if f.div == 1 {
        format!(" after scaling by {}", f.mul)
    } else {
        format!(" after scaling by {}/{}", f.mul, f.div)
    };
    let too_big = || Refusal::TooBig {
        var: f.var.clone(),
        found: text.clone(),
        scaled: scaled.clone(),
    };
    let d = Decimal::parse(&text).ok_or_else(too_big)?;
    match d.scaled(f.mul, f.div, f.round) {
        Scaled::Whole(i) => Ok(i.into()),
        Scaled::Fraction => Err(Refusal::NotWhole {
            var: f.var.clone(),
            found: text.clone(),
            scaled: scaled.clone(),
        }),
        Scaled::TooBig => Err(too_big()),
    }
}

/// A decimal number `mantissa × 10^-exp10` (negative `exp10`: `× 10^|exp10|`), exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    mantissa: i128,
    exp10: i32,
}

enum Scaled {
    Whole(i64),
    Fraction,
    TooBig,
}

impl Decimal {
    /// `-12`, `0.052`, `1e3`, `2.5E-2`; at most 30 significant digits, exponents within
    /// ±40 (beyond them no reading fits a 64-bit integer or differs from zero).
    fn parse(s: &str) -> Option<Decimal> {
        let (num, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
            None => (s, 0),
        };
        let (neg, digits) = match num.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, num),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let all = format!("{int}{frac}");
        let all = all.trim_start_matches('0');
        if all.len() > 30 || !(-40..=40).contains(&exp) {
            return None;
        }
        let mut mantissa: i128 = if all.is_empty() { 0 } else { all.parse().ok()? };
        if neg {
            mantissa = -mantissa;
        }
        let exp10 = i32::try_from(frac.len()).ok()? - exp;
        Some(Decimal { mantissa, exp10 })
    }

    /// `self × mul / div`, rounded as asked.
    fn scaled(self, mul: i64, div: i64, round: Option<Round>) -> Scaled {
        // numerator / denominator, both exact in i128 (30 digits times 19 fits in 128 bits
        // only with care: bounded below by checked arithmetic).
        let Some(mut num) = self.mantissa.checked_mul(i128::from(mul)) else {
            return Scaled::TooBig;
        };
        let mut den = i128::from(div);
        if self.exp10 >= 0 {
            let Some(p) = 10i128.checked_pow(self.exp10.unsigned_abs()) else {
                // A denominator beyond 10^38: the value is within 10^-8 of zero or
                // beyond any integer.
                return if num == 0 {
                    Scaled::Whole(0)
                } else if round.is_some() {
                    Scaled::TooBig
                } else {
                    Scaled::Fraction
                };
            };
            let Some(d) = den.checked_mul(p) else {
                return Scaled::TooBig;
            };
            den = d;
        } else {
            let Some(p) = 10i128.checked_pow(self.exp10.unsigned_abs()) else {
                return if num == 0 {
                    Scaled::Whole(0)
                } else {
                    Scaled::TooBig
                };
            };
            let Some(n) = num.checked_mul(p) else {
                return Scaled::TooBig;
            };
            num = n;
        }
        let q = num.div_euclid(den);
        let r = num.rem_euclid(den);
        let whole = if r == 0 {
            q
        } else {
            match round {
                None => return Scaled::Fraction,
                Some(Round::Down) => q,
                Some(Round::Up) => q + 1,
                Some(Round::Nearest) => {
                    // q + r/den with 0 < r < den: halves away from zero.
                    if r > den - r || (r == den - r && num > 0) {
                        q + 1
                    } else {
                        q
                    }
                }
            }
        };
        match i64::try_from(whole) {
            Ok(i) => Scaled::Whole(i),
            Err(_) => Scaled::TooBig,
        }
    }
}

/// Where each topic's messages go: the devices and bindings that read it.
#[derive(Debug, Clone, Default)]
pub struct Topics {
    by_topic: BTreeMap<String, (usize, usize)>,
}

impl Topics {
    /// Every topic of every device of `m` (the loader has checked that none is read by
    /// two bindings).
    pub fn new(m: &crate::manifest::Manifest) -> Topics {
        let mut by_topic = BTreeMap::new();
        for (d, dev) in m.devices.iter().enumerate() {
            for (b, binding) in dev
                .telemetry
                .iter()
                .flat_map(|t| t.topics.iter())
                .enumerate()
            {
                by_topic.entry(binding.topic.clone()).or_insert((d, b));
            }
        }
        Topics { by_topic }
    }

    /// The device (its index in the manifest) and its binding that read `topic`.
    pub fn lookup(&self, topic: &str) -> Option<(usize, usize)> {
        self.by_topic.get(topic).copied()
    }

    /// Every topic to subscribe to, in order.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.by_topic.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }
}

/// Whether `topic` is one a binding may name: not empty, no wildcard (`+`, `#`), no NUL,
/// not starting with `$` (the broker's own), at most 1024 bytes.
pub fn topic_problem(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        Some("it is empty")
    } else if topic.contains(['+', '#']) {
        Some("it has a wildcard (`+` or `#`); a binding reads one exact topic")
    } else if topic.contains('\0') {
        Some("it has a NUL character")
    } else if topic.starts_with('$') {
        Some("topics starting with `$` are the broker's own")
    } else if topic.len() > 1024 {
        Some("it is longer than 1024 bytes")
    } else {
        None
    }
}

/// The problems of a device's telemetry against its type, in words (the bundle loader
/// reports them as S006; the compiler never writes such a bundle).
pub fn check(ty: &DeviceType, t: &Telemetry) -> Vec<String> {
    let mut out = Vec::new();
    for b in &t.topics {
        if let Some(p) = topic_problem(&b.topic) {
            out.push(format!("topic {:?}: {p}", b.topic));
        }
        if b.fields.is_empty() {
            out.push(format!("topic {:?} binds no variable", b.topic));
        }
        for f in &b.fields {
            let at = format!("topic {:?}, `{}`", b.topic, f.var);
            let Some(var) = ty.vars.iter().find(|v| v.name == f.var) else {
                out.push(format!("{at}: the type senses no such variable"));
                continue;
            };
            if (b.format == Format::Json) == f.path.is_empty() {
                out.push(format!("{at}: a path is needed for JSON and only for JSON"));
            }
            if f.mul < 1 || f.div < 1 {
                out.push(format!("{at}: scale {}/{} is not positive", f.mul, f.div));
            }
            for e in &f.map {
                let ok = match (&var.ty, &e.to) {
                    (VarType::Bool, Scalar::Bool(_)) => true,
                    (VarType::Int { lo, hi }, Scalar::Int(i)) => lo <= i && i <= hi,
                    (VarType::Enum { members }, Scalar::Str(s)) => members.contains(s),
                    _ => false,
                };
                if !ok {
                    out.push(format!("{at}: maps to {}, not a value of it", e.to));
                }
            }
        }
    }
    for (i, b) in t.topics.iter().enumerate() {
        if t.topics[..i].iter().any(|o| o.topic == b.topic) {
            out.push(format!("topic {:?} is bound twice", b.topic));
        }
    }
    for p in &t.commands {
        if !ty.commands.contains(&p.command) {
            out.push(format!(
                "command `{}`: the type has no such command",
                p.command
            ));
        }
        if let Some(problem) = topic_problem(&p.topic) {
            out.push(format!(
                "command `{}`, topic {:?}: {problem}",
                p.command, p.topic
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Var;

    fn ty() -> DeviceType {
        DeviceType {
            name: "Plug".into(),
            vars: vec![
                Var {
                    name: "power".into(),
                    ty: VarType::Int { lo: 0, hi: 4000 },
                },
                Var {
                    name: "current".into(),
                    ty: VarType::Int { lo: 0, hi: 20000 },
                },
                Var {
                    name: "on".into(),
                    ty: VarType::Bool,
                },
                Var {
                    name: "mode".into(),
                    ty: VarType::Enum {
                        members: vec!["off".into(), "heat".into()],
                    },
                },
            ],
            commands: vec!["turn_off".into()],
            alerts: vec![],
            states: vec!["normal".into()],
            initial: 0,
            transitions: vec![],
        }
    }

    fn f(var: &str, path: &[&str]) -> Field {
        Field {
            var: var.into(),
            path: path.iter().map(|s| s.to_string()).collect(),
            mul: 1,
            div: 1,
            round: None,
            map: vec![],
        }
    }

    fn json(fields: Vec<Field>) -> Binding {
        Binding {
            topic: "tele/plug/SENSOR".into(),
            format: Format::Json,
            fields,
        }
    }

    fn ok(b: &Binding, payload: &str) -> BTreeMap<String, serde_json::Value> {
        match decode(&ty(), b, payload.as_bytes()) {
            Ok(v) => v,
            Err(e) => unreachable!("{payload}: refused: {e:?}"),
        }
    }

    fn refused(b: &Binding, payload: &[u8]) -> Vec<&'static str> {
        match decode(&ty(), b, payload) {
            Ok(v) => unreachable!("accepted: {v:?}"),
            Err(e) => e.iter().map(Refusal::code).collect(),
        }
    }

    #[test]
    fn nested_paths_scaling_and_rounding() {
        let mut current = f("current", &["ENERGY", "Current"]);
        current.mul = 1000;
        let b = json(vec![f("power", &["ENERGY", "Power"]), current]);
        let v = ok(
            &b,
            r#"{"Time":"2026-12-03T10:00:00","ENERGY":{"Power":12,"Current":0.052}}"#,
        );
        assert_eq!(v["power"], 12);
        assert_eq!(v["current"], 52);
        // 0.0525 A is 52.5 mA: not whole, and this binding does not round.
        assert_eq!(
            refused(&b, br#"{"ENERGY":{"Power":12,"Current":0.0525}}"#),
            ["S123"]
        );
        let mut rounded = f("current", &["ENERGY", "Current"]);
        rounded.mul = 1000;
        for (round, want) in [(Round::Nearest, 53), (Round::Down, 52), (Round::Up, 53)] {
            rounded.round = Some(round);
            let b = json(vec![rounded.clone()]);
            assert_eq!(ok(&b, r#"{"ENERGY":{"Current":0.0525}}"#)["current"], want);
        }
        rounded.round = Some(Round::Nearest);
        let b = json(vec![rounded.clone()]);
        assert_eq!(ok(&b, r#"{"ENERGY":{"Current":-0.0025}}"#)["current"], -3);
        assert_eq!(ok(&b, r#"{"ENERGY":{"Current":-0.0024}}"#)["current"], -2);
        assert_eq!(ok(&b, r#"{"ENERGY":{"Current":1.5e-3}}"#)["current"], 2);
    }

    #[test]
    fn division_and_exact_decimals() {
        let mut t = f("power", &["p"]);
        t.div = 10;
        let b = json(vec![t.clone()]);
        assert_eq!(ok(&b, r#"{"p":250}"#)["power"], 25);
        assert_eq!(refused(&b, br#"{"p":255}"#), ["S123"]);
        t.round = Some(Round::Down);
        let b = json(vec![t]);
        assert_eq!(ok(&b, r#"{"p":259}"#)["power"], 25);
        assert_eq!(ok(&b, r#"{"p":-1}"#)["power"], -1);
        // 0.1 + 0.2 style floats: the decimal sent, not its binary approximation.
        let mut c = f("current", &["c"]);
        c.mul = 10;
        let b = json(vec![c]);
        assert_eq!(ok(&b, r#"{"c":0.3}"#)["current"], 3);
    }

    #[test]
    fn maps_and_types() {
        let mut on = f("on", &["POWER"]);
        on.map = vec![
            MapEntry {
                from: Scalar::Str("ON".into()),
                to: Scalar::Bool(true),
            },
            MapEntry {
                from: Scalar::Str("OFF".into()),
                to: Scalar::Bool(false),
            },
        ];
        let b = json(vec![on.clone()]);
        assert_eq!(ok(&b, r#"{"POWER":"ON"}"#)["on"], true);
        assert_eq!(refused(&b, br#"{"POWER":"TOGGLE"}"#), ["S122"]);
        let b = json(vec![f("on", &["contact"]), f("mode", &["mode"])]);
        let v = ok(&b, r#"{"contact":false,"mode":"heat","battery":97}"#);
        assert_eq!(v["on"], false);
        assert_eq!(v["mode"], "heat");
        // Every problem of the message, and nothing of it.
        assert_eq!(refused(&b, br#"{"contact":"false"}"#), ["S122", "S121"]);
        let text = Binding {
            topic: "tele/plug/LWT".into(),
            format: Format::Text,
            fields: vec![Field {
                path: vec![],
                ..on.clone()
            }],
        };
        on.map[0].from = Scalar::Str("Online".into());
        let lwt = Binding {
            fields: vec![Field {
                path: vec![],
                map: vec![
                    MapEntry {
                        from: Scalar::Str("Online".into()),
                        to: Scalar::Bool(true),
                    },
                    MapEntry {
                        from: Scalar::Str("Offline".into()),
                        to: Scalar::Bool(false),
                    },
                ],
                ..f("on", &[])
            }],
            ..text.clone()
        };
        assert_eq!(ok(&text, "ON\n")["on"], true);
        assert_eq!(ok(&lwt, "Offline")["on"], false);
        let n = Binding {
            fields: vec![f("power", &[])],
            ..text
        };
        assert_eq!(ok(&n, " 230 ")["power"], 230);
        assert_eq!(refused(&n, b"23.5"), ["S123"]);
        assert_eq!(refused(&n, b"lots"), ["S122"]);
    }

    #[test]
    fn bad_payloads() {
        let b = json(vec![f("power", &["p"])]);
        assert_eq!(refused(&b, b"\xff\xfe"), ["S120"]);
        assert_eq!(refused(&b, b"[1,2]"), ["S120"]);
        assert_eq!(refused(&b, b"{\"p\":"), ["S120"]);
        assert_eq!(refused(&b, &vec![b' '; MAX_PAYLOAD + 1]), ["S120"]);
        assert_eq!(refused(&b, br#"{"p":null}"#), ["S122"]);
        assert_eq!(refused(&b, br#"{"p":1e300}"#), ["S123"]);
        assert_eq!(refused(&b, br#"{"p":99999999999999999999}"#), ["S123"]);
        assert_eq!(refused(&b, br#"{"q":1}"#), ["S121"]);
        assert_eq!(refused(&b, br#"{"p":{"deeper":1}}"#), ["S122"]);
        let mut huge = f("power", &["p"]);
        huge.mul = i64::MAX;
        assert_eq!(refused(&json(vec![huge]), br#"{"p":3}"#), ["S123"]);
    }

    #[test]
    fn decimals() {
        let d = |s| Decimal::parse(s).map(|d| (d.mantissa, d.exp10));
        assert_eq!(d("0.052"), Some((52, 3)));
        assert_eq!(d("-12"), Some((-12, 0)));
        assert_eq!(d("1e3"), Some((1, -3)));
        assert_eq!(d("2.5E-2"), Some((25, 3)));
        assert_eq!(d("1.7976931348623157e308"), None);
        assert_eq!(d("."), None);
        assert_eq!(d("1.2.3"), None);
        assert_eq!(d("0x10"), None);
    }

    #[test]
    fn checks() {
        let mut bad = f("nope", &[]);
        bad.mul = 0;
        let t = Telemetry {
            topics: vec![
                json(vec![bad, f("on", &["x"])]),
                json(vec![f("on", &["y"])]),
                Binding {
                    topic: "a/+/b".into(),
                    format: Format::Text,
                    fields: vec![],
                },
            ],
            commands: vec![Publish {
                command: "explode".into(),
                topic: "cmnd/plug/POWER".into(),
                payload: "OFF".into(),
            }],
        };
        let problems = check(&ty(), &t);
        assert_eq!(problems.len(), 5, "{problems:#?}");
    }
}
