//! The node: one bundle on one Open vSwitch bridge and one Docker engine.
//!
//! [`Node::plan`] compares what the switch and the engine hold with what the bundle asks
//! for, given each device's state; [`Node::execute`] makes it so, in an order that never
//! opens a gap: µmboxes first (started, plugged, ready), then flows (each device's set
//! replaced in one OpenFlow bundle), then what is no longer wanted is stopped. A device
//! whose µmboxes cannot be started fails closed ([`Node::fail_closed`]). Applying the
//! same bundle twice plans nothing the second time.
//!
//! [`Node::change_posture`] is the same thing for one device at run time:
//! make-before-break, fail-closed (`docs/runtime.md`, "Posture changes").

use crate::bundle::Bundle;
use crate::cmd::CmdError;
use crate::containers::{self, ContainerError, ContainerSpec, Containers};
use crate::manifest::{Container, UnknownHosts};
use crate::net::{self, Link};
use crate::ovs::{self, Isolation, Ovs, OvsError};
use futures_util::StreamExt as _;
use kalki_openflow::{self as of, FlowMod};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;
use tokio::sync::Mutex;

/// Labels the shim puts on its containers, besides the bundle's own.
pub const LABEL_SPEC: &str = "kalki.spec";
pub const LABEL_PORTS: &str = "kalki.ports";
pub const LABEL_SITE: &str = "kalki.site";
/// How many devices' flow sets one OpenFlow bundle of an apply carries.
const INSTALLS_PER_BUNDLE: usize = 64;
/// The base rule set's path in a bundle.
const BASE_RULES: &str = "flows/base.ofctl";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Ovs(#[from] OvsError),
    #[error(transparent)]
    Containers(#[from] ContainerError),
    #[error(transparent)]
    Link(#[from] CmdError),
    #[error("interface `{name}` ({what}) does not exist on this node; nothing was changed")]
    MissingInterface { name: String, what: String },
    #[error("device `{device}` has no state `{state}` in this bundle")]
    NoState { device: String, state: String },
    #[error("device `{device}` is off the switch: the node holds nothing for it")]
    OffSwitch { device: String },
    #[error("rule set `{path}` does not parse: {detail}")]
    RuleSet { path: String, detail: String },
    #[error("OpenFlow: {0}")]
    OpenFlow(#[from] of::Error),
    #[error(transparent)]
    Plug(#[from] net::PlugError),
    #[error(transparent)]
    Isolation(#[from] net::IsolationError),
    #[error("the node cannot be read: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `netdev` (userspace; works without the kernel module) or `system`.
    pub datapath: String,
    /// Limit of every single OVS, Docker or `ip` call.
    pub call_timeout: Duration,
    /// How long a µmbox may take to say it is ready.
    pub ready_timeout: Duration,
    /// Where the node keeps the µmboxes' secrets (`DIR/DEVICE/NAME`, else `DIR/NAME`).
    pub secrets_dir: std::path::PathBuf,
    /// How many µmboxes are started (or stopped) at once: more would only queue inside
    /// the container engine, where the wait counts against each call's deadline.
    pub parallel: usize,
    /// How long one µmbox's start is tried again after a transient failure (the engine
    /// not answering in time), with a growing pause, before its device fails closed.
    pub start_deadline: Duration,
    /// How many µmboxes of the devices' next states are kept started and idle (no flow
    /// leads to them), so that a change to such a state only swaps flows. 0: none.
    pub warm: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            datapath: "netdev".into(),
            call_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(30),
            secrets_dir: crate::secrets::DEFAULT_DIR.into(),
            parallel: 8,
            start_deadline: Duration::from_secs(60),
            warm: 0,
        }
    }
}

impl NodeError {
    /// Whether trying again may succeed: a backend, switch or tool that did not answer
    /// in time or could not be reached. Anything else is the µmbox's own fault.
    pub fn is_transient(&self) -> bool {
        match self {
            NodeError::Containers(e) => e.is_transient(),
            NodeError::Ovs(OvsError::Cmd(CmdError::Timeout { .. }))
            | NodeError::Link(CmdError::Timeout { .. })
            | NodeError::Plug(net::PlugError::Cmd(CmdError::Timeout { .. })) => true,
            _ => false,
        }
    }
}

/// How far an execution has come, for a progress display: µmboxes started or stopped,
/// devices installed, out of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub done: usize,
    pub total: usize,
    /// Of `done`, how many failed.
    pub failed: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Installing,
    Warming,
    Stopping,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting µmboxes",
            Phase::Installing => "installing flows",
            Phase::Warming => "starting µmboxes of next states",
            Phase::Stopping => "stopping µmboxes",
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateBridge,
    /// Make the bridge fail-closed again: `fail_mode=secure`, no controller, no mirror.
    SecureBridge,
    /// Keep the node's own network stack off an interface the switch uses.
    Isolate {
        name: String,
    },
    /// Take the kernel hooks (XDP, traffic control filters) off an interface.
    Unhook {
        name: String,
    },
    /// Clear a port's OpenFlow configuration bits (down, no-forward, ...).
    ResetPort {
        name: String,
    },
    /// The uplink or a device's port (an existing interface).
    AddPort {
        name: String,
        ofport: u32,
    },
    /// A port on the bridge that the bundle does not know, or whose interface is gone.
    RemovePort {
        name: String,
    },
    /// Start (or restart) a µmbox instance, plug it in and wait until it is ready.
    StartContainer {
        device: usize,
        path: String,
    },
    /// Start a µmbox one of the device's next states uses, kept idle until a change to
    /// that state ([`NodeConfig::warm`]). A failure is reported, and the device keeps its
    /// posture: the change will start it cold.
    StartWarm {
        device: usize,
        path: String,
    },
    ReplaceBase,
    /// Replace a device's flows with its target's set.
    Install {
        device: usize,
        target: Target,
    },
    /// Flows with a cookie no device or base set of this bundle has.
    DeleteStrayFlows {
        cookie: u64,
    },
    /// With the host ends of its interfaces (from its label, read when planning).
    StopContainer {
        name: String,
        ports: Vec<String>,
    },
}

/// What [`Node::execute`] would do, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Keeps the first `n` starts of next states' µmboxes and drops the others (a later
    /// look at the node plans them again): a loop that must not wait long bounds its
    /// share of them.
    pub fn limit_warm(&mut self, n: usize) {
        let mut kept = 0;
        self.actions.retain(|a| match a {
            Action::StartWarm { .. } => {
                kept += 1;
                kept <= n
            }
            _ => true,
        });
    }

    /// How many steps of each kind, in the order they run: a large plan in a few lines.
    pub fn kinds(&self) -> Vec<(&'static str, usize)> {
        let mut out: Vec<(&'static str, usize)> = Vec::new();
        for a in &self.actions {
            let kind = match a {
                Action::CreateBridge => "create the bridge",
                Action::SecureBridge => "secure the bridge",
                Action::Isolate { .. } => "keep the node's stack off an interface",
                Action::Unhook { .. } => "remove kernel hooks from an interface",
                Action::ResetPort { .. } => "reset a port's configuration",
                Action::AddPort { .. } => "add a port",
                Action::RemovePort { .. } => "remove a port",
                Action::StartContainer { .. } => "start a µmbox",
                Action::StartWarm { .. } => "start a µmbox for a next state",
                Action::ReplaceBase => "replace the base flows",
                Action::Install { .. } => "install a device's flows",
                Action::DeleteStrayFlows { .. } => "delete stray flows",
                Action::StopContainer { .. } => "stop a µmbox",
            };
            match out.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => out.push((kind, 1)),
            }
        }
        out
    }
}

/// What an execution did, besides the plan itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Devices that could not get their state's µmboxes: (device, what was installed
    /// instead, why).
    pub failed_closed: Vec<(usize, Closed, String)>,
    /// µmboxes of next states that could not be started: (device, path, why). The
    /// device keeps its posture; a change to that state starts them cold.
    pub warm_failed: Vec<(usize, String, String)>,
}

