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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Owner {
    Device(usize),
    /// An interface of a µmbox instance of this device, which the chains of these states
    /// use (ascending, never empty). A device's states share an instance, ports and all,
    /// when their chains hold the same µmbox with the same arguments
    /// (`codegen::openflow::allocate`), so one port can belong to several states.
    Umbox {
        device: usize,
        states: Vec<usize>,
    },
}

impl Owner {
    pub fn device(&self) -> usize {
        match self {
            Owner::Device(d) | Owner::Umbox { device: d, .. } => *d,
        }
    }
}

/// Entries grouped by a port number: `(port, entry)` sorted, looked up by binary search
/// (no allocation per port; a site has hundreds of thousands of them).
#[derive(Debug, Default)]
pub(super) struct ByPort(Vec<(u32, usize)>);

impl ByPort {
    fn new(mut pairs: Vec<(u32, usize)>) -> ByPort {
        pairs.sort_unstable();
        pairs.dedup();
        ByPort(pairs)
    }
    /// The entries filed under `port`, in index order.
    pub fn get(&self, port: u32) -> impl Iterator<Item = usize> + '_ {
        let start = self.0.partition_point(|(p, _)| *p < port);
        self.0[start..]
            .iter()
            .take_while(move |(p, _)| *p == port)
            .map(|(_, i)| *i)
    }
    /// Every port with an entry, ascending.
    pub fn ports(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.0.iter().map(|(p, _)| *p).collect();
        v.dedup();
        v
    }
}

