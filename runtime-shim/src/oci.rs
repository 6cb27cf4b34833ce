//! µmboxes run by an OCI runtime (`runc`, or `crun` on a cgroup v2 host) directly, from
//! OCI bundles the shim writes: no container daemon and no monitor process per container,
//! so a µmbox costs about its own process (docs/benchmarks.md, "A node of a thousand
//! devices").
//!
//! Layout, under the state directory (`--oci-state`, default `/run/kalki-shim/oci`):
//! `runtime/` is the runtime's own state (`--root`), `containers/NAME/` holds a
//! container's `config.json` (its OCI bundle), `meta.json` (the shim's id of this
//! instance, its labels, its init's pid and start time) and its `stdout` and `stderr`,
//! which the runtime's detached pass-through mode hands to the container as files. An
//! image is a directory under `--oci-images` (default `/var/lib/kalki-shim/images`):
//! `REPO/TAG/rootfs/` and `REPO/TAG/image.json` (entry point, command, environment), as
//! `scripts/images.sh` exports it from the image Docker builds. The root file system is
//! shared read-only by every container of the image.
//!
//! Confinement is [`confinement`]'s, plus a seccomp filter refusing the system calls a
//! µmbox never makes and that widen the kernel's surface ([`SECCOMP_DENIED`]).

use crate::cmd::CmdError;
use crate::containers::{confinement, ContainerError, ContainerSpec, Running};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_STATE: &str = "/run/kalki-shim/oci";
pub const DEFAULT_IMAGES: &str = "/var/lib/kalki-shim/images";

/// How often a follower at the end of a container's output looks for more, or for the
/// container's end: soon after it last read something (a µmbox says it is ready within
/// milliseconds of its start), then less and less often, down to every [`POLL_MAX`] (a
/// thousand idle followers cost little).
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(250);

/// System calls a µmbox never makes, refused with `EPERM`. Most already need a capability
/// a µmbox does not have; refusing them outright also closes what an unprivileged process
/// could reach (BPF, user faults, keyrings, performance counters, io_uring, namespaces).
pub const SECCOMP_DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "unshare",
    "userfaultfd",
];

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
    #[error("`{command}` failed: {detail}")]
    Failed { command: String, detail: String },
    #[error("image `{image}`: {detail}")]
    Image { image: String, detail: String },
}

