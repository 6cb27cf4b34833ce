//! `kalki-shim agent --node NAME`: brings one node's devices to the postures the site's
//! controller decided, as `run` brings a node to its engine's states, and says what it
//! holds (`docs/scale-out.md`, "The node agent").
//!
//! Two tasks: the link to etcd ([`link`]: registers the agent on its lease, reads the
//! node's postures and follows them, writes the reports; reconnects with backoff) and
//! the loop that owns the node (looks, repairs, changes postures, fails closed). The
//! loop never waits for etcd: without it the node keeps the postures it has, and a
//! change of state only ever comes from a posture read from etcd.

use super::store::{
    agent_key, decode, encode, status_key, AgentValue, DesiredPosture, EtcdConfig, ReportedStatus,
    Store, StoreError,
};
use crate::enforcement::{self, Enforcement};
use crate::node::{Closed, Node, Observation, Posture, Target};
use crate::run::now_ms;
use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// How an agent runs.
pub struct AgentConfig {
    pub etcd: EtcdConfig,
    /// The site (the sub-bundle's `part_of`) and this node's name.
    pub site: String,
    pub node: String,
    /// This agent's name in `agents/NODE` (default: host name and pid).
    pub id: String,
    /// How often the node is looked at and repaired.
    pub reconcile_interval: Duration,
    /// The agent's lease: an agent that cannot renew it within this time is reported
    /// unreachable.
    pub lease_ttl: Duration,
    /// The last postures applied, kept across restarts (`STATE_DIR/postures.json`).
    pub cache: PathBuf,
}

/// What the link to etcd tells the node's loop.
#[derive(Debug)]
enum Heard {
    /// Every posture of the node, read afresh (after each (re)connection).
    All(BTreeMap<String, String>),
    /// One device's new posture.
    One(String, String),
    /// The link is down (why); the loop keeps what it has.
    Lost(String),
}

/// A device that failed closed: what it got, why, and when its posture is tried again.
struct ClosedDevice {
    installed: Closed,
    reason: String,
    retry_at: Instant,
    attempts: u32,
}

