//! The event API: sensor readings, alerts and operator actions as HTTP/JSON on a loopback
//! address or a Unix socket, every request with a bearer token; and the client the
//! `status`, `event`, `alert` and `reset` subcommands use.
//!
//! The server only authenticates, parses and pre-checks requests. It never journals and
//! never changes the engine: each good request becomes a [`Request`] on a channel to the
//! main loop, which validates it against its engine, journals it, applies it and answers.
//! A bad request is answered here (4xx) and the loop never sees it. Endpoints, bodies and
//! error codes: `docs/runtime.md`, "The API".

use crate::bundle::Bundle;
use crate::codes;
use crate::enforcement::Enforcement;
use crate::engine::{Config, Engine, Input, InputError};
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use miette::Diagnostic;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Where the API listens when told nothing else.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7878);
/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// How long a request waits for the main loop before it is answered 503.
pub const LOOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's head (request line and headers),
/// counted from when the server starts waiting for it: on a new connection, and on a kept
/// alive one after the previous answer, so it is also how long a connection may sit idle.
/// Then the connection is closed (hyper answers `408` first if part of a head came).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's body may take to arrive in full once its head has; then it is
/// answered `408` (S308) and the connection closed.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many connections are served at once. Further ones wait, unaccepted, until one
/// closes (the timeouts above bound how long a slow client holds its place).
pub const MAX_CONNECTIONS: usize = 256;
/// How long requests in progress may take to finish once the API is told to stop; then
/// their connections are dropped and [`serve`] returns.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The shortest token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;
/// The largest response body the client reads (a status of many thousand devices).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

pub mod console;

// ---------------------------------------------------------------------------------------
// The seam with the main loop.

/// What the API asks of the main loop. Every request is answered through `reply`; a reply
/// dropped unanswered is reported to the client as the shim being unavailable.
#[derive(Debug)]
pub enum Request {
    /// An input to validate, journal and apply. `Err` when the engine refuses it (nothing
    /// journaled).
    Submit {
        input: Input,
        /// Who gave it, journaled with it when known: `api` for an operator action sent
        /// with the token, `console:ID` for one from a console session.
        by: Option<String>,
        reply: oneshot::Sender<Result<Accepted, Vec<InputError>>>,
    },
    /// The site's current state.
    Status {
        reply: oneshot::Sender<StatusReport>,
    },
    /// A device's journaled history, newest first, at most `limit` entries (the
    /// console's device page). `Err`: the journal could not be read, in words.
    History {
        device: String,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<crate::journal::HistoryEntry>, String>>,
    },
}

/// An input the main loop accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Its sequence number in the journal.
    pub seq: u64,
    /// The time it was accepted at (Unix milliseconds).
    pub t_ms: u64,
    /// The state changes it caused, timers that ran out before it included, in order.
    pub changes: Vec<Changed>,
}

/// One state change, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub device: String,
    pub from: String,
    pub to: String,
    /// As [`crate::simulate::cause_text`] writes it.
    pub cause: String,
}

/// The site as the main loop sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub site: String,
    /// The sha256 of the running bundle's manifest.
    pub bundle_sha256: String,
    /// Since the shim started.
    pub uptime_s: u64,
    /// The engine's time (Unix milliseconds).
    pub now_ms: u64,
    /// In site order.
    pub devices: Vec<DeviceStatus>,
    /// The MQTT client, when the shim runs with a broker (`--mqtt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<crate::mqtt::MqttStatus>,
}

/// One device in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub device_type: String,
    pub state: String,
    /// Since when it is in `state` (Unix milliseconds); `None`: since the journal began,
    /// in its initial state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// `since_ms` in RFC 3339 ([`rfc3339`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Why it entered `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The µmboxes running in front of it.
    pub umboxes: Vec<String>,
    /// Whether the node holds its state's posture, seen when the status was made.
    pub enforcement: Enforcement,
    /// What the posture in force lets through, in one line
    /// ([`crate::enforcement::Crossing`]): the state's chain when `enforced`, what was
    /// installed instead when `failed_closed`; absent when `not_enforced` (nothing is
    /// known of what holds, so nothing is claimed) and when `off_switch` (nothing of it
    /// crosses the switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crosses: Option<String>,
    /// The same, cell by cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossing: Option<Vec<crate::enforcement::CrossingCell>>,
}

impl DeviceStatus {
    /// Sets `crosses` and `crossing` from a crossing, or clears them.
    pub fn with_crossing(mut self, c: Option<crate::enforcement::Crossing>) -> DeviceStatus {
        (self.crosses, self.crossing) = match c {
            Some(c) => (Some(c.line), Some(c.cells)),
            None => (None, None),
        };
        self
    }
}

/// Unix milliseconds as RFC 3339 in UTC: `2025-03-01T20:04:40.250Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    let frac = ms % 1000;
    if frac == 0 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{frac:03}Z")
    }
}

