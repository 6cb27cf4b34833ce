//! `GET /metrics` of a real `kalki-shim run` on a real Open vSwitch and Docker engine:
//! events driven through the API (real client and real `curl`) and from a µmbox's own
//! output, then the metrics fetched with `curl` and parsed by a real Prometheus
//! text-format parser (the Python `prometheus_client` package, the Prometheus project's
//! own), and every value checked against what happened. No token: 401. And the log of a
//! shim run with `--log-format json`: one JSON object a line, with the documented fields.
//! The MQTT metrics with a real broker (mosquitto): messages received, readings accepted
//! and refused by code, a command published.
//!
//! The policy is `tests/fixtures/node/site.kalki` (stand-in µmboxes: see `common/live.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::live::*;
use common::TempDir;
use serde_json::Value;
use std::time::Duration;

/// The Python parser answers (installed from PyPI if missing); without it the test is
/// skipped, or fails under CI.
fn parser_ready() -> bool {
    let importable = || {
        sh("python3 -c 'import prometheus_client.parser'")
            .status
            .success()
    };
    if !importable() {
        sh("python3 -m pip install -q prometheus-client 2>&1");
    }
    kalki_test_support::require(&[(
        importable(),
        "python3 with prometheus_client (pip install prometheus-client)",
    )])
}

/// The parser: the exposition on standard input, every sample as
/// `[name, {labels}, value]` in JSON on standard output.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// The samples of the shim's `/metrics`, fetched with curl and parsed.
struct Samples(Vec<(String, serde_json::Map<String, Value>, f64)>);

impl Samples {
    fn fetch(env: &Api, dir: &std::path::Path) -> Samples {
        let file = dir.join("metrics.txt");
        let headers = dir.join("metrics.headers");
        let code = ok(&format!(
            "curl -sS -o {} -D {} -w '%{{http_code}}' -H \"Authorization: Bearer $(cat {})\" http://{}/metrics",
            file.display(),
            headers.display(),
            env.token.display(),
            env.api
        ));
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(code, "200", "{text}");
        let headers = std::fs::read_to_string(&headers).unwrap().to_lowercase();
        assert!(
            headers.contains("content-type: text/plain; version=0.0.4"),
            "{headers}"
        );
        let script = dir.join("parse.py");
        std::fs::write(&script, PARSE).unwrap();
        let json = ok(&format!(
            "python3 {} < {}",
            script.display(),
            file.display()
        ));
        let v: Vec<(String, serde_json::Map<String, Value>, f64)> =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        Samples(v)
    }

    /// The value of the one sample of this name with these labels (others ignored);
    /// `None` when there is none.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
        found.first().copied()
    }

    /// [`Samples::get`], 0 when absent (a counter never counted has no series).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum of every sample of this name with these labels.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .sum()
    }
}

fn curl_code(args: &str) -> String {
    ok(&format!("curl -sS -o /dev/null -w '%{{http_code}}' {args}"))
}

