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

/// The `{name}` holes of `template`, in order: a name (a letter or `_`, then letters,
/// digits and `_`) between braces. Any other brace is text, so a payload can be JSON:
/// `{"state":"OFF"}` has no hole.
pub fn holes(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match hole_at(after) {
            Some(name) => {
                out.push(name);
                rest = &after[name.len() + 1..];
            }
            None => rest = after,
        }
    }
    out
}

/// The name of a hole that `text` (what follows a `{`) starts with.
fn hole_at(text: &str) -> Option<&str> {
    let close = text.find('}')?;
    let name = &text[..close];
    let mut c = name.chars();
    let first = c.next()?;
    ((first.is_ascii_alphabetic() || first == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_'))
    .then_some(name)
}

/// `template` with every hole `fill` gives a value for replaced by it (the others left).
pub fn fill_holes(template: &str, fill: &impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match hole_at(after).and_then(|name| fill(name).map(|v| (name, v))) {
            Some((name, value)) => {
                out.push_str(&value);
                rest = &after[name.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
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
    /// `online = true`: the value every message on the topic gives the variable, whatever
    /// its payload (then `path` is empty, no scale, no map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constant: Option<Scalar>,
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
    #[error("`{var}`: {found} has more than {MAX_DIGITS} significant digits (no device sends more than 17)")]
    TooPrecise { var: String, found: String },
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
            Refusal::NotWhole { .. } | Refusal::TooBig { .. } | Refusal::TooPrecise { .. } => {
                codes::NOT_WHOLE
            }
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
        Format::Json => match Json::object(text) {
            Ok(entries) => Json::Object(entries),
            Err(reason) => return Err(vec![Refusal::NotJson { reason }]),
        },
        Format::Text => Json::text(text.trim()),
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

/// A JSON value as the device wrote it: numbers keep their text (serde_json would read
/// `0.49999999999999999999` as the binary double 0.5), objects their keys in order.
#[derive(Debug)]
enum Json<'a> {
    Null,
    Bool(bool),
    Num(&'a str),
    Str(String),
    Array,
    Object(Vec<(String, &'a serde_json::value::RawValue)>),
}

/// An object's entries, borrowed from the text, duplicates kept (to be refused).
struct Entries<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Entries<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) =
                    m.next_entry::<String, &'de serde_json::value::RawValue>()?
                {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a> Json<'a> {
    /// The entries of the JSON object `text` (the whole of it is checked to be JSON).
    fn object(text: &'a str) -> Result<Vec<(String, &'a serde_json::value::RawValue)>, String> {
        match serde_json::from_str::<Entries<'a>>(text) {
            Ok(e) => Ok(e.0),
            Err(e) => match serde_json::from_str::<&serde_json::value::RawValue>(text) {
                // Valid JSON, but not an object.
                Ok(raw) => Err(format!("it is {}", Json::of(raw).kind())),
                Err(_) => Err(e.to_string()),
            },
        }
    }

    fn of(raw: &'a serde_json::value::RawValue) -> Json<'a> {
        let t = raw.get().trim();
        match t.as_bytes().first() {
            Some(b'n') => Json::Null,
            Some(b't') => Json::Bool(true),
            Some(b'f') => Json::Bool(false),
            Some(b'"') => Json::Str(serde_json::from_str(t).unwrap_or_default()),
            Some(b'[') => Json::Array,
            Some(b'{') => Json::object(t).map_or(Json::Array, Json::Object),
            _ => Json::Num(t),
        }
    }

    /// A text payload as the value it reads as: `true`/`false`, a number (JSON's
    /// grammar), or else the text itself.
    fn text(text: &'a str) -> Json<'a> {
        match text {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ if Decimal::grammar(text) => Json::Num(text),
            _ => Json::Str(text.to_string()),
        }
    }

    fn kind(&self) -> String {
        match self {
            Json::Null => "null".into(),
            Json::Bool(b) => format!("the boolean {b}"),
            Json::Num(n) => format!("the number {n}"),
            Json::Str(s) => format!("the string {s:?}"),
            Json::Array => "an array".into(),
            Json::Object(_) => "an object".into(),
        }
    }
}

/// `ENERGY."Power Factor"`: a path as written in a binding.
fn path_text(path: &[String]) -> String {
    let name = |k: &str| {
        let mut c = k.chars();
        c.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    path.iter()
        .map(|k| if name(k) { k.clone() } else { format!("{k:?}") })
        .collect::<Vec<_>>()
        .join(".")
}

fn field(
    ty: &DeviceType,
    f: &Field,
    root: &Json<'_>,
    format: Format,
) -> Result<serde_json::Value, Refusal> {
    if let Some(c) = &f.constant {
        return Ok(c.json());
    }
    let mut here: Option<Json<'_>> = None;
    for (i, key) in f.path.iter().enumerate() {
        let entries = match here.as_ref().unwrap_or(root) {
            Json::Object(entries) => entries,
            _ => {
                return Err(Refusal::Missing {
                    var: f.var.clone(),
                    path: path_text(&f.path[..=i]),
                })
            }
        };
        let mut found = entries.iter().filter(|(k, _)| k == key);
        let Some((_, raw)) = found.next() else {
            return Err(Refusal::Missing {
                var: f.var.clone(),
                path: path_text(&f.path[..=i]),
            });
        };
        if found.next().is_some() {
            return Err(Refusal::NotJson {
                reason: format!(
                    "`{}` appears twice in one object: which one the device meant is unknown",
                    path_text(&f.path[..=i])
                ),
            });
        }
        here = Some(Json::of(raw));
    }
    let v = here.as_ref().unwrap_or(root);
    let var_ty = ty.vars.iter().find(|x| x.name == f.var).map(|x| &x.ty);
    if !f.map.is_empty() {
        return map(f, v);
    }
    let wrong = |expected: &str| Refusal::WrongType {
        var: f.var.clone(),
        expected: expected.into(),
        found: v.kind(),
    };
    match (var_ty, v) {
        (Some(VarType::Bool), Json::Bool(b)) => Ok((*b).into()),
        (Some(VarType::Bool), _) => Err(wrong("a boolean")),
        (Some(VarType::Int { .. }), Json::Num(text)) => number(f, text),
        (Some(VarType::Int { .. }), _) => Err(wrong(if format == Format::Text {
            "a number"
        } else {
            "a JSON number"
        })),
        (Some(VarType::Enum { .. }), Json::Str(s)) => Ok(s.clone().into()),
        (Some(VarType::Enum { .. }), _) => Err(wrong("a member's name")),
        // The loader refuses a binding of an undeclared variable; the engine would too.
        (None, _) => Err(wrong("a declared variable")),
    }
}

fn map(f: &Field, v: &Json<'_>) -> Result<serde_json::Value, Refusal> {
    // A number matches an integer key and, as written, a string key (`"1"`); a boolean
    // its key and `"true"`/`"false"`.
    let keys: Vec<Scalar> = match v {
        Json::Bool(b) => vec![Scalar::Bool(*b), Scalar::Str(b.to_string())],
        Json::Num(n) => {
            let mut k = vec![Scalar::Str((*n).to_string())];
            if let Ok(i) = n.parse::<i64>() {
                k.push(Scalar::Int(i));
            }
            k
        }
        Json::Str(s) => vec![Scalar::Str(s.clone())],
        _ => vec![],
    };
    for e in &f.map {
        if keys.contains(&e.from) {
            return Ok(e.to.json());
        }
    }
    Err(Refusal::Unmapped {
        var: f.var.clone(),
        found: v.kind(),
        known: f
            .map
            .iter()
            .map(|e| e.from.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn number(f: &Field, text: &str) -> Result<serde_json::Value, Refusal> {
    let scaled = if (f.mul, f.div) == (1, 1) {
        String::new()
    } else if f.div == 1 {
        format!(" after scaling by {}", f.mul)
    } else {
        format!(" after scaling by {}/{}", f.mul, f.div)
    };
    let too_big = || Refusal::TooBig {
        var: f.var.clone(),
        found: text.to_string(),
        scaled: scaled.clone(),
    };
    let d = match Decimal::parse(text) {
        Parsed::Exact(d) => d,
        Parsed::Huge => return Err(too_big()),
        Parsed::Tiny { negative } => {
            // Within 10^-10 of zero, and under 0.1 after any scale: never whole.
            return match f.round {
                None => Err(Refusal::NotWhole {
                    var: f.var.clone(),
                    found: text.to_string(),
                    scaled,
                }),
                Some(Round::Nearest) => Ok(0.into()),
                Some(Round::Down) => Ok(if negative { -1 } else { 0 }.into()),
                Some(Round::Up) => Ok(if negative { 0 } else { 1 }.into()),
            };
        }
        Parsed::TooPrecise => {
            return Err(Refusal::TooPrecise {
                var: f.var.clone(),
                found: text.to_string(),
            })
        }
        Parsed::NotNumber => {
            return Err(Refusal::WrongType {
                var: f.var.clone(),
                expected: "a number".into(),
                found: format!("{text:?}"),
            })
        }
    };
    match d.scaled(f.mul, f.div, f.round) {
        Some(Ok(i)) => Ok(i.into()),
        Some(Err(())) => Err(Refusal::NotWhole {
            var: f.var.clone(),
            found: text.to_string(),
            scaled,
        }),
        None => Err(too_big()),
    }
}

/// An exact decimal `num / den`, both positive powers-of-ten-bounded: at most 19
/// significant digits, between 10^-10 and 10^29 in magnitude, so that every scale
/// (factors up to 10^9) stays within 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    num: i128,
    den: i128,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Exact(Decimal),
    /// Nonzero and under 10^-10 in magnitude.
    Tiny {
        negative: bool,
    },
    /// 10^29 or more in magnitude: no scale brings it within 64 bits.
    Huge,
    /// More than 19 significant digits: not read (no device sends more than 17).
    TooPrecise,
    NotNumber,
}

/// Significant digits read exactly.
pub const MAX_DIGITS: usize = 19;

impl Decimal {
    /// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn grammar(s: &str) -> bool {
        let b = s.as_bytes();
        let mut i = 0;
        let digits = |i: &mut usize| {
            let start = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            *i - start
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int_start = i;
        let n = digits(&mut i);
        if n == 0 || (n > 1 && b[int_start] == b'0') {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if digits(&mut i) == 0 {
                return false;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                return false;
            }
        }
        i == b.len()
    }

    fn parse(s: &str) -> Parsed {
        if !Decimal::grammar(s) {
            return Parsed::NotNumber;
        }
        let negative = s.starts_with('-');
        let body = s.trim_start_matches('-');
        let (num, exp) = match body.find(['e', 'E']) {
            Some(i) => (&body[..i], &body[i + 1..]),
            None => (body, "0"),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        // value = digits × 10^k
        let digits = format!("{int}{frac}");
        let digits = digits.trim_start_matches('0');
        if digits.is_empty() {
            return Parsed::Exact(Decimal { num: 0, den: 1 });
        }
        let trail = digits.len() - digits.trim_end_matches('0').len();
        let digits = digits.trim_end_matches('0');
        let exp: i64 = match exp.parse::<i64>() {
            Ok(e) => e,
            // An exponent beyond 64 bits: as far from 1 as a number can be.
            Err(_) if exp.starts_with('-') => return Parsed::Tiny { negative },
            Err(_) => return Parsed::Huge,
        };
        let frac_len = i64::try_from(frac.len()).unwrap_or(i64::MAX);
        let trail = i64::try_from(trail).unwrap_or(0);
        let k = exp.saturating_sub(frac_len).saturating_add(trail);
        let sig = i64::try_from(digits.len()).unwrap_or(i64::MAX);
        // 10^(sig-1+k) <= |value| < 10^(sig+k)
        if sig.saturating_add(k) > 29 {
            return Parsed::Huge;
        }
        if sig.saturating_add(k) < -10 {
            return Parsed::Tiny { negative };
        }
        if digits.len() > MAX_DIGITS {
            return Parsed::TooPrecise;
        }
        let Ok(m) = digits.parse::<i128>() else {
            return Parsed::TooPrecise;
        };
        let m = if negative { -m } else { m };
        // |k| <= 29 + 10 here: sig >= 1 and -10 <= sig + k <= 29, sig <= 19.
        let pow = |e: i64| 10i128.checked_pow(u32::try_from(e).unwrap_or(u32::MAX));
        let d = if k >= 0 {
            pow(k)
                .and_then(|p| m.checked_mul(p))
                .map(|num| Decimal { num, den: 1 })
        } else {
            pow(-k).map(|den| Decimal { num: m, den })
        };
        d.map_or(Parsed::Huge, Parsed::Exact)
    }

    /// `self × mul / div`, rounded as asked: `Some(Ok(n))`, `Some(Err(()))` when not
    /// whole and not rounded, `None` beyond 64 bits.
    fn scaled(self, mul: i64, div: i64, round: Option<Round>) -> Option<Result<i64, ()>> {
        let num = self.num.checked_mul(i128::from(mul))?;
        let den = self.den.checked_mul(i128::from(div))?;
        let q = num.div_euclid(den);
        let r = num.rem_euclid(den);
        let whole = if r == 0 {
            q
        } else {
            match round {
                None => return Some(Err(())),
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
        i64::try_from(whole).ok().map(Ok)
    }
}

/// What a message is to a site ([`Topics::read`]).
#[derive(Debug)]
pub enum Message {
    /// The reading of the device that binds its topic.
    Reading(crate::engine::Input),
    /// No device binds its topic.
    Unbound,
    /// The binding cannot read it (S12x): it changes nothing.
    Refused {
        device: String,
        refusals: Vec<Refusal>,
    },
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

    /// What a message on `topic` is to the site of `m` (the manifest `self` was made
    /// from): the reading its binding makes of `payload` for the device that binds it,
    /// or why there is none. The one path from a message to an input, for `run` and for
    /// `simulate`.
    pub fn read(&self, m: &crate::manifest::Manifest, topic: &str, payload: &[u8]) -> Message {
        let Some((d, b)) = self.lookup(topic) else {
            return Message::Unbound;
        };
        let device = &m.devices[d];
        let (Some(ty), Some(binding)) = (
            m.device_types.iter().find(|t| t.name == device.ty),
            device.telemetry.as_ref().and_then(|t| t.topics.get(b)),
        ) else {
            return Message::Unbound;
        };
        match decode(ty, binding, payload) {
            Ok(values) => Message::Reading(crate::engine::Input::Reading {
                device: device.name.clone(),
                values,
            }),
            Err(refusals) => Message::Refused {
                device: device.name.clone(),
                refusals,
            },
        }
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
        Some("it has a wildcard (`+` or `#`); topics here are exact")
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
            if f.constant.is_none() && (b.format == Format::Json) == f.path.is_empty() {
                out.push(format!("{at}: a path is needed for JSON and only for JSON"));
            }
            if let Some(c) = &f.constant {
                let ok = match (&var.ty, c) {
                    (VarType::Bool, Scalar::Bool(_)) => true,
                    (VarType::Int { lo, hi }, Scalar::Int(i)) => lo <= i && i <= hi,
                    (VarType::Enum { members }, Scalar::Str(s)) => members.contains(s),
                    _ => false,
                };
                if !ok || !f.path.is_empty() || !f.map.is_empty() || (f.mul, f.div) != (1, 1) {
                    out.push(format!("{at}: the constant {c} is not a value of it alone"));
                }
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
            constant: None,
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
        let d = |s| match Decimal::parse(s) {
            Parsed::Exact(d) => Some((d.num, d.den)),
            _ => None,
        };
        assert_eq!(d("0.052"), Some((52, 1000)));
        assert_eq!(d("-12"), Some((-12, 1)));
        assert_eq!(d("1e3"), Some((1000, 1)));
        assert_eq!(d("2.5E-2"), Some((25, 1000)));
        assert_eq!(d("-0.0"), Some((0, 1)));
        assert_eq!(d("9007199254740993.0"), Some((9007199254740993, 1)));
        assert_eq!(Decimal::parse("1.7976931348623157e308"), Parsed::Huge);
        assert_eq!(Decimal::parse("1e400"), Parsed::Huge);
        assert_eq!(Decimal::parse("1e-50"), Parsed::Tiny { negative: false });
        assert_eq!(
            Decimal::parse("-1e-99999999999999999999"),
            Parsed::Tiny { negative: true }
        );
        assert_eq!(Decimal::parse("0.49999999999999999999"), Parsed::TooPrecise);
        for bad in [
            ".", ".5", "5.", "+5", "01", "1.2.3", "0x10", "NaN", "1e", "--1", "",
        ] {
            assert_eq!(Decimal::parse(bad), Parsed::NotNumber, "{bad}");
        }
    }

    /// Numbers are read from the text the device sent, never through a binary double:
    /// serde_json reads these (and keys that repeat) differently.
    #[test]
    fn exact_where_a_double_is_not() {
        let mut r = f("power", &["v"]);
        r.round = Some(Round::Nearest);
        let b = json(vec![r.clone()]);
        // A double rounds this to 0.5, then to 1.
        assert_eq!(ok(&b, r#"{"v":0.4999999999999999999}"#)["power"], 0);
        assert_eq!(
            ok(&b, r#"{"v":123456789012345678.5}"#)["power"],
            123456789012345679i64
        );
        assert_eq!(ok(&b, r#"{"v":-1e-50}"#)["power"], 0);
        // Not whole, though a double says 1.
        assert_eq!(
            refused(
                &json(vec![f("power", &["v"])]),
                br#"{"v":1.000000000000000001}"#
            ),
            ["S123"]
        );
        assert_eq!(
            ok(
                &json(vec![f("power", &["v"])]),
                r#"{"v":9007199254740993.0}"#
            )["power"],
            9007199254740993i64
        );
        let mut down = f("power", &[]);
        down.round = Some(Round::Down);
        let text = Binding {
            topic: "t".into(),
            format: Format::Text,
            fields: vec![down.clone()],
        };
        assert_eq!(ok(&text, "-1e-50")["power"], -1);
        assert_eq!(ok(&text, "0.0000000000000000000000000001")["power"], 0);
        down.div = 1_000_000_000;
        let text = Binding {
            fields: vec![down],
            ..text
        };
        assert_eq!(ok(&text, "1234567890123456789")["power"], 1234567890);
        // Too many digits, too large: said so, never approximated.
        assert_eq!(refused(&text, b"1234567890123456789012345678"), ["S123"]);
        assert_eq!(
            refused(&json(vec![f("power", &["v"])]), br#"{"v":1e400}"#),
            ["S123"]
        );
        // One key twice: which the device meant is unknown.
        assert_eq!(
            refused(&json(vec![f("power", &["v"])]), br#"{"v":1,"v":2}"#),
            ["S120"]
        );
        // Quoted keys are shown quoted.
        match decode(
            &ty(),
            &json(vec![f("power", &["ENERGY", "Power Factor"])]),
            br#"{"ENERGY":{}}"#,
        ) {
            Err(e) => assert!(
                e[0].to_string().contains(r#"ENERGY."Power Factor""#),
                "{e:?}"
            ),
            Ok(v) => unreachable!("{v:?}"),
        }
    }

    #[test]
    fn constants_whatever_the_payload() {
        let mut online = f("on", &[]);
        online.constant = Some(Scalar::Bool(true));
        let b = json(vec![f("power", &["p"]), online.clone()]);
        let v = ok(&b, r#"{"p":7}"#);
        assert_eq!(
            (v["power"].clone(), v["on"].clone()),
            (7.into(), true.into())
        );
        // The message is still one reading or nothing.
        assert_eq!(refused(&b, br#"{"q":7}"#), ["S121"]);
        let t = Telemetry {
            topics: vec![Binding {
                topic: "t".into(),
                format: Format::Text,
                fields: vec![Field {
                    constant: Some(Scalar::Int(3)),
                    ..online
                }],
            }],
            commands: vec![],
        };
        assert_eq!(check(&ty(), &t).len(), 1, "a constant of the wrong type");
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
