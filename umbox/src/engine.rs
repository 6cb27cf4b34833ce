//! One µmbox's logic without its I/O: frames in (with the side they arrived on and the
//! time), verdicts, alerts, frames to inject and counters out. The binary's loop
//! (`run.rs`) feeds it from sockets and sends what it returns; the tests feed it crafted
//! frames.

use crate::event::{Alert, AlertKind};
use crate::forge;
use crate::functions::{Dir, Function, Inject, Toward, Verdict};
use crate::packet;
use crate::window::{Holdoff, Ms};
use serde_json::{Map, Value};
use std::net::Ipv4Addr;

/// The interface a frame arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Inline, from the device.
    A,
    /// Inline, from the uplink.
    B,
    Tap,
}

impl Side {
    /// The other inline interface.
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
            Side::Tap => Side::Tap,
        }
    }
}

/// A frame the function injected: to be sent out of `side`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub side: Side,
    pub frame: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Inline frames passed on to the other interface.
    pub forwarded: u64,
    /// Inline frames the function dropped.
    pub dropped: u64,
    /// Frames seen on a tap.
    pub copied: u64,
    /// Frames that were not IPv4 (forwarded unchanged when inline, unless the function
    /// drops them).
    pub non_ipv4: u64,
    /// Frames the function built and sent itself (answers, resets).
    pub injected: u64,
    /// Frames the kernel refused to send.
    pub send_errors: u64,
    /// Alerts written.
    pub alerts: u64,
    /// Alerts not written because the same alert about the same source had just been,
    /// or because [`MAX_ALERTS_PER_SECOND`] had been written this second.
    pub alerts_held_off: u64,
}

/// At most this many alerts are written per second, whatever their sources: a flood
/// from many spoofed addresses must not become a flood of alert lines.
pub const MAX_ALERTS_PER_SECOND: u32 = 100;

pub struct Engine {
    name: &'static str,
    /// The second (of the clock) the alerts in `alerts_this_second` were written in.
    alert_second: Ms,
    alerts_this_second: u32,
    func: Box<dyn Function>,
    holdoff: Holdoff<(AlertKind, Ipv4Addr)>,
    counters: Counters,
    scratch: Vec<Alert>,
    injections: Vec<Inject>,
    started: Ms,
}

impl Engine {
    pub fn new(name: &'static str, func: Box<dyn Function>, now: Ms) -> Engine {
        let holdoff = Holdoff::new(func.holdoff());
        Engine {
            name,
            alert_second: 0,
            alerts_this_second: 0,
            func,
            holdoff,
            counters: Counters::default(),
            scratch: Vec::new(),
            injections: Vec::new(),
            started: now,
        }
    }

    /// Handles one frame; alerts that pass the hold-off are appended to `alerts`, frames
    /// the function injects in response to `out` (inline only).
    pub fn frame(
        &mut self,
        now: Ms,
        side: Side,
        frame: &[u8],
        alerts: &mut Vec<Alert>,
        out: &mut Vec<Outgoing>,
    ) -> Verdict {
        let dir = match side {
            Side::A => Dir::FromDevice,
            Side::B => Dir::ToDevice,
            Side::Tap => Dir::Copy,
        };
        let verdict = match packet::parse(frame) {
            None => {
                self.counters.non_ipv4 += 1;
                self.func.non_ipv4()
            }
            Some(p) => {
                let v = self.func.packet(now, dir, &p, &mut self.scratch);
                for a in self.scratch.drain(..) {
                    if now / 1000 != self.alert_second {
                        self.alert_second = now / 1000;
                        self.alerts_this_second = 0;
                    }
                    if self.alerts_this_second < MAX_ALERTS_PER_SECOND
                        && self.holdoff.allow(now, (a.kind, a.source))
                    {
                        self.alerts_this_second += 1;
                        self.counters.alerts += 1;
                        alerts.push(a);
                    } else {
                        self.counters.alerts_held_off += 1;
                    }
                }
                self.func.take_injected(&mut self.injections);
                for i in self.injections.drain(..) {
                    if side == Side::Tap {
                        continue;
                    }
                    let (to, reply) = match i.toward {
                        Toward::Sender => (side, true),
                        Toward::Onward => (side.other(), false),
                    };
                    if let Some(f) = forge::ethernet(frame, reply, &i.packet) {
                        self.counters.injected += 1;
                        out.push(Outgoing { side: to, frame: f });
                    }
                }
                v
            }
        };
        match (side, verdict) {
            (Side::Tap, _) => self.counters.copied += 1,
            (_, Verdict::Forward) => self.counters.forwarded += 1,
            (_, Verdict::Drop) => self.counters.dropped += 1,
        }
        verdict
    }

