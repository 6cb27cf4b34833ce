//! Generated bundles on a real Open vSwitch (userspace datapath): every rule set loads,
//! one device's state swap is one OpenFlow bundle that leaves every other device's flows
//! byte-identical, and `ofproto/trace` shows each device in each state steered through its
//! chain, both ways, or dropped or passed as the state says.
//!
//! The expected paths are derived from `manifest.json` (ports with their roles, each
//! state's chain), not from the rule sets under test. `make test` starts OVS first
//! (`scripts/ovs/start.sh`); under `CI=true` a missing OVS fails the test instead of
//! skipping it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{code, kalkic, repo_root, TempDir};
use kalki_test_support::{must, run};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Seconds any OVS tool may wait for the daemons before giving up.
const TIMEOUT: &str = kalki_test_support::OVS_TIMEOUT;

/// Whether OVS answers. Without it the test is skipped locally and fails under CI.
fn ovs_ready() -> bool {
    kalki_test_support::require(&[kalki_test_support::ovs()])
}

/// A port's switch number as `ofproto/trace` reports outputs, or `LOCAL`.
type Out = String;

fn outs(ports: &[u32]) -> BTreeSet<Out> {
    ports.iter().map(u32::to_string).collect()
}

/// A test bridge, deleted when dropped. Port names are the test's own (`k<tag><ofport>`):
/// the site's names (`eth0`, ...) may exist on the host. Numbers are the bundle's.
struct Bridge {
    name: String,
    /// Datapath port number → OpenFlow port number (they differ in the userspace datapath).
    odp_to_of: BTreeMap<String, Out>,
}

