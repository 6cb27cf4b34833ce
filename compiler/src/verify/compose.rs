//! Assertions decided component by component. Devices of an assertion's cone that no rule
//! ties together (no rule reads the state of one and acts on the other) move
//! independently: the engine takes one input at a time, and a step of one group changes
//! nothing another group's transitions or rules look at. The moments reachable in the
//! whole cone are then exactly the combinations of moments each group reaches on its own,
//! with at most one group between two changes of one step (a step is atomic: nothing
//! else happens between its changes).
//!
//! So each group is searched on its own, to the end ([`explore`] without a goal), and the
//! condition is decided by the solver over the combinations: one variable per group, for
//! the moment it is at. A satisfying combination is a run: each group's shortest path to
//! its moment, one group after the other (the one between two changes last). The
//! combination with the fewest steps in all is found by bounding the total and
//! bisecting, so a refutation is a shortest run, as from the whole search. This is what
//! makes a `never` over a thousand devices of one type cost a thousand searches of one
//! device, not a search of 3^1000 states (`docs/verification.md`, "How assertions are
//! decided").

use super::assert::{explore, state_names, whole, Explored, Run, Scope, Search, Step};
use super::solver::{value_of, ModelValue, Outcome, Query, Sort, Term};
use super::Verifier;
use crate::ir::{Action, ArithOp, CmpOp, DeviceId, Expr, ExprKind, Site};
use std::collections::{HashMap, HashSet};

/// A group of the cone's devices that rules tie together, and the rules that act on them.
pub(super) struct Component {
    /// Positions in the cone, ascending.
    devices: Vec<usize>,
    /// Site rule indices.
    rules: Vec<usize>,
}

