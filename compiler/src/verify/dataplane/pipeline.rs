//! Open vSwitch's pipeline as solver terms, and as a direct interpreter for one packet.
//!
//! Semantics (OpenFlow 1.5 as Open vSwitch runs it): a packet starts in table 0; in each
//! table the matching flow of highest priority wins (flows of equal priority that both
//! match are undefined behaviour: either may win, which is K208); its `output` actions
//! collect ports, `goto_table` continues in a later table, and a table where nothing
//! matches drops. Output to the port the packet came in on is skipped. Header fields are
//! bit-vectors: `in_port` 32 bits, `vlan_tci` 16, `eth_type` 16, `dl_src` and `arp_sha`
//! 48, `nw_src`, `nw_dst`, `arp_spa`, `arp_tpa` 32.

use super::index::{Config, Field, Index, Key, Presence, ETH_ARP, ETH_IP, FIELDS};
use crate::codegen::openflow::{ip, mac, Action, Flow, Match, Proto};
use crate::ir::CmpOp;
use crate::verify::solver::{Model, ModelValue, Query, Sort, Term, VarIx};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A packet as the switch sees it: the header fields flows can match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Packet {
    pub in_port: u32,
    pub vlan_tci: u16,
    pub eth_type: u16,
    pub dl_src: [u8; 6],
    pub nw_src: u32,
    pub nw_dst: u32,
    pub arp_spa: u32,
    pub arp_tpa: u32,
    pub arp_sha: [u8; 6],
}

/// Solver variables of the packet, by index.
const IN_PORT: VarIx = 0;
const VLAN: VarIx = 1;
const ETH: VarIx = 2;
const DL_SRC: VarIx = 3;
const NW_SRC: VarIx = 4;
const NW_DST: VarIx = 5;
const ARP_SPA: VarIx = 6;
const ARP_TPA: VarIx = 7;
const ARP_SHA: VarIx = 8;

const PACKET_VARS: [(&str, u32); 9] = [
    ("in_port", 32),
    ("vlan_tci", 16),
    ("eth_type", 16),
    ("dl_src", 48),
    ("nw_src", 32),
    ("nw_dst", 32),
    ("arp_spa", 32),
    ("arp_tpa", 32),
    ("arp_sha", 48),
];

/// `vlan_tci=0x0000/0x1fff`: no 802.1Q header.
const VLAN_MASK: u64 = 0x1fff;
/// The CFI bit Open vSwitch sets in `vlan_tci` when a tag is present.
const VLAN_PRESENT: u64 = 0x1000;

fn field_var(f: Field) -> (VarIx, u32) {
    match f {
        Field::InPort => (IN_PORT, 32),
        Field::EthType => (ETH, 16),
        Field::DlSrc => (DL_SRC, 48),
        Field::NwSrc => (NW_SRC, 32),
        Field::NwDst => (NW_DST, 32),
        Field::ArpSpa => (ARP_SPA, 32),
        Field::ArpTpa => (ARP_TPA, 32),
        Field::ArpSha => (ARP_SHA, 48),
    }
}

fn bits(width: u32, value: u64) -> Term {
    Term::Bits { width, value }
}

/// `field = value`.
pub(super) fn field_is(f: Field, value: u64) -> Term {
    let (v, w) = field_var(f);
    Term::eq_bits(v, w, value)
}

/// `field ≠ value`.
pub(super) fn field_is_not(f: Field, value: u64) -> Term {
    let (v, w) = field_var(f);
    Term::cmp(CmpOp::Ne, Term::Var(v), bits(w, value))
}

fn untagged() -> Term {
    Term::cmp(
        CmpOp::Eq,
        Term::BitAnd(Box::new(Term::Var(VLAN)), Box::new(bits(16, VLAN_MASK))),
        bits(16, 0),
    )
}

/// The packet matches the key.
pub(super) fn matches_key(k: &Key) -> Term {
    let mut parts: Vec<Term> = FIELDS
        .iter()
        .filter_map(|f| k.get(*f).map(|v| field_is(*f, v)))
        .collect();
    if k.untagged {
        parts.push(untagged());
    }
    Term::and(parts)
}

/// A packet with only the header values a real frame can have: without a tag
/// (`vlan_tci` CFI bit clear) the whole `vlan_tci` is zero.
fn packet_facts() -> Vec<Term> {
    let tag_bit = Term::cmp(
        CmpOp::Eq,
        Term::BitAnd(Box::new(Term::Var(VLAN)), Box::new(bits(16, VLAN_PRESENT))),
        bits(16, 0),
    );
    vec![Term::Or(vec![
        Term::negate(tag_bit),
        Term::eq_bits(VLAN, 16, 0),
    ])]
}

