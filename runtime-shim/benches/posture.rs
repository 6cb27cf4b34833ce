//! Posture-change latency on a real Open vSwitch and Docker engine: from an event's
//! arrival to the device's new flows being committed on the switch, through the path
//! `kalki-shim run` takes for every input (engine validation, the journal's durable
//! append, the engine, the node's make-before-break change). Two cases, `CHANGES` each:
//!
//! - warm: the new state's µmboxes are already running (device `w`: both states share
//!   one instance), so the change is the OpenFlow bundle alone;
//! - cold: the new state needs a container started, plugged in and ready (device `c`,
//!   entering `watched`); its way back (to `pass`) is not timed;
//! - the same cold state with `--warm 1`: `watched`'s µmbox kept started beside `calm`.
//!
//! Under each backend, Docker and the OCI runtime.
//!
//! Then the time of one look at the node with every device's verdict (what each reconcile
//! check and each status request costs).
//!
//! Prints p50, p90, p99 and max. Needs root, OVS and Docker (`scripts/ovs/start.sh`,
//! `scripts/docker/start.sh`); results and method in `docs/benchmarks.md`.
//!
//! Run with `cargo bench -p kalki-shim --bench posture`; `KALKI_BENCH_CHANGES` overrides
//! the number of changes per case (default 200).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::live::{ensure_test_image, ok, sh};
use kalki_shim::bundle;
use kalki_shim::containers::Containers;
use kalki_shim::engine::{Config, Effect, Engine, Input};
use kalki_shim::journal::Journal;
use kalki_shim::node::{Node, NodeConfig, Posture};
use kalki_shim::run::now_ms;
use kalki_shim::{docker, oci};
use std::time::{Duration, Instant};

const BRIDGE: &str = "kt-bench";
const LINKS: [&str; 3] = ["ktb-up", "ktb-w", "ktb-c"];

fn cleanup() {
    sh(&format!(
        "ovs-vsctl --timeout=10 --if-exists del-br {BRIDGE}"
    ));
    sh("docker rm -f $(docker ps -aq --filter label=kalki.site=bench) 2>/dev/null");
    for l in LINKS {
        sh(&format!("ip link del dev {l} 2>/dev/null"));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: {} changes: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.9)),
        ms(percentile(&v, 0.99)),
        ms(*v.last().unwrap())
    );
}

/// One event through the run loop's path; the time from its arrival until the device's
/// new flows were committed.
async fn change(
    engine: &mut Engine,
    journal: &Journal,
    node: &Node,
    sha: &str,
    input: Input,
) -> Duration {
    let arrived = Instant::now();
    let t = now_ms().max(engine.now());
    engine.validate(t, &input).unwrap();
    journal.append_input(t, sha, &input).unwrap();
    let steps = engine.handle(t, &input).unwrap();
    let mut committed = None;
    for e in steps.iter().flat_map(|s| &s.effects) {
        if let Effect::StateChange { device, to, .. } = e {
            match node.change_posture(*device, *to).await.unwrap() {
                Posture::Changed { committed: at, .. } => committed = Some(at),
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }
    committed.unwrap_or_else(|| panic!("{input:?} changed nothing")) - arrived
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: only measure
    // when asked to.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let changes: usize = std::env::var("KALKI_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    ensure_test_image();
    cleanup();
    for l in LINKS {
        ok(&format!(
            "ip link add {l} type veth peer name {l}p && ip link set dev {l} up"
        ));
    }
    let tmp = common::TempDir::new("bench-posture");
    let dir = tmp.path().join("bundle");
    common::compile_dir("runtime-shim/benches/fixtures")
        .write_to(&dir)
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let b = bundle::load_dir(&dir).unwrap();
        let sha = b.manifest_sha256.clone();
        let alert = |d: &str| Input::Alert {
            device: d.into(),
            alert: "port_scan".into(),
            source: None,
        };
        let reset = |d: &str| Input::Operator {
            device: d.into(),
            action: "reset".into(),
        };
        for backend in ["docker", "oci"] {
            let containers = match backend {
                "docker" => Containers::Docker(
                    docker::Engine::connect("/var/run/docker.sock", Duration::from_secs(20))
                        .await
                        .unwrap(),
                ),
                _ => Containers::Oci(oci::Oci::new(oci::OciConfig {
                    runtime: "runc".into(),
                    state: tmp.path().join("oci"),
                    images: oci::DEFAULT_IMAGES.into(),
                    limit: Duration::from_secs(20),
                })),
            };
            // Without µmboxes kept warm, then with the next state's kept (`--warm 1`).
            for warm_budget in [0, 1] {
                let mut engine = Engine::new(&b, Config::default(), now_ms());
                let journal = Journal::open(&tmp.path().join("journal.db")).unwrap();
                let node = Node::new(
                    b.clone(),
                    containers.clone(),
                    NodeConfig {
                        warm: warm_budget,
                        ..NodeConfig::default()
                    },
                )
                .unwrap();
                let plan = node.plan(&[0, 0]).await.unwrap();
                node.execute(&plan).await.unwrap();
                let mut cold = Vec::new();
                for _ in 0..changes {
                    cold.push(change(&mut engine, &journal, &node, &sha, alert("c")).await);
                    change(&mut engine, &journal, &node, &sha, reset("c")).await;
                }
                if warm_budget == 0 {
                    let mut warm = Vec::new();
                    for i in 0..changes {
                        let input = if i % 2 == 0 { alert("w") } else { reset("w") };
                        warm.push(change(&mut engine, &journal, &node, &sha, input).await);
                    }
                    report(&format!("{backend}: warm (µmboxes running)"), warm);
                    report(&format!("{backend}: cold (a container to start)"), cold);
                } else {
                    report(
                        &format!("{backend}: cold state, --warm 1 (its µmbox kept started)"),
                        cold,
                    );
                }
                if backend == "docker" && warm_budget == 0 {
                    // One look at the node, as every reconcile check and every status
                    // request takes it (bridge, ports, one flow dump, containers,
                    // interfaces and their sysctls), and every device's verdict from it.
                    let mut looks = Vec::new();
                    for _ in 0..changes {
                        let t = Instant::now();
                        let obs = node.observe().await;
                        let states = engine.states();
                        for (d, &s) in states.iter().enumerate() {
                            node.check(&obs, d, kalki_shim::node::Target::State(s))
                                .unwrap();
                        }
                        looks.push(t.elapsed());
                    }
                    report("one look at the node and its verdicts", looks);
                }
                // The next round starts from an empty node.
                let site = &b.manifest.site;
                for c in containers.list("kalki.site", site).await.unwrap() {
                    containers.remove(&c.name).await.unwrap();
                }
            }
        }
    });
    cleanup();
}
