//! Open vSwitch's configuration, driven through `ovs-vsctl` (and `ovs-appctl` to ping), the way
//! `docs/bundle.md` says a bundle is loaded: a `fail_mode=secure` bridge created in one
//! transaction and ports with the bundle's numbers. Flows are read and changed over
//! OpenFlow directly (`kalki-openflow`: a dump to compare, one atomic bundle a change;
//! `node.rs`).
//!
//! Every call has two limits: the tool's own `--timeout` and a process deadline
//! ([`cmd`]), so a hung daemon is an error, never a hang. Nothing here decides policy.

use crate::cmd::{self, CmdError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

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
    /// Port additions waiting for the next transaction ([`Ovs::add_port`]).
    queue: Arc<std::sync::Mutex<PortQueue>>,
}

/// Port additions asked for while a transaction was running: they go together in the
/// next one. Every transaction makes `ovs-vswitchd` reconsider all of the bridge's
/// ports, so on a bridge of thousands, one per port would cost time in the square of
/// their number.
#[derive(Debug, Default)]
struct PortQueue {
    waiting: Vec<PortRequest>,
    /// A task is adding ports now (and takes whatever waits when it is done).
    busy: bool,
}

/// One port to add, as a transaction takes it.
#[derive(Debug, Clone)]
struct PortAdd {
    name: String,
    ofport: u32,
    isolation: Isolation,
}

#[derive(Debug)]
struct PortRequest {
    name: String,
    ofport: u32,
    isolation: Isolation,
    done: oneshot::Sender<Result<(), OvsError>>,
}