/// A query over one packet and the pipeline restricted to some flows, with a variable
/// saying which flow wins in its table.
pub(super) struct Encoded {
    pub query: Query,
    /// Involved flows (indices into the index's entries) and their `win` variables.
    wins: Vec<(usize, VarIx)>,
    /// Devices whose state is not pinned, with the state a variable stands for.
    states: Vec<((usize, usize), VarIx)>,
    /// How many states each of those devices has.
    state_counts: Vec<(usize, usize)>,
}

impl Encoded {
    /// The packet is a plain packet (see [`packet_facts`]) with no other constraint.
    pub fn packet_only() -> Encoded {
        let mut query = Query::default();
        for (name, w) in PACKET_VARS {
            query.vars.push((name.to_string(), Sort::Bits(w)));
        }
        query.facts = packet_facts();
        Encoded {
            query,
            wins: Vec::new(),
            states: Vec::new(),
            state_counts: Vec::new(),
        }
    }

    /// The pipeline over `involved` flows, with the presence of each as `config` and the
    /// number of states of every device (`states_of`) say.
    pub fn pipeline(
        index: &Index<'_>,
        involved: &[usize],
        config: &Config,
        states_of: &dyn Fn(usize) -> usize,
    ) -> Encoded {
        let mut enc = Encoded::packet_only();
        let q = &mut enc.query;
        let var = |q: &mut Query, name: String| {
            q.vars.push((name, Sort::Bool));
            q.vars.len() - 1
        };
        // Which state each unpinned device is in: one variable per state involved.
        let mut presence: Vec<Term> = Vec::with_capacity(involved.len());
        for &i in involved {
            let t = match config.presence(index.entries[i].set) {
                Presence::Always => Term::Bool(true),
                Presence::Never => Term::Bool(false),
                Presence::Maybe { device, state } => {
                    let v = match enc.states.iter().find(|(k, _)| *k == (device, state)) {
                        Some((_, v)) => *v,
                        None => {
                            let v = var(q, format!("s{}", enc.states.len()));
                            enc.states.push(((device, state), v));
                            v
                        }
                    };
                    Term::Var(v)
                }
            };
            presence.push(t);
        }
        // A device is in one state at a time; when every state of it is involved, in
        // exactly one of them.
        let mut devices: Vec<usize> = enc.states.iter().map(|((d, _), _)| *d).collect();
        devices.sort_unstable();
        devices.dedup();
        for d in devices {
            let vs: Vec<VarIx> = enc
                .states
                .iter()
                .filter(|((dd, _), _)| *dd == d)
                .map(|(_, v)| *v)
                .collect();
            for (n, a) in vs.iter().enumerate() {
                for b in &vs[n + 1..] {
                    q.facts
                        .push(Term::negate(Term::and(vec![Term::Var(*a), Term::Var(*b)])));
                }
            }
            if vs.len() == states_of(d) {
                q.facts
                    .push(Term::Or(vs.iter().map(|v| Term::Var(*v)).collect()));
            }
            enc.state_counts.push((d, states_of(d)));
        }
        // m_i: flow i is installed and matches the packet.
        let mut m = Vec::with_capacity(involved.len());
        for (n, &i) in involved.iter().enumerate() {
            let v = var(q, format!("m{n}"));
            let body = match &index.entries[i].key {
                Some(k) => Term::and(vec![presence[n].clone(), matches_key(k)]),
                None => Term::Bool(false),
            };
            q.facts.push(Term::iff(Term::Var(v), body));
            m.push(v);
        }
        let mut tables: Vec<u8> = involved
            .iter()
            .map(|&i| index.entries[i].flow.table)
            .collect();
        tables.sort_unstable();
        tables.dedup();
        // w_i: flow i wins in its table (reached, matches, nothing above matches).
        let wins: Vec<VarIx> = (0..involved.len())
            .map(|n| var(q, format!("w{n}")))
            .collect();
        for &t in &tables {
            let reach = if t == 0 {
                Term::Bool(true)
            } else {
                Term::Or(
                    involved
                        .iter()
                        .enumerate()
                        .filter(|(_, &i)| {
                            let f = index.entries[i].flow;
                            f.table < t && f.actions.contains(&Action::GotoTable(t))
                        })
                        .map(|(n, _)| Term::Var(wins[n]))
                        .collect(),
                )
            };
            for (n, &i) in involved.iter().enumerate() {
                let f = index.entries[i].flow;
                if f.table != t {
                    continue;
                }
                let above: Vec<Term> = involved
                    .iter()
                    .enumerate()
                    .filter(|(_, &j)| {
                        let g = index.entries[j].flow;
                        g.table == t && g.priority > f.priority
                    })
                    .map(|(k, _)| Term::Var(m[k]))
                    .collect();
                q.facts.push(Term::iff(
                    Term::Var(wins[n]),
                    Term::and(vec![
                        reach.clone(),
                        Term::Var(m[n]),
                        Term::negate(Term::Or(above)),
                    ]),
                ));
            }
        }
        enc.wins = involved.iter().copied().zip(wins).collect();
        enc
    }

