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
//!   copies counted;
//! - an inline `auth-proxy` with a credentials file mounted as the runtime mounts it,
//!   between namespaces with real stacks, `busybox httpd` on the device and `curl` on
//!   the uplink: no credentials and wrong ones get the proxy's `401` (with
//!   `failed_login`, then `max_login_attempts`) while the device's server reads no
//!   request and keeps no connection, the right ones get the device's page, another port
//!   and ping pass; without the file the container exits 1 and never says `ready`;
//! - an inline `fake-replies` (upnp, http) the same way: `curl` to a control port gets
//!   the µmbox's answer (TLS on 443 a reset) while the device's server there reads
//!   nothing, and ping and TCP to other ports get nothing through, either way.
//!
//! Needs root (network namespaces), `ip`, `nsenter`, `ethtool`, `ping`, `nc`, `ss`,
//! `curl`, `busybox` (its `httpd`), the engine (`scripts/docker/start.sh`) and the image
//! (`scripts/images.sh`; `make images` does both). Without the engine, the image, curl
//! or busybox the tests are skipped, except under `CI=true` where that is a failure. Every external command runs under `timeout`; containers,
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
        Container::start_with(tag, &[], env, args)
    }

    /// [`Container::start`] with more `docker run` options (`-v` for a secret, say).
    fn start_with(tag: &str, options: &[&str], env: &[&str], args: &[&str]) -> Container {
        let c = Container::launch(tag, options, env, args);
        assert!(
            c.pid != "0",
            "container {} is not running: {}",
            c.name,
            c.stderr()
        );
        c
    }

    /// Runs the container; it may have exited already (`pid` is then `0`).
    fn launch(tag: &str, options: &[&str], env: &[&str], args: &[&str]) -> Container {
        let name = format!("kalki-umbox-test-{tag}");
        let _ = run("docker", &["rm", "-f", &name]);
        let mut a = vec!["run", "-d", "--network", "none", "--name", &name];
        a.extend(options);
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
        c
    }

    /// `STATUS EXITCODE` once the container has stopped running (within 10 s).
    fn wait_exit(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = must(
                "docker",
                &[
                    "inspect",
                    "-f",
                    "{{.State.Status}} {{.State.ExitCode}}",
                    &self.name,
                ],
            );
            if !st.trim().starts_with("running") && !st.trim().starts_with("created")
                || Instant::now() > deadline
            {
                return st.trim().to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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

/// A `busybox httpd` serving `root` on `addr:port` inside a namespace; its log (one
/// `url:PATH` line per request it read) goes to a file. Stopped when dropped.
struct Httpd {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Httpd {
    fn start(ns: &Netns, addr: &str, port: u16, root: &std::path::Path) -> Httpd {
        let log = root.join(format!("httpd-{addr}-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0, "busybox", "httpd", "-f", "-vv"])
            .args(["-p", &format!("{addr}:{port}"), "-h"])
            .arg(root)
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        // Listening before anyone connects.
        let deadline = Instant::now() + Duration::from_secs(5);
        while ns
            .try_exec(&["nc", "-z", "-w", "1", addr, &port.to_string()])
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "httpd on {addr}:{port} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The probe itself is logged as a connection without a request; start clean.
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(&log, b"").unwrap();
        Httpd { child, log }
    }

    /// The paths of the requests the server read.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(" url:").map(|(_, u)| u.to_string()))
            .collect()
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(u: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kalki-umbox-test-{u}"));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An inline µmbox container between two namespaces with real stacks: `dev` (the
/// device, 10.214.<k>.2) on `a`, `up` (the uplink, 10.214.<k>.1) on `b`.
struct Bench {
    c: Container,
    dev: Netns,
    up: Netns,
    dev_ip: String,
    up_ip: String,
    _links: (Link, Link),
}

impl Bench {
    fn new(u: &str, c: Container) -> Bench {
        let k = u.parse::<u64>().unwrap() % 200 + 20;
        let (dev_ip, up_ip) = (format!("10.214.{k}.2"), format!("10.214.{k}.1"));
        let dev = Netns::new(format!("kut-{u}-dev"));
        let up = Netns::new(format!("kut-{u}-up"));
        let (hd, hu) = (format!("ku{u}d"), format!("ku{u}u"));
        let links = (c.attach(&hd, "a"), c.attach(&hu, "b"));
        dev.take(&hd, &[format!("{dev_ip}/24")]);
        up.take(&hu, &[format!("{up_ip}/24")]);
        Bench {
            c,
            dev,
            up,
            dev_ip,
            up_ip,
            _links: links,
        }
    }

    /// Fixed neighbour entries both ways: for a µmbox that forwards no ARP.
    fn static_neighbours(&self) {
        let (hd, hu) = (&self._links.0 .0, &self._links.1 .0);
        let mac = |ns: &Netns, link: &str| {
            ns.exec(&["cat", &format!("/sys/class/net/{link}/address")])
                .trim()
                .to_string()
        };
        let (dev_mac, up_mac) = (mac(&self.dev, hd), mac(&self.up, hu));
        self.up.exec(&[
            "ip",
            "neigh",
            "replace",
            &self.dev_ip,
            "lladdr",
            &dev_mac,
            "dev",
            hu,
            "nud",
            "permanent",
        ]);
        self.dev.exec(&[
            "ip",
            "neigh",
            "replace",
            &self.up_ip,
            "lladdr",
            &up_mac,
            "dev",
            hd,
            "nud",
            "permanent",
        ]);
    }
}

/// `curl` in `ns`: the response's status line, headers and body, or why it failed.
fn curl(ns: &Netns, args: &[&str]) -> Result<String, String> {
    let mut a = vec!["curl", "-sS", "--max-time", "4", "-D", "-"];
    a.extend(args);
    ns.try_exec(&a)
}

/// What every live test of an answering µmbox needs besides [`ready`].
fn tools_ready() -> bool {
    use kalki_test_support as ts;
    ts::require(&[(
        ts::tools(&["curl", "busybox", "nc"]),
        "curl, busybox (scripts/docker/start.sh installs busybox-static) and nc",
    )])
}

#[test]
fn auth_proxy_between_real_stacks() {
    if !ready() || !tools_ready() {
        return;
    }
    let u = unique();
    let dir = TempDir::new(&u);
    let creds = dir.0.join("creds");
    std::fs::write(&creds, "# the lab's owner\nowner:S3cret!\n").unwrap();
    let www = dir.0.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), format!("device page {u}\n")).unwrap();
    let mount = format!("{}:/run/secrets/proxy-credentials:ro", creds.display());
    let c = Container::start_with(
        &u,
        &["-v", &mount],
        &["KALKI_INTERFACES=a,b", "KALKI_STATS_INTERVAL_MS=0"],
        &[
            "auth-proxy",
            "--listen-port",
            "9010",
            "--max-failures",
            "1",
            "--realm",
            "lab",
        ],
    );
    let b = Bench::new(&u, c);
    b.c.wait_ready();
    let guarded = Httpd::start(&b.dev, &b.dev_ip, 9010, &www);
    let other = Httpd::start(&b.dev, &b.dev_ip, 8081, &www);
    let url = format!("http://{}:9010/index.html", b.dev_ip);

    // Not guarded: ping, and the web server on another port.
    b.up.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", &b.dev_ip]);
    let page = curl(&b.up, &[&format!("http://{}:8081/index.html", b.dev_ip)]).unwrap();
    assert!(page.starts_with("HTTP/1.1 200") && page.contains(&format!("device page {u}")));
    assert_eq!(other.requests(), ["/index.html"]);

    // No credentials: the challenge, from the proxy; the device never reads the request.
    let r = curl(&b.up, &[&url]).unwrap();
    assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{r}");
    assert!(
        r.contains("WWW-Authenticate: Basic realm=\"lab\"\r\n"),
        "{r}"
    );
    assert!(
        r.contains("Connection: close\r\n") && !r.contains("device page"),
        "{r}"
    );
    // Wrong credentials: the same, and a failed login; twice is one too many.
    for _ in 0..2 {
        let r = curl(&b.up, &["-u", "owner:wrong", &url]).unwrap();
        assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{r}");
    }
    let up_ip: Ipv4Addr = b.up_ip.parse().unwrap();
    let a = b.c.wait_alert("failed_login", up_ip);
    assert_eq!(a["user"], "owner");
    b.c.wait_alert("max_login_attempts", up_ip);
    assert!(guarded.requests().is_empty(), "{:?}", guarded.requests());
    // The resets reached the device: it holds no connection to the guarded port.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = b
            .dev
            .exec(&["ss", "-Htn", "state", "established", "( sport = :9010 )"]);
        if open.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the device still has: {open}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The right credentials: the device's own page.
    let r = curl(&b.up, &["-u", "owner:S3cret!", &url]).unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains(&format!("device page {u}")), "{r}");
    assert_eq!(guarded.requests(), ["/index.html"]);

    let s = b.c.stats();
    assert_eq!((n(&s, "refused"), n(&s, "authorised")), (3, 1), "{s}");
    // Each refusal: the challenge to the client, a reset to the device.
    assert!(n(&s, "injected") >= 6, "{s}");
    assert_eq!(n(&s, "send_errors"), 0, "{s}");
    assert!(!b.c.stderr().contains("S3cret"), "{}", b.c.stderr());
    assert!(
        b.c.stderr().contains("1 proxy credential(s)"),
        "{}",
        b.c.stderr()
    );
}

#[test]
fn auth_proxy_without_its_credentials_never_gets_ready() {
    if !ready() {
        return;
    }
    let u = unique();
    // No file mounted at /run/secrets/proxy-credentials.
    let c = Container::launch(
        &u,
        &[],
        &["KALKI_INTERFACES=a,b"],
        &["auth-proxy", "--block"],
    );
    assert_eq!(c.wait_exit(), "exited 1");
    assert!(c.stdout_lines().is_empty(), "{:?}", c.stdout_lines());
    let err = c.stderr();
    assert!(
        err.contains("cannot read the proxy credentials `/run/secrets/proxy-credentials`"),
        "{err}"
    );
}

/// fake-replies with `protocol` between real stacks: `ask` (curl arguments after the
/// address) gets `want` from the µmbox on a control port while the device's server there
/// reads nothing, and nothing else crosses either way.
fn fake_replies_case(protocol: &str, port: u16, path: &str, ask: &[&str], want: &[&str]) {
    if !ready() || !tools_ready() {
        return;
    }
    let u = unique();
    let dir = TempDir::new(&u);
    std::fs::write(dir.0.join("index.html"), "the real device\n").unwrap();
    let c = Container::start(
        &u,
        &["KALKI_INTERFACES=a,b", "KALKI_STATS_INTERVAL_MS=0"],
        &["fake-replies", "--protocol", protocol],
    );
    let b = Bench::new(&u, c);
    // fake-replies forwards no ARP; the switch would not steer it there either.
    b.static_neighbours();
    b.c.wait_ready();
    let control = Httpd::start(&b.dev, &b.dev_ip, port, &dir.0);
    let other = Httpd::start(&b.dev, &b.dev_ip, 8081, &dir.0);
    let uplink = Httpd::start(&b.up, &b.up_ip, 8000, &dir.0);

    let mut args = ask.to_vec();
    let url = format!("http://{}:{port}{path}", b.dev_ip);
    args.push(&url);
    let r = curl(&b.up, &args).unwrap();
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains("Connection: close\r\n") && !r.contains("the real device"),
        "{r}"
    );
    for w in want {
        assert!(r.contains(w), "no `{w}` in {r}");
    }
    let a =
        b.c.wait_alert("intercepted_command", b.up_ip.parse().unwrap());
    assert_eq!(a["port"], port);
    assert!(control.requests().is_empty(), "{:?}", control.requests());
    if protocol == "http" {
        // TLS cannot be answered: the handshake is reset, never forwarded.
        let tls = curl(&b.up, &["-k", &format!("https://{}:443/", b.dev_ip)]);
        let err = tls.unwrap_err();
        assert!(err.contains("reset") || err.contains("SSL"), "{err}");
    }

    // Nothing else gets through, either way.
    let lost =
        b.up.try_exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &b.dev_ip]);
    assert!(lost.is_err(), "ping to the device got an answer");
    let lost = b
        .dev
        .try_exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &b.up_ip]);
    assert!(lost.is_err(), "ping from the device got an answer");
    let other_url = format!("http://{}:8081/index.html", b.dev_ip);
    assert!(curl(&b.up, &["--max-time", "2", &other_url]).is_err());
    let up_url = format!("http://{}:8000/index.html", b.up_ip);
    assert!(curl(&b.dev, &["--max-time", "2", &up_url]).is_err());
    assert!(other.requests().is_empty() && uplink.requests().is_empty());

    let s = b.c.stats();
    assert_eq!(n(&s, "forwarded"), 0, "{s}");
    let tls = u64::from(protocol == "http");
    assert_eq!(n(&s, "intercepted"), 1 + tls, "{s}");
    // SYN-ACK, the answer, the ACK of the client's FIN.
    assert!(n(&s, "injected") >= 3, "{s}");
    assert_eq!(n(&s, "send_errors"), 0, "{s}");
}

#[test]
fn fake_replies_upnp_answers_a_wemo_command_and_isolates_the_device() {
    fake_replies_case(
        "upnp",
        49153,
        "/upnp/control/basicevent1",
        &[
            "-H",
            "SOAPACTION: \"urn:Belkin:service:basicevent:1#SetBinaryState\"",
            "-H",
            "Content-Type: text/xml; charset=\"utf-8\"",
            "--data",
            "<u:SetBinaryState><BinaryState>1</BinaryState></u:SetBinaryState>",
        ],
        &["SetBinaryStateResponse", "<BinaryState>1</BinaryState>"],
    );
}

#[test]
fn fake_replies_http_answers_a_page_and_isolates_the_device() {
    fake_replies_case("http", 8080, "/", &[], &["<h1>OK</h1>"]);
}
