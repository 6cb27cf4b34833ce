//! The journal on real SQLite files: inputs round-trip exactly and survive reopening,
//! replay rebuilds the engine that live handling built (states, holds, windows), inputs a
//! new bundle refuses are skipped and reported, a batch of inputs is journaled in order and
//! all or nothing, the audit tables, a device's history (with who gave each operator
//! input), the schema version, and
//! a writer SIGKILLed mid-stream loses nothing it acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{compile_dir, load, shim_bundle, MemReader, TempDir};
use kalki_shim::bundle::Bundle;
use kalki_shim::engine::{Config, Engine, Input};
use kalki_shim::journal::{Change, Delivery, Epoch, Journal, JournalError};
use kalki_shim::{codes, trace};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

fn office() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| load(&MemReader::new(&compile_dir("examples/smart-office"))).unwrap())
}

fn office_trace() -> trace::Trace {
    let text =
        std::fs::read_to_string(common::repo_root().join("examples/smart-office/trace.jsonl"))
            .unwrap();
    trace::check(&text, &Engine::new(office(), Config::default(), 0)).unwrap()
}

fn reading(device: &str, values: serde_json::Value) -> Input {
    let serde_json::Value::Object(m) = values else {
        panic!()
    };
    Input::Reading {
        device: device.into(),
        values: m.into_iter().collect(),
    }
}

/// Inputs of every kind, with values of every JSON type the journal must keep exactly.
fn samples() -> Vec<Input> {
    vec![
        reading(
            "thermo",
            json!({"temperature": -40, "heating": true, "mode": "heat"}),
        ),
        reading(
            "x",
            json!({"big": u64::MAX, "neg": i64::MIN, "f": 36.5, "s": "é\"\n"}),
        ),
        Input::Alert {
            device: "hall_cam".into(),
            alert: "port_scan".into(),
            source: Some("ids".into()),
        },
        Input::Alert {
            device: "hall_cam".into(),
            alert: "port_scan".into(),
            source: None,
        },
        Input::Operator {
            device: "hall_cam".into(),
            action: "reset".into(),
        },
        Input::Tick,
    ]
}

#[test]
fn inputs_round_trip_and_survive_reopening() {
    let dir = TempDir::new("journal-roundtrip");
    let path = dir.path().join("journal.db");
    let inputs = samples();
    {
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.inputs().unwrap(), vec![]);
        for (i, input) in inputs.iter().enumerate() {
            let seq = j.append_input(1000 + i as u64, "sha-a", input).unwrap();
            assert_eq!(seq, i as u64 + 1);
        }
        let back: Vec<Input> = j.inputs().unwrap().into_iter().map(|i| i.input).collect();
        assert_eq!(back, inputs);
        j.record_change(1001, "hall_cam", "normal", "suspicious", "rule r")
            .unwrap();
        j.record_change(1002, "hall_cam", "suspicious", "attack", "on port_scan")
            .unwrap();
        j.record_change(1003, "thermo", "normal", "suspicious", "on overheat")
            .unwrap();
        let id = j
            .record_command(1004, "thermo", "set_off", "main_overheat")
            .unwrap();
        let id2 = j
            .record_command(1004, "lobby_light", "turn_on", "r")
            .unwrap();
        j.update_command(id, &Delivery::Delivered).unwrap();
        j.update_command(
            id2,
            &Delivery::Failed {
                attempts: 3,
                error: "no route".into(),
            },
        )
        .unwrap();
        j.record_command(1005, "thermo", "set_off", "main_overheat")
            .unwrap();
        j.record_fail_closed(1006, "thermo", "attack", "µmbox `ids` did not start")
            .unwrap();
        assert!(matches!(
            j.update_command(99, &Delivery::Delivered),
            Err(JournalError::NoSuchCommand { id: 99 })
        ));
    }
    // Reopened: everything is there.
    let j = Journal::open(&path).unwrap();
    let back = j.inputs().unwrap();
    assert_eq!(
        back.iter().map(|i| i.input.clone()).collect::<Vec<_>>(),
        inputs
    );
    assert_eq!(
        back.iter().map(|i| (i.seq, i.t_ms)).collect::<Vec<_>>(),
        (0..inputs.len() as u64)
            .map(|i| (i + 1, 1000 + i))
            .collect::<Vec<_>>()
    );
    assert!(back.iter().all(|i| i.bundle_sha256 == "sha-a"));
    assert_eq!(
        j.last_changes().unwrap(),
        BTreeMap::from([
            (
                "hall_cam".to_string(),
                Change {
                    t_ms: 1002,
                    from: "suspicious".into(),
                    to: "attack".into(),
                    cause: "on port_scan".into()
                }
            ),
            (
                "thermo".to_string(),
                Change {
                    t_ms: 1003,
                    from: "normal".into(),
                    to: "suspicious".into(),
                    cause: "on overheat".into()
                }
            ),
        ])
    );
    assert_eq!(
        j.command(1).unwrap().unwrap().delivery,
        Some(Delivery::Delivered)
    );
    assert_eq!(
        j.command(2).unwrap().unwrap().delivery,
        Some(Delivery::Failed {
            attempts: 3,
            error: "no route".into()
        })
    );
    let pending = j.pending_commands().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].id, pending[0].t_ms), (3, 1005));
    let fc = j.last_fail_closed().unwrap();
    assert_eq!(fc["thermo"].state_installed, "attack");
    // Sequence numbers continue after reopening.
    assert_eq!(j.append_input(2000, "sha-b", &Input::Tick).unwrap(), 7);
}

