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
use crate::docker::{self, ContainerSpec, DockerError};
use crate::manifest::{Container, UnknownHosts};
use crate::net::{self, Link};
use crate::ovs::{Isolation, Ovs, OvsError};
use kalki_openflow::{self as of, FlowMod};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;
use tokio::sync::Mutex;

/// Labels the shim puts on its containers, besides the bundle's own.
pub const LABEL_SPEC: &str = "kalki.spec";
pub const LABEL_PORTS: &str = "kalki.ports";
pub const LABEL_SITE: &str = "kalki.site";
/// The base rule set's path in a bundle.
const BASE_RULES: &str = "flows/base.ofctl";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Ovs(#[from] OvsError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Link(#[from] CmdError),
    #[error("interface `{name}` ({what}) does not exist on this node; nothing was changed")]
    MissingInterface { name: String, what: String },
    #[error("device `{device}` has no state `{state}` in this bundle")]
    NoState { device: String, state: String },
    #[error("rule set `{path}` does not parse: {detail}")]
    RuleSet { path: String, detail: String },
    #[error("OpenFlow: {0}")]
    OpenFlow(#[from] of::Error),
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `netdev` (userspace; works without the kernel module) or `system`.
    pub datapath: String,
    /// Limit of every single OVS, Docker or `ip` call.
    pub call_timeout: Duration,
    /// How long a µmbox may take to say it is ready.
    pub ready_timeout: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            datapath: "netdev".into(),
            call_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateBridge,
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
    ReplaceBase,
    /// Replace a device's flows with its state's set.
    InstallState {
        device: usize,
        state: usize,
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
}

/// What an execution did, besides the plan itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Devices that could not get their state's µmboxes: (device, what was installed
    /// instead, why).
    pub failed_closed: Vec<(usize, Closed, String)>,
}

/// What a device got when it failed closed.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    },
    FailedClosed {
        installed: Closed,
        reason: String,
    },
}

pub struct Node {
    bundle: Bundle,
    ovs: Ovs,
    docker: docker::Engine,
    cfg: NodeConfig,
    /// Every rule set, parsed once: path → flows.
    flows: BTreeMap<String, Vec<FlowMod>>,
    /// The OpenFlow connection to the bridge, made when first needed (the bridge may not
    /// exist before `apply` creates it) and made again when it breaks.
    switch: Mutex<Option<of::Client>>,
}

/// The bridge, as observed.
struct World {
    bridge: bool,
    /// Port name → OpenFlow number (-1: its interface is gone).
    ports: BTreeMap<String, i64>,
    /// Cookies of flows that differ from what is expected (missing or extra).
    differing: BTreeSet<u64>,
    /// The site's containers: name → (running, labels).
    containers: BTreeMap<String, docker::Running>,
}

impl Node {
    /// Fails if a rule set of the bundle is not in the syntax `kalkic` writes.
    pub fn new(bundle: Bundle, docker: docker::Engine, cfg: NodeConfig) -> Result<Node, NodeError> {
        let ovs = Ovs::new(bundle.manifest.bridge.clone(), cfg.call_timeout);
        let mut flows = BTreeMap::new();
        for (path, text) in &bundle.rule_sets {
            let parsed = of::parse_rule_set(text).map_err(|errors| NodeError::RuleSet {
                path: path.clone(),
                detail: errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            })?;
            flows.insert(path.clone(), parsed);
        }
        Ok(Node {
            bundle,
            ovs,
            docker,
            cfg,
            flows,
            switch: Mutex::new(None),
        })
    }

