//! Private etcd clusters for the live tests of the replicated controller and the node
//! agents (issue 18): real `etcd` processes (3.4 on Debian 12) on loopback, mutual TLS
//! everywhere, and the real `etcdctl` to talk to them. `scripts/etcd/start.sh` installs
//! both; [`etcd`] is the requirement for [`crate::require`].
//!
//! A cluster of N members is started from a [`Pki`]: each member gets a server certificate
//! (its client-facing side) and a peer certificate, both signed by the PKI's CA, and trusts
//! only that CA on both sides (`--client-cert-auth`, `--peer-client-cert-auth`): a client
//! without a certificate, or with one from another CA, is refused at the handshake. Every
//! member listens on `https://127.0.0.1:PORT` with random free client and peer ports
//! (never etcd's defaults, 2379 and 2380), under a cluster token of its own, with its data
//! directory and log (`member-I/etcd.log`, etcd's JSON lines) under the cluster's
//! directory. Heartbeat and election timeout are short ([`HEARTBEAT_MS`],
//! [`ELECTION_TIMEOUT_MS`]), so a killed leader is replaced within about a second.
//!
//! Everything runs under a deadline: the tools under `timeout`, a member for at most
//! [`MEMBER_LIFETIME_SECS`] (a test process that dies leaves no etcd behind for long),
//! every wait with a timeout whose error carries the members' log tails. Errors are
//! `Err(String)`; tests turn them into failures.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::pki::{CertFiles, Pki};

/// How long a new cluster may take to elect a leader and answer on every member.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a restarted member may take to rejoin (see a leader and answer).
pub const REJOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// The members' `--heartbeat-interval`, in milliseconds.
pub const HEARTBEAT_MS: u32 = 50;
/// The members' `--election-timeout`, in milliseconds: how long a follower waits without
/// hearing from the leader before it stands for election.
pub const ELECTION_TIMEOUT_MS: u32 = 500;
/// The longest a member runs (`timeout -s KILL` ends it).
pub const MEMBER_LIFETIME_SECS: u32 = 900;
/// Seconds an `etcdctl` may take before `timeout` ends it.
const CTL_TIMEOUT_SECS: &str = "20";
/// `etcdctl`'s own deadlines: to connect, and for one request.
const CTL_DIAL_TIMEOUT: &str = "--dial-timeout=2s";
const CTL_COMMAND_TIMEOUT: &str = "--command-timeout=5s";
/// Lines of a member's log an error message quotes.
const LOG_TAIL_LINES: usize = 12;
/// The common name of the client certificate the cluster's own probes use.
const PROBE_CN: &str = "kalki-test-probe";
/// etcd's default ports, which a test cluster never uses.
const DEFAULT_PORTS: [u16; 2] = [2379, 2380];

/// The requirement "etcd and etcdctl are installed", as [`crate::require`] takes it.
pub fn etcd() -> (bool, &'static str) {
    (
        binary("etcd").is_some() && binary("etcdctl").is_some(),
        "etcd and etcdctl (scripts/etcd/start.sh installs them)",
    )
}

/// A tool's path: on `PATH`, or in the usual directories a test's `PATH` may lack.
fn binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn need(name: &str) -> Result<PathBuf, String> {
    binary(name).ok_or_else(|| format!("{name} not found (scripts/etcd/start.sh installs it)"))
}

/// One member: its ports, files and process.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    server: CertFiles,
    peer: CertFiles,
    /// `timeout -s KILL ... etcd ...`, leader of its own process group, while running.
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// The last lines of the member's log, for error messages.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!(
            "--- {} ({}), last lines of {}:\n{tail}",
            self.name,
            self.client_url(),
            self.log_file().display()
        )
    }

    fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL to the member's process group (`timeout` and etcd), then reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a member says of itself (`etcdctl endpoint status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Status {
    member_id: u64,
    leader: u64,
    raft_term: u64,
}

/// A private etcd cluster; every member is killed when it is dropped (the directory is
/// the caller's).
#[derive(Debug)]
pub struct EtcdCluster {
    dir: PathBuf,
    pki: Pki,
    token: String,
    members: Vec<Member>,
    etcd: PathBuf,
    etcdctl: PathBuf,
    /// The client certificate of the cluster's own probes (health, leader).
    probe: CertFiles,
}

