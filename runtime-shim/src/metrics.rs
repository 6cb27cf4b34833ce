//! The shim's metrics, served as `GET /metrics` in the Prometheus text format (version
//! 0.0.4) by the API, with the API's token (`docs/runtime.md`, "Metrics").
//!
//! One [`Metrics`] per `run`, shared by the main loop and the API. Every counter is
//! counted where the thing it counts happens, once: API inputs where the API answers them
//! (its `count` middleware), µmbox alerts and MQTT messages where the loop takes them,
//! posture changes where the loop journals them. Nothing is reconstructed at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Where an input came from.
pub mod source {
    pub const API: &str = "api";
    pub const MQTT: &str = "mqtt";
    pub const UMBOX: &str = "umbox";
}

/// An input's kind, as the engine names them.
pub mod kind {
    pub const READING: &str = "reading";
    pub const ALERT: &str = "alert";
    pub const OPERATOR: &str = "operator";
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub source: &'static str,
    pub kind: &'static str,
    /// `accepted` (journaled and handled) or `refused`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub source: &'static str,
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    pub device_type: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub umbox: String,
    pub alert: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UmboxLabels {
    pub umbox: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: &'static str,
}

/// Every verdict, as `status --json` spells it: each has a `kalki_devices` series, zero
/// included, so that an alert on `not_enforced > 0` has a series to look at.
pub const VERDICTS: [&str; 4] = ["enforced", "failed_closed", "not_enforced", "off_switch"];

/// The registry and its metrics. Cloning a metric shares it (they are atomics behind an
/// `Arc`), so the MQTT client task gets its own handle on the commands published.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    pub posture_changes: Family<ChangeLabels, Counter>,
    pub posture_change_seconds: Histogram,
    pub umbox_alerts: Family<AlertLabels, Counter>,
    pub umbox_restarts: Family<UmboxLabels, Counter>,
    devices: Family<VerdictLabels, Gauge>,
    pub journal_bytes: Gauge,
    pub mqtt_received: Counter,
    pub mqtt_commands_published: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("kalki");
        let m = Metrics {
            registry: Registry::default(),
            events: Family::default(),
            refused: Family::default(),
            posture_changes: Family::default(),
            // 1 ms to about 33 s: a flow-only change takes a few ms, one that starts a
            // µmbox up to its `--ready-timeout`.
            posture_change_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            umbox_alerts: Family::default(),
            umbox_restarts: Family::default(),
            devices: Family::default(),
            journal_bytes: Gauge::default(),
            mqtt_received: Counter::default(),
            mqtt_commands_published: Counter::default(),
        };
        r.register(
            "events",
            "Inputs (readings, alerts, operator actions) by source, kind and outcome",
            m.events.clone(),
        );
        r.register(
            "refused_inputs",
            "Refused inputs by source and code, each code of an input once",
            m.refused.clone(),
        );
        r.register(
            "posture_changes",
            "State changes carried out as posture changes, by device type and states",
            m.posture_changes.clone(),
        );
        r.register(
            "posture_change_seconds",
            "From the loop taking an input to the flows of the changes it caused installed",
            m.posture_change_seconds.clone(),
        );
        r.register(
            "umbox_alerts",
            "Alert lines from µmbox containers, by µmbox and alert",
            m.umbox_alerts.clone(),
        );
        r.register(
            "umbox_restarts",
            "µmboxes of a chain in force found stopped, each started again, by µmbox",
            m.umbox_restarts.clone(),
        );
        r.register(
            "devices",
            "Devices by enforcement verdict at the last look at the node",
            m.devices.clone(),
        );
        r.register(
            "journal_bytes",
            "Size of the journal's files (database and write-ahead log)",
            m.journal_bytes.clone(),
        );
        r.register(
            "mqtt_messages_received",
            "MQTT messages received (retained and refused ones included)",
            m.mqtt_received.clone(),
        );
        r.register(
            "mqtt_commands_published",
            "Commands published to the broker (QoS 1), resends included",
            m.mqtt_commands_published.clone(),
        );
        for verdict in VERDICTS {
            m.devices.get_or_create(&VerdictLabels { verdict }).set(0);
        }
        Metrics {
            registry: root,
            ..m
        }
    }

    /// An input answered: accepted or refused, and, if refused, each of its codes once.
    pub fn event<'a>(
        &self,
        source: &'static str,
        kind: &'static str,
        refused: Option<impl IntoIterator<Item = &'a str>>,
    ) {
        let outcome = if refused.is_some() {
            "refused"
        } else {
            "accepted"
        };
        self.events
            .get_or_create(&EventLabels {
                source,
                kind,
                outcome,
            })
            .inc();
        if let Some(codes) = refused {
            self.refused_codes(source, codes);
        }
    }

    /// A refused input or request's codes, each once.
    pub fn refused_codes<'a>(
        &self,
        source: &'static str,
        codes: impl IntoIterator<Item = &'a str>,
    ) {
        let mut codes: Vec<&str> = codes.into_iter().collect();
        codes.sort_unstable();
        codes.dedup();
        for code in codes {
            self.refused
                .get_or_create(&RefusedLabels {
                    source,
                    code: code.to_string(),
                })
                .inc();
        }
    }

    /// The devices by verdict, from the latest verdicts (one per device).
    pub fn set_verdicts<'a>(&self, verdicts: impl IntoIterator<Item = &'a str>) {
        let mut counts = [0i64; VERDICTS.len()];
        for v in verdicts {
            if let Some(i) = VERDICTS.iter().position(|x| *x == v) {
                counts[i] += 1;
            }
        }
        for (verdict, n) in VERDICTS.into_iter().zip(counts) {
            self.devices
                .get_or_create(&VerdictLabels { verdict })
                .set(n);
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn encodes_prometheus_text() {
        let m = Metrics::new();
        m.event(source::API, kind::READING, None::<[&str; 0]>);
        m.event(source::API, kind::READING, None::<[&str; 0]>);
        m.event(source::MQTT, kind::READING, Some(["S121", "S104", "S121"]));
        m.posture_changes
            .get_or_create(&ChangeLabels {
                device_type: "Camera".into(),
                from: "normal".into(),
                to: "suspicious".into(),
            })
            .inc();
        m.posture_change_seconds.observe(0.003);
        m.set_verdicts(["enforced", "enforced", "not_enforced"]);
        m.journal_bytes.set(4096);
        let text = m.encode().unwrap();

        assert!(
            text.contains("# TYPE kalki_events_total counter\n"),
            "{text}"
        );
        assert_eq!(
            line(&text, "kalki_events_total{source=\"api\""),
            Some("kalki_events_total{source=\"api\",kind=\"reading\",outcome=\"accepted\"} 2"),
            "{text}"
        );
        assert_eq!(
            line(&text, "kalki_events_total{source=\"mqtt\""),
            Some("kalki_events_total{source=\"mqtt\",kind=\"reading\",outcome=\"refused\"} 1")
        );
        // Each code of a refused input once.
        assert!(text.contains("kalki_refused_inputs_total{source=\"mqtt\",code=\"S121\"} 1\n"));
        assert!(text.contains("kalki_refused_inputs_total{source=\"mqtt\",code=\"S104\"} 1\n"));
        assert!(text.contains(
            "kalki_posture_changes_total{device_type=\"Camera\",from=\"normal\",to=\"suspicious\"} 1\n"
        ));
        assert!(text.contains("# TYPE kalki_posture_change_seconds histogram\n"));
        assert!(
            text.contains("kalki_posture_change_seconds_bucket{le=\"0.004\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("kalki_posture_change_seconds_bucket{le=\"0.002\"} 0\n"));
        assert!(text.contains("kalki_posture_change_seconds_count 1\n"));
        assert!(text.contains("kalki_devices{verdict=\"enforced\"} 2\n"));
        assert!(text.contains("kalki_devices{verdict=\"not_enforced\"} 1\n"));
        // Every verdict has a series, zero included.
        assert!(text.contains("kalki_devices{verdict=\"failed_closed\"} 0\n"));
        assert!(text.contains("kalki_journal_bytes 4096\n"));
        assert!(text.contains("kalki_mqtt_messages_received_total 0\n"));
        // The Prometheus format, not OpenMetrics: no `# EOF`.
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn verdicts_are_replaced_not_added() {
        let m = Metrics::new();
        m.set_verdicts(["not_enforced", "not_enforced"]);
        m.set_verdicts(["enforced", "not_enforced"]);
        let text = m.encode().unwrap();
        assert!(
            text.contains("kalki_devices{verdict=\"not_enforced\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("kalki_devices{verdict=\"enforced\"} 1\n"));
    }
}
