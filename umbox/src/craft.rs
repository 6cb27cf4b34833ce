//! Builds Ethernet/IPv4 frames with valid checksums: crafted packets for the unit tests
//! and for the integration tests, which inject them into real µmbox containers.

use crate::packet::{ETHERTYPE_IPV4, ETHERTYPE_VLAN, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use std::net::Ipv4Addr;

/// Locally administered MACs used unless [`Craft::macs`] says otherwise.
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Debug, Clone)]
enum Kind {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    IcmpEcho,
}

/// A frame to build: `Craft::tcp(src, sport, dst, dport, flags).payload(..).build()`.
#[derive(Debug, Clone)]
pub struct Craft {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: Kind,
    payload: Vec<u8>,
    vlan: Option<u16>,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    ident: u16,
}

impl Craft {
    fn new(src: Ipv4Addr, dst: Ipv4Addr, kind: Kind) -> Craft {
        Craft {
            src,
            dst,
            kind,
            payload: Vec::new(),
            vlan: None,
            src_mac: SRC_MAC,
            dst_mac: DST_MAC,
            ident: 1,
        }
    }
    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Craft {
        Craft::new(
            src,
            dst,
            Kind::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }
    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Craft {
        Craft::new(src, dst, Kind::Udp { sport, dport })
    }
    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Craft {
        Craft::new(src, dst, Kind::IcmpEcho)
    }
    pub fn payload(mut self, p: &[u8]) -> Craft {
        self.payload = p.to_vec();
        self
    }
    pub fn vlan(mut self, id: u16) -> Craft {
        self.vlan = Some(id);
        self
    }
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Craft {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }
    /// The IPv4 identification field, to tell injected frames apart.
    pub fn ident(mut self, id: u16) -> Craft {
        self.ident = id;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let (proto, mut l4) = match self.kind {
            Kind::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = Vec::with_capacity(20);
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(1u32.to_be_bytes()); // seq
                let ack: u32 = if flags & 0x10 != 0 { 1 } else { 0 };
                h.extend(ack.to_be_bytes());
                h.push(5 << 4);
                h.push(flags);
                h.extend(64240u16.to_be_bytes()); // window
                h.extend([0, 0, 0, 0]); // checksum, urgent pointer
                (PROTO_TCP, h)
            }
            Kind::Udp { sport, dport } => {
                let len = u16::try_from(8 + self.payload.len()).unwrap_or(u16::MAX);
                let mut h = Vec::with_capacity(8);
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(len.to_be_bytes());
                h.extend([0, 0]);
                (PROTO_UDP, h)
            }
            Kind::IcmpEcho => (PROTO_ICMP, vec![8, 0, 0, 0, 0, 1, 0, 1]),
        };
        l4.extend(&self.payload);
        let csum_at = match proto {
            PROTO_TCP => 16,
            PROTO_UDP => 6,
            _ => 2,
        };
        let sum = if proto == PROTO_ICMP {
            checksum(&[&l4])
        } else {
            let len = u16::try_from(l4.len()).unwrap_or(u16::MAX);
            let pseudo = [
                &self.src.octets()[..],
                &self.dst.octets()[..],
                &[0, proto],
                &len.to_be_bytes(),
            ]
            .concat();
            checksum(&[&pseudo, &l4])
        };
        l4[csum_at..csum_at + 2].copy_from_slice(&sum.to_be_bytes());

        let total = u16::try_from(20 + l4.len()).unwrap_or(u16::MAX);
        let mut ip = Vec::with_capacity(20);
        ip.push(0x45);
        ip.push(0);
        ip.extend(total.to_be_bytes());
        ip.extend(self.ident.to_be_bytes());
        ip.extend(0x4000u16.to_be_bytes()); // don't fragment
        ip.push(64);
        ip.push(proto);
        ip.extend([0, 0]);
        ip.extend(self.src.octets());
        ip.extend(self.dst.octets());
        let sum = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());

        let mut f = Vec::with_capacity(18 + ip.len() + l4.len());
        f.extend(self.dst_mac);
        f.extend(self.src_mac);
        if let Some(id) = self.vlan {
            f.extend(ETHERTYPE_VLAN.to_be_bytes());
            f.extend((id & 0x0fff).to_be_bytes());
        }
        f.extend(ETHERTYPE_IPV4.to_be_bytes());
        f.extend(ip);
        f.extend(l4);
        f
    }
}

/// The Internet checksum over the concatenation of `parts`.
fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let f = Craft::tcp(
            Ipv4Addr::new(192, 0, 2, 1),
            40000,
            Ipv4Addr::new(192, 0, 2, 2),
            80,
            0x02,
        )
        .payload(b"odd")
        .build();
        assert_eq!(checksum(&[&f[14..34]]), 0);
        let tcp = &f[34..];
        let len = (tcp.len() as u16).to_be_bytes();
        let pseudo = [&f[26..34], &[0, 6][..], &len[..]].concat();
        assert_eq!(checksum(&[&pseudo, tcp]), 0);
    }
}
