//! `kalki-shim simulate` replaying MQTT messages through the bundle's telemetry bindings:
//! a policy using `std::mqtt::TasmotaPlug`, built by the real compiler; a capture as
//! `mosquitto_sub -F %j` writes it (its retained message ignored, its clock taken from
//! it), lines written by hand (`payload`, `payload_base64`). Messages are taken as
//! `run` takes them: on an unbound topic ignored and counted (a near miss noted), refused
//! by the binding (S12x) or the engine (S104) shown, changing nothing, and counted; the
//! replay goes on. Malformed lines (a capture that lost bytes, S205) and hand-written
//! events the engine refuses still refuse the whole trace, nothing on stdout then. A
//! capture with payloads that are not UTF-8, as mosquitto_sub 2.0.11 writes them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{compile, load, shim_in as shim, utf8 as text, write_bundle, MemReader, TempDir};
use kalki_shim::codes;
use kalki_shim::engine::{Config, Engine, Input};
use kalki_shim::trace;

const POLICY: &str = r#"
import std::mqtt::TasmotaPlug

site kitchen {
    bridge "br0" uplink "eth0"
    device plug: TasmotaPlug(topic = "plug_kitchen") at 10.0.5.10 mac 02:00:00:00:05:10 port "plug0"
    rule cut on plug in suspicious then plug.turn_off
}
"#;

/// A capture as mosquitto_sub 2.0.11 prints it with `-F %j` (local time +01:00): the
/// broker's retained LWT at the subscription, then what the plug sent.
const CAPTURE: &str = concat!(
    r#"{"tst":"2026-12-03T22:09:58.100000Z+0100","topic":"tele/plug_kitchen/LWT","qos":0,"retain":1,"payloadlen":6,"payload":"Online"}"#,
    "\n",
    r#"{"tst":"2026-12-03T22:10:00.250000Z+0100","topic":"tele/plug_kitchen/SENSOR","qos":0,"retain":0,"payloadlen":85,"payload":"{\"Time\":\"2026-12-03T22:10:00\",\"ENERGY\":{\"Power\":2900,\"Current\":12.609,\"Voltage\":230}}"}"#,
    "\n",
    r#"{"tst":"2026-12-03T22:10:01.000000Z+0100","topic":"stat/plug_kitchen/POWER","qos":0,"retain":0,"payloadlen":2,"payload":"ON"}"#,
    "\n",
    r#"{"tst":"2026-12-03T22:10:30.150000Z+0100","topic":"tele/plug_kitchen/SENSOR","qos":0,"retain":0,"payloadlen":85,"payload":"{\"Time\":\"2026-12-03T22:10:30\",\"ENERGY\":{\"Power\":3700,\"Current\":16.087,\"Voltage\":230}}"}"#,
    "\n",
);

/// A directory with the policy's bundle as `bundle/` and `trace` as `trace.jsonl`.
fn kitchen(name: &str, trace: &str) -> TempDir {
    let dir = TempDir::new(name);
    let bundle = TempDir::new(&format!("{name}-b"));
    write_bundle(&compile(POLICY), &bundle);
    std::fs::rename(bundle.path(), dir.path().join("bundle")).unwrap();
    std::fs::write(dir.path().join("trace.jsonl"), trace).unwrap();
    dir
}

