//! OpenFlow rule sets for Open vSwitch (OpenFlow 1.5, `ovs-ofctl` syntax): switch port
//! numbers, the base set (classification, anti-spoofing, defaults) and one set per
//! (device, state) that steers the device's traffic through its chain.
//!
//! Flows are data ([`Flow`]) first and text second, so translation validation can reason
//! about exactly what is written. The pipeline is described in `docs/bundle.md`.

use crate::ir::{Chain, Model, Site, StateId, UmboxId, UmboxMode, Value};
use kalki_openflow::flow::{self as of, EthType, FlowMod, Mac};
use serde::Serialize;
use std::net::Ipv4Addr;

/// The largest port number Open vSwitch accepts in `ofport_request`.
pub const MAX_OFPORT: u32 = 65_279;
/// The uplink's port number.
pub const UPLINK_OFPORT: u32 = 1;

/// Cookie kinds (the top byte of every cookie).
pub const COOKIE_BASE: u64 = 1;
pub const COOKIE_DEVICE: u64 = 2;
/// Selects every flow of one device, whatever its state.
pub const DEVICE_COOKIE_MASK: u64 = 0xffff_ffff_ffff_0000;

/// The cookie of a device's flows in one state.
pub fn device_cookie(device: usize, state: StateId) -> u64 {
    (COOKIE_DEVICE << 56) | ((device as u64 + 1) << 16) | (state.index() as u64 & 0xffff)
}

/// The cookie of the base set.
pub fn base_cookie() -> u64 {
    COOKIE_BASE << 56
}

/// One switch port the bundle needs, with the number to request for it: the manifest's
/// `ports` entries, so the types are the manifest's.
pub use kalki_model::manifest::{Port, PortRole, Side};

/// The ports of one µmbox instance: inline µmboxes have `a` and `b`, taps one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPorts {
    Inline { a: u32, b: u32 },
    Tap { p: u32 },
}

/// One µmbox container of a device. States of the device whose chains hold the same
/// µmbox with the same arguments share one instance (the k-th such entry of a chain
/// shares with the k-th of another), so a posture change starts only what the new state
/// adds, and a µmbox that stays keeps running, with its counters, through the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub umbox: UmboxId,
    pub args: Vec<Value>,
    pub ports: EntryPorts,
    /// The states whose chains use this instance, in state order.
    pub states: Vec<StateId>,
}

/// Every port of a site, in a deterministic order and numbering.
#[derive(Debug, Clone, Default)]
pub struct Ports {
    /// The site's tag in µmbox interface names ([`site_tag`]).
    pub tag: String,
    pub all: Vec<Port>,
    pub uplink: u32,
    /// Per device, its port; `None` for a device off the switch.
    pub devices: Vec<Option<u32>>,
    /// Per device, its µmbox instances in order of first use (state, chain position).
    pub instances: Vec<Vec<Instance>>,
    /// Per device, per state, per chain entry: the instance (index into `instances`).
    pub entries: Vec<Vec<Vec<usize>>>,
}

impl Ports {
    /// The ports of one chain entry.
    pub fn entry(&self, device: usize, state: StateId, position: usize) -> EntryPorts {
        self.instances[device][self.entries[device][state.index()][position]].ports
    }
}

/// Why the site does not fit one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpaceExhausted {
    pub needed: u64,
}

/// The name of a µmbox interface's host end: `k<site tag>p<port number>`, at most 11
/// bytes (Linux allows 15). Interface names are global on a node (and in its Open vSwitch
/// database), so they carry a tag of the site: two sites, or two test bridges, never
/// claim the same name.
pub fn umbox_port_name(site_tag: &str, ofport: u32) -> String {
    format!("k{site_tag}p{ofport}")
}

/// Four hex digits from the site's name (the first two bytes of its sha256).
pub fn site_tag(site: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(site.as_bytes());
    format!("{:02x}{:02x}", d[0], d[1])
}