#[test]
fn a_journal_of_another_schema_version_is_refused() {
    let dir = TempDir::new("journal-version");
    let path = dir.path().join("journal.db");
    drop(Journal::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let err = Journal::open(&path).unwrap_err();
    assert!(
        matches!(err, JournalError::Version { found: 99, .. }),
        "{err}"
    );
    assert_eq!(
        miette::Diagnostic::code(&err).unwrap().to_string(),
        codes::JOURNAL_VERSION
    );
    // A file that is not a database at all.
    std::fs::write(
        dir.path().join("junk.db"),
        b"not a database, not at all.......",
    )
    .unwrap();
    let err = Journal::open(&dir.path().join("junk.db")).unwrap_err();
    assert!(matches!(err, JournalError::Open { .. }), "{err}");
    // A directory that does not exist.
    let err = Journal::open(&dir.path().join("nope/journal.db")).unwrap_err();
    assert!(matches!(err, JournalError::Open { .. }), "{err}");
}

/// The main loop's contract, as the lead's driver keeps it: validate, journal, handle;
/// a tick is journaled when its timers had effects.
fn live(engine: &mut Engine, j: &Journal, sha: &str, t: u64, input: &Input) {
    engine.validate(t, input).unwrap();
    j.append_input(t, sha, input).unwrap();
    engine.handle(t, input).unwrap();
}

#[test]
fn replay_rebuilds_the_engine_live_handling_built() {
    let dir = TempDir::new("journal-replay");
    let path = dir.path().join("journal.db");
    let bundle = office();
    let sha = &bundle.manifest_sha256;
    let tr = office_trace();
    let config = Config::fixed(tr.clock_ms);
    let start = 5_000;
    let j = Journal::open(&path).unwrap();
    let (mut engine, report) = j.replay(bundle, config.clone(), start).unwrap();
    assert_eq!(report.replayed, 0);
    assert_eq!(
        report.epoch,
        Some(Epoch {
            start_ms: start,
            day_offset_ms: tr.clock_ms
        })
    );
    let mut ticks = 0;
    // Every prefix of the trace: after each event, a restart rebuilds the same engine.
    for ev in &tr.events {
        let t = ev.t_ms + start;
        // Timers between events fire on the live clock as a driver's ticks.
        while let Some(d) = engine.next_deadline().filter(|&d| d < t) {
            let mut probe = engine.clone();
            if !probe.handle(d, &Input::Tick).unwrap().is_empty() {
                live(&mut engine, &j, sha, d, &Input::Tick);
                ticks += 1;
            } else {
                engine = probe;
            }
        }
        live(&mut engine, &j, sha, t, &ev.input);
        let reopened = Journal::open(&path).unwrap();
        let (replayed, report) = reopened.replay(bundle, config.clone(), 0).unwrap();
        assert!(report.skipped.is_empty(), "{report:?}");
        assert_eq!(report.other_bundle, 0);
        assert_eq!(report.clock_changed, None);
        assert_eq!(
            format!("{replayed:?}"),
            format!("{engine:?}"),
            "after line {}",
            ev.line
        );
    }
    assert!(ticks > 0, "the trace has timers that fire between events");
    // The trace's end: every device back to normal.
    let names: Vec<&str> = (0..engine.device_count())
        .map(|d| engine.state_name(d, engine.state(d).unwrap()))
        .collect();
    assert_eq!(names, ["normal"; 4]);
}

#[test]
fn replay_skips_and_reports_what_a_new_bundle_refuses() {
    let dir = TempDir::new("journal-upgrade");
    let path = dir.path().join("journal.db");
    let old = shim_bundle(TWO);
    let new = shim_bundle(ONE);
    let j = Journal::open(&path).unwrap();
    let (mut engine, _) = j.replay(&old, Config::default(), 0).unwrap();
    let inputs = [
        (10, reading("a", json!({"t": 5}))),
        (20, reading("b", json!({"t": 6}))),
        (
            30,
            Input::Alert {
                device: "a".into(),
                alert: "scan".into(),
                source: None,
            },
        ),
        (40, reading("a", json!({"gone": true}))),
    ];
    for (t, i) in &inputs {
        live(&mut engine, &j, &old.manifest_sha256, *t, i);
    }
    let (engine, report) = j.replay(&new, Config::default(), 0).unwrap();
    assert_eq!(report.replayed, 2);
    assert_eq!(report.other_bundle, 2);
    assert_eq!(
        report
            .skipped
            .iter()
            .map(|s| (s.seq, s.errors[0].code()))
            .collect::<Vec<_>>(),
        [(2, codes::UNKNOWN_DEVICE), (4, codes::UNKNOWN_VARIABLE)]
    );
    assert_eq!(report.last_seq, Some(4));
    assert_eq!(engine.state_name(0, engine.state(0).unwrap()), "suspicious");
    // A changed clock is reported, once: a fixed offset, then a time zone, then the
    // same zone again (whose offset changes by itself).
    let (_, report) = j.replay(&new, Config::fixed(3_600_000), 0).unwrap();
    assert_eq!(
        report.clock_changed,
        Some(("UTC+00:00".to_string(), "UTC+01:00".to_string()))
    );
    let (_, report) = j.replay(&new, Config::fixed(3_600_000), 0).unwrap();
    assert_eq!(report.clock_changed, None);
    let west = Config::fixed(86_400_000 - 5 * 3_600_000);
    let (_, report) = j.replay(&new, west.clone(), 0).unwrap();
    assert_eq!(
        report.clock_changed,
        Some(("UTC+01:00".to_string(), "UTC-05:00".to_string()))
    );
    let berlin = Config {
        zone: Some(kalki_model::clock::Zone::named("Europe/Berlin", 0).unwrap()),
        ..west
    };
    let (_, report) = j.replay(&new, berlin.clone(), 0).unwrap();
    assert_eq!(
        report.clock_changed,
        Some(("UTC-05:00".to_string(), "Europe/Berlin".to_string()))
    );
    let (_, report) = j.replay(&new, berlin, 0).unwrap();
    assert_eq!(report.clock_changed, None);
}

/// The group commit (`append_inputs`, what the MQTT loop journals a batch of messages
/// with): the inputs of one call get consecutive sequence numbers after those before,
/// come back and replay in their order, and a call that fails part way leaves none of its
/// inputs and takes no sequence number.
#[test]
fn a_batch_of_inputs_is_journaled_in_order_and_all_or_nothing() {
    let dir = TempDir::new("journal-batch");
    let path = dir.path().join("journal.db");
    let bundle = shim_bundle(TWO);
    let sha = &bundle.manifest_sha256;
    let j = Journal::open(&path).unwrap();
    let (mut engine, _) = j.replay(&bundle, Config::default(), 0).unwrap();
    live(&mut engine, &j, sha, 10, &reading("a", json!({"t": 1})));
    assert_eq!(j.append_inputs(15, sha, &[]).unwrap(), Vec::<u64>::new());

    // In this order `a` ends normal and `b` suspicious; any other order ends elsewhere.
    let scan = |d: &str| Input::Alert {
        device: d.into(),
        alert: "scan".into(),
        source: None,
    };
    let batch = vec![
        reading("a", json!({"t": 2})),
        scan("a"),
        reading("b", json!({"t": 3})),
        Input::Operator {
            device: "a".into(),
            action: "reset".into(),
        },
        scan("b"),
    ];
    assert_eq!(j.append_inputs(20, sha, &batch).unwrap(), [2, 3, 4, 5, 6]);
    for input in &batch {
        engine.handle(20, input).unwrap();
    }
    let state = |e: &Engine, d: usize| e.state_name(d, e.state(d).unwrap()).to_string();
    assert_eq!(
        (state(&engine, 0), state(&engine, 1)),
        ("normal".into(), "suspicious".into())
    );
    let back = j.inputs().unwrap();
    assert_eq!(
        back.iter().map(|i| (i.seq, i.t_ms)).collect::<Vec<_>>(),
        [(1, 10), (2, 20), (3, 20), (4, 20), (5, 20), (6, 20)]
    );
    assert_eq!(
        back[1..]
            .iter()
            .map(|i| i.input.clone())
            .collect::<Vec<_>>(),
        batch
    );
    let (replayed, report) = Journal::open(&path)
        .unwrap()
        .replay(&bundle, Config::default(), 0)
        .unwrap();
    assert_eq!((report.replayed, report.last_seq), (6, Some(6)));
    assert_eq!(format!("{replayed:?}"), format!("{engine:?}"));

    // The database refuses the third input of a batch (a trigger of the test's, through
    // another connection): the call fails, and neither the two before it nor the one
    // after are journaled, now or after reopening.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER refuse_c BEFORE INSERT ON inputs WHEN NEW.device = 'c'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .unwrap();
    let failing = [
        reading("a", json!({"t": 4})),
        reading("b", json!({"t": 5})),
        reading("c", json!({"t": 6})),
        reading("a", json!({"t": 7})),
    ];
    let err = j.append_inputs(30, sha, &failing).unwrap_err();
    assert!(matches!(err, JournalError::Sqlite(_)), "{err}");
    assert!(err.to_string().contains("refused by the test"), "{err}");
    assert_eq!(j.inputs().unwrap(), back);
    assert_eq!(Journal::open(&path).unwrap().inputs().unwrap(), back);

    // The connection is not left inside the failed transaction, and the sequence goes on
    // from the last input journaled.
    raw.execute_batch("DROP TRIGGER refuse_c").unwrap();
    let more = [reading("a", json!({"t": 8})), reading("b", json!({"t": 9}))];
    assert_eq!(j.append_inputs(40, sha, &more).unwrap(), [7, 8]);
    drop(j);
    let back = Journal::open(&path).unwrap().inputs().unwrap();
    assert_eq!(
        back.iter().map(|i| i.seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(
        back[6..]
            .iter()
            .map(|i| i.input.clone())
            .collect::<Vec<_>>(),
        more
    );
}

const TWO: &str = r#"
device type Box {
    sensed t: int in 0..100
    sensed gone: bool
    alerts scan
    states normal < suspicious
    initial normal
    normal { chain [pass] }
    suspicious { chain [drop] }
    normal -> suspicious on scan
    suspicious -> normal on operator reset
}
site lab {
    bridge "br0" uplink "eth0"
    device a: Box at 10.0.0.1 port "p1"
    device b: Box at 10.0.0.2 port "p2"
}
"#;

const ONE: &str = r#"
device type Box {
    sensed t: int in 0..100
    alerts scan
    states normal < suspicious
    initial normal
    normal { chain [pass] }
    suspicious { chain [drop] }
    normal -> suspicious on scan
    suspicious -> normal on operator reset
}
site lab {
    bridge "br0" uplink "eth0"
    device a: Box at 10.0.0.1 port "p1"
}
"#;

const CHILD_ENV: &str = "KALKI_JOURNAL_CRASH_CHILD";

/// Not a test by itself: the writer the crash test runs in a child process (this test
/// binary again, with `CHILD_ENV` naming the journal). It appends inputs as fast as it can
/// and prints `ack SEQ T` after each append has returned, until it is killed.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    use std::io::Write;
    let j = Journal::open(std::path::Path::new(&path)).unwrap();
    let inputs = samples();
    let mut out = std::io::stdout().lock();
    for t in 0u64.. {
        let input = &inputs[t as usize % inputs.len()];
        let seq = j.append_input(t, "sha", input).unwrap();
        writeln!(out, "ack {seq} {t}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn a_writer_killed_mid_stream_loses_nothing_it_acknowledged() {
    let dir = TempDir::new("journal-crash");
    let path = dir.path().join("journal.db");
    let inputs = samples();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = Vec::new();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("ack ") {
                let (seq, t) = rest.split_once(' ').unwrap();
                acked.push((seq.parse::<u64>().unwrap(), t.parse::<u64>().unwrap()));
                // Different moments in the stream each round.
                if acked.len() >= 40 + 37 * round {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL: no destructor, no flush, mid-write
        child.wait().unwrap();

        let conn = rusqlite::Connection::open(&path).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        drop(conn);
        let j = Journal::open(&path).unwrap();
        let back = j.inputs().unwrap();
        let by_seq: BTreeMap<u64, (u64, Input)> = back
            .iter()
            .map(|i| (i.seq, (i.t_ms, i.input.clone())))
            .collect();
        for (seq, t) in &acked {
            let (bt, input) = by_seq.get(seq).unwrap_or_else(|| panic!("lost {seq}"));
            assert_eq!(bt, t);
            assert_eq!(input, &inputs[*t as usize % inputs.len()]);
        }
        // In order, no gaps: each run's sequence continues the last.
        let seqs: Vec<u64> = back.iter().map(|i| i.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        drop(j);
    }
}

/// Who gave an operator input is kept with it (the `actors` table, created on open of a
/// journal that lacks it), and a device's history lists everything about it, newest
/// first, in words, and nothing about other devices.
#[test]
fn history_in_words_with_who_gave_each_operator_input() {
    let dir = TempDir::new("journal-history");
    let path = dir.path().join("journal.db");
    let alert = Input::Alert {
        device: "hall_cam".into(),
        alert: "port_scan".into(),
        source: Some("sniffer".into()),
    };
    let reset = Input::Operator {
        device: "hall_cam".into(),
        action: "reset".into(),
    };
    {
        let j = Journal::open(&path).unwrap();
        j.append_inputs_by(1000, "sha", [(&alert, None)]).unwrap();
        j.record_change(1000, "hall_cam", "normal", "suspicious", "on port_scan")
            .unwrap();
        j.append_input(1500, "sha", &reading("thermo", json!({"temperature": 21})))
            .unwrap();
        j.record_command(1700, "hall_cam", "start_recording", "watch")
            .unwrap();
        j.append_inputs_by(2000, "sha", [(&reset, Some("console:1a2b3c4d"))])
            .unwrap();
        j.append_inputs_by(3000, "sha", [(&reset, Some("api"))])
            .unwrap();
    }
    // Reopened: the table is there already, and nothing is lost.
    let j = Journal::open(&path).unwrap();
    let h: Vec<(u64, String, String)> = j
        .history("hall_cam", 10)
        .unwrap()
        .into_iter()
        .map(|e| (e.t_ms, e.kind, e.text))
        .collect();
    assert_eq!(
        h,
        vec![
            (3000, "operator".into(), "reset by api".into()),
            (2000, "operator".into(), "reset by console:1a2b3c4d".into()),
            (
                1700,
                "command".into(),
                "command start_recording (rule watch): pending".into()
            ),
            (
                1000,
                "change".into(),
                "normal -> suspicious: on port_scan".into()
            ),
            (1000, "alert".into(), "port_scan from sniffer".into()),
        ]
    );
    assert_eq!(j.history("hall_cam", 2).unwrap().len(), 2, "the limit");
    let thermo = j.history("thermo", 10).unwrap();
    assert_eq!(thermo.len(), 1);
    assert_eq!(thermo[0].text, "temperature=21");
    // Replay reads the inputs only: who gave them changes nothing.
    assert_eq!(j.inputs().unwrap().len(), 4);
}
