//! Open vSwitch's configuration, driven through `ovs-vsctl` and `ovs-ofctl`, the way
//! `docs/bundle.md` says a bundle is loaded: a `fail_mode=secure` bridge created in one
//! transaction, ports with the bundle's numbers, and the switch's flows compared with the
//! bundle's (`diff-flows`). Flow changes go over OpenFlow directly (`kalki-openflow`,
//! one atomic bundle each: `node.rs`).
//!
//! Every call has two limits: the tool's own `--timeout` and a process deadline
//! ([`cmd`]), so a hung daemon is an error, never a hang. Nothing here decides policy.

use crate::cmd::{self, CmdError};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    #[error("{0} (is Open vSwitch running? scripts/ovs/start.sh starts it)")]
    Cmd(#[from] CmdError),
    #[error(
        "port `{name}` got OpenFlow number {got}, the bundle needs {want} (is the number taken?)"
    )]
    PortNumber { name: String, want: u32, got: i64 },
    #[error("unexpected output from `{command}`: {detail}")]
    Unexpected { command: String, detail: String },
}

/// VLAN settings that keep `NORMAL` (unknown hosts passed) away from managed ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    None,
    /// `tag=4094`: device and µmbox ports.
    Managed,
    /// `trunks=0`: the uplink.
    Uplink,
}

/// One bridge.
#[derive(Debug, Clone)]
pub struct Ovs {
    pub bridge: String,
    timeout: Duration,
}

/// Expected + actual flows, as `ovs-ofctl diff-flows` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowDiff {
    /// Flows the switch lacks (`+` lines).
    pub missing: Vec<String>,
    /// Flows the switch has and should not (`-` lines).
    pub extra: Vec<String>,
}

impl FlowDiff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty()
    }
}

impl Ovs {
    pub fn new(bridge: impl Into<String>, timeout: Duration) -> Self {
        Ovs {
            bridge: bridge.into(),
            timeout,
        }
    }

    fn timeout_flag(&self) -> String {
        format!("--timeout={}", self.timeout.as_secs().max(1))
    }

    /// The process deadline: a little over the tool's own `--timeout`, so the tool's
    /// message wins when it has one.
    fn deadline(&self) -> Duration {
        self.timeout + Duration::from_secs(2)
    }

    async fn vsctl(&self, args: &[&str]) -> Result<String, OvsError> {
        let t = self.timeout_flag();
        let mut argv = vec![t.as_str()];
        argv.extend(args);
        Ok(cmd::run("ovs-vsctl", &argv, None, self.deadline()).await?)
    }

    /// `ovs-ofctl -O OpenFlow15 [OPTIONS] COMMAND BRIDGE [ARGS]`.
    fn ofctl_argv<'a>(
        &'a self,
        t: &'a str,
        options: &[&'a str],
        command: &'a str,
        args: &[&'a str],
    ) -> Vec<&'a str> {
        let mut argv = vec!["-O", "OpenFlow15", t];
        argv.extend(options);
        argv.push(command);
        argv.push(&self.bridge);
        argv.extend(args);
        argv
    }

    /// Both daemons answer: the database (ovs-vsctl) and the switch (ovs-appctl).
    pub async fn ping(&self) -> Result<(), OvsError> {
        self.vsctl(&["show"]).await?;
        let t = self.timeout_flag();
        cmd::run(
            "ovs-appctl",
            &[&t, "-t", "ovs-vswitchd", "version"],
            None,
            self.deadline(),
        )
        .await?;
        Ok(())
    }

    pub async fn bridge_exists(&self) -> Result<bool, OvsError> {
        let out = self.vsctl(&["list-br"]).await?;
        Ok(out.lines().any(|l| l == self.bridge))
    }

    /// Creates the bridge fail-closed in one transaction (`fail_mode=secure` set later
    /// would flush every flow, and until then the bridge would forward as a learning
    /// switch). An existing bridge is checked: a bridge that is not fail-closed or does
    /// not speak OpenFlow 1.5 is an error, not something to fix behind the operator's
    /// back. Returns whether it was created.
    pub async fn ensure_bridge(&self, datapath: &str) -> Result<bool, OvsError> {
        if self.bridge_exists().await? {
            let fail_mode = self
                .vsctl(&["get", "bridge", &self.bridge, "fail_mode"])
                .await?;
            let protocols = self
                .vsctl(&["get", "bridge", &self.bridge, "protocols"])
                .await?;
            if fail_mode.trim() != "secure" || !protocols.contains("OpenFlow15") {
                return Err(OvsError::Unexpected {
                    command: format!("ovs-vsctl get bridge {}", self.bridge),
                    detail: format!(
                        "bridge exists with fail_mode={} protocols={}; it must be fail_mode=secure \
                         with OpenFlow15 (delete it, or let the shim create it)",
                        fail_mode.trim(),
                        protocols.trim()
                    ),
                });
            }
            return Ok(false);
        }
        let dp = format!("datapath_type={datapath}");
        self.vsctl(&[
            "--may-exist",
            "add-br",
            &self.bridge,
            "--",
            "set",
            "bridge",
            &self.bridge,
            &dp,
            "fail_mode=secure",
            "protocols=OpenFlow15",
        ])
        .await?;
        Ok(true)
    }

