//! The console's security, without a browser: `api::serve` on an ephemeral loopback port
//! with a test double of the main loop (a real engine over the smart-office bundle that
//! records every input and who gave it), spoken to in raw HTTP/1.1. Every console route
//! refuses a request without a session; sign-in needs the right token and a same-origin
//! form; the cookie's flags and the security headers are those documented; a POST
//! without the session's CSRF token, with a wrong one, or from another origin is refused
//! and reaches nothing; the live table's events need a session and carry the status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{compile_dir, load, MemReader};
use kalki_shim::api::{
    self, Checker, DeviceStatus, Endpoint, Exposure, Listener, Request, ServeOptions, StatusReport,
    Token,
};
use kalki_shim::bundle::Bundle;
use kalki_shim::enforcement::Enforcement;
use kalki_shim::engine::{Config, Engine, Input};
use kalki_shim::journal::HistoryEntry;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

const TOKEN: &str = "console-token-0123456789abcdef";
const T0: u64 = 1_740_859_200_000;

fn office() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| load(&MemReader::new(&compile_dir("examples/smart-office"))).unwrap())
}

/// Every input that reached the loop, with who gave it.
type Seen = Arc<Mutex<Vec<(Input, Option<String>)>>>;

async fn test_loop(mut rx: mpsc::Receiver<Request>, seen: Seen) {
    let bundle = office();
    let mut engine = Engine::new(bundle, Config::default(), T0);
    let mut n = 0u64;
    while let Some(req) = rx.recv().await {
        match req {
            Request::Submit { input, by, reply } => {
                n += 1;
                let t = T0 + n * 1000;
                let answer = engine.handle(t, &input).map(|_| api::Accepted {
                    seq: n,
                    t_ms: t,
                    changes: Vec::new(),
                });
                if answer.is_ok() {
                    seen.lock().unwrap().push((input, by));
                }
                let _ = reply.send(answer);
            }
            Request::Status { reply } => {
                let devices = (0..engine.device_count())
                    .map(|d| DeviceStatus {
                        name: engine.device_name(d).to_string(),
                        device_type: bundle.device_type(d).unwrap().name.clone(),
                        state: engine.state_name(d, engine.state(d).unwrap()).into(),
                        since_ms: None,
                        since: None,
                        cause: None,
                        umboxes: Vec::new(),
                        enforcement: Enforcement::Enforced,
                        crosses: None,
                        crossing: None,
                    })
                    .collect();
                let _ = reply.send(StatusReport {
                    site: bundle.manifest.site.clone(),
                    bundle_sha256: bundle.manifest_sha256.clone(),
                    uptime_s: 1,
                    now_ms: engine.now(),
                    devices,
                    mqtt: None,
                });
            }
            Request::History { device, reply, .. } => {
                let h = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(i, _)| matches!(i, Input::Operator { device: d, .. } if *d == device))
                    .map(|(_, by)| HistoryEntry {
                        t_ms: T0,
                        kind: "operator".into(),
                        text: format!("reset by {}", by.clone().unwrap_or_default()),
                    })
                    .collect();
                let _ = reply.send(Ok(h));
            }
        }
    }
}

struct Server {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    seen: Seen,
}

impl Server {
    fn start() -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(Listener::bind(
                &Endpoint::Tcp("127.0.0.1:0".parse().unwrap()),
                Exposure::LoopbackOnly,
            ))
            .unwrap();
        let Endpoint::Tcp(addr) = listener.endpoint().unwrap() else {
            unreachable!()
        };
        let seen: Seen = Arc::default();
        let (tx, rx) = mpsc::channel(16);
        rt.spawn(test_loop(rx, seen.clone()));
        let options = ServeOptions::new(Token::new(TOKEN).unwrap(), Checker::new(office()));
        rt.spawn(api::serve(listener, options, tx, std::future::pending()));
        Server { rt, addr, seen }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One request on a fresh connection; `extra` header lines end in `\r\n`.
    fn req(&self, method: &str, path: &str, extra: &str, body: &str) -> Resp {
        let mut s = std::net::TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let r = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        s.write_all(r.as_bytes()).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        Resp::parse(&buf)
    }

    /// A form POST from this origin.
    fn post(&self, path: &str, cookie: Option<&str>, body: &str) -> Resp {
        let mut extra = format!(
            "Origin: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n",
            self.origin()
        );
        if let Some(c) = cookie {
            extra.push_str(&format!("Cookie: kalki_session={c}\r\n"));
        }
        self.req("POST", path, &extra, body)
    }

    fn get(&self, path: &str, cookie: Option<&str>) -> Resp {
        let extra = cookie
            .map(|c| format!("Cookie: kalki_session={c}\r\n"))
            .unwrap_or_default();
        self.req("GET", path, &extra, "")
    }

    /// Signs in; the session id and the CSRF token of its pages.
    fn sign_in(&self) -> (String, String) {
        let r = self.post("/console/login", None, &format!("token={TOKEN}"));
        assert_eq!(r.status, 303, "{}", r.body);
        let id = r
            .header("set-cookie")
            .unwrap()
            .strip_prefix("kalki_session=")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let page = self.get("/console", Some(&id));
        assert_eq!(page.status, 200, "{}", page.body);
        let csrf = page
            .body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        (id, csrf)
    }

