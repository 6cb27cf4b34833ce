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

use crate::api::{self, Accepted, Changed, DeviceStatus, Request, StatusReport};
use crate::engine::{Config, Effect, Engine, Input, InputError, Step};
use crate::follow::{Followers, UmboxEvent};
use crate::journal::{Delivery, Journal, JournalError};
use crate::node::{Closed, Node, NodeError, Posture, LABEL_SITE};
use crate::simulate::cause_text;
use crate::sink::{self, Webhook};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

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
    /// Local time of day at Unix time 0 (the node's offset from UTC), for clock rules.
    pub day_offset_ms: u64,
}

/// Unix time in milliseconds.
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
    node: Node,
    engine: Engine,
    journal: Journal,
    webhook: Option<Webhook>,
    followers: Followers,
    delivered: mpsc::Sender<Delivered>,
    started_ms: u64,
    /// Devices whose posture could not be applied: why.
    closed: BTreeMap<usize, String>,
    /// The node could not be brought to the engine's states (Open vSwitch or Docker
    /// unreachable, a call that failed): retried until it works.
    out_of_step: bool,
}

/// How long to wait before trying again to bring an out-of-step node to the states.
const RETRY: Duration = Duration::from_secs(2);

/// Runs until `shutdown` resolves.
pub async fn run(
    node: Node,
    cfg: RunConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let journal = Journal::open(&cfg.journal)?;
    let start = now_ms();
    let (engine, report) = journal.replay(
        node.bundle(),
        Config {
            day_offset_ms: cfg.day_offset_ms,
        },
        start,
    )?;
    eprintln!(
        "kalki-shim: journal {}: {} inputs replayed{}",
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

    let (umbox_tx, mut umbox_rx) = mpsc::channel::<UmboxEvent>(1024);
    let (delivered_tx, mut delivered_rx) = mpsc::channel::<Delivered>(1024);
    let docker = node.docker().clone();
    let mut lp = Loop {
        node,
        engine,
        journal,
        webhook: cfg.webhook,
        followers: Followers::new(docker, umbox_tx),
        delivered: delivered_tx,
        started_ms: start,
        closed: BTreeMap::new(),
        out_of_step: false,
    };

    // Bring the node to the journaled states (as `apply` would), then follow its µmboxes
    // from now on: what they said before was handled then.
    lp.catch_up().await;
    lp.sync_followers(false).await;
    lp.resend_pending();

    let (req_tx, mut req_rx) = mpsc::channel::<Request>(256);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let checker = api::Checker::new(lp.node.bundle());
    let options = api::ServeOptions::new(cfg.token, checker);
    let server = tokio::spawn(api::serve(cfg.listener, options, req_tx, async move {
        let _ = stop_rx.await;
    }));
    eprintln!(
        "kalki-shim: serving site `{}`",
        lp.node.bundle().manifest.site
    );

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
        let retry = async {
            if lp.out_of_step {
                tokio::time::sleep(RETRY).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = retry => {
                lp.catch_up().await;
                lp.sync_followers(true).await;
            }
            req = req_rx.recv() => match req {
                Some(Request::Submit { input, reply }) => {
                    let answer = lp.submit(input).await?;
                    let _ = reply.send(answer);
                }
                Some(Request::Status { reply }) => {
                    let _ = reply.send(lp.status().await);
                }
                None => break,
            },
            Some(event) = umbox_rx.recv() => lp.umbox_event(event).await?,
            Some(d) = delivered_rx.recv() => lp.journal.update_command(d.id, &d.delivery)?,
            _ = sleep => lp.tick().await?,
        }
    }
    let _ = stop_tx.send(());
    if let Ok(Err(e)) = server.await {
        return Err(e.into());
    }
    Ok(())
}

impl Loop {
    fn sha(&self) -> String {
        self.node.bundle().manifest_sha256.clone()
    }

    fn state_names(&self, device: usize, state: usize) -> String {
        self.node.bundle().manifest.devices[device]
            .states
            .get(state)
            .map_or_else(|| state.to_string(), |s| s.name.clone())
    }

    /// Brings the node to the engine's states; if the switch or the engine fails us, says
    /// so and tries again later (the loop keeps serving meanwhile). Whatever the switch
    /// holds stays in force: it is fail-closed (`fail_mode=secure`), so it never falls
    /// back to forwarding on its own.
    async fn catch_up(&mut self) {
        match self.reconcile().await {
            Ok(()) => {
                if self.out_of_step {
                    eprintln!("kalki-shim: the node is in step with the policy again");
                }
                self.out_of_step = false;
            }
            Err(e) => {
                eprintln!(
                    "kalki-shim: cannot bring the node to the policy's states: {e}; retrying in {} s",
                    RETRY.as_secs()
                );
                self.out_of_step = true;
            }
        }
    }

    /// The node as the engine's states want it.
    async fn reconcile(&mut self) -> Result<(), RunError> {
        let plan = self.node.plan(&self.engine.states()).await?;
        for step in self.node.describe(&plan) {
            eprintln!("kalki-shim: {step}");
        }
        let report = self.node.execute(&plan).await?;
        for (device, closed, reason) in report.failed_closed {
            self.record_closed(device, &closed, &reason)?;
        }
        Ok(())
    }

    fn record_closed(
        &mut self,
        device: usize,
        closed: &Closed,
        reason: &str,
    ) -> Result<(), RunError> {
        let installed = match closed {
            Closed::State(s) => self.state_names(device, *s),
            Closed::NoFlows => "no flows".into(),
        };
        let name = self.engine.device_name(device).to_string();
        eprintln!("kalki-shim: `{name}` failed closed ({installed}): {reason}");
        self.journal
            .record_fail_closed(now_ms(), &name, &installed, reason)?;
        self.closed.insert(device, reason.to_string());
        Ok(())
    }

    /// Follows the site's running containers; `fresh`: new ones from their start.
    async fn sync_followers(&mut self, fresh: bool) {
        let site = self.node.bundle().manifest.site.clone();
        if let Ok(list) = self.node.docker().list(LABEL_SITE, &site).await {
            let running: Vec<&str> = list
                .iter()
                .filter(|c| c.running)
                .map(|c| c.name.as_str())
                .collect();
            self.followers.sync(running, fresh);
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
                site: self.node.bundle().manifest.site.clone(),
                device: c.device,
                command: c.command,
                rule: c.rule,
            });
        }
    }

    fn send_command(&self, command: sink::Command) {
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

    /// An input from the API: validated, journaled, handled, carried out.
    async fn submit(
        &mut self,
        input: Input,
    ) -> Result<Result<Accepted, Vec<InputError>>, RunError> {
        let t = now_ms().max(self.engine.now());
        if let Err(errors) = self.engine.validate(t, &input) {
            return Ok(Err(errors));
        }
        let seq = self.journal.append_input(t, &self.sha(), &input)?;
        let steps = match self.engine.handle(t, &input) {
            Ok(steps) => steps,
            // validate() said yes: a refusal now is the engine's bug, reported as such.
            Err(errors) => return Ok(Err(errors)),
        };
        let changes = self.carry_out(&steps).await?;
        Ok(Ok(Accepted {
            seq,
            t_ms: t,
            changes,
        }))
    }

    /// The engine's timers.
    async fn tick(&mut self) -> Result<(), RunError> {
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
                        let why = cause_text(self.node.bundle(), &self.engine, *device, cause);
                        self.journal
                            .record_change(step.t_ms, &name, &from_n, &to_n, &why)?;
                        match self.node.change_posture(*device, *to).await {
                            Ok(Posture::Changed { .. }) => {
                                self.closed.remove(device);
                            }
                            Ok(Posture::FailedClosed { installed, reason }) => {
                                self.record_closed(*device, &installed, &reason)?;
                            }
                            Err(e) => {
                                // The switch or the engine failed us: close the device
                                // if we still can, say so, and retry the whole node.
                                let reason = e.to_string();
                                match self.node.fail_closed(*device).await {
                                    Ok(closed) => self.record_closed(*device, &closed, &reason)?,
                                    Err(e2) => eprintln!(
                                        "kalki-shim: `{name}`: {reason}; failing closed also failed: {e2}"
                                    ),
                                }
                                self.out_of_step = true;
                            }
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
                        self.send_command(sink::Command {
                            id,
                            t_ms: step.t_ms,
                            site: self.node.bundle().manifest.site.clone(),
                            device: name,
                            command: command.clone(),
                            rule: rule_name,
                        });
                    }
                    Effect::AlertRaised { .. } => {}
                    Effect::Fault { message } => eprintln!("kalki-shim: fault: {message}"),
                }
            }
        }
        // Only a posture change starts or stops µmboxes: a reading that changes no state
        // must not cost a Docker call.
        if !changes.is_empty() {
            self.sync_followers(true).await;
        }
        Ok(changes)
    }

    /// The device a container serves, if it is one of this bundle's, with its manifest.
    fn container(&self, name: &str) -> Option<(usize, &crate::manifest::Container)> {
        let b = self.node.bundle();
        let c = b.containers.values().find(|c| c.name == name)?;
        let device = c.labels.get("kalki.device")?;
        let d = b.manifest.devices.iter().position(|d| &d.name == device)?;
        Some((d, c))
    }

    async fn umbox_event(&mut self, event: UmboxEvent) -> Result<(), RunError> {
        match event {
            // The offending address the µmbox names is in its own log; the engine's
            // `source` is the µmbox (its catalog name), which is what a policy can name.
            UmboxEvent::Alert {
                container, alert, ..
            } => {
                let Some((device, c)) = self.container(&container) else {
                    eprintln!(
                        "kalki-shim: alert `{alert}` from unknown container `{container}` rejected"
                    );
                    return Ok(());
                };
                let state = self.engine.state(device).unwrap_or(0);
                let state_name = self.state_names(device, state);
                // Only a µmbox deployed for the device in its current state speaks for it.
                if !c.states.contains(&state_name) || !c.emits.contains(&alert) {
                    eprintln!(
                        "kalki-shim: alert `{alert}` from `{container}` rejected: it is not deployed for `{}` in `{state_name}` or does not emit that alert",
                        self.engine.device_name(device)
                    );
                    return Ok(());
                }
                let umbox = c.labels.get("kalki.umbox").cloned();
                let input = Input::Alert {
                    device: self.engine.device_name(device).to_string(),
                    alert,
                    source: umbox,
                };
                if let Err(errors) = self.submit(input).await? {
                    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    eprintln!(
                        "kalki-shim: alert from `{container}` refused: {}",
                        text.join("; ")
                    );
                }
            }
            UmboxEvent::Exited { container } => {
                let Some((device, c)) = self.container(&container) else {
                    return Ok(());
                };
                let state = self.engine.state(device).unwrap_or(0);
                if c.states.contains(&self.state_names(device, state)) {
                    // A µmbox of the current chain is gone: never forward without it.
                    let reason = format!("µmbox `{container}` stopped");
                    match self.node.fail_closed(device).await {
                        Ok(closed) => self.record_closed(device, &closed, &reason)?,
                        Err(e) => {
                            eprintln!("kalki-shim: {reason}; failing closed failed: {e}");
                            self.out_of_step = true;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn status(&self) -> StatusReport {
        let b = self.node.bundle();
        let changes = self.journal.last_changes().unwrap_or_default();
        let running: Vec<crate::docker::Running> = self
            .node
            .docker()
            .list(LABEL_SITE, &b.manifest.site)
            .await
            .unwrap_or_default();
        let devices = b
            .manifest
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let state = self.engine.state(i).unwrap_or(0);
                let last = changes.get(&d.name);
                DeviceStatus {
                    name: d.name.clone(),
                    device_type: d.ty.clone(),
                    state: self.state_names(i, state),
                    since_ms: last.map(|c| c.t_ms),
                    since: last.map(|c| api::rfc3339(c.t_ms)),
                    cause: last.map(|c| c.cause.clone()),
                    umboxes: running
                        .iter()
                        .filter(|c| c.running && c.labels.get("kalki.device") == Some(&d.name))
                        .map(|c| c.name.clone())
                        .collect(),
                    fail_closed: self.closed.get(&i).cloned(),
                }
            })
            .collect();
        let now = now_ms();
        StatusReport {
            site: b.manifest.site.clone(),
            bundle_sha256: b.manifest_sha256.clone(),
            uptime_s: now.saturating_sub(self.started_ms) / 1000,
            now_ms: now,
            devices,
        }
    }
}