    /// Replaces every flow under `cookie`/`mask` with `flows` in one OpenFlow bundle.
    /// On a broken connection (or an answer that never came: the outcome of a commit is
    /// then unknown), reconnects once and swaps again, which is harmless: a swap to the
    /// same set is idempotent.
    pub async fn swap(&self, cookie: u64, mask: u64, flows: &[FlowMod]) -> Result<(), NodeError> {
        let mut guard = self.switch.lock().await;
        for attempt in 0..2 {
            if guard.is_none() {
                let path = of::mgmt_socket(&self.bundle.manifest.bridge);
                *guard = Some(of::Client::connect(&path, self.cfg.call_timeout).await?);
            }
            let Some(client) = guard.as_mut() else {
                continue;
            };
            match client.swap(cookie, mask, flows).await {
                Ok(()) => return Ok(()),
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

    fn parsed(&self, path: &str) -> &[FlowMod] {
        self.flows.get(path).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn ovs(&self) -> &Ovs {
        &self.ovs
    }

    pub fn docker(&self) -> &docker::Engine {
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

    /// The rule set of a device's state.
    fn rules(&self, device: usize, state: usize) -> Result<&str, NodeError> {
        let d = &self.bundle.manifest.devices[device];
        let s = d.states.get(state).ok_or_else(|| NodeError::NoState {
            device: d.name.clone(),
            state: state.to_string(),
        })?;
        Ok(self
            .bundle
            .rule_sets
            .get(&s.flows)
            .map(String::as_str)
            .unwrap_or(""))
    }

    fn base_rules(&self) -> &str {
        self.bundle
            .rule_sets
            .get(BASE_RULES)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Everything the switch should hold with the devices in `states`.
    fn expected_flows(&self, states: &[usize]) -> Result<String, NodeError> {
        let mut all = self.base_rules().to_string();
        for (d, &s) in states.iter().enumerate() {
            all.push_str(self.rules(d, s)?);
        }
        Ok(all)
    }

    /// The uplink and device ports: (name, number, what).
    fn fixed_ports(&self) -> Vec<(String, u32, String)> {
        let m = &self.bundle.manifest;
        let mut out = Vec::new();
        if let Some(name) = &m.uplink.name {
            out.push((name.clone(), m.uplink.ofport, "the uplink".to_string()));
        }
        for d in &m.devices {
            out.push((d.port.clone(), d.ofport, format!("device `{}`", d.name)));
        }
        out
    }

    /// The container manifests a device needs in a state, by path.
    fn wanted(&self, device: usize, state: usize) -> Vec<(&str, &Container)> {
        let d = &self.bundle.manifest.devices[device];
        d.states
            .get(state)
            .map(|s| {
                s.containers
                    .iter()
                    .filter_map(|p| self.bundle.containers.get(p).map(|c| (p.as_str(), c)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What a container runs, as a digest: image, command, environment and interfaces
    /// (names and port numbers). A running container with the same digest is up to
    /// date. Labels are left out on purpose: they carry the policy's digest, which changes
    /// with any edit of the policy, and a new bundle must restart only the µmboxes whose
    /// own definition changed.
    fn spec_digest(&self, path: &str) -> String {
        let Some(c) = self.bundle.containers.get(path) else {
            return String::new();
        };
        let interfaces: Vec<(&str, &str, u32)> = c
            .interfaces
            .iter()
            .map(|i| (i.name.as_str(), i.port_name.as_str(), i.ofport))
            .collect();
        let spec = serde_json::json!([c.image, c.args, c.env, interfaces]);
        crate::bundle::sha256_hex(spec.to_string().as_bytes())
    }

    async fn observe(&self, states: &[usize]) -> Result<World, NodeError> {
        let bridge = self.ovs.bridge_exists().await?;
        let (ports, differing) = if bridge {
            let diff = self.ovs.diff_flows(&self.expected_flows(states)?).await?;
            let differing = diff
                .missing
                .iter()
                .chain(&diff.extra)
                .filter_map(|l| flow_cookie(l))
                .collect();
            (self.ovs.ports().await?, differing)
        } else {
            (BTreeMap::new(), BTreeSet::new())
        };
        let containers = self
            .docker
            .list(LABEL_SITE, &self.bundle.manifest.site)
            .await?
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        Ok(World {
            bridge,
            ports,
            differing,
            containers,
        })
    }

    /// Whether a container is running the manifest at `path` and plugged in as it says.
    fn up_to_date(&self, w: &World, path: &str, c: &Container) -> bool {
        let Some(running) = w.containers.get(&c.name) else {
            return false;
        };
        running.running
            && running.labels.get(LABEL_SPEC) == Some(&self.spec_digest(path))
            && c.interfaces
                .iter()
                .all(|i| w.ports.get(&i.port_name) == Some(&i64::from(i.ofport)))
    }

    /// What it takes to bring the node to the bundle with devices in `states` (indices
    /// into each device's states). Reads, changes nothing. Fails if an interface the
    /// bundle names (uplink, device ports) does not exist.
    pub async fn plan(&self, states: &[usize]) -> Result<Plan, NodeError> {
        let present = net::interfaces(self.cfg.call_timeout).await?;
        for (name, _, what) in self.fixed_ports() {
            if !present.contains(&name) {
                return Err(NodeError::MissingInterface { name, what });
            }
        }
        let w = self.observe(states).await?;
        let mut plan = Plan::default();
        if !w.bridge {
            plan.actions.push(Action::CreateBridge);
        }
        let mut expected_ports: BTreeSet<String> = BTreeSet::new();
        for (name, ofport, _) in self.fixed_ports() {
            if w.ports.get(&name) != Some(&i64::from(ofport)) {
                if w.ports.contains_key(&name) {
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
        for (d, &s) in states.iter().enumerate() {
            for (path, c) in self.wanted(d, s) {
                wanted_names.insert(c.name.clone());
                for i in &c.interfaces {
                    expected_ports.insert(i.port_name.clone());
                }
                if !self.up_to_date(&w, path, c) {
                    plan.actions.push(Action::StartContainer {
                        device: d,
                        path: path.to_string(),
                    });
                    restart_ports.extend(c.interfaces.iter().map(|i| i.port_name.clone()));
                }
            }
        }
        // Ports of µmboxes that are not wanted, or are about to be replugged.
        for name in w.ports.keys() {
            if !expected_ports.contains(name) || restart_ports.contains(name) {
                plan.actions.push(Action::RemovePort { name: name.clone() });
            }
        }
        let base = self.bundle.manifest.cookies.base.0;
        if !w.bridge || w.differing.contains(&base) {
            plan.actions.push(Action::ReplaceBase);
        }
        let mask = self.mask();
        let mut known = BTreeSet::from([base]);
        for (d, &s) in states.iter().enumerate() {
            let dev = &self.bundle.manifest.devices[d];
            let device_bits = dev.states.first().map_or(0, |st| st.cookie.0 & mask);
            known.extend(dev.states.iter().map(|st| st.cookie.0));
            if !w.bridge || w.differing.iter().any(|c| c & mask == device_bits) {
                plan.actions.push(Action::InstallState {
                    device: d,
                    state: s,
                });
            }
        }
        for &c in &w.differing {
            if !known.contains(&c) {
                plan.actions.push(Action::DeleteStrayFlows { cookie: c });
            }
        }
        for (name, c) in &w.containers {
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

    /// Carries out a plan made by [`Node::plan`]. A device whose
    /// µmboxes fail to start fails closed; that is reported, not an error.
    pub async fn execute(&self, plan: &Plan) -> Result<Report, NodeError> {
        let mut report = Report::default();
        let mut failed: BTreeMap<usize, String> = BTreeMap::new();
        // Ports first: RemovePort of a port about to be replugged must come before the
        // container is started again.
        for a in &plan.actions {
            match a {
                Action::CreateBridge => {
                    self.ovs.ensure_bridge(&self.cfg.datapath).await?;
                }
                Action::AddPort { name, ofport } => {
                    let uplink = Some(name) == self.bundle.manifest.uplink.name.as_ref();
                    self.ovs
                        .add_port(name, *ofport, self.isolation(uplink))
                        .await?;
                }
                Action::RemovePort { name } => {
                    self.ovs.del_port(name).await?;
                }
                _ => {}
            }
        }
        let starts: Vec<(usize, &str)> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::StartContainer { device, path } => Some((*device, path.as_str())),
                _ => None,
            })
            .collect();
        let results =
            futures_util::future::join_all(starts.iter().map(|(_, p)| self.start_instance(p)))
                .await;
        for ((device, _), r) in starts.iter().zip(results) {
            if let Err(e) = r {
                failed.entry(*device).or_insert_with(|| e.to_string());
            }
        }
        for a in &plan.actions {
            match a {
                Action::ReplaceBase => {
                    let base = self.bundle.manifest.cookies.base.0;
                    self.swap(base, u64::MAX, self.parsed(BASE_RULES)).await?;
                }
                Action::InstallState { device, state } if !failed.contains_key(device) => {
                    self.install(*device, *state).await?;
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
        for a in &plan.actions {
            if let Action::StopContainer { name, ports } = a {
                self.stop_instance(name, ports).await?;
            }
        }
        Ok(report)
    }

    /// Replaces a device's flows with a state's set, in one OpenFlow bundle.
    pub async fn install(&self, device: usize, state: usize) -> Result<(), NodeError> {
        let d = &self.bundle.manifest.devices[device];
        let s = d.states.get(state).ok_or_else(|| NodeError::NoState {
            device: d.name.clone(),
            state: state.to_string(),
        })?;
        self.swap(s.cookie.0, self.mask(), self.parsed(&s.flows))
            .await
    }

    /// Starts the µmbox instance at `path` (replacing a container of the same name),
    /// gives it its interfaces on the bridge and waits until it says it is ready. On
    /// failure nothing of it is left behind.
    pub async fn start_instance(&self, path: &str) -> Result<(), NodeError> {
        let Some(c) = self.bundle.containers.get(path) else {
            return Ok(());
        };
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
        };
        let result = async {
            let pid = self.docker.start(&spec).await?;
            net::plug(pid, &links, self.cfg.call_timeout).await?;
            for i in &c.interfaces {
                self.ovs
                    .add_port(&i.port_name, i.ofport, self.isolation(false))
                    .await?;
            }
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
        }
        result
    }

    /// Stops a container of the site and removes its ports (`ports`: the host ends its
    /// `kalki.ports` label names; see [`ports_of`]).
    pub async fn stop_instance(&self, name: &str, ports: &[String]) -> Result<(), NodeError> {
        self.docker.remove(name).await?;
        let links: Vec<Link> = ports
            .iter()
            .map(|p| Link {
                host: p.clone(),
                inner: String::new(),
            })
            .collect();
        for l in &links {
            self.ovs.del_port(&l.host).await?;
        }
        net::unplug(&links, self.cfg.call_timeout).await;
        Ok(())
    }

    /// A device whose µmboxes are not there: its most restrictive state if that state's
    /// µmboxes run (or it needs none), else no flows at all (table 1 drops every packet
    /// classified for it). Never unprotected forwarding.
    pub async fn fail_closed(&self, device: usize) -> Result<Closed, NodeError> {
        let d = &self.bundle.manifest.devices[device];
        let strict = d.states.iter().position(|s| s.name == d.most_restrictive);
        if let Some(s) = strict {
            let mut ok = true;
            for (path, _) in self.wanted(device, s) {
                if self.start_instance(path).await.is_err() {
                    ok = false;
                    break;
                }
            }
            if ok {
                self.install(device, s).await?;
                let containers = self.device_containers(device).await?;
                self.stop_others(device, s, &containers).await?;
                return Ok(Closed::State(s));
            }
        }
        let cookie = d.states.first().map_or(0, |s| s.cookie.0);
        self.swap(cookie, self.mask(), &[]).await?;
        Ok(Closed::NoFlows)
    }

    /// Moves a running device to state `to`: start what `to` needs that is not running
    /// and wait until it is ready, swap the device's flows in one OpenFlow bundle, then
    /// stop the device's other µmboxes. If `to`'s µmboxes cannot be started, the device
    /// fails closed.
    pub async fn change_posture(&self, device: usize, to: usize) -> Result<Posture, NodeError> {
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
        self.stop_others(device, to, &before).await?;
        Ok(Posture::Changed { committed })
    }

    /// The device's containers, running or not.
    async fn device_containers(&self, device: usize) -> Result<Vec<docker::Running>, NodeError> {
        let name = &self.bundle.manifest.devices[device].name;
        let mut all = self
            .docker
            .list(LABEL_SITE, &self.bundle.manifest.site)
            .await?;
        all.retain(|c| c.labels.get("kalki.device") == Some(name));
        Ok(all)
    }

    /// Stops those of the device's `containers` that state `state` does not use (after
    /// its flows are in: make-before-break).
    async fn stop_others(
        &self,
        device: usize,
        state: usize,
        containers: &[docker::Running],
    ) -> Result<(), NodeError> {
        let keep: BTreeSet<String> = self
            .wanted(device, state)
            .iter()
            .map(|(_, c)| c.name.clone())
            .collect();
        for c in containers.iter().filter(|c| !keep.contains(&c.name)) {
            self.stop_instance(&c.name, &ports_of(c)).await?;
        }
        Ok(())
    }
}

/// The host ends of a container's interfaces, from the label the shim put on it.
pub fn ports_of(c: &docker::Running) -> Vec<String> {
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
        Action::RemovePort { .. } => 1,
        Action::AddPort { .. } => 2,
        Action::StartContainer { .. } => 3,
        Action::ReplaceBase => 4,
        Action::InstallState { .. } => 5,
        Action::DeleteStrayFlows { .. } => 6,
        Action::StopContainer { .. } => 7,
    }
}

/// The cookie of a flow as `ovs-ofctl` prints it (`... cookie=0x2000... actions=...`).
fn flow_cookie(line: &str) -> Option<u64> {
    let c = line
        .split([' ', ','])
        .find_map(|w| w.strip_prefix("cookie="))?;
    u64::from_str_radix(c.trim_start_matches("0x"), 16).ok()
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateBridge => write!(f, "create the bridge (fail_mode=secure, OpenFlow 1.5)"),
            Action::AddPort { name, ofport } => {
                write!(f, "add port {name} as OpenFlow port {ofport}")
            }
            Action::RemovePort { name } => write!(f, "remove port {name}"),
            Action::StartContainer { path, .. } => write!(f, "start µmbox {path}"),
            Action::ReplaceBase => write!(f, "replace the base flows (table 0)"),
            Action::InstallState { device, state } => {
                write!(f, "install device {device} state {state}")
            }
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
                Action::InstallState { device, state } => {
                    let d = &m.devices[*device];
                    format!(
                        "install `{}` in `{}`",
                        d.name,
                        d.states.get(*state).map_or("?", |s| s.name.as_str())
                    )
                }
                Action::StartContainer { device, path } => format!(
                    "start µmbox {} for `{}`",
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
    fn cookies_are_read_from_diff_lines() {
        assert_eq!(
            flow_cookie("table=1 priority=100,in_port=8 cookie=0x200000000010000 actions=output:1"),
            Some(0x0200_0000_0001_0000)
        );
        assert_eq!(flow_cookie(" cookie=0x0, priority=0 actions=drop"), Some(0));
        assert_eq!(flow_cookie("priority=0 actions=drop"), None);
    }

    #[test]
    fn stops_come_after_flows() {
        let mut v = [
            Action::StopContainer {
                name: "x".into(),
                ports: vec![],
            },
            Action::InstallState {
                device: 0,
                state: 1,
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
        assert!(matches!(v[2], Action::InstallState { .. }));
        assert!(matches!(v[3], Action::StopContainer { .. }));
    }
}
