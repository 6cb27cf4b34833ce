//! Tests of the real `kalkic` binary: exit codes, output formats, directory arguments.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{code, kalkic, TempDir};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

const CLEAN: &str = "tests/fixtures/check/clean/full_policy.kalki";
/// One error: K103 `suspicous` at line 9, column 15.
const ONE_ERROR: &str = "tests/fixtures/check/errors/k103_unknown_state.kalki";
/// Four K104 errors.
const FOUR_ERRORS: &str = "tests/fixtures/check/errors/k104_duplicate_states_and_vars.kalki";

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

#[test]
fn clean_file_exits_0() {
    let o = kalkic(&["check", CLEAN]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("0 errors, 0 warnings"), "{err}");
    assert!(!err.contains("kalkic explain"), "{err}");
}

#[test]
fn policy_error_exits_1() {
    let o = kalkic(&["check", "--color", "never", ONE_ERROR]);
    assert_eq!(code(&o), 1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("K103"), "{err}");
    assert!(err.contains("unknown state `suspicous`"), "{err}");
    assert!(err.contains("did you mean `suspicious`?"), "{err}");
    assert!(
        err.ends_with("for more about K103: kalkic explain K103\n"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "colour with --color never: {err}");
}

#[test]
fn color_always_colours() {
    let o = kalkic(&["check", "--color", "always", ONE_ERROR]);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains('\u{1b}'));
}

#[test]
fn missing_file_exits_2() {
    let o = kalkic(&["check", "tests/fixtures/check/no_such_file.kalki"]);
    assert_eq!(code(&o), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("K112"), "{err}");
    assert!(err.contains("no_such_file.kalki"), "{err}");
}

#[test]
fn missing_file_next_to_a_bad_one_still_exits_2() {
    let o = kalkic(&[
        "check",
        ONE_ERROR,
        "tests/fixtures/check/no_such_file.kalki",
    ]);
    assert_eq!(code(&o), 2);
}

#[test]
fn missing_file_in_json_names_the_file() {
    let o = kalkic(&[
        "check",
        "--format",
        "json",
        "tests/fixtures/check/no_such_file.kalki",
    ]);
    assert_eq!(code(&o), 2);
    let v = stdout_json(&o);
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "K112");
    assert_eq!(d["severity"], "error");
    assert_eq!(d["file"], "tests/fixtures/check/no_such_file.kalki");
}

#[test]
fn non_utf8_file_exits_2() {
    let dir = TempDir::new("non-utf8");
    let f = dir.write("latin1.kalki", b"// caf\xe9\nsite s { bridge \"br0\" }\n");
    let o = kalkic(&["check", f.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("K112") && err.contains("UTF-8"), "{err}");
}

#[test]
fn bad_flag_exits_2() {
    let o = kalkic(&["check", "--no-such-flag", CLEAN]);
    assert_eq!(code(&o), 2);
    let o = kalkic(&["check", "--format", "xml", CLEAN]);
    assert_eq!(code(&o), 2);
    let o = kalkic(&["check"]);
    assert_eq!(code(&o), 2, "no file given");
    let o = kalkic(&["frobnicate", CLEAN]);
    assert_eq!(code(&o), 2, "unknown subcommand");
}

#[test]
fn help_documents_exit_codes() {
    for args in [&["--help"][..], &["check", "--help"][..]] {
        let o = kalkic(args);
        assert_eq!(code(&o), 0);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("Exit codes"), "{out}");
        assert!(out.contains("2  usage error"), "{out}");
    }
}

