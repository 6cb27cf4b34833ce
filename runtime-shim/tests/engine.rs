//! The engine on a virtual clock, over bundles the real compiler builds: every trigger
//! kind, timers (held guards, quiet periods, count windows, rule clocks), rules across
//! devices, the choice between transitions enabled together, alerts from µmboxes only
//! where their chain deploys them (and what the API's pre-check leaves to the engine), and
//! refused inputs that change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{engine_at, shim_bundle};
use kalki_shim::api::Checker;
use kalki_shim::bundle::Bundle;
use kalki_shim::codes;
use kalki_shim::engine::{Cause, Config, Effect, Engine, Input, InputError, Origin, Step};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::OnceLock;

const LAB: &str = r#"
import std::umboxes::{ids}

device type Box {
    sensed temp: int in -50..150
    sensed door: bool
    sensed mode: enum { off, heat, cool }
    commands beep
    alerts scan, tamper, poke

    states normal < suspicious < attack
    initial normal

    normal     { chain [pass] }
    suspicious { chain [ids] }
    attack     { chain [drop] }

    normal     -> suspicious on tamper
    normal     -> suspicious when temp > 100 for 30s
    normal     -> suspicious when door and mode != heat
    normal     -> suspicious when avg(temp, last 3) > 90
    suspicious -> attack     on scan count 3 within 1m
    suspicious -> normal     after 10m quiet
    attack     -> normal     on operator reset
}

site lab {
    bridge "br0" uplink "eth0"
    device a: Box at 10.0.0.1 port "p1" trusted
    device b: Box at 10.0.0.2 port "p2"

    rule night_door
        when a.door and b in normal and clock in 22:00..06:00
        then b -> suspicious, a.beep
    rule hot_pair
        when a.temp > 120 and b.temp > 120
        then raise tamper on b
}
"#;

/// Out of `suspicious`, `on scan` (one alert) is always met before `on scan count 2
/// within 1m`: the verifier calls the second shadowed (K211, a warning), so the runtime
/// must prefer the first whenever both are enabled by one alert.
const PRIORITY: &str = r#"
device type P {
    sensed x: int in 0..10
    alerts scan, tamper
    states normal < suspicious < attack
    initial normal
    normal     { chain [pass] }
    suspicious { chain [pass] }
    attack     { chain [drop] }
    normal     -> suspicious on tamper
    normal     -> attack     on tamper count 3 within 1m
    suspicious -> normal     on scan
    suspicious -> attack     on scan count 2 within 1m
    // The two `count` transitions above are shadowed (never fire): without a way in
    // that can fire, `attack` would be unreachable (K203) and the policy would not build.
    suspicious -> attack     when x > 9
    attack     -> normal     on operator reset
}

site s {
    bridge "br0" uplink "eth0"
    device p: P at 10.0.0.1 port "p1"
}
"#;

/// A held guard that reads the clock: its truth changes at 22:00 and 23:00 without any
/// reading.
const NIGHT_HOLD: &str = r#"
device type N {
    sensed on: bool
    states normal < suspicious
    initial normal
    normal     { chain [pass] }
    suspicious { chain [pass] }
    normal     -> suspicious when on and clock in 22:00..23:00 for 30m
    suspicious -> normal     on operator reset
}

site s {
    bridge "br0" uplink "eth0"
    device n: N at 10.0.0.1 port "p1"
}
"#;

/// A µmbox speaks for its device only in the states whose chain deploys it: `sniffer` in
/// `normal` and `suspicious`, `ids` only in `suspicious`, none in `attack`.
const CHAINS: &str = r#"
import std::umboxes::{sniffer, ids}

device type Cam {
    sensed motion: bool
    states normal < suspicious < attack
    initial normal

    normal     { chain [sniffer] }
    suspicious { chain [sniffer, ids] }
    attack     { chain [drop] }

    normal     -> suspicious on port_scan
    normal     -> suspicious when motion for 30s
    suspicious -> attack     on brute_force
    suspicious -> normal     after 10m quiet
    attack     -> normal     on operator reset
}

site s {
    bridge "br0" uplink "eth0"
    device c: Cam at 10.0.0.1 port "p1"
}
"#;

fn lab() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| shim_bundle(LAB))
}

const MIN: u64 = 60_000;
/// From noon to the `night_door` rule's 22:00 boundary.
const NOON_TO_22: u64 = 10 * 60 * MIN;

fn reading(device: &str, values: serde_json::Value) -> Input {
    let values: BTreeMap<String, serde_json::Value> = serde_json::from_value(values).unwrap();
    Input::Reading {
        device: device.into(),
        values,
    }
}

fn chains() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| shim_bundle(CHAINS))
}

/// An alert for `device` from its µmbox `umbox`.
fn from(device: &str, umbox: &str, alert: &str) -> Input {
    Input::Alert {
        device: device.into(),
        alert: alert.into(),
        source: Some(umbox.into()),
    }
}

