//! The contract with the µmbox catalog, checked against `stdlib-policies/umboxes.kalki` as
//! the real front end parses it: every entry runs this image, its arguments (filled in as
//! `kalkic build` fills them: durations in milliseconds, the rest as written) parse with
//! defaults and at every edge of every parameter's range, values just outside a range are
//! refused, and the function's mode and alerts are the entry's `mode` and `emits`. An
//! entry that runs auth-proxy declares the credentials secret where the program reads it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kalki_lang::ast::{Item, Literal, TypeExpr, UmboxMember};
use kalki_umbox::cli;
use kalki_umbox::functions::Mode;
use std::collections::BTreeSet;

const CATALOG: &str = include_str!("../../stdlib-policies/umboxes.kalki");
const IMAGE: &str = "kalki/umbox:0.1";

struct Param {
    name: String,
    ty: TypeExpr,
    default: Option<String>,
}

struct Entry {
    name: String,
    image: String,
    args: Vec<String>,
    params: Vec<Param>,
    emits: BTreeSet<String>,
    mode: String,
    /// `secret NAME at PATH`: the paths.
    secrets: Vec<String>,
    env: Vec<(String, String)>,
}

fn literal(l: &Literal) -> String {
    match l {
        Literal::Int(n, _) => n.to_string(),
        Literal::Bool(b, _) => b.to_string(),
        Literal::Str(s) => s.value.clone(),
        Literal::Duration(d) => d.millis.to_string(),
        Literal::Name(i) => i.name.clone(),
    }
}

fn catalog() -> Vec<Entry> {
    let parsed = kalki_lang::parse(CATALOG);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut out = Vec::new();
    for item in parsed.file.items {
        let Item::Umbox(u) = item else { continue };
        let mut e = Entry {
            name: u.name.name.clone(),
            image: String::new(),
            args: Vec::new(),
            params: Vec::new(),
            emits: BTreeSet::new(),
            mode: String::new(),
            secrets: Vec::new(),
            env: Vec::new(),
        };
        for m in u.members {
            match m {
                UmboxMember::Image(s) => e.image = s.value,
                UmboxMember::Args(a, _) => e.args = a.into_iter().map(|s| s.value).collect(),
                UmboxMember::Param(p) => e.params.push(Param {
                    name: p.name.name,
                    ty: p.ty,
                    default: p.default.as_ref().map(literal),
                }),
                UmboxMember::Emits(names, _) => e.emits.extend(names.into_iter().map(|n| n.name)),
                UmboxMember::Mode(m) => e.mode = m.name,
                UmboxMember::Secret { path, .. } => e.secrets.push(path.value),
                UmboxMember::Env(vars, _) => e
                    .env
                    .extend(vars.into_iter().map(|(k, v)| (k.name, v.value))),
                UmboxMember::Traffic(_) => {}
            }
        }
        out.push(e);
    }
    out
}

/// A value for a parameter without a default.
fn sample(entry: &str, p: &Param) -> String {
    match (entry, p.name.as_str()) {
        ("ip_block", "addresses") => "192.168.50.178,203.0.113.0/24".into(),
        _ => panic!("no sample value for {entry}.{}", p.name),
    }
}

fn fill(e: &Entry, values: &[(String, String)]) -> Vec<String> {
    let mut args = vec!["kalki-umbox".to_string()];
    for a in &e.args {
        let mut s = a.clone();
        for (k, v) in values {
            s = s.replace(&format!("{{{k}}}"), v);
        }
        assert!(!s.contains('{'), "{}: unfilled hole in `{a}`", e.name);
        args.push(s);
    }
    args
}

fn defaults(e: &Entry) -> Vec<(String, String)> {
    e.params
        .iter()
        .map(|p| {
            let v = p.default.clone().unwrap_or_else(|| sample(&e.name, p));
            (p.name.clone(), v)
        })
        .collect()
}

