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
//! Prints p50, p90, p99 and max.
//!
//! Soak (`KALKI_BENCH_SOAK_S`, `make soak-mqtt`): instead of the two above, readings at a
//! steady `KALKI_BENCH_RATE` (default 5000) a second, QoS 1, for that many seconds, the
//! shim's resident memory (`VmRSS` in `/proc/PID/status`) and the journal's size sampled
//! every `KALKI_BENCH_SAMPLE_S` (default 30) s; prints the series, the RSS at the start,
//! after `KALKI_BENCH_WARMUP_S` (default 60) s and at the end, its maximum, the journal's
//! growth per million readings, and the messages published, applied, refused and missing.
//! At 5000 a second the shim's queue at the broker (`max_queued_messages` 1000) holds
//! 0.2 s of readings: a shim that falls behind longer than that loses some, and the soak
//! says how many.
//!
//! Needs root, OVS, Docker and mosquitto
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// Publishes the `i`-th plug reading (power 10 to 1009 W), QoS 1.
async fn publish_reading(client: &AsyncClient, i: u64) {
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
    let soak_s = env_count("KALKI_BENCH_SOAK_S", 0);
    if soak_s > 0 {
        soak(&rt, &broker, &env, &shim, &journal, soak_s);
        shim.kill();
        cleanup();
        return;
    }
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
                publish_reading(&client, i as u64).await;
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

/// `VmRSS` and `VmHWM` (its peak) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The journal's database file and its write-ahead log, in bytes.
fn journal_bytes(journal: &Path) -> (u64, u64) {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = journal.as_os_str().to_owned();
    wal.push("-wal");
    (size(journal), size(Path::new(&wal)))
}

/// What the shim says of the messages: received, applied, refused (every code).
fn counts(env: &Api) -> (u64, u64, u64) {
    let m = &env.status().1["mqtt"];
    let n = |k: &str| m[k].as_u64().unwrap_or(0);
    let refused = m["refused"]
        .as_object()
        .map_or(0, |r| r.values().filter_map(|v| v.as_u64()).sum());
    (n("received"), n("applied"), refused)
}

struct Sample {
    t_s: f64,
    published: u64,
    received: u64,
    applied: u64,
    refused: u64,
    rss_kib: u64,
    hwm_kib: u64,
    db: u64,
    wal: u64,
}

impl Sample {
    fn take(t0: Instant, sent: &AtomicU64, env: &Api, pid: u32, journal: &Path) -> Sample {
        let published = sent.load(Ordering::Relaxed);
        let (received, applied, refused) = counts(env);
        let (rss_kib, hwm_kib) = memory_kib(pid);
        let (db, wal) = journal_bytes(journal);
        let s = Sample {
            t_s: t0.elapsed().as_secs_f64(),
            published,
            received,
            applied,
            refused,
            rss_kib,
            hwm_kib,
            db,
            wal,
        };
        println!(
            "soak: t={:>6.1} s published={:>9} received={:>9} applied={:>9} refused={} rss={} KiB (peak {} KiB) journal={:.1} MB + wal {:.1} MB",
            s.t_s,
            s.published,
            s.received,
            s.applied,
            s.refused,
            s.rss_kib,
            s.hwm_kib,
            s.db as f64 / 1e6,
            s.wal as f64 / 1e6
        );
        s
    }
}

/// Readings at a steady rate for `secs` seconds; the shim's memory and the journal's
/// size sampled meanwhile (see the module's comment).
fn soak(
    rt: &tokio::runtime::Runtime,
    broker: &Broker,
    env: &Api,
    shim: &common::live::Shim,
    journal: &Path,
    secs: usize,
) {
    let rate = env_count("KALKI_BENCH_RATE", 5000) as u64;
    let every = Duration::from_secs(env_count("KALKI_BENCH_SAMPLE_S", 30) as u64);
    let warmup = env_count("KALKI_BENCH_WARMUP_S", 60) as f64;
    let duration = Duration::from_secs(secs as u64);
    let pid = shim.pid();
    println!(
        "soak: {rate} QoS 1 readings/s for {secs} s, kalki-shim pid {pid}, sampled every {} s",
        every.as_secs()
    );
    let sent = Arc::new(AtomicU64::new(0));
    let mut o = MqttOptions::new("kalki-bench-soak", "127.0.0.1", broker.port());
    o.set_credentials(broker.username(), broker.password())
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(o, 10_000);
    rt.spawn(async move {
        loop {
            if let Err(e) = eventloop.poll().await {
                panic!("bench publisher: {e}");
            }
        }
    });
    let samples_start = Instant::now();
    let mut samples = vec![Sample::take(samples_start, &sent, env, pid, journal)];
    // Steady: every 10 ms, as many as bring the count to `rate` times the time elapsed.
    let publisher = {
        let sent = sent.clone();
        rt.spawn(async move {
            let t0 = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n: u64 = 0;
            while t0.elapsed() < duration {
                tick.tick().await;
                let due = (t0.elapsed().min(duration).as_secs_f64() * rate as f64) as u64;
                while n < due {
                    publish_reading(&client, n).await;
                    n += 1;
                    sent.store(n, Ordering::Relaxed);
                }
            }
            client
        })
    };
    let mut next = samples_start + every;
    while samples_start.elapsed() < duration {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += every;
        samples.push(Sample::take(samples_start, &sent, env, pid, journal));
    }
    let _client = rt.block_on(publisher).unwrap();
    // The last readings: every one published is applied or refused, or, after 60 s, the
    // rest are missing (dropped by the broker, or lost).
    let published = sent.load(Ordering::Relaxed);
    let settle = Instant::now();
    loop {
        let (_, applied, refused) = counts(env);
        if applied + refused >= published || settle.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    samples.push(Sample::take(samples_start, &sent, env, pid, journal));

    let first = &samples[0];
    let last = &samples[samples.len() - 1];
    let warm = samples.iter().find(|s| s.t_s >= warmup).unwrap_or(last);
    let max = samples.iter().map(|s| s.rss_kib).max().unwrap();
    println!(
        "soak: RSS start {} KiB, after warm-up (t={:.0} s) {} KiB, end {} KiB, max {} KiB, peak (VmHWM) {} KiB; end - warm-up {:+} KiB",
        first.rss_kib,
        warm.t_s,
        warm.rss_kib,
        last.rss_kib,
        max,
        last.hwm_kib,
        last.rss_kib as i64 - warm.rss_kib as i64
    );
    let grew = (last.db + last.wal).saturating_sub(first.db + first.wal);
    let applied = last.applied - first.applied;
    println!(
        "soak: journal {:.1} MB -> {:.1} MB (+ wal {:.1} MB): {:.1} MB per million readings",
        (first.db + first.wal) as f64 / 1e6,
        last.db as f64 / 1e6,
        last.wal as f64 / 1e6,
        if applied > 0 {
            grew as f64 / applied as f64
        } else {
            0.0
        }
    );
    println!(
        "soak: published {published}, received {}, applied {}, refused {}, missing {}",
        last.received - first.received,
        applied,
        last.refused - first.refused,
        published.saturating_sub(applied + last.refused - first.refused)
    );
}
