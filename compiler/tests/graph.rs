//! `kalkic graph`: the DOT of the examples' state machines (snapshots under
//! `snapshots/graph`), its structure (checked here, so CI needs no Graphviz), and the
//! command line (an unknown `--device-type`, repeatable output, `-o`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{code, kalkic, repo_root, FsLoader};
use kalki_compiler::codegen::dot::{state_machines, GraphError};
use kalki_compiler::ir::Model;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// The checked model of every `.kalki` file of `examples/NAME`.
fn example(name: &str) -> Model {
    let dir = PathBuf::from("examples").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(&dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "kalki"))
        .map(|p| dir.join(p.file_name().unwrap()))
        .collect();
    files.sort();
    let checked = kalki_compiler::check(&files, &FsLoader { base: repo_root() });
    let rendered = kalki_compiler::render::human(&checked.sources, &checked.diagnostics, false);
    checked
        .model
        .unwrap_or_else(|| panic!("{name} checks clean:\n{rendered}"))
}

fn snapshot(name: &str, dot: &str) {
    insta::with_settings!({
        snapshot_path => "snapshots/graph",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name, dot);
    });
}

#[test]
fn smart_office_dot() {
    let dot = state_machines(&example("smart-office"), None).unwrap();
    assert_well_formed(&dot);
    snapshot("smart-office", &dot);
}

#[test]
fn kalki_lab_dot() {
    let dot = state_machines(&example("kalki-lab"), None).unwrap();
    assert_well_formed(&dot);
    snapshot("kalki-lab", &dot);
}

#[test]
fn every_example_and_every_single_type_is_well_formed() {
    for name in ["smart-office", "kalki-lab", "kalki-lab-corrected"] {
        let model = example(name);
        let all = state_machines(&model, None).unwrap();
        assert_well_formed(&all);
        let clusters = all.matches("subgraph \"cluster_").count();
        assert!(clusters > 0, "{name}: no clusters");
        let names: BTreeSet<&str> = all
            .lines()
            .filter_map(|l| l.trim().strip_prefix("label=\""))
            .filter_map(|l| l.strip_suffix("\";"))
            .collect();
        assert_eq!(names.len(), clusters, "{name}: cluster labels {names:?}");
        for ty in names {
            let one = state_machines(&model, Some(ty)).unwrap();
            assert_well_formed(&one);
            assert_eq!(one.matches("subgraph \"cluster_").count(), 1, "{name}/{ty}");
            assert!(one.contains(&format!("subgraph \"cluster_{ty}\"")));
        }
    }
}