    pub async fn delete_bridge(&self) -> Result<(), OvsError> {
        self.vsctl(&["--if-exists", "del-br", &self.bridge])
            .await
            .map(|_| ())
    }

    /// Port name → OpenFlow number, for every port of the bridge (not the bridge's own).
    pub async fn ports(&self) -> Result<BTreeMap<String, i64>, OvsError> {
        let names = self.vsctl(&["list-ports", &self.bridge]).await?;
        let names: Vec<&str> = names.lines().filter(|l| !l.is_empty()).collect();
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let out = self
            .vsctl(&[
                "--format=csv",
                "--no-headings",
                "--columns=name,ofport",
                "list",
                "Interface",
            ])
            .await?;
        let mut ports = BTreeMap::new();
        for line in out.lines() {
            let Some((name, ofport)) = line.split_once(',') else {
                continue;
            };
            let name = name.trim_matches('"');
            if names.contains(&name) {
                let n = ofport
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| OvsError::Unexpected {
                        command: "ovs-vsctl list Interface".into(),
                        detail: format!("ofport `{ofport}` of `{name}`"),
                    })?;
                ports.insert(name.to_string(), n);
            }
        }
        Ok(ports)
    }

    /// Adds an existing interface (a device link, the uplink, a µmbox veth end) as a port
    /// with the number the bundle gives it, and checks that it got it.
    pub async fn add_port(
        &self,
        name: &str,
        ofport: u32,
        isolation: Isolation,
    ) -> Result<(), OvsError> {
        let request = format!("ofport_request={ofport}");
        let mut args = vec!["--may-exist", "add-port", &self.bridge, name];
        match isolation {
            Isolation::None => {}
            Isolation::Managed => args.push("tag=4094"),
            Isolation::Uplink => args.push("trunks=0"),
        }
        args.extend(["--", "set", "interface", name, &request]);
        self.vsctl(&args).await?;
        let got = self.vsctl(&["get", "interface", name, "ofport"]).await?;
        let got = got.trim().parse::<i64>().unwrap_or(-1);
        if got != i64::from(ofport) {
            let _ = self.del_port(name).await;
            return Err(OvsError::PortNumber {
                name: name.to_string(),
                want: ofport,
                got,
            });
        }
        Ok(())
    }

    pub async fn del_port(&self, name: &str) -> Result<(), OvsError> {
        self.vsctl(&["--if-exists", "del-port", &self.bridge, name])
            .await
            .map(|_| ())
    }

    /// Flows of the switch against `expected` (a whole `add-flows` file), compared by
    /// `ovs-ofctl diff-flows`, which normalises both sides (cookies included).
    pub async fn diff_flows(&self, expected: &str) -> Result<FlowDiff, OvsError> {
        // diff-flows reads files, not stdin.
        let (path, mut file) = private_tempfile()?;
        let written = file.write_all(expected.as_bytes());
        drop(file);
        let result = match written {
            Ok(()) => {
                let t = self.timeout_flag();
                let p = path.to_string_lossy().into_owned();
                let argv = self.ofctl_argv(&t, &[], "diff-flows", &[&p]);
                cmd::output("ovs-ofctl", &argv, None, self.deadline()).await
            }
            Err(source) => Err(CmdError::Spawn {
                program: "ovs-ofctl diff-flows".into(),
                source,
            }),
        };
        let _ = std::fs::remove_file(&path);
        let (command, out) = result?;
        // Exit status 2 means "the sources differ"; anything else but 0 is a failure.
        if !(out.status.success() || out.status.code() == Some(2)) {
            return Err(CmdError::Failed {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }
            .into());
        }
        let out = String::from_utf8_lossy(&out.stdout);
        // In the output, `-` is the first source (the switch), `+` the second (expected).
        let mut diff = FlowDiff::default();
        for line in out.lines() {
            if let Some(f) = line.strip_prefix('+') {
                diff.missing.push(f.to_string());
            } else if let Some(f) = line.strip_prefix('-') {
                diff.extra.push(f.to_string());
            }
        }
        Ok(diff)
    }
}

/// A private temporary file, created exclusively (never follows a planted file).
fn private_tempfile() -> Result<(std::path::PathBuf, std::fs::File), OvsError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "kalki-shim-{}-{}.ofctl",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| CmdError::Spawn {
            program: "ovs-ofctl diff-flows".into(),
            source,
        })?;
    Ok((path, file))
}
