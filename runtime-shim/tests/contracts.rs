//! The catalog's traffic contracts held to the real image with real traffic
//! (`docs/language.md` §4.1: "the tests hold the real image to the catalog's contracts").
//!
//! **What is probed.** Each configuration below is compiled by the real compiler in a
//! one-device policy; its contract, `args`, `env` and `secrets` are read from the bundle's
//! container manifest (`containers/<device>/<i>-<umbox>.json`), never copied here. The
//! container then runs `kalki/umbox:0.1` as `kalki-shim` runs it (`docs/umbox.md`, "The
//! contract with the runtime shim"): `--network none`, IPv6 off, the manifest's args and
//! env plus `KALKI_INTERFACES=a,b`, an auth proxy's credentials file (mode 0600)
//! bind-mounted read-only at the secret's path, veth pairs born in its namespace as `a`
//! (device side) and `b` (uplink side), up, transmit checksum offload off; nothing is sent
//! before its `{"kalki":"ready"}` line. The host ends go into two network namespaces with
//! real stacks, `dev` (10.216.<i>.2) and `up` (10.216.<i>.1), one /24, with fixed
//! neighbour entries (`fake_replies` forwards no ARP, and the switch steers none to
//! µmboxes either).
//!
//! The flows: [`contract::cells`] over the classes of the contract's clauses plus classes
//! it does not name ([`extra_classes`]: tcp 22, 23, 8081, udp 53, 5683, icmp), each cell
//! from both sides; for each cell its sample flow ([`contract::Cell::sample`]) and, for a
//! TCP or UDP cell of more than one port, its highest port as well.
//!
//! **How outcomes are classified** (the initiator's namespace sends, the responder's
//! namespace has a server on the port; the responder's own IPv4 counters, read from its
//! `/proc/net/snmp`, say what reached its stack):
//! - TCP: `busybox httpd` on the port in both namespaces, each serving a page that names
//!   it, logging every request it reads; the initiator runs `curl` (1 s to connect).
//!   `pass`: the responder's page came back and its server read the request. `drop`:
//!   curl timed out and no IPv4 packet reached the responder. `answer`: an HTTP response
//!   that is not the responder's page came back and no IPv4 packet reached the responder.
//!   `authenticate`: without credentials a `401` with a `Basic` challenge and the
//!   responder's server read no request (the handshake may reach it: the proxy is a
//!   bridge, `docs/umbox.md`); with `-u user:password` the responder's page, read by its
//!   server.
//! - UDP: a one-shot `nc -u -l` in the responder's namespace that replies with a datagram
//!   naming it; the initiator sends one datagram with `nc -u` (1 s). `pass`: that reply
//!   came back and the responder's stack delivered a datagram; `drop`: no reply and no
//!   IPv4 packet reached the responder; `answer`: another reply and nothing reached it.
//! - ICMP: one `ping` (1 s). `pass`: a reply and the responder's stack answered an echo
//!   request; `drop`: no reply, nothing reached it; `answer`: a reply, nothing reached it.
//!
//! Anything else is `unclear` and never agrees with a contract. The expected treatment is
//! `contract.treat(&flow)`; a disagreement fails the test with a table. The same
//! comparison ([`compare`]) then runs against contracts with one clause flipped and must
//! disagree: a wrong contract fails this test, from the observations of the one run.
//!
//! **Not covered, and why.**
//! - Taps (`sniffer`, `ids`, `login_monitor`) are never on the path: they read a mirrored
//!   copy and send nothing, so their `pass all` is the switch's doing (the original goes
//!   on unwatched), not the image's. `runtime-shim/tests/e2e.rs` covers that through the
//!   real switch; `umbox/tests/docker.rs` covers a tap reading its copies.
//! - Other IPv4 protocols (the cells' `other ip`): no stock tool here sends and answers,
//!   say, GRE between two stacks; every catalog contract treats them like `all`.
//! - Non-IPv4 frames (the `all` of a class): ARP is answered around the µmboxes by the
//!   switch and IPv6 is off on the node's µmbox ports (`docs/runtime.md`); `e2e.rs`
//!   checks that no non-IPv4 frame crosses an inline µmbox.
//! - TLS: a flow is named by its protocol and port, not its payload; the probes speak
//!   plain HTTP on every port. `umbox/tests/docker.rs` checks that fake-replies resets a
//!   TLS handshake on 443 and that the auth proxy refuses one.
//! - What a function stops at run time (a detected scanner, an Xmas segment, a listed
//!   address, a rate above the limit) is, by the catalog's rule, still `pass` in its
//!   contract; the function tests in `umbox/` cover it. The probes stay below every limit.
//!
//! Needs root (network namespaces), the Docker engine, the image (`make images`), `ip`,
//! `nsenter`, `ethtool`, `ss`, `curl`, `busybox` (`scripts/docker/start.sh` installs
//! busybox-static), `nc` (netcat-openbsd) and `ping`. Missing, the test is skipped,
//! except under `CI=true` where that is a failure. The configurations run concurrently,
//! one thread each; containers, namespaces and servers are removed by guards, also when
//! the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use kalki_model::contract::{
    self, Class, Contract, Flow, FlowProto, PortRange, Proto, Starter, Treatment,
};
use kalki_model::manifest::Container as Manifest;
use kalki_test_support as ts;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "kalki/umbox:0.1";
/// The proxies' one user (not a factory pair: `auth_proxy_block` would block it).
const USER: &str = "contract-owner";

