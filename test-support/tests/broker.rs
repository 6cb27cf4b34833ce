//! The private MQTT brokers of `kalki_test_support::mosquitto`, held to what the shim's
//! tests rely on, with the real mosquitto 2.0 and its real clients: only the broker's user
//! gets in, TLS works with the generated CA and only with it, and a QoS 1 message queued
//! for a persistent session outlives a broker restart. Skipped without mosquitto (installed
//! by `scripts/mosquitto/start.sh`); under `CI=true` that is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kalki_test_support::mosquitto::{Broker, BrokerOptions, ClientOptions, ClientTls};
use kalki_test_support::require;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

fn ready() -> bool {
    require(&[kalki_test_support::mosquitto()])
}

fn start(tls: bool) -> Broker {
    Broker::start(BrokerOptions {
        tls,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Every process command line now, for what must never be on one.
fn command_lines() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .collect()
}

#[test]
fn password_protected_publish_and_subscribe() {
    if !ready() {
        return;
    }
    let broker = start(false);
    assert_eq!(broker.url(), format!("mqtt://127.0.0.1:{}", broker.port()));
    assert_eq!(
        std::fs::read_to_string(broker.password_file()).unwrap(),
        broker.password(),
        "the password file holds the password alone"
    );
    assert!(broker.ca_file().is_none());

    let mut sub = broker
        .subscribe("kalki/+/reading", 1)
        .unwrap_or_else(|e| panic!("{e}"));
    // While a client and the broker run, the password is on no command line.
    let lines = command_lines();
    assert!(
        lines.iter().any(|l| l.contains("mosquitto_sub")),
        "the subscriber runs: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains(broker.password())),
        "the password is on a command line"
    );

    broker
        .publish("kalki/cam/reading", "{\"temp\": 21.5}", 1, false)
        .unwrap_or_else(|e| panic!("{e}"));
    broker
        .publish("kalki/door/reading", "open", 0, false)
        .unwrap_or_else(|e| panic!("{e}"));
    broker
        .publish("other/topic", "not for us", 0, false)
        .unwrap_or_else(|e| panic!("{e}"));
    sub.wait_for("kalki/cam/reading", "{\"temp\": 21.5}", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    sub.wait_for("kalki/door/reading", "open", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    // A message that never comes is reported as missing, with what did come.
    let missing = sub
        .wait_for(
            "kalki/cam/reading",
            "never sent",
            Duration::from_millis(300),
        )
        .unwrap_err();
    assert!(missing.contains("kalki/door/reading open"), "{missing}");
    assert_eq!(
        sub.messages(),
        [
            "kalki/cam/reading {\"temp\": 21.5}",
            "kalki/door/reading open"
        ]
    );

    let log = broker.log();
    assert!(log.contains("u'kalki'"), "the broker logs the user: {log}");
}

#[test]
fn a_wrong_password_or_none_is_refused() {
    if !ready() {
        return;
    }
    let broker = start(false);
    let wrong = ClientOptions {
        password: Some(format!("{}x", broker.password())),
        ..ClientOptions::default()
    };
    let mut sub = broker.subscribe("t/#", 0).unwrap_or_else(|e| panic!("{e}"));

    let refused = broker
        .publish_with(&wrong, "t/a", "intruder", 0, false)
        .unwrap_err();
    assert!(refused.contains("not authorised"), "{refused}");
    let refused = broker.subscribe_with(&wrong, "t/#", 0).unwrap_err();
    assert!(refused.contains("not authorised"), "{refused}");
    // An empty password under the right name.
    let empty = ClientOptions {
        password: Some(String::new()),
        ..ClientOptions::default()
    };
    let refused = broker
        .publish_with(&empty, "t/a", "intruder", 0, false)
        .unwrap_err();
    assert!(refused.contains("not authorised"), "{refused}");
    // No user at all (and no options file to give one).
    let anonymous = kalki_test_support::sh(&format!(
        "XDG_CONFIG_HOME=/nonexistent mosquitto_pub -h 127.0.0.1 -p {} -t t/a -m anonymous",
        broker.port()
    ));
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        !anonymous.status.success() && stderr.contains("not authorised"),
        "{anonymous:?}"
    );

    // The right password still gets through, and nothing the intruder sent did.
    broker
        .publish("t/a", "owner", 0, false)
        .unwrap_or_else(|e| panic!("{e}"));
    sub.wait_for("t/a", "owner", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sub.messages(), ["t/a owner"]);
    let log = broker.log();
    assert!(log.contains("not authorised"), "{log}");
}

#[test]
fn tls_with_the_generated_ca_and_only_with_it() {
    if !ready() {
        return;
    }
    let broker = start(true);
    assert_eq!(broker.url(), format!("mqtts://localhost:{}", broker.port()));
    let ca = std::fs::read_to_string(broker.ca_file().expect("a TLS broker has a CA")).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    let mut sub = broker
        .subscribe("secure/#", 1)
        .unwrap_or_else(|e| panic!("{e}"));
    broker
        .publish("secure/a", "over tls", 1, false)
        .unwrap_or_else(|e| panic!("{e}"));
    sub.wait_for("secure/a", "over tls", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));

    // Plain MQTT to the TLS listener: the broker drops it.
    let plain = ClientOptions {
        tls: ClientTls::Off,
        ..ClientOptions::default()
    };
    let refused = broker
        .publish_with(&plain, "secure/a", "plain", 0, false)
        .unwrap_err();
    assert!(refused.contains("connection was lost"), "{refused}");
    // TLS without the test CA (only the system's CAs): the certificate is not trusted.
    let untrusted = ClientOptions {
        tls: ClientTls::OsCerts,
        ..ClientOptions::default()
    };
    let refused = broker
        .publish_with(&untrusted, "secure/a", "untrusted", 0, false)
        .unwrap_err();
    assert!(refused.contains("TLS error"), "{refused}");
    let refused = broker
        .subscribe_with(&untrusted, "secure/#", 0)
        .unwrap_err();
    assert!(refused.contains("TLS error"), "{refused}");

    assert_eq!(sub.messages(), ["secure/a over tls"]);
    let log = broker.log();
    assert!(
        log.contains("unknown ca"),
        "the broker saw the client reject its CA: {log}"
    );
}

#[test]
fn a_queued_qos1_message_outlives_a_broker_restart() {
    if !ready() {
        return;
    }
    let mut broker = start(false);
    let session = ClientOptions {
        id: Some("kalki-shim-test".into()),
        persistent: true,
        ..ClientOptions::default()
    };
    // The subscriber makes its persistent session, then goes away.
    let sub = broker
        .subscribe_with(&session, "site/alerts", 1)
        .unwrap_or_else(|e| panic!("{e}"));
    sub.stop();
    broker
        .publish("site/alerts", "cam compromised", 1, false)
        .unwrap_or_else(|e| panic!("{e}"));
    broker
        .publish("site/state", "retained state", 1, true)
        .unwrap_or_else(|e| panic!("{e}"));

    let port = broker.port();
    broker.restart().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(broker.port(), port, "a restart keeps the port");
    assert!(broker.running());
    let log = broker.log();
    assert!(log.contains("Saving in-memory database"), "{log}");
    assert!(
        log.matches("mosquitto version 2.").count() >= 4,
        "started twice: {log}"
    );

    // Back with the same session: the message queued before the restart arrives.
    let mut sub = broker
        .subscribe_with(&session, "site/alerts", 1)
        .unwrap_or_else(|e| panic!("{e}"));
    sub.wait_for("site/alerts", "cam compromised", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    // So does a retained message, to a new clean subscriber.
    let mut fresh = broker
        .subscribe("site/state", 0)
        .unwrap_or_else(|e| panic!("{e}"));
    fresh
        .wait_for("site/state", "retained state", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));

    // A stopped broker refuses everyone until it is started again.
    broker.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(!broker.running());
    assert!(broker
        .publish("site/alerts", "nobody home", 1, false)
        .is_err());
}