    fn inputs(&self) -> Vec<(Input, Option<String>)> {
        self.seen.lock().unwrap().clone()
    }

    fn alert(&self, device: &str, alert: &str) {
        let body = format!("{{\"alert\": \"{alert}\", \"source\": \"sniffer\"}}");
        let r = self.req(
            "POST",
            &format!("/v1/devices/{device}/alerts"),
            &format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"),
            &body,
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let rt = std::mem::replace(
            &mut self.rt,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        );
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn parse(buf: &[u8]) -> Resp {
        let text = String::from_utf8_lossy(buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Resp {
            status,
            headers,
            body: body.to_string(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every console route, with what answers it without a session: pages send the browser
/// to sign in, everything else is 401; nothing reaches the loop.
#[test]
fn every_route_needs_a_session() {
    let s = Server::start();
    for path in ["/console", "/console/", "/console/devices/hall_cam"] {
        let r = s.get(path, None);
        assert_eq!(r.status, 303, "{path}");
        assert_eq!(r.header("location"), Some("/console/login"), "{path}");
        // A made-up session is no session.
        let r = s.get(path, Some(&"ab".repeat(32)));
        assert_eq!(r.status, 303, "{path} with a made-up cookie");
    }
    for path in ["/console/events", "/console/devices/hall_cam/machine.svg"] {
        assert_eq!(s.get(path, None).status, 401, "{path}");
        assert_eq!(s.get(path, Some(&"ab".repeat(32))).status, 401, "{path}");
    }
    for path in ["/console/devices/hall_cam/reset", "/console/logout"] {
        let r = s.post(path, None, "csrf=x&confirm=hall_cam");
        assert_eq!(r.status, 401, "{path}");
    }
    assert!(s.inputs().is_empty());
    // The sign-in page itself, and the style and script files, are public.
    assert_eq!(s.get("/console/login", None).status, 200);
    assert_eq!(s.get("/console/console.js", None).status, 200);
    // The API still wants its token, on its routes and elsewhere.
    assert_eq!(s.get("/v1/status", None).status, 401);
    assert_eq!(s.get("/nowhere", None).status, 401);
}

#[test]
fn sign_in_needs_the_token_and_sets_a_strict_cookie() {
    let s = Server::start();
    let wrong = s.post(
        "/console/login",
        None,
        "token=console-token-0123456789abcdeX",
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert!(wrong.body.contains("wrong token"));
    let empty = s.post("/console/login", None, "");
    assert_eq!(empty.status, 401);
    // The right token from another origin, or with no origin at all: refused.
    let other = s.req(
        "POST",
        "/console/login",
        "Origin: http://evil.example\r\nContent-Type: application/x-www-form-urlencoded\r\n",
        &format!("token={TOKEN}"),
    );
    assert_eq!(other.status, 403);
    assert!(other.header("set-cookie").is_none());
    let none = s.req(
        "POST",
        "/console/login",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        &format!("token={TOKEN}"),
    );
    assert_eq!(none.status, 403);

    let ok = s.post("/console/login", None, &format!("token={TOKEN}"));
    assert_eq!(ok.status, 303);
    assert_eq!(ok.header("location"), Some("/console"));
    let cookie = ok.header("set-cookie").unwrap();
    let parts: Vec<&str> = cookie.split("; ").collect();
    let id = parts[0].strip_prefix("kalki_session=").unwrap();
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(parts.contains(&flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains(TOKEN));
    // Two sign-ins, two sessions.
    let again = s.post("/console/login", None, &format!("token={TOKEN}"));
    assert_ne!(again.header("set-cookie"), Some(cookie));
}

#[test]
fn pages_carry_the_security_headers() {
    let s = Server::start();
    let (id, _) = s.sign_in();
    for (path, cookie) in [
        ("/console", Some(id.as_str())),
        ("/console/devices/hall_cam", Some(id.as_str())),
        ("/console/login", None),
        ("/console/devices/hall_cam", None),
    ] {
        let r = s.get(path, cookie);
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
        // No inline script: every <script> has a src.
        assert!(!r.body.contains("<script>"), "{path}");
        assert!(!r.body.contains("style=\""), "{path}");
    }
}

/// A reset without the session's CSRF token, with a wrong one, from another origin, or
/// not confirmed changes nothing; with all of them it is the API's operator reset,
/// journaled as the session.
#[test]
fn reset_needs_csrf_origin_and_confirmation() {
    let s = Server::start();
    let (id, csrf) = s.sign_in();
    // normal -> suspicious -> attack (port_scan count 3 within 60s).
    for _ in 0..3 {
        s.alert("hall_cam", "port_scan");
    }
    assert!(s
        .get("/console", Some(&id))
        .body
        .contains("<td class=\"state\">attack</td>"));
    let before = s.inputs().len();
    let path = "/console/devices/hall_cam/reset";

    let r = s.post(path, Some(&id), "confirm=hall_cam");
    assert_eq!(r.status, 403, "no CSRF token: {}", r.body);
    // The token with its last digit changed (a fixed digit would be the token itself
    // one time in sixteen).
    let last = if csrf.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &csrf[..csrf.len() - 1]);
    assert_ne!(wrong, csrf);
    let r = s.post(path, Some(&id), &format!("csrf={wrong}&confirm=hall_cam"));
    assert_eq!(r.status, 403, "wrong CSRF token");
    let r = s.req(
        "POST",
        path,
        &format!("Origin: http://evil.example\r\nContent-Type: application/x-www-form-urlencoded\r\nCookie: kalki_session={id}\r\n"),
        &format!("csrf={csrf}&confirm=hall_cam"),
    );
    assert_eq!(r.status, 403, "another origin");
    let r = s.req(
        "POST",
        path,
        &format!(
            "Content-Type: application/x-www-form-urlencoded\r\nCookie: kalki_session={id}\r\n"
        ),
        &format!("csrf={csrf}&confirm=hall_cam"),
    );
    assert_eq!(r.status, 403, "no Origin or Referer");
    let r = s.post(path, Some(&id), &format!("csrf={csrf}"));
    assert_eq!(r.status, 400, "not confirmed");
    let r = s.post(path, Some(&id), &format!("csrf={csrf}&confirm=thermo"));
    assert_eq!(r.status, 400, "confirmed for another device");
    // A GET never resets.
    assert_ne!(s.get(path, Some(&id)).status, 200);
    assert_eq!(s.inputs().len(), before, "nothing reached the loop");

    let r = s.post(path, Some(&id), &format!("csrf={csrf}&confirm=hall_cam"));
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/console/devices/hall_cam"));
    let inputs = s.inputs();
    assert_eq!(inputs.len(), before + 1);
    let (input, by) = inputs.last().unwrap();
    assert!(
        matches!(input, Input::Operator { device, action } if device == "hall_cam" && action == "reset")
    );
    let by = by.clone().unwrap();
    assert!(
        by.starts_with("console:") && by.len() == "console:".len() + 8,
        "{by}"
    );
    assert!(
        !id.starts_with(&by["console:".len()..]),
        "the short id is no prefix of the session id"
    );
    // The device page shows it in the history.
    let page = s.get("/console/devices/hall_cam", Some(&id));
    assert!(
        page.body.contains(&format!("reset by {by}")),
        "{}",
        page.body
    );

    // The API's own reset is journaled as `api`.
    let r = s.req(
        "POST",
        "/v1/devices/thermo/reset",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
        "",
    );
    assert!(r.status == 200 || r.status == 422, "{}", r.body);
    if r.status == 200 {
        assert_eq!(s.inputs().last().unwrap().1.as_deref(), Some("api"));
    }
}

#[test]
fn sign_out_ends_the_session() {
    let s = Server::start();
    let (id, csrf) = s.sign_in();
    assert_eq!(
        s.post("/console/logout", Some(&id), "csrf=nope").status,
        403
    );
    assert_eq!(
        s.get("/console", Some(&id)).status,
        200,
        "a refused sign-out signs no one out"
    );
    let r = s.post("/console/logout", Some(&id), &format!("csrf={csrf}"));
    assert_eq!(r.status, 303);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(s.get("/console", Some(&id)).status, 303);
    assert_eq!(s.get("/console/events", Some(&id)).status, 401);
}

/// The live table's stream: refused without a session; with one, an event `status` with
/// the status JSON at once, and another when a device changes state.
#[test]
fn events_need_a_session_and_follow_the_status() {
    let s = Server::start();
    let (id, _) = s.sign_in();
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        c,
        "GET /console/events HTTP/1.1\r\nHost: {}\r\nCookie: kalki_session={id}\r\n\r\n",
        s.addr
    )
    .unwrap();
    let mut got = String::new();
    let read = |c: &mut std::net::TcpStream, got: &mut String, want: &str| {
        let mut buf = [0u8; 8192];
        while !got.contains(want) {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "stream closed before `{want}`: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    read(&mut c, &mut got, "event: status");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));
    read(&mut c, &mut got, "\"name\":\"hall_cam\"");
    assert!(!got.contains("\"state\":\"suspicious\""));
    s.alert("hall_cam", "port_scan");
    // Without a change notice (no main loop here), the table's poll finds it.
    read(&mut c, &mut got, "\"state\":\"suspicious\"");
}

#[test]
fn the_state_machine_is_drawn_with_the_current_state() {
    let s = Server::start();
    let (id, _) = s.sign_in();
    let r = s.get("/console/devices/hall_cam/machine.svg", Some(&id));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    let body = &r.body;
    // Body may be chunked: find the states in order.
    let at = |s: &str| body.find(&format!("data-state=\"{s}\"")).unwrap();
    assert!(at("normal") < at("suspicious") && at("suspicious") < at("attack"));
    assert!(body.contains("class=\"state current\" data-state=\"normal\""));
    assert!(body.contains("on brute_force"));
    assert!(body.contains("on operator reset"));
    assert!(body.contains("after 10m quiet"));
    assert_eq!(
        s.get("/console/devices/nobody/machine.svg", Some(&id))
            .status,
        404
    );
}
