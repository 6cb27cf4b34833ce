//! Differential test of the verifier: for small random policies, brute-force enumeration
//! of readings and event sequences, as the runtime engine takes them (the first enabled
//! transition; readings of only some values; a never-reported value unknown), must agree
//! with the verdicts of `kalkic verify` on dead guards (K202), overlapping guards (K201),
//! unreachable states (K203), and `reachable` assertions over two devices joined by a
//! rule (K210; unknown only where the brute force cannot reach it either: a run the
//! engine does not follow).
//!
//! Case count: `KALKI_FUZZ_CASES` (default 64).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kalki_compiler::diag::Diagnostic;
use kalki_compiler::source::{LoadError, SourceLoader};
use kalki_compiler::verify::{self, z3::Z3Solver, Status};
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

const X_HI: i64 = 5;

#[derive(Debug, Clone)]
enum Guard {
    Cmp(&'static str, i64),
    B,
    Not(Box<Guard>),
    And(Box<Guard>, Box<Guard>),
    Or(Box<Guard>, Box<Guard>),
}

impl Guard {
    fn text(&self) -> String {
        match self {
            Guard::Cmp(op, c) => format!("x {op} {c}"),
            Guard::B => "b".into(),
            Guard::Not(g) => format!("not ({})", g.text()),
            Guard::And(a, b) => format!("({}) and ({})", a.text(), b.text()),
            Guard::Or(a, b) => format!("({}) or ({})", a.text(), b.text()),
        }
    }
    fn eval(&self, x: i64, b: bool) -> bool {
        match self {
            Guard::Cmp(op, c) => match *op {
                "<" => x < *c,
                "<=" => x <= *c,
                ">" => x > *c,
                ">=" => x >= *c,
                "==" => x == *c,
                _ => x != *c,
            },
            Guard::B => b,
            Guard::Not(g) => !g.eval(x, b),
            Guard::And(p, q) => p.eval(x, b) && q.eval(x, b),
            Guard::Or(p, q) => p.eval(x, b) || q.eval(x, b),
        }
    }
    /// As the engine evaluates it: a value never reported is unknown, and a guard that
    /// is not known to hold does not fire (Kleene logic).
    fn eval3(&self, v: Vals) -> Option<bool> {
        let (x, b) = v;
        match self {
            Guard::Cmp(..) => x.map(|x| self.eval(x, false)),
            Guard::B => b,
            Guard::Not(g) => g.eval3(v).map(|r| !r),
            Guard::And(p, q) => match (p.eval3(v), q.eval3(v)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Guard::Or(p, q) => match (p.eval3(v), q.eval3(v)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
        }
    }
    fn satisfiable(&self) -> bool {
        readings().any(|(x, b)| self.eval(x, b))
    }
}

fn readings() -> impl Iterator<Item = (i64, bool)> {
    (0..=X_HI).flat_map(|x| [(x, false), (x, true)])
}

/// A device's last reported `x` and `b` (`None`: never reported).
type Vals = (Option<i64>, Option<bool>);

/// Every reading a device can send: any non-empty part of its values.
fn reports() -> impl Iterator<Item = Vals> {
    let xs = (0..=X_HI).map(|x| (Some(x), None));
    let bs = [false, true].into_iter().map(|b| (None, Some(b)));
    let both = readings().map(|(x, b)| (Some(x), Some(b)));
    xs.chain(bs).chain(both)
}

/// A device: its state and what it has reported.
type Dev = (usize, Vals);

fn guard() -> impl Strategy<Value = Guard> {
    let leaf = prop_oneof![
        (
            prop::sample::select(vec!["<", "<=", ">", ">=", "==", "!="]),
            -1i64..=X_HI + 1
        )
            .prop_map(|(op, c)| Guard::Cmp(op, c)),
        Just(Guard::B),
    ];
    leaf.prop_recursive(3, 8, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|g| Guard::Not(Box::new(g))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Guard::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Guard::Or(Box::new(a), Box::new(b))),
        ]
    })
}

