//! `fake-replies`: isolates the device and answers its control protocol in its stead
//! (Kalki's u8-fake-replies, which answered WeMo UPnP requests).
//!
//! Nothing is forwarded: every frame from either side is dropped, IPv4 or not. TCP from
//! the uplink to one of the protocol's control ports is answered as the device would:
//! the µmbox completes the handshake itself (its own initial sequence number, the
//! connection kept in a bounded table), reads the request, answers it with a plausible
//! `200 OK` and `Connection: close`, then FIN. It acknowledges the client's FIN, and
//! forgets the connection then, on a reset, or when idle. Data that is not an HTTP
//! request (TLS on 443, say) is answered with a reset: there is no certificate to
//! answer a TLS handshake with. Each request raises `intercepted_command` (held off per
//! source), and with `--log-requests true` is logged to stderr.
//!
//! A segment to a control port of a connection the µmbox does not know is answered the
//! way a stack without the connection answers (a reset), except a bare ACK, which is
//! dropped.

use super::tcp::{self, At};
use super::{Dir, Function, Inject, Verdict};
use crate::event::{Alert, AlertKind};
use crate::http::{self, Request};
use crate::packet::{Ipv4, Tcp, TcpFlags};
use crate::window::{Ms, Table};
use clap::{ArgAction, Args as ClapArgs, ValueEnum};
use serde_json::{json, Map, Value};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;

/// Connections answered at once; a full table forgets an arbitrary one.
pub const MAX_CONNECTIONS: usize = 4096;
/// At most this much of a request is kept; a longer one is answered from its start.
pub const MAX_REQUEST: usize = 8192;
/// A connection with no segment for this long is forgotten.
pub const IDLE: Ms = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Upnp,
    Hue,
    Http,
}

impl Protocol {
    /// The device's TCP ports that carry the protocol's commands.
    pub fn ports(self) -> &'static [u16] {
        match self {
            // WeMo's UPnP control endpoints move between these.
            Protocol::Upnp => &[49152, 49153, 49154],
            Protocol::Hue => &[80, 443],
            Protocol::Http => &[80, 443, 8080],
        }
    }
}

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Whose commands are answered: upnp, hue or http.
    #[arg(long, value_name = "PROTOCOL", default_value = "upnp")]
    pub protocol: Protocol,
    /// Log each intercepted request to stderr (true or false).
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, default_value_t = true)]
    pub log_requests: bool,
}

/// A connection to a control port: (client, client port, device, port).
type Key = (Ipv4Addr, u16, Ipv4Addr, u16);

#[derive(Debug, Clone)]
struct Conn {
    client_isn: u32,
    our_isn: u32,
    /// The client's next byte.
    rcv_next: u32,
    /// The client's maximum segment size.
    mss: u16,
    /// The request so far (at most [`MAX_REQUEST`] bytes).
    request: Vec<u8>,
    /// The answer, once sent (our FIN follows it).
    reply: Option<Vec<u8>>,
    last: Ms,
}

impl Conn {
    /// Our sequence number after the SYN.
    fn snd_start(&self) -> u32 {
        self.our_isn.wrapping_add(1)
    }
}

/// What the bytes of a request so far are.
enum Seen<'a> {
    /// A request, whole (or as much as is kept).
    Request(Request<'a>),
    /// Perhaps a request, not whole yet.
    Partial,
    /// Not HTTP.
    Other,
}

fn classify(buf: &[u8]) -> Seen<'_> {
    let full = buf.len() >= MAX_REQUEST;
    match http::request(buf) {
        Some(r) => {
            let want = r
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if full || (r.head_complete() && r.body().len() >= want) {
                Seen::Request(r)
            } else {
                Seen::Partial
            }
        }
        None if full || buf.windows(2).any(|w| w == b"\r\n") => Seen::Other,
        // A request line is printable ASCII.
        None if buf.iter().all(|b| (0x20..0x7f).contains(b)) => Seen::Partial,
        None => Seen::Other,
    }
}

