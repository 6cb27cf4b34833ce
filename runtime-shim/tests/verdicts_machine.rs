//! The verifier's per-type verdicts on competing transitions (K201, K203, K204, K211),
//! replayed through the engine, the reference semantics (`docs/runtime.md`, "Semantics").
//! Each test compiles a fixture of `tests/fixtures/verify/` (errors or not), checks the
//! verdict, then drives the engine to show it: a state never entered, a state never left,
//! two timers running out at one instant, a transition that does fire although an earlier
//! verifier called it shadowed. Random traces use a fixed-seed generator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{load, repo_root, MemReader};
use kalki_compiler::codegen::bundle as codegen;
use kalki_compiler::source::{LoadError, SourceLoader};
use kalki_compiler::verify::{self, z3::Z3Solver};
use kalki_shim::bundle::Bundle;
use kalki_shim::engine::{Cause, Config, Effect, Engine, Input, Step};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MIN: u64 = 60_000;

/// One file in memory, everything else (the standard library aside) from the repository.
struct Loader {
    path: PathBuf,
    text: String,
}

impl SourceLoader for Loader {
    fn read_file(&self, path: &Path) -> Result<String, LoadError> {
        if path == self.path {
            return Ok(self.text.clone());
        }
        std::fs::read_to_string(repo_root().join(path)).map_err(|_| LoadError::NotFound)
    }
}

fn fixture_text(stem: &str) -> String {
    std::fs::read_to_string(repo_root().join(format!("tests/fixtures/verify/{stem}.kalki")))
        .unwrap()
}

/// Verifies a policy and builds its only site's bundle even when the verifier reports
/// errors (the runtime must still show what they mean). Returns the codes found.
fn compile(stem: &str, text: &str) -> (Vec<&'static str>, Bundle) {
    let path = PathBuf::from(format!("tests/fixtures/verify/{stem}.kalki"));
    let loader = Loader {
        path: path.clone(),
        text: text.to_string(),
    };
    let solver = Z3Solver::new(10_000);
    let (checked, verified) =
        kalki_compiler::verify(&[path], &loader, &solver, &verify::Options::default());
    assert!(verified.is_some(), "{:#?}", checked.diagnostics);
    let mut codes: Vec<&'static str> = checked.diagnostics.iter().map(|d| d.code).collect();
    codes.dedup();
    let model = checked.model.as_ref().unwrap();
    let b = codegen::build(model, &model.sites[0], &checked.sources, &solver).unwrap();
    (codes, load(&MemReader::new(&b)).unwrap())
}

fn fixture(stem: &str) -> (Vec<&'static str>, Bundle) {
    compile(stem, &fixture_text(stem))
}

fn reading(device: &str, values: serde_json::Value) -> Input {
    let values: BTreeMap<String, serde_json::Value> = serde_json::from_value(values).unwrap();
    Input::Reading {
        device: device.into(),
        values,
    }
}

/// The device's own alert (its type declares it).
fn alert(device: &str, alert: &str) -> Input {
    Input::Alert {
        device: device.into(),
        alert: alert.into(),
        source: None,
    }
}

/// An alert from the device's µmbox `umbox`.
fn from(device: &str, umbox: &str, alert: &str) -> Input {
    Input::Alert {
        device: device.into(),
        alert: alert.into(),
        source: Some(umbox.into()),
    }
}

/// State changes as `t: from -> to (trigger)`, guards elided (`when ... for 1m`).
fn show(e: &Engine, steps: &[Step]) -> Vec<String> {
    let mut out = Vec::new();
    for s in steps {
        for fx in &s.effects {
            if let Effect::StateChange {
                device,
                from,
                to,
                cause,
            } = fx
            {
                let ti = match cause {
                    Cause::Alert { transition, .. }
                    | Cause::Reading { transition }
                    | Cause::Held { transition }
                    | Cause::Quiet { transition }
                    | Cause::Silent { transition }
                    | Cause::Operator { transition, .. } => *transition,
                    Cause::Rule { .. } => panic!("no rules here"),
                };
                let tr = e.transition(*device, ti).unwrap().trigger.to_string();
                out.push(format!(
                    "{}: {} -> {} ({tr})",
                    s.t_ms,
                    e.state_name(*device, *from),
                    e.state_name(*device, *to)
                ));
            }
        }
    }
    out
}

