//! Loading bundles that the real compiler builds: the example loads; tampered, missing,
//! escaping and unknown-format bundles are refused with their codes, every problem
//! reported; inconsistent manifests are refused before anything runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{compile, compile_dir, load, write_bundle, MemReader, TempDir};
use kalki_shim::bundle::{self, json_depth, BundleError, MAX_JSON_DEPTH};
use kalki_shim::codes;
use kalki_shim::engine::{Config, Engine, Input};
use serde_json::json;
use std::sync::OnceLock;

fn office() -> &'static MemReader {
    static B: OnceLock<MemReader> = OnceLock::new();
    B.get_or_init(|| MemReader::new(&compile_dir("examples/smart-office")))
}

fn refused(r: &MemReader) -> Vec<BundleError> {
    match load(r) {
        Ok(_) => panic!("the bundle was accepted"),
        Err(e) => e,
    }
}

fn codes_of(errors: &[BundleError]) -> Vec<&'static str> {
    errors.iter().map(BundleError::code).collect()
}

#[test]
fn the_example_loads_from_a_directory() {
    let dir = TempDir::new("office");
    write_bundle(&compile_dir("examples/smart-office"), &dir);
    let b = bundle::load_dir(dir.path()).unwrap();
    let m = &b.manifest;
    assert_eq!(m.format, 2);
    assert_eq!(m.site, "office");
    let names: Vec<&str> = m.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["hall_cam", "lobby_light", "thermo", "annex_thermo"]);
    assert_eq!(b.device_type(2).unwrap().name, "Thermostat");
    assert_eq!(m.rules.len(), 5);
    // Every container manifest of every state was read; states share instances.
    let listed: std::collections::BTreeSet<&String> = m
        .devices
        .iter()
        .flat_map(|d| &d.states)
        .filter_map(|s| s.switch.as_ref())
        .flat_map(|s| &s.containers)
        .collect();
    assert_eq!(b.containers.len(), listed.len());
    assert!(!listed.is_empty());
    assert_eq!(b.manifest_sha256.len(), 64);
}

#[test]
fn a_tampered_file_is_refused() {
    let mut r = office().clone();
    r.files
        .get_mut("flows/hall_cam/attack.ofctl")
        .unwrap()
        .extend_from_slice(b"table=1,priority=2000,actions=NORMAL\n");
    let errors = refused(&r);
    assert_eq!(codes_of(&errors), [codes::DIGEST_MISMATCH]);
    assert!(
        matches!(&errors[0], BundleError::DigestMismatch { path, .. } if path == "flows/hall_cam/attack.ofctl")
    );
}

#[test]
fn a_missing_file_is_refused() {
    let mut r = office().clone();
    r.files.remove("containers/thermo/0-sniffer.json").unwrap();
    let errors = refused(&r);
    assert_eq!(codes_of(&errors), [codes::MISSING_FILE]);
    assert!(errors[0]
        .to_string()
        .contains("containers/thermo/0-sniffer.json"));
}

#[test]
fn every_problem_is_reported() {
    let mut r = office().clone();
    r.files.remove("flows/base.ofctl").unwrap();
    r.files
        .get_mut("flows/thermo/normal.ofctl")
        .unwrap()
        .push(b'#');
    r.files
        .get_mut("containers/hall_cam/0-sniffer.json")
        .unwrap()
        .push(b' ');
    let mut got = codes_of(&refused(&r));
    got.sort_unstable();
    assert_eq!(
        got,
        [
            codes::MISSING_FILE,
            codes::DIGEST_MISMATCH,
            codes::DIGEST_MISMATCH
        ]
    );
}

#[test]
fn unknown_formats_are_refused() {
    for format in [json!(1), json!(3), json!(0), json!("2"), json!(null)] {
        let mut r = office().clone();
        let mut m = r.manifest();
        m["format"] = format.clone();
        r.set_manifest(&m);
        assert_eq!(codes_of(&refused(&r)), [codes::UNKNOWN_FORMAT], "{format}");
    }
    // A future format is refused as such even if the rest has another shape.
    let mut r = office().clone();
    r.set_manifest(&json!({ "format": 7, "everything": "else" }));
    assert_eq!(codes_of(&refused(&r)), [codes::UNKNOWN_FORMAT]);
}

#[test]
fn a_missing_or_malformed_manifest_is_refused() {
    let mut r = office().clone();
    r.files.remove("manifest.json");
    assert_eq!(codes_of(&refused(&r)), [codes::UNREADABLE]);

    let mut r = office().clone();
    r.files
        .insert("manifest.json".into(), b"{ \"format\": 1,".to_vec());
    assert_eq!(codes_of(&refused(&r)), [codes::MALFORMED]);

    let mut r = office().clone();
    let mut m = r.manifest();
    m["device_types"][0]["transitions"][0]["trigger"]["kind"] = json!("telepathy");
    r.set_manifest(&m);
    let errors = refused(&r);
    assert_eq!(codes_of(&errors), [codes::MALFORMED]);
    assert!(errors[0].to_string().contains("telepathy"), "{}", errors[0]);
}

#[test]
fn paths_that_leave_the_bundle_are_refused() {
    for path in [
        "../etc/passwd",
        "/etc/passwd",
        "flows//x",
        "flows/./x",
        "a\\b",
        "manifest.json",
        "",
    ] {
        let mut r = office().clone();
        let mut m = r.manifest();
        m["files"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "path": path, "sha256": "00" }));
        r.set_manifest(&m);
        assert_eq!(codes_of(&refused(&r)), [codes::BAD_PATH], "{path:?}");
    }
}

