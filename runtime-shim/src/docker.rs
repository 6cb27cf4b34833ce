//! The Docker engine, through its API (bollard): µmbox containers with no Docker network,
//! labelled with site, device and instance, followed on stdout for their readiness and
//! alerts (JSON lines, `docs/umbox.md`). Every call has a deadline.

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt as _};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach the Docker engine at {socket}: {detail} (scripts/docker/start.sh starts one)"
    )]
    Connect { socket: String, detail: String },
    #[error("Docker `{call}` did not answer within {} ms", .limit.as_millis())]
    Timeout { call: String, limit: Duration },
    #[error("Docker `{call}`: {source}")]
    Api {
        call: String,
        source: bollard::errors::Error,
    },
    #[error("image `{0}` is not on this node (no registry is used: build it with `make images`)")]
    NoImage(String),
    #[error("container `{name}` is not running ({state})")]
    NotRunning { name: String, state: String },
    #[error("container `{name}` did not report ready within {} ms", .limit.as_millis())]
    NotReady { name: String, limit: Duration },
}

/// What to run: one µmbox instance of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// A container the engine knows, as far as the shim cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub name: String,
    pub running: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    limit: Duration,
}

impl Engine {
    /// Connects to the engine's Unix socket and agrees on an API version (docker.io 20.10
    /// speaks 1.41).
    pub async fn connect(socket: &str, limit: Duration) -> Result<Engine, DockerError> {
        let connect_err = |detail: String| DockerError::Connect {
            socket: socket.to_string(),
            detail,
        };
        let docker =
            Docker::connect_with_unix(socket, limit.as_secs().max(1), bollard::API_DEFAULT_VERSION)
                .map_err(|e| connect_err(e.to_string()))?;
        let docker = tokio::time::timeout(limit, docker.negotiate_version())
            .await
            .map_err(|_| connect_err("no answer".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        let engine = Engine { docker, limit };
        engine
            .call("ping", engine.docker.ping())
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        Ok(engine)
    }

    async fn call<T>(
        &self,
        call: &str,
        f: impl Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<T, DockerError> {
        match tokio::time::timeout(self.limit, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(DockerError::Api {
                call: call.to_string(),
                source,
            }),
            Err(_) => Err(DockerError::Timeout {
                call: call.to_string(),
                limit: self.limit,
            }),
        }
    }

    pub async fn image_exists(&self, image: &str) -> Result<bool, DockerError> {
        match self
            .call("inspect image", self.docker.inspect_image(image))
            .await
        {
            Ok(_) => Ok(true),
            Err(DockerError::Api {
                source:
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 404, ..
                    },
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates and starts the container with no network (`--network none`): the shim
    /// gives it its interfaces. Returns the pid of its init process, whose network
    /// namespace the interfaces go into. A container of that name left over from an
    /// earlier run is replaced.
    pub async fn start(&self, spec: &ContainerSpec) -> Result<u32, DockerError> {
        if !self.image_exists(&spec.image).await? {
            return Err(DockerError::NoImage(spec.image.clone()));
        }
        self.remove(&spec.name).await?;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.args.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(
                spec.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            ),
            network_disabled: Some(false),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                // NET_ADMIN is not granted: the µmbox only opens packet sockets
                // (NET_RAW, in Docker's default set) on interfaces it is given.
                // IPv6 off in the container's network namespace (the interfaces `a`,
                // `b`, `tap` are created later and inherit `default`): otherwise its
                // kernel sends router solicitations and MLD reports on them, which the
                // switch forwards on to the device or the uplink (docs/umbox.md;
                // found by runtime-shim/tests/e2e.rs).
                sysctls: Some(HashMap::from([
                    (
                        "net.ipv6.conf.all.disable_ipv6".to_string(),
                        "1".to_string(),
                    ),
                    (
                        "net.ipv6.conf.default.disable_ipv6".to_string(),
                        "1".to_string(),
                    ),
                ])),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        self.call(
            "create container",
            self.docker.create_container(Some(options), body),
        )
        .await?;
        self.call(
            "start container",
            self.docker.start_container(
                &spec.name,
                None::<bollard::query_parameters::StartContainerOptions>,
            ),
        )
        .await?;
        self.pid(&spec.name).await
    }

    /// The pid of a running container's init process.
    pub async fn pid(&self, name: &str) -> Result<u32, DockerError> {
        let info = self
            .call(
                "inspect container",
                self.docker.inspect_container(
                    name,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                ),
            )
            .await?;
        let state = info.state.unwrap_or_default();
        match (state.running, state.pid) {
            (Some(true), Some(pid)) if pid > 0 => Ok(pid as u32),
            _ => Err(DockerError::NotRunning {
                name: name.to_string(),
                state: state
                    .status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown".into()),
            }),
        }
    }

    /// Kills and removes the container; nothing to do if there is none.
    pub async fn remove(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self
            .call(
                "remove container",
                self.docker.remove_container(name, Some(options)),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(DockerError::Api {
                source:
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 404, ..
                    },
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every container (running or not) carrying `label=value`.
    pub async fn list(&self, label: &str, value: &str) -> Result<Vec<Running>, DockerError> {
        let filters: HashMap<String, Vec<String>> =
            HashMap::from([("label".to_string(), vec![format!("{label}={value}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let found = self
            .call(
                "list containers",
                self.docker.list_containers(Some(options)),
            )
            .await?;
        let mut out: Vec<Running> = found
            .into_iter()
            .map(|c| Running {
                name: c
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                running: c.state.map(|s| s.to_string()) == Some("running".into()),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The container's standard output as lines, following it until the container stops:
    /// from its start (`from_start`) or only what it prints from now on. Standard error
    /// (the µmbox's log) is not included.
    pub fn stdout_lines(
        &self,
        name: &str,
        from_start: bool,
    ) -> impl Stream<Item = Result<String, DockerError>> {
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(false)
            .tail(if from_start { "all" } else { "0" })
            .build();
        let call = format!("logs {name}");
        let mut pending = String::new();
        self.docker
            .logs(name, Some(options))
            .map(move |chunk| match chunk {
                Ok(out) => {
                    pending.push_str(&String::from_utf8_lossy(&out.into_bytes()));
                    let mut lines = Vec::new();
                    while let Some(i) = pending.find('\n') {
                        let line: String = pending.drain(..=i).collect();
                        lines.push(Ok(line.trim_end().to_string()));
                    }
                    futures_util::stream::iter(lines)
                }
                Err(source) => futures_util::stream::iter(vec![Err(DockerError::Api {
                    call: call.clone(),
                    source,
                })]),
            })
            .flatten()
    }

    /// Waits until the container prints `{"kalki":"ready"}` on stdout.
    pub async fn wait_ready(&self, name: &str, limit: Duration) -> Result<(), DockerError> {
        let lines = self.stdout_lines(name, true);
        let ready = async {
            futures_util::pin_mut!(lines);
            while let Some(line) = lines.next().await {
                if is_ready(&line?) {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        match tokio::time::timeout(limit, ready).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(DockerError::NotRunning {
                name: name.to_string(),
                state: "exited before it was ready".into(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DockerError::NotReady {
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
