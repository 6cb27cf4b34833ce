//! A generated site of many devices on one node, applied from empty with the real µmbox
//! image under a chosen backend: what `tests/scale.rs` checks at 300 devices and
//! `benches/node.rs` measures at 1,000 (docs/benchmarks.md, "A node of a thousand
//! devices").
//!
//! Half the devices are `Plug`s with one inline µmbox (`xmas_block`) in `normal`, half
//! `Cam`s with a tap and an inline one (`sniffer`, `xmas_block`); each device's port is
//! one end of a veth pair.
#![allow(dead_code)]

use super::live::{ok, sh, wait_for, Api, Shim};
use super::TempDir;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const BRIDGE: &str = "kt-scale";
pub const UPLINK: &str = "kts-up";
pub const SITE: &str = "scale";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Docker,
    Oci,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Docker => "docker",
            Backend::Oci => "oci",
        }
    }
}

/// The policy of `n` devices (even).
pub fn policy(n: usize) -> String {
    let half = n / 2;
    format!(
        r#"import std::umboxes::{{sniffer, xmas_block}}

device type Plug {{
    alerts port_scan
    states normal < suspicious
    initial normal
    normal     {{ chain [xmas_block] }}
    suspicious {{ chain [drop] }}
    normal     -> suspicious on port_scan
    suspicious -> normal     on operator reset
}}

device type Cam {{
    alerts port_scan
    states normal < suspicious
    initial normal
    normal     {{ chain [sniffer, xmas_block] }}
    suspicious {{ chain [drop] }}
    normal     -> suspicious on port_scan
    suspicious -> normal     on operator reset
}}

site {SITE} {{
    bridge "{BRIDGE}" uplink "{UPLINK}"
    unknown hosts drop
    device p[1..{half}]: Plug at 10.80.0.1.. mac 02:00:00:80:00:01.. port "ktsp{{n}}"
    device c[1..{half}]: Cam at 10.81.0.1.. mac 02:00:00:81:00:01.. port "ktsc{{n}}"
}}
"#
    )
}

/// The device ports' names.
fn ports(n: usize) -> Vec<String> {
    (1..=n / 2)
        .flat_map(|i| [format!("ktsp{i}"), format!("ktsc{i}")])
        .chain([UPLINK.to_string()])
        .collect()
}

/// Removes what a run left: the bridge, the links, the site's containers.
pub fn cleanup(n: usize, oci_state: &Path) {
    sh(&format!(
        "ovs-vsctl --timeout=30 --if-exists del-br {BRIDGE}"
    ));
    sh(&format!(
        "docker rm -f $(docker ps -aq --filter label=kalki.site={SITE}) >/dev/null 2>&1"
    ));
    super::live::remove_oci_containers(oci_state);
    let batch: String = ports(n)
        .iter()
        .map(|p| format!("link del dev {p}\n"))
        .collect();
    ip_batch(&batch, true);
    // The µmboxes' host ends go with their namespaces; any left by a failed run:
    let tag = kalki_compiler::codegen::openflow::site_tag(SITE);
    sh(&format!(
        "for l in $(ip -o link show | awk -F': ' '{{print $2}}' | cut -d@ -f1 | grep '^k{tag}p'); do ip link del dev $l; done 2>/dev/null"
    ));
}

/// `ip -batch` of `commands` (`-force`: go on past errors, for removals).
fn ip_batch(commands: &str, force: bool) {
    let file = std::env::temp_dir().join(format!("kalki-scale-{}.ip", std::process::id()));
    std::fs::write(&file, commands).unwrap();
    let out = sh(&format!(
        "ip {} -batch {}",
        if force { "-force" } else { "" },
        file.display()
    ));
    let _ = std::fs::remove_file(&file);
    assert!(
        force || out.status.success(),
        "ip -batch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The device ports: one end of a veth pair each, up.
pub fn make_links(n: usize) {
    let batch: String = ports(n)
        .iter()
        .map(|p| format!("link add {p} type veth peer name {p}x\nlink set dev {p} up\n"))
        .collect();
    ip_batch(&batch, false);
}

/// Memory the kernel can still give, in kB.
pub fn mem_available_kb() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What one apply from empty measured.
#[derive(Debug)]
pub struct Applied {
    pub devices: usize,
    pub umboxes: usize,
    pub apply: Duration,
    pub reapply: Duration,
    /// Memory taken per µmbox (MemAvailable before and after, after dropping caches).
    pub kb_per_umbox: i64,
    pub enforced: usize,
    pub apply_output: String,
}

/// Compiles the site, applies it from empty under `backend`, applies it again (nothing
/// to change), then starts `kalki-shim run` on it and reads every device's verdict.
/// The node is left as it is (call [`cleanup`]).
pub fn apply_site(n: usize, backend: Backend, tmp: &TempDir, oci_state: &Path) -> Applied {
    let bundle = tmp.path().join(format!("bundle-{}", backend.name()));
    super::compile(&policy(n)).write_to(&bundle).unwrap();
    make_links(n);
    let journal = tmp.path().join(format!("journal-{}.db", backend.name()));
    let mut args: Vec<String> = vec![
        "--umbox-backend".into(),
        backend.name().into(),
        "--oci-state".into(),
        oci_state.to_str().unwrap().into(),
    ];
    if let Ok(p) = std::env::var("KALKI_BENCH_PARALLEL") {
        args.extend(["--parallel".into(), p]);
    }
    let shim = |sub: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kalki-shim"))
            .args(sub)
            .args(&args)
            .args(["--journal", journal.to_str().unwrap()])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    sh("sync; echo 3 > /proc/sys/vm/drop_caches");
    let before = mem_available_kb();
    let start = Instant::now();
    let (code, apply_output) = shim(&["apply", bundle.to_str().unwrap()]);
    let apply = start.elapsed();
    assert_eq!(code, Some(0), "apply under {backend:?}:\n{apply_output}");
    std::thread::sleep(Duration::from_secs(2));
    sh("sync; echo 3 > /proc/sys/vm/drop_caches");
    let after = mem_available_kb();
    let umboxes = n / 2 * 3;
    let start = Instant::now();
    let (code, again) = shim(&["apply", bundle.to_str().unwrap()]);
    let reapply = start.elapsed();
    assert_eq!(code, Some(0), "{again}");
    assert!(again.contains("nothing to change"), "re-apply:\n{again}");

    // Every device enforced, as `run` sees the node.
    let env = Api::new(tmp.path());
    let run_args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _run: Shim = env.start(&bundle, &journal, &run_args);
    let mut enforced = 0;
    wait_for(Duration::from_secs(120), "every device enforced", || {
        let (_, v) = env.status();
        enforced = v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["enforcement"]["verdict"] == "enforced")
            .count();
        enforced == n
    });
    Applied {
        devices: n,
        umboxes,
        apply,
        reapply,
        kb_per_umbox: (before - after) / umboxes as i64,
        enforced,
        apply_output,
    }
}

/// The OCI backend's state directory for a run.
pub fn oci_state(tmp: &TempDir) -> PathBuf {
    tmp.path().join("oci")
}

/// Every device's port exists and the test may run: OVS, Docker (images), root.
pub fn ready() -> bool {
    let _ = ok;
    super::live::services_ready()
}