/// Numbers every port: the uplink is 1, the `k`-th device on the switch (in site order)
/// is `2 + k`, then the interfaces of each µmbox instance in order of device and first
/// use. A device off the switch has no port and no µmbox.
pub fn allocate(model: &Model, site: &Site) -> Result<Ports, PortSpaceExhausted> {
    let on_switch = site.devices.iter().filter(|d| d.net.is_some()).count();
    let mut next: u64 = 2 + on_switch as u64;
    // A node's ports carry a tag of the site and the node: nodes are hosts of their
    // own, but two of them may be tried out side by side on one.
    let tag = match &site.part_of {
        Some(node) => site_tag(&format!("{}/{node}", site.name)),
        None => site_tag(&site.name),
    };
    let mut ports = Ports {
        uplink: UPLINK_OFPORT,
        tag,
        ..Ports::default()
    };
    ports.all.push(Port {
        name: site.uplink.clone().unwrap_or_else(|| "uplink".into()),
        ofport: UPLINK_OFPORT,
        role: PortRole::Uplink,
    });
    let mut ofport = 2;
    for d in &site.devices {
        let Some(net) = &d.net else {
            ports.devices.push(None);
            continue;
        };
        ports.devices.push(Some(ofport));
        ports.all.push(Port {
            name: net.port.clone(),
            ofport,
            role: PortRole::Device {
                device: d.name.clone(),
            },
        });
        ofport += 1;
    }
    let tag = ports.tag.clone();
    for d in &site.devices {
        let mut instances: Vec<Instance> = Vec::new();
        let mut per_state = Vec::new();
        for (si, s) in model.device_type(d.ty).states.iter().enumerate() {
            let state = StateId::from_index(si);
            let mut per_entry = Vec::new();
            let Some(Chain::Umboxes(entries)) = &s.chain else {
                per_state.push(per_entry);
                continue;
            };
            for (pos, e) in entries.iter().enumerate() {
                let same = |i: &Instance| i.umbox == e.umbox && i.args == e.args;
                // This entry is the k-th with its µmbox and arguments in this chain.
                let k = entries[..pos]
                    .iter()
                    .filter(|p| p.umbox == e.umbox && p.args == e.args)
                    .count();
                let shared = instances
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| same(i))
                    .nth(k)
                    .map(|(ix, _)| ix);
                let ix = match shared {
                    Some(ix) => ix,
                    None => {
                        let u = model.umbox(e.umbox);
                        let ix = instances.len();
                        let mut take = |side| {
                            let ofport = next as u32;
                            next += 1;
                            ports.all.push(Port {
                                name: umbox_port_name(&tag, ofport),
                                ofport,
                                role: PortRole::Umbox {
                                    device: d.name.clone(),
                                    instance: ix,
                                    umbox: u.name.clone(),
                                    side,
                                },
                            });
                            ofport
                        };
                        let ports = match u.mode {
                            UmboxMode::Inline => {
                                let a = take(Side::A);
                                let b = take(Side::B);
                                EntryPorts::Inline { a, b }
                            }
                            UmboxMode::Tap => EntryPorts::Tap { p: take(Side::Tap) },
                        };
                        instances.push(Instance {
                            umbox: e.umbox,
                            args: e.args.clone(),
                            ports,
                            states: Vec::new(),
                        });
                        ix
                    }
                };
                instances[ix].states.push(state);
                per_entry.push(ix);
            }
            per_state.push(per_entry);
        }
        ports.instances.push(instances);
        ports.entries.push(per_state);
    }
    // Counted while numbering: one pass, and the count is what was allocated.
    let needed = next - 1;
    if needed > u64::from(MAX_OFPORT) {
        return Err(PortSpaceExhausted { needed });
    }
    Ok(ports)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Ip,
    Arp,
}

/// The fields a flow matches on; `None` is a wildcard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Match {
    pub in_port: Option<u32>,
    /// Only frames without a VLAN tag (`vlan_tci=0x0000/0x1fff`): tagged frames would
    /// otherwise slip past the source checks.
    pub untagged: bool,
    pub proto: Option<Proto>,
    pub dl_src: Option<[u8; 6]>,
    pub nw_src: Option<u32>,
    pub nw_dst: Option<u32>,
    pub arp_spa: Option<u32>,
    pub arp_tpa: Option<u32>,
    pub arp_sha: Option<[u8; 6]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "action", content = "arg", rename_all = "snake_case")]
pub enum Action {
    Output(u32),
    GotoTable(u8),
    /// Ordinary L2 switching (unknown hosts, when the site passes them).
    Normal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    #[serde(rename = "match")]
    pub matches: Match,
    /// Empty: drop.
    pub actions: Vec<Action>,
}

/// Table 0: classification and anti-spoofing. Table 1: per-device steering.
pub const CLASSIFY: u8 = 0;
pub const STEER: u8 = 1;

/// Dotted-quad form of an IPv4 address.
pub fn ip(n: u32) -> String {
    let b = n.to_be_bytes();
    format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3])
}