/// What a device got when it failed closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Its most restrictive state's rule set.
    State(usize),
    /// No flows at all: every packet of the device meets table 1's drop.
    NoFlows,
}

/// The outcome of a posture change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posture {
    /// `committed`: when the device's new flows were in force on the switch (the
    /// µmboxes only the old state used are stopped after that).
    Changed {
        committed: std::time::Instant,
        /// Whether µmboxes were started or stopped (else only flows were swapped).
        touched: bool,
    },
    FailedClosed {
        installed: Closed,
        reason: String,
    },
    /// The device is off the switch: a change of its state changes nothing on the node.
    OffSwitch,
}

pub struct Node {
    bundle: Bundle,
    ovs: Ovs,
    docker: Containers,
    cfg: NodeConfig,
    /// Every rule set, parsed once: path → flows.
    flows: BTreeMap<String, Vec<FlowMod>>,
    /// The same, each flow as `ovs-ofctl` writes it, sorted: what a dump is compared with.
    expected: BTreeMap<String, Vec<String>>,
    /// A device's cookie bits (under the device mask) → the device.
    owners: BTreeMap<u64, usize>,
    /// Every interface the switch uses for this bundle: the uplink, the device ports and
    /// the host ends of every µmbox instance.
    managed: BTreeSet<String>,
    /// The site's containers as last seen: a look at the node's list, amended by every
    /// start and stop since. A posture change reads it instead of asking the engine
    /// (no round trip on the warm path). Wrong only after a µmbox ends between two
    /// looks: the change then installs flows towards its gone port, which drop, and its
    /// end fails the device closed and starts it again (`run`).
    seen: std::sync::Mutex<Option<BTreeMap<String, containers::Running>>>,
    /// The OpenFlow connection to the bridge, made when first needed (the bridge may not
    /// exist before `apply` creates it) and made again when it breaks.
    switch: Mutex<Option<of::Client>>,
}

/// What one device should have on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A state's flows and µmboxes (its engine state, or its most restrictive state when
    /// it failed closed).
    State(usize),
    /// No flows at all: every packet classified for it meets table 1's drop.
    NoFlows,
}

impl From<Closed> for Target {
    fn from(c: Closed) -> Target {
        match c {
            Closed::State(s) => Target::State(s),
            Closed::NoFlows => Target::NoFlows,
        }
    }
}

/// What is done on the OpenFlow connection.
#[derive(Clone, Copy)]
enum SwitchOp<'a> {
    Swap {
        cookie: u64,
        mask: u64,
        flows: &'a [FlowMod],
    },
    /// Several sets in one bundle.
    SwapMany(&'a [(u64, u64, &'a [FlowMod])]),
    Dump,
}

/// Whose a flow on the switch is, by its cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Base,
    Device(usize),
    /// A cookie no set of this bundle has.
    Stray(u64),
}

/// The switch, as read.
#[derive(Debug, Clone, Default)]
pub struct SwitchView {
    bridge: bool,
    /// Port name → OpenFlow number (-1: its interface is gone).
    ports: BTreeMap<String, i64>,
    /// The flows, by owner, each as `ovs-ofctl` would write it, sorted.
    flows: BTreeMap<Owner, Vec<String>>,
    /// Devices whose flows on the switch are none of their rule sets (tampered with):
    /// such flows may act on any device's packets.
    tampered: BTreeSet<usize>,
    /// What of the bridge's configuration lets traffic around the flows (a fail mode
    /// other than secure, a controller, a mirror; `Ovs::bridge_leaks`).
    pub leaks: Vec<String>,
    /// The ports' OpenFlow configuration and link state, by name (`Ovs::port_desc`).
    pub desc: BTreeMap<String, ovs::PortDesc>,
}

/// One look at the node: the switch, the container engine, the host's interfaces. Each
/// part is what was read, or why it could not be read. Changes nothing.
#[derive(Debug, Clone)]
pub struct Observation {
    pub switch: Result<SwitchView, String>,
    /// The site's containers: name → what the engine says of it.
    pub containers: Result<BTreeMap<String, containers::Running>, String>,
    pub interfaces: Result<BTreeSet<String>, String>,
    /// Interfaces the switch uses on which the node's own stack is still on: what is on.
    pub exposed: BTreeMap<String, String>,
    /// Interfaces the switch uses with a kernel hook that can move frames around it (an
    /// XDP program, traffic control that can carry filters): what is there.
    pub hooked: BTreeMap<String, String>,
}

/// See [`Node::umbox_in_place`]; the running image's spec is not looked at.
fn in_place(
    containers: &BTreeMap<String, containers::Running>,
    ports: &BTreeMap<String, i64>,
    desc: &BTreeMap<String, ovs::PortDesc>,
    c: &Container,
) -> bool {
    containers.get(&c.name).is_some_and(|r| r.running)
        && c.interfaces.iter().all(|i| {
            ports.get(&i.port_name) == Some(&i64::from(i.ofport))
                && !desc.get(&i.port_name).is_some_and(|p| p.link_down)
        })
}