fn step(e: &mut Engine, t: u64, input: Input) -> Vec<String> {
    let steps = e.handle(t, &input).unwrap();
    show(e, &steps)
}

/// A fixed-seed generator (PCG-style LCG): the same traces on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Runs `steps` random inputs of `make` (given the generator), each 0 to `gap_ms` after
/// the previous one, and returns every state change on the way.
fn random_trace(
    b: &Bundle,
    seed: u64,
    steps: usize,
    gap_ms: u64,
    mut make: impl FnMut(&mut Rng) -> Input,
) -> Vec<String> {
    let mut e = Engine::new(b, Config::default(), 0);
    let mut rng = Rng(seed);
    let mut t = 0;
    let mut out = Vec::new();
    for _ in 0..steps {
        t += rng.below(gap_ms + 1);
        let input = make(&mut rng);
        out.extend(step(&mut e, t, input));
    }
    out
}

/// A boiler's inputs: a temperature, a tamper alert or time passing.
fn boiler_input(rng: &mut Rng) -> Input {
    match rng.below(4) {
        0 => alert("boiler", "tamper"),
        1 => Input::Tick,
        _ => reading("boiler", json!({ "temp": rng.below(101) })),
    }
}

// ---- K203: a state entered only by a shadowed transition ------------------------------

#[test]
fn a_state_entered_only_by_a_shadowed_transition_is_never_entered() {
    let (codes, b) = fixture("k203_only_entry_is_shadowed");
    assert!(
        codes.contains(&"K203") && codes.contains(&"K211"),
        "{codes:?}"
    );
    // Hot from the start: both holds start at once, the 1m one runs out first.
    let mut e = Engine::new(&b, Config::default(), 0);
    step(&mut e, 0, reading("boiler", json!({ "temp": 90 })));
    assert_eq!(
        step(&mut e, 60 * MIN, Input::Tick),
        [
            "60000: normal -> suspicious (when ... for 1m)",
            // Quiet 10m later; still hot, so the 1m hold starts over on entering.
            "660000: suspicious -> normal (after 10m quiet)",
            "720000: normal -> suspicious (when ... for 1m)",
            "1320000: suspicious -> normal (after 10m quiet)",
            "1380000: normal -> suspicious (when ... for 1m)",
            "1980000: suspicious -> normal (after 10m quiet)",
            "2040000: normal -> suspicious (when ... for 1m)",
            "2640000: suspicious -> normal (after 10m quiet)",
            "2700000: normal -> suspicious (when ... for 1m)",
            "3300000: suspicious -> normal (after 10m quiet)",
            "3360000: normal -> suspicious (when ... for 1m)",
        ]
    );
    for seed in 0..20 {
        let changes = random_trace(&b, seed, 500, 3 * MIN, boiler_input);
        assert!(changes.iter().any(|c| c.contains("-> suspicious")));
        assert!(
            changes.iter().all(|c| !c.contains("-> attack")),
            "seed {seed}: {changes:#?}"
        );
    }
}

#[test]
fn near_miss_the_stricter_guard_with_the_shorter_hold_enters_the_state() {
    let (codes, b) = fixture("k203_only_entry_is_shadowed_near_miss");
    assert!(
        !codes.contains(&"K203") && !codes.contains(&"K211"),
        "{codes:?}"
    );
    let mut e = Engine::new(&b, Config::default(), 0);
    step(&mut e, 0, reading("boiler", json!({ "temp": 90 })));
    assert_eq!(
        step(&mut e, 2 * MIN, Input::Tick),
        ["60000: normal -> attack (when ... for 1m)"]
    );
    // And at 40 °C the 5m hold is the only one.
    let mut e = Engine::new(&b, Config::default(), 0);
    step(&mut e, 0, reading("boiler", json!({ "temp": 40 })));
    assert_eq!(
        step(&mut e, 6 * MIN, Input::Tick),
        ["300000: normal -> suspicious (when ... for 5m)"]
    );
}

// ---- K204: a state whose only way out is shadowed --------------------------------------

