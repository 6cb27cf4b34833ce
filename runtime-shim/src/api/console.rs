//! The operator's web console, on the API's listener: sign-in with the API token, server
//! side sessions, a live table of the devices (server-sent events from the main loop's
//! status, the same data `status` shows), a page per device (its journaled history and
//! its state machine drawn as SVG from the bundle's manifest) and an operator reset that
//! takes the API's own path. Everything it serves is embedded in the binary.
//!
//! Security (`docs/runtime.md`, "Console"): a session cookie `HttpOnly; SameSite=Strict;
//! Path=/` with 32 random bytes from the OS; sessions expire after
//! [`IDLE`] unused and [`ABSOLUTE`] after sign-in; every POST needs a same-origin
//! `Origin` (or `Referer`) and, once signed in, the session's CSRF token, both compared
//! in constant time; GET never changes anything; every answer carries a strict CSP
//! (no inline script or style), `X-Frame-Options: DENY`, `nosniff` and `no-store`.

use super::{ask, rfc3339, submit_by, AppState, Request, StatusReport};
use crate::engine::Input;
use axum::body::Body;
use axum::extract::{Path, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, Limited};
use kalki_model::manifest::Manifest;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A session unused this long is gone.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session is gone this long after sign-in, however used.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// The most sessions at once; signing in beyond drops the least recently used.
pub const MAX_SESSIONS: usize = 64;
/// How often the live table asks for a status when the main loop says nothing.
pub const POLL: Duration = Duration::from_secs(5);
/// The cookie's name.
pub const COOKIE: &str = "kalki_session";
/// How many history entries a device page shows.
const HISTORY: usize = 200;
/// The largest form body read.
const MAX_FORM: usize = 4096;

const CSS: &str = include_str!("../../console/console.css");
const JS: &str = include_str!("../../console/console.js");

/// Content Security Policy of every answer: only this origin's script and style files,
/// no inline anything, no framing, forms post only here.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

// ---------------------------------------------------------------------------------------
// Sessions.

/// A signed-in browser.
#[derive(Debug, Clone)]
struct Session {
    /// The CSRF token of its forms, hex.
    csrf: String,
    /// Who it is in the journal: `console:` and 8 hex digits of the id's sha256.
    who: String,
    created: Instant,
    used: Instant,
}

/// The console's sessions, in memory only: a restart of the shim signs everyone out.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    idle: Duration,
    absolute: Duration,
}

/// 32 random bytes from the OS, hex.
fn random_hex() -> Option<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).ok()?;
    Some(hex(&b))
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Equality in time independent of where two strings differ (their lengths are public:
/// ids and tokens all have the same).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Sessions {
    pub fn new(idle: Duration, absolute: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            idle,
            absolute,
        }
    }

    fn alive(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.used) < self.idle && now.duration_since(s.created) < self.absolute
    }

    /// A new session: its id and the session. `None` if the OS gives no randomness.
    fn create(&self) -> Option<(String, Session)> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let short: String = hex(&Sha256::digest(id.as_bytes()))
            .chars()
            .take(8)
            .collect();
        let now = Instant::now();
        let s = Session {
            csrf,
            who: format!("console:{short}"),
            created: now,
            used: now,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| self.alive(s, now));
        while map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(id.clone(), s.clone());
        Some((id, s))
    }

    /// The live session of `id`, marked used. The map is looked up by the id's text; to
    /// keep the lookup's timing from telling how much of a guessed id is right, the found
    /// key is compared again in constant time (a hash map's own comparison may stop at
    /// the first difference, but only after the hashes matched).
    fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (key, s) = map.get_key_value(id)?;
        if !ct_eq(key.as_bytes(), id.as_bytes()) {
            return None;
        }
        if !self.alive(s, now) {
            map.remove(id);
            return None;
        }
        let s = map.get_mut(id)?;
        s.used = now;
        Some(s.clone())
    }

    /// Whether `id` is a live session, without marking it used.
    fn alive_id(&self, id: &str) -> bool {
        let now = Instant::now();
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get_key_value(id)
            .is_some_and(|(k, s)| ct_eq(k.as_bytes(), id.as_bytes()) && self.alive(s, now))
    }

    fn remove(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
    }
}

/// The session cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The request's live session and its id.
fn session(st: &AppState, headers: &HeaderMap) -> Option<(String, Session)> {
    let id = cookie(headers)?;
    let s = st.sessions.get(&id)?;
    Some((id, s))
}

