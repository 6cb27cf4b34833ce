//! The typed model: what name resolution and type checking produce, and what the
//! verifier and code generation consume.
//!
//! Every name is resolved to an index, every expression is typed, every chain entry has
//! its full argument list (defaults filled in). Locations point back into the sources.

use crate::source::SourceId;
use kalki_lang::ast::Span;
use kalki_model::contract::{Class, Clause, Contract, PortRange, Proto, Starter, Treatment};
use serde::Serialize;

/// The leaves the typed model shares with the bundle's manifest: one definition each.
pub use kalki_model::manifest::{AggFunc, ArithOp, CmpOp, Ty, UmboxMode, UnknownHosts, VarType};

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        pub struct $name(pub u32);
        impl $name {
            pub fn index(self) -> usize {
                self.0 as usize
            }
            pub fn from_index(i: usize) -> Self {
                $name(u32::try_from(i).unwrap_or(u32::MAX))
            }
        }
    };
}

id_type!(
    /// A µmbox declaration in [`Model::umboxes`].
    UmboxId
);
id_type!(
    /// A device type in [`Model::device_types`].
    TypeId
);
id_type!(
    /// A state of one device type, in posture order (0 is least restrictive).
    StateId
);
id_type!(
    /// A sensed variable of one device type.
    VarId
);
id_type!(
    /// A device of one site.
    DeviceId
);

/// A location in a source: which file, which bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Loc {
    pub source: SourceId,
    pub span: Span,
}

impl Loc {
    pub fn new(source: SourceId, span: Span) -> Self {
        Loc { source, span }
    }
}

/// The whole checked policy: everything reachable from the root files.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Model {
    /// The files given to the compiler (as opposed to the ones they import).
    pub roots: Vec<SourceId>,
    pub umboxes: Vec<Umbox>,
    pub device_types: Vec<DeviceType>,
    pub sites: Vec<Site>,
}

impl Model {
    pub fn umbox(&self, id: UmboxId) -> &Umbox {
        &self.umboxes[id.index()]
    }
    /// The µmboxes a chain deploys, in order, each with the alerts it emits (none off
    /// the switch).
    pub fn chain_emits(&self, chain: Option<&Chain>) -> Vec<(String, Vec<String>)> {
        match chain {
            Some(Chain::Umboxes(entries)) => entries
                .iter()
                .map(|e| {
                    let u = self.umbox(e.umbox);
                    (u.name.clone(), u.emits.clone())
                })
                .collect(),
            Some(Chain::Pass | Chain::Drop) | None => Vec::new(),
        }
    }
    pub fn device_type(&self, id: TypeId) -> &DeviceType {
        &self.device_types[id.index()]
    }

