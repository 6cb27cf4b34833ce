//! The types of `manifest.json` and the container manifests of a bundle
//! (`docs/bundle.md`): `kalkic build` writes them (`compiler/src/codegen/manifest.rs`
//! lowers its typed IR into them, indices kept, source locations dropped) and the shim
//! reads them; `bundle.rs` checks that what they hold is consistent before anything uses
//! it. One definition, serde both ways; `docs/schema/` holds the JSON Schemas generated
//! from them (`tests/schema.rs` fails when they drift).
//!
//! Unknown fields are ignored (a compiler may add information within one format
//! version); unknown variants (an expression operator, a trigger kind) are errors.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The bundle format these types describe, the one `kalkic build` writes. Format 2: a
/// device's place on the switch is its `net` and a state's posture its `switch`, both
/// `null` for a device off the switch (format 1 had `ip`, `port`, `cookie`, ... inline,
/// and no way to say a device has none).
pub const FORMAT: u32 = 2;

/// The JSON Schemas of the bundle's JSON files, generated from these types: each file's
/// name under `docs/schema/` and its text (keys sorted, final newline). The committed
/// copies are checked against these by `tests/schema.rs`.
pub fn json_schemas() -> Vec<(&'static str, String)> {
    let text = |schema: Schema| {
        let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
        text.push('\n');
        text
    };
    vec![
        (
            "manifest.schema.json",
            text(schemars::schema_for!(Manifest)),
        ),
        (
            "container.schema.json",
            text(schemars::schema_for!(Container)),
        ),
    ]
}

/// The bundle formats this shim understands.
pub const SUPPORTED_FORMATS: &[u32] = &[FORMAT];

/// A bundle's JSON file as written: keys sorted (through [`serde_json::Value`], whose
/// maps are ordered), two-space indentation, a final newline. Same value, same bytes.
/// Cannot fail for the types of this module (every map has string keys); if it did, the
/// bytes would be empty and the shim would refuse the file (S002).
pub fn to_json(value: &impl Serialize) -> Vec<u8> {
    let text = serde_json::to_value(value).and_then(|v| serde_json::to_string_pretty(&v));
    let mut text = text.unwrap_or_default();
    text.push('\n');
    text.into_bytes()
}

/// Just the version field, read first so that a bundle of another format is refused as
/// such (S003) rather than as a malformed one.
#[derive(Debug, Deserialize)]
pub(crate) struct FormatOnly {
    pub format: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct Manifest {
    pub format: u32,
    /// `kalkic` and its version.
    pub compiler: String,
    pub site: String,
    pub bridge: String,
    pub uplink: Uplink,
    pub unknown_hosts: UnknownHosts,
    pub cookies: Cookies,
    /// Digest of the sources' digests (also a label on every container).
    pub policy_sha256: String,
    pub sources: Vec<SourceDigest>,
    /// Every file of the bundle except `manifest.json`, with its digest.
    pub files: Vec<FileDigest>,
    pub ports: Vec<Port>,
    pub device_types: Vec<DeviceType>,
    pub devices: Vec<Device>,
    pub rules: Vec<Rule>,
    /// The site's edge nodes, when it spans several (`node NAME { ... }` in the policy):
    /// each node's bridge, uplink, devices and sub-bundle (`nodes/NAME/`). Absent for a
    /// site on one bridge, whose manifest is then exactly as before nodes existed. A
    /// bundle with nodes is the controller's: `bridge` is empty, `ports` is empty, and a
    /// device's `net` and postures are those of its node's sub-bundle (port numbers and
    /// cookies of its node's bridge, paths under `nodes/NAME/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<SiteNode>,
    /// In a node's sub-bundle (`nodes/NAME/manifest.json`): the site it is a part of.
    /// Such a bundle holds that node's devices only, and no rules: it is not a site and
    /// is never run as one. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_of: Option<PartOf>,
}

/// One edge node of a site that spans several (the whole site's `nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct SiteNode {
    pub name: String,
    /// Its Open vSwitch bridge.
    pub bridge: String,
    /// Its uplink: name (if the policy gives one) and port number on its bridge.
    pub uplink: Uplink,
    /// The devices attached to it, in site order (names of entries of `devices`).
    pub devices: Vec<String>,
    /// Its sub-bundle's manifest, `nodes/NAME/manifest.json` (also listed in `files`).
    pub manifest: String,
    /// sha256 of that manifest: the sub-bundle an agent of this node must have loaded.
    pub manifest_sha256: String,
}