/// A status as the `status` subcommand prints it: a header line, then one line a device
/// (name, type, state, enforcement, what crosses, since, µmboxes, why), and for a device
/// whose posture is not in force a line of its own saying what is and why. What crosses
/// is `unknown` where the status claims nothing (a device not enforced), and `not
/// applicable` for a device off the switch.
pub fn render_status(r: &StatusReport) -> String {
    let sha: String = r.bundle_sha256.chars().take(12).collect();
    let (h, m, s) = (r.uptime_s / 3600, r.uptime_s / 60 % 60, r.uptime_s % 60);
    let mut out = format!("site {}  bundle {sha}  up {h}h {m:02}m {s:02}s\n", r.site);
    if let Some(m) = &r.mqtt {
        out.push_str(&render_mqtt(m));
    }
    let rows: Vec<[String; 8]> = r
        .devices
        .iter()
        .map(|d| {
            [
                d.name.clone(),
                d.device_type.clone(),
                d.state.clone(),
                d.enforcement.label().to_string(),
                match (&d.enforcement, &d.crosses) {
                    // Nothing of it is on the switch: there is no crossing to speak of.
                    (Enforcement::OffSwitch, _) => "not applicable".to_string(),
                    (Enforcement::NotEnforced { .. }, _) | (_, None) => "unknown".to_string(),
                    (_, Some(line)) => line.clone(),
                },
                d.since.clone().unwrap_or_else(|| "-".to_string()),
                if d.umboxes.is_empty() {
                    "-".to_string()
                } else {
                    d.umboxes.join(",")
                },
                d.cause
                    .clone()
                    .unwrap_or_else(|| "initial state".to_string()),
            ]
        })
        .collect();
    let header = [
        "device",
        "type",
        "state",
        "enforcement",
        "crosses",
        "since",
        "umboxes",
        "why",
    ]
    .map(String::from);
    let mut widths = [0usize; 8];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 8]| {
        let mut l = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(&header));
    for (row, d) in rows.iter().zip(&r.devices) {
        out.push_str(&line(row));
        if !d.enforcement.is_enforced() {
            out.push_str(&format!("  {}: {}\n", d.name, d.enforcement));
        }
    }
    out
}

/// The MQTT client's line of the status: the broker, its state since when, what came of
/// the messages and commands, and the last error.
fn render_mqtt(m: &crate::mqtt::MqttStatus) -> String {
    let refused: u64 = m.refused.values().sum();
    // Not yet connected and failing: as loud as a lost connection.
    let state = match (m.state, &m.last_error) {
        (crate::mqtt::LinkState::Connecting, Some(_)) => "CONNECTING (failing)".to_string(),
        (s, _) => s.to_string(),
    };
    let mut line = format!(
        "mqtt {}  {} since {}  {} topics  {} received, {} applied, {} refused",
        m.broker,
        state,
        rfc3339(m.since_ms),
        m.topics,
        m.received,
        m.applied,
        refused
    );
    if !m.refused.is_empty() {
        let by: Vec<String> = m.refused.iter().map(|(c, n)| format!("{c} {n}")).collect();
        line.push_str(&format!(" ({})", by.join(", ")));
    }
    line.push_str(&format!(
        ", {} retained ignored; {} commands published, {} delivered\n",
        m.retained_ignored, m.commands_published, m.commands_delivered
    ));
    if let Some(e) = &m.last_error {
        if m.state != crate::mqtt::LinkState::Connected {
            line.push_str(&format!("  mqtt: {e}\n"));
        }
    }
    line
}

