//! The live network of the end-to-end tests: one network namespace per device of
//! `tests/fixtures/e2e/site.kalki` and one for the uplink host, each joined to the
//! bridge by a veth pair whose host end is the port the site declares; the running
//! `kalki-shim run`, driven through its client subcommands; the µmboxes' counters; the
//! switch's flows; and a clean-up that removes all of it, at the start and on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use crate::common::live::{assert_bridge_holds, ok, sh, Background};
pub use crate::common::live::{wait_for, Api, Shim};
use crate::common::TempDir;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
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

/// The lab exists once per machine (its bridge, namespaces and containers have fixed
/// names), so one test at a time may use it, across processes too: `e2e` and `faults`
/// run at the same time (two `cargo test` runs) would tear down each other's network.
/// Held as a Unix socket bound in the abstract namespace, which the kernel releases
/// when the process ends, however it ends; whoever comes second waits.
pub struct Exclusive {
    _socket: std::os::unix::net::UnixListener,
}

pub fn exclusive() -> Exclusive {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"kalki-e2e-lab").unwrap();
    let start = Instant::now();
    let mut said = false;
    loop {
        match std::os::unix::net::UnixListener::bind_addr(&addr) {
            Ok(socket) => return Exclusive { _socket: socket },
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if !said {
                    eprintln!("waiting for another test using the e2e lab");
                    said = true;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(1800),
                    "the e2e lab stayed busy for 30 minutes"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("the e2e lab's lock: {e}"),
        }
    }
}

/// Whether everything the tests need is here: root, `ip netns`, Open vSwitch, Docker
/// and the µmbox image. Without it the tests are skipped, but under CI=true that is a
/// failure.
pub fn ready() -> bool {
    use kalki_test_support as ts;
    ts::require(&[
        ts::ovs(),
        ts::docker(),
        (
            ts::root() && sh("ip netns list >/dev/null").status.success(),
            "root and `ip netns`",
        ),
        (
            ts::tools(&["nc", "ping", "ethtool", "tcpdump"]),
            "nc, ping, ethtool and tcpdump (scripts/ovs/start.sh installs the tools)",
        ),
        (
            ts::image_present(IMAGE),
            "the µmbox image kalki/umbox:0.1 (make images)",
        ),
    ])
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
    sh(&format!("ip link del dev {NODE_LINK} 2>/dev/null"));
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
/// needs it for TCP and UDP), IPv6 off inside so the device sends nothing but the
/// test's traffic.
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
    // The host end is left as the kernel makes it (IPv6 on): turning the node's own
    // stack off on the ports it manages is the shim's job, and tests/faults.rs checks it.
    ok(&format!(
        "ip link set dev {p} up && ethtool -K {p} tx off >/dev/null",
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

// ---------------------------------------------------------------------------------------
// The node as it really is, and whether the shim's status says no more than that
// (`tests/faults.rs`; docs/e2e.md, "Faults").

/// An interface of the node's (root namespace; a veth pair, as the kernel here may lack
/// the dummy driver) that the fault tests give an address, so that a device can try to
/// reach the node's own IPv4 stack.
pub const NODE_LINK: &str = "ke-node";
pub const NODE_IP: &str = "10.79.255.1";

/// Every device, by name, in site order.
pub const ALL: [&str; 4] = ["cam", "light", "thermo", "meter"];

/// A device's entry in a status report.
pub fn entry<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["devices"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["name"] == name))
        .unwrap_or_else(|| panic!("no device `{name}` in the status: {status}"))
}

/// A device's enforcement verdict in a status report (`""` when there is none).
pub fn verdict<'a>(status: &'a Value, name: &str) -> &'a str {
    entry(status, name)["enforcement"]["verdict"]
        .as_str()
        .unwrap_or("")
}

