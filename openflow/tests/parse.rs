//! The parser on what the compiler really writes, and on anything else.
//!
//! - every rule-set line of every bundle the repository's policies build (the examples,
//!   the OVS fixtures, the data-driven fixtures that build) parses, and prints back
//!   byte for byte;
//! - valid flows printed and parsed again are the same flow;
//! - arbitrary text, and near-misses built from the syntax's own tokens, never make the
//!   parser panic: every refusal names a line, a column inside it and a token.
//!
//! `KALKI_FUZZ_CASES` sets the number of cases per property (default 512).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{build, repo_root};
use kalki_openflow::{parse_flow, parse_rule_set, Actions, EthType, FlowMod, Mac, Match, Port};
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The rule sets (path, text) of the bundle `policy` builds, or `None` when it does not
/// check or does not declare exactly one site.
fn rule_sets(policy: &Path) -> Option<Vec<(String, String)>> {
    Some(
        build(policy)?
            .into_iter()
            .filter(|(p, _)| p.starts_with("flows/") && p.ends_with(".ofctl"))
            .map(|(p, b)| (p, String::from_utf8(b).unwrap()))
            .collect(),
    )
}

/// Every `.kalki` file or example directory the repository holds.
fn policies() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in ["examples"] {
        for e in std::fs::read_dir(repo_root().join(dir)).unwrap() {
            out.push(Path::new(dir).join(e.unwrap().file_name()));
        }
    }
    fn walk(rel: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(repo_root().join(rel)).unwrap() {
            let e = e.unwrap();
            let p = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "kalki") {
                out.push(p);
            }
        }
    }
    walk(Path::new("compiler/tests/fixtures"), &mut out);
    walk(Path::new("tests/fixtures"), &mut out);
    out.sort();
    out
}

#[test]
fn every_emitted_line_parses_and_prints_back() {
    let mut bundles = Vec::new();
    let mut lines = 0;
    for policy in policies() {
        let Some(sets) = rule_sets(&policy) else {
            continue;
        };
        for (path, text) in &sets {
            let flows = parse_rule_set(text).unwrap_or_else(|errors| {
                let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                panic!("{}: {path}:\n{}", policy.display(), shown.join("\n"))
            });
            let emitted: Vec<&str> = text.lines().collect();
            assert_eq!(flows.len(), emitted.len(), "{path}");
            for (flow, line) in flows.iter().zip(&emitted) {
                assert_eq!(&flow.to_string(), line, "{}: {path}", policy.display());
            }
            lines += flows.len();
        }
        bundles.push(policy);
    }
    // The examples and the OVS fixture at least; fixtures come and go.
    for must in [
        "examples/smart-office",
        "examples/kalki-lab-corrected",
        "compiler/tests/fixtures/ovs/open-lab.kalki",
    ] {
        assert!(
            bundles.iter().any(|b| b == Path::new(must)),
            "{must} built no bundle; built: {bundles:?}"
        );
    }
    assert!(lines > 100, "only {lines} lines");
    eprintln!("{lines} lines of {} bundles parsed", bundles.len());
}

#[test]
fn smart_office_reads_as_typed_flows() {
    let sets = rule_sets(Path::new("examples/smart-office")).unwrap();
    let text = |p: &str| &sets.iter().find(|(q, _)| q == p).unwrap().1;
    let base = parse_rule_set(text("flows/base.ofctl")).unwrap();
    let miss = base.iter().find(|f| f.table == 1).unwrap();
    assert_eq!(miss.priority, 0);
    assert!(miss.actions.is_drop());
    assert!(base.iter().all(|f| f.cookie == 0x0100_0000_0000_0000));
    let suspicious = parse_rule_set(text("flows/hall_cam/suspicious.ofctl")).unwrap();
    let from_uplink = suspicious
        .iter()
        .find(|f| f.matches.in_port == Some(1) && f.matches.eth_type == Some(EthType::Ip))
        .unwrap();
    assert_eq!(
        from_uplink.matches.nw_dst,
        Some(Ipv4Addr::new(10, 0, 1, 10))
    );
    assert_eq!(
        from_uplink.actions.outputs,
        vec![Port::Number(6), Port::Number(9), Port::Number(11)]
    );
}

