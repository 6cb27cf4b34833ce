//! The live network of the end-to-end tests: one network namespace per device of
//! `tests/fixtures/e2e/site.kalki` and one for the uplink host, each joined to the
//! bridge by a veth pair whose host end is the port the site declares; the running
//! `kalki-shim run`, driven through its client subcommands; the µmboxes' counters; the
//! switch's flows; and a clean-up that removes all of it, at the start and on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use crate::common::live::{ok, sh};
pub use crate::common::live::{wait_for, Api, Shim};
use crate::common::TempDir;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const SITE: &str = "e2e";
pub const BRIDGE: &str = "kt-e2e";
pub const IMAGE: &str = "kalki/umbox:0.1";

/// A host on the test network: its namespace, the bridge port its veth's host end is,
/// its address and MAC (as the site declares them).
#[derive(Clone, Copy, Debug)]
pub struct Host {
    pub name: &'static str,
    pub ns: &'static str,
    pub port: &'static str,
    pub ip: &'static str,
    pub mac: &'static str,
}

pub const UPLINK: Host = Host {
    name: "uplink",
    ns: "ke-up",
    port: "ke-up",
    ip: "10.79.0.1",
    mac: "02:00:00:79:00:01",
};

/// The site's devices, in site order (device `i` is switch port `2 + i`).
pub const DEVICES: [Host; 4] = [
    Host {
        name: "cam",
        ns: "ke-cam",
        port: "ke-cam0",
        ip: "10.79.0.10",
        mac: "02:00:00:79:00:10",
    },
    Host {
        name: "light",
        ns: "ke-light",
        port: "ke-light0",
        ip: "10.79.0.11",
        mac: "02:00:00:79:00:11",
    },
    Host {
        name: "thermo",
        ns: "ke-thermo",
        port: "ke-thermo0",
        ip: "10.79.0.12",
        mac: "02:00:00:79:00:12",
    },
    Host {
        name: "meter",
        ns: "ke-meter",
        port: "ke-meter0",
        ip: "10.79.0.13",
        mac: "02:00:00:79:00:13",
    },
];

pub fn device(name: &str) -> Host {
    *DEVICES.iter().find(|d| d.name == name).unwrap()
}

/// The index of a device in site order.
pub fn device_index(name: &str) -> usize {
    DEVICES.iter().position(|d| d.name == name).unwrap()
}

/// Whether everything the tests need is here: root, `ip netns`, Open vSwitch, Docker
/// and the µmbox image. Without it the tests are skipped, but under CI=true that is a
/// failure.
pub fn ready() -> bool {
    if !crate::common::live::services_ready() {
        return false;
    }
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let root = sh("[ \"$(id -u)\" = 0 ] && ip netns list >/dev/null && command -v nc >/dev/null && command -v ping >/dev/null && command -v ethtool >/dev/null");
    let image = sh(&format!("docker image inspect {IMAGE} >/dev/null 2>&1"));
    for (ok, what) in [
        (
            root.status.success(),
            "root, `ip netns`, nc, ping and ethtool (scripts/ovs/start.sh installs the tools)",
        ),
        (
            image.status.success(),
            "the µmbox image kalki/umbox:0.1 (make images)",
        ),
    ] {
        if !ok {
            assert!(!ci, "missing under CI=true: {what}");
            eprintln!("skipped: missing {what}");
            return false;
        }
    }
    true
}

/// Removes everything the tests create: the site's containers, the bridge, the
/// namespaces and the veth pairs. Runs at the start and on drop (even after a failed
/// assertion). The shim process is ended by its own guard (`Shim`), dropped first.
pub struct Lab {
    pub tmp: TempDir,
    pub bundle: PathBuf,
}

pub fn clean() {
    sh(&format!(
        "docker rm -f $(docker ps -aq --filter label=kalki.site={SITE}) >/dev/null 2>&1"
    ));
    sh(&format!(
        "ovs-vsctl --timeout=10 --if-exists del-br {BRIDGE}"
    ));
    for h in std::iter::once(UPLINK).chain(DEVICES) {
        sh(&format!("ip netns del {} 2>/dev/null", h.ns));
        sh(&format!("ip link del dev {} 2>/dev/null", h.port));
    }
}

