//! Detectors shared by the sniffer and the ids: port scans (distinct destination ports per
//! source within a window) and repeated attempts (events per source and target port
//! within a window).

use super::MAX_TRACKED;
use crate::event::{Alert, AlertKind};
use crate::packet::{Ipv4, TcpFlags, L4};
use crate::window::{DistinctWindow, EventWindow, Ms, Table};
use std::net::Ipv4Addr;

/// UDP ports from here up are the dynamic range: replies to clients go there, probes
/// rarely do.
pub const UDP_DYNAMIC_PORTS: u16 = 49152;

/// The destination port a packet probes, if it is a probe: a TCP segment without ACK
/// (SYN, FIN, NULL and Xmas scans; not RST) or a UDP datagram to a port below the dynamic
/// range. Packets of established TCP connections carry ACK and never count, so a busy
/// client of the device is not a scanner.
pub fn probed_port(p: &Ipv4<'_>) -> Option<(u8, u16)> {
    match &p.l4 {
        L4::Tcp(t) if !t.flags.any(TcpFlags::ACK | TcpFlags::RST) => Some((p.proto, t.dport)),
        L4::Udp(u) if u.dport < UDP_DYNAMIC_PORTS => Some((p.proto, u.dport)),
        _ => None,
    }
}

/// `port_scan` when one source probes `threshold` distinct (protocol, port) pairs within
/// `window`. After an alert the source's count starts again from zero.
#[derive(Debug)]
pub struct ScanDetector {
    threshold: usize,
    window: Ms,
    sources: Table<Ipv4Addr, DistinctWindow<(u8, u16)>>,
}

impl ScanDetector {
    pub fn new(threshold: usize, window: Ms) -> ScanDetector {
        ScanDetector {
            threshold: threshold.max(1),
            window,
            sources: Table::new(MAX_TRACKED),
        }
    }

    pub fn observe(&mut self, now: Ms, p: &Ipv4<'_>) -> Option<Alert> {
        let key = probed_port(p)?;
        let window = self.window;
        let seen = self.sources.entry(p.src, || DistinctWindow::new(window));
        let n = seen.insert(now, key);
        if n < self.threshold {
            return None;
        }
        self.sources.remove(&p.src);
        Some(
            Alert::new(AlertKind::PortScan, p.src)
                .with("target", p.dst.to_string())
                .with("ports", n)
                .with("window_ms", self.window),
        )
    }

    pub fn tick(&mut self, now: Ms) {
        self.sources.retain(|_, w| !w.is_empty(now));
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

/// `brute_force` when one source makes `threshold` attempts at one (target, port) within
/// `window`. What counts as an attempt is the caller's choice.
#[derive(Debug)]
pub struct AttemptCounter {
    threshold: usize,
    window: Ms,
    attempts: Table<(Ipv4Addr, Ipv4Addr, u16), EventWindow>,
}

impl AttemptCounter {
    pub fn new(threshold: usize, window: Ms) -> AttemptCounter {
        AttemptCounter {
            threshold: threshold.max(1),
            window,
            attempts: Table::new(MAX_TRACKED),
        }
    }

    pub fn attempt(&mut self, now: Ms, src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Option<Alert> {
        let window = self.window;
        let w = self
            .attempts
            .entry((src, dst, port), || EventWindow::new(window));
        let n = w.push(now, self.threshold);
        if n < self.threshold {
            return None;
        }
        w.clear();
        Some(
            Alert::new(AlertKind::BruteForce, src)
                .with("target", dst.to_string())
                .with("port", port)
                .with("attempts", n)
                .with("window_ms", self.window),
        )
    }

    pub fn tick(&mut self, now: Ms) {
        self.attempts.retain(|_, w| w.count(now) > 0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::craft::Craft;
    use crate::packet::parse;

    const SCANNER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
    const DEV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    fn syn(port: u16) -> Vec<u8> {
        Craft::tcp(SCANNER, 40000, DEV, port, TcpFlags::SYN).build()
    }

    #[test]
    fn probes() {
        let p = |f: Vec<u8>| probed_port(&parse(&f).unwrap());
        assert_eq!(p(syn(22)), Some((6, 22)));
        assert_eq!(
            p(Craft::tcp(SCANNER, 1, DEV, 80, TcpFlags::ACK).build()),
            None
        );
        assert_eq!(
            p(Craft::tcp(SCANNER, 1, DEV, 80, TcpFlags::RST).build()),
            None
        );
        assert_eq!(p(Craft::tcp(SCANNER, 1, DEV, 80, 0).build()), Some((6, 80)));
        assert_eq!(p(Craft::udp(SCANNER, 1, DEV, 161).build()), Some((17, 161)));
        assert_eq!(p(Craft::udp(SCANNER, 53, DEV, 50000).build()), None);
        assert_eq!(p(Craft::icmp_echo(SCANNER, DEV).build()), None);
    }

    #[test]
    fn scan_fires_at_threshold_within_window() {
        let mut d = ScanDetector::new(5, 1000);
        for port in 1..5 {
            assert!(d
                .observe(port.into(), &parse(&syn(port)).unwrap())
                .is_none());
        }
        // The same port again is not a new one.
        assert!(d.observe(10, &parse(&syn(4)).unwrap()).is_none());
        let a = d.observe(20, &parse(&syn(5)).unwrap()).unwrap();
        assert_eq!(a.kind, AlertKind::PortScan);
        assert_eq!(a.source, SCANNER);
        assert_eq!(a.details["ports"], 5);
        assert_eq!(a.details["target"], "10.0.0.10");
        // Counting starts again after an alert.
        assert!(d.observe(30, &parse(&syn(6)).unwrap()).is_none());
    }

    #[test]
    fn slow_scan_stays_below_threshold() {
        let mut d = ScanDetector::new(5, 1000);
        for (i, port) in (1..100u16).enumerate() {
            // One new port every 300 ms: never more than 4 within a second.
            let now = i as u64 * 300;
            assert!(d.observe(now, &parse(&syn(port)).unwrap()).is_none());
        }
        d.tick(1_000_000);
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn attempts_per_target_port() {
        let mut c = AttemptCounter::new(3, 1000);
        assert!(c.attempt(0, SCANNER, DEV, 22).is_none());
        assert!(c.attempt(1, SCANNER, DEV, 23).is_none());
        assert!(c.attempt(2, SCANNER, DEV, 22).is_none());
        let a = c.attempt(3, SCANNER, DEV, 22).unwrap();
        assert_eq!(a.kind, AlertKind::BruteForce);
        assert_eq!(
            (a.details["port"].as_u64(), a.details["attempts"].as_u64()),
            (Some(22), Some(3))
        );
        // Outside the window the old attempts do not count.
        assert!(c.attempt(5000, SCANNER, DEV, 23).is_none());
        c.tick(10_000);
    }
}