/// An accepted input as the `event`, `alert` and `reset` subcommands print it.
pub fn render_accepted(a: &Accepted) -> String {
    if a.changes.is_empty() {
        return format!("accepted (seq {}): no state change\n", a.seq);
    }
    let mut out = format!("accepted (seq {})\n", a.seq);
    for c in &a.changes {
        out.push_str(&format!(
            "{}: {} -> {}  {}\n",
            c.device, c.from, c.to, c.cause
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Errors on the wire.

/// Every error answer: `{"error": {...}, "errors": [...]}`. `error` is the first problem,
/// `errors` all of them (the first included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorItem,
    #[serde(default)]
    pub errors: Vec<ErrorItem>,
}

/// One problem: a stable code (`codes.rs`), a message, and advice if there is any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorItem {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl ErrorItem {
    fn new(code: &str, message: impl Into<String>, help: Option<&str>) -> ErrorItem {
        ErrorItem {
            code: code.to_string(),
            message: message.into(),
            help: help.map(str::to_string),
        }
    }
}

impl From<&InputError> for ErrorItem {
    fn from(e: &InputError) -> ErrorItem {
        ErrorItem {
            code: e.code().to_string(),
            message: e.to_string(),
            help: Diagnostic::help(e).map(|h| h.to_string()),
        }
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(status: StatusCode, items: Vec<ErrorItem>) -> Response {
    let Some(first) = items.first().cloned() else {
        return error_response(
            status,
            vec![ErrorItem::new(codes::UNAVAILABLE, "refused", None)],
        );
    };
    let codes = Refusal(items.iter().map(|i| i.code.clone()).collect());
    let mut resp = json_response(
        status,
        &ErrorBody {
            error: first,
            errors: items,
        },
    );
    // For the `count` middleware (`/metrics`).
    resp.extensions_mut().insert(codes);
    resp
}

/// The codes of a refused request, on its response, for [`count`].
#[derive(Debug, Clone)]
struct Refusal(Vec<String>);

fn error(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    help: Option<&str>,
) -> Response {
    error_response(status, vec![ErrorItem::new(code, message, help)])
}

/// The engine's refusal: 404 when a device is unknown, 409 for the shim's own clock, 422
/// otherwise (the body was well formed but says something the site does not have).
fn refused(errors: &[InputError]) -> Response {
    let status = if errors
        .iter()
        .any(|e| matches!(e, InputError::UnknownDevice { .. }))
    {
        StatusCode::NOT_FOUND
    } else if errors.iter().any(|e| {
        matches!(
            e,
            InputError::TimeBackwards { .. } | InputError::TooFarAhead { .. }
        )
    }) {
        StatusCode::CONFLICT
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    error_response(status, errors.iter().map(ErrorItem::from).collect())
}

fn unavailable(message: &str) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::UNAVAILABLE,
        message,
        Some("retry later; an input whose answer was lost may have been taken (`status` says what the devices' states are now)"),
    )
}

// ---------------------------------------------------------------------------------------
// Authentication.

/// The API's bearer token. Its text is never printed.
#[derive(Clone)]
pub struct Token {
    text: String,
    digest: [u8; 32],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// A token file or token that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file `{path}`: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file `{path}` can be read or written by any user (mode {mode:04o})")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the token is empty")]
    Empty,
    #[error("the token is {len} bytes long; at least {MIN_TOKEN_LEN} are needed")]
    TooShort { len: usize },
    #[error("the token has characters other than printable ASCII")]
    NotPrintable,
}

impl Diagnostic for TokenError {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let h: Box<dyn fmt::Display> = match self {
            TokenError::Exposed { path, .. } => Box::new(format!(
                "anyone could reset devices with it: `chmod o-rwx {}`",
                path.display()
            )),
            TokenError::Empty | TokenError::TooShort { .. } | TokenError::NotPrintable => {
                Box::new("make one with `head -c 32 /dev/urandom | base64 > TOKEN_FILE` (one line)")
            }
            TokenError::Unreadable { .. } => {
                Box::new("give its path with `--token-file` or `KALKI_TOKEN_FILE`")
            }
        };
        Some(h)
    }
}

impl Token {
    /// A token from its text. Surrounding whitespace (a trailing newline) is not part of
    /// it; what remains must be printable ASCII, at least [`MIN_TOKEN_LEN`] bytes.
    pub fn new(text: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(TokenError::Empty);
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable);
        }
        if text.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort { len: text.len() });
        }
        Ok(Token {
            text: text.to_string(),
            digest: Sha256::digest(text.as_bytes()).into(),
        })
    }

    /// Reads a token file. A file other users may read or write is refused: whoever has
    /// the token can reset any device to its least restrictive state.
    pub fn from_file(path: &FsPath) -> Result<Token, TokenError> {
        let unreadable = |source| TokenError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o007 != 0 {
            return Err(TokenError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        Token::new(&text)
    }

    /// Compares a presented token with this one in time independent of where they differ
    /// (and of the presented one's length): their digests are compared in full.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        let other: [u8; 32] = Sha256::digest(presented).into();
        let diff = self
            .digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

// ---------------------------------------------------------------------------------------
// Pre-checking inputs.

/// Checks inputs against the site before they are sent to the main loop, so that one the
/// engine would refuse whatever its time and states never reaches it: the engine's own
/// checks that depend on neither ([`Engine::validate_static`]), on a fresh engine of the
/// running bundle. The main loop validates again, in full: this is a filter, not the
/// authority. Cheap to clone; [`Checker::replace`] after a bundle
/// upgrade.
#[derive(Clone, Debug)]
pub struct Checker {
    engine: Arc<RwLock<Arc<Engine>>>,
    /// The running bundle's manifest (the console draws state machines from it).
    manifest: Arc<RwLock<Arc<kalki_model::manifest::Manifest>>>,
}

impl Checker {
    pub fn new(bundle: &Bundle) -> Checker {
        Checker {
            engine: Arc::new(RwLock::new(Arc::new(Engine::new(
                bundle,
                Config::default(),
                0,
            )))),
            manifest: Arc::new(RwLock::new(Arc::new(bundle.manifest.clone()))),
        }
    }

    /// Checks against `bundle` from now on.
    pub fn replace(&self, bundle: &Bundle) {
        let fresh = Arc::new(Engine::new(bundle, Config::default(), 0));
        let mut guard = self.engine.write().unwrap_or_else(|e| e.into_inner());
        *guard = fresh;
        let mut m = self.manifest.write().unwrap_or_else(|e| e.into_inner());
        *m = Arc::new(bundle.manifest.clone());
    }

    /// The manifest of the bundle checked against.
    pub fn manifest(&self) -> Arc<kalki_model::manifest::Manifest> {
        self.manifest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything wrong with `input` that does not depend on time or state
    /// ([`Engine::validate_static`]): the fresh engine's clock and states are not the
    /// main loop's, so an alert from a µmbox its device's current chain lacks (S111) is
    /// left to the main loop's [`Engine::validate`].
    pub fn check(&self, input: &Input) -> Result<(), Vec<InputError>> {
        let engine = self
            .engine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        engine.validate_static(input)
    }
}

// ---------------------------------------------------------------------------------------
// Listening.

/// Where the API listens or the client connects: `HOST:PORT` (an IP address or
/// `localhost`; `http://` in front allowed) or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Endpoint, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path".to_string());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if s.starts_with("https://") {
            return Err(format!(
                "`{s}`: the API speaks plain HTTP on loopback or a Unix socket, not HTTPS"
            ));
        }
        let rest = s.strip_prefix("http://").unwrap_or(s);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Ok(a) = rest.parse::<SocketAddr>() {
            return Ok(Endpoint::Tcp(a));
        }
        if let Some(port) = rest.strip_prefix("localhost:") {
            if let Ok(port) = port.parse::<u16>() {
                return Ok(Endpoint::Tcp(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    port,
                )));
            }
        }
        Err(format!(
            "`{s}` is not an address: give `HOST:PORT` with an IP address or localhost (`127.0.0.1:7878`), or `unix:PATH`"
        ))
    }
}

