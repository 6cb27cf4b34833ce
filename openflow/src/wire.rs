//! OpenFlow 1.5 (wire version 0x06) messages, encoded and decoded by hand: the few the
//! client needs. Pure: bytes in, data out. Layouts follow the OpenFlow 1.5.1
//! specification (`ofp_header`, `ofp_flow_mod`, OXM TLVs, `ofp_instruction_*`,
//! `ofp_bundle_ctrl_msg`, `ofp_bundle_add_msg`, `ofp_error_msg`) and were checked byte
//! for byte against what `ovs-ofctl -O OpenFlow15 --bundle add-flows` sends to Open
//! vSwitch 3.1 (see the tests).
//!
//! Flow dumps (multipart `OFPMP_FLOW_DESC`) are decoded back into [`FlowMod`]s, as far
//! as a rule set could have said them.
//!
//! Match fields are written in the order Open vSwitch writes them (in_port, Ethernet,
//! VLAN, L3), which also puts every prerequisite (`ETH_TYPE`) before the fields that
//! need it, as the specification requires.

use crate::flow::{Actions, EthType, FlowMod, Mac, Match, Port};
use std::fmt;
use std::net::Ipv4Addr;

/// The only version spoken: OpenFlow 1.5.
pub const VERSION: u8 = 0x06;
/// `ofp_header`: version, type, length, xid.
pub const HEADER_LEN: usize = 8;

/// `ofp_type` values used here.
pub mod msg_type {
    pub const HELLO: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const ECHO_REQUEST: u8 = 2;
    pub const ECHO_REPLY: u8 = 3;
    pub const FLOW_MOD: u8 = 14;
    pub const MULTIPART_REQUEST: u8 = 18;
    pub const MULTIPART_REPLY: u8 = 19;
    pub const BARRIER_REQUEST: u8 = 20;
    pub const BARRIER_REPLY: u8 = 21;
    pub const BUNDLE_CONTROL: u8 = 33;
    pub const BUNDLE_ADD_MESSAGE: u8 = 34;
}

/// Reserved port numbers (`ofp_port_no`).
pub const OFPP_NORMAL: u32 = 0xffff_fffa;
pub const OFPP_ANY: u32 = 0xffff_ffff;
/// `OFPG_ANY`: no restriction on groups.
pub const OFPG_ANY: u32 = 0xffff_ffff;
/// `OFPTT_ALL`: every table (deletes only).
pub const OFPTT_ALL: u8 = 0xff;
/// `OFP_NO_BUFFER`.
pub const NO_BUFFER: u32 = 0xffff_ffff;

/// `ofp_flow_mod_command`.
const OFPFC_ADD: u8 = 0;
const OFPFC_DELETE: u8 = 3;

/// `OFPHET_VERSIONBITMAP`, the HELLO element listing the versions a side speaks.
const HELLO_VERSIONBITMAP: u16 = 1;

/// OXM class `OFPXMC_OPENFLOW_BASIC` and the fields used.
mod oxm {
    const fn header(field: u8, len: u8) -> u32 {
        (0x8000 << 16) | ((field as u32) << 9) | len as u32
    }
    pub const IN_PORT: u32 = header(0, 4);
    pub const ETH_SRC: u32 = header(4, 6);
    pub const ETH_TYPE: u32 = header(5, 2);
    pub const VLAN_VID: u32 = header(6, 2);
    pub const IPV4_SRC: u32 = header(11, 4);
    pub const IPV4_DST: u32 = header(12, 4);
    pub const ARP_SPA: u32 = header(22, 4);
    pub const ARP_TPA: u32 = header(23, 4);
    pub const ARP_SHA: u32 = header(24, 6);
}

/// `OFPVID_NONE`: `VLAN_VID` of a frame without an 802.1Q tag.
pub const OFPVID_NONE: u16 = 0x0000;

/// `ofp_instruction_type` and `ofp_action_type`.
const OFPIT_GOTO_TABLE: u16 = 1;
const OFPIT_APPLY_ACTIONS: u16 = 4;
const OFPAT_OUTPUT: u16 = 0;
/// `ofp_match.type`: OXM.
const OFPMT_OXM: u16 = 1;

/// `ofp_multipart_type` of a flow dump (`OFPMP_FLOW_DESC`, formerly `OFPMP_FLOW`), and
/// the reply flag saying more parts follow.
const OFPMP_FLOW_DESC: u16 = 1;
const OFPMPF_REPLY_MORE: u16 = 1;

/// `ofp_bundle_ctrl_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleCtrl {
    OpenRequest,
    OpenReply,
    CloseRequest,
    CloseReply,
    CommitRequest,
    CommitReply,
    DiscardRequest,
    DiscardReply,
}

impl BundleCtrl {
    pub fn code(self) -> u16 {
        match self {
            BundleCtrl::OpenRequest => 0,
            BundleCtrl::OpenReply => 1,
            BundleCtrl::CloseRequest => 2,
            BundleCtrl::CloseReply => 3,
            BundleCtrl::CommitRequest => 4,
            BundleCtrl::CommitReply => 5,
            BundleCtrl::DiscardRequest => 6,
            BundleCtrl::DiscardReply => 7,
        }
    }

    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            0 => BundleCtrl::OpenRequest,
            1 => BundleCtrl::OpenReply,
            2 => BundleCtrl::CloseRequest,
            3 => BundleCtrl::CloseReply,
            4 => BundleCtrl::CommitRequest,
            5 => BundleCtrl::CommitReply,
            6 => BundleCtrl::DiscardRequest,
            7 => BundleCtrl::DiscardReply,
            _ => return None,
        })
    }
}

/// `ofp_bundle_flags`: all or nothing, and in order.
pub const OFPBF_ATOMIC: u16 = 1 << 0;
pub const OFPBF_ORDERED: u16 = 1 << 1;