fn codes_of(errs: &[InputError]) -> Vec<&'static str> {
    errs.iter().map(InputError::code).collect()
}

fn alert(device: &str, alert: &str) -> Input {
    Input::Alert {
        device: device.into(),
        alert: alert.into(),
        source: None,
    }
}

fn reset(device: &str) -> Input {
    Input::Operator {
        device: device.into(),
        action: "reset".into(),
    }
}

/// Steps as `t device: from -> to (cause)` lines, causes with their triggers as written.
fn show(e: &Engine, steps: &[Step]) -> Vec<String> {
    let mut out = Vec::new();
    for s in steps {
        for fx in &s.effects {
            out.push(match fx {
                Effect::StateChange {
                    device,
                    from,
                    to,
                    cause,
                } => {
                    let tr = |ti: &usize| e.transition(*device, *ti).unwrap().trigger.to_string();
                    let why = match cause {
                        Cause::Alert {
                            transition, origin, ..
                        } => match origin {
                            Origin::Input { .. } => tr(transition),
                            Origin::Rule { rule } => {
                                format!("{} raised by {}", tr(transition), e.rule_name(*rule))
                            }
                        },
                        Cause::Reading { transition }
                        | Cause::Held { transition }
                        | Cause::Quiet { transition }
                        | Cause::Silent { transition }
                        | Cause::Operator { transition, .. } => tr(transition),
                        Cause::Rule { rule } => format!("rule {}", e.rule_name(*rule)),
                    };
                    format!(
                        "{} {}: {} -> {} ({why})",
                        s.t_ms,
                        e.device_name(*device),
                        e.state_name(*device, *from),
                        e.state_name(*device, *to)
                    )
                }
                Effect::Command {
                    device,
                    command,
                    rule,
                } => format!(
                    "{} {}: command {command} (rule {})",
                    s.t_ms,
                    e.device_name(*device),
                    e.rule_name(*rule)
                ),
                Effect::AlertRaised {
                    device,
                    alert,
                    rule,
                } => format!(
                    "{} {}: raise {alert} (rule {})",
                    s.t_ms,
                    e.device_name(*device),
                    e.rule_name(*rule)
                ),
                Effect::Fault { message } => format!("{} fault: {message}", s.t_ms),
            });
        }
    }
    out
}

/// Applies an input and shows what happened.
fn step(e: &mut Engine, t: u64, input: Input) -> Vec<String> {
    let steps = e.handle(t, &input).unwrap();
    show(e, &steps)
}

fn state(e: &Engine, device: &str) -> String {
    let d = e.device_index(device).unwrap();
    e.state_name(d, e.state(d).unwrap()).to_string()
}

fn noon() -> Engine {
    engine_at(lab(), 12, 0)
}

#[test]
fn an_alert_moves_the_device_and_the_operator_resets_it() {
    let mut e = noon();
    assert_eq!(
        step(&mut e, 1000, alert("a", "tamper")),
        ["1000 a: normal -> suspicious (on tamper)"]
    );
    for t in [2000, 3000] {
        assert!(step(&mut e, t, alert("a", "scan")).is_empty());
    }
    assert_eq!(
        step(&mut e, 4000, alert("a", "scan")),
        ["4000 a: suspicious -> attack (on scan count 3 within 1m)"]
    );
    // An alert the current state does not wait for changes nothing.
    assert!(step(&mut e, 5000, alert("a", "tamper")).is_empty());
    assert_eq!(
        step(&mut e, 6000, reset("a")),
        ["6000 a: attack -> normal (on operator reset)"]
    );
    // A reset where no transition waits for one changes nothing either.
    assert!(step(&mut e, 7000, reset("a")).is_empty());
    assert_eq!(state(&e, "b"), "normal", "the other device is untouched");
}

#[test]
fn an_alert_from_a_umbox_of_the_device() {
    let mut e = noon();
    step(&mut e, 0, alert("a", "tamper"));
    let from_ids = Input::Alert {
        device: "a".into(),
        alert: "port_scan".into(),
        source: Some("ids".into()),
    };
    assert!(
        e.handle(10, &from_ids).unwrap().is_empty(),
        "nothing waits for it"
    );
    assert_eq!(
        e.next_deadline(),
        Some(10 + 10 * MIN),
        "but it restarts the quiet time"
    );
}

#[test]
fn count_within_slides_its_window() {
    let mut e = noon();
    step(&mut e, 0, alert("a", "tamper"));
    // Scans at 0s, 30s and 70s: never three within one minute.
    for t in [0, 30_000, 70_000] {
        assert!(step(&mut e, t, alert("a", "scan")).is_empty(), "{t}");
    }
    // At 90s the last minute (30s..90s, both ends included) holds three.
    assert_eq!(
        step(&mut e, 90_000, alert("a", "scan")),
        ["90000 a: suspicious -> attack (on scan count 3 within 1m)"]
    );
}

