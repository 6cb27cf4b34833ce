//! Hover texts: what a name refers to, in Markdown, from the declarations' own text.

use super::index::{Analysis, Target};
use kalki_lang::ast::{self, DeviceMember, Item, SiteMember, UmboxMember};
use std::fmt::Write as _;

impl Analysis {
    /// Markdown describing a target.
    pub fn hover(&self, t: &Target) -> Option<String> {
        let mut out = String::new();
        match t {
            Target::Module(m) => {
                let module = self.program.modules.get(*m)?;
                let name = &self.checked.sources.get(module.source).name;
                let _ = write!(out, "module `{name}`");
            }
            Target::DeviceType(m, i) => self.hover_type(*m, *i, &mut out)?,
            Target::Umbox(m, i) => self.hover_umbox(*m, *i, &mut out)?,
            Target::Site(m, i) => {
                let s = self.site(*m, *i)?;
                let devices = s
                    .members
                    .iter()
                    .filter(|x| matches!(x, SiteMember::Device(_)))
                    .count();
                let _ = write!(
                    out,
                    "```kalki\nsite {}\n```\n{devices} device declarations",
                    s.name.name
                );
            }
            Target::Device { m, site, member } => {
                let d = self.device_decl(*m, *site, *member)?;
                let _ = writeln!(out, "```kalki\n{}\n```", self.slice(*m, d.span).trim());
                if let Some((tm, ti)) = self.type_of_device(*m, *site, *member) {
                    let names: Vec<String> = self
                        .states(tm, ti)
                        .iter()
                        .map(|s| format!("`{}`", s.name))
                        .collect();
                    let _ = write!(
                        out,
                        "device of type `{}`; states {}",
                        d.ty.name,
                        names.join(" < ")
                    );
                }
            }
            Target::Group { m, site, member } => {
                let SiteMember::Group(g) = self.site(*m, *site)?.members.get(*member)? else {
                    return None;
                };
                let _ = write!(out, "```kalki\n{}\n```", self.slice(*m, g.span).trim());
            }
            Target::Node { m, site, member } => {
                let s = self.site(*m, *site)?;
                let SiteMember::Node(n) = s.members.get(*member)? else {
                    return None;
                };
                let on = s
                    .members
                    .iter()
                    .filter(|x| matches!(x, SiteMember::Device(d) if d.node.as_ref().is_some_and(|x| x.name == n.name.name)))
                    .count();
                let _ = write!(
                    out,
                    "```kalki\n{}\n```\nnode of site `{}`: {on} device{} attached",
                    self.slice(*m, n.span).trim(),
                    s.name.name,
                    if on == 1 { "" } else { "s" }
                );
            }
            Target::State { m, ty, name } => {
                let t = self.device_type(*m, *ty)?;
                let states = self.states(*m, *ty);
                let pos = states.iter().position(|s| &s.name == name)?;
                let _ = writeln!(
                    out,
                    "state `{name}` of `{}` ({} of {} in posture order, least restrictive first)",
                    t.name.name,
                    pos + 1,
                    states.len()
                );
                if let Some(chain) = self.chain_text(*m, t, name) {
                    let _ = write!(out, "\n```kalki\nchain {chain}\n```");
                }
            }
            Target::Command { m, ty, name } => {
                let t = self.device_type(*m, *ty)?;
                let lowering = t.members.iter().any(|x| {
                    matches!(x, DeviceMember::LoweringCommands(c, _) if c.iter().any(|c| &c.name == name))
                });
                let publish = t.members.iter().find_map(|x| match x {
                    DeviceMember::Publish(p) if &p.command.name == name => Some(p.span),
                    _ => None,
                });
                let _ = write!(out, "command `{name}` of `{}`", t.name.name);
                if lowering {
                    let _ = write!(out, " (lowering: it lowers the device's protection)");
                }
                if let Some(span) = publish {
                    let _ = write!(out, "\n```kalki\n{}\n```", squash(self.slice(*m, span)));
                }
            }
            Target::Alert { m, ty, name } => {
                let t = self.device_type(*m, *ty)?;
                let (dm, _) = self.alert_decl((*m, *ty), name)?;
                let by = if dm == *m
                    && t.members.iter().any(|x| {
                        matches!(x, DeviceMember::Alerts(a, _) if a.iter().any(|a| &a.name == name))
                    }) {
                    format!("declared by `{}`", t.name.name)
                } else {
                    let loc = self.definition(&Target::Alert {
                        m: *m,
                        ty: *ty,
                        name: name.clone(),
                    })?;
                    let umbox = self
                        .ast(dm)?
                        .items
                        .iter()
                        .find_map(|i| match i {
                            Item::Umbox(u) if u.span.start <= loc.span.start && loc.span.end <= u.span.end => {
                                Some(u.name.name.clone())
                            }
                            _ => None,
                        })
                        .unwrap_or_default();
                    format!("emitted by µmbox `{umbox}`")
                };
                let _ = write!(out, "alert `{name}`, {by}");
            }
            Target::Sensed { m, ty, name } => {
                let t = self.device_type(*m, *ty)?;
                let span = t.members.iter().find_map(|x| match x {
                    DeviceMember::Sensed { name: n, span, .. } if &n.name == name => Some(*span),
                    _ => None,
                })?;
                let _ = write!(
                    out,
                    "```kalki\n{}\n```\nsensed by `{}`",
                    self.slice(*m, span).trim(),
                    t.name.name
                );
            }
        }
        Some(out)
    }

