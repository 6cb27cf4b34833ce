//! `kalki-shim simulate`, the real binary, on a bundle the real compiler builds from
//! `examples/smart-office`: the bundled trace's timeline (text and JSON lines, snapshot),
//! `examples/flapping` as written (`on`) and with `when` (the reset undone, or not),
//! and refusals: bad trace lines with their line numbers and nothing replayed (among them
//! alerts from µmboxes not deployed in their device's state when they arrive), a tampered
//! bundle, a directory that is no bundle; a clock window across both daylight-saving days
//! of `Europe/Berlin` (`--time-zone`), against the verifier's claim, and the flag's
//! refusals (`run` and `apply` too, which refuse a bad zone before touching the node).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    compile_dir, compile_verified, repo_root, shim_in as shim, utf8 as text, write_bundle, TempDir,
};

/// A directory holding the example's bundle as `bundle/` and a copy of its trace.
fn office(name: &str) -> TempDir {
    example(name, "examples/smart-office")
}

fn example(name: &str, path: &str) -> TempDir {
    let dir = TempDir::new(name);
    let bundle = TempDir::new(&format!("{name}-b"));
    write_bundle(&compile_dir(path), &bundle);
    std::fs::rename(bundle.path(), dir.path().join("bundle")).unwrap();
    std::fs::copy(
        repo_root().join(path).join("trace.jsonl"),
        dir.path().join("trace.jsonl"),
    )
    .unwrap();
    dir
}

/// `examples/badge-door`: the badge reader stops reporting after its reading at 1 min;
/// five minutes later (`after 5m silent`) it is `offline`, so the door opening at 7 min
/// raises the lock's posture through the rule; the reader's next reading brings it back.
/// Without the silence trigger the rule would wait forever for a reading.
#[test]
fn a_silent_reader_goes_offline_and_its_rule_escalates_the_lock() {
    let dir = example("badge", "examples/badge-door");
    let out = shim(dir.path(), &["simulate", "bundle", "trace.jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let timeline = text(&out.stdout);
    let lines: Vec<&str> = timeline.lines().skip(1).map(str::trim_end).collect();
    let expect = [
        (
            "360000  00:06:00",
            "reader  normal -> offline  after 5m silent",
        ),
        (
            "420000  00:07:00",
            "lock    normal -> suspicious  rule door_unwatched",
        ),
        (
            "480000  00:08:00",
            "reader  offline -> normal  when granted or not granted",
        ),
    ];
    for (at, what) in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(at) && l.ends_with(what)),
            "{at} {what}\n{timeline}"
        );
    }
    assert!(
        timeline.contains("end at 480000 ms: reader normal, lock suspicious"),
        "{timeline}"
    );
}

/// `examples/mqtt-site`: a capture of what the workshop's devices published, replayed
/// through the bundle's bindings. The Zigbee door contact (behind a hub, off the switch)
/// opens after hours and its rule escalates the camera on the switch; the Zigbee climate
/// sensor's 35.6 °C makes the other rule switch the Tasmota plug off; a garbled SENSOR
/// message is refused and changes nothing; the plug switched on again over its rating
/// goes `suspicious`; the contact's availability going offline takes it `offline`.
#[test]
fn an_mqtt_capture_drives_a_rule_from_a_sensor_behind_a_hub() {
    let dir = example("mqtt-site", "examples/mqtt-site");
    let out = shim(dir.path(), &["simulate", "bundle", "trace.jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let timeline = text(&out.stdout);
    let lines: Vec<&str> = timeline.lines().skip(1).map(str::trim_end).collect();
    let expect = [
        ("130000  20:00:10", "cam     normal -> suspicious  rule door_after_hours"),
        ("200000  20:01:20", "heater  command turn_off  (rule too_hot)"),
        ("350000  20:03:50", "heater  command turn_off  (rule too_hot)"),
        (
            "360000  20:04:00",
            "heater  normal -> suspicious  when online and power > 3680 (from topic tele/workshop_heater/SENSOR)",
        ),
        (
            "420000  20:05:00",
            "door    normal -> offline  when not online (from topic zigbee2mqtt/workshop_door/availability)",
        ),
    ];
    for (at, what) in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(at) && l.ends_with(what)),
            "{at} {what}\n{timeline}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("300000")
            && l.contains("refused S122 message on tele/workshop_heater/SENSOR")),
        "{timeline}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("->")).count(),
        3,
        "only these state changes: {timeline}"
    );
    assert!(
        timeline.contains(
            "end at 420000 ms: heater suspicious, cam suspicious, door offline, air normal"
        ),
        "{timeline}"
    );
    assert!(timeline.contains("1 refused (S122 1)"), "{timeline}");
}