#[test]
fn count_within_includes_both_ends_of_the_window() {
    let mut e = noon();
    step(&mut e, 0, alert("a", "tamper"));
    step(&mut e, 0, alert("a", "scan"));
    step(&mut e, 30_000, alert("a", "scan"));
    assert_eq!(
        step(&mut e, 60_000, alert("a", "scan")),
        ["60000 a: suspicious -> attack (on scan count 3 within 1m)"],
        "alerts exactly one minute apart are within one minute"
    );
}

#[test]
fn alerts_count_whatever_the_state_they_arrived_in() {
    let mut e = noon();
    // Two scans while normal (nothing waits for them there), then a tamper.
    step(&mut e, 0, alert("a", "scan"));
    step(&mut e, 10_000, alert("a", "scan"));
    step(&mut e, 20_000, alert("a", "tamper"));
    assert_eq!(
        step(&mut e, 30_000, alert("a", "scan")),
        ["30000 a: suspicious -> attack (on scan count 3 within 1m)"]
    );
}

#[test]
fn when_guard_fires_on_a_reading() {
    let mut e = noon();
    assert_eq!(
        step(
            &mut e,
            0,
            reading("a", json!({"door": true, "mode": "off"}))
        ),
        ["0 a: normal -> suspicious (when ...)"]
    );
}

#[test]
fn unknown_values_enable_nothing() {
    let mut e = noon();
    // `door and mode != heat` with `mode` never reported: not known to hold.
    assert!(step(&mut e, 0, reading("a", json!({"door": true}))).is_empty());
    // Once it is known, any reading after which the guard holds fires it.
    assert_eq!(
        step(&mut e, 5, reading("a", json!({"mode": "cool"}))),
        ["5 a: normal -> suspicious (when ...)"]
    );
}

#[test]
fn aggregates_wait_for_a_full_window() {
    let mut e = noon();
    // avg(temp, last 3) > 90: two hot readings are not a window of three.
    assert!(step(&mut e, 0, reading("a", json!({"temp": 95}))).is_empty());
    assert!(step(&mut e, 1, reading("a", json!({"temp": 95}))).is_empty());
    // 95, 95, 81: the mean 90.33 rounds down to 90, not above 90.
    assert!(step(&mut e, 2, reading("a", json!({"temp": 81}))).is_empty());
    // 95, 81, 98: 91.33 -> 91 > 90.
    assert_eq!(
        step(&mut e, 3, reading("a", json!({"temp": 98}))),
        ["3 a: normal -> suspicious (when ...)"]
    );
}

#[test]
fn a_held_guard_fires_once_it_held_for_its_time() {
    let mut e = noon();
    assert!(step(&mut e, 1000, reading("a", json!({"temp": 101}))).is_empty());
    assert_eq!(e.next_deadline(), Some(31_000));
    // Readings that keep the guard true do not restart the hold.
    assert!(step(&mut e, 20_000, reading("a", json!({"temp": 105}))).is_empty());
    assert!(step(&mut e, 30_999, Input::Tick).is_empty());
    assert_eq!(
        step(&mut e, 31_000, Input::Tick),
        ["31000 a: normal -> suspicious (when ... for 30s)"]
    );
}

/// `when temp > 100 for 30s`: a reading that breaks the guard cancels the hold; the next
/// one that makes it true starts it again.
#[test]
fn a_hold_is_cancelled_when_its_guard_drops() {
    let mut e = noon();
    step(&mut e, 0, reading("a", json!({"temp": 101})));
    assert_eq!(e.next_deadline(), Some(30_000));
    step(&mut e, 10_000, reading("a", json!({"temp": 102})));
    assert_eq!(e.next_deadline(), Some(30_000), "still held since 0");
    step(&mut e, 20_000, reading("a", json!({"temp": 50})));
    assert_eq!(
        e.next_deadline(),
        Some(NOON_TO_22),
        "cancelled: only the rule's 22:00 is left"
    );
    assert!(step(&mut e, 30_000, Input::Tick).is_empty());
    // (102, 50, 118: their mean 90 keeps `avg(temp, last 3) > 90` out of the way.)
    assert!(step(&mut e, 40_000, reading("a", json!({"temp": 118}))).is_empty());
    assert_eq!(e.next_deadline(), Some(70_000));
    assert!(step(&mut e, 69_999, Input::Tick).is_empty());
    assert_eq!(
        step(&mut e, 70_000, Input::Tick),
        ["70000 a: normal -> suspicious (when ... for 30s)"]
    );
}

#[test]
fn timers_fire_before_an_input_at_the_same_time() {
    let mut e = noon();
    step(&mut e, 0, reading("a", json!({"temp": 101})));
    // The hold runs out at 30s; the tamper at 30s then finds the device in suspicious,
    // where nothing waits for it.
    assert_eq!(
        step(&mut e, 30_000, alert("a", "tamper")),
        ["30000 a: normal -> suspicious (when ... for 30s)"]
    );
}

