//! One meaning of a trace: each example's recorded trace, pasted into a policy test
//! (`kalki_model::policy_test`, what `kalkic test` runs) with an expectation after every
//! moment `simulate` shows a state change at, and the command counts and final states
//! at the end, passes; and it fails when one expected state is changed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{compile_dir, repo_root};
use kalki_model::policy_test::{self, Coverage};
use kalki_shim::bundle::{self, Bundle};
use kalki_shim::simulate::{self, What};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The test file: the trace's lines, with the timeline's states as expectations after the
/// last line at or before each time, and at the end the commands and the final states.
fn as_test(trace: &str, timeline: &simulate::Timeline) -> String {
    // (t_ms, device) -> the last state it entered then, in timeline order.
    let mut states: BTreeMap<u64, BTreeMap<String, String>> = BTreeMap::new();
    let mut commands: BTreeMap<String, u64> = BTreeMap::new();
    for e in &timeline.entries {
        match &e.what {
            What::State { to, .. } => {
                states
                    .entry(e.t_ms)
                    .or_default()
                    .insert(e.device.clone(), to.clone());
            }
            What::Command { command, .. } => {
                *commands
                    .entry(format!("{}.{command}", e.device))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    let expect = |t: u64, device: &str, state: &str| {
        format!(
            "{}\n",
            json!({"t_ms": t, "expect": {"device": device, "state": state}})
        )
    };
    let mut out = String::from("{\"test\": \"the recorded trace\"}\n");
    let mut pending = states.into_iter().peekable();
    for line in trace.lines().filter(|l| !l.trim().is_empty()) {
        let t = serde_json::from_str::<Value>(line).unwrap()["t_ms"].as_u64();
        if let Some(t) = t {
            while let Some((at, devices)) = pending.next_if(|(at, _)| *at < t) {
                for (d, s) in devices {
                    out.push_str(&expect(at, &d, &s));
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    for (at, devices) in pending {
        for (d, s) in devices {
            out.push_str(&expect(at, &d, &s));
        }
    }
    for (command, n) in commands {
        out.push_str(&format!(
            "{}\n",
            json!({"expect": {"command": command, "times": n}})
        ));
    }
    for (d, s) in &timeline.states {
        out.push_str(&expect(timeline.end_ms, d, s));
    }
    out
}

fn run(bundle: &Bundle, test: &str) -> Vec<policy_test::Outcome> {
    let file =
        policy_test::parse(test.as_bytes(), bundle).unwrap_or_else(|e| panic!("{e:#?}\n{test}"));
    let mut coverage = Coverage::new(bundle);
    file.tests
        .iter()
        .map(|t| policy_test::run(bundle, t, &mut coverage))
        .collect()
}

#[test]
fn a_recorded_trace_pasted_into_a_test_expects_what_simulate_shows() {
    for example in [
        "examples/smart-office",
        "examples/badge-door",
        "examples/flapping",
        "examples/mqtt-site",
    ] {
        let built = compile_dir(example);
        let bundle = bundle::load(&built.files).unwrap();
        let trace = std::fs::read_to_string(repo_root().join(example).join("trace.jsonl")).unwrap();
        let timeline = simulate::simulate(&bundle, trace.as_bytes(), None, None).unwrap();
        assert!(
            timeline
                .entries
                .iter()
                .any(|e| matches!(e.what, What::State { .. })),
            "{example}: a trace that changes no state tests nothing"
        );
        let test = as_test(&trace, &timeline);
        let outcomes = run(&bundle, &test);
        assert_eq!(outcomes.len(), 1);
        assert!(
            outcomes[0].passed(),
            "{example}: {:#?}\n{test}",
            outcomes[0].failures
        );
        assert!(outcomes[0].expectations > timeline.states.len(), "{test}");

        // One expectation off, and the test fails there.
        let (i, line) = test
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains("\"expect\"") && l.contains("\"state\""))
            .unwrap();
        let v: Value = serde_json::from_str(line).unwrap();
        let (device, state) = (
            v["expect"]["device"].as_str().unwrap(),
            v["expect"]["state"].as_str().unwrap(),
        );
        let ix = bundle
            .manifest
            .devices
            .iter()
            .position(|d| d.name == device)
            .unwrap();
        let states = &bundle.device_type(ix).unwrap().states;
        let other = states.iter().find(|s| *s != state).unwrap();
        let wrong: String = test
            .lines()
            .enumerate()
            .map(|(j, l)| {
                if j == i {
                    format!(
                        "{}\n",
                        json!({"t_ms": v["t_ms"], "expect": {"device": device, "state": other}})
                    )
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let outcomes = run(&bundle, &wrong);
        assert_eq!(outcomes[0].failures.len(), 1, "{example}: {wrong}");
        assert_eq!(outcomes[0].failures[0].line, i + 1);
    }
}