#[test]
fn the_bundled_trace() {
    let dir = office("trace");
    let out = shim(dir.path(), &["simulate", "bundle", "trace.jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    let timeline = text(&out.stdout);
    // What the trace is there to show, whatever else the snapshot holds.
    for line in [
        "hall_cam      normal -> suspicious  rule after_hours_intrusion",
        "lobby_light   command turn_on  (rule after_hours_intrusion)",
        "hall_cam      suspicious -> attack  on port_scan count 3 within 1m (from ids)",
        "hall_cam      attack -> normal  on operator reset",
    ] {
        assert!(timeline.contains(line), "{line}\n{timeline}");
    }
    insta::with_settings!({ snapshot_path => "snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("smart-office-timeline", timeline);
    });

    let out = shim(
        dir.path(),
        &["simulate", "bundle", "trace.jsonl", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(0));
    let json = text(&out.stdout);
    for line in json.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    insta::with_settings!({ snapshot_path => "snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("smart-office-timeline-json", json);
    });
}

#[test]
fn until_fires_the_timers_after_the_last_event() {
    let dir = office("until");
    let out = shim(
        dir.path(),
        &["simulate", "bundle", "trace.jsonl", "--until", "2000000"],
    );
    assert_eq!(out.status.code(), Some(0));
    let timeline = text(&out.stdout);
    assert!(timeline.ends_with("end at 2000000 ms: hall_cam normal, lobby_light normal, thermo normal, annex_thermo normal\n"), "{timeline}");
}

/// `--until` takes a duration with the language's units; a bare number stays milliseconds.
#[test]
fn until_takes_a_duration_with_a_unit() {
    let dir = office("until-units");
    let run = |until: &str| {
        shim(
            dir.path(),
            &["simulate", "bundle", "trace.jsonl", "--until", until],
        )
    };
    let bare = run("10800000");
    assert_eq!(bare.status.code(), Some(0));
    let hours = run("3h");
    assert_eq!(hours.status.code(), Some(0));
    assert_eq!(text(&hours.stdout), text(&bare.stdout));
    assert!(text(&hours.stdout).contains("end at 10800000 ms"));
    for bad in ["3hours", "1.5h", "367d"] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = text(&out.stderr);
        assert!(err.contains(bad), "{bad}: {err}");
        assert!(
            err.contains("ms, s, m, h, d") || err.contains("outside"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn bad_trace_lines_are_located_and_nothing_is_replayed() {
    let dir = office("bad");
    std::fs::write(
        dir.path().join("bad.jsonl"),
        concat!(
            "{\"clock\": \"19:58\"}\n",
            "{\"t_ms\": 0, \"device\": \"hall_cam\", \"reading\": {\"motion\": true}}\n",
            "{\"t_ms\": 10, \"device\": \"hal_cam\", \"alert\": \"port_scan\"}\n",
            "{\"t_ms\": 20, \"device\": \"thermo\", \"reading\": {\"temperature\": 300, \"mode\": \"warm\"}}\n",
            "{\"t_ms\": 5}\n",
            "{\"t_ms\": 30, \"device\": \"hall_cam\", \"alert\": \"port_scan\", \"source\": \"auth_proxy_block\"}\n",
            "{\"t_ms\": 40, \"device\": \"hall_cam\" \"operator\": \"reset\"}\n",
        ),
    )
    .unwrap();
    let out = shim(
        dir.path(),
        &["simulate", "bundle", "bad.jsonl", "--color", "never"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "", "no partial timeline");
    let stderr = text(&out.stderr);
    insta::with_settings!({ snapshot_path => "snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("bad-trace", stderr);
    });
}

/// A µmbox speaks for its device only while the device's current chain deploys it, as in
/// `kalki-shim run`: `hall_cam`'s `ids` only in `suspicious`, its `sniffer` in `normal` and
/// `suspicious`. The same alert is refused in one state and accepted in another.
#[test]
fn alerts_from_umboxes_not_deployed_in_the_current_state_are_refused() {
    let dir = office("undeployed");
    let lines = [
        "{\"clock\": \"19:58\"}",
        "{\"t_ms\": 0, \"device\": \"hall_cam\", \"reading\": {\"motion\": true, \"recording\": false}}",
        "{\"t_ms\": 0, \"device\": \"lobby_light\", \"reading\": {\"on\": false, \"brightness\": 0}}",
        // Still normal (no `ids` there): refused.
        "{\"t_ms\": 60000, \"device\": \"hall_cam\", \"alert\": \"port_scan\", \"source\": \"ids\"}",
        // At 20:00 (t 120000) `after_hours_intrusion` moves it to suspicious: accepted.
        "{\"t_ms\": 200000, \"device\": \"hall_cam\", \"alert\": \"port_scan\", \"source\": \"ids\"}",
        "{\"t_ms\": 215000, \"device\": \"hall_cam\", \"alert\": \"port_scan\", \"source\": \"ids\"}",
        "{\"t_ms\": 230000, \"device\": \"hall_cam\", \"alert\": \"port_scan\", \"source\": \"ids\"}",
        // In attack (`drop`), no µmbox: refused.
        "{\"t_ms\": 240000, \"device\": \"hall_cam\", \"alert\": \"port_scan\", \"source\": \"sniffer\"}",
        // Without a source, the device's own: a camera declares no alert: refused (S112).
        "{\"t_ms\": 250000, \"device\": \"hall_cam\", \"alert\": \"port_scan\"}",
    ];
    let trace = |keep: &dyn Fn(usize) -> bool| {
        let kept: Vec<&str> = (1..=lines.len())
            .filter(|&n| keep(n))
            .map(|n| lines[n - 1])
            .collect();
        kept.join("\n") + "\n"
    };
    std::fs::write(dir.path().join("bad.jsonl"), trace(&|_| true)).unwrap();
    let out = shim(
        dir.path(),
        &["simulate", "bundle", "bad.jsonl", "--color", "never"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "", "no partial timeline");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "× line 4: `ids` is not deployed for `hall_cam` in its current state `normal`"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "× line 8: `sniffer` is not deployed for `hall_cam` in its current state `attack`"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("S111").count(), 2, "{stderr}");
    assert!(
        stderr.contains(
            "× line 9: `hall_cam` does not report `port_scan` itself: its type does not declare it"
        ),
        "{stderr}"
    );
    insta::with_settings!({ snapshot_path => "snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("undeployed-source", stderr);
    });

    // Without the three refused lines the trace replays, `ids` moving the camera on.
    std::fs::write(
        dir.path().join("good.jsonl"),
        trace(&|n| n != 4 && n != 8 && n != 9),
    )
    .unwrap();
    let out = shim(dir.path(), &["simulate", "bundle", "good.jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let timeline = text(&out.stdout);
    assert!(
        timeline.contains(
            "hall_cam      suspicious -> attack  on port_scan count 3 within 1m (from ids)"
        ),
        "{timeline}"
    );
}

#[test]
fn a_tampered_bundle_is_refused() {
    let dir = office("tampered");
    let flows = dir.path().join("bundle/flows/hall_cam/attack.ofctl");
    std::fs::write(&flows, "table=1,priority=5000,actions=NORMAL\n").unwrap();
    let out = shim(dir.path(), &["simulate", "bundle", "trace.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("S005"), "{stderr}");
    assert!(stderr.contains("flows/hall_cam/attack.ofctl"), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = office("usage");
    let out = shim(dir.path(), &["simulate", "nowhere", "trace.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not a bundle directory"));
    let out = shim(dir.path(), &["simulate", "bundle", "missing.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    let out = shim(dir.path(), &["simulate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = shim(dir.path(), &["apply", "bundle"]);
    assert_eq!(out.status.code(), Some(2), "only `simulate` exists so far");
}

/// `run` and `apply` take `--time-zone` as `simulate` does: a name that is no IANA zone is
/// a usage error (2), said before anything is touched; it does not go with `--utc-offset`.
#[test]
fn run_and_apply_refuse_a_time_zone_that_is_not_one() {
    let dir = office("tz-usage");
    for cmd in ["run", "apply"] {
        let out = shim(
            dir.path(),
            &[cmd, "bundle", "--time-zone", "Mars/Olympus_Mons"],
        );
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--time-zone `Mars/Olympus_Mons` is not a time zone of the IANA database"),
            "{cmd}: {err}"
        );
        let out = shim(
            dir.path(),
            &[
                cmd,
                "bundle",
                "--time-zone",
                "Europe/Berlin",
                "--utc-offset",
                "+01:00",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert!(
            text(&out.stderr).contains("cannot be used with"),
            "{cmd}: {}",
            text(&out.stderr)
        );
    }
}

/// `examples/flapping`: the camera's `intruder` rule, as written (`on`) and as a level
/// rule (`when`), on the example's trace. With `when`, the next reading of motion after
/// the operator's reset moves the camera back up; with `on`, the reset stands until
/// motion stops and starts again. In both, `escalate` leaves the camera in `attack`.
#[test]
fn an_on_rule_no_longer_undoes_the_operators_reset() {
    let src = std::fs::read_to_string(repo_root().join("examples/flapping/cameras.kalki")).unwrap();
    let level = src.replace("        on pir.motion\n", "        when pir.motion\n");
    assert_ne!(level, src, "the example's rule is an `on` rule");
    // The camera's state changes: (t_ms, from, to, rule or trigger).
    let run = |name: &str, src: &str| -> Vec<(u64, String, String, String)> {
        let dir = TempDir::new(name);
        let bundle = TempDir::new(&format!("{name}-b"));
        write_bundle(&common::compile(src), &bundle);
        std::fs::rename(bundle.path(), dir.path().join("bundle")).unwrap();
        std::fs::copy(
            repo_root().join("examples/flapping/trace.jsonl"),
            dir.path().join("trace.jsonl"),
        )
        .unwrap();
        let out = shim(
            dir.path(),
            &["simulate", "bundle", "trace.jsonl", "--format", "json"],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "state" && v["device"] == "cam")
            .map(|v| {
                let why = v["rule"]
                    .as_str()
                    .map(|r| format!("rule {r}"))
                    .or_else(|| v["trigger"].as_str().map(str::to_string))
                    .unwrap_or_default();
                let s = |k: &str| v[k].as_str().unwrap().to_string();
                (v["t_ms"].as_u64().unwrap(), s("from"), s("to"), why)
            })
            .collect()
    };
    let change = |t: u64, from: &str, to: &str, why: &str| {
        (t, from.to_string(), to.to_string(), why.to_string())
    };
    let own = [
        change(0, "normal", "suspicious", "on scan"),
        change(1000, "suspicious", "attack", "on breach"),
        // 2000: motion; the rule fires, but an escalation leaves `attack` as it is.
        change(60000, "attack", "normal", "on operator reset"),
    ];

    let mut flaps = own.to_vec();
    flaps.push(change(62000, "normal", "suspicious", "rule intruder"));
    assert_eq!(
        run("flap-when", &level),
        flaps,
        "`when`: the reset is undone at once"
    );

    let mut stands = own.to_vec();
    stands.push(change(122000, "normal", "suspicious", "rule intruder"));
    assert_eq!(
        run("flap-on", &src),
        stands,
        "`on`: the reset stands until new motion"
    );
}

/// A lamp that is `night` exactly while the wall clock reads 01:30..02:30 (and it saw
/// motion): one rule moves it in when the window opens, the other out when it closes.
const SMALL_HOURS: &str = r#"
import std::umboxes::sniffer

device type Lamp {
    sensed motion: bool

    states normal < night
    initial normal

    normal { chain [sniffer] }
    night  { chain [sniffer] }
}

site home {
    bridge "br0" uplink "eth0"

    device lamp: Lamp at 10.0.4.10 port "lamp0" trusted

    rule small_hours
        when lamp.motion and clock in 01:30..02:30
        then lamp -> night
    rule other_hours
        when lamp.motion and not clock in 01:30..02:30
        then lamp -> normal

    assert reachable lamp in night
}
"#;

/// The timeline of `simulate` on the small-hours lamp, motion from local midnight of
/// `day` (its offset then, `+01:00`) to 04:00 (`end`, with its offset), with `args`.
fn small_hours(dir: &TempDir, day: &str, midnight: &str, end: &str, args: &[&str]) -> Vec<String> {
    let trace = format!(
        "{{\"at\": \"{day}T00:00:00{midnight}\", \"device\": \"lamp\", \"reading\": {{\"motion\": true}}}}\n{{\"at\": \"{day}T04:00:00{end}\"}}\n"
    );
    std::fs::write(dir.path().join("trace.jsonl"), trace).unwrap();
    let mut all = vec!["simulate", "bundle", "trace.jsonl"];
    all.extend_from_slice(args);
    let out = shim(dir.path(), &all);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// A directory holding `bundle/`, built from `src`, whose one assertion (a `reachable`)
/// the verifier proves.
fn proved_reachable_bundle(src: &str, name: &str) -> TempDir {
    let (built, verdicts) = compile_verified(src);
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
    let dir = TempDir::new(name);
    let bundle = TempDir::new(&format!("{name}-b"));
    write_bundle(&built, &bundle);
    std::fs::rename(bundle.path(), dir.path().join("bundle")).unwrap();
    dir
}

/// The verifier models the clock as any minute of the day at any evaluation, in any order
/// (docs/verification.md, "Limits"): it over-approximates a wall clock that jumps, so what
/// it proves holds on daylight-saving days too. Here it proves the lamp can reach `night`;
/// the real `simulate --time-zone Europe/Berlin` reaches it on both days, and says exactly
/// when the window opens and closes: on 2026-03-29 it closes at the jump (02:00 CET is
/// 03:00 CEST), on 2026-10-25 the wall clock reads 02:00..02:30 twice and the window opens
/// on both passes. Without a zone the trace keeps its first timestamp's offset all day.
#[test]
fn a_clock_window_on_both_daylight_saving_days_of_berlin() {
    let dir = proved_reachable_bundle(SMALL_HOURS, "dst");
    let zone = ["--time-zone", "Europe/Berlin"];

    let spring = small_hours(&dir, "2026-03-29", "+01:00", "+02:00", &zone);
    assert_eq!(
        spring,
        [
            "5400000 01:30:00+01:00 lamp normal -> night rule small_hours",
            "7200000 03:00:00+02:00 lamp night -> normal rule other_hours",
            "end at 10800000 ms: lamp normal",
        ]
    );
    let fall = small_hours(&dir, "2026-10-25", "+02:00", "+01:00", &zone);
    assert_eq!(
        fall,
        [
            "5400000 01:30:00+02:00 lamp normal -> night rule small_hours",
            "9000000 02:30:00+02:00 lamp night -> normal rule other_hours",
            "10800000 02:00:00+01:00 lamp normal -> night rule small_hours",
            "12600000 02:30:00+01:00 lamp night -> normal rule other_hours",
            "end at 18000000 ms: lamp normal",
        ]
    );
    // The claim the verifier proved holds on both days.
    for timeline in [&spring, &fall] {
        assert!(
            timeline.iter().any(|l| l.contains("-> night")),
            "{timeline:?}"
        );
    }
    // An ordinary day in the zone: one window, one hour.
    let summer = small_hours(&dir, "2026-07-01", "+02:00", "+02:00", &zone);
    assert_eq!(
        summer,
        [
            "5400000 01:30:00+02:00 lamp normal -> night rule small_hours",
            "9000000 02:30:00+02:00 lamp night -> normal rule other_hours",
            "end at 14400000 ms: lamp normal",
        ]
    );
    // No zone: the first timestamp's offset, fixed, as before.
    let fixed = small_hours(&dir, "2026-10-25", "+02:00", "+01:00", &[]);
    assert_eq!(
        fixed,
        [
            "5400000 01:30:00 lamp normal -> night rule small_hours",
            "9000000 02:30:00 lamp night -> normal rule other_hours",
            "end at 18000000 ms: lamp normal",
        ]
    );
}

/// `--time-zone` refusals: a name that is no zone (usage, 2), and a trace without a date
/// (S202, located on its first line; nothing replayed).
#[test]
fn a_time_zone_needs_a_real_name_and_a_dated_trace() {
    let dir = TempDir::new("dst-refused");
    let bundle = TempDir::new("dst-refused-b");
    write_bundle(&compile_verified(SMALL_HOURS).0, &bundle);
    std::fs::rename(bundle.path(), dir.path().join("bundle")).unwrap();
    std::fs::write(
        dir.path().join("trace.jsonl"),
        "\n{\"t_ms\": 0, \"device\": \"lamp\", \"reading\": {\"motion\": true}}\n",
    )
    .unwrap();
    let out = shim(
        dir.path(),
        &[
            "simulate",
            "bundle",
            "trace.jsonl",
            "--time-zone",
            "Europe/Berlim",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("`Europe/Berlim` is not a time zone"),
        "{}",
        text(&out.stderr)
    );
    let out = shim(
        dir.path(),
        &[
            "simulate",
            "bundle",
            "trace.jsonl",
            "--time-zone",
            "Europe/Berlin",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("S202"), "{err}");
    assert!(err.contains("line 2: the trace has no timestamp"), "{err}");
    assert!(out.stdout.is_empty());
    std::fs::write(
        dir.path().join("trace.jsonl"),
        "{\"clock\": \"01:00\"}\n{\"at\": \"2026-03-29T01:00:00+01:00\"}\n",
    )
    .unwrap();
    let out = shim(
        dir.path(),
        &[
            "simulate",
            "bundle",
            "trace.jsonl",
            "--time-zone",
            "Europe/Berlin",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("line 1: a `clock` header gives a time of day without a date"),
        "{err}"
    );
}

/// A held guard over a window counts real time, not the clock: `for 90m` over
/// `01:00..03:00` is met at 02:30 on an ordinary night and on the night the clock falls
/// back (the window is open from 01:00 CEST on), and never on the night it springs forward,
/// when the window closes at the jump an hour after it opened and the hold is cancelled.
/// The verifier proves `reachable` (some day): true on two of the three.
#[test]
fn a_hold_over_a_window_is_cut_by_the_spring_forward_jump() {
    let src = SMALL_HOURS
        .replace(
            "    night  { chain [sniffer] }\n",
            "    night  { chain [sniffer] }\n\n    normal -> night when motion and clock in 01:00..03:00 for 90m\n    night -> normal on operator reset\n",
        )
        .replace(
            "    rule small_hours\n        when lamp.motion and clock in 01:30..02:30\n        then lamp -> night\n    rule other_hours\n        when lamp.motion and not clock in 01:30..02:30\n        then lamp -> normal\n",
            "",
        );
    assert!(src.contains("for 90m") && !src.contains("rule"), "{src}");
    let dir = proved_reachable_bundle(&src, "dst-hold");
    let zone = ["--time-zone", "Europe/Berlin"];
    let met =
        "9000000 02:30:00+02:00 lamp normal -> night when motion and clock in 01:00..03:00 for 90m";
    assert_eq!(
        small_hours(&dir, "2026-03-29", "+01:00", "+02:00", &zone),
        ["end at 10800000 ms: lamp normal"]
    );
    assert_eq!(
        small_hours(&dir, "2026-10-25", "+02:00", "+01:00", &zone),
        [met, "end at 18000000 ms: lamp night"]
    );
    assert_eq!(
        small_hours(&dir, "2026-07-01", "+02:00", "+02:00", &zone),
        [met, "end at 14400000 ms: lamp night"]
    );
}
