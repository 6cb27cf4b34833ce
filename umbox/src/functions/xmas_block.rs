//! `xmas-block`: drops TCP "Christmas tree" packets (FIN, PSH and URG set) and raises
//! `xmas_scan` (Kalki's u12-snort-block-xmas). Takes no flags.

use super::{Dir, Function, Verdict};
use crate::event::{Alert, AlertKind};
use crate::packet::Ipv4;
use crate::window::Ms;
use clap::Args as ClapArgs;

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {}

#[derive(Debug, Default)]
pub struct XmasBlock;

impl Function for XmasBlock {
    fn packet(&mut self, _now: Ms, _dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        match p.tcp() {
            Some(t) if t.flags.is_xmas() => {
                alerts.push(
                    Alert::new(AlertKind::XmasScan, p.src)
                        .with("target", p.dst.to_string())
                        .with("port", t.dport),
                );
                Verdict::Drop
            }
            _ => Verdict::Forward,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::craft::Craft;
    use crate::packet::{parse, TcpFlags};
    use std::net::Ipv4Addr;

    #[test]
    fn drops_only_xmas() {
        let a = Ipv4Addr::new(203, 0, 113, 1);
        let d = Ipv4Addr::new(10, 0, 0, 10);
        let mut f = XmasBlock;
        let mut alerts = Vec::new();
        let xmas = TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG;
        for (flags, want) in [
            (xmas, Verdict::Drop),
            (0xff, Verdict::Drop),
            (TcpFlags::SYN, Verdict::Forward),
            (TcpFlags::FIN | TcpFlags::ACK, Verdict::Forward),
            (
                TcpFlags::FIN | TcpFlags::PSH | TcpFlags::ACK,
                Verdict::Forward,
            ),
        ] {
            let fr = Craft::tcp(a, 1, d, 80, flags).build();
            assert_eq!(
                f.packet(0, Dir::ToDevice, &parse(&fr).unwrap(), &mut alerts),
                want
            );
        }
        let udp = Craft::udp(a, 1, d, 80).build();
        assert_eq!(
            f.packet(0, Dir::ToDevice, &parse(&udp).unwrap(), &mut alerts),
            Verdict::Forward
        );
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].kind, AlertKind::XmasScan);
        assert_eq!(alerts[0].source, a);
    }
}
