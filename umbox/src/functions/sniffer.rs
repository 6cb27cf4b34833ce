//! `sniffer`: passive analyser on a mirrored copy (Kalki's u5-sniffer-log-stats). Counts
//! packets and bytes per peer, writes them with every periodic stats line, and raises
//! `port_scan` when one source probes `--scan-ports` distinct ports within
//! `--scan-window`.

use super::scan::ScanDetector;
use super::{Dir, Function, Verdict};
use crate::event::Alert;
use crate::packet::Ipv4;
use crate::window::{Ms, Table};
use clap::{ArgAction, Args as ClapArgs};
use serde_json::{json, Map, Value};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Write per-peer packet statistics every --stats-interval (true or false).
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, default_value_t = true)]
    pub stats: bool,
    /// Milliseconds between two stats lines.
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stats_interval: u64,
    /// Distinct destination ports from one source, within --scan-window, that make a scan.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(5..=1000))]
    pub scan_ports: u32,
    /// The port-scan window in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub scan_window: u64,
}

/// Peers listed in one stats line, busiest first; the rest are summed up.
pub const TOP_PEERS: usize = 20;

#[derive(Debug, Default, Clone, Copy)]
struct PeerCount {
    packets: u64,
    bytes: u64,
}

#[derive(Debug)]
pub struct Sniffer {
    args: Args,
    scans: ScanDetector,
    /// Per source address, since the last periodic stats line.
    peers: Table<Ipv4Addr, PeerCount>,
}

impl Sniffer {
    pub fn new(args: Args) -> Sniffer {
        Sniffer {
            scans: ScanDetector::new(args.scan_ports as usize, args.scan_window),
            args,
            peers: Table::new(super::MAX_TRACKED),
        }
    }
}

impl Function for Sniffer {
    fn packet(&mut self, now: Ms, _dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        let c = self.peers.entry(p.src, PeerCount::default);
        c.packets += 1;
        c.bytes += p.frame_len as u64;
        alerts.extend(self.scans.observe(now, p));
        Verdict::Forward
    }

    fn tick(&mut self, now: Ms) {
        self.scans.tick(now);
    }

    fn stats(&mut self, out: &mut Map<String, Value>, periodic: bool) {
        if !self.args.stats {
            return;
        }
        let mut peers: Vec<(Ipv4Addr, PeerCount)> =
            self.peers.iter().map(|(a, c)| (*a, *c)).collect();
        // Busiest first; equal counts by address, so the line is deterministic.
        peers.sort_by(|x, y| y.1.packets.cmp(&x.1.packets).then(x.0.cmp(&y.0)));
        let listed: Vec<Value> = peers
            .iter()
            .take(TOP_PEERS)
            .map(|(a, c)| json!({"ip": a.to_string(), "packets": c.packets, "bytes": c.bytes}))
            .collect();
        let others = peers
            .iter()
            .skip(TOP_PEERS)
            .fold((0u64, 0u64), |acc, (_, c)| {
                (acc.0 + c.packets, acc.1 + c.bytes)
            });
        out.insert("peers".into(), Value::Array(listed));
        out.insert("peers_total".into(), peers.len().into());
        out.insert(
            "peers_other".into(),
            json!({"packets": others.0, "bytes": others.1}),
        );
        out.insert("scan_sources".into(), self.scans.tracked().into());
        if periodic {
            self.peers.clear();
        }
    }

    fn holdoff(&self) -> Ms {
        self.args.scan_window
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::craft::Craft;
    use crate::event::AlertKind;
    use crate::packet::{parse, TcpFlags};

    const DEV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    fn sniffer(stats: bool) -> Sniffer {
        Sniffer::new(Args {
            stats,
            stats_interval: 1000,
            scan_ports: 5,
            scan_window: 10_000,
        })
    }

    fn feed(s: &mut Sniffer, now: Ms, f: &[u8]) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let v = s.packet(now, Dir::Copy, &parse(f).unwrap(), &mut alerts);
        assert_eq!(v, Verdict::Forward);
        alerts
    }

    #[test]
    fn counts_per_peer_and_resets_each_interval() {
        let mut s = sniffer(true);
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        for _ in 0..3 {
            feed(&mut s, 0, &Craft::udp(a, 1, DEV, 53).build());
        }
        feed(&mut s, 0, &Craft::icmp_echo(b, DEV).build());
        let mut m = Map::new();
        s.stats(&mut m, false);
        assert_eq!(m["peers_total"], 2);
        assert_eq!(m["peers"][0]["ip"], "10.0.0.1");
        assert_eq!(m["peers"][0]["packets"], 3);
        assert_eq!(m["peers"][0]["bytes"], 3 * 42);
        assert_eq!(m["peers"][1]["ip"], "10.0.0.2");
        // A periodic line resets the counts; an on-demand one does not.
        s.stats(&mut m, true);
        let mut m = Map::new();
        s.stats(&mut m, false);
        assert_eq!(m["peers_total"], 0);
    }

    #[test]
    fn many_peers_are_summed_beyond_the_top() {
        let mut s = sniffer(true);
        for i in 0..30u8 {
            feed(
                &mut s,
                0,
                &Craft::icmp_echo(Ipv4Addr::new(10, 1, 0, i), DEV).build(),
            );
        }
        let mut m = Map::new();
        s.stats(&mut m, true);
        assert_eq!(m["peers"].as_array().unwrap().len(), TOP_PEERS);
        assert_eq!(m["peers_other"]["packets"], 10);
    }

    #[test]
    fn stats_false_writes_no_peers() {
        let mut s = sniffer(false);
        feed(&mut s, 0, &Craft::icmp_echo(DEV, DEV).build());
        let mut m = Map::new();
        s.stats(&mut m, true);
        assert!(m.is_empty());
    }

    #[test]
    fn port_scan_on_distinct_ports() {
        let mut s = sniffer(true);
        let scanner = Ipv4Addr::new(198, 51, 100, 4);
        let mut alerts = Vec::new();
        for (i, port) in [21u16, 22, 23, 25, 80].iter().enumerate() {
            alerts.extend(feed(
                &mut s,
                i as u64 * 100,
                &Craft::tcp(scanner, 50000, DEV, *port, TcpFlags::SYN).build(),
            ));
        }
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, AlertKind::PortScan);
        assert_eq!(alerts[0].source, scanner);
        // Replies from the device (SYN+ACK, RST+ACK) to many client ports are no scan.
        let mut s = sniffer(true);
        for port in 40000..40100 {
            let f = Craft::tcp(DEV, 80, scanner, port, TcpFlags::SYN | TcpFlags::ACK).build();
            assert!(feed(&mut s, 0, &f).is_empty());
        }
    }
}
