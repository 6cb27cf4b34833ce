//! Builds Ethernet/IPv4 frames with valid checksums (through `forge`): crafted packets
//! for the unit tests and for the integration tests, which inject them into real µmbox
//! containers.

use crate::forge::{self, checksum, Segment};
use crate::packet::{ETHERTYPE_IPV4, ETHERTYPE_VLAN, PROTO_ICMP, PROTO_UDP};
use std::net::Ipv4Addr;

/// Locally administered MACs used unless [`Craft::macs`] says otherwise.
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Debug, Clone)]
enum Kind {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        /// `None`: 1 when ACK is set, else 0.
        ack: Option<u32>,
        options: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
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
                seq: 1,
                ack: None,
                options: Vec::new(),
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
    /// The TCP sequence number (1 unless set).
    pub fn seq(mut self, n: u32) -> Craft {
        if let Kind::Tcp { seq, .. } = &mut self.kind {
            *seq = n;
        }
        self
    }
    /// The TCP acknowledgment number (1 with ACK set, else 0, unless set).
    pub fn ack(mut self, n: u32) -> Craft {
        if let Kind::Tcp { ack, .. } = &mut self.kind {
            *ack = Some(n);
        }
        self
    }
    /// TCP options (padded to whole words).
    pub fn options(mut self, o: &[u8]) -> Craft {
        if let Kind::Tcp { options, .. } = &mut self.kind {
            *options = o.to_vec();
        }
        self
    }
    /// The IPv4 identification field, to tell injected frames apart.
    pub fn ident(mut self, id: u16) -> Craft {
        self.ident = id;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let ip = match &self.kind {
            Kind::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                options,
            } => Segment {
                src: self.src,
                dst: self.dst,
                sport: *sport,
                dport: *dport,
                seq: *seq,
                ack: ack.unwrap_or(if flags & 0x10 != 0 { 1 } else { 0 }),
                flags: *flags,
                window: 64240,
                options,
                payload: &self.payload,
            }
            .packet(self.ident),
            Kind::Udp { sport, dport } => {
                let len = u16::try_from(8 + self.payload.len()).unwrap_or(u16::MAX);
                let mut l4 = Vec::with_capacity(8 + self.payload.len());
                l4.extend(sport.to_be_bytes());
                l4.extend(dport.to_be_bytes());
                l4.extend(len.to_be_bytes());
                l4.extend([0, 0]);
                l4.extend(&self.payload);
                let sum = forge::l4_checksum(self.src, self.dst, PROTO_UDP, &l4);
                l4[6..8].copy_from_slice(&sum.to_be_bytes());
                forge::ipv4(self.src, self.dst, PROTO_UDP, self.ident, &l4)
            }
            Kind::IcmpEcho => {
                let mut l4 = vec![8, 0, 0, 0, 0, 1, 0, 1];
                l4.extend(&self.payload);
                let sum = checksum(&[&l4]);
                l4[2..4].copy_from_slice(&sum.to_be_bytes());
                forge::ipv4(self.src, self.dst, PROTO_ICMP, self.ident, &l4)
            }
        };
        let mut f = Vec::with_capacity(18 + ip.len());
        f.extend(self.dst_mac);
        f.extend(self.src_mac);
        if let Some(id) = self.vlan {
            f.extend(ETHERTYPE_VLAN.to_be_bytes());
            f.extend((id & 0x0fff).to_be_bytes());
        }
        f.extend(ETHERTYPE_IPV4.to_be_bytes());
        f.extend(ip);
        f
    }
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