    /// The flow wins in its table for this packet.
    pub fn wins(&self, entry: usize) -> Term {
        self.wins
            .iter()
            .find(|(i, _)| *i == entry)
            .map_or(Term::Bool(false), |(_, v)| Term::Var(*v))
    }

    /// What a model says: the packet, the flows that won (by table), and the state each
    /// unpinned device was taken to be in.
    pub fn decode(&self, index: &Index<'_>, model: &Model) -> Witness {
        let get = |name: &str| match model.get(name) {
            Some(ModelValue::Bits(x)) => *x,
            _ => 0,
        };
        let as_u32 = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
        let as_u16 = |x: u64| u16::try_from(x).unwrap_or(u16::MAX);
        let mac_of = |x: u64| {
            let b = x.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        };
        let packet = Packet {
            in_port: as_u32(get("in_port")),
            vlan_tci: as_u16(get("vlan_tci")),
            eth_type: as_u16(get("eth_type")),
            dl_src: mac_of(get("dl_src")),
            nw_src: as_u32(get("nw_src")),
            nw_dst: as_u32(get("nw_dst")),
            arp_spa: as_u32(get("arp_spa")),
            arp_tpa: as_u32(get("arp_tpa")),
            arp_sha: mac_of(get("arp_sha")),
        };
        let truth = |v: VarIx| {
            self.query
                .vars
                .get(v)
                .and_then(|(name, _)| model.get(name))
                .is_some_and(|x| *x == ModelValue::Bool(true))
        };
        let mut path: Vec<usize> = self
            .wins
            .iter()
            .filter(|(_, v)| truth(*v))
            .map(|(i, _)| *i)
            .collect();
        path.sort_by_key(|&i| (index.entries[i].flow.table, i));
        // The state of each unpinned device: the one whose variable is true, or (none
        // being true) a state none of whose flows was involved.
        let mut assumed = Vec::new();
        for &(d, count) in &self.state_counts {
            let mine: Vec<&((usize, usize), VarIx)> =
                self.states.iter().filter(|((dd, _), _)| *dd == d).collect();
            let chosen = mine
                .iter()
                .find(|(_, v)| truth(*v))
                .map(|((_, s), _)| *s)
                .or_else(|| (0..count).find(|s| !mine.iter().any(|((_, t), _)| t == s)));
            if let Some(s) = chosen {
                assumed.push((d, s));
            }
        }
        Witness {
            packet,
            path,
            assumed,
        }
    }
}

/// A packet that shows a finding, the flows it meets, and the states assumed.
#[derive(Debug, Clone)]
pub(super) struct Witness {
    pub packet: Packet,
    pub path: Vec<usize>,
    pub assumed: Vec<(usize, usize)>,
}

impl Packet {
    pub fn is_arp(&self) -> bool {
        u64::from(self.eth_type) == ETH_ARP
    }

    /// The packet in `ovs-appctl ofproto/trace` flow syntax (the fields that apply to its
    /// type only).
    pub fn to_trace(&self) -> String {
        let mut parts = vec![
            format!("in_port={}", self.in_port),
            format!("vlan_tci={:#06x}", self.vlan_tci),
            format!("dl_src={}", mac(self.dl_src)),
        ];
        match u64::from(self.eth_type) {
            ETH_IP => {
                parts.push("ip".into());
                parts.push(format!("nw_src={}", ip(self.nw_src)));
                parts.push(format!("nw_dst={}", ip(self.nw_dst)));
            }
            ETH_ARP => {
                parts.push("arp".into());
                parts.push(format!("arp_spa={}", ip(self.arp_spa)));
                parts.push(format!("arp_tpa={}", ip(self.arp_tpa)));
                parts.push(format!("arp_sha={}", mac(self.arp_sha)));
            }
            other => parts.push(format!("dl_type={other:#06x}")),
        }
        parts.join(",")
    }

