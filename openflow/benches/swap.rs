//! Latency of one device posture change on a real Open vSwitch bridge: smart-office's
//! `hall_cam` moved normal ↔ suspicious (delete by cookie and mask, then 6 or 8 adds,
//! one atomic bundle), from the call to the committed flows.
//!
//! - `client`: over one persistent [`kalki_openflow::Client`] connection, rule sets parsed
//!   beforehand (as the runtime holds them);
//! - `ovs-ofctl`: spawning `ovs-ofctl -O OpenFlow15 --bundle add-flows BR -` with the
//!   same script on stdin, as the runtime did before.
//!
//! First a percentile pass (`KALKI_BENCH_SWAPS` swaps each way, default 300), printed as
//! p50/p90/p99/max, then criterion's own measurement. Needs OVS running
//! (`scripts/ovs/start.sh`); without it the bench says so and measures nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{ovs_ready, Bridge, Bundle, State};
use criterion::Criterion;
use kalki_openflow::Client;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

const TIMEOUT: Duration = Duration::from_secs(10);

fn script(s: &State, mask: u64) -> String {
    let mut out = format!("delete cookie={:#x}/{mask:#x}\n", s.cookie);
    for line in s.text.lines() {
        out.push_str(&format!("add {line}\n"));
    }
    out
}

fn ofctl_swap(bridge: &str, script: &str) {
    let mut child = Command::new("ovs-ofctl")
        .args([
            "-O",
            "OpenFlow15",
            "--timeout=10",
            "--bundle",
            "add-flows",
            bridge,
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "swap/{name:<10} n={:<4} p50 {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.90)),
        ms(percentile(&samples, 0.99)),
        ms(samples[samples.len() - 1]),
    );
}

struct Setup {
    rt: Runtime,
    bridge: Bridge,
    client: Client,
    states: [State; 2],
    mask: u64,
}

fn setup() -> Option<Setup> {
    if !ovs_ready() {
        return None;
    }
    let b = Bundle::load("examples/smart-office");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bridge = Bridge::create("bench");
    let client = rt.block_on(async {
        let mut c = Client::connect(bridge.socket(), TIMEOUT).await.unwrap();
        c.add(&b.base).await.unwrap();
        for s in b.initial() {
            c.swap(s.cookie, b.device_mask, &s.flows).await.unwrap();
        }
        c
    });
    let states = [
        b.state("hall_cam", "normal").clone(),
        b.state("hall_cam", "suspicious").clone(),
    ];
    Some(Setup {
        rt,
        bridge,
        client,
        states,
        mask: b.device_mask,
    })
}

fn percentiles(s: &mut Setup) {
    let n: usize = std::env::var("KALKI_BENCH_SWAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut ours = Vec::with_capacity(n);
    for i in 0..n {
        let to = &s.states[(i + 1) % 2];
        let start = Instant::now();
        s.rt.block_on(s.client.swap(to.cookie, s.mask, &to.flows))
            .unwrap();
        ours.push(start.elapsed());
    }
    let scripts = [script(&s.states[0], s.mask), script(&s.states[1], s.mask)];
    let mut theirs = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        ofctl_swap(&s.bridge.name, &scripts[(i + 1) % 2]);
        theirs.push(start.elapsed());
    }
    report("client", ours);
    report("ovs-ofctl", theirs);
}

fn main() {
    let Some(mut s) = setup() else {
        return;
    };
    percentiles(&mut s);

    let mut c = Criterion::default()
        .sample_size(50)
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    let mut g = c.benchmark_group("swap");
    let mut i = 0usize;
    g.bench_function("client", |b| {
        b.iter(|| {
            i += 1;
            let to = &s.states[i % 2];
            s.rt.block_on(s.client.swap(to.cookie, s.mask, &to.flows))
                .unwrap();
        })
    });
    let scripts = [script(&s.states[0], s.mask), script(&s.states[1], s.mask)];
    g.bench_function("ovs-ofctl", |b| {
        b.iter(|| {
            i += 1;
            ofctl_swap(&s.bridge.name, &scripts[i % 2]);
        })
    });
    g.finish();
    c.final_summary();
}
