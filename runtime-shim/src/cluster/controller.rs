//! `kalki-shim controller`: the engine of a site that spans nodes, with its input log,
//! the devices' desired postures and its leadership in etcd (`docs/scale-out.md`, "The
//! controller").
//!
//! Every controller follows the log (`inputs/SEQ`), applying each input to its engine
//! in order, so a standby is always current. One of them leads: it holds the `leader`
//! key on its lease, serves the API, and commits each batch of inputs together with the
//! postures they change and a compare on its own leader key, in one transaction; only
//! then is the batch answered. A leader that loses its lease, finds its compare failing
//! or cannot tell whether a transaction committed stops serving and follows the log
//! again: the log, not its memory, says what was accepted.

use super::store::{
    self, agent_key, decode, encode, inbox_node, input_key, input_seq, posture_key, AgentValue,
    DesiredPosture, EpochValue, EtcdConfig, InboxAlert, LeaderValue, LoggedInput, ReportedStatus,
    Store, StoreError,
};
use crate::api::{self, Accepted, Changed, DeviceStatus, Request, StatusReport};
use crate::bundle::Bundle;
use crate::enforcement::Enforcement;
use crate::engine::{Config, Effect, Engine, Input, InputError, Step};
use crate::run::now_ms;
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp, WatchOptions,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// How a controller runs.
pub struct ControllerConfig {
    pub etcd: EtcdConfig,
    /// This controller's name in the `leader` key (default: host name and pid).
    pub id: String,
    /// Where its API listens while it leads.
    pub endpoint: api::Endpoint,
    pub exposure: api::Exposure,
    pub token: api::Token,
    pub clock: Config,
    /// The leader's lease: a leader that cannot renew it within this time is replaced.
    pub lease_ttl: Duration,
}

/// The default of [`ControllerConfig::lease_ttl`].
pub const LEASE_TTL: Duration = Duration::from_secs(5);

/// At most this many operations in one transaction (etcd's default `--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;
/// Inputs read from the log per request.
const PAGE: i64 = 1000;

/// What stops the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Serve(#[from] api::ServeError),
    #[error("the site's log holds input {seq}, which this bundle refuses: {errors}")]
    Refused { seq: u64, errors: String },
}

/// Why a leader stopped leading.
#[derive(Debug)]
enum Deposed {
    /// Its compare failed: another controller leads.
    Superseded,
    /// A transaction's outcome is unknown, or its lease could not be renewed.
    Unsure(String),
    /// The process is stopping.
    Shutdown,
}

type Reply = oneshot::Sender<Result<Accepted, Vec<InputError>>>;

/// The engine and what the log has given it.
struct Follower {
    bundle: Bundle,
    engine: Engine,
    /// The next input's sequence number (1 for an empty log).
    next_seq: u64,
    /// Each device's last change: time and cause, for `status`.
    changes: BTreeMap<usize, (u64, String)>,
    sha: String,
    /// The engine's clock and start, to rebuild it from the log.
    config: Config,
    start_ms: u64,
    /// How long a write may be retried: the leader's lease.
    budget: Duration,
    /// The inbox keys the log has taken alerts from (`by` = `inbox:KEY`): one put again
    /// by its agent is not taken twice.
    taken: BTreeSet<String>,
}

/// How `by` says an input was taken from the inbox.
const INBOX_BY: &str = "inbox:";

/// `by` of an input taken from the inbox key `rest` (`inbox/NODE/ID`).
fn inbox_by(rest: &str) -> String {
    format!("{INBOX_BY}{rest}")
}

/// The inbox key an input's `by` says it was taken from, if any ([`inbox_by`]'s inverse).
fn inbox_of(by: Option<&str>) -> Option<&str> {
    by?.strip_prefix(INBOX_BY)
}

impl Follower {
    /// Applies a logged input (in order): its changes are remembered for `status`.
    fn apply(&mut self, seq: u64, logged: &LoggedInput) -> Result<Vec<Step>, ControllerError> {
        let t = logged.t_ms.max(self.engine.now());
        let steps =
            self.engine
                .handle(t, &logged.input)
                .map_err(|errors| ControllerError::Refused {
                    seq,
                    errors: errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                })?;
        self.note(&steps);
        self.next_seq = seq + 1;
        if let Some(rest) = inbox_of(logged.by.as_deref()) {
            self.taken.insert(rest.to_string());
        }
        Ok(steps)
    }

    fn note(&mut self, steps: &[Step]) {
        for step in steps {
            for e in &step.effects {
                if let Effect::StateChange { device, cause, .. } = e {
                    let why =
                        crate::simulate::cause_text(&self.bundle, &self.engine, *device, cause);
                    self.changes.insert(*device, (step.t_ms, why));
                }
            }
        }
    }

