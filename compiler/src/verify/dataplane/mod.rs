//! Translation validation: K208 (data-plane non-interference) and K212 (fail-open) proved
//! on the emitted OpenFlow rules, not on the source. `kalkic build` runs it on every
//! bundle, over exactly the flows it writes.
//!
//! The input is a [`DataPlane`]: the base set, and per device and state its rule set and
//! chain ports. [`plane`] builds it from a site as code generation does; tests may build
//! or edit one by hand. [`validate`] decides the questions below with a [`Solver`], after
//! sound syntactic pruning (module `index`), through a cache keyed by a canonical form of
//! each query ([`crate::verify::cache`]). The encoding and the soundness argument are in
//! `docs/verification.md`.
//!
//! Installed together: the base set always; per device, the set of exactly one of its
//! states. Two states of one device never coexist; sets of different devices do, in any
//! combination of states.
//!
//! - K208: a flow whose cookie names device `c` wins for a packet of another device `e`
//!   (entering on `e`'s port or one of its µmbox ports, or from the uplink for `e`'s IP);
//!   two flows that can be installed together, in one table at one priority, overlap; a
//!   flow carries a cookie other than its set's (replacing one device would then delete
//!   or keep another's flows).
//! - K212: for a device in a state, a packet entering on one of its ports goes somewhere
//!   its chain does not send it (from the device port: anywhere but the first inline
//!   µmbox, the taps, and for ARP the uplink), or a packet reaches one of its ports from
//!   somewhere its chain does not bring it from (the device port: only from the first
//!   inline µmbox, and ARP from the uplink). `drop` sends nothing anywhere; `pass` and a
//!   chain of taps only reach the uplink directly.

mod index;
mod pipeline;

pub use pipeline::{matches, run, Packet, Run};

use self::index::{Config, Field, Index, Owner, Presence, Set, ETH_ARP, ETH_IP};
use self::pipeline::{field_is, field_is_not, matches_key, Encoded, Witness};
use super::cache::CachingSolver;
use super::codes;
use super::solver::{Model as SolverModel, Outcome, Query, Solver, Term};
use crate::codegen::openflow::{
    self, base_cookie, device_cookie, Action, EntryPorts, Flow, PortRole, Ports,
};
use crate::diag::Diagnostic;
use crate::ir::{Chain, Loc, Model, Site, StateId};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};

/// What the switch will hold for one site: the flows, and what every port is for.
#[derive(Debug, Clone)]
pub struct DataPlane {
    pub site: String,
    pub site_loc: Loc,
    pub uplink: u32,
    /// Always installed (cookie kind 1).
    pub base: Vec<Flow>,
    pub devices: Vec<DevicePlane>,
    /// Port number → how messages name it.
    pub port_names: BTreeMap<u32, String>,
}

#[derive(Debug, Clone)]
pub struct DevicePlane {
    pub name: String,
    pub loc: Loc,
    pub ip: u32,
    pub port: u32,
    pub states: Vec<StatePlane>,
}

#[derive(Debug, Clone)]
pub struct StatePlane {
    pub name: String,
    /// The state's chain in the source.
    pub loc: Loc,
    /// The cookie every flow of this set must carry.
    pub cookie: u64,
    pub chain: ChainPlane,
    pub flows: Vec<Flow>,
}

/// A state's chain as ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainPlane {
    Drop,
    Pass,
    /// The chain's entries in order, inline (`a` faces the device) or tap.
    Entries(Vec<EntryPorts>),
}