fn config() -> Config {
    let cases = std::env::var("KALKI_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn any_ip() -> impl Strategy<Value = Option<Ipv4Addr>> {
    proptest::option::of(any::<u32>().prop_map(Ipv4Addr::from))
}

fn any_mac() -> impl Strategy<Value = Option<Mac>> {
    proptest::option::of(any::<[u8; 6]>().prop_map(Mac))
}

/// A flow the syntax can express: ports 1–65279, L3 fields only with their protocol,
/// `goto_table` forwards.
fn any_flow() -> impl Strategy<Value = FlowMod> {
    let head = (
        0u8..254,
        any::<u16>(),
        any::<u64>(),
        proptest::option::of(1u32..=65279),
    );
    let l3 = (
        proptest::option::of(prop_oneof![Just(EthType::Ip), Just(EthType::Arp)]),
        any_mac(),
        any_ip(),
        any_ip(),
        any_ip(),
        any_ip(),
        any_mac(),
        any::<bool>(),
    );
    let outputs = proptest::collection::vec(
        prop_oneof![(1u32..=65279).prop_map(Port::Number), Just(Port::Normal)],
        0..4,
    );
    (head, l3, outputs, any::<bool>(), any::<u8>()).prop_map(
        |((table, priority, cookie, in_port), l3, outputs, goto, to)| {
            let (eth_type, dl_src, a, b, c, d, arp_sha, untagged) = l3;
            let ip = eth_type == Some(EthType::Ip);
            let arp = eth_type == Some(EthType::Arp);
            let goto_table = (goto && table < 254).then(|| table + 1 + to % (254 - table));
            FlowMod {
                table,
                priority,
                cookie,
                flags: 0,
                matches: Match {
                    in_port,
                    untagged,
                    eth_type,
                    dl_src,
                    nw_src: a.filter(|_| ip),
                    nw_dst: b.filter(|_| ip),
                    arp_spa: c.filter(|_| arp),
                    arp_tpa: d.filter(|_| arp),
                    arp_sha: arp_sha.filter(|_| arp),
                },
                actions: Actions {
                    outputs,
                    goto_table,
                },
            }
        },
    )
}

/// Tokens of the syntax, good and bad, to build near-misses from.
const TOKENS: &[&str] = &[
    "table=0",
    "table=1",
    "table=254",
    "table=255",
    "priority=100",
    "priority=0x10000",
    "cookie=0x100000000000000",
    "cookie=0x1/0xff",
    "cookie=0xffffffffffffffffff",
    "in_port=2",
    "in_port=0",
    "in_port=LOCAL",
    "vlan_tci=0x0000/0x1fff",
    "vlan_tci=0x1000/0x1000",
    "ip",
    "arp",
    "tcp",
    "dl_src=02:00:00:00:01:10",
    "dl_src=02:00",
    "nw_src=10.0.1.10",
    "nw_dst=10.0.1.300",
    "arp_spa=10.0.1.10",
    "arp_tpa=1.2.3.4",
    "arp_sha=ff:ff:ff:ff:ff:ff",
    "actions=",
    "actions=drop",
    "actions=NORMAL",
    "actions=output:1",
    "output:7",
    "goto_table:1",
    "goto_table:0",
    "drop",
    "NORMAL",
    ",",
    " ",
    "=",
    "/",
    ":",
    "0x",
    "é",
    "\t",
    "#",
    "actions=goto_table:2,output:1",
];

fn check_refusal(text: &str) {
    match parse_rule_set(text) {
        Ok(flows) => {
            // Whatever parses prints back to something that parses to the same flows.
            let again: Vec<String> = flows.iter().map(|f| f.to_string()).collect();
            assert_eq!(parse_rule_set(&again.join("\n")).unwrap(), flows);
        }
        Err(errors) => {
            let lines: Vec<&str> = text.lines().collect();
            for e in errors {
                let line = lines[e.line - 1];
                assert!(
                    e.column >= 1 && e.column <= line.len() + 1,
                    "{e} in {line:?}"
                );
                assert!(!e.to_string().is_empty());
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn printed_flows_parse_back(flow in any_flow()) {
        let text = flow.to_string();
        prop_assert_eq!(parse_flow(&text).unwrap(), flow);
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".*") {
        check_refusal(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_refusal(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn near_misses_never_panic(
        picks in proptest::collection::vec(proptest::sample::select(TOKENS), 0..16),
        seps in proptest::collection::vec(prop_oneof![Just(","), Just(" "), Just(""), Just("\n")], 16),
    ) {
        let mut text = String::new();
        for (t, s) in picks.iter().zip(&seps) {
            text.push_str(t);
            text.push_str(s);
        }
        check_refusal(&text);
    }

    #[test]
    fn mutated_lines_never_panic(flow in any_flow(), at in any::<prop::sample::Index>(), junk in ".{0,4}") {
        let mut text = flow.to_string();
        let mut cut = at.index(text.len() + 1);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.insert_str(cut, &junk);
        check_refusal(&text);
    }
}
