//! The etcd clusters of the controller's and agents' tests (issue 18), checked on real
//! processes: three members on loopback with mutual TLS, reached with the real `etcdctl`.
//! Only the test PKI's clients get in; a killed leader is replaced and writes go on with
//! two of three; the killed member rejoins and has what was written without it.
//!
//! Needs `etcd` and `etcdctl` (scripts/etcd/start.sh): skipped without them, a failure
//! under CI=true.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use kalki_test_support::etcd::EtcdCluster;
use kalki_test_support::pki::{CertFiles, Pki};
use kalki_test_support::{require, TempDir};

/// How long a new leader may take after the old one is killed: its election timeout
/// (500 ms), a randomised wait of up to as much again, a vote, and slack for a busy machine.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);

fn start(dir: &TempDir) -> EtcdCluster {
    let pki = Pki::new(&dir.path().join("pki"), "kalki-test-ca").unwrap();
    let started = Instant::now();
    let cluster =
        EtcdCluster::start(&dir.path().join("cluster"), 3, pki).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("3 members healthy {:?} after start", started.elapsed());
    cluster
}

fn put(cluster: &mut EtcdCluster, who: &CertFiles, key: &str, value: &str) {
    let live = cluster.live_endpoints();
    let out = cluster
        .etcdctl(&live, Some(who), &["put", key, value])
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails()));
    assert_eq!(out.trim(), "OK");
}

/// The value of `key` as `endpoints` see it (`--consistency=s`: a member's own copy,
/// without asking the leader), `None` if there is none.
fn get(
    cluster: &EtcdCluster,
    endpoints: &[String],
    who: &CertFiles,
    key: &str,
    local: bool,
) -> Option<String> {
    let mut args = vec!["get", key, "--print-value-only"];
    if local {
        args.push("--consistency=s");
    }
    let out = cluster
        .etcdctl(endpoints, Some(who), &args)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails()));
    let value = out.trim_end_matches('\n');
    (!value.is_empty()).then(|| value.to_string())
}