#[derive(Debug, Clone)]
enum Trig {
    When(Guard),
    Alert(bool),
}

#[derive(Debug, Clone)]
struct Tr {
    from: usize,
    to: usize,
    trig: Trig,
}

#[derive(Debug, Clone)]
struct Case {
    states: usize,
    trs: Vec<Tr>,
    /// Rule: when `a in rule_if` then `b -> rule_to`.
    rule_if: usize,
    rule_to: usize,
    /// Assertion: reachable `b in target`.
    target: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (2usize..=4)
        .prop_flat_map(|n| {
            let tr = (
                0..n,
                0..n,
                prop_oneof![
                    guard().prop_map(Trig::When),
                    any::<bool>().prop_map(Trig::Alert)
                ],
            )
                .prop_map(|(from, to, trig)| Tr { from, to, trig });
            (Just(n), prop::collection::vec(tr, 1..6), 0..n, 0..n, 0..n)
        })
        .prop_map(|(states, trs, rule_if, rule_to, target)| Case {
            states,
            trs,
            rule_if,
            rule_to,
            target,
        })
}

fn state(i: usize) -> String {
    format!("s{i}")
}

/// Renders the case; transition `i` is on line `FIRST_TR_LINE + i` (1-based).
const FIRST_TR_LINE: usize = 11;

