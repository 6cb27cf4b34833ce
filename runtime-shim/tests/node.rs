//! The shim on a real Open vSwitch (userspace datapath) and a real Docker engine: `apply`
//! builds the node from nothing, a second `apply` changes nothing, `--dry-run` changes
//! nothing, a killed µmbox is restarted by the next `apply`, posture changes are
//! make-before-break (shared µmboxes keep running, flows swap atomically, what only the
//! old state used is stopped), and a µmbox that cannot start makes the device fail
//! closed.
//!
//! The policy is `tests/fixtures/node/site.kalki`; its µmboxes are a shell script in a
//! busybox image built here (`kalki-test/busybox:1`), since the claims are about the
//! shim. `make test` starts OVS and Docker first; under `CI=true` a missing one fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::live::*;
use common::TempDir;
use kalki_shim::bundle;
use kalki_shim::containers::Containers;
use kalki_shim::docker;
use kalki_shim::node::{Closed, Node, NodeConfig, Posture};

#[test]
fn apply_and_posture_changes_on_open_vswitch_and_docker() {
    let Some(_cleanup) = prepare() else {
        return;
    };
    let tmp = TempDir::new("node");
    let dir = tmp.path().join("bundle");
    let built = common::compile_dir("runtime-shim/tests/fixtures/node");
    built.write_to(&dir).unwrap();
    let b = dir.to_str().unwrap();

    // A device's interface is missing: apply says which, and changes nothing.
    ok("ip link del dev ktn-d1");
    let missing = shim(&["apply", b]);
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("`ktn-d1`") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!ok("ovs-vsctl --timeout=10 list-br")
        .lines()
        .any(|l| l == BRIDGE));
    ok("ip link add ktn-d1 type veth peer name ktn-d1p && ip link set dev ktn-d1 up");

    // A dry run plans everything and changes nothing.
    let dry = shim(&["apply", b, "--dry-run"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        stdout(&dry).contains("create the bridge"),
        "{}",
        stdout(&dry)
    );
    assert!(!ok("ovs-vsctl --timeout=10 list-br")
        .lines()
        .any(|l| l == BRIDGE));
    assert!(running().is_empty());

    // Apply builds the node.
    let applied = shim(&["apply", b]);
    assert!(
        applied.status.success(),
        "{}{}",
        stdout(&applied),
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(
        ok(&format!(
            "ovs-vsctl --timeout=10 get bridge {BRIDGE} fail_mode"
        ))
        .trim(),
        "secure"
    );
    for (port, n) in [("ktn-up", 1), ("ktn-d0", 2), ("ktn-d1", 3)] {
        assert_eq!(
            ok(&format!(
                "ovs-vsctl --timeout=10 get interface {port} ofport"
            ))
            .trim(),
            n.to_string()
        );
    }
    assert_eq!(
        running(),
        ["kalki-shimnode-d0-0-probe", "kalki-shimnode-d1-0-probe"]
    );
    assert_switch_holds(
        &dir,
        &[
            "flows/base.ofctl",
            "flows/d0/normal.ofctl",
            "flows/d1/normal.ofctl",
        ],
    );

    // Applying again changes nothing.
    let again = shim(&["apply", b]);
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("nothing to change"),
        "{}",
        stdout(&again)
    );

    // A killed µmbox is restarted, and only it.
    let d1_before = container_id("kalki-shimnode-d1-0-probe");
    ok("docker kill kalki-shimnode-d0-0-probe");
    let repaired = shim(&["apply", b]);
    assert!(repaired.status.success(), "{}", stdout(&repaired));
    assert!(
        stdout(&repaired).contains("start µmbox kalki-shimnode-d0-0-probe"),
        "{}",
        stdout(&repaired)
    );
    assert_eq!(
        running(),
        ["kalki-shimnode-d0-0-probe", "kalki-shimnode-d1-0-probe"]
    );
    assert_eq!(container_id("kalki-shimnode-d1-0-probe"), d1_before);
    assert!(stdout(&shim(&["apply", b])).contains("nothing to change"));

    // Posture changes, through the library as the run loop drives them.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let loaded = bundle::load_dir(&dir).unwrap();
        let engine = docker::Engine::connect("/var/run/docker.sock", LIMIT)
            .await
            .unwrap();
        let node = Node::new(loaded, Containers::Docker(engine), NodeConfig::default()).unwrap();
        let d1_flows = device_flows(0x0200_0000_0002_0000);
        let shared = container_id("kalki-shimnode-d0-0-probe");

        // normal [probe 1] -> suspicious [probe 1, probe_tap, probe 2]: the shared
        // probe keeps running (same container), two start, the flows swap.
        assert!(matches!(
            node.change_posture(0, 1).await.unwrap(),
            Posture::Changed { .. }
        ));
        assert_eq!(
            running(),
            [
                "kalki-shimnode-d0-0-probe",
                "kalki-shimnode-d0-1-probe_tap",
                "kalki-shimnode-d0-2-probe",
                "kalki-shimnode-d1-0-probe"
            ]
        );
        assert_eq!(container_id("kalki-shimnode-d0-0-probe"), shared);
        assert_switch_holds(
            &dir,
            &[
                "flows/base.ofctl",
                "flows/d0/suspicious.ofctl",
                "flows/d1/normal.ofctl",
            ],
        );
        assert_eq!(
            device_flows(0x0200_0000_0002_0000),
            d1_flows,
            "d1 untouched"
        );

        // suspicious -> broken: its µmbox's image does not exist, so d0 fails closed to
        // its most restrictive state (attack: drop).
        match node.change_posture(0, 2).await.unwrap() {
            Posture::FailedClosed { installed, reason } => {
                assert_eq!(installed, Closed::State(3));
                assert!(reason.contains("no-such-image"), "{reason}");
            }
            other => panic!("expected to fail closed, got {other:?}"),
        }
        assert_switch_holds(
            &dir,
            &[
                "flows/base.ofctl",
                "flows/d0/attack.ofctl",
                "flows/d1/normal.ofctl",
            ],
        );
        // Nothing of the failed start is left, and the µmboxes attack does not use stop.
        assert_eq!(running(), ["kalki-shimnode-d1-0-probe"]);

        // attack -> normal: normal's µmbox starts again.
        assert!(matches!(
            node.change_posture(0, 0).await.unwrap(),
            Posture::Changed { .. }
        ));
        assert_eq!(
            running(),
            ["kalki-shimnode-d0-0-probe", "kalki-shimnode-d1-0-probe"]
        );
        assert_switch_holds(
            &dir,
            &[
                "flows/base.ofctl",
                "flows/d0/normal.ofctl",
                "flows/d1/normal.ofctl",
            ],
        );
        assert_eq!(
            device_flows(0x0200_0000_0002_0000),
            d1_flows,
            "d1 untouched"
        );
    });
    // And the node is as `apply` wants it: nothing to change.
    assert!(stdout(&shim(&["apply", b])).contains("nothing to change"));

    // A new version of the bundle replaces only what changed.
    let source = std::fs::read_to_string(
        common::repo_root().join("runtime-shim/tests/fixtures/node/site.kalki"),
    )
    .unwrap();
    // v2: only the tap µmbox (not running: both devices are in `normal`) changes, and
    // with it the policy's digest on every container manifest: nothing to do.
    let v2 = source.replace(
        "/sys/class/net/tap ] && [ $n -lt 300 ]",
        "/sys/class/net/tap ] && [ $n -lt 301 ]",
    );
    assert_ne!(v2, source, "the edit applies");
    let v2_dir = tmp.path().join("v2");
    common::compile(&v2).write_to(&v2_dir).unwrap();
    let out = shim(&["apply", v2_dir.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("nothing to change"),
        "{}",
        stdout(&out)
    );
    // v3: the probe's command changes: both devices' probes restart, no flow is touched.
    let v3 = source.replace(
        "[ -e /sys/class/net/$i ] || ok=0;",
        "[ -e /sys/class/net/$i ] || ok=0; true;",
    );
    assert_ne!(v3, source, "the edit applies");
    let v3_dir = tmp.path().join("v3");
    common::compile(&v3).write_to(&v3_dir).unwrap();
    let (d0_before, d1_before) = (
        device_flows(0x0200_0000_0001_0000),
        device_flows(0x0200_0000_0002_0000),
    );
    let out = shim(&["apply", v3_dir.to_str().unwrap()]);
    let plan = stdout(&out);
    assert!(out.status.success(), "{plan}");
    assert_eq!(plan.matches("start µmbox").count(), 2, "{plan}");
    assert!(
        !plan.contains("install") && !plan.contains("base flows"),
        "{plan}"
    );
    assert_eq!(device_flows(0x0200_0000_0001_0000), d0_before);
    assert_eq!(device_flows(0x0200_0000_0002_0000), d1_before);
    assert!(stdout(&shim(&["apply", v3_dir.to_str().unwrap()])).contains("nothing to change"));
}

#[test]
fn a_tampered_bundle_is_refused_before_touching_the_node() {
    let tmp = TempDir::new("node-tampered");
    let dir = tmp.path().join("bundle");
    common::compile_dir("runtime-shim/tests/fixtures/node")
        .write_to(&dir)
        .unwrap();
    let rules = dir.join("flows/d0/normal.ofctl");
    let mut text = std::fs::read_to_string(&rules).unwrap();
    text.push_str("table=1,priority=2000,cookie=0x200000000010000 actions=NORMAL\n");
    std::fs::write(&rules, text).unwrap();
    let out = shim(&["apply", dir.to_str().unwrap(), "--color", "never"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("flows/d0/normal.ofctl"), "{err}");
    assert!(err.contains("refused"), "{err}");
}
