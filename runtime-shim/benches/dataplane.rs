//! The data plane: TCP throughput (iperf3, 5 s) from a device's network namespace to a
//! host behind the uplink, through the real switch (userspace datapath) and `kalki-shim
//! run`'s postures: a chain of no µmbox (`pass`), one inline µmbox (`xmas_block`) and two
//! (`xmas_block`, `ip_block`), against a bare veth pair between two namespaces. Each
//! µmbox is one more pass through the switch. Prints Gbit/s and the ratios to the
//! no-µmbox posture; results in docs/benchmarks.md ("The data plane").
//!
//! `make bench-dataplane`; `KALKI_BENCH_SECONDS` per measurement (default 5). Needs
//! root, OVS, Docker (images), iperf3.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::live::{ensure_test_image, ok, remove_oci_containers, sh, wait_for, Api, Background};
use std::time::Duration;

const BRIDGE: &str = "kt-dp";
const POLICY: &str = r#"import std::umboxes::{xmas_block, ip_block}

device type D {
    alerts one, two
    states none < one < two
    initial none
    none { chain [pass] }
    one  { chain [xmas_block] }
    two  { chain [xmas_block, ip_block(addresses = "192.0.2.0/24")] }
    none -> one on one
    one  -> two on two
    two  -> none on operator reset
}

site dp {
    bridge "kt-dp" uplink "kdp-up"
    unknown hosts drop
    device d: D at 10.88.0.10 mac 02:00:00:88:00:10 port "kdp-dev"
}
"#;

/// Namespace, host end, address, MAC.
const DEV: (&str, &str, &str, &str) = ("kdp-d", "kdp-dev", "10.88.0.10", "02:00:00:88:00:10");
const UP: (&str, &str, &str, &str) = ("kdp-u", "kdp-up", "10.88.0.1", "02:00:00:88:00:01");

fn cleanup(oci: &std::path::Path) {
    sh(&format!(
        "ovs-vsctl --timeout=30 --if-exists del-br {BRIDGE}"
    ));
    remove_oci_containers(oci);
    for (ns, port, ..) in [
        DEV,
        UP,
        ("kdp-va", "kdp-va0", "", ""),
        ("kdp-vb", "kdp-vb0", "", ""),
    ] {
        sh(&format!(
            "ip netns del {ns} 2>/dev/null; ip link del dev {port} 2>/dev/null"
        ));
    }
}

/// A namespace joined to the host by a veth pair: `port` on the host, `eth0` inside.
fn namespace((ns, port, ip, mac): (&str, &str, &str, &str)) {
    ok(&format!(
        "ip netns add {ns} && ip link add {port} type veth peer name eth0 netns {ns} && \
         ip -n {ns} link set dev eth0 address {mac} && ip -n {ns} addr add {ip}/24 dev eth0 && \
         ip -n {ns} link set dev eth0 up && ip -n {ns} link set dev lo up && \
         ip netns exec {ns} ethtool -K eth0 tx off >/dev/null && \
         ip link set dev {port} up && ethtool -K {port} tx off >/dev/null"
    ));
}

/// Gbit/s of an iperf3 run from `from` to `to_ip` (a server in `to`).
fn iperf(from: &str, to: &str, to_ip: &str, seconds: u64, tmp: &std::path::Path) -> f64 {
    let server = Background::start(
        &format!("ip netns exec {to} iperf3 -s -1 -B {to_ip}"),
        &tmp.join(format!("iperf-{to}.log")),
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = ok(&format!(
        "ip netns exec {from} iperf3 -c {to_ip} -t {seconds} -J"
    ));
    drop(server);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    assert!(
        sh("command -v iperf3").status.success(),
        "the data plane bench needs iperf3 (make bench-dataplane installs it)"
    );
    let seconds: u64 = std::env::var("KALKI_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    ensure_test_image();
    let tmp = common::TempDir::new("bench-dp");
    let oci = tmp.path().join("oci");
    cleanup(&oci);

    // A bare veth pair between two namespaces, transmit offload off as on the switch's
    // ports: the ceiling without any switch.
    ok("ip netns add kdp-va && ip netns add kdp-vb && \
        ip link add kdp-va0 netns kdp-va type veth peer name kdp-vb0 netns kdp-vb && \
        ip -n kdp-va addr add 10.89.0.1/24 dev kdp-va0 && ip -n kdp-vb addr add 10.89.0.2/24 dev kdp-vb0 && \
        ip -n kdp-va link set dev kdp-va0 up && ip -n kdp-vb link set dev kdp-vb0 up && \
        ip netns exec kdp-va ethtool -K kdp-va0 tx off >/dev/null && \
        ip netns exec kdp-vb ethtool -K kdp-vb0 tx off >/dev/null");
    let bare = iperf("kdp-va", "kdp-vb", "10.89.0.2", seconds, tmp.path());

    namespace(DEV);
    namespace(UP);
    for ((ns, ..), (_, _, ip, mac)) in [(DEV, UP), (UP, DEV)] {
        ok(&format!(
            "ip -n {ns} neigh replace {ip} lladdr {mac} dev eth0 nud permanent"
        ));
    }
    let bundle = tmp.path().join("bundle");
    common::compile(POLICY).write_to(&bundle).unwrap();
    let env = Api::new(tmp.path());
    let oci_args = [
        "--umbox-backend",
        "oci",
        "--oci-state",
        oci.to_str().unwrap(),
    ];
    let shim = env.start(&bundle, &tmp.path().join("journal.db"), &oci_args);
    let mut results = Vec::new();
    for (state, event) in [("none", None), ("one", Some("one")), ("two", Some("two"))] {
        if let Some(alert) = event {
            assert!(env.client(&["alert", "d", alert]).status.success());
        }
        wait_for(Duration::from_secs(60), "the posture enforced", || {
            let d = env.device("d");
            d["state"] == state && d["enforcement"]["verdict"] == "enforced"
        });
        results.push((state, iperf(DEV.0, UP.0, UP.2, seconds, tmp.path())));
    }
    drop(shim);
    println!("bare veth pair: {bare:.2} Gbit/s");
    let base = results[0].1;
    for (state, gbit) in &results {
        let umboxes = match *state {
            "none" => "no µmbox",
            "one" => "one inline µmbox",
            _ => "two inline µmboxes",
        };
        println!(
            "through the switch, {umboxes}: {gbit:.2} Gbit/s ({:.0}% of no µmbox, {:.0}% of the bare pair)",
            100.0 * gbit / base,
            100.0 * gbit / bare
        );
    }
    cleanup(&oci);
}
