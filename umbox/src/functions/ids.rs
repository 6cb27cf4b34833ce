//! `ids`: Snort-style detection on a mirrored copy, a small fixed rule set rather than
//! Snort. Raises `port_scan` (distinct ports per source), `brute_force` (repeated
//! attempts at one port) and `xmas_scan` (FIN+PSH+URG); never drops.
//!
//! Rule sets:
//! - `community`: an attempt is a TCP connection attempt (SYN without ACK);
//! - `iot`: also application requests of the lab devices' protocols, which a client can
//!   repeat on one kept-alive connection: HTTP requests to the Hue REST API (`/api...`),
//!   RTSP requests (port 554) and SSDP `M-SEARCH` datagrams (UDP 1900);
//! - `strict`: `iot`, and the other stealth-scan flag combinations count as `xmas_scan`
//!   too (NULL: no flags; SYN+FIN; FIN without ACK).

use super::scan::{AttemptCounter, ScanDetector};
use super::{Dir, Function, Verdict};
use crate::event::{Alert, AlertKind};
use crate::http;
use crate::packet::{Ipv4, TcpFlags, L4};
use crate::window::Ms;
use clap::{Args as ClapArgs, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ruleset {
    Community,
    Iot,
    Strict,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Which rules run: community, iot (adds UPnP, Hue REST, RTSP) or strict.
    #[arg(long, value_name = "RULESET", default_value = "iot")]
    pub ruleset: Ruleset,
    /// Probes from one source within --window before port_scan or brute_force.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub threshold: u32,
    /// The detection window in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub window: u64,
}

pub const RTSP_PORT: u16 = 554;
pub const SSDP_PORT: u16 = 1900;

#[derive(Debug)]
pub struct Ids {
    args: Args,
    scans: ScanDetector,
    attempts: AttemptCounter,
}

impl Ids {
    pub fn new(args: Args) -> Ids {
        Ids {
            scans: ScanDetector::new(args.threshold as usize, args.window),
            attempts: AttemptCounter::new(args.threshold as usize, args.window),
            args,
        }
    }

    fn is_xmas(&self, flags: TcpFlags) -> bool {
        if flags.is_xmas() {
            return true;
        }
        self.args.ruleset == Ruleset::Strict
            && (flags.0 & 0x3f == 0
                || flags.all(TcpFlags::SYN | TcpFlags::FIN)
                || (flags.all(TcpFlags::FIN) && !flags.any(TcpFlags::ACK)))
    }

    /// Whether this packet is an application request the `iot` rules count as an attempt.
    fn iot_request(p: &Ipv4<'_>) -> bool {
        match &p.l4 {
            L4::Tcp(t) if !t.payload.is_empty() => {
                if t.dport == RTSP_PORT {
                    let line = t.payload.split(|&b| b == b'\n').next().unwrap_or_default();
                    return line.windows(8).any(|w| w == b"RTSP/1.0");
                }
                http::request(t.payload).is_some_and(|r| r.path().starts_with("/api"))
            }
            L4::Udp(u) => u.dport == SSDP_PORT && u.payload.starts_with(b"M-SEARCH"),
            _ => false,
        }
    }
}

impl Function for Ids {
    fn packet(&mut self, now: Ms, _dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        if let Some(t) = p.tcp() {
            if self.is_xmas(t.flags) {
                alerts.push(
                    Alert::new(AlertKind::XmasScan, p.src)
                        .with("target", p.dst.to_string())
                        .with("port", t.dport)
                        .with("flags", format!("{:#04x}", t.flags.0)),
                );
            }
        }
        alerts.extend(self.scans.observe(now, p));
        let attempt = match &p.l4 {
            L4::Tcp(t) if t.flags.is_syn() => Some(t.dport),
            _ if self.args.ruleset != Ruleset::Community && Self::iot_request(p) => {
                p.ports().map(|(_, d)| d)
            }
            _ => None,
        };
        if let Some(port) = attempt {
            alerts.extend(self.attempts.attempt(now, p.src, p.dst, port));
        }
        Verdict::Forward
    }

    fn tick(&mut self, now: Ms) {
        self.scans.tick(now);
        self.attempts.tick(now);
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
    use crate::packet::parse;
    use std::net::Ipv4Addr;

    const ATT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
    const DEV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    fn ids(ruleset: Ruleset, threshold: u32) -> Ids {
        Ids::new(Args {
            ruleset,
            threshold,
            window: 60_000,
        })
    }

    fn run(ids: &mut Ids, frames: &[Vec<u8>]) -> Vec<AlertKind> {
        let mut alerts = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let v = ids.packet(i as u64 * 10, Dir::Copy, &parse(f).unwrap(), &mut alerts);
            assert_eq!(v, Verdict::Forward);
        }
        alerts.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn xmas_in_every_ruleset() {
        let x = Craft::tcp(
            ATT,
            1,
            DEV,
            80,
            TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG,
        )
        .build();
        for r in [Ruleset::Community, Ruleset::Iot, Ruleset::Strict] {
            assert!(run(&mut ids(r, 100), std::slice::from_ref(&x)).contains(&AlertKind::XmasScan));
        }
    }

    #[test]
    fn strict_adds_null_and_synfin() {
        let null = Craft::tcp(ATT, 1, DEV, 80, 0).build();
        let synfin = Craft::tcp(ATT, 1, DEV, 80, TcpFlags::SYN | TcpFlags::FIN).build();
        let fin = Craft::tcp(ATT, 1, DEV, 80, TcpFlags::FIN).build();
        let finack = Craft::tcp(ATT, 1, DEV, 80, TcpFlags::FIN | TcpFlags::ACK).build();
        for f in [&null, &synfin, &fin] {
            assert!(run(&mut ids(Ruleset::Iot, 100), std::slice::from_ref(f)).is_empty());
            assert_eq!(
                run(&mut ids(Ruleset::Strict, 100), std::slice::from_ref(f)),
                [AlertKind::XmasScan]
            );
        }
        assert!(run(&mut ids(Ruleset::Strict, 100), &[finack]).is_empty());
    }

    #[test]
    fn port_scan_and_brute_force_at_threshold() {
        let scan: Vec<_> = (1..=5)
            .map(|p| Craft::tcp(ATT, 40000, DEV, p, TcpFlags::SYN).build())
            .collect();
        assert_eq!(
            run(&mut ids(Ruleset::Community, 5), &scan),
            [AlertKind::PortScan]
        );
        let brute: Vec<_> = (0..5)
            .map(|i| Craft::tcp(ATT, 40000 + i, DEV, 22, TcpFlags::SYN).build())
            .collect();
        assert_eq!(
            run(&mut ids(Ruleset::Community, 5), &brute),
            [AlertKind::BruteForce]
        );
    }

    #[test]
    fn iot_counts_requests_on_one_connection() {
        let req = Craft::tcp(ATT, 40000, DEV, 80, TcpFlags::PSH | TcpFlags::ACK)
            .payload(b"PUT /api/abc/lights/1/state HTTP/1.1\r\nHost: hue\r\n\r\n")
            .build();
        let reqs = vec![req; 5];
        assert!(run(&mut ids(Ruleset::Community, 5), &reqs).is_empty());
        assert_eq!(
            run(&mut ids(Ruleset::Iot, 5), &reqs),
            [AlertKind::BruteForce]
        );
        let rtsp = Craft::tcp(ATT, 40000, DEV, 554, TcpFlags::PSH | TcpFlags::ACK)
            .payload(b"DESCRIBE rtsp://cam/live RTSP/1.0\r\nCSeq: 2\r\n\r\n")
            .build();
        assert_eq!(
            run(&mut ids(Ruleset::Strict, 3), &vec![rtsp; 3]),
            [AlertKind::BruteForce]
        );
        let ssdp = Craft::udp(ATT, 50000, DEV, 1900)
            .payload(b"M-SEARCH * HTTP/1.1\r\n")
            .build();
        // Each M-SEARCH is also a UDP probe of port 1900, one distinct port: no scan.
        assert_eq!(
            run(&mut ids(Ruleset::Iot, 3), &vec![ssdp; 3]),
            [AlertKind::BruteForce]
        );
    }

    #[test]
    fn established_traffic_raises_nothing() {
        let frames: Vec<_> = (0..200)
            .map(|i| {
                Craft::tcp(ATT, 40000, DEV, 8000 + (i % 50), TcpFlags::ACK)
                    .payload(b"data")
                    .build()
            })
            .collect();
        assert!(run(&mut ids(Ruleset::Strict, 5), &frames).is_empty());
    }
}