    /// Reads the log from `next_seq` to its end, applying every input. Returns the
    /// revision the reads were made at.
    async fn catch_up(&mut self, store: &Store) -> Result<i64, ControllerError> {
        let end = store.key("inputs0"); // just past every `inputs/...`
        loop {
            let from = store.key(&input_key(self.next_seq));
            let resp = store
                .read(
                    from,
                    Some(GetOptions::new().with_range(end.clone()).with_limit(PAGE)),
                )
                .await?;
            let revision = resp.header().map_or(0, |h| h.revision());
            for kv in resp.kvs() {
                let key = kv.key_str().unwrap_or_default();
                let Some(seq) = store.rest(key).and_then(input_seq) else {
                    continue;
                };
                let logged: LoggedInput = decode(kv)?;
                self.apply(seq, &logged)?;
            }
            if !resp.more() {
                return Ok(revision);
            }
        }
    }

    fn state_name(&self, device: usize) -> String {
        let s = self.engine.state(device).unwrap_or(0);
        self.engine.state_name(device, s).to_string()
    }

    /// The posture every device on a node should have now.
    fn desired(&self) -> BTreeMap<String, DesiredPosture> {
        let m = &self.bundle.manifest;
        (0..self.engine.device_count())
            .filter_map(|d| {
                let node = super::device_node(m, d)?;
                Some((
                    posture_key(node, &m.devices[d].name),
                    DesiredPosture {
                        state: self.state_name(d),
                        seq: self.next_seq.saturating_sub(1),
                        bundle_sha256: self.sha.clone(),
                    },
                ))
            })
            .collect()
    }
}

