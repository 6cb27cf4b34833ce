//! Symmetry reduction for the search of a product (`assert::explore`). Devices of one
//! type that the rules and the condition treat alike (a camera group whose every member
//! has the same rule, `rule spread for c in cams on any(o in cams: o in attack) ...`, and
//! an assertion over `all`/`any`/`count` of the group) can be permuted without changing
//! what is reachable or whether the condition holds: the search stores one combination
//! of each orbit, its members sorted, and so explores the multisets of states instead of
//! their orderings (91 instead of 531,441 for twelve cameras of three states).
//!
//! Detection is syntactic and conservative. A class is the devices of one type in the
//! cone; it is symmetric when, for every transposition of its first member with another
//! (these generate every permutation of the class):
//!
//! - the condition is the same after the swap (`and`/`or` operands and `count` terms
//!   compared as sets, as they mean);
//! - every rule that moves or raises an alert on neither of the two is the same rule
//!   after the swap;
//! - the rules of the first member (those that move it or raise an alert on it) become,
//!   after the swap, exactly the rules of the other.
//!
//! A rule that acts on two devices of one class, or on devices of two classes, makes
//! those classes plain (no reduction). The node a search keeps is concrete (a run through
//! kept nodes is a real run of the abstraction, replayed as usual); only the table of
//! nodes seen is keyed by the sorted form.

use super::assert::Node;
use crate::ir::{Action, DeviceId, Expr, ExprKind, Rule, Site};
use std::collections::HashMap;

/// Classes of interchangeable devices of a search, and each member's rules.
#[derive(Debug)]
pub(super) struct Symmetry {
    /// Positions in the cone, each class at least two.
    classes: Vec<Vec<usize>>,
    /// Per position in the cone: the positions (in the search's rule list) of the rules
    /// it owns, in an order that every permutation of its class preserves.
    owned: Vec<Vec<usize>>,
}

/// The text of an expression with devices renamed by `name`, `and`/`or`/`count`
/// operands sorted: equal for two expressions that mean the same up to that renaming and
/// the order of those operands.
fn canon(e: &Expr, name: &dyn Fn(DeviceId) -> String) -> String {
    let dev = |d: Option<DeviceId>| d.map_or("-".into(), name);
    match &e.kind {
        ExprKind::Bool { value } => format!("{value}"),
        ExprKind::Int { value } => format!("{value}"),
        ExprKind::Var { var } => format!("{}.{}", dev(var.device), var.var.0),
        ExprKind::Aggregate { func, var, last } => {
            format!("{func:?}({}.{},{last})", dev(var.device), var.var.0)
        }
        ExprKind::InState { device, state } => format!("{} in {}", name(*device), state.0),
        ExprKind::Clock { from, to } => format!("clock {from}..{to}"),
        ExprKind::Not { arg } => format!("not({})", canon(arg, name)),
        ExprKind::Neg { arg } => format!("neg({})", canon(arg, name)),
        ExprKind::And { args } | ExprKind::Or { args } | ExprKind::Count { args } => {
            let mut parts: Vec<String> = args.iter().map(|a| canon(a, name)).collect();
            parts.sort();
            let op = match &e.kind {
                ExprKind::And { .. } => "and",
                ExprKind::Or { .. } => "or",
                _ => "count",
            };
            format!("{op}({})", parts.join(","))
        }
        ExprKind::Cmp { cmp, lhs, rhs } => {
            format!("{cmp:?}({},{})", canon(lhs, name), canon(rhs, name))
        }
        ExprKind::Arith { arith, lhs, rhs } => {
            format!("{arith:?}({},{})", canon(lhs, name), canon(rhs, name))
        }
    }
}

fn canon_rule(r: &Rule, name: &dyn Fn(DeviceId) -> String) -> String {
    let actions: Vec<String> = r
        .actions
        .iter()
        .map(|a| match a {
            Action::Goto { device, state, .. } => format!("{}->{}", name(*device), state.0),
            Action::Escalate { device, state, .. } => format!("{}^{}", name(*device), state.0),
            Action::Raise { device, alert, .. } => format!("{}!{alert}", name(*device)),
            Action::Command {
                device, command, ..
            } => format!("{}.{command}", name(*device)),
        })
        .collect();
    format!("{}|{}|{}", r.edge, canon(&r.cond, name), actions.join(";"))
}

/// The devices a rule moves or raises an alert on (what the search tracks).
fn acted(r: &Rule) -> impl Iterator<Item = DeviceId> + '_ {
    r.actions.iter().filter_map(Action::state_target)
}