// ---------------------------------------------------------------------------------------
// Requests and answers.

/// Every console answer gets the security headers.
async fn secure(req: HttpRequest, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// Whether a state-changing request comes from a page of this origin: its `Origin`
/// (or, without one, its `Referer`) names the host it was sent to. Neither: refused.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    let Some(from) = from else {
        return false;
    };
    let Some(rest) = from.strip_prefix("http://") else {
        return false;
    };
    let origin_host = rest.split('/').next().unwrap_or("");
    ct_eq(origin_host.as_bytes(), host.as_bytes())
}

fn page(status: StatusCode, html: String) -> Response {
    let mut resp = (status, html).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn to_sign_in() -> Response {
    redirect("/console/login")
}

fn unauthorized() -> Response {
    text(StatusCode::UNAUTHORIZED, "sign in first: /console/login\n")
}

fn forbidden(why: &'static str) -> Response {
    text(StatusCode::FORBIDDEN, why)
}

/// HTML-escapes text for element content and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(char::from(b));
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// Reads an `application/x-www-form-urlencoded` body into its fields (the first of each
/// name). `None`: too large, not a form, or not UTF-8.
async fn form(headers: &HeaderMap, body: Body) -> Option<HashMap<String, String>> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let ct = ct.split(';').next()?.trim();
    if !ct.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return None;
    }
    let bytes = tokio::time::timeout(super::BODY_TIMEOUT, Limited::new(body, MAX_FORM).collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    let text = std::str::from_utf8(&bytes).ok()?;
    let mut out = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(unescape(k)?).or_insert(unescape(v)?);
    }
    Some(out)
}

/// Form decoding: `+` is a space, `%XX` a byte; the result must be UTF-8.
fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The console's routes, each answered with the security headers.
pub(super) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/events", get(events))
        .route("/console/devices/{device}", get(device_page))
        .route("/console/devices/{device}/machine.svg", get(machine_svg))
        .route("/console/devices/{device}/reset", post(reset))
        .route("/console/console.css", get(css))
        .route("/console/console.js", get(js))
        .layer(middleware::from_fn(secure))
        .with_state(state)
}

async fn css() -> Response {
    let mut r = CSS.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    r
}

async fn js() -> Response {
    let mut r = JS.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    r
}

/// The frame of every page.
fn layout(title: &str, csrf: Option<&str>, body: &str) -> String {
    let nav = match csrf {
        Some(c) => format!(
            "<nav><a href=\"/console\">devices</a>\
             <form method=\"post\" action=\"/console/logout\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" id=\"sign-out\">sign out</button></form></nav>",
            esc(c)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{} · kalki</title><link rel=\"stylesheet\" href=\"/console/console.css\">\
         <script src=\"/console/console.js\" defer></script></head>\
         <body><header><h1>kalki</h1>{nav}</header><main>{body}</main></body></html>\n",
        esc(title)
    )
}

fn login_html(error: Option<&str>) -> String {
    let err = error
        .map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    layout(
        "sign in",
        None,
        &format!(
            "<h2>Sign in</h2>{err}<form method=\"post\" action=\"/console/login\" id=\"login\">\
             <label>API token <input type=\"password\" name=\"token\" id=\"token\" \
             autocomplete=\"current-password\" required></label>\
             <button type=\"submit\" id=\"sign-in\">sign in</button></form>"
        ),
    )
}

async fn login_page(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if session(&st, &headers).is_some() {
        return redirect("/console");
    }
    page(StatusCode::OK, login_html(None))
}

/// `POST /console/login`: the API token in a form, compared in constant time; a new
/// session (a fresh id, never one the browser brought: no fixation) and its cookie.
async fn login(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if !same_origin(&headers) {
        return forbidden("cross-origin sign-in refused\n");
    }
    let Some(fields) = form(&headers, body).await else {
        return page(
            StatusCode::BAD_REQUEST,
            login_html(Some("not a sign-in form")),
        );
    };
    let token = fields.get("token").map(String::as_str).unwrap_or("");
    if !st.token.matches(token.trim().as_bytes()) {
        tracing::warn!(
            event = "console_sign_in_refused",
            "console: sign-in with a wrong token"
        );
        return page(StatusCode::UNAUTHORIZED, login_html(Some("wrong token")));
    }
    let Some((id, s)) = st.sessions.create() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no randomness from the OS for a session id\n",
        );
    };
    tracing::info!(event = "console_sign_in", who = %s.who, "console: {} signed in", s.who);
    let mut resp = redirect("/console");
    // No `Secure`: the shim serves plain HTTP (loopback or a Unix socket); a proxy that
    // adds TLS should add it (docs/runtime.md, "Console").
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        st.sessions.absolute.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// Checks a state-changing request: same origin, a live session, its CSRF token.
async fn guarded(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, Session, HashMap<String, String>), Response> {
    let Some((id, s)) = session(st, headers) else {
        return Err(unauthorized());
    };
    if !same_origin(headers) {
        return Err(forbidden("cross-origin request refused\n"));
    }
    let Some(fields) = form(headers, body).await else {
        return Err(forbidden("not a console form\n"));
    };
    let presented = fields.get("csrf").map(String::as_str).unwrap_or("");
    if !ct_eq(presented.as_bytes(), s.csrf.as_bytes()) {
        return Err(forbidden("missing or wrong CSRF token\n"));
    }
    Ok((id, s, fields))
}

