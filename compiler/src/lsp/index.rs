//! What the server knows about the text: one checked program (the open document and
//! everything it imports) and, over its syntax trees, every name written in a module with
//! what it refers to. Go to definition is a look-up in this, hover (`hover.rs`) and
//! completion (`complete.rs`) are built on it; it reads the trees the checker built and
//! never re-parses.

use kalki_compiler::ir::Loc;
use kalki_compiler::resolve::{ItemRef, Program};
use kalki_compiler::source::Origin;
use kalki_compiler::Checked;
use kalki_lang::ast::{
    self, DeviceMember, Expr, ExprKind, GroupMembers, ImportNames, Item, SiteMember, Span,
    UmboxMember,
};

/// One check of an open document: the compiler's results and its resolved modules.
pub struct Analysis {
    pub checked: Checked,
    pub program: Program,
}

/// What a name refers to. Indices are modules of [`Analysis::program`] and items or
/// members of their syntax trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Module(usize),
    Umbox(usize, usize),
    DeviceType(usize, usize),
    Site(usize, usize),
    Device {
        m: usize,
        site: usize,
        member: usize,
    },
    Group {
        m: usize,
        site: usize,
        member: usize,
    },
    /// `node NAME { ... }` of a site spanning several nodes.
    Node {
        m: usize,
        site: usize,
        member: usize,
    },
    State {
        m: usize,
        ty: usize,
        name: String,
    },
    Sensed {
        m: usize,
        ty: usize,
        name: String,
    },
    /// A command of a device type (`commands`, `lowering commands`, `command ... publish`).
    Command {
        m: usize,
        ty: usize,
        name: String,
    },
    /// An alert a device type reacts to or raises: declared by the type (`alerts`), or
    /// emitted by a µmbox in scope (`emits`).
    Alert {
        m: usize,
        ty: usize,
        name: String,
    },
}

/// Where names are read in an expression: a device type's guard or a site's condition.
#[derive(Clone, Copy)]
pub(super) enum Ctx {
    Type(usize, usize),
    Site(usize, usize),
}

impl Analysis {
    /// The module read from this file (canonical path), if it was read.
    pub fn module_of(&self, path: &std::path::Path) -> Option<usize> {
        self.program
            .modules
            .iter()
            .position(|m| matches!(&m.origin, Origin::File(p) if p == path))
    }

    pub(super) fn ast(&self, m: usize) -> Option<&ast::File> {
        self.program.modules.get(m).map(|module| &module.ast)
    }

    pub fn text(&self, m: usize) -> &str {
        self.program
            .modules
            .get(m)
            .map_or("", |module| &self.checked.sources.get(module.source).text)
    }

    pub(super) fn slice(&self, m: usize, span: Span) -> &str {
        self.text(m).get(span.start..span.end).unwrap_or("")
    }

    pub(super) fn item_target(r: ItemRef) -> Option<Target> {
        match r {
            ItemRef::Umbox(a, b) => Some(Target::Umbox(a, b)),
            ItemRef::DeviceType(a, b) => Some(Target::DeviceType(a, b)),
            ItemRef::Site(a, b) => Some(Target::Site(a, b)),
            ItemRef::Poisoned => None,
        }
    }

    /// A top-level name as module `m` sees it (declared or imported).
    fn in_scope(&self, m: usize, name: &str) -> Option<Target> {
        let (r, _) = self.program.scopes.get(m)?.names.get(name)?;
        Self::item_target(*r)
    }

    /// An item module `m` itself declares.
    fn declared(&self, m: usize, name: &str) -> Option<Target> {
        self.ast(m)?
            .items
            .iter()
            .enumerate()
            .find_map(|(i, item)| match item {
                Item::Umbox(u) if u.name.name == name => Some(Target::Umbox(m, i)),
                Item::DeviceType(t) if t.name.name == name => Some(Target::DeviceType(m, i)),
                Item::Site(s) if s.name.name == name => Some(Target::Site(m, i)),
                _ => None,
            })
    }

    pub fn device_type(&self, m: usize, i: usize) -> Option<&ast::DeviceType> {
        match self.ast(m)?.items.get(i)? {
            Item::DeviceType(t) => Some(t),
            _ => None,
        }
    }