impl Symmetry {
    /// The symmetry of a search of the devices `coi` with the rules `rules` (site
    /// indices) for the condition `cond`; `None` when no class is symmetric.
    pub(super) fn detect(
        site: &Site,
        coi: &[DeviceId],
        rules: &[usize],
        cond: &Expr,
    ) -> Option<Symmetry> {
        let pos: HashMap<DeviceId, usize> = coi.iter().enumerate().map(|(i, d)| (*d, i)).collect();
        // Candidate classes: the cone's devices by type.
        let mut by_type: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, d) in coi.iter().enumerate() {
            by_type
                .entry(site.devices[d.index()].ty.index())
                .or_default()
                .push(i);
        }
        let class_of: HashMap<usize, usize> = by_type
            .values()
            .flat_map(|members| members.iter().map(move |&p| (p, members[0])))
            .collect();
        // A rule acting on two members of a class, or on members of two classes, makes
        // them plain.
        let mut plain: Vec<usize> = Vec::new();
        let mut owner: Vec<Option<usize>> = vec![None; rules.len()];
        for (k, &ri) in rules.iter().enumerate() {
            let mut on: Vec<usize> = acted(&site.rules[ri])
                .filter_map(|d| pos.get(&d).copied())
                .collect();
            on.sort_unstable();
            on.dedup();
            let classes: Vec<usize> = on.iter().filter_map(|p| class_of.get(p).copied()).collect();
            if on.len() > 1 {
                plain.extend(classes);
            } else {
                owner[k] = on.first().copied();
            }
        }
        let name_of = |d: DeviceId| format!("d{}", d.0);
        let rule_text: Vec<String> = rules
            .iter()
            .map(|&ri| canon_rule(&site.rules[ri], &name_of))
            .collect();
        let cond_text = canon(cond, &name_of);
        let mut classes = Vec::new();
        let mut owned: Vec<Vec<usize>> = vec![Vec::new(); coi.len()];
        let mut types: Vec<&Vec<usize>> = by_type.values().collect();
        types.sort();
        for members in types {
            if members.len() < 2 || plain.contains(&members[0]) {
                continue;
            }
            let first = members[0];
            // The first member's rules, by their text: the order every bundle follows.
            let mut base: Vec<(String, usize)> = (0..rules.len())
                .filter(|&k| owner[k] == Some(first))
                .map(|k| (rule_text[k].clone(), k))
                .collect();
            base.sort();
            let mut bundles: Vec<(usize, Vec<usize>)> =
                vec![(first, base.iter().map(|(_, k)| *k).collect())];
            let symmetric = members[1..].iter().all(|&other| {
                let (a, b) = (coi[first], coi[other]);
                let swap = |d: DeviceId| {
                    let d = if d == a {
                        b
                    } else if d == b {
                        a
                    } else {
                        d
                    };
                    format!("d{}", d.0)
                };
                if canon(cond, &swap) != cond_text {
                    return false;
                }
                let mut mine: Vec<(String, usize)> = Vec::new();
                for (k, &ri) in rules.iter().enumerate() {
                    let swapped = canon_rule(&site.rules[ri], &swap);
                    if owner[k] == Some(other) {
                        mine.push((swapped, k));
                    } else if owner[k] != Some(first) && swapped != rule_text[k] {
                        return false;
                    }
                }
                mine.sort();
                let same = mine.len() == base.len()
                    && mine.iter().zip(&base).all(|((x, _), (y, _))| x == y);
                if same {
                    bundles.push((other, mine.iter().map(|(_, k)| *k).collect()));
                }
                same
            });
            if symmetric {
                for (p, b) in bundles {
                    owned[p] = b;
                }
                classes.push(members.clone());
            }
        }
        (!classes.is_empty()).then_some(Symmetry { classes, owned })
    }

    /// The representative of `node`'s orbit: in each class, the members' (state, own
    /// rules due) sorted.
    pub(super) fn key(&self, node: &Node) -> Node {
        let mut out = node.clone();
        for class in &self.classes {
            let mut slots: Vec<(u32, Vec<bool>)> = class
                .iter()
                .map(|&p| {
                    (
                        node.st[p],
                        self.owned[p].iter().map(|&k| node.due[k]).collect(),
                    )
                })
                .collect();
            slots.sort();
            for (&p, (st, due)) in class.iter().zip(slots) {
                out.st[p] = st;
                for (&k, d) in self.owned[p].iter().zip(due) {
                    out.due[k] = d;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two devices of one class, each owning one rule (rule 0 is device 0's, rule 1
    /// device 1's), and a third device outside the class with rule 2.
    fn two_alike() -> Symmetry {
        Symmetry {
            classes: vec![vec![0, 1]],
            owned: vec![vec![0], vec![1], vec![]],
        }
    }

    fn node(st: [u32; 3], due: [bool; 3]) -> Node {
        Node {
            st: st.to_vec(),
            due: due.to_vec(),
        }
    }

    #[test]
    fn a_rule_due_moves_with_its_device() {
        let s = two_alike();
        // Swapping the two devices swaps their states and their rules' due flags.
        let a = node([1, 0, 2], [false, true, true]);
        let swapped = node([0, 1, 2], [true, false, true]);
        assert!(s.key(&a) == s.key(&swapped));
        // The same states with the due flags left in place is another situation: device
        // 0 in state 0 has its rule not due here, and due in `a`'s mirror image.
        let other = node([0, 1, 2], [false, true, true]);
        assert!(s.key(&a) != s.key(&other));
        // Outside the class nothing moves.
        assert!(s.key(&a) != s.key(&node([1, 0, 2], [false, true, false])));
        assert!(s.key(&a) != s.key(&node([1, 0, 1], [false, true, true])));
    }
}
