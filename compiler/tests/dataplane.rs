//! Translation validation (K208, K212) on crafted data planes. The policy
//! `tests/fixtures/dataplane/lobby.kalki` compiles to clean rule sets; each case edits
//! the typed model (addresses the front end would refuse) or the emitted flows (what the
//! compiler never emits) and must report its code, or, for a near miss, nothing at all.
//!
//! Each case gives one insta snapshot: what was crafted, the rule-set lines that changed,
//! and the diagnostics as `kalkic build` shows them. Every finding's witness packet is
//! replayed through an interpreter of the pipeline (`dataplane::run`, written apart from
//! the solver encoding): it must really do what the diagnostic says.
//!
//! Update snapshots with `INSTA_UPDATE=always cargo test -p kalki-compiler --test
//! dataplane`, then read every changed snapshot before accepting it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{check_spans, filter_paths, repo_root, FsLoader};
use kalki_compiler::codegen::bundle;
use kalki_compiler::codegen::openflow::{self, Action, Flow, Match, Proto};
use kalki_compiler::diag::Diagnostic;
use kalki_compiler::ir::Model;
use kalki_compiler::verify::dataplane::{self, DataPlane, Packet};
use kalki_compiler::verify::solver::{Outcome, Query, Solver};
use kalki_compiler::verify::z3::Z3Solver;
use kalki_compiler::verify::{self, codes};
use kalki_compiler::Checked;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

const FIXTURE: &str = "tests/fixtures/dataplane/lobby.kalki";

fn checked(path: &str) -> Checked {
    let loader = FsLoader { base: repo_root() };
    let opts = verify::Options::default();
    let (checked, verified) = kalki_compiler::verify(
        &[PathBuf::from(path)],
        &loader,
        &Z3Solver::new(10_000),
        &opts,
    );
    assert!(verified.is_some(), "{path} does not check");
    let errors: Vec<&Diagnostic> = checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .collect();
    assert!(errors.is_empty(), "{path}: {errors:#?}");
    checked
}

fn plane_of(model: &Model) -> DataPlane {
    let site = &model.sites[0];
    let ports = openflow::allocate(model, site).unwrap();
    dataplane::plane(model, site, &ports)
}

// ---- crafting helpers

fn device(p: &DataPlane, name: &str) -> usize {
    p.devices.iter().position(|d| d.name == name).unwrap()
}

fn state(p: &DataPlane, dev: &str, st: &str) -> (usize, usize) {
    let d = device(p, dev);
    let s = p.devices[d]
        .states
        .iter()
        .position(|s| s.name == st)
        .unwrap();
    (d, s)
}

fn flows<'a>(p: &'a mut DataPlane, dev: &str, st: &str) -> &'a mut Vec<Flow> {
    let (d, s) = state(p, dev, st);
    &mut p.devices[d].states[s].flows
}

fn cookie(p: &DataPlane, dev: &str, st: &str) -> u64 {
    let (d, s) = state(p, dev, st);
    p.devices[d].states[s].cookie
}

fn port(p: &DataPlane, dev: &str) -> u32 {
    p.devices[device(p, dev)].port
}

fn flow(cookie: u64, priority: u16, matches: Match, actions: Vec<Action>) -> Flow {
    Flow {
        table: openflow::STEER,
        priority,
        cookie,
        matches,
        actions,
    }
}

/// The flow of a set that matches `in_port` and `proto` exactly as given.
fn find(fs: &mut [Flow], in_port: u32, proto: Option<Proto>) -> &mut Flow {
    fs.iter_mut()
        .find(|f| f.matches.in_port == Some(in_port) && f.matches.proto == proto)
        .unwrap()
}

/// `10.0.9.99`: an address no device has.
const STRANGER: u32 = 0x0a00_0963;

// ---- the cases

type CraftModel = fn(&mut Model);
type CraftPlane = fn(&mut DataPlane);