/// Whether the API may listen on an address other hosts can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Loopback addresses only (the default).
    LoopbackOnly,
    /// Any address: an explicit opt-in (`--listen-any`).
    AnyAddress,
}

/// The API cannot listen.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refusing to listen on `{addr}`, which is not a loopback address")]
    NotLoopback { addr: SocketAddr },
    #[error("cannot listen on `{endpoint}`: {source}")]
    Bind {
        endpoint: Endpoint,
        source: std::io::Error,
    },
    #[error("`{path}` is in use: another process is listening on it")]
    SocketInUse { path: PathBuf },
    #[error("`{path}` exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
}

impl Diagnostic for ServeError {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self {
            ServeError::NotLoopback { .. } => Some(Box::new(
                "anyone who reaches it can try tokens; pass `--listen-any` to mean it",
            )),
            ServeError::SocketInUse { .. } => Some(Box::new("is another kalki-shim running?")),
            _ => None,
        }
    }
}

/// A bound listener, ready for [`serve`].
#[derive(Debug)]
pub struct Listener {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Tcp(tokio::net::TcpListener),
    Unix {
        listener: tokio::net::UnixListener,
        path: PathBuf,
        /// (device, inode) of the socket file: removed at the end only if it is still ours.
        id: (u64, u64),
    },
}

impl Listener {
    /// Binds `endpoint`. A TCP address must be a loopback one unless `exposure` says
    /// otherwise. A Unix socket is created with mode 0600 (bound under a temporary name,
    /// restricted, then renamed into place); a socket file left by a dead process is
    /// replaced, but never one another process listens on, nor a file that is no socket.
    pub async fn bind(endpoint: &Endpoint, exposure: Exposure) -> Result<Listener, ServeError> {
        let bind_err = |source| ServeError::Bind {
            endpoint: endpoint.clone(),
            source,
        };
        match endpoint {
            Endpoint::Tcp(addr) => {
                if exposure == Exposure::LoopbackOnly && !addr.ip().is_loopback() {
                    return Err(ServeError::NotLoopback { addr: *addr });
                }
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(bind_err)?;
                Ok(Listener {
                    inner: Inner::Tcp(l),
                })
            }
            Endpoint::Unix(path) => {
                match std::fs::symlink_metadata(path) {
                    Ok(meta) if meta.file_type().is_socket() => {
                        match std::os::unix::net::UnixStream::connect(path) {
                            Ok(_) => return Err(ServeError::SocketInUse { path: path.clone() }),
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                            Err(e) => return Err(bind_err(e)),
                        }
                    }
                    Ok(_) => return Err(ServeError::NotASocket { path: path.clone() }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(bind_err(e)),
                }
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
                if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_socket()) {
                    let _ = std::fs::remove_file(&tmp);
                }
                let listener = tokio::net::UnixListener::bind(&tmp).map_err(bind_err)?;
                let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                    .and_then(|()| std::fs::rename(&tmp, path))
                    .and_then(|()| std::fs::metadata(path));
                match placed {
                    Ok(meta) => Ok(Listener {
                        inner: Inner::Unix {
                            listener,
                            path: path.clone(),
                            id: (meta.dev(), meta.ino()),
                        },
                    }),
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        Err(bind_err(e))
                    }
                }
            }
        }
    }

    /// Where it listens (with the port the system chose for port 0).
    pub fn endpoint(&self) -> Result<Endpoint, std::io::Error> {
        match &self.inner {
            Inner::Tcp(l) => l.local_addr().map(Endpoint::Tcp),
            Inner::Unix { path, .. } => Ok(Endpoint::Unix(path.clone())),
        }
    }

    async fn accept(&self) -> std::io::Result<Stream> {
        match &self.inner {
            Inner::Tcp(l) => l.accept().await.map(|(s, _)| Stream::Tcp(s)),
            Inner::Unix { listener, .. } => listener.accept().await.map(|(s, _)| Stream::Unix(s)),
        }
    }

    /// Stops listening; a Unix socket file is removed if it is still the one bound (not
    /// one a newer shim put in its place).
    fn close(self) {
        if let Inner::Unix { listener, path, id } = self.inner {
            drop(listener);
            if std::fs::symlink_metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == id) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// An accepted connection.
enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

// ---------------------------------------------------------------------------------------
// Serving.

/// What [`serve`] needs besides a listener and the channel, and the limits that keep
/// slow or idle clients from holding the API.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub token: Token,
    pub checker: Checker,
    /// How long a request waits for the main loop ([`LOOP_TIMEOUT`]).
    pub timeout: Duration,
    /// How long a client may take to send a request head, and a connection may sit idle
    /// between requests ([`HEADER_TIMEOUT`]).
    pub header_timeout: Duration,
    /// How long a request body may take to arrive ([`BODY_TIMEOUT`]).
    pub body_timeout: Duration,
    /// How many connections are served at once, at least 1 ([`MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// How long requests in progress may take to finish after the shutdown signal
    /// ([`SHUTDOWN_GRACE`]).
    pub shutdown_grace: Duration,
    /// What `GET /metrics` serves, and where API inputs are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The status the main loop publishes for the console's live tables: from a look at
    /// the node taken after whatever may have changed a device's status, at most every
    /// [`PUBLISH_EVERY`], and only while someone watches (so a thousand devices' events
    /// and any number of open consoles cost one look per period). `None`: each stream
    /// asks for a status every [`console::POLL`].
    pub published: Option<watch::Receiver<Published>>,
    /// The console's sessions' lifetimes ([`console::IDLE`], [`console::ABSOLUTE`]).
    pub session_idle: Duration,
    pub session_absolute: Duration,
}