/// A message this side sends.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// HELLO with a version bitmap holding only 1.5.
    Hello,
    EchoRequest(&'a [u8]),
    EchoReply(&'a [u8]),
    Barrier,
    /// FLOW_MOD `OFPFC_ADD`.
    FlowAdd(&'a FlowMod),
    /// FLOW_MOD `OFPFC_DELETE` of every flow, in every table, whose cookie matches
    /// `cookie` under `cookie_mask`.
    FlowDelete {
        cookie: u64,
        cookie_mask: u64,
    },
    BundleControl {
        bundle_id: u32,
        kind: BundleCtrl,
        flags: u16,
    },
    /// MULTIPART_REQUEST `OFPMP_FLOW_DESC` (1.5's flow stats): every flow, in every
    /// table, whose cookie matches `cookie` under `cookie_mask`.
    FlowDump {
        cookie: u64,
        cookie_mask: u64,
    },
    /// BUNDLE_ADD_MESSAGE carrying `message`, encoded with the same xid (the
    /// specification requires the inner xid to equal the outer one).
    BundleAdd {
        bundle_id: u32,
        flags: u16,
        message: &'a Request<'a>,
    },
}

/// Why bytes could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes exceeds OpenFlow's 65535")]
    TooLong(usize),
    #[error("truncated message: {0}")]
    Truncated(&'static str),
    #[error("bad length {length} in a message header")]
    BadLength { length: u16 },
    #[error("unexpected OpenFlow version {0:#04x} (only 0x06, OpenFlow 1.5, is spoken)")]
    Version(u8),
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Well-formed, but beyond what a rule set can say (flow dumps only).
    #[error("unsupported flow: {0}")]
    Unsupported(String),
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn pad8(out: &mut Vec<u8>, from: usize) {
    while !(out.len() - from).is_multiple_of(8) {
        out.push(0);
    }
}

/// Writes `len` as a big-endian u16 at `at`, refusing lengths over 65535.
fn patch_len(out: &mut [u8], at: usize, len: usize) -> Result<(), WireError> {
    let v = u16::try_from(len).map_err(|_| WireError::TooLong(len))?;
    if let Some(slot) = out.get_mut(at..at + 2) {
        slot.copy_from_slice(&v.to_be_bytes());
    }
    Ok(())
}

impl Request<'_> {
    fn msg_type(&self) -> u8 {
        match self {
            Request::Hello => msg_type::HELLO,
            Request::EchoRequest(_) => msg_type::ECHO_REQUEST,
            Request::EchoReply(_) => msg_type::ECHO_REPLY,
            Request::Barrier => msg_type::BARRIER_REQUEST,
            Request::FlowAdd(_) | Request::FlowDelete { .. } => msg_type::FLOW_MOD,
            Request::BundleControl { .. } => msg_type::BUNDLE_CONTROL,
            Request::BundleAdd { .. } => msg_type::BUNDLE_ADD_MESSAGE,
            Request::FlowDump { .. } => msg_type::MULTIPART_REQUEST,
        }
    }

    /// The message with transaction id `xid`.
    pub fn encode(&self, xid: u32) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(xid, &mut out)?;
        Ok(out)
    }

    /// Appends the message to `out` (on error, `out` may hold part of it).
    pub fn encode_into(&self, xid: u32, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        out.push(VERSION);
        out.push(self.msg_type());
        put16(out, 0); // length, patched below
        put32(out, xid);
        match self {
            Request::Hello => {
                // One element: OFPHET_VERSIONBITMAP, length 8, bitmap with bit 6 (1.5).
                put16(out, HELLO_VERSIONBITMAP);
                put16(out, 8);
                put32(out, 1 << VERSION);
            }
            Request::EchoRequest(data) | Request::EchoReply(data) => {
                out.extend_from_slice(data);
            }
            Request::Barrier => {}
            Request::FlowAdd(flow) => encode_flow_add(flow, out),
            Request::FlowDelete {
                cookie,
                cookie_mask,
            } => {
                // As `ovs-ofctl` sends it: priority 0x8000 (ignored by a non-strict
                // delete), any out port and group, an empty match.
                flow_mod_head(
                    out,
                    FlowModHead {
                        cookie: *cookie,
                        cookie_mask: *cookie_mask,
                        table: OFPTT_ALL,
                        command: OFPFC_DELETE,
                        priority: FlowMod::DEFAULT_PRIORITY,
                        flags: 0,
                    },
                );
                let m = out.len();
                put16(out, OFPMT_OXM);
                put16(out, 4);
                pad8(out, m);
            }
            Request::FlowDump {
                cookie,
                cookie_mask,
            } => {
                // ofp_multipart_request: type, flags, pad[4]; ofp_flow_stats_request:
                // table, pad[3], out_port, out_group, pad[4], cookie, mask, match.
                put16(out, OFPMP_FLOW_DESC);
                put16(out, 0);
                put32(out, 0);
                out.push(OFPTT_ALL);
                out.extend_from_slice(&[0; 3]);
                put32(out, OFPP_ANY);
                put32(out, OFPG_ANY);
                put32(out, 0);
                put64(out, *cookie);
                put64(out, *cookie_mask);
                let m = out.len();
                put16(out, OFPMT_OXM);
                put16(out, 4);
                pad8(out, m);
            }
            Request::BundleControl {
                bundle_id,
                kind,
                flags,
            } => {
                put32(out, *bundle_id);
                put16(out, kind.code());
                put16(out, *flags);
            }
            Request::BundleAdd {
                bundle_id,
                flags,
                message,
            } => {
                put32(out, *bundle_id);
                put16(out, 0); // pad
                put16(out, *flags);
                if matches!(message, Request::BundleAdd { .. }) {
                    return Err(WireError::Malformed("bundle add inside a bundle add"));
                }
                message.encode_into(xid, out)?;
            }
        }
        let len = out.len() - start;
        patch_len(out, start + 2, len)
    }
}

struct FlowModHead {
    cookie: u64,
    cookie_mask: u64,
    table: u8,
    command: u8,
    priority: u16,
    flags: u16,
}

/// `ofp_flow_mod` up to its match (40 bytes after the header).
fn flow_mod_head(out: &mut Vec<u8>, h: FlowModHead) {
    put64(out, h.cookie);
    put64(out, h.cookie_mask);
    out.push(h.table);
    out.push(h.command);
    put16(out, 0); // idle_timeout
    put16(out, 0); // hard_timeout
    put16(out, h.priority);
    put32(out, NO_BUFFER);
    put32(out, OFPP_ANY); // out_port
    put32(out, OFPG_ANY); // out_group
    put16(out, h.flags);
    put16(out, 0); // importance
}

fn encode_flow_add(flow: &FlowMod, out: &mut Vec<u8>) {
    flow_mod_head(
        out,
        FlowModHead {
            cookie: flow.cookie,
            cookie_mask: 0,
            table: flow.table,
            command: OFPFC_ADD,
            priority: flow.priority,
            flags: flow.flags,
        },
    );
    encode_match(flow, out);
    encode_instructions(flow, out);
}

fn encode_match(flow: &FlowMod, out: &mut Vec<u8>) {
    let m = &flow.matches;
    let start = out.len();
    put16(out, OFPMT_OXM);
    put16(out, 0); // length without padding, patched below
    if let Some(p) = m.in_port {
        put32(out, oxm::IN_PORT);
        put32(out, p);
    }
    if let Some(mac) = m.dl_src {
        put32(out, oxm::ETH_SRC);
        out.extend_from_slice(&mac.0);
    }
    if let Some(t) = m.eth_type {
        put32(out, oxm::ETH_TYPE);
        put16(out, t.value());
    }
    if m.untagged {
        // `vlan_tci=0x0000/0x1fff` (no tag): OFPVID_NONE without a mask, exactly as Open
        // vSwitch encodes it (a VID and CFI mask of 0x1fff is a full VLAN_VID match).
        put32(out, oxm::VLAN_VID);
        put16(out, OFPVID_NONE);
    }
    let ip4 = |out: &mut Vec<u8>, h: u32, a: std::net::Ipv4Addr| {
        put32(out, h);
        out.extend_from_slice(&a.octets());
    };
    if let Some(a) = m.nw_src {
        ip4(out, oxm::IPV4_SRC, a);
    }
    if let Some(a) = m.nw_dst {
        ip4(out, oxm::IPV4_DST, a);
    }
    if let Some(a) = m.arp_spa {
        ip4(out, oxm::ARP_SPA, a);
    }
    if let Some(a) = m.arp_tpa {
        ip4(out, oxm::ARP_TPA, a);
    }
    if let Some(mac) = m.arp_sha {
        put32(out, oxm::ARP_SHA);
        out.extend_from_slice(&mac.0);
    }
    // At most 4 + 8 + 10 + 6 + 6 + 4 * 8 + 10 bytes: always fits.
    let len = out.len() - start;
    if let Some(slot) = out.get_mut(start + 2..start + 4) {
        slot.copy_from_slice(&(len as u16).to_be_bytes());
    }
    pad8(out, start);
}

fn encode_instructions(flow: &FlowMod, out: &mut Vec<u8>) {
    let a = &flow.actions;
    if !a.outputs.is_empty() {
        let start = out.len();
        put16(out, OFPIT_APPLY_ACTIONS);
        put16(out, 0); // length, patched below
        put32(out, 0); // pad
        for p in &a.outputs {
            // ofp_action_output: type, len 16, port, max_len (only meaningful for the
            // controller; 0 as ovs-ofctl sends), 6 bytes of padding.
            put16(out, OFPAT_OUTPUT);
            put16(out, 16);
            put32(
                out,
                match p {
                    Port::Number(n) => *n,
                    Port::Normal => OFPP_NORMAL,
                },
            );
            put16(out, 0);
            out.extend_from_slice(&[0; 6]);
        }
        // An overlong list makes the whole message too long; `encode_into` refuses it.
        let len = (out.len() - start).min(usize::from(u16::MAX));
        if let Some(slot) = out.get_mut(start + 2..start + 4) {
            slot.copy_from_slice(&(len as u16).to_be_bytes());
        }
    }
    if let Some(t) = a.goto_table {
        put16(out, OFPIT_GOTO_TABLE);
        put16(out, 8);
        out.push(t);
        out.extend_from_slice(&[0; 3]);
    }
}

/// `ofp_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub msg_type: u8,
    pub length: u16,
    pub xid: u32,
}

