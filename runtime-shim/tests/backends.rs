//! The same scenarios under both µmbox backends (`--umbox-backend docker` and `oci`), on a
//! real Open vSwitch, with `kalki-shim run` driven through its API:
//!
//! - every µmbox is confined as `containers::confinement` says, read from the kernel
//!   (`/proc/PID/status`, its cgroups, its mounts and namespaces), not from the backend's
//!   own account;
//! - an alert a µmbox prints is followed and moves its device;
//! - a µmbox killed from outside (SIGKILL to its process, the same event for both) is
//!   noticed: its device fails closed (journaled), a new instance is started and the
//!   device is enforced again.
//!
//! The policy is `tests/fixtures/node/site.kalki` (stand-in µmboxes in a busybox image).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::live::*;
use common::TempDir;
use kalki_shim::containers::confinement;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Docker,
    Oci,
}

/// How a test reaches the containers of one backend.
struct Containers {
    backend: Backend,
    oci_state: PathBuf,
}

impl Containers {
    fn args(&self) -> Vec<String> {
        match self.backend {
            Backend::Docker => vec!["--umbox-backend".into(), "docker".into()],
            Backend::Oci => vec![
                "--umbox-backend".into(),
                "oci".into(),
                "--oci-state".into(),
                self.oci_state.to_str().unwrap().into(),
            ],
        }
    }

    /// The pid of a running container's init process, as the kernel numbers it here.
    fn pid(&self, name: &str) -> u32 {
        let out = match self.backend {
            Backend::Docker => ok(&format!(
                "docker inspect --format '{{{{.State.Pid}}}}' {name}"
            )),
            Backend::Oci => {
                let state = ok(&format!(
                    "runc --root {}/runtime state {name}",
                    self.oci_state.display()
                ));
                let v: serde_json::Value = serde_json::from_str(&state).unwrap();
                v["pid"].to_string()
            }
        };
        out.trim().parse().unwrap()
    }

    /// Removes every container the test left.
    fn clean(&self) {
        match self.backend {
            Backend::Docker => {
                sh("docker rm -f $(docker ps -aq --filter label=kalki.site=shimnode) 2>/dev/null");
            }
            Backend::Oci => remove_oci_containers(&self.oci_state),
        }
    }
}

/// A line of `/proc/PID/status`, e.g. `CapEff`.
fn status_field(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// A cgroup v1 controller's file for a process (`memory`, `memory.limit_in_bytes`), or
/// the v2 one when the host has no v1 hierarchy of that controller.
fn cgroup_value(pid: u32, controller: &str, v1: &str, v2: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if ctrls.split(',').any(|c| c == controller) {
            return std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}{path}/{v1}"))
                .unwrap()
                .trim()
                .to_string();
        }
        if ctrls.is_empty() {
            if let Ok(v) = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/{v2}")) {
                return v.trim().to_string();
            }
        }
    }
    panic!("no {controller} cgroup for {pid}: {cgroups}");
}

/// What the kernel says confines a µmbox's process, against `confinement`.
fn assert_confined(pid: u32, what: &str) {
    // CAP_NET_RAW is capability 13: only that bit, in every set that grants anything.
    let net_raw = format!("{:016x}", 1u64 << 13);
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(status_field(pid, set), net_raw, "{what}: {set}");
    }
    assert_eq!(status_field(pid, "CapInh"), "0000000000000000", "{what}");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{what}");
    assert_eq!(
        status_field(pid, "Seccomp"),
        "2",
        "{what}: a seccomp filter"
    );
    assert_eq!(
        cgroup_value(pid, "memory", "memory.limit_in_bytes", "memory.max"),
        confinement::MEMORY_BYTES.to_string(),
        "{what}: memory"
    );
    assert_eq!(
        cgroup_value(pid, "pids", "pids.max", "pids.max"),
        confinement::PIDS.to_string(),
        "{what}: pids"
    );
    let cpu = cgroup_value(pid, "cpu", "cpu.cfs_quota_us", "cpu.max");
    assert!(
        cpu.starts_with(&confinement::CPU_QUOTA_US.to_string()),
        "{what}: cpu quota {cpu}"
    );
    // Its own namespaces, not the host's (this test's).
    for ns in ["net", "pid", "mnt", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{what}: {ns} namespace");
    }
    // Its root mounted read-only: the mount at `/` in its own mount table.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("{what}: no root mount in\n{mounts}"));
    let options = root.split(' ').nth(5).unwrap();
    assert!(
        options.split(',').any(|o| o == "ro"),
        "{what}: root mounted `{options}`"
    );
    // The limit on open files.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        nofile.split_whitespace().nth(3) == Some(&confinement::NOFILE.to_string()),
        "{what}: {nofile}"
    );
}

/// The tests use the one test bridge and site: one at a time.
static NODE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `kalki-shim run` of the fixture under a backend, with `extra` options; on drop, the
/// shim is stopped, then the backend's containers removed.
struct Site {
    shim: Option<Shim>,
    env: Api,
    bundle: PathBuf,
    containers: Containers,
    _tmp: TempDir,
    _cleanup: Cleanup,
    _node: std::sync::MutexGuard<'static, ()>,
}

impl Site {
    fn start(backend: Backend, extra: &[&str]) -> Option<Site> {
        let node = NODE.lock().unwrap_or_else(|e| e.into_inner());
        let cleanup = prepare()?;
        let tmp = TempDir::new("backends");
        let containers = Containers {
            backend,
            oci_state: tmp.path().join("oci"),
        };
        let bundle = tmp.path().join("bundle");
        common::compile_dir("runtime-shim/tests/fixtures/node")
            .write_to(&bundle)
            .unwrap();
        let env = Api::new(tmp.path());
        let mut args = containers.args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let shim = env.start(&bundle, &tmp.path().join("journal.db"), &args);
        Some(Site {
            shim: Some(shim),
            env,
            bundle,
            containers,
            _tmp: tmp,
            _cleanup: cleanup,
            _node: node,
        })
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        drop(self.shim.take());
        self.containers.clean();
    }
}