impl ServeOptions {
    pub fn new(token: Token, checker: Checker) -> ServeOptions {
        ServeOptions {
            token,
            checker,
            timeout: LOOP_TIMEOUT,
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            shutdown_grace: SHUTDOWN_GRACE,
            metrics: Arc::default(),
            published: None,
            session_idle: console::IDLE,
            session_absolute: console::ABSOLUTE,
        }
    }
}

#[derive(Clone)]
struct AppState {
    token: Arc<Token>,
    checker: Checker,
    timeout: Duration,
    body_timeout: Duration,
    tx: mpsc::Sender<Request>,
    metrics: Arc<crate::metrics::Metrics>,
    sessions: Arc<console::Sessions>,
    published: Option<watch::Receiver<Published>>,
}

/// The last status the main loop published ([`ServeOptions::published`]); `None` before
/// the first.
pub type Published = Option<Arc<StatusReport>>;

/// How often, at most, the main loop publishes a status for the console.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// Serves the API until `shutdown` completes, then stops listening (a Unix socket file is
/// removed if it is still the one bound), lets requests in progress finish for at most
/// `options.shutdown_grace`, drops the connections left and returns.
///
/// Each connection is served by hyper's HTTP/1 server with a header read timeout, at most
/// `options.max_connections` at once: when all are taken, the next connection waits in
/// the listen queue until one closes.
pub async fn serve(
    listener: Listener,
    options: ServeOptions,
    tx: mpsc::Sender<Request>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let state = AppState {
        token: Arc::new(options.token),
        checker: options.checker,
        timeout: options.timeout,
        body_timeout: options.body_timeout,
        tx,
        metrics: options.metrics,
        sessions: Arc::new(console::Sessions::new(
            options.session_idle,
            options.session_absolute,
        )),
        published: options.published,
    };
    let app = router(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    let slots = Arc::new(Semaphore::new(
        options.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    // Turns true at shutdown: every connection then finishes the request it is in (if
    // any) and closes.
    let (closing_tx, closing) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let next = async {
            let slot = slots.clone().acquire_owned().await;
            (slot, listener.accept().await)
        };
        tokio::select! {
            () = &mut shutdown => break,
            // Finished connections, reaped as they end.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            (slot, accepted) = next => match (slot, accepted) {
                (Ok(slot), Ok(stream)) => {
                    let (http, app, closing) = (http.clone(), app.clone(), closing.clone());
                    conns.spawn(async move {
                        match stream {
                            Stream::Tcp(s) => connection(s, &http, app, closing, slot).await,
                            Stream::Unix(s) => connection(s, &http, app, closing, slot).await,
                        }
                    });
                }
                // The semaphore is never closed.
                (Err(_), _) => break,
                // A connection that failed before it was accepted concerns its client
                // only; anything else (out of file descriptors) may pass: wait a little.
                (Ok(_), Err(e)) => {
                    if !is_connection_error(&e) {
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            },
        }
    }
    listener.close();
    let _ = closing_tx.send(true);
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(options.shutdown_grace, drained)
        .await
        .is_err()
    {
        conns.shutdown().await;
    }
    Ok(())
}

/// How long the accept loop pauses after an error that is not one connection's.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// An accept error that concerns only the connection it was for.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    )
}

/// Serves one connection until it closes; once `closing` turns true, finishes the request
/// in progress and closes. Holds its `slot` of the connection limit while it runs.
async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    http: &hyper::server::conn::http1::Builder,
    app: Router,
    mut closing: watch::Receiver<bool>,
    slot: OwnedSemaphorePermit,
) {
    let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let closed = async {
        // An error: the sender is gone, and so is `serve`.
        let _ = closing.wait_for(|c| *c).await;
    };
    // Errors (a client gone, a header timeout) end the connection and concern no one else.
    tokio::select! {
        _ = conn.as_mut() => {}
        () = closed => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    drop(slot);
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/devices/{device}/readings", post(readings))
        .route("/v1/devices/{device}/alerts", post(alerts))
        .route("/v1/devices/{device}/reset", post(reset))
        .route("/metrics", get(metrics))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        // The console authenticates with its own sessions, not the bearer token.
        .merge(console::router(state.clone()))
        // Outermost: it sees every answer, a refused token's included.
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Counts every answer of the API where it is given: a POST to a device's endpoint as an
/// event of its kind, accepted (200) or refused; the codes of every refused request.
async fn count(State(st): State<AppState>, req: HttpRequest, next: Next) -> Response {
    use crate::metrics::{kind, source};
    let event = (req.method() == axum::http::Method::POST)
        .then(|| req.uri().path().strip_prefix("/v1/devices/"))
        .flatten()
        .and_then(|rest| match rest.rsplit_once('/') {
            Some((_, "readings")) => Some(kind::READING),
            Some((_, "alerts")) => Some(kind::ALERT),
            Some((_, "reset")) => Some(kind::OPERATOR),
            _ => None,
        });
    let resp = next.run(req).await;
    let refusal = resp.extensions().get::<Refusal>();
    let codes = refusal.map(|r| r.0.iter().map(String::as_str));
    match event {
        Some(kind) if resp.status() == StatusCode::OK || refusal.is_some() => {
            st.metrics.event(source::API, kind, codes)
        }
        _ => {
            if let Some(codes) = codes {
                st.metrics.refused_codes(source::API, codes);
            }
        }
    }
    resp
}

/// `GET /metrics`: the Prometheus text format (`docs/runtime.md`, "Metrics").
async fn metrics(State(st): State<AppState>) -> Response {
    match st.metrics.encode() {
        Ok(text) => {
            let mut resp = (StatusCode::OK, text).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            resp
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::UNAVAILABLE,
            "the metrics could not be encoded",
            None,
        ),
    }
}

/// Every request, on every path, needs the token; nothing else is looked at before.
async fn authenticate(State(st): State<AppState>, req: HttpRequest, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        // The scheme's name is case-insensitive (RFC 9110, 11.1).
        .and_then(|v| (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..]));
    match presented {
        Some(t) if st.token.matches(t) => next.run(req).await,
        other => {
            let message = if other.is_some() {
                "wrong token"
            } else {
                "missing `Authorization: Bearer TOKEN` header"
            };
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                codes::UNAUTHORIZED,
                message,
                Some("send the token of the shim's token file"),
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kalki-shim\""),
            );
            resp
        }
    }
}

