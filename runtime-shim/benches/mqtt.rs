//! MQTT into `kalki-shim run`, on a real mosquitto, Open vSwitch and Docker engine:
//!
//! - throughput: `KALKI_BENCH_MESSAGES` (default 2000) Tasmota readings published at
//!   QoS 1 as fast as the broker takes them, until the last is journaled: messages a
//!   second from the broker through decoding, the engine's validation, the journal's
//!   durable append (an fsync each) and the engine, acknowledged one by one;
//! - latency: `KALKI_BENCH_CHANGES` (default 200) times, a reading over the plug's
//!   threshold published, to the rule's `turn_off` received on `cmnd/plug_kitchen/POWER`:
//!   broker, shim, journal, engine, the posture change on the switch, the command
//!   journaled and published, broker again. An upper bound of publish-to-state-change.
//!
//! Prints p50, p90, p99 and max. Needs root, OVS, Docker and mosquitto
//! (`scripts/{ovs,docker,mosquitto}/start.sh`); results in `docs/benchmarks.md`. Run with
//! `make bench-mqtt` (`cargo bench -p kalki-shim --bench mqtt`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::live::{ok, sh, Api};
use common::TempDir;
use kalki_shim::engine::Input;
use kalki_shim::journal::Journal;
use kalki_test_support::mosquitto::{Broker, BrokerOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::path::Path;
use std::time::{Duration, Instant};

const BRIDGE: &str = "kt-mqbench";
const LINKS: [&str; 3] = ["ktmb-up", "ktmb-p0", "ktmb-p1"];
const SENSOR: &str = "tele/plug_kitchen/SENSOR";

fn cleanup() {
    sh(&format!(
        "ovs-vsctl --timeout=10 --if-exists del-br {BRIDGE}"
    ));
    for l in LINKS {
        sh(&format!("ip link del dev {l} 2>/dev/null"));
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn readings(journal: &Path) -> Vec<i64> {
    Journal::open(journal)
        .unwrap()
        .inputs()
        .unwrap()
        .into_iter()
        .filter_map(|i| match i.input {
            Input::Reading { values, .. } => values.get("power").and_then(|v| v.as_i64()),
            _ => None,
        })
        .collect()
}

fn percentiles(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{label}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        p(0.5).as_secs_f64() * 1e3,
        p(0.9).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
}

fn main() {
    if !kalki_test_support::require(&[
        kalki_test_support::mosquitto(),
        kalki_test_support::ovs(),
        kalki_test_support::docker(),
    ]) {
        return;
    }
    let messages = env_count("KALKI_BENCH_MESSAGES", 2000);
    let changes = env_count("KALKI_BENCH_CHANGES", 200);
    cleanup();
    for l in LINKS {
        ok(&format!(
            "ip link add {l} type veth peer name {l}p && ip link set dev {l} up"
        ));
    }
    let tmp = TempDir::new("mqtt-bench");
    let src = std::fs::read_to_string(
        common::repo_root().join("runtime-shim/tests/fixtures/mqtt/site.kalki"),
    )
    .unwrap()
    .replace("bridge \"kt-mqtt\"", &format!("bridge \"{BRIDGE}\""))
    .replace("\"ktm-", "\"ktmb-");
    let bundle = tmp.path().join("bundle");
    common::compile(&src).write_to(&bundle).unwrap();
    let broker = Broker::start(BrokerOptions::default()).unwrap();
    let journal = tmp.path().join("journal.db");
    let env = Api::new(tmp.path());
    let pw = broker.password_file().to_str().unwrap().to_string();
    let shim = env.start(
        &bundle,
        &journal,
        &[
            "--mqtt",
            &broker.url(),
            "--mqtt-username",
            broker.username(),
            "--mqtt-password-file",
            &pw,
        ],
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Two connections, one to publish and one to receive the commands: on one, the
        // broker's PUBACK of a reading would hold back the command behind it until the
        // bench's delayed TCP ACK (mosquitto leaves Nagle's algorithm on by default).
        let connect = |id: &str| {
            let mut o = MqttOptions::new(id, "127.0.0.1", broker.port());
            o.set_credentials(broker.username(), broker.password())
                .set_keep_alive(Duration::from_secs(30))
                .set_inflight(100);
            let (client, mut eventloop) = AsyncClient::new(o, 10_000);
            let mut net = rumqttc::NetworkOptions::new();
            net.set_tcp_nodelay(true);
            eventloop.set_network_options(net);
            (client, eventloop)
        };
        let (client, mut pub_loop) = connect("kalki-bench-pub");
        let (sub_client, mut sub_loop) = connect("kalki-bench-sub");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(16);
        tokio::spawn(async move {
            loop {
                if let Err(e) = pub_loop.poll().await {
                    panic!("bench publisher: {e}");
                }
            }
        });
        tokio::spawn(async move {
            loop {
                match sub_loop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        let _ = tx.send(Instant::now()).await;
                    }
                    Ok(_) => {}
                    Err(e) => panic!("bench subscriber: {e}"),
                }
            }
        });
        sub_client
            .subscribe("cmnd/plug_kitchen/POWER", QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Throughput: readings within bounds, no state change.
        // In bursts of 500: mosquitto queues at most 1000 messages for a client
        // (`max_queued_messages`) and drops QoS 1 messages beyond that while the client
        // has 20 unacknowledged (`max_inflight_messages`); a burst larger than the queue
        // would measure the broker's drops, not the shim.
        let already = readings(&journal).len();
        let t0 = Instant::now();
        let mut sent = 0;
        while sent < messages {
            let burst = (messages - sent).min(500);
            for i in sent..sent + burst {
                let p = 10 + (i % 1000);
                client
                    .publish(
                        SENSOR,
                        QoS::AtLeastOnce,
                        false,
                        format!(r#"{{"ENERGY":{{"Power":{p},"Current":0.052}}}}"#),
                    )
                    .await
                    .unwrap();
            }
            sent += burst;
            loop {
                let n = readings(&journal).len();
                if n >= already + sent {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(600),
                    "throughput run stuck at {} of {sent}",
                    n - already
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let took = t0.elapsed();
        println!(
            "throughput: {messages} QoS 1 readings broker -> journaled and applied in {:.2} s: {:.0} messages/s",
            took.as_secs_f64(),
            messages as f64 / took.as_secs_f64()
        );

        // Latency: a reading over the threshold to the rule's command.
        let low = 12;
        let mut lat = Vec::with_capacity(changes);
        for _ in 0..changes {
            client
                .publish(
                    SENSOR,
                    QoS::AtLeastOnce,
                    false,
                    format!(r#"{{"ENERGY":{{"Power":{low},"Current":0.052}}}}"#),
                )
                .await
                .unwrap();
            let start = Instant::now();
            while readings(&journal).last() != Some(&low) {
                assert!(start.elapsed() < Duration::from_secs(30));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            env.must(&["reset", "plug"]);
            while rx.try_recv().is_ok() {}
            let t = Instant::now();
            client
                .publish(
                    SENSOR,
                    QoS::AtLeastOnce,
                    false,
                    r#"{"ENERGY":{"Power":3000,"Current":0.052}}"#,
                )
                .await
                .unwrap();
            let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("no turn_off within 30 s")
                .unwrap();
            lat.push(got - t);
        }
        percentiles("publish -> state change -> turn_off received", lat);
    });
    shim.kill();
    cleanup();
}