/// One catalog µmbox with its arguments, as a chain entry.
struct Config {
    umbox: &'static str,
    call: &'static str,
}

const CONFIGS: [Config; 9] = [
    Config {
        umbox: "auth_proxy",
        call: "auth_proxy(listen_port = 8080)",
    },
    Config {
        umbox: "auth_proxy_block",
        call: "auth_proxy_block(listen_port = 8080)",
    },
    Config {
        umbox: "fake_replies",
        call: "fake_replies(protocol = upnp)",
    },
    Config {
        umbox: "fake_replies",
        call: "fake_replies(protocol = hue)",
    },
    Config {
        umbox: "fake_replies",
        call: "fake_replies(protocol = http)",
    },
    Config {
        umbox: "brute_force",
        call: "brute_force",
    },
    Config {
        umbox: "anti_dos",
        // Far above what the probes open and send.
        call: "anti_dos(max_conn = 1000, max_rate = 100000)",
    },
    Config {
        umbox: "ip_block",
        call: "ip_block(addresses = \"198.51.100.0/24\")",
    },
    Config {
        umbox: "xmas_block",
        call: "xmas_block",
    },
];

/// Classes probed besides the contract's own: well-known ports no catalog entry names
/// (ssh, telnet, next to the proxies' port, DNS, CoAP) and ICMP.
fn extra_classes() -> Vec<Class> {
    let port = |proto, p| Class {
        proto,
        ports: vec![PortRange { lo: p, hi: p }],
    };
    vec![
        port(Proto::Tcp, 22),
        port(Proto::Tcp, 23),
        port(Proto::Tcp, 8081),
        port(Proto::Udp, 53),
        port(Proto::Udp, 5683),
        Class {
            proto: Proto::Icmp,
            ports: vec![],
        },
    ]
}

/// The flows probed for a contract: the sample of every cell (and the highest port of a
/// wide TCP or UDP cell), from both sides; no `other ip` (see the module's doc).
fn flows(c: &Contract) -> Vec<Flow> {
    let mut classes: Vec<Class> = c.clauses.iter().map(|cl| cl.class.clone()).collect();
    classes.extend(extra_classes());
    let mut out = Vec::new();
    for cell in contract::cells(&classes) {
        if cell.proto == FlowProto::Other {
            continue;
        }
        let s = cell.sample();
        out.push(s);
        if matches!(cell.proto, FlowProto::Tcp | FlowProto::Udp) && cell.ports.1 != s.port {
            out.push(Flow {
                port: cell.ports.1,
                ..s
            });
        }
    }
    out
}

/// The container manifest of `cfg`, from a bundle the real compiler built.
fn manifest(cfg: &Config) -> Manifest {
    let src = format!(
        r#"
import std::umboxes::{{{umbox}}}

device type Probe {{
    alerts tamper
    states normal < attack
    initial normal
    normal {{ chain [{call}] }}
    attack {{ chain [drop] }}
    normal -> attack on tamper
    attack -> normal on operator reset
}}

site contracts {{
    bridge "kt-ctr" uplink "kc-up"
    device probed: Probe at 10.216.0.2 port "kc-d0"
}}
"#,
        umbox = cfg.umbox,
        call = cfg.call
    );
    let bundle = common::compile(&src);
    let files: Vec<(&String, &Vec<u8>)> = bundle
        .files
        .iter()
        .filter(|(p, _)| p.starts_with("containers/"))
        .collect();
    assert_eq!(files.len(), 1, "{}: {:?}", cfg.call, bundle.files.keys());
    let (path, bytes) = files[0];
    assert!(
        path.ends_with(&format!("-{}.json", cfg.umbox)),
        "{path} for {}",
        cfg.call
    );
    let m: Manifest = serde_json::from_slice(bytes).unwrap();
    assert_eq!(m.image, IMAGE, "{}", cfg.call);
    m
}

