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
    agent_key, decode, encode, inbox_key, status_key, AgentValue, DesiredPosture, EtcdConfig,
    InboxAlert, ReportedStatus, Store, StoreError,
};
use crate::follow::UmboxEvent;
use crate::keeper::{self, Keeper, LogOnly};
use crate::node::{Node, Observation};
use crate::run::now_ms;
use etcd_client::{EventType, PutOptions, Txn, TxnOp, WatchOptions};
use std::collections::{BTreeMap, VecDeque};
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
            // A kept name this bundle does not know (a state renamed since, a damaged
            // file) counts as none: the most restrictive state, never the first.
            let most = state_index(&node, d, &dev.most_restrictive).unwrap_or(0);
            cached
                .get(&dev.name)
                .and_then(|name| state_index(&node, d, name))
                .unwrap_or(most)
        })
        .collect();
    let (heard_tx, mut heard) = mpsc::channel::<Heard>(1024);
    let (reports_tx, reports) = watch::channel(BTreeMap::<String, ReportedStatus>::new());
    let (alerts_tx, alerts) = mpsc::channel::<(String, InboxAlert)>(ALERTS_QUEUED);
    let link = tokio::spawn(link(cfg_link(&cfg, &node), heard_tx, reports, alerts));
    let (keeper, mut umbox_events) = Keeper::new(node, cfg.reconcile_interval);
    let mut a = Agent {
        keeper,
        reports: reports_tx,
        cache: cfg.cache.clone(),
        alerts: alerts_tx,
        id: cfg.id.clone(),
        raised: 0,
    };
    // Follow what already runs from now on (what it said before was handled then).
    a.keeper.sync_followers().await;
    tokio::pin!(shutdown);
    loop {
        let check = tokio::time::sleep_until(a.keeper.next_check.into());
        tokio::select! {
            // A posture heard goes before a look that is due, and a look before a
            // µmbox's event (a µmbox that prints alerts without end must not hold the
            // looks off; its exit is seen by a look too).
            biased;
            () = &mut shutdown => break,
            h = heard.recv() => match h {
                Some(Heard::All(all)) => {
                    let m = &a.keeper.node().bundle().manifest;
                    for (d, dev) in m.devices.iter().enumerate() {
                        // A device with no posture yet is in its initial state: the
                        // controller writes every posture when it starts leading.
                        let name = all.get(&dev.name).unwrap_or(&dev.initial);
                        if let Some(s) = state_index(a.keeper.node(), d, name) {
                            desired[d] = s;
                        }
                    }
                    a.save(&desired);
                    a.reconcile(&desired).await;
                }
                Some(Heard::One(device, state)) => {
                    let Some(d) = names.iter().position(|n| *n == device) else { continue };
                    let Some(s) = state_index(a.keeper.node(), d, &state) else {
                        warn!(event = "posture_refused", device = %device, state = %state,
                            "posture `{state}` of `{device}` is no state of it in this bundle");
                        continue;
                    };
                    if desired[d] != s {
                        desired[d] = s;
                        a.save(&desired);
                        if a.keeper.change_posture(d, s, &mut LogOnly).await {
                            a.keeper.sync_followers().await;
                        }
                        if !a.keeper.is_closed(d) {
                            info!(event = "posture_changed", device = %device, state = %state,
                                "`{device}`: posture `{state}` in force");
                        }
                        // The report of it comes from a look, soon: the changes of a
                        // burst are made first, then one look for all.
                        a.keeper.next_check =
                            a.keeper.next_check.min(Instant::now() + LOOK_AFTER_CHANGE);
                    }
                }
                Some(Heard::Lost(why)) => {
                    warn!(event = "etcd_lost", error = %why,
                        "etcd out of reach ({why}): keeping the postures in force");
                }
                None => break,
            },
            () = check => {
                a.reconcile(&desired).await;
            }
            Some(event) = umbox_events.recv() => a.umbox_event(event, &desired).await,
        }
    }
    link.abort();
    Ok(())
}

/// How long after a posture change the node is looked at (and the change reported).
const LOOK_AFTER_CHANGE: Duration = Duration::from_millis(50);

/// How many µmbox alerts wait for etcd at most; beyond, new ones are dropped (logged).
const ALERTS_QUEUED: usize = 4096;

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
    /// The node, kept at the desired postures as `run` keeps its node.
    keeper: Keeper,
    reports: watch::Sender<BTreeMap<String, ReportedStatus>>,
    cache: PathBuf,
    /// Alerts of the node's µmboxes, for the link to put in the inbox.
    alerts: mpsc::Sender<(String, InboxAlert)>,
    id: String,
    /// Alerts raised so far (the inbox ids' counter).
    raised: u64,
}

impl Agent {
    /// The postures about to be applied, on disk first (a temporary file renamed into
    /// place): an agent restarted without etcd starts from them.
    fn save(&self, desired: &[usize]) {
        let m = &self.keeper.node().bundle().manifest;
        let map: BTreeMap<&str, String> = m
            .devices
            .iter()
            .enumerate()
            .map(|(d, dev)| (dev.name.as_str(), self.keeper.state_name(d, desired[d])))
            .collect();
        let tmp = self.cache.with_extension("tmp");
        let written =
            std::fs::write(&tmp, encode(&map)).and_then(|()| std::fs::rename(&tmp, &self.cache));
        if let Err(e) = written {
            warn!(event = "cache_failed", error = %e,
                "cannot keep the postures in `{}`: {e}", self.cache.display());
        }
    }

