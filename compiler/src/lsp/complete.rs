//! Completion: what may be written at the cursor, from the text before it and the names
//! of the last check that parsed.

use super::index::{Analysis, Ctx, Target};
use kalki_compiler::source::Origin;
use kalki_compiler::stdlib;
use kalki_lang::ast::{self, DeviceMember, Item, SiteMember};
use std::path::Path;

/// What a completion offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Keyword,
    Module,
    DeviceType,
    Umbox,
    Site,
    Device,
    Group,
    Node,
    State,
    Sensed,
    Command,
    Alert,
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub label: String,
    pub kind: Kind,
    pub detail: String,
}

/// The keywords of the language, as `lang/src/lexer.rs` spells them (a test holds the
/// two together).
#[rustfmt::skip]
pub const KEYWORDS: &[&str] = &[
    "import", "umbox", "image", "args", "env", "param", "emits", "mode", "traffic",
    "secret", "pass", "drop", "answer", "authenticate", "from", "to", "with", "device",
    "type", "sensed", "telemetry", "group", "tagged", "command", "publish", "map", "round",
    "commands", "lowering", "alerts", "states", "initial", "final", "chain", "on", "count",
    "within", "when", "for", "after", "quiet", "silent", "operator", "site", "bridge",
    "uplink", "node", "unknown", "hosts", "at", "mac", "port", "trusted", "rule", "then", "raise",
    "escalate", "assert", "reachable", "never", "and", "or", "not", "in", "last", "clock",
    "true", "false", "bool", "int", "enum", "string", "duration",
];

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The name that ends just before `end` (skipping spaces), and where it starts.
fn word_before(text: &str, end: usize) -> (&str, usize) {
    let trimmed = text[..end].trim_end();
    let start = trimmed
        .char_indices()
        .rev()
        .take_while(|(_, c)| is_name_char(*c))
        .last()
        .map_or(trimmed.len(), |(i, _)| i);
    (&trimmed[start..], start)
}

