//! Following the µmboxes: every running container of the site has a task reading its
//! standard output (JSON lines, `docs/umbox.md`) through the Docker API. Alerts and the
//! end of a container (it stopped, was killed, crashed) become [`UmboxEvent`]s for the
//! run loop, which attributes them to the device the container serves.
//!
//! A container is followed by its id, not its name: a µmbox started again under the same
//! name is a new container with output of its own, and the old one's alerts are never read
//! again. Each line of a container is taken once: a follower whose stream breaks while
//! the container still runs (the engine restarting its API, say) reads the output again
//! and skips the lines it has already taken.

use crate::containers::Containers as Engine;
use futures_util::StreamExt as _;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What a µmbox said or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UmboxEvent {
    Alert {
        container: String,
        /// The container's id: which instance of `container` said it.
        id: String,
        alert: String,
        /// The offending source address, when the µmbox gives one.
        source: Option<String>,
    },
    /// The container is no longer running (or can no longer be seen).
    Exited { container: String, id: String },
}

/// An alert line: `{"kalki":"alert","alert":"port_scan","source":"10.0.1.10",...}`.
pub fn parse_alert(line: &str) -> Option<(String, Option<String>)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["kalki"] != "alert" {
        return None;
    }
    let alert = v["alert"].as_str()?.to_string();
    let source = v["source"].as_str().map(String::from);
    Some((alert, source))
}

/// A running container to follow: its name and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    pub name: String,
    pub id: String,
}

/// The followers, one per container id.
pub struct Followers {
    docker: Engine,
    tx: mpsc::Sender<UmboxEvent>,
    tasks: BTreeMap<String, JoinHandle<()>>,
    /// No container has been followed yet: those found now were running before the
    /// shim started, and what they said before was handled then.
    first: bool,
}

/// How often a follower whose stream broke tries again while its container runs.
const RESUME: Duration = Duration::from_millis(500);

impl Followers {
    pub fn new(docker: Engine, tx: mpsc::Sender<UmboxEvent>) -> Self {
        Followers {
            docker,
            tx,
            tasks: BTreeMap::new(),
            first: true,
        }
    }

    /// Follows exactly the running ones of `containers` (as the engine lists them): a new
    /// id gets a task, tasks of ids no longer running are stopped (so a container the
    /// shim stops on purpose does not report an exit). A new container is read from its
    /// start (nothing it said is missed), except at the first call, where the containers
    /// found were already running before the shim: those are read from now on.
    pub fn sync<'a>(
        &mut self,
        containers: impl IntoIterator<Item = &'a crate::containers::Running>,
    ) {
        let running: Vec<Followed> = containers
            .into_iter()
            .filter(|c| c.running)
            .map(|c| Followed {
                name: c.name.clone(),
                id: c.id.clone(),
            })
            .collect();
        self.sync_followed(&running);
    }

    fn sync_followed(&mut self, running: &[Followed]) {
        self.tasks.retain(|id, task| {
            let keep = running.iter().any(|f| &f.id == id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        let from_start = !self.first;
        self.first = false;
        for f in running {
            if self.tasks.contains_key(&f.id) {
                continue;
            }
            let task = tokio::spawn(follow(
                self.docker.clone(),
                self.tx.clone(),
                f.clone(),
                from_start,
            ));
            self.tasks.insert(f.id.clone(), task);
        }
    }
}

/// Reads one container's output until it stops, then reports its exit.
async fn follow(docker: Engine, tx: mpsc::Sender<UmboxEvent>, f: Followed, from_start: bool) {
    // Lines taken so far, when reading from the start; a follower of a container that
    // ran before the shim reads from "now", and again from "now" after a break (it may
    // miss what was printed in between, but never takes an old line again).
    let mut taken = 0u64;
    loop {
        if let Ok(lines) = docker.stdout_lines(&f.id, from_start).await {
            futures_util::pin_mut!(lines);
            let mut seen = 0u64;
            while let Some(line) = lines.next().await {
                let Ok(line) = line else { break };
                seen += 1;
                if from_start {
                    if seen <= taken {
                        continue;
                    }
                    taken = seen;
                }
                if let Some((alert, source)) = parse_alert(&line) {
                    let event = UmboxEvent::Alert {
                        container: f.name.clone(),
                        id: f.id.clone(),
                        alert,
                        source,
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        }
        // The stream ended: the container stopped, or the engine's API broke off.
        match docker.is_running(&f.id).await {
            Ok(Some(true)) => tokio::time::sleep(RESUME).await,
            // Gone, stopped, or the engine cannot say: it no longer protects anyone.
            _ => break,
        }
    }
    let _ = tx
        .send(UmboxEvent::Exited {
            container: f.name,
            id: f.id,
        })
        .await;
}

impl Drop for Followers {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_lines() {
        assert_eq!(
            parse_alert(r#"{"kalki":"alert","alert":"port_scan","source":"10.0.1.10","ports":60}"#),
            Some(("port_scan".into(), Some("10.0.1.10".into())))
        );
        assert_eq!(
            parse_alert(r#"{"kalki":"alert","alert":"dos_attempt"}"#),
            Some(("dos_attempt".into(), None))
        );
        assert_eq!(parse_alert(r#"{"kalki":"stats","forwarded":3}"#), None);
        assert_eq!(parse_alert(r#"{"kalki":"alert"}"#), None);
        assert_eq!(parse_alert("port_scan"), None);
    }
}