    /// A forwarded frame could not be sent after all.
    pub fn send_failed(&mut self) {
        self.counters.forwarded = self.counters.forwarded.saturating_sub(1);
        self.counters.send_errors += 1;
    }

    /// An injected frame could not be sent after all.
    pub fn inject_failed(&mut self) {
        self.counters.injected = self.counters.injected.saturating_sub(1);
        self.counters.send_errors += 1;
    }

    /// Log lines the function produced since the last call.
    pub fn notes(&mut self) -> Vec<String> {
        self.func.take_notes()
    }

    pub fn tick(&mut self, now: Ms) {
        self.func.tick(now);
        self.holdoff.sweep(now);
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The fields of a stats line. `periodic`: the line closing a stats interval.
    pub fn stats(&mut self, now: Ms, periodic: bool) -> Map<String, Value> {
        let c = self.counters;
        let mut m = Map::new();
        m.insert("function".into(), self.name.into());
        m.insert("uptime_ms".into(), now.saturating_sub(self.started).into());
        m.insert("forwarded".into(), c.forwarded.into());
        m.insert("dropped".into(), c.dropped.into());
        m.insert("copied".into(), c.copied.into());
        m.insert("non_ipv4".into(), c.non_ipv4.into());
        m.insert("injected".into(), c.injected.into());
        m.insert("send_errors".into(), c.send_errors.into());
        m.insert("alerts".into(), c.alerts.into());
        m.insert("alerts_held_off".into(), c.alerts_held_off.into());
        self.func.stats(&mut m, periodic);
        m
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::cli;
    use crate::craft::Craft;
    use crate::packet::TcpFlags;

    fn engine(args: &str) -> Engine {
        let f = cli::parse(std::iter::once("kalki-umbox").chain(args.split_whitespace())).unwrap();
        let name = f.name();
        Engine::new(name, f.build(), 0)
    }

    const ATT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
    const DEV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    #[test]
    fn counts_and_holds_off_repeated_alerts() {
        let mut e = engine("xmas-block");
        let xmas = Craft::tcp(
            ATT,
            1,
            DEV,
            80,
            TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG,
        )
        .build();
        let ok = Craft::tcp(ATT, 1, DEV, 80, TcpFlags::SYN).build();
        let mut arp = ok.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let mut alerts = Vec::new();
        let mut out = Vec::new();
        for t in 0..5 {
            assert_eq!(
                e.frame(t, Side::B, &xmas, &mut alerts, &mut out),
                Verdict::Drop
            );
        }
        assert_eq!(
            e.frame(5, Side::B, &ok, &mut alerts, &mut out),
            Verdict::Forward
        );
        assert_eq!(
            e.frame(6, Side::A, &arp, &mut alerts, &mut out),
            Verdict::Forward
        );
        // Ten seconds later the same source is reported again.
        assert_eq!(
            e.frame(10_000, Side::B, &xmas, &mut alerts, &mut out),
            Verdict::Drop
        );
        assert_eq!(alerts.len(), 2);
        e.send_failed();
        let c = e.counters();
        assert_eq!(
            c,
            Counters {
                forwarded: 1,
                dropped: 6,
                copied: 0,
                non_ipv4: 1,
                injected: 0,
                send_errors: 1,
                alerts: 2,
                alerts_held_off: 4,
            }
        );
        assert!(out.is_empty());
        let m = e.stats(12_000, false);
        assert_eq!(m["function"], "xmas-block");
        assert_eq!(m["uptime_ms"], 12_000);
        assert_eq!(m["dropped"], 6);
    }

    #[test]
    fn alerts_are_capped_per_second() {
        let mut e = engine("ip-block --addresses 198.18.0.0/16");
        let mut alerts = Vec::new();
        let mut out = Vec::new();
        // A flood from 1,000 different blocked sources within one second.
        for i in 0..1000u32 {
            let src = Ipv4Addr::from(0xc612_0000 + i);
            let f = Craft::icmp_echo(src, DEV).build();
            assert_eq!(
                e.frame(500, Side::B, &f, &mut alerts, &mut out),
                Verdict::Drop
            );
        }
        assert_eq!(alerts.len(), MAX_ALERTS_PER_SECOND as usize);
        assert_eq!(e.counters().alerts_held_off, 900);
        // The next second has a new budget, and unreported sources are reported then.
        let f = Craft::icmp_echo(Ipv4Addr::from(0xc612_0000 + 999), DEV).build();
        e.frame(1000, Side::B, &f, &mut alerts, &mut out);
        assert_eq!(alerts.len(), MAX_ALERTS_PER_SECOND as usize + 1);
    }

    #[test]
    fn tap_frames_are_copies() {
        let mut e = engine("sniffer --scan-ports 5");
        let mut alerts = Vec::new();
        let mut out = Vec::new();
        for port in 1..=5 {
            let f = Craft::tcp(ATT, 1, DEV, port, TcpFlags::SYN).build();
            e.frame(u64::from(port), Side::Tap, &f, &mut alerts, &mut out);
        }
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, AlertKind::PortScan);
        let c = e.counters();
        assert_eq!((c.copied, c.forwarded, c.dropped), (5, 0, 0));
        let m = e.stats(10, true);
        assert_eq!(m["peers"][0]["packets"], 5);
        e.tick(1_000_000);
    }

    #[test]
    fn injected_frames_go_back_to_the_sender_in_ethernet_of_the_answered_frame() {
        let mut e = engine("fake-replies --protocol http");
        let (mut alerts, mut out) = (Vec::new(), Vec::new());
        let client_mac = [2, 0, 0, 0, 0, 0xc1];
        let device_mac = [2, 0, 0, 0, 0, 0xd1];
        let syn = Craft::tcp(ATT, 40000, DEV, 80, TcpFlags::SYN)
            .macs(client_mac, device_mac)
            .build();
        assert_eq!(
            e.frame(0, Side::B, &syn, &mut alerts, &mut out),
            Verdict::Drop
        );
        assert_eq!(out.len(), 1);
        let o = &out[0];
        assert_eq!(o.side, Side::B);
        assert_eq!(
            (&o.frame[0..6], &o.frame[6..12]),
            (&client_mac[..], &device_mac[..])
        );
        let p = packet::parse(&o.frame).unwrap();
        assert_eq!((p.src, p.dst), (DEV, ATT));
        assert!(p.tcp().unwrap().flags.all(TcpFlags::SYN | TcpFlags::ACK));
        // Nothing is forwarded by fake-replies, not even ARP.
        let mut arp = syn.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(
            e.frame(1, Side::A, &arp, &mut alerts, &mut out),
            Verdict::Drop
        );
        let c = e.counters();
        assert_eq!(
            (c.injected, c.dropped, c.non_ipv4, c.forwarded),
            (1, 2, 1, 0)
        );
        e.inject_failed();
        assert_eq!((e.counters().injected, e.counters().send_errors), (0, 1));
        assert_eq!(e.stats(2, false)["injected"], 0);
    }

    #[test]
    fn an_auth_proxy_refusal_goes_both_ways() {
        let mut e = engine("auth-proxy --listen-port 8080");
        let (mut alerts, mut out) = (Vec::new(), Vec::new());
        let req = Craft::tcp(ATT, 40000, DEV, 8080, TcpFlags::PSH | TcpFlags::ACK)
            .payload(b"GET / HTTP/1.1\r\n\r\n")
            .build();
        assert_eq!(
            e.frame(0, Side::B, &req, &mut alerts, &mut out),
            Verdict::Drop
        );
        let sides: Vec<Side> = out.iter().map(|o| o.side).collect();
        assert_eq!(sides, [Side::B, Side::A]);
        // The reset toward the device keeps the request's Ethernet header.
        assert_eq!(&out[1].frame[..12], &req[..12]);
        assert_eq!(e.counters().injected, 2);
        // A tap never sends.
        let mut tap = engine("auth-proxy --listen-port 8080");
        out.clear();
        tap.frame(0, Side::Tap, &req, &mut alerts, &mut out);
        assert!(out.is_empty() && tap.counters().injected == 0);
    }
}