async fn no_such_endpoint() -> Response {
    error(
        StatusCode::NOT_FOUND,
        codes::NO_SUCH_ENDPOINT,
        "no such endpoint",
        Some(
            "the endpoints are GET /v1/status and POST /v1/devices/DEVICE/{readings,alerts,reset}",
        ),
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::NO_SUCH_ENDPOINT,
        "method not allowed here",
        Some("GET /v1/status; POST for everything under /v1/devices/"),
    )
}

async fn status(State(st): State<AppState>) -> Response {
    let (reply, rx) = oneshot::channel();
    match ask(&st, Request::Status { reply }, rx).await {
        Ok(report) => json_response(StatusCode::OK, &report),
        Err(resp) => resp,
    }
}

/// Sends a request to the main loop and waits for its answer, at most `st.timeout`.
async fn ask<T>(st: &AppState, request: Request, rx: oneshot::Receiver<T>) -> Result<T, Response> {
    let round_trip = async {
        st.tx.send(request).await.map_err(|_| ())?;
        rx.await.map_err(|_| ())
    };
    match tokio::time::timeout(st.timeout, round_trip).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(())) => Err(unavailable("the shim is shutting down")),
        Err(_) => Err(unavailable("the shim did not answer in time")),
    }
}

async fn submit(st: &AppState, input: Input) -> Response {
    // Who gave an operator action is journaled with it; a reading or an alert is the
    // device's or a µmbox's, whoever relays it.
    let by = matches!(input, Input::Operator { .. }).then(|| "api".to_string());
    match submit_by(st, input, by).await {
        Ok(Ok(accepted)) => json_response(StatusCode::OK, &accepted),
        Ok(Err(errors)) => refused(&errors),
        Err(resp) => resp,
    }
}

