//! The Docker engine, through its API (bollard): µmbox containers with no Docker network,
//! confined as [`confinement`] says, labelled with site, device and instance, followed on
//! stdout for their readiness and alerts (JSON lines, `docs/umbox.md`). Every call has a
//! deadline. The default backend of [`crate::containers::Containers`].

use crate::containers::{confinement, ContainerError, ContainerSpec, Running};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt as _};
use std::collections::HashMap;
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
}

impl DockerError {
    /// The engine did not answer in time, could not be reached, or failed on its side (a
    /// 5xx answer, a broken connection); a 4xx answer is a refusal, not retried.
    pub fn is_transient(&self) -> bool {
        match self {
            DockerError::Connect { .. } | DockerError::Timeout { .. } => true,
            DockerError::Api { source, .. } => !matches!(
                source,
                bollard::errors::Error::DockerResponseServerError { status_code, .. }
                    if *status_code < 500
            ),
        }
    }
}

/// The Docker engine. The API version is agreed on at the first call that reaches the
/// engine, so a shim can start (and say so) while the engine is down, and uses it once
/// it is up; a restarted engine is reached again on the next call.
#[derive(Clone)]
pub struct Engine {
    socket: String,
    limit: Duration,
    docker: std::sync::Arc<tokio::sync::Mutex<Option<Docker>>>,
}

impl Engine {
    /// Connects to the engine's Unix socket and agrees on an API version (docker.io 20.10
    /// speaks 1.41); fails if the engine does not answer.
    pub async fn connect(socket: &str, limit: Duration) -> Result<Engine, DockerError> {
        let engine = Engine::lazy(socket, limit);
        engine.client().await?;
        Ok(engine)
    }

    /// An engine reached at its first use (see [`Engine::connect`]).
    pub fn lazy(socket: &str, limit: Duration) -> Engine {
        Engine {
            socket: socket.to_string(),
            limit,
            docker: std::sync::Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// The client, connected and with an agreed API version.
    async fn client(&self) -> Result<Docker, DockerError> {
        let mut guard = self.docker.lock().await;
        if let Some(d) = guard.as_ref() {
            return Ok(d.clone());
        }
        let connect_err = |detail: String| DockerError::Connect {
            socket: self.socket.clone(),
            detail,
        };
        let docker = Docker::connect_with_unix(
            &self.socket,
            self.limit.as_secs().max(1),
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| connect_err(e.to_string()))?;
        let docker = tokio::time::timeout(self.limit, docker.negotiate_version())
            .await
            .map_err(|_| connect_err("no answer".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        match tokio::time::timeout(self.limit, docker.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Err(_) => return Err(connect_err("no answer".into())),
        }
        *guard = Some(docker.clone());
        Ok(docker)
    }

    async fn call<T, F: Future<Output = Result<T, bollard::errors::Error>>>(
        &self,
        call: &str,
        f: impl FnOnce(Docker) -> F,
    ) -> Result<T, DockerError> {
        let docker = self.client().await?;
        match tokio::time::timeout(self.limit, f(docker)).await {
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

    /// Whether the engine answers.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.call("ping", |d| async move { d.ping().await })
            .await
            .map(|_| ())
    }

    pub async fn image_exists(&self, image: &str) -> Result<bool, DockerError> {
        match self
            .call(
                "inspect image",
                |d| async move { d.inspect_image(image).await },
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates and starts the container with no network (`--network none`): the shim
    /// gives it its interfaces. Returns the pid of its init process, whose network
    /// namespace the interfaces go into. A container of that name left over from an
    /// earlier run is replaced.
    pub async fn start(&self, spec: &ContainerSpec) -> Result<u32, ContainerError> {
        if !self.image_exists(&spec.image).await? {
            return Err(ContainerError::NoImage(spec.image.clone()));
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
                // Confined as every backend confines a µmbox (containers::confinement):
                // a read-only root, no capability but NET_RAW (its packet sockets on the
                // interfaces it is given), no new privileges, and limits.
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(
                    confinement::CAPABILITIES
                        .iter()
                        .map(|c| c.to_string())
                        .collect(),
                ),
                security_opt: Some(vec!["no-new-privileges".into()]),
                memory: Some(confinement::MEMORY_BYTES),
                memory_swap: Some(confinement::MEMORY_BYTES),
                pids_limit: Some(confinement::PIDS),
                cpu_quota: Some(confinement::CPU_QUOTA_US),
                cpu_period: Some(confinement::CPU_PERIOD_US as i64),
                ulimits: Some(vec![ResourcesUlimits {
                    name: Some("nofile".into()),
                    soft: Some(confinement::NOFILE as i64),
                    hard: Some(confinement::NOFILE as i64),
                }]),
                // Secrets: bind mounts, read-only. A `mounts` entry rather than a
                // `binds` string: a source that has gone missing since it was checked
                // is an error, where `binds` would create an empty directory there.
                mounts: (!spec.secrets.is_empty()).then(|| {
                    spec.secrets
                        .iter()
                        .map(|s| Mount {
                            target: Some(s.target.clone()),
                            source: Some(s.source.to_string_lossy().into_owned()),
                            typ: Some(MountType::BIND),
                            read_only: Some(true),
                            ..Mount::default()
                        })
                        .collect()
                }),
                sysctls: Some(
                    confinement::SYSCTLS
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        self.call("create container", |d| async move {
            d.create_container(Some(options), body).await
        })
        .await?;
        self.call("start container", |d| async move {
            d.start_container(
                &spec.name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        })
        .await?;
        self.pid(&spec.name).await
    }

    /// The pid of a running container's init process.
    pub async fn pid(&self, name: &str) -> Result<u32, ContainerError> {
        let info = self
            .call("inspect container", |d| async move {
                d.inspect_container(
                    name,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            })
            .await?;
        let state = info.state.unwrap_or_default();
        match (state.running, state.pid) {
            (Some(true), Some(pid)) if pid > 0 => Ok(pid as u32),
            _ => Err(ContainerError::NotRunning {
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
            .call("remove container", |d| async move {
                d.remove_container(name, Some(options)).await
            })
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
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
            .call("list containers", |d| async move {
                d.list_containers(Some(options)).await
            })
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
                id: c.id.unwrap_or_default(),
                running: c.state.map(|s| s.to_string()) == Some("running".into()),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Whether the container (a name or an id) is running; `None` if there is none.
    pub async fn is_running(&self, container: &str) -> Result<Option<bool>, DockerError> {
        match self
            .call("inspect container", |d| async move {
                d.inspect_container(
                    container,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            })
            .await
        {
            Ok(info) => Ok(Some(info.state.and_then(|s| s.running).unwrap_or(false))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
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
    ) -> Result<impl Stream<Item = Result<String, DockerError>>, DockerError> {
        let docker = self.client().await?;
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(false)
            .tail(if from_start { "all" } else { "0" })
            .build();
        let call = format!("logs {container}");
        let mut pending = String::new();
        Ok(docker
            .logs(container, Some(options))
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
            .flatten())
    }
}

/// Whether the engine answered 404: no such container or image.
fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::Api {
            source: bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            },
            ..
        }
    )
}