impl OciError {
    /// Only a runtime that did not finish in time is worth another try.
    pub fn is_transient(&self) -> bool {
        matches!(self, OciError::Cmd(CmdError::Timeout { .. }))
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> OciError {
    OciError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// Where the backend keeps things, and its limits.
#[derive(Debug, Clone)]
pub struct OciConfig {
    /// The runtime's program: `runc` or `crun`, or a path.
    pub runtime: String,
    pub state: PathBuf,
    pub images: PathBuf,
    /// Limit of every single call of the runtime.
    pub limit: Duration,
}

/// An image's configuration as `scripts/oci-image.sh` exports it: Docker's own (`null`
/// where an image sets nothing).
#[derive(Debug, Clone, Default, Deserialize)]
struct ImageConfig {
    #[serde(rename = "Entrypoint", default, deserialize_with = "null_is_empty")]
    entrypoint: Vec<String>,
    #[serde(rename = "Cmd", default, deserialize_with = "null_is_empty")]
    cmd: Vec<String>,
    #[serde(rename = "Env", default, deserialize_with = "null_is_empty")]
    env: Vec<String>,
}

fn null_is_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// What the shim keeps of a container beside its bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    id: String,
    labels: BTreeMap<String, String>,
    /// Its init process, once started: the pid and the kernel's start time of that
    /// process (clock ticks after boot), so a later process with the same pid is not
    /// taken for it.
    pid: Option<u32>,
    start_ticks: Option<u64>,
}

/// The backend.
#[derive(Clone)]
pub struct Oci {
    cfg: Arc<OciConfig>,
}

/// A container's state, as the runtime reports it.
#[derive(Debug, Deserialize)]
struct State {
    #[serde(default)]
    id: String,
    #[serde(default)]
    pid: u32,
    #[serde(default)]
    status: String,
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl Oci {
    pub fn new(cfg: OciConfig) -> Oci {
        Oci { cfg: Arc::new(cfg) }
    }

    pub fn runtime(&self) -> &str {
        &self.cfg.runtime
    }

    fn runtime_root(&self) -> PathBuf {
        self.cfg.state.join("runtime")
    }

    fn container_dir(&self, name: &str) -> PathBuf {
        self.cfg.state.join("containers").join(name)
    }

    /// Runs the runtime with `args` after `--root`, its output piped; fails on a non-zero
    /// exit with what it said.
    async fn call(&self, args: &[&str]) -> Result<String, OciError> {
        let root = self.runtime_root();
        let root = root.to_string_lossy();
        let mut argv = vec!["--root", root.as_ref()];
        argv.extend_from_slice(args);
        Ok(crate::cmd::run(&self.cfg.runtime, &argv, None, self.cfg.limit).await?)
    }

    /// Whether the runtime can be run and the state directory can be written.
    pub async fn ping(&self) -> Result<(), OciError> {
        for dir in [self.runtime_root(), self.cfg.state.join("containers")] {
            std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        }
        self.call(&["list", "--format", "json"]).await.map(|_| ())
    }

    /// An image's root file system and configuration: `REPO[:TAG]` (default tag
    /// `latest`) under the images directory.
    fn image(&self, image: &str) -> Result<Option<(PathBuf, ImageConfig)>, OciError> {
        let bad = |detail: &str| OciError::Image {
            image: image.to_string(),
            detail: detail.to_string(),
        };
        let (repo, tag) = match image.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (image, "latest"),
        };
        let fine = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        if !repo.split('/').all(fine) || !fine(tag) {
            return Err(bad("not a name an image directory can have"));
        }
        // The export the name links to now: a container keeps the one it started from
        // when the image is exported again.
        let Ok(dir) = self.cfg.images.join(repo).join(tag).canonicalize() else {
            return Ok(None);
        };
        let rootfs = dir.join("rootfs");
        if !rootfs.is_dir() {
            return Ok(None);
        }
        let path = dir.join("image.json");
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let config: ImageConfig =
            serde_json::from_str(&text).map_err(|e| bad(&format!("{}: {e}", path.display())))?;
        Ok(Some((rootfs, config)))
    }

    /// The OCI runtime configuration of a µmbox (`config.json` of its bundle).
    fn config(
        &self,
        spec: &ContainerSpec,
        rootfs: &Path,
        image: &ImageConfig,
    ) -> serde_json::Value {
        let mut args = image.entrypoint.clone();
        if spec.args.is_empty() {
            args.extend(image.cmd.iter().cloned());
        } else {
            args.extend(spec.args.iter().cloned());
        }
        let mut env = image.env.clone();
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let caps: Vec<&str> = confinement::CAPABILITIES.to_vec();
        let mut mounts = vec![
            serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "noexec", "strictatime", "mode=755", "size=64k"]}),
            serde_json::json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"]}),
        ];
        for s in &spec.secrets {
            mounts.push(serde_json::json!({
                "destination": s.target,
                "type": "bind",
                "source": s.source,
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
            }));
        }
        let sysctl: BTreeMap<&str, &str> = confinement::SYSCTLS.iter().copied().collect();
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": env,
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE",
                    "hard": confinement::NOFILE, "soft": confinement::NOFILE}],
                "noNewPrivileges": true,
            },
            "root": {"path": rootfs, "readonly": true},
            "hostname": spec.name,
            "mounts": mounts,
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}],
                "cgroupsPath": format!("/kalki/{}", spec.name),
                "resources": {
                    "memory": {"limit": confinement::MEMORY_BYTES,
                        "swap": confinement::MEMORY_BYTES},
                    "pids": {"limit": confinement::PIDS},
                    "cpu": {"quota": confinement::CPU_QUOTA_US,
                        "period": confinement::CPU_PERIOD_US},
                },
                "sysctl": sysctl,
                "seccomp": {
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
                    "syscalls": [{"names": SECCOMP_DENIED, "action": "SCMP_ACT_ERRNO"}],
                },
                "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                    "/proc/sysrq-trigger"],
            },
        })
    }

    /// A fresh id for an instance (a container started again under its name is another):
    /// `NAME/HASH`, so that the instance is found from its id without a search.
    fn fresh_id(name: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let hash = crate::bundle::sha256_hex(
            format!("{name}/{nanos}/{}/{n}", std::process::id()).as_bytes(),
        );
        format!("{name}/{}", &hash[..32])
    }

    /// See [`crate::containers::Containers::start`].
    pub async fn start(&self, spec: &ContainerSpec) -> Result<u32, ContainerError> {
        let Some((rootfs, image)) = self.image(&spec.image)? else {
            return Err(ContainerError::NoImage(spec.image.clone()));
        };
        self.remove(&spec.name).await?;
        let dir = self.container_dir(&spec.name);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let result = self.create(spec, &dir, &rootfs, &image).await;
        if result.is_err() {
            let _ = self.remove(&spec.name).await;
        }
        result
    }

    async fn create(
        &self,
        spec: &ContainerSpec,
        dir: &Path,
        rootfs: &Path,
        image: &ImageConfig,
    ) -> Result<u32, ContainerError> {
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| io_err(&path, e))
        };
        write("config.json", self.config(spec, rootfs, image).to_string())?;
        let mut meta = Meta {
            id: Self::fresh_id(&spec.name),
            labels: spec.labels.clone(),
            pid: None,
            start_ticks: None,
        };
        write("meta.json", serde_json::json!(meta).to_string())?;
        // Appended to: a writer that opens it again (`/proc/PID/fd/1`) adds, never
        // overwrites what the follower has read.
        let file = |name: &str| {
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))
        };
        let (stdout, stderr) = (file("stdout")?, file("stderr")?);
        // Detached, with pass-through: the container's init gets these files as its
        // standard output and error, and the runtime exits once it runs.
        let root = self.runtime_root();
        let args = [
            "--root".as_ref(),
            root.as_os_str(),
            "run".as_ref(),
            "--detach".as_ref(),
            "--bundle".as_ref(),
            dir.as_os_str(),
            spec.name.as_ref(),
        ];
        let command = format!("{} run --detach {}", self.cfg.runtime, spec.name);
        let mut child = tokio::process::Command::new(&self.cfg.runtime)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| {
                OciError::Cmd(CmdError::Spawn {
                    program: self.cfg.runtime.clone(),
                    source,
                })
            })?;
        let status = match tokio::time::timeout(self.cfg.limit, child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(OciError::Failed {
                    command,
                    detail: e.to_string(),
                }
                .into())
            }
            Err(_) => {
                return Err(OciError::Cmd(CmdError::Timeout {
                    command,
                    limit: self.cfg.limit,
                })
                .into())
            }
        };
        if !status.success() {
            let said = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
            let tail: String = said
                .trim()
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(OciError::Failed {
                command,
                detail: format!("{status}: {tail}"),
            }
            .into());
        }
        let state = self.state(&spec.name).await?;
        match state {
            Some(s) if s.status == "running" && s.pid > 0 => {
                meta.pid = Some(s.pid);
                meta.start_ticks = start_ticks(s.pid);
                write("meta.json", serde_json::json!(meta).to_string())?;
                Ok(s.pid)
            }
            other => Err(ContainerError::NotRunning {
                name: spec.name.clone(),
                state: other.map_or_else(|| "gone".into(), |s| s.status),
            }),
        }
    }

    /// The runtime's state of a container; `None` if it has none.
    async fn state(&self, name: &str) -> Result<Option<State>, OciError> {
        match self.call(&["state", name]).await {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| OciError::Failed {
                    command: format!("{} state {name}", self.cfg.runtime),
                    detail: e.to_string(),
                }),
            Err(OciError::Cmd(CmdError::Failed { stderr, .. })) if not_found(&stderr) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// See [`crate::containers::Containers::remove`].
    pub async fn remove(&self, name: &str) -> Result<(), OciError> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Ok(());
        }
        match self.call(&["delete", "--force", name]).await {
            Ok(_) => {}
            Err(OciError::Cmd(CmdError::Failed { stderr, .. })) if not_found(&stderr) => {}
            Err(e) => return Err(e),
        }
        let dir = self.container_dir(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&dir, e)),
        }
    }

    /// The shim's record of every container: name → meta.
    fn metas(&self) -> Result<BTreeMap<String, Meta>, OciError> {
        let dir = self.cfg.state.join("containers");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(io_err(&dir, e)),
        };
        let mut out = BTreeMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A directory without a readable record is one being made or removed.
            if let Some(meta) = std::fs::read_to_string(entry.path().join("meta.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Meta>(&t).ok())
            {
                out.insert(name, meta);
            }
        }
        Ok(out)
    }

    /// See [`crate::containers::Containers::list`]: one call of the runtime for all.
    pub async fn list(&self, label: &str, value: &str) -> Result<Vec<Running>, OciError> {
        let metas = self.metas()?;
        let text = self.call(&["list", "--format", "json"]).await?;
        let states: Vec<State> = serde_json::from_str::<Option<Vec<State>>>(&text)
            .map_err(|e| OciError::Failed {
                command: format!("{} list", self.cfg.runtime),
                detail: e.to_string(),
            })?
            .unwrap_or_default();
        let status: BTreeMap<&str, &State> = states.iter().map(|s| (s.id.as_str(), s)).collect();
        Ok(metas
            .into_iter()
            .filter(|(_, m)| m.labels.get(label).map(String::as_str) == Some(value))
            .map(|(name, m)| {
                let running = status
                    .get(name.as_str())
                    .is_some_and(|s| s.status == "running" && Some(s.pid) == m.pid && alive(&m));
                Running {
                    name,
                    id: m.id,
                    running,
                    labels: m.labels,
                }
            })
            .collect())
    }

    /// The container with this name, or this instance of it (an id: `NAME/HASH`), and
    /// its record: one file read, whatever the number of containers.
    fn find(&self, container: &str) -> Result<Option<(String, Meta)>, OciError> {
        let (name, id) = match container.split_once('/') {
            Some((name, _)) => (name, Some(container)),
            None => (container, None),
        };
        if name.is_empty() || name.starts_with('.') {
            return Ok(None);
        }
        let path = self.container_dir(name).join("meta.json");
        let meta = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str::<Meta>(&text).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&path, e)),
        };
        Ok(meta
            .filter(|m| id.is_none_or(|id| m.id == id))
            .map(|m| (name.to_string(), m)))
    }

    /// See [`crate::containers::Containers::is_running`].
    pub async fn is_running(&self, container: &str) -> Result<Option<bool>, OciError> {
        Ok(self.find(container)?.map(|(_, m)| alive(&m)))
    }

    /// See [`crate::containers::Containers::stdout_lines`]: the container's `stdout` file,
    /// read as it grows, until its init process has ended and nothing more is in it.
    pub async fn stdout_lines(
        &self,
        container: &str,
        from_start: bool,
    ) -> Result<impl Stream<Item = Result<String, OciError>> + Send + 'static, OciError> {
        let Some((name, meta)) = self.find(container)? else {
            return Err(OciError::Failed {
                command: format!("follow {container}"),
                detail: "no such container".into(),
            });
        };
        let path = self.container_dir(&name).join("stdout");
        let mut file = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
        if !from_start {
            file.seek(std::io::SeekFrom::End(0))
                .map_err(|e| io_err(&path, e))?;
        }
        struct Tail {
            file: std::fs::File,
            meta: Meta,
            pending: Vec<u8>,
            lines: std::collections::VecDeque<String>,
            ended: bool,
            pause: Duration,
        }
        let tail = Tail {
            file,
            meta,
            pending: Vec::new(),
            lines: std::collections::VecDeque::new(),
            ended: false,
            pause: POLL_MIN,
        };
        Ok(futures_util::stream::unfold(tail, |mut t| async move {
            loop {
                if let Some(line) = t.lines.pop_front() {
                    return Some((Ok(line), t));
                }
                if t.ended {
                    return None;
                }
                // Whether it has ended is asked before reading: what it wrote before its
                // end is then read in full.
                let ended = !alive(&t.meta);
                let mut chunk = Vec::new();
                if let Err(e) = t.file.read_to_end(&mut chunk) {
                    t.ended = true;
                    return Some((
                        Err(OciError::Io {
                            path: "stdout".into(),
                            detail: e.to_string(),
                        }),
                        t,
                    ));
                }
                t.pending.extend_from_slice(&chunk);
                while let Some(i) = t.pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = t.pending.drain(..=i).collect();
                    t.lines
                        .push_back(String::from_utf8_lossy(&line).trim_end().to_string());
                }
                if ended {
                    t.ended = true;
                } else if chunk.is_empty() {
                    tokio::time::sleep(t.pause).await;
                    t.pause = (t.pause * 2).min(POLL_MAX);
                } else {
                    t.pause = POLL_MIN;
                }
            }
        }))
    }
}