/// Pre-checks an input, sends it to the main loop with who gave it and waits for its
/// answer: the one path of every input of the API and the console.
async fn submit_by(
    st: &AppState,
    input: Input,
    by: Option<String>,
) -> Result<Result<Accepted, Vec<InputError>>, Response> {
    if let Err(errors) = st.checker.check(&input) {
        return Ok(Err(errors));
    }
    let (reply, rx) = oneshot::channel();
    ask(st, Request::Submit { input, by, reply }, rx).await
}

const READING_SHAPE: &str =
    "a reading is `{\"values\": {VAR: VALUE, ...}}`, values booleans, integers or enum members' names";
const ALERT_SHAPE: &str =
    "an alert is `{\"alert\": ALERT}`, with `\"source\": UMBOX` for one from a µmbox";
const RESET_SHAPE: &str = "a reset has no body, or `{}`";

/// A reading's body: `{"values": {VAR: VALUE, ...}}`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object `{\"values\": {VAR: VALUE, ...}}`"
)]
struct ReadingBody {
    #[serde(deserialize_with = "unique_keys")]
    values: BTreeMap<String, serde_json::Value>,
}

/// An alert's body: `{"alert": ALERT, "source": UMBOX}`, `source` optional.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object `{\"alert\": ALERT, \"source\": UMBOX}`"
)]
struct AlertBody {
    alert: String,
    #[serde(default)]
    source: Option<String>,
}

/// A reset's body: none, or `{}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "no body, or `{}`")]
struct ResetBody {}

/// A JSON object into a map, refusing a key given twice (which would otherwise keep the
/// last value silently).
fn unique_keys<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, serde_json::Value>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<String, serde_json::Value>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of values, `{VAR: VALUE, ...}`")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = a.next_entry::<String, serde_json::Value>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!("`{k}` is given twice")));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// Reads a request's JSON body into `T`: 415 unless it is declared `application/json`,
/// 413 over [`MAX_BODY`], 408 (S308, and the connection closed) if it does not arrive in
/// full within `timeout`, 400 if it is not JSON (S302) or not of `T`'s shape (S303).
/// `empty` is what an absent body means, if one may be absent; `shape` describes the body
/// expected, for the help of an error.
async fn body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    timeout: Duration,
    empty: Option<T>,
    shape: &'static str,
) -> Result<T, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::TOO_LARGE,
            format!("the body is larger than {} KiB", MAX_BODY / 1024),
            None,
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(timeout, Limited::new(body, MAX_BODY).collect()).await;
    let bytes: Bytes = match read {
        Ok(Ok(c)) => c.to_bytes(),
        Err(_) => {
            let mut resp = error(
                StatusCode::REQUEST_TIMEOUT,
                codes::TOO_SLOW,
                format!("the body did not arrive within {} s", timeout.as_secs_f64()),
                Some("send the whole body right after the headers"),
            );
            // The rest of the body may still come: this connection is done.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(resp);
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(e)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                codes::BAD_JSON,
                format!("cannot read the body: {e}"),
                None,
            ))
        }
    };
    if bytes.is_empty() {
        if let Some(v) = empty {
            return Ok(v);
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !content_type.is_some_and(|t| t.eq_ignore_ascii_case("application/json")) {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            codes::BAD_MEDIA_TYPE,
            "the body must be JSON, sent with `Content-Type: application/json`",
            None,
        ));
    }
    let not_json = |e: serde_json::Error| {
        error(
            StatusCode::BAD_REQUEST,
            codes::BAD_JSON,
            format!("the body is not JSON: {e}"),
            Some(shape),
        )
    };
    let bad_shape = |message: String| {
        error(
            StatusCode::BAD_REQUEST,
            codes::BAD_BODY,
            message,
            Some(shape),
        )
    };
    // A struct would also be read from an array (`[1]` as `{"values": 1}`): only an object
    // is a body.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first != Some(b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                Ok(_) => bad_shape("the body is not a JSON object".to_string()),
                Err(e) => not_json(e),
            },
        );
    }
    serde_json::from_slice::<T>(&bytes).map_err(|e| {
        if e.is_data() {
            bad_shape(format!("bad body: {e}"))
        } else {
            not_json(e)
        }
    })
}

fn bad_path(e: &PathRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        codes::BAD_BODY,
        format!("bad device name in the path: {e}"),
        None,
    )
}

/// A device's event: the device from the path, the body parsed into `T` (or `empty`
/// when there is none), made into an input and submitted. The three event endpoints
/// differ only in `T` and in how it becomes an [`Input`].
async fn device_event<T: serde::de::DeserializeOwned>(
    st: &AppState,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    raw: Body,
    empty: Option<T>,
    shape: &'static str,
    input: impl FnOnce(String, T) -> Input,
) -> Response {
    let device = match path {
        Ok(Path(d)) => d,
        Err(e) => return bad_path(&e),
    };
    match body::<T>(headers, raw, st.body_timeout, empty, shape).await {
        Ok(b) => submit(st, input(device, b)).await,
        Err(r) => r,
    }
}