#[test]
fn metrics_count_what_happened() {
    let Some(_cleanup) = prepare() else {
        return;
    };
    if !parser_ready() {
        return;
    }
    let tmp = TempDir::new("metrics");
    let bundle = tmp.path().join("bundle");
    common::compile_dir("runtime-shim/tests/fixtures/node")
        .write_to(&bundle)
        .unwrap();
    let journal = tmp.path().join("journal.db");
    let env = Api::new(tmp.path());
    let _shim = env.start(
        &bundle,
        &journal,
        &[
            "--ready-timeout",
            "20",
            "--log-format",
            "json",
            "--reconcile-interval",
            "100ms",
        ],
    );
    assert_eq!(env.state("d0"), "normal");

    // No token, a wrong one: 401, and nothing of the metrics.
    assert_eq!(curl_code(&format!("http://{}/metrics", env.api)), "401");
    assert_eq!(
        curl_code(&format!(
            "-H 'Authorization: Bearer not-the-token-but-long-enough' http://{}/metrics",
            env.api
        )),
        "401"
    );

    // Three readings accepted; three refused (out of range, unknown variable, unknown
    // device), one body that is not JSON.
    for _ in 0..3 {
        env.must(&["event", "d0", "level=10"]);
    }
    for bad in [
        ["event", "d0", "level=500"],
        ["event", "d0", "nosuch=1"],
        ["event", "nosuch", "level=1"],
    ] {
        assert_eq!(env.client(&bad).status.code(), Some(1), "{bad:?}");
    }
    assert_eq!(
        curl_code(&format!(
            "-H \"Authorization: Bearer $(cat {})\" -H 'Content-Type: application/json' -d 'not json' http://{}/v1/devices/d0/readings",
            env.token.display(),
            env.api
        )),
        "400"
    );

    // An alert through the API: d0 normal -> suspicious.
    env.must(&["alert", "d0", "port_scan"]);
    assert_eq!(env.state("d0"), "suspicious");
    // The µmbox's own alert: d0 suspicious -> broken, whose image is missing: it fails
    // closed.
    ok(
        r#"docker exec kalki-shimnode-d0-1-probe_tap /bin/busybox sh -c 'echo "{\"kalki\":\"alert\",\"alert\":\"fault\"}" > /proc/1/fd/1'"#,
    );
    wait_for(Duration::from_secs(30), "d0 to fail closed", || {
        env.device("d0")["enforcement"]["verdict"] == "failed_closed"
    });
    // A µmbox of d1 killed: d1 fails closed, the µmbox is started again.
    ok("docker kill kalki-shimnode-d1-0-probe");
    wait_for(
        Duration::from_secs(30),
        "d1's µmbox to be started again",
        || {
            running().contains(&"kalki-shimnode-d1-0-probe".to_string())
                && env.device("d1")["enforcement"]["verdict"] == "enforced"
        },
    );
    // The status just asked set the verdict gauges from its look at the node.
    env.status();

    let m = Samples::fetch(&env, tmp.path());
    let api = |kind: &str, outcome: &str| {
        m.count(
            "kalki_events_total",
            &[("source", "api"), ("kind", kind), ("outcome", outcome)],
        )
    };
    assert_eq!(api("reading", "accepted"), 3.0);
    assert_eq!(api("reading", "refused"), 4.0);
    assert_eq!(api("alert", "accepted"), 1.0);
    assert_eq!(api("alert", "refused"), 0.0);
    assert_eq!(
        m.count(
            "kalki_events_total",
            &[
                ("source", "umbox"),
                ("kind", "alert"),
                ("outcome", "accepted")
            ]
        ),
        1.0
    );
    let refused = |code: &str| {
        m.count(
            "kalki_refused_inputs_total",
            &[("source", "api"), ("code", code)],
        )
    };
    assert_eq!(refused("S104"), 1.0, "out of range");
    assert_eq!(refused("S102"), 1.0, "unknown variable");
    assert_eq!(refused("S101"), 1.0, "unknown device");
    assert_eq!(refused("S302"), 1.0, "not JSON");
    assert_eq!(refused("S301"), 2.0, "no token, wrong token");
    assert_eq!(m.sum("kalki_refused_inputs_total", &[]), 6.0);

    let change = |from: &str, to: &str| {
        m.count(
            "kalki_posture_changes_total",
            &[("device_type", "Box"), ("from", from), ("to", to)],
        )
    };
    assert_eq!(change("normal", "suspicious"), 1.0);
    assert_eq!(change("suspicious", "broken"), 1.0);
    assert_eq!(m.sum("kalki_posture_changes_total", &[]), 2.0);
    // Both changes' flows were installed (or failed closed): two latencies, each
    // positive and within the histogram.
    assert_eq!(m.get("kalki_posture_change_seconds_count", &[]), Some(2.0));
    let sum = m.get("kalki_posture_change_seconds_sum", &[]).unwrap();
    assert!(sum > 0.0 && sum < 60.0, "{sum}");
    assert_eq!(
        m.get("kalki_posture_change_seconds_bucket", &[("le", "+Inf")]),
        Some(2.0)
    );

    assert_eq!(
        m.count(
            "kalki_umbox_alerts_total",
            &[("umbox", "probe_tap"), ("alert", "fault")]
        ),
        1.0
    );
    assert_eq!(
        m.count("kalki_umbox_restarts_total", &[("umbox", "probe")]),
        1.0,
        "{}",
        env.log_text()
    );
    assert_eq!(m.sum("kalki_umbox_restarts_total", &[]), 1.0);
    let devices = |verdict: &str| m.get("kalki_devices", &[("verdict", verdict)]);
    assert_eq!(devices("failed_closed"), Some(1.0), "d0");
    assert_eq!(devices("enforced"), Some(1.0), "d1");
    assert_eq!(devices("not_enforced"), Some(0.0));
    assert_eq!(devices("off_switch"), Some(0.0));
    let bytes = m.get("kalki_journal_bytes", &[]).unwrap();
    assert!(bytes >= 4096.0, "{bytes}");
    // No broker: the MQTT metrics are there, at zero.
    assert_eq!(m.get("kalki_mqtt_messages_received_total", &[]), Some(0.0));
    assert_eq!(m.get("kalki_mqtt_commands_published_total", &[]), Some(0.0));

    // The log, in JSON: every line an object with a time, a level, a message, the kind
    // of event, and the documented fields of that kind.
    let log = env.log_text();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: `{l}`\n{log}")))
        .collect();
    for l in &lines {
        assert!(l["timestamp"].is_string(), "{l}");
        assert!(l["level"].is_string(), "{l}");
        assert!(l["message"].is_string(), "{l}");
        assert!(l["event"].is_string(), "{l}");
    }
    let find = |event: &str, device: &str| {
        lines
            .iter()
            .find(|l| l["event"] == event && (device.is_empty() || l["device"] == device))
            .unwrap_or_else(|| panic!("no `{event}` line of `{device}`:\n{log}"))
            .clone()
    };
    let changes: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "state_change")
        .collect();
    assert_eq!(changes.len(), 2, "{log}");
    let change = changes[0];
    assert_eq!(change["level"], "INFO", "{change}");
    assert_eq!(change["device"], "d0", "{change}");
    assert_eq!(change["from"], "normal", "{change}");
    assert_eq!(change["to"], "suspicious", "{change}");
    assert!(
        change["cause"]
            .as_str()
            .unwrap()
            .starts_with("on port_scan"),
        "{change}"
    );
    assert_eq!(changes[1]["to"], "broken", "{log}");
    let closed = find("failed_closed", "d0");
    assert_eq!(closed["level"], "WARN", "{closed}");
    assert_eq!(closed["installed"], "attack", "{closed}");
    assert!(
        closed["reason"].as_str().unwrap().contains("no-such-image"),
        "{closed}"
    );
    let stopped = find("umbox_stopped", "d1");
    assert_eq!(
        stopped["container"], "kalki-shimnode-d1-0-probe",
        "{stopped}"
    );
    let verdict = find("verdict", "d0");
    assert_eq!(verdict["verdict"], "failed_closed", "{verdict}");
    assert_eq!(find("serving", "")["site"], "shimnode");
    let replayed = find("journal_replayed", "");
    assert_eq!(replayed["replayed"], 0, "{replayed}");
}

