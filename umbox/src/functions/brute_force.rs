//! `brute-force`: counts connection attempts (`--service tcp`: SYNs without ACK) or Hue
//! REST API calls (`--service hue_api`: HTTP requests for `/api...`) per source coming
//! from the uplink, and raises `brute_force` when a source makes more than
//! `--max-attempts` within `--window`; with `--block true` that source is then dropped,
//! both ways, for the life of the container. `--restrict-api true` drops Hue API calls
//! that change the bridge's configuration. It also watches the device's own traffic: a
//! TCP or UDP packet sent from a source port not in `--allowed-ports` counts towards
//! `abnormal_traffic`, raised every `--compromise-threshold` such packets.
//! Kalki's u6, u7, u9, u10.

use super::{Dir, Function, Verdict, MAX_TRACKED};
use crate::event::{Alert, AlertKind};
use crate::http;
use crate::packet::{Ipv4, L4};
use crate::window::{EventWindow, Ms, Table};
use clap::{ArgAction, Args as ClapArgs, ValueEnum};
use serde_json::{Map, Value};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    Tcp,
    #[value(name = "hue_api")]
    HueApi,
}

impl Service {
    fn as_str(self) -> &'static str {
        match self {
            Service::Tcp => "tcp",
            Service::HueApi => "hue_api",
        }
    }
}

/// A comma-separated list of ports; the empty string is the empty list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortList(pub Vec<u16>);

pub fn parse_port_list(s: &str) -> Result<PortList, String> {
    if s.trim().is_empty() {
        return Ok(PortList::default());
    }
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("`{}` is not a port (1 to 65535)", p.trim()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(PortList)
}

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// What an attempt is: tcp (a connection attempt) or hue_api (a Hue REST API call).
    #[arg(long, value_name = "SERVICE", default_value = "tcp")]
    pub service: Service,
    /// Attempts from one source allowed within --window; one more raises brute_force.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub max_attempts: u32,
    /// The attempt window in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub window: u64,
    /// Drop a source that raised brute_force from then on (true or false).
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, default_value_t = false)]
    pub block: bool,
    /// Drop Hue API calls that change the bridge configuration (true or false).
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, default_value_t = false)]
    pub restrict_api: bool,
    /// Comma-separated source ports the device may send from.
    #[arg(long, value_name = "PORTS", default_value = "22", value_parser = parse_port_list)]
    pub allowed_ports: PortList,
    /// Packets from a disallowed source port before abnormal_traffic.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub compromise_threshold: u32,
}

/// Whether a Hue API call changes the bridge: creating a user (`POST /api`) or writing
/// anything under `/api/<user>/config` (settings, whitelist, software update).
pub fn changes_hue_config(method: &str, path: &str) -> bool {
    if !matches!(method, "PUT" | "POST" | "DELETE") {
        return false;
    }
    let mut parts = path.trim_end_matches('/').split('/').skip(1);
    match (parts.next(), parts.next(), parts.next()) {
        (Some("api"), None, _) => method == "POST",
        (Some("api"), Some(_user), Some("config")) => true,
        _ => false,
    }
}

#[derive(Debug)]
pub struct BruteForce {
    args: Args,
    attempts: Table<Ipv4Addr, EventWindow>,
    blocked: Table<Ipv4Addr, ()>,
    /// Disallowed-port packets per device address since its last alert.
    abnormal: Table<Ipv4Addr, u32>,
    blocked_packets: u64,
    rejected_api: u64,
}

impl BruteForce {
    pub fn new(args: Args) -> BruteForce {
        BruteForce {
            args,
            attempts: Table::new(MAX_TRACKED),
            blocked: Table::new(MAX_TRACKED * 4),
            abnormal: Table::new(MAX_TRACKED),
            blocked_packets: 0,
            rejected_api: 0,
        }
    }

    fn attempt(&self, p: &Ipv4<'_>) -> Option<u16> {
        let t = p.tcp()?;
        match self.args.service {
            Service::Tcp => t.flags.is_syn().then_some(t.dport),
            Service::HueApi => http::request(t.payload)
                .filter(|r| r.path().starts_with("/api"))
                .map(|_| t.dport),
        }
    }

    fn inbound(&mut self, now: Ms, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        if self.args.restrict_api {
            if let Some(r) = p.tcp().and_then(|t| http::request(t.payload)) {
                if changes_hue_config(r.method, r.path()) {
                    self.rejected_api += 1;
                    return Verdict::Drop;
                }
            }
        }
        let Some(port) = self.attempt(p) else {
            return Verdict::Forward;
        };
        let (window, max) = (self.args.window, self.args.max_attempts as usize);
        let w = self.attempts.entry(p.src, || EventWindow::new(window));
        let n = w.push(now, max + 1);
        if n <= max {
            return Verdict::Forward;
        }
        w.clear();
        alerts.push(
            Alert::new(AlertKind::BruteForce, p.src)
                .with("target", p.dst.to_string())
                .with("port", port)
                .with("service", self.args.service.as_str())
                .with("attempts", n)
                .with("window_ms", window)
                .with("blocked", self.args.block),
        );
        if self.args.block {
            self.blocked.entry(p.src, || ());
            self.blocked_packets += 1;
            return Verdict::Drop;
        }
        Verdict::Forward
    }