impl Header {
    /// The header at the start of `bytes`, if there are 8 bytes.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let b = bytes.get(..HEADER_LEN)?;
        Some(Header {
            version: b[0],
            msg_type: b[1],
            length: u16::from_be_bytes([b[2], b[3]]),
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// A message this side receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The peer's HELLO: the header's version and, if sent, its version bitmap.
    Hello {
        version: u8,
        bitmap: Option<u32>,
    },
    Error(OfError),
    EchoRequest(Vec<u8>),
    EchoReply(Vec<u8>),
    BarrierReply,
    BundleControl {
        bundle_id: u32,
        kind: BundleCtrl,
        flags: u16,
    },
    /// One part of a flow dump; `more` when further parts follow with the same xid.
    /// A flow this crate cannot represent (a match field, mask or action no rule set
    /// uses) is an `Err` naming what it holds; the others still decode.
    FlowDump {
        more: bool,
        flows: Vec<Result<FlowMod, WireError>>,
    },
    /// Anything else (port status, ...): read and ignored.
    Other {
        msg_type: u8,
    },
}

/// Decodes one whole message (as framed by its header's length).
pub fn decode(frame: &[u8]) -> Result<(Header, Reply), WireError> {
    let h = Header::parse(frame).ok_or(WireError::Truncated("header"))?;
    if usize::from(h.length) != frame.len() || usize::from(h.length) < HEADER_LEN {
        return Err(WireError::BadLength { length: h.length });
    }
    let body = &frame[HEADER_LEN..];
    if h.msg_type == msg_type::HELLO {
        return Ok((
            h,
            Reply::Hello {
                version: h.version,
                bitmap: hello_bitmap(body)?,
            },
        ));
    }
    if h.version != VERSION {
        return Err(WireError::Version(h.version));
    }
    let mut r = Reader(body);
    let reply = match h.msg_type {
        msg_type::ERROR => Reply::Error(decode_error(&mut r)?),
        msg_type::ECHO_REQUEST => Reply::EchoRequest(body.to_vec()),
        msg_type::ECHO_REPLY => Reply::EchoReply(body.to_vec()),
        msg_type::BARRIER_REPLY => Reply::BarrierReply,
        msg_type::BUNDLE_CONTROL => {
            let bundle_id = r.u32("bundle control")?;
            let code = r.u16("bundle control")?;
            let flags = r.u16("bundle control")?;
            let kind =
                BundleCtrl::from_code(code).ok_or(WireError::Malformed("bundle control type"))?;
            Reply::BundleControl {
                bundle_id,
                kind,
                flags,
            }
        }
        msg_type::MULTIPART_REPLY => {
            let kind = r.u16("multipart reply")?;
            let flags = r.u16("multipart reply")?;
            r.take(4, "multipart reply")?;
            if kind == OFPMP_FLOW_DESC {
                Reply::FlowDump {
                    more: flags & OFPMPF_REPLY_MORE != 0,
                    flows: decode_flow_descs(r.0)?,
                }
            } else {
                Reply::Other {
                    msg_type: h.msg_type,
                }
            }
        }
        other => Reply::Other { msg_type: other },
    };
    Ok((h, reply))
}

/// The version bitmap of a HELLO's elements, if it has one.
fn hello_bitmap(body: &[u8]) -> Result<Option<u32>, WireError> {
    let mut rest = body;
    while rest.len() >= 4 {
        let ty = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if len < 4 || len > rest.len() {
            return Err(WireError::Malformed("hello element"));
        }
        if ty == HELLO_VERSIONBITMAP {
            // The first 32-bit word holds versions 0–31.
            return Ok(rest
                .get(4..8.min(len))
                .filter(|w| w.len() == 4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]])));
        }
        // Elements are padded to 8 bytes.
        let padded = len.div_ceil(8) * 8;
        rest = rest.get(padded..).unwrap_or(&[]);
    }
    Ok(None)
}