/// Three scans within a minute: `normal` to `suspicious` to `attack`.
fn into_attack(e: &mut Engine) {
    let scan = || from("cam", "sniffer", "port_scan");
    step(e, 0, scan());
    step(e, 1_000, scan());
    assert_eq!(
        step(e, 2_000, scan()),
        ["2000: suspicious -> attack (on port_scan count 3 within 1m)"]
    );
}

#[test]
fn a_state_whose_only_exit_is_shadowed_is_never_left() {
    let (codes, b) = fixture("k204_only_exit_is_shadowed");
    assert!(
        codes.contains(&"K204") && codes.contains(&"K211"),
        "{codes:?}"
    );
    let mut e = Engine::new(&b, Config::default(), 0);
    into_attack(&mut e);
    // A day of quiet: the 5m re-arm every 5 minutes, never the 10m way back.
    let changes = step(&mut e, 2_000 + 24 * 60 * MIN, Input::Tick);
    assert_eq!(changes.len(), 24 * 60 / 5);
    assert!(
        changes
            .iter()
            .all(|c| c.ends_with("attack -> attack (after 5m quiet)")),
        "{changes:#?}"
    );
    // Nor with alerts offered on the way: in `attack` (a `drop` chain) no µmbox speaks for
    // the camera, so they are refused (S111) and time passes all the same.
    for seed in 0..10 {
        let mut e = Engine::new(&b, Config::default(), 0);
        into_attack(&mut e);
        let mut rng = Rng(seed);
        let mut t = 2_000;
        for _ in 0..300 {
            t += rng.below(12 * MIN);
            let input = if rng.below(3) == 0 {
                from("cam", "sniffer", "port_scan")
            } else {
                Input::Tick
            };
            let changes = match e.handle(t, &input) {
                Ok(steps) => show(&e, &steps),
                Err(_) => step(&mut e, t, Input::Tick),
            };
            assert!(
                changes.iter().all(|c| !c.contains("-> normal")),
                "{changes:#?}"
            );
        }
    }
}

#[test]
fn near_miss_the_shorter_way_back_leaves_the_state() {
    let (codes, b) = fixture("k204_only_exit_is_shadowed_near_miss");
    assert!(!codes.contains(&"K204"), "{codes:?}");
    let mut e = Engine::new(&b, Config::default(), 0);
    into_attack(&mut e);
    assert_eq!(
        step(&mut e, 2_000 + 60 * MIN, Input::Tick),
        ["602000: attack -> normal (after 10m quiet)"]
    );
}

// ---- K201: a hold and a quiet time of one length ---------------------------------------

/// Already hot in `normal`, then a tamper at 1s moves the boiler to `suspicious`.
fn hot_then_tamper(b: &Bundle) -> Engine {
    let mut e = Engine::new(b, Config::default(), 0);
    step(&mut e, 0, reading("boiler", json!({ "temp": 90 })));
    assert_eq!(
        step(&mut e, 1_000, alert("boiler", "tamper")),
        ["1000: normal -> suspicious (on tamper)"]
    );
    e
}

#[test]
fn a_hold_and_a_quiet_time_of_one_length_run_out_at_one_instant() {
    let stem = "k201_hold_and_quiet_same_time";
    let text = fixture_text(stem);
    let (codes, b) = compile(stem, &text);
    assert!(codes.contains(&"K201"), "{codes:?}");
    // The hold started on entering (the guard already held), the quiet time too: both run
    // out at 1s + 10m, and only the order of declaration picks one.
    let mut e = hot_then_tamper(&b);
    assert_eq!(e.next_deadline(), Some(1_000 + 10 * MIN));
    assert_eq!(
        step(&mut e, 20 * MIN, Input::Tick),
        ["601000: suspicious -> attack (when ... for 10m)"]
    );
    // The same policy with the two lines swapped goes elsewhere at the same instant.
    let hold = "    suspicious -> attack     when temp > 80 for 10m\n";
    let quiet = "    suspicious -> normal     after 10m quiet\n";
    let swapped = text.replace(&format!("{hold}{quiet}"), &format!("{quiet}{hold}"));
    assert_ne!(swapped, text);
    let (codes, b) = compile(stem, &swapped);
    assert!(codes.contains(&"K201"), "{codes:?}");
    let mut e = hot_then_tamper(&b);
    assert_eq!(
        step(&mut e, 20 * MIN, Input::Tick),
        ["601000: suspicious -> normal (after 10m quiet)"]
    );
}