impl Node {
    /// Fails if a rule set of the bundle is not in the syntax `kalkic` writes.
    pub fn new(bundle: Bundle, docker: Containers, cfg: NodeConfig) -> Result<Node, NodeError> {
        let ovs = Ovs::new(bundle.manifest.bridge.clone(), cfg.call_timeout);
        let mut flows = BTreeMap::new();
        let mut expected = BTreeMap::new();
        for (path, text) in &bundle.rule_sets {
            let parsed = of::parse_rule_set(text).map_err(|errors| NodeError::RuleSet {
                path: path.clone(),
                detail: errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            })?;
            expected.insert(path.clone(), normalised(&parsed));
            flows.insert(path.clone(), parsed);
        }
        let mask = bundle.manifest.cookies.device_mask.0;
        let owners = bundle
            .manifest
            .devices
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let s = d.states.first()?.switch.as_ref()?;
                Some((s.cookie.0 & mask, i))
            })
            .collect();
        let m = &bundle.manifest;
        let managed = m
            .uplink
            .name
            .iter()
            .chain(
                m.devices
                    .iter()
                    .filter_map(|d| d.net.as_ref().map(|n| &n.port)),
            )
            .chain(
                bundle
                    .containers
                    .values()
                    .flat_map(|c| c.interfaces.iter().map(|i| &i.port_name)),
            )
            .cloned()
            .collect();
        Ok(Node {
            managed,
            bundle,
            ovs,
            docker,
            cfg,
            flows,
            expected,
            owners,
            seen: std::sync::Mutex::new(None),
            switch: Mutex::new(None),
        })
    }

    /// Runs `op` on the OpenFlow connection to the bridge, connecting first if needed.
    /// On a broken connection (the switch restarted, or an answer never came), connects
    /// again once and runs `op` again: both operations are idempotent (a swap to the same
    /// set, a dump). Returns the flows a dump read (none for a swap).
    async fn on_switch(&self, op: SwitchOp<'_>) -> Result<Vec<FlowMod>, NodeError> {
        let mut guard = self.switch.lock().await;
        for attempt in 0..2 {
            if guard.is_none() {
                let path = of::mgmt_socket(&self.bundle.manifest.bridge);
                *guard = Some(of::Client::connect(&path, self.cfg.call_timeout).await?);
            }
            let Some(client) = guard.as_mut() else {
                continue;
            };
            let result = match op {
                SwitchOp::Swap {
                    cookie,
                    mask,
                    flows,
                } => client.swap(cookie, mask, flows).await.map(|()| Vec::new()),
                SwitchOp::SwapMany(sets) => client.swap_many(sets).await.map(|()| Vec::new()),
                SwitchOp::Dump => client.dump(0, 0).await,
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_disconnect() && attempt == 0 => {
                    *guard = None;
                }
                Err(e) => {
                    if e.is_disconnect() {
                        *guard = None;
                    }
                    return Err(e.into());
                }
            }
        }
        Err(of::Error::Disconnected {
            reason: "the switch closed the connection twice".into(),
        }
        .into())
    }

    /// Replaces every flow under `cookie`/`mask` with `flows` in one OpenFlow bundle.
    pub async fn swap(&self, cookie: u64, mask: u64, flows: &[FlowMod]) -> Result<(), NodeError> {
        self.on_switch(SwitchOp::Swap {
            cookie,
            mask,
            flows,
        })
        .await
        .map(|_| ())
    }

    /// The switch as read: whether the bridge exists, its ports (name → OpenFlow number,
    /// -1 for a port whose interface is gone) and every flow it holds, which are sorted
    /// by cookie into the base set, each device's set and strays.
    pub fn switch_view(
        &self,
        bridge: bool,
        ports: BTreeMap<String, i64>,
        flows: Vec<FlowMod>,
    ) -> SwitchView {
        let mut by: BTreeMap<Owner, Vec<FlowMod>> = BTreeMap::new();
        for f in flows {
            let owner = self.owner(f.cookie);
            by.entry(owner).or_default().push(f);
        }
        let flows: BTreeMap<Owner, Vec<String>> =
            by.into_iter().map(|(o, f)| (o, normalised(&f))).collect();
        let tampered = flows
            .iter()
            .filter_map(|(o, f)| match o {
                Owner::Device(d) => {
                    let states = &self.bundle.manifest.devices[*d].states;
                    let known = states
                        .iter()
                        .filter_map(|st| st.switch.as_ref())
                        .any(|st| self.expected.get(&st.flows).map(Vec::as_slice) == Some(f));
                    (!known).then_some(*d)
                }
                _ => None,
            })
            .collect();
        SwitchView {
            bridge,
            ports,
            flows,
            tampered,
            leaks: Vec::new(),
            desc: BTreeMap::new(),
        }
    }

    fn owner(&self, cookie: u64) -> Owner {
        let base = self.bundle.manifest.cookies.base.0;
        if cookie == base {
            return Owner::Base;
        }
        match self.owners.get(&(cookie & self.mask())) {
            // Only a state cookie of that device: its kind and state bits must be one of
            // its states' (a stray cookie may share the device bits).
            Some(&d)
                if self.bundle.manifest.devices[d]
                    .states
                    .iter()
                    .filter_map(|s| s.switch.as_ref())
                    .any(|s| s.cookie.0 == cookie) =>
            {
                Owner::Device(d)
            }
            _ => Owner::Stray(cookie),
        }
    }

    fn parsed(&self, path: &str) -> &[FlowMod] {
        self.flows.get(path).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn ovs(&self) -> &Ovs {
        &self.ovs
    }

    pub fn docker(&self) -> &Containers {
        &self.docker
    }

    fn isolation(&self, uplink: bool) -> Isolation {
        match (self.bundle.manifest.unknown_hosts, uplink) {
            (UnknownHosts::Drop, _) => Isolation::None,
            (UnknownHosts::Pass, true) => Isolation::Uplink,
            (UnknownHosts::Pass, false) => Isolation::Managed,
        }
    }

    fn mask(&self) -> u64 {
        self.bundle.manifest.cookies.device_mask.0
    }

    /// Whether the device is on the switch (the bundle gives it a `net`): a device off
    /// it gets no port, flows or µmboxes, and no verdict but `off switch`.
    pub fn device_on_switch(&self, device: usize) -> bool {
        self.bundle
            .manifest
            .devices
            .get(device)
            .is_some_and(|d| d.on_switch())
    }

    /// The flows a device should have for a target, normalised.
    fn expected_flows(&self, device: usize, target: Target) -> &[String] {
        match target {
            Target::State(s) => self.bundle.manifest.devices[device]
                .states
                .get(s)
                .and_then(|st| st.switch.as_ref())
                .and_then(|st| self.expected.get(&st.flows))
                .map_or(&[], Vec::as_slice),
            Target::NoFlows => &[],
        }
    }

    fn expected_base(&self) -> &[String] {
        self.expected.get(BASE_RULES).map_or(&[], Vec::as_slice)
    }

    /// The uplink and device ports: (name, number, what).
    fn fixed_ports(&self) -> Vec<(String, u32, String)> {
        let m = &self.bundle.manifest;
        let mut out = Vec::new();
        if let Some(name) = &m.uplink.name {
            out.push((name.clone(), m.uplink.ofport, "the uplink".to_string()));
        }
        for d in &m.devices {
            if let Some(net) = &d.net {
                out.push((net.port.clone(), net.ofport, format!("device `{}`", d.name)));
            }
        }
        out
    }

    /// The container manifests a device needs in a state, by path.
    fn wanted(&self, device: usize, state: usize) -> Vec<(&str, &Container)> {
        let d = &self.bundle.manifest.devices[device];
        d.states
            .get(state)
            .and_then(|s| s.switch.as_ref())
            .map(|s| {
                s.containers
                    .iter()
                    .filter_map(|p| self.bundle.containers.get(p).map(|c| (p.as_str(), c)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The container manifests a target needs.
    pub fn wanted_for(&self, device: usize, target: Target) -> Vec<(&str, &Container)> {
        match target {
            Target::State(s) => self.wanted(device, s),
            Target::NoFlows => Vec::new(),
        }
    }

    /// The µmboxes kept started for the devices' next states ([`NodeConfig::warm`] at
    /// most), beyond those their targets use: each device's nearest more restrictive
    /// next state first (an escalation is where a wait for a container costs most), one
    /// rank for every device before the next rank for any ([`Manifest::successors`]).
    ///
    /// [`Manifest::successors`]: crate::manifest::Manifest::successors
    pub fn warm(&self, targets: &[Target]) -> Vec<(usize, &str, &Container)> {
        let budget = self.cfg.warm;
        let mut out: Vec<(usize, &str, &Container)> = Vec::new();
        if budget == 0 {
            return out;
        }
        let mut taken: BTreeSet<&str> = targets
            .iter()
            .enumerate()
            .flat_map(|(d, &t)| self.wanted_for(d, t))
            .map(|(_, c)| c.name.as_str())
            .collect();
        let next: Vec<(usize, Vec<usize>)> = targets
            .iter()
            .enumerate()
            .filter_map(|(d, t)| match t {
                Target::State(s) if self.device_on_switch(d) => {
                    Some((d, self.bundle.manifest.successors(d, *s)))
                }
                _ => None,
            })
            .collect();
        let ranks = next.iter().map(|(_, n)| n.len()).max().unwrap_or(0);
        for rank in 0..ranks {
            for (d, states) in &next {
                let Some(&s) = states.get(rank) else {
                    continue;
                };
                for (path, c) in self.wanted(*d, s) {
                    if out.len() == budget {
                        return out;
                    }
                    if taken.insert(c.name.as_str()) {
                        out.push((*d, path, c));
                    }
                }
            }
        }
        out
    }

    /// What a container runs, as a digest: image, command, environment, interfaces
    /// (names and port numbers) and secrets (names and where they are mounted, never
    /// their files or content). A running container with the same digest is up to
    /// date. Labels are left out on purpose: they carry the policy's digest, which changes
    /// with any edit of the policy, and a new bundle must restart only the µmboxes whose
    /// own definition changed.
    pub fn spec_digest(&self, path: &str) -> String {
        let Some(c) = self.bundle.containers.get(path) else {
            return String::new();
        };
        let interfaces: Vec<(&str, &str, u32)> = c
            .interfaces
            .iter()
            .map(|i| (i.name.as_str(), i.port_name.as_str(), i.ofport))
            .collect();
        let mut spec = serde_json::json!([c.image, c.args, c.env, interfaces]);
        // Only when there are secrets: the digests of µmboxes without any stay what they
        // were, and an upgraded shim restarts none of them.
        if !c.secrets.is_empty() {
            let secrets: Vec<(&str, &str)> = c
                .secrets
                .iter()
                .map(|m| (m.name.as_str(), m.path.as_str()))
                .collect();
            if let Some(a) = spec.as_array_mut() {
                a.push(serde_json::json!(secrets));
            }
        }
        crate::bundle::sha256_hex(spec.to_string().as_bytes())
    }

    /// Looks at the node: the bridge, its ports and flows, the site's containers, the
    /// host's interfaces and whether the node's stack is kept off the switch's. Never
    /// fails: what cannot be read is recorded as such.
    pub async fn observe(&self) -> Observation {
        let switch = async {
            let bridge = self.ovs.bridge_exists().await?;
            if !bridge {
                return Ok(SwitchView::default());
            }
            let ports = self.ovs.ports().await?;
            let flows = self.on_switch(SwitchOp::Dump).await?;
            let mut view = self.switch_view(bridge, ports, flows);
            view.leaks = self.ovs.bridge_leaks().await?;
            view.desc = self.ovs.port_desc().await?;
            Ok::<SwitchView, NodeError>(view)
        };
        let containers = async {
            let list = self
                .docker
                .list(LABEL_SITE, &self.bundle.manifest.container_scope())
                .await?;
            Ok::<BTreeMap<String, containers::Running>, NodeError>(
                list.into_iter().map(|c| (c.name.clone(), c)).collect(),
            )
        };
        // The host's links once: their names, and which carry XDP, for the hooks.
        let host = async {
            let links = net::links(self.cfg.call_timeout).await?;
            let hooks = net::hooks(&links, self.cfg.call_timeout).await;
            Ok::<_, NodeError>((links.names, hooks))
        };
        let (switch, containers, host) =
            futures_util::future::join3(switch, containers, host).await;
        if let Ok(c) = &containers {
            self.set_seen(Some(c.clone()));
        }
        let (interfaces, hooks) = match host {
            Ok((names, hooks)) => (Ok(names), hooks.map_err(|e| e.to_string())),
            Err(e) => (Err(e.to_string()), Err(e.to_string())),
        };
        let managed = &self.managed;
        let exposed = match &interfaces {
            Ok(present) => managed
                .iter()
                .filter(|i| present.contains(*i))
                .filter_map(|i| net::exposure(i).map(|what| (i.clone(), what)))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        let hooked = match hooks {
            Ok(h) => h.into_iter().filter(|(i, _)| managed.contains(i)).collect(),
            // Unreadable hooks are reported on every managed interface: nothing is
            // claimed that was not seen.
            Err(e) => managed
                .iter()
                .map(|i| (i.clone(), format!("hooks that cannot be read ({e})")))
                .collect(),
        };
        Observation {
            switch: switch.map_err(|e| e.to_string()),
            containers: containers.map_err(|e| e.to_string()),
            interfaces,
            exposed,
            hooked,
        }
    }

    /// The interfaces the bundle names that this node lacks: (name, what).
    pub fn missing_interfaces(&self, obs: &Observation) -> Vec<(String, String)> {
        let Ok(present) = &obs.interfaces else {
            return Vec::new();
        };
        self.fixed_ports()
            .into_iter()
            .filter(|(name, _, _)| !present.contains(name))
            .map(|(name, _, what)| (name, what))
            .collect()
    }

    /// Whether a container is running the manifest at `path` and plugged in as it says.
    fn up_to_date(
        &self,
        containers: &BTreeMap<String, containers::Running>,
        ports: &BTreeMap<String, i64>,
        desc: &BTreeMap<String, ovs::PortDesc>,
        path: &str,
        c: &Container,
    ) -> bool {
        containers
            .get(&c.name)
            .is_some_and(|r| r.labels.get(LABEL_SPEC) == Some(&self.spec_digest(path)))
            && in_place(containers, ports, desc, c)
    }

    /// Whether µmbox `c` is in place as `obs` saw the node: running, each of its
    /// interfaces on the bridge at its OpenFlow port with its link up. A µmbox killed is
    /// seen out of place by either: its interfaces go before the engine says it stopped.
    /// Nothing can be said (false) of a node that could not be read.
    pub fn umbox_in_place(obs: &Observation, c: &Container) -> bool {
        match (&obs.containers, &obs.switch) {
            (Ok(containers), Ok(sw)) => in_place(containers, &sw.ports, &sw.desc, c),
            _ => false,
        }
    }

    /// What it takes to bring the node to the bundle with devices in `states` (indices
    /// into each device's states), as `apply` does: looks, changes nothing. Fails if an
    /// interface the bundle names (uplink, device ports) does not exist.
    pub async fn plan(&self, states: &[usize]) -> Result<Plan, NodeError> {
        let obs = self.observe().await;
        if let Some((name, what)) = self.missing_interfaces(&obs).into_iter().next() {
            return Err(NodeError::MissingInterface { name, what });
        }
        let targets: Vec<Target> = states.iter().map(|&s| Target::State(s)).collect();
        self.plan_from(&obs, &targets)
    }

    /// What it takes to bring the node, as `obs` saw it, to `targets` (one per device).
    /// A device or uplink port that does not exist is left out (nothing can be done for
    /// it until it appears); everything else is planned.
    pub fn plan_from(&self, obs: &Observation, targets: &[Target]) -> Result<Plan, NodeError> {
        let (sw, containers, present) = match (&obs.switch, &obs.containers, &obs.interfaces) {
            (Ok(sw), Ok(c), Ok(p)) => (sw, c, p),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return Err(NodeError::Unreadable(e.clone()))
            }
        };
        let mut plan = Plan::default();
        if !sw.bridge {
            plan.actions.push(Action::CreateBridge);
        }
        if !sw.leaks.is_empty() {
            plan.actions.push(Action::SecureBridge);
        }
        for name in obs.exposed.keys() {
            plan.actions.push(Action::Isolate { name: name.clone() });
        }
        for name in obs.hooked.keys() {
            plan.actions.push(Action::Unhook { name: name.clone() });
        }

        let mut expected_ports: BTreeSet<String> = BTreeSet::new();
        for (name, ofport, _) in self.fixed_ports() {
            if !present.contains(&name) {
                // Missing: its old port record (if any) is kept until it comes back.
                expected_ports.insert(name);
                continue;
            }
            if sw.ports.get(&name) != Some(&i64::from(ofport)) {
                if sw.ports.contains_key(&name) {
                    plan.actions.push(Action::RemovePort { name: name.clone() });
                }
                plan.actions.push(Action::AddPort {
                    name: name.clone(),
                    ofport,
                });
            }
            expected_ports.insert(name);
        }
        let mut wanted_names = BTreeSet::new();
        let mut restart_ports = BTreeSet::new();
        // The devices' own µmboxes, then those kept warm for their next states.
        let own = targets.iter().enumerate().flat_map(|(d, &t)| {
            self.wanted_for(d, t)
                .into_iter()
                .map(move |(p, c)| (d, p, c, false))
        });
        let warm = self
            .warm(targets)
            .into_iter()
            .map(|(d, p, c)| (d, p, c, true));
        for (d, path, c, warm) in own.chain(warm) {
            wanted_names.insert(c.name.clone());
            for i in &c.interfaces {
                expected_ports.insert(i.port_name.clone());
            }
            if !self.up_to_date(containers, &sw.ports, &sw.desc, path, c) {
                let (device, path) = (d, path.to_string());
                plan.actions.push(if warm {
                    Action::StartWarm { device, path }
                } else {
                    Action::StartContainer { device, path }
                });
                restart_ports.extend(c.interfaces.iter().map(|i| i.port_name.clone()));
            }
        }
        // Ports of µmboxes that are not wanted, or are about to be replugged.
        for name in sw.ports.keys() {
            if !expected_ports.contains(name) || restart_ports.contains(name) {
                plan.actions.push(Action::RemovePort { name: name.clone() });
            }
        }
        // Ports that stay, with OpenFlow config bits someone set (a port replugged or
        // re-added comes back clean; one whose interface is gone has nothing to set).
        for (name, p) in &sw.desc {
            let stays = expected_ports.contains(name)
                && !restart_ports.contains(name)
                && sw.ports.get(name).is_some_and(|&n| n != -1)
                && !plan
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::AddPort { name: n, .. } if n == name));
            if !p.config.is_empty() && stays {
                plan.actions.push(Action::ResetPort { name: name.clone() });
            }
        }
        let empty: &[String] = &[];
        let held = |o: Owner| sw.flows.get(&o).map_or(empty, Vec::as_slice);
        if !sw.bridge || held(Owner::Base) != self.expected_base() {
            plan.actions.push(Action::ReplaceBase);
        }
        for (d, &t) in targets.iter().enumerate() {
            // Nothing to install for a device off the switch.
            if !self.device_on_switch(d) {
                continue;
            }
            if !sw.bridge || held(Owner::Device(d)) != self.expected_flows(d, t) {
                plan.actions.push(Action::Install {
                    device: d,
                    target: t,
                });
            }
        }
        for o in sw.flows.keys() {
            if let Owner::Stray(cookie) = o {
                plan.actions
                    .push(Action::DeleteStrayFlows { cookie: *cookie });
            }
        }
        for (name, c) in containers {
            if !wanted_names.contains(name) {
                plan.actions.push(Action::StopContainer {
                    name: name.clone(),
                    ports: ports_of(c),
                });
            }
        }
        // Make-before-break: stop and unplug only after the new flows are in.
        plan.actions.sort_by_key(order);
        Ok(plan)
    }

    /// Whether the node, as `obs` saw it, holds `target` for `device` in full: the
    /// bridge with exactly the base flows and no flow of an unknown cookie, the uplink
    /// and the device's port with the bundle's numbers, exactly the target's flows for
    /// the device, every µmbox of the target running its definition and plugged in, and
    /// the node's own stack off every interface involved. `Err`: what is not in force.
    pub fn check(&self, obs: &Observation, device: usize, target: Target) -> Result<(), String> {
        let sw = obs
            .switch
            .as_ref()
            .map_err(|e| format!("Open vSwitch cannot be read: {e}"))?;
        let m = &self.bundle.manifest;
        if !sw.bridge {
            return Err(format!("the bridge `{}` does not exist", m.bridge));
        }
        let mut why: Vec<String> = Vec::new();
        let empty: &[String] = &[];
        let held = |o: Owner| sw.flows.get(&o).map_or(empty, Vec::as_slice);
        if held(Owner::Base) != self.expected_base() {
            why.push(if held(Owner::Base).is_empty() {
                "the switch holds no base flows".to_string()
            } else {
                "the switch's base flows differ from the bundle's".to_string()
            });
        }
        let strays: Vec<String> = sw
            .flows
            .keys()
            .filter_map(|o| match o {
                Owner::Stray(c) => Some(format!("{c:#x}")),
                _ => None,
            })
            .collect();
        if !strays.is_empty() {
            why.push(format!(
                "the switch holds flows of unknown cookies ({})",
                strays.join(", ")
            ));
        }
        // Another device's flows that are none of its rule sets may match this one's
        // packets (K208 proves only the bundle's sets apart).
        for &other in sw.tampered.iter().filter(|&&o| o != device) {
            why.push(format!(
                "the switch holds flows of `{}` that are none of its rule sets",
                m.devices[other].name
            ));
        }
        if !sw.leaks.is_empty() {
            why.push(format!(
                "the bridge lets traffic around its flows: {}",
                sw.leaks.join(", ")
            ));
        }
        let d = &m.devices[device];
        let Some(net) = &d.net else {
            return Err("it is off the switch: the node holds nothing for it".to_string());
        };
        // A port of the posture: on the bridge with its number and its interface,
        // forwarding, with nothing of the node's stack or the kernel's hooks on it;
        // `chain`: a µmbox's, whose link must also be up (a device may unplug itself,
        // and the uplink's far end may go down, without anything getting through).
        let port = |name: &str, ofport: u32, what: &str, chain: bool, why: &mut Vec<String>| {
            match sw.ports.get(name) {
                None => why.push(format!("{what} `{name}` is not on the bridge")),
                Some(&n) if n == i64::from(ofport) => {}
                Some(-1) => why.push(format!("{what} `{name}` has lost its interface")),
                Some(n) => why.push(format!(
                    "{what} `{name}` is OpenFlow port {n}, not {ofport}"
                )),
            }
            if obs
                .interfaces
                .as_ref()
                .is_ok_and(|present| !present.contains(name))
                && sw.ports.get(name).is_some_and(|&n| n != -1)
            {
                why.push(format!("{what} `{name}` has lost its interface"));
            }
            if let Some(p) = sw.desc.get(name) {
                if !p.config.is_empty() {
                    why.push(format!("{what} `{name}` is set {}", p.config.join(" ")));
                }
                if chain && p.link_down {
                    why.push(format!("{what} `{name}` has its link down"));
                }
            }
            if let Some(on) = obs.exposed.get(name) {
                why.push(format!("the node's own stack is on `{name}` ({on})"));
            }
            if let Some(hook) = obs.hooked.get(name) {
                why.push(format!(
                    "`{name}` has {hook}, which can move frames around the switch"
                ));
            }
        };
        if let Some(up) = &m.uplink.name {
            port(up, m.uplink.ofport, "the uplink", false, &mut why);
        }
        port(&net.port, net.ofport, "its port", false, &mut why);
        let flows = held(Owner::Device(device));
        if flows != self.expected_flows(device, target) {
            why.push(match target {
                Target::State(s) if flows.is_empty() => format!(
                    "the switch holds none of its flows for `{}`",
                    d.states.get(s).map_or("?", |st| st.name.as_str())
                ),
                Target::State(s) => format!(
                    "its flows on the switch are not those of `{}`",
                    d.states.get(s).map_or("?", |st| st.name.as_str())
                ),
                Target::NoFlows => "the switch still holds flows for it".to_string(),
            });
        }
        let wanted = self.wanted_for(device, target);
        if !wanted.is_empty() {
            match &obs.containers {
                Err(e) => why.push(format!("the container engine cannot be read: {e}")),
                Ok(containers) => {
                    for (path, c) in wanted {
                        match containers.get(&c.name) {
                            Some(r) if r.running => {
                                if r.labels.get(LABEL_SPEC) != Some(&self.spec_digest(path)) {
                                    why.push(format!("µmbox `{}` runs another definition", c.name));
                                }
                                for i in &c.interfaces {
                                    port(&i.port_name, i.ofport, "µmbox port", true, &mut why);
                                }
                            }
                            _ => why.push(format!("µmbox `{}` is not running", c.name)),
                        }
                    }
                }
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }

    /// Carries out a plan made by [`Node::plan`]. A device whose
    /// µmboxes fail to start fails closed; that is reported, not an error.
    pub async fn execute(&self, plan: &Plan) -> Result<Report, NodeError> {
        self.execute_with(plan, &|_| {}).await
    }

    /// [`Node::execute`], saying how far it has come as it goes.
    pub async fn execute_with(
        &self,
        plan: &Plan,
        on_progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Report, NodeError> {
        let mut report = Report::default();
        let mut failed: BTreeMap<usize, String> = BTreeMap::new();
        // Ports first: RemovePort of a port about to be replugged must come before the
        // container is started again.
        for a in &plan.actions {
            match a {
                Action::CreateBridge => {
                    self.ovs.ensure_bridge(&self.cfg.datapath).await?;
                }
                Action::Isolate { name } => net::isolate(name)?,
                Action::SecureBridge => self.ovs.secure_bridge().await?,
                Action::Unhook { name } => net::unhook(name, self.cfg.call_timeout).await,
                // The node's stack off it before the switch uses it.
                Action::AddPort { name, .. } => net::isolate(name)?,
                Action::RemovePort { name } => {
                    self.ovs.del_port(name).await?;
                }
                Action::ResetPort { name } => self.ovs.reset_port_config(name).await?,
                _ => {}
            }
        }
        // Together: the additions share transactions (`Ovs::add_port`).
        let added = futures_util::future::join_all(plan.actions.iter().filter_map(|a| match a {
            Action::AddPort { name, ofport } => {
                let uplink = Some(name) == self.bundle.manifest.uplink.name.as_ref();
                Some(self.ovs.add_port(name, *ofport, self.isolation(uplink)))
            }
            _ => None,
        }))
        .await;
        added.into_iter().collect::<Result<Vec<()>, _>>()?;
        let starts: Vec<(usize, &str)> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::StartContainer { device, path } => Some((*device, path.as_str())),
                _ => None,
            })
            .collect();
        // A bounded number at once, each retried within its deadline: a device fails
        // closed for its own µmbox, not for the queue in front of it.
        let mut started = futures_util::stream::iter(
            starts
                .iter()
                .map(|&(device, path)| async move { (device, self.start_retrying(path).await) }),
        )
        .buffer_unordered(self.cfg.parallel.max(1));
        let mut progress = Progress {
            phase: Phase::Starting,
            done: 0,
            total: starts.len(),
            failed: 0,
        };
        while let Some((device, r)) = started.next().await {
            progress.done += 1;
            if let Err(e) = r {
                progress.failed += 1;
                failed.entry(device).or_insert_with(|| e.to_string());
            }
            on_progress(progress);
        }
        drop(started);
        let installs = plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Install { .. }))
            .count();
        let mut progress = Progress {
            phase: Phase::Installing,
            done: 0,
            total: installs,
            failed: 0,
        };
        for a in &plan.actions {
            if let Action::ReplaceBase = a {
                let base = self.bundle.manifest.cookies.base.0;
                self.swap(base, u64::MAX, self.parsed(BASE_RULES)).await?;
            }
        }
        // Devices' sets, many to an OpenFlow bundle (each commit costs the switch a
        // look at its flows); a device with no flows at all on its own.
        let states: Vec<(usize, usize)> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Install {
                    device,
                    target: Target::State(s),
                } if !failed.contains_key(device) => Some((*device, *s)),
                _ => None,
            })
            .collect();
        for chunk in states.chunks(INSTALLS_PER_BUNDLE) {
            self.install_many(chunk).await?;
            progress.done += chunk.len();
            on_progress(progress);
        }
        for a in &plan.actions {
            match a {
                Action::Install {
                    device,
                    target: Target::NoFlows,
                } => {
                    if !failed.contains_key(device) {
                        self.install_target(*device, Target::NoFlows).await?;
                    }
                    progress.done += 1;
                    on_progress(progress);
                }
                Action::Install { device, .. } if failed.contains_key(device) => {
                    progress.done += 1;
                    on_progress(progress);
                }
                Action::DeleteStrayFlows { cookie } => {
                    self.swap(*cookie, u64::MAX, &[]).await?;
                }
                _ => {}
            }
        }
        for (device, reason) in failed {
            let closed = self.fail_closed(device).await?;
            report.failed_closed.push((device, closed, reason));
        }
        // The next states' µmboxes, once every device's own posture is in.
        let warm: Vec<(usize, &str)> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::StartWarm { device, path } => Some((*device, path.as_str())),
                _ => None,
            })
            .filter(|(d, _)| !report.failed_closed.iter().any(|f| f.0 == *d))
            .collect();
        let mut warmed =
            futures_util::stream::iter(warm.iter().map(|&(device, path)| async move {
                (device, path, self.start_retrying(path).await)
            }))
            .buffer_unordered(self.cfg.parallel.max(1));
        let mut progress = Progress {
            phase: Phase::Warming,
            done: 0,
            total: warm.len(),
            failed: 0,
        };
        while let Some((device, path, r)) = warmed.next().await {
            progress.done += 1;
            if let Err(e) = r {
                progress.failed += 1;
                report
                    .warm_failed
                    .push((device, path.to_string(), e.to_string()));
            }
            on_progress(progress);
        }
        drop(warmed);
        let stops: Vec<(&str, &[String])> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::StopContainer { name, ports } => Some((name.as_str(), ports.as_slice())),
                _ => None,
            })
            // A device that failed closed may be using it now (its most restrictive
            // state's µmboxes); failing closed stopped what it does not use.
            .filter(|(name, _)| {
                !self
                    .container_device(name)
                    .is_some_and(|d| report.failed_closed.iter().any(|f| f.0 == d))
            })
            .collect();
        let mut stopped = futures_util::stream::iter(
            stops
                .iter()
                .map(|&(name, ports)| self.stop_instance(name, ports)),
        )
        .buffer_unordered(self.cfg.parallel.max(1));
        let mut progress = Progress {
            phase: Phase::Stopping,
            done: 0,
            total: stops.len(),
            failed: 0,
        };
        let mut first_error = None;
        while let Some(r) = stopped.next().await {
            progress.done += 1;
            if let Err(e) = r {
                progress.failed += 1;
                first_error.get_or_insert(e);
            }
            on_progress(progress);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Starts a µmbox instance ([`Node::start_instance`]), trying again after a transient
    /// failure with a growing pause (0.25 s, doubling, at most 4 s) until the node's
    /// start deadline.
    async fn start_retrying(&self, path: &str) -> Result<(), NodeError> {
        let deadline = std::time::Instant::now() + self.cfg.start_deadline;
        let mut pause = Duration::from_millis(250);
        loop {
            match self.start_instance(path).await {
                Err(e) if e.is_transient() && std::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(4));
                }
                r => return r,
            }
        }
    }

    /// Replaces a device's flows with a target's set, in one OpenFlow bundle.
    pub async fn install_target(&self, device: usize, target: Target) -> Result<(), NodeError> {
        match target {
            Target::State(s) => self.install(device, s).await,
            Target::NoFlows => {
                let d = &self.bundle.manifest.devices[device];
                let Some(s) = d.states.first().and_then(|s| s.switch.as_ref()) else {
                    return Err(NodeError::OffSwitch {
                        device: d.name.clone(),
                    });
                };
                self.swap(s.cookie.0, self.mask(), &[]).await
            }
        }
    }

    /// Replaces a device's flows with a state's set, in one OpenFlow bundle.
    pub async fn install(&self, device: usize, state: usize) -> Result<(), NodeError> {
        self.install_many(&[(device, state)]).await
    }

    /// Starts the µmbox instance at `path` (replacing a container of the same name),
    /// with its secrets mounted read-only, gives it its interfaces on the bridge and
    /// waits until it says it is ready. A secret that cannot be used
    /// ([`crate::secrets::resolve`]) fails it before anything is touched. On failure
    /// nothing of it is left behind.
    pub async fn start_instance(&self, path: &str) -> Result<(), NodeError> {
        let Some(c) = self.bundle.containers.get(path) else {
            return Ok(());
        };
        let secrets = self.secrets_of(c)?;
        let links: Vec<Link> = c
            .interfaces
            .iter()
            .map(|i| Link {
                host: i.port_name.clone(),
                inner: i.name.clone(),
            })
            .collect();
        let mut env = c.env.clone();
        env.insert(
            "KALKI_INTERFACES".into(),
            c.interfaces
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        let mut labels = c.labels.clone();
        labels.insert(LABEL_SPEC.into(), self.spec_digest(path));
        labels.insert(
            LABEL_PORTS.into(),
            links
                .iter()
                .map(|l| l.host.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        let spec = ContainerSpec {
            name: c.name.clone(),
            image: c.image.clone(),
            args: c.args.clone(),
            env,
            labels,
            secrets,
        };
        let result = async {
            // A port left by an instance that died (its interface is gone with its
            // namespace) would keep the new interface off the switch: removed first.
            // Looked for (a read) before it is removed (a transaction, which costs the
            // switch a look at all its ports): a plan has removed them already.
            let ports: Vec<&str> = links.iter().map(|l| l.host.as_str()).collect();
            let stale = self.ovs.present_ports(&ports).await?;
            if !stale.is_empty() {
                let stale: Vec<&str> = stale.iter().map(String::as_str).collect();
                self.ovs.del_ports(&stale).await?;
            }
            let pid = self.docker.start(&spec).await?;
            net::plug(pid, &links, self.cfg.call_timeout).await?;
            let added = futures_util::future::join_all(c.interfaces.iter().map(|i| {
                self.ovs
                    .add_port(&i.port_name, i.ofport, self.isolation(false))
            }))
            .await;
            added.into_iter().collect::<Result<Vec<()>, _>>()?;
            self.docker
                .wait_ready(&c.name, self.cfg.ready_timeout)
                .await?;
            Ok::<(), NodeError>(())
        }
        .await;
        if result.is_err() {
            let _ = self.docker.remove(&c.name).await;
            for l in &links {
                let _ = self.ovs.del_port(&l.host).await;
            }
            net::unplug(&links, self.cfg.call_timeout).await;
            self.note_container(&c.name, None);
        } else {
            self.note_container(
                &c.name,
                Some(containers::Running {
                    name: c.name.clone(),
                    id: String::new(),
                    running: true,
                    labels: spec.labels.clone(),
                }),
            );
        }
        result
    }

    /// The node's files for a container's secrets, each checked
    /// ([`crate::secrets::resolve`]).
    pub fn secrets_of(
        &self,
        c: &Container,
    ) -> Result<Vec<crate::secrets::SecretFile>, crate::secrets::SecretError> {
        let device = c.labels.get("kalki.device").map_or("", String::as_str);
        c.secrets
            .iter()
            .map(|m| crate::secrets::resolve(&self.cfg.secrets_dir, device, &m.name, &m.path))
            .collect()
    }

    /// Stops a container of the site and removes its ports (`ports`: the host ends its
    /// `kalki.ports` label names; see [`ports_of`]).
    pub async fn stop_instance(&self, name: &str, ports: &[String]) -> Result<(), NodeError> {
        self.docker.remove(name).await?;
        self.note_container(name, None);
        let links: Vec<Link> = ports
            .iter()
            .map(|p| Link {
                host: p.clone(),
                inner: String::new(),
            })
            .collect();
        let names: Vec<&str> = links.iter().map(|l| l.host.as_str()).collect();
        self.ovs.del_ports(&names).await?;
        net::unplug(&links, self.cfg.call_timeout).await;
        Ok(())
    }

    /// A device whose µmboxes are not there: its most restrictive state if that state's
    /// µmboxes run (or it needs none), else no flows at all (table 1 drops every packet
    /// classified for it). Never unprotected forwarding. Only the switch is needed for
    /// it: with the container engine gone, a state without µmboxes is still installed
    /// (stopping the device's other µmboxes is then left to the next repair), and one
    /// with µmboxes gives way to no flows.
    pub async fn fail_closed(&self, device: usize) -> Result<Closed, NodeError> {
        let d = &self.bundle.manifest.devices[device];
        // Off the switch there is nothing to close: never claim a closure.
        let Some(cookie) = d
            .states
            .first()
            .and_then(|s| s.switch.as_ref())
            .map(|s| s.cookie.0)
        else {
            return Err(NodeError::OffSwitch {
                device: d.name.clone(),
            });
        };
        let strict = d.states.iter().position(|s| s.name == d.most_restrictive);
        if let Some(s) = strict {
            let wanted = self.wanted(device, s);
            let ready = if wanted.is_empty() {
                true
            } else {
                match self.device_containers(device).await {
                    Ok(before) => {
                        let mut ok = true;
                        for (path, c) in wanted {
                            let runs = before.iter().any(|r| {
                                r.name == c.name
                                    && r.running
                                    && r.labels.get(LABEL_SPEC) == Some(&self.spec_digest(path))
                            });
                            if !runs && self.start_instance(path).await.is_err() {
                                ok = false;
                                break;
                            }
                        }
                        ok
                    }
                    Err(_) => false,
                }
            };
            if ready {
                self.install(device, s).await?;
                // Best effort: what the state does not use is stopped now if the engine
                // answers, else by the next repair; it carries no traffic either way.
                if let Ok(containers) = self.device_containers(device).await {
                    self.stop_others(device, s, &containers).await?;
                }
                return Ok(Closed::State(s));
            }
        }
        self.swap(cookie, self.mask(), &[]).await?;
        Ok(Closed::NoFlows)
    }

    /// Whether moving `device` to `to` only swaps flows, as far as the node was last
    /// seen: every µmbox `to` uses runs, and none of the device's would be stopped.
    pub fn flow_only(&self, device: usize, to: usize) -> bool {
        if !self.device_on_switch(device) {
            return false;
        }
        let guard = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let Some(seen) = guard.as_ref() else {
            return false;
        };
        let name = &self.bundle.manifest.devices[device].name;
        let keep = self.keep(device, to);
        self.wanted(device, to)
            .iter()
            .all(|(_, c)| seen.get(&c.name).is_some_and(|r| r.running))
            && seen
                .values()
                .filter(|c| c.labels.get("kalki.device") == Some(name))
                .all(|c| keep.contains(&c.name))
    }

    /// Installs several devices' states, each `(device, state)`, in one OpenFlow bundle:
    /// all of them or none. For changes that only swap flows ([`Node::flow_only`]).
    pub async fn install_many(&self, changes: &[(usize, usize)]) -> Result<(), NodeError> {
        let mut sets: Vec<(u64, u64, &[FlowMod])> = Vec::with_capacity(changes.len());
        for &(device, state) in changes {
            let d = &self.bundle.manifest.devices[device];
            let s = d.states.get(state).ok_or_else(|| NodeError::NoState {
                device: d.name.clone(),
                state: state.to_string(),
            })?;
            let s = s.switch.as_ref().ok_or_else(|| NodeError::OffSwitch {
                device: d.name.clone(),
            })?;
            sets.push((s.cookie.0, self.mask(), self.parsed(&s.flows)));
        }
        self.on_switch(SwitchOp::SwapMany(&sets)).await.map(|_| ())
    }

    /// Moves a running device to state `to`: start what `to` needs that is not running
    /// and wait until it is ready, swap the device's flows in one OpenFlow bundle, then
    /// stop the device's other µmboxes. If `to`'s µmboxes cannot be started, the device
    /// fails closed.
    pub async fn change_posture(&self, device: usize, to: usize) -> Result<Posture, NodeError> {
        if !self.device_on_switch(device) {
            return Ok(Posture::OffSwitch);
        }
        let new = self.wanted(device, to);
        // Listed once: what runs decides what to start, and what to stop afterwards (all
        // that is started now is kept).
        let before = self.device_containers(device).await?;
        let starts: Vec<&str> = new
            .iter()
            .filter(|(_, c)| !before.iter().any(|r| r.name == c.name && r.running))
            .map(|(p, _)| *p)
            .collect();
        let results =
            futures_util::future::join_all(starts.iter().map(|p| self.start_instance(p))).await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            let reason = e.to_string();
            let installed = self.fail_closed(device).await?;
            return Ok(Posture::FailedClosed { installed, reason });
        }
        self.install(device, to).await?;
        let committed = std::time::Instant::now();
        let stopped = self.stop_others(device, to, &before).await?;
        Ok(Posture::Changed {
            committed,
            touched: !starts.is_empty() || stopped > 0,
        })
    }

    /// A container of this bundle by its name: the device it serves and its manifest.
    pub fn container(&self, name: &str) -> Option<(usize, &Container)> {
        let c = self.bundle.containers.values().find(|c| c.name == name)?;
        let device = c.labels.get("kalki.device")?;
        let d = self
            .bundle
            .manifest
            .devices
            .iter()
            .position(|d| &d.name == device)?;
        Some((d, c))
    }

    /// The device a container of this bundle serves, by the container's name.
    pub fn container_device(&self, name: &str) -> Option<usize> {
        self.container(name).map(|(d, _)| d)
    }

    /// The device's containers, running or not, as last seen ([`Node::seen`]); asked of
    /// the engine when nothing has been seen yet.
    async fn device_containers(
        &self,
        device: usize,
    ) -> Result<Vec<containers::Running>, NodeError> {
        let name = &self.bundle.manifest.devices[device].name;
        let of_device = |c: &&containers::Running| c.labels.get("kalki.device") == Some(name);
        let cached = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|seen| seen.values().filter(of_device).cloned().collect::<Vec<_>>());
        if let Some(mine) = cached {
            return Ok(mine);
        }
        let all = self
            .docker
            .list(LABEL_SITE, &self.bundle.manifest.container_scope())
            .await?;
        let mine = all.iter().filter(of_device).cloned().collect();
        self.set_seen(Some(all.into_iter().map(|c| (c.name.clone(), c)).collect()));
        Ok(mine)
    }

    /// A container is known to have stopped (its follower saw it end).
    pub fn forget_container(&self, name: &str) {
        self.note_container(name, None);
    }

    fn set_seen(&self, seen: Option<BTreeMap<String, containers::Running>>) {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = seen;
    }

    /// Amends what was seen: a container started (with its labels) or gone.
    fn note_container(&self, name: &str, now: Option<containers::Running>) {
        if let Some(seen) = self.seen.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            match now {
                Some(r) => {
                    seen.insert(name.to_string(), r);
                }
                None => {
                    seen.remove(name);
                }
            }
        }
    }

    /// The device's µmboxes to keep in `state`: its own, and with µmboxes kept warm,
    /// those of its next states (the next look at the node trims them to the budget).
    fn keep(&self, device: usize, state: usize) -> BTreeSet<String> {
        let next = if self.cfg.warm > 0 {
            self.bundle.manifest.successors(device, state)
        } else {
            Vec::new()
        };
        std::iter::once(state)
            .chain(next)
            .flat_map(|s| self.wanted(device, s))
            .map(|(_, c)| c.name.clone())
            .collect()
    }

    /// Stops those of the device's `containers` that state `state` does not use (after
    /// its flows are in: make-before-break).
    async fn stop_others(
        &self,
        device: usize,
        state: usize,
        containers: &[containers::Running],
    ) -> Result<usize, NodeError> {
        let keep = self.keep(device, state);
        let mut stopped = 0;
        for c in containers.iter().filter(|c| !keep.contains(&c.name)) {
            self.stop_instance(&c.name, &ports_of(c)).await?;
            stopped += 1;
        }
        Ok(stopped)
    }
}

