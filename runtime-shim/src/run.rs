//! `kalki-shim run`: the main loop. One task owns the engine, the journal and the node,
//! so every event is handled in order: readings, alerts and operator actions from the API,
//! alerts and exits from the µmboxes, and the engine's timers.
//!
//! For each accepted input: the engine validates it, the journal stores it (on disk
//! before anything answers), the engine handles it, and the effects are carried out:
//! state changes as posture changes on the node (make-before-break, fail-closed), device
//! commands to the webhook (journaled before and after), all in order. A restart replays
//! the journal into a fresh engine, reconciles the node to the states that gives, and goes
//! on; nothing accepted is lost (`docs/runtime.md`, "Running").
//!
//! The node is looked at again and again ([`Node::observe`]): every reconcile interval,
//! at once when a µmbox stops, and for every status request. What is seen decides each
//! device's [`Enforcement`] verdict, and whatever differs from what the states require is
//! repaired, so the node heals from a restarted switch or engine, a deleted port or a
//! killed µmbox without a restart of the shim, and `status` never reports from memory.
// The run loop is the daemon: it logs with `tracing` (the binary sends it to standard
// error, as sentences or JSON), every line with an `event` field naming its kind and the
// fields of docs/runtime.md, "Logs".

use crate::api::{self, Accepted, Changed, DeviceStatus, Request, StatusReport};
use crate::enforcement::{self, Enforcement};
use crate::engine::{Config, Effect, Engine, Input, InputError, Step};
use crate::follow::UmboxEvent;
use crate::journal::{Delivery, Journal, JournalError};
use crate::keeper::{self, Keeper};
use crate::metrics::{self, Metrics};
use crate::mqtt::{self, Mqtt, MqttConfig, MqttEvent};
use crate::node::{Node, NodeError, Observation};
use crate::simulate::cause_text;
use crate::sink::{self, Webhook};
use kalki_model::telemetry::{self, Topics};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Serve(#[from] api::ServeError),
}

pub struct RunConfig {
    pub journal: std::path::PathBuf,
    pub listener: api::Listener,
    pub token: api::Token,
    pub webhook: Option<Webhook>,
    /// How Unix time maps to the node's wall clock, for clock rules: a fixed offset from
    /// UTC (`--utc-offset`) or a time zone (`--time-zone`, origin Unix time 0).
    pub clock: Config,
    /// How often the node is looked at and repaired when nothing else asks for it.
    pub reconcile_interval: Duration,
    /// The broker the devices' bound topics are read from and their commands published
    /// on; `None`: no MQTT (`main.rs` refuses a bundle with bindings unless told so).
    pub mqtt: Option<MqttConfig>,
}

/// The default of [`RunConfig::reconcile_interval`].
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);

/// Unix time in milliseconds.
/// Problems as the log writes them: `[S121] ...; [S104] ...`.
fn coded<'a, D: std::fmt::Display + 'a>(
    problems: impl Iterator<Item = (&'static str, &'a D)>,
) -> String {
    problems
        .map(|(code, p)| format!("[{code}] {p}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The size of the journal's database and its write-ahead log, in bytes.
fn journal_bytes(path: &std::path::Path) -> i64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [path, std::path::Path::new(&wal)]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len() as i64)
        .sum()
}

/// Codes as a log field: `S121,S104`.
fn codes<'a>(codes: impl Iterator<Item = &'a str>) -> String {
    codes.collect::<Vec<_>>().join(",")
}

/// The most MQTT messages taken from the queue at once, journaled in one commit.
const MQTT_BATCH: usize = 256;
/// The most API inputs journaled in one commit.
const API_BATCH: usize = 256;

/// Where an API input's answer goes.
type Reply = tokio::sync::oneshot::Sender<Result<Accepted, Vec<InputError>>>;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A command's delivery, reported back to the loop (which owns the journal).
struct Delivered {
    id: u64,
    delivery: Delivery,
}

struct Loop {
    /// The node, kept at the engine's states.
    keeper: Keeper,
    engine: Engine,
    journal: Journal,
    webhook: Option<Webhook>,
    delivered: mpsc::Sender<Delivered>,
    started_ms: u64,
    /// The verdicts last logged, per device (a change is logged).
    verdicts: Vec<Option<Enforcement>>,
    /// Flow-only posture changes waiting to be installed together: device → state.
    deferred: BTreeMap<usize, usize>,
    /// Whether a batch of inputs is being carried out (its flow-only changes are then
    /// installed at its end, in one bundle).
    batching: bool,
    /// The MQTT client, when there is a broker.
    mqtt: Option<MqttLink>,
    /// What `/metrics` serves (shared with the API).
    metrics: Arc<Metrics>,
    /// The journal's file, whose size `kalki_journal_bytes` gives.
    journal_path: std::path::PathBuf,
    /// When the loop took the input being carried out (for the posture-change latency).
    taken: Instant,
    /// The changes of that input (or batch) whose flows are not yet installed: their
    /// latencies are observed once they are ([`Loop::observe_latency`]).
    unflushed: Vec<Instant>,
}

