//! The device types' state machines as Graphviz DOT (`kalkic graph`): one cluster per
//! type, states ranked left to right in posture order and filled from green (least
//! restrictive) to red (most restrictive), transitions labelled with their triggers, and
//! the moves of site rules as dashed edges.
//!
//! The output is deterministic: types are sorted by name, edges by their end points.

use crate::diag::did_you_mean;
use crate::ir::{Chain, Model, StateId, TypeId};
use crate::verify::pinned_state;
use crate::verify::{trigger_text, types_to_check};
use kalki_model::contract::{self, Contract};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Why no graph could be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// `--device-type NAME` names none of the types that would be drawn.
    #[error("unknown device type `{name}`")]
    UnknownType {
        name: String,
        /// The names of the types that can be drawn, sorted.
        known: Vec<String>,
    },
}

impl GraphError {
    /// Advice for the user: a close name, and the names that are known.
    pub fn help(&self) -> String {
        match self {
            GraphError::UnknownType { name, known } => {
                let list = if known.is_empty() {
                    "this policy declares and uses no device types".to_string()
                } else {
                    let names: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                    format!("device types: {}", names.join(", "))
                };
                match did_you_mean(name, known.iter().map(String::as_str)) {
                    Some(hint) => format!("{hint} ({list})"),
                    None => list,
                }
            }
        }
    }
}

/// The state machines of the device types declared in the root files or used by a site
/// (the types the verifier checks), or only of the type named `only`, as one `digraph`.
pub fn state_machines(model: &Model, only: Option<&str>) -> Result<String, GraphError> {
    let mut types: Vec<(&str, TypeId)> = types_to_check(model)
        .into_iter()
        .map(|id| (model.device_type(id).name.as_str(), id))
        .collect();
    types.sort();
    if let Some(name) = only {
        if !types.iter().any(|(n, _)| *n == name) {
            let known: BTreeSet<&str> = types.iter().map(|(n, _)| *n).collect();
            return Err(GraphError::UnknownType {
                name: name.to_string(),
                known: known.into_iter().map(str::to_string).collect(),
            });
        }
    }

    let mut out = String::new();
    out.push_str("digraph state_machines {\n");
    out.push_str("    rankdir=LR;\n");
    out.push_str("    fontname=\"Helvetica\";\n");
    out.push_str("    node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n");
    out.push_str("    edge [fontname=\"Helvetica\", fontsize=10];\n");
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, id) in types {
        // Two types of one name (declared in different files) get distinct node names;
        // `~` cannot occur in a name.
        let n = seen.entry(name).or_insert(0);
        *n += 1;
        let key = if *n == 1 {
            name.to_string()
        } else {
            format!("{name}~{n}")
        };
        if only.is_none_or(|o| o == name) {
            cluster(&mut out, model, id, &key);
        }
    }
    out.push_str("}\n");
    Ok(out)
}

