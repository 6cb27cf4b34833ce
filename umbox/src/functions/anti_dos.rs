//! `anti-dos`: the two limits of Kalki's u1-antidos (iptables `connlimit` and `hashlimit`)
//! as one function, both directions:
//!
//! - at most `--max-conn` open TCP connections per source group (the initiator's address
//!   masked to `--conn-mask` bits); a connection attempt (SYN) beyond that is dropped. A
//!   connection counts from its SYN until a FIN or RST, or until it has been idle for
//!   [`HALF_OPEN_TIMEOUT`] (never answered) or [`IDLE_TIMEOUT`] (answered);
//! - at most `--max-rate` packets per second per `--group-by` key (the flow's 5-tuple, the
//!   source or the destination), a token bucket holding one second's worth; packets
//!   beyond it are dropped.
//!
//! Both raise `dos_attempt` (held off per source). When its connection table is full a
//! new connection is refused (as Linux conntrack does); when the rate table is full and
//! nothing in it has expired, a packet of a new key passes uncounted (`untracked`).

use super::{Dir, Function, Verdict, MAX_TRACKED};
use crate::event::{Alert, AlertKind};
use crate::packet::{Ipv4, TcpFlags, L4};
use crate::window::Ms;
use clap::{Args as ClapArgs, ValueEnum};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    Flow,
    Source,
    Destination,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Open TCP connections allowed per source group.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub max_conn: u32,
    /// Prefix bits that make a source group (32 = per host, 24 = per /24).
    #[arg(long, value_name = "BITS", default_value_t = 32,
          value_parser = clap::value_parser!(u8).range(0..=32))]
    pub conn_mask: u8,
    /// Packets per second allowed per --group-by key.
    #[arg(long, value_name = "N", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_rate: u32,
    /// What the rate is counted per: flow, source or destination.
    #[arg(long, value_name = "KEY", default_value = "flow")]
    pub group_by: GroupBy,
}

/// A connection attempt never answered is forgotten after this long.
pub const HALF_OPEN_TIMEOUT: Ms = 30_000;
/// An answered connection with no packets for this long is forgotten.
pub const IDLE_TIMEOUT: Ms = 300_000;
/// Entries in the connection table and in the rate table.
pub const TABLE_CAP: usize = MAX_TRACKED * 4;

type Endpoint = (Ipv4Addr, u16);

#[derive(Debug, Clone, Copy)]
struct Conn {
    group: u32,
    last: Ms,
    answered: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RateKey {
    Flow(u8, Endpoint, Endpoint),
    Addr(Ipv4Addr),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// In thousandths of a packet.
    milli: u64,
    last: Ms,
}

#[derive(Debug)]
pub struct AntiDos {
    args: Args,
    conns: HashMap<(Endpoint, Endpoint), Conn>,
    groups: HashMap<u32, u32>,
    buckets: HashMap<RateKey, Bucket>,
    conn_dropped: u64,
    rate_dropped: u64,
    untracked: u64,
}

impl AntiDos {
    pub fn new(args: Args) -> AntiDos {
        AntiDos {
            args,
            conns: HashMap::new(),
            groups: HashMap::new(),
            buckets: HashMap::new(),
            conn_dropped: 0,
            rate_dropped: 0,
            untracked: 0,
        }
    }

    fn mask(&self) -> u32 {
        match self.args.conn_mask {
            0 => 0,
            n => u32::MAX << (32 - u32::from(n.min(32))),
        }
    }

    fn capacity(&self) -> u64 {
        u64::from(self.args.max_rate) * 1000
    }

    fn refill(&self, b: &mut Bucket, now: Ms) {
        let add = now
            .saturating_sub(b.last)
            .saturating_mul(u64::from(self.args.max_rate));
        b.milli = b.milli.saturating_add(add).min(self.capacity());
        b.last = b.last.max(now);
    }

    fn rate_key(&self, p: &Ipv4<'_>) -> RateKey {
        match self.args.group_by {
            GroupBy::Flow => {
                let (s, d) = p.ports().unwrap_or((0, 0));
                RateKey::Flow(p.proto, (p.src, s), (p.dst, d))
            }
            GroupBy::Source => RateKey::Addr(p.src),
            GroupBy::Destination => RateKey::Addr(p.dst),
        }
    }

