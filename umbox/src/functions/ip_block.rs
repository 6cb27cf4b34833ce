//! `ip-block`: drops every packet from or to a listed address or block and raises
//! `blocked_ip` (Kalki's u13-block-ip).

use super::{Dir, Function, Verdict};
use crate::event::{Alert, AlertKind};
use crate::packet::Ipv4;
use crate::window::Ms;
use clap::Args as ClapArgs;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 address block (`203.0.113.0/24`; a bare address is a /32). Host bits given
/// past the prefix are cleared, as iptables does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: u32,
    len: u8,
}

impl Cidr {
    fn mask(self) -> u32 {
        match self.len {
            0 => 0,
            n => u32::MAX << (32 - u32::from(n)),
        }
    }
    pub fn contains(self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == self.net
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => {
                let len: u8 = l
                    .parse()
                    .ok()
                    .filter(|&n| n <= 32)
                    .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to 32"))?;
                (a, len)
            }
            None => (s, 32),
        };
        let ip: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IPv4 address or block (a.b.c.d or a.b.c.d/n)"))?;
        let mut c = Cidr { net: 0, len };
        c.net = u32::from(ip) & c.mask();
        Ok(c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.net), self.len)
    }
}

/// A comma-separated list of blocks; the empty string is the empty list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CidrList(pub Vec<Cidr>);

pub fn parse_cidr_list(s: &str) -> Result<CidrList, String> {
    if s.trim().is_empty() {
        return Ok(CidrList::default());
    }
    s.split(',')
        .map(|item| match item.trim() {
            "" => Err(format!("`{s}` has an empty entry")),
            t => t.parse(),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(CidrList)
}

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Comma-separated IPv4 addresses or blocks, e.g. 192.168.50.178,203.0.113.0/24.
    #[arg(long, value_name = "LIST", value_parser = parse_cidr_list)]
    pub addresses: CidrList,
}

#[derive(Debug)]
pub struct IpBlock {
    list: Vec<Cidr>,
}

impl IpBlock {
    pub fn new(args: Args) -> IpBlock {
        IpBlock {
            list: args.addresses.0,
        }
    }

    fn matching(&self, a: Ipv4Addr) -> Option<Cidr> {
        self.list.iter().copied().find(|c| c.contains(a))
    }
}

impl Function for IpBlock {
    fn packet(&mut self, _now: Ms, _dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        let hit = self
            .matching(p.src)
            .map(|c| (p.src, p.dst, "from", c))
            .or_else(|| self.matching(p.dst).map(|c| (p.dst, p.src, "to", c)));
        match hit {
            Some((blocked, peer, direction, rule)) => {
                alerts.push(
                    Alert::new(AlertKind::BlockedIp, blocked)
                        .with("direction", direction)
                        .with("peer", peer.to_string())
                        .with("rule", rule.to_string()),
                );
                Verdict::Drop
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
    use crate::packet::parse;

    #[test]
    fn parses_lists_strictly() {
        let l = parse_cidr_list("192.168.50.178, 203.0.113.7/24,0.0.0.0/0").unwrap();
        let shown: Vec<String> = l.0.iter().map(|c| c.to_string()).collect();
        assert_eq!(shown, ["192.168.50.178/32", "203.0.113.0/24", "0.0.0.0/0"]);
        assert!(parse_cidr_list("").unwrap().0.is_empty());
        for bad in [
            "10.0.0.1,",
            "10.0.0.256",
            "10.0.0.0/33",
            "host.example",
            "10.0.0.0/x",
        ] {
            assert!(parse_cidr_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn drops_both_directions_and_alerts() {
        let blocked = Ipv4Addr::new(203, 0, 113, 50);
        let dev = Ipv4Addr::new(10, 0, 0, 10);
        let other = Ipv4Addr::new(203, 0, 114, 1);
        let mut f = IpBlock::new(Args {
            addresses: parse_cidr_list("203.0.113.0/24").unwrap(),
        });
        let mut alerts = Vec::new();
        let mut v = |fr: Vec<u8>, dir| f.packet(0, dir, &parse(&fr).unwrap(), &mut alerts);
        assert_eq!(
            v(Craft::icmp_echo(blocked, dev).build(), Dir::ToDevice),
            Verdict::Drop
        );
        assert_eq!(
            v(Craft::icmp_echo(dev, blocked).build(), Dir::FromDevice),
            Verdict::Drop
        );
        assert_eq!(
            v(Craft::icmp_echo(other, dev).build(), Dir::ToDevice),
            Verdict::Forward
        );
        assert_eq!(
            v(Craft::icmp_echo(dev, other).build(), Dir::FromDevice),
            Verdict::Forward
        );
        assert_eq!(alerts.len(), 2);
        assert!(alerts
            .iter()
            .all(|a| a.kind == AlertKind::BlockedIp && a.source == blocked));
        assert_eq!(alerts[0].details["direction"], "from");
        assert_eq!(alerts[1].details["direction"], "to");
    }
}
