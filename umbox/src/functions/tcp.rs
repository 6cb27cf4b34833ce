//! TCP for functions that answer in the device's stead (fake-replies, auth-proxy):
//! sequence-number arithmetic and the segments they inject, built from the segment they
//! respond to.

use super::{Inject, Toward};
use crate::forge::Segment;
use crate::packet::{Ipv4, Tcp, TcpFlags};

/// The receive window the injected segments advertise (no window scaling is offered).
pub const WINDOW: u16 = 65_535;
/// The segment size used toward a client that announced none (RFC 9293 default).
pub const DEFAULT_MSS: u16 = 536;
/// The largest segment sent, whatever the client announced (Ethernet MTU 1500).
pub const MAX_MSS: u16 = 1460;

/// Whether sequence number `a` comes after `b` (modulo 2³², RFC 9293 §3.4).
pub fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The later of two sequence numbers.
pub fn later(a: u32, b: u32) -> u32 {
    if after(a, b) {
        a
    } else {
        b
    }
}

/// A segment from `p`'s receiver back to its sender, toward [`Toward::Sender`].
pub fn back(p: &Ipv4<'_>, t: &Tcp<'_>, seq: u32, ack: u32, flags: u8, data: &[u8]) -> Inject {
    Inject {
        toward: Toward::Sender,
        packet: Segment {
            src: p.dst,
            dst: p.src,
            sport: t.dport,
            dport: t.sport,
            seq,
            ack,
            flags,
            window: WINDOW,
            options: &[],
            payload: data,
        }
        .packet(0),
    }
}

/// A segment in `p`'s name (same addresses and ports), sent on to its receiver,
/// toward [`Toward::Onward`].
pub fn onward(p: &Ipv4<'_>, t: &Tcp<'_>, seq: u32, ack: u32, flags: u8) -> Inject {
    Inject {
        toward: Toward::Onward,
        packet: Segment {
            src: p.src,
            dst: p.dst,
            sport: t.sport,
            dport: t.dport,
            seq,
            ack,
            flags,
            window: 0,
            options: &[],
            payload: &[],
        }
        .packet(0),
    }
}

/// The SYN-ACK answering the SYN `t`, with our initial sequence number `isn` and a
/// maximum segment size option.
pub fn syn_ack(p: &Ipv4<'_>, t: &Tcp<'_>, isn: u32) -> Inject {
    let mss = MAX_MSS.to_be_bytes();
    Inject {
        toward: Toward::Sender,
        packet: Segment {
            src: p.dst,
            dst: p.src,
            sport: t.dport,
            dport: t.sport,
            seq: isn,
            ack: t.seq.wrapping_add(1),
            flags: TcpFlags::SYN | TcpFlags::ACK,
            window: WINDOW,
            options: &[2, 4, mss[0], mss[1]],
            payload: &[],
        }
        .packet(0),
    }
}

/// Where injected data starts in the stream back to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// The sequence number of the first byte.
    pub seq: u32,
    /// What every segment acknowledges.
    pub ack: u32,
    /// The largest payload per segment.
    pub mss: u16,
}

/// `data` back to `p`'s sender from `at`, in segments of at most `at.mss` bytes; the last
/// one also carries FIN when `fin`.
pub fn data_back(p: &Ipv4<'_>, t: &Tcp<'_>, at: At, data: &[u8], fin: bool, out: &mut Vec<Inject>) {
    let At { seq, ack, mss } = at;
    let mss = usize::from(mss.clamp(1, MAX_MSS));
    let mut at = 0;
    loop {
        let end = (at + mss).min(data.len());
        let last = end == data.len();
        let mut flags = TcpFlags::ACK;
        if end > at {
            flags |= TcpFlags::PSH;
        }
        if last && fin {
            flags |= TcpFlags::FIN;
        }
        let s = seq.wrapping_add(at as u32);
        out.push(back(p, t, s, ack, flags, &data[at..end]));
        if last {
            break;
        }
        at = end;
    }
}