/// The data plane code generation emits for `site`: its devices on the switch (one off
/// it has no flows, ports or µmboxes to prove anything of).
pub fn plane(model: &Model, site: &Site, ports: &Ports) -> DataPlane {
    let devices = site
        .devices
        .iter()
        .enumerate()
        .filter_map(|(i, d)| Some((i, d, d.net.as_ref()?, ports.devices.get(i).copied()??)))
        .map(|(i, d, net, port)| {
            let ty = model.device_type(d.ty);
            let states = ty
                .states
                .iter()
                .enumerate()
                .map(|(si, s)| {
                    let id = StateId::from_index(si);
                    StatePlane {
                        name: s.name.clone(),
                        loc: s.chain_loc,
                        cookie: device_cookie(i, id),
                        chain: match &s.chain {
                            // On the switch, every state has a chain (typeck).
                            Some(Chain::Drop) | None => ChainPlane::Drop,
                            Some(Chain::Pass) => ChainPlane::Pass,
                            Some(Chain::Umboxes(_)) => ChainPlane::Entries(
                                (0..ports
                                    .entries
                                    .get(i)
                                    .and_then(|e| e.get(si))
                                    .map_or(0, Vec::len))
                                    .map(|pos| ports.entry(i, id, pos))
                                    .collect(),
                            ),
                        },
                        flows: openflow::state_flows(model, site, ports, i, id),
                    }
                })
                .collect();
            DevicePlane {
                name: d.name.clone(),
                loc: d.loc,
                ip: net.ip,
                port,
                states,
            }
        })
        .collect();
    let port_names = ports
        .all
        .iter()
        .map(|p| {
            let text = match &p.role {
                PortRole::Uplink => format!("the uplink `{}` (port {})", p.name, p.ofport),
                PortRole::Device { device } => {
                    format!("port {} (`{}`, device `{device}`)", p.ofport, p.name)
                }
                PortRole::Umbox {
                    device,
                    instance,
                    umbox,
                    side,
                } => {
                    let side = match side {
                        openflow::Side::A => "device side",
                        openflow::Side::B => "uplink side",
                        openflow::Side::Tap => "tap",
                    };
                    format!(
                        "port {} (`{}`: µmbox `{umbox}`, instance {instance} of `{device}`, {side})",
                        p.ofport, p.name
                    )
                }
            };
            (p.ofport, text)
        })
        .collect();
    DataPlane {
        site: site.name.clone(),
        site_loc: site.loc,
        uplink: ports.uplink,
        base: openflow::base_flows(site, ports),
        devices,
        port_names,
    }
}

/// Proves K208 and K212 on the data plane, or reports each violation with a witness
/// packet. Undecided queries are reported as K213, never taken as proof.
pub fn validate(plane: &DataPlane, solver: &dyn Solver) -> Vec<Diagnostic> {
    let mut v = Validator {
        plane,
        index: Index::new(plane),
        solver: CachingSolver::new(solver),
        diags: Vec::new(),
    };
    v.cookies();
    v.foreign_matches();
    v.overlaps();
    for (d, dev) in plane.devices.iter().enumerate() {
        for s in 0..dev.states.len() {
            for ob in obligations(plane, d, s) {
                match ob.dir {
                    Dir::Egress => v.egress(&ob),
                    Dir::Ingress => v.ingress(&ob),
                }
            }
        }
    }
    v.diags
}

struct Validator<'a> {
    plane: &'a DataPlane,
    index: Index<'a>,
    solver: CachingSolver<'a>,
    diags: Vec<Diagnostic>,
}

/// Which way a fail-open obligation looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Packets entering on `port` may only be sent to `allowed`.
    Egress,
    /// Packets may only reach `port` from `allowed`.
    Ingress,
}

/// One promise a state's chain makes about one of its device's ports.
#[derive(Debug, Clone)]
struct Obligation {
    device: usize,
    state: usize,
    dir: Dir,
    port: u32,
    allowed: Vec<u32>,
    /// Also allowed for ARP frames (bridged around the µmboxes, which inspect IP).
    arp_allowed: Vec<u32>,
}

