//! Following the µmboxes: every running container of the site has a task reading its
//! standard output (JSON lines, `docs/umbox.md`) through the Docker API. Alerts and the
//! end of a container's output (it stopped, was killed, crashed) become [`UmboxEvent`]s
//! for the run loop, which attributes them to the device the container serves.

use crate::docker::Engine;
use futures_util::StreamExt as _;
use std::collections::BTreeMap;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What a µmbox said or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UmboxEvent {
    Alert {
        container: String,
        alert: String,
        /// The offending source address, when the µmbox gives one.
        source: Option<String>,
    },
    /// The container's output ended: it is no longer running.
    Exited { container: String },
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

/// The followers, one per container, by container name.
pub struct Followers {
    docker: Engine,
    tx: mpsc::Sender<UmboxEvent>,
    tasks: BTreeMap<String, JoinHandle<()>>,
}

impl Followers {
    pub fn new(docker: Engine, tx: mpsc::Sender<UmboxEvent>) -> Self {
        Followers {
            docker,
            tx,
            tasks: BTreeMap::new(),
        }
    }

    /// Follows exactly the containers named (running ones): new ones get a task, tasks of
    /// containers no longer named are stopped (so a container the shim stops on purpose
    /// does not report an exit). `from_start`: read a new container's output from its
    /// beginning (one the shim has just started: nothing it said is missed) rather than
    /// from now (one found running after a restart: its old alerts were handled then).
    pub fn sync<'a>(&mut self, running: impl IntoIterator<Item = &'a str>, from_start: bool) {
        let wanted: Vec<&str> = running.into_iter().collect();
        self.tasks.retain(|name, task| {
            let keep = wanted.contains(&name.as_str()) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for name in wanted {
            if self.tasks.contains_key(name) {
                continue;
            }
            let docker = self.docker.clone();
            let tx = self.tx.clone();
            let container = name.to_string();
            let task = tokio::spawn(async move {
                let lines = docker.stdout_lines(&container, from_start);
                futures_util::pin_mut!(lines);
                while let Some(line) = lines.next().await {
                    let Ok(line) = line else { break };
                    if let Some((alert, source)) = parse_alert(&line) {
                        let event = UmboxEvent::Alert {
                            container: container.clone(),
                            alert,
                            source,
                        };
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = tx.send(UmboxEvent::Exited { container }).await;
            });
            self.tasks.insert(name.to_string(), task);
        }
    }
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