fn render(c: &Case) -> String {
    let names: Vec<String> = (0..c.states).map(state).collect();
    let mut s = String::new();
    s.push_str("umbox mon {\n    image \"m:1\"\n    emits a0, a1\n}\n");
    s.push_str("device type T {\n    sensed x: int in 0..5\n    sensed b: bool\n");
    s.push_str(&format!(
        "    states {}\n    initial s0\n",
        names.join(" < ")
    ));
    s.push_str(&format!(
        "    {}\n",
        names
            .iter()
            .map(|n| format!("{n} {{ chain [mon] }}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    assert_eq!(s.lines().count() + 1, FIRST_TR_LINE);
    for t in &c.trs {
        let trig = match &t.trig {
            Trig::When(g) => format!("when {}", g.text()),
            Trig::Alert(a) => format!("on a{}", u8::from(*a)),
        };
        s.push_str(&format!(
            "    {} -> {} {trig}\n",
            state(t.from),
            state(t.to)
        ));
    }
    s.push_str("}\nsite lab {\n    bridge \"br0\" uplink \"up0\"\n");
    s.push_str("    device a: T at 10.0.0.1 port \"p1\" trusted\n    device b: T at 10.0.0.2 port \"p2\" trusted\n");
    s.push_str(&format!(
        "    rule r when a in {} then b -> {}\n",
        state(c.rule_if),
        state(c.rule_to)
    ));
    s.push_str(&format!(
        "    assert reachable b in {}\n}}\n",
        state(c.target)
    ));
    s
}

/// What one device can do from `from` on one input, as the engine does it
/// (`docs/runtime.md`, "Semantics"): on a reading (of some of its values; the others keep
/// their last value, or stay unknown) the first transition whose guard is known to hold,
/// in declaration order; on an alert the first transition that waits for it. Each with
/// whether a transition was taken (an entry, even back into the same state).
fn successors(c: &Case, from: Dev) -> BTreeSet<(Dev, bool)> {
    let (state, vals) = from;
    let out_of = || c.trs.iter().filter(|t| t.from == state);
    let mut out = BTreeSet::new();
    for r in reports() {
        let now = (r.0.or(vals.0), r.1.or(vals.1));
        let first =
            out_of().find(|t| matches!(&t.trig, Trig::When(g) if g.eval3(now) == Some(true)));
        out.insert(match first {
            Some(t) => ((t.to, now), true),
            None => ((state, now), false),
        });
    }
    for alert in [false, true] {
        let first = out_of().find(|t| matches!(&t.trig, Trig::Alert(a) if *a == alert));
        out.extend(first.map(|t| ((t.to, vals), true)));
    }
    out
}

/// Every state of one device on its own, with whether it is entered by a transition.
fn alone(c: &Case, start: Dev) -> BTreeSet<(Dev, bool)> {
    let mut seen = BTreeSet::from([(start, false)]);
    let mut todo = vec![start];
    while let Some(d) = todo.pop() {
        for n in successors(c, d) {
            if seen.insert(n) {
                todo.push(n.0);
            }
        }
    }
    seen
}

/// Whether the rule can ever fire: it reads only `a`'s state, so the engine evaluates it
/// only when `a` enters a state (never at the start), and `a` must enter `rule_if` by a
/// transition it can take (`docs/runtime.md`, "Rules").
fn rule_fires(c: &Case) -> bool {
    alone(c, (0, (None, None)))
        .iter()
        .any(|((s, _), entered)| *entered && *s == c.rule_if)
}

/// Brute force over the two-device product, rule included: (a, b, whether the rule is
/// due, i.e. `a` entered a state since it last fired). The engine settles the rule at
/// once after the input that made it due.
fn product_reaches(c: &Case) -> bool {
    let start: (Dev, Dev) = ((0, (None, None)), (0, (None, None)));
    let mut seen = BTreeSet::from([start]);
    let mut todo = vec![start];
    while let Some((a, b)) = todo.pop() {
        if b.0 == c.target {
            return true;
        }
        let mut next: Vec<(Dev, Dev)> = Vec::new();
        for (n, entered) in successors(c, a) {
            // The rule fires within the same moment as `a`'s entry into `rule_if`.
            if entered && n.0 == c.rule_if {
                next.push((n, (c.rule_to, b.1)));
            } else {
                next.push((n, b));
            }
        }
        next.extend(successors(c, b).into_iter().map(|(n, _)| (a, n)));
        for n in next {
            if seen.insert(n) {
                todo.push(n);
            }
        }
    }
    false
}

struct Mem(HashMap<PathBuf, String>);

impl SourceLoader for Mem {
    fn read_file(&self, path: &Path) -> Result<String, LoadError> {
        self.0.get(path).cloned().ok_or(LoadError::NotFound)
    }
}

fn line_of(src: &str, d: &Diagnostic) -> usize {
    let at = d.main_loc().unwrap().span.start;
    src[..at].matches('\n').count() + 1
}

fn lines_of(src: &str, d: &Diagnostic) -> BTreeSet<usize> {
    d.labels
        .iter()
        .map(|l| src[..l.loc.span.start].matches('\n').count() + 1)
        .collect()
}

fn run(c: &Case) {
    let src = render(c);
    let path = PathBuf::from("case.kalki");
    let loader = Mem(HashMap::from([(path.clone(), src.clone())]));
    let solver = Z3Solver::new(10_000);
    let (checked, verified) =
        kalki_compiler::verify(&[path], &loader, &solver, &verify::Options::default());
    assert!(
        checked.diagnostics.iter().all(|d| d.code.starts_with("K2")),
        "generated policy does not check:\n{src}\n{:#?}",
        checked.diagnostics
    );
    let verified = verified.expect("checked model");
    let diags = &checked.diagnostics;
    let tr_line = |i: usize| FIRST_TR_LINE + i;

    // K202: exactly the unsatisfiable guards, and the rule when no transition at all
    // enters the state it tests (it reads only states, so only such an entry makes it due).
    let dead_lines: BTreeSet<usize> = diags
        .iter()
        .filter(|d| d.code == "K202")
        .map(|d| line_of(&src, d))
        .collect();
    let rule_line = tr_line(c.trs.len()) + 5;
    let mut expect_dead: BTreeSet<usize> = c
        .trs
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(&t.trig, Trig::When(g) if !g.satisfiable()))
        .map(|(i, _)| tr_line(i))
        .collect();
    if !c.trs.iter().any(|t| t.to == c.rule_if) {
        expect_dead.insert(rule_line);
    }
    assert_eq!(dead_lines, expect_dead, "K202 disagrees on\n{src}");

    // K201: exactly the pairs of live `when` guards out of one state that overlap with
    // different targets.
    let mut expect_nd: BTreeSet<BTreeSet<usize>> = BTreeSet::new();
    for (i, p) in c.trs.iter().enumerate() {
        for (j, q) in c.trs.iter().enumerate().skip(i + 1) {
            let (Trig::When(g), Trig::When(h)) = (&p.trig, &q.trig) else {
                if let (Trig::Alert(x), Trig::Alert(y)) = (&p.trig, &q.trig) {
                    if x == y && p.from == q.from && p.to != q.to {
                        expect_nd.insert(BTreeSet::from([tr_line(i), tr_line(j)]));
                    }
                }
                continue;
            };
            let overlap = readings().any(|(x, b)| g.eval(x, b) && h.eval(x, b));
            let live = g.satisfiable() && h.satisfiable();
            if p.from == q.from && p.to != q.to && overlap && live {
                expect_nd.insert(BTreeSet::from([tr_line(i), tr_line(j)]));
            }
        }
    }
    let nd: BTreeSet<BTreeSet<usize>> = diags
        .iter()
        .filter(|d| d.code == "K201")
        .map(|d| {
            lines_of(&src, d)
                .into_iter()
                .filter(|l| *l >= FIRST_TR_LINE)
                .collect()
        })
        .collect();
    assert_eq!(nd, expect_nd, "K201 disagrees on\n{src}");

    // K203: the states the device cannot reach by itself or by the rule (which can move
    // `b` to rule_to, with whatever it has reported, once `a` enters rule_if).
    let mut devs = alone(c, (0, (None, None)));
    if rule_fires(c) {
        let moved: Vec<Dev> = devs.iter().map(|((_, v), _)| (c.rule_to, *v)).collect();
        for d in moved {
            devs.extend(alone(c, d));
        }
    }
    let reach: BTreeSet<usize> = devs.into_iter().map(|((s, _), _)| s).collect();
    let unreachable: BTreeSet<String> = diags
        .iter()
        .filter(|d| d.code == "K203")
        .map(|d| {
            d.witness.as_ref().unwrap()["state"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // The per-type check over-approximates rule moves (any device of the type may be
    // moved), so it may find fewer unreachable states than the exact per-device answer,
    // never more.
    let exact: BTreeSet<String> = (0..c.states)
        .filter(|s| !reach.contains(s))
        .map(state)
        .collect();
    assert!(
        unreachable.is_subset(&exact),
        "K203 reports a reachable state on\n{src}\nreported {unreachable:?}, exact {exact:?}"
    );

    // K210: the assertion verdict equals the brute-force product search (rules here read
    // only states, where the abstraction is exact: it tracks whether the rule is due).
    let verdict = &verified.assertions[0].status;
    let expected = product_reaches(c);
    match verdict {
        Status::Proved => assert!(
            expected,
            "verifier proved an unreachable assertion on\n{src}"
        ),
        Status::Refuted => assert!(
            !expected,
            "verifier refuted a reachable assertion on\n{src}"
        ),
        // The search lets a device take any enabled transition, the engine the first: a
        // run through one the engine never takes does not replay, and the verdict is
        // unknown. Only where the engine cannot reach it either.
        Status::Unknown(why) => assert!(
            !expected,
            "unknown verdict ({why}) on a reachable assertion on\n{src}"
        ),
    }
}

fn cases() -> u32 {
    std::env::var("KALKI_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(64, |n: u32| (n / 10).clamp(16, 400))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn verifier_agrees_with_brute_force(c in case()) {
        run(&c);
    }
}