impl Bridge {
    fn create(tag: &str, m: &Value) -> Bridge {
        let name = format!("kt-{tag}");
        let pass = m["unknown_hosts"] == "pass";
        let mut args: Vec<String> = [
            TIMEOUT,
            "--",
            "--if-exists",
            "del-br",
            &name,
            "--",
            "add-br",
            &name,
            "--",
            "set",
            "bridge",
            &name,
            "datapath_type=netdev",
            "fail_mode=secure",
            "protocols=OpenFlow15",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for p in ports(m) {
            let port = format!("k{tag}{}", p["ofport"]);
            args.extend(["--", "add-port", &name, &port].map(String::from));
            // With `unknown hosts pass`, NORMAL must never reach a managed port.
            if pass {
                args.push(
                    if p["role"] == "uplink" {
                        "trunks=0"
                    } else {
                        "tag=4094"
                    }
                    .into(),
                );
            }
            args.extend(
                [
                    "--",
                    "set",
                    "interface",
                    &port,
                    "type=internal",
                    &format!("ofport_request={}", p["ofport"]),
                ]
                .map(String::from),
            );
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        must("ovs-vsctl", &argv);
        let mut bridge = Bridge {
            name,
            odp_to_of: BTreeMap::new(),
        };
        // Every port got the number the bundle asked for.
        let show = bridge.ofctl(&["show"]);
        for p in ports(m) {
            let want = format!(" {}(k{tag}{}):", p["ofport"], p["ofport"]);
            assert!(
                show.contains(&want),
                "port {p} not numbered as asked:\n{show}"
            );
        }
        bridge.map_datapath_ports();
        bridge
    }

    fn ofctl(&self, args: &[&str]) -> String {
        // Options (`--bundle`, ...) first, then the command, the bridge and the rest.
        let mut argv = vec!["-O", "OpenFlow15", TIMEOUT];
        let opts = args.iter().take_while(|a| a.starts_with("--")).count();
        argv.extend(&args[..opts]);
        let (cmd, rest) = args[opts..].split_first().expect("a command");
        argv.push(cmd);
        argv.push(&self.name);
        argv.extend(rest);
        must("ovs-ofctl", &argv)
    }

    /// `dpif/show` lines under this bridge: `    kt0p1 1/3: (tap)` (OpenFlow/datapath).
    fn map_datapath_ports(&mut self) {
        let show = must("ovs-appctl", &[TIMEOUT, "dpif/show"]);
        let mut ours = false;
        for line in show.lines() {
            if line.starts_with("  ") && !line.starts_with("    ") {
                ours = line.trim().trim_end_matches(':') == self.name;
                continue;
            }
            let mut words = line.split_whitespace();
            if let (true, Some(_), Some(nums)) = (ours, words.next(), words.next()) {
                if let Some((of, odp)) = nums.trim_end_matches(':').split_once('/') {
                    let of = if of == "65534" { "LOCAL" } else { of };
                    self.odp_to_of.insert(odp.to_string(), of.to_string());
                }
            }
        }
        assert!(!self.odp_to_of.is_empty(), "no ports in dpif/show:\n{show}");
    }

    /// The OpenFlow ports a packet leaves by; empty for a drop.
    fn trace(&self, flow: &str) -> BTreeSet<Out> {
        let out = must("ovs-appctl", &[TIMEOUT, "ofproto/trace", &self.name, flow]);
        let actions = out
            .lines()
            .find_map(|l| l.strip_prefix("Datapath actions: "))
            .unwrap_or_else(|| panic!("no datapath actions for {flow}:\n{out}"));
        if actions == "drop" {
            return BTreeSet::new();
        }
        actions
            .split(',')
            .map(|odp| {
                self.odp_to_of
                    .get(odp)
                    .cloned()
                    .unwrap_or_else(|| panic!("datapath action `{odp}` for {flow}:\n{out}"))
            })
            .collect()
    }

    /// Every flow, without counters, one per line, sorted.
    fn flows(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .ofctl(&["--no-stats", "dump-flows"])
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    /// Replaces one device's table-1 rules by one state's set, atomically: one OpenFlow
    /// bundle that deletes by cookie and mask and adds the new set.
    fn install(&self, bundle: &Path, dev: &Value, state: &Value, mask: &str, tmp: &TempDir) {
        let cookie = state["switch"]["cookie"].as_str().expect("cookie");
        let rules =
            std::fs::read_to_string(bundle.join(state["switch"]["flows"].as_str().expect("flows")))
                .expect("rule set");
        let mut script = format!("delete cookie={cookie}/{mask}\n");
        for line in rules.lines() {
            script.push_str(&format!("add {line}\n"));
        }
        let file = tmp.write(
            &format!("{}-swap.ofctl", dev["name"].as_str().expect("name")),
            script,
        );
        self.ofctl(&["--bundle", "add-flows", file.to_str().expect("utf-8 path")]);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = run("ovs-vsctl", &[TIMEOUT, "--if-exists", "del-br", &self.name]);
    }
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex number")
}

/// The cookie of a `dump-flows` line (` cookie=0x..., priority=...`).
fn flow_cookie(line: &str) -> u64 {
    let c = line
        .split([' ', ','])
        .find_map(|w| w.strip_prefix("cookie="))
        .unwrap_or_else(|| panic!("no cookie in {line}"));
    hex(c)
}

fn ports(m: &Value) -> &Vec<Value> {
    m["ports"].as_array().expect("ports")
}

fn ofport(p: &Value) -> u32 {
    p["ofport"].as_u64().expect("ofport") as u32
}

/// One state's chain as its container manifests give it: tap ports, and inline (a, b)
/// pairs in chain order.
fn chain_ports(bundle: &Path, state: &Value) -> (Vec<u32>, Vec<(u32, u32)>) {
    let (mut taps, mut inline) = (Vec::new(), Vec::new());
    for path in state["switch"]["containers"]
        .as_array()
        .expect("containers")
    {
        let c: Value = serde_json::from_slice(
            &std::fs::read(bundle.join(path.as_str().expect("path"))).expect("container"),
        )
        .expect("container manifest");
        let side = |s: &str| {
            c["interfaces"]
                .as_array()
                .expect("interfaces")
                .iter()
                .find(|i| i["name"] == s)
                .map(ofport)
        };
        match (side("tap"), side("a"), side("b")) {
            (Some(t), None, None) => taps.push(t),
            (None, Some(a), Some(b)) => inline.push((a, b)),
            other => panic!("container {path} with ports {other:?}"),
        }
    }
    (taps, inline)
}

const PEER_IP: &str = "192.0.2.1";
const PEER_MAC: &str = "02:00:00:00:00:fe";
/// A device without a declared MAC may use any; the traces use this one.
const ANY_MAC: &str = "02:00:00:00:aa:01";

/// Loads the bundle built from `policy` into a fresh bridge and checks every device in
/// every state.
/// `kalkic build POLICY` into `TMP/bundle`: the directory and its manifest.
fn build(tmp: &TempDir, policy: &str) -> (std::path::PathBuf, Value) {
    let out = tmp.path().join("bundle");
    let built = kalkic(&["build", policy, "-o", out.to_str().expect("utf-8 path")]);
    assert_eq!(
        code(&built),
        0,
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let m = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("read"))
        .expect("manifest");
    (out, m)
}

fn check_on_switch(tag: &str, policy: &str) {
    if !ovs_ready() {
        return;
    }
    let tmp = TempDir::new(&format!("ovs-{tag}"));
    let (out, m) = build(&tmp, policy);
    let mask = m["cookies"]["device_mask"].as_str().expect("mask");
    let uplink = m["uplink"]["ofport"].as_u64().expect("uplink") as u32;
    let devices = m["devices"].as_array().expect("devices");

    let br = Bridge::create(tag, &m);
    br.ofctl(&[
        "add-flows",
        out.join("flows/base.ofctl").to_str().expect("path"),
    ]);
    for d in devices {
        let initial = d["states"]
            .as_array()
            .expect("states")
            .iter()
            .find(|s| s["name"] == d["initial"])
            .expect("initial state");
        br.install(&out, d, initial, mask, &tmp);
    }

    let mut checked = 0;
    for d in devices {
        let name = d["name"].as_str().expect("name");
        let dport = d["net"]["ofport"].as_u64().expect("ofport") as u32;
        let ip = d["net"]["ip"].as_str().expect("ip");
        let mac = d["net"]["mac"].as_str().unwrap_or(ANY_MAC);
        let from_dev = |port: u32| {
            format!(
                "in_port={port},dl_src={mac},dl_dst={PEER_MAC},icmp,nw_src={ip},nw_dst={PEER_IP}"
            )
        };
        let to_dev = |port: u32| {
            format!(
                "in_port={port},dl_src={PEER_MAC},dl_dst={mac},icmp,nw_src={PEER_IP},nw_dst={ip}"
            )
        };
        let arp_from = format!(
            "in_port={dport},dl_src={mac},dl_dst=ff:ff:ff:ff:ff:ff,arp,arp_op=1,arp_spa={ip},arp_tpa={PEER_IP},arp_sha={mac}"
        );
        let arp_to = format!(
            "in_port={uplink},dl_src={PEER_MAC},dl_dst=ff:ff:ff:ff:ff:ff,arp,arp_op=1,arp_spa={PEER_IP},arp_tpa={ip},arp_sha={PEER_MAC}"
        );
        for s in d["states"].as_array().expect("states") {
            let state = s["name"].as_str().expect("state");
            let device_bits = hex(s["switch"]["cookie"].as_str().expect("cookie")) & hex(mask);
            let others = |flows: Vec<String>| -> Vec<String> {
                flows
                    .into_iter()
                    .filter(|l| flow_cookie(l) & hex(mask) != device_bits)
                    .collect()
            };
            let before = others(br.flows());
            br.install(&out, d, s, mask, &tmp);
            assert_eq!(
                before,
                others(br.flows()),
                "moving {name} to {state} changed another device's flows"
            );
            let own = br.ofctl(&[
                "--no-stats",
                "dump-flows",
                &format!(
                    "cookie={}/-1",
                    s["switch"]["cookie"].as_str().expect("cookie")
                ),
            ]);
            let written =
                std::fs::read_to_string(out.join(s["switch"]["flows"].as_str().expect("flows")))
                    .expect("rule set");
            assert_eq!(
                own.lines().count(),
                written.lines().count(),
                "{name}/{state}: installed flows differ from the rule set:\n{own}"
            );

            let mut expect = |what: &str, flow: &str, want: BTreeSet<Out>| {
                let got = br.trace(flow);
                assert_eq!(got, want, "{name} in {state}: {what} ({flow})");
                checked += 1;
            };
            match &s["switch"]["chain"] {
                Value::String(b) if b == "drop" => {
                    expect("device IP", &from_dev(dport), outs(&[]));
                    expect("device ARP", &arp_from, outs(&[]));
                    expect("IP for the device", &to_dev(uplink), outs(&[]));
                    expect("ARP for the device", &arp_to, outs(&[]));
                }
                Value::String(b) if b == "pass" => {
                    expect("device IP", &from_dev(dport), outs(&[uplink]));
                    expect("device ARP", &arp_from, outs(&[uplink]));
                    expect("IP for the device", &to_dev(uplink), outs(&[dport]));
                    expect("ARP for the device", &arp_to, outs(&[dport]));
                }
                Value::Array(_) => {
                    let (taps, inline) = chain_ports(&out, s);
                    let first = inline.first().map_or(uplink, |(a, _)| *a);
                    let last = inline.last().map_or(dport, |(_, b)| *b);
                    let with_taps = |p: u32| outs(&[taps.as_slice(), &[p]].concat());
                    expect(
                        "device IP enters the chain",
                        &from_dev(dport),
                        with_taps(first),
                    );
                    expect(
                        "IP for the device enters the chain",
                        &to_dev(uplink),
                        with_taps(last),
                    );
                    for (i, (a, b)) in inline.iter().enumerate() {
                        let next = inline.get(i + 1).map_or(uplink, |n| n.0);
                        let prev = if i == 0 { dport } else { inline[i - 1].1 };
                        expect("out of a µmbox, onwards", &from_dev(*b), outs(&[next]));
                        expect("out of a µmbox, back", &to_dev(*a), outs(&[prev]));
                    }
                    expect("device ARP is bridged", &arp_from, outs(&[uplink]));
                    expect("ARP for the device is bridged", &arp_to, outs(&[dport]));
                }
                other => panic!("chain {other}"),
            }
            // Whatever the state: spoofed sources and VLAN tags never leave the port.
            let spoofed = format!(
                "in_port={dport},dl_src={mac},dl_dst={PEER_MAC},icmp,nw_src=198.51.100.66,nw_dst={PEER_IP}"
            );
            expect("spoofed source", &spoofed, outs(&[]));
            let tagged = format!(
                "in_port={dport},dl_src={mac},dl_dst={PEER_MAC},dl_vlan=7,icmp,nw_src={ip},nw_dst={PEER_IP}"
            );
            expect("VLAN-tagged frame", &tagged, outs(&[]));
        }
    }

    // Unknown hosts: the site's default, and never a managed port.
    let unknown = format!(
        "in_port={uplink},dl_src={PEER_MAC},dl_dst=02:00:00:00:00:77,icmp,nw_src={PEER_IP},nw_dst=198.51.100.7"
    );
    let got = br.trace(&unknown);
    if m["unknown_hosts"] == "pass" {
        assert_eq!(
            got,
            BTreeSet::from(["LOCAL".to_string()]),
            "unknown host, passed"
        );
    } else {
        assert_eq!(got, BTreeSet::new(), "unknown host, dropped");
    }
    assert!(checked > 0, "no trace checked");
    eprintln!("{tag}: {checked} traces as the policy says");
}

fn example(path: &str) -> String {
    repo_root().join(path).to_string_lossy().into_owned()
}

#[test]
fn smart_office_behaves_on_open_vswitch() {
    check_on_switch("so", &example("examples/smart-office"));
}

#[test]
fn kalki_lab_behaves_on_open_vswitch() {
    check_on_switch("lab", &example("examples/kalki-lab-corrected"));
}

/// `unknown hosts pass`, a `pass` state, a tap-only chain, a device without a MAC and
/// inline µmboxes back to back: the cases the examples do not reach.
#[test]
fn pass_states_and_unknown_hosts_behave_on_open_vswitch() {
    check_on_switch("ol", &example("compiler/tests/fixtures/ovs/open-lab.kalki"));
}

/// A refuted traffic assertion (K215) is confirmed on a real bridge: the bundle of the
/// same site (without the assertion, which stops the build) is loaded, the device is put
/// in the state the witness names, and every hop of the witness, traced with
/// `ofproto/trace` as the finding prints it, leaves by the ports the verifier said. The
/// last hop leaves by the device's port: the switch delivers the packet.
#[test]
fn a_refuted_traffic_assertion_is_confirmed_by_ofproto_trace() {
    if !ovs_ready() {
        return;
    }
    let tmp = TempDir::new("ovs-k215");
    let fixture = repo_root().join("tests/fixtures/verify/k215_telnet_reaches_plug.kalki");
    let verified = kalkic(&[
        "verify",
        "--format",
        "json",
        fixture.to_str().expect("path"),
    ]);
    let report: Value = serde_json::from_slice(&verified.stdout).expect("json report");
    let finding = report["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .find(|d| d["code"] == "K215")
        .unwrap_or_else(|| panic!("no K215 in {report}"));
    let traffic = &finding["witness"]["traffic"];
    let hops = traffic["hops"].as_array().expect("hops");
    assert!(
        hops.len() >= 2,
        "a hop through the µmbox and one to the device: {traffic}"
    );

    let source = std::fs::read_to_string(&fixture).expect("fixture");
    let without: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("assert "))
        .map(|l| format!("{l}\n"))
        .collect();
    let policy = tmp.write("site.kalki", without);
    let (out, m) = build(&tmp, policy.to_str().expect("path"));
    let mask = m["cookies"]["device_mask"].as_str().expect("mask");
    let br = Bridge::create("k215", &m);
    br.ofctl(&[
        "add-flows",
        out.join("flows/base.ofctl").to_str().expect("path"),
    ]);
    let dev = &m["devices"][0];
    let state = dev["states"]
        .as_array()
        .expect("states")
        .iter()
        .find(|s| s["name"] == traffic["state"])
        .unwrap_or_else(|| panic!("no state {} in the bundle", traffic["state"]));
    br.install(&out, dev, state, mask, &tmp);
    for hop in hops {
        let want: BTreeSet<Out> = hop["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .map(|p| p.as_u64().expect("port").to_string())
            .collect();
        let flow = hop["trace"].as_str().expect("trace");
        assert_eq!(br.trace(flow), want, "hop {flow}");
    }
    let last = hops.last().expect("a hop");
    assert!(
        last["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .any(|p| p == &dev["net"]["ofport"]),
        "the last hop reaches the device: {traffic}"
    );
}
