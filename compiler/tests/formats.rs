//! The machine-readable outputs of the real `kalkic` binary, validated against schemas:
//! `verify --format sarif` against the SARIF 2.1.0 schema (vendored from the npm package
//! `@microsoft/sarif-multitool-linux` 5.7.0, file `sarif-2.1.0.json`), and
//! `verify --format json` against `tests/schemas/diagnostics.schema.json`, which documents
//! that format. Both schemas are local files: nothing is fetched.
//!
//! Beyond the schemas, the two formats must agree with each other (same findings, in the
//! same order, at the same places) and with the exit code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::repo_root;
use jsonschema::Validator;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

fn load_schema(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/schemas")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn validator(schema: &Value) -> Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("the schema does not compile: {e}"))
}

fn sarif_validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema = load_schema("sarif-2.1.0.json");
        assert_eq!(
            schema["title"], "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema",
            "the vendored schema must be SARIF 2.1.0"
        );
        assert_eq!(schema["properties"]["version"]["enum"], json!(["2.1.0"]));
        validator(&schema)
    })
}

fn json_validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| validator(&load_schema("diagnostics.schema.json")))
}

/// Every schema violation, one per line; empty when the instance is valid.
fn violations(v: &Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("at `{}`: {e}", e.instance_path()))
        .collect()
}

struct Run {
    code: i32,
    out: Value,
}

/// Runs `kalkic verify --format FORMAT ARGS...` from the repository root.
fn kalkic(format: &str, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_kalkic"))
        .current_dir(repo_root())
        .args(["verify", "--format", format])
        .args(args)
        .output()
        .expect("kalkic runs");
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    let out = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "`kalkic verify --format {format} {}` printed no JSON ({e}):\n{stdout}\nstderr:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    Run {
        code: output.status.code().expect("kalkic exited"),
        out,
    }
}

/// Fixtures under `tests/fixtures/` (K209 is reported by `check`, so its fixtures are check
/// fixtures), run through both formats, with extra arguments and the exit code expected.
const CASES: &[(&str, &[&str], i32)] = &[
    ("verify/k201_overlapping_guards", &[], 1),
    ("verify/k201_overlapping_guards_near_miss", &[], 0),
    ("verify/k204_trap", &[], 0),
    ("verify/k205_alert_not_in_chain", &[], 1),
    ("verify/k206_rule_vs_std_transition", &[], 1),
    ("verify/k207_untrusted_deescalation", &[], 1),
    ("check/errors/k209_uplink_port", &[], 1),
    ("check/errors/k209_three_share_ip", &[], 1),
    ("verify/k210_refuted_never", &[], 1),
    ("verify/k210_refuted_reachable_near_miss", &[], 0),
    ("verify/k211_alert_count", &[], 0),
    ("verify/k213_search_limit", &["--max-states", "2"], 1),
];

fn fixture(stem: &str) -> String {
    format!("tests/fixtures/{stem}.kalki")
}

fn run_case(format: &str, stem: &str, extra: &[&str]) -> Run {
    let path = fixture(stem);
    let mut args: Vec<&str> = extra.to_vec();
    args.push(&path);
    kalkic(format, &args)
}

