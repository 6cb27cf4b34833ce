//! Daylight saving through `kalki-shim run`: the real shim, its real loop and journal, with
//! `--time-zone Europe/Berlin` and its wall clock set (libfaketime, see
//! [`Api::start_at`]) to ten seconds before a moment the `clock in 01:30..02:30` window
//! opens or closes on the day the clock springs forward (2026-03-29) and the day it falls
//! back (2026-10-25). A motion reading is posted through the API at once, and the window's
//! edge comes by itself: the journal's state changes must fall at exactly that edge, in
//! the order `simulate --time-zone` gives for the same input, which is what the verifier
//! proved reachable (`tests/simulate.rs` runs the whole nights in `simulate`).
//!
//! The four moments, in UTC:
//! - spring, 00:30:00Z = 01:30 CET: the window opens (`normal -> night`);
//! - spring, 01:00:00Z = 02:00 CET, which is 03:00 CEST: the window closes at the jump;
//! - fall, 00:30:00Z = 02:30 CEST: the window's first pass closes;
//! - fall, 01:00:00Z = 02:00 CET: the wall clock reads 02:00 again and the window opens a
//!   second time.
//!
//! The device's port does not exist, so nothing is installed for it (it is reported not
//! enforced); this test is about the clock of the states, which the node follows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::live::*;
use common::TempDir;
use kalki_shim::journal::Journal;
use std::time::Duration;

const POLICY: &str = r#"
import std::umboxes::sniffer

device type Lamp {
    sensed motion: bool

    states normal < night
    initial normal

    normal { chain [sniffer] }
    night  { chain [sniffer] }
}

site home {
    bridge "BRIDGE" uplink "BRIDGEu"

    device lamp: Lamp at 10.0.4.10 port "BRIDGEl" trusted

    rule small_hours
        when lamp.motion and clock in 01:30..02:30
        then lamp -> night
    rule other_hours
        when lamp.motion and not clock in 01:30..02:30
        then lamp -> normal

    assert reachable lamp in night
}
"#;

/// One moment: the UTC time of the window's edge, and the state changes expected from a
/// reading ten seconds before it through the edge.
struct Edge {
    name: &'static str,
    at: &'static str,
    changes: &'static [&'static str],
}

const EDGES: [Edge; 4] = [
    Edge {
        name: "spring-opens",
        at: "2026-03-29T00:30:00Z",
        changes: &["normal -> night"],
    },
    Edge {
        name: "spring-jump",
        at: "2026-03-29T01:00:00Z",
        changes: &["normal -> night", "night -> normal"],
    },
    Edge {
        name: "fall-first-closes",
        at: "2026-10-25T00:30:00Z",
        changes: &["normal -> night", "night -> normal"],
    },
    Edge {
        name: "fall-second-opens",
        at: "2026-10-25T01:00:00Z",
        changes: &["normal -> night"],
    },
];

const LEAD_MS: u64 = 10_000;

fn unix_ms(rfc3339: &str) -> u64 {
    let ts: jiff::Timestamp = rfc3339.parse().unwrap();
    u64::try_from(ts.as_millisecond()).unwrap()
}

fn rfc3339(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap())
        .unwrap()
        .to_string()
}

/// `a -> b` of a journal change's text (`a -> b: cause`) or of a `simulate` line.
fn arrow(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "->").unwrap();
    format!("{} -> {}", words[i - 1], words[i + 1].trim_end_matches(':'))
}