#[test]
fn near_miss_a_hold_and_a_longer_quiet_time_either_comes_first() {
    let (codes, b) = fixture("k201_hold_and_quiet_same_time_near_miss");
    assert!(
        !codes.contains(&"K201") && !codes.contains(&"K211"),
        "{codes:?}"
    );
    // Hot on entering: the 5m hold first.
    let mut e = hot_then_tamper(&b);
    assert_eq!(
        step(&mut e, 20 * MIN, Input::Tick),
        ["301000: suspicious -> attack (when ... for 5m)"]
    );
    // Hot only 6m after entering: the quiet time first.
    let mut e = Engine::new(&b, Config::default(), 0);
    step(&mut e, 1_000, alert("boiler", "tamper"));
    step(
        &mut e,
        1_000 + 6 * MIN,
        reading("boiler", json!({ "temp": 90 })),
    );
    assert_eq!(
        step(&mut e, 20 * MIN, Input::Tick),
        ["601000: suspicious -> normal (after 10m quiet)"]
    );
}

// ---- K211: quiet time and holds; guards that are unknown -------------------------------

fn fridge_input(rng: &mut Rng) -> Input {
    match rng.below(3) {
        0 => Input::Tick,
        _ => reading("fridge", json!({ "temp": rng.below(61) as i64 - 30 })),
    }
}

#[test]
fn without_alerts_a_shorter_quiet_time_always_beats_a_hold() {
    let (codes, b) = fixture("k211_quiet_before_hold_without_alerts");
    assert!(
        codes.contains(&"K211") && codes.contains(&"K203"),
        "{codes:?}"
    );
    // No alert of any name reaches a fridge.
    let e = Engine::new(&b, Config::default(), 0);
    assert!(e.validate(0, &alert("fridge", "door_forced")).is_err());
    let mut e = Engine::new(&b, Config::default(), 0);
    assert_eq!(
        step(&mut e, 0, reading("fridge", json!({ "temp": 20 }))),
        ["0: normal -> warm (when ...)"]
    );
    assert_eq!(
        step(&mut e, 60 * MIN, Input::Tick),
        ["600000: warm -> normal (after 10m quiet)"]
    );
    for seed in 0..20 {
        let changes = random_trace(&b, seed, 500, 40 * MIN, fridge_input);
        assert!(changes.iter().any(|c| c.contains("-> warm")));
        assert!(
            changes.iter().all(|c| !c.contains("-> attack")),
            "seed {seed}: {changes:#?}"
        );
    }
}

#[test]
fn near_miss_an_alert_postpones_the_quiet_time_past_the_hold() {
    let (codes, b) = fixture("k211_quiet_before_hold_without_alerts_near_miss");
    assert!(!codes.contains(&"K211"), "{codes:?}");
    let mut e = Engine::new(&b, Config::default(), 0);
    step(&mut e, 0, reading("fridge", json!({ "temp": 20 })));
    for k in 1..6 {
        assert!(step(&mut e, k * 5 * MIN, alert("fridge", "door_forced")).is_empty());
    }
    assert_eq!(
        step(&mut e, 60 * MIN, Input::Tick),
        ["1800000: warm -> attack (when ... for 30m)"]
    );
}

#[test]
fn a_held_guard_over_an_aggregate_that_implies_the_shorter_one_never_fires() {
    let (codes, b) = fixture("k211_held_aggregate_guard");
    assert!(codes.contains(&"K211"), "{codes:?}");
    for seed in 0..20 {
        let changes = random_trace(&b, seed, 500, 3 * MIN, boiler_input);
        assert!(changes.iter().any(|c| c.contains("-> attack (on tamper)")));
        assert!(
            changes.iter().all(|c| !c.contains("normal -> attack")),
            "seed {seed}: {changes:#?}"
        );
    }
}

#[test]
fn near_miss_an_aggregate_unknown_until_its_window_fills_lets_the_longer_hold_fire() {
    let (codes, b) = fixture("k211_held_aggregate_guard_near_miss");
    assert!(!codes.contains(&"K211"), "{codes:?}");
    // One hot reading: `max(temp, last 3)` has no value, so only the 5m hold runs.
    let mut e = Engine::new(&b, Config::default(), 0);
    step(&mut e, 0, reading("boiler", json!({ "temp": 90 })));
    assert_eq!(
        step(&mut e, 10 * MIN, Input::Tick),
        ["300000: normal -> attack (when ... for 5m)"]
    );
}

