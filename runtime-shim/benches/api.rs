//! Event throughput of `kalki-shim run` through its API, measured with `wrk` on a real
//! node (Open vSwitch, the real µmbox image) with the journal on disk:
//!
//! - readings: `POST /v1/devices/w1/readings` at 8 and 64 connections (every accepted
//!   reading journaled before it is answered);
//! - warm posture changes: 8 and 64 devices, one connection each, alternating an alert
//!   (`calm -> watched`) and an operator reset (`watched -> calm`); both states share
//!   their µmbox, so each change is a flow swap. Changes counted in the journal.
//!
//! Requests/s, latency p50/p99 (wrk's), changes/s. `make bench-api`; `KALKI_BENCH_SECONDS`
//! (default 10) per run; `KALKI_BENCH_SHIM` another `kalki-shim` binary to measure (an
//! older build, side by side), `KALKI_BENCH_BACKEND` (`oci`, default, or `docker`, for
//! a binary without `--umbox-backend`). Results in docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::live::{ensure_test_image, ok, remove_oci_containers, sh, wait_for, Api};
use std::path::Path;
use std::time::Duration;

const BRIDGE: &str = "kt-api";
const UPLINK: &str = "kta-up";
const DEVICES: usize = 64;

fn policy() -> String {
    format!(
        r#"import std::umboxes::xmas_block

device type Warm {{
    sensed level: int in 0..100
    alerts port_scan
    states calm < watched
    initial calm
    calm    {{ chain [xmas_block] }}
    watched {{ chain [xmas_block] }}
    calm    -> watched on port_scan
    watched -> calm    on operator reset
}}

site apibench {{
    bridge "{BRIDGE}" uplink "{UPLINK}"
    unknown hosts drop
    device w[1..{DEVICES}]: Warm at 10.79.0.1.. mac 02:00:00:79:00:01.. port "ktaw{{n}}"
}}
"#
    )
}

fn links() -> Vec<String> {
    (1..=DEVICES)
        .map(|i| format!("ktaw{i}"))
        .chain([UPLINK.to_string()])
        .collect()
}

fn cleanup(oci: &Path) {
    sh(&format!(
        "ovs-vsctl --timeout=30 --if-exists del-br {BRIDGE}"
    ));
    sh("docker rm -f $(docker ps -aq --filter label=kalki.site=apibench) >/dev/null 2>&1");
    remove_oci_containers(oci);
    for l in links() {
        sh(&format!("ip link del dev {l} 2>/dev/null"));
    }
}

/// What wrk said: requests/s, p50 and p99 in ms, non-2xx answers.
struct Wrk {
    rps: f64,
    p50: f64,
    p99: f64,
    non_2xx: u64,
}

fn ms(text: &str) -> f64 {
    let t = text.trim();
    if let Some(v) = t.strip_suffix("us") {
        v.parse::<f64>().unwrap() / 1000.0
    } else if let Some(v) = t.strip_suffix("ms") {
        v.parse().unwrap()
    } else if let Some(v) = t.strip_suffix('s') {
        v.parse::<f64>().unwrap() * 1000.0
    } else {
        panic!("a latency: {t}")
    }
}

fn wrk(script: &Path, threads: usize, conns: usize, seconds: u64, url: &str) -> Wrk {
    let out = ok(&format!(
        "wrk -t{threads} -c{conns} -d{seconds}s --latency -s {} {url}",
        script.display()
    ));
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
            .map(String::from)
    };
    Wrk {
        rps: field("Requests/sec:").unwrap().parse().unwrap(),
        p50: ms(&field("50%").unwrap()),
        p99: ms(&field("99%").unwrap()),
        non_2xx: field("Non-2xx or 3xx responses:").map_or(0, |v| v.parse().unwrap()),
    }
}

fn changes(journal: &Path) -> u64 {
    let db = rusqlite::Connection::open(journal).unwrap();
    db.query_row("SELECT count(*) FROM changes", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    assert!(
        sh("command -v wrk").status.success(),
        "the API bench needs wrk (apt-get install wrk; make bench-api installs it)"
    );
    let seconds: u64 = std::env::var("KALKI_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let shim_bin = std::env::var("KALKI_BENCH_SHIM")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_kalki-shim").into());
    let backend = std::env::var("KALKI_BENCH_BACKEND").unwrap_or_else(|_| "oci".into());
    ensure_test_image();
    let tmp = common::TempDir::new("bench-api");
    let oci = tmp.path().join("oci");
    cleanup(&oci);
    for l in links() {
        ok(&format!(
            "ip link add {l} type veth peer name {l}x && ip link set dev {l} up"
        ));
    }
    let bundle = tmp.path().join("bundle");
    common::compile(&policy()).write_to(&bundle).unwrap();
    let journal = tmp.path().join("journal.db");
    let env = Api::new(tmp.path());
    let mut extra: Vec<String> = Vec::new();
    if backend == "oci" {
        extra.extend([
            "--umbox-backend".into(),
            "oci".into(),
            "--oci-state".into(),
            oci.to_str().unwrap().into(),
        ]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let _shim = env.start_binary(&shim_bin, &bundle, &journal, &extra);
    wait_for(Duration::from_secs(300), "every device enforced", || {
        env.client(&["status"]).status.code() == Some(0)
    });
    let token = std::fs::read_to_string(&env.token).unwrap();
    let base = format!("http://{}", env.api);

    // Readings.
    let readings = tmp.path().join("readings.lua");
    std::fs::write(
        &readings,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{{\"values\":{{\"level\":5}}}}'\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Authorization\"] = \"Bearer {}\"\n",
            token.trim()
        ),
    )
    .unwrap();
    for conns in [8, 64] {
        let w = wrk(
            &readings,
            conns.min(8),
            conns,
            seconds,
            &format!("{base}/v1/devices/w1/readings"),
        );
        println!(
            "readings, {conns} connections: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} refused",
            w.rps, w.p50, w.p99, w.non_2xx
        );
    }

    // Warm posture changes: a device per connection (one connection per wrk thread, each
    // thread its own Lua state and device), alternating alert and reset.
    let flips = tmp.path().join("changes.lua");
    std::fs::write(
        &flips,
        format!(
            r#"local counter = 1
function setup(thread)
  thread:set("device", "w" .. counter)
  counter = counter + 1
end
local n = 0
function request()
  n = n + 1
  local headers = {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {}"}}
  if n % 2 == 1 then
    return wrk.format("POST", "/v1/devices/" .. device .. "/alerts", headers, '{{"alert":"port_scan"}}')
  else
    return wrk.format("POST", "/v1/devices/" .. device .. "/reset", headers, '{{}}')
  end
end
"#,
            token.trim()
        ),
    )
    .unwrap();
    for conns in [8, 64] {
        let before = changes(&journal);
        let w = wrk(&flips, conns, conns, seconds, &base);
        let made = changes(&journal) - before;
        println!(
            "warm posture changes, {conns} devices: {:.0} requests/s, {:.0} changes/s, p50 {:.2} ms, p99 {:.2} ms, {} refused",
            w.rps,
            made as f64 / seconds as f64,
            w.p50,
            w.p99,
            w.non_2xx
        );
    }
    drop(_shim);
    cleanup(&oci);
}
