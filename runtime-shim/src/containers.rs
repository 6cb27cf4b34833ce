//! The µmboxes' container backends behind one interface: the Docker engine through its
//! API (the default), or an OCI runtime (`runc`, `crun`) driven directly with OCI bundles
//! ([`crate::oci`]: no daemon, no monitor process per container). What confines every
//! µmbox is written once, in [`confinement`], and given by both (`docs/runtime.md`,
//! "µmbox backends and isolation").

use crate::docker::{self, DockerError};
use crate::oci::{self, OciError};
use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use std::collections::BTreeMap;
use std::time::Duration;

/// What to run: one µmbox instance of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Files of the node bind-mounted read-only into the container (its secrets).
    pub secrets: Vec<crate::secrets::SecretFile>,
}

/// A container the backend knows, as far as the shim cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub name: String,
    /// The backend's id of this container: a container started again under the same
    /// name is another container, with another id (and output of its own).
    pub id: String,
    pub running: bool,
    pub labels: BTreeMap<String, String>,
}

/// What every µmbox is confined to, whichever backend runs it: its own PID, network,
/// mount, IPC and UTS namespaces, no network but the interfaces the shim gives it, a
/// read-only root, no capability but `CAP_NET_RAW` (its packet sockets), no new
/// privileges, and these limits.
pub mod confinement {
    /// The only capability a µmbox keeps: `AF_PACKET` sockets on its interfaces.
    pub const CAPABILITIES: &[&str] = &["CAP_NET_RAW"];
    /// Memory (and memory with swap): a µmbox uses about 1 MB (docs/benchmarks.md).
    pub const MEMORY_BYTES: i64 = 64 << 20;
    /// Processes and threads.
    pub const PIDS: i64 = 64;
    /// CPU time: one core (a µmbox forwarding at line rate uses under a quarter).
    pub const CPU_QUOTA_US: i64 = 100_000;
    pub const CPU_PERIOD_US: u64 = 100_000;
    /// Open files.
    pub const NOFILE: u64 = 1024;
    /// IPv6 off in the µmbox's network namespace (its interfaces are made later and
    /// inherit `default`): otherwise its kernel sends router solicitations and MLD reports
    /// on them, which the switch would forward on (docs/umbox.md).
    pub const SYSCTLS: &[(&str, &str)] = &[
        ("net.ipv6.conf.all.disable_ipv6", "1"),
        ("net.ipv6.conf.default.disable_ipv6", "1"),
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error("image `{0}` is not on this node (no registry is used: build it with `make images`)")]
    NoImage(String),
    #[error("container `{name}` is not running ({state})")]
    NotRunning { name: String, state: String },
    #[error("container `{name}` did not report ready within {} ms", .limit.as_millis())]
    NotReady { name: String, limit: Duration },
}

impl ContainerError {
    /// Whether trying again may succeed: the backend did not answer in time, could not be
    /// reached, or failed on its side. A missing image, a µmbox that exits or never says
    /// it is ready, a request the backend refuses: no.
    pub fn is_transient(&self) -> bool {
        match self {
            ContainerError::Docker(e) => e.is_transient(),
            ContainerError::Oci(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// The node's container backend.
#[derive(Clone)]
pub enum Containers {
    Docker(docker::Engine),
    Oci(oci::Oci),
}

impl Containers {
    /// The backend, for messages: `Docker`, `OCI runtime runc`.
    pub fn describe(&self) -> String {
        match self {
            Containers::Docker(_) => "Docker".into(),
            Containers::Oci(o) => format!("OCI runtime {}", o.runtime()),
        }
    }

    /// Whether the backend answers.
    pub async fn ping(&self) -> Result<(), ContainerError> {
        match self {
            Containers::Docker(d) => Ok(d.ping().await?),
            Containers::Oci(o) => Ok(o.ping().await?),
        }
    }

    /// Creates and starts the container with no network but an empty namespace of its
    /// own (the shim gives it its interfaces), confined as [`confinement`] says. Returns
    /// the pid of its init process, whose network namespace the interfaces go into. A
    /// container of that name left over from an earlier run is replaced.
    pub async fn start(&self, spec: &ContainerSpec) -> Result<u32, ContainerError> {
        match self {
            Containers::Docker(d) => d.start(spec).await,
            Containers::Oci(o) => o.start(spec).await,
        }
    }

    /// Kills and removes the container; nothing to do if there is none.
    pub async fn remove(&self, name: &str) -> Result<(), ContainerError> {
        match self {
            Containers::Docker(d) => Ok(d.remove(name).await?),
            Containers::Oci(o) => Ok(o.remove(name).await?),
        }
    }

    /// Every container (running or not) carrying `label=value`, by name.
    pub async fn list(&self, label: &str, value: &str) -> Result<Vec<Running>, ContainerError> {
        let mut out = match self {
            Containers::Docker(d) => d.list(label, value).await?,
            Containers::Oci(o) => o.list(label, value).await?,
        };
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Whether the container (a name or an id) is running; `None` if there is none.
    pub async fn is_running(&self, container: &str) -> Result<Option<bool>, ContainerError> {
        match self {
            Containers::Docker(d) => Ok(d.is_running(container).await?),
            Containers::Oci(o) => Ok(o.is_running(container).await?),
        }
    }

    /// The container's standard output as lines, following it until the container stops:
    /// from its start (`from_start`) or only what it prints from now on. Standard error
    /// (the µmbox's log) is not included. `container` is a name or, to be sure of
    /// following one container and not a later one of the same name, an id.
    pub async fn stdout_lines(
        &self,
        container: &str,
        from_start: bool,
    ) -> Result<BoxStream<'static, Result<String, ContainerError>>, ContainerError> {
        match self {
            Containers::Docker(d) => Ok(d
                .stdout_lines(container, from_start)
                .await?
                .map(|l| l.map_err(ContainerError::from))
                .boxed()),
            Containers::Oci(o) => Ok(o
                .stdout_lines(container, from_start)
                .await?
                .map(|l| l.map_err(ContainerError::from))
                .boxed()),
        }
    }

    /// Waits until the container prints `{"kalki":"ready"}` on stdout.
    pub async fn wait_ready(&self, name: &str, limit: Duration) -> Result<(), ContainerError> {
        let ready = async {
            let mut lines = self.stdout_lines(name, true).await?;
            while let Some(line) = lines.next().await {
                if is_ready(&line?) {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        match tokio::time::timeout(limit, ready).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(ContainerError::NotRunning {
                name: name.to_string(),
                state: "exited before it was ready".into(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ContainerError::NotReady {
                name: name.to_string(),
                limit,
            }),
        }
    }
}

/// A µmbox's readiness line.
pub fn is_ready(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line)
        .map(|v| v["kalki"] == "ready")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn readiness_is_one_json_line() {
        assert!(is_ready(r#"{"kalki":"ready"}"#));
        assert!(is_ready(r#"{"kalki": "ready", "pid": 1}"#));
        assert!(!is_ready(r#"{"kalki":"alert","alert":"ready"}"#));
        assert!(!is_ready("ready"));
    }
}