#[test]
fn json_has_codes_and_positions() {
    let o = kalkic(&["check", "--format", "json", ONE_ERROR]);
    assert_eq!(code(&o), 1);
    let v = stdout_json(&o);
    let diags = v["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 1, "{v:#}");
    let d = &diags[0];
    assert_eq!(d["code"], "K103");
    assert_eq!(d["severity"], "error");
    assert_eq!(d["message"], "unknown state `suspicous`");
    assert_eq!(d["file"], ONE_ERROR);
    assert_eq!(d["line"], 9);
    assert_eq!(d["column"], 15);
    assert_eq!(d["end_line"], 9);
    assert_eq!(d["end_column"], 24);
    assert_eq!(d["help"], "did you mean `suspicious`?");
    let label = &d["labels"][0];
    assert_eq!(label["primary"], true);
    assert_eq!(label["line"], 9);
    assert_eq!(label["column"], 15);
    assert_eq!(label["length"], "suspicous".len());
}

#[test]
fn json_fields_on_every_diagnostic() {
    let o = kalkic(&["check", "--format", "json", FOUR_ERRORS]);
    assert_eq!(code(&o), 1);
    let v = stdout_json(&o);
    let diags = v["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 4);
    for d in diags {
        assert_eq!(d["code"], "K104");
        assert_eq!(d["severity"], "error");
        assert!(d["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(d["file"], FOUR_ERRORS);
        assert!(d["line"].as_u64().is_some_and(|l| l >= 1));
        assert!(d["column"].as_u64().is_some_and(|c| c >= 1));
    }
    // `sensed on: bool` twice: the second `on` is on line 4, column 12.
    assert_eq!(diags[0]["line"], 4);
    assert_eq!(diags[0]["column"], 12);
}

#[test]
fn json_of_a_clean_file_is_empty() {
    let o = kalkic(&["check", "--format", "json", CLEAN]);
    assert_eq!(code(&o), 0);
    let v = stdout_json(&o);
    assert_eq!(v["diagnostics"].as_array().map(Vec::len), Some(0));
}

#[test]
fn json_columns_count_characters() {
    let dir = TempDir::new("columns");
    // `µ` is two bytes: the column of `nope` counts it as one character.
    let f = dir.write(
        "µ.kalki",
        "// µµ\ndevice type µ_T {\n    states normal\n    initial normal\n    normal { chain [pass] }\n}\n",
    );
    let o = kalkic(&["check", "--format", "json", f.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    let v = stdout_json(&o);
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "K001", "{v:#}");
    assert_eq!(d["line"], 2);
    assert_eq!(d["column"], 13);
}

#[test]
fn sarif_has_one_result_per_diagnostic() {
    let json = stdout_json(&kalkic(&["check", "--format", "json", FOUR_ERRORS]));
    let o = kalkic(&["check", "--format", "sarif", FOUR_ERRORS]);
    assert_eq!(code(&o), 1);
    let v = stdout_json(&o);
    assert_eq!(v["version"], "2.1.0");
    let run = &v["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "kalkic");
    let results = run["results"].as_array().unwrap();
    let diags = json["diagnostics"].as_array().unwrap();
    assert_eq!(results.len(), diags.len());
    for (r, d) in results.iter().zip(diags) {
        assert_eq!(r["ruleId"], d["code"]);
        assert_eq!(r["level"], "error");
        let loc = &r["locations"][0]["physicalLocation"];
        assert_eq!(loc["artifactLocation"]["uri"], d["file"]);
        assert_eq!(loc["region"]["startLine"], d["line"]);
        assert_eq!(loc["region"]["startColumn"], d["column"]);
    }
    let rules: Vec<&str> = run["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["K104"]);
}

#[test]
fn sarif_of_a_clean_file_has_no_results() {
    let o = kalkic(&["check", "--format", "sarif", CLEAN]);
    assert_eq!(code(&o), 0);
    let v = stdout_json(&o);
    assert_eq!(v["version"], "2.1.0");
    assert_eq!(v["runs"][0]["results"].as_array().map(Vec::len), Some(0));
}

#[test]
fn directory_argument_checks_every_kalki_file() {
    let o = kalkic(&["check", "tests/fixtures/check/clean/local_imports"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));

    let dir = TempDir::new("dir");
    dir.write(
        "a.kalki",
        "device type A {\n    states normal\n    initial normal\n    normal { chain [pass] }\n}\n",
    );
    dir.write(
        "b.kalki",
        "device type B {\n    states normal\n    initial nromal\n    normal { chain [pass] }\n}\n",
    );
    dir.write("c.kalki", "umbox u {\n    emits x\n}\n");
    dir.write("notes.txt", "not a policy: ignored");
    let o = kalkic(&["check", "--format", "json", dir.path().to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    let v = stdout_json(&o);
    let mut found: Vec<(String, String)> = v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let file = d["file"].as_str().unwrap();
            let name = Path::new(file).file_name().unwrap().to_string_lossy();
            (name.to_string(), d["code"].as_str().unwrap().to_string())
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("b.kalki".to_string(), "K103".to_string()),
            ("c.kalki".to_string(), "K107".to_string())
        ]
    );
}

#[test]
fn directory_without_policies_exits_2() {
    let dir = TempDir::new("empty-dir");
    dir.write("README", "nothing here");
    let o = kalkic(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no .kalki files"));
}

/// `kalkic init` writes a policy that verifies and builds as it is, and never overwrites.
#[test]
fn init_writes_a_starter_that_verifies_and_builds() {
    let tmp = common::TempDir::new("init");
    let dir = tmp.path().join("new-site");
    let dir_s = dir.to_str().unwrap();
    let o = kalkic(&["init", dir_s, "--site", "lab"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let policy = dir.join("site.kalki");
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains("site lab {"), "{text}");
    let o = kalkic(&["fmt", "--check", dir_s]);
    assert_eq!(
        code(&o),
        0,
        "the starter is in the canonical layout: {}",
        String::from_utf8_lossy(&o.stdout)
    );

    let o = kalkic(&["verify", "--color", "never", dir_s]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), 0, "{err}");
    assert!(err.contains("0 errors, 0 warnings"), "{err}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("refuted"));
    let o = kalkic(&["test", "--coverage", dir_s]);
    let report = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        code(&o),
        0,
        "{report}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(report.contains("3 tests: 3 passed, 0 failed"), "{report}");
    let out = tmp.path().join("out");
    let o = kalkic(&[
        "build",
        "--color",
        "never",
        dir_s,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("manifest.json").is_file());

    // A second init leaves the (edited) policy alone.
    std::fs::write(&policy, "// mine\n").unwrap();
    let o = kalkic(&["init", dir_s]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists"));
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), "// mine\n");
    // An existing test file alone also stops it, and no policy is left behind.
    let tests_only = tmp.path().join("tests-only");
    std::fs::create_dir_all(&tests_only).unwrap();
    std::fs::write(tests_only.join("site.test.jsonl"), "mine").unwrap();
    let o = kalkic(&["init", tests_only.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(!tests_only.join("site.kalki").exists());
    assert_eq!(
        std::fs::read_to_string(tests_only.join("site.test.jsonl")).unwrap(),
        "mine"
    );

    // A site name that is not a name, or a keyword, is refused before anything is written.
    for bad in ["my-site", "site"] {
        let other = tmp.path().join(bad);
        let o = kalkic(&["init", other.to_str().unwrap(), "--site", bad]);
        assert_eq!(code(&o), 2, "{bad}");
        assert!(!other.exists(), "{bad}");
    }
}

/// The bash completion script, sourced in a real bash, completes subcommands and flags.
#[test]
fn bash_completion_completes_subcommands_and_flags() {
    let o = kalkic(&["completions", "bash"]);
    assert_eq!(code(&o), 0);
    let tmp = common::TempDir::new("completions");
    let script = tmp.write("kalkic.bash", &o.stdout);
    let complete = |words: &str| {
        let cmd = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _kalkic kalkic \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let subcommands = complete("kalkic in");
    assert!(subcommands.lines().any(|l| l == "init"), "{subcommands}");
    let flags = complete("kalkic build --si");
    assert!(flags.lines().any(|l| l == "--site"), "{flags}");
}

/// Conditions far deeper than K113's limit, in every place a condition goes (a rule, a
/// transition's guard, an assertion): each is one located K113, never a crash, however
/// deep (100,000 levels; the compiler's recursive stages would overflow its stack).
#[test]
fn very_deep_conditions_are_k113_not_a_crash() {
    let tmp = common::TempDir::new("deep");
    let base = kalki_compiler::init::starter("home").unwrap();
    let n = 100_000;
    let cases = [
        base.replace(
            "on kettle.power > 2800 and door_cam.motion",
            &format!("on kettle.power > 2800{}", " and door_cam.motion".repeat(n)),
        ),
        base.replace(
            "on kettle.power > 2800 and door_cam.motion",
            &format!("on {}door_cam.motion", "not ".repeat(n)),
        ),
        base.replace(
            "when power > 2500 for 1m",
            &format!("when power > 2500{} for 1m", " or on".repeat(n)),
        ),
        base.replace(
            "assert reachable kettle in attack",
            &format!("assert reachable kettle.power{} > 0", " + 1".repeat(n)),
        ),
    ];
    for (i, text) in cases.iter().enumerate() {
        assert_ne!(text, &base, "case {i} changed nothing");
        let file = tmp.write(&format!("deep{i}.kalki"), text);
        for cmd in ["check", "verify"] {
            let o = kalkic(&[
                cmd,
                "--color",
                "never",
                "--format",
                "json",
                file.to_str().unwrap(),
            ]);
            assert_eq!(
                code(&o),
                1,
                "case {i} {cmd}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let codes: Vec<String> = stdout_json(&o)["diagnostics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["code"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(codes, ["K113"], "case {i} {cmd}");
        }
    }
}