    /// Whether the packet fits its rate; takes its token if so.
    fn within_rate(&mut self, now: Ms, p: &Ipv4<'_>) -> bool {
        let key = self.rate_key(p);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= TABLE_CAP {
            self.sweep_buckets(now);
            if self.buckets.len() >= TABLE_CAP {
                self.untracked += 1;
                return true;
            }
        }
        let full = Bucket {
            milli: self.capacity(),
            last: now,
        };
        let mut b = self.buckets.get(&key).copied().unwrap_or(full);
        self.refill(&mut b, now);
        let ok = b.milli >= 1000;
        if ok {
            b.milli -= 1000;
        }
        self.buckets.insert(key, b);
        ok
    }

    /// Forgets buckets that have refilled: a new bucket starts full anyway.
    fn sweep_buckets(&mut self, now: Ms) {
        let (cap, rate) = (self.capacity(), u64::from(self.args.max_rate));
        self.buckets.retain(|_, b| {
            let refilled = b
                .milli
                .saturating_add(now.saturating_sub(b.last).saturating_mul(rate));
            refilled < cap
        });
    }

    fn forget(&mut self, key: &(Endpoint, Endpoint)) {
        if let Some(c) = self.conns.remove(key) {
            if let Some(n) = self.groups.get_mut(&c.group) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.groups.remove(&c.group);
                }
            }
        }
    }

    /// Tracks TCP connections; `Err(group)` when a new one exceeds its group's limit.
    fn within_conn_limit(&mut self, now: Ms, p: &Ipv4<'_>) -> Result<(), u32> {
        let L4::Tcp(t) = &p.l4 else {
            return Ok(());
        };
        let fwd = ((p.src, t.sport), (p.dst, t.dport));
        let rev = (fwd.1, fwd.0);
        let known = if self.conns.contains_key(&fwd) {
            Some(fwd)
        } else if self.conns.contains_key(&rev) {
            Some(rev)
        } else {
            None
        };
        if t.flags.any(TcpFlags::FIN | TcpFlags::RST) {
            if let Some(k) = known {
                self.forget(&k);
            }
            return Ok(());
        }
        if let Some(k) = known {
            if let Some(c) = self.conns.get_mut(&k) {
                c.last = now;
                c.answered |= k == rev;
            }
            return Ok(());
        }
        if !t.flags.is_syn() {
            return Ok(());
        }
        let group = u32::from(p.src) & self.mask();
        let open = self.groups.get(&group).copied().unwrap_or(0);
        if open >= self.args.max_conn || self.conns.len() >= TABLE_CAP {
            return Err(group);
        }
        self.conns.insert(
            fwd,
            Conn {
                group,
                last: now,
                answered: false,
            },
        );
        *self.groups.entry(group).or_insert(0) += 1;
        Ok(())
    }
}

impl Function for AntiDos {
    fn packet(&mut self, now: Ms, _dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        if !self.within_rate(now, p) {
            self.rate_dropped += 1;
            alerts.push(
                Alert::new(AlertKind::DosAttempt, p.src)
                    .with("limit", "rate")
                    .with("max_rate", self.args.max_rate)
                    .with("target", p.dst.to_string()),
            );
            return Verdict::Drop;
        }
        if let Err(group) = self.within_conn_limit(now, p) {
            self.conn_dropped += 1;
            alerts.push(
                Alert::new(AlertKind::DosAttempt, p.src)
                    .with("limit", "connections")
                    .with("max_conn", self.args.max_conn)
                    .with(
                        "group",
                        format!("{}/{}", Ipv4Addr::from(group), self.args.conn_mask),
                    )
                    .with("target", p.dst.to_string()),
            );
            return Verdict::Drop;
        }
        Verdict::Forward
    }

