//! The syntactic side of translation validation: every flow's match as exact values per
//! header field, the two sound shortcuts (different exact values on a field mean
//! disjoint; a more general, higher-priority flow that is always installed shadows), and
//! the indexes that find the few flows a question can involve.

use super::{ChainPlane, DataPlane};
use crate::codegen::openflow::{EntryPorts, Flow, Match, Proto, COOKIE_DEVICE};
use std::collections::HashMap;

pub(super) const ETH_IP: u64 = 0x0800;
pub(super) const ETH_ARP: u64 = 0x0806;

/// The header fields a flow can match exactly (the VLAN test is a mask and kept apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    InPort,
    EthType,
    DlSrc,
    NwSrc,
    NwDst,
    ArpSpa,
    ArpTpa,
    ArpSha,
}

pub(super) const FIELDS: [Field; 8] = [
    Field::InPort,
    Field::EthType,
    Field::DlSrc,
    Field::NwSrc,
    Field::NwDst,
    Field::ArpSpa,
    Field::ArpTpa,
    Field::ArpSha,
];

impl Field {
    pub fn ix(self) -> usize {
        self as usize
    }
}

fn mac_bits(m: [u8; 6]) -> u64 {
    m.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b))
}

/// A match with its prerequisites made explicit: `nw_*` imply `ip`, `arp_*` imply `arp`,
/// as Open vSwitch requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    pub exact: [Option<u64>; 8],
    pub untagged: bool,
}

impl Key {
    /// `None` when no packet can match (contradictory prerequisites, which Open vSwitch
    /// would refuse to install).
    pub fn of(m: &Match) -> Option<Key> {
        let mut eth = m.proto.map(|p| match p {
            Proto::Ip => ETH_IP,
            Proto::Arp => ETH_ARP,
        });
        let ip_fields = m.nw_src.is_some() || m.nw_dst.is_some();
        let arp_fields = m.arp_spa.is_some() || m.arp_tpa.is_some() || m.arp_sha.is_some();
        if ip_fields {
            if arp_fields || eth == Some(ETH_ARP) {
                return None;
            }
            eth = Some(ETH_IP);
        }
        if arp_fields {
            if eth == Some(ETH_IP) {
                return None;
            }
            eth = Some(ETH_ARP);
        }
        let mut exact = [None; 8];
        exact[Field::InPort.ix()] = m.in_port.map(u64::from);
        exact[Field::EthType.ix()] = eth;
        exact[Field::DlSrc.ix()] = m.dl_src.map(mac_bits);
        exact[Field::NwSrc.ix()] = m.nw_src.map(u64::from);
        exact[Field::NwDst.ix()] = m.nw_dst.map(u64::from);
        exact[Field::ArpSpa.ix()] = m.arp_spa.map(u64::from);
        exact[Field::ArpTpa.ix()] = m.arp_tpa.map(u64::from);
        exact[Field::ArpSha.ix()] = m.arp_sha.map(mac_bits);
        Some(Key {
            exact,
            untagged: m.untagged,
        })
    }

    pub fn get(&self, f: Field) -> Option<u64> {
        self.exact[f.ix()]
    }

    /// The key with `in_port` fixed (the context of a question); `None` if it conflicts.
    pub fn at_port(&self, port: u32) -> Option<Key> {
        let mut k = *self;
        match k.get(Field::InPort) {
            Some(p) if p != u64::from(port) => None,
            _ => {
                k.exact[Field::InPort.ix()] = Some(u64::from(port));
                Some(k)
            }
        }
    }

    /// No packet matches both: some field has a different exact value in each. (The VLAN
    /// test never separates two matches: both can hold for an untagged frame.)
    pub fn disjoint(&self, other: &Key) -> bool {
        self.exact
            .iter()
            .zip(&other.exact)
            .any(|(a, b)| matches!((a, b), (Some(x), Some(y)) if x != y))
    }

    /// Every packet that matches `other` matches `self`.
    pub fn covers(&self, other: &Key) -> bool {
        let fields = self
            .exact
            .iter()
            .zip(&other.exact)
            .all(|(a, b)| a.is_none() || a == b);
        fields && (!self.untagged || other.untagged)
    }
}

/// Which rule set a flow belongs to: the base set (always installed) or one device's set
/// for one state (installed while the device is in that state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Set {
    Base,
    State { device: usize, state: usize },
}

/// Which states are assumed installed: a few devices pinned to one state each; every
/// other device may be in any of its states.
#[derive(Debug, Clone, Default)]
pub(super) struct Config {
    pub fixed: Vec<(usize, usize)>,
}

