//! The real image on the real Docker engine, wired the way the runtime shim wires it:
//! `docker run --network none`, then veth pairs whose container ends are created inside
//! the container's network namespace (found through `docker inspect`) as `a`/`b` or
//! `tap`, brought up with transmit checksum offload off, IPv6 off (`--sysctl`).
//!
//! - an inline `ip-block` between two network namespaces with real stacks: ping both
//!   ways, a TCP transfer both ways, a listed source dropped with `blocked_ip`, counters
//!   on SIGUSR1, a prompt exit 0 on `docker stop`;
//! - an inline `xmas-block` between two veth ends the test drives itself: crafted
//!   frames are forwarded exactly once each way, Xmas frames dropped with `xmas_scan`,
//!   and deleting a veth makes it exit 1;
//! - a tap `sniffer` fed a burst of crafted SYNs to 40 ports: `port_scan`, and the
//!   copies counted.
//!
//! Needs root (network namespaces), `ip`, `nsenter`, `ethtool`, `ping`, `nc`, the engine
//! (`scripts/docker/start.sh`) and the image (`scripts/images.sh`; `make images` does
//! both). Without the engine or the image the tests are skipped, except under `CI=true`
//! where that is a failure. Every external command runs under `timeout`; containers,
//! namespaces and veths are removed by guards, also when a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kalki_umbox::craft::Craft;
use kalki_umbox::net::{self, PacketSocket, Recv};
use kalki_umbox::packet::{self, TcpFlags};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const IMAGE: &str = "kalki/umbox:0.1";
use kalki_test_support::{must, run, CMD_TIMEOUT};

/// Whether the engine, the image and root are there. Skips locally, fails under CI.
fn ready() -> bool {
    use kalki_test_support as ts;
    ts::require(&[
        ts::docker(),
        (
            ts::image_present(IMAGE),
            "the image kalki/umbox:0.1 (make images builds it)",
        ),
        (ts::root(), "root (network namespaces need it)"),
    ])
}

/// A short name unique to this process and test: `<pid % 100000><n>`.
fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

struct Container {
    name: String,
    pid: String,
}

impl Container {
    fn start(tag: &str, env: &[&str], args: &[&str]) -> Container {
        let name = format!("kalki-umbox-test-{tag}");
        let _ = run("docker", &["rm", "-f", &name]);
        let mut a = vec!["run", "-d", "--network", "none", "--name", &name];
        a.extend(["--label", "kalki.test=umbox"]);
        // The container's own stack stays quiet on the data interfaces: no IPv6 (and so
        // no autoconfiguration or MLD) on any interface created in it later.
        a.extend(["--sysctl", "net.ipv6.conf.all.disable_ipv6=1"]);
        a.extend(["--sysctl", "net.ipv6.conf.default.disable_ipv6=1"]);
        for e in env {
            a.extend(["-e", e]);
        }
        a.push(IMAGE);
        a.extend(args);
        // The guard exists before the container does: a failed start is cleaned up too.
        let mut c = Container {
            name: name.clone(),
            pid: String::new(),
        };
        must("docker", &a);
        c.pid = must("docker", &["inspect", "-f", "{{.State.Pid}}", &name])
            .trim()
            .to_string();
        assert!(
            c.pid != "0",
            "container {name} is not running: {}",
            c.stderr()
        );
        c
    }

    fn in_ns(&self, args: &[&str]) -> String {
        let mut a = vec!["-t", &self.pid, "-n"];
        a.extend(args);
        must("nsenter", &a)
    }

    /// What the shim does for one interface: a veth pair whose container end is born
    /// inside the container as `ifname`, up, with transmit checksum offload off.
    fn attach(&self, host: &str, ifname: &str) -> Link {
        let link = Link(host.to_string());
        must(
            "ip",
            &[
                "link", "add", host, "type", "veth", "peer", "name", ifname, "netns", &self.pid,
            ],
        );
        self.in_ns(&["ethtool", "-K", ifname, "tx", "off"]);
        self.in_ns(&["ip", "link", "set", "dev", ifname, "up"]);
        link
    }