    /// The contracts of a chain's inline µmboxes, device side first (taps stop nothing;
    /// `pass` is none, `drop` one that drops all): what the verifier's K216, the graphs
    /// and the bundle read.
    pub fn chain_contracts(&self, chain: &Chain) -> Vec<Contract> {
        match chain {
            Chain::Pass => vec![],
            Chain::Drop => vec![Contract::drop()],
            Chain::Umboxes(entries) => entries
                .iter()
                .filter(|e| self.umbox(e.umbox).mode == UmboxMode::Inline)
                .map(|e| self.umbox(e.umbox).contract(&e.args))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Umbox {
    pub name: String,
    pub loc: Loc,
    pub image: String,
    /// Argument templates; `{name}` holes name parameters (checked).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub params: Vec<ParamDef>,
    /// Alerts this µmbox can emit, sorted.
    pub emits: Vec<String>,
    pub mode: UmboxMode,
    /// What it does to traffic, before its parameters are known. `None`: not declared
    /// (an inline µmbox is then assumed to let everything through).
    pub contract: Option<ContractTemplate>,
    /// `secret NAME at PATH`: files the runtime mounts read-only.
    pub secrets: Vec<(String, String)>,
}

/// A `traffic { ... }` block, checked: total, and its parameters resolved to indices.
#[derive(Debug, Clone, Serialize)]
pub struct ContractTemplate {
    pub clauses: Vec<ClauseTemplate>,
    pub on_failure: Treatment,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClauseTemplate {
    pub treat: Treatment,
    pub proto: Proto,
    pub ports: Vec<PortTemplate>,
    pub from: Option<Starter>,
    /// The clause applies only when this holds of the instance's parameters.
    pub when: Option<ParamCond>,
    pub loc: Loc,
}

#[derive(Debug, Clone, Serialize)]
pub enum PortTemplate {
    Range(PortRange),
    /// The value of an `int in 0..65535`-compatible parameter, by index.
    Param(usize),
}

/// `when P [== V]` (`negated`: `when not P`, `when P != V`).
#[derive(Debug, Clone, Serialize)]
pub struct ParamCond {
    pub param: usize,
    pub value: Value,
    pub negated: bool,
}

impl Umbox {
    /// The contract of an instance with these arguments (one per parameter, in order).
    /// A tap and an undeclared inline contract let everything through.
    pub fn contract(&self, args: &[Value]) -> Contract {
        let Some(t) = &self.contract else {
            let mut c = Contract::pass();
            c.on_failure = match self.mode {
                UmboxMode::Inline => Treatment::Drop,
                UmboxMode::Tap => Treatment::Pass,
            };
            return c;
        };
        let clauses = t
            .clauses
            .iter()
            .filter(|c| {
                c.when
                    .as_ref()
                    .is_none_or(|w| (args.get(w.param) == Some(&w.value)) != w.negated)
            })
            .map(|c| Clause {
                treat: c.treat,
                class: Class {
                    proto: c.proto,
                    ports: c
                        .ports
                        .iter()
                        .filter_map(|p| match p {
                            PortTemplate::Range(r) => Some(*r),
                            PortTemplate::Param(i) => match args.get(*i) {
                                Some(Value::Int(n)) => {
                                    u16::try_from(*n).ok().map(|n| PortRange { lo: n, hi: n })
                                }
                                _ => None,
                            },
                        })
                        .collect(),
                },
                from: c.from,
            })
            .collect();
        Contract {
            clauses,
            on_failure: t.on_failure,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ParamDef {
    pub name: String,
    pub ty: ParamType,
    pub default: Option<Value>,
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ParamType {
    Bool,
    Int { lo: i64, hi: i64 },
    String,
    Duration,
    Enum { members: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Str(String),
    /// Milliseconds.
    Duration(u64),
    Enum(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Str(s) => write!(f, "{s}"),
            Value::Duration(ms) => write!(f, "{ms}ms"),
            Value::Enum(m) => write!(f, "{m}"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceType {
    pub name: String,
    pub loc: Loc,
    pub vars: Vec<Var>,
    pub commands: Vec<String>,
    /// The commands declared `lowering`: sending one lowers the device's protection
    /// (K207 judges it like a lower posture). Also in `commands`.
    pub lowering: Vec<String>,
    /// Alerts declared by the type itself (`alerts a, b`).
    pub alerts: Vec<String>,
    /// In posture order: index 0 is least restrictive.
    pub states: Vec<State>,
    pub initial: StateId,
    pub transitions: Vec<Transition>,
    /// `param NAME: TYPE`: per-device values for the MQTT topics and payloads.
    pub params: Vec<ParamDef>,
    /// The MQTT bindings as written: topics and payloads with `{param}` and `{device}`
    /// holes (each device's own, filled in, is [`Device::telemetry`]).
    pub telemetry: kalki_model::telemetry::Telemetry,
}

impl DeviceType {
    pub fn state(&self, id: StateId) -> &State {
        &self.states[id.index()]
    }
    pub fn var(&self, id: VarId) -> &Var {
        &self.vars[id.index()]
    }
    /// The most restrictive state: the fail-closed fallback.
    pub fn most_restrictive(&self) -> StateId {
        StateId::from_index(self.states.len().saturating_sub(1))
    }
    /// Whether its devices are on the switch: its states have chains. A type none of
    /// whose states has a chain is *off the switch* (a sensor behind a hub): its devices
    /// have states, rules and commands, but no address, port, flows or µmboxes.
    pub fn on_switch(&self) -> bool {
        self.states.iter().any(|s| s.chain.is_some())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Var {
    pub name: String,
    pub ty: VarType,
    pub loc: Loc,
}

#[derive(Debug, Clone, Serialize)]
pub struct State {
    pub name: String,
    pub loc: Loc,
    /// Exempt from the trap check.
    pub is_final: bool,
    /// `None` in a type off the switch (no state of it has a chain; typeck refuses a type
    /// where only some have one).
    pub chain: Option<Chain>,
    /// The `{ chain [...] }` block (the state's name when it has none).
    pub chain_loc: Loc,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", content = "entries", rename_all = "lowercase")]
pub enum Chain {
    /// Built-in: forward without inspection.
    Pass,
    /// Built-in: drop everything.
    Drop,
    Umboxes(Vec<ChainEntry>),
}

#[derive(Debug, Clone, Serialize)]
pub struct ChainEntry {
    pub umbox: UmboxId,
    /// One value per parameter of the µmbox, in declaration order.
    pub args: Vec<Value>,
    pub loc: Loc,
}

#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub from: StateId,
    pub to: StateId,
    pub trigger: Trigger,
    pub loc: Loc,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Trigger {
    Alert {
        alert: String,
        /// `count N within T`: N alerts within T milliseconds.
        count: Option<(u32, u64)>,
        loc: Loc,
    },
    When {
        guard: Expr,
        /// `for T`: the guard must hold for T milliseconds.
        hold_ms: Option<u64>,
    },
    Quiet {
        after_ms: u64,
    },
    /// `after T silent`: no reading from the device for `T` (counted from the later of
    /// entering the state and the last reading).
    Silent {
        after_ms: u64,
    },
    Operator {
        action: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub name: String,
    pub loc: Loc,
    pub bridge: String,
    pub uplink: Option<String>,
    /// Where the uplink is named (the site's name when it is not).
    pub uplink_loc: Loc,
    pub unknown_hosts: UnknownHosts,
    /// `node NAME { ... }`: the edge nodes of a site that spans several, each with its
    /// own bridge and uplink (then `bridge` is empty and `uplink` `None`). Empty for a
    /// site on one bridge. Every device of a site with nodes is on one
    /// ([`Device::node`]).
    pub nodes: Vec<Node>,
    /// On the projection of a site onto one of its nodes ([`Site::project`]): that
    /// node's name. The projection is a one-node site in its own right (the node's
    /// bridge, uplink and devices), which code generation turns into the node's
    /// sub-bundle; it is never verified.
    pub part_of: Option<String>,
    pub devices: Vec<Device>,
    pub rules: Vec<Rule>,
    pub asserts: Vec<Assertion>,
    pub traffic_asserts: Vec<TrafficAssertion>,
}

/// `node NAME { bridge "br" uplink "eth" }`: an edge node of a site.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
    pub bridge: String,
    pub uplink: Option<String>,
    /// Where its uplink is named (the node's name when it is not).
    pub uplink_loc: Loc,
    pub loc: Loc,
}

impl Site {
    /// The projection of the site onto node `node` (an index into `nodes`): a one-node
    /// site with that node's bridge, uplink and devices (in site order, their `node`
    /// cleared), the site's name and `unknown hosts`, and no rules or assertions (they
    /// belong to the whole site, whose engine runs on the controller). Also returns,
    /// for each device of the projection, its index in the site.
    ///
    /// Nothing a device's switch flows or µmboxes need is lost: a device's flows read
    /// only its own address, MAC and port, its µmboxes' ports, the uplink and the
    /// site's `unknown hosts` (`codegen::openflow`); other devices, on this node or
    /// another, are peers on the uplink side, reached through the uplink like any host.
    /// `codegen::bundle`'s tests hold a one-node projection to the bundle of the same
    /// site written on one bridge.
    pub fn project(&self, node: usize) -> (Site, Vec<DeviceId>) {
        let n = &self.nodes[node];
        let mut ids = Vec::new();
        let devices = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.node == Some(node))
            .map(|(i, d)| {
                ids.push(DeviceId::from_index(i));
                Device {
                    node: None,
                    ..d.clone()
                }
            })
            .collect();
        let site = Site {
            name: self.name.clone(),
            loc: n.loc,
            bridge: n.bridge.clone(),
            uplink: n.uplink.clone(),
            uplink_loc: n.uplink_loc,
            unknown_hosts: self.unknown_hosts,
            nodes: Vec::new(),
            part_of: Some(n.name.clone()),
            devices,
            rules: Vec::new(),
            asserts: Vec::new(),
            traffic_asserts: Vec::new(),
        };
        (site, ids)
    }
}

/// `assert never|reachable traffic [CLASS] to|from|with DEVICE [in STATES]`.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficAssertion {
    pub kind: AssertKind,
    pub class: TrafficClass,
    pub dir: TrafficDir,
    pub device: DeviceId,
    /// Empty: every state.
    pub states: Vec<StateId>,
    pub loc: Loc,
}

/// What a traffic assertion is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TrafficClass {
    /// Anything: IPv4 and ARP.
    Anything,
    Arp,
    /// IPv4 of a class (`ip`, `tcp 23`, ...).
    Ip(Class),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TrafficDir {
    /// Started on the uplink side, toward the device.
    To,
    /// Started by the device.
    From,
    With,
}

impl TrafficDir {
    pub fn starters(self) -> &'static [Starter] {
        match self {
            TrafficDir::To => &[Starter::Uplink],
            TrafficDir::From => &[Starter::Device],
            TrafficDir::With => &[Starter::Uplink, Starter::Device],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub name: String,
    pub ty: TypeId,
    /// Where it is on the switch; `None` for a device of a type off the switch
    /// ([`DeviceType::on_switch`]), which has no address, port, flows or µmboxes.
    pub net: Option<DeviceNet>,
    pub trusted: bool,
    pub loc: Loc,
    /// Its type's MQTT bindings with its own topics; `None` when the type has none.
    pub telemetry: Option<kalki_model::telemetry::Telemetry>,
    /// `node NAME`: the node it is attached to (an index into [`Site::nodes`]); `None`
    /// in a site on one bridge.
    pub node: Option<usize>,
}

/// A device's place on the switch: `at`, `mac`, `port`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceNet {
    pub ip: u32,
    pub mac: Option<[u8; 6]>,
    pub port: String,
    pub ip_loc: Loc,
    pub mac_loc: Option<Loc>,
    pub port_loc: Loc,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub name: String,
    /// `rule ... on COND`: fires only when the condition becomes true (see
    /// `docs/language.md`, §7.3); the verifier treats it as a `when` rule wherever that
    /// over-approximates soundly.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub edge: bool,
    pub cond: Expr,
    pub actions: Vec<Action>,
    pub loc: Loc,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Action {
    Goto {
        device: DeviceId,
        state: StateId,
        loc: Loc,
    },
    Command {
        device: DeviceId,
        command: String,
        loc: Loc,
    },
    Raise {
        device: DeviceId,
        alert: String,
        loc: Loc,
    },
    /// `escalate dev to state`: a move to `state` only from a less restrictive state (a
    /// lower index); in `state` or above it changes nothing.
    Escalate {
        device: DeviceId,
        state: StateId,
        loc: Loc,
    },
}

impl Action {
    /// The move this action makes: `(device, target, escalate)` for a `dev -> state` or
    /// an `escalate dev to state`.
    pub fn moves(&self) -> Option<(DeviceId, StateId, bool)> {
        match self {
            Action::Goto { device, state, .. } => Some((*device, *state, false)),
            Action::Escalate { device, state, .. } => Some((*device, *state, true)),
            Action::Command { .. } | Action::Raise { .. } => None,
        }
    }

    /// The device whose state the action may change: a move, or a raised alert (which
    /// may take one of its transitions). A command changes no state.
    pub fn state_target(&self) -> Option<DeviceId> {
        match self {
            Action::Goto { device, .. }
            | Action::Escalate { device, .. }
            | Action::Raise { device, .. } => Some(*device),
            Action::Command { .. } => None,
        }
    }

    /// The device the action acts on.
    pub fn device(&self) -> DeviceId {
        match self {
            Action::Goto { device, .. }
            | Action::Command { device, .. }
            | Action::Raise { device, .. }
            | Action::Escalate { device, .. } => *device,
        }
    }

    pub fn loc(&self) -> Loc {
        match self {
            Action::Goto { loc, .. }
            | Action::Command { loc, .. }
            | Action::Raise { loc, .. }
            | Action::Escalate { loc, .. } => *loc,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AssertKind {
    Reachable,
    Never,
}

#[derive(Debug, Clone, Serialize)]
pub struct Assertion {
    pub kind: AssertKind,
    pub cond: Expr,
    pub loc: Loc,
}

/// A typed expression. Enum values are member indices (ints) with an enum type.
#[derive(Debug, Clone, Serialize)]
pub struct Expr {
    pub kind: ExprKind,
    pub ty: Ty,
    pub loc: Loc,
}

impl Expr {
    /// Every node of the expression, this one first, then its operands left to right
    /// (pre-order). The one traversal the analyses share.
    pub fn nodes(&self) -> impl Iterator<Item = &Expr> {
        let mut stack = vec![self];
        std::iter::from_fn(move || {
            let e = stack.pop()?;
            match &e.kind {
                ExprKind::Not { arg } | ExprKind::Neg { arg } => stack.push(arg),
                ExprKind::And { args } | ExprKind::Or { args } | ExprKind::Count { args } => {
                    stack.extend(args.iter().rev())
                }
                ExprKind::Cmp { lhs, rhs, .. } | ExprKind::Arith { lhs, rhs, .. } => {
                    stack.push(rhs);
                    stack.push(lhs);
                }
                ExprKind::Bool { .. }
                | ExprKind::Int { .. }
                | ExprKind::Var { .. }
                | ExprKind::Aggregate { .. }
                | ExprKind::InState { .. }
                | ExprKind::Clock { .. } => {}
            }
            Some(e)
        })
    }

    /// Calls `f` on every node, operands first. Recursive, like the verifier's encoding:
    /// typing bounds the nesting (K113).
    pub fn rewrite(&mut self, f: &mut impl FnMut(&mut Expr)) {
        match &mut self.kind {
            ExprKind::Not { arg } | ExprKind::Neg { arg } => arg.rewrite(f),
            ExprKind::And { args } | ExprKind::Or { args } | ExprKind::Count { args } => {
                for a in args {
                    a.rewrite(f);
                }
            }
            ExprKind::Cmp { lhs, rhs, .. } | ExprKind::Arith { lhs, rhs, .. } => {
                lhs.rewrite(f);
                rhs.rewrite(f);
            }
            ExprKind::Bool { .. }
            | ExprKind::Int { .. }
            | ExprKind::Var { .. }
            | ExprKind::Aggregate { .. }
            | ExprKind::InState { .. }
            | ExprKind::Clock { .. } => {}
        }
        f(self);
    }

    /// The devices whose states the expression tests (`dev in s`).
    pub fn states_read(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.nodes().filter_map(|n| match &n.kind {
            ExprKind::InState { device, .. } => Some(*device),
            _ => None,
        })
    }

    /// The site devices the expression reads anything of: a state or a sensed value.
    pub fn devices_read(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.nodes().filter_map(|n| match &n.kind {
            ExprKind::Var { var } | ExprKind::Aggregate { var, .. } => var.device,
            ExprKind::InState { device, .. } => Some(*device),
            _ => None,
        })
    }

    /// The sensed variables the expression reads (directly or through an aggregate).
    pub fn vars_read(&self) -> impl Iterator<Item = (VarRef, &Expr)> {
        self.nodes().filter_map(|n| match &n.kind {
            ExprKind::Var { var } | ExprKind::Aggregate { var, .. } => Some((*var, n)),
            _ => None,
        })
    }
}

/// Which device a variable belongs to: the type's own (in a transition guard) or a
/// site device (in a rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct VarRef {
    pub device: Option<DeviceId>,
    pub var: VarId,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ExprKind {
    Bool {
        value: bool,
    },
    Int {
        value: i64,
    },
    Var {
        var: VarRef,
    },
    Aggregate {
        func: AggFunc,
        var: VarRef,
        last: u32,
    },
    InState {
        device: DeviceId,
        state: StateId,
    },
    /// Minutes since midnight; `from > to` wraps past midnight.
    Clock {
        from: u16,
        to: u16,
    },
    Not {
        arg: Box<Expr>,
    },
    Neg {
        arg: Box<Expr>,
    },
    And {
        args: Vec<Expr>,
    },
    Or {
        args: Vec<Expr>,
    },
    Cmp {
        cmp: CmpOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Arith {
        arith: ArithOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `count(p in GROUP: C)`: how many of the conditions hold.
    Count {
        args: Vec<Expr>,
    },
}
