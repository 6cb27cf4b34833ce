//! `auth-proxy`: HTTP Basic authentication in front of the device's web port
//! (`--listen-port`), for Kalki's u2-http-auth-proxy, and u3 with `--block`.
//!
//! The µmbox is a bridge with no address, so it does not terminate TCP. It lets the
//! handshake through and checks every segment the client sends to the guarded port:
//!
//! - a segment that starts an HTTP request is forwarded only if its headers end within
//!   it and carry `Authorization: Basic` credentials found in the credentials file;
//! - any other data is forwarded only on a connection whose requests were all
//!   authorised so far (the rest of a request body, say);
//! - anything else with data is refused: the segment is dropped, the client gets
//!   `401 Unauthorized` with a `WWW-Authenticate: Basic realm=...` challenge and FIN, as
//!   if from the device (sequence numbers learnt from the device's own segments), and the
//!   device gets a reset. From then on the client's segments of that connection are
//!   dropped (a retransmitted request gets the `401` again, a FIN is acknowledged) and
//!   so are the device's.
//!
//! Alerts: `failed_login` for each request with credentials that are not in the file (a
//! request without any is challenged, not counted), `max_login_attempts` past
//! `--max-failures` within `--failure-window`, `default_credentials` for factory
//! credentials (Basic or a login form). With `--block`, the client is then dropped, both
//! ways, for `--block-for`, and each drop raises `blocked_ip` (held off).
//!
//! Everything else passes untouched: other TCP ports, UDP, ICMP, non-IPv4 frames, and
//! connections the device starts from the guarded port. Fail closed: IPv4 fragments of
//! TCP and cut-short TCP headers from the uplink are dropped (they could hide a request
//! from the check), and so are SYNs carrying data to the guarded port.

use super::tcp::{self, At};
use super::{Dir, Function, Inject, Verdict, MAX_TRACKED};
use crate::event::{Alert, AlertKind};
use crate::http::{self, Request};
use crate::packet::{Ipv4, Tcp, TcpFlags, PROTO_TCP};
use crate::window::{EventWindow, Ms, Table};
use clap::Args as ClapArgs;
use serde_json::{Map, Value};
use std::fmt;
use std::net::Ipv4Addr;

/// Where the runtime mounts the credentials file unless `KALKI_PROXY_CREDENTIALS` says.
pub const DEFAULT_CREDENTIALS_FILE: &str = "/run/secrets/proxy-credentials";

/// Connections tracked on the guarded port.
pub const MAX_CONNECTIONS: usize = 65_536;
/// A connection with no segment for this long is forgotten.
pub const IDLE: Ms = 300_000;
/// A refused connection is forgotten sooner: it only answers retransmissions.
pub const REFUSED_IDLE: Ms = 60_000;

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Drop a client that tried factory credentials or exceeded --max-failures.
    #[arg(long)]
    pub block: bool,
    /// How long a blocked client stays blocked, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 3_600_000, requires = "block",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub block_for: u64,
    /// The TCP port of the web interface being guarded.
    #[arg(long, value_name = "PORT", default_value_t = 9010,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub listen_port: u16,
    /// Failed logins allowed per client within --failure-window.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_failures: u32,
    /// The failure window in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1_800_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub failure_window: u64,
    /// Accepted for the catalog; no effect: every request is checked, there are no
    /// sessions. In milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 3_600_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub session_timeout: u64,
    /// The realm named in the `WWW-Authenticate` challenge.
    #[arg(long, value_name = "NAME", default_value = "kalki")]
    pub realm: String,
    /// Read by the binary from the credentials file (`KALKI_PROXY_CREDENTIALS`); empty
    /// refuses every request.
    #[arg(skip)]
    pub credentials: Credentials,
}

/// The `user:password` pairs the proxy accepts. Its `Debug` shows only how many.
#[derive(Clone, Default)]
pub struct Credentials {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({} entries)", self.entries.len())
    }
}

impl Credentials {
    /// Reads the file's text: one `user:password` a line (split at the first `:`), lines
    /// starting with `#` and blank lines ignored. An error names the line, never its
    /// content; a file without any entry is an error too.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some((user, pass)) if !user.is_empty() => {
                    entries.push((user.as_bytes().to_vec(), pass.as_bytes().to_vec()));
                }
                Some(_) => return Err(format!("line {} has an empty user name", i + 1)),
                None => return Err(format!("line {} is not `user:password`", i + 1)),
            }
        }
        if entries.is_empty() {
            return Err("no `user:password` entry".into());
        }
        Ok(Credentials { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `user:pass` is an entry. Every entry is compared, each in time that does
    /// not depend on where the bytes differ.
    pub fn check(&self, user: &str, pass: &str) -> bool {
        let mut found = false;
        for (u, p) in &self.entries {
            found |= ct_eq(u, user.as_bytes()) & ct_eq(p, pass.as_bytes());
        }
        found
    }
}

/// Equality whose time depends on the lengths only.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The challenge sent when a request is refused.
fn challenge(realm: &str) -> Vec<u8> {
    // A quoted-string: no control characters, `"` and `\` escaped.
    let realm: String = realm
        .chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    let body = "401 Unauthorized\n";
    format!(
        "HTTP/1.1 401 Unauthorized\r\n\
         WWW-Authenticate: Basic realm=\"{realm}\"\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         \r\n\
         {body}",
        body.len()
    )
    .into_bytes()
}

/// A connection to the guarded port: (client, client port, device).
type Key = (Ipv4Addr, u16, Ipv4Addr);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Every request so far was authorised (or there was none yet).
    Open,
    /// A segment was refused. The challenge went out from `reply_seq`; `ack` is the end
    /// of what the client sent that the µmbox acknowledges.
    Refused { reply_seq: u32, ack: u32 },
}