/// Colon-separated form of a MAC address.
pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Flow {
    fn new(table: u8, priority: u16, cookie: u64, matches: Match, actions: Vec<Action>) -> Self {
        Flow {
            table,
            priority,
            cookie,
            matches,
            actions,
        }
    }

    /// The flow as `kalki-openflow` types it: what the runtime parses, encodes and
    /// installs. Rule sets are printed from it, so there is one printer (its `Display`)
    /// and one parser of the syntax.
    pub fn to_flow_mod(&self) -> FlowMod {
        let m = &self.matches;
        FlowMod {
            table: self.table,
            priority: self.priority,
            cookie: self.cookie,
            flags: 0,
            matches: of::Match {
                in_port: m.in_port,
                untagged: m.untagged,
                eth_type: m.proto.map(|p| match p {
                    Proto::Ip => EthType::Ip,
                    Proto::Arp => EthType::Arp,
                }),
                dl_src: m.dl_src.map(Mac),
                nw_src: m.nw_src.map(Ipv4Addr::from),
                nw_dst: m.nw_dst.map(Ipv4Addr::from),
                arp_spa: m.arp_spa.map(Ipv4Addr::from),
                arp_tpa: m.arp_tpa.map(Ipv4Addr::from),
                arp_sha: m.arp_sha.map(Mac),
            },
            actions: of::Actions {
                outputs: self
                    .actions
                    .iter()
                    .filter_map(|a| match a {
                        Action::Output(p) => Some(of::Port::Number(*p)),
                        Action::Normal => Some(of::Port::Normal),
                        Action::GotoTable(_) => None,
                    })
                    .collect(),
                goto_table: self.actions.iter().find_map(|a| match a {
                    Action::GotoTable(t) => Some(*t),
                    _ => None,
                }),
            },
        }
    }

    /// The flow in `ovs-ofctl add-flow` syntax.
    pub fn to_ofctl(&self) -> String {
        self.to_flow_mod().to_string()
    }
}

/// Table 0 and the table-miss rules: which packets belong to which device, and what
/// happens to everything else. Validated against Open vSwitch by hand
/// (`docs/design/openflow-pipeline.md`).
pub fn base_flows(site: &Site, ports: &Ports) -> Vec<Flow> {
    let c = base_cookie();
    let u = ports.uplink;
    let goto = || vec![Action::GotoTable(STEER)];
    let rule = |priority, matches, actions| Flow::new(CLASSIFY, priority, c, matches, actions);
    let mut out = Vec::new();
    for (i, d) in site.devices.iter().enumerate() {
        // A device off the switch has nothing on it to classify.
        let (Some(net), Some(dp)) = (&d.net, ports.devices[i]) else {
            continue;
        };
        // The device's own, untagged traffic: its IP (and MAC, when declared) as source.
        let from = |proto| Match {
            in_port: Some(dp),
            untagged: true,
            proto: Some(proto),
            dl_src: net.mac,
            ..Match::default()
        };
        out.push(rule(
            1000,
            Match {
                nw_src: Some(net.ip),
                ..from(Proto::Ip)
            },
            goto(),
        ));
        out.push(rule(
            1000,
            Match {
                arp_spa: Some(net.ip),
                arp_sha: net.mac,
                ..from(Proto::Arp)
            },
            goto(),
        ));
        // A spoofed source, a VLAN tag, IPv6, anything else from a device port.
        out.push(rule(
            900,
            Match {
                in_port: Some(dp),
                ..Match::default()
            },
            vec![],
        ));
        let to = |proto| Match {
            in_port: Some(u),
            untagged: true,
            proto: Some(proto),
            ..Match::default()
        };
        out.push(rule(
            1000,
            Match {
                nw_dst: Some(net.ip),
                ..to(Proto::Ip)
            },
            goto(),
        ));
        out.push(rule(
            1000,
            Match {
                arp_tpa: Some(net.ip),
                ..to(Proto::Arp)
            },
            goto(),
        ));
    }
    for p in &ports.all {
        if matches!(p.role, PortRole::Umbox { .. }) {
            out.push(rule(
                1000,
                Match {
                    in_port: Some(p.ofport),
                    ..Match::default()
                },
                goto(),
            ));
        }
    }
    // Unknown hosts: whatever no rule above claimed. With `pass`, NORMAL must never reach
    // a device or µmbox port: the runtime isolates them (see docs/bundle.md).
    let unknown = match site.unknown_hosts {
        crate::ir::UnknownHosts::Drop => vec![],
        crate::ir::UnknownHosts::Pass => vec![Action::Normal],
    };
    out.push(rule(0, Match::default(), unknown));
    // A packet classified for a device whose current state installs no rule for it.
    out.push(Flow::new(STEER, 0, c, Match::default(), vec![]));
    out
}

