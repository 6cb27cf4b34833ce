//! Event-to-flows latency on a site on two nodes against the same site on one node.
//!
//! Two nodes: a three-member etcd 3.4 cluster on loopback (mutual TLS, a CA made here), a
//! `kalki-shim controller` and two `kalki-shim agent`s, each on its own Open vSwitch
//! bridge. One node: `kalki-shim run` on one bridge with its journal. The same devices
//! and rules in both; states whose postures are flows alone (`pass`, `drop`), so the
//! time is the system's, not a container's start.
//!
//! Each change is an alert for `a` posted over HTTP (one connection per request, as a
//! client would). Under `run`, the answer comes once the new flows are committed, so the
//! time is the answer's. On two nodes, the answer means the input and its postures are
//! on a quorum of etcd; the flows are committed later, by the agent, which logs
//! `posture_changed` (JSON logs, microsecond timestamps): the time is from the post to
//! that line, for `a` (agent east) and for `b` (agent west, moved by a rule across
//! nodes). Then both are reset (not timed), and the next change comes after a pause
//! (`KALKI_BENCH_PACE_MS`, default 250) in both setups.
//!
//! Prints p50, p90, p99 and max. Needs root, OVS and etcd (`make services`); results
//! and method in `docs/benchmarks.md`. `KALKI_BENCH_CHANGES` sets the number of changes
//! (default 100), `KALKI_BENCH_PACE_MS` the pause between two (default 250; 0: back to
//! back).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::live::{ok, percentile, sh, Api};
use kalki_test_support::etcd::EtcdCluster;
use kalki_test_support::pki::Pki;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TYPES: &str = r#"
device type Toggle {
    alerts port_scan
    states calm < watched
    initial calm
    calm    { chain [pass] }
    watched { chain [drop] }
    calm    -> watched on port_scan
    watched -> calm    on operator reset
}
"#;

const TWO_NODES: &str = r#"
site bench {
    node east { bridge "kb-east" uplink "kb-up-e" }
    node west { bridge "kb-west" uplink "kb-up-w" }
    unknown hosts drop

    device a: Toggle at 10.79.0.10 port "kb-a" node east
    device b: Toggle at 10.79.0.11 port "kb-b" node west

    rule spread on a in watched then b -> watched
}
"#;

const ONE_NODE: &str = r#"
site bench {
    bridge "kb-one" uplink "kb-up-o"
    unknown hosts drop

    device a: Toggle at 10.79.0.10 port "kb-a"
    device b: Toggle at 10.79.0.11 port "kb-b"

    rule spread on a in watched then b -> watched
}
"#;

/// The pause between two changes (both setups): `KALKI_BENCH_PACE_MS`, default 250.
fn pace() -> Duration {
    Duration::from_millis(
        std::env::var("KALKI_BENCH_PACE_MS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(250),
    )
}

const BRIDGES: [&str; 3] = ["kb-east", "kb-west", "kb-one"];
const LINKS: [&str; 5] = ["kb-up-e", "kb-up-w", "kb-up-o", "kb-a", "kb-b"];

fn cleanup() {
    for b in BRIDGES {
        sh(&format!("ovs-vsctl --timeout=10 --if-exists del-br {b}"));
    }
    for l in LINKS {
        sh(&format!("ip link del dev {l} 2>/dev/null"));
    }
}

/// Every port a veth whose other end stays on the host, up: the switch sees a port.
fn links() {
    for l in LINKS {
        sh(&format!("ip link del dev {l} 2>/dev/null"));
        ok(&format!(
            "ip link add {l} type veth peer name {l}p && ip link set dev {l} up && ip link set dev {l}p up"
        ));
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn alert(api: &Api, device: &str) -> u16 {
    api.request(
        "POST",
        &format!("/v1/devices/{device}/alerts"),
        r#"{"alert": "port_scan"}"#,
    )
    .0
}

fn reset(api: &Api, device: &str) -> u16 {
    api.request("POST", &format!("/v1/devices/{device}/reset"), "{}")
        .0
}

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name}: {} changes: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 0.99),
        v.last().unwrap()
    );
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An agent's JSON log, read as it grows: the `posture_changed` lines.
struct AgentLog {
    path: PathBuf,
    read: usize,
}