async fn readings(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Body,
) -> Response {
    device_event(
        &st,
        path,
        &headers,
        raw,
        None,
        READING_SHAPE,
        |device, b: ReadingBody| Input::Reading {
            device,
            values: b.values,
        },
    )
    .await
}

async fn alerts(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Body,
) -> Response {
    device_event(
        &st,
        path,
        &headers,
        raw,
        None,
        ALERT_SHAPE,
        |device, b: AlertBody| Input::Alert {
            device,
            alert: b.alert,
            source: b.source,
        },
    )
    .await
}

async fn reset(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    raw: Body,
) -> Response {
    let empty = Some(ResetBody {});
    device_event(
        &st,
        path,
        &headers,
        raw,
        empty,
        RESET_SHAPE,
        |device, _: ResetBody| Input::Operator {
            device,
            action: "reset".to_string(),
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------
// The client.

/// A request the client could not complete.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the shim at `{endpoint}`: {source}")]
    Unreachable {
        endpoint: Endpoint,
        source: std::io::Error,
    },
    #[error("the shim at `{endpoint}` did not answer within {} s", timeout.as_secs())]
    Timeout {
        endpoint: Endpoint,
        timeout: Duration,
    },
    #[error("talking to the shim failed: {0}")]
    Http(String),
    /// The shim answered with an error (4xx, or 5xx such as 503).
    #[error("{}", body.error.message)]
    Refused { status: u16, body: ErrorBody },
    #[error("the shim's answer ({status}) is not what this client understands: {message}")]
    BadResponse { status: u16, message: String },
}

/// A client of the API.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    token: Token,
    timeout: Duration,
}

impl Client {
    /// Every request gives up after `timeout`, connecting included.
    pub fn new(endpoint: Endpoint, token: Token, timeout: Duration) -> Client {
        Client {
            endpoint,
            token,
            timeout,
        }
    }

    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.call("GET", "/v1/status", None).await
    }

    /// A reading: booleans, integers, enum members as strings.
    pub async fn reading(
        &self,
        device: &str,
        values: BTreeMap<String, serde_json::Value>,
    ) -> Result<Accepted, ClientError> {
        let body = serde_json::json!({ "values": values });
        self.call("POST", &device_path(device, "readings"), Some(body))
            .await
    }

    pub async fn alert(
        &self,
        device: &str,
        alert: &str,
        source: Option<&str>,
    ) -> Result<Accepted, ClientError> {
        let mut body = serde_json::json!({ "alert": alert });
        if let (Some(s), Some(o)) = (source, body.as_object_mut()) {
            o.insert("source".into(), serde_json::Value::String(s.to_string()));
        }
        self.call("POST", &device_path(device, "alerts"), Some(body))
            .await
    }

    pub async fn reset(&self, device: &str) -> Result<Accepted, ClientError> {
        self.call("POST", &device_path(device, "reset"), None).await
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let work = async {
            let (status, bytes) = match &self.endpoint {
                Endpoint::Tcp(addr) => {
                    let s = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|e| self.unreachable(e))?;
                    self.exchange(s, method, path, body).await?
                }
                Endpoint::Unix(p) => {
                    let s = tokio::net::UnixStream::connect(p)
                        .await
                        .map_err(|e| self.unreachable(e))?;
                    self.exchange(s, method, path, body).await?
                }
            };
            if (200..300).contains(&status) {
                serde_json::from_slice::<T>(&bytes).map_err(|e| ClientError::BadResponse {
                    status,
                    message: e.to_string(),
                })
            } else {
                match serde_json::from_slice::<ErrorBody>(&bytes) {
                    Ok(body) => Err(ClientError::Refused { status, body }),
                    Err(_) => Err(ClientError::BadResponse {
                        status,
                        message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                    }),
                }
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Timeout {
                    endpoint: self.endpoint.clone(),
                    timeout: self.timeout,
                })
            })
    }

    fn unreachable(&self, source: std::io::Error) -> ClientError {
        ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    /// One HTTP/1.1 request on a fresh connection.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, Bytes), ClientError> {
        let http = |e: &dyn fmt::Display| ClientError::Http(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
        let conn = tokio::spawn(conn);
        let host = match &self.endpoint {
            Endpoint::Tcp(a) => a.to_string(),
            Endpoint::Unix(_) => "localhost".to_string(),
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token.text));
        let bytes = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&b).map_err(|e| http(&e))?)
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(bytes)).map_err(|e| http(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| http(&*e))?
            .to_bytes();
        conn.abort();
        Ok((status, body))
    }
}

/// `/v1/devices/DEVICE/WHAT`, the device name percent-encoded.
fn device_path(device: &str, what: &str) -> String {
    let mut enc = String::new();
    for b in device.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            enc.push(char::from(b));
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    format!("/v1/devices/{enc}/{what}")
}