#[derive(Debug)]
pub struct FakeReplies {
    args: Args,
    /// Keys the hash that picks our initial sequence numbers (RFC 6528 in spirit).
    isn_key: RandomState,
    conns: Table<Key, Conn>,
    /// The WeMo switch state last set per device (`0` until set).
    binary_state: Table<Ipv4Addr, u8>,
    intercepted: u64,
    notes: Vec<String>,
    injected: Vec<Inject>,
}

impl FakeReplies {
    pub fn new(args: Args) -> FakeReplies {
        FakeReplies {
            args,
            isn_key: RandomState::new(),
            conns: Table::new(MAX_CONNECTIONS),
            binary_state: Table::new(MAX_CONNECTIONS),
            intercepted: 0,
            notes: Vec::new(),
            injected: Vec::new(),
        }
    }

    fn uplink_packet(&mut self, now: Ms, p: &Ipv4<'_>, t: &Tcp<'_>, alerts: &mut Vec<Alert>) {
        let key = (p.src, t.sport, p.dst, t.dport);
        if t.flags.any(TcpFlags::RST) {
            self.conns.remove(&key);
            return;
        }
        if t.flags.is_syn() {
            self.syn(now, p, t, key);
            return;
        }
        let Some(mut c) = self.conns.remove(&key) else {
            // No such connection: a bare ACK is dropped, the rest gets a reset.
            if !t.payload.is_empty() || t.flags.any(TcpFlags::FIN | TcpFlags::SYN) {
                self.injected.extend(tcp::reset_for(p, t));
            }
            return;
        };
        c.last = now;
        let keep = if !t.flags.any(TcpFlags::ACK) {
            true
        } else if c.reply.is_some() {
            self.after_reply(p, t, &mut c)
        } else {
            self.receive(p, t, &mut c, alerts)
        };
        if keep {
            // Just removed, so there is room: nothing else is evicted.
            self.conns.insert(key, c);
        }
    }

    /// A SYN: answered with our SYN-ACK (again, for a retransmitted one).
    fn syn(&mut self, now: Ms, p: &Ipv4<'_>, t: &Tcp<'_>, key: Key) {
        let c = match self.conns.get(&key) {
            Some(c) if c.client_isn == t.seq && c.reply.is_none() => c.clone(),
            _ => {
                let c = Conn {
                    client_isn: t.seq,
                    our_isn: self.isn_key.hash_one((key, t.seq, now)) as u32,
                    rcv_next: t.seq.wrapping_add(1),
                    mss: t.mss().unwrap_or(tcp::DEFAULT_MSS),
                    request: Vec::new(),
                    reply: None,
                    last: now,
                };
                self.conns.insert(key, c.clone());
                c
            }
        };
        self.injected.push(tcp::syn_ack(p, t, c.our_isn));
    }

    /// Data or FIN before the answer; whether to keep the connection.
    fn receive(
        &mut self,
        p: &Ipv4<'_>,
        t: &Tcp<'_>,
        c: &mut Conn,
        alerts: &mut Vec<Alert>,
    ) -> bool {
        let ack_now = |c: &Conn| tcp::back(p, t, c.snd_start(), c.rcv_next, TcpFlags::ACK, &[]);
        if tcp::after(t.seq, c.rcv_next) {
            // A gap: say again what we have.
            self.injected.push(ack_now(c));
            return true;
        }
        let had = c.rcv_next.wrapping_sub(t.seq) as usize;
        let fresh = t.payload.get(had..).unwrap_or(&[]);
        if !fresh.is_empty() {
            let room = MAX_REQUEST.saturating_sub(c.request.len());
            c.request.extend(&fresh[..fresh.len().min(room)]);
            c.rcv_next = c.rcv_next.wrapping_add(fresh.len() as u32);
        }
        let fin =
            t.flags.any(TcpFlags::FIN) && t.seq.wrapping_add(t.payload.len() as u32) == c.rcv_next;
        if fin {
            c.rcv_next = c.rcv_next.wrapping_add(1);
        }
        match classify(&c.request) {
            Seen::Request(r) => {
                let reply = self.reply(p, t, &r, alerts);
                let at = At {
                    seq: c.snd_start(),
                    ack: c.rcv_next,
                    mss: c.mss,
                };
                tcp::data_back(p, t, at, &reply, true, &mut self.injected);
                c.reply = Some(reply);
                c.request = Vec::new();
                // The client has closed too: nothing more to wait for.
                !fin
            }
            Seen::Other => {
                self.intercept(p, t, None, alerts);
                self.injected.push(tcp::back(
                    p,
                    t,
                    c.snd_start(),
                    c.rcv_next,
                    TcpFlags::RST | TcpFlags::ACK,
                    &[],
                ));
                false
            }
            Seen::Partial if fin => {
                // Closed before a whole request: close too, without an answer.
                let at = At {
                    seq: c.snd_start(),
                    ack: c.rcv_next,
                    mss: c.mss,
                };
                tcp::data_back(p, t, at, &[], true, &mut self.injected);
                false
            }
            Seen::Partial => {
                if !t.payload.is_empty() {
                    self.injected.push(ack_now(c));
                }
                true
            }
        }
    }