// ---------------------------------------------------------------------------------------
// Observations and the comparison.

/// What a probe showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Is(Treatment),
    /// Fits no treatment: never agrees with a contract.
    Unclear,
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Is(t) => write!(f, "{t}"),
            Seen::Unclear => f.write_str("unclear"),
        }
    }
}

/// One probe of one configuration.
#[derive(Debug, Clone)]
struct Observation {
    config: String,
    flow: Flow,
    seen: Seen,
    /// What came back and what reached the responder.
    evidence: String,
}

/// A flow whose observed outcome is not what the contract says.
#[derive(Debug, Clone)]
struct Mismatch {
    config: String,
    flow: Flow,
    expected: Treatment,
    observed: Seen,
    evidence: String,
}

/// Every observation whose outcome is not its configuration's contract's treatment of
/// its flow. An observation of a configuration without a contract is a mismatch too
/// (expected `drop`: nothing is assumed to cross).
fn compare(contracts: &BTreeMap<String, Contract>, observations: &[Observation]) -> Vec<Mismatch> {
    observations
        .iter()
        .filter_map(|o| {
            let expected = contracts
                .get(&o.config)
                .map_or(Treatment::Drop, |c| c.treat(&o.flow));
            let agrees = contracts.contains_key(&o.config) && o.seen == Seen::Is(expected);
            (!agrees).then(|| Mismatch {
                config: o.config.clone(),
                flow: o.flow,
                expected,
                observed: o.seen,
                evidence: o.evidence.clone(),
            })
        })
        .collect()
}

/// A flow in a table cell: `tcp 8080 from uplink`.
fn flow_text(f: &Flow) -> String {
    let side = match f.from {
        Starter::Device => "device",
        Starter::Uplink => "uplink",
    };
    match f.proto {
        FlowProto::Tcp => format!("tcp {} from {side}", f.port),
        FlowProto::Udp => format!("udp {} from {side}", f.port),
        FlowProto::Icmp => format!("icmp from {side}"),
        FlowProto::Other => format!("ip proto {} from {side}", f.proto.number()),
    }
}

/// Rows as an aligned text table under a header.
fn table(header: [&str; 5], rows: &[[String; 5]]) -> String {
    let mut width = header.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 4 {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    for r in rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    out
}

fn mismatch_table(ms: &[Mismatch]) -> String {
    let rows: Vec<[String; 5]> = ms
        .iter()
        .map(|m| {
            [
                m.config.clone(),
                flow_text(&m.flow),
                m.expected.to_string(),
                m.observed.to_string(),
                m.evidence.clone(),
            ]
        })
        .collect();
    table(
        ["config", "flow", "expected", "observed", "evidence"],
        &rows,
    )
}

// ---------------------------------------------------------------------------------------
// The wiring: a container as the shim runs it, between two namespaces.

/// Runs `program` under `timeout SECS`, whatever its outcome.
fn output(secs: u32, program: &str, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// A network namespace with a real stack (IPv6 off), deleted with everything in it when
/// dropped.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = ts::run("ip", &["netns", "del", &name]);
        ts::must("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns.exec(&["ip", "link", "set", "dev", "lo", "up"]);
        ns
    }

    fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["netns", "exec", &self.0];
        a.extend(args);
        a
    }

    fn exec(&self, args: &[&str]) -> String {
        ts::must("ip", &self.argv(args))
    }

    /// Runs `args` in the namespace under `timeout SECS`, whatever its outcome.
    fn output(&self, secs: u32, args: &[&str]) -> std::process::Output {
        output(secs, "ip", &self.argv(args))
    }

    /// Moves `link` in and gives it `addr`, up, offload off.
    fn take(&self, link: &str, addr: &str) {
        ts::must("ip", &["link", "set", "dev", link, "netns", &self.0]);
        self.exec(&["ip", "addr", "add", addr, "dev", link]);
        self.exec(&["ethtool", "-K", link, "tx", "off"]);
        self.exec(&["ip", "link", "set", "dev", link, "up"]);
    }

    fn mac(&self, link: &str) -> String {
        self.exec(&["cat", &format!("/sys/class/net/{link}/address")])
            .trim()
            .to_string()
    }

    /// The namespace's own IPv4 counters (`/proc/net/snmp`), as `Ip.InReceives` etc.
    fn counters(&self) -> BTreeMap<String, u64> {
        let text = self.exec(&["cat", "/proc/net/snmp"]);
        let mut out = BTreeMap::new();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (Some((group, names)), Some((_, values))) =
                (names.split_once(": "), values.split_once(": "))
            else {
                continue;
            };
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                if let Ok(v) = v.parse() {
                    out.insert(format!("{group}.{n}"), v);
                }
            }
        }
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ts::run("ip", &["netns", "del", &self.0]);
    }
}