/// The host ends of a container's interfaces, from the label the shim put on it.
pub fn ports_of(c: &containers::Running) -> Vec<String> {
    c.labels
        .get(LABEL_PORTS)
        .map(|p| {
            p.split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The order actions run in: bridge, ports, µmboxes, base, device flows, strays, stops.
fn order(a: &Action) -> u8 {
    match a {
        Action::CreateBridge => 0,
        Action::SecureBridge => 0,
        Action::Isolate { .. } | Action::Unhook { .. } => 1,
        Action::ResetPort { .. } => 2,
        Action::RemovePort { .. } => 1,
        Action::AddPort { .. } => 2,
        Action::StartContainer { .. } => 3,
        // After the devices' own postures are in: they never wait for these.
        Action::StartWarm { .. } => 6,
        Action::ReplaceBase => 4,
        Action::Install { .. } => 5,
        Action::DeleteStrayFlows { .. } => 6,
        Action::StopContainer { .. } => 7,
    }
}

/// Flows as `ovs-ofctl` writes them, sorted: two sets compare equal when the switch
/// holds the same flows, in whatever order (a dump is in the switch's order).
fn normalised(flows: &[FlowMod]) -> Vec<String> {
    let mut out: Vec<String> = flows.iter().map(FlowMod::to_string).collect();
    out.sort();
    out
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateBridge => write!(f, "create the bridge (fail_mode=secure, OpenFlow 1.5)"),
            Action::Isolate { name } => {
                write!(f, "keep the node's own network stack off {name}")
            }
            Action::SecureBridge => write!(
                f,
                "make the bridge fail-closed again (fail_mode=secure, no controller, no mirror)"
            ),
            Action::Unhook { name } => {
                write!(f, "take the XDP and traffic-control hooks off {name}")
            }
            Action::ResetPort { name } => {
                write!(
                    f,
                    "clear port {name}'s OpenFlow config (down, no-forward, ...)"
                )
            }
            Action::AddPort { name, ofport } => {
                write!(f, "add port {name} as OpenFlow port {ofport}")
            }
            Action::RemovePort { name } => write!(f, "remove port {name}"),
            Action::StartContainer { path, .. } => write!(f, "start µmbox {path}"),
            Action::StartWarm { path, .. } => write!(f, "start µmbox {path} (idle)"),
            Action::ReplaceBase => write!(f, "replace the base flows (table 0)"),
            Action::Install {
                device,
                target: Target::State(state),
            } => {
                write!(f, "install device {device} state {state}")
            }
            Action::Install {
                device,
                target: Target::NoFlows,
            } => write!(f, "remove every flow of device {device}"),
            Action::DeleteStrayFlows { cookie } => {
                write!(f, "delete flows with unknown cookie {cookie:#x}")
            }
            Action::StopContainer { name, .. } => write!(f, "stop container {name}"),
        }
    }
}

impl Node {
    /// A plan in words, with device and state names.
    pub fn describe(&self, plan: &Plan) -> Vec<String> {
        let m = &self.bundle.manifest;
        plan.actions
            .iter()
            .map(|a| match a {
                Action::Install {
                    device,
                    target: Target::State(state),
                } => {
                    let d = &m.devices[*device];
                    format!(
                        "install `{}` in `{}`",
                        d.name,
                        d.states.get(*state).map_or("?", |s| s.name.as_str())
                    )
                }
                Action::Install {
                    device,
                    target: Target::NoFlows,
                } => format!(
                    "remove every flow of `{}` (its packets are dropped)",
                    m.devices[*device].name
                ),
                Action::StartContainer { device, path } => format!(
                    "start µmbox {} for `{}`",
                    self.bundle
                        .containers
                        .get(path)
                        .map_or(path.as_str(), |c| c.name.as_str()),
                    m.devices[*device].name
                ),
                Action::StartWarm { device, path } => format!(
                    "start µmbox {} for a next state of `{}` (idle until then)",
                    self.bundle
                        .containers
                        .get(path)
                        .map_or(path.as_str(), |c| c.name.as_str()),
                    m.devices[*device].name
                ),
                other => other.to_string(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn stops_come_after_flows() {
        let mut v = [
            Action::StopContainer {
                name: "x".into(),
                ports: vec![],
            },
            Action::Install {
                device: 0,
                target: Target::State(1),
            },
            Action::StartContainer {
                device: 0,
                path: "p".into(),
            },
            Action::CreateBridge,
        ];
        v.sort_by_key(order);
        assert_eq!(v[0], Action::CreateBridge);
        assert!(matches!(v[1], Action::StartContainer { .. }));
        assert!(matches!(v[2], Action::Install { .. }));
        assert!(matches!(v[3], Action::StopContainer { .. }));
    }
}