impl Analysis {
    /// Completions at a byte offset of the document read as module `m` (`None`: the
    /// document is not in the analysis; only keywords then). What is offered depends on
    /// what is cheap to know from the text before the cursor: after `dev.`, the device
    /// type's sensed variables and commands; after `dev ->`, `dev in`, `escalate dev to`
    /// or a transition's `->`, states; elsewhere every name in scope and the keywords.
    pub fn complete(&self, m: Option<usize>, text: &str, offset: usize) -> Vec<Candidate> {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let (_, start) = word_before(text, offset);
        let start = if text[start..offset].chars().all(is_name_char) {
            start
        } else {
            offset
        };
        let before = text[..start].trim_end();
        let mut out = Vec::new();
        if let Some(path) = import_path(text, start) {
            self.complete_import(m, &path, &mut out);
            return out;
        }
        let Some(m) = m else {
            keywords(&mut out);
            return out;
        };
        // The device type or site the cursor is in.
        let inside = self.ast(m).and_then(|f| {
            f.items.iter().enumerate().find_map(|(i, item)| match item {
                Item::DeviceType(t) if t.span.start <= offset && offset <= t.span.end => {
                    Some(Ctx::Type(m, i))
                }
                Item::Site(s) if s.span.start <= offset && offset <= s.span.end => {
                    Some(Ctx::Site(m, i))
                }
                _ => None,
            })
        });
        let device_type = |name: &str| -> Option<(usize, usize)> {
            let sites: Vec<usize> = match inside {
                Some(Ctx::Site(_, s)) => vec![s],
                _ => (0..self.ast(m).map_or(0, |f| f.items.len())).collect(),
            };
            sites
                .into_iter()
                .find_map(|s| match self.device(m, s, name)? {
                    Target::Device { member, .. } => self.type_of_device(m, s, member),
                    _ => None,
                })
        };
        if let Some(rest) = before.strip_suffix('.') {
            let (dev, _) = word_before(rest, rest.len());
            if let Some(ty) = device_type(dev) {
                self.type_members(ty, &[Kind::Sensed, Kind::Command], &mut out);
            }
            return out;
        }
        // `node ` in a device line: the site's nodes.
        if let (Some(Ctx::Site(_, s)), true) = (inside, before.ends_with(" node")) {
            if let Some(site) = self.site(m, s) {
                for x in &site.members {
                    if let SiteMember::Node(n) = x {
                        out.push(Candidate {
                            label: n.name.name.clone(),
                            kind: Kind::Node,
                            detail: format!("node: bridge {:?}", n.bridge.value),
                        });
                    }
                }
            }
            return out;
        }
        let after_state_word =
            before.ends_with("->") || [" in", " to"].iter().any(|w| before.ends_with(w));
        if after_state_word {
            let head = before.trim_end_matches("->").trim_end();
            let head = head
                .strip_suffix("in")
                .or_else(|| head.strip_suffix("to"))
                .unwrap_or(head);
            let (dev, _) = word_before(head, head.len());
            let ty = device_type(dev).or(match inside {
                Some(Ctx::Type(a, b)) => Some((a, b)),
                _ => None,
            });
            if let Some(ty) = ty {
                self.type_members(ty, &[Kind::State], &mut out);
                return out;
            }
        }
        keywords(&mut out);
        if let Some(scope) = self.program.scopes.get(m) {
            let mut names: Vec<(&String, Target)> = scope
                .names
                .iter()
                .filter_map(|(n, (r, _))| Some((n, Self::item_target(*r)?)))
                .collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            for (name, t) in names {
                let kind = match t {
                    Target::Umbox(..) => Kind::Umbox,
                    Target::DeviceType(..) => Kind::DeviceType,
                    _ => Kind::Site,
                };
                let detail = match kind {
                    Kind::Umbox => "µmbox",
                    Kind::DeviceType => "device type",
                    _ => "site",
                };
                out.push(Candidate {
                    label: name.clone(),
                    kind,
                    detail: detail.into(),
                });
            }
        }
        match inside {
            Some(Ctx::Type(a, b)) => self.type_members(
                (a, b),
                &[Kind::State, Kind::Sensed, Kind::Command, Kind::Alert],
                &mut out,
            ),
            Some(Ctx::Site(_, s)) => self.site_members(m, s, &mut out),
            None => {}
        }
        out
    }

    /// Modules after `import std::`, items after `import MODULE::` (of the standard
    /// library, or of a module this check read).
    fn complete_import(&self, m: Option<usize>, path: &[&str], out: &mut Vec<Candidate>) {
        match path {
            ["std"] => {
                for (name, _) in stdlib::MODULES {
                    if !name.contains('/') {
                        out.push(Candidate {
                            label: (*name).to_string(),
                            kind: Kind::Module,
                            detail: "standard library module".into(),
                        });
                    }
                }
            }
            ["std", module @ ..] => {
                if let Some(text) = stdlib::module(&module.join("/")) {
                    items(
                        &kalki_lang::parse(text).file,
                        &format!("std::{}", module.join("::")),
                        out,
                    );
                }
            }
            module => {
                let Some(from) = m.and_then(|m| self.program.modules.get(m)) else {
                    return;
                };
                let Origin::File(from) = &from.origin else {
                    return;
                };
                let mut want = from.parent().map(Path::to_path_buf).unwrap_or_default();
                want.extend(module.iter());
                want.set_extension("kalki");
                let found = self.program.modules.iter().find(|x| {
                    matches!(&x.origin, Origin::File(p) if *p == want
                        || std::fs::canonicalize(&want).is_ok_and(|w| *p == w))
                });
                if let Some(x) = found {
                    items(&x.ast, &module.join("::"), out);
                }
            }
        }
    }