impl Lab {
    /// A clean slate, the namespaces wired up, and the bundle of the site compiled.
    pub fn new(name: &str) -> Lab {
        clean();
        let tmp = TempDir::new(name);
        let bundle = tmp.path().join("bundle");
        let lab = Lab { tmp, bundle };
        crate::common::compile_dir("runtime-shim/tests/fixtures/e2e")
            .write_to(&lab.bundle)
            .unwrap();
        for h in std::iter::once(UPLINK).chain(DEVICES) {
            plug(&h);
        }
        // Static ARP both ways: the pipeline bridges ARP outside the chains anyway, and
        // with fixed entries no ARP is in flight when a test counts packets.
        for d in DEVICES {
            ok(&format!(
                "ip -n {} neigh replace {} lladdr {} dev eth0 nud permanent",
                d.ns, UPLINK.ip, UPLINK.mac
            ));
            ok(&format!(
                "ip -n {} neigh replace {} lladdr {} dev eth0 nud permanent",
                UPLINK.ns, d.ip, d.mac
            ));
        }
        lab
    }

    pub fn journal(&self) -> PathBuf {
        self.tmp.path().join("journal.db")
    }

    /// The container name of a device's µmbox instance, from the bundle.
    pub fn container(&self, device: &str, umbox: &str) -> String {
        let dir = self.bundle.join("containers").join(device);
        for e in std::fs::read_dir(&dir).unwrap() {
            let v: Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            if v["name"].as_str().unwrap().ends_with(&format!("-{umbox}")) {
                return v["name"].as_str().unwrap().to_string();
            }
        }
        panic!("{device} has no µmbox {umbox} in {}", dir.display());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        clean();
    }
}

/// A namespace with one veth pair: `eth0` inside, the site's port name outside (not yet
/// on the bridge: the shim adds it). Offload off on both ends (the userspace datapath
/// needs it for TCP and UDP), IPv6 off so nothing but the test's traffic is sent.
fn plug(h: &Host) {
    ok(&format!("ip netns add {}", h.ns));
    ok(&format!(
        "ip link add {} type veth peer name eth0 netns {}",
        h.port, h.ns
    ));
    let ns = format!("ip netns exec {}", h.ns);
    ok(&format!(
        "{ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
         && {ns} ip link set dev eth0 address {} \
         && {ns} ip addr add {}/24 dev eth0 \
         && {ns} ip link set dev lo up \
         && {ns} ip link set dev eth0 up \
         && {ns} ethtool -K eth0 tx off >/dev/null",
        h.mac, h.ip
    ));
    ok(&format!(
        "sysctl -qw net.ipv6.conf.{p}.disable_ipv6=1; ip link set dev {p} up && ethtool -K {p} tx off >/dev/null",
        p = h.port
    ));
}