    fn outbound(&mut self, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) {
        let sport = match &p.l4 {
            L4::Tcp(t) => t.sport,
            L4::Udp(u) => u.sport,
            _ => return,
        };
        if self.args.allowed_ports.0.contains(&sport) {
            return;
        }
        let n = self.abnormal.entry(p.src, || 0);
        *n += 1;
        if *n >= self.args.compromise_threshold {
            alerts.push(
                Alert::new(AlertKind::AbnormalTraffic, p.src)
                    .with("port", sport)
                    .with("target", p.dst.to_string())
                    .with("packets", *n),
            );
            *n = 0;
        }
    }
}

impl Function for BruteForce {
    fn packet(&mut self, now: Ms, dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        let peer = match dir {
            Dir::FromDevice => p.dst,
            Dir::ToDevice | Dir::Copy => p.src,
        };
        if self.blocked.contains(&peer) {
            self.blocked_packets += 1;
            return Verdict::Drop;
        }
        match dir {
            Dir::FromDevice => {
                self.outbound(p, alerts);
                Verdict::Forward
            }
            Dir::ToDevice | Dir::Copy => self.inbound(now, p, alerts),
        }
    }

    fn tick(&mut self, now: Ms) {
        self.attempts.retain(|_, w| w.count(now) > 0);
    }