/// The MQTT client as the loop uses it: the client, the topics it reads, what came of the
/// messages.
struct MqttLink {
    client: Mqtt,
    topics: Topics,
    counts: mqtt::Counts,
    _task: mqtt::Task,
}

/// Runs until `shutdown` resolves.
pub async fn run(
    node: Node,
    cfg: RunConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let journal = Journal::open(&cfg.journal)?;
    let start = now_ms();
    let (engine, report) = journal.replay(node.bundle(), cfg.clock.clone(), start)?;
    if let Some((was, now)) = &report.clock_changed {
        warn!(
            event = "clock_changed",
            journal = %cfg.journal.display(),
            was = %was,
            now = %now,
            "the journal's inputs were handled under the clock {was}; replayed under {now}: \
             clock windows may have fallen differently, and states may differ from those \
             enforced before"
        );
    }
    info!(
        event = "journal_replayed",
        journal = %cfg.journal.display(),
        replayed = report.replayed,
        skipped = report.skipped.len(),
        "journal {}: {} inputs replayed{}",
        cfg.journal.display(),
        report.replayed,
        if report.skipped.is_empty() {
            String::new()
        } else {
            format!(
                ", {} refused by this bundle and skipped",
                report.skipped.len()
            )
        }
    );

    let (delivered_tx, mut delivered_rx) = mpsc::channel::<Delivered>(1024);
    let device_count = node.bundle().manifest.devices.len();
    let (keeper, mut umbox_rx) = Keeper::new(node, cfg.reconcile_interval);
    let mut lp = Loop {
        keeper,
        engine,
        journal,
        webhook: cfg.webhook,
        delivered: delivered_tx,
        started_ms: start,
        verdicts: vec![None; device_count],
        deferred: BTreeMap::new(),
        batching: false,
        mqtt: None,
        metrics: Arc::new(Metrics::new()),
        journal_path: cfg.journal.clone(),
        taken: Instant::now(),
        unflushed: Vec::new(),
    };

    // Follow what already runs from now on (what it said before was handled then), then
    // bring the node to the journaled states (as `apply` would); say loudly if it could
    // not be done: the loop serves anyway and keeps trying.
    lp.keeper.sync_followers().await;
    let obs = lp.reconcile().await;
    lp.announce(&obs);

    // The broker: every bound topic subscribed (QoS 1, persistent session), before the
    // pending commands are sent again, some of which may go to it.
    let (mqtt_tx, mut mqtt_rx) = mpsc::channel::<MqttEvent>(256);
    if let Some(mcfg) = &cfg.mqtt {
        let topics = Topics::new(&lp.node().bundle().manifest);
        let list: Vec<String> = topics.topics().map(str::to_string).collect();
        info!(
            event = "mqtt_broker",
            broker = %mcfg.url,
            client_id = %mcfg.client_id,
            topics = list.len(),
            "mqtt: broker {} (client id `{}`), {} bound topic{}",
            mcfg.url,
            mcfg.client_id,
            list.len(),
            if list.len() == 1 { "" } else { "s" }
        );
        let (client, task) = Mqtt::start(
            mcfg,
            list,
            mqtt_tx,
            now_ms(),
            lp.metrics.mqtt_commands_published.clone(),
        );
        lp.mqtt = Some(MqttLink {
            client,
            topics,
            counts: mqtt::Counts::default(),
            _task: task,
        });
    } else {
        drop(mqtt_tx);
    }
    lp.resend_pending();

    let (req_tx, mut req_rx) = mpsc::channel::<Request>(256);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let checker = api::Checker::new(lp.node().bundle());
    let mut options = api::ServeOptions::new(cfg.token, checker);
    options.metrics = lp.metrics.clone();
    // The console's live tables: after whatever may change a device's status, a status
    // from a fresh look is published, at most every `PUBLISH_EVERY` and only while a
    // table watches (more than the API's own receiver).
    let (publish, published) = tokio::sync::watch::channel::<api::Published>(None);
    options.published = Some(published);
    let mut dirty = false;
    let mut next_publish = Instant::now();
    let server = tokio::spawn(api::serve(cfg.listener, options, req_tx, async move {
        let _ = stop_rx.await;
    }));
    let site = &lp.node().bundle().manifest.site;
    info!(event = "serving", site = %site, "serving site `{site}`");

    tokio::pin!(shutdown);
    loop {
        let deadline = lp.engine.next_deadline();
        let sleep = async {
            match deadline {
                Some(t) => {
                    let now = now_ms();
                    tokio::time::sleep(Duration::from_millis(t.saturating_sub(now))).await
                }
                None => std::future::pending().await,
            }
        };
        let check = tokio::time::sleep_until(lp.keeper.next_check.into());
        tokio::select! {
            _ = &mut shutdown => break,
            _ = check => {
                let obs = lp.reconcile().await;
                // The look just taken serves the tables too.
                if publish.receiver_count() > 1 {
                    publish.send_replace(Some(Arc::new(lp.report(&obs))));
                    dirty = false;
                }
            }
            () = tokio::time::sleep_until(next_publish.into()),
                if dirty && publish.receiver_count() > 1 =>
            {
                publish.send_replace(Some(Arc::new(lp.status().await)));
                dirty = false;
                next_publish = Instant::now() + api::PUBLISH_EVERY;
            }
            req = req_rx.recv() => match req {
                Some(Request::Submit { input, by, reply }) => {
                    // Whatever other inputs wait go with it: one journal commit (one
                    // sync to disk) for all, each answered once it is on disk. A request
                    // of another kind met on the way is answered after them, in order.
                    let mut batch = vec![(input, by, reply)];
                    let mut other = None;
                    while batch.len() < API_BATCH {
                        match req_rx.try_recv() {
                            Ok(Request::Submit { input, by, reply }) => {
                                batch.push((input, by, reply))
                            }
                            Ok(r) => {
                                other = Some(r);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    lp.submit_all(batch).await?;
                    dirty = true;
                    if let Some(r) = other {
                        lp.answer_now(r).await?;
                    }
                }
                Some(r) => lp.answer_now(r).await?,
                None => break,
            },
            Some(event) = umbox_rx.recv() => {
                lp.umbox_event(event).await?;
                dirty = true;
            }
            Some(event) = mqtt_rx.recv() => {
                // Whatever else has arrived goes with it: one journal commit for all.
                let mut batch = vec![event];
                while batch.len() < MQTT_BATCH {
                    match mqtt_rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                lp.mqtt_events(batch).await?;
                dirty = true;
            }
            Some(d) = delivered_rx.recv() => lp.journal.update_command(d.id, &d.delivery)?,
            _ = sleep => {
                lp.tick().await?;
                dirty = true;
            }
        }
    }
    // The broker gets every acknowledgement of what was journaled (else it delivers those
    // messages again at the next start), then a clean DISCONNECT.
    if let Some(m) = lp.mqtt.take() {
        m.client.close(Duration::from_secs(2)).await;
        m._task.finish(Duration::from_secs(2)).await;
    }
    // Requests waiting for the loop are answered at once (503: shutting down) rather than
    // at the end of the server's grace period.
    drop(req_rx);
    let _ = stop_tx.send(());
    if let Ok(Err(e)) = server.await {
        return Err(e.into());
    }
    Ok(())
}

/// What `run` records of what happens on the node.
struct RunWitness<'a> {
    journal: &'a Journal,
    metrics: &'a Metrics,
}

impl keeper::Witness for RunWitness<'_> {
    fn failed_closed(&mut self, device: &str, installed: &str, reason: &str) {
        if let Err(e) = self
            .journal
            .record_fail_closed(now_ms(), device, installed, reason)
        {
            error!(event = "journal_error", error = %e, "journal: {e}");
        }
    }

    fn umbox_restarted(&mut self, umbox: &str) {
        self.metrics
            .umbox_restarts
            .get_or_create(&metrics::UmboxLabels {
                umbox: umbox.to_string(),
            })
            .inc();
    }
}

impl Loop {
    fn sha(&self) -> String {
        self.keeper.node().bundle().manifest_sha256.clone()
    }

    fn node(&self) -> &Node {
        self.keeper.node()
    }

    fn state_names(&self, device: usize, state: usize) -> String {
        self.keeper.state_name(device, state)
    }

    /// What `run` records of the node: failing closed in the journal, restarts in the
    /// metrics.
    fn witness<'a>(journal: &'a Journal, metrics: &'a Metrics) -> RunWitness<'a> {
        RunWitness { journal, metrics }
    }

    /// Looks at the node and repairs what differs from the engine's states
    /// ([`Keeper::reconcile`]), and logs the verdicts that changed.
    async fn reconcile(&mut self) -> Observation {
        let states = self.engine.states();
        let mut w = Self::witness(&self.journal, &self.metrics);
        let obs = self.keeper.reconcile(&states, &mut w).await;
        self.note_verdicts(&obs);
        obs
    }

    /// At the start: says loudly which devices the node could not be brought to.
    fn announce(&self, obs: &Observation) {
        let verdicts = self.verdicts(obs);
        let not: Vec<String> = verdicts
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v, Enforcement::NotEnforced { .. }))
            .map(|(d, v)| format!("  `{}`: {v}", self.engine.device_name(d)))
            .collect();
        if !not.is_empty() {
            warn!(
                event = "not_configured",
                not_enforced = not.len(),
                devices = verdicts.len(),
                "WARNING: the node could not be configured: {} of {} devices are NOT ENFORCED; \
                 retrying every {} s\n{}",
                not.len(),
                verdicts.len(),
                self.keeper.interval.as_secs_f64(),
                not.join("\n")
            );
        }
    }

    /// Every device's verdict, from an observation of the node.
    fn verdicts(&self, obs: &Observation) -> Vec<Enforcement> {
        self.keeper.verdicts(obs, &self.engine.states())
    }

    /// Logs the verdicts that changed since the last time; a device not enforced gets
    /// the node looked at again soon.
    fn note_verdicts(&mut self, obs: &Observation) {
        let verdicts = self.verdicts(obs);
        self.metrics
            .set_verdicts(verdicts.iter().map(Enforcement::verdict));
        self.metrics
            .journal_bytes
            .set(journal_bytes(&self.journal_path));
        for (d, v) in verdicts.into_iter().enumerate() {
            if self.verdicts[d].as_ref() != Some(&v) {
                let name = self.engine.device_name(d);
                match (&self.verdicts[d], &v) {
                    (None, Enforcement::Enforced) => {}
                    (_, Enforcement::Enforced) => info!(
                        event = "verdict",
                        device = name,
                        verdict = v.verdict(),
                        "`{name}`: enforced again"
                    ),
                    _ => warn!(
                        event = "verdict",
                        device = name,
                        verdict = v.verdict(),
                        "`{name}`: {v}"
                    ),
                }
                self.verdicts[d] = Some(v);
            }
        }
    }

    /// Commands journaled but never delivered (the shim stopped before): sent again.
    fn resend_pending(&mut self) {
        let Ok(pending) = self.journal.pending_commands() else {
            return;
        };
        for c in pending {
            self.send_command(sink::Command {
                id: c.id,
                t_ms: c.t_ms,
                site: self.node().bundle().manifest.site.clone(),
                device: c.device,
                command: c.command,
                rule: c.rule,
            });
        }
    }

    /// A journaled command goes to the broker if its device publishes it (and a broker is
    /// given), else to the webhook (if one is given), else nowhere (journaled only).
    fn send_command(&mut self, command: sink::Command) {
        if let Some((m, p)) = self.publication(&command.device, &command.command) {
            if let Err(error) = m.client.publish(command.id, &p.topic, &p.payload) {
                warn!(
                    event = "command_not_published",
                    device = %command.device,
                    command = %command.command,
                    error = %error,
                    "mqtt: command `{}` of `{}` not published: {error}",
                    command.command,
                    command.device
                );
                if let Err(e) = self
                    .journal
                    .update_command(command.id, &Delivery::Failed { attempts: 1, error })
                {
                    error!(event = "journal_error", error = %e, "journal: {e}");
                }
            }
            return;
        }
        let Some(hook) = self.webhook.clone() else {
            return;
        };
        let tx = self.delivered.clone();
        tokio::spawn(async move {
            let (attempts, result) = hook.deliver(&command).await;
            let delivery = match result {
                Ok(()) => Delivery::Delivered,
                Err(error) => Delivery::Failed { attempts, error },
            };
            let _ = tx
                .send(Delivered {
                    id: command.id,
                    delivery,
                })
                .await;
        });
    }

    /// The broker and the publication of a device's command, if it has one.
    fn publication(&self, device: &str, command: &str) -> Option<(&MqttLink, telemetry::Publish)> {
        let m = self.mqtt.as_ref()?;
        let d = self
            .node()
            .bundle()
            .manifest
            .devices
            .iter()
            .find(|d| d.name == device)?;
        let p = d
            .telemetry
            .as_ref()?
            .commands
            .iter()
            .find(|p| p.command == command)?;
        Some((m, p.clone()))
    }

    /// What the MQTT client reports: a message (a reading, once decoded, goes the same
    /// way as an API reading: [`Loop::submit`]; acknowledged to the broker only after it
    /// is journaled, or refused or ignored for good), or a command the broker
    /// acknowledged.
    /// Messages from the broker and acknowledgements of commands, in arrival order. The
    /// messages' readings are validated, journaled in one commit (a group commit: one sync
    /// for the batch), then handled and carried out one by one, in order, exactly as
    /// [`Loop::submit`] does for one; each message is acknowledged to the broker only
    /// after that (or after it was ignored or refused, logged and counted).
    async fn mqtt_events(&mut self, events: Vec<MqttEvent>) -> Result<(), RunError> {
        let mut messages = Vec::new();
        for event in events {
            match event {
                MqttEvent::Delivered { id } => {
                    self.journal.update_command(id, &Delivery::Delivered)?;
                }
                MqttEvent::Message(message) => messages.push(message),
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        self.taken = Instant::now();
        let t = now_ms().max(self.engine.now());
        let mut inputs = Vec::with_capacity(messages.len());
        for message in &messages {
            let Some((input, topic)) = self.mqtt_reading(message) else {
                continue;
            };
            // A reading's validity does not depend on what the readings before it did.
            match self.engine.validate(t, &input) {
                Ok(()) => inputs.push((input, topic)),
                Err(errors) => self.mqtt_refused(&topic, &input, &errors),
            }
        }
        if !inputs.is_empty() {
            self.journal
                .append_inputs(t, &self.sha(), inputs.iter().map(|(i, _)| i))?;
            self.begin_batch()?;
            for (input, topic) in &inputs {
                match self.engine.handle(t, input) {
                    Ok(steps) => {
                        if let Some(m) = self.mqtt.as_mut() {
                            m.counts.applied += 1;
                        }
                        self.metrics.event(
                            metrics::source::MQTT,
                            metrics::kind::READING,
                            None::<[&str; 0]>,
                        );
                        self.carry_out(&steps).await?;
                    }
                    // validate() said yes: a refusal now is the engine's bug, logged as
                    // such (the journal's replay reports the input again).
                    Err(errors) => self.mqtt_refused(topic, input, &errors),
                }
            }
            self.end_batch().await?;
        }
        if let Some(m) = &self.mqtt {
            for message in &messages {
                m.client.ack(message);
            }
        }
        Ok(())
    }

    /// The reading a message carries, with its topic; `None` when it carries none: a
    /// retained copy, a topic no device binds, a payload its binding refuses (counted and
    /// logged here).
    fn mqtt_reading(&mut self, message: &rumqttc::Publish) -> Option<(Input, String)> {
        let m = self.mqtt.as_mut()?;
        m.counts.received += 1;
        self.metrics.mqtt_received.inc();
        let topic = message.topic.as_str();
        if message.retain {
            // Delivered because of the subscription: an old value, not a sign of life.
            m.counts.retained_ignored += 1;
            info!(
                event = "mqtt_retained",
                topic, "mqtt: retained message on `{topic}` ignored (an old value)"
            );
            return None;
        }
        match m.topics.read(
            &self.keeper.node().bundle().manifest,
            topic,
            &message.payload,
        ) {
            telemetry::Message::Reading(input) => Some((input, topic.to_string())),
            telemetry::Message::Unbound => {
                m.counts.unbound += 1;
                warn!(
                    event = "mqtt_unbound",
                    topic, "mqtt: message on `{topic}` ignored: no device binds it"
                );
                None
            }
            telemetry::Message::Refused { device, refusals } => {
                m.counts.refuse(refusals.iter().map(|r| r.code()));
                self.metrics.event(
                    metrics::source::MQTT,
                    metrics::kind::READING,
                    Some(refusals.iter().map(|r| r.code())),
                );
                warn!(
                    event = "mqtt_refused",
                    topic,
                    device = %device,
                    code = %codes(refusals.iter().map(|r| r.code())),
                    "mqtt: message on `{topic}` for `{device}` refused: {}",
                    coded(refusals.iter().map(|r| (r.code(), r)))
                );
                None
            }
        }
    }

    fn mqtt_refused(&mut self, topic: &str, input: &Input, errors: &[InputError]) {
        if let Some(m) = self.mqtt.as_mut() {
            m.counts.refuse(errors.iter().map(|e| e.code()));
        }
        self.metrics.event(
            metrics::source::MQTT,
            metrics::kind::READING,
            Some(errors.iter().map(|e| e.code())),
        );
        let name = match input {
            Input::Reading { device, .. } => device.as_str(),
            _ => "",
        };
        warn!(
            event = "mqtt_refused",
            topic,
            device = name,
            code = %codes(errors.iter().map(|e| e.code())),
            "mqtt: reading on `{topic}` for `{name}` refused: {}",
            coded(errors.iter().map(|e| (e.code(), e)))
        );
    }

    /// An input from the API: validated, journaled, handled, carried out.
    /// Inputs of the API, in the order they came: each validated, the valid ones
    /// journaled in one transaction (a group commit: one sync to disk), then each
    /// handled and carried out in order and answered. An answer is sent only once its
    /// input is on disk; a refused input is answered at once and journals nothing.
    async fn submit_all(
        &mut self,
        batch: Vec<(Input, Option<String>, Reply)>,
    ) -> Result<(), RunError> {
        self.taken = Instant::now();
        let t = now_ms().max(self.engine.now());
        let mut valid = Vec::with_capacity(batch.len());
        let mut by = Vec::with_capacity(batch.len());
        for (input, who, reply) in batch {
            // An input's validity does not depend on what the inputs before it did.
            match self.engine.validate(t, &input) {
                Ok(()) => {
                    valid.push((input, reply));
                    by.push(who);
                }
                Err(errors) => {
                    let _ = reply.send(Err(errors));
                }
            }
        }
        if valid.is_empty() {
            return Ok(());
        }
        let seqs = self.journal.append_inputs_by(
            t,
            &self.sha(),
            valid
                .iter()
                .map(|(i, _)| i)
                .zip(by.iter().map(Option::as_deref)),
        )?;
        // What they cause is recorded in one transaction too (committed before a command
        // is sent, and before anyone is answered).
        self.begin_batch()?;
        let mut answers = Vec::with_capacity(valid.len());
        for ((input, reply), seq) in valid.into_iter().zip(seqs) {
            let answer = match self.engine.handle(t, &input) {
                Ok(steps) => Ok(Accepted {
                    seq,
                    t_ms: t,
                    changes: self.carry_out(&steps).await?,
                }),
                // validate() said yes: a refusal now is the engine's bug, reported as such.
                Err(errors) => Err(errors),
            };
            answers.push((reply, answer));
        }
        self.end_batch().await?;
        for (reply, answer) in answers {
            let _ = reply.send(answer);
        }
        Ok(())
    }

    /// One input, as a batch of one ([`Loop::submit_all`]).
    async fn submit(
        &mut self,
        input: Input,
    ) -> Result<Result<Accepted, Vec<InputError>>, RunError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit_all(vec![(input, None, reply)]).await?;
        // Answered before submit_all returns (it holds the only sender).
        Ok(answer.await.unwrap_or_else(|_| Err(Vec::new())))
    }

    /// Opens a batch: what its inputs cause is journaled in one transaction, and its
    /// flow-only posture changes are installed together ([`Loop::end_batch`]).
    fn begin_batch(&mut self) -> Result<(), RunError> {
        self.journal.begin()?;
        self.batching = true;
        Ok(())
    }

    /// Installs the batch's flow-only changes in one bundle (following the µmboxes again
    /// if that had to start or stop any), then commits what the batch journaled.
    async fn end_batch(&mut self) -> Result<(), RunError> {
        self.batching = false;
        if self.flush_deferred().await {
            self.keeper.sync_followers().await;
        }
        self.observe_latency();
        self.journal.commit()?;
        Ok(())
    }

    /// The engine's timers.
    async fn tick(&mut self) -> Result<(), RunError> {
        self.taken = Instant::now();
        let t = now_ms().max(self.engine.now());
        let steps = self.engine.handle(t, &Input::Tick).unwrap_or_default();
        if steps.iter().any(|s| !s.effects.is_empty()) {
            // So that a restart does not fire these timers again (and resend commands).
            self.journal.append_input(t, &self.sha(), &Input::Tick)?;
            self.carry_out(&steps).await?;
        }
        Ok(())
    }

    /// State changes become posture changes, commands go to the webhook; in order.
    async fn carry_out(&mut self, steps: &[Step]) -> Result<Vec<Changed>, RunError> {
        let mut changes = Vec::new();
        // Whether a change started or stopped µmboxes (or failed): their followers are
        // then looked at again.
        let mut touched = false;
        for step in steps {
            for effect in &step.effects {
                match effect {
                    Effect::StateChange {
                        device,
                        from,
                        to,
                        cause,
                    } => {
                        let name = self.engine.device_name(*device).to_string();
                        let (from_n, to_n) = (
                            self.state_names(*device, *from),
                            self.state_names(*device, *to),
                        );
                        let why = cause_text(self.node().bundle(), &self.engine, *device, cause);
                        info!(
                            event = "state_change",
                            device = %name,
                            from = %from_n,
                            to = %to_n,
                            cause = %why,
                            "`{name}`: {from_n} -> {to_n} ({why})"
                        );
                        self.journal
                            .record_change(step.t_ms, &name, &from_n, &to_n, &why)?;
                        let bundle = self.node().bundle();
                        self.metrics
                            .posture_changes
                            .get_or_create(&metrics::ChangeLabels {
                                device_type: bundle.manifest.devices[*device].ty.clone(),
                                from: from_n.clone(),
                                to: to_n.clone(),
                            })
                            .inc();
                        if enforcement::off_switch(bundle, *device).is_none() {
                            self.unflushed.push(self.taken);
                        }
                        if self.node().flow_only(*device, *to) {
                            // Installed with the batch's other flow-only changes, in one
                            // bundle (`flush_deferred`); a later change of the device
                            // in the batch replaces it.
                            self.deferred.insert(*device, *to);
                        } else {
                            // Its own change installs its final flows.
                            self.deferred.remove(device);
                            touched |= self.change_posture(*device, *to).await;
                        }
                        changes.push(Changed {
                            device: name,
                            from: from_n,
                            to: to_n,
                            cause: why,
                        });
                    }
                    Effect::Command {
                        device,
                        command,
                        rule,
                    } => {
                        let name = self.engine.device_name(*device).to_string();
                        let rule_name = self.engine.rule_name(*rule).to_string();
                        let id = self
                            .journal
                            .record_command(step.t_ms, &name, command, &rule_name)?;
                        // On disk before it is sent.
                        self.journal.checkpoint()?;
                        self.send_command(sink::Command {
                            id,
                            t_ms: step.t_ms,
                            site: self.node().bundle().manifest.site.clone(),
                            device: name,
                            command: command.clone(),
                            rule: rule_name,
                        });
                    }
                    Effect::AlertRaised { .. } => {}
                    Effect::Fault { message } => {
                        error!(event = "fault", "fault: {message}")
                    }
                }
            }
        }
        if !self.batching {
            touched |= self.flush_deferred().await;
            self.observe_latency();
        }
        // Only a change that started or stopped µmboxes moves the followers: a reading
        // that changes no state, or a change that only swapped flows, costs no call to
        // the container engine.
        if touched {
            self.keeper.sync_followers().await;
        }
        Ok(changes)
    }

    /// The flows of the changes carried out are installed (or failed closed): each
    /// change's latency, from the loop taking its input, goes to the histogram.
    fn observe_latency(&mut self) {
        let now = Instant::now();
        for taken in self.unflushed.drain(..) {
            self.metrics
                .posture_change_seconds
                .observe(now.duration_since(taken).as_secs_f64());
        }
    }

    /// One device's posture change ([`Keeper::change_posture`]). Whether µmboxes were
    /// started or stopped (or it failed).
    async fn change_posture(&mut self, device: usize, to: usize) -> bool {
        let mut w = Self::witness(&self.journal, &self.metrics);
        self.keeper.change_posture(device, to, &mut w).await
    }

    /// Installs the deferred flow-only changes in one OpenFlow bundle
    /// ([`Keeper::change_many`]). Whether µmboxes were started or stopped.
    async fn flush_deferred(&mut self) -> bool {
        let changes: Vec<(usize, usize)> = std::mem::take(&mut self.deferred).into_iter().collect();
        let mut w = Self::witness(&self.journal, &self.metrics);
        self.keeper.change_many(&changes, &mut w).await
    }

    async fn umbox_event(&mut self, event: UmboxEvent) -> Result<(), RunError> {
        let states = self.engine.states();
        let mut w = Self::witness(&self.journal, &self.metrics);
        let alert = match self.keeper.umbox_event(event, &states, &mut w).await {
            keeper::UmboxOutcome::Alert(alert) => alert,
            keeper::UmboxOutcome::UnknownContainer => {
                self.metrics.event(
                    metrics::source::UMBOX,
                    metrics::kind::ALERT,
                    Some([] as [&str; 0]),
                );
                return Ok(());
            }
            keeper::UmboxOutcome::Handled => return Ok(()),
        };
        // Whether its µmbox may speak for the device now (deployed in the state the alert
        // meets, emitting that alert) is the engine's to decide, as in `simulate`: one
        // definition. The offending address the µmbox names is in its own log; the
        // engine's `source` is the µmbox (its catalog name), which a policy can name.
        self.metrics
            .umbox_alerts
            .get_or_create(&metrics::AlertLabels {
                umbox: alert.umbox.clone().unwrap_or_default(),
                alert: alert.alert.clone(),
            })
            .inc();
        let device = self.engine.device_name(alert.device).to_string();
        let input = Input::Alert {
            device: device.clone(),
            alert: alert.alert,
            source: alert.umbox,
        };
        let answer = self.submit(input).await?;
        self.metrics.event(
            metrics::source::UMBOX,
            metrics::kind::ALERT,
            answer
                .as_ref()
                .err()
                .map(|errors| errors.iter().map(|e| e.code())),
        );
        if let Err(errors) = answer {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            let container = alert.container;
            warn!(
                event = "alert_refused",
                container = %container,
                device = %device,
                code = %codes(errors.iter().map(|e| e.code())),
                "alert from `{container}` refused: {}",
                text.join("; ")
            );
        }
        Ok(())
    }

    /// [`Self::answer`], a status after the timers due by now have fired: a status
    /// taken just after a hold ran out or a clock window closed shows the state the
    /// policy gives now, never the one before it (the loop may not have come to the
    /// timer yet).
    async fn answer_now(&mut self, request: Request) -> Result<(), RunError> {
        if matches!(request, Request::Status { .. })
            && self.engine.next_deadline().is_some_and(|t| t <= now_ms())
        {
            self.tick().await?;
        }
        self.answer(request).await;
        Ok(())
    }

    /// Answers a request that is not an input.
    async fn answer(&mut self, request: Request) {
        match request {
            Request::Status { reply } => {
                let _ = reply.send(self.status().await);
            }
            Request::History {
                device,
                limit,
                reply,
            } => {
                let _ = reply.send(
                    self.journal
                        .history(&device, limit)
                        .map_err(|e| e.to_string()),
                );
            }
            // Handled by the loop itself; never sent here.
            Request::Submit { reply, .. } => {
                let _ = reply.send(Err(Vec::new()));
            }
        }
    }

    /// The site now: every device's state, since when and why, its µmboxes, and whether
    /// its posture is in force, from a fresh look at the node. A device found not
    /// enforced gets the node repaired at once.
    async fn status(&mut self) -> StatusReport {
        let obs = self.keeper.look(&self.engine.states()).await;
        self.report(&obs)
    }

    /// [`Self::status`] from a look already taken.
    fn report(&mut self, obs: &Observation) -> StatusReport {
        let states = self.engine.states();
        let verdicts = self.keeper.verdicts(obs, &states);
        self.metrics
            .set_verdicts(verdicts.iter().map(Enforcement::verdict));
        if verdicts
            .iter()
            .any(|v| matches!(v, Enforcement::NotEnforced { .. }))
        {
            self.keeper.next_check = Instant::now();
        }
        let b = self.keeper.node().bundle();
        let changes = self.journal.last_changes().unwrap_or_default();
        let devices = b
            .manifest
            .devices
            .iter()
            .zip(verdicts)
            .enumerate()
            .map(|(i, (d, enforcement))| {
                let state = states[i];
                let last = changes.get(&d.name);
                let crossing = self.keeper.crossing(i, &enforcement, &states);
                DeviceStatus {
                    name: d.name.clone(),
                    device_type: d.ty.clone(),
                    state: self.state_names(i, state),
                    since_ms: last.map(|c| c.t_ms),
                    since: last.map(|c| api::rfc3339(c.t_ms)),
                    cause: last.map(|c| c.cause.clone()),
                    // Those of the posture it should have: a µmbox kept idle for a
                    // next state protects nothing yet.
                    umboxes: self.keeper.umboxes(obs, i, &states),
                    enforcement,
                    crosses: None,
                    crossing: None,
                }
                .with_crossing(crossing)
            })
            .collect();
        let now = now_ms();
        StatusReport {
            site: b.manifest.site.clone(),
            bundle_sha256: b.manifest_sha256.clone(),
            uptime_s: now.saturating_sub(self.started_ms) / 1000,
            now_ms: now,
            devices,
            mqtt: self.mqtt.as_ref().map(|m| m.client.status(&m.counts)),
        }
    }
}