#[test]
fn inconsistent_manifests_are_refused() {
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, &str, Change)> = vec![
        (
            "a rule moves a device that does not exist",
            "device 99, which does not exist",
            Box::new(|m| {
                m["rules"][0]["actions"][0]["device"] = json!(99);
            }),
        ),
        (
            "a transition goes to a state that does not exist",
            "to state 7; there are 3",
            Box::new(|m| {
                m["device_types"][0]["transitions"][0]["to"] = json!(7);
            }),
        ),
        (
            "a guard reads a variable that does not exist",
            "has no variable 9",
            Box::new(|m| {
                m["device_types"][0]["transitions"][3]["trigger"]["guard"]["kind"]["lhs"]["kind"]
                    ["var"]["var"] = json!(9);
            }),
        ),
        (
            "a guard compares a boolean with an integer",
            "cannot be compared",
            Box::new(|m| {
                // `temperature > 35` becomes `heating > 35`.
                let lhs =
                    &mut m["device_types"][0]["transitions"][3]["trigger"]["guard"]["kind"]["lhs"];
                lhs["kind"]["var"]["var"] = json!(1);
                lhs["ty"] = json!({ "kind": "bool" });
            }),
        ),
        (
            "a device of an unknown type",
            "its type `Toaster` is not in `device_types`",
            Box::new(|m| {
                m["devices"][0]["type"] = json!("Toaster");
            }),
        ),
        (
            "a device's state refers to an unlisted file",
            "which `files` does not list",
            Box::new(|m| {
                m["devices"][0]["states"][0]["switch"]["flows"] = json!("flows/elsewhere.ofctl");
            }),
        ),
        (
            "a device on the switch with a state that has no posture on it",
            "has no posture on the switch, but the device is on it",
            Box::new(|m| {
                m["devices"][0]["states"][1]["switch"] = json!(null);
            }),
        ),
        (
            "a device off the switch whose states still have postures",
            "has a posture on the switch, but the device is off it",
            Box::new(|m| {
                m["devices"][0]["net"] = json!(null);
            }),
        ),
        (
            "a hold time of zero",
            "is zero",
            Box::new(|m| {
                m["device_types"][0]["transitions"][3]["trigger"]["hold_ms"] = json!(0);
            }),
        ),
        (
            "a command the type does not have",
            "command `self_destruct`",
            Box::new(|m| {
                m["rules"][1]["actions"][0]["command"] = json!("self_destruct");
            }),
        ),
        (
            "two devices of one name",
            "declared twice",
            Box::new(|m| {
                m["devices"][1]["name"] = json!("hall_cam");
            }),
        ),
        (
            "an integer that can overflow 64 bits",
            "beyond 64 bits",
            Box::new(|m| {
                m["device_types"][0]["vars"][0]["type"]["hi"] = json!(i64::MAX);
                let g = &mut m["device_types"][0]["transitions"][3]["trigger"]["guard"]["kind"];
                let var = g["lhs"].clone();
                g["lhs"] = json!({
                    "kind": { "op": "arith", "arith": "Add", "lhs": var, "rhs": var },
                    "ty": { "kind": "int", "lo": -80, "hi": 240 },
                });
            }),
        ),
    ];
    for (what, expected, change) in cases {
        let mut r = office().clone();
        let mut m = r.manifest();
        change(&mut m);
        r.set_manifest(&m);
        let errors = refused(&r);
        assert!(
            errors
                .iter()
                .any(|e| e.code() == codes::INCONSISTENT && e.to_string().contains(expected)),
            "{what}: {errors:#?}"
        );
    }
}

/// The compiler accepts conditions nested 128 levels deep; their manifest is deeper than
/// serde_json's default limit, and must load and evaluate all the same.
#[test]
fn a_deeply_nested_guard_loads_and_evaluates() {
    let mut guard = "x > 1".to_string();
    for _ in 0..120 {
        guard = format!("not ({guard})");
    }
    let src = format!(
        r#"
device type T {{
    sensed x: int in 0..100
    states normal < attack
    initial normal
    normal {{ chain [pass] }}
    attack {{ chain [drop] }}
    normal -> attack when {guard}
    attack -> normal on operator reset
}}
site s {{
    bridge "br0" uplink "eth0"
    device d: T at 10.0.0.1 port "p0"
}}
"#
    );
    let r = MemReader::new(&compile(&src));
    assert!(json_depth(&r.files["manifest.json"]) > 128);
    let b = load(&r).unwrap();
    let mut e = Engine::new(&b, Config::default(), 0);
    let reading = |x: i64| Input::Reading {
        device: "d".into(),
        values: [("x".to_string(), json!(x))].into_iter().collect(),
    };
    // An even number of `not`s: the guard is `x > 1`.
    assert!(e.handle(0, &reading(1)).unwrap().is_empty());
    assert_eq!(e.handle(1, &reading(2)).unwrap().len(), 1);
}

#[test]
fn json_nested_beyond_any_bundle_is_refused_without_parsing() {
    let mut r = office().clone();
    let deep = format!(
        "{{\"format\": 1, \"x\": {}{}}}",
        "[".repeat(MAX_JSON_DEPTH + 1),
        "]".repeat(MAX_JSON_DEPTH + 1)
    );
    r.files.insert("manifest.json".into(), deep.into_bytes());
    let errors = refused(&r);
    assert_eq!(codes_of(&errors), [codes::MALFORMED]);
    assert!(errors[0].to_string().contains("nested"), "{}", errors[0]);
    // Brackets inside strings do not count.
    assert_eq!(json_depth(br#"{"a": "[[[[{{{{\"[[["}"#), 1);
}