/// Table 1 for one device in one state: its traffic, both ways, through its chain. None
/// for a device off the switch.
pub fn state_flows(
    model: &Model,
    site: &Site,
    ports: &Ports,
    device: usize,
    state: StateId,
) -> Vec<Flow> {
    let d = &site.devices[device];
    let ty = model.device_type(d.ty);
    let c = device_cookie(device, state);
    let (Some(net), Some(dp), Some(chain)) =
        (&d.net, ports.devices[device], &ty.state(state).chain)
    else {
        return Vec::new();
    };
    let u = ports.uplink;
    let from_dev = |proto| Match {
        in_port: Some(dp),
        proto,
        ..Match::default()
    };
    let to_dev_ip = Match {
        in_port: Some(u),
        proto: Some(Proto::Ip),
        nw_dst: Some(net.ip),
        ..Match::default()
    };
    let to_dev_arp = Match {
        in_port: Some(u),
        proto: Some(Proto::Arp),
        arp_tpa: Some(net.ip),
        ..Match::default()
    };
    let mut out = Vec::new();
    match chain {
        // Explicit drops, so the installed state can be read back by cookie and its drops
        // are counted.
        Chain::Drop => {
            out.push(Flow::new(STEER, 100, c, from_dev(None), vec![]));
            out.push(Flow::new(STEER, 100, c, to_dev_ip, vec![]));
            out.push(Flow::new(STEER, 100, c, to_dev_arp, vec![]));
        }
        Chain::Pass => {
            out.push(Flow::new(
                STEER,
                100,
                c,
                from_dev(None),
                vec![Action::Output(u)],
            ));
            out.push(Flow::new(
                STEER,
                100,
                c,
                to_dev_ip,
                vec![Action::Output(dp)],
            ));
            out.push(Flow::new(
                STEER,
                100,
                c,
                to_dev_arp,
                vec![Action::Output(dp)],
            ));
        }
        Chain::Umboxes(_) => {
            let entries: Vec<EntryPorts> = (0..ports.entries[device][state.index()].len())
                .map(|pos| ports.entry(device, state, pos))
                .collect();
            let taps: Vec<Action> = entries
                .iter()
                .filter_map(|e| match e {
                    EntryPorts::Tap { p } => Some(Action::Output(*p)),
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
            // ARP is bridged directly: µmboxes inspect IP traffic.
            out.push(Flow::new(
                STEER,
                100,
                c,
                from_dev(Some(Proto::Arp)),
                vec![Action::Output(u)],
            ));
            out.push(Flow::new(
                STEER,
                100,
                c,
                to_dev_arp,
                vec![Action::Output(dp)],
            ));
            let first_a = inline.first().map_or(u, |(a, _)| *a);
            let last_b = inline.last().map_or(dp, |(_, b)| *b);
            let mut fwd = taps.clone();
            fwd.push(Action::Output(first_a));
            out.push(Flow::new(STEER, 100, c, from_dev(Some(Proto::Ip)), fwd));
            let mut rev = taps;
            rev.push(Action::Output(last_b));
            out.push(Flow::new(STEER, 100, c, to_dev_ip, rev));
            for (i, (a, b)) in inline.iter().enumerate() {
                let next_a = inline.get(i + 1).map_or(u, |(na, _)| *na);
                let prev_b = if i == 0 { dp } else { inline[i - 1].1 };
                out.push(Flow::new(
                    STEER,
                    100,
                    c,
                    Match {
                        in_port: Some(*b),
                        ..Match::default()
                    },
                    vec![Action::Output(next_a)],
                ));
                out.push(Flow::new(
                    STEER,
                    100,
                    c,
                    Match {
                        in_port: Some(*a),
                        ..Match::default()
                    },
                    vec![Action::Output(prev_b)],
                ));
            }
        }
    }
    out
}

/// A rule set as an `ovs-ofctl add-flows` file: one flow per line, in a stable order.
pub fn render(flows: &[Flow]) -> String {
    let mut lines: Vec<String> = flows.iter().map(Flow::to_ofctl).collect();
    lines.sort();
    lines.iter().map(|l| format!("{l}\n")).collect()
}