/// `count` pings from a namespace, 0.2 s apart, each waiting 1 s: how many came back.
pub fn ping(from: &Host, to: &str, count: u32) -> u32 {
    let out = sh(&format!(
        "ip netns exec {} ping -n -q -c {count} -i 0.2 -W 1 {to}",
        from.ns
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(',')
        .find_map(|part| part.trim().strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A real TCP connect scan from a device: `nc -z` over a port range of the uplink host.
pub fn port_scan(from: &Host, ports: &str) {
    sh(&format!(
        "ip netns exec {} timeout 30 nc -z -w1 {} {ports}",
        from.ns, UPLINK.ip
    ));
}

/// The µmbox's counters: SIGUSR1, then its newest stats line (from `docker logs`).
pub fn stats(container: &str) -> Value {
    let lines = || -> Vec<Value> {
        String::from_utf8_lossy(&sh(&format!("docker logs {container} 2>/dev/null")).stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["kalki"] == "stats")
            .collect()
    };
    let before = lines().len();
    ok(&format!("docker kill -s USR1 {container} >/dev/null"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = lines();
        if now.len() > before {
            return now[now.len() - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{container}: no stats line after SIGUSR1"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn counter(container: &str, field: &str) -> u64 {
    stats(container)[field].as_u64().unwrap()
}

impl Lab {
    /// Starts `kalki-shim run` on this lab's bundle and journal.
    pub fn start(&self, api: &Api) -> Shim {
        api.start(&self.bundle, &self.journal(), &["--ready-timeout", "30"])
    }
}

/// The cookie of a device's rule set in one state (`docs/design/openflow-pipeline.md` §3).
pub fn cookie(device: &str, state_index: u64) -> u64 {
    (2u64 << 56) | ((device_index(device) as u64 + 1) << 16) | state_index
}

/// Packets counted by the flows of one rule set (exact cookie) that send IPv4 from a
/// µmbox to the uplink: the exit of that set's chain. None while the set is not
/// installed.
pub fn chain_exit_packets(cookie: u64) -> Option<u64> {
    let out = sh(&format!(
        "ovs-ofctl -O OpenFlow15 dump-flows {BRIDGE} cookie={cookie:#x}/-1"
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = None;
    for line in text.lines() {
        if !line.trim_end().ends_with("actions=output:1") || line.contains("arp") {
            continue;
        }
        let n = line
            .split([',', ' '])
            .find_map(|f| f.trim().strip_prefix("n_packets="))
            .and_then(|n| n.parse::<u64>().ok())?;
        *found.get_or_insert(0) += n;
    }
    found
}

impl Lab {
    /// The host-side port name (`km<N>`) of one interface (`a`, `b`, `tap`) of a
    /// device's µmbox instance, from the bundle.
    pub fn umbox_port(&self, device: &str, umbox: &str, iface: &str) -> String {
        let dir = self.bundle.join("containers").join(device);
        for e in std::fs::read_dir(&dir).unwrap() {
            let v: Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            if v["name"].as_str().unwrap().ends_with(&format!("-{umbox}")) {
                for i in v["interfaces"].as_array().unwrap() {
                    if i["name"] == iface {
                        return i["port_name"].as_str().unwrap().to_string();
                    }
                }
            }
        }
        panic!("{device}: no interface {iface} of µmbox {umbox}");
    }
}

/// Frames the switch has sent into a host-side veth end (its `tx_packets`), None while
/// it does not exist. A read of sysfs: microseconds, unlike a flow dump.
pub fn tx_packets(port: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/class/net/{port}/statistics/tx_packets"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Samples a port's `tx_packets` about every millisecond on its own thread, keeping
/// each change with its time, until stopped.
pub struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Sampled>>,
}

/// The changes of a sampled counter, and the mean time between two samples.
pub struct Sampled {
    pub series: Vec<(Instant, Option<u64>)>,
    pub period: Duration,
}

impl Sampler {
    pub fn start(port: String) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: Vec<(Instant, Option<u64>)> = Vec::new();
            let (begun, mut samples) = (Instant::now(), 0u32);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                samples += 1;
                let v = tx_packets(&port);
                if seen.last().map(|s| s.1) != Some(v) {
                    seen.push((Instant::now(), v));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Sampled {
                series: seen,
                period: begun.elapsed() / samples.max(1),
            }
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> Sampled {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The value of a sampled series at time `t` (the last change at or before it).
fn value_at(series: &[(Instant, Option<u64>)], t: Instant) -> Option<u64> {
    match series.partition_point(|s| s.0 <= t) {
        0 => None,
        i => series[i - 1].1,
    }
}

/// Whether the series counts a stream (at least `n` frames within `w`) ending at `t`.
fn streaming(series: &[(Instant, Option<u64>)], t: Instant, w: Duration, n: u64) -> bool {
    match (
        value_at(series, t.checked_sub(w).unwrap_or(t)),
        value_at(series, t),
    ) {
        (Some(a), Some(b)) => b >= a + n,
        _ => false,
    }
}

/// When the stream into a port began within `[from, to)`: the first increase followed
/// by at least `n` more frames within `w` (a stray frame of the node's own, IPv6 on the
/// host end, is not a stream).
pub fn stream_start(
    series: &[(Instant, Option<u64>)],
    from: Instant,
    to: Instant,
    w: Duration,
    n: u64,
) -> Option<Instant> {
    series
        .iter()
        .enumerate()
        .filter(|(_, s)| s.0 >= from && s.0 < to)
        .find(|(i, s)| {
            let before = if *i == 0 { None } else { series[i - 1].1 };
            // A port that appears already counting rose from nothing.
            let rose = match (before, s.1) {
                (Some(a), Some(b)) => b > a,
                (None, Some(b)) => b > 0,
                _ => false,
            };
            rose && streaming(series, s.0 + w, w, n)
        })
        .map(|(_, s)| s.0)
}

/// When the stream into a port ended within `[from, to)`: the last increase that is
/// part of a stream (at least `n` frames within the `w` before it).
pub fn stream_end(
    series: &[(Instant, Option<u64>)],
    from: Instant,
    to: Instant,
    w: Duration,
    n: u64,
) -> Option<Instant> {
    series
        .iter()
        .filter(|s| s.0 >= from && s.0 < to && s.1.is_some())
        .rev()
        .find(|s| streaming(series, s.0, w, n))
        .map(|s| s.0)
}

/// Whether the switch holds a rule set (any flow under that exact cookie).
pub fn set_installed(cookie: u64) -> bool {
    let out = ok(&format!(
        "ovs-ofctl -O OpenFlow15 --no-stats dump-flows {BRIDGE} cookie={cookie:#x}/-1"
    ));
    out.lines().any(|l| l.contains("cookie="))
}