#[test]
fn an_alert_restarts_the_quiet_time() {
    let mut e = noon();
    step(&mut e, 0, alert("a", "tamper"));
    assert_eq!(e.next_deadline(), Some(10 * MIN));
    // `poke`: no transition waits for it, but it is an alert, so it is not quiet.
    assert!(step(&mut e, 5 * MIN, alert("a", "poke")).is_empty());
    assert_eq!(e.next_deadline(), Some(15 * MIN));
    assert!(step(&mut e, 15 * MIN - 1, Input::Tick).is_empty());
    assert_eq!(
        step(&mut e, 15 * MIN, Input::Tick),
        [format!(
            "{} a: suspicious -> normal (after 10m quiet)",
            15 * MIN
        )]
    );
    assert_eq!(
        e.next_deadline(),
        Some(NOON_TO_22),
        "no timer of `a` runs in normal"
    );
}

#[test]
fn quiet_time_counts_from_entering_the_state() {
    let mut e = noon();
    step(&mut e, 0, alert("a", "poke")); // an alert long before
    step(&mut e, 4 * MIN, alert("a", "tamper"));
    assert_eq!(e.next_deadline(), Some(14 * MIN));
    // One tick far ahead fires the timer at its own time, not at the tick's.
    assert_eq!(
        step(&mut e, 60 * MIN, Input::Tick),
        [format!(
            "{} a: suspicious -> normal (after 10m quiet)",
            14 * MIN
        )]
    );
}

#[test]
fn a_rule_fires_on_a_reading_and_moves_another_device() {
    let mut e = engine_at(lab(), 23, 0);
    assert_eq!(
        step(&mut e, 0, reading("a", json!({"door": true}))),
        [
            "0 b: normal -> suspicious (rule night_door)",
            "0 a: command beep (rule night_door)",
        ]
    );
    // `b in normal` no longer holds: the next reading of `a` fires nothing.
    assert!(step(&mut e, 1000, reading("a", json!({"door": true}))).is_empty());
}

#[test]
fn a_rule_fires_when_the_clock_enters_its_window() {
    let mut e = engine_at(lab(), 21, 58);
    assert!(step(&mut e, 0, reading("a", json!({"door": true}))).is_empty());
    // 22:00 is two minutes away: the rule's clock boundary is the next deadline.
    assert_eq!(e.next_deadline(), Some(2 * MIN));
    assert_eq!(
        step(&mut e, 2 * MIN, Input::Tick),
        [
            "120000 b: normal -> suspicious (rule night_door)",
            "120000 a: command beep (rule night_door)",
        ]
    );
}

#[test]
fn a_rule_clock_window_wraps_past_midnight() {
    // 05:59, door open, b normal: inside 22:00..06:00.
    let mut e = engine_at(lab(), 5, 59);
    assert_eq!(
        step(&mut e, 0, reading("a", json!({"door": true}))),
        [
            "0 b: normal -> suspicious (rule night_door)",
            "0 a: command beep (rule night_door)",
        ]
    );
    // At 06:00 the window closes; back to normal after quiet time, the door still open:
    // nothing fires until 22:00, sixteen hours later.
    assert_eq!(
        step(&mut e, 11 * MIN, Input::Tick),
        ["600000 b: suspicious -> normal (after 10m quiet)"]
    );
    assert!(step(&mut e, 11 * MIN + 1, reading("a", json!({"door": true}))).is_empty());
    assert_eq!(e.next_deadline(), Some((16 * 60 + 1) * MIN), "22:00");
}

#[test]
fn a_raised_alert_is_offered_to_the_devices_transitions() {
    let mut e = noon();
    assert!(step(&mut e, 0, reading("a", json!({"temp": 121}))).is_empty());
    assert_eq!(
        step(&mut e, 1, reading("b", json!({"temp": 125}))),
        [
            "1 b: raise tamper (rule hot_pair)",
            "1 b: normal -> suspicious (on tamper raised by hot_pair)",
        ]
    );
    // It counts as an alert for b's quiet time (and `a`'s hold goes on meanwhile).
    assert_eq!(
        step(&mut e, 1 + 10 * MIN, Input::Tick),
        [
            "30000 a: normal -> suspicious (when ... for 30s)",
            "600001 b: suspicious -> normal (after 10m quiet)",
        ]
    );
}

