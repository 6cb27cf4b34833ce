//! IPv4 packets built from scratch, with valid checksums: the TCP segments functions
//! inject (fake-replies' answers, auth-proxy's `401` and resets) and, through
//! `craft.rs`, the frames the tests send. Also the Ethernet header an injected packet
//! gets, taken from the frame it answers.

use crate::packet::{ETHERTYPE_IPV4, ETHERTYPE_VLAN, PROTO_TCP};
use std::net::Ipv4Addr;

/// Time to live of every packet built here.
pub const TTL: u8 = 64;

/// One TCP segment, as [`Segment::packet`] builds it into an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// [`crate::packet::TcpFlags`] bits.
    pub flags: u8,
    pub window: u16,
    /// TCP options, padded here to a multiple of 4 bytes with end-of-options.
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

impl Segment<'_> {
    /// The IPv4 packet (no Ethernet header) carrying this segment.
    pub fn packet(&self, ident: u16) -> Vec<u8> {
        let opt_len = self.options.len().div_ceil(4) * 4;
        let header = 20 + opt_len.min(40);
        let mut l4 = Vec::with_capacity(header + self.payload.len());
        l4.extend(self.sport.to_be_bytes());
        l4.extend(self.dport.to_be_bytes());
        l4.extend(self.seq.to_be_bytes());
        l4.extend(self.ack.to_be_bytes());
        // Data offset in 32-bit words: at most 15 (60 bytes).
        l4.push(((header / 4) as u8) << 4);
        l4.push(self.flags);
        l4.extend(self.window.to_be_bytes());
        l4.extend([0, 0, 0, 0]); // checksum, urgent pointer
        l4.extend(self.options.iter().take(header - 20));
        l4.resize(header, 0);
        l4.extend(self.payload);
        let sum = l4_checksum(self.src, self.dst, PROTO_TCP, &l4);
        l4[16..18].copy_from_slice(&sum.to_be_bytes());
        ipv4(self.src, self.dst, PROTO_TCP, ident, &l4)
    }
}

/// An IPv4 packet around `l4`, whose own checksum must already be filled in. No options,
/// don't-fragment set, TTL [`TTL`].
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ident: u16, l4: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + l4.len()).unwrap_or(u16::MAX);
    let mut ip = Vec::with_capacity(20 + l4.len());
    ip.push(0x45);
    ip.push(0);
    ip.extend(total.to_be_bytes());
    ip.extend(ident.to_be_bytes());
    ip.extend(0x4000u16.to_be_bytes()); // don't fragment
    ip.push(TTL);
    ip.push(proto);
    ip.extend([0, 0]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend(l4);
    ip
}

/// The TCP or UDP checksum of `l4` (its checksum field zero) with the IPv4 pseudo-header.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let len = u16::try_from(l4.len()).unwrap_or(u16::MAX);
    checksum(&[
        &src.octets(),
        &dst.octets(),
        &[0, proto],
        &len.to_be_bytes(),
        l4,
    ])
}

/// The Internet checksum over the concatenation of `parts` (RFC 1071).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    // An odd byte at the end of one part pairs with the first byte of the next.
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The frame carrying the IPv4 packet `ip`, with the Ethernet header (and 802.1Q tag, if
/// any) of `answered`, the frame it responds to: source and destination MACs swapped
/// when it goes back to `answered`'s sender (`reply`), kept when it goes on toward the
/// other side. `None` if `answered` has no Ethernet header.
pub fn ethernet(answered: &[u8], reply: bool, ip: &[u8]) -> Option<Vec<u8>> {
    let tagged = answered.get(12..14)? == ETHERTYPE_VLAN.to_be_bytes();
    let l2 = if tagged { 18 } else { 14 };
    let head = answered.get(..l2)?;
    let mut f = Vec::with_capacity(l2 + ip.len());
    if reply {
        f.extend(&head[6..12]);
        f.extend(&head[0..6]);
    } else {
        f.extend(&head[0..12]);
    }
    f.extend(&head[12..l2 - 2]);
    f.extend(ETHERTYPE_IPV4.to_be_bytes());
    f.extend(ip);
    Some(f)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::craft::Craft;
    use crate::packet::{parse, TcpFlags};

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn segment_checksums_verify_and_fields_read_back() {
        let s = Segment {
            src: A,
            dst: B,
            sport: 80,
            dport: 40000,
            seq: 0xfedc_ba98,
            ack: 7,
            flags: TcpFlags::SYN | TcpFlags::ACK,
            window: 1000,
            options: &[2, 4, 5, 0xb4, 1], // MSS 1460, then one no-op to be padded
            payload: b"odd",
        };
        let ip = s.packet(9);
        assert_eq!(checksum(&[&ip[..20]]), 0);
        let pseudo = [
            &ip[12..20],
            &[0, 6][..],
            &((ip.len() - 20) as u16).to_be_bytes(),
        ]
        .concat();
        assert_eq!(checksum(&[&pseudo, &ip[20..]]), 0);
        let frame = ethernet(&Craft::icmp_echo(B, A).build(), true, &ip).unwrap();
        let p = parse(&frame).unwrap();
        let t = p.tcp().unwrap();
        assert_eq!((p.src, p.dst, t.sport, t.dport), (A, B, 80, 40000));
        assert_eq!(
            (t.seq, t.ack, t.window, t.payload),
            (0xfedc_ba98, 7, 1000, &b"odd"[..])
        );
        assert_eq!(t.options.len(), 8);
        assert_eq!(t.mss(), Some(1460));
    }

    #[test]
    fn checksum_pairs_bytes_across_parts() {
        let whole = checksum(&[b"abcdefg"]);
        assert_eq!(checksum(&[b"abc", b"defg"]), whole);
        assert_eq!(checksum(&[b"a", b"", b"bcdefg"]), whole);
    }

    #[test]
    fn ethernet_headers_swap_for_replies_and_keep_tags() {
        let src = [2, 0, 0, 0, 0, 0xaa];
        let dst = [2, 0, 0, 0, 0, 0xbb];
        let f = Craft::tcp(A, 1, B, 2, TcpFlags::SYN)
            .macs(src, dst)
            .vlan(5)
            .build();
        let back = ethernet(&f, true, &[0x45]).unwrap();
        assert_eq!((&back[0..6], &back[6..12]), (&src[..], &dst[..]));
        assert_eq!(&back[12..18], &f[12..18]);
        assert_eq!(back[18], 0x45);
        let on = ethernet(&f, false, &[0x45]).unwrap();
        assert_eq!(&on[..18], &f[..18]);
        assert!(ethernet(&f[..10], true, &[]).is_none());
    }
}