#[test]
fn states_chains_and_rule_moves_are_drawn() {
    let dot = state_machines(&example("smart-office"), Some("Thermostat")).unwrap();
    // Posture order: green to red, initial bold, `attack` entered only by the site's rules;
    // under the chain, what it lets through (from the contracts, not from the colour).
    assert!(dot.contains(
        r#""Thermostat.normal" [label="normal\n[sniffer, auth_proxy]\nwith credentials only: tcp 80 from uplink; everything else crosses", fillcolor="0.333 0.400 1.000", style="rounded,filled,bold""#
    ));
    assert!(dot.contains(
        r#""Thermostat.attack" [label="attack\n[drop]\nnothing crosses", fillcolor="0.000 0.400 1.000""#
    ));
    assert!(dot.contains(r#""Thermostat.suspicious" -> "Thermostat.attack" [label="rule isolate_main\nrule isolate_annex", style=dashed]"#));
    assert!(dot.contains(r#""Thermostat.suspicious" -> "Thermostat.normal" [label="after 10m quiet", constraint=false]"#));
    assert!(dot.contains(r#"when ... for 30s"#));
}

#[test]
fn unknown_type_is_an_error_with_a_suggestion() {
    let err = state_machines(&example("smart-office"), Some("Thermostt")).unwrap_err();
    assert_eq!(
        err,
        GraphError::UnknownType {
            name: "Thermostt".into(),
            known: vec!["Camera".into(), "Light".into(), "Thermostat".into()],
        }
    );
    assert!(
        err.help().starts_with("did you mean `Thermostat`?"),
        "{}",
        err.help()
    );
}

// ---------------------------------------------------------------- the command line

#[test]
fn cli_unknown_device_type_exits_2() {
    let o = kalkic(&["graph", "--device-type", "Nope", "examples/smart-office"]);
    assert_eq!(code(&o), 2);
    assert!(o.stdout.is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown device type `Nope`"), "{err}");
    assert!(err.contains("`Thermostat`"), "{err}");
}

#[test]
fn cli_output_is_identical_across_runs() {
    let a = kalkic(&["graph", "examples/kalki-lab"]);
    let b = kalkic(&["graph", "examples/kalki-lab"]);
    assert_eq!(code(&a), 0, "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(code(&b), 0);
    assert!(!a.stdout.is_empty());
    assert_eq!(a.stdout, b.stdout);
    assert_well_formed(&String::from_utf8(a.stdout).unwrap());
}

#[test]
fn cli_output_file_holds_what_stdout_would() {
    let path = std::env::temp_dir().join(format!("kalkic-graph-{}.dot", std::process::id()));
    let o = kalkic(&[
        "graph",
        "examples/smart-office",
        "--device-type",
        "Camera",
        "-o",
        path.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty());
    let written = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let stdout = kalkic(&["graph", "examples/smart-office", "--device-type", "Camera"]);
    assert_eq!(written, stdout.stdout);
}

#[test]
fn cli_policy_errors_exit_1_with_diagnostics() {
    let o = kalkic(&[
        "graph",
        "tests/fixtures/check/errors/k103_unknown_state.kalki",
    ]);
    assert_eq!(code(&o), 1);
    assert!(o.stdout.is_empty());
    assert!(String::from_utf8_lossy(&o.stderr).contains("K103"));
}

#[test]
fn cli_missing_file_exits_2() {
    let o = kalkic(&["graph", "tests/fixtures/check/no_such_file.kalki"]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("K112"));
}

// ---------------------------------------------------------------- structure of DOT

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Id(String),
    Punct(&'static str),
}

/// DOT tokens: IDs (bare or quoted, escapes resolved) and punctuation. Panics on an
/// unterminated string or an unexpected character.
fn tokens(dot: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = dot.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e) => {
                                s.push('\\');
                                s.push(e);
                            }
                            None => panic!("unterminated escape"),
                        },
                        Some('\n') => panic!("raw newline in a string"),
                        Some(c) => s.push(c),
                        None => panic!("unterminated string"),
                    }
                }
                out.push(Tok::Id(s));
            }
            '-' if {
                let mut ahead = chars.clone();
                ahead.next();
                ahead.peek() == Some(&'>')
            } =>
            {
                chars.next();
                chars.next();
                out.push(Tok::Punct("->"));
            }
            '{' | '}' | '[' | ']' | ';' | ',' | '=' => {
                chars.next();
                out.push(Tok::Punct(match c {
                    '{' => "{",
                    '}' => "}",
                    '[' => "[",
                    ']' => "]",
                    ';' => ";",
                    ',' => ",",
                    _ => "=",
                }));
            }
            c if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' {
                        s.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Id(s));
            }
            c => panic!("unexpected character {c:?}"),
        }
    }
    out
}

/// One `digraph`; braces and brackets balanced; every statement a node, an edge, an
/// attribute or a subgraph; node names unique; every edge end point a declared node.
fn assert_well_formed(dot: &str) {
    let toks = tokens(dot);
    assert_eq!(toks.first(), Some(&Tok::Id("digraph".into())), "{dot}");
    assert_eq!(toks.last(), Some(&Tok::Punct("}")), "{dot}");
    let mut depth = 0usize;
    let mut graphs = 0;
    let mut nodes = BTreeSet::new();
    let mut edges = Vec::new();
    let mut stmt: Vec<Tok> = Vec::new();
    let mut in_attrs = false;
    for t in toks {
        match t {
            Tok::Punct("[") => {
                assert!(!in_attrs, "nested [ in {dot}");
                in_attrs = true;
            }
            Tok::Punct("]") => {
                assert!(in_attrs, "unbalanced ] in {dot}");
                in_attrs = false;
            }
            _ if in_attrs => {}
            Tok::Punct("{") => {
                match stmt.as_slice() {
                    [Tok::Id(k), Tok::Id(_)] if k == "digraph" && depth == 0 => graphs += 1,
                    [Tok::Id(k), Tok::Id(name)] if k == "subgraph" && depth == 1 => {
                        assert!(name.starts_with("cluster_"), "{name}")
                    }
                    other => panic!("unexpected block header {other:?}"),
                }
                depth += 1;
                stmt.clear();
            }
            Tok::Punct(p @ (";" | "}")) => {
                assert!(depth > 0, "statement outside the graph in {dot}");
                statement(&stmt, &mut nodes, &mut edges);
                stmt.clear();
                if p == "}" {
                    depth -= 1;
                }
            }
            t => stmt.push(t),
        }
    }
    assert!(!in_attrs && stmt.is_empty(), "trailing tokens in {dot}");
    assert_eq!(depth, 0, "unbalanced braces in {dot}");
    assert_eq!(graphs, 1, "one digraph");
    assert!(!nodes.is_empty(), "no nodes in {dot}");
    for (a, b) in edges {
        assert!(nodes.contains(&a), "edge from undeclared node {a}");
        assert!(nodes.contains(&b), "edge to undeclared node {b}");
    }
}