/// Whether a peer's HELLO lets both sides speak OpenFlow 1.5 (the specification's
/// negotiation: the highest version in both bitmaps, or else the lower header version).
pub fn negotiates_1_5(version: u8, bitmap: Option<u32>) -> bool {
    match bitmap {
        Some(b) => b & (1 << VERSION) != 0,
        None => version >= VERSION,
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

/// The `ofp_flow_desc` entries of a flow-dump reply. A malformed entry length is an
/// error for the whole message; an entry holding what [`FlowMod`] cannot say is an `Err`
/// in its place.
fn decode_flow_descs(mut body: &[u8]) -> Result<Vec<Result<FlowMod, WireError>>, WireError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let mut r = Reader(body);
        let len = usize::from(r.u16("flow desc")?);
        if len < 24 || len > body.len() {
            return Err(WireError::Malformed("flow desc length"));
        }
        let (entry, rest) = body.split_at(len);
        body = rest;
        out.push(decode_flow_desc(entry));
    }
    Ok(out)
}

/// One `ofp_flow_desc`: length, pad[2], table, pad, priority, idle and hard timeouts,
/// flags, importance, cookie, match, `ofp_stats` (skipped), instructions.
fn decode_flow_desc(entry: &[u8]) -> Result<FlowMod, WireError> {
    let mut r = Reader(entry);
    r.take(4, "flow desc")?;
    let table = r.take(2, "flow desc")?[0];
    let priority = r.u16("flow desc")?;
    let idle = r.u16("flow desc")?;
    let hard = r.u16("flow desc")?;
    let flags = r.u16("flow desc")?;
    r.take(2, "flow desc")?; // importance
    let cookie = r.u64("flow desc")?;
    if idle != 0 || hard != 0 {
        return Err(WireError::Unsupported(format!(
            "cookie={cookie:#x}: timeouts (idle {idle}, hard {hard})"
        )));
    }
    let matches = decode_match(&mut r, cookie)?;
    // ofp_stats: reserved, length, OXS fields; padded to 8.
    r.take(2, "flow stats")?;
    let stats_len = usize::from(r.u16("flow stats")?);
    if stats_len < 4 {
        return Err(WireError::Malformed("flow stats length"));
    }
    r.take(stats_len.div_ceil(8) * 8 - 4, "flow stats")?;
    let actions = decode_instructions(r.0, cookie)?;
    Ok(FlowMod {
        table,
        priority,
        cookie,
        flags,
        matches,
        actions,
    })
}