/// Every flow of the bundle, with the indexes the checks use.
pub(super) struct Index<'a> {
    pub entries: Vec<Entry<'a>>,
    /// Flows that can match (key not empty), by exact `in_port`.
    pub by_in_port: ByPort,
    /// Flows that can match, with `in_port` wildcarded.
    pub any_in_port: Vec<usize>,
    /// Flows with an `output:P` action, by `P`.
    pub by_output: ByPort,
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
        let mut in_ports = Vec::with_capacity(entries.len());
        let mut any_in_port = Vec::new();
        let mut outputs = Vec::with_capacity(entries.len());
        let mut highest = plane.uplink;
        for (i, e) in entries.iter().enumerate() {
            for a in &e.flow.actions {
                if let crate::codegen::openflow::Action::Output(p) = a {
                    highest = highest.max(*p);
                    outputs.push((*p, i));
                }
            }
            if let Some(p) = e.flow.matches.in_port {
                highest = highest.max(p);
            }
            let Some(k) = e.key else { continue };
            match k.get(Field::InPort) {
                Some(p) => in_ports.push((u32::try_from(p).unwrap_or(u32::MAX), i)),
                None => any_in_port.push(i),
            }
        }
        let mut owners = HashMap::with_capacity(plane.devices.len() * 8);
        let mut by_ip: HashMap<u32, Vec<usize>> = HashMap::with_capacity(plane.devices.len());
        for (d, dev) in plane.devices.iter().enumerate() {
            owners.insert(dev.port, Owner::Device(d));
            highest = highest.max(dev.port);
            by_ip.entry(dev.ip).or_default().push(d);
            for (s, st) in dev.states.iter().enumerate() {
                for p in st.chain.ports() {
                    highest = highest.max(p);
                    match owners.get_mut(&p) {
                        // The same instance in another state of this device: one more
                        // state in which the port is this device's.
                        Some(Owner::Umbox { device, states }) if *device == d => {
                            if states.last() != Some(&s) {
                                states.push(s);
                            }
                        }
                        _ => {
                            owners.insert(
                                p,
                                Owner::Umbox {
                                    device: d,
                                    states: vec![s],
                                },
                            );
                        }
                    }
                }
            }
        }
        // Above every port in use; should the whole range be taken, the lowest free one.
        let unused_port = highest.checked_add(1).unwrap_or_else(|| {
            let used: std::collections::HashSet<u32> = in_ports
                .iter()
                .chain(&outputs)
                .map(|(p, _)| *p)
                .chain(owners.keys().copied())
                .collect();
            (2..u32::MAX).find(|p| !used.contains(p)).unwrap_or(0)
        });
        Index {
            entries,
            by_in_port: ByPort::new(in_ports),
            any_in_port,
            by_output: ByPort::new(outputs),
            owners,
            by_ip,
            unused_port,
        }
    }

    /// Flows that can match a packet entering on `port`, in index order.
    pub fn at_port(&self, port: u32) -> Vec<usize> {
        let mut out: Vec<usize> = self.by_in_port.get(port).collect();
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

/// Pairs of flows (indices into the index's entries) that no field separates: the only
/// pairs that can overlap. Splits on one field at a time: flows with different exact
/// values never pair; a wildcard pairs with every value. Sorts `items` in place.
pub(super) fn candidate_pairs(
    index: &Index<'_>,
    items: &mut [usize],
    out: &mut Vec<(usize, usize)>,
) {
    within(index, items, 0, out);
}

fn key_at(index: &Index<'_>, i: usize, field: usize) -> Option<u64> {
    index.entries[i]
        .key
        .and_then(|k| FIELDS.get(field).and_then(|f| k.get(*f)))
}

/// Sorts `items` by the field (wildcards first) and returns how many are wildcards.
fn sort_on(index: &Index<'_>, items: &mut [usize], field: usize) -> usize {
    if items.len() > 64 {
        // Large slices: sort the keys, not pointers to the flows (cache misses).
        let mut keyed: Vec<(Option<u64>, usize)> = items
            .iter()
            .map(|&i| (key_at(index, i, field), i))
            .collect();
        keyed.sort_unstable();
        for (slot, (_, i)) in items.iter_mut().zip(&keyed) {
            *slot = *i;
        }
        return keyed.partition_point(|(k, _)| k.is_none());
    }
    items.sort_unstable_by_key(|&i| (key_at(index, i, field), i));
    items.partition_point(|&i| key_at(index, i, field).is_none())
}

/// The runs of equal values in sorted `items`: (value, start, length).
fn runs(index: &Index<'_>, items: &[usize], field: usize) -> Vec<(Option<u64>, usize, usize)> {
    let mut out = Vec::new();
    let mut n = 0;
    while n < items.len() {
        let v = key_at(index, items[n], field);
        let len = items[n..]
            .iter()
            .take_while(|&&i| key_at(index, i, field) == v)
            .count();
        out.push((v, n, len));
        n += len;
    }
    out
}

fn within(index: &Index<'_>, items: &mut [usize], field: usize, out: &mut Vec<(usize, usize)>) {
    if items.len() < 2 {
        return;
    }
    if field == FIELDS.len() {
        for (n, &a) in items.iter().enumerate() {
            for &b in &items[n + 1..] {
                out.push((a.min(b), a.max(b)));
            }
        }
        return;
    }
    let wild = sort_on(index, items, field);
    let (wild, valued) = items.split_at_mut(wild);
    // Recursion reorders the inside of each run only, so the offsets stay valid.
    for (_, start, len) in runs(index, valued, field) {
        let group = &mut valued[start..start + len];
        across(index, wild, group, field + 1, out);
        within(index, group, field + 1, out);
    }
    within(index, wild, field + 1, out);
}

fn across(
    index: &Index<'_>,
    xs: &mut [usize],
    ys: &mut [usize],
    field: usize,
    out: &mut Vec<(usize, usize)>,
) {
    if xs.is_empty() || ys.is_empty() {
        return;
    }
    if field == FIELDS.len() {
        for &a in xs.iter() {
            for &b in ys.iter() {
                out.push((a.min(b), a.max(b)));
            }
        }
        return;
    }
    let xw = sort_on(index, xs, field);
    let yw = sort_on(index, ys, field);
    let (xwild, xv) = xs.split_at_mut(xw);
    let (ywild, yv) = ys.split_at_mut(yw);
    // Equal values on both sides (the runs are sorted by value: merge them).
    let (xl, yl) = (runs(index, xv, field), runs(index, yv, field));
    let (mut i, mut j) = (0, 0);
    while i < xl.len() && j < yl.len() {
        let ((vx, sx, lx), (vy, sy, ly)) = (xl[i], yl[j]);
        match vx.cmp(&vy) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                across(
                    index,
                    &mut xv[sx..sx + lx],
                    &mut yv[sy..sy + ly],
                    field + 1,
                    out,
                );
                i += 1;
                j += 1;
            }
        }
    }
    // A wildcard on either side meets everything on the other.
    across(index, xv, ywild, field + 1, out);
    across(index, xwild, yv, field + 1, out);
    across(index, xwild, ywild, field + 1, out);
}
