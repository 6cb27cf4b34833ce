//! The controller's load as a site grows: up to 100 nodes and 100,000 devices.
//!
//! A real three-member etcd 3.4 cluster on loopback (mutual TLS) and a real
//! `kalki-shim controller` on a generated site (`SIZES`: nodes × devices, devices spread
//! evenly over the nodes). The node agents are simulated: for every node the bench
//! registers `agents/NODE` on a lease and writes, for every device, the report a real
//! agent writes when it holds the device's posture (`status/NODE/DEVICE`: enforced, with
//! its crossing computed from the bundle, as the agent does). No switch is involved:
//! the figures are the controller's and etcd's.
//!
//! For each size: the time from the controller's start to its first answer (load the
//! bundle, follow the empty log, win the election, write every device's posture); the
//! time of a status (every agent and report read from etcd, every verdict); readings
//! posted one after the other (each moves one device, so each commits an input and a
//! posture): p50 and p99 and the rate; a standby's catch-up of that log; the leader's
//! resident memory.
//!
//! Needs etcd (`make services`). `cargo bench -p kalki-shim --bench cluster_load`;
//! `KALKI_BENCH_SIZES=10x1000,100x10000` chooses the sizes (default
//! `10x1000,100x10000,100x100000`); results in `docs/benchmarks.md`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::live::{percentile, Api};
use kalki_shim::cluster::store::{
    agent_key, encode, status_key, AgentValue, EtcdConfig, ReportedStatus, Store,
};
use kalki_shim::enforcement::{self, Enforcement};
use kalki_test_support::etcd::EtcdCluster;
use kalki_test_support::pki::Pki;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn policy(nodes: usize, devices: usize) -> String {
    let mut p = String::from(
        "device type Sensor {\n    sensed level: int in 0..100\n    states normal < suspicious < attack\n    initial normal\n    normal     { chain [pass] }\n    suspicious { chain [pass] }\n    attack     { chain [drop] }\n    normal     -> suspicious when level > 90\n    suspicious -> attack     when level > 98\n    suspicious -> normal     on operator reset\n    attack     -> normal     on operator reset\n}\n\nsite load {\n",
    );
    for n in 0..nodes {
        p.push_str(&format!(
            "    node n{n} {{ bridge \"kl{n}\" uplink \"kl{n}-up\" }}\n"
        ));
    }
    p.push_str("    unknown hosts drop\n");
    for d in 0..devices {
        let n = d % nodes;
        let ip = format!("10.{}.{}.{}", 100 + d / 65536, (d / 256) % 256, d % 256);
        p.push_str(&format!(
            "    device s{d}: Sensor at {ip} port \"p{d}\" node n{n}\n"
        ));
    }
    p.push_str("}\n");
    p
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn controller(
    dir: &Path,
    name: &str,
    bundle: &Path,
    api: &Api,
    etcd: &[String],
    pki: &Pki,
) -> (Proc, std::path::PathBuf) {
    let c = pki.client(name).unwrap();
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_kalki-shim"))
        .args([
            "controller",
            bundle.to_str().unwrap(),
            "--listen",
            &api.api,
            "--token-file",
            api.token.to_str().unwrap(),
            "--etcd",
            &etcd.join(","),
            "--etcd-ca",
            pki.ca_file().to_str().unwrap(),
            "--etcd-cert",
            c.cert.to_str().unwrap(),
            "--etcd-key",
            c.key.to_str().unwrap(),
            "--etcd-timeout",
            "30s",
            "--id",
            name,
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Proc(child), log)
}

/// The simulated agents: each node registered on a lease, every device reported
/// enforced in `normal`, as a real agent reports it. Written in transactions of 100.
async fn agents(store: &Store, bundle: &kalki_shim::bundle::Bundle, nodes: usize) -> i64 {
    let mut c = store.client();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    for n in 0..nodes {
        let v = AgentValue {
            id: format!("sim-n{n}"),
            bundle_sha256: String::new(),
            started_ms: kalki_shim::run::now_ms(),
        };
        c.put(
            store.key(&agent_key(&format!("n{n}"))),
            encode(&v),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    }
    let m = &bundle.manifest;
    let ops: Vec<etcd_client::TxnOp> = m
        .devices
        .iter()
        .enumerate()
        .map(|(d, dev)| {
            let crossing = enforcement::crossing(bundle, d, Some(0));
            let r = ReportedStatus {
                state: "normal".into(),
                enforcement: Enforcement::Enforced,
                umboxes: Vec::new(),
                crosses: Some(crossing.line),
                crossing: Some(crossing.cells),
                t_ms: kalki_shim::run::now_ms(),
            };
            etcd_client::TxnOp::put(
                store.key(&status_key(dev.node.as_deref().unwrap(), &dev.name)),
                encode(&r),
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
        })
        .collect();
    for chunk in ops.chunks(100) {
        c.txn(etcd_client::Txn::new().and_then(chunk.to_vec()))
            .await
            .unwrap();
    }
    lease
}

fn main() {
    use kalki_test_support as ts;
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !ts::require(&[ts::etcd()]) {
        return;
    }
    let sizes: Vec<(usize, usize)> = std::env::var("KALKI_BENCH_SIZES")
        .unwrap_or_else(|_| "10x1000,100x10000,100x100000".into())
        .split(',')
        .map(|s| {
            let (n, d) = s.split_once('x').unwrap();
            (n.parse().unwrap(), d.parse().unwrap())
        })
        .collect();
    let readings: usize = std::env::var("KALKI_BENCH_READINGS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("| nodes | devices | compile | start to first answer | status (bytes) | reading p50 / p99 | readings/s | standby catch-up | leader RSS |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (nodes, devices) in sizes {
        let tmp = ts::TempDir::new("bench-load").unwrap();
        let dir = tmp.path().to_path_buf();
        let pki = Pki::new(&dir.join("pki"), "kalki-bench-ca").unwrap();
        let etcd = EtcdCluster::start(&dir.join("etcd"), 3, pki.clone()).unwrap();
        let endpoints = etcd.endpoints();

        let t = Instant::now();
        let bundle_dir = dir.join("bundle");
        common::compile(&policy(nodes, devices))
            .write_to(&bundle_dir)
            .unwrap();
        let compile = t.elapsed();
        let bundle = kalki_shim::bundle::load_dir(&bundle_dir).unwrap();

        let reader = pki.client("bench").unwrap();
        let cfg = EtcdConfig {
            endpoints: endpoints.clone(),
            ca: pki.ca_file().to_path_buf(),
            cert: reader.cert.clone(),
            key: reader.key.clone(),
            timeout: Duration::from_secs(30),
        };
        let store = rt.block_on(Store::connect(&cfg, "load")).unwrap();
        rt.block_on(agents(&store, &bundle, nodes));

        std::fs::create_dir_all(dir.join("a")).unwrap();
        let api = Api::new(&dir.join("a"));
        let t = Instant::now();
        let (leader, _) = controller(&dir, "ctl-a", &bundle_dir, &api, &endpoints, &pki);
        while api.request("GET", "/v1/status", "").0 != 200 {
            assert!(
                t.elapsed() < Duration::from_secs(600),
                "the controller never answered: {}",
                std::fs::read_to_string(dir.join("ctl-a.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let start = t.elapsed();

        let t = Instant::now();
        let (code, bytes) = api.request("GET", "/v1/status", "");
        let status = t.elapsed();
        assert_eq!(code, 200);

        let mut times = Vec::new();
        let t_all = Instant::now();
        for i in 0..readings {
            let d = (i * 7919) % devices;
            let t = Instant::now();
            let (code, _) = api.request(
                "POST",
                &format!("/v1/devices/s{d}/readings"),
                r#"{"values": {"level": 95}}"#,
            );
            assert_eq!(code, 200, "reading {i}");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let rate = readings as f64 / t_all.elapsed().as_secs_f64();
        times.sort_by(f64::total_cmp);
        let rss = rss_mib(leader.0.id());

        // A standby reads the whole log and follows it.
        std::fs::create_dir_all(dir.join("b")).unwrap();
        let api_b = Api::new(&dir.join("b"));
        let t = Instant::now();
        let (_standby, log_b) = controller(&dir, "ctl-b", &bundle_dir, &api_b, &endpoints, &pki);
        let want = format!("{readings} inputs applied");
        while !std::fs::read_to_string(&log_b)
            .unwrap_or_default()
            .contains(&want)
        {
            assert!(
                t.elapsed() < Duration::from_secs(600),
                "the standby never caught up: {}",
                std::fs::read_to_string(&log_b).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let catch_up = t.elapsed();
        println!(
            "| {nodes} | {devices} | {:.1} s | {:.2} s | {:.0} ms ({:.1} MB) | {:.1} / {:.1} ms | {:.0} | {:.2} s | {:.0} MiB |",
            compile.as_secs_f64(),
            start.as_secs_f64(),
            status.as_secs_f64() * 1000.0,
            bytes as f64 / 1e6,
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            rate,
            catch_up.as_secs_f64(),
            rss
        );
        drop(leader);
        drop(etcd);
        if let Ok(keep) = std::env::var("KALKI_BENCH_KEEP_LOGS") {
            for name in ["ctl-a", "ctl-b"] {
                let _ = std::fs::copy(
                    dir.join(format!("{name}.log")),
                    Path::new(&keep).join(format!("{nodes}x{devices}-{name}.log")),
                );
            }
        }
    }
}