fn decode_match(r: &mut Reader<'_>, cookie: u64) -> Result<Match, WireError> {
    let unsupported = |what: String| WireError::Unsupported(format!("cookie={cookie:#x}: {what}"));
    if r.u16("match")? != OFPMT_OXM {
        return Err(WireError::Malformed("match type"));
    }
    let len = usize::from(r.u16("match")?);
    if len < 4 {
        return Err(WireError::Malformed("match length"));
    }
    let mut fields = Reader(r.take(len - 4, "match")?);
    r.take((len.div_ceil(8) * 8) - len, "match padding")?;
    let mut m = Match::default();
    while !fields.0.is_empty() {
        let h = fields.u32("OXM header")?;
        let (class, field, masked) = (h >> 16, ((h >> 9) & 0x7f) as u8, h & 0x100 != 0);
        let v = fields.take((h & 0xff) as usize, "OXM value")?;
        let exact = |n: usize| (!masked && v.len() == n).then_some(v);
        let ip = |v: Option<&[u8]>| v.map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
        let mac = |v: Option<&[u8]>| v.map(|b| Mac([b[0], b[1], b[2], b[3], b[4], b[5]]));
        let known = class == 0x8000
            && match field {
                0 => exact(4)
                    .map(|b| m.in_port = Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
                    .is_some(),
                4 => mac(exact(6)).map(|a| m.dl_src = Some(a)).is_some(),
                5 => exact(2)
                    .and_then(|b| EthType::from_value(u16::from_be_bytes([b[0], b[1]])))
                    .map(|t| m.eth_type = Some(t))
                    .is_some(),
                // Untagged: OFPVID_NONE, bare or under the VID+CFI mask 0x1fff.
                6 => {
                    let untagged = v == [0, 0] || v == [0, 0, 0x1f, 0xff];
                    m.untagged |= untagged;
                    untagged
                }
                11 => ip(exact(4)).map(|a| m.nw_src = Some(a)).is_some(),
                12 => ip(exact(4)).map(|a| m.nw_dst = Some(a)).is_some(),
                22 => ip(exact(4)).map(|a| m.arp_spa = Some(a)).is_some(),
                23 => ip(exact(4)).map(|a| m.arp_tpa = Some(a)).is_some(),
                24 => mac(exact(6)).map(|a| m.arp_sha = Some(a)).is_some(),
                _ => false,
            };
        if !known {
            return Err(unsupported(format!("match field {h:#010x}")));
        }
    }
    Ok(m)
}

fn decode_instructions(mut rest: &[u8], cookie: u64) -> Result<Actions, WireError> {
    let unsupported = |what: String| WireError::Unsupported(format!("cookie={cookie:#x}: {what}"));
    let mut a = Actions::default();
    while !rest.is_empty() {
        let mut r = Reader(rest);
        let ty = r.u16("instruction")?;
        let len = usize::from(r.u16("instruction")?);
        if len < 8 || len > rest.len() {
            return Err(WireError::Malformed("instruction length"));
        }
        let body = rest.get(4..len).unwrap_or(&[]);
        rest = rest.get(len..).unwrap_or(&[]);
        match ty {
            OFPIT_GOTO_TABLE => a.goto_table = body.first().copied(),
            OFPIT_APPLY_ACTIONS => {
                let mut acts = body.get(4..).unwrap_or(&[]);
                while !acts.is_empty() {
                    let mut r = Reader(acts);
                    let at = r.u16("action")?;
                    let alen = usize::from(r.u16("action")?);
                    if alen < 8 || alen > acts.len() {
                        return Err(WireError::Malformed("action length"));
                    }
                    if at != OFPAT_OUTPUT || alen != 16 {
                        return Err(unsupported(format!("action type {at}")));
                    }
                    let port = r.u32("output")?;
                    a.outputs.push(if port == OFPP_NORMAL {
                        Port::Normal
                    } else {
                        Port::Number(port)
                    });
                    acts = acts.get(alen..).unwrap_or(&[]);
                }
            }
            other => return Err(unsupported(format!("instruction type {other}"))),
        }
    }
    Ok(a)
}

/// `ofp_error_msg` (or `ofp_error_experimenter_msg` when the type is 0xffff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfError {
    pub err_type: u16,
    pub code: u16,
    /// The experimenter id of an `OFPET_EXPERIMENTER` error.
    pub experimenter: Option<u32>,
    /// At least the first 64 bytes of the failed request (for HELLO_FAILED, text).
    pub data: Vec<u8>,
}

const OFPET_EXPERIMENTER: u16 = 0xffff;

fn decode_error(r: &mut Reader<'_>) -> Result<OfError, WireError> {
    let err_type = r.u16("error")?;
    let code = r.u16("error")?;
    let experimenter = if err_type == OFPET_EXPERIMENTER {
        Some(r.u32("experimenter error")?)
    } else {
        None
    };
    Ok(OfError {
        err_type,
        code,
        experimenter,
        data: r.0.to_vec(),
    })
}

/// Names of the error types (`ofp_error_type`), by number.
const ERROR_TYPES: [&str; 18] = [
    "HELLO_FAILED",
    "BAD_REQUEST",
    "BAD_ACTION",
    "BAD_INSTRUCTION",
    "BAD_MATCH",
    "FLOW_MOD_FAILED",
    "GROUP_MOD_FAILED",
    "PORT_MOD_FAILED",
    "TABLE_MOD_FAILED",
    "QUEUE_OP_FAILED",
    "SWITCH_CONFIG_FAILED",
    "ROLE_REQUEST_FAILED",
    "METER_MOD_FAILED",
    "TABLE_FEATURES_FAILED",
    "BAD_PROPERTY",
    "ASYNC_CONFIG_FAILED",
    "FLOW_MONITOR_FAILED",
    "BUNDLE_FAILED",
];

