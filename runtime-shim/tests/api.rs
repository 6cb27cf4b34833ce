//! The event API for real: `api::serve` on an ephemeral loopback port and on a Unix
//! socket, spoken to in raw HTTP/1.1 and with the real `kalki-shim` client subcommands.
//! The main loop is a test double (a real engine over the smart-office bundle, counting
//! what reaches it); everything the API itself claims is tested: the token on every
//! endpoint, every class of bad input answered 4xx with its code (snapshots) and never
//! forwarded, good input forwarded and answered with its state changes, 503 when the
//! loop does not answer, slow and idle clients disconnected, the connection limit, a
//! bounded shutdown, loopback only, the socket's mode and lifecycle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{compile_dir, load, MemReader, TempDir};
use kalki_shim::api::{
    self, Accepted, Changed, Checker, DeviceStatus, Endpoint, Exposure, Listener, Request,
    ServeError, ServeOptions, StatusReport, Token, TokenError,
};
use kalki_shim::bundle::Bundle;
use kalki_shim::enforcement::{self, Enforcement};
use kalki_shim::engine::{Config, Effect, Engine};
use kalki_shim::simulate;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const TOKEN: &str = "test-token-0123456789abcdef";
/// The test loop's clock: 2025-03-01T20:00:00Z, one second more for every input.
const T0: u64 = 1_740_859_200_000;

fn office() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| load(&MemReader::new(&compile_dir("examples/smart-office"))).unwrap())
}

/// How the test loop behaves.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Answers with a real engine.
    Engine,
    /// Keeps the request and never answers.
    Silent,
    /// Drops the reply unanswered.
    Drop,
}

/// The µmboxes of a device's state, by their `kalki.umbox` label.
fn umboxes(bundle: &Bundle, device: usize, state: usize) -> Vec<String> {
    bundle.manifest.devices[device].states[state]
        .switch
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .filter_map(|p| bundle.containers.get(p))
        .filter_map(|c| c.labels.get("kalki.umbox").cloned())
        .collect()
}

/// The main loop's test double: validates with a real engine, "journals" by counting,
/// applies, and answers. Counts every request that reaches it.
async fn test_loop(mut rx: mpsc::Receiver<Request>, seen: Arc<AtomicUsize>, how: Behaviour) {
    let bundle = office();
    let mut engine = Engine::new(bundle, Config::default(), T0);
    let mut since: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut seq = 0;
    let mut kept = Vec::new();
    while let Some(req) = rx.recv().await {
        seen.fetch_add(1, Ordering::SeqCst);
        match how {
            Behaviour::Silent => {
                kept.push(req);
                continue;
            }
            Behaviour::Drop => continue,
            Behaviour::Engine => {}
        }
        match req {
            Request::Submit { input, reply, .. } => {
                let t = T0 + (seq + 1) * 1000;
                let answer = engine.handle(t, &input).map(|steps| {
                    seq += 1;
                    let mut changes = Vec::new();
                    for step in &steps {
                        for e in &step.effects {
                            if let Effect::StateChange {
                                device,
                                from,
                                to,
                                cause,
                            } = e
                            {
                                let name = engine.device_name(*device).to_string();
                                let cause = simulate::cause_text(bundle, &engine, *device, cause);
                                since.insert(name.clone(), (step.t_ms, cause.clone()));
                                changes.push(Changed {
                                    device: name,
                                    from: engine.state_name(*device, *from).into(),
                                    to: engine.state_name(*device, *to).into(),
                                    cause,
                                });
                            }
                        }
                    }
                    Accepted {
                        seq,
                        t_ms: t,
                        changes,
                    }
                });
                let _ = reply.send(answer);
            }
            Request::Status { reply } => {
                let m = &bundle.manifest;
                let devices = (0..engine.device_count())
                    .map(|d| {
                        let state = engine.state(d).unwrap();
                        let name = engine.device_name(d).to_string();
                        let s = since.get(&name);
                        // What the fake verdicts vouch for: the state's chain, the
                        // most restrictive state's for the one failed closed, nothing
                        // for the one not enforced.
                        let states = &m.devices[d].states;
                        let crossing = match name.as_str() {
                            "lobby_light" => Some(enforcement::crossing(
                                bundle,
                                d,
                                states.iter().position(|s| s.name == "attack"),
                            )),
                            "annex_thermo" => None,
                            _ => Some(enforcement::crossing(bundle, d, Some(state))),
                        };
                        DeviceStatus {
                            device_type: bundle.device_type(d).unwrap().name.clone(),
                            state: engine.state_name(d, state).into(),
                            since_ms: s.map(|s| s.0),
                            since: s.map(|s| api::rfc3339(s.0)),
                            cause: s.map(|s| s.1.clone()),
                            umboxes: umboxes(bundle, d, state),
                            enforcement: match name.as_str() {
                                "lobby_light" => Enforcement::FailedClosed {
                                    installed: "attack".into(),
                                    reason: "µmbox `sniffer` did not start".into(),
                                },
                                "annex_thermo" => Enforcement::NotEnforced {
                                    reason: "Open vSwitch cannot be read".into(),
                                },
                                _ => Enforcement::Enforced,
                            },
                            name,
                            crosses: None,
                            crossing: None,
                        }
                        .with_crossing(crossing)
                    })
                    .collect();
                let _ = reply.send(StatusReport {
                    site: m.site.clone(),
                    bundle_sha256: bundle.manifest_sha256.clone(),
                    uptime_s: 3725,
                    now_ms: engine.now(),
                    devices,
                    mqtt: None,
                });
            }
            Request::History { reply, .. } => {
                let _ = reply.send(Ok(Vec::new()));
            }
        }
    }
}