/// The MQTT metrics, with a real broker (a private mosquitto, from
/// `kalki-test-support`) and `tests/fixtures/mqtt/site.kalki` on a bridge of its own whose
/// interfaces do not exist (its devices are not enforced; their states are what counts):
/// every message received counted, readings accepted and refused by code, a retained
/// message received but no input, a rule's command published.
#[test]
fn mqtt_messages_refusals_and_commands_are_counted() {
    use kalki_test_support::mosquitto::{Broker, BrokerOptions};
    const SENSOR: &str = "tele/plug_kitchen/SENSOR";
    const LWT: &str = "tele/plug_kitchen/LWT";
    const HEATER: &str = "tele/heater_1/SENSOR";
    if !kalki_test_support::require(&[kalki_test_support::mosquitto()]) || !parser_ready() {
        return;
    }
    let tmp = TempDir::new("metrics-mqtt");
    let bridge = "ktq-metrics";
    let del_bridge = move || {
        sh(&format!(
            "ovs-vsctl --timeout=10 --if-exists del-br {bridge}"
        ));
    };
    del_bridge();
    let _bridge = OnDrop(del_bridge);
    let src = std::fs::read_to_string(
        common::repo_root().join("runtime-shim/tests/fixtures/mqtt/site.kalki"),
    )
    .unwrap()
    .replace("bridge \"kt-mqtt\"", &format!("bridge \"{bridge}\""))
    .replace("\"ktm-", "\"ktx-");
    let bundle = tmp.path().join("bundle");
    common::compile(&src).write_to(&bundle).unwrap();
    let journal = tmp.path().join("journal.db");

    let broker = Broker::start(BrokerOptions::default()).unwrap();
    // Retained before the shim subscribes: received, ignored, no input.
    broker
        .publish(
            HEATER,
            r#"{"ENERGY":{"Power":3000,"Current":1.0}}"#,
            1,
            true,
        )
        .unwrap();
    let env = Api::new(tmp.path());
    let mut extra = vec![
        "--mqtt".to_string(),
        broker.url(),
        "--mqtt-username".into(),
        broker.username().into(),
        "--mqtt-password-file".into(),
        broker.password_file().to_str().unwrap().into(),
    ];
    if let Some(ca) = broker.ca_file() {
        extra.extend(["--mqtt-ca-file".into(), ca.to_str().unwrap().into()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let _shim = env.start(&bundle, &journal, &extra);
    wait_for(Duration::from_secs(30), "the retained message", || {
        env.status().1["mqtt"]["retained_ignored"] == 1
    });

    // Two readings accepted; three refused: not a JSON object (S120), no power (S121),
    // power out of range (S104, the engine's); then over the threshold: the plug moves
    // and its rule's command is published.
    broker.publish(LWT, "Online", 1, false).unwrap();
    broker
        .publish(
            SENSOR,
            r#"{"ENERGY":{"Power":12,"Current":0.052}}"#,
            1,
            false,
        )
        .unwrap();
    for bad in [
        "[1,2]",
        r#"{"ENERGY":{"Current":0.1}}"#,
        r#"{"ENERGY":{"Power":5000,"Current":0.1}}"#,
    ] {
        broker.publish(SENSOR, bad, 1, false).unwrap();
    }
    broker
        .publish(
            SENSOR,
            r#"{"ENERGY":{"Power":3000,"Current":2.5}}"#,
            1,
            false,
        )
        .unwrap();
    env.wait_state("plug", "suspicious", Duration::from_secs(30));
    wait_for(Duration::from_secs(30), "the command published", || {
        env.status().1["mqtt"]["commands_published"] == 1
    });

    let m = Samples::fetch(&env, tmp.path());
    assert_eq!(m.get("kalki_mqtt_messages_received_total", &[]), Some(7.0));
    let mqtt = |outcome: &str| {
        m.count(
            "kalki_events_total",
            &[
                ("source", "mqtt"),
                ("kind", "reading"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(mqtt("accepted"), 3.0);
    assert_eq!(mqtt("refused"), 3.0);
    for code in ["S120", "S121", "S104"] {
        assert_eq!(
            m.count(
                "kalki_refused_inputs_total",
                &[("source", "mqtt"), ("code", code)]
            ),
            1.0,
            "{code}"
        );
    }
    assert_eq!(m.sum("kalki_refused_inputs_total", &[]), 3.0);
    assert_eq!(
        m.count(
            "kalki_posture_changes_total",
            &[
                ("device_type", "TasmotaPlug"),
                ("from", "normal"),
                ("to", "suspicious")
            ]
        ),
        1.0
    );
    assert_eq!(m.get("kalki_mqtt_commands_published_total", &[]), Some(1.0));
    // No API input was counted as MQTT's, nor the other way round.
    assert_eq!(m.sum("kalki_events_total", &[("source", "api")]), 0.0);
}