    fn stats(&mut self, out: &mut Map<String, Value>, _periodic: bool) {
        out.insert("blocked_sources".into(), self.blocked.len().into());
        out.insert("blocked_packets".into(), self.blocked_packets.into());
        out.insert("rejected_api".into(), self.rejected_api.into());
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

    const ATT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
    const OTHER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const DEV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    fn args() -> Args {
        Args {
            service: Service::Tcp,
            max_attempts: 3,
            window: 10_000,
            block: false,
            restrict_api: false,
            allowed_ports: parse_port_list("22").unwrap(),
            compromise_threshold: 2,
        }
    }

    fn go(f: &mut BruteForce, now: Ms, dir: Dir, fr: &[u8], alerts: &mut Vec<Alert>) -> Verdict {
        f.packet(now, dir, &parse(fr).unwrap(), alerts)
    }

    fn syn(src: Ipv4Addr, sport: u16) -> Vec<u8> {
        Craft::tcp(src, sport, DEV, 22, TcpFlags::SYN).build()
    }

    #[test]
    fn port_lists() {
        assert_eq!(parse_port_list("22, 80,443").unwrap().0, [22, 80, 443]);
        assert!(parse_port_list("").unwrap().0.is_empty());
        for bad in ["0", "65536", "22,", "ssh"] {
            assert!(parse_port_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn alert_after_max_attempts_then_block() {
        let mut f = BruteForce::new(Args {
            block: true,
            ..args()
        });
        let mut alerts = Vec::new();
        for i in 0..3 {
            assert_eq!(
                go(
                    &mut f,
                    i * 100,
                    Dir::ToDevice,
                    &syn(ATT, 40000 + i as u16),
                    &mut alerts
                ),
                Verdict::Forward
            );
        }
        assert!(alerts.is_empty());
        assert_eq!(
            go(&mut f, 400, Dir::ToDevice, &syn(ATT, 40010), &mut alerts),
            Verdict::Drop
        );
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].kind, alerts[0].source),
            (AlertKind::BruteForce, ATT)
        );
        assert_eq!(alerts[0].details["attempts"], 4);
        // Blocked both ways, established traffic included; others unaffected.
        let ack = Craft::tcp(ATT, 40000, DEV, 22, TcpFlags::ACK).build();
        assert_eq!(
            go(&mut f, 500, Dir::ToDevice, &ack, &mut alerts),
            Verdict::Drop
        );
        let reply = Craft::tcp(DEV, 22, ATT, 40000, TcpFlags::ACK).build();
        assert_eq!(
            go(&mut f, 500, Dir::FromDevice, &reply, &mut alerts),
            Verdict::Drop
        );
        assert_eq!(
            go(&mut f, 500, Dir::ToDevice, &syn(OTHER, 1), &mut alerts),
            Verdict::Forward
        );
        let mut m = Map::new();
        f.stats(&mut m, false);
        assert_eq!(
            (m["blocked_sources"].as_u64(), m["blocked_packets"].as_u64()),
            (Some(1), Some(3))
        );
    }

    #[test]
    fn without_block_only_alerts_and_window_slides() {
        let mut f = BruteForce::new(args());
        let mut alerts = Vec::new();
        // One attempt every 4 s: never more than 3 within 10 s.
        for i in 0..10u64 {
            assert_eq!(
                go(&mut f, i * 4000, Dir::ToDevice, &syn(ATT, 1), &mut alerts),
                Verdict::Forward
            );
        }
        assert!(alerts.is_empty());
        for i in 0..4u64 {
            go(
                &mut f,
                100_000 + i,
                Dir::ToDevice,
                &syn(ATT, 1),
                &mut alerts,
            );
        }
        assert_eq!(alerts.len(), 1);
    }

    #[test]
    fn hue_api_calls_and_restricted_config() {
        let mut f = BruteForce::new(Args {
            service: Service::HueApi,
            restrict_api: true,
            ..args()
        });
        let mut alerts = Vec::new();
        let call = |m: &str, path: &str| {
            Craft::tcp(ATT, 40000, DEV, 80, TcpFlags::PSH | TcpFlags::ACK)
                .payload(format!("{m} {path} HTTP/1.1\r\nHost: hue\r\n\r\n").as_bytes())
                .build()
        };
        // SYNs are no API calls.
        for _ in 0..10 {
            go(&mut f, 0, Dir::ToDevice, &syn(ATT, 1), &mut alerts);
        }
        assert!(alerts.is_empty());
        assert_eq!(
            go(
                &mut f,
                0,
                Dir::ToDevice,
                &call("PUT", "/api/u1/config"),
                &mut alerts
            ),
            Verdict::Drop
        );
        assert_eq!(
            go(&mut f, 0, Dir::ToDevice, &call("POST", "/api"), &mut alerts),
            Verdict::Drop
        );
        assert_eq!(
            go(
                &mut f,
                0,
                Dir::ToDevice,
                &call("DELETE", "/api/u1/config/whitelist/u2"),
                &mut alerts
            ),
            Verdict::Drop
        );
        assert_eq!(
            go(
                &mut f,
                0,
                Dir::ToDevice,
                &call("GET", "/api/u1/config"),
                &mut alerts
            ),
            Verdict::Forward
        );
        assert_eq!(
            go(
                &mut f,
                0,
                Dir::ToDevice,
                &call("PUT", "/api/u1/lights/1/state"),
                &mut alerts
            ),
            Verdict::Forward
        );
        assert_eq!(
            go(
                &mut f,
                0,
                Dir::ToDevice,
                &call("GET", "/index.html"),
                &mut alerts
            ),
            Verdict::Forward
        );
        assert!(alerts.is_empty());
        go(
            &mut f,
            0,
            Dir::ToDevice,
            &call("GET", "/api/u1/lights"),
            &mut alerts,
        );
        go(
            &mut f,
            0,
            Dir::ToDevice,
            &call("GET", "/api/u1/lights"),
            &mut alerts,
        );
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].details["service"], "hue_api");
        let mut m = Map::new();
        f.stats(&mut m, false);
        assert_eq!(m["rejected_api"], 3);
    }

    #[test]
    fn device_sending_from_disallowed_ports() {
        let mut f = BruteForce::new(args());
        let mut alerts = Vec::new();
        let ssh_reply = Craft::tcp(DEV, 22, ATT, 40000, TcpFlags::ACK).build();
        let shell = Craft::tcp(DEV, 4444, ATT, 80, TcpFlags::SYN).build();
        let dns = Craft::udp(DEV, 5353, ATT, 53).build();
        for _ in 0..10 {
            go(&mut f, 0, Dir::FromDevice, &ssh_reply, &mut alerts);
        }
        assert!(alerts.is_empty());
        go(&mut f, 0, Dir::FromDevice, &shell, &mut alerts);
        assert!(alerts.is_empty());
        assert_eq!(
            go(&mut f, 0, Dir::FromDevice, &dns, &mut alerts),
            Verdict::Forward
        );
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            (alerts[0].kind, alerts[0].source),
            (AlertKind::AbnormalTraffic, DEV)
        );
        assert_eq!(alerts[0].details["port"], 5353);
        // The same traffic arriving from the uplink is not the device's.
        go(&mut f, 0, Dir::ToDevice, &dns, &mut alerts);
        assert_eq!(alerts.len(), 1);
    }

    #[test]
    fn hue_config_paths() {
        assert!(changes_hue_config("POST", "/api"));
        assert!(changes_hue_config("POST", "/api/"));
        assert!(!changes_hue_config("GET", "/api"));
        assert!(changes_hue_config("PUT", "/api/x/config"));
        assert!(!changes_hue_config("PUT", "/api/x/groups/0/action"));
        assert!(!changes_hue_config("PUT", "/apix/x/config"));
    }
}