async fn logout(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match guarded(&st, &headers, body).await {
        Ok((id, s, _)) => {
            st.sessions.remove(&id);
            tracing::info!(event = "console_sign_out", who = %s.who, "console: {} signed out", s.who);
            let mut resp = to_sign_in();
            let gone = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
            if let Ok(v) = HeaderValue::from_str(&gone) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(r) => r,
    }
}

async fn status_of(st: &AppState) -> Result<StatusReport, Response> {
    let (reply, rx) = oneshot::channel();
    ask(st, Request::Status { reply }, rx).await
}

/// The verdict's class and words for the table.
fn verdict(e: &crate::enforcement::Enforcement) -> (&'static str, String) {
    use crate::enforcement::Enforcement as E;
    match e {
        E::Enforced => ("enforced", "enforced".to_string()),
        E::FailedClosed { installed, .. } => {
            ("failed_closed", format!("failed closed ({installed})"))
        }
        E::NotEnforced { .. } => ("not_enforced", "NOT ENFORCED".to_string()),
        E::OffSwitch => ("off_switch", "off switch".to_string()),
    }
}

fn device_rows(r: &StatusReport) -> String {
    let mut out = String::new();
    for d in &r.devices {
        let (class, words) = verdict(&d.enforcement);
        let _ = write!(
            out,
            "<tr data-device=\"{n}\"><td><a href=\"/console/devices/{s}\">{n}</a></td>\
             <td>{ty}</td><td class=\"state\">{state}</td><td>{since}</td><td>{why}</td>\
             <td>{chain}</td><td>{umb}</td><td class=\"verdict {class}\" title=\"{title}\">{words}</td></tr>",
            n = esc(&d.name),
            s = seg(&d.name),
            ty = esc(&d.device_type),
            state = esc(&d.state),
            since = esc(d.since.as_deref().unwrap_or("-")),
            why = esc(d.cause.as_deref().unwrap_or("initial state")),
            chain = esc(d.crosses.as_deref().unwrap_or("unknown")),
            umb = esc(&if d.umboxes.is_empty() {
                "-".to_string()
            } else {
                d.umboxes.join(", ")
            }),
            title = esc(&d.enforcement.to_string()),
        );
    }
    out
}

const TABLE_HEAD: &str = "<thead><tr><th>device</th><th>type</th><th>state</th><th>since</th>\
<th>why</th><th>chain (what crosses)</th><th>µmboxes</th><th>verdict</th></tr></thead>";

async fn index(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let Some((_, s)) = session(&st, &headers) else {
        return to_sign_in();
    };
    let r = match status_of(&st).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let body = format!(
        "<h2>Site {site}</h2><p class=\"meta\">bundle {sha} · <span id=\"live\">connecting…</span></p>\
         <table id=\"devices\" data-live=\"/console/events\">{TABLE_HEAD}<tbody>{rows}</tbody></table>",
        site = esc(&r.site),
        sha = esc(&r.bundle_sha256.chars().take(12).collect::<String>()),
        rows = device_rows(&r),
    );
    page(StatusCode::OK, layout("devices", Some(&s.csrf), &body))
}

/// `GET /console/events`: the status as server-sent events, an event `status` (the JSON
/// of `GET /v1/status`) at once and whenever the devices' part of it changes: as the
/// main loop publishes it ([`super::ServeOptions::published`]), or, without that, asked
/// for every [`POLL`]. A comment every few quiet periods lets a dead connection be
/// noticed.
async fn events(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if session(&st, &headers).is_none() {
        return unauthorized();
    }
    let id = cookie(&headers).unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(4);
    let mut published = st.published.clone();
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        let mut quiet = 0u32;
        // The first frame from a look of its own: what was published may be a period old,
        // and nothing may be published until something happens.
        let mut report = status_of(&st).await.map(Arc::new).map_err(|_| ());
        if let Some(p) = published.as_mut() {
            p.mark_unchanged();
        }
        loop {
            // A session that ended (signed out, expired) ends its stream. Looking does
            // not count as use: a page left open does not keep its session from expiring.
            if !st.sessions.alive_id(&id) {
                break;
            }
            let frame = match &report {
                Ok(r) => {
                    let devices = serde_json::to_string(&r.devices).unwrap_or_default();
                    if last.as_deref() != Some(devices.as_str()) {
                        last = Some(devices);
                        quiet = 0;
                        let json = serde_json::to_string(&**r).unwrap_or_default();
                        Some(format!("event: status\ndata: {json}\n\n"))
                    } else {
                        quiet += 1;
                        quiet.is_multiple_of(3).then(|| ": alive\n\n".to_string())
                    }
                }
                Err(_) => Some("event: unavailable\ndata: {}\n\n".to_string()),
            };
            if let Some(f) = frame {
                if tx.send(Ok(f)).await.is_err() {
                    break;
                }
            }
            // The next report: the next one published (or the same, after a quiet
            // period), or one asked for. `None`: the main loop is gone (the shim stops):
            // the stream ends, so the API's shutdown does not wait for it.
            let next = match published.as_mut() {
                Some(p) => match tokio::time::timeout(POLL, p.changed()).await {
                    Ok(Ok(())) => Some(p.borrow_and_update().clone().ok_or(())),
                    Ok(Err(_)) => None,
                    Err(_) => Some(report.clone()),
                },
                None => {
                    tokio::time::sleep(POLL).await;
                    Some(status_of(&st).await.map(Arc::new).map_err(|_| ()))
                }
            };
            match next {
                Some(r) => report = r,
                None => break,
            }
            if tx.is_closed() {
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp
}

async fn device_page(
    State(st): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let Some((_, s)) = session(&st, &headers) else {
        return to_sign_in();
    };
    let Ok(Path(name)) = path else {
        return text(StatusCode::BAD_REQUEST, "bad device name\n");
    };
    let r = match status_of(&st).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(d) = r.devices.iter().find(|d| d.name == name) else {
        return text(StatusCode::NOT_FOUND, "no such device\n");
    };
    let (reply, rx) = oneshot::channel();
    let history = match ask(
        &st,
        Request::History {
            device: name.clone(),
            limit: HISTORY,
            reply,
        },
        rx,
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                layout(
                    "error",
                    Some(&s.csrf),
                    &format!(
                        "<p class=\"error\">the journal cannot be read: {}</p>",
                        esc(&e)
                    ),
                ),
            )
        }
        Err(e) => return e,
    };
    let mut rows = String::new();
    for h in &history {
        let _ = write!(
            rows,
            "<tr class=\"{k}\"><td>{t}</td><td>{k}</td><td>{x}</td></tr>",
            t = esc(&rfc3339(h.t_ms)),
            k = esc(&h.kind),
            x = esc(&h.text)
        );
    }
    let (class, _) = verdict(&d.enforcement);
    let body = format!(
        "<h2>{n}</h2>\
         <table id=\"device\" data-device=\"{n}\" data-live=\"/console/events\">{TABLE_HEAD}<tbody>{row}</tbody></table>\
         <p class=\"verdict {class}\">{full}</p>\
         <h3>State machine</h3><p><img id=\"machine\" src=\"/console/devices/{s}/machine.svg\" alt=\"state machine of {n}\"></p>\
         <h3>Reset</h3>\
         <form method=\"post\" action=\"/console/devices/{s}/reset\" id=\"reset\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label><input type=\"checkbox\" name=\"confirm\" value=\"{n}\" id=\"confirm\" required> \
         I confirm: reset <b>{n}</b> (the operator action <code>reset</code>, journaled as {who})</label> \
         <button type=\"submit\" id=\"reset-button\">reset</button></form>\
         <h3>History</h3><p class=\"meta\">the last {HISTORY} journaled entries, newest first</p>\
         <table id=\"history\"><thead><tr><th>time</th><th>kind</th><th>what</th></tr></thead><tbody>{rows}</tbody></table>",
        n = esc(&d.name),
        s = seg(&d.name),
        row = device_rows(&StatusReport {
            devices: vec![d.clone()],
            ..r.clone()
        }),
        full = esc(&d.enforcement.to_string()),
        csrf = esc(&s.csrf),
        who = esc(&s.who),
    );
    page(StatusCode::OK, layout(&d.name, Some(&s.csrf), &body))
}

/// `POST /console/devices/DEVICE/reset`: same origin, session, CSRF token, and the
/// confirmation field naming the device; then the operator action `reset` through the
/// API's own path, journaled as the session.
async fn reset(
    State(st): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Body,
) -> Response {
    let (_, s, fields) = match guarded(&st, &headers, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(Path(device)) = path else {
        return text(StatusCode::BAD_REQUEST, "bad device name\n");
    };
    if fields.get("confirm") != Some(&device) {
        return text(
            StatusCode::BAD_REQUEST,
            "not confirmed: tick the box that names the device\n",
        );
    }
    let input = Input::Operator {
        device: device.clone(),
        action: "reset".to_string(),
    };
    match submit_by(&st, input, Some(s.who.clone())).await {
        Ok(Ok(a)) => {
            tracing::info!(event = "console_reset", who = %s.who, device = %device, seq = a.seq,
                "console: {} reset {device} (seq {})", s.who, a.seq);
            redirect(&format!("/console/devices/{}", seg(&device)))
        }
        Ok(Err(errors)) => {
            let list: String = errors
                .iter()
                .map(|e| format!("<li>{}</li>", esc(&e.to_string())))
                .collect();
            page(
                StatusCode::UNPROCESSABLE_ENTITY,
                layout(
                    "reset refused",
                    Some(&s.csrf),
                    &format!("<h2>Reset refused</h2><ul class=\"error\">{list}</ul>"),
                ),
            )
        }
        Err(e) => e,
    }
}

async fn machine_svg(
    State(st): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    if session(&st, &headers).is_none() {
        return unauthorized();
    }
    let Ok(Path(name)) = path else {
        return text(StatusCode::BAD_REQUEST, "bad device name\n");
    };
    let r = match status_of(&st).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let manifest = st.checker.manifest();
    let current = r
        .devices
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.state.clone());
    match svg(&manifest, &name, current.as_deref()) {
        Some(svg) => {
            let mut resp = svg.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            );
            resp
        }
        None => text(StatusCode::NOT_FOUND, "no such device\n"),
    }
}