    fn tick(&mut self, now: Ms) {
        let expired: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let ttl = if c.answered {
                    IDLE_TIMEOUT
                } else {
                    HALF_OPEN_TIMEOUT
                };
                c.last.saturating_add(ttl) <= now
            })
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            self.forget(&k);
        }
        self.sweep_buckets(now);
    }

    fn stats(&mut self, out: &mut Map<String, Value>, _periodic: bool) {
        out.insert("connections".into(), self.conns.len().into());
        out.insert("conn_dropped".into(), self.conn_dropped.into());
        out.insert("rate_dropped".into(), self.rate_dropped.into());
        out.insert("untracked".into(), self.untracked.into());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::craft::Craft;
    use crate::packet::parse;

    const DEV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
    const ATT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

    fn dos(max_conn: u32, conn_mask: u8, max_rate: u32, group_by: GroupBy) -> AntiDos {
        AntiDos::new(Args {
            max_conn,
            conn_mask,
            max_rate,
            group_by,
        })
    }

    fn go(f: &mut AntiDos, now: Ms, fr: &[u8], alerts: &mut Vec<Alert>) -> Verdict {
        f.packet(now, Dir::ToDevice, &parse(fr).unwrap(), alerts)
    }

    fn syn(src: Ipv4Addr, sport: u16) -> Vec<u8> {
        Craft::tcp(src, sport, DEV, 80, TcpFlags::SYN).build()
    }

    #[test]
    fn connection_limit_per_host_and_release_on_fin() {
        let mut f = dos(2, 32, 1_000_000, GroupBy::Flow);
        let mut alerts = Vec::new();
        assert_eq!(go(&mut f, 0, &syn(ATT, 1), &mut alerts), Verdict::Forward);
        assert_eq!(go(&mut f, 0, &syn(ATT, 2), &mut alerts), Verdict::Forward);
        // A retransmitted SYN of a tracked connection is no new connection.
        assert_eq!(go(&mut f, 1, &syn(ATT, 2), &mut alerts), Verdict::Forward);
        assert_eq!(go(&mut f, 2, &syn(ATT, 3), &mut alerts), Verdict::Drop);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].details["limit"], "connections");
        assert_eq!(alerts[0].details["group"], "203.0.113.9/32");
        // Another host has its own limit.
        assert_eq!(
            go(
                &mut f,
                3,
                &syn(Ipv4Addr::new(203, 0, 113, 10), 1),
                &mut alerts
            ),
            Verdict::Forward
        );
        // The device closes connection 1 (FIN from its side): room for one more.
        let fin = Craft::tcp(DEV, 80, ATT, 1, TcpFlags::FIN | TcpFlags::ACK).build();
        let mut alerts2 = Vec::new();
        assert_eq!(
            f.packet(4, Dir::FromDevice, &parse(&fin).unwrap(), &mut alerts2),
            Verdict::Forward
        );
        assert_eq!(go(&mut f, 5, &syn(ATT, 3), &mut alerts), Verdict::Forward);
    }

    #[test]
    fn mask_groups_a_subnet() {
        let mut f = dos(2, 24, 1_000_000, GroupBy::Flow);
        let mut alerts = Vec::new();
        for (i, host) in [1u8, 2, 3].iter().enumerate() {
            let v = go(
                &mut f,
                0,
                &syn(Ipv4Addr::new(198, 51, 100, *host), 1000),
                &mut alerts,
            );
            assert_eq!(
                v,
                if i < 2 {
                    Verdict::Forward
                } else {
                    Verdict::Drop
                }
            );
        }
        assert_eq!(alerts[0].details["group"], "198.51.100.0/24");
    }

    #[test]
    fn half_open_connections_expire() {
        let mut f = dos(1, 32, 1_000_000, GroupBy::Flow);
        let mut alerts = Vec::new();
        assert_eq!(go(&mut f, 0, &syn(ATT, 1), &mut alerts), Verdict::Forward);
        assert_eq!(go(&mut f, 1000, &syn(ATT, 2), &mut alerts), Verdict::Drop);
        f.tick(HALF_OPEN_TIMEOUT - 1);
        assert_eq!(
            go(&mut f, HALF_OPEN_TIMEOUT - 1, &syn(ATT, 2), &mut alerts),
            Verdict::Drop
        );
        f.tick(HALF_OPEN_TIMEOUT);
        assert_eq!(
            go(&mut f, HALF_OPEN_TIMEOUT, &syn(ATT, 2), &mut alerts),
            Verdict::Forward
        );
        // Answered, it lives until idle for IDLE_TIMEOUT.
        let synack = Craft::tcp(DEV, 80, ATT, 2, TcpFlags::SYN | TcpFlags::ACK).build();
        f.packet(
            HALF_OPEN_TIMEOUT + 1,
            Dir::FromDevice,
            &parse(&synack).unwrap(),
            &mut alerts,
        );
        f.tick(HALF_OPEN_TIMEOUT * 3);
        let mut m = Map::new();
        f.stats(&mut m, false);
        assert_eq!(m["connections"], 1);
        f.tick(HALF_OPEN_TIMEOUT + 1 + IDLE_TIMEOUT);
        let mut m = Map::new();
        f.stats(&mut m, false);
        assert_eq!(m["connections"], 0);
    }

    #[test]
    fn rate_limit_token_bucket() {
        // 10 packets per second, one second of burst.
        let mut f = dos(10_000, 32, 10, GroupBy::Source);
        let mut alerts = Vec::new();
        let ping = Craft::icmp_echo(ATT, DEV).build();
        let passed = (0..15)
            .filter(|_| go(&mut f, 0, &ping, &mut alerts) == Verdict::Forward)
            .count();
        assert_eq!(passed, 10);
        assert_eq!(alerts.len(), 5);
        assert_eq!(alerts[0].details["limit"], "rate");
        // 100 ms later one more packet's worth has come back.
        assert_eq!(go(&mut f, 100, &ping, &mut alerts), Verdict::Forward);
        assert_eq!(go(&mut f, 100, &ping, &mut alerts), Verdict::Drop);
        // A steady 10/s passes indefinitely.
        let mut f = dos(10_000, 32, 10, GroupBy::Source);
        for i in 0..100u64 {
            assert_eq!(go(&mut f, i * 100, &ping, &mut alerts), Verdict::Forward);
        }
    }

    #[test]
    fn rate_keys() {
        let ping = |src: Ipv4Addr| Craft::icmp_echo(src, DEV).build();
        let a = Ipv4Addr::new(198, 51, 100, 1);
        let b = Ipv4Addr::new(198, 51, 100, 2);
        // Per source: two sources have a budget each.
        let mut f = dos(10_000, 32, 1, GroupBy::Source);
        let mut al = Vec::new();
        assert_eq!(go(&mut f, 0, &ping(a), &mut al), Verdict::Forward);
        assert_eq!(go(&mut f, 0, &ping(b), &mut al), Verdict::Forward);
        // Per destination: both share the device's budget.
        let mut f = dos(10_000, 32, 1, GroupBy::Destination);
        assert_eq!(go(&mut f, 0, &ping(a), &mut al), Verdict::Forward);
        assert_eq!(go(&mut f, 0, &ping(b), &mut al), Verdict::Drop);
        // Per flow: ports tell flows apart.
        let mut f = dos(10_000, 32, 1, GroupBy::Flow);
        let udp = |sport| Craft::udp(a, sport, DEV, 53).build();
        assert_eq!(go(&mut f, 0, &udp(1), &mut al), Verdict::Forward);
        assert_eq!(go(&mut f, 0, &udp(2), &mut al), Verdict::Forward);
        assert_eq!(go(&mut f, 0, &udp(1), &mut al), Verdict::Drop);
        f.tick(10_000);
        let mut m = Map::new();
        f.stats(&mut m, false);
        assert_eq!(m["rate_dropped"], 1);
    }

    #[test]
    fn syn_flood_from_one_host_is_cut() {
        let mut f = dos(5, 32, 1_000_000, GroupBy::Flow);
        let mut alerts = Vec::new();
        let passed = (0..1000u16)
            .filter(|&p| {
                go(&mut f, u64::from(p), &syn(ATT, 1024 + p), &mut alerts) == Verdict::Forward
            })
            .count();
        assert_eq!(passed, 5);
        assert!(alerts
            .iter()
            .all(|a| a.kind == AlertKind::DosAttempt && a.source == ATT));
    }
}