#[derive(Debug, Clone)]
struct Conn {
    /// The device opened it (a SYN from the guarded port): not guarded.
    by_device: bool,
    /// The sequence number after the last byte (or SYN, FIN) the device sent.
    device_next: Option<u32>,
    /// A request on it was authorised, so data that starts no request may pass.
    authorised: bool,
    phase: Phase,
    fin_client: bool,
    fin_device: bool,
    last: Ms,
}

impl Conn {
    fn new(now: Ms) -> Conn {
        Conn {
            by_device: false,
            device_next: None,
            authorised: false,
            phase: Phase::Open,
            fin_client: false,
            fin_device: false,
            last: now,
        }
    }
}

#[derive(Debug)]
pub struct AuthProxy {
    args: Args,
    challenge: Vec<u8>,
    failures: Table<Ipv4Addr, EventWindow>,
    /// Blocked client → when its block ends.
    blocked: Table<Ipv4Addr, Ms>,
    conns: Table<Key, Conn>,
    injected: Vec<Inject>,
    authorised: u64,
    refused: u64,
}

impl AuthProxy {
    pub fn new(args: Args) -> AuthProxy {
        AuthProxy {
            challenge: challenge(&args.realm),
            args,
            failures: Table::new(MAX_TRACKED),
            blocked: Table::new(MAX_TRACKED * 4),
            conns: Table::new(MAX_CONNECTIONS),
            injected: Vec::new(),
            authorised: 0,
            refused: 0,
        }
    }

    fn block(&mut self, now: Ms, client: Ipv4Addr) {
        let until = now.saturating_add(self.args.block_for);
        self.blocked.insert(client, until);
    }