struct Case {
    name: &'static str,
    code: &'static str,
    near_miss: bool,
    what: &'static str,
    model: Option<CraftModel>,
    plane: Option<CraftPlane>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "k208_shared_ip",
            code: "K208",
            near_miss: false,
            what: "`back` is given `front`'s IP address in the typed model (K209 refuses this \
                   at the source); the generated flows for one address serve two devices",
            model: Some(|m| {
                let ip = m.sites[0].devices[0].net.as_ref().unwrap().ip;
                m.sites[0].devices[1].net.as_mut().unwrap().ip = ip;
            }),
            plane: None,
        },
        Case {
            name: "k208_shared_mac_near_miss",
            code: "K208",
            near_miss: true,
            what: "`back` is given `front`'s MAC address in the typed model (K209 refuses this \
                   at the source), but every flow also matches the switch port, so the \
                   emitted rules still keep the two apart",
            model: Some(|m| {
                let mac = m.sites[0].devices[0].net.as_ref().unwrap().mac;
                m.sites[0].devices[1].net.as_mut().unwrap().mac = mac;
            }),
            plane: None,
        },
        Case {
            name: "k208_equal_priority_overlap",
            code: "K208",
            near_miss: false,
            what: "`front` in `guarded` gets a second flow for its IP traffic to one \
                   destination, at the priority of the flow for all its IP traffic",
            model: None,
            plane: Some(|p| {
                let (c, dp) = (cookie(p, "front", "guarded"), port(p, "front"));
                let a1 = find(flows(p, "front", "guarded"), dp, Some(Proto::Ip)).actions[1];
                let extra = flow(
                    c,
                    100,
                    Match {
                        in_port: Some(dp),
                        proto: Some(Proto::Ip),
                        nw_dst: Some(STRANGER),
                        ..Match::default()
                    },
                    vec![a1],
                );
                flows(p, "front", "guarded").push(extra);
            }),
        },
        Case {
            name: "k208_equal_priority_overlap_near_miss",
            code: "K208",
            near_miss: true,
            what: "the same extra flow one priority higher: it wins for its destination, \
                   and still sends into the chain",
            model: None,
            plane: Some(|p| {
                let (c, dp) = (cookie(p, "front", "guarded"), port(p, "front"));
                let a1 = find(flows(p, "front", "guarded"), dp, Some(Proto::Ip)).actions[1];
                let extra = flow(
                    c,
                    101,
                    Match {
                        in_port: Some(dp),
                        proto: Some(Proto::Ip),
                        nw_dst: Some(STRANGER),
                        ..Match::default()
                    },
                    vec![a1],
                );
                flows(p, "front", "guarded").push(extra);
            }),
        },
        Case {
            name: "k208_flow_for_another_device",
            code: "K208",
            near_miss: false,
            what: "`front` in `open` gets a flow for all IP traffic from the uplink, above \
                   every device's own flows: it takes `back`'s traffic too",
            model: None,
            plane: Some(|p| {
                let (c, u, dp) = (cookie(p, "front", "open"), p.uplink, port(p, "front"));
                flows(p, "front", "open").push(flow(
                    c,
                    110,
                    Match {
                        in_port: Some(u),
                        proto: Some(Proto::Ip),
                        ..Match::default()
                    },
                    vec![Action::Output(dp)],
                ));
            }),
        },
        Case {
            name: "k208_flow_for_another_device_near_miss",
            code: "K208",
            near_miss: true,
            what: "the same catch-all flow below the devices' own flows: in every state of \
                   `back`, `back`'s flow for its address wins, and table 0 passes no other \
                   uplink IP traffic to table 1, so the flow never acts on another device's \
                   packet",
            model: None,
            plane: Some(|p| {
                let (c, u, dp) = (cookie(p, "front", "open"), p.uplink, port(p, "front"));
                flows(p, "front", "open").push(flow(
                    c,
                    90,
                    Match {
                        in_port: Some(u),
                        proto: Some(Proto::Ip),
                        ..Match::default()
                    },
                    vec![Action::Output(dp)],
                ));
            }),
        },
        Case {
            name: "k208_foreign_cookie",
            code: "K208",
            near_miss: false,
            what: "a flow of `back` in `watched` carries `front`'s cookie: replacing \
                   `front`'s flows would delete it",
            model: None,
            plane: Some(|p| {
                let c = cookie(p, "front", "watched");
                let bp = port(p, "back");
                find(flows(p, "back", "watched"), bp, Some(Proto::Arp)).cookie = c;
            }),
        },
        Case {
            name: "k212_bypass_to_uplink",
            code: "K212",
            near_miss: false,
            what: "in `guarded`, `front`'s IP traffic goes to the tap and straight to the \
                   uplink instead of the first inline µmbox",
            model: None,
            plane: Some(|p| {
                let (dp, u) = (port(p, "front"), p.uplink);
                find(flows(p, "front", "guarded"), dp, Some(Proto::Ip)).actions[1] =
                    Action::Output(u);
            }),
        },
        Case {
            name: "k212_shadowed_bypass_near_miss",
            code: "K212",
            near_miss: true,
            what: "`front` in `guarded` gets a low-priority flow sending everything from its \
                   port to the uplink; table 0 only passes its IP and ARP on, and the chain's \
                   IP and ARP flows rank higher, so nothing ever takes it",
            model: None,
            plane: Some(|p| {
                let (c, dp, u) = (cookie(p, "front", "guarded"), port(p, "front"), p.uplink);
                flows(p, "front", "guarded").push(flow(
                    c,
                    50,
                    Match {
                        in_port: Some(dp),
                        ..Match::default()
                    },
                    vec![Action::Output(u)],
                ));
            }),
        },
        Case {
            name: "k212_reverse_bypass",
            code: "K212",
            near_miss: false,
            what: "in `guarded`, IP traffic for `front` from the uplink goes to the tap and \
                   straight to the device instead of the last inline µmbox",
            model: None,
            plane: Some(|p| {
                let (dp, u) = (port(p, "front"), p.uplink);
                find(flows(p, "front", "guarded"), u, Some(Proto::Ip)).actions[1] =
                    Action::Output(dp);
            }),
        },
        Case {
            name: "k212_reverse_unreachable_near_miss",
            code: "K212",
            near_miss: true,
            what: "`front` in `guarded` gets a high-priority flow from the uplink straight to \
                   the device, for an address no device has: table 0 never passes such \
                   traffic to table 1",
            model: None,
            plane: Some(|p| {
                let (c, dp, u) = (cookie(p, "front", "guarded"), port(p, "front"), p.uplink);
                flows(p, "front", "guarded").push(flow(
                    c,
                    150,
                    Match {
                        in_port: Some(u),
                        proto: Some(Proto::Ip),
                        nw_dst: Some(STRANGER),
                        ..Match::default()
                    },
                    vec![Action::Output(dp)],
                ));
            }),
        },
        Case {
            name: "k212_drop_state_delivers",
            code: "K212",
            near_miss: false,
            what: "in `cut` (`drop`), ARP for `front` from the uplink is delivered to it",
            model: None,
            plane: Some(|p| {
                let (dp, u) = (port(p, "front"), p.uplink);
                find(flows(p, "front", "cut"), u, Some(Proto::Arp)).actions =
                    vec![Action::Output(dp)];
            }),
        },
        Case {
            name: "k212_drop_state_hairpin_near_miss",
            code: "K212",
            near_miss: true,
            what: "in `cut` (`drop`), `front`'s traffic is sent back out of its own port: \
                   the switch never outputs a packet to the port it came in on",
            model: None,
            plane: Some(|p| {
                let dp = port(p, "front");
                find(flows(p, "front", "cut"), dp, None).actions = vec![Action::Output(dp)];
            }),
        },
        Case {
            name: "k212_chain_hop_skipped",
            code: "K212",
            near_miss: false,
            what: "in `guarded`, traffic leaving `anti_dos` towards the uplink skips \
                   `auth_proxy` and goes straight to the uplink",
            model: None,
            plane: Some(|p| {
                let u = p.uplink;
                let (d, s) = state(p, "front", "guarded");
                let b1 = match &p.devices[d].states[s].chain {
                    dataplane::ChainPlane::Entries(es) => es
                        .iter()
                        .find_map(|e| match e {
                            openflow::EntryPorts::Inline { b, .. } => Some(*b),
                            openflow::EntryPorts::Tap { .. } => None,
                        })
                        .unwrap(),
                    other => panic!("{other:?}"),
                };
                find(flows(p, "front", "guarded"), b1, None).actions = vec![Action::Output(u)];
            }),
        },
        Case {
            name: "k212_other_devices_flow",
            code: "K212",
            near_miss: false,
            what: "`back` in `open` gets a flow that forwards everything arriving on \
                   `front`'s port to the uplink, above `front`'s own flows: while `back` is \
                   in `open`, `front` is unprotected in every state (the finding names the \
                   state of `back` it assumes)",
            model: None,
            plane: Some(|p| {
                let (c, fp, u) = (cookie(p, "back", "open"), port(p, "front"), p.uplink);
                flows(p, "back", "open").push(flow(
                    c,
                    120,
                    Match {
                        in_port: Some(fp),
                        ..Match::default()
                    },
                    vec![Action::Output(u)],
                ));
            }),
        },
        Case {
            name: "k212_normal_from_device",
            code: "K212",
            near_miss: false,
            what: "with `unknown hosts pass`, the base set loses the rule that drops \
                   `front`'s spoofed and non-IP traffic: it falls through to `NORMAL`",
            model: Some(|m| m.sites[0].unknown_hosts = kalki_compiler::ir::UnknownHosts::Pass),
            plane: Some(|p| {
                let dp = port(p, "front");
                p.base
                    .retain(|f| !(f.priority == 900 && f.matches.in_port == Some(dp)));
            }),
        },
        Case {
            name: "k212_normal_near_miss",
            code: "K212",
            near_miss: true,
            what: "`unknown hosts pass` as generated: `NORMAL` handles only traffic no \
                   device or µmbox port rule claims",
            model: Some(|m| m.sites[0].unknown_hosts = kalki_compiler::ir::UnknownHosts::Pass),
            plane: None,
        },
        // Last: the Z3 context is per thread, so a witness can depend on the queries asked
        // before it; appended cases leave the earlier snapshots as they were.
        Case {
            name: "k208_flow_at_shared_umbox_port",
            code: "K208",
            near_miss: false,
            what: "a flow of `back` in `watched` carries `front`'s cookie and matches no \
                   port: it wins for IP packets to a stranger entering on the tap of \
                   `back`'s sniffer, an instance `watched` shares with `guarded` (the \
                   regression of case 36 of KALKI_FUZZ_CASES=2000: the port was taken to be \
                   `back`'s in `guarded` only)",
            model: None,
            plane: Some(|p| {
                let c = cookie(p, "front", "watched");
                flows(p, "back", "watched").push(flow(
                    c,
                    50,
                    Match {
                        untagged: true,
                        proto: Some(Proto::Ip),
                        nw_dst: Some(STRANGER),
                        ..Match::default()
                    },
                    vec![],
                ));
            }),
        },
    ]
}