impl Config {
    pub fn pinned(device: usize, state: usize) -> Config {
        Config {
            fixed: vec![(device, state)],
        }
    }
    /// Adds a pin; `false` if the device is already pinned to another state.
    pub fn pin(&mut self, device: usize, state: usize) -> bool {
        match self.fixed.iter().find(|(d, _)| *d == device) {
            Some((_, s)) => *s == state,
            None => {
                self.fixed.push((device, state));
                true
            }
        }
    }
    pub fn presence(&self, set: Set) -> Presence {
        match set {
            Set::Base => Presence::Always,
            Set::State { device, state } => match self.fixed.iter().find(|(d, _)| *d == device) {
                Some((_, s)) if *s == state => Presence::Always,
                Some(_) => Presence::Never,
                None => Presence::Maybe { device, state },
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    Always,
    Never,
    Maybe { device: usize, state: usize },
}

/// One emitted flow, where it comes from, and its key (`None`: matches nothing).
pub(super) struct Entry<'a> {
    pub flow: &'a Flow,
    pub set: Set,
    pub key: Option<Key>,
}

/// What a port is, as far as packet ownership goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    Device(usize),
    /// An interface of a µmbox of this device in this state.
    Umbox(usize, usize),
}

impl Owner {
    pub fn device(self) -> usize {
        match self {
            Owner::Device(d) | Owner::Umbox(d, _) => d,
        }
    }
}

/// Every flow of the bundle, with the indexes the checks use.
pub(super) struct Index<'a> {
    pub entries: Vec<Entry<'a>>,
    /// Flows that can match (key not empty), by exact `in_port`.
    pub by_in_port: HashMap<u32, Vec<usize>>,
    /// Flows that can match, with `in_port` wildcarded.
    pub any_in_port: Vec<usize>,
    /// Flows with an `output:P` action, by `P`.
    pub by_output: HashMap<u32, Vec<usize>>,
    pub owners: HashMap<u32, Owner>,
    pub by_ip: HashMap<u32, Vec<usize>>,
    /// A port number that no flow and no port of the site uses: stands for every such
    /// port (they all see the same flows, those with `in_port` wildcarded).
    pub unused_port: u32,
}

impl<'a> Index<'a> {
    pub fn new(plane: &'a DataPlane) -> Index<'a> {
        let mut entries: Vec<Entry<'a>> = plane
            .base
            .iter()
            .map(|flow| Entry {
                flow,
                set: Set::Base,
                key: Key::of(&flow.matches),
            })
            .collect();
        for (d, dev) in plane.devices.iter().enumerate() {
            for (s, st) in dev.states.iter().enumerate() {
                entries.extend(st.flows.iter().map(|flow| Entry {
                    flow,
                    set: Set::State {
                        device: d,
                        state: s,
                    },
                    key: Key::of(&flow.matches),
                }));
            }
        }
        let mut by_in_port: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut any_in_port = Vec::new();
        let mut by_output: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut used: std::collections::HashSet<u32> = std::collections::HashSet::new();
        used.insert(plane.uplink);
        for (i, e) in entries.iter().enumerate() {
            for a in &e.flow.actions {
                if let crate::codegen::openflow::Action::Output(p) = a {
                    used.insert(*p);
                    let list = by_output.entry(*p).or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                }
            }
            if let Some(p) = e.flow.matches.in_port {
                used.insert(p);
            }
            let Some(k) = e.key else { continue };
            match k.get(Field::InPort) {
                Some(p) => by_in_port
                    .entry(u32::try_from(p).unwrap_or(u32::MAX))
                    .or_default()
                    .push(i),
                None => any_in_port.push(i),
            }
        }
        let mut owners = HashMap::new();
        let mut by_ip: HashMap<u32, Vec<usize>> = HashMap::new();
        for (d, dev) in plane.devices.iter().enumerate() {
            owners.insert(dev.port, Owner::Device(d));
            used.insert(dev.port);
            by_ip.entry(dev.ip).or_default().push(d);
            for (s, st) in dev.states.iter().enumerate() {
                for p in st.chain.ports() {
                    owners.insert(p, Owner::Umbox(d, s));
                    used.insert(p);
                }
            }
        }
        let unused_port = (2..=u32::MAX).find(|p| !used.contains(p)).unwrap_or(0);
        Index {
            entries,
            by_in_port,
            any_in_port,
            by_output,
            owners,
            by_ip,
            unused_port,
        }
    }

    /// Flows that can match a packet entering on `port`, in index order.
    pub fn at_port(&self, port: u32) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .by_in_port
            .get(&port)
            .map(|v| v.to_vec())
            .unwrap_or_default();
        out.extend_from_slice(&self.any_in_port);
        out.sort_unstable();
        out
    }

    /// The flows a question about flow `f` winning, for packets entering on `port`, can
    /// involve: those that may be installed, can match such a packet, are not disjoint
    /// from `f` and sit in `f`'s table or an earlier one. A flow disjoint from `f` matches
    /// no packet `f` matches, so it changes nothing on the packets that matter.
    pub fn involved(&self, f: usize, port: u32, config: &Config) -> Vec<usize> {
        let Some(fk) = self.entries[f].key.and_then(|k| k.at_port(port)) else {
            return Vec::new();
        };
        let table = self.entries[f].flow.table;
        self.at_port(port)
            .into_iter()
            .filter(|&g| {
                let e = &self.entries[g];
                e.flow.table <= table
                    && config.presence(e.set) != Presence::Never
                    && e.key.is_some_and(|k| !k.disjoint(&fk))
            })
            .collect()
    }

