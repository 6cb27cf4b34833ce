//! Ethernet, IPv4, TCP and UDP headers read from a frame, without copying.
//!
//! Only what the functions look at is decoded. A frame that is not IPv4 (ARP, IPv6, ...)
//! has no [`Ipv4`] view and is forwarded as it is by every function. An IPv4 header that
//! is present but whose transport header is cut short, or a non-first fragment, still
//! gives addresses ([`L4::Truncated`], [`L4::Fragment`]), so address-based functions
//! (ip-block) see it.

use std::net::Ipv4Addr;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// TCP header flags (the low byte of the flags field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;

    /// Whether every flag in `mask` is set.
    pub fn all(self, mask: u8) -> bool {
        self.0 & mask == mask
    }
    pub fn any(self, mask: u8) -> bool {
        self.0 & mask != 0
    }
    /// A connection attempt: SYN without ACK (and without RST).
    pub fn is_syn(self) -> bool {
        self.all(Self::SYN) && !self.any(Self::ACK | Self::RST)
    }
    /// FIN, PSH and URG all set: the "Christmas tree" probe.
    pub fn is_xmas(self) -> bool {
        self.all(Self::FIN | Self::PSH | Self::URG)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp<'a> {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    /// The options between the fixed header and the payload.
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

impl Tcp<'_> {
    /// How much sequence space the segment takes: its payload, plus one for SYN and one
    /// for FIN.
    pub fn seg_len(&self) -> u32 {
        let flags =
            u32::from(self.flags.any(TcpFlags::SYN)) + u32::from(self.flags.any(TcpFlags::FIN));
        (self.payload.len() as u32).wrapping_add(flags)
    }

    /// The maximum segment size option, if the segment carries one (SYNs do).
    pub fn mss(&self) -> Option<u16> {
        let mut o = self.options;
        loop {
            match *o.first()? {
                0 => return None,
                1 => o = &o[1..],
                kind => {
                    let len = usize::from(*o.get(1)?);
                    if len < 2 || len > o.len() {
                        return None;
                    }
                    if kind == 2 && len == 4 {
                        return Some(u16::from_be_bytes([o[2], o[3]]));
                    }
                    o = &o[len..];
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp<'a> {
    pub sport: u16,
    pub dport: u16,
    pub payload: &'a [u8],
}

/// The transport part of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4<'a> {
    Tcp(Tcp<'a>),
    Udp(Udp<'a>),
    Icmp {
        ty: u8,
        code: u8,
    },
    /// A fragment other than the first: no transport header.
    Fragment,
    /// The transport header is cut short or malformed.
    Truncated,
    /// Another IP protocol.
    Other,
}

/// An IPv4 packet inside a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// Part of a fragmented packet: more fragments follow, or this is not the first.
    pub fragmented: bool,
    /// Length of the whole frame, headers included (what byte counters count).
    pub frame_len: usize,
    pub l4: L4<'a>,
}

impl<'a> Ipv4<'a> {
    pub fn tcp(&self) -> Option<&Tcp<'a>> {
        match &self.l4 {
            L4::Tcp(t) => Some(t),
            _ => None,
        }
    }
    pub fn udp(&self) -> Option<&Udp<'a>> {
        match &self.l4 {
            L4::Udp(u) => Some(u),
            _ => None,
        }
    }
    /// Source and destination ports for TCP and UDP.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match &self.l4 {
            L4::Tcp(t) => Some((t.sport, t.dport)),
            L4::Udp(u) => Some((u.sport, u.dport)),
            _ => None,
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// A 32-bit field of a header already known to be long enough.
fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn addr(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s = b.get(at..at + 4)?;
    Some(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

/// The IPv4 packet in an Ethernet frame (untagged or with one 802.1Q tag), if any.
pub fn parse(frame: &[u8]) -> Option<Ipv4<'_>> {
    let mut off = 12;
    let mut ethertype = be16(frame, off)?;
    off += 2;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, off + 2)?;
        off += 4;
    }
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(off..)?;
    let first = *ip.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 || ip.len() < ihl {
        return None;
    }
    let total = usize::from(be16(ip, 2)?);
    // Ethernet pads short frames; a total length past the frame means a cut packet.
    let end = total.clamp(ihl, ip.len());
    let frag = be16(ip, 6)?;
    let proto = ip[9];
    let src = addr(ip, 12)?;
    let dst = addr(ip, 16)?;
    let body = &ip[ihl..end];
    let l4 = if frag & 0x1fff != 0 {
        L4::Fragment
    } else if total < ihl || total > ip.len() {
        L4::Truncated
    } else {
        transport(proto, body)
    };
    Some(Ipv4 {
        src,
        dst,
        proto,
        fragmented: frag & 0x3fff != 0,
        frame_len: frame.len(),
        l4,
    })
}

fn transport(proto: u8, body: &[u8]) -> L4<'_> {
    match proto {
        PROTO_TCP => {
            let (Some(sport), Some(dport), Some(&off), Some(&flags)) =
                (be16(body, 0), be16(body, 2), body.get(12), body.get(13))
            else {
                return L4::Truncated;
            };
            let data = usize::from(off >> 4) * 4;
            if data < 20 || data > body.len() {
                return L4::Truncated;
            }
            L4::Tcp(Tcp {
                sport,
                dport,
                seq: be32(body, 4),
                ack: be32(body, 8),
                flags: TcpFlags(flags),
                window: be16(body, 14).unwrap_or(0),
                options: &body[20..data],
                payload: &body[data..],
            })
        }
        PROTO_UDP => match (be16(body, 0), be16(body, 2), body.get(8..)) {
            (Some(sport), Some(dport), Some(payload)) => L4::Udp(Udp {
                sport,
                dport,
                payload,
            }),
            _ => L4::Truncated,
        },
        PROTO_ICMP => match (body.first(), body.get(1)) {
            (Some(&ty), Some(&code)) => L4::Icmp { ty, code },
            _ => L4::Truncated,
        },
        _ => L4::Other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::craft::Craft;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn tcp_fields_and_payload() {
        let f = Craft::tcp(A, 1234, B, 80, TcpFlags::PSH | TcpFlags::ACK)
            .payload(b"GET / HTTP/1.1\r\n")
            .build();
        let p = parse(&f).unwrap();
        assert_eq!((p.src, p.dst, p.proto), (A, B, PROTO_TCP));
        let t = p.tcp().unwrap();
        assert_eq!((t.sport, t.dport), (1234, 80));
        assert!(t.flags.all(TcpFlags::ACK) && !t.flags.is_syn());
        assert_eq!(t.payload, b"GET / HTTP/1.1\r\n");
        assert_eq!((t.seq, t.ack, t.window, t.seg_len()), (1, 1, 64240, 16));
        assert_eq!(t.mss(), None);
        assert_eq!(p.frame_len, f.len());
    }

    #[test]
    fn udp_and_icmp() {
        let uf = Craft::udp(A, 5353, B, 1900).payload(b"M-SEARCH").build();
        let u = parse(&uf).unwrap();
        assert_eq!(u.ports(), Some((5353, 1900)));
        assert_eq!(u.udp().unwrap().payload, b"M-SEARCH");
        let icmp = Craft::icmp_echo(A, B).build();
        let i = parse(&icmp).unwrap();
        assert_eq!(i.l4, L4::Icmp { ty: 8, code: 0 });
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut f = Craft::tcp(A, 1, B, 2, TcpFlags::SYN).build();
        assert_eq!(f.len(), 54);
        f.resize(60, 0); // minimum Ethernet frame
        assert_eq!(parse(&f).unwrap().tcp().unwrap().payload, b"");
    }

    #[test]
    fn vlan_tagged_frame() {
        let f = Craft::tcp(A, 1, B, 2, TcpFlags::SYN).vlan(42).build();
        assert_eq!(parse(&f).unwrap().tcp().unwrap().dport, 2);
    }

    #[test]
    fn non_ipv4_and_garbage() {
        let mut arp = Craft::tcp(A, 1, B, 2, 0).build();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(parse(&arp).is_none());
        assert!(parse(&[]).is_none());
        assert!(parse(&[0u8; 13]).is_none());
        // IHL below 5 words.
        let mut bad = Craft::tcp(A, 1, B, 2, 0).build();
        bad[14] = 0x44;
        assert!(parse(&bad).is_none());
    }

    #[test]
    fn cut_transport_still_has_addresses() {
        let f = Craft::tcp(A, 1, B, 2, TcpFlags::SYN).build();
        // Cut inside the TCP header: the IP total length now points past the frame.
        let p = parse(&f[..40]).unwrap();
        assert_eq!((p.src, p.dst, p.l4), (A, B, L4::Truncated));
        let mut frag = Craft::tcp(A, 1, B, 2, TcpFlags::SYN).build();
        frag[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());
        let p = parse(&frag).unwrap();
        assert_eq!((p.l4, p.fragmented), (L4::Fragment, true));
        // A first fragment (more fragments, offset 0) still has its transport header.
        let mut first = Craft::tcp(A, 1, B, 2, TcpFlags::SYN).build();
        first[14 + 6..14 + 8].copy_from_slice(&0x2000u16.to_be_bytes());
        let p = parse(&first).unwrap();
        assert!(p.fragmented && p.tcp().is_some());
        assert!(!parse(&f).unwrap().fragmented);
    }

    #[test]
    fn every_prefix_of_a_frame_is_safe() {
        let f = Craft::tcp(A, 1, B, 2, TcpFlags::SYN)
            .payload(b"hello")
            .vlan(7)
            .build();
        for n in 0..=f.len() {
            let _ = parse(&f[..n]);
        }
    }

    #[test]
    fn options_and_sequence_space() {
        let opts = [1, 1, 4, 2, 2, 4, 0x05, 0x3c, 0]; // NOP NOP SACK-permitted MSS 1340 EOL
        let f = Craft::tcp(A, 1, B, 2, TcpFlags::SYN)
            .seq(0xffff_fff0)
            .options(&opts)
            .build();
        let p = parse(&f).unwrap();
        let t = p.tcp().unwrap();
        assert_eq!((t.seq, t.mss(), t.seg_len()), (0xffff_fff0, Some(1340), 1));
        let fin = Craft::tcp(A, 1, B, 2, TcpFlags::FIN | TcpFlags::ACK)
            .payload(b"ab")
            .build();
        assert_eq!(parse(&fin).unwrap().tcp().unwrap().seg_len(), 3);
        // A malformed option list has no MSS and does not loop.
        for bad in [&[2u8, 0][..], &[2, 9, 1, 1], &[3, 3, 1]] {
            let f = Craft::tcp(A, 1, B, 2, TcpFlags::SYN).options(bad).build();
            assert_eq!(parse(&f).unwrap().tcp().unwrap().mss(), None);
        }
    }

    #[test]
    fn flag_predicates() {
        assert!(TcpFlags(TcpFlags::SYN).is_syn());
        assert!(!TcpFlags(TcpFlags::SYN | TcpFlags::ACK).is_syn());
        assert!(TcpFlags(TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG).is_xmas());
        assert!(TcpFlags(0xff).is_xmas());
        assert!(!TcpFlags(TcpFlags::FIN | TcpFlags::PSH | TcpFlags::ACK).is_xmas());
    }
}