/// A device's state machine as SVG: its type's states left to right in posture order
/// (least restrictive first), `current` highlighted; each transition an arc labelled with
/// its trigger, above the boxes when it goes to a more restrictive state, below when it
/// goes back. `None`: no such device.
pub fn svg(m: &Manifest, device: &str, current: Option<&str>) -> Option<String> {
    let d = m.devices.iter().find(|d| d.name == device)?;
    let ty = m.device_types.iter().find(|t| t.name == d.ty)?;
    const W: usize = 150;
    const GAP: usize = 90;
    const H: usize = 44;
    let n = ty.states.len().max(1);
    // Arcs need room in proportion to how many there are.
    let up = ty.transitions.iter().filter(|t| t.to > t.from).count();
    let down = ty.transitions.len() - up;
    let (top, bottom) = (40 + 26 * up, 40 + 26 * down);
    let width = 20 + n * W + (n - 1) * GAP + 20;
    let y = top;
    let height = top + H + bottom;
    let x_of = |i: usize| 20 + i * (W + GAP);
    let mut o = String::new();
    let _ = write!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\
         <title>{} ({})</title>\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" \
         markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#444\"/></marker></defs>",
        esc(device),
        esc(&ty.name)
    );
    let last = n.saturating_sub(1).max(1);
    for (i, s) in ty.states.iter().enumerate() {
        // Green (least restrictive) to red (most), as `kalkic graph` fills them.
        let hue = 120 - 120 * i / last;
        let is_current = current == Some(s.as_str());
        let (stroke, sw) = if is_current { ("#000", 4) } else { ("#666", 1) };
        let initial = usize::try_from(ty.initial).ok() == Some(i);
        let _ = write!(
            o,
            "<g class=\"state{}\" data-state=\"{s}\"><rect x=\"{x}\" y=\"{y}\" width=\"{W}\" height=\"{H}\" rx=\"10\" \
             fill=\"hsl({hue},60%,{l}%)\" stroke=\"{stroke}\" stroke-width=\"{sw}\"/>\
             <text x=\"{cx}\" y=\"{ty}\" text-anchor=\"middle\" font-weight=\"{fw}\">{s}{mark}</text></g>",
            if is_current { " current" } else { "" },
            s = esc(s),
            x = x_of(i),
            l = if is_current { 60 } else { 85 },
            cx = x_of(i) + W / 2,
            ty = y + H / 2 + 4,
            fw = if is_current { "bold" } else { "normal" },
            mark = if initial { " ●" } else { "" },
        );
    }
    // The arcs first, their labels after, each on a halo of the background: no arc
    // runs through a label.
    let mut labels = String::new();
    let (mut ui, mut di) = (0usize, 0usize);
    for t in &ty.transitions {
        let (Ok(f), Ok(to)) = (usize::try_from(t.from), usize::try_from(t.to)) else {
            continue;
        };
        let label = t.trigger.to_string();
        let (x1, x2) = (x_of(f) + W / 2, x_of(to) + W / 2);
        // A transition to its own state: a loop from the box's left half to its right.
        let (x1, x2) = if f == to {
            (x1 - 30, x2 + 30)
        } else {
            (x1, x2)
        };
        if to >= f {
            ui += 1;
            let h = y.saturating_sub(14 + 26 * ui);
            let _ = write!(
                o,
                "<path d=\"M{x1},{y} C{x1},{h} {x2},{h} {x2},{y}\" fill=\"none\" stroke=\"#444\" marker-end=\"url(#arrow)\"/>"
            );
            label_at(&mut labels, (x1 + x2) / 2, y - 3 * (y - h) / 4 - 4, &label);
        } else {
            di += 1;
            let yb = y + H;
            let h = yb + 14 + 26 * di;
            let _ = write!(
                o,
                "<path d=\"M{x1},{yb} C{x1},{h} {x2},{h} {x2},{yb}\" fill=\"none\" stroke=\"#444\" stroke-dasharray=\"4 3\" marker-end=\"url(#arrow)\"/>"
            );
            label_at(
                &mut labels,
                (x1 + x2) / 2,
                yb + 3 * (h - yb) / 4 + 14,
                &label,
            );
        }
    }
    o.push_str(&labels);
    o.push_str("</svg>\n");
    Some(o)
}

