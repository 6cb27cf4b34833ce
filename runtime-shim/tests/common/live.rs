//! The real Open vSwitch and Docker engine for the shim's live tests (`node.rs`,
//! `run.rs`): probing them, the stand-in µmbox image, cleaning up the fixture site
//! (`tests/fixtures/node/site.kalki`), and reading what the switch holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use super::TempDir;
use std::process::Command;
use std::time::Duration;

pub const LIMIT: Duration = Duration::from_secs(20);
pub const BRIDGE: &str = "kt-node";
pub const LINKS: [&str; 3] = ["ktn-up", "ktn-d0", "ktn-d1"];
pub const TEST_IMAGE: &str = "kalki-test/busybox:1";

pub fn sh(cmdline: &str) -> std::process::Output {
    Command::new("timeout")
        .args(["60", "sh", "-c", cmdline])
        .output()
        .expect("sh")
}

pub fn ok(cmdline: &str) -> String {
    let out = sh(cmdline);
    assert!(
        out.status.success(),
        "`{cmdline}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether OVS and Docker answer; without them the test is skipped, or fails under CI.
pub fn services_ready() -> bool {
    let ovs = sh("ovs-vsctl --timeout=5 show >/dev/null && ovs-appctl --timeout=5 -t ovs-vswitchd version >/dev/null");
    let docker = sh("docker version --format '{{.Server.Version}}' >/dev/null");
    let up = ovs.status.success() && docker.status.success();
    if !up {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Open vSwitch or Docker is not running (CI=true): scripts/ovs/start.sh, scripts/docker/start.sh"
        );
        eprintln!("skipped: Open vSwitch or Docker is not running");
    }
    up
}

/// The stand-in µmbox image: busybox, statically linked, in an image `FROM scratch`.
pub fn ensure_test_image() {
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
        sh("docker rm -f $(docker ps -aq --filter label=kalki.site=node) 2>/dev/null");
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
    let mut v: Vec<String> = ok("docker ps --filter label=kalki.site=node --format '{{.Names}}'")
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
    let mut all = String::new();
    for s in sets {
        all.push_str(&std::fs::read_to_string(bundle_dir.join(s)).unwrap());
    }
    let file = bundle_dir.join("expected.ofctl.tmp");
    std::fs::write(&file, all).unwrap();
    let out = sh(&format!(
        "ovs-ofctl -O OpenFlow15 diff-flows {BRIDGE} {}",
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