    /// Looks at the node, repairs what differs from the postures, and reports.
    async fn reconcile(&mut self, desired: &[usize]) {
        let obs = self.keeper.reconcile(desired, &mut LogOnly).await;
        self.report(&obs, desired);
    }

    /// What a µmbox said or did: an exit of one in force has closed its device (the
    /// keeper's, as under `run`); an alert goes to the inbox, with an id kept across
    /// retries so that it enters the log once.
    async fn umbox_event(&mut self, event: UmboxEvent, desired: &[usize]) {
        let keeper::UmboxOutcome::Alert(alert) =
            self.keeper.umbox_event(event, desired, &mut LogOnly).await
        else {
            return;
        };
        let t_ms = now_ms();
        self.raised += 1;
        let id = format!("{t_ms:013}-{:08}", self.raised);
        let m = &self.keeper.node().bundle().manifest;
        let device = m.devices[alert.device].name.clone();
        info!(event = "alert", device = %device, alert = %alert.alert, container = %alert.container,
            "`{device}`: alert `{}` from `{}`", alert.alert, alert.container);
        let entry = InboxAlert {
            device,
            alert: alert.alert,
            umbox: alert.umbox,
            container: alert.container,
            container_id: alert.id,
            agent: self.id.clone(),
            t_ms,
        };
        if let Err(e) = self.alerts.try_send((id, entry)) {
            warn!(event = "alert_dropped", error = %e,
                "an alert cannot wait for etcd ({ALERTS_QUEUED} are waiting): dropped");
        }
    }

    /// Every device's verdict from this look, for the link to write.
    fn report(&self, obs: &Observation, desired: &[usize]) {
        let bundle = self.keeper.node().bundle();
        let verdicts = self.keeper.verdicts(obs, desired);
        let reports: BTreeMap<String, ReportedStatus> = bundle
            .manifest
            .devices
            .iter()
            .zip(verdicts)
            .enumerate()
            .map(|(d, (dev, verdict))| {
                let crossing = self.keeper.crossing(d, &verdict, desired);
                (
                    dev.name.clone(),
                    ReportedStatus {
                        state: self.keeper.state_name(d, desired[d]),
                        umboxes: self.keeper.umboxes(obs, d, desired),
                        enforcement: verdict,
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
/// Alerts not yet in the inbox wait for the next connection, in order.
async fn link(
    cfg: LinkConfig,
    heard: mpsc::Sender<Heard>,
    mut reports: watch::Receiver<BTreeMap<String, ReportedStatus>>,
    mut alerts: mpsc::Receiver<(String, InboxAlert)>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut unsent = VecDeque::new();
    loop {
        let started = Instant::now();
        let why = match session(&cfg, &heard, &mut reports, &mut alerts, &mut unsent).await {
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

/// One connection: register, read the postures, follow them, write the reports and the
/// alerts, until something fails. `Ok` only when the node's loop is gone.
async fn session(
    cfg: &LinkConfig,
    heard: &mpsc::Sender<Heard>,
    reports: &mut watch::Receiver<BTreeMap<String, ReportedStatus>>,
    alerts: &mut mpsc::Receiver<(String, InboxAlert)>,
    unsent: &mut VecDeque<(String, InboxAlert)>,
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
    let (all, revision) = store.read_all(&prefix).await?;
    let mut postures = BTreeMap::new();
    for kv in &all {
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
    put_inbox(&store, &cfg.node, unsent).await?;
    loop {
        tokio::select! {
            alert = alerts.recv() => {
                let Some(alert) = alert else { return Ok(()) };
                unsent.push_back(alert);
                while let Ok(more) = alerts.try_recv() {
                    unsent.push_back(more);
                }
                put_inbox(&store, &cfg.node, unsent).await?;
            }
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
                let fresh: Vec<(&String, &ReportedStatus)> = now
                    .iter()
                    .filter(|(device, r)| {
                        !written.get(*device).is_some_and(|w| ReportedStatus { t_ms: w.t_ms, ..(*r).clone() } == *w)
                    })
                    .collect();
                // In transactions of up to 100 puts: a node of a thousand devices
                // reports in ten calls, and the lease is renewed in between.
                for chunk in fresh.chunks(100) {
                    let ops: Vec<TxnOp> = chunk
                        .iter()
                        .map(|(device, r)| {
                            TxnOp::put(
                                store.key(&status_key(&cfg.node, device)),
                                encode(r),
                                Some(PutOptions::new().with_lease(lease)),
                            )
                        })
                        .collect();
                    store
                        .retry(|mut c| {
                            let ops = ops.clone();
                            async move { c.txn(Txn::new().and_then(ops)).await }
                        })
                        .await?;
                    for (device, r) in chunk {
                        written.insert((*device).clone(), (*r).clone());
                    }
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

/// Puts the alerts waiting, oldest first, each under its own id on no lease (it outlives
/// the agent), taking each off the queue once etcd has it. One put again after a lost
/// answer is the same key: the leader moves it into the log once, and one it has moved
/// already is not moved again (`docs/scale-out.md`, "The node agent").
async fn put_inbox(
    store: &Store,
    node: &str,
    unsent: &mut VecDeque<(String, InboxAlert)>,
) -> Result<(), StoreError> {
    while let Some((id, alert)) = unsent.front() {
        let key = store.key(&inbox_key(node, id));
        let value = encode(alert);
        store
            .retry(|mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            })
            .await?;
        unsent.pop_front();
    }
    Ok(())
}