fn statement(stmt: &[Tok], nodes: &mut BTreeSet<String>, edges: &mut Vec<(String, String)>) {
    match stmt {
        [] => {}
        [Tok::Id(_), Tok::Punct("="), Tok::Id(_)] => {}
        [Tok::Id(k)] if ["node", "edge", "graph"].contains(&k.as_str()) => {}
        [Tok::Id(n)] => assert!(nodes.insert(n.clone()), "node {n} declared twice"),
        [Tok::Id(a), Tok::Punct("->"), Tok::Id(b)] => edges.push((a.clone(), b.clone())),
        other => panic!("unexpected statement {other:?}"),
    }
}

#[test]
fn the_structure_check_catches_mistakes() {
    let bad = [
        "digraph g { \"a\"; \"a\" -> \"b\"; }",
        "digraph g { \"a\"; ",
        "digraph g { \"a\" [label=\"x]; }",
        "digraph g { \"a\" [label=\"x\"; }",
        "digraph g { \"a\"; \"a\"; }",
    ];
    for b in bad {
        let caught = std::panic::catch_unwind(|| assert_well_formed(b)).is_err();
        assert!(caught, "not caught: {b}");
    }
    assert_well_formed("digraph g { rankdir=LR; \"a\" [label=\"x\\\"y\"]; \"a\" -> \"a\"; }");
}

/// A rule written once for a group is one dashed edge label, not one per device.
#[test]
fn a_rule_for_every_member_of_a_group_is_one_label() {
    let file = PathBuf::from("tests/fixtures/check/clean/groups.kalki");
    let checked = kalki_compiler::check(&[file], &FsLoader { base: repo_root() });
    let model = checked.model.expect("the fixture checks clean");
    let dot = state_machines(&model, Some("Camera")).unwrap();
    assert!(
        dot.contains(r#""Camera.normal" -> "Camera.suspicious" [label="rule watch[each] (escalate)", style=dashed]"#),
        "{dot}"
    );
    assert!(
        !dot.contains("watch[hall]") && !dot.contains("watch[yard]"),
        "{dot}"
    );
}

/// A rule for a group that holds only some devices of a type names them: the graph is
/// drawn per type, and must not show the rule on devices it does not move.
#[test]
fn a_rule_for_some_devices_of_a_type_names_them() {
    let file = PathBuf::from("tests/fixtures/check/clean/tags.kalki");
    let checked = kalki_compiler::check(&[file], &FsLoader { base: repo_root() });
    let model = checked.model.expect("the fixture checks clean");
    // `wary for l in indoor`: the camera `hall` (of four cameras) and the only light.
    let cams = state_machines(&model, Some("Camera")).unwrap();
    assert!(
        cams.contains(r#"[label="rule wary[hall] (escalate)", style=dashed]"#),
        "{cams}"
    );
    assert!(!cams.contains("wary[each]"), "{cams}");
    // `alarm for c in perimeter ... then escalate hall to attack`: the label names the
    // device its instances move, not the members it is written for.
    assert!(
        cams.contains(r#"[label="rule alarm[hall] (escalate)", style=dashed]"#),
        "{cams}"
    );
    assert!(!cams.contains("alarm[yard"), "{cams}");
    let lights = state_machines(&model, Some("Light")).unwrap();
    assert!(
        lights.contains(r#"[label="rule wary[each] (escalate)", style=dashed]"#),
        "{lights}"
    );
}