    pub(super) fn chain_text(&self, m: usize, t: &ast::DeviceType, state: &str) -> Option<String> {
        t.members.iter().find_map(|x| match x {
            DeviceMember::StateBlock(b) if b.state.name == state => b
                .chain
                .as_ref()
                .map(|c| squash(self.slice(m, c.span).trim_start_matches("chain").trim())),
            _ => None,
        })
    }

    pub(super) fn hover_type(&self, m: usize, i: usize, out: &mut String) -> Option<()> {
        let t = self.device_type(m, i)?;
        let _ = writeln!(out, "```kalki\ndevice type {}\n```", t.name.name);
        let _ = writeln!(out, "states, least restrictive first:\n");
        for s in self.states(m, i) {
            let chain = self
                .chain_text(m, t, &s.name)
                .unwrap_or_else(|| "no chain".to_string());
            let _ = writeln!(out, "- `{}`: `{chain}`", s.name);
        }
        let mut sensed = Vec::new();
        let mut commands = Vec::new();
        let mut alerts = Vec::new();
        for x in &t.members {
            match x {
                DeviceMember::Sensed { span, .. } => {
                    sensed.push(format!("`{}`", squash(self.slice(m, *span))));
                }
                DeviceMember::Commands(c, _) | DeviceMember::LoweringCommands(c, _) => {
                    commands.extend(c.iter().map(|c| format!("`{}`", c.name)));
                }
                DeviceMember::Publish(p) => commands.push(format!("`{}`", p.command.name)),
                DeviceMember::Alerts(a, _) => {
                    alerts.extend(a.iter().map(|a| format!("`{}`", a.name)))
                }
                _ => {}
            }
        }
        for (what, list) in [
            ("sensed", sensed),
            ("commands", commands),
            ("alerts", alerts),
        ] {
            if !list.is_empty() {
                let _ = write!(out, "\n{what}: {}\n", list.join(", "));
            }
        }
        Some(())
    }

    pub(super) fn hover_umbox(&self, m: usize, i: usize, out: &mut String) -> Option<()> {
        let u = self.umbox(m, i)?;
        let _ = writeln!(out, "```kalki\numbox {}\n```", u.name.name);
        let mut params = Vec::new();
        let mut rest = Vec::new();
        for x in &u.members {
            match x {
                UmboxMember::Param(p) => {
                    params.push(format!("- `{}`", squash(self.slice(m, p.span))))
                }
                UmboxMember::Emits(e, _) => {
                    let names: Vec<String> = e.iter().map(|e| format!("`{}`", e.name)).collect();
                    rest.push(format!("emits {}", names.join(", ")));
                }
                UmboxMember::Mode(id) => rest.push(format!("mode `{}`", id.name)),
                UmboxMember::Traffic(t) => {
                    rest.push(format!("```kalki\n{}\n```", self.slice(m, t.span).trim()));
                }
                _ => {}
            }
        }
        if params.is_empty() {
            let _ = writeln!(out, "no parameters");
        } else {
            let _ = writeln!(out, "parameters:\n\n{}", params.join("\n"));
        }
        for r in rest {
            let _ = write!(out, "\n{r}\n");
        }
        Some(())
    }
}

/// Source text on one line: runs of whitespace become one space.
pub(super) fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