    /// A segment after our answer and FIN; whether to keep the connection.
    fn after_reply(&mut self, p: &Ipv4<'_>, t: &Tcp<'_>, c: &mut Conn) -> bool {
        let sent = c.reply.as_ref().map_or(0, Vec::len) as u32;
        let after_fin = c.snd_start().wrapping_add(sent).wrapping_add(1);
        let data_end = t.seq.wrapping_add(t.payload.len() as u32);
        if !t.payload.is_empty() {
            if tcp::after(data_end, c.rcv_next) {
                // New data on a connection we closed: a reset, as a stack does.
                self.injected
                    .push(tcp::back(p, t, after_fin, c.rcv_next, TcpFlags::RST, &[]));
                return false;
            }
            // The request again: our answer was lost.
            let at = At {
                seq: c.snd_start(),
                ack: c.rcv_next,
                mss: c.mss,
            };
            let reply = c.reply.clone().unwrap_or_default();
            tcp::data_back(p, t, at, &reply, true, &mut self.injected);
        }
        if t.flags.any(TcpFlags::FIN) && data_end == c.rcv_next {
            let ack = c.rcv_next.wrapping_add(1);
            self.injected
                .push(tcp::back(p, t, after_fin, ack, TcpFlags::ACK, &[]));
            return false;
        }
        true
    }

    /// Raises `intercepted_command` (and logs) for a request, or for data that is not one.
    fn intercept(
        &mut self,
        p: &Ipv4<'_>,
        t: &Tcp<'_>,
        r: Option<&Request<'_>>,
        alerts: &mut Vec<Alert>,
    ) {
        self.intercepted += 1;
        let mut a = Alert::new(AlertKind::InterceptedCommand, p.src)
            .with("target", p.dst.to_string())
            .with("port", t.dport);
        if let Some(r) = r {
            a = a.with("method", r.method).with("path", r.path());
            if let Some(action) = r.header("soapaction") {
                a = a.with("soapaction", action.trim_matches('"'));
            }
        }
        if self.args.log_requests {
            self.notes.push(match r {
                Some(r) => format!(
                    "answered {} {} from {} to port {}",
                    r.method,
                    r.path(),
                    p.src,
                    t.dport
                ),
                None => format!(
                    "reset a connection from {} to port {}: not HTTP",
                    p.src, t.dport
                ),
            });
        }
        alerts.push(a);
    }