/// The cone `coi` with its rules `rules` split into groups no rule ties together: a rule
/// joins the devices whose states it reads and those it moves or raises an alert on.
pub(super) fn components(site: &Site, coi: &[DeviceId], rules: &[usize]) -> Vec<Component> {
    let pos: HashMap<DeviceId, usize> = coi.iter().enumerate().map(|(i, d)| (*d, i)).collect();
    let mut parent: Vec<usize> = (0..coi.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    // Each rule's devices in the cone: the first, then every other joined to it.
    let touched = |ri: usize| -> Vec<usize> {
        let r = &site.rules[ri];
        let acted = r.actions.iter().filter_map(Action::state_target);
        r.cond
            .states_read()
            .chain(acted)
            .filter_map(|d| pos.get(&d).copied())
            .collect()
    };
    for &ri in rules {
        let ds = touched(ri);
        if let Some((&first, rest)) = ds.split_first() {
            for &d in rest {
                let (a, b) = (root(&mut parent, first), root(&mut parent, d));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut by_root: Vec<Option<usize>> = vec![None; coi.len()];
    let mut parts: Vec<Component> = Vec::new();
    for i in 0..coi.len() {
        let r = root(&mut parent, i);
        let at = *by_root[r].get_or_insert_with(|| {
            parts.push(Component {
                devices: Vec::new(),
                rules: Vec::new(),
            });
            parts.len() - 1
        });
        parts[at].devices.push(i);
    }
    for &ri in rules {
        if let Some(&first) = touched(ri).first() {
            let r = root(&mut parent, first);
            if let Some(at) = by_root[r] {
                parts[at].rules.push(ri);
            }
        }
    }
    parts
}

/// One component searched to the end, and the distinct moments it reaches.
struct Searched {
    ex: Explored,
    /// Node indices of distinct state combinations: every one reached at the end of a
    /// step first (in the order found, so with fewest steps), then those reached only
    /// between two changes of a step.
    moments: Vec<usize>,
    /// How many of `moments` are ends of steps.
    settled: usize,
    /// Steps from the initial states to each node.
    depth: Vec<i64>,
}

/// What is searched as one: devices of the cone (positions), the rules acting on them,
/// and the devices no rule moves whose states those rules read (positions; each searched
/// as a unit of its own first).
struct Unit {
    devices: Vec<usize>,
    rules: Vec<usize>,
    free: Vec<usize>,
}

/// How many combinations of states the devices `devices` have (saturating).
pub(super) fn product_size(v: &Verifier<'_>, site: &Site, devices: &[DeviceId]) -> usize {
    devices.iter().fold(1usize, |n, d| {
        let ty = v.policy.device_type(site.devices[d.index()].ty);
        n.saturating_mul(ty.states.len().max(1))
    })
}

/// The devices of a component that no rule of it moves.
fn unmoved(site: &Site, coi: &[DeviceId], c: &Component) -> Vec<usize> {
    let moved: HashSet<DeviceId> = c
        .rules
        .iter()
        .flat_map(|&ri| site.rules[ri].actions.iter())
        .filter_map(Action::state_target)
        .collect();
    c.devices
        .iter()
        .copied()
        .filter(|&p| !moved.contains(&coi[p]))
        .collect()
}

/// Whether a component is worth splitting: rules, more combinations than
/// [`super::Options::split_above`], and devices its rules read but do not move.
pub(super) fn splits(v: &Verifier<'_>, site: &Site, coi: &[DeviceId], c: &Component) -> bool {
    let devices: Vec<DeviceId> = c.devices.iter().map(|&p| coi[p]).collect();
    !c.rules.is_empty()
        && product_size(v, site, &devices) > v.opts.split_above
        && !unmoved(site, coi, c).is_empty()
}

/// The units of a first attempt: each component whole, or split (see [`splits`]) into
/// its unmoved devices, one unit each, and the rest. Whether any was split.
fn plan(v: &Verifier<'_>, site: &Site, coi: &[DeviceId], parts: &[Component]) -> (Vec<Unit>, bool) {
    let mut units = Vec::new();
    let mut split = false;
    for c in parts {
        if splits(v, site, coi, c) {
            split = true;
            let free = unmoved(site, coi, c);
            for &f in &free {
                units.push(Unit {
                    devices: vec![f],
                    rules: vec![],
                    free: vec![],
                });
            }
            units.push(Unit {
                devices: c
                    .devices
                    .iter()
                    .copied()
                    .filter(|p| !free.contains(p))
                    .collect(),
                rules: c.rules.clone(),
                free,
            });
        } else {
            units.push(Unit {
                devices: c.devices.clone(),
                rules: c.rules.clone(),
                free: vec![],
            });
        }
    }
    (units, split)
}

/// Searches a unit to the end; `reach` holds, per cone position searched alone so far,
/// the states that device reaches.
fn search(
    v: &mut Verifier<'_>,
    site: &Site,
    coi: &[DeviceId],
    u: &Unit,
    reach: &HashMap<usize, Vec<u32>>,
    budget: usize,
) -> Searched {
    let devices: Vec<DeviceId> = u.devices.iter().map(|&p| coi[p]).collect();
    let free: Vec<(DeviceId, Vec<u32>)> = u
        .free
        .iter()
        .map(|p| (coi[*p], reach.get(p).cloned().unwrap_or_default()))
        .collect();
    let scope = Scope {
        devices: &devices,
        rules: &u.rules,
        free: &free,
        sym: None,
    };
    let ex = explore(v, site, &scope, None, budget);
    let mut depth = vec![0i64; ex.nodes.len()];
    for (i, e) in ex.nodes.iter().enumerate() {
        // A node's parent is found before it.
        if let Some(p) = e.parent {
            depth[i] = depth[p] + 1;
        }
    }
    let mut seen: HashSet<&[u32]> = HashSet::new();
    let mut moments = Vec::new();
    let mut settled = 0;
    for between in [false, true] {
        for (i, e) in ex.nodes.iter().enumerate() {
            if e.between == between && seen.insert(e.states()) {
                moments.push(i);
            }
        }
        if !between {
            settled = moments.len();
        }
    }
    Searched {
        ex,
        moments,
        settled,
        depth,
    }
}

/// Decides `cond` over the product of the components `parts` of the cone `coi`.
///
/// A component with many combinations of states whose rules read devices they do not
/// move (a rule reading a hundred plugs to lock a door) is first split: the unmoved
/// devices are searched alone and the rest with them taken to be in any state they can
/// reach ([`explore`]'s `free`). That over-approximates the component, so a condition
/// it never meets is never met; if the split finds a run, the components are searched
/// whole instead, and only a run found whole is reported.
pub(super) fn decide(
    v: &mut Verifier<'_>,
    site: &Site,
    coi: &[DeviceId],
    rules: &[usize],
    parts: &[Component],
    cond: &Expr,
) -> Search {
    let (units, split) = plan(v, site, coi, parts);
    let first = attempt(v, site, coi, &units, cond, v.opts.max_states);
    if !split || first.bounded || (first.run.is_none() && first.unknown.is_none()) {
        return first;
    }
    let budget = v.opts.max_states.saturating_sub(first.explored).max(1);
    let mut second = if let [_] = parts {
        // One component: a search that stops at the condition is the cheapest.
        whole(v, site, coi, rules, cond, budget)
    } else {
        let exact: Vec<Unit> = parts
            .iter()
            .map(|c| Unit {
                devices: c.devices.clone(),
                rules: c.rules.clone(),
                free: vec![],
            })
            .collect();
        attempt(v, site, coi, &exact, cond, budget)
    };
    second.explored += first.explored;
    second
}

/// Decides `cond` over the product of what `units` reach, within `budget` nodes.
fn attempt(
    v: &mut Verifier<'_>,
    site: &Site,
    coi: &[DeviceId],
    units: &[Unit],
    cond: &Expr,
    budget: usize,
) -> Search {
    let mut used = 0usize;
    let mut unknown = None;
    let mut searched: Vec<Searched> = Vec::new();
    let mut reach: HashMap<usize, Vec<u32>> = HashMap::new();
    for u in units {
        let s = search(v, site, coi, u, &reach, budget.saturating_sub(used).max(1));
        used += s.ex.nodes.len();
        if let [p] = u.devices[..] {
            reach.insert(
                p,
                s.moments
                    .iter()
                    .map(|&n| s.ex.nodes[n].states()[0])
                    .collect(),
            );
        }
        if s.ex.bounded {
            return Search {
                run: None,
                explored: used,
                unknown: None,
                bounded: true,
            };
        }
        if unknown.is_none() {
            unknown.clone_from(&s.ex.unknown);
        }
        searched.push(s);
    }
    // Where each device of the cone is: (component, position in it).
    let mut at: HashMap<DeviceId, (usize, usize)> = HashMap::new();
    for (ci, u) in units.iter().enumerate() {
        for (k, &p) in u.devices.iter().enumerate() {
            at.insert(coi[p], (ci, k));
        }
    }
    // One 0/1 variable per component and moment, exactly one of them 1: every state test,
    // count, step total and "between" is then a linear sum of them, so the solver's
    // linear relaxation already bounds the steps a condition needs (at least two plugs in
    // attack cost at least the two cheapest paths there), without case splits.
    let mut q = Query::default();
    let mut pick: Vec<Vec<usize>> = Vec::new();
    let mut costs = Vec::new();
    let mut betweens = Vec::new();
    for (ci, s) in searched.iter().enumerate() {
        let vars: Vec<usize> = (0..s.moments.len())
            .map(|j| {
                q.vars
                    .push((format!("at{ci}_{j}"), Sort::Int { lo: 0, hi: 1 }));
                q.vars.len() - 1
            })
            .collect();
        let ones = |js: &mut dyn Iterator<Item = usize>| {
            Term::sum(js.map(|j| Term::Var(vars[j])).collect())
        };
        q.facts.push(Term::cmp(
            CmpOp::Eq,
            ones(&mut (0..vars.len())),
            Term::Int(1),
        ));
        for (j, &n) in s.moments.iter().enumerate() {
            if s.depth[n] > 0 {
                costs.push(Term::Arith(
                    ArithOp::Mul,
                    Box::new(Term::Int(s.depth[n])),
                    Box::new(Term::Var(vars[j])),
                ));
            }
        }
        if s.moments.len() > s.settled {
            betweens.push(ones(&mut (s.settled..vars.len())));
        }
        pick.push(vars);
    }
    // At most one component is between two changes of a step at any moment.
    if betweens.len() > 1 {
        q.facts
            .push(Term::cmp(CmpOp::Le, Term::sum(betweens), Term::Int(1)));
    }
    let encoded = Encoder {
        at: &at,
        searched: &searched,
        pick: &pick,
    }
    .encode(cond, &mut q);
    q.facts.push(encoded);
    let total = Term::sum(costs);
    let steps_of = |q: &Query, model: &super::solver::Model| -> i64 {
        match value_of(&total, &q.vars, model) {
            Some(ModelValue::Int(n)) => n,
            _ => 0,
        }
    };
    let mut best = match v.solver.solve(&q) {
        Outcome::Unsat => None,
        Outcome::Sat(model) => Some(model),
        Outcome::Unknown(why) => {
            return Search {
                run: None,
                explored: used,
                unknown: Some(format!(
                    "the solver gave up combining {} independent groups of devices: {why}",
                    units.len()
                )),
                bounded: false,
            }
        }
    };
    // The fewest steps in all: bisect on a bound of the total. A bound the solver cannot
    // decide in time leaves the run found, said to be perhaps not the shortest.
    let mut shortest = true;
    if let Some(model) = &best {
        let (mut lo, mut hi) = (0, steps_of(&q, model));
        let mut fewest = model.clone();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let mut bounded = q.clone();
            bounded
                .facts
                .push(Term::cmp(CmpOp::Le, total.clone(), Term::Int(mid)));
            match v.solver.solve(&bounded) {
                Outcome::Sat(m) => {
                    hi = steps_of(&q, &m).min(mid);
                    fewest = m;
                }
                Outcome::Unsat => lo = mid + 1,
                Outcome::Unknown(_) => {
                    shortest = false;
                    break;
                }
            }
        }
        best = Some(fewest);
    }
    let run = best.map(|model| {
        let chosen: Vec<usize> = pick
            .iter()
            .map(|vars| {
                vars.iter()
                    .position(|&x| {
                        value_of(&Term::Var(x), &q.vars, &model) == Some(ModelValue::Int(1))
                    })
                    .unwrap_or(0)
            })
            .collect();
        let mut run = assemble(v, site, coi, units, &searched, &chosen);
        run.shortest = shortest;
        run
    });
    Search {
        run,
        explored: used,
        unknown,
        bounded: false,
    }
}

/// State predicates over the components' moment indicators.
struct Encoder<'e> {
    /// Where each device of the cone is: (component, position in it).
    at: &'e HashMap<DeviceId, (usize, usize)>,
    searched: &'e [Searched],
    /// Per component, the 0/1 variable of each of its moments.
    pick: &'e [Vec<usize>],
}

impl Encoder<'_> {
    /// `d in s` as a 0/1 sum: the indicators of the moments of `d`'s component where `d`
    /// is in `s`.
    fn in_state(&self, d: DeviceId, s: u32) -> Term {
        let Some(&(ci, k)) = self.at.get(&d) else {
            return Term::Int(0);
        };
        let found = &self.searched[ci];
        Term::sum(
            found
                .moments
                .iter()
                .enumerate()
                .filter(|(_, &n)| found.ex.nodes[n].states().get(k) == Some(&s))
                .map(|(j, _)| Term::Var(self.pick[ci][j]))
                .collect(),
        )
    }

    fn encode(&self, e: &Expr, q: &mut Query) -> Term {
        match &e.kind {
            ExprKind::Bool { value } => Term::Bool(*value),
            ExprKind::InState { device, state } => {
                Term::cmp(CmpOp::Eq, self.in_state(*device, state.0), Term::Int(1))
            }
            ExprKind::Not { arg } => Term::negate(self.encode(arg, q)),
            ExprKind::And { args } => Term::And(args.iter().map(|a| self.encode(a, q)).collect()),
            ExprKind::Or { args } => Term::Or(args.iter().map(|a| self.encode(a, q)).collect()),
            ExprKind::Int { value } => Term::Int(*value),
            ExprKind::Neg { arg } => Term::Neg(Box::new(self.encode(arg, q))),
            ExprKind::Arith { arith, lhs, rhs } => {
                let (a, b) = (self.encode(lhs, q), self.encode(rhs, q));
                Term::Arith(*arith, Box::new(a), Box::new(b))
            }
            ExprKind::Cmp { cmp, lhs, rhs } => {
                let (a, b) = (self.encode(lhs, q), self.encode(rhs, q));
                Term::cmp(*cmp, a, b)
            }
            // A state test counts as its 0/1 sum; any other condition through a 0/1
            // variable that is 1 exactly when it holds.
            ExprKind::Count { args } => Term::sum(
                args.iter()
                    .map(|a| match &a.kind {
                        ExprKind::InState { device, state } => self.in_state(*device, state.0),
                        _ => {
                            let c = self.encode(a, q);
                            let ix = q.vars.len();
                            q.vars
                                .push((format!("counted{ix}"), Sort::Int { lo: 0, hi: 1 }));
                            q.facts.push(Term::iff(c, Term::eq_int(ix, 1)));
                            Term::Var(ix)
                        }
                    })
                    .collect(),
            ),
            // Assertions are over states only (`holds` in the whole search agrees).
            _ => Term::Bool(false),
        }
    }
}

/// The run to the chosen moment of every component: each component's path in turn, the
/// one between two changes of a step last.
fn assemble(
    v: &Verifier<'_>,
    site: &Site,
    coi: &[DeviceId],
    units: &[Unit],
    searched: &[Searched],
    chosen: &[usize],
) -> Run {
    let mut full: Vec<u32> = coi
        .iter()
        .map(|d| v.policy.device_type(site.devices[d.index()].ty).initial.0)
        .collect();
    let mut trace = vec![Step {
        event: "initial states".into(),
        states: state_names(v, site, coi, &full),
    }];
    let mut moves = Vec::new();
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by_key(|&ci| chosen[ci] >= searched[ci].settled);
    for ci in order {
        let s = &searched[ci];
        let Some(&end) = s.moments.get(chosen[ci]) else {
            continue;
        };
        for n in s.ex.path(end).into_iter().skip(1) {
            let e = &s.ex.nodes[n];
            for (k, &p) in units[ci].devices.iter().enumerate() {
                full[p] = e.states()[k];
            }
            trace.push(Step {
                event: e.event.clone(),
                states: state_names(v, site, coi, &full),
            });
            moves.extend(e.taken);
        }
    }
    Run {
        trace,
        moves,
        shortest: true,
    }
}