/// What a stack without the connection answers to `t` (RFC 9293 §3.10.7.1): nothing to
/// a reset, else a reset that the sender accepts.
pub fn reset_for(p: &Ipv4<'_>, t: &Tcp<'_>) -> Option<Inject> {
    if t.flags.any(TcpFlags::RST) {
        None
    } else if t.flags.any(TcpFlags::ACK) {
        Some(back(p, t, t.ack, 0, TcpFlags::RST, &[]))
    } else {
        let ack = t.seq.wrapping_add(t.seg_len());
        Some(back(p, t, 0, ack, TcpFlags::RST | TcpFlags::ACK, &[]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::craft::Craft;
    use crate::forge;
    use crate::packet::parse;
    use std::net::Ipv4Addr;

    const C: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
    const D: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 30);

    /// An injected segment as the network sees it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Seen {
        pub toward: Toward,
        pub src: Ipv4Addr,
        pub sport: u16,
        pub dst: Ipv4Addr,
        pub dport: u16,
        pub seq: u32,
        pub ack: u32,
        pub flags: u8,
        pub data: Vec<u8>,
    }

    /// Reads an injected segment back, framed as the engine frames it.
    pub(crate) fn seen(i: &Inject, answered: &[u8]) -> Seen {
        let f = forge::ethernet(answered, i.toward == Toward::Sender, &i.packet).unwrap();
        let p = parse(&f).unwrap();
        let t = *p.tcp().unwrap();
        Seen {
            toward: i.toward,
            src: p.src,
            sport: t.sport,
            dst: p.dst,
            dport: t.dport,
            seq: t.seq,
            ack: t.ack,
            flags: t.flags.0,
            data: t.payload.to_vec(),
        }
    }

    #[test]
    fn sequence_arithmetic_wraps() {
        assert!(after(1, 0) && after(5, u32::MAX - 5) && !after(u32::MAX, 3));
        assert_eq!(later(u32::MAX, 2), 2);
        assert_eq!(later(7, 7), 7);
    }

    #[test]
    fn answers_are_addressed_back_and_split() {
        let f = Craft::tcp(C, 40000, D, 80, TcpFlags::PSH | TcpFlags::ACK)
            .seq(100)
            .ack(500)
            .payload(b"GET / HTTP/1.1\r\n\r\n")
            .build();
        let p = parse(&f).unwrap();
        let t = p.tcp().unwrap();
        let mut out = Vec::new();
        let at = |seq| At {
            seq,
            ack: 118,
            mss: 400,
        };
        data_back(&p, t, at(500), &[b'x'; 1000], true, &mut out);
        let segs: Vec<Seen> = out.iter().map(|i| seen(i, &f)).collect();
        assert_eq!(
            segs.iter()
                .map(|s| (s.seq, s.data.len()))
                .collect::<Vec<_>>(),
            [(500, 400), (900, 400), (1300, 200)]
        );
        assert!(segs
            .iter()
            .all(|s| (s.src, s.sport, s.dst, s.dport, s.ack) == (D, 80, C, 40000, 118)));
        assert_eq!(segs[0].flags, TcpFlags::ACK | TcpFlags::PSH);
        assert_eq!(segs[2].flags, TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN);
        // No data: one bare FIN.
        out.clear();
        data_back(&p, t, at(9), b"", true, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(seen(&out[0], &f).flags, TcpFlags::ACK | TcpFlags::FIN);
        // A reset on toward the device keeps the client's addresses.
        let r = seen(&onward(&p, t, 100, 500, TcpFlags::RST), &f);
        assert_eq!(r.toward, Toward::Onward);
        assert_eq!((r.src, r.dst, r.dport, r.seq), (C, D, 80, 100));
        // The SYN-ACK announces our segment size.
        let syn = Craft::tcp(C, 40000, D, 80, TcpFlags::SYN).seq(41).build();
        let p = parse(&syn).unwrap();
        let sa = syn_ack(&p, p.tcp().unwrap(), 9000);
        let f2 = forge::ethernet(&syn, true, &sa.packet).unwrap();
        let q = parse(&f2).unwrap();
        let t2 = q.tcp().unwrap();
        assert_eq!((t2.seq, t2.ack, t2.mss()), (9000, 42, Some(MAX_MSS)));
    }

    #[test]
    fn resets_for_unknown_connections() {
        let ack = Craft::tcp(C, 1, D, 80, TcpFlags::ACK)
            .seq(10)
            .ack(77)
            .build();
        let p = parse(&ack).unwrap();
        let r = seen(&reset_for(&p, p.tcp().unwrap()).unwrap(), &ack);
        assert_eq!((r.seq, r.ack, r.flags), (77, 0, TcpFlags::RST));
        let syn = Craft::tcp(C, 1, D, 80, TcpFlags::SYN).seq(10).build();
        let p = parse(&syn).unwrap();
        let r = seen(&reset_for(&p, p.tcp().unwrap()).unwrap(), &syn);
        assert_eq!(
            (r.seq, r.ack, r.flags),
            (0, 11, TcpFlags::RST | TcpFlags::ACK)
        );
        let rst = Craft::tcp(C, 1, D, 80, TcpFlags::RST).build();
        let p = parse(&rst).unwrap();
        assert!(reset_for(&p, p.tcp().unwrap()).is_none());
    }
}
