//! What crosses between a device and the uplink side, per state: traffic assertions
//! (K215) and the posture-order check (K216).
//!
//! A flow's fate in a state is found on the generated flows, hop by hop, as
//! `ofproto/trace` would find it on the bridge: the flow's first packet enters the switch
//! (from the uplink, or from the device's port), [`pipeline::run`] gives the ports it
//! leaves by; at an inline µmbox port the µmbox's contract ([`kalki_model::contract`])
//! decides whether it comes back out of the µmbox's other interface (then the next hop
//! starts there) or stops (dropped or answered). The flow crosses when it leaves by the
//! far side's port. Taps get copies and never stop anything.
//!
//! The flow space is cut into cells no contract clause and no assertion splits
//! ([`contract::cells`]), so one sample per cell decides the cell. ARP never meets a
//! µmbox (the switch forwards it around the chain, `docs/design/openflow-pipeline.md`
//! §5) and is followed on the flows alone.
//!
//! A traffic assertion is then an assertion about states: `never traffic C to d in S`
//! holds when no state of `S` in which `C` crosses is reachable, which the site search of
//! [`super::assert`] decides, with a run to the state when it is reachable. Every peer of
//! a device is on the uplink side: other devices and unknown hosts reach it only through
//! the uplink port, so through its chain (§5, §6.2 of the pipeline design).

use super::assert::{self, AssertionResult, Status};
use super::dataplane::{self, Packet};
use super::{codes, Verifier};
use crate::codegen::openflow::{self, EntryPorts, Flow as OfFlow, Ports};
use crate::diag::Diagnostic;
use crate::ir::{
    AssertKind, Assertion, DeviceType, Expr, ExprKind, Loc, Model, Site, StateId, TrafficAssertion,
    TrafficClass, Ty, TypeId,
};
use kalki_model::contract::{
    self, Cell, Class, Contract, Flow, FlowProto, Openness, Starter, Treatment,
};
use serde_json::{json, Value};
use std::collections::HashMap;

const ETH_IP: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;
/// MAC of the peer on the uplink side, and of a device that declares none.
const PEER_MAC: [u8; 6] = [0x02, 0x6b, 0x61, 0x6c, 0, 0xfe];
const DEVICE_MAC: [u8; 6] = [0x02, 0x6b, 0x61, 0x6c, 0, 0x01];
/// The peer's source port in a flow's first packet.
const PEER_PORT: u16 = 40_000;

/// One hop of a flow: the packet as it enters the switch, where it goes, and what the
/// µmbox it reaches (if any) does.
#[derive(Debug, Clone)]
struct Hop {
    trace: String,
    outputs: Vec<u32>,
    umbox: Option<(String, Treatment)>,
}

/// A flow (or ARP) followed through one device's state.
#[derive(Debug, Clone)]
struct Followed {
    /// `None`: ARP.
    flow: Option<Flow>,
    openness: Openness,
    hops: Vec<Hop>,
    /// µmboxes on the way that declare no contract, taken to let everything through.
    assumed: Vec<String>,
    /// How it ends: "reaches the device", "dropped by the switch", "answered by µmbox `x`".
    end: String,
}

/// The switch and the chains of one site, as the bundle will hold them.
struct Plane<'m> {
    model: &'m Model,
    site: &'m Site,
    ports: Ports,
    base: Vec<OfFlow>,
    /// The base flows by what can match one device's packets, so that following a flow
    /// costs the same in a site of ten devices or a hundred thousand.
    index: BaseIndex,
    /// An address no device of the site has, for the peer.
    peer_ip: u32,
}

/// Indices into the base set: flows with no `in_port`, flows by `in_port`, and among
/// the uplink's those by the destination address they match (`nw_dst` or `arp_tpa`).
#[derive(Default)]
struct BaseIndex {
    any_port: Vec<usize>,
    by_port: HashMap<u32, Vec<usize>>,
    uplink_any: Vec<usize>,
    uplink_to: HashMap<u32, Vec<usize>>,
}