/// What the state's chain promises: every hop of its wiring, both ways.
fn obligations(plane: &DataPlane, d: usize, s: usize) -> Vec<Obligation> {
    let dev = &plane.devices[d];
    let (dp, u) = (dev.port, plane.uplink);
    let ob = |dir, port, allowed: Vec<u32>, arp_allowed: Vec<u32>| Obligation {
        device: d,
        state: s,
        dir,
        port,
        allowed,
        arp_allowed,
    };
    let mut out = Vec::new();
    match &dev.states[s].chain {
        ChainPlane::Drop => {
            out.push(ob(Dir::Egress, dp, vec![], vec![]));
            out.push(ob(Dir::Ingress, dp, vec![], vec![]));
        }
        ChainPlane::Pass => {
            out.push(ob(Dir::Egress, dp, vec![u], vec![]));
            out.push(ob(Dir::Ingress, dp, vec![u], vec![]));
        }
        ChainPlane::Entries(entries) => {
            let taps: Vec<u32> = entries
                .iter()
                .filter_map(|e| match e {
                    EntryPorts::Tap { p } => Some(*p),
                    EntryPorts::Inline { .. } => None,
                })
                .collect();
            let inline: Vec<(u32, u32)> = entries
                .iter()
                .filter_map(|e| match e {
                    EntryPorts::Inline { a, b } => Some((*a, *b)),
                    EntryPorts::Tap { .. } => None,
                })
                .collect();
            match inline.first() {
                None => {
                    let mut fwd = vec![u];
                    fwd.extend(&taps);
                    out.push(ob(Dir::Egress, dp, fwd, vec![]));
                    out.push(ob(Dir::Ingress, dp, vec![u], vec![]));
                }
                Some(&(a1, _)) => {
                    let mut fwd = vec![a1];
                    fwd.extend(&taps);
                    out.push(ob(Dir::Egress, dp, fwd, vec![u]));
                    out.push(ob(Dir::Ingress, dp, vec![a1], vec![u]));
                }
            }
            for (i, &(a, b)) in inline.iter().enumerate() {
                let towards_device = if i == 0 { dp } else { inline[i - 1].1 };
                let towards_uplink = inline.get(i + 1).map_or(u, |n| n.0);
                out.push(ob(Dir::Egress, a, vec![towards_device], vec![]));
                out.push(ob(Dir::Ingress, a, vec![towards_device], vec![]));
                out.push(ob(Dir::Egress, b, vec![towards_uplink], vec![]));
                out.push(ob(Dir::Ingress, b, vec![towards_uplink], vec![]));
            }
            for &p in &taps {
                out.push(ob(Dir::Egress, p, vec![], vec![]));
                out.push(ob(Dir::Ingress, p, vec![dp, u], vec![]));
            }
        }
    }
    out
}

/// Where a packet ends up: a port, or `NORMAL` switching (which may reach the uplink,
/// never a managed port: the runtime keeps those out of `NORMAL`'s VLAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Port(u32),
    Normal,
}