    /// The answer to `r`, headers and body.
    fn reply(
        &mut self,
        p: &Ipv4<'_>,
        t: &Tcp<'_>,
        r: &Request<'_>,
        alerts: &mut Vec<Alert>,
    ) -> Vec<u8> {
        self.intercept(p, t, Some(r), alerts);
        let (content_type, extra, body) = match self.args.protocol {
            Protocol::Upnp => {
                let body = self.upnp(p.dst, r);
                (
                    "text/xml; charset=\"utf-8\"",
                    "EXT:\r\nSERVER: Unspecified, UPnP/1.0, Unspecified\r\nX-User-Agent: redsonic\r\n",
                    body,
                )
            }
            Protocol::Hue => ("application/json", "", hue(r)),
            Protocol::Http => ("text/html; charset=utf-8", "", PAGE.to_string()),
        };
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n{extra}\r\n",
            body.len()
        );
        if r.method != "HEAD" {
            out.push_str(&body);
        }
        out.into_bytes()
    }

    /// A WeMo-style answer: the SOAP response to `SetBinaryState` (remembering the state)
    /// or `GetBinaryState`, else a small device description.
    fn upnp(&mut self, device: Ipv4Addr, r: &Request<'_>) -> String {
        let action = r
            .header("soapaction")
            .map(|a| a.trim_matches('"'))
            .and_then(|a| a.rsplit('#').next())
            .unwrap_or("");
        let state = match action {
            "SetBinaryState" => {
                let body = std::str::from_utf8(r.body()).unwrap_or("");
                let v = xml_value(body, "BinaryState")
                    .and_then(|v| v.parse::<u8>().ok())
                    .unwrap_or(1);
                *self.binary_state.entry(device, || 0) = v;
                v
            }
            "GetBinaryState" => self.binary_state.get(&device).copied().unwrap_or(0),
            _ => return SETUP_XML.to_string(),
        };
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope \
             xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
             s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\n\
             <u:{action}Response xmlns:u=\"urn:Belkin:service:basicevent:1\">\r\n\
             <BinaryState>{state}</BinaryState>\r\n</u:{action}Response>\r\n</s:Body> </s:Envelope>"
        )
    }
}

/// The text of the first `<name>...</name>` element.
fn xml_value<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find('<')?;
    Some(xml[start..start + len].trim())
}

/// A Hue-REST-style answer: one `success` per attribute set (`PUT` or `POST` with a JSON
/// object), a user name for `POST /api`, else one `success` for the resource.
fn hue(r: &Request<'_>) -> String {
    let path = r.path();
    // `/api/<user>/lights/1/state` addresses `/lights/1/state`.
    let resource = path
        .strip_prefix("/api/")
        .map(|rest| rest.split_once('/').map_or("", |(_, res)| res))
        .map(|res| format!("/{res}"))
        .unwrap_or_else(|| path.to_string());
    let set = matches!(r.method, "PUT" | "POST")
        .then(|| serde_json::from_slice::<Map<String, Value>>(r.body()).ok())
        .flatten();
    let answer = match set {
        Some(_) if r.method == "POST" && path.trim_end_matches('/') == "/api" => {
            json!([{"success": {"username": HUE_USER}}])
        }
        Some(attrs) if !attrs.is_empty() => Value::Array(
            attrs
                .into_iter()
                .map(|(k, v)| {
                    let mut m = Map::new();
                    m.insert(format!("{}/{k}", resource.trim_end_matches('/')), v);
                    json!({ "success": m })
                })
                .collect(),
        ),
        _ => json!([{"success": {resource: "ok"}}]),
    };
    answer.to_string()
}

/// The user name a Hue "bridge" hands out.
const HUE_USER: &str = "8c1a9e3f0b7d4c2e9a6f5b1d3e7c0a4f";

const SETUP_XML: &str = "<?xml version=\"1.0\"?>\r\n<root xmlns=\"urn:Belkin:device-1-0\">\
<specVersion><major>1</major><minor>0</minor></specVersion><device>\
<deviceType>urn:Belkin:device:controllee:1</deviceType><friendlyName>WeMo Switch</friendlyName>\
<manufacturer>Belkin International Inc.</manufacturer><modelName>Socket</modelName>\
<modelNumber>1.0</modelNumber><serviceList><service>\
<serviceType>urn:Belkin:service:basicevent:1</serviceType><serviceId>urn:Belkin:serviceId:basicevent1</serviceId>\
<controlURL>/upnp/control/basicevent1</controlURL><eventSubURL>/upnp/event/basicevent1</eventSubURL>\
<SCPDURL>/eventservice.xml</SCPDURL></service></serviceList></device></root>\r\n";

const PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Device</title></head>\
<body><h1>OK</h1></body></html>\n";

