//! A site on three nodes, for real (`docs/scale-out.md`): a three-member etcd cluster on
//! loopback with mutual TLS (certificates from a CA the test makes), two controllers
//! (one leads, one stands by), three node agents, each with its own Open vSwitch bridge,
//! its uplink host and its device in network namespaces, the real µmbox image, and
//! real traffic (ping) from each device to its node's uplink host.
//!
//! One test walks the scenarios in order, each checked on the switches, the containers,
//! etcd's log and the controller's status:
//! 1. every device enforced in `normal`, its traffic through its chain;
//! 2. a cross-device rule whose devices sit on two nodes: an alert for the door (node
//!    east) makes the camera (node west) suspicious; both postures change on both
//!    nodes; the rule's command, which a controller does not send, is logged as such;
//! 3. a burst of readings while the leading controller is SIGKILLed: the standby takes
//!    over, every acknowledged input is in the log once, with what was sent, and the
//!    new leader's states are the log's, replayed here through the engine;
//! 4. one etcd member (the leader) killed: inputs go on being accepted;
//! 5. a node agent SIGKILLed: its device's flows stay (traffic still passes its
//!    chain), the controller's status says the node is unreachable; restarted, it
//!    reconciles and is enforced again;
//! 6. the door in `attack` (its traffic dropped), etcd stopped entirely and the east
//!    agent restarted without it: it starts from the postures it kept, the door stays
//!    cut off; etcd back, the agent registers again;
//! 7. a µmbox's own alert on a node: an Xmas scan (`nmap -sX`) from north's uplink host
//!    meets the meter's `xmas_block`, which raises `xmas_scan`; the north agent puts it
//!    in the inbox, the leader moves it into the log, the meter goes to `attack` and is
//!    cut off. The same inbox entry put again (an agent's retry) is not taken twice;
//! 8. a µmbox of a chain in force killed: the agent closes its device and restarts it
//!    at once, and the device is enforced again;
//! 9. a network partition between the east agent and etcd, made with a packet filter
//!    (iptables drops every TCP packet the agent's cgroup sends on loopback: a
//!    blackhole, not a refusal): the door is in `attack` and the operator resets it; the
//!    controller decides `normal`, but the partitioned agent never opens the door, and
//!    the status says node east is unreachable. Healed, the agent reconnects, applies
//!    `normal`, and the door's traffic passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::live::{ok, sh, wait_for, Api};
use kalki_test_support::etcd::EtcdCluster;
use kalki_test_support::pki::Pki;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POLICY: &str = r#"
import std::umboxes::{sniffer, xmas_block}

device type Lock {
    alerts tamper

    states normal < suspicious < attack
    initial normal

    normal     { chain [sniffer] }
    suspicious { chain [sniffer, xmas_block] }
    attack     { chain [drop] }

    normal     -> suspicious on tamper
    suspicious -> attack     on tamper
    suspicious -> normal     on operator reset
    attack     -> normal     on operator reset
}

device type Cam {
    sensed motion: bool
    commands ring

    states normal < suspicious
    initial normal

    normal     { chain [sniffer] }
    suspicious { chain [sniffer, xmas_block] }

    suspicious -> normal on operator reset
}

device type Meter {
    sensed level: int in 0..100000

    states normal < suspicious < attack
    initial normal

    normal     { chain [xmas_block] }
    suspicious { chain [xmas_block, sniffer] }
    attack     { chain [drop] }

    normal     -> suspicious when level > 90000
    suspicious -> attack     on xmas_scan
    suspicious -> normal     on operator reset
    attack     -> normal     on operator reset
}

site campus {
    node east  { bridge "kc-east" uplink "kc-up-e" }
    node west  { bridge "kc-west" uplink "kc-up-w" }
    node north { bridge "kc-north" uplink "kc-up-n" }
    unknown hosts drop

    device door:  Lock  at 10.81.0.10 mac 02:00:00:81:00:10 port "kc-door0"  node east
    device cam:   Cam   at 10.81.0.20 mac 02:00:00:81:00:20 port "kc-cam0"   node west
    device meter: Meter at 10.81.0.30 mac 02:00:00:81:00:30 port "kc-meter0" node north

    rule door_raises_cam on door in suspicious then cam -> suspicious, cam.ring
}
"#;