/// A running API with its test loop, on its own runtime.
struct Server {
    rt: Option<tokio::runtime::Runtime>,
    endpoint: Endpoint,
    seen: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl Server {
    fn start(endpoint: Endpoint, how: Behaviour, timeout: Duration) -> Server {
        Server::start_with(endpoint, how, |o| o.timeout = timeout)
    }

    /// A server with its options as `configure` leaves them.
    fn start_with(
        endpoint: Endpoint,
        how: Behaviour,
        configure: impl FnOnce(&mut ServeOptions),
    ) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(Listener::bind(&endpoint, Exposure::LoopbackOnly))
            .unwrap();
        let endpoint = listener.endpoint().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel(16);
        rt.spawn(test_loop(rx, seen.clone(), how));
        let mut options = ServeOptions::new(Token::new(TOKEN).unwrap(), Checker::new(office()));
        configure(&mut options);
        let (stop, stopped) = oneshot::channel::<()>();
        let done = rt.spawn(api::serve(listener, options, tx, async {
            let _ = stopped.await;
        }));
        Server {
            rt: Some(rt),
            endpoint,
            seen,
            stop: Some(stop),
            done: Some(done),
        }
    }

    fn tcp() -> Server {
        Server::start(
            "127.0.0.1:0".parse().unwrap(),
            Behaviour::Engine,
            Duration::from_secs(10),
        )
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// Stops serving and waits for `serve` to return.
    fn stop(mut self) -> Result<(), ServeError> {
        let _ = self.stop.take().unwrap().send(());
        let rt = self.rt.take().unwrap();
        let r = rt.block_on(self.done.take().unwrap()).unwrap();
        rt.shutdown_timeout(Duration::from_secs(1));
        r
    }

    /// A connection of its own, to send bytes at the pace a test wants.
    fn connect(&self) -> Box<dyn Conn> {
        match &self.endpoint {
            Endpoint::Tcp(a) => Box::new(std::net::TcpStream::connect(a).unwrap()),
            Endpoint::Unix(p) => Box::new(std::os::unix::net::UnixStream::connect(p).unwrap()),
        }
    }

    /// One raw HTTP/1.1 exchange.
    fn raw(&self, request: &[u8]) -> Resp {
        let mut buf = Vec::new();
        match &self.endpoint {
            Endpoint::Tcp(a) => {
                let mut s = std::net::TcpStream::connect(a).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                s.write_all(request).unwrap();
                s.read_to_end(&mut buf).unwrap();
            }
            Endpoint::Unix(p) => {
                let mut s = std::os::unix::net::UnixStream::connect(p).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                s.write_all(request).unwrap();
                s.read_to_end(&mut buf).unwrap();
            }
        }
        Resp::parse(&buf)
    }

    /// A request with the right token; `body` as JSON unless `content_type` says otherwise.
    fn send(&self, method: &str, path: &str, body: &str) -> Resp {
        self.send_with(method, path, Some(TOKEN), Some("application/json"), body)
    }

    fn send_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: &str,
    ) -> Resp {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(c) = content_type {
            req.push_str(&format!("Content-Type: {c}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        self.raw(req.as_bytes())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// A client's end of a connection, over TCP or a Unix socket.
trait Conn: Read + Write {
    fn set_timeout(&self, t: Duration);
}

impl Conn for std::net::TcpStream {
    fn set_timeout(&self, t: Duration) {
        self.set_read_timeout(Some(t)).unwrap();
    }
}

impl Conn for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Duration) {
        self.set_read_timeout(Some(t)).unwrap();
    }
}

/// Everything the server sends until it closes the connection; fails if it is still
/// open after `within` without a byte.
fn until_closed(c: &mut dyn Conn, within: Duration) -> Vec<u8> {
    c.set_timeout(within);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match c.read(&mut chunk) {
            Ok(0) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // Closed with bytes of ours unread.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return buf,
            Err(e) => panic!(
                "the server kept the connection open ({e}); got so far: {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: String,
    body: String,
}

impl Resp {
    fn parse(buf: &[u8]) -> Resp {
        let text = String::from_utf8(buf.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        Resp {
            status,
            headers: head.to_ascii_lowercase(),
            body: body.to_string(),
        }
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap().to_string()
    }
}

#[test]
fn every_endpoint_needs_the_token_and_nothing_unauthenticated_is_forwarded() {
    let s = Server::tcp();
    let endpoints = [
        ("GET", "/v1/status", ""),
        (
            "POST",
            "/v1/devices/thermo/readings",
            r#"{"values": {"temperature": 30}}"#,
        ),
        (
            "POST",
            "/v1/devices/hall_cam/alerts",
            r#"{"alert": "port_scan"}"#,
        ),
        ("POST", "/v1/devices/hall_cam/reset", ""),
        ("GET", "/v1/nothing", ""),
        ("GET", "/metrics", ""),
        // Malformed and oversize bodies: the token is checked first.
        ("POST", "/v1/devices/thermo/readings", "{not json"),
    ];
    let wrong = [
        None,
        Some("wrong-token-0123456789abcdef"),
        Some(&TOKEN[..TOKEN.len() - 1]),
        Some(""),
    ];
    for (method, path, body) in endpoints {
        for token in wrong {
            let r = s.send_with(method, path, token, Some("application/json"), body);
            assert_eq!(r.status, 401, "{method} {path} {token:?}: {r:?}");
            assert_eq!(r.code(), "S301");
            assert!(r.headers.contains("www-authenticate: bearer"), "{r:?}");
        }
        // Another scheme.
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {TOKEN}\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(s.raw(req.as_bytes()).status, 401);
    }
    assert_eq!(s.seen(), 0, "nothing reached the main loop");
    let missing = s.send_with("GET", "/v1/status", None, None, "");
    let wrong = s.send_with("GET", "/v1/status", Some("nope-nope-nope-nope"), None, "");
    insta::assert_snapshot!(
        "unauthorized",
        format!(
            "missing token: {}\n{}\n\nwrong token: {}\n{}",
            missing.status,
            pretty(&missing),
            wrong.status,
            pretty(&wrong)
        )
    );
    // With the token, the same server answers; the scheme's name in any case.
    assert_eq!(s.send("GET", "/v1/status", "").status, 200);
    let req = format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: bearer {TOKEN}\r\n\r\n");
    assert_eq!(s.raw(req.as_bytes()).status, 200);
    assert_eq!(s.seen(), 2);
}

fn pretty(r: &Resp) -> String {
    serde_json::to_string_pretty(&r.json()).unwrap()
}

/// A bad request: what it is, and how it is sent.
struct Bad {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    code: &'static str,
}

fn bad(name: &'static str, path: &'static str, body: &str, status: u16, code: &'static str) -> Bad {
    Bad {
        name,
        method: "POST",
        path,
        content_type: Some("application/json"),
        body: body.to_string(),
        status,
        code,
    }
}

const READ: &str = "/v1/devices/thermo/readings";
const ALERT: &str = "/v1/devices/hall_cam/alerts";

fn bad_requests() -> Vec<Bad> {
    let big = format!(
        r#"{{"values": {{"temperature": 30, "pad": "{}"}}}}"#,
        "x".repeat(70 * 1024)
    );
    vec![
        bad(
            "malformed JSON",
            READ,
            r#"{"values": {"temperature": 30,}"#,
            400,
            "S302",
        ),
        bad(
            "truncated JSON",
            READ,
            r#"{"values": {"temperature""#,
            400,
            "S302",
        ),
        bad("empty body", READ, "", 400, "S302"),
        bad("not an object", READ, "[1, 2]", 400, "S303"),
        bad("missing values", READ, "{}", 400, "S303"),
        bad(
            "values not an object",
            READ,
            r#"{"values": [30]}"#,
            400,
            "S303",
        ),
        bad(
            "unknown field",
            READ,
            r#"{"values": {"temperature": 30}, "device": "annex_thermo"}"#,
            400,
            "S303",
        ),
        bad(
            "variable given twice",
            READ,
            r#"{"values": {"temperature": 30, "temperature": 99}}"#,
            400,
            "S303",
        ),
        bad("missing alert", ALERT, r#"{"source": "ids"}"#, 400, "S303"),
        bad("alert not a string", ALERT, r#"{"alert": 7}"#, 400, "S303"),
        bad(
            "reset with a body",
            "/v1/devices/hall_cam/reset",
            r#"{"force": true}"#,
            400,
            "S303",
        ),
        Bad {
            content_type: Some("text/plain"),
            ..bad(
                "not declared JSON",
                READ,
                r#"{"values": {"temperature": 30}}"#,
                415,
                "S305",
            )
        },
        Bad {
            content_type: None,
            ..bad(
                "no content type",
                READ,
                r#"{"values": {"temperature": 30}}"#,
                415,
                "S305",
            )
        },
        bad("oversize", READ, &big, 413, "S304"),
        bad(
            "unknown device",
            "/v1/devices/thermoo/readings",
            r#"{"values": {"temperature": 30}}"#,
            404,
            "S101",
        ),
        bad(
            "unknown device (reset)",
            "/v1/devices/nobody/reset",
            "",
            404,
            "S101",
        ),
        bad(
            "unknown variable",
            READ,
            r#"{"values": {"temprature": 30}}"#,
            422,
            "S102",
        ),
        bad(
            "wrong type: string",
            READ,
            r#"{"values": {"temperature": "hot"}}"#,
            422,
            "S103",
        ),
        bad(
            "wrong type: decimal",
            READ,
            r#"{"values": {"temperature": 36.5}}"#,
            422,
            "S103",
        ),
        bad(
            "wrong type: not a member",
            READ,
            r#"{"values": {"mode": "boost"}}"#,
            422,
            "S103",
        ),
        bad(
            "out of range",
            READ,
            r#"{"values": {"temperature": 500}}"#,
            422,
            "S104",
        ),
        bad(
            "several problems",
            READ,
            r#"{"values": {"temperature": -41, "heating": 1, "colour": "red"}}"#,
            422,
            "S102",
        ),
        bad("no values", READ, r#"{"values": {}}"#, 422, "S105"),
        bad(
            "unknown alert",
            ALERT,
            r#"{"alert": "port_scna"}"#,
            422,
            "S106",
        ),
        bad(
            "unknown source",
            ALERT,
            r#"{"alert": "port_scan", "source": "auth_proxy"}"#,
            422,
            "S107",
        ),
        Bad {
            method: "GET",
            ..bad("unknown endpoint", "/v1/devices", "", 404, "S306")
        },
        Bad {
            method: "GET",
            ..bad("wrong method", READ, "", 405, "S306")
        },
    ]
}

#[test]
fn bad_input_is_refused_with_its_code_and_never_forwarded() {
    let s = Server::tcp();
    let mut snap = String::new();
    for b in bad_requests() {
        let r = s.send_with(b.method, b.path, Some(TOKEN), b.content_type, &b.body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (b.status, b.code),
            "{}: {r:?}",
            b.name
        );
        assert!(
            r.headers.contains("content-type: application/json"),
            "{}",
            b.name
        );
        assert_eq!(s.seen(), 0, "{} reached the main loop", b.name);
        snap.push_str(&format!(
            "== {} ({} {}): {}\n{}\n\n",
            b.name,
            b.method,
            b.path,
            r.status,
            pretty(&r)
        ));
        // The shim keeps serving after every bad request.
        let ok = s.send("POST", READ, r#"{"values": {"temperature": 21}}"#);
        assert_eq!(ok.status, 200, "after {}: {ok:?}", b.name);
        s.seen.fetch_sub(1, Ordering::SeqCst);
    }
    insta::assert_snapshot!("bad-requests", snap);
}

#[test]
fn an_oversize_body_without_a_length_is_cut_off() {
    let s = Server::tcp();
    // Chunked, no Content-Length: the limit applies while reading.
    let chunk = "x".repeat(16 * 1024);
    let mut req = format!(
        "POST {READ} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for _ in 0..5 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let r = s.raw(req.as_bytes());
    assert_eq!((r.status, r.code().as_str()), (413, "S304"), "{r:?}");
    // A declared length over the limit is refused before the body is read.
    let req = format!(
        "POST {READ} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{{"
    );
    let r = s.raw(req.as_bytes());
    assert_eq!((r.status, r.code().as_str()), (413, "S304"), "{r:?}");
    assert_eq!(s.seen(), 0);
}

/// `GET /metrics` serves the Prometheus text of the metrics the API was given, and the
/// API counts every answer it gives where it gives it: events by kind and outcome, the
/// codes of every refusal.
#[test]
fn metrics_count_every_answer_of_the_api() {
    let metrics = Arc::new(kalki_shim::metrics::Metrics::new());
    let m = metrics.clone();
    let s = Server::start_with("127.0.0.1:0".parse().unwrap(), Behaviour::Engine, |o| {
        o.metrics = m
    });
    assert_eq!(
        s.send("POST", READ, r#"{"values": {"temperature": 21}}"#)
            .status,
        200
    );
    assert_eq!(
        s.send("POST", READ, r#"{"values": {"temperature": 22}}"#)
            .status,
        200
    );
    let r = s.send("POST", READ, r#"{"values": {"nosuch": 1}}"#);
    assert_eq!((r.status, r.code().as_str()), (422, "S102"));
    let r = s.send(
        "POST",
        "/v1/devices/nosuch/readings",
        r#"{"values": {"temperature": 1}}"#,
    );
    assert_eq!((r.status, r.code().as_str()), (404, "S101"));
    assert_eq!(s.send("POST", READ, "{not json").status, 400);
    assert_eq!(s.send("POST", "/v1/devices/hall_cam/reset", "").status, 200);
    assert_eq!(s.send_with("GET", "/metrics", None, None, "").status, 401);

    let r = s.send_with("GET", "/metrics", Some(TOKEN), None, "");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.headers
            .contains("content-type: text/plain; version=0.0.4"),
        "{r:?}"
    );
    for line in [
        r#"kalki_events_total{source="api",kind="reading",outcome="accepted"} 2"#,
        r#"kalki_events_total{source="api",kind="reading",outcome="refused"} 3"#,
        r#"kalki_events_total{source="api",kind="operator",outcome="accepted"} 1"#,
        r#"kalki_refused_inputs_total{source="api",code="S102"} 1"#,
        r#"kalki_refused_inputs_total{source="api",code="S101"} 1"#,
        r#"kalki_refused_inputs_total{source="api",code="S302"} 1"#,
        r#"kalki_refused_inputs_total{source="api",code="S301"} 1"#,
    ] {
        assert!(
            r.body.lines().any(|l| l == line),
            "no `{line}`:\n{}",
            r.body
        );
    }
    // The scrape itself is neither an event nor a refusal.
    assert_eq!(metrics.encode().unwrap(), r.body);
}

#[test]
fn good_input_is_forwarded_and_answered_with_its_state_changes() {
    let s = Server::tcp();
    let read = |body: &str| s.send("POST", READ, body);
    // Nothing changes.
    let r = read(r#"{"values": {"temperature": 21, "heating": true, "mode": "heat"}}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        serde_json::json!({"seq": 1, "t_ms": T0 + 1000, "changes": []})
    );
    // The main thermostat overheats: the rule switches it off and raises `overheat`.
    let r = read(r#"{"values": {"temperature": 45}}"#);
    let a: Accepted = serde_json::from_str(&r.body).unwrap();
    assert_eq!(a.seq, 2);
    assert_eq!(
        a.changes,
        [Changed {
            device: "thermo".into(),
            from: "normal".into(),
            to: "suspicious".into(),
            cause: "on overheat (raised by rule main_overheat)".into()
        }]
    );
    // An alert without a source is the device's own: a camera does not declare
    // `port_scan` (its µmboxes raise it), so that is refused (S112), journaled nowhere.
    let r = s.send("POST", ALERT, r#"{"alert": "port_scan"}"#);
    assert_eq!((r.status, r.code().as_str()), (422, "S112"), "{r:?}");
    // Alerts from its µmboxes.
    for (body, change) in [
        (
            r#"{"alert": "port_scan", "source": "sniffer"}"#,
            Some("normal -> suspicious"),
        ),
        (r#"{"alert": "port_scan", "source": "sniffer"}"#, None),
        (
            r#"{"alert": "port_scan", "source": "ids"}"#,
            Some("suspicious -> attack"),
        ),
    ] {
        let r = s.send("POST", ALERT, body);
        assert_eq!(r.status, 200, "{body}: {r:?}");
        let a: Accepted = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            a.changes
                .first()
                .map(|c| format!("{} -> {}", c.from, c.to))
                .as_deref(),
            change,
            "{body}"
        );
    }
    // The operator's reset, with no body and with `{}`.
    let r = s.send_with("POST", "/v1/devices/hall_cam/reset", Some(TOKEN), None, "");
    assert_eq!(r.status, 200, "{r:?}");
    let a: Accepted = serde_json::from_str(&r.body).unwrap();
    assert_eq!(a.changes[0].cause, "on operator reset");
    assert_eq!(
        s.send("POST", "/v1/devices/hall_cam/reset", "{}").status,
        200
    );
    // The status is the loop's, as JSON.
    let r = s.send("GET", "/v1/status", "");
    assert_eq!(r.status, 200);
    let st: StatusReport = serde_json::from_str(&r.body).unwrap();
    assert_eq!(st.site, "office");
    let thermo = st.devices.iter().find(|d| d.name == "thermo").unwrap();
    assert_eq!(
        (thermo.state.as_str(), thermo.since.as_deref()),
        ("suspicious", Some("2025-03-01T20:00:02Z"))
    );
    assert_eq!(s.seen(), 8);
    s.stop().unwrap();
}

#[test]
fn a_main_loop_that_does_not_answer_gets_503_not_a_hang() {
    for (how, message) in [
        (Behaviour::Silent, "the shim did not answer in time"),
        (Behaviour::Drop, "the shim is shutting down"),
    ] {
        let s = Server::start(
            "127.0.0.1:0".parse().unwrap(),
            how,
            Duration::from_millis(300),
        );
        for (method, path, body) in [
            ("GET", "/v1/status", ""),
            ("POST", READ, r#"{"values": {"temperature": 30}}"#),
        ] {
            let started = std::time::Instant::now();
            let r = s.send(method, path, body);
            assert_eq!((r.status, r.code().as_str()), (503, "S307"), "{r:?}");
            assert_eq!(r.json()["error"]["message"], message);
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }
}

/// A request head cut off before its end: what a slow client sends, then nothing.
const PARTIAL_HEAD: &[u8] = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ";

/// A reading's head and the first `sent` bytes of its body.
fn partial_reading(sent: usize) -> (Vec<u8>, &'static [u8]) {
    let body: &[u8] = br#"{"values": {"temperature": 30}}"#;
    let mut req = format!(
        "POST {READ} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body[..sent]);
    (req, &body[sent..])
}

#[test]
fn slow_clients_are_disconnected_and_do_not_lock_out_others() {
    let s = Server::start_with("127.0.0.1:0".parse().unwrap(), Behaviour::Engine, |o| {
        o.header_timeout = Duration::from_millis(500);
        o.max_connections = 64;
    });
    // More slow clients than the API serves at once, each holding a connection with half
    // a request head.
    let mut slow: Vec<Box<dyn Conn>> = (0..300)
        .map(|_| {
            let mut c = s.connect();
            c.write_all(PARTIAL_HEAD).unwrap();
            c
        })
        .collect();
    // While they are all open, a client with the token is answered: the slow ones are
    // dropped after the header timeout and their slots go to those waiting.
    let r = s.send("GET", "/v1/status", "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.seen(), 1);
    // Every slow one was disconnected by the server (hyper says 408 first), none answered.
    for c in &mut slow {
        let got = until_closed(c.as_mut(), Duration::from_secs(30));
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(s.seen(), 1);
    s.stop().unwrap();
}

#[test]
fn connections_over_the_limit_wait_for_a_free_slot() {
    let s = Server::start_with("127.0.0.1:0".parse().unwrap(), Behaviour::Engine, |o| {
        o.header_timeout = Duration::from_secs(60);
        o.max_connections = 1;
    });
    let mut slow = s.connect();
    slow.write_all(PARTIAL_HEAD).unwrap();
    // The only slot is taken: a full request is not even read.
    let mut waiting = s.connect();
    let req = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    waiting.write_all(req.as_bytes()).unwrap();
    waiting.set_timeout(Duration::from_secs(1));
    let mut byte = [0u8; 1];
    let early = waiting.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "answered beyond the connection limit: {early:?}"
    );
    assert_eq!(s.seen(), 0);
    // The slow client goes away; the waiting one gets the slot and its answer.
    drop(slow);
    let r = Resp::parse(&until_closed(waiting.as_mut(), Duration::from_secs(30)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.seen(), 1);
    s.stop().unwrap();
}

#[test]
fn an_idle_kept_alive_connection_is_closed() {
    let s = Server::start_with("127.0.0.1:0".parse().unwrap(), Behaviour::Engine, |o| {
        o.header_timeout = Duration::from_millis(500);
    });
    let mut c = s.connect();
    // No `Connection: close`: HTTP/1.1 keeps the connection open for the next request.
    let req =
        format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap();
    let got = until_closed(c.as_mut(), Duration::from_secs(30));
    let r = Resp::parse(&got);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.headers.contains("connection: close"), "{r:?}");
    assert_eq!(s.seen(), 1);
    s.stop().unwrap();
}

#[test]
fn a_body_that_stalls_is_answered_408_and_the_connection_closed() {
    let s = Server::start_with("127.0.0.1:0".parse().unwrap(), Behaviour::Engine, |o| {
        o.header_timeout = Duration::from_secs(60);
        o.body_timeout = Duration::from_millis(500);
    });
    let mut c = s.connect();
    let (req, _) = partial_reading(12);
    c.write_all(&req).unwrap();
    let r = Resp::parse(&until_closed(c.as_mut(), Duration::from_secs(30)));
    assert_eq!((r.status, r.code().as_str()), (408, "S308"), "{r:?}");
    assert_eq!(
        r.json()["error"]["message"],
        "the body did not arrive within 0.5 s"
    );
    assert!(r.headers.contains("connection: close"), "{r:?}");
    assert_eq!(s.seen(), 0, "nothing of it reached the main loop");
    // Answers that never read the body (a wrong token, a GET) do not wait for it either:
    // the connection is closed after them.
    for (token, status) in [("wrong-token-0123456789abcdef", 401), (TOKEN, 200)] {
        let mut c = s.connect();
        let req = format!(
            "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{"
        );
        c.write_all(req.as_bytes()).unwrap();
        let r = Resp::parse(&until_closed(c.as_mut(), Duration::from_secs(30)));
        assert_eq!(r.status, status, "{r:?}");
    }
    // The API goes on serving.
    assert_eq!(
        s.send("POST", READ, r#"{"values": {"temperature": 30}}"#)
            .status,
        200
    );
}

#[test]
fn shutdown_finishes_requests_in_progress_and_is_bounded() {
    let dir = TempDir::new("api-shutdown");
    for endpoint in [
        "127.0.0.1:0".parse().unwrap(),
        Endpoint::Unix(dir.path().join("api.sock")),
    ] {
        let mut s = Server::start_with(endpoint.clone(), Behaviour::Engine, |o| {
            o.header_timeout = Duration::from_secs(120);
            o.body_timeout = Duration::from_secs(120);
            o.shutdown_grace = Duration::from_secs(3);
        });
        // Three clients in the middle of a request: one still sending its head, one its
        // body, and one that will finish its body after the shutdown signal.
        let mut head = s.connect();
        head.write_all(PARTIAL_HEAD).unwrap();
        let mut stalled = s.connect();
        stalled.write_all(&partial_reading(12).0).unwrap();
        let mut finishing = s.connect();
        let (req, rest) = partial_reading(12);
        finishing.write_all(&req).unwrap();
        // A later connection is answered, so the three were accepted.
        assert_eq!(s.send("GET", "/v1/status", "").status, 200);

        let _ = s.stop.take().unwrap().send(());
        let signalled = std::time::Instant::now();
        // Within the grace, a request in progress still gets its answer.
        std::thread::sleep(Duration::from_millis(200));
        finishing.write_all(rest).unwrap();
        let r = Resp::parse(&until_closed(finishing.as_mut(), Duration::from_secs(30)));
        assert_eq!(r.status, 200, "{endpoint}: {r:?}");
        // The stalled ones do not keep `serve` from returning: they are dropped after the
        // grace.
        let rt = s.rt.take().unwrap();
        let done = s.done.take().unwrap();
        let returned =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), done).await });
        let elapsed = signalled.elapsed();
        assert!(
            matches!(returned, Ok(Ok(Ok(())))),
            "{endpoint}: serve did not return in {elapsed:?}: {returned:?}"
        );
        assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
        for c in [&mut head, &mut stalled] {
            assert!(until_closed(c.as_mut(), Duration::from_secs(10)).is_empty());
        }
        // Nothing listens any more; the socket file is gone.
        match &s.endpoint {
            Endpoint::Tcp(a) => assert!(std::net::TcpStream::connect(a).is_err()),
            Endpoint::Unix(p) => assert!(!p.exists(), "{}", p.display()),
        }
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}

#[test]
fn the_api_listens_on_loopback_only_unless_told_otherwise() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:7878"] {
        let e: Endpoint = addr.parse().unwrap();
        let r = rt.block_on(Listener::bind(&e, Exposure::LoopbackOnly));
        assert!(
            matches!(r, Err(ServeError::NotLoopback { .. })),
            "{addr}: {r:?}"
        );
    }
    let e: Endpoint = "0.0.0.0:0".parse().unwrap();
    assert!(rt
        .block_on(Listener::bind(&e, Exposure::AnyAddress))
        .is_ok());
    for ok in ["[::1]:0", "localhost:0", "http://127.0.0.1:0/"] {
        let e: Endpoint = ok.parse().unwrap();
        assert!(
            rt.block_on(Listener::bind(&e, Exposure::LoopbackOnly))
                .is_ok(),
            "{ok}"
        );
    }
    for bad in ["example.com:80", "https://127.0.0.1:7878", "unix:", "7878"] {
        assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
    }
}

#[test]
fn the_unix_socket_is_private_replaces_a_stale_one_and_is_removed_at_the_end() {
    let dir = TempDir::new("api-unix");
    let path = dir.path().join("api.sock");
    // A stale socket: bound by a process that is gone (here: a listener dropped).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let s = Server::start(
        Endpoint::Unix(path.clone()),
        Behaviour::Engine,
        Duration::from_secs(10),
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let r = s.send("POST", READ, r#"{"values": {"temperature": 30}}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.send_with("GET", "/v1/status", None, None, "").status, 401);
    // A socket that is in use is not taken over.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(Listener::bind(
        &Endpoint::Unix(path.clone()),
        Exposure::LoopbackOnly,
    ));
    assert!(matches!(r, Err(ServeError::SocketInUse { .. })), "{r:?}");
    s.stop().unwrap();
    assert!(!path.exists(), "the socket is removed at the end");
    // A file that is no socket is never replaced.
    std::fs::write(&path, "precious").unwrap();
    let r = rt.block_on(Listener::bind(
        &Endpoint::Unix(path.clone()),
        Exposure::LoopbackOnly,
    ));
    assert!(matches!(r, Err(ServeError::NotASocket { .. })), "{r:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn token_files_must_be_private_and_tokens_long_enough() {
    let dir = TempDir::new("api-token");
    let file = |name: &str, text: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    assert!(Token::from_file(&file("ok", &format!("{TOKEN}\n"), 0o600)).is_ok());
    assert!(Token::from_file(&file("group", TOKEN, 0o640)).is_ok());
    assert!(matches!(
        Token::from_file(&file("world", TOKEN, 0o644)),
        Err(TokenError::Exposed { mode: 0o644, .. })
    ));
    assert!(matches!(
        Token::from_file(&file("empty", "\n", 0o600)),
        Err(TokenError::Empty)
    ));
    assert!(matches!(
        Token::from_file(&file("short", "abc", 0o600)),
        Err(TokenError::TooShort { len: 3 })
    ));
    assert!(matches!(
        Token::new("token with spaces in it"),
        Err(TokenError::NotPrintable)
    ));
    assert!(matches!(
        Token::from_file(&dir.path().join("missing")),
        Err(TokenError::Unreadable { .. })
    ));
    assert_eq!(format!("{:?}", Token::new(TOKEN).unwrap()), "Token(..)");
}

#[test]
fn rfc3339_dates() {
    assert_eq!(api::rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(api::rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    assert_eq!(api::rfc3339(1_740_859_480_250), "2025-03-01T20:04:40.250Z");
    assert_eq!(api::rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
}

// ---------------------------------------------------------------------------------------
// The client subcommands, the real binary.

fn token_file(dir: &TempDir) -> PathBuf {
    let p = dir.path().join("token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn shim(api: &str, token: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kalki-shim"))
        .args(args)
        .args(["--api", api, "--token-file"])
        .arg(token)
        .env("NO_COLOR", "1")
        .env_remove("KALKI_API")
        .env_remove("KALKI_TOKEN_FILE")
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        o.status.code().unwrap(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_client_subcommands_against_a_running_api() {
    let dir = TempDir::new("api-cli");
    let token = token_file(&dir);
    let s = Server::tcp();
    let api = s.endpoint.to_string();
    let run = |args: &[&str]| out(&shim(&api, &token, args));
    let mut snap = String::new();
    for args in [
        &[
            "event",
            "thermo",
            "temperature=45",
            "heating=true",
            "mode=heat",
        ][..],
        &["alert", "hall_cam", "port_scan", "--source", "sniffer"],
        &["alert", "hall_cam", "port_scan", "--source", "sniffer"],
        &["alert", "hall_cam", "port_scan", "--source", "ids"],
        &["reset", "hall_cam"],
        &["status"],
        // Refused by the shim: exit 1, its messages.
        &["event", "thermoo", "temperature=30"],
        // Without a source, an alert is the camera's own, and it declares none.
        &["alert", "hall_cam", "port_scan"],
        &[
            "event",
            "thermo",
            "temperature=36.5",
            "mode=boost",
            "colour=red",
        ],
        &["alert", "hall_cam", "port_scan", "--source", "auth_proxy"],
        // Usage: exit 2, nothing sent.
        &["event", "thermo", "temperature"],
        &["event", "thermo", "temperature=1", "temperature=2"],
    ] {
        snap.push_str(&format!("$ kalki-shim {}\n{}\n", args.join(" "), run(args)));
    }
    // The bundle's digest changes with every change of the compiler's output; what is
    // checked here is the client, so it is masked.
    insta::with_settings!({ filters => vec![(r"bundle [0-9a-f]{12}", "bundle [sha]")] }, {
        insta::assert_snapshot!("cli", snap);
    });
    assert_eq!(
        s.seen(),
        6,
        "refusals of the pre-check never reach the loop"
    );
    // One device not enforced (the fake loop says so for annex_thermo): exit 3, and the
    // verdicts as they were sent.
    let json = shim(&api, &token, &["status", "--json"]);
    assert_eq!(json.status.code(), Some(3), "{}", out(&json));
    let st: StatusReport = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(st.devices.len(), 4);
    let raw: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(raw["devices"][0]["enforcement"]["verdict"], "enforced");
    assert_eq!(raw["devices"][1]["enforcement"]["verdict"], "failed_closed");
    assert_eq!(raw["devices"][1]["enforcement"]["installed"], "attack");
    assert_eq!(raw["devices"][3]["enforcement"]["verdict"], "not_enforced");

    // The token file from the environment; a wrong token is refused (exit 1).
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "wrong-token-0123456789abcdef").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kalki-shim"))
        .args(["status", "--api", &api])
        .env("KALKI_TOKEN_FILE", &wrong)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("error[S301]: wrong token"), "{}", out(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_kalki-shim"))
        .args(["reset", "hall_cam"])
        .env("KALKI_API", &api)
        .env("KALKI_TOKEN_FILE", &token)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    s.stop().unwrap();

    // Nobody listening: exit 2.
    let o = shim(&api, &token, &["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("cannot reach the shim"), "{}", out(&o));
    // A token file others can read: exit 2, nothing sent.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = shim(&api, &token, &["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(
        out(&o).contains("can be read or written by any user"),
        "{}",
        out(&o)
    );
    // A bad --api.
    let o = shim("https://127.0.0.1:1", &token, &["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
}

#[test]
fn the_client_over_a_unix_socket_and_its_timeout() {
    let dir = TempDir::new("api-cli-unix");
    let token = token_file(&dir);
    let path = dir.path().join("api.sock");
    let s = Server::start(
        Endpoint::Unix(path.clone()),
        Behaviour::Engine,
        Duration::from_secs(10),
    );
    let api = format!("unix:{}", path.display());
    let o = shim(&api, &token, &["event", "annex_thermo", "temperature=30"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "accepted (seq 1): no state change\n"
    );
    drop(s);
    // A loop that never answers, and a client that waits less than the API: exit 2.
    let s = Server::start(
        Endpoint::Unix(path.clone()),
        Behaviour::Silent,
        Duration::from_secs(30),
    );
    let started = std::time::Instant::now();
    let o = shim(&api, &token, &["status", "--timeout", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("did not answer within 1 s"), "{}", out(&o));
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(s);
}
