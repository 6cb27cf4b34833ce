//! What the live test suites of every crate share (`compiler/tests/ovs.rs`,
//! `openflow/tests/`, `umbox/tests/docker.rs`, the shim's live suites): running an external
//! tool under a deadline, and deciding whether a test can run. A component a test needs
//! (Open vSwitch, a Docker engine, an image, root, a tool) that is missing skips the test
//! with a message locally, and fails it under `CI=true`: in CI a missing component is a
//! failure, never a silent skip. [`mosquitto`] runs private MQTT brokers and their real
//! clients; [`chromedriver`] a private WebDriver for a headless Chromium; [`etcd`] private
//! etcd clusters with mutual TLS, their certificates made by [`pki`]; [`TempDir`] a
//! directory of a test's own.
#![allow(clippy::panic, clippy::print_stderr)]

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod chromedriver;
pub mod etcd;
pub mod mosquitto;
pub mod pki;
/// The requirement "chromium and chromedriver are installed" ([`chromedriver::chromium`]).
pub use chromedriver::chromium;
/// The requirement "etcd and etcdctl are installed" ([`etcd::etcd`]).
pub use etcd::etcd;
/// The requirement "mosquitto and its clients are installed" ([`mosquitto::mosquitto`]).
pub use mosquitto::mosquitto;

/// Seconds any external command may take before `timeout` ends it.
pub const CMD_TIMEOUT: &str = "60";
/// The `--timeout` of the OVS tools: how long they wait for the daemons.
pub const OVS_TIMEOUT: &str = "--timeout=20";

/// Whether this is a CI run (`CI=true`).
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Runs `program` under `timeout`; its standard output, or why it failed.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("timeout")
        .arg(CMD_TIMEOUT)
        .arg(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// [`run`], which must succeed.
pub fn must(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// A shell command line under `timeout`, whatever its outcome.
pub fn sh(cmdline: &str) -> Output {
    Command::new("timeout")
        .args([CMD_TIMEOUT, "sh", "-c", cmdline])
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh: {e}"))
}

/// [`sh`], which must succeed; its standard output.
pub fn ok(cmdline: &str) -> String {
    let out = sh(cmdline);
    assert!(
        out.status.success(),
        "`{cmdline}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether every requirement holds: `(holds, what is missing and how to get it)`. The
/// first one missing skips the test (message on standard error), or fails it under CI.
pub fn require(requirements: &[(bool, &str)]) -> bool {
    match requirements.iter().find(|(holds, _)| !holds) {
        None => true,
        Some((_, what)) => {
            assert!(!ci(), "CI=true: missing {what}");
            eprintln!("skipped: missing {what}");
            false
        }
    }
}

/// Both OVS daemons answer: the database (`ovs-vsctl`) and the switch (`ovs-appctl`).
pub fn ovs_up() -> bool {
    run("ovs-vsctl", &[OVS_TIMEOUT, "show"]).is_ok()
        && run(
            "ovs-appctl",
            &[OVS_TIMEOUT, "-t", "ovs-vswitchd", "version"],
        )
        .is_ok()
}

/// A Docker engine answers.
pub fn docker_up() -> bool {
    run("docker", &["version", "--format", "{{.Server.Version}}"]).is_ok()
}

/// The engine has the image.
pub fn image_present(image: &str) -> bool {
    run("docker", &["image", "inspect", image]).is_ok()
}

/// Running as root.
pub fn root() -> bool {
    run("id", &["-u"]).is_ok_and(|s| s.trim() == "0")
}

/// Every tool is on the path.
pub fn tools(names: &[&str]) -> bool {
    names
        .iter()
        .all(|t| sh(&format!("command -v {t} >/dev/null")).status.success())
}

/// The requirement "Open vSwitch runs", as [`require`] takes it.
pub fn ovs() -> (bool, &'static str) {
    (ovs_up(), "Open vSwitch (scripts/ovs/start.sh starts it)")
}

/// The requirement "a Docker engine runs", as [`require`] takes it.
pub fn docker() -> (bool, &'static str) {
    (
        docker_up(),
        "a Docker engine (scripts/docker/start.sh starts one)",
    )
}

/// A directory of a test's own under the system's temp dir (mode 0700, a name no other
/// test or run shares), removed with everything in it when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/kalki-TAG-PID-NANOS-RANDOM`.
    pub fn new(tag: &str) -> Result<TempDir, String> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "kalki-{tag}-{}-{stamp}-{}",
            std::process::id(),
            mosquitto::random_hex(4)?
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TempDir { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