    /// Drops traffic of a blocked client, either way.
    fn blocked(&mut self, now: Ms, dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> bool {
        let client = if dir == Dir::FromDevice { p.dst } else { p.src };
        match self.blocked.get(&client) {
            Some(&until) if now < until => {
                alerts.push(
                    Alert::new(AlertKind::BlockedIp, client)
                        .with("until_ms", until)
                        .with("block_for_ms", self.args.block_for),
                );
                true
            }
            Some(_) => {
                self.blocked.remove(&client);
                false
            }
            None => false,
        }
    }

    fn uplink_packet(&mut self, now: Ms, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        if p.proto == PROTO_TCP && (p.fragmented || p.tcp().is_none()) {
            return Verdict::Drop;
        }
        let Some(t) = p.tcp() else {
            return Verdict::Forward;
        };
        if t.dport != self.args.listen_port {
            return Verdict::Forward;
        }
        let key = (p.src, t.sport, p.dst);
        if t.flags.is_syn() {
            if !t.payload.is_empty() {
                return Verdict::Drop;
            }
            self.conns.insert(key, Conn::new(now));
            return Verdict::Forward;
        }
        let (authorised, phase) = match self.conns.get_mut(&key) {
            Some(c) if c.by_device => {
                c.last = now;
                return Verdict::Forward;
            }
            Some(c) => {
                c.last = now;
                (c.authorised, c.phase)
            }
            None => (false, Phase::Open),
        };
        if let Phase::Refused { reply_seq, ack } = phase {
            return self.after_refusal(p, t, key, reply_seq, ack);
        }
        if t.flags.any(TcpFlags::RST) {
            self.conns.remove(&key);
            return Verdict::Forward;
        }
        if t.payload.is_empty() {
            if t.flags.any(TcpFlags::FIN) {
                self.fin(key, true);
            }
            return Verdict::Forward;
        }
        if !t.flags.any(TcpFlags::ACK) {
            // Data outside a handshake without ACK: no stack takes it, and it has no
            // acknowledgment number to answer from.
            return Verdict::Drop;
        }
        match http::request(t.payload) {
            Some(r) if r.head_complete() => self.check(now, p, t, key, &r, alerts),
            None if authorised => Verdict::Forward,
            // Headers that go on past this segment, or data before any authorised request.
            _ => self.refuse(now, p, t, key),
        }
    }

    /// A complete request head: forwarded with good credentials, else refused.
    fn check(
        &mut self,
        now: Ms,
        p: &Ipv4<'_>,
        t: &Tcp<'_>,
        key: Key,
        r: &Request<'_>,
        alerts: &mut Vec<Alert>,
    ) -> Verdict {
        let (client, device) = (p.src, p.dst);
        let mut block = false;
        if let Some((user, pass)) = r.credentials() {
            if http::is_default(&user, &pass) {
                alerts.push(
                    Alert::new(AlertKind::DefaultCredentials, client)
                        .with("user", user)
                        .with("target", device.to_string()),
                );
                block = self.args.block;
            }
        }
        let basic = r.basic_credentials();
        let good = basic
            .as_ref()
            .is_some_and(|(u, pw)| self.args.credentials.check(u, pw));
        if !good && r.header("authorization").is_some() {
            let (window, max) = (self.args.failure_window, self.args.max_failures as usize);
            let w = self.failures.entry(client, || EventWindow::new(window));
            let n = w.push(now, max + 1);
            let mut a = Alert::new(AlertKind::FailedLogin, client)
                .with("failures", n)
                .with("target", device.to_string());
            if let Some((user, _)) = &basic {
                a = a.with("user", user.as_str());
            }
            alerts.push(a);
            if n > max {
                w.clear();
                alerts.push(
                    Alert::new(AlertKind::MaxLoginAttempts, client)
                        .with("failures", n)
                        .with("window_ms", window)
                        .with("target", device.to_string()),
                );
                block |= self.args.block;
            }
        }
        let verdict = if good && !block {
            self.conns.entry(key, || Conn::new(now)).authorised = true;
            self.authorised += 1;
            Verdict::Forward
        } else {
            self.refuse(now, p, t, key)
        };
        if block {
            self.block(now, client);
        }
        verdict
    }

    /// Drops the client's segment `t`, answers it with the challenge and FIN as the
    /// device, and resets the device's end.
    fn refuse(&mut self, now: Ms, p: &Ipv4<'_>, t: &Tcp<'_>, key: Key) -> Verdict {
        let c = self.conns.entry(key, || Conn::new(now));
        let reply_seq = c.device_next.map_or(t.ack, |n| tcp::later(n, t.ack));
        let ack = t.seq.wrapping_add(t.seg_len());
        c.phase = Phase::Refused { reply_seq, ack };
        self.refused += 1;
        self.answer(p, t, reply_seq, ack);
        // The device expects the refused bytes next: a reset at exactly that sequence
        // number is accepted (RFC 5961 §3.2).
        self.injected
            .push(tcp::onward(p, t, t.seq, 0, TcpFlags::RST));
        Verdict::Drop
    }

    /// The challenge and FIN, from `reply_seq`.
    fn answer(&mut self, p: &Ipv4<'_>, t: &Tcp<'_>, reply_seq: u32, ack: u32) {
        let at = At {
            seq: reply_seq,
            ack,
            mss: tcp::DEFAULT_MSS,
        };
        tcp::data_back(p, t, at, &self.challenge, true, &mut self.injected);
    }

    /// A client segment on a refused connection: dropped; data is answered with the
    /// challenge again, a FIN acknowledged.
    fn after_refusal(
        &mut self,
        p: &Ipv4<'_>,
        t: &Tcp<'_>,
        key: Key,
        reply_seq: u32,
        ack: u32,
    ) -> Verdict {
        if t.flags.any(TcpFlags::RST) {
            self.conns.remove(&key);
            return Verdict::Drop;
        }
        let ack = tcp::later(ack, t.seq.wrapping_add(t.seg_len()));
        if let Some(c) = self.conns.get_mut(&key) {
            c.phase = Phase::Refused { reply_seq, ack };
        }
        if !t.payload.is_empty() {
            self.answer(p, t, reply_seq, ack);
        } else if t.flags.any(TcpFlags::FIN) {
            // After the challenge and our FIN.
            let seq = reply_seq
                .wrapping_add(self.challenge.len() as u32)
                .wrapping_add(1);
            self.injected
                .push(tcp::back(p, t, seq, ack, TcpFlags::ACK, &[]));
        }
        Verdict::Drop
    }

    /// A FIN from one side; a connection closed both ways is forgotten.
    fn fin(&mut self, key: Key, client: bool) {
        if let Some(c) = self.conns.get_mut(&key) {
            if client {
                c.fin_client = true;
            } else {
                c.fin_device = true;
            }
            if c.fin_client && c.fin_device {
                self.conns.remove(&key);
            }
        }
    }

    fn device_packet(&mut self, now: Ms, p: &Ipv4<'_>) -> Verdict {
        let Some(t) = p.tcp() else {
            return Verdict::Forward;
        };
        if t.sport != self.args.listen_port {
            return Verdict::Forward;
        }
        let key = (p.dst, t.dport, p.src);
        if t.flags.is_syn() {
            let mut c = Conn::new(now);
            c.by_device = true;
            self.conns.insert(key, c);
            return Verdict::Forward;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return Verdict::Forward;
        };
        c.last = now;
        if c.by_device {
            return Verdict::Forward;
        }
        if let Phase::Refused { .. } = c.phase {
            // The device was reset; our challenge holds these sequence numbers now.
            return Verdict::Drop;
        }
        if t.flags.any(TcpFlags::RST) {
            self.conns.remove(&key);
            return Verdict::Forward;
        }
        let end = t.seq.wrapping_add(t.seg_len());
        c.device_next = Some(c.device_next.map_or(end, |n| tcp::later(n, end)));
        if t.flags.any(TcpFlags::FIN) {
            self.fin(key, false);
        }
        Verdict::Forward
    }
}

impl Function for AuthProxy {
    fn packet(&mut self, now: Ms, dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        if self.blocked(now, dir, p, alerts) {
            return Verdict::Drop;
        }
        match dir {
            Dir::ToDevice => self.uplink_packet(now, p, alerts),
            Dir::FromDevice => self.device_packet(now, p),
            Dir::Copy => Verdict::Forward,
        }
    }

