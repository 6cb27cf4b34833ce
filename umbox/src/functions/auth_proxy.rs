//! `auth-proxy`: a minimal, passive stand-in for Kalki's HTTP authentication proxy
//! (u2-http-auth-proxy, and u3 with `--block`). It does not terminate HTTP; it watches the
//! requests to `--listen-port` and the device's answers:
//!
//! - a request carrying factory credentials (Basic or a login form) raises
//!   `default_credentials`;
//! - a `401` or `403` answer from the device raises `failed_login` for the client;
//! - more than `--max-failures` failures from one client within `--failure-window`
//!   raise `max_login_attempts`.
//!
//! With `--block`, a client that tried factory credentials or exceeded the failures is
//! dropped, both ways, for `--block-for`; each drop raises `blocked_ip` (held off).
//! `--session-timeout` and `--realm` are accepted and checked but have no effect: without
//! terminating HTTP there are no proxy sessions and no challenge to name a realm in.

use super::{Dir, Function, Verdict, MAX_TRACKED};
use crate::event::{Alert, AlertKind};
use crate::http;
use crate::packet::Ipv4;
use crate::window::{EventWindow, Ms, Table};
use clap::Args as ClapArgs;
use serde_json::{Map, Value};
use std::net::Ipv4Addr;

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
    /// Accepted for the catalog; no effect (no proxy sessions), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 3_600_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub session_timeout: u64,
    /// Accepted for the catalog; no effect (no challenge is sent).
    #[arg(long, value_name = "NAME", default_value = "kalki")]
    pub realm: String,
}

#[derive(Debug)]
pub struct AuthProxy {
    args: Args,
    failures: Table<Ipv4Addr, EventWindow>,
    /// Blocked client → when its block ends.
    blocked: Table<Ipv4Addr, Ms>,
}

impl AuthProxy {
    pub fn new(args: Args) -> AuthProxy {
        AuthProxy {
            args,
            failures: Table::new(MAX_TRACKED),
            blocked: Table::new(MAX_TRACKED * 4),
        }
    }

    fn block(&mut self, now: Ms, client: Ipv4Addr) {
        if self.args.block {
            let until = now.saturating_add(self.args.block_for);
            *self.blocked.entry(client, || until) = until;
        }
    }

    fn request(&mut self, now: Ms, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) {
        let Some(r) = p.tcp().and_then(|t| http::request(t.payload)) else {
            return;
        };
        let Some((user, pass)) = r.credentials() else {
            return;
        };
        if http::is_default(&user, &pass) {
            alerts.push(
                Alert::new(AlertKind::DefaultCredentials, p.src)
                    .with("user", user)
                    .with("target", p.dst.to_string()),
            );
            self.block(now, p.src);
        }
    }

    fn response(&mut self, now: Ms, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) {
        let Some(status) = p.tcp().and_then(|t| http::response_status(t.payload)) else {
            return;
        };
        if status != 401 && status != 403 {
            return;
        }
        let client = p.dst;
        let (window, max) = (self.args.failure_window, self.args.max_failures as usize);
        let w = self.failures.entry(client, || EventWindow::new(window));
        let n = w.push(now, max + 1);
        alerts.push(
            Alert::new(AlertKind::FailedLogin, client)
                .with("status", status)
                .with("failures", n)
                .with("target", p.src.to_string()),
        );
        if n > max {
            w.clear();
            alerts.push(
                Alert::new(AlertKind::MaxLoginAttempts, client)
                    .with("failures", n)
                    .with("window_ms", window)
                    .with("target", p.src.to_string()),
            );
            self.block(now, client);
        }
    }
}

impl Function for AuthProxy {
    fn packet(&mut self, now: Ms, dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        let Some((sport, dport)) = p.ports() else {
            return self.verdict(now, dir, p, alerts);
        };
        let port = self.args.listen_port;
        if p.tcp().is_some() {
            if dport == port && dir != Dir::FromDevice {
                self.request(now, p, alerts);
            } else if sport == port && dir != Dir::ToDevice {
                self.response(now, p, alerts);
            }
        }
        self.verdict(now, dir, p, alerts)
    }

    fn tick(&mut self, now: Ms) {
        self.blocked.retain(|_, until| now < *until);
        self.failures.retain(|_, w| w.count(now) > 0);
    }

    fn stats(&mut self, out: &mut Map<String, Value>, _periodic: bool) {
        out.insert("blocked_sources".into(), self.blocked.len().into());
    }
}