fn with(e: &Entry, name: &str, value: &str) -> Vec<String> {
    let mut v = defaults(e);
    for (k, val) in &mut v {
        if k == name {
            *val = value.to_string();
        }
    }
    fill(e, &v)
}

#[test]
fn every_entry_runs_this_image_with_its_mode_and_alerts() {
    let entries = catalog();
    assert!(
        entries.len() >= 10,
        "only {} µmboxes in the catalog",
        entries.len()
    );
    let mut functions = BTreeSet::new();
    for e in &entries {
        assert_eq!(e.image, IMAGE, "{}", e.name);
        let args = fill(e, &defaults(e));
        let f = cli::parse(&args).unwrap_or_else(|err| panic!("{}: {args:?}: {err}", e.name));
        functions.insert(f.name());
        let mode = match f.mode() {
            Mode::Inline => "inline",
            Mode::Tap => "tap",
        };
        assert_eq!(mode, e.mode, "{}: mode", e.name);
        let emits: BTreeSet<String> = f.emits().iter().map(|k| k.as_str().to_string()).collect();
        assert_eq!(emits, e.emits, "{}: alerts", e.name);
        // The manifest's interfaces are the mode's defaults.
        let s = cli::settings(|_| None, &f).unwrap();
        assert_eq!(s.layout.names().len(), if mode == "inline" { 2 } else { 1 });
        // auth-proxy reads its credentials where the runtime mounts the entry's secret.
        let env = |k: &str| e.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let wanted = cli::settings(env, &f).unwrap().credentials;
        if let Some(path) = &wanted {
            assert_eq!(e.secrets, std::slice::from_ref(path), "{}: secret", e.name);
        }
    }
    let all: BTreeSet<&str> = [
        "sniffer",
        "ids",
        "brute-force",
        "anti-dos",
        "auth-proxy",
        "login-monitor",
        "fake-replies",
        "ip-block",
        "xmas-block",
    ]
    .into();
    assert_eq!(functions, all, "functions the catalog uses");
}

#[test]
fn every_parameter_value_in_range_parses_and_none_outside() {
    for e in catalog() {
        for p in &e.params {
            let (good, bad): (Vec<String>, Vec<String>) = match &p.ty {
                TypeExpr::Bool(_) => (vec!["true".into(), "false".into()], vec!["yes".into()]),
                TypeExpr::Int { lo, hi, .. } => (
                    vec![lo.to_string(), hi.to_string()],
                    vec![(lo - 1).to_string(), (hi + 1).to_string()],
                ),
                TypeExpr::Enum(members, _) => (
                    members.iter().map(|m| m.name.clone()).collect(),
                    vec!["no_such_member".into()],
                ),
                // 1 ms up to a week; `kalkic build` writes whole milliseconds.
                TypeExpr::Duration(_) => (vec!["1".into(), "604800000".into()], vec!["1s".into()]),
                TypeExpr::String(_) => match p.name.as_str() {
                    "allowed_ports" => (
                        vec!["".into(), "22".into(), "80,443".into()],
                        vec!["http".into()],
                    ),
                    "addresses" => (
                        vec!["10.0.0.1".into(), "10.0.0.0/8, 192.0.2.7".into()],
                        vec!["10.0.0.256".into()],
                    ),
                    "realm" => (vec!["kalki".into(), "".into()], vec![]),
                    other => panic!("{}: no test values for string parameter {other}", e.name),
                },
                TypeExpr::UnboundedInt(_) => panic!("{}.{}: unbounded int", e.name, p.name),
            };
            for v in &good {
                let args = with(&e, &p.name, v);
                if let Err(err) = cli::parse(&args) {
                    panic!("{}.{} = `{v}` refused: {args:?}: {err}", e.name, p.name);
                }
            }
            for v in &bad {
                let args = with(&e, &p.name, v);
                assert!(
                    cli::parse(&args).is_err(),
                    "{}.{} = `{v}` accepted: {args:?}",
                    e.name,
                    p.name
                );
            }
        }
    }
}
