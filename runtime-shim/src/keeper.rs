//! Keeping a node at its postures: what `kalki-shim run` and a node agent
//! (`kalki-shim agent`) both do to the node they own, written once.
//!
//! The owner says which state each device should be in (`run`: its engine's states; an
//! agent: the postures the controller decided); the [`Keeper`] looks at the node and
//! repairs it, changes postures make-before-break, fails a device closed when its posture
//! cannot be had (and tries again with a backoff), follows the µmboxes (an exit closes
//! the device at once; an alert is handed back to the owner), and gives each device's
//! verdict from a look at the node, never from memory. What the owner must record of it
//! (a journal line, a metric) goes through [`Witness`].

use crate::enforcement::{self, Crossing, Enforcement};
use crate::follow::{Followers, UmboxEvent};
use crate::node::{Closed, Node, Observation, Posture, Target, LABEL_SITE};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// The most µmboxes of next states one look at the node starts (`--warm`): the owner's
/// loop waits for what a look executes, so the rest are started at the following looks.
const WARM_PER_LOOK: usize = 8;

/// What the keeper's owner records of what happened on the node.
pub trait Witness {
    /// `device` failed closed to `installed` (a state's name or `no flows`).
    fn failed_closed(&mut self, device: &str, installed: &str, reason: &str);
    /// A µmbox of a chain in force stopped and is being restarted.
    fn umbox_restarted(&mut self, umbox: &str);
}

/// A witness that records nothing beyond the keeper's own log lines.
pub struct LogOnly;

impl Witness for LogOnly {
    fn failed_closed(&mut self, _: &str, _: &str, _: &str) {}
    fn umbox_restarted(&mut self, _: &str) {}
}

/// A device that failed closed: what it got instead, why, and when its own posture is
/// tried again.
struct Closure {
    installed: Closed,
    reason: String,
    attempts: u32,
    retry_at: Instant,
}

/// How long a device that failed closed waits before its posture is tried again: 1 s,
/// doubling with each failure, at most a minute.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// An alert a µmbox of the node raised, attributed to the device it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UmboxAlert {
    pub device: usize,
    pub container: String,
    /// The container's id (which instance said it).
    pub id: String,
    pub alert: String,
    /// The µmbox's catalog name (`kalki.umbox`), which is what a policy can name.
    pub umbox: Option<String>,
}

/// What came of a µmbox's event ([`Keeper::umbox_event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UmboxOutcome {
    /// An alert, for the owner's engine.
    Alert(UmboxAlert),
    /// An alert from a container the node does not know: refused.
    UnknownContainer,
    /// Nothing more to do (an exit, handled here, or old news).
    Handled,
}

/// One node kept at its postures.
pub struct Keeper {
    node: Node,
    followers: Followers,
    /// Devices whose posture could not be applied, and what they hold instead.
    closed: BTreeMap<usize, Closure>,
    /// µmbox containers a look at the node has found in place (running and plugged in)
    /// while this keeper ran, or a posture change has started: only such a one, found
    /// out of place later, has stopped. (At the first look, or for one that stopped
    /// while nothing kept the node, a µmbox not running is one to start, not a fault.)
    seen_running: BTreeSet<String>,
    /// Whether the node has been looked at once.
    looked: bool,
    /// When the node is next looked at and repaired.
    pub next_check: Instant,
    pub interval: Duration,
}