#[test]
fn the_pki_writes_private_keys_and_refuses_odd_names() {
    let dir = TempDir::new("pki").unwrap();
    let pki = Pki::new(dir.path(), "kalki-test-ca").unwrap();
    let client = pki.client("agent-east").unwrap();
    let server = pki.server("member-0-server").unwrap();
    let expired = pki.expired_client("old").unwrap();
    for files in [&client, &server, &expired] {
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", files.key.display());
        let cert = std::fs::read_to_string(&files.cert).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        let key = std::fs::read_to_string(&files.key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    }
    let ca_key = std::fs::metadata(dir.path().join("ca.key")).unwrap();
    assert_eq!(ca_key.permissions().mode() & 0o777, 0o600);
    assert_eq!(client.cert, dir.path().join("agent-east.crt"));
    assert!(pki.client("../escape").is_err());
    assert!(pki.client("").is_err());
}

#[test]
fn only_clients_of_the_ca_get_in() {
    if !require(&[kalki_test_support::etcd()]) {
        return;
    }
    let dir = TempDir::new("etcd-tls").unwrap();
    let cluster = start(&dir);
    let controller = cluster.client_cert("controller").unwrap();
    let agent = cluster.client_cert("agent-east").unwrap();
    let all = cluster.endpoints();
    assert_eq!(all.len(), 3);
    assert!(
        all.iter().all(|e| e.starts_with("https://127.0.0.1:")),
        "{all:?}"
    );

    // Written through every member in turn, read back through another.
    for i in 0..3 {
        let key = format!("/kalki/site/node-{i}");
        let value = format!("east {i}");
        let at = [cluster.endpoint(i)];
        let out = cluster
            .etcdctl(&at, Some(&controller), &["put", &key, &value])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.trim(), "OK");
        let other = [cluster.endpoint((i + 1) % 3)];
        assert_eq!(
            get(&cluster, &other, &agent, &key, false).as_deref(),
            Some(value.as_str())
        );
    }

    // No certificate, a stranger's CA, and this CA's but expired: all refused at the
    // handshake, and nothing they tried is written.
    let stranger = Pki::new(&dir.path().join("stranger"), "kalki-test-ca")
        .unwrap()
        .client("controller")
        .unwrap();
    let expired = cluster.pki().expired_client("agent-west").unwrap();
    // How many connections the members' logs say they rejected with `why`.
    let rejections = |cluster: &EtcdCluster, why: &str| -> usize {
        (0..3)
            .map(|i| {
                let log = std::fs::read_to_string(cluster.log_file(i)).unwrap();
                log.lines()
                    .filter(|l| l.contains("rejected connection") && l.contains(why))
                    .count()
            })
            .sum()
    };
    for (who, identity, why) in [
        ("no certificate", None, "didn't provide a certificate"),
        (
            "another CA's certificate",
            Some(&stranger),
            "signed by unknown authority",
        ),
        (
            "an expired certificate",
            Some(&expired),
            "certificate has expired",
        ),
    ] {
        let before = rejections(&cluster, why);
        let started = Instant::now();
        // A later --command-timeout wins over the helper's: a refused client would wait
        // for it in vain.
        let result = cluster.etcdctl(
            &all,
            identity,
            &["--command-timeout=1s", "put", "/kalki/intruder", who],
        );
        assert!(
            result.is_err(),
            "a client with {who} was let in: {result:?}"
        );
        // The member says why: the handshake failed on the client's certificate.
        assert!(
            rejections(&cluster, why) > before,
            "no member logged a connection rejected with `{why}` for {who}: {result:?}\n{}",
            cluster.log_tails()
        );
        eprintln!("{who}: refused in {:?} ({why})", started.elapsed());
    }
    assert_eq!(get(&cluster, &all, &agent, "/kalki/intruder", false), None);
}

#[test]
fn a_killed_leader_is_replaced_and_rejoins_with_what_it_missed() {
    if !require(&[kalki_test_support::etcd()]) {
        return;
    }
    let dir = TempDir::new("etcd-failover").unwrap();
    let mut cluster = start(&dir);
    let controller = cluster.client_cert("controller").unwrap();
    put(&mut cluster, &controller, "/kalki/before", "1");

    let old = cluster
        .wait_leader(None, FAILOVER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let killed = Instant::now();
    cluster.kill(old);
    assert!(!cluster.running(old));
    let new = cluster
        .wait_leader(Some(old), FAILOVER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "member {old} killed; member {new} leads {:?} later",
        killed.elapsed()
    );
    assert_ne!(new, old);

    // Two of three are a quorum: writes go on.
    put(&mut cluster, &controller, "/kalki/during", "2");
    let live = cluster.live_endpoints();
    assert_eq!(live.len(), 2);
    assert_eq!(
        get(&cluster, &live, &controller, "/kalki/during", false).as_deref(),
        Some("2")
    );

    // Back with its data dir: it catches up with what was written without it.
    let restarted = Instant::now();
    cluster.restart(old).unwrap_or_else(|e| panic!("{e}"));
    cluster
        .wait_healthy(FAILOVER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "member {old} rejoined {:?} after its restart",
        restarted.elapsed()
    );
    let at = [cluster.endpoint(old)];
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&cluster, &at, &controller, "/kalki/during", true).is_none() {
        assert!(
            Instant::now() < deadline,
            "member {old} has no /kalki/during of its own 5 s after rejoining\n{}",
            cluster.log_tails()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        get(&cluster, &at, &controller, "/kalki/before", true).as_deref(),
        Some("1")
    );
    put(&mut cluster, &controller, "/kalki/after", "3");
    assert_eq!(
        get(&cluster, &at, &controller, "/kalki/after", false).as_deref(),
        Some("3")
    );
}