// ---- rendering and checks

fn set_texts(p: &DataPlane) -> Vec<(String, BTreeSet<String>)> {
    let lines = |fs: &[Flow]| fs.iter().map(Flow::to_ofctl).collect::<BTreeSet<_>>();
    let mut out = vec![("flows/base.ofctl".to_string(), lines(&p.base))];
    for d in &p.devices {
        for s in &d.states {
            out.push((
                format!("flows/{}/{}.ofctl", d.name, s.name),
                lines(&s.flows),
            ));
        }
    }
    out
}

/// The lines that differ between two data planes, per rule set.
fn diff(before: &DataPlane, after: &DataPlane) -> String {
    let mut out = String::new();
    for ((path, old), (_, new)) in set_texts(before).into_iter().zip(set_texts(after)) {
        if old == new {
            continue;
        }
        let _ = writeln!(out, "{path}");
        for l in old.difference(&new) {
            let _ = writeln!(out, "- {l}");
        }
        for l in new.difference(&old) {
            let _ = writeln!(out, "+ {l}");
        }
    }
    if out.is_empty() {
        out.push_str("(rule sets as generated)\n");
    }
    out
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn parse_ip(s: &str) -> u32 {
    let v: Vec<u32> = s.split('.').map(|x| x.parse().unwrap()).collect();
    (v[0] << 24) | (v[1] << 16) | (v[2] << 8) | v[3]
}

fn packet_of(w: &serde_json::Value) -> Packet {
    let p = &w["packet"];
    let hex = |k: &str| u16::from_str_radix(p[k].as_str().unwrap().trim_start_matches("0x"), 16);
    Packet {
        in_port: u32::try_from(p["in_port"].as_u64().unwrap()).unwrap(),
        vlan_tci: hex("vlan_tci").unwrap(),
        eth_type: hex("eth_type").unwrap(),
        dl_src: parse_mac(p["dl_src"].as_str().unwrap()),
        nw_src: parse_ip(p["nw_src"].as_str().unwrap()),
        nw_dst: parse_ip(p["nw_dst"].as_str().unwrap()),
        arp_spa: parse_ip(p["arp_spa"].as_str().unwrap()),
        arp_tpa: parse_ip(p["arp_tpa"].as_str().unwrap()),
        arp_sha: parse_mac(p["arp_sha"].as_str().unwrap()),
    }
}

/// The flows installed when each device is in the state the witness names (its first
/// state otherwise: those devices' flows cannot matter to the witness). The flow the
/// finding is about comes first, then the witness's path, so that where flows of equal
/// priority tie (undefined in Open vSwitch) the interpreter makes the witness's choice.
fn installed<'a>(p: &'a DataPlane, w: &serde_json::Value) -> Vec<&'a Flow> {
    let mut out: Vec<&Flow> = p.base.iter().collect();
    for d in &p.devices {
        let s = w["states"][&d.name]
            .as_str()
            .and_then(|name| d.states.iter().position(|s| s.name == name))
            .unwrap_or(0);
        out.extend(d.states[s].flows.iter());
    }
    let rank = |f: &Flow| {
        let text = f.to_ofctl();
        if w["flow"].as_str() == Some(text.as_str()) {
            0
        } else if w["path"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x.as_str() == Some(text.as_str())))
        {
            1
        } else {
            2
        }
    };
    out.sort_by_key(|f| rank(f));
    out
}

