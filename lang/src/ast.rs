//! The syntax tree of a `.kalki` file: what the grammar builds, with a span on every node.
//!
//! The tree is untyped and unresolved: names are plain identifiers. Name resolution and
//! type checking (in `kalki-compiler`) turn it into the typed model.

use serde::Serialize;

/// A MAC address as six bytes.
pub type MacBytes = [u8; 6];

/// A byte range in one source file. Spans never take part in equality of the things they
/// locate: compare names with [`Ident::name`], not whole nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Span> for miette::SourceSpan {
    fn from(s: Span) -> Self {
        (s.start, s.len()).into()
    }
}

/// A name as written, with where it was written.
#[derive(Debug, Clone, Serialize)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A whole file: its items in source order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Serialize)]
pub enum Item {
    Import(Import),
    Umbox(Umbox),
    DeviceType(DeviceType),
    Site(Site),
}

/// `import std::umboxes::{sniffer, ids}`, `import std::devices::Camera`,
/// `import lab::*`.
#[derive(Debug, Clone, Serialize)]
pub struct Import {
    /// Module path: `std::umboxes` is `[std, umboxes]`.
    pub module: Vec<Ident>,
    pub names: ImportNames,
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub enum ImportNames {
    /// `::*`: everything the module declares.
    All(Span),
    /// `::Name` or `::{A, B}`.
    Some(Vec<Ident>),
}

/// `umbox NAME { ... }`: a containerised network function.
#[derive(Debug, Clone, Serialize)]
pub struct Umbox {
    pub name: Ident,
    pub members: Vec<UmboxMember>,
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub enum UmboxMember {
    Image(StrLit),
    Args(Vec<StrLit>, Span),
    Env(Vec<(Ident, StrLit)>, Span),
    Param(Param),
    Emits(Vec<Ident>, Span),
    Mode(Ident),
    /// `secret NAME at "PATH"`: a file the runtime mounts read-only at `PATH`.
    Secret {
        name: Ident,
        path: StrLit,
        span: Span,
    },
    /// `traffic { ... }`: what the µmbox does to traffic (its contract).
    Traffic(TrafficBlock),
}

/// `traffic { CLAUSE* }`.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficBlock {
    pub items: Vec<TrafficItem>,
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub enum TrafficItem {
    Clause(TrafficClause),
    /// `on failure ACTION` (`what` should be `failure`).
    OnFailure {
        what: Ident,
        action: (TreatmentWord, Span),
        span: Span,
    },
}

/// `ACTION CLASS [PORTS] [from device|uplink] [when COND]`.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficClause {
    pub action: (TreatmentWord, Span),
    /// `all`, `ip`, `tcp`, `udp` or `icmp` (checked by the compiler).
    pub class: Ident,
    pub ports: Vec<PortItem>,
    pub from: Option<(StarterWord, Span)>,
    pub when: Option<ContractCond>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TreatmentWord {
    Pass,
    Drop,
    Answer,
    Authenticate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StarterWord {
    Device,
    Uplink,
}

/// A port or port range (`80`, `49152..49154`) or an int parameter (`{listen_port}`).
#[derive(Debug, Clone, Serialize)]
pub enum PortItem {
    Range { lo: i64, hi: i64, span: Span },
    Param(Ident),
}

/// `when P`, `when not P`, `when P == V`, `when P != V` over the µmbox's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct ContractCond {
    pub param: Ident,
    pub value: Option<Literal>,
    pub negated: bool,
    pub span: Span,
}

/// `param NAME: TYPE [= DEFAULT]`.
#[derive(Debug, Clone, Serialize)]
pub struct Param {
    pub name: Ident,
    pub ty: TypeExpr,
    pub default: Option<Literal>,
    pub span: Span,
}

/// A type as written: `bool`, `int in 0..100`, `enum { a, b }`, `string`, `duration`.
#[derive(Debug, Clone, Serialize)]
pub enum TypeExpr {
    Bool(Span),
    Int {
        lo: i64,
        hi: i64,
        span: Span,
    },
    /// `int` with no bounds: only allowed where a range is not required.
    UnboundedInt(Span),
    Enum(Vec<Ident>, Span),
    String(Span),
    Duration(Span),
}

impl TypeExpr {
    pub fn span(&self) -> Span {
        match self {
            TypeExpr::Bool(s)
            | TypeExpr::UnboundedInt(s)
            | TypeExpr::Enum(_, s)
            | TypeExpr::String(s)
            | TypeExpr::Duration(s) => *s,
            TypeExpr::Int { span, .. } => *span,
        }
    }
}

/// A literal value: parameter defaults and chain arguments.
#[derive(Debug, Clone, Serialize)]
pub enum Literal {
    Int(i64, Span),
    Bool(bool, Span),
    Str(StrLit),
    Duration(Duration),
    /// A bare name: an enum member.
    Name(Ident),
}

impl Literal {
    pub fn span(&self) -> Span {
        match self {
            Literal::Int(_, s) | Literal::Bool(_, s) => *s,
            Literal::Str(s) => s.span,
            Literal::Duration(d) => d.span,
            Literal::Name(i) => i.span,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StrLit {
    pub value: String,
    pub span: Span,
}

/// A duration in milliseconds: `500ms`, `30s`, `10m`, `2h`, `1d`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Duration {
    pub millis: u64,
    pub span: Span,
}

/// `device type NAME { ... }`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceType {
    pub name: Ident,
    pub members: Vec<DeviceMember>,
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub enum DeviceMember {
    /// `sensed NAME: TYPE`.
    Sensed {
        name: Ident,
        ty: TypeExpr,
        span: Span,
    },
    /// `param NAME: TYPE [= DEFAULT]`: a per-device value, filled into the type's MQTT
    /// topics and payloads (`{NAME}`).
    Param(Param),
    /// `telemetry "TOPIC" json|text { VAR = PATH CONVERSION*, ... }`.
    Telemetry(TelemetryBlock),
    /// `command NAME publish "TOPIC" "PAYLOAD"`.
    Publish(PublishDecl),
    /// `commands a, b`.
    Commands(Vec<Ident>, Span),
    /// `lowering commands a, b`: commands that lower the device's protection in the
    /// physical world (`unlock`, `disarm`); integrity (K207) treats sending one like
    /// lowering a posture.
    LoweringCommands(Vec<Ident>, Span),
    /// `alerts a, b`: alerts the device type declares itself (raised by rules or sensors).
    Alerts(Vec<Ident>, Span),
    /// `states a < b < c`: least restrictive first.
    States(Vec<Ident>, Span),
    /// `initial NAME`.
    Initial(Ident),
    /// `final a, b`: states exempt from the trap check.
    Final(Vec<Ident>, Span),
    /// `NAME { chain [...] }`.
    StateBlock(StateBlock),
    Transition(Transition),
}

/// `telemetry "tele/{topic}/SENSOR" json { power = ENERGY.Power }`.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryBlock {
    pub topic: StrLit,
    /// `json` or `text`.
    pub format: Ident,
    pub fields: Vec<TelemetryField>,
    pub span: Span,
}

/// `current = ENERGY.Current * 1000 round nearest`.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryField {
    pub var: Ident,
    /// Keys into the JSON payload (names or strings); `payload` for a text binding; empty
    /// with a constant.
    pub path: Vec<Ident>,
    /// `online = true`: the value every message on the topic gives the variable.
    pub constant: Option<Literal>,
    pub convs: Vec<Conversion>,
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub enum Conversion {
    /// `* N`.
    Mul(i64, Span),
    /// `/ N`.
    Div(i64, Span),
    /// `round nearest|down|up`.
    Round(Ident, Span),
    /// `map { "ON" = true, ... }`.
    Map(Vec<(Literal, Literal)>, Span),
}

/// `command turn_off publish "cmnd/{topic}/POWER" "OFF"`.
#[derive(Debug, Clone, Serialize)]
pub struct PublishDecl {
    pub command: Ident,
    pub topic: StrLit,
    pub payload: StrLit,
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateBlock {
    pub state: Ident,
    pub chain: Option<Chain>,
    pub span: Span,
}

/// `chain [sniffer, ids(max_failures = 3)]`.
#[derive(Debug, Clone, Serialize)]
pub struct Chain {
    pub entries: Vec<ChainEntry>,
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChainEntry {
    pub umbox: Ident,
    pub args: Vec<(Ident, Literal)>,
    pub span: Span,
}

/// `FROM -> TO TRIGGER`.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub from: Ident,
    pub to: Ident,
    pub trigger: Trigger,
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub enum Trigger {
    /// `on ALERT [count N within T]`.
    Alert {
        alert: Ident,
        count: Option<(u32, Duration)>,
        span: Span,
    },
    /// `when COND [for T]`.
    When {
        cond: Expr,
        hold: Option<Duration>,
        span: Span,
    },
    /// `after T quiet`.
    Quiet { after: Duration, span: Span },
    /// `after T silent`: no reading from the device for `T`.
    Silent { after: Duration, span: Span },
    /// `on operator ACTION`.
    Operator { action: Ident, span: Span },
}

impl Trigger {
    pub fn span(&self) -> Span {
        match self {
            Trigger::Alert { span, .. }
            | Trigger::When { span, .. }
            | Trigger::Quiet { span, .. }
            | Trigger::Silent { span, .. }
            | Trigger::Operator { span, .. } => *span,
        }
    }
}

/// `site NAME { ... }`: one switch and the devices behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub name: Ident,
    pub members: Vec<SiteMember>,
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub enum SiteMember {
    /// `bridge "br0" [uplink "eth0"]`.
    Bridge {
        bridge: StrLit,
        uplink: Option<StrLit>,
        span: Span,
    },
    /// `unknown hosts drop|pass`.
    UnknownHosts(Ident, Span),
    /// `node east { bridge "br-east" uplink "eth1" }`: one of the site's edge nodes (the
    /// grammar puts them before every other member).
    Node(NodeDecl),
    Device(DeviceDecl),
    /// `group NAME: TYPE` (every device of the type) or `group NAME = [a, b, ...]`.
    Group(GroupDecl),
    Rule(Rule),
    Assert(Assertion),
    /// `assert never|reachable traffic [CLASS] to|from|with DEVICE [in STATES]`.
    TrafficAssert(TrafficAssertion),
}

#[derive(Debug, Clone, Serialize)]
pub struct TrafficAssertion {
    pub kind: AssertKind,
    /// `None`: any traffic.
    pub class: Option<TrafficClassLit>,
    pub dir: TrafficDir,
    pub device: Ident,
    /// Empty: every state.
    pub states: Vec<Ident>,
    pub span: Span,
}

/// A traffic class in an assertion: `tcp 23`, `udp 53, 123`, `icmp`, `ip`, `arp`.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficClassLit {
    pub name: Ident,
    pub ports: Vec<PortItem>,
    pub span: Span,
}

/// Which side starts the traffic an assertion is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TrafficDir {
    /// From the uplink side to the device.
    To,
    /// From the device to the uplink side.
    From,
    /// Either.
    With,
}

/// `device NAME: TYPE at IP [mac MAC] [port "p"] [trusted]`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceDecl {
    pub name: Ident,
    /// `device plug[1..30]: ...`: thirty devices `plug1` to `plug30` and the group `plug`.
    pub range: Option<(i64, i64, Span)>,
    pub ty: Ident,
    /// `Type(param = value, ...)`: values of the type's parameters.
    pub args: Vec<(Ident, Literal)>,
    /// The address; with `..` (`at 10.0.1.10..`), the first of the range's, counted up.
    pub ip: Option<(u32, Span)>,
    pub ip_counts: bool,
    pub mac: Option<([u8; 6], Span)>,
    pub mac_counts: bool,
    pub port: Option<StrLit>,
    pub trusted: Option<Span>,
    /// `tagged outdoor, entrance`: each tag is a group of the site, of the devices tagged.
    pub tags: Vec<Ident>,
    /// `node east`: the node it is attached to, in a site that declares nodes.
    pub node: Option<Ident>,
    pub span: Span,
}

/// `node NAME { bridge "br" [uplink "eth"] }`: an edge node of a site spanning several,
/// with its own Open vSwitch bridge and uplink.
#[derive(Debug, Clone, Serialize)]
pub struct NodeDecl {
    pub name: Ident,
    pub bridge: StrLit,
    pub uplink: Option<StrLit>,
    pub span: Span,
}

/// `group plugs: TasmotaPlug` or `group kitchen = [kettle, toaster]`.
#[derive(Debug, Clone, Serialize)]
pub struct GroupDecl {
    pub name: Ident,
    pub members: GroupMembers,
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub enum GroupMembers {
    /// Every device of the site of this type.
    OfType(Ident),
    /// These devices.
    Listed(Vec<Ident>),
}

/// `rule NAME when COND then ACTION, ...`, or `rule NAME on COND then ...`; with
/// `for p in GROUP`, one rule per device of the group, `p` naming it.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub name: Ident,
    /// `for p in GROUP`.
    pub each: Option<(Ident, Ident)>,
    /// `on`: the rule fires only when its condition becomes true (an edge), not whenever
    /// it is evaluated and holds (`when`, a level).
    pub edge: bool,
    pub cond: Expr,
    pub actions: Vec<Action>,
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub enum Action {
    /// `dev -> state`.
    Goto {
        device: Ident,
        state: Ident,
        span: Span,
    },
    /// `dev.command`.
    Command {
        device: Ident,
        command: Ident,
        span: Span,
    },
    /// `raise ALERT on dev`.
    Raise {
        alert: Ident,
        device: Ident,
        span: Span,
    },
    /// `escalate dev to state`: a move only up the posture order, never down.
    Escalate {
        device: Ident,
        state: Ident,
        span: Span,
    },
}

impl Action {
    pub fn span(&self) -> Span {
        match self {
            Action::Goto { span, .. }
            | Action::Command { span, .. }
            | Action::Raise { span, .. }
            | Action::Escalate { span, .. } => *span,
        }
    }
}

/// `assert reachable COND` / `assert never COND`.
#[derive(Debug, Clone, Serialize)]
pub struct Assertion {
    pub kind: AssertKind,
    pub cond: Expr,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AssertKind {
    Reachable,
    Never,
}

/// Expressions: guards, rule conditions, assertion predicates.
#[derive(Debug, Clone, Serialize)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, Serialize)]
pub enum ExprKind {
    Int(i64),
    Bool(bool),
    /// `x`: a sensed variable, an enum member, or (in a site) a device.
    Name(Ident),
    /// `dev.var`.
    Field(Ident, Ident),
    /// `dev in state`.
    InState(Ident, Ident),
    /// `clock in HH:MM..HH:MM`: minutes since midnight; the range may wrap past midnight.
    Clock {
        from: u16,
        to: u16,
    },
    /// `avg(x, last N)`, `sum(dev.x, last N)`, ...
    Aggregate {
        func: Ident,
        arg: Box<Expr>,
        last: u32,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `any(p in GROUP: COND)`, `all(p in GROUP: COND)`: COND for some or every device of
    /// a site's group, with `p` naming it. Expanded by the compiler into `or`/`and`.
    Quantified {
        func: Ident,
        var: Ident,
        group: Ident,
        body: Box<Expr>,
    },
    /// `any`, `all` or `count(p in GROUP: COND)` once the compiler has expanded it: the
    /// condition for each device of the group. Never made by the parser.
    Expanded {
        func: Quantifier,
        terms: Vec<Expr>,
    },
    /// Stands in for an expression the parser could not read; already reported.
    Error,
}

/// What an expanded quantifier makes of its conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Quantifier {
    /// Some holds: their `or`.
    Any,
    /// Every one holds: their `and`.
    All,
    /// How many hold: an integer.
    Count,
}

impl Quantifier {
    pub fn name(self) -> &'static str {
        match self {
            Quantifier::Any => "any",
            Quantifier::All => "all",
            Quantifier::Count => "count",
        }
    }
}

impl Expr {
    /// How deeply the expression nests, computed without recursion (the input may be
    /// adversarial: thousands of `not` in a row).
    pub fn depth(&self) -> usize {
        let mut max = 0;
        let mut stack: Vec<(&Expr, usize)> = vec![(self, 1)];
        while let Some((e, d)) = stack.pop() {
            max = max.max(d);
            match &e.kind {
                ExprKind::Aggregate { arg, .. }
                | ExprKind::Unary(_, arg)
                | ExprKind::Quantified { body: arg, .. } => stack.push((arg, d + 1)),
                ExprKind::Binary(_, a, b) => {
                    stack.push((a, d + 1));
                    stack.push((b, d + 1));
                }
                ExprKind::Expanded { terms, .. } => stack.extend(terms.iter().map(|a| (a, d + 1))),
                _ => {}
            }
        }
        max
    }
}

/// Frees nested expressions iteratively: the default recursive drop would overflow the
/// stack on a deep enough (hostile) input.
impl Drop for Expr {
    fn drop(&mut self) {
        let mut stack: Vec<Box<Expr>> = Vec::new();
        let take = |kind: ExprKind, stack: &mut Vec<Box<Expr>>| match kind {
            ExprKind::Aggregate { arg, .. }
            | ExprKind::Unary(_, arg)
            | ExprKind::Quantified { body: arg, .. } => stack.push(arg),
            ExprKind::Binary(_, a, b) => {
                stack.push(a);
                stack.push(b);
            }
            ExprKind::Expanded { terms, .. } => stack.extend(terms.into_iter().map(Box::new)),
            _ => {}
        };
        take(
            std::mem::replace(&mut self.kind, ExprKind::Error),
            &mut stack,
        );
        while let Some(mut e) = stack.pop() {
            take(std::mem::replace(&mut e.kind, ExprKind::Error), &mut stack);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UnOp {
    Not,
    Neg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
        }
    }
}
