//! Differential test of the verifier against the engine, the reference semantics
//! (`docs/runtime.md`, "Semantics"). Small random policies (one site, two or three devices
//! of one or two types; guards with every comparison, `and`/`or`/`not`, aggregates, held
//! guards, alerts of the type and of a µmbox, quiet and silent times, operator resets;
//! site rules that mix `dev in state`, values and clock windows, `when` and `on`, and move
//! devices (`->` and `escalate`), raise alerts or send commands; `never` and `reachable`
//! assertions) are verified with Z3, built into a
//! bundle and run through [`Engine`] on many random timed input sequences, with gaps that
//! hit the policy's durations and the engine's deadlines exactly and to the millisecond.
//! Every claim of the verifier is checked against every single state change the engine
//! makes, in order:
//!
//! - a transition reported dead (K202), unsourced (K205) or shadowed (K211) never fires,
//!   and a rule reported dead (K202) never fires (no move, command or raised alert);
//! - a state reported unreachable (K203) is never entered, and a device that entered a
//!   state reported a trap (K204) never comes back to the initial state;
//! - `assert never C` proved or `assert reachable C` refuted: C holds in no situation the
//!   engine passes through (at the start, and after each single state change);
//! - `assert reachable C` proved or `assert never C` refuted: the run the verifier
//!   replayed and attached (`replay`, simulate trace lines) does reach C on the engine.
//!
//! The verifier's proofs over-approximate every run, so a state change against them is a
//! bug in the verifier or in the engine: the test does not excuse any. Undecided answers
//! (K213) are allowed, counted and printed, with how many of those conditions the random
//! runs did reach. A contradiction is shrunk (policy items, then inputs) and reported with
//! the policy, the claim and the input sequence that contradicts it.
//!
//! `a_broken_encoder_is_caught` shows the test can fail: the same differential with a
//! solver that reads every `<=` as `<` must find a contradiction.
//!
//! Case count: `KALKI_DIFF_CASES` (default [`DEFAULT_CASES`]); one case by its seed:
//! `KALKI_DIFF_SEED=0x...` (printed on failure); `KALKI_DIFF_REPORTS=N` shrinks and prints
//! the first N contradictions; `KALKI_DIFF_SHOW_UNDECIDED=1` prints the policies with K213.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kalki_compiler::codegen::bundle as codegen;
use kalki_compiler::ir::CmpOp;
use kalki_compiler::source::{LoadError, SourceLoader};
use kalki_compiler::verify::solver::{Outcome, Query, Solver, Term};
use kalki_compiler::verify::{self, z3::Z3Solver, Status};
use kalki_model::engine::{Cause, Config, Effect, Engine, Input, Origin, DAY_MS};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Cases when `KALKI_DIFF_CASES` is not set: about 15 s in a debug build on two cores
/// (`make soak` runs 50,000).
const DEFAULT_CASES: u64 = 2000;
/// Cases of `a_broken_encoder_is_caught` (`KALKI_DIFF_BROKEN_CASES`).
const BROKEN_CASES: u64 = 40;
/// Random input sequences per policy, and inputs per sequence.
const SEQUENCES: u64 = 40;
const INPUTS: usize = 30;
/// The seed of case 0; case `i` uses `mix(BASE_SEED + i)`.
const BASE_SEED: u64 = 0x6b61_6c6b_6964_6966;

/// Durations the generator uses for holds, quiet times and alert windows.
const DURATIONS: &[(u64, &str)] = &[(500, "500ms"), (1000, "1s"), (2000, "2s")];
const X_RANGE: (i64, i64) = (0, 4);
const Y_RANGE: (i64, i64) = (-1, 2);
const ENUM: &[&str] = &["lo", "mid", "hi"];
/// Clock windows of rules. Every sequence starts between 23:59 and 0:01 local time and
/// lasts about half a minute, so it often crosses their boundaries.
const WINDOWS: &[&str] = &[
    "23:59..0:00",
    "0:00..0:01",
    "0:01..0:02",
    "23:59..0:01",
    "0:00..23:59",
];

// ------------------------------------------------------------------------ generator

/// splitmix64: small, deterministic, good enough for test inputs.
struct Rng(u64);

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn below_usize(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).unwrap()
    }
    fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + i64::try_from(self.below(u64::try_from(hi - lo + 1).unwrap())).unwrap()
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below_usize(xs.len())]
    }
    /// An index drawn with the given weights.
    fn weighted(&mut self, w: &[u64]) -> usize {
        let mut r = self.below(w.iter().sum());
        for (i, x) in w.iter().enumerate() {
            if r < *x {
                return i;
            }
            r -= x;
        }
        w.len() - 1
    }
}

/// A guard, a rule condition or an assertion.
#[derive(Clone, Debug)]
enum E {
    /// A comparison or a boolean variable as written, the device it reads (in rules) and
    /// the variables it reads.
    Lit {
        text: String,
        dev: Option<String>,
        vars: Vec<&'static str>,
    },
    /// `dev in sN`.
    In(String, usize),
    Not(Box<E>),
    And(Box<E>, Box<E>),
    Or(Box<E>, Box<E>),
    /// `count(q in t0: q in sS [and q.b]) OP N` over the group `t0` of the devices of
    /// type `T0` (`devs`).
    Count {
        devs: Vec<String>,
        state: usize,
        b: bool,
        op: &'static str,
        n: i64,
    },
}

fn compare(op: &str, a: i64, b: i64) -> bool {
    match op {
        "<" => a < b,
        "<=" => a <= b,
        ">" => a > b,
        ">=" => a >= b,
        "==" => a == b,
        _ => a != b,
    }
}