#[test]
fn a_held_guard_on_the_clock_starts_and_stops_with_its_window() {
    let b = shim_bundle(NIGHT_HOLD);
    let mut e = engine_at(&b, 21, 0);
    assert!(step(&mut e, 0, reading("n", json!({"on": true}))).is_empty());
    assert_eq!(
        e.next_deadline(),
        Some(60 * MIN),
        "22:00, where the guard turns true"
    );
    assert!(step(&mut e, 60 * MIN, Input::Tick).is_empty());
    assert_eq!(e.next_deadline(), Some(90 * MIN), "held since 22:00");
    assert_eq!(
        step(&mut e, 90 * MIN, Input::Tick),
        ["5400000 n: normal -> suspicious (when ... for 30m)"]
    );
    step(&mut e, 100 * MIN, reset("n"));
    // Back in normal at 22:40 with `on` still true: held again from 22:40, but the
    // window closes at 23:00, before the 30 minutes are up.
    assert_eq!(e.next_deadline(), Some(120 * MIN));
    assert!(step(&mut e, 24 * 60 * MIN - 1, Input::Tick).is_empty());
    assert_eq!(state(&e, "n"), "normal");
}

#[test]
fn the_transition_met_first_wins() {
    let b = shim_bundle(PRIORITY);
    let mut e = engine_at(&b, 12, 0);
    // Two tampers: not yet three within a minute; the first moves p to suspicious.
    assert_eq!(
        step(&mut e, 0, alert("p", "tamper")),
        ["0 p: normal -> suspicious (on tamper)"]
    );
    step(&mut e, 1, alert("p", "scan")); // back to normal by `on scan`
    step(&mut e, 2, alert("p", "tamper"));
    // This scan completes `count 2 within 1m` and is also a plain `on scan`: the plain
    // one, always met first, wins.
    assert_eq!(
        step(&mut e, 3, alert("p", "scan")),
        ["3 p: suspicious -> normal (on scan)"]
    );
    // The third tamper within a minute: `count 3` and plain `on tamper` are both met.
    assert_eq!(
        step(&mut e, 4, alert("p", "tamper")),
        ["4 p: normal -> suspicious (on tamper)"]
    );
}

#[test]
fn refused_inputs_change_nothing() {
    let mut e = noon();
    step(
        &mut e,
        1000,
        reading("a", json!({"temp": 101, "door": false})),
    );
    step(&mut e, 2000, alert("b", "tamper"));
    let before = format!("{e:?}");
    let deadline = e.next_deadline();
    let bad: Vec<(Input, u64, &[&str])> = vec![
        (
            reading("c", json!({"temp": 1})),
            5000,
            &[codes::UNKNOWN_DEVICE],
        ),
        (
            reading("a", json!({"tmp": 1})),
            5000,
            &[codes::UNKNOWN_VARIABLE],
        ),
        (
            reading("a", json!({"temp": "hot"})),
            5000,
            &[codes::WRONG_TYPE],
        ),
        (
            reading("a", json!({"temp": 1.5})),
            5000,
            &[codes::WRONG_TYPE],
        ),
        (reading("a", json!({"door": 1})), 5000, &[codes::WRONG_TYPE]),
        (
            reading("a", json!({"mode": "warm"})),
            5000,
            &[codes::WRONG_TYPE],
        ),
        (
            reading("a", json!({"temp": 151})),
            5000,
            &[codes::OUT_OF_RANGE],
        ),
        (
            reading("a", json!({"temp": -51})),
            5000,
            &[codes::OUT_OF_RANGE],
        ),
        (reading("a", json!({})), 5000, &[codes::EMPTY_READING]),
        // A valid value beside a bad one is not applied either.
        (
            reading("a", json!({"temp": 20, "door": "open"})),
            5000,
            &[codes::WRONG_TYPE],
        ),
        (
            reading("a", json!({"temp": 200, "door": "open", "x": 1})),
            5000,
            &[
                codes::WRONG_TYPE,
                codes::OUT_OF_RANGE,
                codes::UNKNOWN_VARIABLE,
            ],
        ),
        (alert("a", "tampr"), 5000, &[codes::UNKNOWN_ALERT]),
        (
            Input::Alert {
                device: "a".into(),
                alert: "scan".into(),
                source: Some("ids".into()),
            },
            5000,
            &[codes::UNKNOWN_SOURCE],
        ),
        (
            Input::Alert {
                device: "a".into(),
                alert: "port_scan".into(),
                source: Some("sniffer".into()),
            },
            5000,
            &[codes::UNKNOWN_SOURCE],
        ),
        (
            Input::Operator {
                device: "a".into(),
                action: "reboot".into(),
            },
            5000,
            &[codes::UNKNOWN_ACTION],
        ),
        // `a` is normal, where its chain has no `ids`.
        (from("a", "ids", "port_scan"), 5000, &[codes::NOT_DEPLOYED]),
        // `b` is suspicious, with `ids`, until its quiet time ends at 602s: an alert
        // after that meets `b` back in normal, found out without moving the engine.
        (
            from("b", "ids", "port_scan"),
            700_000,
            &[codes::NOT_DEPLOYED],
        ),
        (alert("a", "tamper"), 1999, &[codes::TIME_BACKWARDS]),
        // At a refused time no state is looked at.
        (
            from("a", "ids", "port_scan"),
            1999,
            &[codes::TIME_BACKWARDS],
        ),
        // Far in the future, where timers would fire: refused first, so none does.
        (
            reading("zz", json!({"temp": 1})),
            99 * MIN,
            &[codes::UNKNOWN_DEVICE],
        ),
    ];
    for (input, t, want) in bad {
        let errs = e.handle(t, &input).unwrap_err();
        let got: Vec<&str> = errs.iter().map(|x| x.code()).collect();
        assert_eq!(got, want, "{input:?}: {errs:?}");
        assert_eq!(format!("{e:?}"), before, "{input:?} changed the engine");
        assert_eq!(e.next_deadline(), deadline);
    }
    // Suggestions for misspelt names.
    let errs = e.handle(5000, &alert("a", "tampr")).unwrap_err();
    assert!(
        matches!(&errs[0], kalki_shim::engine::InputError::UnknownAlert { suggestion: Some(s), .. } if s == "tamper")
    );
    // The engine goes on as if nothing had been offered.
    assert_eq!(
        step(&mut e, 31_000, Input::Tick),
        ["31000 a: normal -> suspicious (when ... for 30s)"]
    );
}