/// The witness really shows the finding, replayed by the interpreter.
fn replay(p: &DataPlane, d: &Diagnostic) -> Result<(), String> {
    let w = d
        .witness
        .as_ref()
        .ok_or_else(|| format!("{} has no witness", d.code))?;
    if w.get("expected_cookie").is_some() {
        return Ok(()); // a structural finding: no packet
    }
    let packet = packet_of(w);
    if d.code == codes::DATA_PLANE && w.get("flows").is_some() {
        // Two overlapping flows: the packet matches both.
        let fs: Vec<&str> = w["flows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        for text in fs {
            let f = p
                .base
                .iter()
                .chain(
                    p.devices
                        .iter()
                        .flat_map(|d| d.states.iter().flat_map(|s| &s.flows)),
                )
                .find(|f| f.to_ofctl() == text)
                .ok_or_else(|| format!("no flow `{text}`"))?;
            if !dataplane::matches(&f.matches, &packet) {
                return Err(format!("`{}` does not match `{text}`", w["trace"]));
            }
        }
        return Ok(());
    }
    let run = dataplane::run(&installed(p, w), &packet);
    let path: Vec<String> = run.path.iter().map(Flow::to_ofctl).collect();
    let want: Vec<String> = w["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    // The witness lists the winner of each table (several where flows tie).
    if path.iter().any(|f| !want.contains(f)) {
        return Err(format!(
            "`{}` takes {path:?}, the witness says {want:?}",
            w["trace"]
        ));
    }
    let flow = w["flow"].as_str().unwrap();
    if !path.iter().any(|f| f == flow) {
        return Err(format!("`{flow}` does not act on `{}`", w["trace"]));
    }
    if d.code == codes::DATA_PLANE {
        return Ok(());
    }
    let reached = match &w["reaches"] {
        serde_json::Value::String(s) if s == "NORMAL" => run.normal,
        v => run
            .outputs
            .contains(&u32::try_from(v.as_u64().unwrap()).unwrap()),
    };
    if reached {
        Ok(())
    } else {
        Err(format!(
            "`{}` does not reach {} (outputs {:?})",
            w["trace"], w["reaches"], run.outputs
        ))
    }
}

fn run_case(case: &Case) -> (String, Result<(), String>) {
    let checked = checked(FIXTURE);
    let mut model = checked.model.clone().unwrap();
    let original = plane_of(&model);
    if let Some(craft) = case.model {
        craft(&mut model);
    }
    let mut plane = plane_of(&model);
    if let Some(craft) = case.plane {
        craft(&mut plane);
    }
    let diags = dataplane::validate(&plane, &Z3Solver::new(10_000));
    let mut sorted = diags.clone();
    kalki_compiler::sort(&mut sorted);
    let mut snap = String::new();
    let _ = writeln!(snap, "// ---- crafted\n{}", case.what);
    let _ = writeln!(
        snap,
        "// ---- changed rule sets\n{}",
        diff(&original, &plane)
    );
    snap.push_str("// ---- diagnostics\n");
    snap.push_str(&kalki_compiler::render::human(
        &checked.sources,
        &sorted,
        false,
    ));
    let verdict = (|| {
        for d in &diags {
            check_spans(&checked.sources, d)?;
            if !d.labels.iter().any(|l| l.primary) {
                return Err(format!("{} has no primary label", d.code));
            }
            replay(&plane, d).map_err(|e| format!("{}: {e}", d.code))?;
        }
        let has = diags.iter().any(|d| d.code == case.code);
        match (case.near_miss, has) {
            (false, false) => Err(format!(
                "expected {}, got {:?}",
                case.code,
                codes_of(&diags)
            )),
            (true, _) if !diags.is_empty() => Err(format!(
                "a near miss must report nothing, got {:?}",
                codes_of(&diags)
            )),
            _ => Ok(()),
        }
    })();
    (filter_paths(&snap), verdict)
}

fn codes_of(diags: &[Diagnostic]) -> Vec<&'static str> {
    diags.iter().map(|d| d.code).collect()
}