/// The µmbox container; removed when dropped.
struct Umbox {
    name: String,
    pid: String,
}

impl Umbox {
    /// `docker run` as `kalki-shim` does it (`runtime-shim/src/docker.rs` and
    /// `node.rs`): no network, IPv6 off, the manifest's args and env plus the
    /// interfaces, each secret bind-mounted read-only.
    fn start(name: String, m: &Manifest, secrets: &[(PathBuf, String)]) -> Umbox {
        let _ = ts::run("docker", &["rm", "-f", &name]);
        let mut a: Vec<String> = ["run", "-d", "--network", "none", "--name", &name]
            .map(String::from)
            .to_vec();
        a.extend(["--label".into(), "kalki.test=contracts".into()]);
        a.extend(["--sysctl".into(), "net.ipv6.conf.all.disable_ipv6=1".into()]);
        a.extend([
            "--sysctl".into(),
            "net.ipv6.conf.default.disable_ipv6=1".into(),
        ]);
        let mut env = m.env.clone();
        env.insert("KALKI_INTERFACES".into(), "a,b".into());
        for (k, v) in &env {
            a.extend(["-e".into(), format!("{k}={v}")]);
        }
        for (source, target) in secrets {
            a.extend([
                "--mount".into(),
                format!(
                    "type=bind,source={},target={target},readonly",
                    source.display()
                ),
            ]);
        }
        a.push(m.image.clone());
        a.extend(m.args.iter().cloned());
        // The guard exists before the container does: a failed start is cleaned up too.
        let mut c = Umbox {
            name: name.clone(),
            pid: String::new(),
        };
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ts::must("docker", &a);
        c.pid = ts::must("docker", &["inspect", "-f", "{{.State.Pid}}", &name])
            .trim()
            .to_string();
        assert!(c.pid != "0", "{name} is not running: {}", c.logs().1);
        c
    }

    /// A veth pair whose container end is born inside the container as `ifname`, up,
    /// transmit checksum offload off; the host end is left for a namespace to take.
    fn attach(&self, host: &str, ifname: &str) {
        ts::must(
            "ip",
            &[
                "link", "add", host, "type", "veth", "peer", "name", ifname, "netns", &self.pid,
            ],
        );
        ts::must(
            "nsenter",
            &["-t", &self.pid, "-n", "ethtool", "-K", ifname, "tx", "off"],
        );
        ts::must(
            "nsenter",
            &[
                "-t", &self.pid, "-n", "ip", "link", "set", "dev", ifname, "up",
            ],
        );
    }

