//! `login-monitor`: watches logins to the device's own web interface on a mirrored copy
//! (Kalki's u11-dlc-max-login). A login is an HTTP request on any TCP port that carries
//! Basic credentials or a login form, or a POST to a path naming a login. More than
//! `--max-attempts` from one source within `--window` raise `max_login_attempts`;
//! factory credentials raise `default_credentials`. Never drops.

use super::{Dir, Function, Verdict, MAX_TRACKED};
use crate::event::{Alert, AlertKind};
use crate::http;
use crate::packet::Ipv4;
use crate::window::{EventWindow, Ms, Table};
use clap::Args as ClapArgs;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Logins allowed from one source within --window.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// The login window in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub window: u64,
}

#[derive(Debug)]
pub struct LoginMonitor {
    args: Args,
    logins: Table<Ipv4Addr, EventWindow>,
}

impl LoginMonitor {
    pub fn new(args: Args) -> LoginMonitor {
        LoginMonitor {
            args,
            logins: Table::new(MAX_TRACKED),
        }
    }
}

impl Function for LoginMonitor {
    fn packet(&mut self, now: Ms, _dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        let Some((t, r)) = p.tcp().and_then(|t| Some((t, http::request(t.payload)?))) else {
            return Verdict::Forward;
        };
        if !r.is_login() {
            return Verdict::Forward;
        }
        if let Some((user, pass)) = r.credentials() {
            if http::is_default(&user, &pass) {
                alerts.push(
                    Alert::new(AlertKind::DefaultCredentials, p.src)
                        .with("user", user)
                        .with("target", p.dst.to_string())
                        .with("port", t.dport),
                );
            }
        }
        let (window, max) = (self.args.window, self.args.max_attempts as usize);
        let w = self.logins.entry(p.src, || EventWindow::new(window));
        let n = w.push(now, max + 1);
        if n > max {
            w.clear();
            alerts.push(
                Alert::new(AlertKind::MaxLoginAttempts, p.src)
                    .with("attempts", n)
                    .with("window_ms", window)
                    .with("target", p.dst.to_string())
                    .with("port", t.dport),
            );
        }
        Verdict::Forward
    }

    fn tick(&mut self, now: Ms) {
        self.logins.retain(|_, w| w.count(now) > 0);
    }

    fn holdoff(&self) -> Ms {
        self.args.window
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::craft::Craft;
    use crate::packet::{parse, TcpFlags};

    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
    const CAM: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);

    fn req(payload: &str) -> Vec<u8> {
        Craft::tcp(CLIENT, 40000, CAM, 80, TcpFlags::PSH | TcpFlags::ACK)
            .payload(payload.as_bytes())
            .build()
    }

    fn run(frames: &[(Ms, Vec<u8>)]) -> Vec<AlertKind> {
        let mut f = LoginMonitor::new(Args {
            max_attempts: 3,
            window: 60_000,
        });
        let mut al = Vec::new();
        for (t, fr) in frames {
            assert_eq!(
                f.packet(*t, Dir::Copy, &parse(fr).unwrap(), &mut al),
                Verdict::Forward
            );
        }
        al.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn too_many_logins_in_the_window() {
        // "admin:wrong"
        let basic = req("GET /video.cgi HTTP/1.1\r\nAuthorization: Basic YWRtaW46d3Jvbmc=\r\n\r\n");
        let four: Vec<_> = (0..4).map(|i| (i * 1000, basic.clone())).collect();
        assert_eq!(run(&four), [AlertKind::MaxLoginAttempts]);
        let spread: Vec<_> = (0..8).map(|i| (i * 30_000, basic.clone())).collect();
        assert!(run(&spread).is_empty());
        // Plain page views are no logins.
        let views: Vec<_> = (0..10)
            .map(|i| (i, req("GET / HTTP/1.1\r\n\r\n")))
            .collect();
        assert!(run(&views).is_empty());
    }

    #[test]
    fn factory_credentials() {
        let basic = req("GET / HTTP/1.1\r\nAuthorization: Basic YWRtaW46\r\n\r\n"); // admin:
        assert_eq!(run(&[(0, basic)]), [AlertKind::DefaultCredentials]);
        let form = req("POST /login.cgi HTTP/1.1\r\n\r\nuser=admin&pwd=admin");
        assert_eq!(run(&[(0, form)]), [AlertKind::DefaultCredentials]);
        let posts: Vec<_> = (0..4)
            .map(|i| (i, req("POST /cgi-bin/login HTTP/1.1\r\n\r\nx=1")))
            .collect();
        assert_eq!(run(&posts), [AlertKind::MaxLoginAttempts]);
    }
}