    fn take_injected(&mut self, out: &mut Vec<Inject>) {
        out.append(&mut self.injected);
    }

    fn tick(&mut self, now: Ms) {
        self.blocked.retain(|_, until| now < *until);
        self.failures.retain(|_, w| w.count(now) > 0);
        self.conns.retain(|_, c| {
            let idle = match c.phase {
                Phase::Open => IDLE,
                Phase::Refused { .. } => REFUSED_IDLE,
            };
            now < c.last.saturating_add(idle)
        });
    }

    fn stats(&mut self, out: &mut Map<String, Value>, _periodic: bool) {
        out.insert("blocked_sources".into(), self.blocked.len().into());
        out.insert("connections".into(), self.conns.len().into());
        out.insert("authorised".into(), self.authorised.into());
        out.insert("refused".into(), self.refused.into());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::craft::Craft;
    use crate::functions::tcp::tests::{seen, Seen};
    use crate::functions::Toward;
    use crate::packet::parse;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
    const DEV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
    const PORT: u16 = 9010;
    const CPORT: u16 = 40000;
    const PSH_ACK: u8 = TcpFlags::PSH | TcpFlags::ACK;
    /// The client's and the device's initial sequence numbers.
    const CISN: u32 = 1000;
    const DISN: u32 = 0xffff_fff0;
    /// `owner:S3cret!`, the one entry of the file (besides `admin:admin` in some tests).
    const GOOD: &str = "b3duZXI6UzNjcmV0IQ==";
    /// `owner:wrong`.
    const WRONG: &str = "b3duZXI6d3Jvbmc=";
    /// `admin:admin`.
    const FACTORY: &str = "YWRtaW46YWRtaW4=";

    fn proxy(block: bool, file: &str) -> AuthProxy {
        AuthProxy::new(Args {
            block,
            block_for: 60_000,
            listen_port: PORT,
            max_failures: 2,
            failure_window: 600_000,
            session_timeout: 3_600_000,
            realm: "lab \"cam\"".into(),
            credentials: Credentials::parse(file).unwrap(),
        })
    }

    /// Drives one proxy; keeps the frames it was given to read injections against.
    struct Run {
        f: AuthProxy,
        alerts: Vec<Alert>,
    }

    impl Run {
        fn new(block: bool) -> Run {
            Run {
                f: proxy(block, "# lab\nowner:S3cret!\n"),
                alerts: Vec::new(),
            }
        }
        /// Gives `frame` to the proxy: its verdict and what it injected.
        fn go(&mut self, now: Ms, dir: Dir, frame: &[u8]) -> (Verdict, Vec<Seen>) {
            let v = self
                .f
                .packet(now, dir, &parse(frame).unwrap(), &mut self.alerts);
            let mut out = Vec::new();
            self.f.take_injected(&mut out);
            (v, out.iter().map(|i| seen(i, frame)).collect())
        }
        fn kinds(&mut self) -> Vec<AlertKind> {
            self.alerts.drain(..).map(|a| a.kind).collect()
        }
        /// SYN, SYN-ACK, ACK: all passed through.
        fn handshake(&mut self, cport: u16) {
            let syn = Craft::tcp(CLIENT, cport, DEV, PORT, TcpFlags::SYN)
                .seq(CISN)
                .build();
            let syn_ack = Craft::tcp(DEV, PORT, CLIENT, cport, TcpFlags::SYN | TcpFlags::ACK)
                .seq(DISN)
                .ack(CISN + 1)
                .build();
            let ack = client(cport, TcpFlags::ACK, CISN + 1, b"");
            assert_eq!(self.go(0, Dir::ToDevice, &syn), (Verdict::Forward, vec![]));
            assert_eq!(
                self.go(0, Dir::FromDevice, &syn_ack),
                (Verdict::Forward, vec![])
            );
            assert_eq!(self.go(0, Dir::ToDevice, &ack), (Verdict::Forward, vec![]));
        }
    }

    /// A client segment at `seq`, acknowledging the device's first byte.
    fn client(cport: u16, flags: u8, seq: u32, data: &[u8]) -> Vec<u8> {
        Craft::tcp(CLIENT, cport, DEV, PORT, flags)
            .seq(seq)
            .ack(DISN.wrapping_add(1))
            .payload(data)
            .build()
    }

    fn get(auth: Option<&str>) -> Vec<u8> {
        let auth = auth.map_or(String::new(), |a| format!("Authorization: Basic {a}\r\n"));
        format!("GET /video HTTP/1.1\r\nHost: cam\r\n{auth}\r\n").into_bytes()
    }

    /// Checks a refusal of the request at `seq` of `len` bytes: the challenge with FIN
    /// back to the client from the device's next byte, a reset to the device.
    fn assert_refused(out: &[Seen], seq: u32, len: usize) {
        assert_eq!(out.len(), 2, "{out:?}");
        let (c, r) = (&out[0], &out[1]);
        assert_eq!(c.toward, Toward::Sender);
        assert_eq!((c.src, c.sport, c.dst, c.dport), (DEV, PORT, CLIENT, CPORT));
        assert_eq!((c.seq, c.ack), (DISN.wrapping_add(1), seq + len as u32));
        assert_eq!(c.flags, TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN);
        let text = String::from_utf8(c.data.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("\r\nWWW-Authenticate: Basic realm=\"lab \\\"cam\\\"\"\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert_eq!(r.toward, Toward::Onward);
        assert_eq!((r.src, r.sport, r.dst, r.dport), (CLIENT, CPORT, DEV, PORT));
        assert_eq!((r.seq, r.flags), (seq, TcpFlags::RST));
    }

    #[test]
    fn credentials_file() {
        let c = Credentials::parse("# who\n\n  \nowner:pa:ss word\r\nguest:\n").unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.check("owner", "pa:ss word") && c.check("guest", ""));
        assert!(!c.check("owner", "pa:ss") && !c.check("Owner", "pa:ss word"));
        assert!(!c.check("guest", "x") && !c.check("", ""));
        assert_eq!(format!("{c:?}"), "Credentials(2 entries)");
        for (text, says) in [
            ("", "no `user:password` entry"),
            ("# only a comment\n\n", "no `user:password` entry"),
            ("owner:x\nhunter2\n", "line 2 is not `user:password`"),
            (":secret\n", "line 1 has an empty user name"),
        ] {
            let e = Credentials::parse(text).unwrap_err();
            assert_eq!(e, says);
            assert!(!e.contains("hunter2") && !e.contains("secret"));
        }
        assert!(Credentials::default().is_empty());
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }

    #[test]
    fn a_request_without_credentials_is_challenged_and_never_reaches_the_device() {
        let mut r = Run::new(false);
        r.handshake(CPORT);
        let req = get(None);
        let (v, out) = r.go(1, Dir::ToDevice, &client(CPORT, PSH_ACK, CISN + 1, &req));
        assert_eq!(v, Verdict::Drop);
        assert_refused(&out, CISN + 1, req.len());
        // Asking without credentials is not a failed login.
        assert!(r.kinds().is_empty());
        let end = CISN + 1 + req.len() as u32;
        // The client acknowledges the challenge and our FIN: dropped, nothing sent.
        let len = r.f.challenge.len() as u32;
        let ack = Craft::tcp(CLIENT, CPORT, DEV, PORT, TcpFlags::ACK)
            .seq(end)
            .ack(DISN.wrapping_add(2 + len))
            .build();
        assert_eq!(r.go(2, Dir::ToDevice, &ack), (Verdict::Drop, vec![]));
        // Whatever the device still sends is dropped: the challenge holds those numbers.
        let late = Craft::tcp(DEV, PORT, CLIENT, CPORT, TcpFlags::ACK).build();
        assert_eq!(r.go(2, Dir::FromDevice, &late), (Verdict::Drop, vec![]));
        // A retransmitted request gets the same challenge again.
        let (v, out) = r.go(3, Dir::ToDevice, &client(CPORT, PSH_ACK, CISN + 1, &req));
        assert_eq!(v, Verdict::Drop);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].seq, out[0].ack), (DISN.wrapping_add(1), end));
        // The client's FIN is acknowledged after our FIN.
        let fin = Craft::tcp(CLIENT, CPORT, DEV, PORT, TcpFlags::FIN | TcpFlags::ACK)
            .seq(end)
            .ack(DISN.wrapping_add(2 + len))
            .build();
        let (v, out) = r.go(4, Dir::ToDevice, &fin);
        assert_eq!(v, Verdict::Drop);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].seq, out[0].ack, out[0].flags),
            (DISN.wrapping_add(2 + len), end + 1, TcpFlags::ACK)
        );
        // A reset ends it; the next segment is a stranger's (a bare ACK passes).
        let rst = Craft::tcp(CLIENT, CPORT, DEV, PORT, TcpFlags::RST)
            .seq(end + 1)
            .build();
        assert_eq!(r.go(5, Dir::ToDevice, &rst), (Verdict::Drop, vec![]));
        assert_eq!(r.go(6, Dir::ToDevice, &ack).0, Verdict::Forward);
        let mut m = Map::new();
        r.f.stats(&mut m, false);
        assert_eq!(
            (m["refused"].as_u64(), m["authorised"].as_u64()),
            (Some(1), Some(0))
        );
    }

    #[test]
    fn wrong_credentials_are_failed_logins_then_too_many() {
        let mut r = Run::new(false);
        for (i, cport) in (CPORT..CPORT + 3).enumerate() {
            r.handshake(cport);
            let req = get(Some(WRONG));
            let (v, out) = r.go(
                i as Ms,
                Dir::ToDevice,
                &client(cport, PSH_ACK, CISN + 1, &req),
            );
            assert_eq!((v, out.len()), (Verdict::Drop, 2));
        }
        assert_eq!(
            r.alerts.iter().map(|a| a.kind).collect::<Vec<_>>(),
            [
                AlertKind::FailedLogin,
                AlertKind::FailedLogin,
                AlertKind::FailedLogin,
                AlertKind::MaxLoginAttempts
            ]
        );
        assert!(r.alerts.iter().all(|a| a.source == CLIENT));
        assert_eq!(r.alerts[0].details["user"], "owner");
        assert_eq!(r.alerts[1].details["failures"], 2);
        assert_eq!(r.alerts[3].details["failures"], 3);
        r.alerts.clear();
        // Not blocked: the right password still gets through.
        r.handshake(CPORT + 9);
        let ok = client(CPORT + 9, PSH_ACK, CISN + 1, &get(Some(GOOD)));
        assert_eq!(r.go(10, Dir::ToDevice, &ok), (Verdict::Forward, vec![]));
        // A header that is not Basic, or not base64, is a failed login too.
        for auth in ["Authorization: Bearer abc", "Authorization: Basic !!!"] {
            r.handshake(CPORT + 20);
            let req = format!("GET / HTTP/1.1\r\n{auth}\r\n\r\n");
            let (v, _) = r.go(
                11,
                Dir::ToDevice,
                &client(CPORT + 20, PSH_ACK, CISN + 1, req.as_bytes()),
            );
            assert_eq!(v, Verdict::Drop);
        }
        assert_eq!(r.kinds(), [AlertKind::FailedLogin, AlertKind::FailedLogin]);
    }

    #[test]
    fn good_credentials_pass_unchanged_and_every_request_is_checked() {
        let mut r = Run::new(false);
        r.handshake(CPORT);
        let post = format!(
            "POST /config HTTP/1.1\r\nAuthorization: Basic {GOOD}\r\nContent-Length: 10\r\n\r\n12345"
        );
        let mut seq = CISN + 1;
        let seg = client(CPORT, PSH_ACK, seq, post.as_bytes());
        assert_eq!(r.go(1, Dir::ToDevice, &seg), (Verdict::Forward, vec![]));
        seq += post.len() as u32;
        // The rest of the body starts no request: it passes on an authorised connection.
        let rest = client(CPORT, PSH_ACK, seq, b"67890");
        assert_eq!(r.go(2, Dir::ToDevice, &rest), (Verdict::Forward, vec![]));
        seq += 5;
        // The device answers 200 with 100 bytes; the proxy follows its sequence numbers.
        let answer = Craft::tcp(DEV, PORT, CLIENT, CPORT, PSH_ACK)
            .seq(DISN.wrapping_add(1))
            .ack(seq)
            .payload(&[b'x'; 100])
            .build();
        assert_eq!(
            r.go(3, Dir::FromDevice, &answer),
            (Verdict::Forward, vec![])
        );
        // A second request on the same connection without credentials is refused, from
        // after the device's last byte, even before the client acknowledged it.
        let again = get(None);
        let (v, out) = r.go(4, Dir::ToDevice, &client(CPORT, PSH_ACK, seq, &again));
        assert_eq!(v, Verdict::Drop);
        assert_eq!(out[0].seq, DISN.wrapping_add(101));
        assert_eq!(out[1].seq, seq);
        assert!(r.kinds().is_empty());
    }

    #[test]
    fn data_that_is_not_a_whole_request_head_is_refused() {
        for data in [
            &b"GET /video HTTP/1.1\r\nAuthorization: Basic b3duZXI6UzNjcmV0IQ==\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"garbage\r\n\r\n",
        ] {
            let mut r = Run::new(false);
            r.handshake(CPORT);
            let (v, out) = r.go(1, Dir::ToDevice, &client(CPORT, PSH_ACK, CISN + 1, data));
            assert_eq!(v, Verdict::Drop);
            assert_refused(&out, CISN + 1, data.len());
            assert!(r.kinds().is_empty());
        }
        // Data without ACK is dropped without an answer.
        let mut r = Run::new(false);
        r.handshake(CPORT);
        let bare = client(CPORT, TcpFlags::PSH, CISN + 1, &get(Some(GOOD)));
        assert_eq!(r.go(1, Dir::ToDevice, &bare), (Verdict::Drop, vec![]));
        // So is a SYN carrying data (TCP Fast Open).
        let tfo = Craft::tcp(CLIENT, CPORT + 1, DEV, PORT, TcpFlags::SYN)
            .payload(&get(Some(GOOD)))
            .build();
        assert_eq!(r.go(2, Dir::ToDevice, &tfo), (Verdict::Drop, vec![]));
    }

    #[test]
    fn a_connection_picked_up_midway_is_checked_too() {
        let mut r = Run::new(false);
        // No handshake seen (the µmbox came up later): the client's ACK number says where
        // the device is.
        let req = get(None);
        let seg = Craft::tcp(CLIENT, CPORT, DEV, PORT, PSH_ACK)
            .seq(CISN + 1)
            .ack(DISN.wrapping_add(1))
            .payload(&req)
            .build();
        let (v, out) = r.go(0, Dir::ToDevice, &seg);
        assert_eq!(v, Verdict::Drop);
        assert_refused(&out, CISN + 1, req.len());
        // Good credentials pass; a bare ACK or FIN of an unknown connection passes.
        let ok = Craft::tcp(CLIENT, CPORT + 1, DEV, PORT, PSH_ACK)
            .payload(&get(Some(GOOD)))
            .build();
        assert_eq!(r.go(1, Dir::ToDevice, &ok).0, Verdict::Forward);
        let fin = Craft::tcp(CLIENT, CPORT + 2, DEV, PORT, TcpFlags::FIN | TcpFlags::ACK).build();
        assert_eq!(r.go(1, Dir::ToDevice, &fin).0, Verdict::Forward);
    }

    #[test]
    fn an_empty_file_refuses_everyone() {
        let mut r = Run::new(false);
        r.f = AuthProxy::new(Args {
            credentials: Credentials::default(),
            ..r.f.args.clone()
        });
        r.handshake(CPORT);
        let (v, _) = r.go(
            1,
            Dir::ToDevice,
            &client(CPORT, PSH_ACK, CISN + 1, &get(Some(GOOD))),
        );
        assert_eq!(v, Verdict::Drop);
    }

    #[test]
    fn other_traffic_passes_and_fragments_do_not() {
        let mut r = Run::new(false);
        let other = [
            Craft::tcp(CLIENT, CPORT, DEV, 80, PSH_ACK)
                .payload(&get(None))
                .build(),
            Craft::udp(CLIENT, 5000, DEV, PORT).payload(b"x").build(),
            Craft::icmp_echo(CLIENT, DEV).build(),
        ];
        for f in &other {
            assert_eq!(r.go(0, Dir::ToDevice, f), (Verdict::Forward, vec![]));
        }
        for f in [
            Craft::tcp(DEV, PORT, CLIENT, CPORT, PSH_ACK)
                .payload(b"HTTP/1.1 200 OK\r\n\r\n")
                .build(),
            Craft::tcp(DEV, 5000, CLIENT, PORT, TcpFlags::SYN).build(),
            Craft::icmp_echo(DEV, CLIENT).build(),
        ] {
            assert_eq!(r.go(0, Dir::FromDevice, &f), (Verdict::Forward, vec![]));
        }
        // A TCP fragment from the uplink, first or not, to any port, is dropped; UDP
        // fragments are not.
        let mut first = client(CPORT, PSH_ACK, CISN + 1, &get(None));
        first[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        let mut later = Craft::tcp(CLIENT, CPORT, DEV, 80, PSH_ACK).build();
        later[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
        let mut cut = client(CPORT, PSH_ACK, CISN + 1, b"");
        cut.truncate(40);
        for f in [&first, &later, &cut] {
            assert_eq!(r.go(0, Dir::ToDevice, f), (Verdict::Drop, vec![]));
        }
        let mut udp = Craft::udp(CLIENT, 5000, DEV, 53).build();
        udp[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        assert_eq!(r.go(0, Dir::ToDevice, &udp).0, Verdict::Forward);
        assert!(r.kinds().is_empty());
    }

    #[test]
    fn the_device_may_open_connections_from_the_guarded_port() {
        let mut r = Run::new(false);
        let syn = Craft::tcp(DEV, PORT, CLIENT, 443, TcpFlags::SYN).build();
        assert_eq!(r.go(0, Dir::FromDevice, &syn).0, Verdict::Forward);
        // The server's answer comes to the guarded port: it is not a client's request.
        let data = Craft::tcp(CLIENT, 443, DEV, PORT, PSH_ACK)
            .payload(b"\x17\x03\x03")
            .build();
        assert_eq!(r.go(1, Dir::ToDevice, &data), (Verdict::Forward, vec![]));
    }

    #[test]
    fn factory_credentials_alert_and_with_block_refuse_and_block() {
        // Without --block, factory credentials that are in the file pass, with an alert.
        let mut r = Run::new(false);
        r.f = proxy(false, "admin:admin\n");
        r.handshake(CPORT);
        let req = get(Some(FACTORY));
        assert_eq!(
            r.go(0, Dir::ToDevice, &client(CPORT, PSH_ACK, CISN + 1, &req))
                .0,
            Verdict::Forward
        );
        assert_eq!(r.kinds(), [AlertKind::DefaultCredentials]);
        // A login form with factory credentials counts as well (it is no proxy login).
        r.handshake(CPORT + 1);
        // Without Basic credentials it is challenged, and not a failed login.
        let form = b"POST /login HTTP/1.1\r\n\r\nusername=root&password=vizxv";
        let (v, _) = r.go(
            1,
            Dir::ToDevice,
            &client(CPORT + 1, PSH_ACK, CISN + 1, form),
        );
        assert_eq!(v, Verdict::Drop);
        assert_eq!(r.kinds(), [AlertKind::DefaultCredentials]);

        // With --block the request is refused and the client blocked, every way.
        let mut r = Run::new(true);
        r.handshake(CPORT);
        let (v, out) = r.go(0, Dir::ToDevice, &client(CPORT, PSH_ACK, CISN + 1, &req));
        assert_eq!(v, Verdict::Drop);
        assert_refused(&out, CISN + 1, req.len());
        assert_eq!(
            r.kinds(),
            [AlertKind::DefaultCredentials, AlertKind::FailedLogin]
        );
        let ping = Craft::icmp_echo(CLIENT, DEV).build();
        let pong = Craft::icmp_echo(DEV, CLIENT).build();
        assert_eq!(r.go(59_999, Dir::ToDevice, &ping), (Verdict::Drop, vec![]));
        assert_eq!(
            r.go(59_999, Dir::FromDevice, &pong),
            (Verdict::Drop, vec![])
        );
        // Even the right password: blocked is blocked.
        let ok = client(CPORT + 5, PSH_ACK, CISN + 1, &get(Some(GOOD)));
        assert_eq!(r.go(59_999, Dir::ToDevice, &ok), (Verdict::Drop, vec![]));
        assert!(r.kinds().iter().all(|k| *k == AlertKind::BlockedIp));
        assert_eq!(r.go(60_000, Dir::ToDevice, &ping).0, Verdict::Forward);
        r.f.tick(60_000);
        let mut m = Map::new();
        r.f.stats(&mut m, false);
        assert_eq!(m["blocked_sources"], 0);
    }

    #[test]
    fn block_after_too_many_failures() {
        let mut r = Run::new(true);
        for cport in CPORT..CPORT + 3 {
            r.handshake(cport);
            let req = get(Some(WRONG));
            assert_eq!(
                r.go(5, Dir::ToDevice, &client(cport, PSH_ACK, CISN + 1, &req))
                    .0,
                Verdict::Drop
            );
        }
        assert!(r
            .kinds()
            .ends_with(&[AlertKind::FailedLogin, AlertKind::MaxLoginAttempts]));
        let syn = Craft::tcp(CLIENT, CPORT + 9, DEV, 22, TcpFlags::SYN).build();
        assert_eq!(r.go(6, Dir::ToDevice, &syn).0, Verdict::Drop);
        assert_eq!(r.kinds(), [AlertKind::BlockedIp]);
        assert_eq!(r.go(60_005, Dir::ToDevice, &syn).0, Verdict::Forward);
    }

    #[test]
    fn idle_connections_are_forgotten() {
        let mut r = Run::new(false);
        r.handshake(CPORT);
        r.handshake(CPORT + 1);
        r.go(
            1,
            Dir::ToDevice,
            &client(CPORT + 1, PSH_ACK, CISN + 1, &get(None)),
        );
        r.f.tick(REFUSED_IDLE + 1);
        assert_eq!(r.f.conns.len(), 1);
        r.f.tick(IDLE);
        assert_eq!(r.f.conns.len(), 0);
        // Closed both ways: forgotten at once.
        r.handshake(CPORT);
        let fin_c = client(CPORT, TcpFlags::FIN | TcpFlags::ACK, CISN + 1, b"");
        let fin_d = Craft::tcp(DEV, PORT, CLIENT, CPORT, TcpFlags::FIN | TcpFlags::ACK)
            .seq(DISN.wrapping_add(1))
            .build();
        r.go(2, Dir::ToDevice, &fin_c);
        r.go(2, Dir::FromDevice, &fin_d);
        assert_eq!(r.f.conns.len(), 0);
    }
}