#[test]
fn long_ticks_end_and_absurd_ones_are_refused() {
    let mut e = noon();
    step(&mut e, 0, alert("a", "tamper"));
    let year = 366 * 24 * 60 * MIN;
    // A year of moments: the quiet time, then a 22:00 and a 06:00 boundary every day.
    assert_eq!(
        step(&mut e, year, Input::Tick),
        ["600000 a: suspicious -> normal (after 10m quiet)"]
    );
    let errs = e.handle(year + year + 1, &Input::Tick).unwrap_err();
    assert_eq!(errs[0].code(), codes::TOO_FAR_AHEAD);
    let errs = e.handle(u64::MAX, &Input::Tick).unwrap_err();
    assert_eq!(errs[0].code(), codes::TOO_FAR_AHEAD);
    assert_eq!(e.now(), year);
}

#[test]
fn same_inputs_same_outputs() {
    let run = || {
        let mut e = engine_at(lab(), 21, 59);
        let mut out = Vec::new();
        out.extend(step(
            &mut e,
            0,
            reading("a", json!({"door": true, "temp": 130})),
        ));
        out.extend(step(&mut e, 10, reading("b", json!({"temp": 130}))));
        out.extend(step(&mut e, 5 * MIN, alert("a", "scan")));
        out.extend(step(&mut e, 60 * MIN, Input::Tick));
        out
    };
    let first = run();
    assert!(!first.is_empty());
    assert_eq!(first, run());
}

#[test]
fn an_alert_from_a_umbox_counts_only_in_the_states_that_deploy_it() {
    let mut e = Engine::new(chains(), Config::default(), 0);
    let before = format!("{e:?}");
    // `ids` emits `port_scan`, but `normal`'s chain has no `ids`.
    let errs = e.handle(1000, &from("c", "ids", "port_scan")).unwrap_err();
    assert_eq!(
        errs,
        [InputError::NotDeployed {
            device: "c".into(),
            umbox: "ids".into(),
            alert: "port_scan".into(),
            state: "normal".into(),
            deployed_in: vec!["suspicious".into()],
        }]
    );
    assert_eq!(errs[0].code(), codes::NOT_DEPLOYED);
    assert_eq!(
        errs[0].to_string(),
        "`ids` is not deployed for `c` in its current state `normal`"
    );
    let help = miette::Diagnostic::help(&errs[0]).map(|h| h.to_string());
    assert_eq!(
        help.as_deref(),
        Some("`ids` is deployed for `c` only in `suspicious`")
    );
    assert_eq!(
        e.validate(1000, &from("c", "ids", "port_scan")),
        Err(errs),
        "validate says what handle does"
    );
    assert_eq!(format!("{e:?}"), before, "the refusal changed the engine");

    // `sniffer` is deployed in `normal`: its alert moves the device.
    assert_eq!(
        step(&mut e, 1000, from("c", "sniffer", "port_scan")),
        ["1000 c: normal -> suspicious (on port_scan)"]
    );
    // In `suspicious`, `ids` is deployed: the same alert as before is accepted now.
    assert!(step(&mut e, 2000, from("c", "ids", "port_scan")).is_empty());
    assert_eq!(
        step(&mut e, 3000, from("c", "ids", "brute_force")),
        ["3000 c: suspicious -> attack (on brute_force)"]
    );
    // `attack`'s chain is `drop`: no µmbox speaks for the device there.
    let before = format!("{e:?}");
    let errs = e
        .handle(4000, &from("c", "sniffer", "port_scan"))
        .unwrap_err();
    assert!(
        matches!(&errs[..], [InputError::NotDeployed { state, deployed_in, .. }]
            if state == "attack" && deployed_in == &["normal", "suspicious"]),
        "{errs:?}"
    );
    assert_eq!(format!("{e:?}"), before);
}