    /// Whether `f` can never win for packets entering on `port`: an always-installed flow
    /// of higher priority in the same table matches every packet `f` matches.
    pub fn shadowed(&self, f: usize, port: u32, config: &Config) -> bool {
        let Some(fk) = self.entries[f].key.and_then(|k| k.at_port(port)) else {
            return true;
        };
        let ef = &self.entries[f];
        self.at_port(port).into_iter().any(|g| {
            let e = &self.entries[g];
            e.flow.table == ef.flow.table
                && e.flow.priority > ef.flow.priority
                && config.presence(e.set) == Presence::Always
                && e.key
                    .and_then(|k| k.at_port(port))
                    .is_some_and(|k| k.covers(&fk))
        })
    }

    /// The device a device cookie names, if it names one of the site's devices.
    pub fn cookie_device(&self, cookie: u64, devices: usize) -> Option<usize> {
        if cookie >> 56 != COOKIE_DEVICE {
            return None;
        }
        let n = (cookie >> 16) & 0xff_ffff_ffff;
        let d = usize::try_from(n).ok()?.checked_sub(1)?;
        (d < devices).then_some(d)
    }
}

impl ChainPlane {
    /// Every µmbox interface of the chain.
    pub fn ports(&self) -> Vec<u32> {
        match self {
            ChainPlane::Drop | ChainPlane::Pass => Vec::new(),
            ChainPlane::Entries(es) => es
                .iter()
                .flat_map(|e| match e {
                    EntryPorts::Inline { a, b } => vec![*a, *b],
                    EntryPorts::Tap { p } => vec![*p],
                })
                .collect(),
        }
    }
}

/// Pairs of flows (by index into `items`' entries) that no field separates: the only
/// pairs that can overlap. Splits on one field at a time: flows with different exact
/// values never pair; a wildcard pairs with every value.
pub(super) fn candidate_pairs(index: &Index<'_>, items: &[usize], out: &mut Vec<(usize, usize)>) {
    within(index, items, 0, out);
}

fn key_at(index: &Index<'_>, i: usize, field: usize) -> Option<u64> {
    index.entries[i]
        .key
        .and_then(|k| FIELDS.get(field).and_then(|f| k.get(*f)))
}

fn split(index: &Index<'_>, items: &[usize], field: usize) -> (Vec<Vec<usize>>, Vec<usize>) {
    let mut groups: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut order: Vec<u64> = Vec::new();
    let mut wild = Vec::new();
    for &i in items {
        match key_at(index, i, field) {
            Some(v) => {
                let g = groups.entry(v).or_default();
                if g.is_empty() {
                    order.push(v);
                }
                g.push(i);
            }
            None => wild.push(i),
        }
    }
    let groups = order
        .into_iter()
        .filter_map(|v| groups.remove(&v))
        .collect();
    (groups, wild)
}

fn within(index: &Index<'_>, items: &[usize], field: usize, out: &mut Vec<(usize, usize)>) {
    if items.len() < 2 {
        return;
    }
    if field == FIELDS.len() {
        for (n, &a) in items.iter().enumerate() {
            for &b in &items[n + 1..] {
                out.push((a, b));
            }
        }
        return;
    }
    let (groups, wild) = split(index, items, field);
    for g in &groups {
        within(index, g, field + 1, out);
        across(index, &wild, g, field + 1, out);
    }
    within(index, &wild, field + 1, out);
}

fn across(
    index: &Index<'_>,
    xs: &[usize],
    ys: &[usize],
    field: usize,
    out: &mut Vec<(usize, usize)>,
) {
    if xs.is_empty() || ys.is_empty() {
        return;
    }
    if field == FIELDS.len() {
        for &a in xs {
            for &b in ys {
                out.push((a.min(b), a.max(b)));
            }
        }
        return;
    }
    let (xg, xw) = split(index, xs, field);
    let (yg, yw) = split(index, ys, field);
    let mut ys_by_value: HashMap<u64, &Vec<usize>> = HashMap::new();
    for g in &yg {
        if let Some(v) = g.first().and_then(|&i| key_at(index, i, field)) {
            ys_by_value.insert(v, g);
        }
    }
    let mut x_valued = Vec::new();
    for g in &xg {
        x_valued.extend_from_slice(g);
        if let Some(y) = g
            .first()
            .and_then(|&i| key_at(index, i, field))
            .and_then(|v| ys_by_value.get(&v))
        {
            across(index, g, y, field + 1, out);
        }
    }
    // A wildcard on either side meets everything on the other.
    across(index, &xw, ys, field + 1, out);
    across(index, &x_valued, &yw, field + 1, out);
}