impl Function for FakeReplies {
    fn packet(&mut self, now: Ms, dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        if dir == Dir::ToDevice && !p.fragmented {
            if let Some(t) = p.tcp() {
                if self.args.protocol.ports().contains(&t.dport) {
                    self.uplink_packet(now, p, t, alerts);
                }
            }
        }
        Verdict::Drop
    }

    fn non_ipv4(&mut self) -> Verdict {
        Verdict::Drop
    }

    fn take_injected(&mut self, out: &mut Vec<Inject>) {
        out.append(&mut self.injected);
    }

    fn tick(&mut self, now: Ms) {
        self.conns.retain(|_, c| now < c.last.saturating_add(IDLE));
    }

    fn stats(&mut self, out: &mut Map<String, Value>, _periodic: bool) {
        out.insert("intercepted".into(), self.intercepted.into());
        out.insert("connections".into(), self.conns.len().into());
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::craft::Craft;
    use crate::functions::tcp::tests::{seen, Seen as Out};
    use crate::functions::Toward;
    use crate::packet::parse;

    const CTRL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
    const PLUG: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 30);
    const CISN: u32 = 0xffff_ff00;
    const PSH_ACK: u8 = TcpFlags::PSH | TcpFlags::ACK;

    struct Run {
        f: FakeReplies,
        alerts: Vec<Alert>,
        port: u16,
        cport: u16,
        /// Our initial sequence number on the current connection.
        isn: u32,
        /// The client's next sequence number.
        next: u32,
    }

    impl Run {
        fn new(protocol: Protocol, port: u16) -> Run {
            Run {
                f: FakeReplies::new(Args {
                    protocol,
                    log_requests: true,
                }),
                alerts: Vec::new(),
                port,
                cport: 40000,
                isn: 0,
                next: 0,
            }
        }
        fn go(&mut self, now: Ms, dir: Dir, frame: &[u8]) -> (Verdict, Vec<Out>) {
            let v = self
                .f
                .packet(now, dir, &parse(frame).unwrap(), &mut self.alerts);
            let mut out = Vec::new();
            self.f.take_injected(&mut out);
            (v, out.iter().map(|i| seen(i, frame)).collect())
        }
        fn seg(&self, flags: u8, seq: u32, data: &[u8]) -> Vec<u8> {
            Craft::tcp(CTRL, self.cport, PLUG, self.port, flags)
                .seq(seq)
                .ack(self.isn.wrapping_add(1))
                .payload(data)
                .build()
        }
        /// A new connection from the next client port; checks the SYN-ACK.
        fn connect(&mut self) {
            self.cport += 1;
            let syn = Craft::tcp(CTRL, self.cport, PLUG, self.port, TcpFlags::SYN)
                .seq(CISN)
                .options(&[2, 4, 0x05, 0xb4])
                .build();
            let (v, out) = self.go(0, Dir::ToDevice, &syn);
            assert_eq!((v, out.len()), (Verdict::Drop, 1));
            let sa = &out[0];
            assert_eq!(sa.toward, Toward::Sender);
            assert_eq!(
                (sa.src, sa.sport, sa.dst, sa.dport),
                (PLUG, self.port, CTRL, self.cport)
            );
            assert_eq!(
                (sa.ack, sa.flags),
                (CISN.wrapping_add(1), TcpFlags::SYN | TcpFlags::ACK)
            );
            self.isn = sa.seq;
            self.next = CISN.wrapping_add(1);
            let ack = self.seg(TcpFlags::ACK, self.next, b"");
            assert_eq!(self.go(0, Dir::ToDevice, &ack), (Verdict::Drop, vec![]));
        }
        /// Sends one request segment; the answer's text (all segments), checked to start
        /// right after our SYN and to end with FIN.
        fn ask(&mut self, request: &[u8]) -> String {
            let (v, out) = self.go(1, Dir::ToDevice, &self.seg(PSH_ACK, self.next, request));
            assert_eq!(v, Verdict::Drop);
            self.next = self.next.wrapping_add(request.len() as u32);
            assert!(!out.is_empty());
            assert_eq!(out[0].seq, self.isn.wrapping_add(1));
            assert!(out
                .iter()
                .all(|o| o.ack == self.next && o.toward == Toward::Sender));
            assert_ne!(out.last().unwrap().flags & TcpFlags::FIN, 0);
            String::from_utf8(out.iter().flat_map(|o| o.data.clone()).collect()).unwrap()
        }
    }

