//! `kalki-shim simulate` replaying MQTT messages through the bundle's telemetry bindings:
//! a policy using `std::mqtt::TasmotaPlug`, built by the real compiler; a capture as
//! `mosquitto_sub -F %j` writes it (its retained message ignored, its clock taken from
//! it), lines written by hand (`payload`, `payload_base64`), and refusals: an unbound
//! topic (with "did you mean"), payloads the binding cannot read (S12x), a decoded value
//! the engine refuses (S104), a capture that lost bytes (S205); nothing on stdout then.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{compile, load, write_bundle, MemReader, TempDir};
use kalki_shim::codes;
use kalki_shim::engine::{Config, Engine, Input};
use kalki_shim::trace;
use std::path::Path;
use std::process::{Command, Output};

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

fn shim(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kalki-shim"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("kalki-shim runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

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
            "32050  22:10:30.150  plug    normal -> suspicious  when power > 3680 (from topic tele/plug_kitchen/SENSOR)",
            "32050  22:10:30.150  plug    command turn_off  (rule cut)",
            "end at 32050 ms: plug suspicious",
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
    assert_eq!(first["trigger"], "when power > 3680");
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
                reading(serde_json::json!({"relay": false})),
                Some("stat/plug_kitchen/POWER")
            ),
            (
                1000,
                // 0.0525 A is 52.5 mA, rounded to nearest; 229.6 V to 230.
                reading(serde_json::json!({"power": 12, "current": 53, "voltage": 230})),
                Some("tele/plug_kitchen/SENSOR")
            ),
        ]
    );
    // Without the bundle's bindings, no topic is bound.
    let engine = Engine::new(&bundle, Config::default(), 0);
    let errs = trace::check(trace_text, &engine).unwrap_err();
    let codes_seen: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.code())).collect();
    assert_eq!(
        codes_seen,
        [
            (2, codes::TRACE_UNBOUND_TOPIC),
            (3, codes::TRACE_UNBOUND_TOPIC)
        ]
    );
}

#[test]
fn bad_messages_are_located_and_nothing_is_replayed() {
    let trace_text = concat!(
        // 1: a misspelt topic.
        "{\"t_ms\": 0, \"topic\": \"tele/plug_kitchn/SENSOR\", \"payload\": \"{}\"}\n",
        // 2: a binding's paths missing (two problems, one line).
        "{\"t_ms\": 1, \"topic\": \"tele/plug_kitchen/SENSOR\", \"payload\": \"{\\\"ENERGY\\\":{\\\"Power\\\":5}}\"}\n",
        // 3: not JSON.
        "{\"t_ms\": 2, \"topic\": \"tele/plug_kitchen/SENSOR\", \"payload\": \"ENERGY\"}\n",
        // 4: none of the map's values.
        "{\"t_ms\": 3, \"topic\": \"stat/plug_kitchen/POWER\", \"payload\": \"TOGGLE\"}\n",
        // 5: decodes, but 5000 W is outside `power`'s range: the engine refuses it.
        "{\"t_ms\": 4, \"topic\": \"tele/plug_kitchen/SENSOR\", \"payload\": \"{\\\"ENERGY\\\":{\\\"Power\\\":5000,\\\"Current\\\":1,\\\"Voltage\\\":230}}\"}\n",
        // 6: fine.
        "{\"t_ms\": 5, \"topic\": \"tele/plug_kitchen/LWT\", \"payload\": \"Offline\"}\n",
        // 7: a payload cut short in the capture (a NUL byte under mosquitto_sub 2.0.11).
        "{\"tst\":\"2026-12-03T22:10:00.000000Z+0100\",\"topic\":\"tele/plug_kitchen/LWT\",\"qos\":0,\"retain\":0,\"payloadlen\":7,\"payload\":\"Onl\"}\n",
        // 8: not UTF-8 (sent as base64).
        "{\"t_ms\": 6, \"topic\": \"tele/plug_kitchen/LWT\", \"payload_base64\": \"/w==\"}\n",
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
            (1, "S204"),
            (2, "S121"),
            (2, "S121"),
            (3, "S120"),
            (4, "S122"),
            (5, "S104"),
            (7, "S205"),
            (8, "S120"),
        ],
        "{errs:#?}"
    );
    for (e, what) in errs.iter().zip([
        "no device of the bundle binds topic \"tele/plug_kitchn/SENSOR\"",
        "`current`: the payload has no `ENERGY.Current`",
        "`voltage`: the payload has no `ENERGY.Voltage`",
        "the payload is not a JSON object",
        "is none of the binding's values",
        "`plug.power` = 5000 is outside its range",
        "the message's payload was 7 bytes, the line holds 3",
        "the payload is not UTF-8 text",
    ]) {
        assert!(e.to_string().contains(what), "{e}: {what}");
        assert!(err.contains(&format!("line {}: ", e.line)), "{err}");
    }
    assert!(
        err.contains("did you mean \"tele/plug_kitchen/SENSOR\"?"),
        "{err}"
    );
    assert!(!err.contains("line 6:"), "{err}");
    assert!(
        err.contains("refused (8 problems on 7 lines); nothing was replayed"),
        "{err}"
    );
}