impl Keeper {
    /// A keeper of `node`, looking every `interval`; what the µmboxes say and do comes
    /// on the receiver, for [`Keeper::umbox_event`].
    pub fn new(node: Node, interval: Duration) -> (Keeper, mpsc::Receiver<UmboxEvent>) {
        let (tx, rx) = mpsc::channel(1024);
        let followers = Followers::new(node.docker().clone(), tx);
        (
            Keeper {
                node,
                followers,
                closed: BTreeMap::new(),
                seen_running: BTreeSet::new(),
                looked: false,
                next_check: Instant::now(),
                interval,
            },
            rx,
        )
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    fn device_name(&self, device: usize) -> &str {
        &self.node.bundle().manifest.devices[device].name
    }

    pub fn state_name(&self, device: usize, state: usize) -> String {
        self.node.bundle().manifest.devices[device]
            .states
            .get(state)
            .map_or_else(|| state.to_string(), |s| s.name.clone())
    }

    fn closed_name(&self, device: usize, closed: Closed) -> String {
        match closed {
            Closed::State(s) => self.state_name(device, s),
            Closed::NoFlows => "no flows".into(),
        }
    }

    /// Whether `device` is failed closed now.
    pub fn is_closed(&self, device: usize) -> bool {
        self.closed.contains_key(&device)
    }

    /// What a device's posture should be: its state's, or what it failed closed to.
    pub fn intended(&self, device: usize, states: &[usize]) -> Target {
        match self.closed.get(&device) {
            Some(c) => Target::from(c.installed),
            None => Target::State(states.get(device).copied().unwrap_or(0)),
        }
    }

    /// What each device should have on the node now: its state's posture, or, while it
    /// is failed closed and not yet due to try again, what it holds instead.
    fn targets(&self, now: Instant, states: &[usize]) -> Vec<Target> {
        states
            .iter()
            .enumerate()
            .map(|(d, &s)| match self.closed.get(&d) {
                Some(c) if c.retry_at > now => Target::from(c.installed),
                _ => Target::State(s),
            })
            .collect()
    }

    /// Looks at the node and repairs what differs from `states` (a device failed closed
    /// gets its posture again when its retry is due). Returns the node as it is
    /// afterwards. Never fails: what cannot be done now is tried again at the next look,
    /// and the verdicts say what is not in force meanwhile.
    pub async fn reconcile(&mut self, states: &[usize], w: &mut impl Witness) -> Observation {
        let now = Instant::now();
        self.next_check = now + self.interval;
        let mut obs = self.node.observe().await;
        // A µmbox that stopped between two looks, before its follower said so, is
        // handled as its follower would have: the device closes first.
        let stopped = self.stopped_umboxes(&obs, states);
        if !stopped.is_empty() {
            for (device, container, reason) in stopped {
                if !self.closed.contains_key(&device) {
                    self.umbox_stopped(device, &container, reason, w).await;
                }
            }
            obs = self.node.observe().await;
        }
        self.note_running(&obs, states);
        let targets = self.targets(now, states);
        match self.node.plan_from(&obs, &targets).map(|mut p| {
            p.limit_warm(WARM_PER_LOOK);
            p
        }) {
            // Nothing to repair. A device failed closed whose retry is due and whose own
            // posture the look finds in force has it again: failing closed may have
            // installed its own state (its most restrictive) with the µmbox restarted.
            Ok(plan) if plan.is_empty() => {
                for (d, t) in targets.iter().enumerate() {
                    if self.closed.contains_key(&d)
                        && *t == Target::State(states[d])
                        && self.node.check(&obs, d, *t).is_ok()
                    {
                        self.closed.remove(&d);
                    }
                }
            }
            Ok(plan) => {
                for step in self.node.describe(&plan) {
                    info!(event = "repair", step = %step, "{step}");
                }
                match self.node.execute(&plan).await {
                    Ok(report) => {
                        for (d, path, why) in &report.warm_failed {
                            let device = self.device_name(*d);
                            warn!(
                                event = "warm_failed",
                                device,
                                umbox = %path,
                                reason = %why,
                                "`{device}`: µmbox {path} of a next state not started: {why}"
                            );
                        }
                        let failed: Vec<usize> = report.failed_closed.iter().map(|f| f.0).collect();
                        for (device, closed, reason) in report.failed_closed {
                            self.note_closed(device, closed, &reason, w);
                        }
                        // A device whose own posture was the target and did not fail
                        // has it now.
                        for (d, t) in targets.iter().enumerate() {
                            if *t == Target::State(states[d]) && !failed.contains(&d) {
                                self.closed.remove(&d);
                            }
                        }
                    }
                    Err(e) => warn!(
                        event = "repair_failed",
                        error = %e,
                        "repairing the node failed: {e}"
                    ),
                }
                obs = self.node.observe().await;
                // What the plan started is running from here on: one found stopped at
                // the next look has stopped, though no look before the plan saw it.
                self.note_running(&obs, states);
            }
            // The verdicts say why.
            Err(_) => {}
        }
        self.looked = true;
        self.follow(&obs);
        obs
    }

    /// A fresh look at the node, for a status.
    pub async fn look(&mut self, states: &[usize]) -> Observation {
        let obs = self.node.observe().await;
        self.note_running(&obs, states);
        obs
    }

    /// Every device's verdict, from a look at the node.
    pub fn verdicts(&self, obs: &Observation, states: &[usize]) -> Vec<Enforcement> {
        (0..states.len())
            .map(|d| {
                // Off the switch: nothing of it on the node to look at, nor to claim.
                if let Some(off) = enforcement::off_switch(self.node.bundle(), d) {
                    return off;
                }
                enforcement::verdict(
                    self.node.check(obs, d, self.intended(d, states)),
                    self.closed
                        .get(&d)
                        .map(|c| (self.closed_name(d, c.installed), c.reason.as_str())),
                )
            })
            .collect()
    }

    /// What the posture the verdict vouches for lets through: the one checked (the
    /// state's, or what failing closed installed). Nothing is claimed for a device not
    /// enforced.
    pub fn crossing(
        &self,
        device: usize,
        verdict: &Enforcement,
        states: &[usize],
    ) -> Option<Crossing> {
        let installed = match (verdict, self.intended(device, states)) {
            (Enforcement::NotEnforced { .. } | Enforcement::OffSwitch, _) => return None,
            (_, Target::State(s)) => Some(s),
            (_, Target::NoFlows) => None,
        };
        Some(enforcement::crossing(self.node.bundle(), device, installed))
    }

    /// The running µmboxes of the posture a device should have (a µmbox kept idle for a
    /// next state protects nothing yet).
    pub fn umboxes(&self, obs: &Observation, device: usize, states: &[usize]) -> Vec<String> {
        let Ok(containers) = &obs.containers else {
            return Vec::new();
        };
        self.node
            .wanted_for(device, self.intended(device, states))
            .into_iter()
            .filter(|(_, c)| containers.get(&c.name).is_some_and(|r| r.running))
            .map(|(_, c)| c.name.clone())
            .collect()
    }

    /// A device failed closed: recorded, and its posture tried again after a backoff.
    fn note_closed(&mut self, device: usize, closed: Closed, reason: &str, w: &mut impl Witness) {
        let attempts = self.closed.get(&device).map_or(0, |c| c.attempts) + 1;
        let installed = self.closed_name(device, closed);
        let name = self.device_name(device).to_string();
        warn!(
            event = "failed_closed",
            device = %name,
            installed = %installed,
            reason,
            "`{name}` failed closed ({installed}): {reason}"
        );
        w.failed_closed(&name, &installed, reason);
        let retry_at = Instant::now() + backoff(attempts);
        self.next_check = self.next_check.min(retry_at);
        self.closed.insert(
            device,
            Closure {
                installed: closed,
                reason: reason.to_string(),
                attempts,
                retry_at,
            },
        );
    }

    /// One device's posture change, make-before-break, failing closed when it cannot be
    /// made. Whether µmboxes were started or stopped (or it failed): the followers are
    /// then to be synced ([`Keeper::sync_followers`]).
    pub async fn change_posture(&mut self, device: usize, to: usize, w: &mut impl Witness) -> bool {
        match self.node.change_posture(device, to).await {
            Ok(Posture::Changed { touched, .. }) => {
                self.closed.remove(&device);
                // The change waited for its chain's µmboxes to be ready: from here on, one
                // found not running has stopped (even before a look has seen it).
                let chain: Vec<String> = self
                    .node
                    .wanted_for(device, Target::State(to))
                    .into_iter()
                    .map(|(_, m)| m.name.clone())
                    .collect();
                self.seen_running.extend(chain);
                touched
            }
            Ok(Posture::FailedClosed { installed, reason }) => {
                self.note_closed(device, installed, &reason, w);
                true
            }
            // Nothing of it is on the node to change.
            Ok(Posture::OffSwitch) => false,
            Err(e) => {
                // The switch or the engine failed us: close the device if we still can;
                // either way the next look says what is not in force, and repairs it.
                let reason = e.to_string();
                match self.node.fail_closed(device).await {
                    Ok(closed) => self.note_closed(device, closed, &reason, w),
                    Err(e2) => {
                        let (name, to) = (self.device_name(device), self.state_name(device, to));
                        error!(
                            event = "fail_closed_failed",
                            device = name,
                            to = %to,
                            reason = %reason,
                            error = %e2,
                            "`{name}` -> `{to}`: {reason}; failing closed also failed: {e2}"
                        )
                    }
                }
                self.next_check = Instant::now();
                true
            }
        }
    }

    /// Installs flow-only posture changes (device → state) in one OpenFlow bundle; if
    /// the switch refuses it, each is made alone (and fails closed alone). Whether
    /// µmboxes were started or stopped.
    pub async fn change_many(&mut self, changes: &[(usize, usize)], w: &mut impl Witness) -> bool {
        if changes.is_empty() {
            return false;
        }
        match self.node.install_many(changes).await {
            Ok(()) => {
                for (d, _) in changes {
                    self.closed.remove(d);
                }
                false
            }
            Err(e) => {
                warn!(
                    event = "bundle_refused",
                    changes = changes.len(),
                    error = %e,
                    "{} posture changes in one bundle: {e}; each made alone",
                    changes.len()
                );
                let mut touched = false;
                for &(d, to) in changes {
                    touched |= self.change_posture(d, to, w).await;
                }
                touched
            }
        }
    }

    /// Follows the running containers of an observation.
    fn follow(&mut self, obs: &Observation) {
        if let Ok(containers) = &obs.containers {
            self.followers.sync(containers.values());
        }
    }

    /// Follows the node's running µmboxes (after a posture change started or stopped
    /// some).
    pub async fn sync_followers(&mut self) {
        let scope = self.node.bundle().manifest.container_scope();
        if let Ok(list) = self.node.docker().list(LABEL_SITE, &scope).await {
            self.followers.sync(&list);
        }
    }

    /// What a µmbox said or did: an exit of a µmbox in force closes its device now; an
    /// alert of a µmbox of the node is returned, attributed to its device, for the owner
    /// to hand to the engine; an alert from a container the node does not know is
    /// refused here (logged).
    pub async fn umbox_event(
        &mut self,
        event: UmboxEvent,
        states: &[usize],
        w: &mut impl Witness,
    ) -> UmboxOutcome {
        match event {
            UmboxEvent::Alert {
                container,
                id,
                alert,
                ..
            } => {
                let Some((device, c)) = self.node.container(&container) else {
                    warn!(
                        event = "alert_refused",
                        container = %container,
                        alert = %alert,
                        "alert `{alert}` from unknown container `{container}` rejected"
                    );
                    return UmboxOutcome::UnknownContainer;
                };
                UmboxOutcome::Alert(UmboxAlert {
                    device,
                    umbox: c.labels.get("kalki.umbox").cloned(),
                    container,
                    id,
                    alert,
                })
            }
            UmboxEvent::Exited { container, id } => {
                let Some((device, c)) = self.node.container(&container) else {
                    return UmboxOutcome::Handled;
                };
                let c_name = c.name.clone();
                // Only the instance now in place counts: an exit of one already replaced
                // (by a repair or a posture change) is old news.
                let current = self
                    .node
                    .docker()
                    .list(LABEL_SITE, &self.node.bundle().manifest.container_scope())
                    .await
                    .ok()
                    .and_then(|l| l.into_iter().find(|r| r.name == c_name));
                if current.as_ref().is_some_and(|r| r.running && r.id != id) {
                    return UmboxOutcome::Handled;
                }
                let in_use = self
                    .node
                    .wanted_for(device, self.intended(device, states))
                    .iter()
                    .any(|(_, m)| m.name == c_name);
                if in_use {
                    let reason = format!("µmbox `{container}` stopped");
                    self.umbox_stopped(device, &container, reason, w).await;
                }
                UmboxOutcome::Handled
            }
        }
    }

    /// A µmbox of a device's chain is gone (its follower saw it end, or a look at the
    /// node found it not running or unplugged): never forward without it. The device is
    /// closed now, recorded, and its posture tried again at once. One handling whoever
    /// noticed.
    async fn umbox_stopped(
        &mut self,
        device: usize,
        container: &str,
        reason: String,
        w: &mut impl Witness,
    ) {
        let umbox = self
            .node
            .container(container)
            .and_then(|(_, c)| c.labels.get("kalki.umbox").cloned())
            .unwrap_or_default();
        // Not at the first look at the node: a µmbox not running then was not seen to
        // stop (a fresh node, or one stopped while nothing kept it).
        if self.looked {
            w.umbox_restarted(&umbox);
        }
        self.node.forget_container(container);
        let name = self.device_name(device).to_string();
        warn!(
            event = "umbox_stopped",
            device = %name,
            container,
            "`{name}`: {reason}"
        );
        match self.node.fail_closed(device).await {
            Ok(closed) => {
                self.note_closed(device, closed, &reason, w);
                if let Some(cl) = self.closed.get_mut(&device) {
                    cl.retry_at = Instant::now();
                }
            }
            Err(e) => error!(
                event = "fail_closed_failed",
                device = %name,
                reason = %reason,
                error = %e,
                "{reason}; failing closed failed: {e}"
            ),
        }
        self.next_check = Instant::now();
    }

    /// Remembers the µmboxes of the devices' chains found in place (see
    /// [`Self::stopped_umboxes`]).
    fn note_running(&mut self, obs: &Observation, states: &[usize]) {
        let in_place: Vec<String> = (0..states.len())
            .flat_map(|d| self.node.wanted_for(d, self.intended(d, states)))
            .filter(|(_, m)| Node::umbox_in_place(obs, m))
            .map(|(_, m)| m.name.clone())
            .collect();
        self.seen_running.extend(in_place);
    }

    /// The µmboxes of devices in their own posture (not failed closed) that a look at
    /// the node finds out of place, though they were in place before (an earlier look
    /// found them, or a posture change started them): each has stopped, or was
    /// unplugged, and why. A µmbox killed loses its interfaces before its engine says
    /// it stopped: either is seen. With the switch unreadable, only the engine's word
    /// counts; with the engine unreadable, nothing is said.
    fn stopped_umboxes(&self, obs: &Observation, states: &[usize]) -> Vec<(usize, String, String)> {
        let Ok(containers) = &obs.containers else {
            return Vec::new();
        };
        (0..states.len())
            .filter(|d| !self.closed.contains_key(d))
            .flat_map(|d| {
                self.node
                    .wanted_for(d, self.intended(d, states))
                    .into_iter()
                    .filter(|(_, m)| self.seen_running.contains(&m.name))
                    .filter_map(move |(_, m)| {
                        let running = containers.get(&m.name).is_some_and(|r| r.running);
                        let reason = if !running {
                            format!("µmbox `{}` stopped", m.name)
                        } else if obs.switch.is_ok() && !Node::umbox_in_place(obs, m) {
                            format!(
                                "µmbox `{}` stopped or was unplugged (an interface of it is \
                                 off the bridge or down)",
                                m.name
                            )
                        } else {
                            return None;
                        };
                        Some((d, m.name.clone(), reason))
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn the_backoff_doubles_from_a_second_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(0), Duration::from_secs(1));
    }
}