/// A node of the test site: its name, bridge, uplink host and device.
struct NodeLab {
    name: &'static str,
    bridge: &'static str,
    uplink: &'static str,
    device: &'static str,
    port: &'static str,
    ip: &'static str,
    mac: &'static str,
}

const NODES: [NodeLab; 3] = [
    NodeLab {
        name: "east",
        bridge: "kc-east",
        uplink: "kc-up-e",
        device: "door",
        port: "kc-door0",
        ip: "10.81.0.10",
        mac: "02:00:00:81:00:10",
    },
    NodeLab {
        name: "west",
        bridge: "kc-west",
        uplink: "kc-up-w",
        device: "cam",
        port: "kc-cam0",
        ip: "10.81.0.20",
        mac: "02:00:00:81:00:20",
    },
    NodeLab {
        name: "north",
        bridge: "kc-north",
        uplink: "kc-up-n",
        device: "meter",
        port: "kc-meter0",
        ip: "10.81.0.30",
        mac: "02:00:00:81:00:30",
    },
];

const UPLINK_IP: &str = "10.81.0.1";
const UPLINK_MAC: &str = "02:00:00:81:00:01";
const WAIT: Duration = Duration::from_secs(60);

fn clean() {
    sh("docker rm -f $(docker ps -aq --filter label=kalki.device) 2>/dev/null | grep -c . >/dev/null; true");
    for n in &NODES {
        sh(&format!(
            "docker rm -f $(docker ps -aq --filter label=kalki.site=campus/{}) >/dev/null 2>&1",
            n.name
        ));
        sh(&format!(
            "ovs-vsctl --timeout=10 --if-exists del-br {}",
            n.bridge
        ));
        for (ns, port) in [
            (format!("{}-ns", n.uplink), n.uplink),
            (format!("kc-{}", n.device), n.port),
        ] {
            sh(&format!("ip netns del {ns} 2>/dev/null"));
            sh(&format!("ip link del dev {port} 2>/dev/null"));
        }
    }
}

/// A namespace with `eth0` inside and `port` outside (left for the agent to plug).
fn plug(ns: &str, port: &str, ip: &str, mac: &str) {
    ok(&format!("ip netns add {ns}"));
    ok(&format!(
        "ip link add {port} type veth peer name eth0 netns {ns}"
    ));
    let x = format!("ip netns exec {ns}");
    ok(&format!(
        "{x} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
         && {x} ip link set dev eth0 address {mac} && {x} ip addr add {ip}/24 dev eth0 \
         && {x} ip link set dev lo up && {x} ip link set dev eth0 up \
         && {x} ethtool -K eth0 tx off >/dev/null"
    ));
    ok(&format!(
        "ip link set dev {port} up && ethtool -K {port} tx off >/dev/null"
    ));
}