impl E {
    fn text(&self) -> String {
        let paren = |e: &E| match e {
            E::And(..) | E::Or(..) => format!("({})", e.text()),
            _ => e.text(),
        };
        match self {
            E::Lit { text, .. } => text.clone(),
            E::In(d, s) => format!("{d} in s{s}"),
            E::Not(a) => format!("not {}", paren(a)),
            E::And(a, b) => format!("{} and {}", paren(a), paren(b)),
            E::Or(a, b) => format!("{} or {}", paren(a), paren(b)),
            E::Count {
                state, b, op, n, ..
            } => format!(
                "count(q in t0: q in s{state}{}) {op} {n}",
                if *b { " and q.b" } else { "" }
            ),
        }
    }
    /// Over device states only (assertions).
    fn holds(&self, state_of: &dyn Fn(&str) -> usize) -> bool {
        match self {
            E::Lit { .. } => panic!("assertions read states only"),
            E::In(d, s) => state_of(d) == *s,
            E::Not(a) => !a.holds(state_of),
            E::And(a, b) => a.holds(state_of) && b.holds(state_of),
            E::Or(a, b) => a.holds(state_of) || b.holds(state_of),
            E::Count { b: true, .. } => panic!("assertions read states only"),
            E::Count {
                devs, state, op, n, ..
            } => {
                let c = devs.iter().filter(|d| state_of(d) == *state).count();
                compare(op, i64::try_from(c).unwrap(), *n)
            }
        }
    }
    fn mentions(&self, dev: &str) -> bool {
        match self {
            E::Lit { dev: d, .. } => d.as_deref() == Some(dev),
            E::In(d, _) => d == dev,
            E::Not(a) => a.mentions(dev),
            E::And(a, b) | E::Or(a, b) => a.mentions(dev) || b.mentions(dev),
            E::Count { devs, .. } => devs.iter().any(|d| d == dev),
        }
    }
    /// Whether it reads variable `var` of `dev` (`None`: the device's own, in a guard).
    fn reads(&self, dev: Option<&str>, var: &str) -> bool {
        match self {
            E::Lit { dev: d, vars, .. } => d.as_deref() == dev && vars.contains(&var),
            E::In(..) => false,
            E::Not(a) => a.reads(dev, var),
            E::And(a, b) | E::Or(a, b) => a.reads(dev, var) || b.reads(dev, var),
            E::Count { devs, b, .. } => {
                *b && var == "b" && dev.is_some_and(|d| devs.iter().any(|x| x == d))
            }
        }
    }
    /// One-step simplifications, for shrinking.
    fn shrinks(&self) -> Vec<E> {
        match self {
            // A variable's test becomes the plainest one: `b` (`d0.b`).
            E::Lit { dev, vars, .. } if !vars.is_empty() && vars != &["b"] => vec![E::Lit {
                text: dev.as_ref().map_or("b".into(), |d| format!("{d}.b")),
                dev: dev.clone(),
                vars: vec!["b"],
            }],
            E::Lit { .. } | E::In(..) => Vec::new(),
            E::Count { b: true, .. } => {
                let E::Count {
                    devs, state, op, n, ..
                } = self.clone()
                else {
                    return Vec::new();
                };
                vec![E::Count {
                    devs,
                    state,
                    b: false,
                    op,
                    n,
                }]
            }
            E::Count { .. } => Vec::new(),
            E::Not(a) => {
                let mut out = vec![(**a).clone()];
                out.extend(a.shrinks().into_iter().map(|x| E::Not(Box::new(x))));
                out
            }
            E::And(a, b) | E::Or(a, b) => {
                let and = matches!(self, E::And(..));
                let join = |x: E, y: E| {
                    if and {
                        E::And(Box::new(x), Box::new(y))
                    } else {
                        E::Or(Box::new(x), Box::new(y))
                    }
                };
                let mut out = vec![(**a).clone(), (**b).clone()];
                out.extend(a.shrinks().into_iter().map(|x| join(x, (**b).clone())));
                out.extend(b.shrinks().into_iter().map(|y| join((**a).clone(), y)));
                out
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chain {
    Pass,
    Mon,
    Drop,
}

#[derive(Clone, Debug)]
enum Trig {
    /// `when G [for T]` (index into [`DURATIONS`]).
    When(E, Option<usize>),
    /// `on A [count N within T]`.
    Alert(&'static str, Option<(u32, usize)>),
    Quiet(usize),
    /// `after T silent`.
    Silent(usize),
    Reset,
}

#[derive(Clone, Debug)]
struct Tr {
    from: usize,
    to: usize,
    trig: Trig,
}

impl Tr {
    fn text(&self) -> String {
        let trig = match &self.trig {
            Trig::When(g, None) => format!("when {}", g.text()),
            Trig::When(g, Some(d)) => format!("when {} for {}", g.text(), DURATIONS[*d].1),
            Trig::Alert(a, None) => format!("on {a}"),
            Trig::Alert(a, Some((n, d))) => format!("on {a} count {n} within {}", DURATIONS[*d].1),
            Trig::Quiet(d) => format!("after {} quiet", DURATIONS[*d].1),
            Trig::Silent(d) => format!("after {} silent", DURATIONS[*d].1),
            Trig::Reset => "on operator reset".into(),
        };
        format!("s{} -> s{} {trig}", self.from, self.to)
    }
}

#[derive(Clone, Debug)]
struct Ty {
    name: String,
    states: usize,
    has_y: bool,
    has_e: bool,
    /// The type's own alerts (`alerts a0, a1`).
    alerts: Vec<&'static str>,
    chains: Vec<Chain>,
    /// The last state is declared `final`.
    last_final: bool,
    trs: Vec<Tr>,
}

impl Ty {
    fn vars(&self) -> Vec<&'static str> {
        let mut v = vec!["x", "b"];
        if self.has_y {
            v.push("y");
        }
        if self.has_e {
            v.push("e");
        }
        v
    }
    /// Whether any µmbox alert can reach a device of the type by an input.
    fn uses_mon(&self) -> bool {
        self.chains.contains(&Chain::Mon)
    }
}

#[derive(Clone, Debug)]
struct Dev {
    name: String,
    ty: usize,
}

#[derive(Clone, Debug)]
enum Act {
    Move(String, usize),
    /// `escalate dev to s`: a move only from a lower state.
    Escalate(String, usize),
    Raise(&'static str, String),
    /// `dev.c0`: a command, which only shows that the rule fired.
    Command(String),
}

#[derive(Clone, Debug)]
struct Rule {
    name: String,
    /// `on` (fires when the condition becomes true) instead of `when`.
    edge: bool,
    cond: E,
    acts: Vec<Act>,
}

impl Rule {
    fn mentions(&self, dev: &str) -> bool {
        self.cond.mentions(dev)
            || self.acts.iter().any(|a| match a {
                Act::Move(d, _) | Act::Escalate(d, _) | Act::Raise(_, d) | Act::Command(d) => {
                    d == dev
                }
            })
    }
}

#[derive(Clone, Debug)]
struct Assert {
    never: bool,
    cond: E,
}

#[derive(Clone, Debug)]
struct Policy {
    types: Vec<Ty>,
    devs: Vec<Dev>,
    rules: Vec<Rule>,
    asserts: Vec<Assert>,
}

fn cmp_op(rng: &mut Rng) -> &'static str {
    // `<=` often: the broken-encoder test depends on it.
    ["<=", "<", ">", ">=", "==", "!="][rng.weighted(&[30, 14, 14, 14, 14, 14])]
}

/// A constant for a variable of range `(lo, hi)`: often a bound, sometimes just outside.
fn constant(rng: &mut Rng, (lo, hi): (i64, i64)) -> i64 {
    match rng.below(10) {
        0..=2 => lo,
        3..=4 => hi,
        _ => rng.range(lo - 1, hi + 1),
    }
}

/// A comparison, boolean or enum test on a variable of `ty`; `dev` prefixes the
/// variables (`d0.x`) in a rule.
fn leaf(rng: &mut Rng, ty: &Ty, dev: Option<&str>) -> E {
    let v = |name: &str| match dev {
        Some(d) => format!("{d}.{name}"),
        None => name.to_string(),
    };
    let lit = |text: String, vars: Vec<&'static str>| E::Lit {
        text,
        dev: dev.map(str::to_string),
        vars,
    };
    let kinds = [
        35,                            // x OP c
        15,                            // b, not b
        if ty.has_e { 10 } else { 0 }, // e == m, e != m
        if ty.has_y { 15 } else { 0 }, // y OP c
        if ty.has_y { 8 } else { 0 },  // x OP y, x - y OP c
        7,                             // aggregate
    ];
    match rng.weighted(&kinds) {
        0 => lit(
            format!("{} {} {}", v("x"), cmp_op(rng), constant(rng, X_RANGE)),
            vec!["x"],
        ),
        1 => {
            if rng.pct(60) {
                lit(v("b"), vec!["b"])
            } else {
                lit(format!("not {}", v("b")), vec!["b"])
            }
        }
        2 => {
            let op = if rng.pct(60) { "==" } else { "!=" };
            lit(format!("{} {op} {}", v("e"), rng.pick(ENUM)), vec!["e"])
        }
        3 => lit(
            format!("{} {} {}", v("y"), cmp_op(rng), constant(rng, Y_RANGE)),
            vec!["y"],
        ),
        4 => {
            if rng.pct(50) {
                lit(
                    format!("{} {} {}", v("x"), cmp_op(rng), v("y")),
                    vec!["x", "y"],
                )
            } else {
                let c = rng.range(-1, 6);
                lit(
                    format!("{} - {} {} {c}", v("x"), v("y"), cmp_op(rng)),
                    vec!["x", "y"],
                )
            }
        }
        _ => {
            let f = *rng.pick(&["min", "max", "avg", "sum"]);
            let n = rng.range(2, 3);
            let hi = if f == "sum" { n * X_RANGE.1 } else { X_RANGE.1 };
            lit(
                format!(
                    "{f}({}, last {n}) {} {}",
                    v("x"),
                    cmp_op(rng),
                    constant(rng, (0, hi))
                ),
                vec!["x"],
            )
        }
    }
}

fn expr(rng: &mut Rng, depth: u32, leaf: &mut dyn FnMut(&mut Rng) -> E) -> E {
    if depth == 0 || rng.pct(45) {
        return leaf(rng);
    }
    match rng.weighted(&[15, 45, 40]) {
        0 => E::Not(Box::new(expr(rng, depth - 1, leaf))),
        1 => E::And(
            Box::new(expr(rng, depth - 1, leaf)),
            Box::new(expr(rng, depth - 1, leaf)),
        ),
        _ => E::Or(
            Box::new(expr(rng, depth - 1, leaf)),
            Box::new(expr(rng, depth - 1, leaf)),
        ),
    }
}

fn gen_type(rng: &mut Rng, name: String) -> Ty {
    let states = rng.range(2, 4) as usize;
    let alerts = match rng.weighted(&[25, 40, 35]) {
        0 => vec![],
        1 => vec!["a0"],
        _ => vec!["a0", "a1"],
    };
    let chains = (0..states)
        .map(
            |i| match rng.weighted(&[45, 35, if i == 0 { 0 } else { 20 }]) {
                0 => Chain::Pass,
                1 => Chain::Mon,
                _ => Chain::Drop,
            },
        )
        .collect();
    let mut ty = Ty {
        name,
        states,
        has_y: rng.pct(40),
        has_e: rng.pct(40),
        alerts,
        chains,
        last_final: rng.pct(15),
        trs: Vec::new(),
    };
    for _ in 0..rng.range(2, 6) {
        let from = rng.below_usize(states);
        let to = if rng.pct(90) {
            (from + 1 + rng.below_usize(states - 1)) % states
        } else {
            from
        };
        let mut alert_names: Vec<&'static str> = ty.alerts.clone();
        if ty.uses_mon() || rng.pct(20) {
            alert_names.push("m0");
        }
        let trig = match rng.weighted(&[
            35,
            15,
            if alert_names.is_empty() { 0 } else { 25 },
            12,
            8,
            10,
        ]) {
            0 => Trig::When(expr(rng, 2, &mut |r| leaf(r, &ty, None)), None),
            1 => Trig::When(
                expr(rng, 2, &mut |r| leaf(r, &ty, None)),
                Some(rng.below_usize(DURATIONS.len())),
            ),
            2 => {
                let a = *rng.pick(&alert_names);
                let count = rng
                    .pct(15)
                    .then(|| (rng.range(1, 2) as u32, rng.below_usize(DURATIONS.len())));
                Trig::Alert(a, count)
            }
            3 => Trig::Quiet(rng.below_usize(DURATIONS.len())),
            4 => Trig::Silent(rng.below_usize(DURATIONS.len())),
            _ => Trig::Reset,
        };
        ty.trs.push(Tr { from, to, trig });
    }
    ty
}

fn gen_policy(seed: u64) -> Policy {
    let mut rng = Rng(seed);
    let ntypes = if rng.pct(40) { 2 } else { 1 };
    let types: Vec<Ty> = (0..ntypes)
        .map(|i| gen_type(&mut rng, format!("T{i}")))
        .collect();
    let ndevs = rng.range(2, 3) as usize;
    let devs: Vec<Dev> = (0..ndevs)
        .map(|i| Dev {
            name: format!("d{i}"),
            ty: if i < ntypes {
                i
            } else {
                rng.below_usize(ntypes)
            },
        })
        .collect();
    let in_state = |rng: &mut Rng| {
        let d = rng.pick(&devs);
        E::In(d.name.clone(), rng.below_usize(types[d.ty].states))
    };
    // `count` over the devices of type T0 (the group `t0`), of a state, with `q.b` or not.
    let t0: Vec<String> = devs
        .iter()
        .filter(|d| d.ty == 0)
        .map(|d| d.name.clone())
        .collect();
    let count = |rng: &mut Rng, b: bool| E::Count {
        devs: t0.clone(),
        state: rng.below_usize(types[0].states),
        b,
        op: cmp_op(rng),
        n: rng.range(0, i64::try_from(t0.len()).unwrap()),
    };
    let in_state = |rng: &mut Rng| {
        if rng.pct(10) {
            count(rng, false)
        } else {
            in_state(rng)
        }
    };
    let clock = |rng: &mut Rng| E::Lit {
        text: format!("clock in {}", rng.pick(WINDOWS)),
        dev: None,
        vars: Vec::new(),
    };
    let mut rules = Vec::new();
    for r in 0..rng.range(0, 2) {
        let cond = match rng.weighted(&[50, 20, 30]) {
            // `dev in s and VALUE`, the usual shape.
            0 => {
                let d = rng.pick(&devs).clone();
                let v = expr(&mut rng, 1, &mut |r| {
                    if r.pct(12) {
                        clock(r)
                    } else {
                        leaf(r, &types[d.ty], Some(&d.name))
                    }
                });
                E::And(Box::new(in_state(&mut rng)), Box::new(v))
            }
            // States only: due only when a device it tests enters a state.
            1 => expr(&mut rng, 1, &mut |r| in_state(r)),
            _ => expr(&mut rng, 2, &mut |r| {
                if r.pct(40) {
                    in_state(r)
                } else if r.pct(8) {
                    count(r, true)
                } else if r.pct(12) {
                    clock(r)
                } else {
                    let d = r.pick(&devs);
                    leaf(r, &types[d.ty], Some(&d.name))
                }
            }),
        };
        // One or two actions.
        //
        // Two moves may name the same device (`then d0 -> s1, d0 -> s0`): the engine
        // makes them one at a time and the node installs each posture, so the state in
        // between counts (this test found the search skipping it;
        // k210_rule_moves_twice).
        let mut acts = Vec::new();
        for _ in 0..rng.range(1, 2) {
            let d = rng.pick(&devs).clone();
            let ty = &types[d.ty];
            let mut raisable: Vec<&'static str> = ty.alerts.clone();
            for t in &ty.trs {
                if let Trig::Alert(a, _) = t.trig {
                    raisable.push(a);
                }
            }
            if !raisable.is_empty() && rng.pct(20) {
                let a = raisable[rng.below_usize(raisable.len())];
                acts.push(Act::Raise(a, d.name));
            } else if rng.pct(10) {
                acts.push(Act::Command(d.name));
            } else if rng.pct(30) {
                // Never to the lowest state: that escalation could not move (K110).
                acts.push(Act::Escalate(d.name, 1 + rng.below_usize(ty.states - 1)));
            } else {
                acts.push(Act::Move(d.name, rng.below_usize(ty.states)));
            }
        }
        rules.push(Rule {
            name: format!("r{r}"),
            edge: rng.pct(30),
            cond,
            acts,
        });
    }
    let asserts = (0..rng.range(1, 2))
        .map(|_| Assert {
            never: rng.pct(55),
            cond: expr(&mut rng, 2, &mut |r| in_state(r)),
        })
        .collect();
    Policy {
        types,
        devs,
        rules,
        asserts,
    }
}

/// The policy's text, one item per line, and the line (1-based) of every transition,
/// rule and assertion.
struct Rendered {
    text: String,
    tr_at: BTreeMap<usize, (usize, usize)>,
    rule_at: BTreeMap<usize, usize>,
    assert_at: BTreeMap<usize, usize>,
}

fn render(p: &Policy) -> Rendered {
    let mut lines: Vec<String> = Vec::new();
    let mut tr_at = BTreeMap::new();
    let mut rule_at = BTreeMap::new();
    let mut assert_at = BTreeMap::new();
    fn push(lines: &mut Vec<String>, s: String) -> usize {
        lines.push(s);
        lines.len()
    }
    for s in [
        "umbox mon {",
        "    image \"kalki/umbox:0.1\"",
        "    emits m0",
        "    mode tap",
        "}",
    ] {
        push(&mut lines, s.into());
    }
    for (ti, ty) in p.types.iter().enumerate() {
        push(&mut lines, format!("device type {} {{", ty.name));
        push(
            &mut lines,
            format!("    sensed x: int in {}..{}", X_RANGE.0, X_RANGE.1),
        );
        push(&mut lines, "    sensed b: bool".into());
        push(&mut lines, "    commands c0".into());
        if ty.has_y {
            push(
                &mut lines,
                format!("    sensed y: int in {}..{}", Y_RANGE.0, Y_RANGE.1),
            );
        }
        if ty.has_e {
            push(
                &mut lines,
                format!("    sensed e: enum {{ {} }}", ENUM.join(", ")),
            );
        }
        if !ty.alerts.is_empty() {
            push(&mut lines, format!("    alerts {}", ty.alerts.join(", ")));
        }
        let names: Vec<String> = (0..ty.states).map(|i| format!("s{i}")).collect();
        push(&mut lines, format!("    states {}", names.join(" < ")));
        push(&mut lines, "    initial s0".into());
        if ty.last_final {
            push(&mut lines, format!("    final s{}", ty.states - 1));
        }
        for (i, c) in ty.chains.iter().enumerate() {
            let c = match c {
                Chain::Pass => "pass",
                Chain::Mon => "mon",
                Chain::Drop => "drop",
            };
            push(&mut lines, format!("    s{i} {{ chain [{c}] }}"));
        }
        for (i, t) in ty.trs.iter().enumerate() {
            let at = push(&mut lines, format!("    {}", t.text()));
            tr_at.insert(at, (ti, i));
        }
        push(&mut lines, "}".into());
    }
    push(&mut lines, "site lab {".into());
    push(&mut lines, "    bridge \"br0\" uplink \"up0\"".into());
    push(&mut lines, format!("    group t0: {}", p.types[0].name));
    for (i, d) in p.devs.iter().enumerate() {
        push(
            &mut lines,
            format!(
                "    device {}: {} at 10.0.0.{} port \"p{i}\" trusted",
                d.name,
                p.types[d.ty].name,
                i + 1
            ),
        );
    }
    for (i, r) in p.rules.iter().enumerate() {
        let acts: Vec<String> = r
            .acts
            .iter()
            .map(|a| match a {
                Act::Move(d, s) => format!("{d} -> s{s}"),
                Act::Escalate(d, s) => format!("escalate {d} to s{s}"),
                Act::Raise(a, d) => format!("raise {a} on {d}"),
                Act::Command(d) => format!("{d}.c0"),
            })
            .collect();
        let at = push(
            &mut lines,
            format!(
                "    rule {} {} {} then {}",
                r.name,
                if r.edge { "on" } else { "when" },
                r.cond.text(),
                acts.join(", ")
            ),
        );
        rule_at.insert(at, i);
    }
    for (i, a) in p.asserts.iter().enumerate() {
        let kind = if a.never { "never" } else { "reachable" };
        let at = push(&mut lines, format!("    assert {kind} {}", a.cond.text()));
        assert_at.insert(at, i);
    }
    push(&mut lines, "}".into());
    Rendered {
        text: lines.join("\n") + "\n",
        tr_at,
        rule_at,
        assert_at,
    }
}

// ------------------------------------------------------------ verifier and bundle

struct Mem(PathBuf, String);

impl SourceLoader for Mem {
    fn read_file(&self, path: &Path) -> Result<String, LoadError> {
        (path == self.0)
            .then(|| self.1.clone())
            .ok_or(LoadError::NotFound)
    }
}

/// What the verifier claims can never happen, each with its words.
#[derive(Default)]
struct Claims {
    /// (type, transition) that never fires: K202, K205, K211.
    dead_tr: BTreeMap<(usize, usize), String>,
    /// Rules that never fire: K202.
    dead_rule: BTreeMap<usize, String>,
    /// (type, state) never entered: K203.
    unreachable: BTreeMap<(usize, usize), String>,
    /// (type, state) from which no device comes back to the initial state: K204.
    trap: BTreeMap<(usize, usize), String>,
    /// Assertions whose condition never holds: `never` proved, `reachable` refuted.
    impossible: BTreeMap<usize, String>,
    /// Assertions the verifier says a run reaches (`reachable` proved, `never` refuted),
    /// with the run it replayed on the engine, as `kalki-shim simulate` trace lines.
    reached: BTreeMap<usize, (String, Vec<serde_json::Value>)>,
    /// K213 findings (undecided), their messages.
    undecided: Vec<String>,
    /// Assertions left undecided (no claim; the engine runs show whether they hold).
    unknown: Vec<usize>,
}

impl Claims {
    /// Adds the claims, by kind, to `into`.
    fn tally(&self, into: &mut BTreeMap<String, usize>) {
        let mut add = |k: &str| *into.entry(k.to_string()).or_default() += 1;
        for said in self.dead_tr.values() {
            add(&said[..4]);
        }
        for _ in self.dead_rule.values() {
            add("K202 rule");
        }
        for _ in self.unreachable.values() {
            add("K203");
        }
        for _ in self.trap.values() {
            add("K204");
        }
        for said in self.impossible.values() {
            add(said);
        }
        for (said, _) in self.reached.values() {
            add(&format!("{said} (run replayed)"));
        }
    }
}

/// A verified and built policy, ready to run.
struct Ready {
    text: String,
    claims: Claims,
    base: Engine,
}

enum Prep {
    Ready(Box<Ready>),
    /// The bundle could not be built (for a reason unrelated to the claims).
    NoBundle(String),
    /// The generated text does not check: a generator bug (or a shrink too far).
    NotChecked(String),
}

fn line_at(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

fn state_index(name: &str) -> usize {
    name.strip_prefix('s').unwrap().parse().unwrap()
}

fn prepare(p: &Policy, solver: &dyn Solver) -> Prep {
    let r = render(p);
    let path = PathBuf::from("case.kalki");
    let loader = Mem(path.clone(), r.text.clone());
    let (checked, verified) =
        kalki_compiler::verify(&[path], &loader, solver, &verify::Options::default());
    let bad: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| !d.code.starts_with("K2"))
        .map(|d| {
            format!(
                "{} line {}: {}",
                d.code,
                d.main_loc().map_or(0, |l| line_at(&r.text, l.span.start)),
                d.message
            )
        })
        .collect();
    let Some(verified) = verified.filter(|_| bad.is_empty()) else {
        return Prep::NotChecked(format!("{}\n{bad:#?}", r.text));
    };
    let mut c = Claims::default();
    let type_index = |name: &str| p.types.iter().position(|t| t.name == name).unwrap();
    for d in &checked.diagnostics {
        let line = d.main_loc().map(|l| line_at(&r.text, l.span.start));
        let said = format!("{}: {}", d.code, d.message);
        let w = d.witness.as_ref();
        match d.code {
            "K202" if w.and_then(|w| w.get("rule")).is_some() => {
                let name = w.unwrap()["rule"].as_str().unwrap();
                let i = p.rules.iter().position(|x| x.name == name).unwrap();
                assert_eq!(line.and_then(|l| r.rule_at.get(&l)), Some(&i), "{said}");
                c.dead_rule.insert(i, said);
            }
            "K202" | "K205" | "K211" => {
                let at = *r
                    .tr_at
                    .get(&line.unwrap())
                    .unwrap_or_else(|| panic!("{said} on no transition line:\n{}", r.text));
                c.dead_tr.insert(at, said);
            }
            "K203" | "K204" => {
                let w = w.unwrap();
                let at = (
                    type_index(w["device_type"].as_str().unwrap()),
                    state_index(w["state"].as_str().unwrap()),
                );
                if d.code == "K203" {
                    c.unreachable.insert(at, said);
                } else {
                    c.trap.insert(at, said);
                }
            }
            "K213" => c.undecided.push(d.message.clone()),
            _ => {}
        }
    }
    for a in &verified.assertions {
        let i = r.assert_at[&line_at(&r.text, a.loc.span.start)];
        let never = p.asserts[i].never;
        match (&a.status, never) {
            (Status::Proved, true) => {
                c.impossible.insert(i, "proved `never`".to_string());
            }
            (Status::Refuted, false) => {
                c.impossible.insert(i, "refuted `reachable`".to_string());
            }
            (Status::Proved, false) => {
                c.reached
                    .insert(i, ("proved `reachable`".to_string(), a.replay.clone()));
            }
            (Status::Refuted, true) => {
                c.reached
                    .insert(i, ("refuted `never`".to_string(), a.replay.clone()));
            }
            (Status::Unknown(_), _) => c.unknown.push(i),
        }
    }
    let model = checked.model.as_ref().unwrap();
    // The bundle is built with a sound solver whatever `solver` is: only the claims are
    // under test here.
    let built = match codegen::build(
        model,
        &model.sites[0],
        &checked.sources,
        &Z3Solver::new(10_000),
    ) {
        Ok(b) => b,
        Err(ds) => {
            let codes: Vec<&str> = ds.iter().map(|d| d.code).collect();
            return Prep::NoBundle(format!("{codes:?}"));
        }
    };
    let bundle = match kalki_model::bundle::load(&built.files) {
        Ok(b) => b,
        Err(es) => return Prep::NoBundle(format!("{es:?}")),
    };
    let base = Engine::new(&bundle, Config::default(), 0);
    // The engine numbers devices, states, transitions and rules as the source does.
    for (i, d) in p.devs.iter().enumerate() {
        assert_eq!(base.device_index(&d.name), Some(i));
        let ty = &p.types[d.ty];
        for s in 0..ty.states {
            assert_eq!(base.state_name(i, s), format!("s{s}"));
        }
        for (k, t) in ty.trs.iter().enumerate() {
            let et = base.transition(i, k).unwrap();
            assert_eq!((et.from as usize, et.to as usize), (t.from, t.to));
        }
    }
    for (i, rule) in p.rules.iter().enumerate() {
        assert_eq!(base.rule_name(i), rule.name);
    }
    Prep::Ready(Box::new(Ready {
        text: r.text,
        claims: c,
        base,
    }))
}

// --------------------------------------------------------------------------- engine

/// A claim of the verifier contradicted by a state change of the engine.
#[derive(Clone, Debug)]
struct Violation {
    /// What the verifier said.
    claim: String,
    /// What the engine did.
    saw: String,
}

/// Follows the engine's state changes and checks each against the claims.
struct Checker<'a> {
    p: &'a Policy,
    c: &'a Claims,
    states: Vec<usize>,
    /// The trap state (K204) each device has been in, if any.
    trapped: Vec<Option<usize>>,
    /// Undecided assertions whose condition has held.
    hit: BTreeSet<usize>,
}

impl<'a> Checker<'a> {
    fn new(p: &'a Policy, c: &'a Claims) -> Self {
        Checker {
            p,
            c,
            states: vec![0; p.devs.len()],
            trapped: vec![None; p.devs.len()],
            hit: BTreeSet::new(),
        }
    }

    fn situation(&self) -> String {
        self.p
            .devs
            .iter()
            .zip(&self.states)
            .map(|(d, s)| format!("{} in s{s}", d.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The assertions the verifier says can never hold, in the current situation (and
    /// the undecided ones, noted when they hold).
    fn situation_ok(&mut self) -> Result<(), Violation> {
        let state_of = |name: &str| {
            let i = self.p.devs.iter().position(|d| d.name == name).unwrap();
            self.states[i]
        };
        for i in &self.c.unknown {
            if self.p.asserts[*i].cond.holds(&state_of) {
                self.hit.insert(*i);
            }
        }
        for (i, said) in &self.c.impossible {
            let a = &self.p.asserts[*i];
            if a.cond.holds(&state_of) {
                let kind = if a.never { "never" } else { "reachable" };
                return Err(Violation {
                    claim: format!("K210: {said}: assert {kind} {}", a.cond.text()),
                    saw: format!("the condition holds with {}", self.situation()),
                });
            }
        }
        Ok(())
    }

    fn rule_ok(&self, rule: usize, what: &str) -> Result<(), Violation> {
        match self.c.dead_rule.get(&rule) {
            Some(said) => Err(Violation {
                claim: said.clone(),
                saw: format!("rule `{}` fired: {what}", self.p.rules[rule].name),
            }),
            None => Ok(()),
        }
    }

    fn effect(&mut self, e: &Effect) -> Result<(), Violation> {
        match e {
            Effect::StateChange {
                device,
                from,
                to,
                cause,
            } => {
                let d = &self.p.devs[*device];
                let ti = d.ty;
                let ty = &self.p.types[ti];
                let moved = format!("{}: s{from} -> s{to}", d.name);
                if self.states[*device] != *from {
                    return Err(Violation {
                        claim: "the engine's state changes start where the device is".into(),
                        saw: format!("{moved} while it is in s{}", self.states[*device]),
                    });
                }
                match cause {
                    Cause::Rule { rule } => self.rule_ok(*rule, &moved)?,
                    Cause::Alert { transition, .. }
                    | Cause::Reading { transition }
                    | Cause::Held { transition }
                    | Cause::Quiet { transition }
                    | Cause::Silent { transition }
                    | Cause::Operator { transition, .. } => {
                        let t = &ty.trs[*transition];
                        assert_eq!((t.from, t.to), (*from, *to), "transition numbering");
                        if let Some(said) = self.c.dead_tr.get(&(ti, *transition)) {
                            return Err(Violation {
                                claim: said.clone(),
                                saw: format!("{moved} by `{}` ({})", t.text(), show_cause(cause)),
                            });
                        }
                    }
                }
                self.states[*device] = *to;
                if let Some(said) = self.c.unreachable.get(&(ti, *to)) {
                    return Err(Violation {
                        claim: said.clone(),
                        saw: format!("{moved} ({})", show_cause(cause)),
                    });
                }
                if let Some(trap) = self.trapped[*device] {
                    if *to == 0 {
                        return Err(Violation {
                            claim: self.c.trap[&(ti, trap)].clone(),
                            saw: format!(
                                "{} was in s{trap}, and now {moved} ({})",
                                d.name,
                                show_cause(cause)
                            ),
                        });
                    }
                } else if self.c.trap.contains_key(&(ti, *to)) {
                    self.trapped[*device] = Some(*to);
                }
                self.situation_ok()
            }
            Effect::Command { command, rule, .. } => {
                self.rule_ok(*rule, &format!("command {command}"))
            }
            Effect::AlertRaised {
                device,
                alert,
                rule,
            } => self.rule_ok(
                *rule,
                &format!("raise {alert} on {}", self.p.devs[*device].name),
            ),
            Effect::Fault { message } => Err(Violation {
                claim: "a checked bundle causes no fault".into(),
                saw: message.clone(),
            }),
        }
    }
}

fn show_cause(c: &Cause) -> String {
    match c {
        Cause::Alert {
            alert,
            origin: Origin::Rule { rule },
            ..
        } => format!("alert {alert} raised by rule {rule}"),
        Cause::Alert { alert, .. } => format!("alert {alert}"),
        Cause::Reading { .. } => "reading".into(),
        Cause::Held { .. } => "hold ran out".into(),
        Cause::Quiet { .. } => "quiet time ran out".into(),
        Cause::Silent { .. } => "silent time ran out".into(),
        Cause::Operator { action, .. } => format!("operator {action}"),
        Cause::Rule { rule } => format!("rule {rule}"),
    }
}

fn show_input(t: u64, i: &Input) -> String {
    match i {
        Input::Reading { device, values } => {
            let v: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("t={t}ms  {device}: reading {}", v.join(" "))
        }
        Input::Alert {
            device,
            alert,
            source,
        } => match source {
            Some(s) => format!("t={t}ms  {device}: alert {alert} from {s}"),
            None => format!("t={t}ms  {device}: alert {alert}"),
        },
        Input::Operator { device, action } => format!("t={t}ms  {device}: operator {action}"),
        Input::Tick => format!("t={t}ms  tick"),
    }
}

/// One random input at a time no earlier than the engine's: a reading of some of a
/// device's variables, one of its alerts, a reset or time passing, after a gap that often
/// hits a policy duration, or the engine's next deadline, exactly or to a millisecond.
fn gen_input(rng: &mut Rng, p: &Policy, e: &Engine) -> (u64, Input) {
    let now = e.now();
    let mut durations: Vec<u64> = Vec::new();
    for ty in &p.types {
        for t in &ty.trs {
            match t.trig {
                Trig::When(_, Some(d))
                | Trig::Quiet(d)
                | Trig::Silent(d)
                | Trig::Alert(_, Some((_, d))) => {
                    durations.push(DURATIONS[d].0);
                }
                _ => {}
            }
        }
    }
    let d = if durations.is_empty() {
        1000
    } else {
        *rng.pick(&durations)
    };
    let t = match rng.weighted(&[10, 10, 22, 15, 8, 35]) {
        0 => now,
        1 => now + 1,
        2 => now + d - 1 + rng.below(3),
        3 => match e.next_deadline() {
            Some(dl) => (dl + rng.below(3)).saturating_sub(1).max(now),
            None => now + d,
        },
        4 => now + if rng.pct(50) { 2 * d } else { d / 2 },
        _ => now + rng.below(2500),
    };
    let dev = rng.pick(&p.devs);
    let ty = &p.types[dev.ty];
    let device = dev.name.clone();
    let mut alerts: Vec<(&str, Option<String>)> = ty.alerts.iter().map(|a| (*a, None)).collect();
    if ty.uses_mon() {
        alerts.push(("m0", Some("mon".to_string())));
    }
    let input = match rng.weighted(&[40, if alerts.is_empty() { 0 } else { 22 }, 8, 30]) {
        0 => {
            let vars = ty.vars();
            let mut values = BTreeMap::new();
            let all = rng.pct(80);
            for v in &vars {
                if !all && !rng.pct(40) {
                    continue;
                }
                let value = match *v {
                    "x" => json!(rng.range(X_RANGE.0, X_RANGE.1)),
                    "y" => json!(rng.range(Y_RANGE.0, Y_RANGE.1)),
                    "b" => json!(rng.pct(50)),
                    _ => json!(rng.pick(ENUM)),
                };
                values.insert((*v).to_string(), value);
            }
            if values.is_empty() {
                values.insert("x".into(), json!(rng.range(X_RANGE.0, X_RANGE.1)));
            }
            Input::Reading { device, values }
        }
        1 => {
            let (alert, source) = rng.pick(&alerts).clone();
            Input::Alert {
                device,
                alert: alert.into(),
                source,
            }
        }
        2 => Input::Operator {
            device,
            action: "reset".into(),
        },
        _ => Input::Tick,
    };
    (t, input)
}

/// Applies one input; refused inputs (a µmbox alert in a state without the µmbox) are
/// skipped. `log` gets a line per state change.
fn apply(
    e: &mut Engine,
    ck: &mut Checker<'_>,
    t: u64,
    input: &Input,
    log: &mut Vec<String>,
) -> Option<Result<(), Violation>> {
    let steps = e.handle(t, input).ok()?;
    for s in steps {
        for fx in &s.effects {
            if let Effect::StateChange {
                device,
                from,
                to,
                cause,
            } = fx
            {
                log.push(format!(
                    "    at {}ms {}: s{from} -> s{to} ({})",
                    s.t_ms,
                    ck.p.devs[*device].name,
                    show_cause(cause)
                ));
            }
            if let Err(v) = ck.effect(fx) {
                return Some(Err(v));
            }
        }
    }
    Some(Ok(()))
}

/// A contradiction: the inputs accepted up to and including the one that showed it.
struct Found {
    v: Violation,
    /// The local time of day at t=0, in ms.
    offset: u64,
    inputs: Vec<(u64, Input)>,
}

/// One random sequence.
fn drive(
    p: &Policy,
    r: &Ready,
    seed: u64,
    stats: &mut Stats,
    hit: &mut BTreeSet<usize>,
) -> Result<(), Found> {
    let mut rng = Rng(seed);
    let offset = (DAY_MS - 60_000 + rng.below(120_000)) % DAY_MS;
    let mut e = engine_at(r, offset);
    let mut ck = Checker::new(p, &r.claims);
    let mut inputs = Vec::new();
    if let Err(v) = ck.situation_ok() {
        return Err(Found { v, offset, inputs });
    }
    let mut log = Vec::new();
    for _ in 0..INPUTS {
        let (t, input) = gen_input(&mut rng, p, &e);
        match apply(&mut e, &mut ck, t, &input, &mut log) {
            None => stats.refused += 1,
            Some(res) => {
                stats.inputs += 1;
                inputs.push((t, input));
                if let Err(v) = res {
                    return Err(Found { v, offset, inputs });
                }
            }
        }
    }
    stats.changes += log.len();
    hit.extend(ck.hit);
    Ok(())
}

/// A fresh engine of the policy whose t=0 is `offset` ms after midnight, local time.
fn engine_at(r: &Ready, offset: u64) -> Engine {
    r.base.restart(Config::fixed(offset), 0)
}

/// Replays fixed inputs; the violation they show, if any, and the state changes.
fn replay(
    p: &Policy,
    r: &Ready,
    offset: u64,
    inputs: &[(u64, Input)],
) -> (Option<Violation>, Vec<String>) {
    let mut e = engine_at(r, offset);
    let mut ck = Checker::new(p, &r.claims);
    let mut log = Vec::new();
    if let Err(v) = ck.situation_ok() {
        return (Some(v), log);
    }
    for (t, input) in inputs {
        log.push(show_input(*t, input));
        match apply(&mut e, &mut ck, *t, input, &mut log) {
            None => log.push("    (refused)".into()),
            Some(Err(v)) => return (Some(v), log),
            Some(Ok(())) => {}
        }
    }
    (None, log)
}

/// An input of a `kalki-shim simulate` trace line (`docs/runtime.md`, "`simulate` and
/// the trace format"), with its time; `None` for the `clock` line.
fn trace_input(line: &serde_json::Value) -> Result<Option<(u64, Input)>, String> {
    let o = line.as_object().ok_or("not an object")?;
    if o.contains_key("clock") {
        return Ok(None);
    }
    let t = o
        .get("t_ms")
        .and_then(serde_json::Value::as_u64)
        .ok_or("no t_ms")?;
    let text = |k: &str| o.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let Some(device) = text("device") else {
        return Ok(Some((t, Input::Tick)));
    };
    let input = if let Some(values) = o.get("reading").and_then(|v| v.as_object()) {
        Input::Reading {
            device,
            values: values.clone().into_iter().collect(),
        }
    } else if let Some(alert) = text("alert") {
        Input::Alert {
            device,
            alert,
            source: text("source"),
        }
    } else if let Some(action) = text("operator") {
        Input::Operator { device, action }
    } else {
        return Err(format!("no event in {line}"));
    };
    Ok(Some((t, input)))
}

/// The runs the verifier reports as reaching an assertion's condition, replayed here:
/// each must reach it (after some single state change, or at the start).
fn runs_replay(p: &Policy, r: &Ready) -> Result<(), String> {
    for (i, (said, lines)) in &r.claims.reached {
        let a = &p.asserts[*i];
        let kind = if a.never { "never" } else { "reachable" };
        let claim = format!("K210: {said}: assert {kind} {}", a.cond.text());
        let mut clock = 0;
        let mut inputs = Vec::new();
        for l in lines {
            match trace_input(l) {
                Ok(Some(x)) => inputs.push(x),
                Ok(None) => {
                    let hm = l["clock"].as_str().unwrap_or("0:00");
                    let (h, m) = hm.split_once(':').unwrap();
                    clock = (h.parse::<u64>().unwrap() * 60 + m.parse::<u64>().unwrap()) * 60_000;
                }
                Err(e) => return Err(format!("the verifier claims: {claim}\nbad trace line: {e}")),
            }
        }
        let mut e = engine_at(r, clock);
        let mut states = vec![0; p.devs.len()];
        let holds = |states: &[usize]| {
            a.cond
                .holds(&|d: &str| states[p.devs.iter().position(|x| x.name == d).unwrap()])
        };
        let mut log = Vec::new();
        let mut reached = holds(&states);
        for (t, input) in &inputs {
            if reached {
                break;
            }
            log.push(show_input(*t, input));
            let steps = match e.handle(*t, input) {
                Ok(steps) => steps,
                Err(errs) => {
                    log.push(format!("    refused: {errs:?}"));
                    break;
                }
            };
            for fx in steps.iter().flat_map(|s| &s.effects) {
                if let Effect::StateChange {
                    device, to, cause, ..
                } = fx
                {
                    log.push(format!(
                        "    {}: s{} -> s{to} ({})",
                        p.devs[*device].name,
                        states[*device],
                        show_cause(cause)
                    ));
                    states[*device] = *to;
                    reached = reached || holds(&states);
                }
            }
        }
        if !reached {
            return Err(format!(
                "the verifier claims: {claim}, with a run the engine follows\n\
                 the engine did not reach the condition on that run:\n  {}",
                log.join("\n  ")
            ));
        }
    }
    Ok(())
}

/// Every random sequence of a policy; the first contradiction.
fn search(p: &Policy, r: &Ready, seed: u64, stats: &mut Stats) -> Result<(), Found> {
    let mut hit = BTreeSet::new();
    for s in 0..SEQUENCES {
        drive(p, r, mix(seed ^ mix(s + 1)), stats, &mut hit)?;
    }
    stats.undecided_assertions += r.claims.unknown.len();
    stats.undecided_reached += hit.len();
    Ok(())
}

// ------------------------------------------------------------------------- shrinking

/// Policies one step simpler than `p`.
fn shrinks(p: &Policy) -> Vec<Policy> {
    let mut out = Vec::new();
    let mut with = |f: &dyn Fn(&mut Policy)| {
        let mut q = p.clone();
        f(&mut q);
        out.push(q);
    };
    for i in 0..p.asserts.len() {
        with(&|q| {
            q.asserts.remove(i);
        });
    }
    for i in 0..p.rules.len() {
        with(&|q| {
            q.rules.remove(i);
        });
    }
    if p.devs.len() > 1 {
        for i in 0..p.devs.len() {
            with(&|q| {
                let d = q.devs.remove(i);
                q.rules.retain(|r| !r.mentions(&d.name));
                q.asserts.retain(|a| !a.cond.mentions(&d.name));
                if !q.devs.iter().any(|x| x.ty == d.ty) {
                    q.types.remove(d.ty);
                    for x in &mut q.devs {
                        if x.ty > d.ty {
                            x.ty -= 1;
                        }
                    }
                }
            });
        }
    }
    for (ti, ty) in p.types.iter().enumerate() {
        for k in 0..ty.trs.len() {
            with(&|q| {
                q.types[ti].trs.remove(k);
            });
        }
    }
    for (i, r) in p.rules.iter().enumerate() {
        if r.edge {
            with(&|q| q.rules[i].edge = false);
        }
        for k in 0..r.acts.len() {
            if r.acts.len() > 1 {
                with(&|q| {
                    q.rules[i].acts.remove(k);
                });
            }
        }
        for c in r.cond.shrinks() {
            with(&|q| q.rules[i].cond = c.clone());
        }
    }
    for (i, a) in p.asserts.iter().enumerate() {
        for c in a.cond.shrinks() {
            with(&|q| q.asserts[i].cond = c.clone());
        }
    }
    for (ti, ty) in p.types.iter().enumerate() {
        for (k, t) in ty.trs.iter().enumerate() {
            if let Trig::When(g, hold) = &t.trig {
                for c in g.shrinks() {
                    with(&|q| q.types[ti].trs[k].trig = Trig::When(c.clone(), *hold));
                }
            }
        }
        for (s, c) in ty.chains.iter().enumerate() {
            if *c != Chain::Pass {
                with(&|q| q.types[ti].chains[s] = Chain::Pass);
            }
        }
        if ty.last_final {
            with(&|q| q.types[ti].last_final = false);
        }
        let unread = |var: &str| {
            !ty.trs
                .iter()
                .any(|t| matches!(&t.trig, Trig::When(g, _) if g.reads(None, var)))
                && !p
                    .devs
                    .iter()
                    .filter(|d| d.ty == ti)
                    .any(|d| p.rules.iter().any(|r| r.cond.reads(Some(&d.name), var)))
        };
        if ty.has_y && unread("y") {
            with(&|q| q.types[ti].has_y = false);
        }
        if ty.has_e && unread("e") {
            with(&|q| q.types[ti].has_e = false);
        }
    }
    out
}

/// Shrinks a contradiction: first the policy (any contradiction found by the case's
/// sequences, or by the inputs found so far, will do), then the inputs (the same claim).
fn minimise(p: &Policy, seed: u64, solver: &dyn Solver, found: Found) -> (Policy, Ready, Found) {
    let Prep::Ready(r) = prepare(p, solver) else {
        unreachable!("the policy was prepared before")
    };
    let mut best = (p.clone(), *r, found);
    let mut stats = Stats::default();
    let mut progress = true;
    while progress {
        progress = false;
        for q in shrinks(&best.0) {
            let Prep::Ready(r) = prepare(&q, solver) else {
                continue;
            };
            let names: BTreeSet<&str> = q.devs.iter().map(|d| d.name.as_str()).collect();
            let kept: Vec<(u64, Input)> = best
                .2
                .inputs
                .iter()
                .filter(|(_, i)| match i {
                    Input::Reading { device, .. }
                    | Input::Alert { device, .. }
                    | Input::Operator { device, .. } => names.contains(device.as_str()),
                    Input::Tick => true,
                })
                .cloned()
                .collect();
            let offset = best.2.offset;
            let f = match replay(&q, &r, offset, &kept).0 {
                Some(v) => Some(Found {
                    v,
                    offset,
                    inputs: kept,
                }),
                None => search(&q, &r, seed, &mut stats).err(),
            };
            if let Some(f) = f {
                best = (q, *r, f);
                progress = true;
                break;
            }
        }
    }
    // Inputs: drop one at a time, make it a tick or drop a value of a reading, while the
    // same claim is still contradicted; then cut what follows the contradiction.
    let (p, r, mut f) = best;
    let claim = f.v.claim.clone();
    let mut i = f.inputs.len();
    while i > 0 {
        i -= 1;
        let mut fewer = f.inputs.clone();
        fewer.remove(i);
        let mut candidates = vec![fewer];
        let mut tick = f.inputs.clone();
        tick[i].1 = Input::Tick;
        candidates.push(tick);
        if let Input::Reading { values, .. } = &f.inputs[i].1 {
            for k in values.keys().filter(|_| values.len() > 1) {
                let mut less = f.inputs.clone();
                if let Input::Reading { values, .. } = &mut less[i].1 {
                    values.remove(k);
                }
                candidates.push(less);
            }
        }
        for candidate in candidates {
            if candidate == f.inputs {
                continue;
            }
            if let (Some(v), _) = replay(&p, &r, f.offset, &candidate) {
                if v.claim == claim {
                    f.v = v;
                    f.inputs = candidate;
                    i = i.min(f.inputs.len());
                    break;
                }
            }
        }
    }
    for n in 0..=f.inputs.len() {
        if let (Some(v), _) = replay(&p, &r, f.offset, &f.inputs[..n]) {
            if v.claim == claim {
                f.inputs.truncate(n);
                f.v = v;
                break;
            }
        }
    }
    (p, r, f)
}

fn report(case: u64, seed: u64, p: &Policy, r: &Ready, f: &Found) -> String {
    let (_, log) = replay(p, r, f.offset, &f.inputs);
    let mut s = String::new();
    writeln!(s, "case {case}, seed {seed:#x} (KALKI_DIFF_SEED={seed:#x})").unwrap();
    writeln!(s, "--- policy\n{}---", r.text).unwrap();
    writeln!(s, "the verifier claims: {}", f.v.claim).unwrap();
    writeln!(s, "the engine did:      {}", f.v.saw).unwrap();
    let local = f.offset / 1000;
    writeln!(
        s,
        "inputs (every device in s0 at t=0ms, local time {:02}:{:02}:{:02}; an input first \
         fires the timers due by its time):",
        local / 3600,
        local / 60 % 60,
        local % 60
    )
    .unwrap();
    if log.is_empty() {
        writeln!(s, "  (none: the initial situation)").unwrap();
    }
    for l in log {
        writeln!(s, "  {l}").unwrap();
    }
    s
}

// ---------------------------------------------------------------------------- driver

#[derive(Default, Debug)]
struct Stats {
    cases: u64,
    no_bundle: u64,
    undecided: usize,
    /// The first few K213 messages, with their cases.
    undecided_examples: Vec<String>,
    /// Assertions left undecided, and how many of their conditions the engine reached.
    undecided_assertions: usize,
    undecided_reached: usize,
    /// Claims checked, by kind.
    claims: BTreeMap<String, usize>,
    inputs: usize,
    refused: usize,
    changes: usize,
}

/// Runs the differential over `cases` (index, seed); returns the contradictions found,
/// each shrunk and rendered, at most `keep` of them shrunk (the rest are only counted).
fn differential(
    cases: &[(u64, u64)],
    solver: &dyn Solver,
    keep: usize,
    stats: &mut Stats,
) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut found = BTreeMap::new();
    let mut reports = Vec::new();
    for &(case, seed) in cases {
        let p = gen_policy(seed);
        stats.cases += 1;
        let r = match prepare(&p, solver) {
            Prep::Ready(r) => r,
            Prep::NoBundle(why) => {
                eprintln!("case {case} ({seed:#x}): no bundle: {why}");
                stats.no_bundle += 1;
                continue;
            }
            Prep::NotChecked(why) => {
                panic!("case {case} ({seed:#x}): generated policy does not check:\n{why}")
            }
        };
        stats.undecided += r.claims.undecided.len();
        if !r.claims.undecided.is_empty() && std::env::var_os("KALKI_DIFF_SHOW_UNDECIDED").is_some()
        {
            eprintln!(
                "case {case} ({seed:#x}): {:#?}\n{}",
                r.claims.undecided, r.text
            );
        }
        for m in &r.claims.undecided {
            if stats.undecided_examples.len() < 5 {
                stats
                    .undecided_examples
                    .push(format!("case {case} ({seed:#x}): {m}"));
            }
        }
        r.claims.tally(&mut stats.claims);
        if let Err(why) = runs_replay(&p, &r) {
            *found.entry("K210 run".to_string()).or_default() += 1;
            if reports.len() < keep {
                reports.push(format!(
                    "case {case}, seed {seed:#x} (KALKI_DIFF_SEED={seed:#x})\n--- policy\n{}---\n{why}",
                    r.text
                ));
            }
            continue;
        }
        if let Err(f) = search(&p, &r, seed, stats) {
            let kind = match f.v.claim.get(..4) {
                Some(k) if k.starts_with('K') => k.to_string(),
                _ => f.v.claim.clone(),
            };
            *found.entry(kind).or_default() += 1;
            if reports.len() < keep {
                let (p, r, f) = minimise(&p, seed, solver, f);
                reports.push(report(case, seed, &p, &r, &f));
            }
        }
    }
    (found, reports)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Cases `0..n` (index, seed), or the one case `KALKI_DIFF_SEED` names.
fn case_list(n: u64) -> Vec<(u64, u64)> {
    if let Ok(s) = std::env::var("KALKI_DIFF_SEED") {
        let seed = u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex seed");
        return vec![(0, seed)];
    }
    (0..n).map(|i| (i, mix(BASE_SEED + i))).collect()
}

#[test]
fn verifier_claims_hold_in_the_engine() {
    let started = Instant::now();
    let solver = Z3Solver::new(10_000);
    let mut stats = Stats::default();
    let cases = case_list(env_number("KALKI_DIFF_CASES", DEFAULT_CASES));
    // How many contradictions to shrink and print (`KALKI_DIFF_REPORTS`, default 1).
    let keep = usize::try_from(env_number("KALKI_DIFF_REPORTS", 1)).unwrap();
    let (found, reports) = differential(&cases, &solver, keep, &mut stats);
    let total: usize = found.values().sum();
    eprintln!(
        "engine differential: {} cases in {:.1}s; {stats:?}; contradicted claims: {found:?}",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    if stats.undecided > 0 {
        eprintln!(
            "note: {} K213 (undecided) findings, the first:\n  {}",
            stats.undecided,
            stats.undecided_examples.join("\n  ")
        );
    }
    assert!(
        total == 0,
        "the verifier's claims contradict the engine in {total} case(s) ({found:?}); \
         the first {}, shrunk:\n{}",
        reports.len(),
        reports.join("\n")
    );
    assert!(
        stats.changes > 0 && !stats.claims.is_empty(),
        "the test exercises nothing"
    );
}

/// The verdicts of `kalkic verify` with `opts` on a policy's text.
fn assertions_of(
    text: &str,
    solver: &dyn Solver,
    opts: &verify::Options,
) -> Vec<verify::AssertionResult> {
    let path = PathBuf::from("case.kalki");
    let loader = Mem(path.clone(), text.to_string());
    kalki_compiler::verify(&[path], &loader, solver, opts)
        .1
        .map(|v| v.assertions)
        .unwrap_or_default()
}

/// Holds two verifications of one policy to each other: the same verdict wherever both
/// decide, and runs of the same length (both are shortest). `compared` and `runs` count
/// the assertions decided both ways and those with a run.
fn same_verdicts(
    (case, seed, text): (u64, u64, &str),
    (how, a): (&str, &verify::AssertionResult),
    (other, b): (&str, &verify::AssertionResult),
    (compared, runs): (&mut usize, &mut usize),
) {
    let decided = |s: &Status| !matches!(s, Status::Unknown(_));
    if !(decided(&a.status) && decided(&b.status)) {
        return;
    }
    *compared += 1;
    let at = line_at(text, a.loc.span.start);
    assert_eq!(
        std::mem::discriminant(&a.status),
        std::mem::discriminant(&b.status),
        "case {case} ({seed:#x}), assertion on line {at}: {how} {:?}, {other} {:?} {:#?}\n{text}",
        a.status,
        b.status,
        if a.trace.is_empty() {
            &b.trace
        } else {
            &a.trace
        },
    );
    if !a.trace.is_empty() || !b.trace.is_empty() {
        *runs += 1;
        assert_eq!(
            a.trace.len(),
            b.trace.len(),
            "case {case} ({seed:#x}), assertion on line {at}: runs of different lengths\n\
             {how}: {:#?}\n{other}: {:#?}\n{text}",
            a.trace,
            b.trace,
        );
    }
}

/// Deciding an assertion group by group (`verify::Options::compose_above`, here forced
/// for every cone), with every group split as well (`split_above: 0`: the devices its
/// rules read but do not move abstracted first), and by one search of the whole product
/// agree on the same random policies: the same verdict wherever both decide, and runs
/// of the same length (all are shortest). The verdicts themselves are held to the engine
/// by `verifier_claims_hold_in_the_engine`.
#[test]
fn group_by_group_agrees_with_the_whole_search() {
    let solver = Z3Solver::new(10_000);
    let whole = verify::Options {
        compose_above: usize::MAX,
        ..verify::Options::default()
    };
    let grouped_only = verify::Options {
        compose_above: 0,
        split_above: usize::MAX,
        ..verify::Options::default()
    };
    let split = verify::Options {
        compose_above: 0,
        split_above: 0,
        ..verify::Options::default()
    };
    let (mut compared, mut grouped, mut runs) = (0, 0, 0);
    for (case, seed) in case_list(env_number("KALKI_DIFF_CASES", DEFAULT_CASES) / 2) {
        let p = gen_policy(seed);
        let r = render(&p);
        let verdicts = |opts: &verify::Options| assertions_of(&r.text, &solver, opts);
        let by_whole = verdicts(&whole);
        for (how, opts) in [
            ("by groups", grouped_only.clone()),
            ("split", split.clone()),
        ] {
            let by_group = verdicts(&opts);
            assert_eq!(by_group.len(), by_whole.len());
            for (g, w) in by_group.iter().zip(&by_whole) {
                assert_eq!(w.groups, 1);
                if g.groups < 2 && how == "by groups" {
                    continue;
                }
                grouped += 1;
                same_verdicts(
                    (case, seed, &r.text),
                    (how, g),
                    ("whole", w),
                    (&mut compared, &mut runs),
                );
            }
        }
    }
    eprintln!(
        "{grouped} assertions by groups or split; {compared} decided both ways, {runs} with a run"
    );
    assert!(
        compared > 200 && runs > 100,
        "the test exercises too little: {compared} compared, {runs} runs"
    );
}

/// A policy of three or four devices of one type that the rules and some assertions
/// treat alike: each rule template is written once per device (`p` renamed), reading the
/// device itself and counts over all of them; assertions are counts, `and`s or `or`s
/// over every device (symmetric) or about `d0` (not).
fn gen_symmetric(seed: u64) -> Policy {
    let mut rng = Rng(seed);
    let ty = gen_type(&mut rng, "T0".into());
    let n = rng.range(3, 4) as usize;
    let devs: Vec<Dev> = (0..n)
        .map(|i| Dev {
            name: format!("d{i}"),
            ty: 0,
        })
        .collect();
    let names: Vec<String> = devs.iter().map(|d| d.name.clone()).collect();
    let states = ty.states;
    let count = |rng: &mut Rng| E::Count {
        devs: names.clone(),
        state: rng.below_usize(states),
        b: false,
        op: cmp_op(rng),
        n: rng.range(0, n as i64),
    };
    let mut rules = Vec::new();
    for t in 0..rng.range(1, 2) {
        let own = rng.below_usize(states);
        let group_part = count(&mut rng);
        let conj = rng.pct(60);
        let target = rng.below_usize(states);
        let kind = rng.weighted(&[50, 30, 20]);
        let edge = rng.pct(30);
        for d in &names {
            let mine = E::In(d.clone(), own);
            let cond = if conj {
                E::And(Box::new(mine), Box::new(group_part.clone()))
            } else {
                E::Or(Box::new(mine), Box::new(group_part.clone()))
            };
            let act = match kind {
                0 => Act::Move(d.clone(), target),
                1 if states > 1 => Act::Escalate(d.clone(), 1 + target % (states - 1)),
                _ => Act::Command(d.clone()),
            };
            rules.push(Rule {
                name: format!("r{t}_{d}"),
                edge,
                cond,
                acts: vec![act],
            });
        }
    }
    let all_in = |s: usize, and: bool| {
        let mut it = names.iter().map(|d| E::In(d.clone(), s));
        let first = it.next().unwrap();
        it.fold(first, |acc, x| {
            if and {
                E::And(Box::new(acc), Box::new(x))
            } else {
                E::Or(Box::new(acc), Box::new(x))
            }
        })
    };
    let asserts = (0..rng.range(1, 3))
        .map(|_| {
            let cond = match rng.weighted(&[40, 20, 20, 20]) {
                0 => count(&mut rng),
                1 => all_in(rng.below_usize(states), true),
                2 => E::And(
                    Box::new(all_in(rng.below_usize(states), false)),
                    Box::new(count(&mut rng)),
                ),
                _ => E::In("d0".into(), rng.below_usize(states)),
            };
            Assert {
                never: rng.pct(50),
                cond,
            }
        })
        .collect();
    Policy {
        types: vec![ty],
        devs,
        rules,
        asserts,
    }
}

/// The search with symmetry reduction (devices the rules and the condition treat alike
/// searched once per orbit) agrees with the search without: the same verdict wherever
/// both decide, and runs of the same length. Forced on every cone (`compose_above: 0`);
/// by default it only runs where the product is large.
#[test]
fn symmetry_reduction_agrees_with_the_plain_search() {
    let solver = Z3Solver::new(10_000);
    let on = verify::Options {
        compose_above: 0,
        ..verify::Options::default()
    };
    let off = verify::Options {
        symmetry: false,
        ..on.clone()
    };
    let (mut compared, mut fewer, mut runs) = (0, 0, 0);
    for (case, seed) in case_list(env_number("KALKI_DIFF_CASES", DEFAULT_CASES) / 4) {
        let p = gen_symmetric(seed);
        let r = render(&p);
        let verdicts = |opts: &verify::Options| assertions_of(&r.text, &solver, opts);
        let (with, without) = (verdicts(&on), verdicts(&off));
        assert_eq!(with.len(), without.len(), "{}", r.text);
        for (a, b) in with.iter().zip(&without) {
            if a.explored < b.explored {
                fewer += 1;
            }
            same_verdicts(
                (case, seed, &r.text),
                ("with symmetry", a),
                ("without", b),
                (&mut compared, &mut runs),
            );
        }
    }
    eprintln!(
        "{compared} assertions compared, {fewer} with fewer states explored, {runs} with a run"
    );
    assert!(
        compared > 200 && fewer > 50 && runs > 50,
        "the test exercises too little: {compared} compared, {fewer} reduced, {runs} runs"
    );
}

// ---------------------------------------------------------------- a broken encoding

/// Z3 behind a deliberately wrong encoding: every `a <= b` is asked as `a < b`.
struct LeAsLt(Z3Solver);

fn le_as_lt(t: &Term) -> Term {
    let b = |t: &Term| Box::new(le_as_lt(t));
    match t {
        Term::Cmp(CmpOp::Le, x, y) => Term::Cmp(CmpOp::Lt, b(x), b(y)),
        Term::Cmp(op, x, y) => Term::Cmp(*op, b(x), b(y)),
        Term::Not(x) => Term::Not(b(x)),
        Term::Neg(x) => Term::Neg(b(x)),
        Term::And(xs) => Term::And(xs.iter().map(le_as_lt).collect()),
        Term::Or(xs) => Term::Or(xs.iter().map(le_as_lt).collect()),
        Term::Arith(op, x, y) => Term::Arith(*op, b(x), b(y)),
        Term::BitAnd(x, y) => Term::BitAnd(b(x), b(y)),
        Term::Bool(_) | Term::Int(_) | Term::Bits { .. } | Term::Var(_) => t.clone(),
    }
}

impl Solver for LeAsLt {
    fn solve(&self, q: &Query) -> Outcome {
        let mut q = q.clone();
        q.facts = q.facts.iter().map(le_as_lt).collect();
        self.0.solve(&q)
    }
}

#[test]
fn a_broken_encoder_is_caught() {
    let started = Instant::now();
    let solver = LeAsLt(Z3Solver::new(10_000));
    let cases: Vec<(u64, u64)> = (0..env_number("KALKI_DIFF_BROKEN_CASES", BROKEN_CASES))
        .map(|i| (i, mix(BASE_SEED + i)))
        .collect();
    let mut stats = Stats::default();
    let (found, reports) = differential(&cases, &solver, 1, &mut stats);
    let total: usize = found.values().sum();
    eprintln!(
        "broken encoder: {total} of {} cases contradicted ({found:?}) in {:.1}s; the first, shrunk:\n{}",
        cases.len(),
        started.elapsed().as_secs_f64(),
        reports.join("\n")
    );
    assert!(total > 0, "reading `<=` as `<` went unnoticed: {stats:?}");
}