impl EtcdCluster {
    /// Starts `members` members (3 for a cluster that survives the loss of one) with
    /// their certificates from `pki`, data and logs under `dir` (created, 0700, if
    /// missing), and waits until they have a leader and all answer.
    pub fn start(dir: &Path, members: usize, pki: Pki) -> Result<EtcdCluster, String> {
        if members == 0 {
            return Err("a cluster needs at least one member".into());
        }
        let etcd = need("etcd")?;
        let etcdctl = need("etcdctl")?;
        mkdir_private(dir)?;
        let probe = pki.client(PROBE_CN)?;
        let mut cluster = EtcdCluster {
            dir: dir.to_path_buf(),
            token: String::new(),
            members: Vec::new(),
            etcd,
            etcdctl,
            probe,
            pki,
        };
        for i in 0..members {
            let name = format!("member-{i}");
            let member_dir = cluster.dir.join(&name);
            mkdir_private(&member_dir)?;
            cluster.members.push(Member {
                server: cluster.pki.server(&format!("{name}-server"))?,
                peer: cluster.pki.server(&format!("{name}-peer"))?,
                name,
                client_port: 0,
                peer_port: 0,
                dir: member_dir,
                child: None,
            });
        }
        // Ports are free when picked but may be taken before etcd binds them: then the
        // whole cluster starts over, with new ports, token and data.
        let mut last = String::new();
        for attempt in 0..3 {
            cluster.token = format!("kalki-test-{}-{}", std::process::id(), nanos());
            let ports = free_ports(2 * members)?;
            for (member, pair) in cluster.members.iter_mut().zip(ports.chunks(2)) {
                member.kill();
                let _ = fs::remove_dir_all(member.data_dir());
                (member.client_port, member.peer_port) = (pair[0], pair[1]);
            }
            for i in 0..members {
                cluster.spawn(i, attempt > 0)?;
            }
            match cluster.wait_healthy(START_TIMEOUT) {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let in_use = cluster.members.iter().any(|m| {
                        fs::read_to_string(m.log_file())
                            .is_ok_and(|log| log.contains("address already in use"))
                    });
                    if !in_use {
                        return Err(e);
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Launches member `i` (data dir kept: a restart rejoins with what it had), its output
    /// appended to its log.
    fn spawn(&mut self, i: usize, again: bool) -> Result<(), String> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.log_file())
            .map_err(|e| format!("cannot open {}: {e}", m.log_file().display()))?;
        if again {
            let _ = writeln!(log, "--- kalki-test-support: starting {} again", m.name);
        }
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", m.log_file().display()))?;
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let args = [
            format!("--name={}", m.name),
            format!("--data-dir={}", path(&m.data_dir())),
            format!("--listen-client-urls={}", m.client_url()),
            format!("--advertise-client-urls={}", m.client_url()),
            format!("--listen-peer-urls={}", m.peer_url()),
            format!("--initial-advertise-peer-urls={}", m.peer_url()),
            format!("--initial-cluster={initial_cluster}"),
            format!("--initial-cluster-token={}", self.token),
            "--initial-cluster-state=new".into(),
            "--client-cert-auth".into(),
            format!("--trusted-ca-file={}", path(self.pki.ca_file())),
            format!("--cert-file={}", path(&m.server.cert)),
            format!("--key-file={}", path(&m.server.key)),
            "--peer-client-cert-auth".into(),
            format!("--peer-trusted-ca-file={}", path(self.pki.ca_file())),
            format!("--peer-cert-file={}", path(&m.peer.cert)),
            format!("--peer-key-file={}", path(&m.peer.key)),
            format!("--heartbeat-interval={HEARTBEAT_MS}"),
            format!("--election-timeout={ELECTION_TIMEOUT_MS}"),
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
        ];
        let child = Command::new("timeout")
            .args(["-s", "KILL", &MEMBER_LIFETIME_SECS.to_string()])
            .arg(&self.etcd)
            .args(&args)
            // etcd reads ETCD_* variables as flags; none of the caller's may count.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own group, so that kill(i) ends `timeout` and etcd together.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.etcd.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no member (never: [`EtcdCluster::start`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL (`https://127.0.0.1:PORT`), killed ones too.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    /// The client URLs of the members that run.
    pub fn live_endpoints(&mut self) -> Vec<String> {
        self.members
            .iter_mut()
            .filter_map(|m| m.running().then(|| m.client_url()))
            .collect()
    }

    /// Whether member `i`'s process runs.
    pub fn running(&mut self, i: usize) -> bool {
        self.members[i].running()
    }

    /// The CA every member trusts, and the one that signed their certificates.
    pub fn ca_file(&self) -> &Path {
        self.pki.ca_file()
    }

    /// The PKI the cluster's certificates come from.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// A client certificate with the common name `cn`, which the members accept.
    pub fn client_cert(&self, cn: &str) -> Result<CertFiles, String> {
        self.pki.client(cn)
    }

    /// Member `i`'s log (etcd's JSON lines, and what it printed otherwise).
    pub fn log_file(&self, i: usize) -> PathBuf {
        self.members[i].log_file()
    }

    /// The last lines of every member's log.
    pub fn log_tails(&self) -> String {
        self.members
            .iter()
            .map(Member::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Ends member `i` with SIGKILL (no goodbye to its peers), and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again with its data dir and ports (killing it first if it
    /// runs), without waiting: to bring back a cluster that lost its quorum, start
    /// members this way, then [`EtcdCluster::wait_healthy`].
    pub fn start_again(&mut self, i: usize) -> Result<(), String> {
        self.members[i].kill();
        self.spawn(i, true)
    }

    /// Starts member `i` again with its data dir and ports (killing it first if it runs),
    /// and waits until it sees a leader and answers.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.members[i].kill();
        self.spawn(i, true)?;
        let deadline = Instant::now() + REJOIN_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if !self.members[i].running() {
                return Err(format!(
                    "{} exited after a restart\n{}",
                    self.members[i].name,
                    self.members[i].log_tail()
                ));
            }
            match self.status(i) {
                Ok(s) if s.leader != 0 => {
                    match self.etcdctl(
                        &[self.endpoint(i)],
                        Some(&self.probe),
                        &["endpoint", "health"],
                    ) {
                        Ok(_) => return Ok(()),
                        Err(e) => last = e,
                    }
                }
                Ok(_) => last = "no leader yet".into(),
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "{} did not rejoin within {REJOIN_TIMEOUT:?}: {last}\n{}",
            self.members[i].name,
            self.log_tails()
        ))
    }

    /// The member that is leader now, among those that run: one that says it leads
    /// (the highest term's, should an old leader not know yet); `None` while there is
    /// none (an election is going on, or too few members run).
    pub fn leader(&mut self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in 0..self.members.len() {
            if !self.members[i].running() {
                continue;
            }
            if let Ok(s) = self.status(i) {
                if s.leader == s.member_id && best.is_none_or(|(term, _)| s.raft_term > term) {
                    best = Some((s.raft_term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Waits up to `timeout` for a leader among the members that run other than
    /// `not` (a leader just killed may still be named by the others); its index.
    pub fn wait_leader(&mut self, not: Option<usize>, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.leader() {
                Some(i) if Some(i) != not => return Ok(i),
                _ if Instant::now() >= deadline => {
                    return Err(format!(
                        "no leader within {timeout:?}\n{}",
                        self.log_tails()
                    ))
                }
                _ => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Waits up to `timeout` until every member that runs answers, names the same
    /// leader, which is one of them, and is healthy (`etcdctl endpoint health`: a
    /// linearizable read, so a quorum is there).
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let Err(last) = self.healthy() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "the cluster was not healthy within {timeout:?}: {last}\n{}",
                    self.log_tails()
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn healthy(&mut self) -> Result<(), String> {
        let mut statuses = Vec::new();
        for i in 0..self.members.len() {
            if !self.members[i].running() {
                if self.members[i].child.is_some() {
                    return Err(format!("{} exited", self.members[i].name));
                }
                continue;
            }
            statuses.push(self.status(i)?);
        }
        let Some(first) = statuses.first() else {
            return Err("no member runs".into());
        };
        if first.leader == 0 {
            return Err("no leader".into());
        }
        if statuses.iter().any(|s| s.leader != first.leader) {
            return Err(format!("the members name different leaders: {statuses:?}"));
        }
        if !statuses.iter().any(|s| s.member_id == first.leader) {
            return Err(format!("the leader {:x} does not run", first.leader));
        }
        let live = self.live_endpoints();
        self.etcdctl(&live, Some(&self.probe), &["endpoint", "health"])
            .map(|_| ())
    }

    /// What member `i` says of itself.
    fn status(&self, i: usize) -> Result<Status, String> {
        let out = self.etcdctl(
            &[self.endpoint(i)],
            Some(&self.probe),
            &["endpoint", "status", "--write-out=json"],
        )?;
        let json: Value = serde_json::from_str(&out)
            .map_err(|e| format!("etcdctl endpoint status printed no JSON ({e}): {out}"))?;
        let status = &json[0]["Status"];
        let number = |v: &Value| {
            v.as_u64().ok_or_else(|| {
                format!("etcdctl endpoint status without the expected fields: {out}")
            })
        };
        Ok(Status {
            member_id: number(&status["header"]["member_id"])?,
            leader: number(&status["leader"])?,
            raft_term: number(&status["raftTerm"])?,
        })
    }

    /// Runs `etcdctl ARGS` against `endpoints`, trusting the cluster's CA and presenting
    /// `identity` (none: no client certificate at all), under deadlines; its standard
    /// output, or why it failed (etcdctl's standard error).
    pub fn etcdctl(
        &self,
        endpoints: &[String],
        identity: Option<&CertFiles>,
        args: &[&str],
    ) -> Result<String, String> {
        let mut cmd = Command::new("timeout");
        cmd.arg(CTL_TIMEOUT_SECS)
            .arg(&self.etcdctl)
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--cacert={}", self.ca_file().display()))
            .args([CTL_DIAL_TIMEOUT, CTL_COMMAND_TIMEOUT]);
        if let Some(id) = identity {
            cmd.arg(format!("--cert={}", id.cert.display()))
                .arg(format!("--key={}", id.key.display()));
        }
        let out = cmd
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.etcdctl.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "etcdctl {} at {} failed ({}): {}",
                args.join(" "),
                endpoints.join(","),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The directory the members' data and logs are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}

/// `n` distinct loopback TCP ports nobody listens on now (held together while picked, so
/// distinct), none of etcd's defaults.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let mut held = Vec::new();
    while held.len() < n {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free loopback port: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        if !DEFAULT_PORTS.contains(&port) {
            held.push((port, listener));
        }
    }
    Ok(held.into_iter().map(|(port, _)| port).collect())
}

fn mkdir_private(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}