    fn soap(action: &str, body: &str) -> Vec<u8> {
        format!(
            "POST /upnp/control/basicevent1 HTTP/1.1\r\nSOAPACTION: \"urn:Belkin:service:basicevent:1#{action}\"\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn kinds(alerts: &[Alert]) -> Vec<AlertKind> {
        alerts.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn upnp_commands_are_answered_and_never_reach_the_plug() {
        let mut r = Run::new(Protocol::Upnp, 49153);
        r.connect();
        let set = soap(
            "SetBinaryState",
            "<u:SetBinaryState><BinaryState>1</BinaryState></u:SetBinaryState>",
        );
        let text = r.ask(&set);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.contains("<u:SetBinaryStateResponse"));
        assert!(text.contains("<BinaryState>1</BinaryState>"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(kinds(&r.alerts), [AlertKind::InterceptedCommand]);
        let a = &r.alerts[0];
        assert_eq!((a.source, &a.details["port"]), (CTRL, &json!(49153)));
        assert_eq!(
            a.details["soapaction"],
            "urn:Belkin:service:basicevent:1#SetBinaryState"
        );
        assert_eq!(a.details["path"], "/upnp/control/basicevent1");
        assert_eq!(a.details["method"], "POST");
        let notes = r.f.take_notes();
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("POST /upnp/control/basicevent1"),
            "{notes:?}"
        );

        // The client acknowledges and closes: we acknowledge its FIN and forget.
        let len = text.len() as u32;
        let fin = Craft::tcp(CTRL, r.cport, PLUG, 49153, TcpFlags::FIN | TcpFlags::ACK)
            .seq(r.next)
            .ack(r.isn.wrapping_add(2 + len))
            .build();
        let (v, out) = r.go(2, Dir::ToDevice, &fin);
        assert_eq!(v, Verdict::Drop);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].seq, out[0].ack, out[0].flags),
            (
                r.isn.wrapping_add(2 + len),
                r.next.wrapping_add(1),
                TcpFlags::ACK
            )
        );
        assert_eq!(r.f.conns.len(), 0);