impl AuthProxy {
    /// Drops traffic of a blocked client, either way.
    fn verdict(&mut self, now: Ms, dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        let client = if dir == Dir::FromDevice { p.dst } else { p.src };
        match self.blocked.get(&client) {
            Some(&until) if now < until => {
                alerts.push(
                    Alert::new(AlertKind::BlockedIp, client)
                        .with("until_ms", until)
                        .with("block_for_ms", self.args.block_for),
                );
                Verdict::Drop
            }
            Some(_) => {
                self.blocked.remove(&client);
                Verdict::Forward
            }
            None => Verdict::Forward,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::craft::Craft;
    use crate::packet::{parse, TcpFlags};

    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
    const DEV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
    const PSH_ACK: u8 = TcpFlags::PSH | TcpFlags::ACK;

    fn proxy(block: bool) -> AuthProxy {
        AuthProxy::new(Args {
            block,
            block_for: 60_000,
            listen_port: 9010,
            max_failures: 2,
            failure_window: 600_000,
            session_timeout: 3_600_000,
            realm: "kalki".into(),
        })
    }

    fn login(auth: &str) -> Vec<u8> {
        Craft::tcp(CLIENT, 40000, DEV, 9010, PSH_ACK)
            .payload(format!("GET / HTTP/1.1\r\nAuthorization: Basic {auth}\r\n\r\n").as_bytes())
            .build()
    }

    fn answer(status: &str) -> Vec<u8> {
        Craft::tcp(DEV, 9010, CLIENT, 40000, PSH_ACK)
            .payload(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes())
            .build()
    }

    fn go(f: &mut AuthProxy, now: Ms, dir: Dir, fr: &[u8], alerts: &mut Vec<Alert>) -> Verdict {
        f.packet(now, dir, &parse(fr).unwrap(), alerts)
    }

    fn kinds(alerts: &[Alert]) -> Vec<AlertKind> {
        alerts.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn failures_then_max_login_attempts_without_block() {
        let mut f = proxy(false);
        let mut al = Vec::new();
        // "admin:S3cret" is no factory credential.
        assert_eq!(
            go(
                &mut f,
                0,
                Dir::ToDevice,
                &login("YWRtaW46UzNjcmV0"),
                &mut al
            ),
            Verdict::Forward
        );
        assert!(al.is_empty());
        for t in 0..3 {
            assert_eq!(
                go(
                    &mut f,
                    t,
                    Dir::FromDevice,
                    &answer("401 Unauthorized"),
                    &mut al
                ),
                Verdict::Forward
            );
        }
        assert_eq!(
            kinds(&al),
            [
                AlertKind::FailedLogin,
                AlertKind::FailedLogin,
                AlertKind::FailedLogin,
                AlertKind::MaxLoginAttempts
            ]
        );
        assert!(al.iter().all(|a| a.source == CLIENT));
        // 200 is a success; other ports are not guarded.
        al.clear();
        go(&mut f, 10, Dir::FromDevice, &answer("200 OK"), &mut al);
        let other = Craft::tcp(DEV, 80, CLIENT, 40000, PSH_ACK)
            .payload(b"HTTP/1.1 401 x\r\n")
            .build();
        go(&mut f, 10, Dir::FromDevice, &other, &mut al);
        assert!(al.is_empty());
        // Not blocked: the client still gets through.
        assert_eq!(
            go(
                &mut f,
                20,
                Dir::ToDevice,
                &login("YWRtaW46YWRtaW4="),
                &mut al
            ),
            Verdict::Forward
        );
        assert_eq!(kinds(&al), [AlertKind::DefaultCredentials]);
        assert_eq!(al[0].details["user"], "admin");
    }

    #[test]
    fn block_on_default_credentials_for_block_for() {
        let mut f = proxy(true);
        let mut al = Vec::new();
        assert_eq!(
            go(
                &mut f,
                0,
                Dir::ToDevice,
                &login("YWRtaW46YWRtaW4="),
                &mut al
            ),
            Verdict::Drop
        );
        assert_eq!(
            kinds(&al),
            [AlertKind::DefaultCredentials, AlertKind::BlockedIp]
        );
        let syn = Craft::tcp(CLIENT, 40001, DEV, 22, TcpFlags::SYN).build();
        assert_eq!(
            go(&mut f, 59_999, Dir::ToDevice, &syn, &mut al),
            Verdict::Drop
        );
        assert_eq!(
            go(&mut f, 59_999, Dir::FromDevice, &answer("200 OK"), &mut al),
            Verdict::Drop
        );
        assert_eq!(
            go(&mut f, 60_000, Dir::ToDevice, &syn, &mut al),
            Verdict::Forward
        );
    }

    #[test]
    fn block_after_too_many_failures() {
        let mut f = proxy(true);
        let mut al = Vec::new();
        for t in 0..2 {
            assert_eq!(
                go(
                    &mut f,
                    t,
                    Dir::FromDevice,
                    &answer("403 Forbidden"),
                    &mut al
                ),
                Verdict::Forward
            );
        }
        assert_eq!(
            go(
                &mut f,
                5,
                Dir::FromDevice,
                &answer("401 Unauthorized"),
                &mut al
            ),
            Verdict::Drop
        );
        assert!(kinds(&al).ends_with(&[AlertKind::MaxLoginAttempts, AlertKind::BlockedIp]));
        f.tick(70_000);
        let mut m = Map::new();
        f.stats(&mut m, false);
        assert_eq!(m["blocked_sources"], 0);
    }

    #[test]
    fn form_logins_count_too() {
        let mut f = proxy(false);
        let mut al = Vec::new();
        let form = Craft::tcp(CLIENT, 40000, DEV, 9010, PSH_ACK)
            .payload(b"POST /login HTTP/1.1\r\n\r\nusername=root&password=vizxv")
            .build();
        go(&mut f, 0, Dir::ToDevice, &form, &mut al);
        assert_eq!(kinds(&al), [AlertKind::DefaultCredentials]);
    }
}