impl AgentLog {
    /// Waits for `device`'s posture `state` in force; its time (Unix µs). Reads only
    /// what the log gained since the last line it took (polled every millisecond).
    fn wait(&mut self, device: &str, state: &str) -> u64 {
        use std::io::Seek;
        let start = Instant::now();
        loop {
            let mut new = String::new();
            if let Ok(mut f) = std::fs::File::open(&self.path) {
                let _ = f.seek(std::io::SeekFrom::Start(self.read as u64));
                let _ = f.read_to_string(&mut new);
            }
            // Complete lines only; a line being written is read again next time.
            for line in new.split_inclusive('\n').take_while(|l| l.ends_with('\n')) {
                self.read += line.len();
                // The JSON logs put the fields beside the message (`docs/runtime.md`).
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if v["event"] == "posture_changed" && v["device"] == device && v["state"] == state {
                    let ts: jiff::Timestamp = v["timestamp"].as_str().unwrap().parse().unwrap();
                    return ts.as_microsecond() as u64;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{device} never in {state}:\n{}",
                std::fs::read_to_string(&self.path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn spawn(dir: &Path, name: &str, args: &[String]) -> (Proc, PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kalki-shim"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    (Proc(child), log)
}

fn main() {
    use kalki_test_support as ts;
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !ts::require(&[ts::ovs(), ts::etcd(), (ts::root(), "root")]) {
        return;
    }
    let changes: usize = std::env::var("KALKI_BENCH_CHANGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    cleanup();
    links();
    let tmp = ts::TempDir::new("bench-cluster").unwrap();
    let dir = tmp.path().to_path_buf();

    // One node: `run`; the answer comes once the flows are committed.
    {
        let bundle = dir.join("one");
        common::compile(&format!("{TYPES}{ONE_NODE}"))
            .write_to(&bundle)
            .unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let api = Api::new(&dir.join("run"));
        let shim = api.start(&bundle, &dir.join("run/journal.db"), &[]);
        let mut times = Vec::new();
        for _ in 0..changes {
            std::thread::sleep(pace());
            let t0 = Instant::now();
            assert_eq!(alert(&api, "a"), 200);
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(reset(&api, "a"), 200);
            assert_eq!(reset(&api, "b"), 200);
        }
        report("one node (run): alert to flows of a and b", times);
        shim.kill();
        // Its ports are the nodes' ports next.
        ok("ovs-vsctl --timeout=10 --if-exists del-br kb-one");
    }

    // Two nodes: etcd, a controller, two agents.
    let pki = Pki::new(&dir.join("pki"), "kalki-bench-ca").unwrap();
    let etcd = EtcdCluster::start(&dir.join("etcd"), 3, pki.clone()).unwrap();
    let bundle = dir.join("two");
    common::compile(&format!("{TYPES}{TWO_NODES}"))
        .write_to(&bundle)
        .unwrap();
    let etcd_args = |cn: &str| -> Vec<String> {
        let c = pki.client(cn).unwrap();
        vec![
            "--etcd".into(),
            etcd.endpoints().join(","),
            "--etcd-ca".into(),
            pki.ca_file().display().to_string(),
            "--etcd-cert".into(),
            c.cert.display().to_string(),
            "--etcd-key".into(),
            c.key.display().to_string(),
            "--id".into(),
            cn.into(),
            "--log-format".into(),
            "json".into(),
        ]
    };
    std::fs::create_dir_all(dir.join("ctl")).unwrap();
    let api = Api::new(&dir.join("ctl"));
    let mut args = vec![
        "controller".to_string(),
        bundle.display().to_string(),
        "--listen".into(),
        api.api.clone(),
        "--token-file".into(),
        api.token.display().to_string(),
    ];
    args.extend(etcd_args("controller"));
    let (_controller, _) = spawn(&dir, "controller", &args);
    let mut agents = Vec::new();
    let mut logs = Vec::new();
    for node in ["east", "west"] {
        let mut args = vec![
            "agent".to_string(),
            bundle.display().to_string(),
            "--node".into(),
            node.into(),
            "--state-dir".into(),
            dir.join(format!("state-{node}")).display().to_string(),
        ];
        args.extend(etcd_args(&format!("agent-{node}")));
        let (p, log) = spawn(&dir, &format!("agent-{node}"), &args);
        agents.push(p);
        logs.push(AgentLog { path: log, read: 0 });
    }
    let start = Instant::now();
    while api.client(&["status"]).status.code() != Some(0) {
        if start.elapsed() > Duration::from_secs(60) {
            let logs: Vec<String> = ["controller", "agent-east", "agent-west"]
                .iter()
                .map(|n| std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default())
                .collect();
            panic!(
                "not every device enforced: {}\n{}",
                String::from_utf8_lossy(&api.client(&["status"]).stdout),
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut a_times, mut b_times, mut acks) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..changes {
        let t0 = now_us();
        assert_eq!(alert(&api, "a"), 200);
        let acked = now_us();
        let a = logs[0].wait("a", "watched");
        let b = logs[1].wait("b", "watched");
        acks.push((acked - t0) as f64 / 1000.0);
        a_times.push(a.saturating_sub(t0) as f64 / 1000.0);
        b_times.push(b.saturating_sub(t0) as f64 / 1000.0);
        assert_eq!(reset(&api, "a"), 200);
        logs[0].wait("a", "calm");
        assert_eq!(reset(&api, "b"), 200);
        logs[1].wait("b", "calm");
        // An agent looks at its node after each change (its report comes from a look,
        // never from memory); the next event comes once that look is done, so that
        // the time is the event's path and not a wait behind a look.
        std::thread::sleep(pace());
    }
    report("two nodes: alert answered (in etcd)", acks);
    report("two nodes: alert to a's flows (agent east)", a_times);
    report(
        "two nodes: alert to b's flows (agent west, by a rule)",
        b_times,
    );
    drop(agents);
    drop(etcd);
    cleanup();
}