    pub fn umbox(&self, m: usize, i: usize) -> Option<&ast::Umbox> {
        match self.ast(m)?.items.get(i)? {
            Item::Umbox(u) => Some(u),
            _ => None,
        }
    }

    pub fn site(&self, m: usize, i: usize) -> Option<&ast::Site> {
        match self.ast(m)?.items.get(i)? {
            Item::Site(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn device_decl(
        &self,
        m: usize,
        site: usize,
        member: usize,
    ) -> Option<&ast::DeviceDecl> {
        match self.site(m, site)?.members.get(member)? {
            SiteMember::Device(d) => Some(d),
            _ => None,
        }
    }

    /// A device of a site by name: `cam`, or `plug7` of `device plug[1..30]`.
    pub(super) fn device(&self, m: usize, site: usize, name: &str) -> Option<Target> {
        let s = self.site(m, site)?;
        s.members.iter().enumerate().find_map(|(member, x)| {
            let SiteMember::Device(d) = x else {
                return None;
            };
            let hit = d.name.name == name
                || d.range.is_some_and(|(lo, hi, _)| {
                    name.strip_prefix(d.name.name.as_str())
                        .and_then(|n| n.parse::<i64>().ok())
                        .is_some_and(|n| (lo..=hi).contains(&n))
                });
            hit.then_some(Target::Device { m, site, member })
        })
    }

    fn group(&self, m: usize, site: usize, name: &str) -> Option<Target> {
        let s = self.site(m, site)?;
        s.members
            .iter()
            .enumerate()
            .find_map(|(member, x)| match x {
                SiteMember::Group(g) if g.name.name == name => {
                    Some(Target::Group { m, site, member })
                }
                _ => None,
            })
    }

    fn node(&self, m: usize, site: usize, name: &str) -> Option<Target> {
        let s = self.site(m, site)?;
        s.members
            .iter()
            .enumerate()
            .find_map(|(member, x)| match x {
                SiteMember::Node(n) if n.name.name == name => {
                    Some(Target::Node { m, site, member })
                }
                _ => None,
            })
    }

    /// The device type of a device, as its module sees the name.
    pub fn type_of_device(&self, m: usize, site: usize, member: usize) -> Option<(usize, usize)> {
        let d = self.device_decl(m, site, member)?;
        match self.in_scope(m, &d.ty.name)? {
            Target::DeviceType(a, b) => Some((a, b)),
            _ => None,
        }
    }

    pub fn states(&self, m: usize, ty: usize) -> Vec<&ast::Ident> {
        let Some(t) = self.device_type(m, ty) else {
            return Vec::new();
        };
        t.members
            .iter()
            .filter_map(|x| match x {
                DeviceMember::States(s, _) => Some(s.iter()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn state(&self, (m, ty): (usize, usize), name: &str) -> Option<Target> {
        self.states(m, ty)
            .iter()
            .any(|s| s.name == name)
            .then(|| Target::State {
                m,
                ty,
                name: name.to_string(),
            })
    }

    fn sensed(&self, (m, ty): (usize, usize), name: &str) -> Option<Target> {
        self.device_type(m, ty)?
            .members
            .iter()
            .any(|x| matches!(x, DeviceMember::Sensed { name: n, .. } if n.name == name))
            .then(|| Target::Sensed {
                m,
                ty,
                name: name.to_string(),
            })
    }

    /// A command's declaration in a device type.
    fn command_decl(&self, (m, ty): (usize, usize), name: &str) -> Option<Span> {
        self.device_type(m, ty)?
            .members
            .iter()
            .find_map(|x| match x {
                DeviceMember::Commands(c, _) | DeviceMember::LoweringCommands(c, _) => {
                    c.iter().find(|c| c.name == name).map(|c| c.span)
                }
                DeviceMember::Publish(p) if p.command.name == name => Some(p.command.span),
                _ => None,
            })
    }

    fn command(&self, (m, ty): (usize, usize), name: &str) -> Option<Target> {
        self.command_decl((m, ty), name).map(|_| Target::Command {
            m,
            ty,
            name: name.to_string(),
        })
    }

    /// Where an alert a device type names comes from: its own `alerts`, else the
    /// `emits` of a µmbox in scope of the type's module.
    pub(super) fn alert_decl(&self, (m, ty): (usize, usize), name: &str) -> Option<(usize, Span)> {
        let own = self
            .device_type(m, ty)?
            .members
            .iter()
            .find_map(|x| match x {
                DeviceMember::Alerts(a, _) => a.iter().find(|a| a.name == name).map(|a| a.span),
                _ => None,
            });
        if let Some(span) = own {
            return Some((m, span));
        }
        let scope = self.program.scopes.get(m)?;
        let mut umboxes: Vec<(usize, usize)> = scope
            .names
            .values()
            .filter_map(|(r, _)| match r {
                ItemRef::Umbox(a, b) => Some((*a, *b)),
                _ => None,
            })
            .collect();
        umboxes.sort_unstable();
        umboxes.into_iter().find_map(|(um, ui)| {
            self.umbox(um, ui)?.members.iter().find_map(|x| match x {
                UmboxMember::Emits(e, _) => e.iter().find(|e| e.name == name).map(|e| (um, e.span)),
                _ => None,
            })
        })
    }

    fn alert(&self, (m, ty): (usize, usize), name: &str) -> Option<Target> {
        self.alert_decl((m, ty), name).map(|_| Target::Alert {
            m,
            ty,
            name: name.to_string(),
        })
    }

    /// Where a target is declared.
    pub fn definition(&self, t: &Target) -> Option<Loc> {
        let (m, span) = match t {
            Target::Command { .. } | Target::Alert { .. } => self.definition_span(t)?,
            Target::Module(m) => (*m, Span::new(0, 0)),
            Target::Umbox(m, i) => (*m, self.umbox(*m, *i)?.name.span),
            Target::DeviceType(m, i) => (*m, self.device_type(*m, *i)?.name.span),
            Target::Site(m, i) => (*m, self.site(*m, *i)?.name.span),
            Target::Device { m, site, member } => {
                (*m, self.device_decl(*m, *site, *member)?.name.span)
            }
            Target::Group { m, site, member } => {
                match self.site(*m, *site)?.members.get(*member)? {
                    SiteMember::Group(g) => (*m, g.name.span),
                    _ => return None,
                }
            }
            Target::Node { m, site, member } => {
                match self.site(*m, *site)?.members.get(*member)? {
                    SiteMember::Node(n) => (*m, n.name.span),
                    _ => return None,
                }
            }
            Target::State { m, ty, name } => (
                *m,
                self.states(*m, *ty)
                    .into_iter()
                    .find(|s| &s.name == name)?
                    .span,
            ),
            Target::Sensed { m, ty, name } => (
                *m,
                self.device_type(*m, *ty)?
                    .members
                    .iter()
                    .find_map(|x| match x {
                        DeviceMember::Sensed { name: n, .. } if &n.name == name => Some(n.span),
                        _ => None,
                    })?,
            ),
        };
        let source = self.program.modules.get(m)?.source;
        Some(Loc::new(source, span))
    }

    fn definition_span(&self, t: &Target) -> Option<(usize, Span)> {
        match t {
            Target::Command { m, ty, name } => Some((*m, self.command_decl((*m, *ty), name)?)),
            Target::Alert { m, ty, name } => self.alert_decl((*m, *ty), name),
            _ => None,
        }
    }

    /// Every name written in module `m` that refers to something, with what it refers
    /// to, declarations included.
    pub fn occurrences(&self, m: usize) -> Vec<(Span, Target)> {
        let mut out = Vec::new();
        let Some(module) = self.program.modules.get(m) else {
            return out;
        };
        for (imp, target) in &module.imports {
            let Some(t) = *target else { continue };
            if let Some((a, b)) = imp.module.first().zip(imp.module.last()) {
                out.push((a.span.to(b.span), Target::Module(t)));
            }
            if let ImportNames::Some(names) = &imp.names {
                for n in names {
                    if let Some(x) = self.declared(t, &n.name) {
                        out.push((n.span, x));
                    }
                }
            }
        }
        for (i, item) in module.ast.items.iter().enumerate() {
            match item {
                Item::Import(_) => {}
                Item::Umbox(u) => out.push((u.name.span, Target::Umbox(m, i))),
                Item::DeviceType(t) => self.type_refs(m, i, t, &mut out),
                Item::Site(s) => self.site_refs(m, i, s, &mut out),
            }
        }
        out
    }

    fn type_refs(&self, m: usize, i: usize, t: &ast::DeviceType, out: &mut Vec<(Span, Target)>) {
        out.push((t.name.span, Target::DeviceType(m, i)));
        let state = |id: &ast::Ident, out: &mut Vec<(Span, Target)>| {
            if let Some(x) = self.state((m, i), &id.name) {
                out.push((id.span, x));
            }
        };
        for x in &t.members {
            match x {
                DeviceMember::Sensed { name, .. } => {
                    if let Some(s) = self.sensed((m, i), &name.name) {
                        out.push((name.span, s));
                    }
                }
                DeviceMember::States(list, _) | DeviceMember::Final(list, _) => {
                    list.iter().for_each(|s| state(s, out));
                }
                DeviceMember::Commands(list, _) | DeviceMember::LoweringCommands(list, _) => {
                    for c in list {
                        out.extend(self.command((m, i), &c.name).map(|x| (c.span, x)));
                    }
                }
                DeviceMember::Publish(p) => {
                    out.extend(
                        self.command((m, i), &p.command.name)
                            .map(|x| (p.command.span, x)),
                    );
                }
                DeviceMember::Alerts(list, _) => {
                    for a in list {
                        out.extend(self.alert((m, i), &a.name).map(|x| (a.span, x)));
                    }
                }
                DeviceMember::Initial(s) => state(s, out),
                DeviceMember::StateBlock(b) => {
                    state(&b.state, out);
                    for e in b.chain.iter().flat_map(|c| &c.entries) {
                        if let Some(u) = self.in_scope(m, &e.umbox.name) {
                            out.push((e.umbox.span, u));
                        }
                    }
                }
                DeviceMember::Transition(tr) => {
                    state(&tr.from, out);
                    state(&tr.to, out);
                    match &tr.trigger {
                        ast::Trigger::When { cond, .. } => {
                            self.expr_refs(cond, Ctx::Type(m, i), out);
                        }
                        ast::Trigger::Alert { alert, .. } => {
                            out.extend(self.alert((m, i), &alert.name).map(|x| (alert.span, x)));
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }

    fn site_refs(&self, m: usize, si: usize, s: &ast::Site, out: &mut Vec<(Span, Target)>) {
        out.push((s.name.span, Target::Site(m, si)));
        let device = |id: &ast::Ident, out: &mut Vec<(Span, Target)>| {
            let x = self.device(m, si, &id.name)?;
            out.push((id.span, x.clone()));
            match x {
                Target::Device { member, .. } => self.type_of_device(m, si, member),
                _ => None,
            }
        };
        let state_of = |ty: Option<(usize, usize)>, id: &ast::Ident, out: &mut Vec<_>| {
            if let Some(x) = ty.and_then(|ty| self.state(ty, &id.name)) {
                out.push((id.span, x));
            }
        };
        for (member, x) in s.members.iter().enumerate() {
            match x {
                SiteMember::Device(d) => {
                    out.push((
                        d.name.span,
                        Target::Device {
                            m,
                            site: si,
                            member,
                        },
                    ));
                    if let Some(t) = self.in_scope(m, &d.ty.name) {
                        out.push((d.ty.span, t));
                    }
                    if let Some(n) = &d.node {
                        out.extend(self.node(m, si, &n.name).map(|x| (n.span, x)));
                    }
                }
                SiteMember::Node(n) => {
                    out.push((
                        n.name.span,
                        Target::Node {
                            m,
                            site: si,
                            member,
                        },
                    ));
                }
                SiteMember::Group(g) => {
                    out.push((
                        g.name.span,
                        Target::Group {
                            m,
                            site: si,
                            member,
                        },
                    ));
                    match &g.members {
                        GroupMembers::OfType(t) => {
                            if let Some(x) = self.in_scope(m, &t.name) {
                                out.push((t.span, x));
                            }
                        }
                        GroupMembers::Listed(ds) => {
                            for d in ds {
                                device(d, out);
                            }
                        }
                    }
                }
                SiteMember::Rule(r) => {
                    if let Some((_, g)) = &r.each {
                        if let Some(x) = self.group(m, si, &g.name) {
                            out.push((g.span, x));
                        }
                    }
                    self.expr_refs(&r.cond, Ctx::Site(m, si), out);
                    for a in &r.actions {
                        match a {
                            ast::Action::Goto {
                                device: d, state, ..
                            }
                            | ast::Action::Escalate {
                                device: d, state, ..
                            } => {
                                let ty = device(d, out);
                                state_of(ty, state, out);
                            }
                            ast::Action::Command {
                                device: d, command, ..
                            } => {
                                let ty = device(d, out);
                                let x = ty.and_then(|ty| self.command(ty, &command.name));
                                out.extend(x.map(|x| (command.span, x)));
                            }
                            ast::Action::Raise {
                                device: d, alert, ..
                            } => {
                                let ty = device(d, out);
                                let x = ty.and_then(|ty| self.alert(ty, &alert.name));
                                out.extend(x.map(|x| (alert.span, x)));
                            }
                        }
                    }
                }
                SiteMember::Assert(a) => self.expr_refs(&a.cond, Ctx::Site(m, si), out),
                SiteMember::TrafficAssert(a) => {
                    let ty = device(&a.device, out);
                    for st in &a.states {
                        state_of(ty, st, out);
                    }
                }
                SiteMember::Bridge { .. } | SiteMember::UnknownHosts(..) => {}
            }
        }
    }

    /// Names in an expression; iterative, as conditions may nest deeply.
    fn expr_refs(&self, e: &Expr, ctx: Ctx, out: &mut Vec<(Span, Target)>) {
        let mut stack = vec![e];
        while let Some(e) = stack.pop() {
            match (&e.kind, ctx) {
                (ExprKind::Name(id), Ctx::Type(m, t)) => {
                    out.extend(self.sensed((m, t), &id.name).map(|x| (id.span, x)));
                }
                (ExprKind::Name(id), Ctx::Site(m, s)) => {
                    out.extend(self.device(m, s, &id.name).map(|x| (id.span, x)));
                }
                (ExprKind::Field(d, v), Ctx::Site(m, s))
                | (ExprKind::InState(d, v), Ctx::Site(m, s)) => {
                    let Some(x) = self.device(m, s, &d.name) else {
                        continue;
                    };
                    out.push((d.span, x.clone()));
                    let Target::Device { member, .. } = x else {
                        continue;
                    };
                    let Some(ty) = self.type_of_device(m, s, member) else {
                        continue;
                    };
                    let found = if matches!(e.kind, ExprKind::Field(..)) {
                        self.sensed(ty, &v.name)
                    } else {
                        self.state(ty, &v.name)
                    };
                    out.extend(found.map(|x| (v.span, x)));
                }
                (ExprKind::Aggregate { arg, .. }, _) | (ExprKind::Unary(_, arg), _) => {
                    stack.push(arg);
                }
                (ExprKind::Quantified { body, group, .. }, _) => {
                    if let Ctx::Site(m, s) = ctx {
                        out.extend(self.group(m, s, &group.name).map(|x| (group.span, x)));
                    }
                    stack.push(body);
                }
                (ExprKind::Binary(_, a, b), _) => {
                    stack.push(a);
                    stack.push(b);
                }
                (ExprKind::Expanded { terms, .. }, _) => stack.extend(terms.iter()),
                _ => {}
            }
        }
    }

    /// The name at a byte offset of module `m` (the cursor may sit just after it).
    pub fn at(&self, m: usize, offset: usize) -> Option<(Span, Target)> {
        self.occurrences(m)
            .into_iter()
            .filter(|(s, _)| s.start <= offset && offset <= s.end)
            .min_by_key(|(s, _)| s.len())
    }
}

#[cfg(test)]
mod lookups {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use kalki_compiler::source::{LoadError, SourceLoader};
    use std::path::{Path, PathBuf};

    struct One(&'static str);

    impl SourceLoader for One {
        fn read_file(&self, _: &Path) -> Result<String, LoadError> {
            Ok(self.0.to_string())
        }
    }

    const SRC: &str = r#"import std::umboxes::{sniffer}
device type Plug {
    sensed power: int in 0..4000
    commands turn_off
    states on_ < off
    initial on_
    on_ { chain [sniffer] }
    off { chain [drop] }
    on_ -> off when power > 3000
    on_ -> off on port_scan
}
site home {
    bridge "br0" uplink "eth0"
    device plug[1..3]: Plug at 10.0.0.1.. port "p{n}"
    group plugs: Plug
    rule cut when plug2.power > 2000 then plug2 -> off, plug2.turn_off
    rule all_off when any(p in plugs: p in off) then plug1 -> off
}
"#;

    fn analysis() -> Analysis {
        let (checked, program) =
            kalki_compiler::check_program(&[PathBuf::from("/p/home.kalki")], &One(SRC));
        assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
        Analysis { checked, program }
    }

    fn at(a: &Analysis, needle: &str, nth: usize) -> Target {
        let offset = SRC.match_indices(needle).nth(nth).unwrap().0 + 1;
        a.at(0, offset)
            .unwrap_or_else(|| panic!("nothing at {needle}"))
            .1
    }

    #[test]
    fn names_resolve_to_their_declarations() {
        let a = analysis();
        // A member of a device range is the range's declaration.
        let plug = at(&a, "plug2.power", 0);
        assert!(matches!(plug, Target::Device { member: 1, .. }), "{plug:?}");
        let power = at(&a, "power > 2000", 0);
        let def = a.definition(&power).unwrap();
        assert_eq!(&SRC[def.span.start..def.span.end], "power");
        assert_eq!(def.span.start, SRC.find("power:").unwrap());
        // A state named after a device's type, in an action and inside `any`.
        let off = at(&a, "off, plug2", 0);
        assert!(
            matches!(&off, Target::State { name, .. } if name == "off"),
            "{off:?}"
        );
        let group = at(&a, "plugs:", 1);
        assert!(matches!(group, Target::Group { .. }), "{group:?}");
        // An imported µmbox is the standard library's declaration.
        let sniffer = at(&a, "sniffer]", 0);
        let Target::Umbox(m, _) = sniffer else {
            panic!("{sniffer:?}")
        };
        assert!(matches!(&a.program.modules[m].origin, Origin::Std(n) if n == "umboxes"));
        // A command through a device, and an alert a µmbox of the chain emits.
        let cmd = a.definition(&at(&a, "turn_off\n", 1)).unwrap();
        assert_eq!(cmd.span.start, SRC.find("turn_off").unwrap());
        let alert = at(&a, "port_scan", 0);
        let def = a.definition(&alert).unwrap();
        let std = &a.checked.sources.get(def.source).text;
        assert_eq!(&std[def.span.start..def.span.end], "port_scan");
        let text = a.hover(&alert).unwrap();
        assert_eq!(text, "alert `port_scan`, emitted by µmbox `sniffer`");
    }

    /// Every offset of the text, and of broken texts, answers without panicking.
    #[test]
    fn no_offset_panics() {
        let a = analysis();
        let broken = format!(
            "// µ😀\n{}\n  cam. -> import std::um",
            &SRC[..SRC.len() / 2]
        );
        for text in [SRC, broken.as_str(), "", "µ", "import std::"] {
            for offset in 0..=text.len() + 2 {
                let _ = a.complete(Some(0), text, offset);
                let _ = a.complete(None, text, offset);
                let pos = crate::lsp::text::position(text, offset);
                let back = crate::lsp::text::offset(text, pos);
                assert!(back <= text.len() && text.is_char_boundary(back));
            }
        }
        for offset in 0..=SRC.len() + 2 {
            if let Some((_, t)) = a.at(0, offset) {
                let _ = a.hover(&t);
                assert!(a.definition(&t).is_some(), "{t:?}");
            }
        }
    }

    #[test]
    fn hover_on_a_state_and_a_type() {
        let a = analysis();
        let text = a.hover(&at(&a, "off {", 0)).unwrap();
        assert!(
            text.contains("2 of 2") && text.contains("chain [drop]"),
            "{text}"
        );
        let text = a.hover(&at(&a, "Plug at", 0)).unwrap();
        let (on, off) = (text.find("`on_`").unwrap(), text.find("`off`").unwrap());
        assert!(on < off, "{text}");
        assert!(
            text.contains("sensed: `sensed power: int in 0..4000`"),
            "{text}"
        );
    }
}