/// The codes of the error types a flow mod or a bundle can meet: code prefix and
/// names by code.
fn error_codes(err_type: u16) -> Option<(&'static str, &'static [&'static str])> {
    Some(match err_type {
        0 => ("OFPHFC", &["INCOMPATIBLE", "EPERM"]),
        1 => (
            "OFPBRC",
            &[
                "BAD_VERSION",
                "BAD_TYPE",
                "BAD_MULTIPART",
                "BAD_EXPERIMENTER",
                "BAD_EXP_TYPE",
                "EPERM",
                "BAD_LEN",
                "BUFFER_EMPTY",
                "BUFFER_UNKNOWN",
                "BAD_TABLE_ID",
                "IS_SLAVE",
                "BAD_PORT",
                "BAD_PACKET",
                "MULTIPART_BUFFER_OVERFLOW",
            ],
        ),
        2 => (
            "OFPBAC",
            &[
                "BAD_TYPE",
                "BAD_LEN",
                "BAD_EXPERIMENTER",
                "BAD_EXP_TYPE",
                "BAD_OUT_PORT",
                "BAD_ARGUMENT",
                "EPERM",
                "TOO_MANY",
                "BAD_QUEUE",
                "BAD_OUT_GROUP",
                "MATCH_INCONSISTENT",
                "UNSUPPORTED_ORDER",
                "BAD_TAG",
                "BAD_SET_TYPE",
                "BAD_SET_LEN",
                "BAD_SET_ARGUMENT",
            ],
        ),
        3 => (
            "OFPBIC",
            &[
                "UNKNOWN_INST",
                "UNSUP_INST",
                "BAD_TABLE_ID",
                "UNSUP_METADATA",
                "UNSUP_METADATA_MASK",
                "BAD_EXPERIMENTER",
                "BAD_EXP_TYPE",
                "BAD_LEN",
                "EPERM",
                "DUP_INST",
            ],
        ),
        4 => (
            "OFPBMC",
            &[
                "BAD_TYPE",
                "BAD_LEN",
                "BAD_TAG",
                "BAD_DL_ADDR_MASK",
                "BAD_NW_ADDR_MASK",
                "BAD_WILDCARDS",
                "BAD_FIELD",
                "BAD_VALUE",
                "BAD_MASK",
                "BAD_PREREQ",
                "DUP_FIELD",
                "EPERM",
            ],
        ),
        5 => (
            "OFPFMFC",
            &[
                "UNKNOWN",
                "TABLE_FULL",
                "BAD_TABLE_ID",
                "OVERLAP",
                "EPERM",
                "BAD_TIMEOUT",
                "BAD_COMMAND",
                "BAD_FLAGS",
                "CANT_SYNC",
                "BAD_PRIORITY",
                "IS_SYNC",
            ],
        ),
        17 => (
            "OFPBFC",
            &[
                "UNKNOWN",
                "EPERM",
                "BAD_ID",
                "BUNDLE_EXIST",
                "BUNDLE_CLOSED",
                "OUT_OF_BUNDLES",
                "BAD_TYPE",
                "BAD_FLAGS",
                "MSG_BAD_LEN",
                "MSG_BAD_XID",
                "MSG_UNSUP",
                "MSG_CONFLICT",
                "MSG_TOO_MANY",
                "MSG_FAILED",
                "TIMEOUT",
                "BUNDLE_IN_PROGRESS",
                "SCHED_NOT_SUPPORTED",
                "SCHED_FUTURE",
                "SCHED_PAST",
            ],
        ),
        _ => return None,
    })
}

impl OfError {
    /// The specification's name, e.g. `OFPBIC_BAD_TABLE_ID`, for the common errors.
    pub fn name(&self) -> Option<String> {
        let (prefix, names) = error_codes(self.err_type)?;
        let name = names.get(usize::from(self.code))?;
        Some(format!("{prefix}_{name}"))
    }

    /// The error type's name, e.g. `BAD_INSTRUCTION`.
    pub fn type_name(&self) -> Option<&'static str> {
        ERROR_TYPES.get(usize::from(self.err_type)).copied()
    }
}