/// The exit code `kalki-shim status` owes a report: 0 every device enforced, 3 one not
/// enforced, 4 none not enforced but one failed closed.
pub fn exit_for(status: &Value) -> i32 {
    let v: Vec<&str> = ALL.iter().map(|n| verdict(status, n)).collect();
    if v.iter().all(|v| *v == "enforced") {
        0
    } else if v.contains(&"failed_closed")
        && !v.iter().any(|v| *v != "enforced" && *v != "failed_closed")
    {
        4
    } else {
        3
    }
}

fn hex(v: &Value) -> u64 {
    let s = v.as_str().unwrap();
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// The cookie of a flow in `ovs-ofctl` output (0 when it has none).
fn cookie_of(line: &str) -> u64 {
    line.split([' ', ','])
        .find_map(|f| f.trim().strip_prefix("cookie="))
        .and_then(|c| u64::from_str_radix(c.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

/// One bridge port as Open vSwitch sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortSeen {
    ofport: i64,
    ifindex: i64,
    link_state: String,
}

/// The node as it is, looked at directly, never through the shim: the switch's flows
/// (`dump-flows --no-stats`, compared with `ovs-ofctl diff-flows` later), the bridge's
/// ports and the site's running containers. `None`: that part could not be read (the
/// switch or the engine is down), which never counts as in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    flows: Option<String>,
    ports: Option<BTreeMap<String, PortSeen>>,
    running: Option<BTreeSet<String>>,
}

static LOOKS: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// The bundle's manifest.
    pub fn manifest(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.bundle.join("manifest.json")).unwrap()).unwrap()
    }

    fn container_manifest(&self, path: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.bundle.join(path)).unwrap()).unwrap()
    }

    /// A device's state in the manifest, by name.
    fn state_of(&self, m: &Value, device: &str, state: &str) -> Value {
        let d = m["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == device)
            .unwrap();
        d["states"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == state)
            .unwrap_or_else(|| panic!("`{device}` has no state `{state}`"))
            .clone()
    }

    pub fn look(&self) -> Look {
        let dump = sh(&format!(
            "ovs-ofctl -O OpenFlow15 --timeout=5 --no-stats dump-flows {BRIDGE}"
        ));
        let flows = dump
            .status
            .success()
            .then(|| String::from_utf8_lossy(&dump.stdout).into_owned());
        let listed = sh(&format!("ovs-vsctl --timeout=5 list-ports {BRIDGE}"));
        let table = sh("ovs-vsctl --timeout=5 -f csv --no-headings --columns=name,ofport,ifindex,link_state list Interface");
        let ports = (listed.status.success() && table.status.success()).then(|| {
            let on_bridge: BTreeSet<String> = String::from_utf8_lossy(&listed.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .collect();
            String::from_utf8_lossy(&table.stdout)
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(',').map(|f| f.trim_matches('"')).collect();
                    let seen = PortSeen {
                        ofport: f.get(1)?.parse().unwrap_or(-1),
                        ifindex: f.get(2)?.parse().unwrap_or(0),
                        link_state: f.get(3)?.to_string(),
                    };
                    on_bridge.contains(f[0]).then(|| (f[0].to_string(), seen))
                })
                .collect()
        });
        let ps = sh(&format!(
            "timeout 10 docker ps --filter label=kalki.site={SITE} --format '{{{{.Names}}}}'"
        ));
        let running = ps.status.success().then(|| {
            String::from_utf8_lossy(&ps.stdout)
                .lines()
                .map(String::from)
                .collect()
        });
        Look {
            flows,
            ports,
            running,
        }
    }

    /// Whether a port is on the bridge with the OpenFlow number the bundle gives it, and
    /// is the kernel's interface of that name, up.
    fn port_problem(look: &Look, name: &str, ofport: i64) -> Option<String> {
        let Some(ports) = &look.ports else {
            return Some("the bridge's ports cannot be read".into());
        };
        let Some(p) = ports.get(name) else {
            return Some(format!("port `{name}` is not on the bridge"));
        };
        let kernel: i64 = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if p.ofport != ofport {
            Some(format!(
                "port `{name}` has OpenFlow number {}, not {ofport}",
                p.ofport
            ))
        } else if kernel == 0 || p.ifindex != kernel {
            Some(format!(
                "port `{name}`: the switch holds interface index {}, the kernel's is {kernel}",
                p.ifindex
            ))
        } else if p.link_state != "up" {
            Some(format!("port `{name}` is {}", p.link_state))
        } else {
            None
        }
    }

    /// What is wrong, on this look, with each device's status: a device claimed
    /// `enforced` needs the base flows, exactly its state's set, no stray flow, its port
    /// and the uplink on the bridge, and its state's µmboxes running with their ports;
    /// one claimed `failed_closed` needs exactly the set it names installed (or none of
    /// its flows), and that state's µmboxes; `not_enforced` claims nothing (it needs a
    /// reason); a device without a verdict is a problem, described with what the node
    /// shows of its state.
    pub fn problems(&self, look: &Look, status: &Value) -> BTreeMap<String, Vec<String>> {
        let m = self.manifest();
        let mask = hex(&m["cookies"]["device_mask"]);
        let base = hex(&m["cookies"]["base"]);
        let uplink = m["uplink"]["name"].as_str().unwrap().to_string();
        let uplink_port = m["uplink"]["ofport"].as_i64().unwrap();
        // What each device claims: the state whose set must be installed (None: no flows)
        // and whether the whole posture (base, ports) must be in force.
        struct Claim {
            set: Option<Value>,
            whole: bool,
            judged: bool,
            unknown: bool,
            note: Vec<String>,
        }
        let mut claims: Vec<(String, u64, i64, String, Claim)> = Vec::new();
        for md in m["devices"].as_array().unwrap() {
            let name = md["name"].as_str().unwrap().to_string();
            let d = entry(status, &name);
            let state = d["state"].as_str().unwrap_or("").to_string();
            let bits = hex(&md["states"][0]["switch"]["cookie"]) & mask;
            let e = &d["enforcement"];
            let current = || Some(self.state_of(&m, &name, &state));
            let claim = match e["verdict"].as_str() {
                Some("enforced") => Claim {
                    set: current(),
                    whole: true,
                    judged: true,
                    unknown: false,
                    note: vec![],
                },
                Some("failed_closed") => {
                    let installed = e["installed"].as_str().unwrap_or("");
                    let mut note = vec![];
                    if e["reason"].as_str().unwrap_or("").is_empty() {
                        note.push("failed_closed without a reason".to_string());
                    }
                    let set = match installed {
                        "no flows" => None,
                        "" => {
                            note.push("failed_closed without `installed`".to_string());
                            None
                        }
                        s => Some(self.state_of(&m, &name, s)),
                    };
                    Claim {
                        set,
                        whole: false,
                        judged: true,
                        unknown: false,
                        note,
                    }
                }
                Some("not_enforced") => Claim {
                    set: current(),
                    whole: false,
                    judged: false,
                    unknown: false,
                    note: if e["reason"].as_str().unwrap_or("").is_empty() {
                        vec!["not_enforced without a reason".to_string()]
                    } else {
                        vec![]
                    },
                },
                other => Claim {
                    set: current(),
                    whole: true,
                    judged: true,
                    unknown: true,
                    note: vec![format!(
                        "the status gives no enforcement verdict ({}), state `{state}`{}",
                        other.map_or("none".to_string(), |v| format!("`{v}`")),
                        if d["fail_closed"].is_null() {
                            String::new()
                        } else {
                            format!(", fail_closed {}", d["fail_closed"])
                        }
                    )],
                },
            };
            let port = md["net"]["port"].as_str().unwrap().to_string();
            let ofport = md["net"]["ofport"].as_i64().unwrap();
            claims.push((name, bits, ofport, port, claim));
        }
        // The switch against the claimed sets, in one diff.
        let mut expected = std::fs::read_to_string(self.bundle.join("flows/base.ofctl")).unwrap();
        for (_, _, _, _, c) in &claims {
            if let Some(s) = &c.set {
                expected.push_str(
                    &std::fs::read_to_string(
                        self.bundle.join(s["switch"]["flows"].as_str().unwrap()),
                    )
                    .unwrap(),
                );
            }
        }
        let diff: Option<Vec<String>> = look.flows.as_ref().map(|flows| {
            let n = LOOKS.fetch_add(1, Ordering::Relaxed);
            let (dump, file) = (
                self.tmp.path().join(format!("look-{n}.flows")),
                self.tmp.path().join(format!("look-{n}.expected")),
            );
            std::fs::write(&dump, flows).unwrap();
            std::fs::write(&file, expected).unwrap();
            let out = sh(&format!(
                "ovs-ofctl -O OpenFlow15 diff-flows {} {}",
                dump.display(),
                file.display()
            ));
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with(['+', '-']))
                .map(String::from)
                .collect()
        });
        let known: Vec<u64> = claims.iter().map(|c| c.1).collect();
        let mut out = BTreeMap::new();
        for (name, bits, ofport, port, c) in &claims {
            let mut p = c.note.clone();
            let mut facts = Vec::new();
            match &diff {
                None => facts.push("the switch's flows cannot be read".to_string()),
                Some(lines) => {
                    let mine: Vec<&String> = lines
                        .iter()
                        .filter(|l| cookie_of(l) & mask == *bits)
                        .collect();
                    if !mine.is_empty() {
                        facts.push(format!(
                            "its flows are not {} ({} differ, e.g. `{}`)",
                            c.set.as_ref().map_or("absent".to_string(), |s| format!(
                                "exactly `{}`'s set",
                                s["name"].as_str().unwrap()
                            )),
                            mine.len(),
                            mine[0]
                        ));
                    }
                    if c.whole {
                        let others: Vec<&String> = lines
                            .iter()
                            .filter(|l| {
                                let k = cookie_of(l);
                                k == base || !known.contains(&(k & mask))
                            })
                            .collect();
                        if !others.is_empty() {
                            facts.push(format!(
                                "the base or stray flows differ ({}, e.g. `{}`)",
                                others.len(),
                                others[0]
                            ));
                        }
                    }
                }
            }
            if c.whole {
                facts.extend(Self::port_problem(look, port, *ofport));
                facts.extend(Self::port_problem(look, &uplink, uplink_port));
            }
            if let Some(s) = &c.set {
                for path in s["switch"]["containers"].as_array().unwrap() {
                    let cm = self.container_manifest(path.as_str().unwrap());
                    let cname = cm["name"].as_str().unwrap();
                    match &look.running {
                        None => facts.push("the container engine cannot be read".into()),
                        Some(r) if !r.contains(cname) => {
                            facts.push(format!("µmbox `{cname}` is not running"))
                        }
                        Some(_) => {}
                    }
                    for i in cm["interfaces"].as_array().unwrap() {
                        facts.extend(Self::port_problem(
                            look,
                            i["port_name"].as_str().unwrap(),
                            i["ofport"].as_i64().unwrap(),
                        ));
                    }
                }
            }
            facts.dedup();
            if c.unknown {
                // No verdict: say what the node shows, for the reader of the failure.
                p.push(if facts.is_empty() {
                    "the node does hold that posture".to_string()
                } else {
                    format!("the node: {}", facts.join("; "))
                });
            } else if c.judged {
                p.extend(facts);
            }
            if !p.is_empty() {
                out.insert(name.clone(), p);
            }
        }
        out
    }

    /// One honest answer: looks at the node, asks the shim (`status --json`) and looks
    /// again, until the node stood still meanwhile (both looks the same: while the shim
    /// is repairing something, a status may be true of a moment neither look saw); then
    /// fails the test if the status claims of some device what the node does not hold.
    /// Returns the exit code and the report.
    pub fn truthful_status(&self, api: &Api) -> (i32, Value) {
        let start = Instant::now();
        loop {
            let before = self.look();
            let (code, status) = api.status();
            let after = self.look();
            if before != after {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "the node did not stand still for a status in 60 s"
                );
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let lies: Vec<String> = self
                .problems(&after, &status)
                .iter()
                .map(|(d, p)| format!("  {d}: {}", p.join("; ")))
                .collect();
            assert!(
                lies.is_empty(),
                "the status says more than the node holds:\n{}\nstatus: {status}\nshim log (end):\n{}",
                lies.join("\n"),
                tail(&api.log_text(), 30)
            );
            assert_eq!(
                code,
                exit_for(&status),
                "`kalki-shim status --json` exits {code} for {status}"
            );
            return (code, status);
        }
    }

    /// Asks for the status (truthfully, as [`Lab::truthful_status`]) until `done` holds of
    /// it and of a look taken right after, or fails after `limit` saying `what`.
    pub fn wait_status(
        &self,
        api: &Api,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&Value, &BTreeMap<String, Vec<String>>) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let (_, status) = self.truthful_status(api);
            let now = self.problems(&self.look(), &status);
            if done(&status, &now) {
                return status;
            }
            if start.elapsed() > limit {
                panic!(
                    "timed out after {limit:?} waiting for {what}\nstatus: {status}\nthe node: {now:?}\nshim log (end):\n{}",
                    tail(&api.log_text(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every device named is `enforced` and the node shows it, the status
    /// truthful all along.
    pub fn wait_enforced(&self, api: &Api, names: &[&str], limit: Duration) -> Value {
        self.wait_status(
            api,
            limit,
            &format!("{names:?} to be enforced"),
            |status, now| {
                names
                    .iter()
                    .all(|n| verdict(status, n) == "enforced" && !now.contains_key(*n))
            },
        )
    }

    /// Waits until the node holds every device's state as the status names it (the
    /// posture of each, in force), whatever the status says of enforcement: the start
    /// of a test, before a fault.
    pub fn wait_node(&self, api: &Api, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (_, mut status) = api.status();
            for d in status["devices"].as_array_mut().unwrap() {
                d["enforcement"] = serde_json::json!({"verdict": "enforced"});
            }
            let p = self.problems(&self.look(), &status);
            if p.is_empty() {
                return status;
            }
            if start.elapsed() > limit {
                panic!(
                    "the node never held the devices' states: {p:?}\nshim log (end):\n{}",
                    tail(&api.log_text(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The switch holds exactly the base set and each device's set for the state the
    /// status gives it.
    pub fn assert_switch_holds_states(&self, status: &Value) {
        let m = self.manifest();
        let mut sets = vec!["flows/base.ofctl".to_string()];
        for name in ALL {
            let state = entry(status, name)["state"].as_str().unwrap();
            sets.push(
                self.state_of(&m, name, state)["switch"]["flows"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        assert_bridge_holds(BRIDGE, &self.bundle, &sets);
    }
}

/// When a container was (last) started, with its id; empty when there is none.
pub fn started_at(name: &str) -> String {
    let out = sh(&format!(
        "docker inspect -f '{{{{.State.StartedAt}}}} {{{{.Id}}}}' {name} 2>/dev/null"
    ));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// An interface's OpenFlow number as Open vSwitch gives it (`ovs-vsctl get interface`).
pub fn ofport(port: &str) -> i64 {
    ok(&format!(
        "ovs-vsctl --timeout=5 get interface {port} ofport"
    ))
    .trim()
    .parse()
    .unwrap()
}

/// An interface's MAC address in this (the node's) namespace.
pub fn mac_of(link: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{link}/address"))
        .unwrap()
        .trim()
        .to_string()
}

/// The IPv6 link-local address a MAC gives an interface (modified EUI-64).
pub fn link_local(mac: &str) -> String {
    let b: Vec<u16> = mac
        .split(':')
        .map(|x| u16::from_str_radix(x, 16).unwrap())
        .collect();
    std::net::Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        ((b[0] ^ 2) << 8) | b[1],
        (b[2] << 8) | 0xff,
        0xfe00 | b[3],
        (b[4] << 8) | b[5],
    )
    .to_string()
}

/// Gives the node an IPv4 address of its own, on an interface of its own (removed by
/// [`clean`]), and routes it on-link from a device, so that the device ARPs for it on
/// its own wire.
pub fn node_address_for(h: &Host) {
    ok(&format!(
        "ip link add {NODE_LINK} type veth peer name {NODE_LINK}p && ip addr add {NODE_IP}/32 dev {NODE_LINK}          && ip link set dev {NODE_LINK}p up && ip link set dev {NODE_LINK} up"
    ));
    ok(&format!("ip -n {} route add {NODE_IP}/32 dev eth0", h.ns));
}

/// Turns IPv6 on inside a device's namespace (the lab turns it off), without duplicate
/// address detection, and returns its link-local address once it is usable.
pub fn enable_ipv6(h: &Host) -> String {
    ok(&format!(
        "ip netns exec {} sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
         net.ipv6.conf.eth0.accept_dad=0 net.ipv6.conf.all.disable_ipv6=0 \
         net.ipv6.conf.default.disable_ipv6=0 net.ipv6.conf.eth0.disable_ipv6=0",
        h.ns
    ));
    let mut addr = String::new();
    wait_for(Duration::from_secs(10), "a link-local address", || {
        let out = ok(&format!(
            "ip -n {} -6 -o addr show dev eth0 scope link",
            h.ns
        ));
        if out.contains("tentative") {
            return false;
        }
        addr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .map(|a| a.split('/').next().unwrap().to_string())
            .unwrap_or_default();
        !addr.is_empty()
    });
    addr
}

/// A tcpdump filter for every frame that comes from none of the site's hosts (the
/// devices and the uplink host): the node's own stack, on a host end or through a µmbox.
pub fn not_from_site_hosts() -> String {
    std::iter::once(UPLINK)
        .chain(DEVICES)
        .map(|h| format!("not ether src {}", h.mac))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// A tcpdump filter for every frame from one host (its MAC, or its address in IPv4 or
/// ARP).
pub fn from_host(h: &Host) -> String {
    format!("ether src {} or src host {}", h.mac, h.ip)
}

/// Frames seen by `tcpdump` on `eth0` of a namespace, from [`Capture::start`] to
/// [`Capture::stop`] (written to a file as they come: `-U -w`).
pub struct Capture {
    process: Background,
    file: PathBuf,
}

impl Capture {
    pub fn start(ns: &str, filter: &str, dir: &Path, name: &str) -> Capture {
        let file = dir.join(format!("{name}.pcap"));
        let log = dir.join(format!("{name}.tcpdump.log"));
        let process = Background::start(
            &format!(
                "ip netns exec {ns} tcpdump -i eth0 -nn -U -w {} '{filter}'",
                file.display()
            ),
            &log,
        );
        wait_for(Duration::from_secs(10), "tcpdump to listen", || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on"))
        });
        Capture { process, file }
    }

    /// Stops it and returns the frames it saw, one line each (`tcpdump -e`).
    pub fn stop(mut self) -> Vec<String> {
        self.process.stop();
        let out = sh(&format!(
            "tcpdump -nn -e -r {} 2>/dev/null",
            self.file.display()
        ));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    }
}

/// Listeners of the node's own (root namespace, all addresses), one for IPv6 and one
/// for IPv4, counting the connections they accept.
pub struct Listener {
    pub port6: u16,
    pub port4: u16,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Listener {
    pub fn start() -> Listener {
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut ports = Vec::new();
        for addr in ["[::]:0", "0.0.0.0:0"] {
            let l = std::net::TcpListener::bind(addr).unwrap();
            l.set_nonblocking(true).unwrap();
            ports.push(l.local_addr().unwrap().port());
            let (n, stop) = (accepted.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok(_) => {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        }
        Listener {
            port6: ports[0],
            port4: ports[1],
            accepted,
            stop,
            threads,
        }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