impl Ovs {
    pub fn new(bridge: impl Into<String>, timeout: Duration) -> Self {
        Ovs {
            bridge: bridge.into(),
            timeout,
            queue: Arc::default(),
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

    /// What of the bridge's own configuration would let traffic around the rule sets:
    /// a fail mode other than `secure` (OVS then forwards as a learning switch whenever
    /// no controller answers), a controller (it could install flows), mirrors (they copy
    /// a port's traffic to another port whatever the flows say). Empty: none.
    pub async fn bridge_leaks(&self) -> Result<Vec<String>, OvsError> {
        let out = self
            .vsctl(&[
                "get",
                "bridge",
                &self.bridge,
                "fail_mode",
                "controller",
                "mirrors",
            ])
            .await?;
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let mut leaks = Vec::new();
        match lines.first() {
            Some(&"secure") => {}
            Some(mode) => leaks.push(format!(
                "fail_mode is `{}`, not `secure`",
                mode.trim_matches('"')
            )),
            None => leaks.push("fail_mode cannot be read".to_string()),
        }
        if lines.get(1).is_some_and(|c| *c != "[]") {
            leaks.push("a controller is set".to_string());
        }
        if lines.get(2).is_some_and(|m| *m != "[]") {
            leaks.push("a port mirror is set".to_string());
        }
        Ok(leaks)
    }

    /// Makes the bridge fail-closed again, in one transaction: `fail_mode=secure`, no
    /// controller, no mirror.
    pub async fn secure_bridge(&self) -> Result<(), OvsError> {
        self.vsctl(&[
            "set",
            "bridge",
            &self.bridge,
            "fail_mode=secure",
            "--",
            "del-controller",
            &self.bridge,
            "--",
            "clear",
            "bridge",
            &self.bridge,
            "mirrors",
        ])
        .await
        .map(|_| ())
    }

    /// Every port's OpenFlow configuration bits other than none (`PORT_DOWN`, `NO_RECV`,
    /// `NO_FWD`, `NO_PACKET_IN`) and whether its link is down, by port name, from the
    /// switch's port descriptions (`ovs-ofctl show`).
    pub async fn port_desc(&self) -> Result<BTreeMap<String, PortDesc>, OvsError> {
        let t = self.timeout_flag();
        let out = cmd::run(
            "ovs-ofctl",
            &["-O", "OpenFlow15", &t, "show", &self.bridge],
            None,
            self.deadline(),
        )
        .await?;
        Ok(parse_port_desc(&out))
    }

    /// Clears a port's OpenFlow configuration bits (`mod-port`: up, receive, forward,
    /// packet-in).
    pub async fn reset_port_config(&self, name: &str) -> Result<(), OvsError> {
        let t = self.timeout_flag();
        for action in ["up", "receive", "forward", "packet-in"] {
            cmd::run(
                "ovs-ofctl",
                &[
                    "-O",
                    "OpenFlow15",
                    &t,
                    "mod-port",
                    &self.bridge,
                    name,
                    action,
                ],
                None,
                self.deadline(),
            )
            .await?;
        }
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

    /// Adds a port (an existing interface) with a fixed OpenFlow number (`--may-exist`:
    /// an existing port keeps its settings). Fails if the switch gives it another
    /// number (the port is then removed again). Additions asked for at the same time go
    /// in one transaction ([`PortQueue`]); each caller gets its own port's outcome.
    pub async fn add_port(
        &self,
        name: &str,
        ofport: u32,
        isolation: Isolation,
    ) -> Result<(), OvsError> {
        self.queue_port(name, ofport, isolation).await
    }

    async fn queue_port(
        &self,
        name: &str,
        ofport: u32,
        isolation: Isolation,
    ) -> Result<(), OvsError> {
        let (done, outcome) = oneshot::channel();
        let lead = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.waiting.push(PortRequest {
                name: name.to_string(),
                ofport,
                isolation,
                done,
            });
            !std::mem::replace(&mut q.busy, true)
        };
        if lead {
            // A task of its own: a caller that gives up does not strand the others.
            let ovs = self.clone();
            tokio::spawn(async move { ovs.drain_ports().await });
        }
        outcome.await.unwrap_or_else(|_| {
            Err(OvsError::Unexpected {
                command: format!("add-port {name}"),
                detail: "the port queue was dropped".into(),
            })
        })
    }

    /// Adds whatever waits, one transaction at a time, until nothing does.
    async fn drain_ports(&self) {
        loop {
            let batch = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.waiting.is_empty() {
                    q.busy = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            let requests: Vec<PortAdd> = batch
                .iter()
                .map(|r| PortAdd {
                    name: r.name.clone(),
                    ofport: r.ofport,
                    isolation: r.isolation,
                })
                .collect();
            let results = self.add_ports_now(&requests).await;
            for (r, result) in batch.into_iter().zip(results) {
                let _ = r.done.send(result);
            }
        }
    }

    /// Adds ports in one transaction, then reads their numbers in one call; a port with
    /// another number than asked is removed again and fails. If the transaction fails,
    /// each port is tried alone, so each gets its own error.
    async fn add_ports_now(&self, ports: &[PortAdd]) -> Vec<Result<(), OvsError>> {
        let add_args = |p: &PortAdd| {
            let (name, ofport) = (&p.name, p.ofport);
            let mut args = vec![
                "--may-exist".to_string(),
                "add-port".into(),
                self.bridge.clone(),
                name.clone(),
            ];
            match p.isolation {
                Isolation::None => {}
                Isolation::Managed => args.push("tag=4094".into()),
                Isolation::Uplink => args.push("trunks=0".into()),
            }
            args.extend([
                "--".into(),
                "set".into(),
                "interface".into(),
                name.clone(),
                format!("ofport_request={ofport}"),
            ]);
            args
        };
        let joined = |parts: Vec<Vec<String>>| -> Vec<String> {
            let mut out = Vec::new();
            for (i, p) in parts.into_iter().enumerate() {
                if i > 0 {
                    out.push("--".to_string());
                }
                out.extend(p);
            }
            out
        };
        let args = joined(ports.iter().map(add_args).collect());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Err(e) = self.vsctl(&argv).await {
            if ports.len() == 1 {
                return vec![Err(e)];
            }
            let mut out = Vec::new();
            for p in ports {
                out.extend(Box::pin(self.add_ports_now(std::slice::from_ref(p))).await);
            }
            return out;
        }
        let gets = joined(
            ports
                .iter()
                .map(|p| {
                    vec![
                        "get".into(),
                        "interface".into(),
                        p.name.clone(),
                        "ofport".into(),
                    ]
                })
                .collect(),
        );
        let argv: Vec<&str> = gets.iter().map(String::as_str).collect();
        let got = match self.vsctl(&argv).await {
            Ok(text) => text,
            Err(e) => {
                let detail = e.to_string();
                return ports
                    .iter()
                    .map(|p| {
                        Err(OvsError::Unexpected {
                            command: format!("get interface {} ofport", p.name),
                            detail: detail.clone(),
                        })
                    })
                    .collect();
            }
        };
        let numbers: Vec<i64> = got
            .lines()
            .map(|l| l.trim().parse::<i64>().unwrap_or(-1))
            .collect();
        let mut out = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let got = numbers.get(i).copied().unwrap_or(-1);
            if got == i64::from(p.ofport) {
                out.push(Ok(()));
            } else {
                let _ = self.del_port(&p.name).await;
                out.push(Err(OvsError::PortNumber {
                    name: p.name.clone(),
                    want: p.ofport,
                    got,
                }));
            }
        }
        out
    }

    /// Which of these ports are on the bridge (a read: no transaction).
    pub async fn present_ports(&self, names: &[&str]) -> Result<Vec<String>, OvsError> {
        let listed = self.vsctl(&["list-ports", &self.bridge]).await?;
        let on: std::collections::BTreeSet<&str> = listed.lines().map(str::trim).collect();
        Ok(names
            .iter()
            .filter(|n| on.contains(**n))
            .map(|n| n.to_string())
            .collect())
    }

    /// Removes ports, if they are on the bridge, in one transaction.
    pub async fn del_ports(&self, names: &[&str]) -> Result<(), OvsError> {
        if names.is_empty() {
            return Ok(());
        }
        let mut args: Vec<&str> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                args.push("--");
            }
            args.extend(["--if-exists", "del-port", &self.bridge, name]);
        }
        self.vsctl(&args).await.map(|_| ())
    }

