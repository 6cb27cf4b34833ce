//! Name resolution, part two, and type checking: lowers every item of the loaded modules
//! into the typed model ([`crate::ir`]), reporting unknown names (with suggestions),
//! type errors, empty ranges, missing parts and misplaced constructs as it goes.
//!
//! Each check reports and carries on with what it can still build, so one mistake gives
//! one diagnostic; an expression that failed is dropped rather than guessed at.

use crate::codes;
use crate::diag::{did_you_mean, Diagnostic, Diagnostics};
use crate::ir::*;
use crate::resolve::{ItemRef, Program};
use crate::source::SourceId;
use kalki_lang::ast::{self, BinOp, ExprKind as AK, Ident, Item, Span, UnOp};
use kalki_model::contract::{Class, PortRange, Proto, Starter, Treatment};
use kalki_model::range;
use kalki_model::telemetry as tm;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

/// Operator actions a transition can wait for.
pub const OPERATOR_ACTIONS: &[&str] = &["reset"];
/// The most devices one `device NAME[LO..HI]` declares.
const MAX_RANGE: i64 = 100_000;

/// The largest factor of a binding's `*` or `/` (ten to the ninth: nanos to units).
const MAX_SCALE: i64 = 1_000_000_000;

/// A sensed variable's type as a parameter type, to check a literal of it.
fn var_param_type(t: &VarType) -> ParamType {
    match t {
        VarType::Bool => ParamType::Bool,
        VarType::Int { lo, hi } => ParamType::Int { lo: *lo, hi: *hi },
        VarType::Enum { members } => ParamType::Enum {
            members: members.clone(),
        },
    }
}

/// Built-in chain entries, compiled to flows only.
pub const BUILTIN_CHAINS: &[&str] = &["pass", "drop"];

pub fn typeck(p: &Program, diags: &mut Diagnostics) -> Model {
    let mut cx = Cx {
        p,
        diags,
        model: Model::default(),
        umbox_ids: HashMap::new(),
        type_ids: HashMap::new(),
    };
    cx.run();
    cx.model
}

struct Cx<'a> {
    p: &'a Program,
    diags: &'a mut Diagnostics,
    model: Model,
    umbox_ids: HashMap<(usize, usize), UmboxId>,
    type_ids: HashMap<(usize, usize), TypeId>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Umbox,
    DeviceType,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Umbox => "µmbox",
            Kind::DeviceType => "device type",
        }
    }
}

