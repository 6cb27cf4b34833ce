//! The real Open vSwitch and Docker engine for the shim's live tests (`node.rs`,
//! `run.rs`): probing them, the stand-in µmbox image, cleaning up the fixture site
//! (`tests/fixtures/node/site.kalki`), and reading what the switch holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use super::TempDir;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const LIMIT: Duration = Duration::from_secs(20);
pub const BRIDGE: &str = "kt-node";
pub const LINKS: [&str; 3] = ["ktn-up", "ktn-d0", "ktn-d1"];
pub const TEST_IMAGE: &str = "kalki-test/busybox:1";

pub use kalki_test_support::{docker_up, ok, ovs_up, sh};

/// Whether OVS and Docker answer; without them the test is skipped, or fails under CI.
pub fn services_ready() -> bool {
    kalki_test_support::require(&[kalki_test_support::ovs(), kalki_test_support::docker()])
}

/// The stand-in µmbox image (busybox, statically linked, in an image `FROM scratch`), in
/// Docker and exported for the OCI backend.
pub fn ensure_test_image() {
    build_test_image();
    ok(&format!(
        "{}/scripts/oci-image.sh {TEST_IMAGE}",
        super::repo_root().display()
    ));
}

fn build_test_image() {
    if sh(&format!(
        "docker image inspect {TEST_IMAGE} >/dev/null 2>&1"
    ))
    .status
    .success()
    {
        return;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox-static (installed by scripts/docker/start.sh)");
    let dir = TempDir::new("busybox-image");
    std::fs::copy(busybox, dir.path().join("busybox")).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
    )
    .unwrap();
    ok(&format!(
        "docker build -q -t {TEST_IMAGE} {}",
        dir.path().display()
    ));
}

/// Everything the test creates, removed at the start and the end, even on failure.
pub struct Cleanup;

