//! Helpers shared by the integration tests: bundles built in memory from the
//! repository's policies, and throwaway Open vSwitch bridges.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use kalki_compiler::source::{LoadError, SourceLoader};
use kalki_openflow::{parse_rule_set, FlowMod};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("openflow/ has a parent")
        .to_path_buf()
}

/// Reads policy files relative to the repository root.
pub struct FsLoader;

impl SourceLoader for FsLoader {
    fn read_file(&self, path: &Path) -> Result<String, LoadError> {
        std::fs::read_to_string(repo_root().join(path)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound,
            _ => LoadError::Other(e.to_string()),
        })
    }
}

/// The `.kalki` files of a policy: a directory's files, or one file.
pub fn roots(policy: &Path) -> Vec<PathBuf> {
    let abs = repo_root().join(policy);
    if abs.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&abs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "kalki"))
            .map(|p| policy.join(p.file_name().unwrap()))
            .collect();
        files.sort();
        files
    } else {
        vec![policy.to_path_buf()]
    }
}

/// The bundle `policy` builds (path → bytes), or `None` when it does not check or does
/// not declare exactly one site. No verification: codegen needs only the typed model.
pub fn build(policy: &Path) -> Option<BTreeMap<String, Vec<u8>>> {
    let checked = kalki_compiler::check(&roots(policy), &FsLoader);
    let model = checked.model.as_ref()?;
    let [site] = model.sites.as_slice() else {
        return None;
    };
    let solver = kalki_compiler::verify::z3::Z3Solver::new(10_000);
    let bundle =
        kalki_compiler::codegen::bundle::build(model, site, &checked.sources, &solver).ok()?;
    Some(bundle.files)
}

/// One device state of a bundle, as `manifest.json` gives it.
#[derive(Debug, Clone)]
pub struct State {
    pub device: String,
    pub name: String,
    pub cookie: u64,
    /// The rule set's path and text.
    pub path: String,
    pub text: String,
    pub flows: Vec<FlowMod>,
}

/// A built bundle, read the way the runtime reads it.
pub struct Bundle {
    pub files: BTreeMap<String, Vec<u8>>,
    pub base: Vec<FlowMod>,
    pub base_text: String,
    pub device_mask: u64,
    /// Per device (in site order): its initial state's name and every state.
    pub devices: Vec<(String, String, Vec<State>)>,
}

pub fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex number")
}

impl Bundle {
    pub fn load(policy: &str) -> Bundle {
        let files = build(Path::new(policy)).expect("the policy builds a bundle");
        let text = |p: &str| String::from_utf8(files[p].clone()).unwrap();
        let m: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let base_text = text("flows/base.ofctl");
        let base = parse_rule_set(&base_text).unwrap();
        let device_mask = hex(m["cookies"]["device_mask"].as_str().unwrap());
        let mut devices = Vec::new();
        // Devices off the switch (`net` null) have no rule sets.
        for d in m["devices"].as_array().unwrap() {
            if d["net"].is_null() {
                continue;
            }
            let name = d["name"].as_str().unwrap().to_string();
            let states = d["states"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let path = s["switch"]["flows"].as_str().unwrap().to_string();
                    let text = text(&path);
                    State {
                        device: name.clone(),
                        name: s["name"].as_str().unwrap().to_string(),
                        cookie: hex(s["switch"]["cookie"].as_str().unwrap()),
                        flows: parse_rule_set(&text).unwrap(),
                        path,
                        text,
                    }
                })
                .collect();
            devices.push((name, d["initial"].as_str().unwrap().to_string(), states));
        }
        Bundle {
            files,
            base,
            base_text,
            device_mask,
            devices,
        }
    }

    pub fn state(&self, device: &str, state: &str) -> &State {
        self.devices
            .iter()
            .find(|(d, _, _)| d == device)
            .and_then(|(_, _, ss)| ss.iter().find(|s| s.name == state))
            .unwrap_or_else(|| panic!("no state {device}/{state}"))
    }

    pub fn initial(&self) -> Vec<&State> {
        self.devices
            .iter()
            .map(|(d, initial, _)| self.state(d, initial))
            .collect()
    }
}

/// Seconds any OVS tool may wait for the daemons before giving up.
pub const TIMEOUT: &str = kalki_test_support::OVS_TIMEOUT;

pub use kalki_test_support::{must, run};

/// Whether OVS answers. Without it a test is skipped locally and fails under CI.
pub fn ovs_ready() -> bool {
    kalki_test_support::require(&[kalki_test_support::ovs()])
}

/// A throwaway bridge `kof-<tag>` (userspace datapath, fail-secure, OpenFlow 1.5 only
/// unless told otherwise, no ports: flows may name ports that do not exist), deleted
/// when dropped.
pub struct Bridge {
    pub name: String,
}

impl Bridge {
    pub fn create(tag: &str) -> Bridge {
        Bridge::with_protocols(tag, "OpenFlow15")
    }

    pub fn with_protocols(tag: &str, protocols: &str) -> Bridge {
        let name = format!("kof-{tag}");
        assert!(name.len() <= 15, "bridge name {name} too long");
        must(
            "ovs-vsctl",
            &[
                TIMEOUT,
                "--",
                "--if-exists",
                "del-br",
                &name,
                "--",
                "add-br",
                &name,
                "--",
                "set",
                "bridge",
                &name,
                "datapath_type=netdev",
                "fail_mode=secure",
                &format!("protocols={protocols}"),
            ],
        );
        Bridge { name }
    }

    pub fn socket(&self) -> PathBuf {
        kalki_openflow::mgmt_socket(&self.name)
    }

    /// `ovs-ofctl -O OpenFlow15 [options] CMD BRIDGE [args]`.
    pub fn ofctl(&self, opts: &[&str], cmd: &str, args: &[&str]) -> String {
        let mut argv = vec!["-O", "OpenFlow15", TIMEOUT];
        argv.extend(opts);
        argv.push(cmd);
        argv.push(&self.name);
        argv.extend(args);
        must("ovs-ofctl", &argv)
    }

    /// Every flow, without counters, one per line, sorted.
    pub fn flows(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .ofctl(&["--no-stats"], "dump-flows", &[])
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    /// The flows whose cookie is not selected by `cookie`/`mask`.
    pub fn flows_except(&self, cookie: u64, mask: u64) -> Vec<String> {
        self.flows()
            .into_iter()
            .filter(|l| flow_cookie(l) & mask != cookie & mask)
            .collect()
    }

    /// `ovs-ofctl diff-flows` against rule-set text: empty when the switch holds
    /// exactly these flows (match, priority, table, cookie, actions).
    pub fn diff(&self, text: &str, tmp: &Path) -> String {
        std::fs::write(tmp, text).unwrap();
        let out = Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow15", TIMEOUT, "diff-flows", &self.name])
            .arg(tmp)
            .output()
            .unwrap();
        // diff-flows exits 2 when the flows differ.
        assert!(
            matches!(out.status.code(), Some(0 | 2)),
            "diff-flows: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = run("ovs-vsctl", &[TIMEOUT, "--if-exists", "del-br", &self.name]);
    }
}

/// The cookie of a `dump-flows` line (` cookie=0x..., priority=...`); 0 when absent.
pub fn flow_cookie(line: &str) -> u64 {
    line.split([' ', ','])
        .find_map(|w| w.strip_prefix("cookie="))
        .map(hex)
        .unwrap_or(0)
}

/// A scratch directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("kalki-openflow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