/// What a node's sub-bundle is a part of.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct PartOf {
    /// The site (the whole-site bundle's `site`).
    pub site: String,
    /// The node this sub-bundle is for (an entry of the whole site's `nodes`).
    pub node: String,
}

/// The value of the `kalki.site` label of a bundle's containers: the site's name, or
/// `SITE/NODE` for a node's part of a site that spans nodes, so that the agents of two
/// nodes sharing one container engine never take each other's µmboxes for strays. One
/// definition for the compiler, which writes the label, and the runtime, which lists by
/// it.
pub fn container_scope(site: &str, node: Option<&str>) -> String {
    match node {
        Some(n) => format!("{site}/{n}"),
        None => site.to_string(),
    }
}

impl Manifest {
    /// [`container_scope`] of this bundle.
    pub fn container_scope(&self) -> String {
        match &self.part_of {
            Some(p) => container_scope(&p.site, Some(&p.node)),
            None => container_scope(&self.site, None),
        }
    }

    /// The states device `device` can move to from `state` in one step: by a transition
    /// of its type from `state` (an alert, a reading, a timer, an operator reset), or by
    /// a rule's `->` or `escalate` naming it (an escalation only to a more restrictive
    /// state). More restrictive ones first, nearest first, then less restrictive ones,
    /// nearest first: what a runtime that keeps the next states' µmboxes ready serves
    /// first. `state` itself is not among them.
    pub fn successors(&self, device: usize, state: usize) -> Vec<usize> {
        let Some(d) = self.devices.get(device) else {
            return Vec::new();
        };
        let mut next = std::collections::BTreeSet::new();
        if let Some(t) = self.device_types.iter().find(|t| t.name == d.ty) {
            next.extend(
                t.transitions
                    .iter()
                    .filter(|tr| tr.from as usize == state)
                    .map(|tr| tr.to as usize),
            );
        }
        for a in self.rules.iter().flat_map(|r| &r.actions) {
            match *a {
                Action::Goto {
                    device: dv,
                    state: s,
                } if dv as usize == device => {
                    next.insert(s as usize);
                }
                Action::Escalate {
                    device: dv,
                    state: s,
                } if dv as usize == device && s as usize > state => {
                    next.insert(s as usize);
                }
                _ => {}
            }
        }
        next.remove(&state);
        let (up, down): (Vec<usize>, Vec<usize>) = next.into_iter().partition(|&s| s > state);
        up.into_iter().chain(down.into_iter().rev()).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct Uplink {
    pub name: Option<String>,
    pub ofport: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnknownHosts {
    Drop,
    Pass,
}

/// An OpenFlow cookie, written in the manifest as a hexadecimal string (`"0x2000...0"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cookie(pub u64);

impl Serialize for Cookie {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:#x}", self.0))
    }
}

impl JsonSchema for Cookie {
    fn schema_name() -> Cow<'static, str> {
        "Cookie".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An OpenFlow cookie: a 64-bit number in lowercase hexadecimal.",
            "type": "string",
            "pattern": "^0x[0-9a-fA-F]{1,16}$"
        })
    }
}