/// Where an expression appears, which decides what it may refer to.
enum Ctx<'c> {
    /// A transition guard: the type's own variables.
    Guard { vars: &'c [Var] },
    /// A rule condition: site devices' variables and states, the clock.
    Rule { site: &'c SiteScope },
    /// An assertion: site devices' states only.
    Assert { site: &'c SiteScope },
}

struct SiteScope {
    devices: Vec<(String, TypeId)>,
    by_name: HashMap<String, usize>,
}

impl SiteScope {
    fn new(devices: Vec<(String, TypeId)>) -> Self {
        let by_name = devices
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        SiteScope { devices, by_name }
    }
    fn device(&self, name: &str) -> Option<(DeviceId, TypeId)> {
        let i = *self.by_name.get(name)?;
        Some((DeviceId::from_index(i), self.devices.get(i)?.1))
    }
}

impl<'a> Cx<'a> {
    fn run(&mut self) {
        self.model.roots = self
            .p
            .modules
            .iter()
            .filter(|m| m.is_root)
            .map(|m| m.source)
            .collect();
        // Ids first, in module and item order, so lowering can refer forward.
        for (m, module) in self.p.modules.iter().enumerate() {
            for (i, item) in module.ast.items.iter().enumerate() {
                match item {
                    Item::Umbox(_) => {
                        let id = UmboxId::from_index(self.umbox_ids.len());
                        self.umbox_ids.insert((m, i), id);
                    }
                    Item::DeviceType(_) => {
                        let id = TypeId::from_index(self.type_ids.len());
                        self.type_ids.insert((m, i), id);
                    }
                    _ => {}
                }
            }
        }
        for module in &self.p.modules {
            for item in &module.ast.items {
                if let Item::Umbox(u) = item {
                    let lowered = self.umbox(module.source, u);
                    self.model.umboxes.push(lowered);
                }
            }
        }
        for (m, module) in self.p.modules.iter().enumerate() {
            for item in &module.ast.items {
                if let Item::DeviceType(t) = item {
                    let lowered = self.device_type(m, t);
                    self.model.device_types.push(lowered);
                }
            }
        }
        for (m, module) in self.p.modules.iter().enumerate() {
            if !module.is_root {
                continue;
            }
            for item in &module.ast.items {
                if let Item::Site(s) = item {
                    let lowered = self.site(m, s);
                    self.model.sites.push(lowered);
                }
            }
        }
    }

    fn loc(&self, source: SourceId, span: Span) -> Loc {
        Loc::new(source, span)
    }

    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn duplicate(&mut self, what: &str, name: &str, again: Loc, first: Loc) {
        self.err(
            Diagnostic::error(
                codes::DUPLICATE,
                format!("{what} `{name}` is declared twice"),
            )
            .primary(again, "declared again here")
            .secondary(first, "first declared here"),
        );
    }

    fn unknown(
        &mut self,
        what: &str,
        name: &Ident,
        source: SourceId,
        candidates: &[&str],
        extra: Option<String>,
    ) {
        // "state of `cam`" reads better as "`cam` has no state `x`".
        let (message, label) = match what.split_once(" of ") {
            Some((noun, owner)) => (
                format!("{owner} has no {noun} `{}`", name.name),
                format!("not a {noun} of {owner}"),
            ),
            None => (
                format!("unknown {what} `{}`", name.name),
                format!("no {what} of this name"),
            ),
        };
        let mut d = Diagnostic::error(codes::UNKNOWN_NAME, message)
            .primary(self.loc(source, name.span), label);
        if let Some(h) = did_you_mean(&name.name, candidates.iter().copied()).or(extra) {
            d = d.help(h);
        }
        self.err(d);
    }

    /// Looks an item up in module `m`'s scope. `None` means reported (or poisoned).
    fn lookup(&mut self, m: usize, name: &Ident, want: Kind) -> Option<(usize, usize)> {
        let scope = &self.p.scopes[m];
        let source = self.p.modules[m].source;
        match scope.names.get(&name.name).map(|(r, _)| *r) {
            Some(ItemRef::Poisoned) => None,
            Some(ItemRef::Umbox(a, b)) if want == Kind::Umbox => Some((a, b)),
            Some(ItemRef::DeviceType(a, b)) if want == Kind::DeviceType => Some((a, b)),
            Some(other) => {
                let is = match other {
                    ItemRef::Umbox(..) => "a µmbox",
                    ItemRef::DeviceType(..) => "a device type",
                    ItemRef::Site(..) => "a site",
                    ItemRef::Poisoned => "unknown",
                };
                self.err(
                    Diagnostic::error(
                        codes::TYPE_MISMATCH,
                        format!("`{}` is {is}, not a {}", name.name, want.noun()),
                    )
                    .primary(
                        self.loc(source, name.span),
                        format!("expected a {}", want.noun()),
                    ),
                );
                None
            }
            None if scope.poisoned_glob => None,
            None => {
                let candidates: Vec<&str> = scope
                    .names
                    .iter()
                    .filter(|(_, (r, _))| match want {
                        Kind::Umbox => matches!(r, ItemRef::Umbox(..)),
                        Kind::DeviceType => matches!(r, ItemRef::DeviceType(..)),
                    })
                    .map(|(n, _)| n.as_str())
                    .collect();
                let extra = Some(match want {
                    Kind::Umbox => "declare it with `umbox NAME { ... }` or import it, e.g. `import std::umboxes::{sniffer}`".to_string(),
                    Kind::DeviceType => "declare it with `device type NAME { ... }` or import it, e.g. `import std::devices::Camera`".to_string(),
                });
                self.unknown(want.noun(), name, source, &candidates, extra);
                None
            }
        }
    }

    // ------------------------------------------------------------------ µmboxes

    fn umbox(&mut self, source: SourceId, u: &ast::Umbox) -> Umbox {
        let loc = self.loc(source, u.name.span);
        let mut out = Umbox {
            name: u.name.name.clone(),
            loc,
            image: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            params: Vec::new(),
            emits: Vec::new(),
            mode: UmboxMode::Inline,
            contract: None,
            secrets: Vec::new(),
        };
        let mut seen: HashMap<&'static str, Loc> = HashMap::new();
        let mut once = |cx: &mut Self, key: &'static str, at: Span| -> bool {
            let l = cx.loc(source, at);
            if let Some(first) = seen.get(key) {
                cx.duplicate("member", key, l, *first);
                false
            } else {
                seen.insert(key, l);
                true
            }
        };
        let mut arg_lits: Vec<&ast::StrLit> = Vec::new();
        let mut emitted: HashMap<String, Loc> = HashMap::new();
        let mut traffic: Option<&ast::TrafficBlock> = None;
        for member in &u.members {
            match member {
                ast::UmboxMember::Image(s) => {
                    if once(self, "image", s.span) {
                        if s.value.trim().is_empty() {
                            self.err(
                                Diagnostic::error(codes::MISSING, "empty image name").primary(
                                    self.loc(source, s.span),
                                    "name a container image here",
                                ),
                            );
                        }
                        out.image = s.value.clone();
                    }
                }
                ast::UmboxMember::Args(a, span) => {
                    if once(self, "args", *span) {
                        out.args = a.iter().map(|s| s.value.clone()).collect();
                        arg_lits = a.iter().collect();
                    }
                }
                ast::UmboxMember::Env(e, span) => {
                    if once(self, "env", *span) {
                        let mut keys: HashMap<&str, Loc> = HashMap::new();
                        for (k, v) in e {
                            let kl = self.loc(source, k.span);
                            if let Some(first) = keys.get(k.name.as_str()) {
                                self.duplicate("environment variable", &k.name, kl, *first);
                                continue;
                            }
                            keys.insert(&k.name, kl);
                            out.env.push((k.name.clone(), v.value.clone()));
                        }
                    }
                }
                ast::UmboxMember::Param(param) => self.param_def(source, param, &mut out.params),
                ast::UmboxMember::Emits(alerts, _) => {
                    for a in alerts {
                        let al = self.loc(source, a.span);
                        if let Some(first) = emitted.get(&a.name) {
                            self.duplicate("alert", &a.name, al, *first);
                            continue;
                        }
                        emitted.insert(a.name.clone(), al);
                    }
                }
                ast::UmboxMember::Secret { name, path, .. } => {
                    let nl = self.loc(source, name.span);
                    if out.secrets.iter().any(|(n, _)| *n == name.name) {
                        self.duplicate("secret", &name.name, nl, nl);
                        continue;
                    }
                    if let Some((other, _)) = out.secrets.iter().find(|(_, p)| *p == path.value) {
                        self.err(
                            Diagnostic::error(
                                codes::BAD_CONTRACT,
                                format!(
                                    "secrets `{other}` and `{}` are mounted at one path",
                                    name.name
                                ),
                            )
                            .primary(self.loc(source, path.span), "the same path again")
                            .help("give each secret its own file under `/run/secrets/`"),
                        );
                        continue;
                    }
                    if !secret_path_ok(&path.value) {
                        self.err(
                            Diagnostic::error(
                                codes::BAD_CONTRACT,
                                format!("`{}` is not a place for a secret", path.value),
                            )
                            .primary(self.loc(source, path.span), "mounted here")
                            .help("give an absolute path under `/run/secrets/`, e.g. `\"/run/secrets/proxy-credentials\"`"),
                        );
                        continue;
                    }
                    out.secrets.push((name.name.clone(), path.value.clone()));
                }
                ast::UmboxMember::Traffic(block) => {
                    if once(self, "traffic", block.span) {
                        traffic = Some(block);
                    }
                }
                ast::UmboxMember::Mode(m) => {
                    if once(self, "mode", m.span) {
                        out.mode = match m.name.as_str() {
                            "inline" => UmboxMode::Inline,
                            "tap" => UmboxMode::Tap,
                            _ => {
                                self.unknown(
                                    "mode",
                                    m,
                                    source,
                                    &["inline", "tap"],
                                    Some("the modes are `inline` and `tap`".into()),
                                );
                                UmboxMode::Inline
                            }
                        };
                    }
                }
            }
        }
        if !seen.contains_key("image") {
            self.err(
                Diagnostic::error(
                    codes::MISSING,
                    format!("µmbox `{}` has no image", u.name.name),
                )
                .primary(loc, "declared here")
                .help("add `image \"NAME:TAG\"`"),
            );
        }
        for lit in arg_lits {
            self.check_template(source, lit, &out.params);
        }
        if let Some(block) = traffic {
            out.contract = self.contract(source, block, &out);
        }
        out.emits = emitted
            .into_keys()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        out
    }

    /// Checks a `traffic { ... }` block against the µmbox's mode and parameters.
    fn contract(
        &mut self,
        source: SourceId,
        block: &ast::TrafficBlock,
        u: &Umbox,
    ) -> Option<ContractTemplate> {
        let bad = |cx: &mut Self, at: Span, msg: String, label: &str, help: &str| {
            cx.err(
                Diagnostic::error(codes::BAD_CONTRACT, msg)
                    .primary(cx.loc(source, at), label.to_string())
                    .help(help.to_string()),
            );
        };
        let mut ok = true;
        let mut clauses = Vec::new();
        let mut on_failure = None;
        for item in &block.items {
            match item {
                ast::TrafficItem::OnFailure { what, action, span } => {
                    if what.name != "failure" {
                        bad(
                            self,
                            what.span,
                            format!("`on {}` in a contract", what.name),
                            "expected `failure`",
                            "write `on failure drop` or `on failure pass`",
                        );
                        ok = false;
                        continue;
                    }
                    if on_failure.is_some() {
                        bad(
                            self,
                            *span,
                            "`on failure` given twice".into(),
                            "again here",
                            "keep one",
                        );
                        ok = false;
                        continue;
                    }
                    let want = match u.mode {
                        UmboxMode::Inline => ast::TreatmentWord::Drop,
                        UmboxMode::Tap => ast::TreatmentWord::Pass,
                    };
                    if action.0 != want {
                        let (mode, why) = match u.mode {
                            UmboxMode::Inline => ("an inline", "the switch sends the device's traffic to a port that is gone, so it is dropped"),
                            UmboxMode::Tap => ("a tap", "the switch forwards the original as before, unwatched"),
                        };
                        bad(
                            self,
                            action.1,
                            format!("when {mode} µmbox fails, it does not do this"),
                            "not what happens",
                            &format!(
                                "when {mode} µmbox fails, {why}: write `on failure {}`",
                                treatment(want)
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    on_failure = Some(action.0);
                }
                ast::TrafficItem::Clause(c) => {
                    let cl = self.loc(source, c.span);
                    let Some(proto) = Proto::parse(&c.class.name) else {
                        self.unknown(
                            "traffic class",
                            &c.class,
                            source,
                            &["all", "ip", "tcp", "udp", "icmp"],
                            Some(
                                "a contract's classes are `all`, `ip`, `tcp`, `udp` and `icmp`"
                                    .into(),
                            ),
                        );
                        ok = false;
                        continue;
                    };
                    if u.mode == UmboxMode::Tap && c.action.0 != ast::TreatmentWord::Pass {
                        bad(self, c.action.1, "a tap cannot act on traffic".into(), "a tap only sees a copy", "a tap's contract can only `pass`; make the µmbox `mode inline` to drop, answer or authenticate");
                        ok = false;
                        continue;
                    }
                    if c.action.0 == ast::TreatmentWord::Authenticate
                        && (proto != Proto::Tcp
                            || c.from.map(|f| f.0) != Some(ast::StarterWord::Uplink))
                    {
                        bad(
                            self,
                            c.action.1,
                            "only TCP from the uplink side can be held behind credentials".into(),
                            "authenticate what?",
                            "credentials are asked of clients on the uplink side, over TCP: write `authenticate tcp PORTS from uplink`",
                        );
                        ok = false;
                        continue;
                    }
                    if !c.ports.is_empty() && !proto.has_ports() {
                        bad(
                            self,
                            c.class.span,
                            format!("`{}` has no ports", proto.as_str()),
                            "ports given here",
                            "only `tcp` and `udp` take ports",
                        );
                        ok = false;
                        continue;
                    }
                    let mut ports = Vec::new();
                    for p in &c.ports {
                        match p {
                            ast::PortItem::Range { lo, hi, span } => {
                                match self.port_range(source, *lo, *hi, *span) {
                                    Some(r) => ports.push(PortTemplate::Range(r)),
                                    None => ok = false,
                                }
                            }
                            ast::PortItem::Param(name) => {
                                match u.params.iter().position(|q| q.name == name.name) {
                                    Some(i) if matches!(u.params[i].ty, ParamType::Int { lo, hi } if lo >= 0 && hi <= 65_535) => {
                                        ports.push(PortTemplate::Param(i))
                                    }
                                    Some(_) => {
                                        bad(self, name.span, format!("`{}` is not a port parameter", name.name), "used as a port here", "a port parameter is declared `int in LO..HI` within 0..65535");
                                        ok = false;
                                    }
                                    None => {
                                        let names: Vec<&str> =
                                            u.params.iter().map(|q| q.name.as_str()).collect();
                                        self.unknown("parameter", name, source, &names, None);
                                        ok = false;
                                    }
                                }
                            }
                        }
                    }
                    let when = match &c.when {
                        None => None,
                        Some(w) => match self.contract_cond(source, w, u) {
                            Some(w) => Some(w),
                            None => {
                                ok = false;
                                continue;
                            }
                        },
                    };
                    clauses.push(ClauseTemplate {
                        treat: match c.action.0 {
                            ast::TreatmentWord::Pass => Treatment::Pass,
                            ast::TreatmentWord::Drop => Treatment::Drop,
                            ast::TreatmentWord::Answer => Treatment::Answer,
                            ast::TreatmentWord::Authenticate => Treatment::Authenticate,
                        },
                        proto,
                        ports,
                        from: c.from.map(|(s, _)| match s {
                            ast::StarterWord::Device => Starter::Device,
                            ast::StarterWord::Uplink => Starter::Uplink,
                        }),
                        when,
                        loc: cl,
                    });
                }
            }
        }
        let total = clauses.last().is_some_and(|c| {
            c.when.is_none()
                && c.from.is_none()
                && c.ports.is_empty()
                && matches!(c.proto, Proto::All | Proto::Ip)
        });
        if ok && !total {
            let at = block.span;
            bad(
                self,
                at,
                format!(
                    "the contract of `{}` does not say what happens to every flow",
                    u.name
                ),
                "this contract",
                "end it with a clause for everything else, e.g. `drop all` or `pass all`",
            );
            return None;
        }
        ok.then(|| ContractTemplate {
            clauses,
            on_failure: match on_failure.unwrap_or(match u.mode {
                UmboxMode::Inline => ast::TreatmentWord::Drop,
                UmboxMode::Tap => ast::TreatmentWord::Pass,
            }) {
                ast::TreatmentWord::Pass => Treatment::Pass,
                _ => Treatment::Drop,
            },
        })
    }

    /// A state of device `dev` (of type `ty`) by name, or K103 with the states there are.
    fn state_of(
        &mut self,
        source: SourceId,
        dev: &Ident,
        ty: TypeId,
        state: &Ident,
    ) -> Option<StateId> {
        let states = &self.model.device_type(ty).states;
        if let Some(i) = states.iter().position(|s| s.name == state.name) {
            return Some(StateId::from_index(i));
        }
        let names: Vec<String> = states.iter().map(|s| s.name.clone()).collect();
        let c: Vec<&str> = names.iter().map(String::as_str).collect();
        self.unknown(&format!("state of `{}`", dev.name), state, source, &c, None);
        None
    }

    /// `LO..HI` (or one port) as a port range, or K106.
    fn port_range(&mut self, source: SourceId, lo: i64, hi: i64, span: Span) -> Option<PortRange> {
        match (u16::try_from(lo), u16::try_from(hi)) {
            (Ok(l), Ok(h)) if l <= h => Some(PortRange { lo: l, hi: h }),
            _ => {
                self.err(
                    Diagnostic::error(
                        codes::OUT_OF_RANGE,
                        format!("`{lo}..{hi}` is not a port range"),
                    )
                    .primary(self.loc(source, span), "ports are 0..65535, low to high"),
                );
                None
            }
        }
    }

    fn contract_cond(
        &mut self,
        source: SourceId,
        w: &ast::ContractCond,
        u: &Umbox,
    ) -> Option<ParamCond> {
        let Some(i) = u.params.iter().position(|q| q.name == w.param.name) else {
            let names: Vec<&str> = u.params.iter().map(|q| q.name.as_str()).collect();
            self.unknown("parameter", &w.param, source, &names, None);
            return None;
        };
        let ty = u.params[i].ty.clone();
        let value = match &w.value {
            None if ty == ParamType::Bool => Value::Bool(true),
            None => {
                self.err(
                    Diagnostic::error(
                        codes::TYPE_MISMATCH,
                        format!("`{}` is not a bool", w.param.name),
                    )
                    .primary(self.loc(source, w.param.span), "tested alone here")
                    .help(format!("compare it: `when {} == VALUE`", w.param.name)),
                );
                return None;
            }
            Some(lit) => self.literal(source, lit, &ty, &w.param.name)?,
        };
        Some(ParamCond {
            param: i,
            value,
            negated: w.negated,
        })
    }

    /// Appends names to a list, reporting any declared twice.
    fn collect_names(
        &mut self,
        source: SourceId,
        what: &str,
        names: &[Ident],
        out: &mut Vec<String>,
        locs: &mut Vec<Loc>,
    ) {
        for n in names {
            let l = self.loc(source, n.span);
            if let Some(i) = out.iter().position(|x| *x == n.name) {
                self.duplicate(what, &n.name, l, locs[i]);
                continue;
            }
            out.push(n.name.clone());
            locs.push(l);
        }
    }

    fn check_template(&mut self, source: SourceId, lit: &ast::StrLit, params: &[ParamDef]) {
        let mut rest = lit.value.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                self.err(
                    Diagnostic::error(codes::BAD_TEMPLATE, "unclosed `{` in argument template")
                        .primary(self.loc(source, lit.span), "this argument")
                        .help("write `{param}` to insert a parameter"),
                );
                return;
            };
            let hole = &after[..close];
            if !params.iter().any(|p| p.name == hole) {
                let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
                let mut d = Diagnostic::error(
                    codes::BAD_TEMPLATE,
                    format!("`{{{hole}}}` names no parameter"),
                )
                .primary(self.loc(source, lit.span), "in this argument");
                if let Some(h) = did_you_mean(hole, names) {
                    d = d.help(h);
                } else {
                    d = d.help(format!("declare it: `param {hole}: TYPE`"));
                }
                self.err(d);
            }
            rest = &after[close + 1..];
        }
    }

    /// `param NAME: TYPE [= DEFAULT]` of a µmbox or a device type, added to `params`.
    fn param_def(&mut self, source: SourceId, param: &ast::Param, params: &mut Vec<ParamDef>) {
        let ploc = self.loc(source, param.name.span);
        if let Some(first) = params.iter().find(|p| p.name == param.name.name) {
            let first = first.loc;
            self.duplicate("parameter", &param.name.name, ploc, first);
            return;
        }
        let Some(ty) = self.param_type(source, &param.ty) else {
            return;
        };
        let default = param
            .default
            .as_ref()
            .and_then(|d| self.literal(source, d, &ty, &param.name.name));
        params.push(ParamDef {
            name: param.name.name.clone(),
            ty,
            default,
            loc: ploc,
        });
    }

    fn param_type(&mut self, source: SourceId, t: &ast::TypeExpr) -> Option<ParamType> {
        Some(match t {
            ast::TypeExpr::Bool(_) => ParamType::Bool,
            ast::TypeExpr::UnboundedInt(_) => ParamType::Int {
                lo: i64::MIN,
                hi: i64::MAX,
            },
            ast::TypeExpr::Int { lo, hi, span } => {
                self.check_range(source, *lo, *hi, *span)?;
                ParamType::Int { lo: *lo, hi: *hi }
            }
            ast::TypeExpr::String(_) => ParamType::String,
            ast::TypeExpr::Duration(_) => ParamType::Duration,
            ast::TypeExpr::Enum(members, span) => ParamType::Enum {
                members: self.enum_members(source, members, *span)?,
            },
        })
    }

    fn check_range(&mut self, source: SourceId, lo: i64, hi: i64, span: Span) -> Option<()> {
        if lo > hi {
            self.err(
                Diagnostic::error(codes::OUT_OF_RANGE, format!("empty range `{lo}..{hi}`"))
                    .primary(self.loc(source, span), "no integer lies in this range")
                    .help(format!("ranges include both ends and go up: `{hi}..{lo}`")),
            );
            return None;
        }
        Some(())
    }

    fn enum_members(
        &mut self,
        source: SourceId,
        members: &[Ident],
        span: Span,
    ) -> Option<Vec<String>> {
        if members.is_empty() {
            self.err(
                Diagnostic::error(codes::OUT_OF_RANGE, "an enum needs at least one member")
                    .primary(self.loc(source, span), "empty enum"),
            );
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        let mut locs: Vec<Loc> = Vec::new();
        for m in members {
            let l = self.loc(source, m.span);
            if let Some(i) = out.iter().position(|x| *x == m.name) {
                self.duplicate("enum member", &m.name, l, locs[i]);
                continue;
            }
            out.push(m.name.clone());
            locs.push(l);
        }
        Some(out)
    }

    /// Checks a literal against a parameter type; `None` if it does not fit (reported).
    fn literal(
        &mut self,
        source: SourceId,
        lit: &ast::Literal,
        ty: &ParamType,
        param: &str,
    ) -> Option<Value> {
        let l = self.loc(source, lit.span());
        let v = match (lit, ty) {
            (ast::Literal::Bool(b, _), ParamType::Bool) => Value::Bool(*b),
            (ast::Literal::Int(n, _), ParamType::Int { lo, hi }) => {
                if n < lo || n > hi {
                    self.err(
                        Diagnostic::error(
                            codes::OUT_OF_RANGE,
                            format!("`{n}` is out of range for `{param}`"),
                        )
                        .primary(l, format!("must be in {lo}..{hi}")),
                    );
                    return None;
                }
                Value::Int(*n)
            }
            (ast::Literal::Str(s), ParamType::String) => Value::Str(s.value.clone()),
            (ast::Literal::Duration(d), ParamType::Duration) => Value::Duration(d.millis),
            (ast::Literal::Name(n), ParamType::Enum { members }) => {
                if !members.contains(&n.name) {
                    let c: Vec<&str> = members.iter().map(String::as_str).collect();
                    self.unknown(
                        "enum member",
                        n,
                        source,
                        &c,
                        Some(format!("`{param}` is one of {}", backticked(&c))),
                    );
                    return None;
                }
                Value::Enum(n.name.clone())
            }
            _ => {
                self.err(
                    Diagnostic::error(
                        codes::TYPE_MISMATCH,
                        format!("wrong type of value for `{param}`"),
                    )
                    .primary(l, format!("expected {}", param_type_name(ty))),
                );
                return None;
            }
        };
        Some(v)
    }

    // ------------------------------------------------------------------ device types

    /// A device type's MQTT bindings (`telemetry`, `command ... publish`; language.md §5.6),
    /// once its variables, commands and parameters are known.
    fn telemetry(&mut self, source: SourceId, t: &ast::DeviceType, out: &mut DeviceType) {
        let mut topic_locs: Vec<(String, Loc)> = Vec::new();
        let mut publish_locs: Vec<(String, Loc)> = Vec::new();
        for member in &t.members {
            match member {
                ast::DeviceMember::Telemetry(b) => {
                    let tl = self.loc(source, b.topic.span);
                    let format = match b.format.name.as_str() {
                        "json" => tm::Format::Json,
                        "text" => tm::Format::Text,
                        _ => {
                            self.unknown(
                                "payload format",
                                &b.format,
                                source,
                                &["json", "text"],
                                Some("`json`: the payload is a JSON object and each variable names a path into it; `text`: the payload is the value itself".into()),
                            );
                            continue;
                        }
                    };
                    let topic_ok = self.topic_template(source, &b.topic, &out.params, true);
                    if let Some((_, first)) = topic_locs.iter().find(|(x, _)| *x == b.topic.value) {
                        self.duplicate("telemetry topic", &b.topic.value, tl, *first);
                        continue;
                    }
                    topic_locs.push((b.topic.value.clone(), tl));
                    if b.fields.is_empty() {
                        self.err(
                            Diagnostic::error(codes::BAD_BINDING, "a binding that reads no variable")
                                .primary(self.loc(source, b.span), "empty")
                                .help("name what the message carries: `telemetry \"TOPIC\" json { VAR = PATH }`"),
                        );
                    }
                    let mut fields: Vec<tm::Field> = Vec::new();
                    let mut field_locs: Vec<Loc> = Vec::new();
                    for f in &b.fields {
                        let Some(field) = self.binding_field(source, f, format, &out.vars) else {
                            continue;
                        };
                        let fl = self.loc(source, f.var.span);
                        if let Some(i) = fields.iter().position(|x| x.var == field.var) {
                            self.duplicate("binding of", &field.var, fl, field_locs[i]);
                            continue;
                        }
                        fields.push(field);
                        field_locs.push(fl);
                    }
                    if topic_ok {
                        out.telemetry.topics.push(tm::Binding {
                            topic: b.topic.value.clone(),
                            format,
                            fields,
                        });
                    }
                }
                ast::DeviceMember::Publish(p) => {
                    let cl = self.loc(source, p.command.span);
                    if !out.commands.contains(&p.command.name) {
                        let c: Vec<&str> = out.commands.iter().map(String::as_str).collect();
                        self.unknown(
                            &format!("command of `{}`", out.name),
                            &p.command,
                            source,
                            &c,
                            Some(format!("declare it first: `commands {}`", p.command.name)),
                        );
                        continue;
                    }
                    if let Some((_, first)) =
                        publish_locs.iter().find(|(x, _)| *x == p.command.name)
                    {
                        self.duplicate("publication of command", &p.command.name, cl, *first);
                        continue;
                    }
                    publish_locs.push((p.command.name.clone(), cl));
                    let topic_ok = self.topic_template(source, &p.topic, &out.params, true);
                    let payload_ok = self.topic_template(source, &p.payload, &out.params, false);
                    if topic_ok && payload_ok {
                        out.telemetry.commands.push(tm::Publish {
                            command: p.command.name.clone(),
                            topic: p.topic.value.clone(),
                            payload: p.payload.value.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
    }

    /// Checks the `{hole}`s of a topic or payload: each names a parameter of the type or
    /// is `{device}`; a topic has no wildcard outside them. `false` after reporting.
    fn topic_template(
        &mut self,
        source: SourceId,
        lit: &ast::StrLit,
        params: &[ParamDef],
        topic: bool,
    ) -> bool {
        let l = self.loc(source, lit.span);
        let holes = tm::holes(&lit.value);
        let mut ok = true;
        for hole in holes {
            if hole == "device" || params.iter().any(|p| p.name == hole) {
                continue;
            }
            let mut names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
            names.push("device");
            let mut d = Diagnostic::error(
                codes::BAD_BINDING,
                format!("`{{{hole}}}` names no parameter"),
            )
            .primary(l, "in this template");
            d = match did_you_mean(hole, names) {
                Some(h) => d.help(h),
                None => d.help(format!("declare it in the device type: `param {hole}: string`; `{{device}}` is the device's name")),
            };
            self.err(d);
            ok = false;
        }
        if topic {
            // Holes are filled per device (and checked again there); here the text.
            let bare = &tm::fill_holes(&lit.value, &|_: &str| Some("x".into()));
            if let Some(problem) = tm::topic_problem(bare) {
                self.err(
                    Diagnostic::error(
                        codes::BAD_BINDING,
                        format!("not a topic a binding can use: {problem}"),
                    )
                    .primary(l, "this topic"),
                );
                ok = false;
            }
        }
        ok
    }

    /// `VAR = PATH CONVERSION*` of a binding; `None` after reporting.
    fn binding_field(
        &mut self,
        source: SourceId,
        f: &ast::TelemetryField,
        format: tm::Format,
        vars: &[Var],
    ) -> Option<tm::Field> {
        let Some(var) = vars.iter().find(|v| v.name == f.var.name) else {
            let c: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
            self.unknown("sensed variable", &f.var, source, &c, None);
            return None;
        };
        let fl = self.loc(source, f.span);
        if let Some(lit) = &f.constant {
            let ty = var_param_type(&var.ty);
            let constant = match self.literal(source, lit, &ty, &var.name)? {
                Value::Bool(b) => tm::Scalar::Bool(b),
                Value::Int(n) => tm::Scalar::Int(n),
                Value::Enum(m) => tm::Scalar::Str(m),
                _ => return None,
            };
            return Some(tm::Field {
                var: var.name.clone(),
                path: Vec::new(),
                mul: 1,
                div: 1,
                round: None,
                map: Vec::new(),
                constant: Some(constant),
            });
        }
        let path: Vec<String> = f.path.iter().map(|p| p.name.clone()).collect();
        if format == tm::Format::Text && path != ["payload"] {
            self.err(
                Diagnostic::error(codes::BAD_BINDING, "a text payload has no paths")
                    .primary(fl, "a path into a text payload")
                    .help(format!(
                        "the whole payload is the value: `{} = payload`",
                        var.name
                    )),
            );
            return None;
        }
        let mut field = tm::Field {
            var: var.name.clone(),
            path: if format == tm::Format::Text {
                Vec::new()
            } else {
                path
            },
            mul: 1,
            div: 1,
            round: None,
            map: Vec::new(),
            constant: None,
        };
        let mut seen: Vec<(&'static str, Loc)> = Vec::new();
        let mut ok = true;
        for c in &f.convs {
            let (what, span) = match c {
                ast::Conversion::Mul(_, sp) => ("`*`", *sp),
                ast::Conversion::Div(_, sp) => ("`/`", *sp),
                ast::Conversion::Round(_, sp) => ("`round`", *sp),
                ast::Conversion::Map(_, sp) => ("`map`", *sp),
            };
            let cl = self.loc(source, span);
            if let Some((_, first)) = seen.iter().find(|(w, _)| *w == what) {
                self.duplicate("conversion", what.trim_matches('`'), cl, *first);
                ok = false;
                continue;
            }
            seen.push((what, cl));
            let is_int = matches!(var.ty, VarType::Int { .. });
            match c {
                ast::Conversion::Mul(n, _) | ast::Conversion::Div(n, _) => {
                    if !(1..=MAX_SCALE).contains(n) {
                        self.err(
                            Diagnostic::error(codes::BAD_BINDING, format!("a scale of {n}"))
                                .primary(cl, format!("must be in 1..{MAX_SCALE}"))
                                .help("scale to the variable's unit: `* 1000` for amperes to milliamperes, `/ 10` for tenths"),
                        );
                        ok = false;
                    }
                    if matches!(c, ast::Conversion::Mul(..)) {
                        field.mul = *n;
                    } else {
                        field.div = *n;
                    }
                }
                ast::Conversion::Round(how, _) => {
                    field.round = match how.name.as_str() {
                        "nearest" => Some(tm::Round::Nearest),
                        "down" => Some(tm::Round::Down),
                        "up" => Some(tm::Round::Up),
                        _ => {
                            self.unknown(
                                "rounding",
                                how,
                                source,
                                &["nearest", "down", "up"],
                                Some("`nearest` rounds halves away from zero; `down` towards −∞; `up` towards +∞".into()),
                            );
                            ok = false;
                            None
                        }
                    };
                }
                ast::Conversion::Map(entries, _) => {
                    let ty = var_param_type(&var.ty);
                    if entries.is_empty() {
                        self.err(
                            Diagnostic::error(codes::BAD_BINDING, "an empty map")
                                .primary(cl, "maps no value")
                                .help("write `map { \"ON\" = true, \"OFF\" = false }`"),
                        );
                        ok = false;
                    }
                    // A payload value matches a key as written too (`1` and `"1"`,
                    // `true` and `"true"`): two such keys are one key twice.
                    let mut keys: Vec<String> = Vec::new();
                    for (k, v) in entries {
                        let from = match k {
                            ast::Literal::Int(n, _) => tm::Scalar::Int(*n),
                            ast::Literal::Bool(b, _) => tm::Scalar::Bool(*b),
                            ast::Literal::Str(st) => tm::Scalar::Str(st.value.clone()),
                            _ => continue, // the grammar admits no other key
                        };
                        let written = match &from {
                            tm::Scalar::Str(s) => s.clone(),
                            other => other.to_string(),
                        };
                        if keys.contains(&written) {
                            self.err(
                                Diagnostic::error(
                                    codes::BAD_BINDING,
                                    format!("{from} is mapped twice"),
                                )
                                .primary(self.loc(source, k.span()), "again"),
                            );
                            ok = false;
                            continue;
                        }
                        keys.push(written);
                        let to = match self.literal(source, v, &ty, &var.name) {
                            Some(Value::Bool(b)) => tm::Scalar::Bool(b),
                            Some(Value::Int(n)) => tm::Scalar::Int(n),
                            Some(Value::Enum(m)) => tm::Scalar::Str(m),
                            _ => {
                                ok = false;
                                continue;
                            }
                        };
                        field.map.push(tm::MapEntry { from, to });
                    }
                }
            }
            if !is_int && !matches!(c, ast::Conversion::Map(..)) {
                self.err(
                    Diagnostic::error(codes::BAD_BINDING, format!("{what} on a variable that is not an integer"))
                        .primary(cl, format!("`{}` is not an `int`", var.name))
                        .help("only an `int` is scaled or rounded; a `bool` or an `enum` takes its value from a `map` or as it is"),
                );
                ok = false;
            }
        }
        let scaled = seen.iter().any(|(w, _)| *w != "`map`");
        if scaled && !field.map.is_empty() {
            self.err(
                Diagnostic::error(codes::BAD_BINDING, "a map and a scale on one value")
                    .primary(fl, "both")
                    .help("a `map` gives the value itself; drop the scale or the map"),
            );
            ok = false;
        }
        ok.then_some(field)
    }

    /// A site device's telemetry: its type's bindings with the device's parameter values
    /// (`Type(topic = "...")`) and name filled in. `None` after reporting.
    fn device_telemetry(
        &mut self,
        source: SourceId,
        d: &ast::DeviceDecl,
        ty: TypeId,
    ) -> Option<Option<tm::Telemetry>> {
        let t = self.model.device_type(ty);
        let (params, name, template) = (t.params.clone(), t.name.clone(), t.telemetry.clone());
        let values = self.args(source, &params, &name, &d.args, d.span, codes::MISSING)?;
        if template.is_empty() {
            return Some(None);
        }
        let filled = template.filled(|hole| {
            if hole == "device" {
                return Some(d.name.name.clone());
            }
            let i = params.iter().position(|p| p.name == hole)?;
            Some(values[i].to_string())
        });
        let dl = self.loc(source, d.name.span);
        let mut ok = true;
        let topics = filled.topics.iter().map(|b| &b.topic);
        for topic in topics.chain(filled.commands.iter().map(|p| &p.topic)) {
            if let Some(problem) = tm::topic_problem(topic) {
                self.err(
                    Diagnostic::error(
                        codes::BAD_BINDING,
                        format!("`{}` would use topic {topic:?}: {problem}", d.name.name),
                    )
                    .primary(dl, "with these parameters")
                    .help(
                        "a parameter filled into a topic must not bring `+`, `#` or a leading `$`",
                    ),
                );
                ok = false;
                break;
            }
        }
        ok.then_some(Some(filled))
    }

    /// No two devices of a site read one topic: a message must be one device's reading.
    fn site_topics(&mut self, devices: &[Device]) {
        let mut owner: HashMap<&str, &Device> = HashMap::new();
        let mut reported: BTreeSet<(&str, &str)> = BTreeSet::new();
        let read: HashMap<&str, &Device> = devices
            .iter()
            .flat_map(|d| {
                d.telemetry
                    .iter()
                    .flat_map(move |t| t.topics.iter().map(move |b| (b.topic.as_str(), d)))
            })
            .collect();
        for d in devices {
            for p in d.telemetry.iter().flat_map(|t| t.commands.iter()) {
                if let Some(reader) = read.get(p.topic.as_str()) {
                    self.err(
                        Diagnostic::error(
                            codes::BAD_BINDING,
                            format!(
                                "`{}.{}` publishes on {:?}, which `{}` reads",
                                d.name, p.command, p.topic, reader.name
                            ),
                        )
                        .primary(d.loc, "publishes there")
                        .secondary(reader.loc, "reads it")
                        .help("the runtime would read its own command back as a reading; commands go to the device's command topic (Tasmota `cmnd/...`, Zigbee2MQTT `.../set`)"),
                    );
                }
            }
        }
        for d in devices {
            for b in d.telemetry.iter().flat_map(|t| t.topics.iter()) {
                if let Some(first) = owner.insert(&b.topic, d) {
                    if first.name != d.name && reported.insert((&first.name, &d.name)) {
                        self.err(
                            Diagnostic::error(
                                codes::BAD_BINDING,
                                format!(
                                    "`{}` and `{}` both read topic {:?}",
                                    first.name, d.name, b.topic
                                ),
                            )
                            .primary(d.loc, "reads it again")
                            .secondary(first.loc, "reads it first")
                            .help("give each device its own topic (its `topic` parameter, or `{device}` in the type's topics)"),
                        );
                    }
                }
            }
        }
    }

    /// `device plug[1..30]: T(topic = "plug_{n}") at 10.0.1.10.. port "plug{n}"`: the
    /// devices `plug1` to `plug30`, addresses (and MACs) counted up from the first, `{n}`
    /// filled into the port and the string arguments, and the group `plug` of them all.
    fn expand_ranges<'s>(&mut self, source: SourceId, s: &'s ast::Site) -> Cow<'s, ast::Site> {
        // Most sites have no range: the site as written, not a copy.
        let ranged = |m: &ast::SiteMember| matches!(m, ast::SiteMember::Device(d) if d.range.is_some() || d.ip_counts || d.mac_counts);
        if !s.members.iter().any(ranged) {
            return Cow::Borrowed(s);
        }
        let mut members = Vec::with_capacity(s.members.len());
        for m in &s.members {
            let ast::SiteMember::Device(d) = m else {
                members.push(m.clone());
                continue;
            };
            let Some((lo, hi, rspan)) = d.range else {
                let counted = [
                    (d.ip_counts, d.ip.map(|(_, sp)| sp)),
                    (d.mac_counts, d.mac.map(|(_, sp)| sp)),
                ];
                for (_, sp) in counted.iter().filter(|(c, _)| *c) {
                    let sp = sp.unwrap_or(d.span);
                    self.err(
                        Diagnostic::error(
                            codes::BAD_CONTEXT,
                            "`..` counts addresses over a range of devices",
                        )
                        .primary(self.loc(source, sp), "one device")
                        .help(format!(
                            "declare the range: `device {}[1..10]: ...`, or drop the `..`",
                            d.name.name
                        )),
                    );
                }
                members.push(m.clone());
                continue;
            };
            let rl = self.loc(source, rspan);
            let count = hi
                .checked_sub(lo)
                .and_then(|c| c.checked_add(1))
                .unwrap_or(0);
            if lo < 0 || !(1..=MAX_RANGE).contains(&count) {
                self.err(
                    Diagnostic::error(codes::OUT_OF_RANGE, format!("a range of {lo}..{hi}"))
                        .primary(rl, format!("1 to {MAX_RANGE} devices, numbered from 0 up"))
                        .help("write `[1..30]`: both ends included"),
                );
                continue;
            }
            let mut ok = true;
            for (given, counts, what, sp) in [
                (d.ip.is_some(), d.ip_counts, "at", d.ip.map(|(_, sp)| sp)),
                (
                    d.mac.is_some(),
                    d.mac_counts,
                    "mac",
                    d.mac.map(|(_, sp)| sp),
                ),
            ] {
                if given && !counts {
                    self.err(
                        Diagnostic::error(codes::BAD_CONTEXT, format!("every device of the range would have this `{what}`"))
                            .primary(self.loc(source, sp.unwrap_or(d.span)), "one address for all")
                            .help(format!("write `{what} FIRST..`: the first device's, counted up for the next ones")),
                    );
                    ok = false;
                }
            }
            if let Some(p) = &d.port {
                if !p.value.contains("{n}") {
                    self.err(
                        Diagnostic::error(
                            codes::BAD_CONTEXT,
                            "every device of the range would have this port",
                        )
                        .primary(self.loc(source, p.span), "no `{n}`")
                        .help("put the device's number in it: `port \"plug{n}\"`"),
                    );
                    ok = false;
                }
            }
            let last = u64::try_from(count - 1).unwrap_or(u64::MAX);
            let ip_over =
                d.ip.is_some_and(|(ip, _)| u64::from(ip) + last > u64::from(u32::MAX));
            let mac_of = |m: [u8; 6]| m.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
            let mac_over = d.mac.is_some_and(|(m, _)| mac_of(m) + last >= 1 << 48);
            if ip_over || mac_over {
                self.err(
                    Diagnostic::error(
                        codes::OUT_OF_RANGE,
                        "the range's addresses run past the last one",
                    )
                    .primary(rl, format!("{count} devices")),
                );
                ok = false;
            }
            if !ok {
                continue;
            }
            let mut names = Vec::new();
            for (i, n) in (lo..=hi).enumerate() {
                let k = u64::try_from(i).unwrap_or(0);
                let fill = |t: &str| t.replace("{n}", &n.to_string());
                let name = Ident {
                    name: format!("{}{n}", d.name.name),
                    span: d.name.span,
                };
                names.push(name.clone());
                let args = d
                    .args
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            ast::Literal::Str(st) => ast::Literal::Str(ast::StrLit {
                                value: fill(&st.value),
                                span: st.span,
                            }),
                            other => other.clone(),
                        };
                        (k.clone(), v)
                    })
                    .collect();
                members.push(ast::SiteMember::Device(ast::DeviceDecl {
                    name,
                    range: None,
                    ty: d.ty.clone(),
                    args,
                    ip: d
                        .ip
                        .map(|(ip, sp)| (ip + u32::try_from(k).unwrap_or(0), sp)),
                    ip_counts: false,
                    mac: d.mac.map(|(m, sp)| {
                        let v = mac_of(m) + k;
                        let b = v.to_be_bytes();
                        ([b[2], b[3], b[4], b[5], b[6], b[7]], sp)
                    }),
                    mac_counts: false,
                    port: d.port.as_ref().map(|p| ast::StrLit {
                        value: fill(&p.value),
                        span: p.span,
                    }),
                    trusted: d.trusted,
                    tags: d.tags.clone(),
                    node: d.node.clone(),
                    span: d.span,
                }));
            }
            members.push(ast::SiteMember::Group(ast::GroupDecl {
                name: d.name.clone(),
                members: ast::GroupMembers::Listed(names),
                span: d.span,
            }));
        }
        Cow::Owned(ast::Site {
            name: s.name.clone(),
            members,
            span: s.span,
        })
    }

    /// A site's groups (language.md §7.5): its rules and assertions (the members the second
    /// pass reads), every rule written `for p in GROUP` made one rule per device
    /// (`NAME[device]`) and every `any(p in GROUP: C)` /
    /// `all(...)` made the `or` / `and` of C for each device. The verifier, the engine and
    /// the graphs then see ordinary rules and conditions: one meaning, written once.
    fn expand_groups(&mut self, source: SourceId, s: &ast::Site) -> Vec<ast::SiteMember> {
        let devices: Vec<(&str, &str)> = s
            .members
            .iter()
            .filter_map(|m| match m {
                ast::SiteMember::Device(d) => Some((d.name.name.as_str(), d.ty.name.as_str())),
                _ => None,
            })
            .collect();
        let mut groups: HashMap<String, (Vec<String>, Loc)> = HashMap::new();
        for m in &s.members {
            let ast::SiteMember::Group(g) = m else {
                continue;
            };
            let gl = self.loc(source, g.name.span);
            if let Some((_, first)) = groups.get(&g.name.name) {
                self.duplicate("group", &g.name.name, gl, *first);
                continue;
            }
            if let Some(d) = devices.iter().find(|(d, _)| *d == g.name.name) {
                self.err(
                    Diagnostic::error(
                        codes::DUPLICATE,
                        format!("`{}` is a device and a group", d.0),
                    )
                    .primary(gl, "a group named like a device"),
                );
                continue;
            }
            let members: Vec<String> = match &g.members {
                ast::GroupMembers::OfType(t) => {
                    let of: Vec<String> = devices
                        .iter()
                        .filter(|(_, ty)| *ty == t.name)
                        .map(|(d, _)| d.to_string())
                        .collect();
                    if of.is_empty() {
                        let types: BTreeSet<&str> = devices.iter().map(|(_, t)| *t).collect();
                        let c: Vec<&str> = types.into_iter().collect();
                        let mut d = Diagnostic::error(
                            codes::UNKNOWN_NAME,
                            format!("no device of the site is a `{}`", t.name),
                        )
                        .primary(self.loc(source, t.span), "a group of no device");
                        d = match did_you_mean(&t.name, c) {
                            Some(h) => d.help(h),
                            None => d.help(
                                "a group by type holds every device of the site of that type",
                            ),
                        };
                        self.err(d);
                        continue;
                    }
                    of
                }
                ast::GroupMembers::Listed(names) => {
                    let mut out: Vec<String> = Vec::new();
                    for n in names {
                        if !devices.iter().any(|(d, _)| *d == n.name) {
                            let c: Vec<&str> = devices.iter().map(|(d, _)| *d).collect();
                            self.unknown("device", n, source, &c, None);
                        } else if out.contains(&n.name) {
                            let nl = self.loc(source, n.span);
                            self.duplicate("group member", &n.name, nl, gl);
                        } else {
                            out.push(n.name.clone());
                        }
                    }
                    if names.is_empty() {
                        self.err(
                            Diagnostic::error(
                                codes::MISSING,
                                format!("group `{}` is empty", g.name.name),
                            )
                            .primary(gl, "no devices")
                            .help("list its devices: `group kitchen = [kettle, toaster]`"),
                        );
                        continue;
                    }
                    out
                }
            };
            groups.insert(g.name.name.clone(), (members, gl));
        }
        // Each tag is the group of the devices tagged with it, in the site's order.
        let mut tags: Vec<(String, Vec<String>, Loc)> = Vec::new();
        for m in &s.members {
            let ast::SiteMember::Device(d) = m else {
                continue;
            };
            let mut seen: Vec<(&str, Loc)> = Vec::new();
            for t in &d.tags {
                let tl = self.loc(source, t.span);
                if let Some(&(_, first)) = seen.iter().find(|(n, _)| *n == t.name) {
                    self.duplicate("tag", &t.name, tl, first);
                    continue;
                }
                seen.push((&t.name, tl));
                match tags.iter_mut().find(|(n, _, _)| *n == t.name) {
                    Some((_, members, _)) => members.push(d.name.name.clone()),
                    None => tags.push((t.name.clone(), vec![d.name.name.clone()], tl)),
                }
            }
        }
        for (name, members, tl) in tags {
            let clash = if devices.iter().any(|(d, _)| *d == name) {
                Some("a device")
            } else if groups.contains_key(&name) {
                Some("a group")
            } else {
                None
            };
            if let Some(what) = clash {
                self.err(
                    Diagnostic::error(
                        codes::DUPLICATE,
                        format!("`{name}` is {what} and a tag"),
                    )
                    .primary(tl, format!("a tag named like {what}"))
                    .help("a tag is the group of the devices tagged with it; give it a name of its own"),
                );
                continue;
            }
            groups.insert(name, (members, tl));
        }
        let mut out = Vec::new();
        for m in &s.members {
            match m {
                ast::SiteMember::Rule(r) => {
                    // Built field by field: `..r.clone()` would clone the written
                    // condition too, recursively, however deep it is.
                    let Some((var, group)) = &r.each else {
                        let cond = self.expand_expr(source, &r.cond, &groups, &devices, &[]);
                        out.push(ast::SiteMember::Rule(ast::Rule {
                            name: r.name.clone(),
                            each: None,
                            edge: r.edge,
                            cond,
                            actions: r.actions.clone(),
                            span: r.span,
                        }));
                        continue;
                    };
                    let Some(members) = self.group(source, group, &groups, var, &devices) else {
                        continue;
                    };
                    for d in members {
                        let bind = [(var.name.clone(), d.clone())];
                        let cond = self.expand_expr(source, &r.cond, &groups, &devices, &bind);
                        let actions = r.actions.iter().map(|a| bind_action(a, &bind)).collect();
                        out.push(ast::SiteMember::Rule(ast::Rule {
                            name: Ident {
                                name: format!("{}[{d}]", r.name.name),
                                span: r.name.span,
                            },
                            each: None,
                            edge: r.edge,
                            cond,
                            actions,
                            span: r.span,
                        }));
                    }
                }
                ast::SiteMember::Assert(a) => {
                    let cond = self.expand_expr(source, &a.cond, &groups, &devices, &[]);
                    out.push(ast::SiteMember::Assert(ast::Assertion {
                        kind: a.kind,
                        cond,
                        span: a.span,
                    }));
                }
                ast::SiteMember::TrafficAssert(_) => out.push(m.clone()),
                // Devices, groups, bridge: read from the site itself, not copied.
                _ => {}
            }
        }
        out
    }

    /// The members of `group`, bound to `var` (which must not be a device's name).
    fn group(
        &mut self,
        source: SourceId,
        group: &Ident,
        groups: &HashMap<String, (Vec<String>, Loc)>,
        var: &Ident,
        devices: &[(&str, &str)],
    ) -> Option<Vec<String>> {
        if devices.iter().any(|(d, _)| *d == var.name) {
            self.err(
                Diagnostic::error(
                    codes::DUPLICATE,
                    format!(
                        "`{}` names a device; a group's member needs a name of its own",
                        var.name
                    ),
                )
                .primary(self.loc(source, var.span), "a device's name")
                .help("write `p` or another name no device has"),
            );
            return None;
        }
        match groups.get(&group.name) {
            Some((members, _)) => Some(members.clone()),
            None => {
                let c: Vec<&str> = groups.keys().map(String::as_str).collect();
                self.unknown(
                    "group",
                    group,
                    source,
                    &c,
                    Some(
                        "declare it in the site: `group plugs: Plug` or `group kitchen = [a, b]`"
                            .into(),
                    ),
                );
                None
            }
        }
    }

    /// `e` with its quantifiers expanded and the bound names replaced by devices.
    fn expand_expr(
        &mut self,
        source: SourceId,
        e: &ast::Expr,
        groups: &HashMap<String, (Vec<String>, Loc)>,
        devices: &[(&str, &str)],
        bind: &[(String, String)],
    ) -> ast::Expr {
        // Too deep to walk (or even clone: both recurse) safely: reported here (K113), and
        // a stand-in of one node takes its place.
        let depth = e.depth();
        if depth > codes::MAX_EXPR_DEPTH {
            self.too_deep(source, e.span, depth);
            return ast::Expr {
                kind: AK::Bool(true),
                span: e.span,
            };
        }
        let sub = |i: &Ident| match bind.iter().rev().find(|(v, _)| *v == i.name) {
            Some((_, d)) => Ident {
                name: d.clone(),
                span: i.span,
            },
            None => i.clone(),
        };
        let kind = match &e.kind {
            AK::Name(n) => AK::Name(sub(n)),
            AK::Field(d, f) => AK::Field(sub(d), f.clone()),
            AK::InState(d, st) => AK::InState(sub(d), st.clone()),
            AK::Aggregate { func, arg, last } => AK::Aggregate {
                func: func.clone(),
                arg: Box::new(self.expand_expr(source, arg, groups, devices, bind)),
                last: *last,
            },
            AK::Unary(op, a) => AK::Unary(
                *op,
                Box::new(self.expand_expr(source, a, groups, devices, bind)),
            ),
            AK::Binary(op, a, b) => AK::Binary(
                *op,
                Box::new(self.expand_expr(source, a, groups, devices, bind)),
                Box::new(self.expand_expr(source, b, groups, devices, bind)),
            ),
            AK::Quantified {
                func,
                var,
                group,
                body,
            } => {
                let quantifier = match func.name.as_str() {
                    "any" => ast::Quantifier::Any,
                    "all" => ast::Quantifier::All,
                    "count" => ast::Quantifier::Count,
                    _ => {
                        self.unknown(
                            "quantifier",
                            func,
                            source,
                            &["any", "all", "count"],
                            Some("`any(p in GROUP: C)`: C holds for some device of the group; `all(...)`: for every one; `count(...)`: for how many".into()),
                        );
                        return ast::Expr {
                            kind: AK::Error,
                            span: e.span,
                        };
                    }
                };
                let Some(members) = self.group(source, group, groups, var, devices) else {
                    return ast::Expr {
                        kind: AK::Error,
                        span: e.span,
                    };
                };
                // One node, its terms side by side: a group of a thousand devices nests
                // one level deeper than its condition, not a thousand (K113).
                let terms: Vec<ast::Expr> = members
                    .into_iter()
                    .map(|d| {
                        let mut inner: Vec<(String, String)> = bind.to_vec();
                        inner.push((var.name.clone(), d));
                        self.expand_expr(source, body, groups, devices, &inner)
                    })
                    .collect();
                return ast::Expr {
                    kind: AK::Expanded {
                        func: quantifier,
                        terms,
                    },
                    span: e.span,
                };
            }
            other => other.clone(),
        };
        ast::Expr { kind, span: e.span }
    }

    fn visible_alerts(&self, m: usize) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (r, _) in self.p.scopes[m].names.values() {
            if let ItemRef::Umbox(a, b) = r {
                if let Some(id) = self.umbox_ids.get(&(*a, *b)) {
                    out.extend(self.model.umbox(*id).emits.iter().cloned());
                }
            }
        }
        out
    }

    fn device_type(&mut self, m: usize, t: &ast::DeviceType) -> DeviceType {
        let source = self.p.modules[m].source;
        let loc = self.loc(source, t.name.span);
        let mut out = DeviceType {
            name: t.name.name.clone(),
            loc,
            vars: Vec::new(),
            commands: Vec::new(),
            lowering: Vec::new(),
            alerts: Vec::new(),
            states: Vec::new(),
            initial: StateId(0),
            transitions: Vec::new(),
            params: Vec::new(),
            telemetry: Default::default(),
        };
        let mut command_locs: Vec<Loc> = Vec::new();
        let mut alert_locs: Vec<Loc> = Vec::new();
        let mut states_decl: Option<Loc> = None;
        let mut initial: Option<&Ident> = None;
        let mut initial_loc: Option<Loc> = None;
        let mut finals: Vec<&Ident> = Vec::new();

        // Declarations first: transitions and chains may come before them in the text.
        for member in &t.members {
            match member {
                ast::DeviceMember::Sensed { name, ty, .. } => {
                    let l = self.loc(source, name.span);
                    if let Some(v) = out.vars.iter().find(|v| v.name == name.name) {
                        let first = v.loc;
                        self.duplicate("sensed variable", &name.name, l, first);
                        continue;
                    }
                    let vt = match ty {
                        ast::TypeExpr::Bool(_) => VarType::Bool,
                        ast::TypeExpr::Int { lo, hi, span } => {
                            if self.check_range(source, *lo, *hi, *span).is_none() {
                                continue;
                            }
                            VarType::Int { lo: *lo, hi: *hi }
                        }
                        ast::TypeExpr::Enum(members, span) => {
                            let Some(members) = self.enum_members(source, members, *span) else {
                                continue;
                            };
                            VarType::Enum { members }
                        }
                        ast::TypeExpr::UnboundedInt(span) => {
                            self.err(
                                Diagnostic::error(codes::MISSING, "a sensed integer needs a range")
                                    .primary(self.loc(source, *span), "no range given")
                                    .help("write `int in LOW..HIGH`; the verifier reasons over the declared range"),
                            );
                            continue;
                        }
                        ast::TypeExpr::String(span) | ast::TypeExpr::Duration(span) => {
                            self.err(
                                Diagnostic::error(
                                    codes::TYPE_MISMATCH,
                                    "a sensed variable must be `bool`, a ranged `int` or an `enum`",
                                )
                                .primary(self.loc(source, *span), "not a sensed type"),
                            );
                            continue;
                        }
                    };
                    out.vars.push(Var {
                        name: name.name.clone(),
                        ty: vt,
                        loc: l,
                    });
                }
                ast::DeviceMember::Commands(cs, _) => {
                    self.collect_names(source, "command", cs, &mut out.commands, &mut command_locs);
                }
                ast::DeviceMember::LoweringCommands(cs, _) => {
                    let before = out.commands.len();
                    self.collect_names(source, "command", cs, &mut out.commands, &mut command_locs);
                    out.lowering.extend(out.commands[before..].iter().cloned());
                }
                ast::DeviceMember::Alerts(al, _) => {
                    self.collect_names(source, "alert", al, &mut out.alerts, &mut alert_locs);
                }
                ast::DeviceMember::States(names, span) => {
                    let l = self.loc(source, *span);
                    if let Some(first) = states_decl {
                        self.duplicate("member", "states", l, first);
                        continue;
                    }
                    states_decl = Some(l);
                    for n in names {
                        let nl = self.loc(source, n.span);
                        if let Some(s) = out.states.iter().find(|s| s.name == n.name) {
                            let first = s.loc;
                            self.duplicate("state", &n.name, nl, first);
                            continue;
                        }
                        out.states.push(State {
                            name: n.name.clone(),
                            loc: nl,
                            is_final: false,
                            chain: None,
                            chain_loc: nl,
                        });
                    }
                }
                ast::DeviceMember::Initial(i) => {
                    let l = self.loc(source, i.span);
                    if let Some(first) = initial_loc {
                        self.duplicate("member", "initial", l, first);
                        continue;
                    }
                    initial = Some(i);
                    initial_loc = Some(l);
                }
                ast::DeviceMember::Final(fs, _) => finals.extend(fs.iter()),
                ast::DeviceMember::Param(p) => self.param_def(source, p, &mut out.params),
                ast::DeviceMember::StateBlock(_)
                | ast::DeviceMember::Transition(_)
                | ast::DeviceMember::Telemetry(_)
                | ast::DeviceMember::Publish(_) => {}
            }
        }
        self.telemetry(source, t, &mut out);

        let Some(_) = states_decl else {
            self.err(
                Diagnostic::error(codes::MISSING, format!("device type `{}` declares no states", t.name.name))
                    .primary(loc, "declared here")
                    .help("add `states normal < suspicious < attack` (least restrictive first) and `initial normal`"),
            );
            return out;
        };
        let state_names: Vec<String> = out.states.iter().map(|s| s.name.clone()).collect();
        let state_refs: Vec<&str> = state_names.iter().map(String::as_str).collect();
        let find_state = |name: &str| {
            state_names
                .iter()
                .position(|s| s == name)
                .map(StateId::from_index)
        };

        match initial {
            Some(i) => match find_state(&i.name) {
                Some(s) => out.initial = s,
                None => self.unknown("state", i, source, &state_refs, None),
            },
            None => self.err(
                Diagnostic::error(
                    codes::MISSING,
                    format!("device type `{}` has no initial state", t.name.name),
                )
                .primary(loc, "declared here")
                .help(format!(
                    "add `initial {}`",
                    state_names.first().map_or("STATE", String::as_str)
                )),
            ),
        }
        for f in finals {
            match find_state(&f.name) {
                Some(s) => out.states[s.index()].is_final = true,
                None => self.unknown("state", f, source, &state_refs, None),
            }
        }

        // Chains: every state has one, or (a type off the switch) none has.
        let off_switch = !t
            .members
            .iter()
            .any(|member| matches!(member, ast::DeviceMember::StateBlock(b) if b.chain.is_some()));
        let mixed_help = "or, for a device off the switch (a sensor behind a hub), give no state of the type a chain";
        let mut chain_locs: Vec<Option<Loc>> = vec![None; out.states.len()];
        for member in &t.members {
            let ast::DeviceMember::StateBlock(block) = member else {
                continue;
            };
            let Some(s) = find_state(&block.state.name) else {
                self.unknown(
                    "state",
                    &block.state,
                    source,
                    &state_refs,
                    Some("declare it in `states`".into()),
                );
                continue;
            };
            let bl = self.loc(source, block.state.span);
            if let Some(first) = chain_locs[s.index()] {
                self.err(
                    Diagnostic::error(
                        codes::DUPLICATE,
                        format!("state `{}` has two blocks", block.state.name),
                    )
                    .primary(bl, "second block")
                    .secondary(first, "first block"),
                );
                continue;
            }
            chain_locs[s.index()] = Some(bl);
            out.states[s.index()].chain_loc =
                self.loc(source, block.chain.as_ref().map_or(block.span, |c| c.span));
            match &block.chain {
                Some(chain) => {
                    // A chain that fails is reported; `drop` keeps the type on the switch.
                    out.states[s.index()].chain =
                        Some(self.chain(m, source, chain).unwrap_or(Chain::Drop));
                }
                None if off_switch => {}
                None => self.err(
                    Diagnostic::error(codes::MISSING, format!("state `{}` has no chain", block.state.name))
                        .primary(bl, "this block")
                        .help(format!("add `chain [...]`; `chain [pass]` forwards without inspection, `chain [drop]` blocks; {mixed_help}")),
                ),
            }
        }
        for (i, l) in chain_locs.iter().enumerate() {
            if l.is_none() && !off_switch {
                let st = &out.states[i];
                self.err(
                    Diagnostic::error(codes::MISSING, format!("state `{}` has no chain", st.name))
                        .primary(st.loc, "declared here")
                        .help(format!("add `{} {{ chain [...] }}`; every state says how the device is protected in it, {mixed_help}", st.name)),
                );
            }
        }

        // Transitions.
        let mut visible = self.visible_alerts(m);
        visible.extend(out.alerts.iter().cloned());
        let visible: Vec<String> = visible.into_iter().collect();
        for member in &t.members {
            let ast::DeviceMember::Transition(tr) = member else {
                continue;
            };
            let from = find_state(&tr.from.name);
            if from.is_none() {
                self.unknown("state", &tr.from, source, &state_refs, None);
            }
            let to = find_state(&tr.to.name);
            if to.is_none() {
                self.unknown("state", &tr.to, source, &state_refs, None);
            }
            let trigger = self.trigger(source, &tr.trigger, &out.vars, &visible);
            if let (Some(from), Some(to), Some(trigger)) = (from, to, trigger) {
                out.transitions.push(Transition {
                    from,
                    to,
                    trigger,
                    loc: self.loc(source, tr.span),
                });
            }
        }
        out
    }

    fn chain(&mut self, m: usize, source: SourceId, chain: &ast::Chain) -> Option<Chain> {
        let cl = self.loc(source, chain.span);
        if chain.entries.is_empty() {
            self.err(
                Diagnostic::error(codes::BAD_CHAIN, "empty chain")
                    .primary(cl, "no µmbox and no built-in")
                    .help("write `chain [pass]` to forward without inspection or `chain [drop]` to block"),
            );
            return None;
        }
        let builtin = chain
            .entries
            .iter()
            .find(|e| BUILTIN_CHAINS.contains(&e.umbox.name.as_str()));
        if let Some(b) = builtin {
            if chain.entries.len() > 1 {
                self.err(
                    Diagnostic::error(
                        codes::BAD_CHAIN,
                        format!("`{}` must be the only entry of its chain", b.umbox.name),
                    )
                    .primary(
                        self.loc(source, b.span),
                        "built-in mixed with other entries",
                    )
                    .help("`pass` and `drop` are whole postures, not µmboxes"),
                );
                return None;
            }
            if !b.args.is_empty() {
                self.err(
                    Diagnostic::error(
                        codes::BAD_CHAIN,
                        format!("`{}` takes no arguments", b.umbox.name),
                    )
                    .primary(self.loc(source, b.span), "arguments given here"),
                );
            }
            return Some(if b.umbox.name == "pass" {
                Chain::Pass
            } else {
                Chain::Drop
            });
        }
        let mut entries = Vec::new();
        let mut ok = true;
        for e in &chain.entries {
            let Some(key) = self.lookup(m, &e.umbox, Kind::Umbox) else {
                ok = false;
                continue;
            };
            let Some(&id) = self.umbox_ids.get(&key) else {
                ok = false;
                continue;
            };
            match self.chain_args(source, id, e) {
                Some(args) => entries.push(ChainEntry {
                    umbox: id,
                    args,
                    loc: self.loc(source, e.span),
                }),
                None => ok = false,
            }
        }
        ok.then_some(Chain::Umboxes(entries))
    }

    fn chain_args(
        &mut self,
        source: SourceId,
        id: UmboxId,
        e: &ast::ChainEntry,
    ) -> Option<Vec<Value>> {
        let params = self.model.umbox(id).params.clone();
        let umbox_name = self.model.umbox(id).name.clone();
        self.args(
            source,
            &params,
            &umbox_name,
            &e.args,
            e.span,
            codes::BAD_CHAIN,
        )
    }

    /// The values of `params` given by `args` (`NAME(p = v, ...)` at `span`), defaults
    /// filling the rest; `None` after reporting what is wrong (a missing value as `code`).
    fn args(
        &mut self,
        source: SourceId,
        params: &[ParamDef],
        owner: &str,
        args: &[(Ident, ast::Literal)],
        span: Span,
        code: &'static str,
    ) -> Option<Vec<Value>> {
        let umbox_name = owner;
        let mut given: Vec<Option<Value>> = vec![None; params.len()];
        let mut given_locs: Vec<Option<Loc>> = vec![None; params.len()];
        let mut ok = true;
        for (name, lit) in args {
            let nl = self.loc(source, name.span);
            let Some(i) = params.iter().position(|p| p.name == name.name) else {
                let c: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
                self.unknown(
                    &format!("parameter of `{umbox_name}`"),
                    name,
                    source,
                    &c,
                    None,
                );
                ok = false;
                continue;
            };
            if let Some(first) = given_locs[i] {
                self.duplicate("argument", &name.name, nl, first);
                ok = false;
                continue;
            }
            given_locs[i] = Some(nl);
            match self.literal(source, lit, &params[i].ty, &name.name) {
                Some(v) => given[i] = Some(v),
                None => ok = false,
            }
        }
        let mut out = Vec::new();
        for (i, p) in params.iter().enumerate() {
            match given[i].take().or_else(|| p.default.clone()) {
                Some(v) => out.push(v),
                None if given_locs[i].is_some() => {} // reported above
                None => {
                    self.err(
                        Diagnostic::error(
                            code,
                            format!("missing argument `{}` for `{umbox_name}`", p.name),
                        )
                        .primary(self.loc(source, span), "here")
                        .secondary(p.loc, "parameter declared here without a default")
                        .help(format!("write `{umbox_name}({} = ...)`", p.name)),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// The integer type of exact bounds (computed in 128 bits), or K114 at `loc` when an
    /// evaluation over the declared ranges could leave 64 bits: the runtime evaluates in
    /// 64 bits and refuses a bundle where that could happen, so the compiler refuses the
    /// policy first.
    fn exact_int(&mut self, bounds: range::Bounds, loc: Loc, what: &str) -> Option<Ty> {
        let (lo, hi) = bounds;
        match range::fits(bounds) {
            Some((lo, hi)) => Some(Ty::Int { lo, hi }),
            None => {
                self.err(
                    Diagnostic::error(
                        codes::OVERFLOW,
                        format!("{what} can reach {lo}..{hi}, beyond 64-bit integers"),
                    )
                    .primary(loc, "this can overflow")
                    .help(
                        "narrow the declared ranges of the variables it reads (or the window \
                         of readings), so that every value fits in -2^63..2^63-1",
                    ),
                );
                None
            }
        }
    }

    fn positive(&mut self, source: SourceId, what: &str, value: u64, span: Span) -> bool {
        if value == 0 {
            self.err(
                Diagnostic::error(
                    codes::BAD_QUANTITY,
                    format!("{what} must be greater than zero"),
                )
                .primary(self.loc(source, span), "zero here"),
            );
            return false;
        }
        true
    }

    fn trigger(
        &mut self,
        source: SourceId,
        t: &ast::Trigger,
        vars: &[Var],
        alerts: &[String],
    ) -> Option<Trigger> {
        match t {
            ast::Trigger::Alert { alert, count, span } => {
                let mut ok = true;
                if !alerts.contains(&alert.name) {
                    let c: Vec<&str> = alerts.iter().map(String::as_str).collect();
                    // `on reset`: an operator action written where an alert goes.
                    let (c, help) = if OPERATOR_ACTIONS.contains(&alert.name.as_str()) {
                        let a = &alert.name;
                        (
                            Vec::new(),
                            format!("`{a}` is an operator action, not an alert: write `on operator {a}`"),
                        )
                    } else {
                        (c, "alerts come from a visible µmbox's `emits` or the type's own `alerts` list".into())
                    };
                    self.unknown("alert", alert, source, &c, Some(help));
                    ok = false;
                }
                let count = match count {
                    Some((n, within)) => {
                        ok &= self.positive(source, "an alert count", u64::from(*n), *span);
                        ok &= self.positive(source, "a window", within.millis, within.span);
                        Some((*n, within.millis))
                    }
                    None => None,
                };
                ok.then(|| Trigger::Alert {
                    alert: alert.name.clone(),
                    count,
                    loc: self.loc(source, alert.span),
                })
            }
            ast::Trigger::When { cond, hold, .. } => {
                let guard = self.top_expr(source, cond, &Ctx::Guard { vars });
                let hold_ok =
                    hold.is_none_or(|h| self.positive(source, "a hold time", h.millis, h.span));
                let guard = self.expect_bool(guard?)?;
                hold_ok.then(|| Trigger::When {
                    guard,
                    hold_ms: hold.map(|h| h.millis),
                })
            }
            ast::Trigger::Quiet { after, .. } => self
                .positive(source, "a quiet time", after.millis, after.span)
                .then_some(Trigger::Quiet {
                    after_ms: after.millis,
                }),
            ast::Trigger::Silent { after, span } => {
                if vars.is_empty() {
                    self.err(
                        Diagnostic::error(codes::BAD_CONTEXT, "a device that senses nothing sends no readings")
                            .primary(self.loc(source, *span), "it would always be silent")
                            .help("declare what the device reports (`sensed NAME: TYPE`), or use `after T quiet` for a time without alerts"),
                    );
                    return None;
                }
                self.positive(source, "a silent time", after.millis, after.span)
                    .then_some(Trigger::Silent {
                        after_ms: after.millis,
                    })
            }
            ast::Trigger::Operator { action, .. } => {
                if !OPERATOR_ACTIONS.contains(&action.name.as_str()) {
                    self.unknown(
                        "operator action",
                        action,
                        source,
                        OPERATOR_ACTIONS,
                        Some(format!(
                            "the operator actions are {}",
                            backticked(OPERATOR_ACTIONS)
                        )),
                    );
                    return None;
                }
                Some(Trigger::Operator {
                    action: action.name.clone(),
                })
            }
        }
    }

    fn expect_bool(&mut self, e: Expr) -> Option<Expr> {
        if e.ty == Ty::Bool {
            return Some(e);
        }
        self.err(
            Diagnostic::error(codes::TYPE_MISMATCH, "a condition must be a boolean")
                .primary(e.loc, format!("this is {}", ty_name(&e.ty)))
                .help("compare it, e.g. `temperature > 30`"),
        );
        None
    }

    // ------------------------------------------------------------------ expressions

    /// Types a whole condition, refusing one nested deeper than the limit before any
    /// recursive stage sees it.
    fn top_expr(&mut self, source: SourceId, e: &ast::Expr, ctx: &Ctx<'_>) -> Option<Expr> {
        let depth = e.depth();
        if depth > codes::MAX_EXPR_DEPTH {
            self.too_deep(source, e.span, depth);
            return None;
        }
        self.expr(source, e, ctx)
    }

    /// K113: a condition nested deeper than any later (recursive) stage may walk.
    fn too_deep(&mut self, source: SourceId, span: Span, depth: usize) {
        self.err(
            Diagnostic::error(
                codes::TOO_DEEP,
                format!("expression nested {depth} levels deep"),
            )
            .primary(self.loc(source, span), "too deep")
            .help(format!(
                "conditions may nest at most {} levels; split it into several transitions or rules",
                codes::MAX_EXPR_DEPTH
            )),
        );
    }

    /// `func(var, last N)`: a sensed integer variable's window; `sum` typed exactly (K114).
    fn aggregate(
        &mut self,
        source: SourceId,
        e: &ast::Expr,
        (func, arg, last): (&Ident, &ast::Expr, u32),
        ctx: &Ctx<'_>,
        loc: Loc,
    ) -> Option<Expr> {
        let mk = |kind: ExprKind, ty: Ty| Some(Expr { kind, ty, loc });
        let f = match func.name.as_str() {
            "avg" => AggFunc::Avg,
            "sum" => AggFunc::Sum,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            _ => {
                self.unknown(
                    "aggregate",
                    func,
                    source,
                    &["avg", "sum", "min", "max"],
                    Some("the aggregates are `avg`, `sum`, `min` and `max`".into()),
                );
                return None;
            }
        };
        if !matches!(arg.kind, AK::Name(_) | AK::Field(..)) {
            self.err(
                Diagnostic::error(codes::BAD_CONTEXT, "an aggregate takes a sensed variable")
                    .primary(self.loc(source, arg.span), "not a variable"),
            );
            return None;
        }
        let inner = self.expr(source, arg, ctx)?;
        let ok_n = self.positive(source, "a window of readings", u64::from(last), e.span);
        let ExprKind::Var { var } = inner.kind else {
            return None;
        };
        let Ty::Int { lo, hi } = inner.ty else {
            self.err(
                Diagnostic::error(
                    codes::TYPE_MISMATCH,
                    format!("`{}` aggregates integers", func.name),
                )
                .primary(inner.loc, format!("this is {}", ty_name(&inner.ty))),
            );
            return None;
        };
        if !ok_n {
            return None;
        }
        let ty = match f {
            AggFunc::Sum => self.exact_int(
                range::sum((lo, hi), last),
                loc,
                &format!("`sum` of {last} readings"),
            )?,
            _ => Ty::Int { lo, hi },
        };
        mk(ExprKind::Aggregate { func: f, var, last }, ty)
    }

    /// `a + b`, `a - b`, `a * b` over integers, typed exactly (K114).
    fn arith(
        &mut self,
        source: SourceId,
        op: BinOp,
        (a, b): (&ast::Expr, &ast::Expr),
        ctx: &Ctx<'_>,
        loc: Loc,
    ) -> Option<Expr> {
        let a = self.expr(source, a, ctx);
        let b = self.expr(source, b, ctx);
        let name = format!("`{}`", op.symbol());
        let a = self.expect_operand(a?, &name, |t| matches!(t, Ty::Int { .. }), "an integer");
        let b = self.expect_operand(b?, &name, |t| matches!(t, Ty::Int { .. }), "an integer");
        self.arith_node(op, a?, b?, loc)
    }

    /// `a OP b` of two typed integers, typed exactly (K114 past 64 bits).
    fn arith_node(&mut self, op: BinOp, a: Expr, b: Expr, loc: Loc) -> Option<Expr> {
        let (Ty::Int { lo: al, hi: ah }, Ty::Int { lo: bl, hi: bh }) = (&a.ty, &b.ty) else {
            return None;
        };
        let arith = match op {
            BinOp::Add => ArithOp::Add,
            BinOp::Sub => ArithOp::Sub,
            _ => ArithOp::Mul,
        };
        let bounds = range::arith(arith, (*al, *ah), (*bl, *bh));
        let ty = self.exact_int(bounds, loc, &format!("`{}`", op.symbol()))?;
        Some(Expr {
            kind: ExprKind::Arith {
                arith,
                lhs: Box::new(a),
                rhs: Box::new(b),
            },
            ty,
            loc,
        })
    }

    /// A side of a comparison in an assertion: counts of states and numbers, with `+`,
    /// `-` and `*` (`count(p in plugs: p in attack) + count(...) >= 3`).
    fn count_term(&mut self, source: SourceId, x: &ast::Expr, ctx: &Ctx<'_>) -> Option<Expr> {
        let loc = self.loc(source, x.span);
        let mk = |kind: ExprKind, ty: Ty| Some(Expr { kind, ty, loc });
        match &x.kind {
            AK::Int(n) => mk(ExprKind::Int { value: *n }, Ty::Int { lo: *n, hi: *n }),
            AK::Expanded {
                func: ast::Quantifier::Count,
                ..
            } => self.expr(source, x, ctx),
            AK::Unary(UnOp::Neg, a) => {
                let a = self.count_term(source, a, ctx)?;
                let Ty::Int { lo, hi } = a.ty else {
                    return None;
                };
                let ty = self.exact_int(range::neg((lo, hi)), loc, "`-`")?;
                mk(ExprKind::Neg { arg: Box::new(a) }, ty)
            }
            AK::Binary(op @ (BinOp::Add | BinOp::Sub | BinOp::Mul), a, b) => {
                let (a, b) = (
                    self.count_term(source, a, ctx),
                    self.count_term(source, b, ctx),
                );
                self.arith_node(*op, a?, b?, loc)
            }
            _ => {
                self.err(
                    Diagnostic::error(
                        codes::BAD_CONTEXT,
                        "in an assertion, counts are compared with counts and numbers",
                    )
                    .primary(loc, "not a count or a number")
                    .help("e.g. `assert never count(p in plugs: p in attack) >= 3`; `+`, `-` and `*` of counts and numbers are allowed"),
                );
                None
            }
        }
    }

    /// `cam-door.open` parses as `cam - door.open`. When the words around a `-` written
    /// without spaces join into a name of the scope (`cam_door`), reports that name's
    /// spelling instead of the subtraction's two unknown names.
    fn hyphenated_name(
        &mut self,
        source: SourceId,
        a: &ast::Expr,
        b: &ast::Expr,
        ctx: &Ctx<'_>,
    ) -> bool {
        let AK::Name(first) = &a.kind else {
            return false;
        };
        let (AK::Name(second) | AK::Field(second, _) | AK::InState(second, _)) = &b.kind else {
            return false;
        };
        if first.span.end + 1 != second.span.start {
            return false;
        }
        let joined = format!("{}_{}", first.name, second.name);
        let known = match ctx {
            Ctx::Guard { vars } => vars.iter().any(|v| v.name == joined),
            Ctx::Rule { site } | Ctx::Assert { site } => site.device(&joined).is_some(),
        };
        if known {
            let span = Span::new(first.span.start, second.span.end);
            self.err(
                Diagnostic::error(
                    codes::UNKNOWN_NAME,
                    format!(
                        "unknown name `{}-{}`: names cannot contain `-`",
                        first.name, second.name
                    ),
                )
                .primary(self.loc(source, span), "read as a subtraction")
                .help(format!("names join words with `_`: write `{joined}`")),
            );
        }
        known
    }

    fn expr(&mut self, source: SourceId, e: &ast::Expr, ctx: &Ctx<'_>) -> Option<Expr> {
        let loc = self.loc(source, e.span);
        let mk = |kind: ExprKind, ty: Ty| Some(Expr { kind, ty, loc });
        let assert_only = |cx: &mut Self, what: &str| {
            cx.err(
                Diagnostic::error(
                    codes::BAD_CONTEXT,
                    format!("{what} cannot appear in an assertion"),
                )
                .primary(loc, "not allowed here")
                .help(
                    "assertions speak of device states: `DEVICE in STATE`, with `and`, `or`, `not`",
                ),
            );
        };
        match &e.kind {
            AK::Error => None,
            AK::Quantified { func, .. } => {
                // A site's rules and assertions have theirs expanded before they get here.
                self.err(
                    Diagnostic::error(
                        codes::BAD_CONTEXT,
                        format!("`{}(...)` outside a site's rules and assertions", func.name),
                    )
                    .primary(loc, "no groups here")
                    .help("groups are declared in a site (`group plugs: Plug`); a device type's guards speak of its own variables"),
                );
                None
            }
            AK::Expanded { func, terms } => {
                // The condition once per device: the first that does not type is reported
                // (the others are very likely the same mistake, at the same place).
                let name = format!("`{}`", func.name());
                let mut args = Vec::with_capacity(terms.len());
                for t in terms {
                    let t = self.expr(source, t, ctx)?;
                    args.push(self.expect_operand(t, &name, |t| *t == Ty::Bool, "a boolean")?);
                }
                match func {
                    ast::Quantifier::Any => mk(ExprKind::Or { args }, Ty::Bool),
                    ast::Quantifier::All => mk(ExprKind::And { args }, Ty::Bool),
                    ast::Quantifier::Count => {
                        let hi = i64::try_from(args.len()).unwrap_or(i64::MAX);
                        mk(ExprKind::Count { args }, Ty::Int { lo: 0, hi })
                    }
                }
            }
            AK::Bool(b) => mk(ExprKind::Bool { value: *b }, Ty::Bool),
            AK::Int(n) => {
                if matches!(ctx, Ctx::Assert { .. }) {
                    assert_only(self, "a number");
                    return None;
                }
                mk(ExprKind::Int { value: *n }, Ty::Int { lo: *n, hi: *n })
            }
            AK::Name(n) => match ctx {
                Ctx::Guard { vars } => {
                    let Some(i) = vars.iter().position(|v| v.name == n.name) else {
                        let c: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
                        self.unknown("variable", n, source, &c, None);
                        return None;
                    };
                    let var = VarRef {
                        device: None,
                        var: VarId::from_index(i),
                    };
                    mk(ExprKind::Var { var }, var_ty(&vars[i].ty))
                }
                Ctx::Rule { site } | Ctx::Assert { site } => {
                    let mut d = Diagnostic::error(
                        codes::BAD_CONTEXT,
                        format!("bare name `{}` in a site", n.name),
                    )
                    .primary(loc, "which device's?");
                    if site.device(&n.name).is_some() {
                        d = d.help(format!(
                            "`{0}` is a device: write `{0}.VARIABLE` or `{0} in STATE`",
                            n.name
                        ));
                    } else {
                        d = d.help(
                            "in a site, name variables through their device: `DEVICE.VARIABLE`",
                        );
                    }
                    self.err(d);
                    None
                }
            },
            AK::Field(dev, var) => {
                let site = match ctx {
                    Ctx::Guard { .. } => {
                        self.err(
                            Diagnostic::error(codes::BAD_CONTEXT, "a transition guard can only read its own device's variables")
                                .primary(loc, "another device's value")
                                .help("conditions across devices are site rules: `rule NAME when ... then ...`"),
                        );
                        return None;
                    }
                    Ctx::Assert { .. } => {
                        assert_only(self, "a sensed value");
                        return None;
                    }
                    Ctx::Rule { site } => site,
                };
                let (device, ty) = self.site_device(source, site, dev)?;
                let vars = &self.model.device_type(ty).vars;
                let Some(i) = vars.iter().position(|v| v.name == var.name) else {
                    let c: Vec<String> = vars.iter().map(|v| v.name.clone()).collect();
                    let c: Vec<&str> = c.iter().map(String::as_str).collect();
                    let tn = self.model.device_type(ty).name.clone();
                    self.unknown(&format!("variable of `{tn}`"), var, source, &c, None);
                    return None;
                };
                let vty = var_ty(&vars[i].ty);
                mk(
                    ExprKind::Var {
                        var: VarRef {
                            device: Some(device),
                            var: VarId::from_index(i),
                        },
                    },
                    vty,
                )
            }
            AK::InState(dev, state) => {
                let site = match ctx {
                    Ctx::Guard { .. } => {
                        self.err(
                            Diagnostic::error(
                                codes::BAD_CONTEXT,
                                "a transition guard cannot test device states",
                            )
                            .primary(loc, "not allowed here")
                            .help("tests of several devices' states are site rules"),
                        );
                        return None;
                    }
                    Ctx::Rule { site } | Ctx::Assert { site } => site,
                };
                let (device, ty) = self.site_device(source, site, dev)?;
                let state = self.state_of(source, dev, ty, state)?;
                mk(ExprKind::InState { device, state }, Ty::Bool)
            }
            AK::Clock { from, to } => {
                if matches!(ctx, Ctx::Assert { .. }) {
                    assert_only(self, "the clock");
                    return None;
                }
                if from == to {
                    self.err(
                        Diagnostic::error(codes::BAD_QUANTITY, "empty clock window")
                            .primary(loc, "starts where it ends")
                            .help("the window runs from its first time up to (not including) its second"),
                    );
                    return None;
                }
                mk(
                    ExprKind::Clock {
                        from: *from,
                        to: *to,
                    },
                    Ty::Bool,
                )
            }
            AK::Aggregate { func, arg, last } => {
                if matches!(ctx, Ctx::Assert { .. }) {
                    assert_only(self, "an aggregate");
                    return None;
                }
                self.aggregate(source, e, (func, arg, *last), ctx, loc)
            }
            AK::Unary(UnOp::Not, a) => {
                let a = self.expr(source, a, ctx)?;
                let a = self.expect_operand(a, "`not`", |t| *t == Ty::Bool, "a boolean")?;
                mk(ExprKind::Not { arg: Box::new(a) }, Ty::Bool)
            }
            AK::Unary(UnOp::Neg, a) => {
                if matches!(ctx, Ctx::Assert { .. }) {
                    assert_only(self, "arithmetic");
                    return None;
                }
                let a = self.expr(source, a, ctx)?;
                let a =
                    self.expect_operand(a, "`-`", |t| matches!(t, Ty::Int { .. }), "an integer")?;
                let Ty::Int { lo, hi } = a.ty else {
                    return None;
                };
                let ty = self.exact_int(range::neg((lo, hi)), loc, "`-`")?;
                mk(ExprKind::Neg { arg: Box::new(a) }, ty)
            }
            AK::Binary(op @ (BinOp::And | BinOp::Or), a, b) => {
                let a = self.expr(source, a, ctx);
                let b = self.expr(source, b, ctx);
                let name = format!("`{}`", op.symbol());
                let a = self.expect_operand(a?, &name, |t| *t == Ty::Bool, "a boolean");
                let b = self.expect_operand(b?, &name, |t| *t == Ty::Bool, "a boolean");
                let (a, b) = (a?, b?);
                let mut args = Vec::new();
                for x in [a, b] {
                    match (op, x.kind) {
                        (BinOp::And, ExprKind::And { args: inner })
                        | (BinOp::Or, ExprKind::Or { args: inner }) => args.extend(inner),
                        (_, kind) => args.push(Expr {
                            kind,
                            ty: x.ty,
                            loc: x.loc,
                        }),
                    }
                }
                let kind = if *op == BinOp::And {
                    ExprKind::And { args }
                } else {
                    ExprKind::Or { args }
                };
                mk(kind, Ty::Bool)
            }
            AK::Binary(op @ (BinOp::Add | BinOp::Sub | BinOp::Mul), a, b) => {
                if *op == BinOp::Sub && self.hyphenated_name(source, a, b, ctx) {
                    return None;
                }
                if matches!(ctx, Ctx::Assert { .. }) {
                    assert_only(self, "arithmetic");
                    return None;
                }
                self.arith(source, *op, (a, b), ctx, loc)
            }
            AK::Binary(op, a, b) => {
                let cmp = match op {
                    BinOp::Eq => CmpOp::Eq,
                    BinOp::Ne => CmpOp::Ne,
                    BinOp::Lt => CmpOp::Lt,
                    BinOp::Le => CmpOp::Le,
                    BinOp::Gt => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                if matches!(ctx, Ctx::Assert { .. }) {
                    // `count(...) >= 3`: counts of states, with numbers and arithmetic.
                    if !(has_count(a) || has_count(b)) {
                        assert_only(self, "a comparison");
                        return None;
                    }
                    let (ea, eb) = (
                        self.count_term(source, a, ctx),
                        self.count_term(source, b, ctx),
                    );
                    let (ea, eb) = (ea?, eb?);
                    return mk(
                        ExprKind::Cmp {
                            cmp,
                            lhs: Box::new(ea),
                            rhs: Box::new(eb),
                        },
                        Ty::Bool,
                    );
                }
                self.comparison(source, cmp, op.symbol(), a, b, ctx, loc)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn comparison(
        &mut self,
        source: SourceId,
        cmp: CmpOp,
        sym: &str,
        a: &ast::Expr,
        b: &ast::Expr,
        ctx: &Ctx<'_>,
        loc: Loc,
    ) -> Option<Expr> {
        // `mode == heat`: a bare name opposite an enum is one of its members. Each side is
        // typed exactly once (typing twice would double the work at every nesting level).
        let candidate = |side: &ast::Expr| -> Option<Ident> {
            let AK::Name(n) = &side.kind else { return None };
            let is_var =
                matches!(ctx, Ctx::Guard { vars } if vars.iter().any(|v| v.name == n.name));
            (!is_var).then(|| n.clone())
        };
        let (ea, eb) = match (candidate(a), candidate(b)) {
            (Some(n), None) => {
                let eb = self.expr(source, b, ctx);
                let ea = self.member_or_expr(source, n, &eb, a, ctx);
                (ea, eb)
            }
            (None, Some(n)) => {
                let ea = self.expr(source, a, ctx);
                let eb = self.member_or_expr(source, n, &ea, b, ctx);
                (ea, eb)
            }
            _ => (self.expr(source, a, ctx), self.expr(source, b, ctx)),
        };
        let (ea, eb) = (ea?, eb?);
        let ordered = !matches!(cmp, CmpOp::Eq | CmpOp::Ne);
        let compatible = match (&ea.ty, &eb.ty) {
            (Ty::Int { .. }, Ty::Int { .. }) => true,
            (Ty::Bool, Ty::Bool) | (Ty::Enum { .. }, Ty::Enum { .. }) => !ordered && ea.ty == eb.ty,
            _ => false,
        };
        if !compatible {
            let help = if ordered && ea.ty == eb.ty {
                format!("`{sym}` orders integers only; use `==` or `!=`")
            } else {
                "both sides must have the same type".to_string()
            };
            self.err(
                Diagnostic::error(
                    codes::TYPE_MISMATCH,
                    format!(
                        "cannot compare {} with {} using `{sym}`",
                        ty_name(&ea.ty),
                        ty_name(&eb.ty)
                    ),
                )
                .primary(ea.loc, ty_name(&ea.ty))
                .secondary(eb.loc, ty_name(&eb.ty))
                .help(help),
            );
            return None;
        }
        Some(Expr {
            kind: ExprKind::Cmp {
                cmp,
                lhs: Box::new(ea),
                rhs: Box::new(eb),
            },
            ty: Ty::Bool,
            loc,
        })
    }

    /// A bare name opposite an enum-typed operand is one of the enum's members; otherwise
    /// it is typed as an ordinary expression.
    fn member_or_expr(
        &mut self,
        source: SourceId,
        name: Ident,
        other: &Option<Expr>,
        side: &ast::Expr,
        ctx: &Ctx<'_>,
    ) -> Option<Expr> {
        match other {
            Some(Expr {
                ty: Ty::Enum { members },
                ..
            }) => self.enum_const(source, (name.name, members.clone(), name.span)),
            // The other side failed: it is reported, and this name cannot be judged.
            None => None,
            Some(_) => self.expr(source, side, ctx),
        }
    }

    fn enum_const(
        &mut self,
        source: SourceId,
        (name, members, span): (String, Vec<String>, Span),
    ) -> Option<Expr> {
        let loc = self.loc(source, span);
        let Some(i) = members.iter().position(|m| *m == name) else {
            let c: Vec<&str> = members.iter().map(String::as_str).collect();
            let ident = Ident { name, span };
            self.unknown(
                "enum member",
                &ident,
                source,
                &c,
                Some(format!("the members are {}", backticked(&c))),
            );
            return None;
        };
        let value = i64::try_from(i).unwrap_or(i64::MAX);
        Some(Expr {
            kind: ExprKind::Int { value },
            ty: Ty::Enum { members },
            loc,
        })
    }

    fn expect_operand(
        &mut self,
        e: Expr,
        op: &str,
        ok: impl Fn(&Ty) -> bool,
        want: &str,
    ) -> Option<Expr> {
        if ok(&e.ty) {
            return Some(e);
        }
        self.err(
            Diagnostic::error(codes::TYPE_MISMATCH, format!("{op} needs {want}"))
                .primary(e.loc, format!("this is {}", ty_name(&e.ty))),
        );
        None
    }

    fn site_device(
        &mut self,
        source: SourceId,
        site: &SiteScope,
        dev: &Ident,
    ) -> Option<(DeviceId, TypeId)> {
        let found = site.device(&dev.name);
        if found.is_none() {
            let c: Vec<&str> = site.devices.iter().map(|(n, _)| n.as_str()).collect();
            self.unknown("device", dev, source, &c, None);
        }
        found
    }

    // ------------------------------------------------------------------ sites

    /// The site's `node` declarations into `out.nodes`: names once each (K104), bridges
    /// named (K107).
    fn site_nodes(&mut self, source: SourceId, s: &ast::Site, out: &mut Site) {
        for member in &s.members {
            let ast::SiteMember::Node(n) = member else {
                continue;
            };
            let l = self.loc(source, n.name.span);
            if let Some(first) = out.nodes.iter().find(|x| x.name == n.name.name) {
                let first = first.loc;
                self.duplicate("node", &n.name.name, l, first);
                continue;
            }
            if n.bridge.value.is_empty() {
                self.err(
                    Diagnostic::error(codes::MISSING, "empty bridge name").primary(
                        self.loc(source, n.bridge.span),
                        "name the node's OVS bridge",
                    ),
                );
            }
            out.nodes.push(Node {
                name: n.name.name.clone(),
                bridge: n.bridge.value.clone(),
                uplink: n.uplink.as_ref().map(|u| u.value.clone()),
                uplink_loc: n.uplink.as_ref().map_or(l, |u| self.loc(source, u.span)),
                loc: l,
            });
        }
    }

    /// The node a device is attached to: in a site with nodes it must name one of them
    /// (K117 when it names none, K103 with a "did you mean" for an unknown one); in a
    /// site without, none (K117). `None` after an error, or in a site on one bridge.
    fn device_node(
        &mut self,
        source: SourceId,
        site: &str,
        d: &ast::DeviceDecl,
        nodes: &[Node],
    ) -> Option<usize> {
        match &d.node {
            None if nodes.is_empty() => None,
            None => {
                let names: Vec<String> = nodes.iter().map(|n| format!("`{}`", n.name)).collect();
                self.err(
                    Diagnostic::error(
                        codes::NODES,
                        format!("device `{}` is on no node", d.name.name),
                    )
                    .primary(self.loc(source, d.name.span), "no `node` given")
                    .secondary(nodes[0].loc, format!("site `{site}` spans nodes"))
                    .help(format!(
                        "every device of a site with nodes is attached to one: add `node {}` (the site's nodes: {})",
                        nodes[0].name,
                        names.join(", ")
                    )),
                );
                None
            }
            Some(n) if nodes.is_empty() => {
                self.err(
                    Diagnostic::error(
                        codes::NODES,
                        format!("device `{}` names node `{}`, but site `{site}` declares no nodes", d.name.name, n.name),
                    )
                    .primary(self.loc(source, n.span), "no node of this name")
                    .help(format!(
                        "a site on one bridge has no nodes: remove `node {}`, or declare the site's nodes first in it (`node {} {{ bridge \"br0\" uplink \"eth0\" }}`) in place of its `bridge` line",
                        n.name, n.name
                    )),
                );
                None
            }
            Some(n) => {
                let found = nodes.iter().position(|x| x.name == n.name);
                if found.is_none() {
                    let candidates: Vec<&str> = nodes.iter().map(|x| x.name.as_str()).collect();
                    let list: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
                    self.unknown(
                        "node",
                        n,
                        source,
                        &candidates,
                        Some(format!("the site's nodes are {}", list.join(", "))),
                    );
                }
                found
            }
        }
    }

    fn site(&mut self, m: usize, s: &ast::Site) -> Site {
        let source = self.p.modules[m].source;
        let ranged = self.expand_ranges(source, s);
        let s = &*ranged;
        let loc = self.loc(source, s.name.span);
        let mut out = Site {
            name: s.name.name.clone(),
            loc,
            bridge: String::new(),
            uplink: None,
            uplink_loc: loc,
            unknown_hosts: UnknownHosts::Drop,
            nodes: Vec::new(),
            part_of: None,
            devices: Vec::new(),
            rules: Vec::new(),
            asserts: Vec::new(),
            traffic_asserts: Vec::new(),
        };
        // The grammar puts nodes first: every device below can name any of them.
        self.site_nodes(source, s, &mut out);
        let mut bridge_loc: Option<Loc> = None;
        let mut unknown_loc: Option<Loc> = None;
        // Devices whose type failed to resolve: references to them are not reported again.
        let mut broken: Vec<String> = Vec::new();
        let mut device_locs: HashMap<&str, Loc> = HashMap::new();
        for member in &s.members {
            match member {
                ast::SiteMember::Bridge {
                    bridge,
                    uplink,
                    span,
                } => {
                    let l = self.loc(source, *span);
                    if let Some(first) = bridge_loc {
                        self.duplicate("member", "bridge", l, first);
                        continue;
                    }
                    bridge_loc = Some(l);
                    if let Some(first) = out.nodes.first() {
                        let first = first.loc;
                        self.err(
                            Diagnostic::error(
                                codes::NODES,
                                format!("site `{}` has a bridge line and nodes", s.name.name),
                            )
                            .primary(l, "a bridge for the whole site ...")
                            .secondary(first, "... and nodes, each with its own bridge")
                            .help("a site is on one bridge or on several nodes: remove this line, or the nodes and every device's `node`"),
                        );
                        continue;
                    }
                    if bridge.value.is_empty() {
                        self.err(
                            Diagnostic::error(codes::MISSING, "empty bridge name")
                                .primary(self.loc(source, bridge.span), "name the OVS bridge"),
                        );
                    }
                    out.bridge = bridge.value.clone();
                    out.uplink = uplink.as_ref().map(|u| u.value.clone());
                    if let Some(u) = uplink {
                        out.uplink_loc = self.loc(source, u.span);
                    }
                }
                ast::SiteMember::UnknownHosts(d, span) => {
                    let l = self.loc(source, *span);
                    if let Some(first) = unknown_loc {
                        self.duplicate("member", "unknown hosts", l, first);
                        continue;
                    }
                    unknown_loc = Some(l);
                    out.unknown_hosts = match d.name.as_str() {
                        "drop" => UnknownHosts::Drop,
                        "pass" => UnknownHosts::Pass,
                        _ => {
                            self.unknown(
                                "default for unknown hosts",
                                d,
                                source,
                                &["drop", "pass"],
                                Some("write `unknown hosts drop` or `unknown hosts pass`".into()),
                            );
                            UnknownHosts::Drop
                        }
                    };
                }
                ast::SiteMember::Device(d) => {
                    let dl = self.loc(source, d.name.span);
                    if let Some(&first) = device_locs.get(d.name.name.as_str()) {
                        self.duplicate("device", &d.name.name, dl, first);
                        continue;
                    }
                    device_locs.insert(&d.name.name, dl);
                    let node = self.device_node(source, &s.name.name, d, &out.nodes);
                    let Some(key) = self.lookup(m, &d.ty, Kind::DeviceType) else {
                        broken.push(d.name.name.clone());
                        continue;
                    };
                    let Some(&ty) = self.type_ids.get(&key) else {
                        continue;
                    };
                    let Some(telemetry) = self.device_telemetry(source, d, ty) else {
                        broken.push(d.name.name.clone());
                        continue;
                    };
                    let t = self.model.device_type(ty);
                    if !t.states.is_empty() && !t.on_switch() {
                        // Off the switch: nothing of it has an address or a port.
                        let given: Vec<(&str, Span)> = [
                            d.ip.map(|(_, sp)| ("at", sp)),
                            d.mac.map(|(_, sp)| ("mac", sp)),
                            d.port.as_ref().map(|p| ("port", p.span)),
                        ]
                        .into_iter()
                        .flatten()
                        .collect();
                        if let Some(&(_, first)) = given.first() {
                            let (tname, tloc) = (t.name.clone(), t.loc);
                            let words: Vec<String> =
                                given.iter().map(|(w, _)| format!("`{w}`")).collect();
                            let mut diag = Diagnostic::error(
                                codes::BAD_CONTEXT,
                                format!(
                                    "device `{}` is off the switch and takes no {}",
                                    d.name.name,
                                    words.join(", ")
                                ),
                            )
                            .primary(self.loc(source, first), "given here");
                            for &(_, sp) in &given[1..] {
                                diag = diag.secondary(self.loc(source, sp), "and here");
                            }
                            self.err(
                                diag.secondary(tloc, "no state of this type has a chain")
                                    .help(format!(
                                        "`{tname}` has no chain, so nothing of `{}` is on the switch (a sensor behind a hub): remove its `at`, `mac` and `port`; to put it on the switch, give every state of `{tname}` a chain",
                                        d.name.name
                                    )),
                            );
                            broken.push(d.name.name.clone());
                            continue;
                        }
                        out.devices.push(Device {
                            name: d.name.name.clone(),
                            ty,
                            net: None,
                            trusted: d.trusted.is_some(),
                            loc: dl,
                            telemetry,
                            node,
                        });
                        continue;
                    }
                    let (Some((ip, ip_span)), Some(port)) = (d.ip, &d.port) else {
                        let what = match (d.ip.is_some(), d.port.is_some()) {
                            (false, false) => {
                                "an address (`at IP`) and a switch port (`port \"NAME\"`)"
                            }
                            (false, true) => "an address (`at IP`)",
                            _ => "a switch port (`port \"NAME\"`)",
                        };
                        self.err(
                            Diagnostic::error(
                                codes::MISSING,
                                format!("device `{}` needs {what}", d.name.name),
                            )
                            .primary(self.loc(source, d.span), "declared here"),
                        );
                        broken.push(d.name.name.clone());
                        continue;
                    };
                    out.devices.push(Device {
                        name: d.name.name.clone(),
                        ty,
                        net: Some(DeviceNet {
                            ip,
                            mac: d.mac.map(|(m, _)| m),
                            port: port.value.clone(),
                            ip_loc: self.loc(source, ip_span),
                            mac_loc: d.mac.map(|(_, sp)| self.loc(source, sp)),
                            port_loc: self.loc(source, port.span),
                        }),
                        trusted: d.trusted.is_some(),
                        loc: dl,
                        telemetry,
                        node,
                    });
                }
                ast::SiteMember::Node(_) => {}
                ast::SiteMember::Rule(_)
                | ast::SiteMember::Group(_)
                | ast::SiteMember::Assert(_)
                | ast::SiteMember::TrafficAssert(_) => {}
            }
        }
        self.site_topics(&out.devices);
        if bridge_loc.is_none() && out.nodes.is_empty() {
            self.err(
                Diagnostic::error(
                    codes::MISSING,
                    format!("site `{}` names no bridge", s.name.name),
                )
                .primary(loc, "declared here")
                .help("add `bridge \"br0\" uplink \"eth0\"`, or, for a site on several edge nodes, a `node NAME { bridge \"br0\" uplink \"eth0\" }` for each, first in the site"),
            );
        }
        let scope = SiteScope::new(out.devices.iter().map(|d| (d.name.clone(), d.ty)).collect());
        let site_alerts = self.visible_alerts(m);
        let expanded = self.expand_groups(source, s);
        let mut rule_names: HashMap<String, Loc> = HashMap::new();
        for member in &expanded {
            match member {
                ast::SiteMember::Rule(r) => {
                    let rl = self.loc(source, r.name.span);
                    if let Some(first) = rule_names.get(&r.name.name) {
                        self.duplicate("rule", &r.name.name, rl, *first);
                        continue;
                    }
                    rule_names.insert(r.name.name.clone(), rl);
                    if mentions(&r.cond, &broken)
                        || r.actions
                            .iter()
                            .any(|a| broken.iter().any(|b| *b == action_device(a).name))
                    {
                        continue;
                    }
                    let cond = self
                        .top_expr(source, &r.cond, &Ctx::Rule { site: &scope })
                        .and_then(|c| self.expect_bool(c));
                    let mut actions = Vec::new();
                    let mut ok = true;
                    for a in &r.actions {
                        match self.action(source, &scope, &site_alerts, a) {
                            Some(a) => actions.push(a),
                            None => ok = false,
                        }
                    }
                    if let (Some(cond), true) = (cond, ok) {
                        out.rules.push(Rule {
                            name: r.name.name.clone(),
                            edge: r.edge,
                            cond,
                            actions,
                            loc: rl,
                        });
                    }
                }
                ast::SiteMember::Assert(a) => {
                    if mentions(&a.cond, &broken) {
                        continue;
                    }
                    let cond = self
                        .top_expr(source, &a.cond, &Ctx::Assert { site: &scope })
                        .and_then(|c| self.expect_bool(c));
                    if let Some(cond) = cond {
                        let kind = match a.kind {
                            ast::AssertKind::Reachable => AssertKind::Reachable,
                            ast::AssertKind::Never => AssertKind::Never,
                        };
                        out.asserts.push(Assertion {
                            kind,
                            cond,
                            loc: self.loc(source, a.span),
                        });
                    }
                }
                ast::SiteMember::TrafficAssert(a) => {
                    if broken.contains(&a.device.name) {
                        continue;
                    }
                    if let Some(t) = self.traffic_assert(source, &scope, a) {
                        out.traffic_asserts.push(t);
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn traffic_assert(
        &mut self,
        source: SourceId,
        site: &SiteScope,
        a: &ast::TrafficAssertion,
    ) -> Option<TrafficAssertion> {
        let (device, ty) = self.site_device(source, site, &a.device)?;
        let t = self.model.device_type(ty);
        if !t.states.is_empty() && !t.on_switch() {
            let tloc = t.loc;
            self.err(
                Diagnostic::error(
                    codes::BAD_CONTEXT,
                    format!("`{}` is off the switch: it has no traffic on it to assert about", a.device.name),
                )
                .primary(self.loc(source, a.device.span), "a device off the switch")
                .secondary(tloc, "no state of this type has a chain")
                .help(format!("whatever `{}` sends goes through its hub, not the switch, so nothing proves or refutes it here; assert about its states (`assert reachable {} in ...`) or about the devices it moves", a.device.name, a.device.name)),
            );
            return None;
        }
        let class = match &a.class {
            None => TrafficClass::Anything,
            Some(c) if c.name.name == "arp" && c.ports.is_empty() => TrafficClass::Arp,
            Some(c) => {
                let Some(proto) = Proto::parse(&c.name.name).filter(|p| *p != Proto::All) else {
                    self.unknown(
                        "traffic class",
                        &c.name,
                        source,
                        &["ip", "tcp", "udp", "icmp", "arp"],
                        Some("leave the class out for any traffic".into()),
                    );
                    return None;
                };
                if !c.ports.is_empty() && !proto.has_ports() {
                    self.err(
                        Diagnostic::error(
                            codes::BAD_CONTRACT,
                            format!("`{}` has no ports", c.name.name),
                        )
                        .primary(self.loc(source, c.span), "ports given here")
                        .help("only `tcp` and `udp` take ports"),
                    );
                    return None;
                }
                let mut ports = Vec::new();
                for p in &c.ports {
                    let ast::PortItem::Range { lo, hi, span } = p else {
                        self.err(
                            Diagnostic::error(
                                codes::BAD_CONTEXT,
                                "a parameter has no value in an assertion",
                            )
                            .primary(self.loc(source, c.span), "here")
                            .help("give port numbers, e.g. `tcp 23` or `tcp 8000..8080`"),
                        );
                        return None;
                    };
                    ports.push(self.port_range(source, *lo, *hi, *span)?);
                }
                TrafficClass::Ip(Class { proto, ports })
            }
        };
        let mut states = Vec::new();
        for s in &a.states {
            let id = self.state_of(source, &a.device, ty, s)?;
            if !states.contains(&id) {
                states.push(id);
            }
        }
        Some(TrafficAssertion {
            kind: match a.kind {
                ast::AssertKind::Reachable => AssertKind::Reachable,
                ast::AssertKind::Never => AssertKind::Never,
            },
            class,
            dir: match a.dir {
                ast::TrafficDir::To => TrafficDir::To,
                ast::TrafficDir::From => TrafficDir::From,
                ast::TrafficDir::With => TrafficDir::With,
            },
            device,
            states,
            loc: self.loc(source, a.span),
        })
    }

    fn action(
        &mut self,
        source: SourceId,
        site: &SiteScope,
        site_alerts: &BTreeSet<String>,
        a: &ast::Action,
    ) -> Option<Action> {
        let loc = self.loc(source, a.span());
        match a {
            ast::Action::Goto { device, state, .. }
            | ast::Action::Escalate { device, state, .. } => {
                let (d, ty) = self.site_device(source, site, device)?;
                let state = self.state_of(source, device, ty, state)?;
                let i = state.index();
                if i == 0 && matches!(a, ast::Action::Escalate { .. }) {
                    self.err(
                        Diagnostic::error(
                            codes::BAD_CONTEXT,
                            format!("`{}` is the least restrictive state: an escalation to it never moves `{}`", self.model.device_type(ty).states[i].name, device.name),
                        )
                        .primary(loc, "does nothing")
                        .help("`escalate` only raises a device; to move it down, write `DEVICE -> STATE` (K207 then asks for trusted data)"),
                    );
                    return None;
                }
                Some(match a {
                    ast::Action::Escalate { .. } => Action::Escalate {
                        device: d,
                        state,
                        loc,
                    },
                    _ => Action::Goto {
                        device: d,
                        state,
                        loc,
                    },
                })
            }
            ast::Action::Command {
                device, command, ..
            } => {
                let (d, ty) = self.site_device(source, site, device)?;
                let t = self.model.device_type(ty);
                if !t.commands.contains(&command.name) {
                    let c: Vec<String> = t.commands.clone();
                    let c: Vec<&str> = c.iter().map(String::as_str).collect();
                    let tn = t.name.clone();
                    self.unknown(
                        &format!("command of `{tn}`"),
                        command,
                        source,
                        &c,
                        Some(format!("declare it in `{tn}`: `commands {}`", command.name)),
                    );
                    return None;
                }
                Some(Action::Command {
                    device: d,
                    command: command.name.clone(),
                    loc,
                })
            }
            ast::Action::Raise { alert, device, .. } => {
                let (d, ty) = self.site_device(source, site, device)?;
                let t = self.model.device_type(ty);
                let mut known: BTreeSet<String> = site_alerts.clone();
                known.extend(t.alerts.iter().cloned());
                for tr in &t.transitions {
                    if let Trigger::Alert { alert, .. } = &tr.trigger {
                        known.insert(alert.clone());
                    }
                }
                if !known.contains(&alert.name) {
                    let c: Vec<&str> = known.iter().map(String::as_str).collect();
                    self.unknown(
                        "alert",
                        alert,
                        source,
                        &c,
                        Some(format!(
                            "declare it in `{}`: `alerts {}`",
                            t.name, alert.name
                        )),
                    );
                    return None;
                }
                Some(Action::Raise {
                    device: d,
                    alert: alert.name.clone(),
                    loc,
                })
            }
        }
    }
}

fn action_device(a: &ast::Action) -> &Ident {
    match a {
        ast::Action::Goto { device, .. }
        | ast::Action::Command { device, .. }
        | ast::Action::Raise { device, .. }
        | ast::Action::Escalate { device, .. } => device,
    }
}

/// Whether an expression refers to one of the named devices.
/// `a` with its device bound (`p.turn_off` for the group member `p`).
fn bind_action(a: &ast::Action, bind: &[(String, String)]) -> ast::Action {
    let sub = |i: &Ident| match bind.iter().find(|(v, _)| *v == i.name) {
        Some((_, d)) => Ident {
            name: d.clone(),
            span: i.span,
        },
        None => i.clone(),
    };
    match a {
        ast::Action::Goto {
            device,
            state,
            span,
        } => ast::Action::Goto {
            device: sub(device),
            state: state.clone(),
            span: *span,
        },
        ast::Action::Command {
            device,
            command,
            span,
        } => ast::Action::Command {
            device: sub(device),
            command: command.clone(),
            span: *span,
        },
        ast::Action::Raise {
            alert,
            device,
            span,
        } => ast::Action::Raise {
            alert: alert.clone(),
            device: sub(device),
            span: *span,
        },
        ast::Action::Escalate {
            device,
            state,
            span,
        } => ast::Action::Escalate {
            device: sub(device),
            state: state.clone(),
            span: *span,
        },
    }
}

/// Whether an expression has a `count` in its arithmetic (what an assertion may compare).
fn has_count(e: &ast::Expr) -> bool {
    match &e.kind {
        AK::Expanded {
            func: ast::Quantifier::Count,
            ..
        } => true,
        AK::Unary(UnOp::Neg, a) => has_count(a),
        AK::Binary(BinOp::Add | BinOp::Sub | BinOp::Mul, a, b) => has_count(a) || has_count(b),
        _ => false,
    }
}

fn mentions(e: &ast::Expr, devices: &[String]) -> bool {
    match &e.kind {
        AK::Field(d, _) | AK::InState(d, _) => devices.contains(&d.name),
        AK::Aggregate { arg, .. } | AK::Unary(_, arg) | AK::Quantified { body: arg, .. } => {
            mentions(arg, devices)
        }
        AK::Binary(_, a, b) => mentions(a, devices) || mentions(b, devices),
        AK::Expanded { terms, .. } => terms.iter().any(|a| mentions(a, devices)),
        _ => false,
    }
}

fn var_ty(t: &VarType) -> Ty {
    match t {
        VarType::Bool => Ty::Bool,
        VarType::Int { lo, hi } => Ty::Int { lo: *lo, hi: *hi },
        VarType::Enum { members } => Ty::Enum {
            members: members.clone(),
        },
    }
}

pub fn ty_name(t: &Ty) -> String {
    match t {
        Ty::Bool => "a boolean".into(),
        Ty::Int { .. } => "an integer".into(),
        Ty::Enum { members } => format!("an enum ({})", members.join(" | ")),
    }
}

fn param_type_name(t: &ParamType) -> String {
    match t {
        ParamType::Bool => "`true` or `false`".into(),
        ParamType::Int { lo, hi } if *lo == i64::MIN && *hi == i64::MAX => "an integer".into(),
        ParamType::Int { lo, hi } => format!("an integer in {lo}..{hi}"),
        ParamType::String => "a string".into(),
        ParamType::Duration => "a duration such as `30s`".into(),
        ParamType::Enum { members } => {
            let c: Vec<&str> = members.iter().map(String::as_str).collect();
            format!("one of {}", backticked(&c))
        }
    }
}

fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn treatment(w: ast::TreatmentWord) -> &'static str {
    match w {
        ast::TreatmentWord::Pass => "pass",
        ast::TreatmentWord::Drop => "drop",
        ast::TreatmentWord::Answer => "answer",
        ast::TreatmentWord::Authenticate => "authenticate",
    }
}

/// A secret is mounted under `/run/secrets/`, by an absolute path without `..`.
fn secret_path_ok(path: &str) -> bool {
    path.strip_prefix("/run/secrets/").is_some_and(|rest| {
        !rest.is_empty()
            && !rest.chars().any(char::is_control)
            && rest
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
    })
}