impl Cleanup {
    pub fn now() {
        sh(&format!(
            "ovs-vsctl --timeout=10 --if-exists del-br {BRIDGE}"
        ));
        sh("docker rm -f $(docker ps -aq --filter label=kalki.site=shimnode) 2>/dev/null");
        for l in LINKS {
            sh(&format!("ip link del dev {l} 2>/dev/null"));
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        Cleanup::now();
    }
}

pub fn shim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kalki-shim"))
        .args(args)
        .output()
        .expect("kalki-shim")
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Names of the site's running containers, sorted.
pub fn running() -> Vec<String> {
    let mut v: Vec<String> =
        ok("docker ps --filter label=kalki.site=shimnode --format '{{.Names}}'")
            .lines()
            .map(String::from)
            .collect();
    v.sort();
    v
}

pub fn container_id(name: &str) -> String {
    ok(&format!("docker inspect --format '{{{{.Id}}}}' {name}"))
        .trim()
        .to_string()
}

/// The flows of one device (its cookie under the device mask), as the switch holds them.
pub fn device_flows(cookie: u64) -> String {
    ok(&format!(
        "ovs-ofctl -O OpenFlow15 --no-stats dump-flows {BRIDGE} cookie={cookie:#x}/0xffffffffffff0000 | sort"
    ))
}

/// The switch holds exactly these rule sets (`ovs-ofctl diff-flows` prints nothing).
pub fn assert_switch_holds(bundle_dir: &std::path::Path, sets: &[&str]) {
    assert_bridge_holds(BRIDGE, bundle_dir, sets);
}

/// [`assert_switch_holds`] on any bridge.
pub fn assert_bridge_holds(bridge: &str, bundle_dir: &std::path::Path, sets: &[&str]) {
    let mut all = String::new();
    for s in sets {
        all.push_str(&std::fs::read_to_string(bundle_dir.join(s)).unwrap());
    }
    let file = bundle_dir.join("expected.ofctl.tmp");
    std::fs::write(&file, all).unwrap();
    let out = sh(&format!(
        "ovs-ofctl -O OpenFlow15 diff-flows {bridge} {}",
        file.display()
    ));
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.stdout.is_empty(),
        "the switch differs from {sets:?}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Everything a live test of the fixture site needs: OVS and Docker answering (else
/// `None`: skipped, or a failure under CI), the stand-in image, a clean slate, and the
/// site's uplink and device links. Cleans up again when the guard drops.
pub fn prepare() -> Option<Cleanup> {
    if !services_ready() {
        return None;
    }
    ensure_test_image();
    Cleanup::now();
    for l in LINKS {
        ok(&format!(
            "ip link add {l} type veth peer name {l}p && ip link set dev {l} up"
        ));
    }
    Some(Cleanup)
}

/// The `kalki-shim run` process; killed (SIGKILL) on drop.
pub struct Shim {
    child: Child,
}

impl Shim {
    /// Whether the process still runs (it has not exited or crashed).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its process id (to read its memory from `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as an operator stops it, then waits (up to 10 s) for it to end.
    pub fn terminate(mut self) {
        sh(&format!("kill -TERM {} 2>/dev/null", self.child.id()));
        let start = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the test talks to the shim: its API address and token.
pub struct Api {
    pub api: String,
    pub token: PathBuf,
    pub log: PathBuf,
}

impl Api {
    pub fn new(dir: &Path) -> Api {
        let token = dir.join("token");
        std::fs::write(&token, "kalki-test-token-0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Api {
            api: format!("127.0.0.1:{port}"),
            token,
            log: dir.join("shim.log"),
        }
    }

    /// Starts `kalki-shim run BUNDLE --journal JOURNAL` on this API, with `extra`
    /// options, and waits until its API answers.
    pub fn start(&self, bundle: &Path, journal: &Path, extra: &[&str]) -> Shim {
        self.start_binary(env!("CARGO_BIN_EXE_kalki-shim"), bundle, journal, extra)
    }

    /// [`Api::start`] with another `kalki-shim` binary (an older build, for a bench).
    pub fn start_binary(
        &self,
        binary: &str,
        bundle: &Path,
        journal: &Path,
        extra: &[&str],
    ) -> Shim {
        self.spawn(Command::new(binary), bundle, journal, extra)
    }

    /// [`Api::start`] with the shim's wall clock starting at `utc` (`2026-03-29
    /// 00:59:50`) and running on from there at its normal pace: libfaketime (installed
    /// by `scripts/faketime/start.sh`) preloaded into the real binary sets its
    /// `clock_gettime(CLOCK_REALTIME)`; the monotonic clock its timers sleep on is left
    /// alone. Preloaded directly, not through the `faketime` wrapper, so that the child
    /// is the shim itself and killing it (on drop) kills the shim.
    pub fn start_at(&self, utc: &str, bundle: &Path, journal: &Path, extra: &[&str]) -> Shim {
        let lib = std::fs::read_dir("/usr/lib")
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path().join("faketime/libfaketime.so.1"))
            .find(|p| p.exists())
            .expect("libfaketime (scripts/faketime/start.sh installs it)");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kalki-shim"));
        cmd.env("LD_PRELOAD", lib)
            .env("TZ", "UTC")
            .env("FAKETIME", format!("@{utc}"))
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            // Its own children (ovs-vsctl, ...) run on the real clock.
            .env(
                "FAKETIME_SKIP_CMDS",
                "ovs-vsctl,ovs-ofctl,ovs-appctl,ip,ethtool,tc,docker",
            );
        self.spawn(cmd, bundle, journal, extra)
    }

    fn spawn(&self, mut cmd: Command, bundle: &Path, journal: &Path, extra: &[&str]) -> Shim {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = cmd
            .args([
                "run",
                bundle.to_str().unwrap(),
                "--journal",
                journal.to_str().unwrap(),
                "--listen",
                &self.api,
                "--token-file",
                self.token.to_str().unwrap(),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let shim = Shim { child };
        // The API answers: every device enforced (0), or not all of them (3, 4: a node
        // the shim could not configure yet still gets a shim that serves).
        wait_for(Duration::from_secs(90), "the shim's API", || {
            matches!(self.client(&["status"]).status.code(), Some(0 | 3 | 4))
        });
        shim
    }

    pub fn client_args(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--api".into(),
            self.api.clone(),
            "--token-file".into(),
            self.token.to_str().unwrap().into(),
            "--timeout".into(),
            "60".into(),
        ]);
        v
    }

    pub fn client(&self, args: &[&str]) -> std::process::Output {
        let argv = self.client_args(args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        shim(&argv)
    }

    /// A client call that must succeed; its standard output.
    pub fn must(&self, args: &[&str]) -> String {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "kalki-shim {args:?}: {}{}\nshim log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kalki-shim status --json`: its exit code (0 every device enforced, 3 one not
    /// enforced, 4 one failed closed; anything else fails the test) and the report.
    pub fn status(&self) -> (i32, Value) {
        let out = self.client(&["status", "--json"]);
        let code = out.status.code().unwrap_or(-1);
        assert!(
            [0, 3, 4].contains(&code),
            "kalki-shim status --json exited {code}: {}{}\nshim log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "kalki-shim status --json: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (code, v)
    }

    /// `kalki-shim status` as a table: its exit code (as [`Api::status`]) and its text.
    pub fn status_text(&self) -> (i32, String) {
        let out = self.client(&["status"]);
        let code = out.status.code().unwrap_or(-1);
        assert!(
            [0, 3, 4].contains(&code),
            "kalki-shim status exited {code}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (code, String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn device(&self, name: &str) -> Value {
        let (_, v) = self.status();
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap()
            .clone()
    }

    pub fn state(&self, name: &str) -> String {
        self.device(name)["state"].as_str().unwrap().to_string()
    }

    pub fn wait_state(&self, name: &str, state: &str, limit: Duration) {
        let mut last = String::new();
        let start = Instant::now();
        while start.elapsed() < limit {
            last = self.state(name);
            if last == state {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{name} is still `{last}`, not `{state}`, after {limit:?}\nshim log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One HTTP request on a connection of its own, with the token, as a client
    /// measuring the API makes it (no `kalki-shim` process per call): the status code
    /// and the answer's size in bytes; `(0, 0)` when nothing listens (yet, or any more).
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, usize) {
        let token = std::fs::read_to_string(&self.token).unwrap();
        let Ok(mut s) = std::net::TcpStream::connect(&self.api) else {
            return (0, 0);
        };
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.api,
            token.trim(),
            body.len()
        )
        .unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let code = String::from_utf8_lossy(&answer)
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, answer.len())
    }
}

/// The `p` quantile (0 to 1) of sorted figures, by the nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// Removes every container the OCI backend with state directory `state` runs (8 at a
/// time: a site of thousands takes seconds).
pub fn remove_oci_containers(state: &Path) {
    sh(&format!(
        "runc --root {r} list -q 2>/dev/null | xargs -r -P 8 -n 50 sh -c 'for c; do runc --root {r} delete --force $c; done' _",
        r = state.join("runtime").display()
    ));
}

/// Runs a closure when dropped: puts back what a test took away (a service it stopped,
/// an image tag it removed), also after a failed assertion.
pub struct OnDrop<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Starts whatever of Open vSwitch is not running (`scripts/ovs/start.sh`, idempotent).
pub fn start_ovs() {
    let out = sh(&format!(
        "{}/scripts/ovs/start.sh",
        super::repo_root().display()
    ));
    assert!(
        out.status.success() && ovs_up(),
        "scripts/ovs/start.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the Docker engine unless it answers (`scripts/docker/start.sh`, idempotent).
pub fn start_docker() {
    let out = sh(&format!(
        "{}/scripts/docker/start.sh",
        super::repo_root().display()
    ));
    assert!(
        out.status.success() && docker_up(),
        "scripts/docker/start.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A command run in the background (under `timeout`, so it never outlives a crashed
/// test by long), stopped with SIGTERM and reaped on [`Background::stop`] or drop.
pub struct Background {
    child: Option<Child>,
}

impl Background {
    /// `cmdline` through `sh -c`, its standard output and error into `log`.
    pub fn start(cmdline: &str, log: &Path) -> Background {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new("timeout")
            .args(["900", "sh", "-c", &format!("exec {cmdline}")])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Background { child: Some(child) }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM (which `timeout` passes on), then waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sh(&format!("kill -TERM {} 2>/dev/null", c.id()));
            let start = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A webhook that answers 200 and keeps every body it gets.
pub fn webhook() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/commands", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            keep.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}