    fn type_members(&self, (m, ty): (usize, usize), kinds: &[Kind], out: &mut Vec<Candidate>) {
        let Some(t) = self.device_type(m, ty) else {
            return;
        };
        let of = format!("of `{}`", t.name.name);
        let mut push = |kind: Kind, id: &ast::Ident, what: &str| {
            if kinds.contains(&kind) && !out.iter().any(|c| c.label == id.name && c.kind == kind) {
                out.push(Candidate {
                    label: id.name.clone(),
                    kind,
                    detail: format!("{what} {of}"),
                });
            }
        };
        for s in self.states(m, ty) {
            push(Kind::State, s, "state");
        }
        for x in &t.members {
            match x {
                DeviceMember::Sensed { name, .. } => push(Kind::Sensed, name, "sensed"),
                DeviceMember::Commands(c, _) | DeviceMember::LoweringCommands(c, _) => {
                    c.iter().for_each(|c| push(Kind::Command, c, "command"));
                }
                DeviceMember::Publish(p) => push(Kind::Command, &p.command, "command"),
                DeviceMember::Alerts(a, _) => a.iter().for_each(|a| push(Kind::Alert, a, "alert")),
                DeviceMember::Transition(tr) => {
                    if let ast::Trigger::Alert { alert, .. } = &tr.trigger {
                        push(Kind::Alert, alert, "alert");
                    }
                }
                _ => {}
            }
        }
    }

    fn site_members(&self, m: usize, s: usize, out: &mut Vec<Candidate>) {
        let Some(site) = self.site(m, s) else {
            return;
        };
        for x in &site.members {
            match x {
                SiteMember::Device(d) => out.push(Candidate {
                    label: d.name.name.clone(),
                    kind: Kind::Device,
                    detail: format!("device: {}", d.ty.name),
                }),
                SiteMember::Group(g) => out.push(Candidate {
                    label: g.name.name.clone(),
                    kind: Kind::Group,
                    detail: "group".into(),
                }),
                _ => {}
            }
        }
    }
}

/// The module path of an `import` being written up to `at`, when the cursor is after
/// `import A::B::` or inside its `{...}`: `["A", "B"]`.
fn import_path(text: &str, at: usize) -> Option<Vec<&str>> {
    let line = &text[text[..at].rfind('\n').map_or(0, |i| i + 1)..at];
    let rest = line.trim_start().strip_prefix("import")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let path = rest.split('{').next().unwrap_or(rest).trim();
    let path = path.strip_suffix("::")?;
    Some(path.split("::").map(str::trim).collect())
}

/// The importable items of a module: device types and µmboxes (sites are not imported).
fn items(file: &ast::File, module: &str, out: &mut Vec<Candidate>) {
    for item in &file.items {
        let (name, kind, what) = match item {
            Item::Umbox(u) => (&u.name.name, Kind::Umbox, "µmbox"),
            Item::DeviceType(t) => (&t.name.name, Kind::DeviceType, "device type"),
            _ => continue,
        };
        out.push(Candidate {
            label: name.clone(),
            kind,
            detail: format!("{what} in `{module}`"),
        });
    }
}

fn keywords(out: &mut Vec<Candidate>) {
    out.extend(KEYWORDS.iter().map(|k| Candidate {
        label: (*k).to_string(),
        kind: Kind::Keyword,
        detail: "keyword".into(),
    }));
}

#[cfg(test)]
mod tests {
    use super::KEYWORDS;
    use std::collections::BTreeSet;

    /// Every keyword the lexer knows is offered, and nothing else is called one.
    #[test]
    fn keywords_are_the_lexers() {
        let lexer = include_str!("../../../lang/src/lexer.rs");
        let from_lexer: BTreeSet<&str> = lexer
            .split("#[token(\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .filter(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
            .collect();
        assert!(
            from_lexer.len() > 50,
            "read too few keywords: {from_lexer:?}"
        );
        let ours: BTreeSet<&str> = KEYWORDS.iter().copied().collect();
        assert_eq!(ours, from_lexer);
    }
}