impl Validator<'_> {
    fn states_of(&self, d: usize) -> usize {
        self.plane.devices.get(d).map_or(0, |x| x.states.len())
    }

    /// A satisfying model, or `None` when unsatisfiable or undecided (reported as K213).
    fn decide(&mut self, q: &Query, loc: Loc, what: &str) -> Option<SolverModel> {
        match self.solver.solve(q) {
            Outcome::Sat(m) => Some(m),
            Outcome::Unsat => None,
            Outcome::Unknown(why) => {
                self.diags.push(
                    Diagnostic::error(
                        codes::INCONCLUSIVE,
                        format!("could not decide {what}: {why}"),
                    )
                    .primary(loc, "undecided")
                    .help("an unknown result never counts as success; raise --solver-timeout-ms")
                    .witness(json!({ "reason": why })),
                );
                None
            }
        }
    }

    fn port_name(&self, p: u32) -> String {
        self.plane
            .port_names
            .get(&p)
            .cloned()
            .unwrap_or_else(|| format!("port {p}"))
    }

    fn target_name(&self, t: Target) -> String {
        match t {
            Target::Port(p) => self.port_name(p),
            Target::Normal => "`NORMAL` switching (which can reach the uplink)".into(),
        }
    }

    fn set_name(&self, set: Set) -> String {
        match set {
            Set::Base => "the base set".into(),
            Set::State { device, state } => {
                let dev = &self.plane.devices[device];
                format!("`{}` in `{}`", dev.name, dev.states[state].name)
            }
        }
    }

    /// The device a flow is about, for labels: its set's device, or for the base set the
    /// owner of its `in_port` or of the address it matches.
    fn flow_device(&self, i: usize) -> Option<usize> {
        let e = &self.index.entries[i];
        if let Set::State { device, .. } = e.set {
            return Some(device);
        }
        let k = e.key?;
        let by_port = k
            .get(Field::InPort)
            .and_then(|p| u32::try_from(p).ok())
            .and_then(|p| self.index.owners.get(&p))
            .map(|o| o.device());
        by_port.or_else(|| {
            let addr = k.get(Field::NwDst).or(k.get(Field::ArpTpa))?;
            let addr = u32::try_from(addr).ok()?;
            self.index.by_ip.get(&addr)?.first().copied()
        })
    }

    fn states_json(&self, w: &Witness, pinned: &[(usize, usize)]) -> Value {
        let mut m = Map::new();
        for &(d, s) in pinned.iter().chain(&w.assumed) {
            let dev = &self.plane.devices[d];
            m.insert(dev.name.clone(), json!(dev.states[s].name));
        }
        Value::Object(m)
    }

    fn path_text(&self, w: &Witness) -> Vec<String> {
        w.path
            .iter()
            .map(|&i| self.index.entries[i].flow.to_ofctl())
            .collect()
    }

    /// "packet `P` meets `f1`, then `f2`": the winner of each table visited (flows of
    /// equal priority that both match are shown as alternatives).
    fn trace_help(&self, w: &Witness) -> String {
        let mut tables: Vec<(u8, Vec<String>)> = Vec::new();
        for &i in &w.path {
            let f = self.index.entries[i].flow;
            let text = format!("`{}`", f.to_ofctl());
            match tables.last_mut() {
                Some((t, fs)) if *t == f.table => fs.push(text),
                _ => tables.push((f.table, vec![text])),
            }
        }
        let steps: Vec<String> = tables
            .into_iter()
            .map(|(_, fs)| {
                if fs.len() == 1 {
                    fs.concat()
                } else {
                    format!("either of {} (equal priority)", fs.join(", "))
                }
            })
            .collect();
        format!(
            "packet `{}` meets {}",
            w.packet.to_trace(),
            if steps.is_empty() {
                "no flow".to_string()
            } else {
                steps.join(", then ")
            }
        )
    }

    /// K208: every flow carries its set's cookie, or replacing one device's flows (by
    /// cookie and mask) would delete or keep another's.
    fn cookies(&mut self) {
        let plane = self.plane;
        if let Some(f) = plane.base.iter().find(|f| f.cookie != base_cookie()) {
            self.diags.push(
                Diagnostic::error(
                    codes::DATA_PLANE,
                    format!(
                        "a flow of the base set carries cookie {:#x}, not the base cookie {:#x}",
                        f.cookie,
                        base_cookie()
                    ),
                )
                .primary(plane.site_loc, "in the rule sets of this site")
                .help(format!(
                    "`{}`: the runtime replaces rule sets by cookie, so this flow would be deleted or kept with another set",
                    f.to_ofctl()
                ))
                .witness(json!({ "set": "base", "flow": f.to_ofctl(), "expected_cookie": format!("{:#x}", base_cookie()) })),
            );
        }
        for dev in &plane.devices {
            for st in &dev.states {
                if let Some(f) = st.flows.iter().find(|f| f.cookie != st.cookie) {
                    self.diags.push(
                        Diagnostic::error(
                            codes::DATA_PLANE,
                            format!(
                                "a flow of `{}` in state `{}` carries cookie {:#x}, not the set's {:#x}",
                                dev.name, st.name, f.cookie, st.cookie
                            ),
                        )
                        .primary(dev.loc, "this device's rule set")
                        .secondary(st.loc, "for this state")
                        .help(format!(
                            "`{}`: the runtime replaces a device's flows by cookie, so this flow would be deleted or kept with another device's",
                            f.to_ofctl()
                        ))
                        .witness(json!({
                            "device": dev.name, "state": st.name, "flow": f.to_ofctl(),
                            "expected_cookie": format!("{:#x}", st.cookie),
                        })),
                    );
                }
            }
        }
    }

    /// K208 (a): a flow carrying device `c`'s cookie wins for a packet of device `e ≠ c`.
    fn foreign_matches(&mut self) {
        let plane = self.plane;
        let n = plane.devices.len();
        let mut reported: HashSet<(usize, usize)> = HashSet::new();
        for f in 0..self.index.entries.len() {
            let entry = &self.index.entries[f];
            let Some(key) = entry.key else { continue };
            let Some(c) = self.index.cookie_device(entry.flow.cookie, n) else {
                continue;
            };
            // The common case, decided without allocating: a flow that matches one port
            // (or the uplink and one address) of its own device only.
            let own = match key
                .get(Field::InPort)
                .map(|p| u32::try_from(p).unwrap_or(u32::MAX))
            {
                Some(p) if p == plane.uplink => key
                    .get(Field::NwDst)
                    .or(key.get(Field::ArpTpa))
                    .and_then(|a| u32::try_from(a).ok())
                    .is_some_and(|a| {
                        self.index
                            .by_ip
                            .get(&a)
                            .is_none_or(|v| v.iter().all(|&e| e == c))
                    }),
                Some(p) => self.index.owners.get(&p).is_none_or(|o| o.device() == c),
                None => false,
            };
            if own {
                continue;
            }
            let base_config = match entry.set {
                Set::Base => Config::default(),
                Set::State { device, state } => Config::pinned(device, state),
            };
            // The ports whose packets may belong to another device.
            let ports: Vec<u32> = match key.get(Field::InPort) {
                Some(p) => vec![u32::try_from(p).unwrap_or(u32::MAX)],
                None => {
                    let mut v: Vec<u32> = self.index.owners.keys().copied().collect();
                    v.push(plane.uplink);
                    v.sort_unstable();
                    v
                }
            };
            // Every port is asked about, not only up to the first finding: a flow can act
            // on the packets of several other devices, and each pair is its own finding.
            for p in ports {
                if p == plane.uplink {
                    self.foreign_from_uplink(f, c, &key, &base_config, &mut reported);
                    continue;
                }
                let Some(owner) = self.index.owners.get(&p) else {
                    continue;
                };
                let e = owner.device();
                if e == c || reported.contains(&(c, e)) {
                    continue;
                }
                // The packet is `e`'s when `e` is in a state whose chain uses the port: a
                // device port always; a µmbox port in each state that shares its instance,
                // one question per state (pinning it), none that the flow's own set rules
                // out.
                let configs: Vec<Config> = match owner {
                    Owner::Device(_) => vec![base_config.clone()],
                    Owner::Umbox { states, .. } => states
                        .iter()
                        .filter_map(|&t| {
                            let mut config = base_config.clone();
                            config.pin(e, t).then_some(config)
                        })
                        .collect(),
                };
                for config in configs {
                    if let Some(w) = self.foreign_witness(f, c, p, &config, Term::Bool(true)) {
                        reported.insert((c, e));
                        self.report_foreign(f, c, e, &w, &config);
                        break;
                    }
                }
            }
        }
    }

    /// K208 (a) from the uplink: flow `f` (with `key`, of device `c`) wins for a packet
    /// addressed to another device. Asked again without each victim found, until none is
    /// left: one flow may take the traffic of several devices.
    fn foreign_from_uplink(
        &mut self,
        f: usize,
        c: usize,
        key: &index::Key,
        config: &Config,
        reported: &mut HashSet<(usize, usize)>,
    ) {
        let plane = self.plane;
        let addr = key.get(Field::NwDst).or(key.get(Field::ArpTpa));
        let candidates: Vec<usize> = match addr {
            Some(a) => u32::try_from(a)
                .ok()
                .and_then(|a| self.index.by_ip.get(&a))
                .cloned()
                .unwrap_or_default(),
            None => (0..plane.devices.len()).collect(),
        };
        loop {
            let victims: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&e| e != c && !reported.contains(&(c, e)))
                .collect();
            if victims.is_empty() {
                return;
            }
            let terms: Vec<Term> = victims
                .iter()
                .map(|&e| {
                    let a = u64::from(plane.devices[e].ip);
                    Term::Or(vec![
                        Term::and(vec![
                            field_is(Field::EthType, ETH_IP),
                            field_is(Field::NwDst, a),
                        ]),
                        Term::and(vec![
                            field_is(Field::EthType, ETH_ARP),
                            field_is(Field::ArpTpa, a),
                        ]),
                    ])
                })
                .collect();
            let Some(w) = self.foreign_witness(f, c, plane.uplink, config, Term::Or(terms)) else {
                return;
            };
            // The victim whose address the packet carries (the condition says there is
            // one; should none be found, stop rather than ask the same question again).
            let p = &w.packet;
            let to = if p.is_arp() { p.arp_tpa } else { p.nw_dst };
            let Some(e) = victims.into_iter().find(|&e| plane.devices[e].ip == to) else {
                return;
            };
            reported.insert((c, e));
            self.report_foreign(f, c, e, &w, config);
        }
    }

    /// A packet entering on `port` that satisfies `cond` and for which flow `f` (of
    /// device `c`) wins, with the states `config` pins; `None` when there is none (or the
    /// question is undecided, which is reported as K213).
    fn foreign_witness(
        &mut self,
        f: usize,
        c: usize,
        port: u32,
        config: &Config,
        cond: Term,
    ) -> Option<Witness> {
        if self.index.shadowed(f, port, config) {
            return None;
        }
        let involved = self.index.involved(f, port, config);
        let mut enc = Encoded::pipeline(&self.index, &involved, config, &|d| self.states_of(d));
        enc.query
            .facts
            .push(field_is(Field::InPort, u64::from(port)));
        enc.query.facts.push(enc.wins(f));
        enc.query.facts.push(cond);
        let loc = self.plane.devices[c].loc;
        let model = self.decide(
            &enc.query,
            loc,
            "whether a flow of this device matches another device's packets",
        )?;
        Some(enc.decode(&self.index, &model))
    }

    fn report_foreign(&mut self, f: usize, c: usize, e: usize, w: &Witness, config: &Config) {
        let entry = &self.index.entries[f];
        let (dc, de) = (&self.plane.devices[c], &self.plane.devices[e]);
        let flow = entry.flow.to_ofctl();
        let mut d = Diagnostic::error(
            codes::DATA_PLANE,
            format!("a flow of `{}` handles packets of `{}`", dc.name, de.name),
        )
        .primary(
            dc.loc,
            format!("this device's flow (in {}) ...", self.set_name(entry.set)),
        )
        .secondary(de.loc, format!("... matches packets of `{}`", de.name));
        d = d
            .help(format!(
                "`{flow}` wins for a packet of `{}`: {}",
                de.name,
                self.trace_help(w)
            ))
            .witness(json!({
                "flow": flow,
                "cookie_device": dc.name,
                "packet_of": de.name,
                "packet": w.packet.to_json(),
                "trace": w.packet.to_trace(),
                "path": self.path_text(w),
                "states": self.states_json(w, &config.fixed),
            }));
        self.diags.push(d);
    }

    /// K208 (b): two flows that can be installed together, in one table at one priority,
    /// both match some packet.
    fn overlaps(&mut self) {
        let mut groups: BTreeMap<(u8, u16), Vec<usize>> = BTreeMap::new();
        for (i, e) in self.index.entries.iter().enumerate() {
            if e.key.is_some() {
                groups
                    .entry((e.flow.table, e.flow.priority))
                    .or_default()
                    .push(i);
            }
        }
        let mut pairs = Vec::new();
        for items in groups.values_mut() {
            index::candidate_pairs(&self.index, items, &mut pairs);
        }
        pairs.sort_unstable();
        pairs.dedup();
        let mut reported: HashSet<(Option<usize>, Option<usize>)> = HashSet::new();
        for (a, b) in pairs {
            let (sa, sb) = (self.index.entries[a].set, self.index.entries[b].set);
            if let (
                Set::State {
                    device: da,
                    state: ta,
                },
                Set::State {
                    device: db,
                    state: tb,
                },
            ) = (sa, sb)
            {
                if da == db && ta != tb {
                    continue; // two states of one device are never installed together
                }
            }
            let who = {
                let (x, y) = (self.flow_device(a), self.flow_device(b));
                (x.min(y), x.max(y))
            };
            if reported.contains(&who) {
                continue;
            }
            let (Some(ka), Some(kb)) = (self.index.entries[a].key, self.index.entries[b].key)
            else {
                continue;
            };
            let mut enc = Encoded::packet_only();
            enc.query.facts.push(matches_key(&ka));
            enc.query.facts.push(matches_key(&kb));
            let loc = self
                .flow_device(a)
                .map_or(self.plane.site_loc, |d| self.plane.devices[d].loc);
            let Some(model) = self.decide(&enc.query, loc, "whether two flows overlap") else {
                continue;
            };
            reported.insert(who);
            let w = enc.decode(&self.index, &model);
            self.report_overlap(a, b, &w);
        }
    }

    fn report_overlap(&mut self, a: usize, b: usize, w: &Witness) {
        let (ea, eb) = (&self.index.entries[a], &self.index.entries[b]);
        let (fa, fb) = (ea.flow.to_ofctl(), eb.flow.to_ofctl());
        let loc_of = |i: usize| {
            self.flow_device(i)
                .map_or(self.plane.site_loc, |d| self.plane.devices[d].loc)
        };
        let (la, lb) = (loc_of(a), loc_of(b));
        let mut d = Diagnostic::error(
            codes::DATA_PLANE,
            if ea.set == eb.set {
                format!(
                    "two flows of {} overlap at priority {} in table {}",
                    self.set_name(ea.set),
                    ea.flow.priority,
                    ea.flow.table
                )
            } else {
                format!(
                    "flows of {} and {} overlap at priority {} in table {}",
                    self.set_name(ea.set),
                    self.set_name(eb.set),
                    ea.flow.priority,
                    ea.flow.table
                )
            },
        )
        .primary(la, format!("`{fa}`"));
        d = if la == lb {
            d.secondary(la, format!("`{fb}`"))
        } else {
            d.secondary(lb, format!("`{fb}`"))
        };
        d = d
            .help(format!(
                "both match `{}`; Open vSwitch picks either for it (undefined): give the flows different priorities or disjoint matches",
                w.packet.to_trace()
            ))
            .witness(json!({
                "table": ea.flow.table,
                "priority": ea.flow.priority,
                "flows": [fa, fb],
                "sets": [self.set_name(ea.set), self.set_name(eb.set)],
                "packet": w.packet.to_json(),
                "trace": w.packet.to_trace(),
            }));
        self.diags.push(d);
    }

    /// K212, outward: a packet entering on `ob.port` is sent only where the chain says.
    fn egress(&mut self, ob: &Obligation) {
        let config = Config::pinned(ob.device, ob.state);
        let p = ob.port;
        let candidates: Vec<usize> = self
            .index
            .by_in_port
            .get(p)
            .chain(self.index.any_in_port.iter().copied())
            .collect();
        for f in candidates {
            let entry = &self.index.entries[f];
            if config.presence(entry.set) == Presence::Never {
                continue;
            }
            let Some(key) = entry.key.and_then(|k| k.at_port(p)) else {
                continue;
            };
            let arp_only = key.get(Field::EthType) == Some(ETH_ARP);
            // Each forbidden target, and whether it is forbidden to non-ARP frames only.
            let mut targets: Vec<(Target, bool)> = Vec::new();
            for a in &entry.flow.actions {
                let (t, port) = match a {
                    Action::Output(x) if *x != p => (Target::Port(*x), *x),
                    Action::Normal => (Target::Normal, self.plane.uplink),
                    _ => continue,
                };
                if ob.allowed.contains(&port) {
                    continue;
                }
                let non_arp = ob.arp_allowed.contains(&port);
                if non_arp && arp_only {
                    continue;
                }
                targets.push((t, non_arp));
            }
            if targets.is_empty() || self.index.shadowed(f, p, &config) {
                continue;
            }
            let involved = self.index.involved(f, p, &config);
            let mut enc =
                Encoded::pipeline(&self.index, &involved, &config, &|d| self.states_of(d));
            enc.query.facts.push(field_is(Field::InPort, u64::from(p)));
            enc.query.facts.push(enc.wins(f));
            if targets.iter().all(|(_, non_arp)| *non_arp) {
                enc.query.facts.push(field_is_not(Field::EthType, ETH_ARP));
            }
            let loc = self.plane.devices[ob.device].loc;
            let Some(model) = self.decide(
                &enc.query,
                loc,
                "whether this device's traffic can bypass its chain",
            ) else {
                continue;
            };
            let w = enc.decode(&self.index, &model);
            let reached = targets
                .iter()
                .find(|(_, non_arp)| !*non_arp || !w.packet.is_arp())
                .map_or(targets[0].0, |t| t.0);
            self.report_fail_open(ob, f, reached, p, &w, &config);
            return;
        }
    }

    /// K212, inward: `ob.port` receives packets only from where the chain says.
    fn ingress(&mut self, ob: &Obligation) {
        let config = Config::pinned(ob.device, ob.state);
        let q = ob.port;
        let sources: Vec<usize> = self.index.by_output.get(q).collect();
        for f in sources {
            let entry = &self.index.entries[f];
            if config.presence(entry.set) == Presence::Never {
                continue;
            }
            let Some(key) = entry.key else { continue };
            let arp_only = key.get(Field::EthType) == Some(ETH_ARP);
            let entries: Vec<u32> = match key.get(Field::InPort) {
                Some(x) => vec![u32::try_from(x).unwrap_or(u32::MAX)],
                None => {
                    let mut v: Vec<u32> = self.index.by_in_port.ports();
                    v.extend(self.index.owners.keys());
                    v.push(self.plane.uplink);
                    v.push(self.index.unused_port);
                    v.sort_unstable();
                    v.dedup();
                    v
                }
            };
            for p in entries {
                // Output to the port a packet came in on is skipped by the switch.
                if p == q || ob.allowed.contains(&p) {
                    continue;
                }
                let non_arp = ob.arp_allowed.contains(&p);
                if (non_arp && arp_only) || self.index.shadowed(f, p, &config) {
                    continue;
                }
                let involved = self.index.involved(f, p, &config);
                let mut enc =
                    Encoded::pipeline(&self.index, &involved, &config, &|d| self.states_of(d));
                enc.query.facts.push(field_is(Field::InPort, u64::from(p)));
                enc.query.facts.push(enc.wins(f));
                if non_arp {
                    enc.query.facts.push(field_is_not(Field::EthType, ETH_ARP));
                }
                let loc = self.plane.devices[ob.device].loc;
                let Some(model) = self.decide(
                    &enc.query,
                    loc,
                    "whether packets can reach this device around its chain",
                ) else {
                    continue;
                };
                let w = enc.decode(&self.index, &model);
                self.report_fail_open(ob, f, Target::Port(q), p, &w, &config);
                return;
            }
        }
    }

    fn report_fail_open(
        &mut self,
        ob: &Obligation,
        f: usize,
        reached: Target,
        from: u32,
        w: &Witness,
        config: &Config,
    ) {
        let dev = &self.plane.devices[ob.device];
        let st = &dev.states[ob.state];
        let is_drop = st.chain == ChainPlane::Drop;
        let at_device = ob.port == dev.port;
        let message = match (ob.dir, at_device, is_drop) {
            (Dir::Egress, true, true) => format!(
                "in state `{}` (`drop`), a packet from `{}` is sent to {}",
                st.name,
                dev.name,
                self.target_name(reached)
            ),
            (Dir::Egress, true, false) => format!(
                "a packet from `{}` in state `{}` reaches {} without passing its chain",
                dev.name,
                st.name,
                self.target_name(reached)
            ),
            (Dir::Egress, false, _) => format!(
                "a packet from {} reaches {}, not the next hop of `{}`'s chain in state `{}`",
                self.port_name(from),
                self.target_name(reached),
                dev.name,
                st.name
            ),
            (Dir::Ingress, true, true) => format!(
                "in state `{}` (`drop`), a packet from {} reaches `{}`",
                st.name,
                self.port_name(from),
                dev.name
            ),
            (Dir::Ingress, true, false) => format!(
                "a packet from {} reaches `{}` in state `{}` without passing its chain",
                self.port_name(from),
                dev.name,
                st.name
            ),
            (Dir::Ingress, false, _) => format!(
                "a packet from {} reaches {}, skipping part of `{}`'s chain in state `{}`",
                self.port_name(from),
                self.port_name(ob.port),
                dev.name,
                st.name
            ),
        };
        let (primary, secondary) = match ob.dir {
            Dir::Egress => (
                "this device's traffic escapes its chain",
                "the chain it bypasses",
            ),
            Dir::Ingress => (
                "this device receives traffic around its chain",
                "the chain it bypasses",
            ),
        };
        let flow = self.index.entries[f].flow.to_ofctl();
        let d = Diagnostic::error(codes::FAIL_OPEN, message)
            .primary(dev.loc, primary)
            .secondary(
                st.loc,
                if is_drop {
                    "this state drops everything"
                } else {
                    secondary
                },
            )
            .help(format!(
                "flow `{flow}` ({}) sends it there: {}",
                self.set_name(self.index.entries[f].set),
                self.trace_help(w)
            ))
            .witness(json!({
                "device": dev.name,
                "state": st.name,
                "direction": match ob.dir { Dir::Egress => "egress", Dir::Ingress => "ingress" },
                "from": from,
                "reaches": match reached { Target::Port(p) => json!(p), Target::Normal => json!("NORMAL") },
                "flow": flow,
                "packet": w.packet.to_json(),
                "trace": w.packet.to_trace(),
                "path": self.path_text(w),
                "states": self.states_json(w, &config.fixed),
            }));
        self.diags.push(d);
    }
}