    /// (stdout, stderr) so far.
    fn logs(&self) -> (String, String) {
        let o = output(60, "docker", &["logs", &self.name]);
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (out, err) = self.logs();
            if out.lines().any(|l| l == r#"{"kalki":"ready"}"#) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within 30 s; stdout: {out}; stderr: {err}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `running STARTED-AT`, or why there is no answer.
    fn state(&self) -> String {
        ts::run(
            "docker",
            &[
                "inspect",
                "-f",
                "{{.State.Status}} {{.State.StartedAt}}",
                &self.name,
            ],
        )
        .map_or_else(|e| e, |s| s.trim().to_string())
    }

    /// The counters, asked for with SIGUSR1.
    fn stats(&self) -> Result<String, String> {
        let count = |s: &str| {
            s.lines()
                .filter(|l| l.contains(r#""kalki":"stats""#))
                .count()
        };
        let before = count(&self.logs().0);
        ts::run("docker", &["kill", "-s", "USR1", &self.name])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.logs().0;
            if count(&out) > before {
                let last = out
                    .lines()
                    .rfind(|l| l.contains(r#""kalki":"stats""#))
                    .unwrap_or_default();
                return Ok(last.to_string());
            }
            if Instant::now() > deadline {
                return Err("no stats line within 10 s of SIGUSR1".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Umbox {
    fn drop(&mut self) {
        let _ = ts::run("docker", &["rm", "-f", &self.name]);
    }
}

/// A `busybox httpd` on `addr:port` in a namespace; its log (a `url:PATH` line per
/// request it read) goes to a file. Stopped when dropped.
struct Httpd {
    child: Child,
    log: PathBuf,
}

impl Httpd {
    fn start(ns: &Netns, addr: &str, port: u16, root: &Path, logs: &Path) -> Httpd {
        let log = logs.join(format!("{}-{port}.log", ns.0));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0, "busybox", "httpd", "-f", "-vv"])
            .args(["-p", &format!("{addr}:{port}"), "-h"])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Httpd { child, log }
    }

    /// Listening (checked from inside its own namespace, so never across the µmbox),
    /// with a clean log: the check itself is logged as a connection without a request.
    fn wait_listening(&self, ns: &Netns, addr: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let p = port.to_string();
        while !ns
            .output(5, &["nc", "-z", "-w", "1", addr, &p])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "httpd on {addr}:{port} in {} did not start",
                ns.0
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(&self.log, b"").unwrap();
    }

    /// How many requests it has read.
    fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" url:"))
            .count()
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One side of the bench: its namespace, address and the page its servers serve.
struct Side {
    ns: Netns,
    ip: String,
    page: String,
}

/// One configuration wired up: the container between `dev` and `up`.
struct Bench {
    config: String,
    // Dropped first: servers, then namespaces (and the veths in them), then the
    // container, then the files.
    servers: BTreeMap<(Starter, u16), Httpd>,
    dev: Side,
    up: Side,
    umbox: Umbox,
    password: String,
    dir: TempDir,
}

impl Bench {
    fn new(i: usize, m: &Manifest, config: &str) -> Bench {
        let tag = format!("{}{i}", std::process::id() % 100_000);
        let dir = TempDir(std::env::temp_dir().join(format!("kalki-contracts-{tag}")));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        let password = format!("probe-{tag}-pw");
        let mut secrets = Vec::new();
        for s in &m.secrets {
            assert_eq!(s.name, "credentials", "{config}: unknown secret {}", s.name);
            let file = dir.0.join(&s.name);
            std::fs::write(&file, format!("{USER}:{password}\n")).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            secrets.push((file, s.path.clone()));
        }
        let umbox = Umbox::start(format!("kalki-contracts-{tag}"), m, &secrets);
        let side = |who: &str, ip: String| {
            let www = dir.0.join(format!("www-{who}"));
            std::fs::create_dir_all(&www).unwrap();
            let page = format!("the {who}'s own page {tag}");
            std::fs::write(www.join("index.html"), format!("{page}\n")).unwrap();
            Side {
                ns: Netns::new(format!("kct{tag}{}", &who[..1])),
                ip,
                page,
            }
        };
        let dev = side("device", format!("10.216.{i}.2"));
        let up = side("uplink", format!("10.216.{i}.1"));
        let (hd, hu) = (format!("kc{tag}d"), format!("kc{tag}u"));
        umbox.attach(&hd, "a");
        umbox.attach(&hu, "b");
        dev.ns.take(&hd, &format!("{}/24", dev.ip));
        up.ns.take(&hu, &format!("{}/24", up.ip));
        let (dev_mac, up_mac) = (dev.ns.mac(&hd), up.ns.mac(&hu));
        for (s, peer, mac, link) in [(&up, &dev.ip, &dev_mac, &hu), (&dev, &up.ip, &up_mac, &hd)] {
            s.ns.exec(&[
                "ip",
                "neigh",
                "replace",
                peer,
                "lladdr",
                mac,
                "dev",
                link,
                "nud",
                "permanent",
            ]);
        }
        umbox.wait_ready();
        Bench {
            config: config.to_string(),
            servers: BTreeMap::new(),
            dev,
            up,
            umbox,
            password,
            dir,
        }
    }

    /// The side that starts and the side that responds.
    fn sides(&self, from: Starter) -> (&Side, &Side) {
        match from {
            Starter::Uplink => (&self.up, &self.dev),
            Starter::Device => (&self.dev, &self.up),
        }
    }

    /// An HTTP server on each TCP port in both namespaces (responding for flows the other
    /// side starts).
    fn serve(&mut self, ports: &[u16]) {
        let logs = self.dir.0.clone();
        let mut started = Vec::new();
        for &port in ports {
            for from in [Starter::Uplink, Starter::Device] {
                let (_, r) = self.sides(from);
                let root = logs.join(if from == Starter::Uplink {
                    "www-device"
                } else {
                    "www-uplink"
                });
                started.push(((from, port), Httpd::start(&r.ns, &r.ip, port, &root, &logs)));
            }
        }
        for ((from, port), h) in started {
            let (_, r) = self.sides(from);
            h.wait_listening(&r.ns, &r.ip, port);
            self.servers.insert((from, port), h);
        }
    }

    fn probe(&self, flow: Flow) -> Observation {
        let (seen, evidence) = match flow.proto {
            FlowProto::Tcp => self.tcp(flow),
            FlowProto::Udp => self.udp(flow),
            FlowProto::Icmp => self.icmp(flow),
            FlowProto::Other => (Seen::Unclear, "not probed".into()),
        };
        Observation {
            config: self.config.clone(),
            flow,
            seen,
            evidence,
        }
    }

    /// `curl` from the initiator: the response (status line, headers, body) or why
    /// there was none (curl's exit code and message).
    fn curl(&self, i: &Side, url: &str, credentials: bool) -> Result<String, (i32, String)> {
        let userpass = format!("{USER}:{}", self.password);
        let mut a = vec![
            "curl",
            "-sS",
            "--connect-timeout",
            "1",
            "--max-time",
            "3",
            "-D",
            "-",
        ];
        if credentials {
            a.extend(["-u", &userpass]);
        }
        a.push(url);
        let o = i.ns.output(10, &a);
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err((
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            ))
        }
    }

    /// IPv4 packets and `key` counted by the responder's stack while `f` runs (with a
    /// moment after it for stragglers).
    fn counted<T>(&self, r: &Side, key: &str, f: impl FnOnce() -> T) -> (T, u64, u64) {
        let before = r.ns.counters();
        let out = f();
        std::thread::sleep(Duration::from_millis(100));
        let after = r.ns.counters();
        let delta = |k: &str| after.get(k).unwrap_or(&0) - before.get(k).unwrap_or(&0);
        (out, delta("Ip.InReceives"), delta(key))
    }

    fn tcp(&self, flow: Flow) -> (Seen, String) {
        let (i, r) = self.sides(flow.from);
        let server = &self.servers[&(flow.from, flow.port)];
        let url = format!("http://{}:{}/index.html", r.ip, flow.port);
        let reqs = server.requests();
        let (res, packets, _) = self.counted(r, "Tcp.PassiveOpens", || self.curl(i, &url, false));
        let read = server.requests() - reqs;
        let seen = format!("responder: {packets} packets, {read} requests read");
        let status = |s: &str| s.lines().next().unwrap_or_default().trim().to_string();
        match res {
            Ok(body) if body.contains(&r.page) && read > 0 => (
                Seen::Is(Treatment::Pass),
                format!("{}, its page; {seen}", status(&body)),
            ),
            Ok(body)
                if body.starts_with("HTTP/1.1 401")
                    && body.contains("WWW-Authenticate: Basic")
                    && read == 0 =>
            {
                let reqs = server.requests();
                let with = self.curl(i, &url, true);
                let read_with = server.requests() - reqs;
                let ev = format!("{} without credentials; {seen}", status(&body));
                match with {
                    Ok(b) if b.contains(&r.page) && read_with > 0 => (
                        Seen::Is(Treatment::Authenticate),
                        format!("{ev}; with: {}, its page, {read_with} read", status(&b)),
                    ),
                    Ok(b) => (
                        Seen::Unclear,
                        format!("{ev}; with: {}, {read_with} read", status(&b)),
                    ),
                    Err((code, e)) => (Seen::Unclear, format!("{ev}; with: curl {code}: {e}")),
                }
            }
            Ok(body) if !body.contains(&r.page) && packets == 0 => (
                Seen::Is(Treatment::Answer),
                format!("{}, not its page; {seen}", status(&body)),
            ),
            Ok(body) => (Seen::Unclear, format!("{}; {seen}", status(&body))),
            // 28: timed out.
            Err((28, e)) if packets == 0 => {
                (Seen::Is(Treatment::Drop), format!("curl 28: {e}; {seen}"))
            }
            Err((code, e)) => (Seen::Unclear, format!("curl {code}: {e}; {seen}")),
        }
    }

    fn udp(&self, flow: Flow) -> (Seen, String) {
        let (i, r) = self.sides(flow.from);
        let port = flow.port.to_string();
        let answer = format!("udp {}", r.page);
        // One datagram's worth of server: it waits for a datagram, then sends its stdin
        // to the sender (netcat-openbsd), and is killed after the probe.
        let mut child = Command::new("ip")
            .args(["netns", "exec", &r.ns.0, "nc", "-u", "-l", "-q", "1", &port])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{answer}\n").as_bytes())
            .unwrap();
        let _server = Reaped(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while r
            .ns
            .exec(&["ss", "-Hlun", "sport", "=", &format!(":{port}")])
            .trim()
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "udp server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (reply, packets, delivered) = self.counted(r, "Udp.InDatagrams", || {
            let mut c = Command::new("timeout")
                .args(["5", "ip", "netns", "exec", &i.ns.0])
                .args(["nc", "-u", "-W", "1", "-w", "1", &r.ip, &port])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(b"probe\n").unwrap();
            let o = c.wait_with_output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
        let seen = format!("responder: {packets} packets, {delivered} datagrams delivered");
        if reply == answer && delivered > 0 {
            (Seen::Is(Treatment::Pass), format!("its reply; {seen}"))
        } else if reply.is_empty() && packets == 0 {
            (Seen::Is(Treatment::Drop), format!("no reply; {seen}"))
        } else if !reply.is_empty() && reply != answer && packets == 0 {
            (
                Seen::Is(Treatment::Answer),
                format!("reply `{reply}`; {seen}"),
            )
        } else {
            (Seen::Unclear, format!("reply `{reply}`; {seen}"))
        }
    }

    fn icmp(&self, flow: Flow) -> (Seen, String) {
        let (i, r) = self.sides(flow.from);
        let (replied, packets, echoes) = self.counted(r, "Icmp.InEchos", || {
            i.ns.output(5, &["ping", "-c", "1", "-W", "1", &r.ip])
                .status
                .success()
        });
        let seen = format!("responder: {packets} packets, {echoes} echo requests");
        match (replied, echoes, packets) {
            (true, 1.., _) => (Seen::Is(Treatment::Pass), format!("a reply; {seen}")),
            (false, _, 0) => (Seen::Is(Treatment::Drop), format!("no reply; {seen}")),
            (true, _, 0) => (Seen::Is(Treatment::Answer), format!("a reply; {seen}")),
            _ => (
                Seen::Unclear,
                format!("{}; {seen}", if replied { "a reply" } else { "no reply" }),
            ),
        }
    }
}

/// Every flow of `flows` through the real container of configuration `i`; with the
/// container's counters at the end.
fn run_config(i: usize, config: &str, m: &Manifest, flows: &[Flow]) -> (Vec<Observation>, String) {
    let mut b = Bench::new(i, m, config);
    let mut ports: Vec<u16> = flows
        .iter()
        .filter(|f| f.proto == FlowProto::Tcp)
        .map(|f| f.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    b.serve(&ports);
    let started = b.umbox.state();
    let obs = flows.iter().map(|&f| b.probe(f)).collect();
    // A container that stopped (or was restarted) during the probes would look like one
    // that drops everything: the observations count only if it ran throughout.
    let stats = b.umbox.stats();
    let ended = b.umbox.state();
    assert!(
        started.starts_with("running ") && ended == started && stats.is_ok(),
        "{config}: the container did not run throughout the probes (before: `{started}`, \
         after: `{ended}`, stats: {stats:?}; stderr: {}); is something else stopping the \
         Docker engine (runtime-shim/tests/faults.rs does)?",
        b.umbox.logs().1
    );
    (obs, stats.unwrap_or_default())
}

fn ready() -> bool {
    ts::require(&[
        ts::docker(),
        (
            ts::image_present(IMAGE),
            "the image kalki/umbox:0.1 (make images builds it)",
        ),
        (ts::root(), "root (network namespaces need it)"),
        (
            ts::tools(&[
                "ip", "nsenter", "ethtool", "ss", "curl", "busybox", "nc", "ping",
            ]),
            "ip, nsenter, ethtool, ss, curl, busybox, nc (netcat-openbsd) and ping \
             (scripts/setup.sh, scripts/docker/start.sh)",
        ),
    ])
}

/// A copy of the contracts with the clause of `config` that decides `flow` given
/// another treatment.
fn flipped(
    contracts: &BTreeMap<String, Contract>,
    config: &str,
    flow: Flow,
    to: Treatment,
) -> BTreeMap<String, Contract> {
    let mut c = contracts.clone();
    let contract = c.get_mut(config).unwrap();
    let (ix, clause) = contract.decide(&flow).unwrap();
    assert_ne!(clause.treat, to, "{config}: nothing flipped");
    contract.clauses[ix].treat = to;
    c
}

#[test]
fn the_real_image_honours_every_catalog_contract() {
    if !ready() {
        return;
    }
    let t0 = Instant::now();
    // Contracts, args, env and secrets from the real compiler.
    let manifests: Vec<Manifest> = CONFIGS.iter().map(manifest).collect();
    let contracts: BTreeMap<String, Contract> = CONFIGS
        .iter()
        .zip(&manifests)
        .map(|(c, m)| (c.call.to_string(), m.contract.clone()))
        .collect();
    for (c, m) in CONFIGS.iter().zip(&manifests) {
        let clauses: Vec<String> = m.contract.clauses.iter().map(|c| c.to_string()).collect();
        println!(
            "{}: args {:?}; contract: {}",
            c.call,
            m.args,
            clauses.join("; ")
        );
    }
    let compiled = t0.elapsed();

    // Every configuration at once, one thread each.
    let results: Vec<(Vec<Observation>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = CONFIGS
            .iter()
            .zip(&manifests)
            .enumerate()
            .map(|(i, (c, m))| s.spawn(move || run_config(i, c.call, m, &flows(&m.contract))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut observations = Vec::new();
    for (c, (obs, stats)) in CONFIGS.iter().zip(&results) {
        println!("{}: {stats}", c.call);
        observations.extend(obs.iter().cloned());
    }
    let rows: Vec<[String; 5]> = observations
        .iter()
        .map(|o| {
            [
                o.config.clone(),
                flow_text(&o.flow),
                contracts[&o.config].treat(&o.flow).to_string(),
                o.seen.to_string(),
                o.evidence.clone(),
            ]
        })
        .collect();
    println!(
        "\n{} probes in {:.1} s (compiling took {} ms):\n{}",
        observations.len(),
        t0.elapsed().as_secs_f64(),
        compiled.as_millis(),
        table(
            ["config", "flow", "contract", "observed", "evidence"],
            &rows
        )
    );

    let wrong = compare(&contracts, &observations);
    assert!(
        wrong.is_empty(),
        "the image does not honour these contracts:\n{}",
        mismatch_table(&wrong)
    );

    // Every treatment was held to real traffic at least once: a catalog change that left
    // one unprobed would go unnoticed otherwise.
    for t in [
        Treatment::Pass,
        Treatment::Drop,
        Treatment::Answer,
        Treatment::Authenticate,
    ] {
        assert!(
            observations.iter().any(|o| o.seen == Seen::Is(t)),
            "no flow was {t}"
        );
    }

    // A wrong contract fails the same comparison, on the same observations.
    let probe = |proto, port, from| Flow { proto, port, from };
    let mutations = [
        // fake_replies' final `drop all` made `pass all`.
        (
            "fake_replies(protocol = upnp)",
            probe(FlowProto::Tcp, 22, Starter::Uplink),
            Treatment::Pass,
        ),
        // auth_proxy's `authenticate tcp {listen_port} from uplink` made `pass`.
        (
            "auth_proxy(listen_port = 8080)",
            probe(FlowProto::Tcp, 8080, Starter::Uplink),
            Treatment::Pass,
        ),
        // fake_replies' `answer` made `drop`.
        (
            "fake_replies(protocol = hue)",
            probe(FlowProto::Tcp, 80, Starter::Uplink),
            Treatment::Drop,
        ),
        // xmas_block's `pass all` made `drop all`.
        (
            "xmas_block",
            probe(FlowProto::Icmp, 0, Starter::Device),
            Treatment::Drop,
        ),
    ];
    for (config, flow, to) in mutations {
        let caught = compare(&flipped(&contracts, config, flow, to), &observations);
        println!(
            "\n{config} with the clause deciding {} made `{to}`: {} mismatches, e.g.\n{}",
            flow_text(&flow),
            caught.len(),
            mismatch_table(&caught[..caught.len().min(3)])
        );
        assert!(
            caught.iter().any(|m| m.config == config && m.flow == flow),
            "a wrong contract for {config} went unnoticed"
        );
        assert!(caught.iter().all(|m| m.config == config));
    }
    println!("total {:.1} s", t0.elapsed().as_secs_f64());
}