impl BaseIndex {
    fn new(base: &[OfFlow], uplink: u32) -> BaseIndex {
        let mut ix = BaseIndex::default();
        for (i, f) in base.iter().enumerate() {
            let m = &f.matches;
            match m.in_port {
                None => ix.any_port.push(i),
                Some(p) if p == uplink => match m.nw_dst.or(m.arp_tpa) {
                    Some(ip) => ix.uplink_to.entry(ip).or_default().push(i),
                    None => ix.uplink_any.push(i),
                },
                Some(p) => ix.by_port.entry(p).or_default().push(i),
            }
        }
        ix
    }

    /// Every base flow that can match a packet entering on one of `ports` (the device's
    /// own and its µmboxes') or on the uplink toward `ip`, in the base set's order.
    fn for_device(&self, ports: &[u32], ip: u32) -> Vec<usize> {
        let mut out: Vec<usize> = self.any_port.clone();
        out.extend(&self.uplink_any);
        out.extend(self.uplink_to.get(&ip).into_iter().flatten());
        for p in ports {
            out.extend(self.by_port.get(p).into_iter().flatten());
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl<'m> Plane<'m> {
    fn new(model: &'m Model, site: &'m Site) -> Option<Plane<'m>> {
        let ports = openflow::allocate(model, site).ok()?;
        let base = openflow::base_flows(site, &ports);
        let index = BaseIndex::new(&base, ports.uplink);
        // 203.0.113.0/24 (TEST-NET-3), the first address no device uses.
        let peer_ip = (0xcb00_7101u32..0xcb00_71ff)
            .find(|ip| {
                site.devices
                    .iter()
                    .all(|d| d.net.as_ref().is_none_or(|n| n.ip != *ip))
            })
            .unwrap_or(0xcb00_71fe);
        Some(Plane {
            model,
            site,
            ports,
            base,
            index,
            peer_ip,
        })
    }

    /// The inline µmbox a port belongs to: its name, contract, its other port, and whether
    /// it declares its contract.
    fn inline_at(&self, device: usize, port: u32) -> Option<(String, Contract, u32, bool)> {
        self.ports.instances[device]
            .iter()
            .find_map(|inst| match inst.ports {
                EntryPorts::Inline { a, b } if port == a || port == b => {
                    let u = self.model.umbox(inst.umbox);
                    let other = if port == a { b } else { a };
                    Some((
                        u.name.clone(),
                        u.contract(&inst.args),
                        other,
                        u.contract.is_some(),
                    ))
                }
                _ => None,
            })
    }

    /// The base flows that can meet `device`'s packets ([`BaseIndex`]).
    fn base_for(&self, device: usize) -> Vec<&OfFlow> {
        // A device off the switch (never asked about: typeck refuses traffic assertions
        // on it) has no port, address or base flow.
        let Some(net) = &self.site.devices[device].net else {
            return Vec::new();
        };
        let mut own: Vec<u32> = self.ports.devices[device].into_iter().collect();
        for inst in &self.ports.instances[device] {
            match inst.ports {
                EntryPorts::Inline { a, b } => own.extend([a, b]),
                EntryPorts::Tap { p } => own.push(p),
            }
        }
        self.index
            .for_device(&own, net.ip)
            .into_iter()
            .map(|i| &self.base[i])
            .collect()
    }

    /// Follows a flow (`None`: ARP) started by `from`, for device `device` in `state`.
    fn follow(&self, device: usize, state: StateId, flow: Option<Flow>, from: Starter) -> Followed {
        self.follow_over(&self.base_for(device), device, state, flow, from)
    }

    /// [`Plane::follow`] with the given base flows installed with the state's set.
    fn follow_over(
        &self,
        base: &[&OfFlow],
        device: usize,
        state: StateId,
        flow: Option<Flow>,
        from: Starter,
    ) -> Followed {
        let (Some(d), Some(dev_port)) =
            (&self.site.devices[device].net, self.ports.devices[device])
        else {
            return Followed {
                flow,
                openness: Openness::Closed,
                hops: Vec::new(),
                assumed: Vec::new(),
                end: "off the switch".into(),
            };
        };
        let set = openflow::state_flows(self.model, self.site, &self.ports, device, state);
        let installed: Vec<&OfFlow> = base.iter().copied().chain(&set).collect();
        let dev_mac = d.mac.unwrap_or(DEVICE_MAC);
        let mut p = Packet {
            eth_type: if flow.is_some() { ETH_IP } else { ETH_ARP },
            ..Packet::default()
        };
        let target = match from {
            Starter::Uplink => {
                p.in_port = self.ports.uplink;
                p.dl_src = PEER_MAC;
                (p.nw_src, p.nw_dst) = (self.peer_ip, d.ip);
                (p.arp_spa, p.arp_tpa, p.arp_sha) = (self.peer_ip, d.ip, PEER_MAC);
                dev_port
            }
            Starter::Device => {
                p.in_port = dev_port;
                p.dl_src = dev_mac;
                (p.nw_src, p.nw_dst) = (d.ip, self.peer_ip);
                (p.arp_spa, p.arp_tpa, p.arp_sha) = (d.ip, self.peer_ip, dev_mac);
                self.ports.uplink
            }
        };
        let mut hops = Vec::new();
        let mut authenticated = false;
        let mut assumed: Vec<String> = Vec::new();
        // Each hop crosses one µmbox; a chain has fewer than this many.
        for _ in 0..=2 * self.ports.instances[device].len() + 1 {
            let run = dataplane::run(&installed, &p);
            let mut hop = Hop {
                trace: trace(&p, flow),
                outputs: run.outputs.iter().copied().collect(),
                umbox: None,
            };
            if run.outputs.contains(&target) {
                hops.push(hop);
                let openness = if authenticated {
                    Openness::Authenticated
                } else {
                    Openness::Open
                };
                return Followed {
                    flow,
                    assumed: assumed.clone(),
                    openness,
                    hops,
                    end: "crosses".into(),
                };
            }
            let next = run.outputs.iter().find_map(|&o| self.inline_at(device, o));
            let Some((name, c, other, declared)) = next else {
                hops.push(hop);
                let end = if run.normal {
                    "handed to NORMAL switching, which never delivers to a managed port"
                } else {
                    "dropped by the switch"
                };
                return Followed {
                    flow,
                    assumed: assumed.clone(),
                    openness: Openness::Closed,
                    hops,
                    end: end.into(),
                };
            };
            // ARP is not the contract's business: assume the µmbox lets it through.
            let t = flow.map_or(Treatment::Pass, |f| c.treat(&f));
            if !declared && flow.is_some() && !assumed.contains(&name) {
                assumed.push(name.clone());
            }
            hop.umbox = Some((name.clone(), t));
            hops.push(hop);
            match t {
                Treatment::Pass => {}
                Treatment::Authenticate => authenticated = true,
                Treatment::Drop | Treatment::Answer => {
                    let end = if t == Treatment::Drop {
                        format!("dropped by µmbox `{name}`")
                    } else {
                        format!("answered by µmbox `{name}` in the other side's place")
                    };
                    return Followed {
                        flow,
                        assumed: assumed.clone(),
                        openness: Openness::Closed,
                        hops,
                        end,
                    };
                }
            }
            p.in_port = other;
        }
        Followed {
            flow,
            assumed: assumed.clone(),
            openness: Openness::Closed,
            hops,
            end: "loops in the switch".into(),
        }
    }

    /// The contracts a state's chain can apply, for cutting the flow space.
    fn classes(&self, device: usize, state: StateId) -> Vec<Class> {
        let idx = &self.ports.entries[device];
        idx.get(state.index())
            .into_iter()
            .flatten()
            .flat_map(|&i| {
                let inst = &self.ports.instances[device][i];
                let c = self.model.umbox(inst.umbox).contract(&inst.args);
                c.clauses.into_iter().map(|cl| cl.class)
            })
            .collect()
    }
}

/// `ofproto/trace` flow syntax for a packet, with the flow's layer 4.
fn trace(p: &Packet, flow: Option<Flow>) -> String {
    let base = p.to_trace();
    let Some(f) = flow else { return base };
    let l4 = match f.proto {
        FlowProto::Tcp => format!("tcp,tp_src={PEER_PORT},tp_dst={}", f.port),
        FlowProto::Udp => format!("udp,tp_src={PEER_PORT},tp_dst={}", f.port),
        FlowProto::Icmp => "icmp,icmp_type=8,icmp_code=0".into(),
        FlowProto::Other => format!("ip,nw_proto={}", f.proto.number()),
    };
    // `ip` is the packet's type in `to_trace`; the layer-4 keyword implies it.
    base.replace(",ip,", &format!(",{l4},"))
}

fn hop_json(h: &Hop) -> Value {
    let mut o = json!({ "trace": h.trace, "outputs": h.outputs });
    if let Some((name, t)) = &h.umbox {
        o["umbox"] = json!({ "name": name, "treatment": t });
    }
    o
}

fn what(f: &Followed) -> String {
    match f.flow {
        Some(flow) => flow.to_string(),
        None => "ARP".into(),
    }
}

/// Every flow of `class` the given sides start, one per cell, and ARP where it counts,
/// followed through `state`; the ones that cross first, most open first.
fn crossing(
    plane: &Plane<'_>,
    device: usize,
    state: StateId,
    class: &TrafficClass,
    starters: &[Starter],
) -> Vec<Followed> {
    let mut classes = plane.classes(device, state);
    if let TrafficClass::Ip(c) = class {
        classes.push(c.clone());
    }
    let mut out = Vec::new();
    for &from in starters {
        if matches!(class, TrafficClass::Anything | TrafficClass::Arp) {
            out.push(plane.follow(device, state, None, from));
        }
        if let TrafficClass::Arp = class {
            continue;
        }
        for cell in contract::cells(&classes)
            .into_iter()
            .filter(|c: &Cell| c.from == from)
        {
            let f = cell.sample();
            if let TrafficClass::Ip(c) = class {
                if !c.matches(&f) {
                    continue;
                }
            }
            out.push(plane.follow(device, state, Some(f), from));
        }
    }
    out.retain(|f| f.openness > Openness::Closed);
    // Open before authenticated; IPv4 before ARP; then by flow.
    // Through declared contracts first, open before authenticated, IPv4 before ARP.
    out.sort_by_key(|f| {
        (
            !f.assumed.is_empty(),
            std::cmp::Reverse(f.openness),
            f.flow.is_none(),
            f.flow,
        )
    });
    out
}

fn in_states(device: crate::ir::DeviceId, states: &[StateId], loc: Loc) -> Expr {
    let one = |s: StateId| Expr {
        kind: ExprKind::InState { device, state: s },
        ty: Ty::Bool,
        loc,
    };
    match states {
        [s] => one(*s),
        _ => Expr {
            kind: ExprKind::Or {
                args: states.iter().map(|s| one(*s)).collect(),
            },
            ty: Ty::Bool,
            loc,
        },
    }
}

fn class_text(a: &TrafficAssertion) -> String {
    match &a.class {
        TrafficClass::Anything => "traffic".into(),
        TrafficClass::Arp => "ARP".into(),
        TrafficClass::Ip(c) => c.to_string(),
    }
}

/// Decides the site's traffic assertions.
pub(super) fn check(
    v: &mut Verifier<'_>,
    site: &Site,
    live_rules: &[bool],
) -> Vec<AssertionResult> {
    if site.traffic_asserts.is_empty() {
        return Vec::new();
    }
    // A device's flows are its node's: on a site with nodes, each is followed on its
    // node's projection (its bridge and numbering), as `kalkic build` writes them. The
    // flows of a device read nothing of the other devices (`Site::project`), so this is
    // the same walk as on one bridge.
    let parts: Vec<(Site, Vec<crate::ir::DeviceId>)> =
        (0..site.nodes.len()).map(|n| site.project(n)).collect();
    let planes: Vec<Option<Plane<'_>>> = if parts.is_empty() {
        vec![Plane::new(v.policy, site)]
    } else {
        parts.iter().map(|(p, _)| Plane::new(v.policy, p)).collect()
    };
    site.traffic_asserts
        .iter()
        .map(|a| {
            let (plane, local) = match site.devices[a.device.index()].node {
                Some(n) => (
                    planes.get(n).and_then(Option::as_ref),
                    parts[n].1.iter().position(|d| *d == a.device).unwrap_or(0),
                ),
                None => (planes.first().and_then(Option::as_ref), a.device.index()),
            };
            match plane {
                Some(plane) => check_one(v, site, plane, local, live_rules, a),
                None => too_large(v, site, a),
            }
        })
        .collect()
}

/// A site (or node) too large for one bridge (K214 at build) has no flows to follow:
/// its traffic assertions are undecided, never silently passed over.
fn too_large(v: &mut Verifier<'_>, site: &Site, a: &TrafficAssertion) -> AssertionResult {
    let why = "the site needs more switch ports than one bridge has (K214), so there are no flows to follow";
    v.push(
        Diagnostic::error(
            codes::INCONCLUSIVE,
            format!("traffic assertion could not be decided: {why}"),
        )
        .primary(a.loc, "neither proved nor refuted")
        .help("split the site across bridges (nodes), or give its devices fewer µmbox instances")
        .witness(json!({ "reason": why })),
    );
    AssertionResult {
        site: site.name.clone(),
        loc: a.loc,
        kind: a.kind,
        status: Status::Unknown(why.into()),
        trace: vec![],
        replay: vec![],
        explored: 0,
        devices: vec![site.devices[a.device.index()].name.clone()],
        groups: 1,
        shortest: true,
        traffic: None,
    }
}

/// One traffic assertion: `plane` is the device's bridge (the site's, or its node's),
/// on which the device is number `di`.
fn check_one(
    v: &mut Verifier<'_>,
    site: &Site,
    plane: &Plane<'_>,
    di: usize,
    live_rules: &[bool],
    a: &TrafficAssertion,
) -> AssertionResult {
    let dev = &site.devices[a.device.index()];
    let ty = v.policy.device_type(dev.ty);
    let states: Vec<StateId> = if a.states.is_empty() {
        (0..ty.states.len()).map(StateId::from_index).collect()
    } else {
        a.states.clone()
    };
    // The states in which the traffic crosses, each with its most open flow.
    let mut open: Vec<(StateId, Followed)> = Vec::new();
    // For `reachable`, a crossing only through µmboxes that declare no contract proves
    // nothing: they may drop it. Those states are set aside.
    let mut undeclared: Vec<(StateId, Followed)> = Vec::new();
    for &s in &states {
        if let Some(f) = crossing(plane, di, s, &a.class, a.dir.starters())
            .into_iter()
            .next()
        {
            if a.kind == AssertKind::Reachable && !f.assumed.is_empty() {
                undeclared.push((s, f));
                continue;
            }
            open.push((s, f));
        }
    }
    let base = |status, traffic| AssertionResult {
        site: site.name.clone(),
        loc: a.loc,
        kind: a.kind,
        status,
        trace: vec![],
        replay: vec![],
        explored: 0,
        devices: vec![dev.name.clone()],
        groups: 1,
        shortest: true,
        traffic,
    };
    let state_name = |s: StateId| ty.states[s.index()].name.clone();
    let listed: Vec<String> = states
        .iter()
        .map(|s| format!("`{}`", state_name(*s)))
        .collect();
    if open.is_empty() && !undeclared.is_empty() {
        let (s, f) = &undeclared[0];
        let names = f
            .assumed
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        v.push(
            Diagnostic::error(
                codes::INCONCLUSIVE,
                format!("traffic assertion could not be decided: {names} declares no traffic contract"),
            )
            .primary(a.loc, "neither proved nor refuted")
            .secondary(ty.states[s.index()].chain_loc, "its only way through")
            .help("a µmbox without a `traffic { ... }` block may drop anything: declare what it does (docs/language.md §4.1)")
            .witness(json!({ "assertion": "reachable", "reason": "no contract", "umboxes": f.assumed })),
        );
        return base(
            Status::Unknown(format!("{names} declares no traffic contract")),
            None,
        );
    }
    if open.is_empty() {
        // Nothing of the class crosses in any listed state: a `never` holds outright.
        let r = base(
            if a.kind == AssertKind::Never {
                Status::Proved
            } else {
                Status::Refuted
            },
            Some(json!({ "crosses_in": [] })),
        );
        if a.kind == AssertKind::Reachable {
            v.push(
                Diagnostic::error(
                    codes::TRAFFIC,
                    format!(
                        "traffic assertion refuted: no {} crosses between `{}` and the uplink",
                        class_text(a),
                        dev.name
                    ),
                )
                .primary(a.loc, format!("blocked in {}", listed.join(", ")))
                .help("every chain of those states drops or answers it; see `kalkic explain K215`")
                .witness(json!({ "assertion": "reachable", "crosses_in": [] })),
            );
        }
        return r;
    }
    // Whether a state where it crosses can be reached is the site search's question.
    let target: Vec<StateId> = open.iter().map(|(s, _)| *s).collect();
    let synthetic = Assertion {
        kind: a.kind,
        cond: in_states(a.device, &target, a.loc),
        loc: a.loc,
    };
    let (mut r, _, replay_failed) = assert::decide(v, site, live_rules, &synthetic);
    // The state the run ends in (or, without a run, the first where it crosses).
    let reached = r
        .trace
        .last()
        .and_then(|step| step.states.get(&dev.name))
        .and_then(|n| open.iter().find(|(s, _)| state_name(*s) == *n))
        .unwrap_or(&open[0]);
    let (state, f) = reached;
    let chain_loc = ty.states[state.index()].chain_loc;
    let traffic = json!({
        "state": state_name(*state),
        "flow": f.flow,
        "what": what(f),
        "openness": match f.openness { Openness::Open => "open", Openness::Authenticated => "authenticated", Openness::Closed => "closed" },
        "hops": f.hops.iter().map(hop_json).collect::<Vec<_>>(),
        "end": f.end,
        "assumed": f.assumed,
        "crosses_in": open.iter().map(|(s, _)| state_name(*s)).collect::<Vec<_>>(),
    });
    r.traffic = Some(traffic.clone());
    r.devices = vec![dev.name.clone()];
    r.loc = a.loc;
    r.kind = a.kind;
    let kind = if a.kind == AssertKind::Never {
        "never"
    } else {
        "reachable"
    };
    let steps: Vec<String> = r.trace.iter().map(|s| s.event.clone()).collect();
    let first_trace = f.hops.first().map(|h| h.trace.clone()).unwrap_or_default();
    let assumed = if f.assumed.is_empty() {
        String::new()
    } else {
        format!(
            "; {} declares no traffic contract and is taken to let everything through",
            f.assumed
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let creds = if f.openness == Openness::Authenticated {
        " (with valid credentials)"
    } else {
        ""
    };
    match (&r.status, a.kind) {
        (Status::Refuted, AssertKind::Never) => {
            v.push(
                Diagnostic::error(
                    codes::TRAFFIC,
                    format!(
                        "traffic assertion refuted: {} crosses between `{}` and the uplink in state `{}`{creds}",
                        what(f),
                        dev.name,
                        state_name(*state)
                    ),
                )
                .primary(a.loc, format!("crosses in {}", open.iter().map(|(s, _)| format!("`{}`", state_name(*s))).collect::<Vec<_>>().join(", ")))
                .secondary(chain_loc, "this chain lets it through")
                .help(format!(
                    "{}{assumed}; on the bridge: ovs-appctl ofproto/trace {} {first_trace}",
                    if steps.is_empty() { "the state is reachable".to_string() } else { format!("the run: {}", steps.join("; then ")) },
                    plane.site.bridge
                ))
                .witness(json!({ "assertion": kind, "traffic": traffic, "trace": r.trace, "replay": r.replay })),
            );
        }
        (Status::Refuted, AssertKind::Reachable) => {
            v.push(
                Diagnostic::error(
                    codes::TRAFFIC,
                    format!(
                        "traffic assertion refuted: {} crosses only in states `{}` never reaches",
                        class_text(a),
                        dev.name
                    ),
                )
                .primary(a.loc, "unreachable where it crosses")
                .help(format!(
                    "it crosses in {}; explored {} combinations of states",
                    open.iter()
                        .map(|(s, _)| format!("`{}`", state_name(*s)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    r.explored
                ))
                .witness(json!({ "assertion": kind, "traffic": traffic, "explored": r.explored })),
            );
        }
        (Status::Unknown(why), _) => {
            v.push(
                Diagnostic::error(codes::INCONCLUSIVE, format!("traffic assertion could not be decided: {why}"))
                    .primary(a.loc, "neither proved nor refuted")
                    .help(if replay_failed {
                        "the runtime engine did not follow the run to the state where it crosses: see docs/verification.md, \"Witness replay\""
                    } else {
                        "an unknown result never counts as success; raise --max-states or simplify the rules"
                    })
                    .witness(json!({ "assertion": kind, "reason": why, "traffic": traffic })),
            );
        }
        _ => {}
    }
    r
}

/// K216: a higher posture that lets through a flow (or ARP) a lower posture stops, per
/// device type, from the contracts of its chains (the switch's part is K212's). An error:
/// the runtime falls back to the most restrictive state when a chain cannot start, and
/// K207 and `escalate` read "higher" as "more protective", so a proof about a lower state
/// holds on the node only if the states above it let through no more.
pub(super) fn monotone(v: &mut Verifier<'_>, id: TypeId) {
    let ty: &DeviceType = v.policy.device_type(id);
    // A type off the switch has no postures to order.
    let Some(chains) = ty
        .states
        .iter()
        .map(|s| s.chain.as_ref().map(|c| v.policy.chain_contracts(c)))
        .collect::<Option<Vec<Vec<Contract>>>>()
    else {
        return;
    };
    let arp: Vec<bool> = ty
        .states
        .iter()
        .map(|s| !matches!(s.chain, Some(crate::ir::Chain::Drop)))
        .collect();
    let classes: Vec<Class> = chains
        .iter()
        .flatten()
        .flat_map(|c| c.clauses.iter().map(|cl| cl.class.clone()))
        .collect();
    let cells = contract::cells(&classes);
    let how = |o: Openness| match o {
        Openness::Open => "lets through",
        Openness::Authenticated => "lets through with credentials",
        Openness::Closed => "stops",
    };
    let mut found = Vec::new();
    for (hi, hchain) in chains.iter().enumerate() {
        for (lo, lchain) in chains.iter().enumerate().take(hi) {
            let hrefs: Vec<&Contract> = hchain.iter().collect();
            let lrefs: Vec<&Contract> = lchain.iter().collect();
            let worse = cells.iter().find_map(|cell| {
                let f = cell.sample();
                let (h, l) = (
                    contract::passage(&hrefs, &f).openness(),
                    contract::passage(&lrefs, &f).openness(),
                );
                (h > l).then(|| (cell.to_string(), Some(f), how(h), how(l)))
            });
            let worse = worse.or_else(|| {
                (arp[hi] && !arp[lo]).then(|| ("ARP".to_string(), None, "lets through", "stops"))
            });
            if let Some(w) = worse {
                found.push((lo, hi, w));
            }
        }
    }
    for (lo, hi, (what, flow, hhow, lhow)) in found {
        let (ls, hs) = (&ty.states[lo], &ty.states[hi]);
        v.push(
            Diagnostic::error(
                codes::NOT_MONOTONE,
                format!(
                    "`{}` is more restrictive than `{}` but {hhow} {what}, which `{}` {lhow}",
                    hs.name, ls.name, ls.name
                ),
            )
            .primary(hs.chain_loc, format!("{hhow} {what}"))
            .secondary(ls.chain_loc, lhow)
            .help(format!(
                "states are ordered least to most restrictive, and the runtime relies on it: it falls back to the most restrictive state when a chain cannot start, and `escalate` and K207 read the order as protection. Give `{}` a chain that stops what `{}` stops, or reorder the states",
                hs.name, ls.name
            ))
            .witness(json!({ "type": ty.name, "lower": ls.name, "higher": hs.name, "flow": flow, "cell": what })),
        );
    }
}

#[cfg(test)]
mod tests {
    //! The two ways to the same answer must agree: following a flow over the generated
    //! switch flows, hop by hop ([`Plane::follow`]), and composing the chain's contracts
    //! alone ([`contract::passage`], what K216 and the shim's `status` use). A difference
    //! is a bug in code generation or in the walk.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::source::{LoadError, SourceLoader};
    use std::path::{Path, PathBuf};

    struct Fs;
    impl SourceLoader for Fs {
        fn read_file(&self, path: &Path) -> Result<String, LoadError> {
            std::fs::read_to_string(path).map_err(|e| LoadError::Other(e.to_string()))
        }
    }

    fn policies() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut out = vec![
            root.join("examples/smart-office/office.kalki"),
            root.join("examples/kalki-lab-corrected/lab.kalki"),
            root.join("examples/badge-door/door.kalki"),
        ];
        for f in std::fs::read_dir(root.join("tests/fixtures/verify")).unwrap() {
            let p = f.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("k215")
                || name.starts_with("k216")
                || name.starts_with("k213_traffic")
            {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn the_walk_over_the_flows_agrees_with_the_chains_contracts() {
        let mut compared = 0;
        for path in policies() {
            let checked = crate::check(std::slice::from_ref(&path), &Fs);
            let model = checked
                .model
                .as_ref()
                .unwrap_or_else(|| panic!("{}", path.display()));
            for site in &model.sites {
                let plane = Plane::new(model, site).unwrap();
                for (di, d) in site.devices.iter().enumerate() {
                    let ty = model.device_type(d.ty);
                    for (si, s) in ty.states.iter().enumerate() {
                        let state = StateId::from_index(si);
                        let Some(chain) = &s.chain else { continue };
                        let contracts = model.chain_contracts(chain);
                        let chain: Vec<&Contract> = contracts.iter().collect();
                        let classes: Vec<Class> = contracts
                            .iter()
                            .flat_map(|c| c.clauses.iter().map(|cl| cl.class.clone()))
                            .collect();
                        let all: Vec<&OfFlow> = plane.base.iter().collect();
                        for cell in contract::cells(&classes) {
                            let f = cell.sample();
                            let followed = plane.follow(di, state, Some(f), f.from);
                            // The index leaves out only flows that cannot meet the packet.
                            let unindexed = plane.follow_over(&all, di, state, Some(f), f.from);
                            assert_eq!(
                                followed.hops.iter().map(|h| &h.outputs).collect::<Vec<_>>(),
                                unindexed
                                    .hops
                                    .iter()
                                    .map(|h| &h.outputs)
                                    .collect::<Vec<_>>(),
                                "{}: {} in {}: {cell}, with and without the index",
                                path.display(),
                                d.name,
                                s.name
                            );
                            let walked = followed.openness;
                            let composed = contract::passage(&chain, &f).openness();
                            assert_eq!(
                                walked,
                                composed,
                                "{}: {} in {}: {cell}",
                                path.display(),
                                d.name,
                                s.name
                            );
                            compared += 1;
                        }
                        // ARP crosses every chain but `drop`, around the µmboxes.
                        let arp = plane.follow(di, state, None, Starter::Uplink).openness;
                        let want = if matches!(s.chain, Some(crate::ir::Chain::Drop)) {
                            Openness::Closed
                        } else {
                            Openness::Open
                        };
                        assert_eq!(
                            arp,
                            want,
                            "{}: ARP to {} in {}",
                            path.display(),
                            d.name,
                            s.name
                        );
                    }
                }
            }
        }
        assert!(compared > 100, "only {compared} cells compared");
    }
}