    pub async fn del_port(&self, name: &str) -> Result<(), OvsError> {
        self.vsctl(&["--if-exists", "del-port", &self.bridge, name])
            .await
            .map(|_| ())
    }
}

/// A port as the switch describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortDesc {
    /// Its OpenFlow configuration bits, none when it forwards normally.
    pub config: Vec<String>,
    pub link_down: bool,
}

/// ` 1(kxp0): addr:..` then `     config:     NO_FWD` and `     state:      LINK_DOWN`.
fn parse_port_desc(out: &str) -> BTreeMap<String, PortDesc> {
    let mut ports = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        let t = line.trim();
        if line.starts_with(' ') && !line.starts_with("  ") {
            current = t
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once("):"))
                .map(|(name, _)| name.to_string());
            if let Some(n) = &current {
                ports.insert(n.clone(), PortDesc::default());
            }
        } else if let Some(p) = current.as_ref().and_then(|n| ports.get_mut(n)) {
            if let Some(c) = t.strip_prefix("config:") {
                p.config = c
                    .split_whitespace()
                    .filter(|w| *w != "0")
                    .map(String::from)
                    .collect();
            } else if let Some(st) = t.strip_prefix("state:") {
                p.link_down = st.split_whitespace().any(|w| w == "LINK_DOWN");
            }
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_descriptions() {
        let out = "OFPST_PORT_DESC reply (OF1.5) (xid=0x3):\n \
                   1(kxp0): addr:ba:d2:7e:ef:d4:7e\n     config:     NO_FWD\n     \
                   state:      LINK_DOWN\n     current:    10GB-FD COPPER\n \
                   2(k5p2): addr:ba:d2:7e:ef:d4:7f\n     config:     0\n     state:      0\n \
                   LOCAL(br): addr:be:5f:15:85:cd:4d\n     config:     PORT_DOWN\n     \
                   state:      LINK_DOWN\n";
        let p = parse_port_desc(out);
        assert_eq!(p["kxp0"].config, ["NO_FWD"]);
        assert!(p["kxp0"].link_down);
        assert_eq!(p["k5p2"], PortDesc::default());
        assert_eq!(p["br"].config, ["PORT_DOWN"]);
    }
}