/// A transition's label, centred at `x` on baseline `y`, on a box of the background
/// (sized for the 12 px sans-serif face: about 7 px a character) so that no other arc
/// runs through it.
fn label_at(o: &mut String, x: usize, y: usize, label: &str) {
    let w = 7 * label.chars().count() + 8;
    let _ = write!(
        o,
        "<rect x=\"{}\" y=\"{}\" width=\"{w}\" height=\"16\" rx=\"3\" fill=\"#fff\" fill-opacity=\"0.9\"/>\
         <text x=\"{x}\" y=\"{y}\" text-anchor=\"middle\" class=\"trigger\">{}</text>",
        x.saturating_sub(w / 2),
        y.saturating_sub(12),
        esc(label)
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(unescape("a+b%20c%2Fd").as_deref(), Some("a b c/d"));
        assert_eq!(unescape("%zz"), None);
        assert_eq!(unescape("%4"), None);
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">'&'"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;"
        );
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn sessions_expire() {
        let s = Sessions::new(Duration::from_millis(50), Duration::from_secs(60));
        let (id, _) = s.create().unwrap();
        assert_eq!(id.len(), 64);
        assert!(s.get(&id).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.get(&id).is_none(), "idle expiry");
        let s = Sessions::new(Duration::from_secs(60), Duration::from_millis(50));
        let (id, _) = s.create().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(s.get(&id).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(s.get(&id).is_none(), "absolute expiry, though used");
    }
}