#[test]
fn near_miss_a_plain_guard_does_not_beat_a_hold_that_starts_on_entering() {
    let (codes, b) = fixture("k211_plain_guard_before_hold_near_miss");
    assert!(!codes.contains(&"K211"), "{codes:?}");
    // Hot before the tamper: entering `suspicious` starts the hold, `when temp > 30` waits
    // for a reading that never comes.
    let mut e = hot_then_tamper(&b);
    assert_eq!(
        step(&mut e, 10 * MIN, Input::Tick),
        ["301000: suspicious -> attack (when ... for 5m)"]
    );
}

// ---- K211 on held guards, at random ----------------------------------------------------

/// A random guard over `x` (0..10, with aggregates over up to 3 readings) and `b`.
fn guard(rng: &mut Rng, depth: u32) -> String {
    const OPS: [&str; 6] = ["<", "<=", ">", ">=", "==", "!="];
    let op = |rng: &mut Rng| OPS[rng.below(6) as usize];
    match rng.below(if depth == 0 { 3 } else { 6 }) {
        0 => format!("x {} {}", op(rng), rng.below(11)),
        1 => {
            let agg = ["min", "max", "avg", "sum"][rng.below(4) as usize];
            let n = 1 + rng.below(3);
            let scale = if agg == "sum" { n } else { 1 };
            format!("{agg}(x, last {n}) {} {}", op(rng), rng.below(11) * scale)
        }
        2 => ["b", "not b"][rng.below(2) as usize].to_string(),
        3 => format!("not ({})", guard(rng, depth - 1)),
        4 => format!(
            "({}) and ({})",
            guard(rng, depth - 1),
            guard(rng, depth - 1)
        ),
        _ => format!("({}) or ({})", guard(rng, depth - 1), guard(rng, depth - 1)),
    }
}

/// Whenever the verifier calls `normal -> s2 when G2 for 5m` shadowed by `normal -> s1
/// when G1 for 1m` (K211), no trace of the engine takes it: readings of any subset of the
/// variables (so values and aggregates start unknown), time, the operator.
#[test]
fn a_held_guard_called_shadowed_never_fires_in_random_traces() {
    let mut rng = Rng(7);
    let mut shadowed = 0;
    for case in 0..120 {
        let (g1, g2) = (guard(&mut rng, 2), guard(&mut rng, 2));
        let text = format!(
            "device type T {{
    sensed x: int in 0..10
    sensed b: bool
    states normal < s1 < s2
    initial normal
    normal {{ chain [pass] }}
    s1 {{ chain [pass] }}
    s2 {{ chain [pass] }}
    normal -> s1 when {g1} for 1m
    normal -> s2 when {g2} for 5m
    s1 -> normal on operator reset
    s2 -> normal on operator reset
}}
site s {{
    bridge \"br0\" uplink \"eth0\"
    device d: T at 10.0.0.1 port \"p1\"
}}
"
        );
        let (codes, b) = compile("random_held_guards", &text);
        if !codes.contains(&"K211") {
            continue;
        }
        shadowed += 1;
        for seed in 0..10 {
            let changes = random_trace(&b, seed, 200, 3 * MIN, |rng| match rng.below(8) {
                0 => Input::Tick,
                1 => Input::Operator {
                    device: "d".into(),
                    action: "reset".into(),
                },
                k => {
                    let x = json!(rng.below(11));
                    let b = json!(rng.below(2) == 0);
                    let values = match k % 3 {
                        0 => json!({ "x": x }),
                        1 => json!({ "b": b }),
                        _ => json!({ "x": x, "b": b }),
                    };
                    reading("d", values)
                }
            });
            assert!(
                changes.iter().all(|c| !c.contains("normal -> s2")),
                "case {case}, seed {seed}: K211 on\n{text}\nbut the engine took it: {changes:#?}"
            );
        }
    }
    assert!(shadowed >= 5, "only {shadowed} cases with K211");
}
