//! Flows as data: the typed form of one `kalkic` rule-set line ([`FlowMod`]), which
//! [`crate::parse`] reads, [`crate::wire`] encodes and `Display` writes back in the
//! compiler's exact `ovs-ofctl` syntax.

use std::fmt;
use std::net::Ipv4Addr;

/// The largest port number Open vSwitch gives a port (`ofport_request` 1–65279); above
/// it, OpenFlow 1.5 numbers are reserved ports.
pub const MAX_PORT: u32 = 0xff00 - 1;

/// A flow addition: what one line of a rule set asks the switch to install.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowMod {
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    /// `OFPFF_*` bits ([`FlowMod::CHECK_OVERLAP`], ...). Rule sets never set any, as
    /// `ovs-ofctl add-flows` sends none; the runtime may.
    pub flags: u16,
    pub matches: Match,
    pub actions: Actions,
}

impl FlowMod {
    /// `OFPFF_SEND_FLOW_REM`: tell the controller when the flow is removed.
    pub const SEND_FLOW_REM: u16 = 1 << 0;
    /// `OFPFF_CHECK_OVERLAP`: refuse the flow if one of the same priority overlaps it.
    pub const CHECK_OVERLAP: u16 = 1 << 1;
    /// `OFPFF_RESET_COUNTS`.
    pub const RESET_COUNTS: u16 = 1 << 2;

    /// `ovs-ofctl`'s defaults for a line that names neither table, priority nor cookie.
    pub const DEFAULT_PRIORITY: u16 = 0x8000;
}

/// The fields a flow matches on; `None` (or `false`) is a wildcard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Match {
    pub in_port: Option<u32>,
    /// Only frames without an 802.1Q tag: `vlan_tci=0x0000/0x1fff`, on the wire
    /// `OXM_OF_VLAN_VID` = `OFPVID_NONE` (0x0000) without a mask.
    pub untagged: bool,
    pub eth_type: Option<EthType>,
    pub dl_src: Option<Mac>,
    pub nw_src: Option<Ipv4Addr>,
    pub nw_dst: Option<Ipv4Addr>,
    pub arp_spa: Option<Ipv4Addr>,
    pub arp_tpa: Option<Ipv4Addr>,
    pub arp_sha: Option<Mac>,
}

/// The protocol keyword of a match (`ip`, `arp`), i.e. its Ethernet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EthType {
    Ip,
    Arp,
}

impl EthType {
    pub fn value(self) -> u16 {
        match self {
            EthType::Ip => 0x0800,
            EthType::Arp => 0x0806,
        }
    }

    /// The protocol keyword for an Ethernet type, if it is one the rule sets use.
    pub fn from_value(v: u16) -> Option<EthType> {
        match v {
            0x0800 => Some(EthType::Ip),
            0x0806 => Some(EthType::Arp),
            _ => None,
        }
    }
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Where `output` sends a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    /// A switch port, 1–[`MAX_PORT`] in rule sets (the wire takes any 32-bit number).
    Number(u32),
    /// `OFPP_NORMAL`: the switch's ordinary L2 forwarding.
    Normal,
}

/// What happens to a matching packet: copies out of `outputs`, in order (one
/// `APPLY_ACTIONS` instruction), then `goto_table` if any. Both empty: drop.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Actions {
    pub outputs: Vec<Port>,
    pub goto_table: Option<u8>,
}

impl Actions {
    pub fn drop() -> Self {
        Actions::default()
    }

    pub fn is_drop(&self) -> bool {
        self.outputs.is_empty() && self.goto_table.is_none()
    }
}

/// The rule-set syntax: the compiler prints its rule sets through this (one printer), and
/// [`crate::parse`] reads it back, so a parsed line prints back as it was written.
/// `flags` are not part of that syntax and are not shown.
impl fmt::Display for FlowMod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "table={},priority={},cookie={:#x}",
            self.table, self.priority, self.cookie
        )?;
        let m = &self.matches;
        if let Some(p) = m.in_port {
            write!(f, ",in_port={p}")?;
        }
        if m.untagged {
            f.write_str(",vlan_tci=0x0000/0x1fff")?;
        }
        match m.eth_type {
            Some(EthType::Ip) => f.write_str(",ip")?,
            Some(EthType::Arp) => f.write_str(",arp")?,
            None => {}
        }
        if let Some(x) = m.dl_src {
            write!(f, ",dl_src={x}")?;
        }
        if let Some(x) = m.nw_src {
            write!(f, ",nw_src={x}")?;
        }
        if let Some(x) = m.nw_dst {
            write!(f, ",nw_dst={x}")?;
        }
        if let Some(x) = m.arp_spa {
            write!(f, ",arp_spa={x}")?;
        }
        if let Some(x) = m.arp_tpa {
            write!(f, ",arp_tpa={x}")?;
        }
        if let Some(x) = m.arp_sha {
            write!(f, ",arp_sha={x}")?;
        }
        f.write_str(" actions=")?;
        if self.actions.is_drop() {
            return f.write_str("drop");
        }
        let mut sep = "";
        for p in &self.actions.outputs {
            match p {
                Port::Number(n) => write!(f, "{sep}output:{n}")?,
                Port::Normal => write!(f, "{sep}NORMAL")?,
            }
            sep = ",";
        }
        if let Some(t) = self.actions.goto_table {
            write!(f, "{sep}goto_table:{t}")?;
        }
        Ok(())
    }
}