impl<'de> Deserialize<'de> for Cookie {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let digits = text
            .strip_prefix("0x")
            .ok_or_else(|| serde::de::Error::custom(format!("cookie `{text}` is not `0x...`")))?;
        u64::from_str_radix(digits, 16).map(Cookie).map_err(|_| {
            serde::de::Error::custom(format!("cookie `{text}` is not a 64-bit hex number"))
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct Cookies {
    pub base: Cookie,
    /// Selects all the flows of one device.
    pub device_mask: Cookie,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct SourceDigest {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct FileDigest {
    /// Relative to the bundle directory, `/`-separated.
    pub path: String,
    pub sha256: String,
}

/// One switch port the bundle needs, with the number to request for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct Port {
    pub name: String,
    pub ofport: u32,
    #[serde(flatten)]
    pub role: PortRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum PortRole {
    Uplink,
    Device {
        device: String,
    },
    /// An interface of µmbox instance `instance` of the device (see
    /// `containers/<device>/<instance>-<umbox>.json`): `a` faces the device, `b` the
    /// uplink, `tap` receives copies.
    Umbox {
        device: String,
        instance: usize,
        umbox: String,
        side: Side,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    A,
    B,
    Tap,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct DeviceType {
    pub name: String,
    pub vars: Vec<Var>,
    pub commands: Vec<String>,
    /// Alerts the type raises itself (beyond its µmboxes').
    pub alerts: Vec<String>,
    /// In posture order: index 0 is the least restrictive.
    pub states: Vec<String>,
    pub initial: u32,
    /// In declaration order.
    pub transitions: Vec<Transition>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct Var {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: VarType,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum VarType {
    Bool,
    Int { lo: i64, hi: i64 },
    Enum { members: Vec<String> },
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct Transition {
    /// State indices into the type's `states`.
    pub from: u32,
    pub to: u32,
    pub trigger: Trigger,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Trigger {
    /// `on ALERT [count N within T]`; `count` is `[N, T in ms]`.
    Alert {
        alert: String,
        count: Option<(u32, u64)>,
    },
    /// `when GUARD [for T]`.
    When { guard: Expr, hold_ms: Option<u64> },
    /// `after T quiet`.
    Quiet { after_ms: u64 },
    /// `after T silent`: no reading from the device for `T`.
    Silent { after_ms: u64 },
    /// `on operator ACTION`.
    Operator { action: String },
}

impl std::fmt::Display for Trigger {
    /// The trigger as written, guards elided: `on port_scan count 3 within 1m`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Alert { alert, count: None } => write!(f, "on {alert}"),
            Trigger::Alert {
                alert,
                count: Some((n, w)),
            } => write!(f, "on {alert} count {n} within {}", duration(*w)),
            Trigger::When { hold_ms: None, .. } => write!(f, "when ..."),
            Trigger::When {
                hold_ms: Some(h), ..
            } => write!(f, "when ... for {}", duration(*h)),
            Trigger::Quiet { after_ms } => write!(f, "after {} quiet", duration(*after_ms)),
            Trigger::Silent { after_ms } => write!(f, "after {} silent", duration(*after_ms)),
            Trigger::Operator { action } => write!(f, "on operator {action}"),
        }
    }
}

/// A duration as the language writes it: `1m`, `30s`, `1500ms`.
pub fn duration(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct Device {
    pub name: String,
    /// The name of its entry in `device_types`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Where it is on the switch; `null` for a device off the switch (a sensor behind a
    /// hub, whose type has no chain): it has no address, port, flows or µmboxes, nothing
    /// of the switch protects it, and every state's `switch` is `null` too.
    pub net: Option<DeviceNet>,
    pub trusted: bool,
    pub initial: String,
    pub most_restrictive: String,
    /// One per state of its type, in the same order.
    pub states: Vec<DeviceState>,
    /// Where its readings come from and its commands go over MQTT (topics filled in);
    /// absent when it has no bindings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::telemetry::Telemetry>,
    /// In a site with nodes, the node it is attached to (an entry of `nodes`); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Device {
    /// Whether the device is on the switch (has a `net`).
    pub fn on_switch(&self) -> bool {
        self.net.is_some()
    }
}

/// A device's place on the switch.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct DeviceNet {
    pub ip: String,
    pub mac: Option<String>,
    pub port: String,
    pub ofport: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct DeviceState {
    pub name: String,
    /// The state's posture on the switch; `null` for a device off the switch.
    pub switch: Option<Posture>,
}

/// A state's posture on the switch: its cookie, chain, rule set and µmboxes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct Posture {
    pub cookie: Cookie,
    pub chain: Chain,
    /// Path of the state's rule set (`flows/<device>/<state>.ofctl`).
    pub flows: String,
    /// Paths of the container manifests, in chain order.
    pub containers: Vec<String>,
}

/// A state's chain: a built-in, or µmbox names in order (device side first).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Chain {
    Builtin(Builtin),
    Umboxes(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Builtin {
    Pass,
    Drop,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct Rule {
    pub name: String,
    /// `rule ... on COND`: fires only when its condition becomes true, at an evaluation
    /// where it holds after one where it did not (or none). Absent: a `when` rule.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edge: bool,
    pub cond: Expr,
    /// Applied in order when the rule fires.
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Action {
    /// `dev -> state`.
    Goto { device: u32, state: u32 },
    /// `dev.command`.
    Command { device: u32, command: String },
    /// `raise ALERT on dev`.
    Raise { device: u32, alert: String },
    /// `escalate dev to state`: moves the device only if its current state is less
    /// restrictive (a lower index); never lowers it.
    Escalate { device: u32, state: u32 },
}

/// A typed expression. Enum values are member indices.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct Expr {
    pub kind: ExprKind,
    pub ty: Ty,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Ty {
    Bool,
    /// The range the value provably lies in (as the compiler computed it).
    Int {
        lo: i64,
        hi: i64,
    },
    Enum {
        members: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AggFunc {
    Avg,
    Sum,
    Min,
    Max,
}

impl AggFunc {
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Avg => "avg",
            AggFunc::Sum => "sum",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// Whether `a OP b` holds, for anything ordered (integers, and the engine's values).
    pub fn holds<T: Ord>(self, a: &T, b: &T) -> bool {
        let ord = a.cmp(b);
        match self {
            CmpOp::Eq => ord.is_eq(),
            CmpOp::Ne => ord.is_ne(),
            CmpOp::Lt => ord.is_lt(),
            CmpOp::Le => ord.is_le(),
            CmpOp::Gt => ord.is_gt(),
            CmpOp::Ge => ord.is_ge(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
}

/// A sensed variable: of the device whose guard reads it (`device: null`, in transition
/// guards) or of a site device (in rules).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
pub struct VarRef {
    pub device: Option<u32>,
    pub var: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
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
    /// `func(var, last N)` over the last N readings of the variable.
    Aggregate {
        func: AggFunc,
        var: VarRef,
        last: u32,
    },
    InState {
        device: u32,
        state: u32,
    },
    /// `clock in from..to`, minutes since midnight; `from > to` wraps past midnight.
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
    /// `count(p in GROUP: C)`, expanded: how many of the conditions hold; unknown when
    /// one of them is.
    Count {
        args: Vec<Expr>,
    },
}

impl Expr {
    /// Every node, this one first, then its operands left to right (pre-order), without
    /// recursion.
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
}

/// One container manifest: a µmbox instance of a device
/// (`containers/<device>/<i>-<umbox>.json`), shared by the states listed in `states`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub params: BTreeMap<String, String>,
    pub mode: UmboxMode,
    /// The alerts this µmbox can raise.
    pub emits: Vec<String>,
    /// The device's states whose chains use this instance.
    pub states: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub interfaces: Vec<Interface>,
    /// What this instance does to traffic, its parameters filled in
    /// (`kalki_model::contract`).
    pub contract: crate::contract::Contract,
    /// Files the runtime mounts read-only into the container.
    #[serde(default)]
    pub secrets: Vec<SecretMount>,
}

/// `secret NAME at PATH`: the node's secret `NAME` (a file the operator keeps outside
/// the bundle), mounted read-only at `PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct SecretMount {
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UmboxMode {
    /// On the path: traffic goes in one interface and out the other.
    Inline,
    /// Receives a mirrored copy; the original goes on.
    Tap,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct Interface {
    /// `a`, `b` or `tap`.
    pub name: String,
    /// `device`, `uplink` or `copy`.
    pub faces: String,
    pub ofport: u32,
    pub port_name: String,
}