/// Runs the agent until `shutdown`.
pub async fn agent(
    node: Node,
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StoreError> {
    let m = &node.bundle().manifest;
    let names: Vec<String> = m.devices.iter().map(|d| d.name.clone()).collect();
    // Where to start: the postures last applied here, else every device's most
    // restrictive state. Never the initial state: the controller may have left it long
    // ago, and etcd may be out of reach.
    let cached = read_cache(&cfg.cache);
    let mut desired: Vec<usize> = (0..names.len())
        .map(|d| {
            let dev = &m.devices[d];
            let name = cached
                .get(&dev.name)
                .unwrap_or(&dev.most_restrictive)
                .clone();
            state_index(&node, d, &name).unwrap_or(0)
        })
        .collect();
    let (heard_tx, mut heard) = mpsc::channel::<Heard>(1024);
    let (reports_tx, reports) = watch::channel(BTreeMap::<String, ReportedStatus>::new());
    let link = tokio::spawn(link(cfg_link(&cfg, &node), heard_tx, reports));
    let mut a = Agent {
        node,
        closed: BTreeMap::new(),
        interval: cfg.reconcile_interval,
        next_check: Instant::now(),
        reports: reports_tx,
        cache: cfg.cache.clone(),
    };
    tokio::pin!(shutdown);
    loop {
        let check = tokio::time::sleep_until(a.next_check.into());
        tokio::select! {
            () = &mut shutdown => break,
            () = check => {
                a.reconcile(&desired).await;
            }
            h = heard.recv() => match h {
                Some(Heard::All(all)) => {
                    let m = &a.node.bundle().manifest;
                    for (d, dev) in m.devices.iter().enumerate() {
                        // A device with no posture yet is in its initial state: the
                        // controller writes every posture when it starts leading.
                        let name = all.get(&dev.name).unwrap_or(&dev.initial);
                        if let Some(s) = state_index(&a.node, d, name) {
                            desired[d] = s;
                        }
                    }
                    a.save(&desired);
                    a.reconcile(&desired).await;
                }
                Some(Heard::One(device, state)) => {
                    let Some(d) = names.iter().position(|n| *n == device) else { continue };
                    let Some(s) = state_index(&a.node, d, &state) else {
                        warn!(event = "posture_refused", device = %device, state = %state,
                            "posture `{state}` of `{device}` is no state of it in this bundle");
                        continue;
                    };
                    if desired[d] != s {
                        desired[d] = s;
                        a.save(&desired);
                        a.change(d, s).await;
                        a.next_check = Instant::now();
                    }
                }
                Some(Heard::Lost(why)) => {
                    warn!(event = "etcd_lost", error = %why,
                        "etcd out of reach ({why}): keeping the postures in force");
                }
                None => break,
            }
        }
    }
    link.abort();
    Ok(())
}

fn cfg_link(cfg: &AgentConfig, node: &Node) -> LinkConfig {
    LinkConfig {
        etcd: cfg.etcd.clone(),
        site: cfg.site.clone(),
        node: cfg.node.clone(),
        id: cfg.id.clone(),
        lease_ttl: cfg.lease_ttl,
        bundle_sha256: node.bundle().manifest_sha256.clone(),
    }
}

fn state_index(node: &Node, device: usize, name: &str) -> Option<usize> {
    node.bundle().manifest.devices[device]
        .states
        .iter()
        .position(|s| s.name == name)
}

fn read_cache(path: &PathBuf) -> BTreeMap<String, String> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

struct Agent {
    node: Node,
    closed: BTreeMap<usize, ClosedDevice>,
    interval: Duration,
    next_check: Instant,
    reports: watch::Sender<BTreeMap<String, ReportedStatus>>,
    cache: PathBuf,
}

impl Agent {
    fn state_name(&self, device: usize, state: usize) -> String {
        self.node.bundle().manifest.devices[device].states[state]
            .name
            .clone()
    }

    fn closed_name(&self, device: usize, c: Closed) -> String {
        match c {
            Closed::State(s) => self.state_name(device, s),
            Closed::NoFlows => "no flows".into(),
        }
    }

    /// The postures about to be applied, on disk first (a temporary file renamed into
    /// place): an agent restarted without etcd starts from them.
    fn save(&self, desired: &[usize]) {
        let m = &self.node.bundle().manifest;
        let map: BTreeMap<&str, String> = m
            .devices
            .iter()
            .enumerate()
            .map(|(d, dev)| (dev.name.as_str(), self.state_name(d, desired[d])))
            .collect();
        let tmp = self.cache.with_extension("tmp");
        let written =
            std::fs::write(&tmp, encode(&map)).and_then(|()| std::fs::rename(&tmp, &self.cache));
        if let Err(e) = written {
            warn!(event = "cache_failed", error = %e,
                "cannot keep the postures in `{}`: {e}", self.cache.display());
        }
    }

    fn target(&self, device: usize, desired: &[usize], now: Instant) -> Target {
        match self.closed.get(&device) {
            Some(c) if c.retry_at > now => Target::from(c.installed),
            _ => Target::State(desired[device]),
        }
    }

    fn note_closed(&mut self, device: usize, installed: Closed, reason: String) {
        let attempts = self.closed.get(&device).map_or(0, |c| c.attempts) + 1;
        let backoff = Duration::from_secs(1u64 << attempts.min(6).saturating_sub(1))
            .min(Duration::from_secs(60));
        let name = self.node.bundle().manifest.devices[device].name.clone();
        let what = self.closed_name(device, installed);
        warn!(event = "failed_closed", device = %name, installed = %what, reason = %reason,
            "`{name}` failed closed ({what}): {reason}");
        self.closed.insert(
            device,
            ClosedDevice {
                installed,
                reason,
                retry_at: Instant::now() + backoff,
                attempts,
            },
        );
    }

    /// One device's posture change, make-before-break, failing closed when it cannot be
    /// made (as under `run`).
    async fn change(&mut self, device: usize, to: usize) {
        match self.node.change_posture(device, to).await {
            Ok(Posture::Changed { .. }) => {
                self.closed.remove(&device);
            }
            Ok(Posture::FailedClosed { installed, reason }) => {
                self.note_closed(device, installed, reason);
            }
            Ok(Posture::OffSwitch) => {}
            Err(e) => {
                let reason = e.to_string();
                match self.node.fail_closed(device).await {
                    Ok(installed) => self.note_closed(device, installed, reason),
                    Err(e2) => warn!(event = "fail_closed_failed", error = %e2,
                        "{reason}; failing closed failed: {e2}"),
                }
            }
        }
    }

    /// Looks at the node, repairs what differs from the postures, and reports.
    async fn reconcile(&mut self, desired: &[usize]) {
        let now = Instant::now();
        self.next_check = now + self.interval;
        let mut obs = self.node.observe().await;
        let targets: Vec<Target> = (0..desired.len())
            .map(|d| self.target(d, desired, now))
            .collect();
        if let Ok(plan) = self.node.plan_from(&obs, &targets) {
            if !plan.is_empty() {
                for step in self.node.describe(&plan) {
                    info!(event = "repair", step = %step, "{step}");
                }
                match self.node.execute(&plan).await {
                    Ok(report) => {
                        let failed: Vec<usize> = report.failed_closed.iter().map(|f| f.0).collect();
                        for (d, installed, reason) in report.failed_closed {
                            self.note_closed(d, installed, reason);
                        }
                        for (d, t) in targets.iter().enumerate() {
                            if *t == Target::State(desired[d]) && !failed.contains(&d) {
                                self.closed.remove(&d);
                            }
                        }
                    }
                    Err(e) => {
                        warn!(event = "repair_failed", error = %e, "repairing the node failed: {e}")
                    }
                }
                obs = self.node.observe().await;
            }
        }
        self.report(&obs, desired);
    }

    /// Every device's verdict from this look, for the link to write.
    fn report(&self, obs: &Observation, desired: &[usize]) {
        let now = Instant::now();
        let bundle = self.node.bundle();
        let running: Vec<&str> = match &obs.containers {
            Ok(c) => c
                .values()
                .filter(|c| c.running)
                .map(|c| c.name.as_str())
                .collect(),
            Err(_) => Vec::new(),
        };
        let reports: BTreeMap<String, ReportedStatus> = bundle
            .manifest
            .devices
            .iter()
            .enumerate()
            .map(|(d, dev)| {
                let target = self.target(d, desired, now);
                let verdict = enforcement::off_switch(bundle, d).unwrap_or_else(|| {
                    enforcement::verdict(
                        self.node.check(obs, d, target),
                        self.closed
                            .get(&d)
                            .map(|c| (self.closed_name(d, c.installed), c.reason.as_str())),
                    )
                });
                let installed = match (&verdict, target) {
                    (Enforcement::NotEnforced { .. } | Enforcement::OffSwitch, _) => None,
                    (_, Target::State(s)) => Some(Some(s)),
                    (_, Target::NoFlows) => Some(None),
                };
                let crossing = installed.map(|i| enforcement::crossing(bundle, d, i));
                let chain: Vec<String> = self
                    .node
                    .wanted_for(d, target)
                    .into_iter()
                    .map(|(_, c)| c.name.clone())
                    .collect();
                (
                    dev.name.clone(),
                    ReportedStatus {
                        state: self.state_name(d, desired[d]),
                        enforcement: verdict,
                        umboxes: running
                            .iter()
                            .filter(|n| chain.iter().any(|c| c == *n))
                            .map(|n| n.to_string())
                            .collect(),
                        crosses: crossing.as_ref().map(|c| c.line.clone()),
                        crossing: crossing.map(|c| c.cells),
                        t_ms: now_ms(),
                    },
                )
            })
            .collect();
        self.reports.send_if_modified(|old| {
            // The time alone changing is no news.
            let same = old.len() == reports.len()
                && old.iter().all(|(k, v)| {
                    reports.get(k).is_some_and(|n| {
                        ReportedStatus {
                            t_ms: v.t_ms,
                            ..n.clone()
                        } == *v
                    })
                });
            if !same {
                *old = reports.clone();
            }
            !same
        });
    }
}

struct LinkConfig {
    etcd: EtcdConfig,
    site: String,
    node: String,
    id: String,
    lease_ttl: Duration,
    bundle_sha256: String,
}

/// The link to etcd, reconnecting with backoff (0.5 s doubling to 10 s) for ever.
async fn link(
    cfg: LinkConfig,
    heard: mpsc::Sender<Heard>,
    mut reports: watch::Receiver<BTreeMap<String, ReportedStatus>>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        let why = match session(&cfg, &heard, &mut reports).await {
            Ok(()) => return, // the loop is gone
            Err(e) => e.to_string(),
        };
        if heard.send(Heard::Lost(why)).await.is_err() {
            return;
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One connection: register, read the postures, follow them, write the reports, until
/// something fails. `Ok` only when the node's loop is gone.
async fn session(
    cfg: &LinkConfig,
    heard: &mpsc::Sender<Heard>,
    reports: &mut watch::Receiver<BTreeMap<String, ReportedStatus>>,
) -> Result<(), StoreError> {
    let store = Store::connect(&cfg.etcd, &cfg.site).await?;
    let ttl = i64::try_from(cfg.lease_ttl.as_secs().max(1)).unwrap_or(5);
    let lease = store
        .retry(|mut c| async move { c.lease_grant(ttl, None).await })
        .await?
        .id();
    let me = AgentValue {
        id: cfg.id.clone(),
        bundle_sha256: cfg.bundle_sha256.clone(),
        started_ms: now_ms(),
    };
    let put = |key: String, value: String| {
        let store = store.clone();
        async move {
            store
                .retry(|mut c| {
                    let (key, value) = (key.clone(), value.clone());
                    async move {
                        c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                            .await
                    }
                })
                .await
        }
    };
    put(store.key(&agent_key(&cfg.node)), encode(&me)).await?;
    let prefix = store.key(&format!("postures/{}/", cfg.node));
    let all = store
        .read(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = all.header().map_or(0, |h| h.revision());
    let mut postures = BTreeMap::new();
    for kv in all.kvs() {
        let key = kv.key_str().unwrap_or_default();
        if let Some(device) = key.strip_prefix(&prefix) {
            let p: DesiredPosture = decode(kv)?;
            postures.insert(device.to_string(), p.state);
        }
    }
    info!(event = "etcd_connected", node = %cfg.node, postures = postures.len(),
        "registered as node `{}`; {} postures read", cfg.node, postures.len());
    if heard.send(Heard::All(postures)).await.is_err() {
        return Ok(());
    }
    let mut stream = store
        .retry(|mut c| {
            let prefix = prefix.clone();
            async move {
                c.watch(
                    prefix,
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1),
                    ),
                )
                .await
            }
        })
        .await?;
    let (mut keeper, mut alive) = store
        .retry(|mut c| async move { c.lease_keep_alive(lease).await })
        .await?;
    let mut renew = tokio::time::interval(cfg.lease_ttl / 3);
    let mut last_renewed = Instant::now();
    // What was last written, so only changes are written.
    let mut written: BTreeMap<String, ReportedStatus> = BTreeMap::new();
    reports.mark_changed();
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Some(resp) = msg? else {
                    return Err(StoreError::Corrupt { key: prefix, detail: "the watch ended".into() });
                };
                if resp.canceled() {
                    return Err(StoreError::Corrupt { key: prefix, detail: "the watch was cancelled (compacted)".into() });
                }
                for ev in resp.events() {
                    let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) else { continue };
                    let Some(device) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) else { continue };
                    let p: DesiredPosture = decode(kv)?;
                    if heard.send(Heard::One(device.to_string(), p.state)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            changed = reports.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now = reports.borrow_and_update().clone();
                for (device, r) in &now {
                    if written.get(device).is_some_and(|w| ReportedStatus { t_ms: w.t_ms, ..r.clone() } == *w) {
                        continue;
                    }
                    put(store.key(&status_key(&cfg.node, device)), encode(r)).await?;
                    written.insert(device.clone(), r.clone());
                }
            }
            _ = renew.tick() => {
                let renewed = store.call(async {
                    keeper.keep_alive().await?;
                    alive.message().await
                }).await;
                match renewed {
                    Ok(Some(r)) if r.ttl() > 0 => last_renewed = Instant::now(),
                    Ok(_) => return Err(StoreError::Corrupt { key: store.key(&agent_key(&cfg.node)), detail: "the lease expired".into() }),
                    Err(e) if last_renewed.elapsed() >= cfg.lease_ttl => return Err(e),
                    // The renewal stream broke (its member is gone): open another.
                    Err(_) => {
                        if let Ok(k) = store
                            .retry(|mut c| async move { c.lease_keep_alive(lease).await })
                            .await
                        {
                            (keeper, alive) = k;
                        }
                    }
                }
            }
        }
    }
}