fn scenario(backend: Backend) {
    let Some(site) = Site::start(backend, &["--ready-timeout", "20"]) else {
        return;
    };
    let (env, bundle, containers) = (&site.env, &site.bundle, &site.containers);
    let what = format!("{backend:?}");
    assert_eq!(env.state("d0"), "normal", "{what}");
    assert_eq!(
        env.device("d0")["enforcement"]["verdict"],
        "enforced",
        "{what}"
    );
    assert_switch_holds(
        bundle,
        &[
            "flows/base.ofctl",
            "flows/d0/normal.ofctl",
            "flows/d1/normal.ofctl",
        ],
    );

    // Confined, as the kernel sees it.
    let probe = "kalki-shimnode-d0-0-probe";
    assert_confined(containers.pid(probe), &format!("{what}: {probe}"));

    // An API alert grows d0's chain; the tap µmbox's own alert (a line on its standard
    // output, written from outside into its init's stdout) moves it on.
    assert!(env.client(&["alert", "d0", "port_scan"]).status.success());
    assert_eq!(env.state("d0"), "suspicious", "{what}");
    let tap = "kalki-shimnode-d0-1-probe_tap";
    assert_confined(containers.pid(tap), &format!("{what}: {tap}"));
    ok(&format!(
        r#"echo '{{"kalki":"alert","alert":"fault"}}' >> /proc/{}/fd/1"#,
        containers.pid(tap)
    ));
    wait_for(
        Duration::from_secs(30),
        "d0 to move on its µmbox's alert",
        || env.state("d0") == "broken",
    );
    // `broken`'s image does not exist: failed closed to `attack`.
    wait_for(Duration::from_secs(30), "d0 to fail closed", || {
        env.device("d0")["enforcement"]["verdict"] == "failed_closed"
    });
    assert!(env.client(&["reset", "d0"]).status.success());
    assert_eq!(env.state("d0"), "normal", "{what}");

    // A µmbox killed from outside: d1 closes (journaled), then heals by itself.
    let killed = "kalki-shimnode-d1-0-probe";
    let pid = containers.pid(killed);
    ok(&format!("kill -KILL {pid}"));
    wait_for(
        Duration::from_secs(30),
        "d1's failure to be journaled",
        || {
            let log = env.log_text();
            log.contains(&format!("µmbox `{killed}` stopped")) && log.contains("`d1` failed closed")
        },
    );
    wait_for(Duration::from_secs(30), "d1 to heal", || {
        env.device("d1")["enforcement"]["verdict"] == "enforced"
    });
    assert_ne!(containers.pid(killed), pid, "{what}: a new instance");
    assert_confined(containers.pid(killed), &format!("{what}: {killed} again"));
    assert_eq!(env.state("d1"), "normal", "{what}");
    assert_switch_holds(
        bundle,
        &[
            "flows/base.ofctl",
            "flows/d0/normal.ofctl",
            "flows/d1/normal.ofctl",
        ],
    );
}

#[test]
fn docker_backend() {
    scenario(Backend::Docker);
}

#[test]
fn oci_backend() {
    scenario(Backend::Oci);
}

/// `--warm`: the µmboxes of each device's next state are started and left idle, so a
/// change to that state only swaps flows: the instance that serves `suspicious` after
/// the change is the one started before it. Under the OCI backend (the same code path
/// as Docker's: `Node::warm`, the plan, `change_posture`).
#[test]
fn warm_next_states_make_a_change_only_swap_flows() {
    let Some(site) = Site::start(Backend::Oci, &["--warm", "4"]) else {
        return;
    };
    let (env, bundle, containers) = (&site.env, &site.bundle, &site.containers);
    let oci_state = &containers.oci_state;

    // `suspicious` = [probe(tag = 1), probe_tap, probe(tag = 2)]: the last two of each
    // device are started beside `normal`'s probe, and protect nothing yet.
    let idle = [
        "kalki-shimnode-d0-1-probe_tap",
        "kalki-shimnode-d0-2-probe",
        "kalki-shimnode-d1-1-probe_tap",
        "kalki-shimnode-d1-2-probe",
    ];
    let runs = |name: &str| {
        sh(&format!(
            "runc --root {}/runtime state {name} 2>/dev/null | grep -q '\"running\"'",
            oci_state.display()
        ))
        .status
        .success()
    };
    wait_for(Duration::from_secs(60), "the next states' µmboxes", || {
        idle.iter().all(|n| runs(n))
    });
    assert_eq!(
        env.device("d0")["umboxes"],
        serde_json::json!(["kalki-shimnode-d0-0-probe"]),
        "an idle µmbox is not shown as protecting"
    );
    assert_eq!(env.device("d0")["enforcement"]["verdict"], "enforced");
    let before: Vec<u32> = idle[..2].iter().map(|n| containers.pid(n)).collect();

    assert!(env.client(&["alert", "d0", "port_scan"]).status.success());
    assert_eq!(env.state("d0"), "suspicious");
    assert_eq!(env.device("d0")["enforcement"]["verdict"], "enforced");
    let after: Vec<u32> = idle[..2].iter().map(|n| containers.pid(n)).collect();
    assert_eq!(
        before, after,
        "the change started no µmbox: the idle ones serve"
    );
    assert_switch_holds(
        bundle,
        &[
            "flows/base.ofctl",
            "flows/d0/suspicious.ofctl",
            "flows/d1/normal.ofctl",
        ],
    );
}