    /// The packet as JSON (every field).
    pub fn to_json(&self) -> Value {
        json!({
            "in_port": self.in_port,
            "vlan_tci": format!("{:#06x}", self.vlan_tci),
            "eth_type": format!("{:#06x}", self.eth_type),
            "dl_src": mac(self.dl_src),
            "nw_src": ip(self.nw_src),
            "nw_dst": ip(self.nw_dst),
            "arp_spa": ip(self.arp_spa),
            "arp_tpa": ip(self.arp_tpa),
            "arp_sha": mac(self.arp_sha),
        })
    }
}

/// Whether a packet matches a flow's match: read directly off [`Match`] (not through
/// [`Key`]), so that replaying a witness checks the encoding independently.
pub fn matches(m: &Match, p: &Packet) -> bool {
    let is_ip = u64::from(p.eth_type) == ETH_IP;
    let is_arp = u64::from(p.eth_type) == ETH_ARP;
    let ip_fields = m.nw_src.is_some() || m.nw_dst.is_some();
    let arp_fields = m.arp_spa.is_some() || m.arp_tpa.is_some() || m.arp_sha.is_some();
    m.in_port.is_none_or(|x| x == p.in_port)
        && (!m.untagged || u64::from(p.vlan_tci) & VLAN_MASK == 0)
        && match m.proto {
            Some(Proto::Ip) => is_ip,
            Some(Proto::Arp) => is_arp,
            None => true,
        }
        && (!ip_fields || is_ip)
        && (!arp_fields || is_arp)
        && m.dl_src.is_none_or(|x| x == p.dl_src)
        && m.nw_src.is_none_or(|x| x == p.nw_src)
        && m.nw_dst.is_none_or(|x| x == p.nw_dst)
        && m.arp_spa.is_none_or(|x| x == p.arp_spa)
        && m.arp_tpa.is_none_or(|x| x == p.arp_tpa)
        && m.arp_sha.is_none_or(|x| x == p.arp_sha)
}

/// What one packet does in a switch holding `installed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    /// Ports the packet is sent out of.
    pub outputs: BTreeSet<u32>,
    /// Whether it was handed to `NORMAL` switching.
    pub normal: bool,
    /// The winning flow of each table visited.
    pub path: Vec<Flow>,
}

/// Runs one packet through the pipeline. Among matching flows of equal priority the first
/// in `installed` wins (Open vSwitch leaves that choice undefined).
pub fn run(installed: &[&Flow], p: &Packet) -> Run {
    let mut out = Run::default();
    let mut by_table: BTreeMap<u8, Vec<&Flow>> = BTreeMap::new();
    for f in installed {
        by_table.entry(f.table).or_default().push(f);
    }
    let mut table = 0u8;
    loop {
        let winner = by_table.get(&table).and_then(|fs| {
            fs.iter().filter(|f| matches(&f.matches, p)).fold(
                None::<&&Flow>,
                |best, f| match best {
                    Some(b) if b.priority >= f.priority => Some(b),
                    _ => Some(f),
                },
            )
        });
        let Some(w) = winner else { break };
        out.path.push((*w).clone());
        let mut next = None;
        for a in &w.actions {
            match a {
                Action::Output(port) if *port != p.in_port => {
                    out.outputs.insert(*port);
                }
                Action::Output(_) => {}
                Action::Normal => out.normal = true,
                Action::GotoTable(t) if *t > table => next = Some(*t),
                Action::GotoTable(_) => {}
            }
        }
        match next {
            Some(t) => table = t,
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interpreter_follows_priorities_tables_and_in_port() {
        let f = |table, priority, matches, actions| Flow {
            table,
            priority,
            cookie: 0,
            matches,
            actions,
        };
        let flows = [
            f(
                0,
                10,
                Match {
                    in_port: Some(2),
                    ..Match::default()
                },
                vec![Action::GotoTable(1)],
            ),
            f(
                0,
                20,
                Match {
                    in_port: Some(2),
                    proto: Some(Proto::Arp),
                    ..Match::default()
                },
                vec![],
            ),
            f(
                1,
                5,
                Match::default(),
                vec![Action::Output(1), Action::Output(2)],
            ),
        ];
        let refs: Vec<&Flow> = flows.iter().collect();
        let ip = Packet {
            in_port: 2,
            eth_type: 0x0800,
            ..Packet::default()
        };
        let r = run(&refs, &ip);
        assert_eq!(r.outputs, [1].into(), "output to the in_port is skipped");
        assert_eq!(r.path.len(), 2);
        let arp = Packet {
            eth_type: 0x0806,
            ..ip
        };
        assert!(
            run(&refs, &arp).outputs.is_empty(),
            "the higher priority drops"
        );
        let other = Packet { in_port: 3, ..ip };
        assert!(run(&refs, &other).path.is_empty(), "table miss");
    }
}