#[test]
fn a_device_reports_only_the_alerts_its_type_declares_and_unknown_sources_are_s107() {
    let mut e = Engine::new(chains(), Config::default(), 0);
    // Without a source an alert is the device's own: the camera's type declares none, so
    // its µmboxes' `port_scan` without its source is refused (S112), changing nothing;
    // the verifier (K205) expects no other way for it to arrive.
    let before = format!("{e:?}");
    let errs = e.handle(1000, &alert("c", "port_scan")).unwrap_err();
    assert_eq!(codes_of(&errs), [codes::NOT_OWN]);
    assert_eq!(
        errs[0].to_string(),
        "`c` does not report `port_scan` itself: its type does not declare it"
    );
    let help = miette::Diagnostic::help(&errs[0]).unwrap().to_string();
    assert_eq!(
        help,
        "give the µmbox that raised it as its `source`: `ids`, `sniffer`"
    );
    assert_eq!(format!("{e:?}"), before);
    assert_eq!(
        e.validate_static(&alert("c", "port_scan"))
            .map_err(|e| codes_of(&e)),
        Err(vec![codes::NOT_OWN]),
        "it depends on neither time nor state: the API refuses it already"
    );
    // With its source it is taken.
    step(&mut e, 2000, from("c", "sniffer", "port_scan"));
    assert_eq!(state(&e, "c"), "suspicious");
    // A µmbox the device never has, or one that does not emit the alert, is S107 in any
    // state; an alert it cannot receive at all is S106.
    let before = format!("{e:?}");
    for (input, want) in [
        (from("c", "auth_proxy", "port_scan"), codes::UNKNOWN_SOURCE),
        (from("c", "sniffer", "brute_force"), codes::UNKNOWN_SOURCE),
        (from("c", "ids", "tamper"), codes::UNKNOWN_ALERT),
        (alert("c", "tamper"), codes::UNKNOWN_ALERT),
    ] {
        let errs = e.handle(5000, &input).unwrap_err();
        assert_eq!(codes_of(&errs), [want], "{input:?}");
        assert_eq!(format!("{e:?}"), before, "{input:?} changed the engine");
    }
}

/// An input at `t` meets the states the timers due by `t` have led to (they fire first):
/// the deployment check looks there, not at the engine's state before them.
#[test]
fn the_state_an_alert_meets_is_the_one_after_the_timers_due_by_then() {
    let mut e = Engine::new(chains(), Config::default(), 0);
    step(&mut e, 0, reading("c", json!({"motion": true})));
    assert_eq!(e.next_deadline(), Some(30_000));
    let before = format!("{e:?}");
    let errs = e
        .handle(29_999, &from("c", "ids", "port_scan"))
        .unwrap_err();
    assert_eq!(codes_of(&errs), [codes::NOT_DEPLOYED]);
    assert_eq!(format!("{e:?}"), before);
    // At 30s the hold fires first: `ids` is deployed when the alert arrives.
    assert_eq!(e.validate(30_000, &from("c", "ids", "port_scan")), Ok(()));
    assert_eq!(format!("{e:?}"), before, "validate looked ahead on a copy");
    assert_eq!(
        step(&mut e, 30_000, from("c", "ids", "port_scan")),
        ["30000 c: normal -> suspicious (when ... for 30s)"]
    );
    // The alert restarted the quiet time; once it is over the device is back in normal.
    let quiet_end = 30_000 + 10 * MIN;
    assert_eq!(e.next_deadline(), Some(quiet_end));
    assert_eq!(
        e.validate(quiet_end - 1, &from("c", "ids", "port_scan")),
        Ok(())
    );
    let before = format!("{e:?}");
    let errs = e
        .handle(quiet_end, &from("c", "ids", "port_scan"))
        .unwrap_err();
    assert!(
        matches!(&errs[..], [InputError::NotDeployed { state, .. }] if state == "normal"),
        "{errs:?}"
    );
    assert_eq!(format!("{e:?}"), before);
    assert_eq!(state(&e, "c"), "suspicious");
}