/// Runs a controller until `shutdown`: follows the log, leads when it can.
pub async fn controller(
    bundle: Bundle,
    cfg: ControllerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let site = bundle.manifest.site.clone();
    let store = Store::connect(&cfg.etcd, &site).await?;
    let epoch = epoch(&store, &cfg.clock).await?;
    let mut clock = cfg.clock.clone();
    clock.day_offset_ms = epoch.day_offset_ms;
    let sha = bundle.manifest_sha256.clone();
    let mut f = Follower {
        engine: Engine::new(&bundle, clock.clone(), epoch.start_ms),
        bundle,
        next_seq: 1,
        changes: BTreeMap::new(),
        sha,
        config: clock,
        start_ms: epoch.start_ms,
        budget: cfg.lease_ttl,
        taken: BTreeSet::new(),
    };
    let started = Instant::now();
    tokio::pin!(shutdown);
    loop {
        // Following: etcd out of reach is waited out (the engine keeps what it applied);
        // an input this bundle refuses is not.
        let followed = async {
            let revision = f.catch_up(&store).await?;
            info!(
                event = "following",
                site = %site,
                applied = f.next_seq - 1,
                "following the log of site `{site}`: {} inputs applied",
                f.next_seq - 1
            );
            follow(&store, &mut f, revision, &cfg).await
        };
        let won = tokio::select! {
            () = &mut shutdown => return Ok(()),
            won = followed => match won {
                Ok(won) => won,
                Err(ControllerError::Store(e)) => {
                    warn!(event = "etcd_lost", error = %e, "etcd: {e}; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        let (lease, token) = won;
        info!(event = "leading", id = %cfg.id, "leading site `{site}` as `{}`", cfg.id);
        let why = lead(&store, &mut f, &cfg, lease, token, started, &mut shutdown).await?;
        // Whatever happened, the lease is given up: a standby may take over at once.
        let mut c = store.client();
        let _ = store.call(c.lease_revoke(lease)).await;
        match why {
            Deposed::Shutdown => return Ok(()),
            Deposed::Superseded => warn!(
                event = "deposed",
                "another controller leads site `{site}`: following the log"
            ),
            Deposed::Unsure(why) => warn!(
                event = "deposed",
                reason = %why,
                "stopped leading site `{site}` ({why}): following the log"
            ),
        }
        // Rebuilt from the log: it, not this engine, says what was accepted.
        f.engine = Engine::new(&f.bundle, f.config.clone(), f.start_ms);
        f.next_seq = 1;
        f.changes.clear();
        f.taken.clear();
    }
}

/// The site's epoch: written by the first controller, read by every other.
async fn epoch(store: &Store, clock: &Config) -> Result<EpochValue, ControllerError> {
    let key = store.key(store::EPOCH);
    let mine = EpochValue {
        start_ms: now_ms(),
        day_offset_ms: clock.day_offset_ms,
    };
    let mut c = store.client();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), encode(&mine), None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let resp = store.call(c.txn(txn)).await?;
    if resp.succeeded() {
        return Ok(mine);
    }
    let found = resp.op_responses().into_iter().find_map(|op| match op {
        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    });
    match found {
        Some(kv) => Ok(decode(&kv)?),
        None => Err(StoreError::Corrupt {
            key,
            detail: "neither absent nor readable".into(),
        }
        .into()),
    }
}

/// Follows the log from `revision` and campaigns whenever no one leads. Returns the
/// lease and the fencing token (the leader key's create revision) once elected.
async fn follow(
    store: &Store,
    f: &mut Follower,
    revision: i64,
    cfg: &ControllerConfig,
) -> Result<(i64, i64), ControllerError> {
    let mut c = store.client();
    let mut inputs = store
        .call(
            c.watch(
                store.key("inputs/"),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
    let mut leader = store.call(c.watch(store.key(store::LEADER), None)).await?;
    // The first try at once, then whenever the key goes, and every lease period in case
    // a deletion was missed.
    let mut retry = tokio::time::interval(cfg.lease_ttl);
    loop {
        tokio::select! {
            msg = inputs.message() => {
                let Some(resp) = msg.map_err(StoreError::from)? else {
                    return Err(StoreError::Corrupt { key: store.key("inputs/"), detail: "the watch ended".into() }.into());
                };
                // Compacted past where it started: the log is read again.
                if resp.canceled() {
                    return Err(StoreError::Corrupt { key: store.key("inputs/"), detail: "the watch was cancelled (compacted)".into() }.into());
                }
                for ev in resp.events() {
                    let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) else { continue };
                    let Some(seq) = kv.key_str().ok().and_then(|k| store.rest(k)).and_then(input_seq) else { continue };
                    if seq < f.next_seq {
                        continue;
                    }
                    if seq > f.next_seq {
                        // A gap: read what is missing from the log itself.
                        f.catch_up(store).await?;
                        continue;
                    }
                    f.apply(seq, &decode(kv)?)?;
                }
            }
            msg = leader.message() => {
                let Some(resp) = msg.map_err(StoreError::from)? else {
                    return Err(StoreError::Corrupt { key: store.key(store::LEADER), detail: "the watch ended".into() }.into());
                };
                if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                    if let Some(won) = campaign(store, cfg, &f.sha).await? {
                        return Ok(won);
                    }
                }
            }
            _ = retry.tick() => {
                if let Some(won) = campaign(store, cfg, &f.sha).await? {
                    return Ok(won);
                }
            }
        }
    }
}

/// Tries once to become the leader: a lease, then the `leader` key if it is absent.
async fn campaign(
    store: &Store,
    cfg: &ControllerConfig,
    sha: &str,
) -> Result<Option<(i64, i64)>, ControllerError> {
    let mut c = store.client();
    let key = store.key(store::LEADER);
    let current = store.read(key.clone(), None).await?;
    if !current.kvs().is_empty() {
        return Ok(None);
    }
    let ttl = i64::try_from(cfg.lease_ttl.as_secs().max(1)).unwrap_or(5);
    let lease = store.call(c.lease_grant(ttl, None)).await?.id();
    let value = LeaderValue {
        id: cfg.id.clone(),
        api: cfg.endpoint.to_string(),
        bundle_sha256: sha.to_string(),
    };
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            encode(&value),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let resp = store.call(c.txn(txn)).await?;
    if resp.succeeded() {
        let token = resp.header().map_or(0, |h| h.revision());
        Ok(Some((lease, token)))
    } else {
        let _ = store.call(c.lease_revoke(lease)).await;
        Ok(None)
    }
}

/// The compare that makes a write the leader's: its key is the one it created. Deleted
/// (its lease expired), or deleted and created again by another controller, the key's
/// create revision is no longer `token`.
fn fence(store: &Store, token: i64) -> Compare {
    Compare::create_revision(store.key(store::LEADER), CompareOp::Equal, token)
}

/// Commits `ops` under the fence: `Ok(())` committed, `Err` why not. A call that fails
/// (a member down, a timeout) is tried again until the lease's time is up: the same
/// transaction twice writes the same values under the same keys, and no one else can
/// write them, so a retry after a lost answer changes nothing.
async fn commit(
    store: &Store,
    token: i64,
    ops: Vec<TxnOp>,
    budget: Duration,
) -> Result<(), Deposed> {
    match commit_if(store, token, None, ops, budget).await? {
        true => Ok(()),
        false => Err(Deposed::Superseded),
    }
}

/// Operations of one transaction at most: etcd refuses more than `--max-txn-ops` (128
/// by default) in one, and two are kept in hand.
const TXN_OPS: usize = MAX_TXN_OPS - 2;

/// Commits inputs (`first`: their puts, and the inbox entry's delete) with the postures
/// they change: the inputs and as many postures as fit in one fenced transaction (with
/// `exists` compared, as [`commit_if`]), the rest of the postures in more fenced
/// transactions after it. A rule or a timer may move hundreds of devices at once, more
/// than one transaction takes. A leader that dies between them leaves the log whole:
/// its successor writes every posture its engine decides before it serves, and an agent
/// that saw only some of them meanwhile gets the rest then (postures are desired values).
/// `Ok(false)`: `exists` was gone, nothing was written.
async fn commit_with_postures(
    store: &Store,
    token: i64,
    exists: Option<&str>,
    mut first: Vec<TxnOp>,
    mut postures: Vec<TxnOp>,
    budget: Duration,
) -> Result<bool, Deposed> {
    let room = TXN_OPS.saturating_sub(first.len()).min(postures.len());
    let rest = postures.split_off(room);
    first.extend(postures);
    if !commit_if(store, token, exists, first, budget).await? {
        return Ok(false);
    }
    for chunk in rest.chunks(TXN_OPS) {
        commit(store, token, chunk.to_vec(), budget).await?;
    }
    Ok(true)
}

/// [`commit`] if `key` also exists: `Ok(false)` when it does not (and the fence held).
async fn commit_if(
    store: &Store,
    token: i64,
    exists: Option<&str>,
    ops: Vec<TxnOp>,
    budget: Duration,
) -> Result<bool, Deposed> {
    let started = Instant::now();
    let leader = store.key(store::LEADER);
    let mut compares = vec![fence(store, token)];
    if let Some(key) = exists {
        compares.push(Compare::version(key, CompareOp::Greater, 0));
    }
    loop {
        let mut c = store.client();
        let txn = Txn::new()
            .when(compares.clone())
            .and_then(ops.clone())
            .or_else([TxnOp::get(leader.clone(), None)]);
        match store.call(c.txn(txn)).await {
            Ok(r) if r.succeeded() => return Ok(true),
            Ok(r) => {
                // Which compare failed: the fence (another leads), or only the key's.
                let fenced = r.op_responses().into_iter().any(|op| match op {
                    etcd_client::TxnOpResponse::Get(g) => g
                        .kvs()
                        .first()
                        .is_some_and(|kv| kv.create_revision() == token),
                    _ => false,
                });
                return if fenced && exists.is_some() {
                    Ok(false)
                } else {
                    Err(Deposed::Superseded)
                };
            }
            Err(e) if started.elapsed() >= budget => {
                return Err(Deposed::Unsure(format!(
                    "a write failed for {} ms: {e}",
                    budget.as_millis()
                )))
            }
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    }
}

/// Every alert in the inbox, sent to the leader's loop: those already there, then each
/// new one as it is put. Keys come back again after a reconnection (a key already
/// taken is no longer there to take). Runs until aborted.
async fn watch_inbox(store: Store, tx: mpsc::Sender<(String, Vec<u8>)>) {
    let prefix = store.key("inbox/");
    loop {
        let read = async {
            // Each entry as (its key's rest, its value); false once the leader's loop
            // is gone.
            let send = |kv: &KeyValue| {
                let rest = store
                    .rest(kv.key_str().unwrap_or_default())
                    .unwrap_or_default()
                    .to_string();
                let entry = (rest, kv.value().to_vec());
                let tx = tx.clone();
                async move { tx.send(entry).await.is_ok() }
            };
            let (all, revision) = store.read_all(&prefix).await?;
            for kv in &all {
                if !send(kv).await {
                    return Ok(());
                }
            }
            let mut c = store.client();
            let mut stream = store
                .call(
                    c.watch(
                        prefix.clone(),
                        Some(
                            WatchOptions::new()
                                .with_prefix()
                                .with_start_revision(revision + 1),
                        ),
                    ),
                )
                .await?;
            while let Some(resp) = stream.message().await.map_err(StoreError::from)? {
                if resp.canceled() {
                    // Compacted: the inbox is read again from scratch.
                    return Err(StoreError::Corrupt {
                        key: prefix.clone(),
                        detail: "the watch was cancelled (compacted)".into(),
                    });
                }
                for ev in resp.events() {
                    let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) else {
                        continue;
                    };
                    if !send(kv).await {
                        return Ok(());
                    }
                }
            }
            Ok::<(), StoreError>(())
        };
        match read.await {
            Ok(()) if tx.is_closed() => return,
            Ok(()) => {}
            Err(e) => warn!(event = "etcd_lost", error = %e, "the inbox: {e}; reading it again"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// An alert from the inbox key `rest` (`inbox/NODE/ID`), moved into the log as the input
/// `run` makes of a µmbox's alert, with the postures it changes, in the transaction that
/// deletes it; fenced, and only if the key is still there. An alert the engine refuses
/// (its µmbox is not deployed in the device's state, say), one of a device of another
/// node, or one the log already took, is deleted and logged, not taken.
async fn take_alert(
    store: &Store,
    f: &mut Follower,
    token: i64,
    rest: &str,
    raw: &[u8],
) -> Result<(), Deposed> {
    let key = store.key(rest);
    let t = now_ms().max(f.engine.now());
    let parsed: Result<InboxAlert, String> =
        serde_json::from_slice(raw).map_err(|e| format!("not an alert this shim reads: {e}"));
    let decided = parsed.and_then(|a| {
        if f.taken.contains(rest) {
            return Err("already in the log".to_string());
        }
        let node = inbox_node(rest).ok_or("not an inbox key")?;
        let m = &f.bundle.manifest;
        let d = m
            .devices
            .iter()
            .position(|d| d.name == a.device)
            .ok_or_else(|| format!("no device `{}` in this site", a.device))?;
        if super::device_node(m, d) != Some(node) {
            return Err(format!("device `{}` is not on node `{node}`", a.device));
        }
        let input = Input::Alert {
            device: a.device.clone(),
            alert: a.alert.clone(),
            source: a.umbox.clone(),
        };
        // Applied in place (a copy of an engine of 100,000 devices costs more than the
        // transaction): if it cannot be committed, the controller rebuilds its engine
        // from the log.
        let steps = f.engine.handle(t, &input).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok((a, input, steps))
    });
    let (a, input, steps) = match decided {
        Ok(d) => d,
        Err(why) => {
            warn!(event = "alert_refused", key = %rest, reason = %why, "alert `{rest}` not taken: {why}");
            commit_if(
                store,
                token,
                Some(&key),
                vec![TxnOp::delete(key.clone(), None)],
                f.budget,
            )
            .await?;
            return Ok(());
        }
    };
    let seq = f.next_seq;
    let logged = LoggedInput {
        t_ms: t,
        bundle_sha256: f.sha.clone(),
        by: Some(inbox_by(rest)),
        input,
    };
    let ops = vec![
        TxnOp::delete(key.clone(), None),
        TxnOp::put(store.key(&input_key(seq)), encode(&logged), None),
    ];
    let changed = changed_devices(steps.iter());
    let postures = posture_ops(store, f, &f.engine, &changed, seq);
    if !commit_with_postures(store, token, Some(&key), ops, postures, f.budget).await? {
        // Gone meanwhile (deleted by hand, or taken by an earlier try whose answer was
        // lost): nothing was written now, but the engine has applied it. The log, read
        // again from the start, says what was taken.
        return Err(Deposed::Unsure(format!(
            "the inbox entry `{rest}` went away while it was being taken"
        )));
    }
    f.next_seq = seq + 1;
    f.taken.insert(rest.to_string());
    f.note(&steps);
    info!(event = "alert", device = %a.device, alert = %a.alert, node = %inbox_node(rest).unwrap_or_default(),
        seq, "`{}`: alert `{}` from `{}` taken as input {seq}", a.device, a.alert, a.container);
    log_changes(f, &steps);
    Ok(())
}

/// The pause between two tries of a call to etcd.
const RETRY: Duration = Duration::from_millis(100);

/// Writes the postures that differ from what etcd holds, under the fence.
async fn sync_postures(store: &Store, f: &Follower, token: i64) -> Result<(), Deposed> {
    let (held, _) = store
        .read_all(&store.key("postures/"))
        .await
        .map_err(|e| Deposed::Unsure(e.to_string()))?;
    let held: BTreeMap<String, Vec<u8>> = held
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap_or_default().to_string(),
                kv.value().to_vec(),
            )
        })
        .collect();
    let ops: Vec<TxnOp> = f
        .desired()
        .into_iter()
        .filter_map(|(k, p)| {
            let key = store.key(&k);
            let want: Option<DesiredPosture> =
                held.get(&key).and_then(|v| serde_json::from_slice(v).ok());
            // Same state: nothing to write (the seq that decided it may differ).
            (want.as_ref().map(|w| &w.state) != Some(&p.state))
                .then(|| TxnOp::put(key, encode(&p), None))
        })
        .collect();
    for chunk in ops.chunks(TXN_OPS) {
        commit(store, token, chunk.to_vec(), f.budget).await?;
    }
    Ok(())
}

/// Leads until deposed or told to stop.
async fn lead(
    store: &Store,
    f: &mut Follower,
    cfg: &ControllerConfig,
    lease: i64,
    token: i64,
    started: Instant,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> Result<Deposed, ControllerError> {
    // The lease, renewed every third of its time from now on (the catch-up and the
    // posture sync of a large site take longer than a lease); lost when a renewal is
    // refused or none succeeds for a whole period.
    let (lost_tx, mut lost) = oneshot::channel::<String>();
    let keeper = {
        let store = store.clone();
        let ttl = cfg.lease_ttl;
        tokio::spawn(async move {
            let why = keep_alive(&store, lease, ttl).await;
            let _ = lost_tx.send(why);
        })
    };
    // Everything any leader acknowledged is in the log up to now: apply it before
    // anything else.
    if let Err(e) = f.catch_up(store).await {
        keeper.abort();
        return Ok(Deposed::Unsure(e.to_string()));
    }
    if let Err(d) = sync_postures(store, f, token).await {
        keeper.abort();
        return Ok(d);
    }
    let listener = match api::Listener::bind(&cfg.endpoint, cfg.exposure).await {
        Ok(l) => l,
        Err(e) => {
            keeper.abort();
            return Err(e.into());
        }
    };
    // The µmboxes' alerts the agents put in the inbox, moved into the log one by one.
    let (inbox_tx, mut inbox) = mpsc::channel::<(String, Vec<u8>)>(256);
    let inbox_reader = tokio::spawn(watch_inbox(store.clone(), inbox_tx));
    let (req_tx, mut req_rx) = mpsc::channel::<Request>(256);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let options = api::ServeOptions::new(cfg.token.clone(), api::Checker::new(&f.bundle));
    let server = tokio::spawn(api::serve(listener, options, req_tx, async move {
        let _ = stop_rx.await;
    }));
    let why = loop {
        let deadline = f.engine.next_deadline();
        let timer = async {
            match deadline {
                Some(t) => {
                    tokio::time::sleep(Duration::from_millis(t.saturating_sub(now_ms()))).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut *shutdown => break Deposed::Shutdown,
            why = &mut lost => break Deposed::Unsure(why.unwrap_or_else(|_| "the lease keeper stopped".into())),
            req = req_rx.recv() => match req {
                Some(Request::Submit { input, by, reply }) => {
                    let mut batch = vec![(input, by, reply)];
                    while batch.len() < MAX_TXN_OPS / 4 {
                        match req_rx.try_recv() {
                            Ok(Request::Submit { input, by, reply }) => batch.push((input, by, reply)),
                            Ok(other) => { answer(store, f, started, other).await; break; }
                            Err(_) => break,
                        }
                    }
                    if let Err(d) = submit(store, f, token, batch).await {
                        break d;
                    }
                }
                Some(other) => {
                    // As under `run`: a status after the timers due by now.
                    let due = f.engine.next_deadline().is_some_and(|t| t <= now_ms());
                    if matches!(other, Request::Status { .. }) && due {
                        if let Err(d) = tick(store, f, token).await {
                            break d;
                        }
                    }
                    answer(store, f, started, other).await;
                }
                None => break Deposed::Shutdown,
            },
            Some((rest, raw)) = inbox.recv() => {
                if let Err(d) = take_alert(store, f, token, &rest, &raw).await {
                    break d;
                }
            }
            () = timer => {
                if let Err(d) = tick(store, f, token).await {
                    break d;
                }
            }
        }
    };
    keeper.abort();
    inbox_reader.abort();
    drop(req_rx);
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(why)
}

/// Renews the lease until it cannot; returns why. A renewal stream that breaks (the
/// member it went to is gone) is opened again, on whichever member answers, as long as
/// the lease has not run out.
async fn keep_alive(store: &Store, lease: i64, ttl: Duration) -> String {
    let mut last = Instant::now();
    loop {
        let mut c = store.client();
        if let Ok((mut keeper, mut stream)) = store.call(c.lease_keep_alive(lease)).await {
            loop {
                let renewed = tokio::time::timeout(ttl / 3, async {
                    keeper.keep_alive().await?;
                    stream.message().await
                })
                .await;
                match renewed {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => last = Instant::now(),
                    Ok(Ok(Some(_))) => return "the lease expired".into(),
                    // The stream broke or did not answer: open another.
                    _ => break,
                }
                tokio::time::sleep(ttl / 3).await;
            }
        }
        if last.elapsed() >= ttl {
            return format!("the lease was not renewed for {} ms", ttl.as_millis());
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The batch's inputs, validated at one time, applied to the engine, and committed with
/// the postures they change in one fenced transaction; answered only then. A refused
/// input is answered at once and written nowhere. The engine is not copied first (a
/// copy costs O(devices) per batch): a batch that cannot be committed deposes the
/// controller, which rebuilds its engine from the log before it does anything else.
async fn submit(
    store: &Store,
    f: &mut Follower,
    token: i64,
    batch: Vec<(Input, Option<String>, Reply)>,
) -> Result<(), Deposed> {
    let t = now_ms().max(f.engine.now());
    let mut ops = Vec::new();
    let mut answers: Vec<(Reply, u64, Vec<Step>)> = Vec::new();
    let mut seq = f.next_seq;
    for (input, by, reply) in batch {
        match f.engine.handle(t, &input) {
            Ok(steps) => {
                let logged = LoggedInput {
                    t_ms: t,
                    bundle_sha256: f.sha.clone(),
                    by,
                    input,
                };
                ops.push(TxnOp::put(
                    store.key(&input_key(seq)),
                    encode(&logged),
                    None,
                ));
                answers.push((reply, seq, steps));
                seq += 1;
            }
            Err(errors) => {
                let _ = reply.send(Err(errors));
            }
        }
    }
    if answers.is_empty() {
        return Ok(());
    }
    let changed = changed_devices(answers.iter().flat_map(|(_, _, s)| s));
    let postures = posture_ops(store, f, &f.engine, &changed, seq - 1);
    commit_with_postures(store, token, None, ops, postures, f.budget).await?;
    f.next_seq = seq;
    for (reply, seq, steps) in answers {
        f.note(&steps);
        commands_not_sent(f, &steps);
        let changes = changes_of(f, &steps);
        let _ = reply.send(Ok(Accepted {
            seq,
            t_ms: t,
            changes,
        }));
    }
    Ok(())
}

/// Timers due: a `tick` input, logged when it changed anything (as the journal does).
async fn tick(store: &Store, f: &mut Follower, token: i64) -> Result<(), Deposed> {
    let t = now_ms().max(f.engine.now());
    // In place, as in `submit`.
    let steps = f.engine.handle(t, &Input::Tick).unwrap_or_default();
    if !steps.iter().any(|s| !s.effects.is_empty()) {
        return Ok(());
    }
    let seq = f.next_seq;
    let logged = LoggedInput {
        t_ms: t,
        bundle_sha256: f.sha.clone(),
        by: None,
        input: Input::Tick,
    };
    let ops = vec![TxnOp::put(
        store.key(&input_key(seq)),
        encode(&logged),
        None,
    )];
    let changed = changed_devices(steps.iter());
    let postures = posture_ops(store, f, &f.engine, &changed, seq);
    commit_with_postures(store, token, None, ops, postures, f.budget).await?;
    f.next_seq = seq + 1;
    f.note(&steps);
    log_changes(f, &steps);
    Ok(())
}

/// The device commands of `steps`, which the controller does not send (it runs only
/// with `--without-commands` when the site has any): each logged, never silently lost.
fn commands_not_sent(f: &Follower, steps: &[Step]) {
    for (t_ms, device, command, rule) in steps.iter().flat_map(|s| {
        s.effects.iter().filter_map(move |e| match e {
            Effect::Command {
                device,
                command,
                rule,
            } => Some((s.t_ms, *device, command, *rule)),
            _ => None,
        })
    }) {
        let device = f.engine.device_name(device);
        let rule = f.engine.rule_name(rule);
        warn!(event = "command_not_sent", device, command = %command, rule, t_ms,
            "`{device}`: command `{command}` of rule `{rule}` not sent (the controller sends no commands)");
    }
}

/// The state changes of `steps`, logged, and the commands not sent.
fn log_changes(f: &Follower, steps: &[Step]) {
    commands_not_sent(f, steps);
    for c in changes_of(f, steps) {
        info!(
            event = "state_change",
            device = %c.device,
            from = %c.from,
            to = %c.to,
            cause = %c.cause,
            "`{}`: {} -> {} ({})",
            c.device,
            c.from,
            c.to,
            c.cause
        );
    }
}

fn changed_devices<'a>(steps: impl Iterator<Item = &'a Step>) -> Vec<usize> {
    let mut devices: Vec<usize> = steps
        .flat_map(|s| &s.effects)
        .filter_map(|e| match e {
            Effect::StateChange { device, .. } => Some(*device),
            _ => None,
        })
        .collect();
    devices.sort_unstable();
    devices.dedup();
    devices
}

/// Puts of the postures of `devices` as `engine` has them, decided by input `seq`.
fn posture_ops(
    store: &Store,
    f: &Follower,
    engine: &Engine,
    devices: &[usize],
    seq: u64,
) -> Vec<TxnOp> {
    let m = &f.bundle.manifest;
    devices
        .iter()
        .filter_map(|&d| {
            let node = super::device_node(m, d)?;
            let state = engine.state_name(d, engine.state(d).unwrap_or(0));
            let p = DesiredPosture {
                state: state.to_string(),
                seq,
                bundle_sha256: f.sha.clone(),
            };
            Some(TxnOp::put(
                store.key(&posture_key(node, &m.devices[d].name)),
                encode(&p),
                None,
            ))
        })
        .collect()
}

fn changes_of(f: &Follower, steps: &[Step]) -> Vec<Changed> {
    steps
        .iter()
        .flat_map(|s| &s.effects)
        .filter_map(|e| match e {
            Effect::StateChange {
                device,
                from,
                to,
                cause,
            } => Some(Changed {
                device: f.engine.device_name(*device).to_string(),
                from: f.engine.state_name(*device, *from).to_string(),
                to: f.engine.state_name(*device, *to).to_string(),
                cause: crate::simulate::cause_text(&f.bundle, &f.engine, *device, cause),
            }),
            _ => None,
        })
        .collect()
}

/// Answers a request that is not an input.
async fn answer(store: &Store, f: &Follower, started: Instant, request: Request) {
    match request {
        Request::Status { reply } => {
            let _ = reply.send(status(store, f, started).await);
        }
        Request::History { reply, .. } => {
            let _ = reply.send(Err(
                "a controller keeps no per-device history yet (docs/scale-out.md)".into(),
            ));
        }
        Request::Submit { reply, .. } => {
            let _ = reply.send(Err(Vec::new()));
        }
    }
}

/// The site's status: each device's state from the engine, its verdict from its node's
/// agent, never assumed (`docs/scale-out.md`, "Status").
async fn status(store: &Store, f: &Follower, started: Instant) -> StatusReport {
    let read = |prefix: &'static str| {
        let store = store.clone();
        async move { store.read_all(&store.key(prefix)).await.map(|(kvs, _)| kvs) }
    };
    let (agents, reports) = tokio::join!(read("agents/"), read("status/"));
    let by_key = |kvs: &Result<Vec<KeyValue>, StoreError>| -> BTreeMap<String, KeyValue> {
        kvs.as_ref()
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|kv| {
                        let k = store.rest(kv.key_str().ok()?)?.to_string();
                        Some((k, kv.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (agents_map, reports_map) = (by_key(&agents), by_key(&reports));
    let unreadable = agents.as_ref().err().or(reports.as_ref().err());
    let m = &f.bundle.manifest;
    let devices = (0..f.engine.device_count())
        .map(|d| {
            let dev = &m.devices[d];
            let state = f.state_name(d);
            let last = f.changes.get(&d);
            let node = super::device_node(m, d).unwrap_or_default();
            let agent: Option<AgentValue> = agents_map
                .get(&agent_key(node))
                .and_then(|kv| decode(kv).ok());
            let report: Option<ReportedStatus> = reports_map
                .get(&store::status_key(node, &dev.name))
                .and_then(|kv| decode(kv).ok());
            let (enforcement, umboxes, crosses, crossing) = match (unreadable, agent, report) {
                (Some(e), _, _) => (
                    Enforcement::NotEnforced {
                        reason: format!("etcd could not be read: {e}"),
                    },
                    Vec::new(),
                    None,
                    None,
                ),
                (None, None, _) => (
                    Enforcement::NotEnforced {
                        reason: format!("node `{node}` unreachable: no agent of it is alive"),
                    },
                    Vec::new(),
                    None,
                    None,
                ),
                (None, Some(_), None) => (
                    Enforcement::NotEnforced {
                        reason: format!("node `{node}` has not reported `{}` yet", dev.name),
                    },
                    Vec::new(),
                    None,
                    None,
                ),
                (None, Some(_), Some(r)) if r.state != state => (
                    Enforcement::NotEnforced {
                        reason: format!(
                            "node `{node}` is bringing it to `{state}` (last reported: `{}`, {})",
                            r.state,
                            r.enforcement.verdict()
                        ),
                    },
                    Vec::new(),
                    None,
                    None,
                ),
                (None, Some(_), Some(r)) => (r.enforcement, r.umboxes, r.crosses, r.crossing),
            };
            DeviceStatus {
                name: dev.name.clone(),
                device_type: dev.ty.clone(),
                state,
                since_ms: last.map(|(t, _)| *t),
                since: last.map(|(t, _)| api::rfc3339(*t)),
                cause: last.map(|(_, c)| c.clone()),
                umboxes,
                enforcement,
                crosses,
                crossing,
            }
        })
        .collect();
    StatusReport {
        site: m.site.clone(),
        bundle_sha256: f.sha.clone(),
        uptime_s: started.elapsed().as_secs(),
        now_ms: now_ms(),
        devices,
        mqtt: None,
    }
}

#[cfg(test)]
mod tests {
    use super::{inbox_by, inbox_of};

    #[test]
    fn an_inputs_by_names_the_inbox_key_it_came_from() {
        let by = inbox_by("inbox/east/0001-00000001");
        assert_eq!(inbox_of(Some(&by)), Some("inbox/east/0001-00000001"));
        assert_eq!(inbox_of(Some("api")), None);
        assert_eq!(inbox_of(Some("console:ab12")), None);
        assert_eq!(inbox_of(None), None);
    }
}
