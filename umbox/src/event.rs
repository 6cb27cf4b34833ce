//! What a µmbox tells the runtime shim: one JSON object per line on stdout.
//!
//! `{"kalki":"ready"}` once its interfaces are open, `{"kalki":"alert",...}` for each
//! alert and `{"kalki":"stats",...}` for counters. Logs never go to stdout.

use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;
use std::net::Ipv4Addr;

/// The alert vocabulary of the µmbox catalog (`stdlib-policies/umboxes.kalki`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    PortScan,
    XmasScan,
    BruteForce,
    AbnormalTraffic,
    DosAttempt,
    FailedLogin,
    DefaultCredentials,
    MaxLoginAttempts,
    BlockedIp,
    InterceptedCommand,
}

impl AlertKind {
    pub const ALL: [AlertKind; 10] = [
        AlertKind::PortScan,
        AlertKind::XmasScan,
        AlertKind::BruteForce,
        AlertKind::AbnormalTraffic,
        AlertKind::DosAttempt,
        AlertKind::FailedLogin,
        AlertKind::DefaultCredentials,
        AlertKind::MaxLoginAttempts,
        AlertKind::BlockedIp,
        AlertKind::InterceptedCommand,
    ];

    /// The name as the catalog's `emits` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::PortScan => "port_scan",
            AlertKind::XmasScan => "xmas_scan",
            AlertKind::BruteForce => "brute_force",
            AlertKind::AbnormalTraffic => "abnormal_traffic",
            AlertKind::DosAttempt => "dos_attempt",
            AlertKind::FailedLogin => "failed_login",
            AlertKind::DefaultCredentials => "default_credentials",
            AlertKind::MaxLoginAttempts => "max_login_attempts",
            AlertKind::BlockedIp => "blocked_ip",
            AlertKind::InterceptedCommand => "intercepted_command",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert: its name, the address it is about, and details for the operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: AlertKind,
    /// The offending address: the scanner, the blocked address, the device itself for
    /// `abnormal_traffic`.
    pub source: Ipv4Addr,
    pub details: Map<String, Value>,
}

impl Alert {
    pub fn new(kind: AlertKind, source: Ipv4Addr) -> Alert {
        Alert {
            kind,
            source,
            details: Map::new(),
        }
    }
    /// Adds a detail field (`with("ports", 50)`).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Alert {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

#[derive(Serialize)]
struct AlertLine<'a> {
    kalki: &'static str,
    alert: &'static str,
    source: String,
    #[serde(flatten)]
    details: &'a Map<String, Value>,
}

/// The line for `{"kalki":"ready"}`.
pub fn ready_line() -> String {
    r#"{"kalki":"ready"}"#.to_string()
}

/// `{"kalki":"alert","alert":NAME,"source":IP,...details}`.
pub fn alert_line(a: &Alert) -> String {
    let line = AlertLine {
        kalki: "alert",
        alert: a.kind.as_str(),
        source: a.source.to_string(),
        details: &a.details,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

#[derive(Serialize)]
struct StatsLine<'a> {
    kalki: &'static str,
    #[serde(flatten)]
    fields: &'a Map<String, Value>,
}

/// `{"kalki":"stats",...fields}`.
pub fn stats_line(fields: &Map<String, Value>) -> String {
    serde_json::to_string(&StatsLine {
        kalki: "stats",
        fields,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn lines_are_single_json_objects() {
        assert_eq!(ready_line(), r#"{"kalki":"ready"}"#);
        let a = Alert::new(AlertKind::PortScan, Ipv4Addr::new(10, 0, 0, 9))
            .with("ports", 50)
            .with("window_ms", 60000);
        assert_eq!(
            alert_line(&a),
            r#"{"kalki":"alert","alert":"port_scan","source":"10.0.0.9","ports":50,"window_ms":60000}"#
        );
        let mut m = Map::new();
        m.insert("forwarded".into(), 3.into());
        assert_eq!(stats_line(&m), r#"{"kalki":"stats","forwarded":3}"#);
    }

    #[test]
    fn names_are_distinct() {
        let mut names: Vec<_> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), AlertKind::ALL.len());
    }
}