/// The API's pre-check runs on a fresh engine, in the initial states at time 0: it checks
/// only what depends on neither, and leaves the deployment of a source to the main loop.
#[test]
fn the_api_checker_leaves_time_and_state_to_the_main_loop() {
    let checker = Checker::new(chains());
    let fresh = Engine::new(chains(), Config::default(), 0);
    let ids = from("c", "ids", "port_scan");
    assert_eq!(checker.check(&ids), Ok(()));
    assert_eq!(fresh.validate_static(&ids), Ok(()));
    assert_eq!(
        codes_of(&fresh.validate(0, &ids).unwrap_err()),
        [codes::NOT_DEPLOYED],
        "the engine itself refuses it in `normal`"
    );
    // An engine that has moved on gives the same static answers.
    let mut moved = Engine::new(chains(), Config::default(), 0);
    step(&mut moved, 5 * MIN, from("c", "sniffer", "port_scan"));
    for (input, want) in [
        (ids.clone(), None),
        (
            from("c", "sniffer", "brute_force"),
            Some(codes::UNKNOWN_SOURCE),
        ),
        (alert("c", "tamper"), Some(codes::UNKNOWN_ALERT)),
        (alert("cc", "port_scan"), Some(codes::UNKNOWN_DEVICE)),
        (reading("c", json!({"motion": 1})), Some(codes::WRONG_TYPE)),
    ] {
        let got = |r: Result<(), Vec<InputError>>| r.err().map(|e| codes_of(&e)[0]);
        assert_eq!(got(checker.check(&input)), want, "{input:?}");
        assert_eq!(got(fresh.validate_static(&input)), want, "{input:?}");
        assert_eq!(got(moved.validate_static(&input)), want, "{input:?}");
    }
    // No time is checked: `moved` is at 5 minutes.
    assert_eq!(
        codes_of(
            &moved
                .validate(0, &from("c", "sniffer", "port_scan"))
                .unwrap_err()
        ),
        [codes::TIME_BACKWARDS]
    );
    assert_eq!(
        moved.validate_static(&from("c", "sniffer", "port_scan")),
        Ok(())
    );
}

/// Flapping: a rule that escalates never lowers, and a rule `on` a condition fires once
/// per rising edge of it, however many readings keep it true.
const FLAP: &str = r#"
device type Cam {
    alerts scan, breach
    states normal < suspicious < attack
    initial normal
    normal     { chain [pass] }
    suspicious { chain [pass] }
    attack     { chain [drop] }
    normal     -> suspicious on scan
    suspicious -> attack     on breach
    suspicious -> normal     after 10m quiet
    attack     -> normal     on operator reset
}

device type Door {
    sensed open: bool
    states normal
    initial normal
    normal { chain [pass] }
}

site s {
    bridge "br0" uplink "eth0"
    device c: Cam at 10.0.0.1 port "p1"
    device e: Cam at 10.0.0.2 port "p2"
    device door: Door at 10.0.0.3 port "p3" trusted

    rule raise_c when door.open then escalate c to suspicious
    rule edge_e on door.open then e -> attack
}
"#;

fn flap_bundle() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| shim_bundle(FLAP))
}

fn flap() -> Engine {
    engine_at(flap_bundle(), 12, 0)
}

#[test]
fn the_bundle_keeps_on_rules_and_escalations_as_written() {
    let b = flap_bundle();
    let rules = &b.manifest.rules;
    assert_eq!(
        rules.iter().map(|r| r.edge).collect::<Vec<_>>(),
        [false, true]
    );
    let names = b.names(None);
    assert_eq!(
        names.action(&rules[0].actions[0]),
        "escalate c to suspicious"
    );
    assert_eq!(names.action(&rules[1].actions[0]), "e -> attack");
}

#[test]
fn escalate_raises_a_device_and_never_lowers_it() {
    let mut e = flap();
    let open = || reading("door", json!({ "open": true }));
    let shown = step(&mut e, 1000, open());
    assert!(
        shown.contains(&"1000 c: normal -> suspicious (rule raise_c)".to_string()),
        "{shown:?}"
    );
    // In its target already: nothing.
    assert!(!step(&mut e, 2000, open())
        .iter()
        .any(|s| s.contains(" c: ")));
    // Above its target: nothing either, where `c -> suspicious` would lower it.
    step(&mut e, 3000, alert("c", "breach"));
    assert_eq!(state(&e, "c"), "attack");
    assert!(!step(&mut e, 4000, open())
        .iter()
        .any(|s| s.contains(" c: ")));
    assert_eq!(state(&e, "c"), "attack");
    // Lowered by the operator, the level rule raises it again on the next reading.
    step(&mut e, 5000, reset("c"));
    assert_eq!(state(&e, "c"), "normal");
    assert!(step(&mut e, 6000, open())
        .contains(&"6000 c: normal -> suspicious (rule raise_c)".to_string()));
}

#[test]
fn an_on_rule_fires_once_per_rising_edge() {
    let mut e = flap();
    let door = |open: bool| reading("door", json!({ "open": open }));
    let moved_e = |shown: &[String]| shown.iter().filter(|s| s.contains("rule edge_e")).count();
    assert_eq!(
        moved_e(&step(&mut e, 1000, door(true))),
        1,
        "the first time it holds"
    );
    assert_eq!(state(&e, "e"), "attack");
    step(&mut e, 2000, reset("e"));
    assert_eq!(state(&e, "e"), "normal");
    // Still open: no new edge, the reset stands.
    assert_eq!(moved_e(&step(&mut e, 3000, door(true))), 0);
    assert_eq!(state(&e, "e"), "normal");
    // Closed, then open again: a new edge.
    assert_eq!(moved_e(&step(&mut e, 4000, door(false))), 0);
    assert_eq!(moved_e(&step(&mut e, 5000, door(true))), 1);
    assert_eq!(state(&e, "e"), "attack");
}