#[test]
fn sarif_output_is_valid_sarif_2_1_0() {
    let mut failures = Vec::new();
    for (stem, extra, exit) in CASES {
        let run = run_case("sarif", stem, extra);
        if run.code != *exit {
            failures.push(format!("{stem}: exit {} (expected {exit})", run.code));
        }
        for v in violations(sarif_validator(), &run.out) {
            failures.push(format!("{stem}: {v}"));
        }
        // What code-scanning tools rely on beyond the schema.
        let sarif = &run.out;
        assert_eq!(sarif["version"], "2.1.0", "{stem}");
        let runs = sarif["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{stem}: one run");
        let driver = &runs[0]["tool"]["driver"];
        assert_eq!(driver["name"], "kalkic", "{stem}");
        let rule_ids: Vec<&str> = driver["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        for r in runs[0]["results"].as_array().unwrap() {
            let id = r["ruleId"].as_str().unwrap();
            if !rule_ids.contains(&id) {
                failures.push(format!(
                    "{stem}: result {id} has no rule in tool.driver.rules"
                ));
            }
            if r["locations"].as_array().is_none_or(Vec::is_empty) {
                failures.push(format!("{stem}: result {id} has no location"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn json_output_matches_its_schema() {
    let mut failures = Vec::new();
    for (stem, extra, exit) in CASES {
        let run = run_case("json", stem, extra);
        if run.code != *exit {
            failures.push(format!("{stem}: exit {} (expected {exit})", run.code));
        }
        for v in violations(json_validator(), &run.out) {
            failures.push(format!("{stem}: {v}"));
        }
        // The exit code follows the severities.
        let errors = run.out["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["severity"] == "error");
        if errors != (run.code == 1) {
            failures.push(format!("{stem}: exit {} with errors = {errors}", run.code));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An unreadable input: a usage error (exit 2) whose diagnostic has a file but no label.
#[test]
fn json_output_of_an_unreadable_input_matches_its_schema() {
    let run = kalkic("json", &[&fixture("no_such_fixture")]);
    assert_eq!(run.code, 2);
    let errors = violations(json_validator(), &run.out);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let d = &run.out["diagnostics"][0];
    assert_eq!(d["file"], fixture("no_such_fixture"));
    assert_eq!(d["labels"], json!([]));
    let run = kalkic("sarif", &[&fixture("no_such_fixture")]);
    assert_eq!(run.code, 2);
    let errors = violations(sarif_validator(), &run.out);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// JSON and SARIF report the same findings, in the same order, at the same places.
#[test]
fn json_and_sarif_agree() {
    for (stem, extra, _) in CASES {
        let j = run_case("json", stem, extra).out;
        let s = run_case("sarif", stem, extra).out;
        let diags = j["diagnostics"].as_array().unwrap();
        let results = s["runs"][0]["results"].as_array().unwrap();
        assert_eq!(diags.len(), results.len(), "{stem}: finding count");
        for (d, r) in diags.iter().zip(results) {
            assert_eq!(d["code"], r["ruleId"], "{stem}");
            assert_eq!(d["severity"], r["level"], "{stem}");
            let region = &r["locations"][0]["physicalLocation"];
            assert_eq!(d["file"], region["artifactLocation"]["uri"], "{stem}");
            assert_eq!(d["line"], region["region"]["startLine"], "{stem}");
            assert_eq!(d["column"], region["region"]["startColumn"], "{stem}");
            assert_eq!(d["end_line"], region["region"]["endLine"], "{stem}");
            assert_eq!(d["end_column"], region["region"]["endColumn"], "{stem}");
            assert_eq!(
                d["labels"].as_array().unwrap().len(),
                r["relatedLocations"].as_array().unwrap().len(),
                "{stem}: every label is a related location"
            );
            assert_eq!(d["witness"], r["properties"]["witness"], "{stem}");
        }
    }
}

/// The assertion verdicts in JSON carry their traces.
#[test]
fn json_assertions_carry_traces() {
    let j = run_case("json", "verify/k210_refuted_never", &[]).out;
    let a = &j["assertions"][0];
    assert_eq!(a["kind"], "never");
    assert_eq!(a["status"], "refuted");
    let trace = a["trace"].as_array().unwrap();
    assert_eq!(trace[0]["event"], "initial states");
    assert_eq!(
        trace.last().unwrap()["states"],
        json!({ "gate_cam": "attack", "yard_cam": "attack" })
    );
    let w = &j["diagnostics"][0]["witness"];
    assert_eq!(
        &w["trace"], &a["trace"],
        "the K210 witness is the same trace"
    );

    let j = run_case("json", "verify/k213_search_limit", &["--max-states", "2"]).out;
    let a = &j["assertions"][0];
    assert_eq!(a["status"], "unknown");
    assert!(a["reason"].as_str().unwrap().contains("limit"));
}

/// The schemas are not vacuous: broken documents are rejected.
#[test]
fn schemas_reject_broken_output() {
    let good = run_case("sarif", "check/errors/k209_uplink_port", &[]).out;
    assert!(violations(sarif_validator(), &good).is_empty());
    let mut broken: Vec<(&str, Value)> = Vec::new();
    let mut v = good.clone();
    v["version"] = json!("2.0.0");
    broken.push(("wrong version", v));
    let mut v = good.clone();
    v["runs"][0]["results"][0]["level"] = json!("fatal");
    broken.push(("unknown level", v));
    let mut v = good.clone();
    v["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] =
        json!(0);
    broken.push(("line 0", v));
    let mut v = good.clone();
    v["runs"][0]["tool"]["driver"]
        .as_object_mut()
        .unwrap()
        .remove("name");
    broken.push(("tool without a name", v));
    for (what, v) in &broken {
        assert!(
            !violations(sarif_validator(), v).is_empty(),
            "SARIF schema accepted {what}"
        );
    }

    let good = run_case("json", "verify/k210_refuted_never", &[]).out;
    assert!(violations(json_validator(), &good).is_empty());
    let mut broken: Vec<(&str, Value)> = Vec::new();
    let mut v = good.clone();
    v["diagnostics"][0]["severity"] = json!("fatal");
    broken.push(("unknown severity", v));
    let mut v = good.clone();
    v["diagnostics"][0]["witness"] = Value::Null;
    broken.push(("verifier finding without a witness", v));
    let mut v = good.clone();
    v["diagnostics"][0]["message"] = json!("Assertion refuted.");
    broken.push(("capitalised message with a period", v));
    let mut v = good.clone();
    v["diagnostics"][0]["labels"][0]["line"] = json!(0);
    broken.push(("label on line 0", v));
    let mut v = good.clone();
    v["assertions"][0]["status"] = json!("unknown");
    broken.push(("unknown verdict without a reason", v));
    let mut v = good;
    v["diagnostics"][0]["witness"]["trace"][0]
        .as_object_mut()
        .unwrap()
        .remove("states");
    broken.push(("trace step without states", v));
    for (what, v) in &broken {
        assert!(
            !violations(json_validator(), v).is_empty(),
            "JSON schema accepted {what}"
        );
    }
}