    fn stdout_lines(&self) -> Vec<Value> {
        let out = Command::new("timeout")
            .args([CMD_TIMEOUT, "docker", "logs", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: `{l}`: {e}")))
            .collect()
    }

    fn stderr(&self) -> String {
        let out = Command::new("timeout")
            .args([CMD_TIMEOUT, "docker", "logs", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Waits until a stdout line satisfies `want`; returns it.
    fn wait_line(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = self.stdout_lines().into_iter().find(&want) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} from {} within 20 s; stdout: {:?}; stderr: {}",
                self.name,
                self.stdout_lines(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_ready(&self) {
        self.wait_line("ready line", |v| {
            v == &serde_json::json!({"kalki": "ready"})
        });
    }

    fn wait_alert(&self, name: &str, source: Ipv4Addr) -> Value {
        let src = source.to_string();
        self.wait_line(&format!("{name} alert from {src}"), |v| {
            v["kalki"] == "alert" && v["alert"] == name && v["source"] == src.as_str()
        })
    }

    /// Asks for counters with SIGUSR1 and returns the new stats line.
    fn stats(&self) -> Value {
        let before = self
            .stdout_lines()
            .iter()
            .filter(|v| v["kalki"] == "stats")
            .count();
        must("docker", &["kill", "-s", "USR1", &self.name]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats: Vec<Value> = self
                .stdout_lines()
                .into_iter()
                .filter(|v| v["kalki"] == "stats")
                .collect();
            if stats.len() > before {
                return stats[stats.len() - 1].clone();
            }
            assert!(Instant::now() < deadline, "no stats line after SIGUSR1");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", &self.name]);
    }
}

/// A veth end in the root namespace (or moved out of it), deleted when dropped.
struct Link(String);

impl Drop for Link {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.0]);
    }
}

struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = run("ip", &["netns", "del", &name]);
        must("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns.exec(&["ip", "link", "set", "dev", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", &self.0];
        a.extend(args);
        must("ip", &a)
    }

    fn try_exec(&self, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["netns", "exec", &self.0];
        a.extend(args);
        run("ip", &a)
    }

    /// Moves `link` in and gives it `addrs`, up, offload off.
    fn take(&self, link: &str, addrs: &[String]) {
        must("ip", &["link", "set", "dev", link, "netns", &self.0]);
        for a in addrs {
            self.exec(&["ip", "addr", "add", a, "dev", link]);
        }
        self.exec(&["ethtool", "-K", link, "tx", "off"]);
        self.exec(&["ip", "link", "set", "dev", link, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

/// Prepares a veth end left in the root namespace for the test to drive: quiet (no
/// IPv6), offload off, up; and a packet socket on it.
fn driven(host: &str) -> PacketSocket {
    must(
        "sysctl",
        &["-qw", &format!("net.ipv6.conf.{host}.disable_ipv6=1")],
    );
    must("ethtool", &["-K", host, "tx", "off"]);
    must("ip", &["link", "set", "dev", host, "up"]);
    let iface = net::wait_for(&[host], Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{host}: {e:?}"))
        .remove(0);
    PacketSocket::open(&iface).unwrap()
}

/// IPv4 identifications of the frames from `src` that arrive within `dur`.
fn arrivals(sock: &PacketSocket, src: Ipv4Addr, dur: Duration) -> Vec<u16> {
    let mut buf = vec![0u8; 1 << 16];
    let mut ids = Vec::new();
    let deadline = Instant::now() + dur;
    while Instant::now() < deadline {
        match sock.recv(&mut buf).unwrap() {
            Recv::Frame(n) => {
                let f = &buf[..n];
                if packet::parse(f).is_some_and(|p| p.src == src) {
                    ids.push(u16::from_be_bytes([f[18], f[19]]));
                }
            }
            Recv::Ignored => {}
            Recv::Empty => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    ids
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no `{key}` in {v}"))
}

#[test]
fn inline_ip_block_between_real_stacks() {
    if !ready() {
        return;
    }
    let u = unique();
    // 10.213.<k>.0/24, k from the unique tag, inside namespaces this test owns.
    let k = u.parse::<u64>().unwrap() % 200 + 20;
    let (dev_ip, up_ip, bad_ip) = (
        format!("10.213.{k}.2"),
        format!("10.213.{k}.1"),
        format!("10.213.{k}.66"),
    );
    let c = Container::start(
        &u,
        &["KALKI_INTERFACES=a,b", "KALKI_STATS_INTERVAL_MS=0"],
        &["ip-block", "--addresses", &bad_ip],
    );
    let dev = Netns::new(format!("kut-{u}-dev"));
    let up = Netns::new(format!("kut-{u}-up"));
    let (hd, hu) = (format!("ku{u}d"), format!("ku{u}u"));
    let _ld = c.attach(&hd, "a");
    let _lu = c.attach(&hu, "b");
    dev.take(&hd, &[format!("{dev_ip}/24")]);
    up.take(&hu, &[format!("{up_ip}/24"), format!("{bad_ip}/24")]);
    c.wait_ready();
    let readies = c
        .stdout_lines()
        .iter()
        .filter(|v| v["kalki"] == "ready")
        .count();
    assert_eq!(readies, 1);

    // Allowed traffic, both ways.
    dev.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &up_ip]);
    up.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &dev_ip]);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    for (server, client, addr) in [(&dev, &up, &dev_ip), (&up, &dev, &up_ip)] {
        let file = std::env::temp_dir().join(format!("kalki-umbox-{u}.data"));
        std::fs::write(&file, &data).unwrap();
        let ns = server.0.clone();
        let listener = std::thread::spawn(move || {
            Command::new("timeout")
                .args(["15", "ip", "netns", "exec", &ns, "nc", "-l", "-p", "5001"])
                .output()
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        let sent = client.try_exec(&[
            "sh",
            "-c",
            &format!("nc -N -w 5 {addr} 5001 < {}", file.display()),
        ]);
        let got = listener.join().unwrap();
        let _ = std::fs::remove_file(&file);
        sent.unwrap();
        assert!(
            got.stdout == data,
            "TCP to {addr}: {} of {} bytes",
            got.stdout.len(),
            data.len()
        );
    }

    // A listed source is dropped and reported.
    let lost = up.try_exec(&[
        "ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", &bad_ip, &dev_ip,
    ]);
    assert!(lost.is_err(), "ping from the blocked address got through");
    let alert = c.wait_alert("blocked_ip", bad_ip.parse().unwrap());
    assert_eq!(alert["direction"], "from");

    let s = c.stats();
    assert_eq!(s["function"], "ip-block");
    assert!(n(&s, "forwarded") >= 12 + 200, "{s}");
    assert!(n(&s, "dropped") >= 2, "{s}");
    assert_eq!(n(&s, "send_errors"), 0, "{s}");

    // SIGTERM (docker stop) ends it at once, with a last stats line and exit 0.
    let t = Instant::now();
    must("docker", &["stop", "-t", "10", &c.name]);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "docker stop took {:?}",
        t.elapsed()
    );
    let code = must("docker", &["inspect", "-f", "{{.State.ExitCode}}", &c.name]);
    assert_eq!(code.trim(), "0");
    assert_eq!(c.stdout_lines().last().unwrap()["kalki"], "stats");
}

#[test]
fn inline_xmas_block_forwards_once_each_way_and_drops_xmas() {
    if !ready() {
        return;
    }
    let u = unique();
    let c = Container::start(&u, &["KALKI_STATS_INTERVAL_MS=0"], &["xmas-block"]);
    let (ha, hb) = (format!("ku{u}a"), format!("ku{u}b"));
    let _la = c.attach(&ha, "a");
    let _lb = c.attach(&hb, "b");
    let sa = driven(&ha);
    let sb = driven(&hb);
    c.wait_ready();

    let dev = Ipv4Addr::new(198, 18, 0, 10);
    let peer = Ipv4Addr::new(198, 18, 1, 20);
    let xmas = TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG;
    let frame = |src, dst, flags, id| Craft::tcp(src, 40000, dst, 80, flags).ident(id).build();
    // Device side: one allowed, one Xmas; uplink side the same.
    sa.send(&frame(dev, peer, TcpFlags::SYN, 101)).unwrap();
    sa.send(&frame(dev, peer, xmas, 102)).unwrap();
    sb.send(&frame(peer, dev, TcpFlags::SYN | TcpFlags::ACK, 201))
        .unwrap();
    sb.send(&frame(peer, dev, xmas, 202)).unwrap();
    let at_b = arrivals(&sb, dev, Duration::from_millis(1500));
    let at_a = arrivals(&sa, peer, Duration::from_millis(500));
    assert_eq!(at_b, [101], "arrived at the uplink side");
    assert_eq!(at_a, [201], "arrived at the device side");

    c.wait_alert("xmas_scan", peer);
    c.wait_alert("xmas_scan", dev);
    let s = c.stats();
    assert_eq!((n(&s, "forwarded"), n(&s, "dropped")), (2, 2), "{s}");

    // Deleting one veth takes its container end along: the µmbox exits 1 and says so.
    drop(sb);
    must("ip", &["link", "del", &hb]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let state = loop {
        let st = must(
            "docker",
            &[
                "inspect",
                "-f",
                "{{.State.Status}} {{.State.ExitCode}}",
                &c.name,
            ],
        );
        if st.trim() != "running 0" || Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(state.trim(), "exited 1");
    assert!(
        c.stderr().contains("interface `b` disappeared"),
        "{}",
        c.stderr()
    );
}

#[test]
fn tap_sniffer_counts_copies_and_reports_a_port_scan() {
    if !ready() {
        return;
    }
    let u = unique();
    let c = Container::start(
        &u,
        &["KALKI_INTERFACES=tap"],
        &[
            "sniffer",
            "--stats",
            "true",
            "--stats-interval",
            "3600000",
            "--scan-ports",
            "20",
            "--scan-window",
            "60000",
        ],
    );
    let ht = format!("ku{u}t");
    let _lt = c.attach(&ht, "tap");
    let st = driven(&ht);
    c.wait_ready();

    let scanner = Ipv4Addr::new(198, 18, 2, 7);
    let dev = Ipv4Addr::new(198, 18, 0, 10);
    // Ten packets of an established connection: no probes.
    for i in 0..10 {
        let f = Craft::tcp(dev, 80, scanner, 40000, TcpFlags::ACK)
            .ident(i)
            .build();
        st.send(&f).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(!c.stdout_lines().iter().any(|v| v["kalki"] == "alert"));
    // A SYN scan of 40 ports.
    for port in 1000..1040 {
        st.send(&Craft::tcp(scanner, 50000, dev, port, TcpFlags::SYN).build())
            .unwrap();
    }
    let a = c.wait_alert("port_scan", scanner);
    assert_eq!(a["target"], dev.to_string());
    assert_eq!(n(&a, "ports"), 20);
    // One alert per scan: the hold-off keeps the rest of the burst quiet.
    std::thread::sleep(Duration::from_millis(300));
    let alerts = c
        .stdout_lines()
        .iter()
        .filter(|v| v["kalki"] == "alert")
        .count();
    assert_eq!(alerts, 1);

    let s = c.stats();
    assert_eq!(n(&s, "copied"), 50, "{s}");
    assert_eq!((n(&s, "forwarded"), n(&s, "dropped")), (0, 0));
    let peers = s["peers"].as_array().unwrap();
    let by = |ip: Ipv4Addr| peers.iter().find(|p| p["ip"] == ip.to_string()).cloned();
    assert_eq!(n(&by(scanner).unwrap(), "packets"), 40);
    assert_eq!(n(&by(dev).unwrap(), "packets"), 10);
}