/// Whether the runtime said the container does not exist.
fn not_found(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("does not exist") || s.contains("not found") || s.contains("no such")
}

/// The kernel's start time of a process (clock ticks after boot): field 22 of
/// `/proc/PID/stat`, after the command name in parentheses.
fn start_ticks(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19).and_then(|f| f.parse().ok())
}

/// The fields of `/proc/PID/stat` after `(comm)`: state first.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// Whether the container's init process (the one started, not a later one with its pid)
/// still runs: not gone, not a zombie.
fn alive(meta: &Meta) -> bool {
    let (Some(pid), Some(ticks)) = (meta.pid, meta.start_ticks) else {
        return false;
    };
    stat_fields(pid).is_some_and(|f| {
        f.first().is_some_and(|s| s != "Z" && s != "X")
            && f.get(19).and_then(|t| t.parse::<u64>().ok()) == Some(ticks)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn oci(images: &Path) -> Oci {
        Oci::new(OciConfig {
            runtime: "runc".into(),
            state: images.join("state"),
            images: images.to_path_buf(),
            limit: Duration::from_secs(5),
        })
    }

    #[test]
    fn image_names_map_to_directories_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("kalki-oci-{}", std::process::id()));
        let root = dir.join("kalki/umbox/0.1/rootfs");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            dir.join("kalki/umbox/0.1/image.json"),
            r#"{"Entrypoint":["/kalki-umbox"],"Cmd":null,"Env":["A=1"]}"#,
        )
        .unwrap();
        let o = oci(&dir);
        let (rootfs, config) = o.image("kalki/umbox:0.1").unwrap().unwrap();
        assert_eq!(rootfs, root.canonicalize().unwrap());
        assert_eq!(config.entrypoint, ["/kalki-umbox"]);
        assert!(o.image("kalki/umbox:0.2").unwrap().is_none());
        assert!(o.image("kalki/umbox").unwrap().is_none(), "tag latest");
        for bad in [
            "../etc:0.1",
            "kalki/../x:1",
            "kalki/umbox:..",
            "/abs:1",
            "a//b:1",
        ] {
            assert!(o.image(bad).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_configuration_confines_as_every_backend_does() {
        let o = oci(Path::new("/nonexistent"));
        let spec = ContainerSpec {
            name: "kalki-s-d-0-ids".into(),
            image: "kalki/umbox:0.1".into(),
            args: vec!["ids".into()],
            env: BTreeMap::from([("KALKI_INTERFACES".into(), "tap".into())]),
            labels: BTreeMap::new(),
            secrets: Vec::new(),
        };
        let image = ImageConfig {
            entrypoint: vec!["/kalki-umbox".into()],
            cmd: vec!["sniffer".into()],
            env: vec![],
        };
        let c = o.config(&spec, Path::new("/img/rootfs"), &image);
        assert_eq!(
            c["process"]["args"],
            serde_json::json!(["/kalki-umbox", "ids"])
        );
        assert_eq!(c["root"]["readonly"], true);
        assert_eq!(c["process"]["noNewPrivileges"], true);
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(
                c["process"]["capabilities"][set],
                serde_json::json!(["CAP_NET_RAW"])
            );
        }
        assert!(c["process"]["capabilities"]["ambient"].is_null());
        let ns: Vec<&str> = c["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for want in ["pid", "network", "mount", "ipc", "uts"] {
            assert!(ns.contains(&want), "{want}");
        }
        assert_eq!(
            c["linux"]["resources"]["memory"]["limit"],
            confinement::MEMORY_BYTES
        );
        assert_eq!(c["linux"]["resources"]["pids"]["limit"], confinement::PIDS);
        assert_eq!(c["linux"]["sysctl"]["net.ipv6.conf.all.disable_ipv6"], "1");
    }

    #[test]
    fn a_process_is_known_by_its_pid_and_start_time() {
        let me = std::process::id();
        let ticks = start_ticks(me).unwrap();
        let meta = |pid, ticks| Meta {
            id: String::new(),
            labels: BTreeMap::new(),
            pid: Some(pid),
            start_ticks: Some(ticks),
        };
        assert!(alive(&meta(me, ticks)));
        assert!(
            !alive(&meta(me, ticks + 1)),
            "another process with this pid"
        );
        assert!(!alive(&meta(u32::MAX - 1, ticks)));
    }
}