/// Pings from a device's namespace to its node's uplink host: how many of `n` came back.
fn ping(device: &str, n: u32) -> u32 {
    let out = sh(&format!(
        "ip netns exec kc-{device} ping -c {n} -i 0.2 -W 1 {UPLINK_IP}"
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" packets transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    dir: PathBuf,
    bundle: PathBuf,
    pki: Pki,
    endpoints: String,
}

impl Cluster {
    fn etcd_args(&self, cn: &str) -> Vec<String> {
        let c = self.pki.client(cn).unwrap();
        vec![
            "--etcd".into(),
            self.endpoints.clone(),
            "--etcd-ca".into(),
            self.pki.ca_file().display().to_string(),
            "--etcd-cert".into(),
            c.cert.display().to_string(),
            "--etcd-key".into(),
            c.key.display().to_string(),
            "--lease-ttl".into(),
            "3s".into(),
            "--etcd-timeout".into(),
            "2s".into(),
            "--id".into(),
            cn.into(),
        ]
    }

    fn spawn(&self, name: &str, args: Vec<String>) -> Proc {
        self.spawn_in(name, args, None)
    }

    /// [`Cluster::spawn`], the process started in `partition`'s cgroup (a shell joins
    /// it, then becomes the shim: the child's pid is the shim's).
    fn spawn_in(&self, name: &str, args: Vec<String>, partition: Option<&Partition>) -> Proc {
        let log = self.dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let shim = env!("CARGO_BIN_EXE_kalki-shim");
        let mut cmd = match partition {
            None => Command::new(shim),
            Some(p) => {
                let mut c = Command::new("sh");
                c.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(p.procs())
                    .arg(shim);
                c
            }
        };
        let child = cmd
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    fn controller(&self, name: &str, api: &Api) -> Proc {
        let mut args = vec![
            "controller".to_string(),
            self.bundle.display().to_string(),
            "--listen".into(),
            api.api.clone(),
            "--token-file".into(),
            api.token.display().to_string(),
            // The rule's `cam.ring` is logged, not sent (S009 without it).
            "--without-commands".into(),
        ];
        args.extend(self.etcd_args(name));
        self.spawn(name, args)
    }

    fn agent(&self, node: &str) -> Proc {
        self.agent_in(node, None)
    }

    fn agent_in(&self, node: &str, partition: Option<&Partition>) -> Proc {
        let state = self.dir.join(format!("agent-{node}"));
        let mut args = vec![
            "agent".to_string(),
            self.bundle.display().to_string(),
            "--node".into(),
            node.into(),
            "--state-dir".into(),
            state.display().to_string(),
            "--reconcile-interval".into(),
            "500ms".into(),
        ];
        args.extend(self.etcd_args(&format!("agent-{node}")));
        self.spawn_in(&format!("agent-{node}"), args, partition)
    }
}

/// `etcdctl get PREFIX --prefix` through the live members: (key, value) pairs (our
/// values are one line of JSON each).
fn get(etcd: &mut EtcdCluster, pki: &Pki, prefix: &str) -> Vec<(String, Value)> {
    let c = pki.client("reader").unwrap();
    let live = etcd.live_endpoints();
    let out = etcd
        .etcdctl(&live, Some(&c), &["get", prefix, "--prefix"])
        .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .filter(|kv| kv.len() == 2)
        .map(|kv| (kv[0].to_string(), serde_json::from_str(kv[1]).unwrap()))
        .collect()
}

/// `kalki-shim status --json` of one controller, if it answers.
fn try_status(api: &Api) -> Option<Value> {
    let out = api.client(&["status", "--json"]);
    if !matches!(out.status.code(), Some(0 | 3 | 4)) {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The status of whichever controller answers (the leader).
fn status(apis: &[&Api]) -> Option<Value> {
    apis.iter().find_map(|a| try_status(a))
}

fn entry<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap()
}

fn wait_devices(apis: &[&Api], want: &[(&str, &str, &str)], what: &str) -> Value {
    wait_until(apis, what, |s| {
        want.iter().all(|(d, state, verdict)| {
            let e = entry(s, d);
            e["state"] == *state && e["enforcement"]["verdict"] == *verdict
        })
    })
}

/// Waits for a status of which `f` holds.
fn wait_until(apis: &[&Api], what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let start = Instant::now();
    loop {
        if let Some(s) = status(apis) {
            let okay = f(&s);
            last = s;
            if okay {
                return last;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: waited {} s; last status:\n{}",
            WAIT.as_secs(),
            serde_json::to_string_pretty(&last).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Posts a reading through curl; the `Accepted` answer, or `None` (no answer, refused).
fn post_level(api: &Api, level: u32) -> Option<Value> {
    let out = sh(&format!(
        "curl -s -m 8 -H \"Authorization: Bearer $(cat {})\" -H 'Content-Type: application/json' \
         -d '{{\"values\": {{\"level\": {level}}}}}' -w '\\n%{{http_code}}' http://{}/v1/devices/meter/readings",
        api.token.display(),
        api.api
    ));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    (code == "200")
        .then(|| serde_json::from_str(body).ok())
        .flatten()
}

#[test]
fn a_site_on_three_nodes_with_a_standby_controller() {
    use kalki_test_support as ts;
    if !ts::require(&[
        ts::ovs(),
        ts::docker(),
        ts::etcd(),
        (ts::root(), "root"),
        (
            ts::image_present("kalki/umbox:0.1"),
            "the µmbox image (make images)",
        ),
        (
            ts::tools(&["curl", "ping", "ethtool", "nmap", "iptables"]),
            "curl, ping, ethtool, nmap, iptables",
        ),
        (
            cgroup2().is_some(),
            "a cgroup v2 hierarchy (for the partition's packet filter)",
        ),
    ]) {
        return;
    }
    clean();
    struct Clean;
    impl Drop for Clean {
        fn drop(&mut self) {
            clean();
        }
    }
    let _clean = Clean;
    let tmp = ts::TempDir::new("cluster").unwrap();
    let dir = tmp.path().to_path_buf();
    let pki = Pki::new(&dir.join("pki"), "kalki-test-ca").unwrap();
    let mut etcd = EtcdCluster::start(&dir.join("etcd"), 3, pki.clone()).unwrap();
    let bundle = dir.join("bundle");
    common::compile(POLICY).write_to(&bundle).unwrap();
    for n in &NODES {
        plug(&format!("{}-ns", n.uplink), n.uplink, UPLINK_IP, UPLINK_MAC);
        plug(&format!("kc-{}", n.device), n.port, n.ip, n.mac);
        ok(&format!(
            "ip -n kc-{} neigh replace {UPLINK_IP} lladdr {UPLINK_MAC} dev eth0 nud permanent",
            n.device
        ));
        ok(&format!(
            "ip -n {}-ns neigh replace {} lladdr {} dev eth0 nud permanent",
            n.uplink, n.ip, n.mac
        ));
    }
    let c = Cluster {
        dir: dir.clone(),
        bundle,
        pki: pki.clone(),
        endpoints: etcd.endpoints().join(","),
    };
    std::fs::create_dir_all(dir.join("a")).ok();
    std::fs::create_dir_all(dir.join("b")).ok();
    let (api_a, api_b) = (Api::new(&dir.join("a")), Api::new(&dir.join("b")));
    let mut a = c.controller("controller-a", &api_a);
    // A leads (it started first and found no leader); then the standby.
    wait_for(WAIT, "controller A to lead", || {
        try_status(&api_a).is_some()
    });
    let b = c.controller("controller-b", &api_b);
    let mut agents: Vec<Proc> = NODES.iter().map(|n| c.agent(n.name)).collect();
    let apis = [&api_a, &api_b];

    // 1. Every device enforced in normal, its traffic through.
    wait_devices(
        &apis,
        &[
            ("door", "normal", "enforced"),
            ("cam", "normal", "enforced"),
            ("meter", "normal", "enforced"),
        ],
        "every device enforced",
    );
    for n in &NODES {
        assert!(
            ping(n.device, 5) >= 4,
            "{} cannot reach its uplink",
            n.device
        );
    }

    // 2. The cross-node rule: the door's alert moves the camera on another node.
    api_a.must(&["alert", "door", "tamper"]);
    wait_devices(
        &apis,
        &[
            ("door", "suspicious", "enforced"),
            ("cam", "suspicious", "enforced"),
        ],
        "door and cam suspicious, on two nodes",
    );
    let running =
        String::from_utf8_lossy(&sh("docker ps --format '{{.Names}} {{.Labels}}'").stdout)
            .into_owned();
    for (device, node) in [("door", "east"), ("cam", "west")] {
        assert!(
            running.lines().any(|l| l.contains(&format!("-{device}-"))
                && l.contains("xmas_block")
                && l.contains(&format!("kalki.site=campus/{node}"))),
            "{device}'s xmas_block on node {node}:\n{running}"
        );
    }
    assert!(ping("cam", 5) >= 4, "cam through its suspicious chain");
    assert!(
        a.log()
            .contains("`cam`: command `ring` of rule `door_raises_cam` not sent"),
        "the command the controller does not send is said:\n{}",
        a.log()
    );

    // 3. A burst while the leader is killed.
    let mut acked: Vec<(u64, u32)> = Vec::new();
    let mut unsure: Vec<u32> = Vec::new();
    let mut killed_at = None;
    let mut leader_back = None;
    for level in 1..=120u32 {
        if level == 40 {
            a.kill();
            killed_at = Some(Instant::now());
        }
        let mut answered = None;
        let start = Instant::now();
        while answered.is_none() && start.elapsed() < Duration::from_secs(30) {
            for api in apis {
                if let Some(v) = post_level(api, level) {
                    answered = Some(v);
                    break;
                }
            }
            if answered.is_none() {
                unsure.push(level);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let v = answered.unwrap_or_else(|| {
            panic!(
                "no controller accepted level {level}:\n{}\n{}",
                a.log(),
                b.log()
            )
        });
        if let (Some(k), None) = (killed_at, leader_back) {
            leader_back = Some(k.elapsed());
        }
        acked.push((v["seq"].as_u64().unwrap(), level));
    }
    let failover = leader_back.unwrap();
    eprintln!(
        "failover: the standby accepted an input {} ms after the leader was killed",
        failover.as_millis()
    );
    let log = get(&mut etcd, &pki, "/kalki/v1/campus/inputs/");
    let mut by_seq = std::collections::BTreeMap::new();
    for (k, v) in &log {
        let seq: u64 = k.rsplit('/').next().unwrap().parse().unwrap();
        by_seq.insert(seq, v.clone());
    }
    // Every acknowledged input is in the log at its sequence number, with its value.
    for (seq, level) in &acked {
        let v = by_seq.get(seq).unwrap_or_else(|| {
            panic!("acknowledged input {seq} (level {level}) is not in the log")
        });
        assert_eq!(v["input"]["values"]["level"], *level, "input {seq}");
    }
    // None twice: a level appears more than once only if a try of it went unanswered.
    let mut seen = std::collections::BTreeMap::<u64, u32>::new();
    for v in by_seq.values() {
        if let Some(l) = v["input"]["values"]["level"].as_u64() {
            *seen.entry(l).or_default() += 1;
        }
    }
    for (l, n) in &seen {
        assert!(
            *n == 1 || unsure.contains(&(*l as u32)),
            "level {l} is in the log {n} times"
        );
    }
    // The log's sequence numbers have no gap.
    let seqs: Vec<u64> = by_seq.keys().copied().collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // The new leader's states are the log's.
    let s = status(&apis).unwrap();
    assert_eq!(entry(&s, "meter")["state"], "normal");
    assert_eq!(entry(&s, "door")["state"], "suspicious");

    // 4. One etcd member (its leader) killed: inputs still accepted.
    let el = etcd.leader().unwrap();
    etcd.kill(el);
    for level in [95_000u32, 10] {
        let start = Instant::now();
        let mut got = None;
        while got.is_none() && start.elapsed() < Duration::from_secs(30) {
            got = post_level(&api_b, level);
            if got.is_none() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        assert!(
            got.is_some(),
            "level {level} not accepted with an etcd member down:\n{}",
            b.log()
        );
    }
    wait_devices(
        &apis,
        &[("meter", "suspicious", "enforced")],
        "meter suspicious with 2 of 3 etcd members",
    );

    // 5. The north agent killed: the meter's flows stay, status says the node is gone.
    agents[2].kill();
    let s = wait_until(&apis, "north unreachable", |s| {
        entry(s, "meter")["enforcement"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("node `north` unreachable"))
    });
    assert_eq!(entry(&s, "meter")["enforcement"]["verdict"], "not_enforced");
    assert!(
        ping("meter", 5) >= 4,
        "the meter's chain still carries its traffic"
    );
    agents[2] = c.agent("north");
    let start = Instant::now();
    while !status(&apis).is_some_and(|s| {
        entry(&s, "meter")["enforcement"]["verdict"] == "enforced"
            && entry(&s, "meter")["state"] == "suspicious"
    }) {
        assert!(
            start.elapsed() < WAIT,
            "north back: {:?}\n{}",
            status(&apis),
            agents[2].log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // 6. The door in attack; etcd gone; the east agent restarted without it.
    api_b.must(&["alert", "door", "tamper"]);
    wait_devices(&apis, &[("door", "attack", "enforced")], "door in attack");
    assert_eq!(ping("door", 3), 0, "the door in attack is cut off");
    for i in 0..3 {
        if etcd.running(i) {
            etcd.kill(i);
        }
    }
    agents[0].kill();
    agents[0] = c.agent("east");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ping("door", 3),
        0,
        "the door stays cut off with the agent restarted without etcd"
    );
    for i in 0..3 {
        etcd.start_again(i).unwrap();
    }
    etcd.wait_healthy(WAIT).unwrap();
    wait_devices(
        &apis,
        &[("door", "attack", "enforced")],
        "east registered again",
    );

    // 7. The meter's own µmbox raises an alert on node north.
    let before = get(&mut etcd, &pki, "/kalki/v1/campus/inputs/").len();
    let scan = sh(&format!(
        "ip netns exec kc-up-n-ns nmap -n -Pn -sX --send-ip --max-retries 0 -p 20-30 {}",
        NODES[2].ip
    ));
    assert!(scan.status.success(), "nmap: {scan:?}");
    wait_devices(
        &apis,
        &[("meter", "attack", "enforced")],
        "the meter's xmas_scan, from its node's inbox, takes it to attack",
    );
    assert_eq!(ping("meter", 3), 0, "the meter in attack is cut off");
    let log = get(&mut etcd, &pki, "/kalki/v1/campus/inputs/");
    let alerts: Vec<&Value> = log[before..]
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["input"]["alert"] == "xmas_scan")
        .collect();
    assert_eq!(alerts.len(), 1, "one xmas_scan in the log: {log:?}");
    let taken = alerts[0];
    assert_eq!(taken["input"]["device"], "meter");
    assert_eq!(taken["input"]["source"], "xmas_block");
    let by = taken["by"].as_str().unwrap().to_string();
    let key = by
        .strip_prefix("inbox:")
        .expect("taken from the inbox")
        .to_string();
    assert!(key.starts_with("inbox/north/"), "{key}");
    // The same entry put again, as an agent retrying after a lost answer would: deleted,
    // not taken into the log again.
    let reader = pki.client("reader").unwrap();
    let value = serde_json::json!({
        "device": "meter", "alert": "xmas_scan", "umbox": "xmas_block",
        "container": "retry", "container_id": "retry", "agent": "agent-north", "t_ms": 1
    })
    .to_string();
    let live = etcd.live_endpoints();
    etcd.etcdctl(
        &live,
        Some(&reader),
        &["put", &format!("/kalki/v1/campus/{key}"), &value],
    )
    .unwrap();
    let start = Instant::now();
    while !get(&mut etcd, &pki, "/kalki/v1/campus/inbox/").is_empty() {
        assert!(
            start.elapsed() < WAIT,
            "the inbox entry put again is never taken away"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = get(&mut etcd, &pki, "/kalki/v1/campus/inputs/");
    assert_eq!(after.len(), log.len(), "an inbox entry taken twice");

    // 8. A µmbox in force killed: the agent closes the device and restarts it at once.
    let cam_ids = |what: &str| {
        String::from_utf8_lossy(
            &sh(&format!(
                "docker ps -q --filter label=kalki.site=campus/west --filter label=kalki.umbox={what}"
            ))
            .stdout,
        )
        .trim()
        .to_string()
    };
    let old = cam_ids("xmas_block");
    assert!(!old.is_empty(), "cam's xmas_block runs");
    ok(&format!("docker kill {old} >/dev/null"));
    let start = Instant::now();
    loop {
        let now = cam_ids("xmas_block");
        // Closed first (make-before-break never forwards past a dead µmbox), then a new
        // instance in its place.
        if !now.is_empty() && now != old && agents[1].log().contains("`cam` failed closed") {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "cam's xmas_block not restarted:\n{}",
            agents[1].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_devices(
        &apis,
        &[("cam", "suspicious", "enforced")],
        "cam enforced again",
    );
    assert!(ping("cam", 5) >= 4, "cam through its chain again");

    // 9. East partitioned from etcd by a packet filter; the door stays shut.
    // A socket belongs to the cgroup it was made in: the agent starts in its own.
    let cut = Partition::new();
    agents[0].kill();
    agents[0] = c.agent_in("east", Some(&cut));
    wait_devices(&apis, &[("door", "attack", "enforced")], "door in attack");
    cut.start();
    let s = wait_until(&apis, "east unreachable", |s| {
        entry(s, "door")["enforcement"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("node `east` unreachable"))
    });
    assert_eq!(entry(&s, "door")["enforcement"]["verdict"], "not_enforced");
    api_b.must(&["reset", "door"]);
    let s = status(&apis).unwrap();
    assert_eq!(
        entry(&s, "door")["state"],
        "normal",
        "the controller decided"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ping("door", 3),
        0,
        "a partitioned agent opened the door:\n{}",
        agents[0].log()
    );
    assert!(
        agents[0].log().contains("etcd out of reach"),
        "the agent did not notice the partition:\n{}",
        agents[0].log()
    );
    drop(cut);
    wait_devices(
        &apis,
        &[("door", "normal", "enforced")],
        "east back after the partition",
    );
    assert!(ping("door", 5) >= 4, "the door through its chain again");
    drop(b);
}

/// The cgroup v2 hierarchy's mount point, if there is one.
fn cgroup2() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// Processes cut from every TCP peer on loopback (etcd, here) once [`Partition::start`]
/// is called: they run in a cgroup of their own, and an iptables rule drops every TCP
/// packet its sockets send on loopback (a blackhole: no refusal, no reset). Their Unix
/// sockets (Open vSwitch, Docker) are untouched. A socket is matched by the cgroup it
/// was made in, so the processes must start in it. Dropped, the rule and the cgroup go
/// (what still runs in it is moved back to the root first).
struct Partition {
    root: PathBuf,
    group: String,
}

impl Partition {
    fn new() -> Partition {
        let root = cgroup2().unwrap();
        let group = format!("kalki-test-partition-{}", std::process::id());
        std::fs::create_dir_all(root.join(&group)).unwrap();
        Partition { root, group }
    }

    /// The file a process writes its pid to, to join.
    fn procs(&self) -> PathBuf {
        self.root.join(&self.group).join("cgroup.procs")
    }

    fn start(&self) {
        ok(&format!(
            "iptables -w 10 -I OUTPUT -o lo -p tcp -m cgroup --path {} -j DROP",
            self.group
        ));
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        sh(&format!(
            "iptables -w 10 -D OUTPUT -o lo -p tcp -m cgroup --path {} -j DROP",
            self.group
        ));
        let pids = std::fs::read_to_string(self.procs()).unwrap_or_default();
        for pid in pids.lines() {
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
        }
        let _ = std::fs::remove_dir(self.root.join(&self.group));
    }
}

/// `kalki-shim controller BUNDLE` with etcd options that are never used (a refusal
/// comes before any call to etcd), and `extra`.
fn controller_refusing(
    dir: &std::path::Path,
    bundle: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let api = Api::new(dir);
    let key = dir.join("client.key");
    std::fs::write(&key, "not used").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_kalki-shim"))
        .args(["controller", bundle.to_str().unwrap()])
        .args(["--etcd", "https://127.0.0.1:9", "--etcd-timeout", "1s"])
        .args(["--etcd-ca", key.to_str().unwrap()])
        .args(["--etcd-cert", key.to_str().unwrap()])
        .args(["--etcd-key", key.to_str().unwrap()])
        .args(["--token-file", api.token.to_str().unwrap()])
        .args(["--listen", &api.api, "--color", "never"])
        .args(extra)
        .output()
        .unwrap()
}

/// A controller for a site that declares no node is refused at once (exit 1, before any
/// etcd call): it would decide postures for no node and report every device unreachable.
#[test]
fn a_controller_refuses_a_site_on_one_node() {
    let tmp = kalki_test_support::TempDir::new("controller-one-node").unwrap();
    let bundle = tmp.path().join("bundle");
    common::compile_dir("runtime-shim/tests/fixtures/node")
        .write_to(&bundle)
        .unwrap();
    let out = controller_refusing(tmp.path(), &bundle, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("runs on one node"), "{err}");
}

/// A site whose rules send device commands is refused by the controller (S009: it sends
/// none, and would drop them without a word) unless `--without-commands` accepts it;
/// the refusal comes before any etcd call.
#[test]
fn a_controller_refuses_commands_it_cannot_send() {
    let tmp = kalki_test_support::TempDir::new("controller-commands").unwrap();
    let bundle = tmp.path().join("bundle");
    common::compile_dir("examples/campus")
        .write_to(&bundle)
        .unwrap();
    let out = controller_refusing(tmp.path(), &bundle, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("S009"), "{err}");
    assert!(
        err.contains("`night_visitor`, `lab_lockdown`") && err.contains("--without-commands"),
        "{err}"
    );
    // Accepted, it goes on to etcd (a CA that is no certificate: refused there, not by
    // S009).
    let out = controller_refusing(tmp.path(), &bundle, &["--without-commands"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("S009"), "{err}");
    assert_ne!(out.status.code(), Some(0), "{err}");
}

/// One timer that moves 300 devices at once: more postures than one etcd transaction
/// takes (128 operations). The tick and its postures are committed in several fenced
/// transactions, the first with the input; every posture reaches etcd. (Before, the
/// controller tried one transaction, which etcd refused, for ever: no input was accepted
/// after it.)
#[test]
fn a_timer_moving_more_devices_than_a_transaction_takes() {
    use kalki_test_support as ts;
    if !ts::require(&[ts::etcd()]) {
        return;
    }
    const DEVICES: usize = 300;
    let mut policy = String::from(
        "device type T {\n    alerts poke\n    states normal < suspicious\n    initial normal\n    \
         normal { chain [pass] }\n    suspicious { chain [drop] }\n    \
         normal -> suspicious after 4s quiet\n    suspicious -> normal on operator reset\n}\n\n\
         site wide {\n    node a { bridge \"kw-a\" uplink \"kw-a-up\" }\n    \
         node b { bridge \"kw-b\" uplink \"kw-b-up\" }\n    unknown hosts drop\n",
    );
    for d in 0..DEVICES {
        let node = if d % 2 == 0 { "a" } else { "b" };
        policy.push_str(&format!(
            "    device t{d}: T at 10.82.{}.{} port \"kw{d}\" node {node}\n",
            d / 200,
            d % 200 + 10
        ));
    }
    policy.push_str("}\n");
    let tmp = ts::TempDir::new("cluster-wide").unwrap();
    let dir = tmp.path().to_path_buf();
    let pki = Pki::new(&dir.join("pki"), "kalki-test-ca").unwrap();
    let mut etcd = EtcdCluster::start(&dir.join("etcd"), 3, pki.clone()).unwrap();
    let bundle = dir.join("bundle");
    common::compile(&policy).write_to(&bundle).unwrap();
    let c = Cluster {
        dir: dir.clone(),
        bundle,
        pki: pki.clone(),
        endpoints: etcd.endpoints().join(","),
    };
    std::fs::create_dir_all(dir.join("a")).unwrap();
    let api = Api::new(&dir.join("a"));
    let ctl = c.controller("controller-wide", &api);
    wait_until(&[&api], "every device suspicious, by one timer", |s| {
        s["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "suspicious")
    });
    // An input after the tick is still accepted.
    api.must(&["reset", "t0"]);
    let postures = get(&mut etcd, &pki, "/kalki/v1/wide/postures/");
    assert_eq!(postures.len(), DEVICES, "{}", ctl.log());
    let suspicious = postures
        .iter()
        .filter(|(_, v)| v["state"] == "suspicious")
        .count();
    assert_eq!(suspicious, DEVICES - 1, "{}", ctl.log());
    let ticks: Vec<Value> = get(&mut etcd, &pki, "/kalki/v1/wide/inputs/")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(ticks.len(), 2, "the tick and the reset: {ticks:?}");
}