impl fmt::Display for OfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(exp) = self.experimenter {
            return write!(
                f,
                "experimenter {exp:#010x} error, code {} (type {:#06x})",
                self.code, self.err_type
            );
        }
        match (self.name(), self.type_name()) {
            (Some(name), _) => write!(f, "{name}")?,
            (None, Some(ty)) => write!(f, "OFPET_{ty} code {}", self.code)?,
            (None, None) => write!(f, "unknown error")?,
        }
        write!(f, " (type {}, code {})", self.err_type, self.code)?;
        // HELLO_FAILED carries a human-readable reason.
        if self.err_type == 0 && !self.data.is_empty() {
            write!(
                f,
                ": {}",
                String::from_utf8_lossy(&self.data).trim_end_matches('\0')
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::parse::parse_flow;

    /// Hexadecimal bytes; blanks and `|` separate fields, `#` starts a comment.
    fn hex(s: &str) -> Vec<u8> {
        let s: String = s
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(str::chars)
            .filter(|c| !c.is_whitespace() && *c != '|')
            .collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn add(line: &str, xid: u32) -> Vec<u8> {
        Request::FlowAdd(&parse_flow(line).unwrap())
            .encode(xid)
            .unwrap()
    }

    // Expected bytes are written field by field from the OpenFlow 1.5.1 structures; each
    // equals what `ovs-ofctl -O OpenFlow15 --bundle add-flows` sent to Open vSwitch 3.1
    // for the same line (captured through a logging unix-socket proxy).

    #[test]
    fn hello() {
        // header (version 6, type 0, length 16, xid 1) | OFPHET_VERSIONBITMAP, len 8 |
        // bitmap: bit 6
        let want = hex("06 00 0010 00000001 | 0001 0008 | 00000040");
        assert_eq!(Request::Hello.encode(1).unwrap(), want);
    }

    #[test]
    fn barrier_and_echo() {
        assert_eq!(
            Request::Barrier.encode(0xc).unwrap(),
            hex("06 14 0008 0000000c")
        );
        assert_eq!(
            Request::EchoReply(&[1, 2, 3]).encode(7).unwrap(),
            hex("06 03 000b 00000007 010203")
        );
    }

    #[test]
    fn delete_by_cookie() {
        let want = hex("06 0e 0038 00000006
             0200000000010000 ffffffffffff0000     # cookie, cookie_mask
             ff 03 0000 0000 8000                  # OFPTT_ALL, DELETE, timeouts, priority
             ffffffff ffffffff ffffffff            # buffer_id, out_port, out_group: none/any
             0000 0000                             # flags, importance
             0001 0004 00000000                    # OXM match, empty, padded
             ");
        let got = Request::FlowDelete {
            cookie: 0x0200_0000_0001_0000,
            cookie_mask: 0xffff_ffff_ffff_0000,
        }
        .encode(6)
        .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn add_with_outputs() {
        let want = hex("06 0e 0070 00000007
             0200000000010000 0000000000000000     # cookie, no mask on adds
             01 00 0000 0000 0064                  # table 1, ADD, priority 100
             ffffffff ffffffff ffffffff 0000 0000
             0001 0012                             # OXM match, 18 bytes
             80000004 00000002                     # IN_PORT 2
             80000a02 0800                         # ETH_TYPE IPv4
             000000000000                          # pad to 24
             0004 0028 00000000                    # APPLY_ACTIONS, 40 bytes
             0000 0010 00000006 0000 000000000000  # OUTPUT 6, max_len 0
             0000 0010 00000007 0000 000000000000  # OUTPUT 7
             ");
        let got = add(
            "table=1,priority=100,cookie=0x200000000010000,in_port=2,ip actions=output:6,output:7",
            7,
        );
        assert_eq!(got, want);
    }

    #[test]
    fn add_untagged_arp_with_goto() {
        let want = hex("06 0e 0070 00000008
             0100000000000000 0000000000000000
             00 00 0000 0000 03e8
             ffffffff ffffffff ffffffff 0000 0000
             0001 0034                             # OXM match, 52 bytes
             80000004 00000002                     # IN_PORT 2
             80000806 020000000110                 # ETH_SRC
             80000a02 0806                         # ETH_TYPE ARP
             80000c02 0000                         # VLAN_VID = OFPVID_NONE, no mask
             80002c04 0a00010a                     # ARP_SPA 10.0.1.10
             80003006 020000000110                 # ARP_SHA
             00000000                              # pad to 56
             0001 0008 01 000000                   # GOTO_TABLE 1
             ");
        let got = add(
            "table=0,priority=1000,cookie=0x100000000000000,in_port=2,vlan_tci=0x0000/0x1fff,arp,dl_src=02:00:00:00:01:10,arp_spa=10.0.1.10,arp_sha=02:00:00:00:01:10 actions=goto_table:1",
            8,
        );
        assert_eq!(got, want);
    }

    #[test]
    fn add_normal_and_drop() {
        let want = hex("06 0e 0050 00000009
             0100000000000000 0000000000000000
             00 00 0000 0000 0000
             ffffffff ffffffff ffffffff 0000 0000
             0001 0004 00000000
             0004 0018 00000000
             0000 0010 fffffffa 0000 000000000000  # OUTPUT NORMAL
             ");
        assert_eq!(
            add(
                "table=0,priority=0,cookie=0x100000000000000 actions=NORMAL",
                9
            ),
            want
        );
        // Drop: no instruction at all.
        let want = hex("06 0e 0038 0000000a
             0100000000000000 0000000000000000
             01 00 0000 0000 0000
             ffffffff ffffffff ffffffff 0000 0000
             0001 0004 00000000");
        assert_eq!(
            add(
                "table=1,priority=0,cookie=0x100000000000000 actions=drop",
                0xa
            ),
            want
        );
    }

    #[test]
    fn ipv4_fields() {
        let got = add(
            "table=0,priority=1000,cookie=0x1,in_port=1,vlan_tci=0x0000/0x1fff,ip,dl_src=02:00:00:00:01:10,nw_src=10.0.1.10,nw_dst=10.0.1.11 actions=goto_table:1",
            1,
        );
        let m = &got[48..];
        assert_eq!(
            &m[..4 + 8 + 10 + 6 + 6 + 8 + 8],
            hex(
                "0001 0032 80000004 00000001 80000806 020000000110 80000a02 0800
                 80000c02 0000 80001604 0a00010a 80001804 0a00010b"
            )
        );
    }

    #[test]
    fn bundle_messages() {
        let open = Request::BundleControl {
            bundle_id: 0,
            kind: BundleCtrl::OpenRequest,
            flags: OFPBF_ATOMIC | OFPBF_ORDERED,
        };
        assert_eq!(
            open.encode(0xb).unwrap(),
            hex("06 21 0010 0000000b | 00000000 0000 0003")
        );
        let del = Request::FlowDelete {
            cookie: 0x0200_0000_0001_0000,
            cookie_mask: 0xffff_ffff_ffff_0000,
        };
        let add = Request::BundleAdd {
            bundle_id: 0,
            flags: OFPBF_ATOMIC | OFPBF_ORDERED,
            message: &del,
        };
        let mut want = hex("06 22 0048 00000006 | 00000000 0000 0003");
        want.extend(del.encode(6).unwrap());
        assert_eq!(add.encode(6).unwrap(), want);
        let nested = Request::BundleAdd {
            bundle_id: 0,
            flags: 0,
            message: &add,
        };
        assert!(nested.encode(1).is_err());
    }

    #[test]
    fn decodes_replies() {
        let (h, r) = decode(&hex("06 00 0010 00000745 0001 0008 00000040")).unwrap();
        assert_eq!(h.xid, 0x745);
        assert_eq!(
            r,
            Reply::Hello {
                version: 6,
                bitmap: Some(0x40)
            }
        );
        assert!(negotiates_1_5(6, Some(0x40)));
        assert!(!negotiates_1_5(6, Some(0x12)));
        assert!(negotiates_1_5(6, None));
        assert!(!negotiates_1_5(4, None));
        let (_, r) = decode(&hex("06 21 0010 0000000b 00000000 0005 0000")).unwrap();
        assert_eq!(
            r,
            Reply::BundleControl {
                bundle_id: 0,
                kind: BundleCtrl::CommitReply,
                flags: 0
            }
        );
        assert_eq!(
            decode(&hex("06 15 0008 0000000c")).unwrap().1,
            Reply::BarrierReply
        );
        // An error for a bundled flow mod: OFPBRC_EPERM with the request as data.
        let (h, r) = decode(&hex("06 01 0010 00000008 0001 0005 06220070")).unwrap();
        assert_eq!(h.xid, 8);
        let Reply::Error(e) = r else { panic!("{r:?}") };
        assert_eq!(e.name().as_deref(), Some("OFPBRC_EPERM"));
        assert_eq!(e.to_string(), "OFPBRC_EPERM (type 1, code 5)");
        let e = OfError {
            err_type: 0xffff,
            code: 3,
            experimenter: Some(0x2320),
            data: vec![],
        };
        assert_eq!(
            e.to_string(),
            "experimenter 0x00002320 error, code 3 (type 0xffff)"
        );
    }

    #[test]
    fn refuses_malformed_frames() {
        assert!(decode(&hex("06 15 0009 0000000c")).is_err());
        assert!(decode(&hex("06 15 0004 0000")).is_err());
        assert!(decode(&hex("04 15 0008 0000000c")).is_err());
        assert!(decode(&hex("06 01 000a 00000001 0001")).is_err());
        assert!(decode(&hex("06 21 000c 00000001 00000000")).is_err());
        assert!(decode(&hex("06 00 000c 00000001 0001 0002")).is_err());
    }

    #[test]
    fn flow_dump_request() {
        let want = hex("06 12 0038 00000006
             0001 0000 00000000                    # OFPMP_FLOW_DESC, no flags
             ff 000000 ffffffff ffffffff 00000000  # all tables, any port and group
             0200000000010000 ffffffffffff0000     # cookie, cookie_mask
             0001 0004 00000000                    # empty match
             ");
        let got = Request::FlowDump {
            cookie: 0x0200_0000_0001_0000,
            cookie_mask: 0xffff_ffff_ffff_0000,
        }
        .encode(6)
        .unwrap();
        assert_eq!(got, want);
    }

    /// A reply part Open vSwitch 3.1 sent for that request (first entry of it).
    #[test]
    fn flow_dump_reply() {
        let entry = hex(
            "0088 0000 01 00 0064 0000 0000 0000 0000  # length 136, table 1, priority 100
             0200000000010001
             0001 001a 80000004 00000001 80000a02 0806 80002e04 0a00010a 000000000000
             0000 0034 80020008 0000001826fb3f80   # ofp_stats: duration,
             80020208 00000018 00000000            # idle time,
             80020808 0000000000000000             # packets,
             80020a08 0000000000000000 00000000    # bytes, padding
             0004 0018 00000000 0000 0010 00000002 0000 000000000000
             ",
        );
        let mut msg = hex("06 13 0000 00000006 0001 0001 00000000");
        msg.extend(&entry);
        msg.extend(&entry);
        let len = msg.len() as u16;
        msg[2..4].copy_from_slice(&len.to_be_bytes());
        let (_, r) = decode(&msg).unwrap();
        let Reply::FlowDump { more, flows } = r else {
            panic!("{r:?}")
        };
        assert!(more);
        assert_eq!(flows.len(), 2);
        let f = flows[0].clone().unwrap();
        assert_eq!(
            f.to_string(),
            "table=1,priority=100,cookie=0x200000000010001,in_port=1,arp,arp_tpa=10.0.1.10 actions=output:2"
        );
        // A truncated entry is malformed; a foreign field is reported in its place.
        let mut short = hex("06 13 0000 00000006 0001 0000 00000000");
        short.extend(&entry[..100]);
        let len = short.len() as u16;
        short[2..4].copy_from_slice(&len.to_be_bytes());
        assert!(decode(&short).is_err());
        let mut foreign = entry.clone();
        foreign[28..32].copy_from_slice(&[0x80, 0x00, 0x02, 0x04]); // IN_PHY_PORT
        let mut msg = hex("06 13 0000 00000006 0001 0000 00000000");
        msg.extend(&foreign);
        let len = msg.len() as u16;
        msg[2..4].copy_from_slice(&len.to_be_bytes());
        let Reply::FlowDump { flows, .. } = decode(&msg).unwrap().1 else {
            panic!()
        };
        assert!(
            matches!(&flows[0], Err(WireError::Unsupported(m)) if m.contains("0x80000204")),
            "{flows:?}"
        );
    }

    /// The `ofp_flow_desc` the switch would report for a flow mod: its header fields,
    /// its match and instructions, and an empty `ofp_stats`.
    fn desc_of(flow_mod: &[u8]) -> Vec<u8> {
        let body = &flow_mod[8..];
        let match_len = usize::from(u16::from_be_bytes([body[42], body[43]]));
        let match_end = 40 + match_len.div_ceil(8) * 8;
        let mut d = vec![0, 0, 0, 0, body[16], 0];
        d.extend(&body[22..24]); // priority
        d.extend(&body[18..22]); // timeouts
        d.extend(&body[36..40]); // flags, importance
        d.extend(&body[0..8]); // cookie
        d.extend(&body[40..match_end]);
        d.extend([0, 0, 0, 4, 0, 0, 0, 0]);
        d.extend(&body[match_end..]);
        let len = d.len() as u16;
        d[0..2].copy_from_slice(&len.to_be_bytes());
        d
    }

    proptest::proptest! {
        /// Whatever a rule set can say, read back from a dump, is the same flow.
        #[test]
        fn dumped_flows_decode_as_sent(line in crate::parse::tests::any_line()) {
            let flow = parse_flow(&line).unwrap();
            let d = desc_of(&Request::FlowAdd(&flow).encode(1).unwrap());
            let back = decode_flow_descs(&d).unwrap().pop().unwrap().unwrap();
            proptest::prop_assert_eq!(back, flow);
        }
    }

    #[test]
    fn refuses_overlong_messages() {
        let mut f = parse_flow("actions=output:1").unwrap();
        f.actions.outputs = vec![Port::Number(1); 5000];
        assert_eq!(
            Request::FlowAdd(&f).encode(1),
            Err(WireError::TooLong(48 + 8 + 8 + 5000 * 16))
        );
    }
}