/// One `subgraph cluster_...` for the type `id`, whose nodes are named `KEY.STATE`.
fn cluster(out: &mut String, model: &Model, id: TypeId, key: &str) {
    let ty = model.device_type(id);
    let node = |s: StateId| quote(&format!("{key}.{}", ty.state(s).name));
    let _ = writeln!(
        out,
        "\n    subgraph {} {{",
        quote(&format!("cluster_{key}"))
    );
    let _ = writeln!(out, "        label={};", quote(&ty.name));
    out.push_str("        labeljust=l;\n        style=rounded;\n        color=\"gray60\";\n");

    // States, in posture order.
    for (i, s) in ty.states.iter().enumerate() {
        let sid = StateId::from_index(i);
        let mut style = "rounded,filled".to_string();
        let mut extra = String::new();
        if sid == ty.initial {
            style.push_str(",bold");
            extra.push_str(", penwidth=2");
        }
        if s.is_final {
            extra.push_str(", peripheries=2");
        }
        // What the chain lets through, from its contracts: the colour is the posture's
        // rank, this line is what it protects.
        let label = match &s.chain {
            Some(chain) => {
                let contracts = model.chain_contracts(chain);
                let refs: Vec<&Contract> = contracts.iter().collect();
                format!(
                    "{}\n{}\n{}",
                    s.name,
                    chain_text(model, chain),
                    contract::summary(&refs, !matches!(chain, crate::ir::Chain::Drop)).line()
                )
            }
            // A type off the switch: no chain, no traffic on the switch to speak of.
            None => format!("{}\noff the switch", s.name),
        };
        let _ = writeln!(
            out,
            "        {} [label={}, fillcolor={}, style={}{extra}];",
            node(sid),
            quote(&label),
            quote(&posture_colour(i, ty.states.len())),
            quote(&style),
        );
    }
    let start = quote(&format!("{key} initial"));
    let _ = writeln!(
        out,
        "        {start} [shape=point, label=\"\", width=0.12, style=filled, fillcolor=black];"
    );

    // Posture order as invisible edges: each state one rank right of the one before.
    for i in 1..ty.states.len() {
        let _ = writeln!(
            out,
            "        {} -> {} [style=invis, weight=10];",
            node(StateId::from_index(i - 1)),
            node(StateId::from_index(i)),
        );
    }
    let _ = writeln!(out, "        {start} -> {};", node(ty.initial));

    // Transitions, one edge per pair of states, one line per trigger in source order.
    let mut transitions: BTreeMap<(StateId, StateId), Vec<String>> = BTreeMap::new();
    for t in &ty.transitions {
        transitions
            .entry((t.from, t.to))
            .or_default()
            .push(trigger_text(&t.trigger));
    }
    for ((from, to), labels) in &transitions {
        edge(out, &node, *from, *to, labels, "");
    }

    // Site rules that move a device of this type: from the state the rule's condition
    // pins the device to, or else from every other state (an `escalate`: only from the
    // states below its target).
    let mut moves: BTreeMap<(StateId, StateId), Vec<String>> = BTreeMap::new();
    for site in &model.sites {
        // A rule written once for a group (`cut[plug1]`, `cut[plug2]`, ...) is one label,
        // `cut[each]` when its instances move every device of this type in the site, else
        // naming the devices they move: the graph is of the type, and must not claim a
        // rule for devices it does not move.
        let of_type: Vec<&str> = site
            .devices
            .iter()
            .filter(|d| d.ty == id)
            .map(|d| d.name.as_str())
            .collect();
        // Per rule written for a group: the devices of this type its instances move (not
        // the members it is written for: `rule one for p in two ... then plug3 -> attack`
        // moves plug3).
        let mut members: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in &site.rules {
            let Some((base, _)) = r.name.strip_suffix(']').and_then(|n| n.split_once('[')) else {
                continue;
            };
            for a in &r.actions {
                let Some((device, _, _)) = a.moves() else {
                    continue;
                };
                let Some(d) = site.devices.get(device.index()).filter(|d| d.ty == id) else {
                    continue;
                };
                let moved = members.entry(base).or_default();
                if !moved.contains(&d.name.as_str()) {
                    moved.push(&d.name);
                }
            }
        }
        let group_label = |base: &str| -> String {
            let moved = members.get(base).map_or(&[][..], Vec::as_slice);
            if moved.len() == of_type.len() {
                format!("{base}[each]")
            } else if moved.len() <= 3 {
                format!("{base}[{}]", moved.join(", "))
            } else {
                format!(
                    "{base}[{}, ... {} devices]",
                    moved[..2].join(", "),
                    moved.len()
                )
            }
        };
        for r in &site.rules {
            for a in &r.actions {
                let Some((device, state, up)) = a.moves() else {
                    continue;
                };
                let (device, state) = (&device, &state);
                if site.devices.get(device.index()).map(|d| d.ty) != Some(id) {
                    continue;
                }
                let name = match r.name.split_once('[') {
                    Some((base, _)) if r.name.ends_with(']') => group_label(base),
                    _ => r.name.clone(),
                };
                let label = if up {
                    format!("rule {name} (escalate)")
                } else {
                    format!("rule {name}")
                };
                let froms: Vec<StateId> = match pinned_state(&r.cond, *device) {
                    Some(s) => vec![s],
                    None => (0..ty.states.len()).map(StateId::from_index).collect(),
                };
                for from in froms
                    .into_iter()
                    .filter(|f| f != state && (!up || f < state))
                {
                    let labels = moves.entry((from, *state)).or_default();
                    if !labels.contains(&label) {
                        labels.push(label.clone());
                    }
                }
            }
        }
    }
    for ((from, to), labels) in &moves {
        edge(out, &node, *from, *to, labels, ", style=dashed");
    }
    out.push_str("    }\n");
}

/// One edge; edges towards a less restrictive state do not constrain the ranking, so the
/// states stay in posture order.
fn edge(
    out: &mut String,
    node: &dyn Fn(StateId) -> String,
    from: StateId,
    to: StateId,
    labels: &[String],
    attrs: &str,
) {
    let back = if to < from { ", constraint=false" } else { "" };
    let _ = writeln!(
        out,
        "        {} -> {} [label={}{back}{attrs}];",
        node(from),
        node(to),
        quote(&labels.join("\n")),
    );
}

/// `[sniffer, ids]`, `[pass]`, `[drop]`.
fn chain_text(model: &Model, chain: &Chain) -> String {
    match chain {
        Chain::Pass => "[pass]".into(),
        Chain::Drop => "[drop]".into(),
        Chain::Umboxes(entries) => {
            let names: Vec<&str> = entries
                .iter()
                .map(|e| model.umbox(e.umbox).name.as_str())
                .collect();
            format!("[{}]", names.join(", "))
        }
    }
}

/// An HSV fill from pale green (index 0, least restrictive) to pale red (the last).
fn posture_colour(i: usize, n: usize) -> String {
    let f = if n > 1 {
        i as f64 / (n - 1) as f64
    } else {
        0.0
    };
    format!("{:.3} 0.400 1.000", (1.0 - f) / 3.0)
}

/// A DOT double-quoted string: quotes and backslashes escaped, newlines as `\n` (a
/// centred line break in labels).
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\r' => {}
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_quotes_backslashes_and_newlines() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(quote("a \"b\""), "\"a \\\"b\\\"\"");
        assert_eq!(quote("back\\slash"), "\"back\\\\slash\"");
        assert_eq!(quote("two\nlines"), "\"two\\nlines\"");
    }

    #[test]
    fn colours_run_from_green_to_red() {
        assert_eq!(posture_colour(0, 3), "0.333 0.400 1.000");
        assert_eq!(posture_colour(1, 3), "0.167 0.400 1.000");
        assert_eq!(posture_colour(2, 3), "0.000 0.400 1.000");
        assert_eq!(posture_colour(0, 1), "0.333 0.400 1.000");
    }

    #[test]
    fn unknown_type_suggests_a_close_name() {
        let e = GraphError::UnknownType {
            name: "Thermostt".into(),
            known: vec!["Camera".into(), "Thermostat".into()],
        };
        assert_eq!(e.to_string(), "unknown device type `Thermostt`");
        assert_eq!(
            e.help(),
            "did you mean `Thermostat`? (device types: `Camera`, `Thermostat`)"
        );
    }
}