/// Runs one edge: the shim started ten seconds before it, a reading at once, and the
/// journal's changes read after the edge. Returns (the reading's time, changes as (time,
/// `a -> b`)).
fn run_edge(i: usize, edge: &Edge) -> (u64, Vec<(u64, String)>) {
    let bridge = format!("kt-dst{i}");
    let tmp = TempDir::new(&format!("dst-run-{}", edge.name));
    let (built, verdicts) = common::compile_verified(&POLICY.replace("BRIDGE", &bridge));
    assert!(
        matches!(
            verdicts.as_slice(),
            [(
                kalki_compiler::ir::AssertKind::Reachable,
                kalki_compiler::verify::Status::Proved
            )]
        ),
        "{verdicts:?}"
    );
    let bundle = tmp.path().join("bundle");
    built.write_to(&bundle).unwrap();
    let journal = tmp.path().join("journal.db");
    let env = Api::new(tmp.path());
    let edge_ms = unix_ms(edge.at);
    let start = rfc3339(edge_ms - LEAD_MS)
        .replace('T', " ")
        .replace('Z', "");
    let shim = env.start_at(
        &start,
        &bundle,
        &journal,
        &["--time-zone", "Europe/Berlin", "--ready-timeout", "5"],
    );
    env.must(&["event", "lamp", "motion=true"]);
    // The edge passes by itself (a clock boundary timer of the loop), then a little.
    // A status answers after the timers due by its time have fired, so once one says
    // the edge is a second past, what the edge changed is journaled.
    let mut reading_ms = None;
    wait_for(Duration::from_secs(30), "the window's edge to pass", || {
        let past = env.status().1["now_ms"].as_u64().unwrap() > edge_ms + 1_000;
        let history = Journal::open(&journal)
            .unwrap()
            .history("lamp", 50)
            .unwrap();
        reading_ms = history.iter().find(|h| h.kind == "reading").map(|h| h.t_ms);
        past
    });
    shim.terminate();
    let reading_ms = reading_ms.expect("the reading is journaled");
    assert!(
        reading_ms < edge_ms,
        "{}: the shim took more than {LEAD_MS} ms to serve; the reading came at {} \
         after the edge {}\n{}",
        edge.name,
        rfc3339(reading_ms),
        edge.at,
        env.log_text()
    );
    let mut changes: Vec<(u64, String)> = Journal::open(&journal)
        .unwrap()
        .history("lamp", 50)
        .unwrap()
        .into_iter()
        .filter(|h| h.kind == "change")
        .map(|h| (h.t_ms, arrow(&h.text)))
        .collect();
    changes.reverse(); // the history is newest first
    (reading_ms, changes)
}

/// What `simulate --time-zone Europe/Berlin` makes of the same input on the same bundle:
/// (time, `a -> b`), in Unix milliseconds.
fn simulated(reading_ms: u64, until_ms: u64) -> Vec<(u64, String)> {
    let tmp = TempDir::new("dst-run-simulate");
    let bundle = tmp.path().join("bundle");
    common::compile(&POLICY.replace("BRIDGE", "kt-dsts"))
        .write_to(&bundle)
        .unwrap();
    let trace = tmp.path().join("trace.jsonl");
    std::fs::write(
        &trace,
        format!(
            "{{\"at\": \"{}\", \"device\": \"lamp\", \"reading\": {{\"motion\": true}}}}\n{{\"at\": \"{}\"}}\n",
            rfc3339(reading_ms),
            rfc3339(until_ms)
        ),
    )
    .unwrap();
    let out = shim(&[
        "simulate",
        bundle.to_str().unwrap(),
        trace.to_str().unwrap(),
        "--time-zone",
        "Europe/Berlin",
    ]);
    assert!(out.status.success(), "{out:?}");
    stdout(&out)
        .lines()
        .skip(1)
        .filter(|l| l.contains("->"))
        .map(|l| {
            let t: u64 = l.split_whitespace().next().unwrap().parse().unwrap();
            (reading_ms + t, arrow(l))
        })
        .collect()
}

#[test]
fn a_clock_window_on_both_daylight_saving_days_under_run() {
    if !services_ready()
        || !kalki_test_support::require(&[(
            kalki_test_support::tools(&["faketime"]),
            "libfaketime (scripts/faketime/start.sh installs it)",
        )])
    {
        return;
    }
    let clean = || {
        for i in 0..EDGES.len() {
            sh(&format!(
                "ovs-vsctl --timeout=10 --if-exists del-br kt-dst{i}"
            ));
        }
    };
    clean();
    let _clean = OnDrop(clean);
    // The four edges at once: each shim has its own bridge, API and journal.
    let runs: Vec<(u64, Vec<(u64, String)>)> = std::thread::scope(|s| {
        let handles: Vec<_> = EDGES
            .iter()
            .enumerate()
            .map(|(i, e)| s.spawn(move || run_edge(i, e)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (edge, (reading_ms, changes)) in EDGES.iter().zip(runs) {
        let edge_ms = unix_ms(edge.at);
        let arrows: Vec<&str> = changes.iter().map(|(_, a)| a.as_str()).collect();
        assert_eq!(arrows, edge.changes, "{}: {changes:?}", edge.name);
        // The last change is the edge's own, at exactly its time; any before it is the
        // reading's.
        let (last_t, _) = changes.last().unwrap();
        assert_eq!(*last_t, edge_ms, "{}: {changes:?}", edge.name);
        for (t, _) in &changes[..changes.len() - 1] {
            assert_eq!(*t, reading_ms, "{}: {changes:?}", edge.name);
        }
        // `simulate` agrees, change for change and millisecond for millisecond.
        assert_eq!(
            simulated(reading_ms, edge_ms + 1_000),
            changes,
            "{}: simulate and run disagree",
            edge.name
        );
    }
}

/// Runs a closure when dropped (cleanup even when an assertion fails).
struct OnDrop<F: Fn()>(F);

impl<F: Fn()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