#[test]
fn a_capture_replays_through_the_bindings() {
    let dir = kitchen("mqtt-capture", CAPTURE);
    let out = shim(dir.path(), &["simulate", "bundle", "trace.jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let timeline = text(&out.stdout);
    let lines: Vec<&str> = timeline.lines().map(str::trim_end).collect();
    // t_ms 0 is the first line (the retained LWT, not replayed), the clock its local
    // time; 3700 W is over the plug's rating; the rule switches it off.
    assert_eq!(
        lines,
        [
            " t_ms  clock         device  what",
            "32050  22:10:30.150  plug    normal -> suspicious  when online and power > 3680 (from topic tele/plug_kitchen/SENSOR)",
            "32050  22:10:30.150  plug    command turn_off  (rule cut)",
            "end at 32050 ms: plug suspicious",
            "messages: 4 received, 3 applied, 0 refused, 1 retained ignored, 0 unbound ignored (S204)",
        ],
        "{timeline}"
    );
    let out = shim(
        dir.path(),
        &["simulate", "--format", "json", "bundle", "trace.jsonl"],
    );
    let first: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["topic"], "tele/plug_kitchen/SENSOR");
    assert_eq!(first["trigger"], "when online and power > 3680");
}

#[test]
fn lines_by_hand_and_the_reading_they_become() {
    let bundle = load(&MemReader::new(&compile(POLICY))).unwrap();
    let trace_text = concat!(
        "{\"clock\": \"08:00\"}\n",
        "{\"t_ms\": 0, \"topic\": \"stat/plug_kitchen/POWER\", \"payload_base64\": \"T0ZG\"}\n",
        "{\"t_ms\": 1000, \"topic\": \"tele/plug_kitchen/SENSOR\", \"payload\": \"{\\\"ENERGY\\\":{\\\"Power\\\":12,\\\"Current\\\":0.0525,\\\"Voltage\\\":229.6}}\"}\n",
    );
    let t = trace::check_bundle(trace_text, &bundle).unwrap();
    assert_eq!(t.clock_ms, 8 * 3_600_000);
    let got: Vec<(u64, Input, Option<&str>)> = t
        .events
        .iter()
        .map(|e| (e.t_ms, e.input.clone(), e.topic.as_deref()))
        .collect();
    let reading = |values: serde_json::Value| Input::Reading {
        device: "plug".into(),
        values: serde_json::from_value(values).unwrap(),
    };
    assert_eq!(
        got,
        [
            (
                0,
                reading(serde_json::json!({"relay": false, "online": true})),
                Some("stat/plug_kitchen/POWER")
            ),
            (
                1000,
                // 0.0525 A is 52.5 mA, rounded to nearest; 229.6 V to 230.
                reading(
                    serde_json::json!({"power": 12, "current": 53, "voltage": 230, "online": true})
                ),
                Some("tele/plug_kitchen/SENSOR")
            ),
        ]
    );
    assert_eq!(
        (t.messages.received, t.messages.applied, t.messages.unbound),
        (2, 2, 0)
    );
    // Without the bundle's bindings, no topic is bound: both are ignored, and counted.
    let engine = Engine::new(&bundle, Config::default(), 0);
    let t = trace::check(trace_text, &engine).unwrap();
    assert!(t.events.is_empty() && t.refused.is_empty(), "{t:#?}");
    assert_eq!(
        (t.messages.received, t.messages.applied, t.messages.unbound),
        (2, 0, 2)
    );
}

/// What `run` would refuse, line by line: each is replayed as a refusal that changes
/// nothing, and the replay goes on.
#[test]
fn refused_messages_are_shown_and_counted_and_change_nothing() {
    let trace_text = concat!(
        // 1: a misspelt topic: bound by no device, ignored (noted as a near miss).
        "{\"t_ms\": 0, \"topic\": \"tele/plug_kitchn/SENSOR\", \"payload\": \"{}\"}\n",
        // 2: a binding's paths missing (two problems, one message).
        "{\"t_ms\": 1, \"topic\": \"tele/plug_kitchen/SENSOR\", \"payload\": \"{\\\"ENERGY\\\":{\\\"Power\\\":5}}\"}\n",
        // 3: not JSON.
        "{\"t_ms\": 2, \"topic\": \"tele/plug_kitchen/SENSOR\", \"payload\": \"ENERGY\"}\n",
        // 4: none of the map's values.
        "{\"t_ms\": 3, \"topic\": \"stat/plug_kitchen/POWER\", \"payload\": \"TOGGLE\"}\n",
        // 5: decodes, but 500 kW is outside `power`'s range: the engine refuses it.
        "{\"t_ms\": 4, \"topic\": \"tele/plug_kitchen/SENSOR\", \"payload\": \"{\\\"ENERGY\\\":{\\\"Power\\\":500000,\\\"Current\\\":1,\\\"Voltage\\\":230}}\"}\n",
        // 6: fine.
        "{\"t_ms\": 5, \"topic\": \"tele/plug_kitchen/LWT\", \"payload\": \"Offline\"}\n",
        // 7: not UTF-8 (sent as base64).
        "{\"t_ms\": 6, \"topic\": \"tele/plug_kitchen/LWT\", \"payload_base64\": \"/w==\"}\n",
    );
    let bundle = load(&MemReader::new(&compile(POLICY))).unwrap();
    let t = trace::check_bundle(trace_text, &bundle).unwrap();
    let got: Vec<(usize, &str, &str)> = t
        .refused
        .iter()
        .flat_map(|r| {
            r.problems
                .iter()
                .map(move |p| (r.line, p.code, r.device.as_str()))
        })
        .collect();
    assert_eq!(
        got,
        [
            (2, "S121", "plug"),
            (2, "S121", "plug"),
            (3, "S120", "plug"),
            (4, "S122", "plug"),
            (5, "S104", "plug"),
            (7, "S120", "plug"),
        ],
        "{t:#?}"
    );
    let reasons: Vec<&str> = t
        .refused
        .iter()
        .flat_map(|r| r.problems.iter().map(|p| p.reason.as_str()))
        .collect();
    for (reason, what) in reasons.iter().zip([
        "`current`: the payload has no `ENERGY.Current`",
        "`voltage`: the payload has no `ENERGY.Voltage`",
        "the payload is not a JSON object",
        "is none of the binding's values",
        "`plug.power` = 500000 is outside its range",
        "the payload is not UTF-8 text",
    ]) {
        assert!(reason.contains(what), "{reason}: {what}");
    }
    assert_eq!(t.events.len(), 1, "only line 6 is a reading: {t:#?}");
    assert_eq!(t.events[0].line, 6);
    let m = &t.messages;
    assert_eq!((m.received, m.applied, m.unbound), (7, 1, 1));
    // By message and code: line 2's two S121s are one message.
    let refused: Vec<(&str, u64)> = m.refused.iter().map(|(c, n)| (c.as_str(), *n)).collect();
    assert_eq!(
        refused,
        [("S104", 1), ("S120", 2), ("S121", 1), ("S122", 1)]
    );

    let dir = kitchen("mqtt-refused", trace_text);
    let out = shim(dir.path(), &["simulate", "bundle", "trace.jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    let timeline = text(&out.stdout);
    let lines: Vec<&str> = timeline.lines().map(str::trim_end).collect();
    // Six refusals, and the LWT's `Offline` taking the plug `silent`.
    assert_eq!(lines.len(), 1 + 7 + 3, "{timeline}");
    assert_eq!(
        lines[1],
        "   1  00:00:00.001  plug    refused S121 message on tele/plug_kitchen/SENSOR: `current`: the payload has no `ENERGY.Current`  (line 2)"
    );
    assert!(
        lines[5].starts_with("   4  00:00:00.004  plug    refused S104 message on tele/plug_kitchen/SENSOR: `plug.power` = 500000 is outside its range"),
        "{timeline}"
    );
    assert_eq!(
        lines[6],
        "   5  00:00:00.005  plug    normal -> silent  when not online (from topic tele/plug_kitchen/LWT)"
    );
    assert_eq!(
        lines[8..],
        [
            "end at 6 ms: plug silent",
            "messages: 7 received, 1 applied, 5 refused (S104 1, S120 2, S121 1, S122 1), 0 retained ignored, 1 unbound ignored (S204)",
            "note: 1 message on \"tele/plug_kitchn/SENSOR\" ignored: no device binds it; did you mean \"tele/plug_kitchen/SENSOR\"?",
        ],
        "{timeline}"
    );
}

/// `mosquitto_sub -F %j -t '#'` records every topic on the broker: those the bundle does
/// not bind are ignored, as `run` (subscribed to the bound ones only) never gets them,
/// and counted.
#[test]
fn a_capture_of_every_topic_replays_the_bound_ones() {
    let mut capture = String::from(CAPTURE);
    for (i, line) in [
        r#""topic":"zigbee2mqtt/bridge/state","qos":0,"retain":0,"payloadlen":6,"payload":"online"}"#,
        r#""topic":"homeassistant/sensor/x/config","qos":0,"retain":0,"payloadlen":2,"payload":"{}"}"#,
        r#""topic":"tele/plug_other/SENSOR","qos":0,"retain":0,"payloadlen":7,"payload":"garbage"}"#,
    ]
    .iter()
    .enumerate()
    {
        capture.push_str(&format!(
            "{{\"tst\":\"2026-12-03T22:10:4{i}.000000Z+0100\",{line}\n"
        ));
    }
    let dir = kitchen("mqtt-everything", &capture);
    let out = shim(dir.path(), &["simulate", "bundle", "trace.jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let timeline = text(&out.stdout);
    let lines: Vec<&str> = timeline.lines().map(str::trim_end).collect();
    // As without them; the replay runs to the last line's time. `tele/plug_other/SENSOR`
    // is near a bound topic, and noted.
    assert_eq!(
        lines,
        [
            " t_ms  clock         device  what",
            "32050  22:10:30.150  plug    normal -> suspicious  when online and power > 3680 (from topic tele/plug_kitchen/SENSOR)",
            "32050  22:10:30.150  plug    command turn_off  (rule cut)",
            "end at 32050 ms: plug suspicious",
            "messages: 7 received, 3 applied, 0 refused, 1 retained ignored, 3 unbound ignored (S204)",
            "note: 1 message on \"tele/plug_other/SENSOR\" ignored: no device binds it; did you mean \"tele/plug_kitchen/SENSOR\"?",
        ],
        "{timeline}"
    );
    let out = shim(
        dir.path(),
        &["simulate", "--format", "json", "bundle", "trace.jsonl"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    let end: serde_json::Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
    assert_eq!(
        end,
        serde_json::json!({
            "end_ms": 32050,
            "states": {"plug": "suspicious"},
            "messages": {"received": 7, "applied": 3, "refused": {}, "retained_ignored": 1, "unbound": 3},
        })
    );
}

/// A message the binding refuses in the middle of a capture changes nothing, and the
/// good one after it is replayed: the plug goes over its rating then.
#[test]
fn a_refused_message_mid_capture_and_the_good_one_after_it() {
    let capture = concat!(
        r#"{"tst":"2026-12-03T22:10:00.000000Z+0100","topic":"tele/plug_kitchen/SENSOR","qos":0,"retain":0,"payloadlen":50,"payload":"{\"ENERGY\":{\"Power\":100,\"Current\":1,\"Voltage\":230}}"}"#,
        "\n",
        // Over the rating, but without `Current`: refused whole, so no state change.
        r#"{"tst":"2026-12-03T22:10:01.500000Z+0100","topic":"tele/plug_kitchen/SENSOR","qos":0,"retain":0,"payloadlen":39,"payload":"{\"ENERGY\":{\"Power\":3700,\"Voltage\":230}}"}"#,
        "\n",
        r#"{"tst":"2026-12-03T22:10:02.000000Z+0100","topic":"tele/plug_kitchen/SENSOR","qos":0,"retain":0,"payloadlen":52,"payload":"{\"ENERGY\":{\"Power\":3700,\"Current\":16,\"Voltage\":230}}"}"#,
        "\n",
    );
    let dir = kitchen("mqtt-mid", capture);
    let out = shim(dir.path(), &["simulate", "bundle", "trace.jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    let timeline = text(&out.stdout);
    let lines: Vec<&str> = timeline.lines().map(str::trim_end).collect();
    assert_eq!(
        lines,
        [
            "t_ms  clock         device  what",
            "1500  22:10:01.500  plug    refused S121 message on tele/plug_kitchen/SENSOR: `current`: the payload has no `ENERGY.Current`  (line 2)",
            "2000  22:10:02      plug    normal -> suspicious  when online and power > 3680 (from topic tele/plug_kitchen/SENSOR)",
            "2000  22:10:02      plug    command turn_off  (rule cut)",
            "end at 2000 ms: plug suspicious",
            "messages: 3 received, 2 applied, 1 refused (S121 1), 0 retained ignored, 0 unbound ignored (S204)",
        ],
        "{timeline}"
    );
    let out = shim(
        dir.path(),
        &["simulate", "--format", "json", "bundle", "trace.jsonl"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 4, "{json:#?}");
    assert_eq!(
        json[0],
        serde_json::json!({
            "t_ms": 1500,
            "clock": "22:10:01.500",
            "device": "plug",
            "kind": "refused",
            "code": "S121",
            "topic": "tele/plug_kitchen/SENSOR",
            "reason": "`current`: the payload has no `ENERGY.Current`",
            "line": 2,
        })
    );
    assert_eq!(json[1]["kind"], "state");
    assert_eq!(json[1]["t_ms"], 2000);
    assert_eq!(
        json[3]["messages"],
        serde_json::json!({"received": 3, "applied": 2, "refused": {"S121": 1}, "retained_ignored": 0, "unbound": 0})
    );
}

/// mosquitto_sub 2.0.11 writes a payload that is not UTF-8 as its raw bytes: the file is
/// not UTF-8, and is read all the same; the message is refused as `run` refuses it (S120).
/// A line that is not UTF-8 otherwise is malformed, with its line number.
#[test]
fn a_capture_with_payloads_that_are_not_utf8() {
    let mut capture = CAPTURE.as_bytes().to_vec();
    capture.extend_from_slice(br#"{"tst":"2026-12-03T22:10:31.000000Z+0100","topic":"tele/plug_kitchen/LWT","qos":0,"retain":0,"payloadlen":3,"payload":""#);
    capture.extend_from_slice(b"On\xff\"}\n");
    let dir = kitchen("mqtt-not-utf8", "");
    std::fs::write(dir.path().join("trace.jsonl"), &capture).unwrap();
    let out = shim(dir.path(), &["simulate", "bundle", "trace.jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let timeline = text(&out.stdout);
    assert!(
        timeline.contains("32900  22:10:31      plug    refused S120 message on tele/plug_kitchen/LWT: the payload is not UTF-8 text  (line 5)"),
        "{timeline}"
    );
    assert!(
        timeline.contains("\nend at 32900 ms: plug suspicious\n"),
        "{timeline}"
    );

    // A hand-written line with such a byte is no capture: malformed, located.
    capture.extend_from_slice(
        b"{\"t_ms\": 40000, \"device\": \"plug\", \"operator\": \"r\xe9set\"}\n",
    );
    std::fs::write(dir.path().join("trace.jsonl"), &capture).unwrap();
    let out = shim(
        dir.path(),
        &["simulate", "bundle", "trace.jsonl", "--color", "never"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.starts_with("S201\n"), "{err}");
    assert!(
        err.contains("line 6: not UTF-8 text: byte 0xe9 at column 49"),
        "{err}"
    );
    assert!(err.contains("\"operator\": \"r?set\"}"), "{err}");
    assert!(
        err.contains("(1 problem on 1 line); nothing was replayed"),
        "{err}"
    );
}

/// What is malformed in the file, or written by hand wrong, still refuses the whole trace.
#[test]
fn malformed_lines_and_events_by_hand_refuse_the_trace() {
    let trace_text = concat!(
        // 1: a message the binding refuses: not an error.
        "{\"t_ms\": 0, \"topic\": \"stat/plug_kitchen/POWER\", \"payload\": \"TOGGLE\"}\n",
        // 2: a payload cut short in the capture (a NUL byte under mosquitto_sub 2.0.11).
        "{\"tst\":\"2026-12-03T22:10:00.000000Z+0100\",\"topic\":\"tele/plug_kitchen/LWT\",\"qos\":0,\"retain\":0,\"payloadlen\":7,\"payload\":\"Onl\"}\n",
        // 3: a reading by hand the engine refuses.
        "{\"t_ms\": 1, \"device\": \"plug\", \"reading\": {\"power\": 500000}}\n",
        // 4: a message line without its payload.
        "{\"t_ms\": 2, \"topic\": \"tele/plug_kitchen/LWT\"}\n",
        // 5: time going back (line 3 is at 1).
        "{\"t_ms\": 0, \"topic\": \"tele/plug_kitchen/LWT\", \"payload\": \"Online\"}\n",
    );
    let dir = kitchen("mqtt-bad", trace_text);
    let out = shim(dir.path(), &["simulate", "bundle", "trace.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    let bundle = load(&MemReader::new(&compile(POLICY))).unwrap();
    let errs = trace::check_bundle(trace_text, &bundle).unwrap_err();
    let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.code())).collect();
    assert_eq!(
        got,
        [
            (2, codes::TRACE_PAYLOAD_LOST),
            (3, "S104"),
            (4, codes::TRACE_SHAPE),
            (5, codes::TRACE_ORDER),
        ],
        "{errs:#?}"
    );
    for e in &errs {
        assert!(err.contains(&format!("line {}: ", e.line)), "{err}");
    }
    assert!(!err.contains("line 1:"), "{err}");
    assert!(
        err.contains("refused (4 problems on 4 lines); nothing was replayed"),
        "{err}"
    );
}