#[test]
fn crafted_data_planes() {
    let mut failures = Vec::new();
    let all = cases();
    for case in &all {
        let (snap, verdict) = run_case(case);
        if let Err(why) = verdict {
            failures.push(format!("{}: {why}", case.name));
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            insta::with_settings!({
                snapshot_path => "snapshots/dataplane",
                prepend_module_to_snapshot => false,
                omit_expression => true,
                description => format!("dataplane::validate on {FIXTURE}, crafted"),
            }, {
                insta::assert_snapshot!(case.name, snap);
            });
        }));
        if outcome.is_err() {
            failures.push(format!("{}: snapshot differs", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        all.len(),
        failures.join("\n  ")
    );
}

/// Every finding of every case renders as `--format json` output that the documented
/// schema accepts (with the per-code witness shapes), and as valid SARIF.
#[test]
fn findings_match_the_output_schemas() {
    let load = |name: &str| -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/schemas")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let compile = |schema: &serde_json::Value| {
        jsonschema::options()
            .should_validate_formats(true)
            .build(schema)
            .unwrap()
    };
    let (json_schema, sarif_schema) = (
        compile(&load("diagnostics.schema.json")),
        compile(&load("sarif-2.1.0.json")),
    );
    let checked = checked(FIXTURE);
    let mut all = Vec::new();
    for case in cases().iter().filter(|c| !c.near_miss) {
        let mut model = checked.model.clone().unwrap();
        if let Some(craft) = case.model {
            craft(&mut model);
        }
        let mut plane = plane_of(&model);
        if let Some(craft) = case.plane {
            craft(&mut plane);
        }
        all.extend(dataplane::validate(&plane, &Z3Solver::new(10_000)));
    }
    let codes: BTreeSet<&str> = all.iter().map(|d| d.code).collect();
    assert_eq!(codes, [codes::DATA_PLANE, codes::FAIL_OPEN].into());
    let json = kalki_compiler::render::json(&checked.sources, &all);
    let errors: Vec<String> = json_schema
        .iter_errors(&json)
        .map(|e| format!("at `{}`: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let sarif = kalki_compiler::render::sarif(&checked.sources, &all);
    let errors: Vec<String> = sarif_schema
        .iter_errors(&sarif)
        .map(|e| format!("at `{}`: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // The rule list names both codes.
    let rules = sarif["runs"][0]["tool"]["driver"]["rules"].to_string();
    assert!(rules.contains("K208") && rules.contains("K212"), "{rules}");
}

/// K208 and K212 each have a triggering case and a near miss.
#[test]
fn every_code_has_a_case_and_a_near_miss() {
    for code in [codes::DATA_PLANE, codes::FAIL_OPEN] {
        for near in [false, true] {
            assert!(
                cases().iter().any(|c| c.code == code
                    && c.near_miss == near
                    && c.name.starts_with(&code.to_lowercase())),
                "{code}: no {} case",
                if near { "near-miss" } else { "triggering" }
            );
        }
    }
}

/// The fixture and the shipped examples that verify clean build, and validate with no
/// finding at all, without asking the solver anything.
#[test]
fn clean_policies_validate() {
    let mut built = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| PathBuf::from("examples").join(e.unwrap().file_name()))
        .collect();
    dirs.sort();
    dirs.push(PathBuf::from("tests/fixtures/dataplane"));
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(&dir))
            .unwrap()
            .map(|e| dir.join(e.unwrap().file_name()))
            .filter(|p| p.extension().is_some_and(|x| x == "kalki"))
            .collect();
        files.sort();
        let loader = FsLoader { base: repo_root() };
        let solver = Z3Solver::new(10_000);
        let (checked, _) =
            kalki_compiler::verify(&files, &loader, &solver, &verify::Options::default());
        if checked.diagnostics.iter().any(Diagnostic::is_error) {
            continue; // e.g. examples/kalki-lab, faithful to Kalki's defects
        }
        let model = checked.model.as_ref().unwrap();
        // Generated rule sets are proved by the sound shortcuts alone: a solver that
        // never decides leaves nothing undecided.
        let undecided = dataplane::validate(&plane_of(model), &Undecided);
        assert!(
            undecided.is_empty(),
            "{}: {:?}",
            dir.display(),
            codes_of(&undecided)
        );
        match bundle::build(model, &model.sites[0], &checked.sources, &solver) {
            Ok(_) => built.push(dir.display().to_string()),
            Err(diags) => panic!(
                "{}:\n{}",
                dir.display(),
                kalki_compiler::render::human(&checked.sources, &diags, false)
            ),
        }
    }
    assert!(
        built.len() >= 3,
        "expected the two clean examples and the fixture, built {built:?}"
    );
}

/// `bundle::build` runs the validator on the flows it generates, and a finding means no
/// bundle: two devices given one IP in the typed model (past K209) build nothing.
#[test]
fn build_refuses_what_the_validator_rejects() {
    let checked = checked(FIXTURE);
    let mut model = checked.model.clone().unwrap();
    let solver = Z3Solver::new(10_000);
    assert!(bundle::build(&model, &model.sites[0], &checked.sources, &solver).is_ok());
    let ip = model.sites[0].devices[0].net.as_ref().unwrap().ip;
    model.sites[0].devices[1].net.as_mut().unwrap().ip = ip;
    let Err(diags) = bundle::build(&model, &model.sites[0], &checked.sources, &solver) else {
        panic!("a bundle was built for two devices with one address");
    };
    assert!(
        !diags.is_empty() && diags.iter().all(|d| d.code == codes::DATA_PLANE),
        "{:?}",
        codes_of(&diags)
    );
}

/// Mutation test on a real example: every flow of every state set whose outputs are
/// redirected to the uplink (where they did not go, and the packet does not come from
/// it) opens a way around a chain, and each such mutant is caught.
#[test]
fn every_redirect_to_the_uplink_is_caught() {
    let checked = checked("examples/smart-office/office.kalki");
    let plane = plane_of(checked.model.as_ref().unwrap());
    let solver = Z3Solver::new(10_000);
    let u = plane.uplink;
    let mut mutants = 0;
    let mut survivors = Vec::new();
    for (d, dev) in plane.devices.iter().enumerate() {
        for (s, st) in dev.states.iter().enumerate() {
            for (i, f) in st.flows.iter().enumerate() {
                let from_uplink = f.matches.in_port == Some(u);
                let to_uplink = f.actions.contains(&Action::Output(u));
                if from_uplink || to_uplink {
                    continue;
                }
                let mut m = plane.clone();
                m.devices[d].states[s].flows[i].actions = vec![Action::Output(u)];
                mutants += 1;
                let diags = dataplane::validate(&m, &solver);
                if !diags.iter().any(|x| x.code == codes::FAIL_OPEN) {
                    survivors.push(format!("{} in {}: {}", dev.name, st.name, f.to_ofctl()));
                }
            }
        }
    }
    assert!(mutants > 20, "only {mutants} mutants");
    assert!(
        survivors.is_empty(),
        "not caught:\n{}",
        survivors.join("\n")
    );
}

/// A solver that never decides.
struct Undecided;

impl Solver for Undecided {
    fn solve(&self, _: &Query) -> Outcome {
        Outcome::Unknown("timeout".into())
    }
}

/// An undecided query is reported (K213), never taken as a proof: a plane whose safety
/// needs the solver does not validate clean without one.
#[test]
fn undecided_questions_are_errors() {
    let checked = checked(FIXTURE);
    let model = checked.model.clone().unwrap();
    let near_miss = cases()
        .into_iter()
        .find(|c| c.name == "k212_shadowed_bypass_near_miss")
        .unwrap();
    let mut plane = plane_of(&model);
    (near_miss.plane.unwrap())(&mut plane);
    assert!(dataplane::validate(&plane, &Z3Solver::new(10_000)).is_empty());
    let diags = dataplane::validate(&plane, &Undecided);
    assert!(
        !diags.is_empty() && diags.iter().all(|d| d.code == codes::INCONCLUSIVE),
        "{:?}",
        codes_of(&diags)
    );
    // Clean generated flows need no query at all: nothing to leave undecided.
    assert!(dataplane::validate(&plane_of(&model), &Undecided).is_empty());
}

/// K208 (1) is one finding per pair of devices, for each pair: a flow of one device that
/// takes the packets of every other device is reported for each of them (with four
/// devices, three findings), not only for the first one found.
#[test]
fn a_flow_acting_for_several_devices_is_reported_for_each() {
    let checked = checked("examples/smart-office/office.kalki");
    let mut plane = plane_of(checked.model.as_ref().unwrap());
    assert!(plane.devices.len() >= 3, "needs three devices or more");
    let owner = plane.devices[0].name.clone();
    let c = plane.devices[0].states[0].cookie;
    // Above every device's own flows, for every packet that table 0 lets through.
    plane.devices[0].states[0]
        .flows
        .push(flow(c, 200, Match::default(), vec![]));
    let diags = dataplane::validate(&plane, &Z3Solver::new(10_000));
    for d in &diags {
        replay(&plane, d).unwrap_or_else(|e| panic!("{}: {e}", d.code));
    }
    let victims: BTreeSet<String> = diags
        .iter()
        .filter_map(|d| {
            let w = d.witness.as_ref()?;
            (d.code == codes::DATA_PLANE && w["cookie_device"] == owner.as_str())
                .then(|| w["packet_of"].as_str().map(str::to_string))?
        })
        .collect();
    let others: BTreeSet<String> = plane.devices[1..].iter().map(|d| d.name.clone()).collect();
    assert_eq!(victims, others, "{:?}", codes_of(&diags));
}