        // The state set is the state read.
        r.connect();
        let text = r.ask(&soap("GetBinaryState", ""));
        assert!(
            text.contains("<u:GetBinaryStateResponse")
                && text.contains("<BinaryState>1</BinaryState>")
        );
        // Anything else gets the device description.
        r.connect();
        let text = r.ask(b"GET /setup.xml HTTP/1.1\r\nHost: plug\r\n\r\n");
        assert!(text.contains("urn:Belkin:device:controllee:1"));
        let mut m = Map::new();
        r.f.stats(&mut m, false);
        assert_eq!(m["intercepted"], 3);
    }

    #[test]
    fn a_request_in_two_segments_is_answered_when_whole() {
        let mut r = Run::new(Protocol::Upnp, 49152);
        r.connect();
        let set = soap("SetBinaryState", "<BinaryState>0</BinaryState>");
        let (first, second) = set.split_at(set.len() - 10);
        let (v, out) = r.go(1, Dir::ToDevice, &r.seg(PSH_ACK, r.next, first));
        r.next = r.next.wrapping_add(first.len() as u32);
        assert_eq!(v, Verdict::Drop);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].ack, out[0].flags, out[0].data.len()),
            (r.next, TcpFlags::ACK, 0)
        );
        // A segment past a gap gets the same acknowledgment again.
        let (_, out) = r.go(
            1,
            Dir::ToDevice,
            &r.seg(PSH_ACK, r.next.wrapping_add(5), b"zz"),
        );
        assert_eq!(out[0].ack, r.next);
        let text = r.ask(second);
        assert!(text.contains("<BinaryState>0</BinaryState>"), "{text}");
        // The request again (our answer lost): the same answer again.
        let (_, out) = r.go(
            3,
            Dir::ToDevice,
            &r.seg(PSH_ACK, r.next.wrapping_sub(10), second),
        );
        let again: Vec<u8> = out.iter().flat_map(|o| o.data.clone()).collect();
        assert_eq!(String::from_utf8(again).unwrap(), text);
        // New data after our FIN: a reset.
        let (_, out) = r.go(4, Dir::ToDevice, &r.seg(PSH_ACK, r.next, b"more"));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].flags, TcpFlags::RST);
        assert_eq!(r.f.conns.len(), 0);
    }

    #[test]
    fn nothing_is_forwarded_either_way() {
        let mut r = Run::new(Protocol::Upnp, 49153);
        let frames = [
            (
                Dir::ToDevice,
                Craft::tcp(CTRL, 40000, PLUG, 80, TcpFlags::SYN).build(),
            ),
            (
                Dir::ToDevice,
                Craft::udp(CTRL, 40000, PLUG, 1900)
                    .payload(b"M-SEARCH")
                    .build(),
            ),
            (Dir::ToDevice, Craft::icmp_echo(CTRL, PLUG).build()),
            (
                Dir::FromDevice,
                Craft::tcp(PLUG, 49153, CTRL, 40000, TcpFlags::SYN | TcpFlags::ACK).build(),
            ),
            (
                Dir::FromDevice,
                Craft::tcp(PLUG, 50000, CTRL, 443, TcpFlags::SYN).build(),
            ),
            (Dir::FromDevice, Craft::udp(PLUG, 1900, CTRL, 1900).build()),
            (Dir::FromDevice, Craft::icmp_echo(PLUG, CTRL).build()),
            // The device "calling" a control port of the uplink is not answered either.
            (
                Dir::FromDevice,
                Craft::tcp(PLUG, 50000, CTRL, 49153, TcpFlags::SYN).build(),
            ),
        ];
        for (dir, f) in &frames {
            assert_eq!(r.go(0, *dir, f), (Verdict::Drop, vec![]), "{dir:?}");
        }
        // A fragment to a control port is not answered.
        let mut frag = Craft::tcp(CTRL, 40000, PLUG, 49153, TcpFlags::SYN).build();
        frag[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        assert_eq!(r.go(0, Dir::ToDevice, &frag), (Verdict::Drop, vec![]));
        assert_eq!(r.f.non_ipv4(), Verdict::Drop);
        assert!(r.alerts.is_empty() && r.f.take_notes().is_empty());
    }

    #[test]
    fn unknown_connections_get_what_a_stack_without_them_sends() {
        let mut r = Run::new(Protocol::Http, 8080);
        let data = Craft::tcp(CTRL, 40000, PLUG, 8080, PSH_ACK)
            .seq(5)
            .ack(99)
            .payload(b"GET / HTTP/1.1\r\n\r\n")
            .build();
        let (v, out) = r.go(0, Dir::ToDevice, &data);
        assert_eq!((v, out.len()), (Verdict::Drop, 1));
        assert_eq!((out[0].seq, out[0].flags), (99, TcpFlags::RST));
        let bare = Craft::tcp(CTRL, 40000, PLUG, 8080, TcpFlags::ACK).build();
        let rst = Craft::tcp(CTRL, 40000, PLUG, 8080, TcpFlags::RST).build();
        assert_eq!(r.go(0, Dir::ToDevice, &bare), (Verdict::Drop, vec![]));
        assert_eq!(r.go(0, Dir::ToDevice, &rst), (Verdict::Drop, vec![]));
        assert!(r.alerts.is_empty());
    }

    #[test]
    fn a_retransmitted_syn_gets_the_same_syn_ack() {
        let mut r = Run::new(Protocol::Hue, 80);
        r.connect();
        let syn = Craft::tcp(CTRL, r.cport, PLUG, 80, TcpFlags::SYN)
            .seq(CISN)
            .build();
        let (_, out) = r.go(0, Dir::ToDevice, &syn);
        assert_eq!(out[0].seq, r.isn);
        // A reset forgets the connection.
        let rst = r.seg(TcpFlags::RST, r.next, b"");
        r.go(0, Dir::ToDevice, &rst);
        assert_eq!(r.f.conns.len(), 0);
    }

    #[test]
    fn hue_answers_in_json() {
        let mut r = Run::new(Protocol::Hue, 80);
        r.connect();
        let body = r#"{"on":true,"bri":200}"#;
        let put = format!(
            "PUT /api/newdeveloper/lights/1/state HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let text = r.ask(put.as_bytes());
        let json: Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(
            json,
            json!([{"success": {"/lights/1/state/bri": 200}}, {"success": {"/lights/1/state/on": true}}])
        );
        assert!(text.contains("Content-Type: application/json"));
        r.connect();
        let text =
            r.ask(b"POST /api HTTP/1.1\r\nContent-Length: 20\r\n\r\n{\"devicetype\":\"x#y\"}");
        assert!(text.contains(r#"[{"success":{"username":""#), "{text}");
        r.connect();
        let text = r.ask(b"GET /api/u/lights HTTP/1.1\r\n\r\n");
        assert!(
            text.ends_with(r#"[{"success":{"/lights":"ok"}}]"#),
            "{text}"
        );
        assert_eq!(r.alerts.len(), 3);
    }

    #[test]
    fn tls_is_reset_and_http_gets_a_page() {
        let mut r = Run::new(Protocol::Http, 443);
        r.connect();
        let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        let (v, out) = r.go(1, Dir::ToDevice, &r.seg(PSH_ACK, r.next, hello));
        assert_eq!((v, out.len()), (Verdict::Drop, 1));
        assert_eq!(out[0].flags, TcpFlags::RST | TcpFlags::ACK);
        assert_eq!(out[0].seq, r.isn.wrapping_add(1));
        assert_eq!(r.f.conns.len(), 0);
        assert_eq!(kinds(&r.alerts), [AlertKind::InterceptedCommand]);
        assert!(r.alerts[0].details.get("method").is_none());
        assert!(r.f.take_notes()[0].contains("not HTTP"));

        let mut r = Run::new(Protocol::Http, 8080);
        r.connect();
        let text = r.ask(b"GET /index.html HTTP/1.1\r\nHost: cam\r\n\r\n");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with(PAGE));
        assert!(text.contains("Content-Type: text/html"));
        r.connect();
        let text = r.ask(b"HEAD / HTTP/1.1\r\n\r\n");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert!(text.contains(&format!("Content-Length: {}", PAGE.len())));
    }

    #[test]
    fn a_client_closing_before_a_whole_request_gets_our_fin() {
        let mut r = Run::new(Protocol::Upnp, 49154);
        r.connect();
        let fin = r.seg(TcpFlags::FIN | TcpFlags::ACK, r.next, b"GET /set");
        let (_, out) = r.go(1, Dir::ToDevice, &fin);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].flags, TcpFlags::FIN | TcpFlags::ACK);
        assert_eq!(out[0].ack, r.next.wrapping_add(9));
        assert_eq!(r.f.conns.len(), 0);
        // With a whole request, the answer acknowledges the FIN too.
        r.connect();
        let req = b"GET /setup.xml HTTP/1.1\r\n\r\n";
        let fin = r.seg(TcpFlags::FIN | PSH_ACK, r.next, req);
        let (_, out) = r.go(1, Dir::ToDevice, &fin);
        assert!(out
            .iter()
            .all(|o| o.ack == r.next.wrapping_add(req.len() as u32 + 1)));
        assert_eq!(r.f.conns.len(), 0);
    }

    #[test]
    fn idle_connections_are_forgotten_and_the_table_is_bounded() {
        let mut r = Run::new(Protocol::Http, 80);
        r.connect();
        r.f.tick(IDLE - 1);
        assert_eq!(r.f.conns.len(), 1);
        r.f.tick(IDLE);
        assert_eq!(r.f.conns.len(), 0);
        for port in 0..(MAX_CONNECTIONS as u16 + 10) {
            let syn = Craft::tcp(CTRL, port, PLUG, 80, TcpFlags::SYN).build();
            r.go(0, Dir::ToDevice, &syn);
        }
        assert_eq!(r.f.conns.len(), MAX_CONNECTIONS);
    }
}
