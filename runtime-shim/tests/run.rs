//! `kalki-shim run` on a real Open vSwitch and Docker engine, driven through its API by
//! the real client subcommands: bad input refused with nothing changed, a posture change
//! by an API alert, by a µmbox's own alert, by a timer (`when ... for 2s`), a rule's
//! command delivered to a webhook, failing closed on a missing image and on a killed
//! µmbox, an operator reset, a SIGKILL in the middle of a posture change and a restart
//! that resumes from the journal with the node matching it; on `--time-zone
//! Europe/Berlin`.
//!
//! The policy is `tests/fixtures/node/site.kalki` (stand-in µmboxes: see `common/live.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::live::*;
use common::TempDir;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const D0_COOKIE: u64 = 0x0200_0000_0001_0000;

#[test]
fn run_serves_events_fails_closed_and_resumes_from_the_journal() {
    let Some(_cleanup) = prepare() else {
        return;
    };
    let tmp = TempDir::new("run");
    let bundle = tmp.path().join("bundle");
    common::compile_dir("runtime-shim/tests/fixtures/node")
        .write_to(&bundle)
        .unwrap();
    let (hook, commands) = webhook();
    let journal = tmp.path().join("journal.db");
    let env = Api::new(tmp.path());
    let start = || {
        env.start(
            &bundle,
            &journal,
            // On a time zone's clock (no clock rule here: the same run, through the
            // zone's mapping, the journal replayed on it at the restart).
            &[
                "--command-webhook",
                &hook,
                "--ready-timeout",
                "20",
                "--time-zone",
                "Europe/Berlin",
            ],
        )
    };
    let shim_run = start();
    assert_eq!(env.state("d0"), "normal");
    // A fresh node: the µmboxes the first look starts were never running, so none of
    // them "stopped" and no device failed closed for it.
    let log = env.log_text();
    assert!(
        !log.contains("stopped") && !log.contains("failed closed"),
        "a fresh start reported a fault:\n{log}"
    );
    assert_switch_holds(
        &bundle,
        &[
            "flows/base.ofctl",
            "flows/d0/normal.ofctl",
            "flows/d1/normal.ofctl",
        ],
    );

    // Bad input: refused (exit 1), nothing changes, the shim keeps serving.
    for bad in [
        vec!["event", "d0", "level=500"],
        vec!["event", "d0", "nosuch=1"],
        vec!["event", "d0", "level=yes"],
        vec!["event", "nosuch", "level=1"],
        vec!["alert", "d0", "no_such_alert"],
    ] {
        let out = env.client(&bad);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", stdout(&out));
    }
    let wrong_token = tmp.path().join("wrong");
    std::fs::write(&wrong_token, "not-the-token-but-long-enough\n").unwrap();
    std::fs::set_permissions(&wrong_token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = shim(&[
        "reset",
        "d0",
        "--api",
        &env.api,
        "--token-file",
        wrong_token.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "a wrong token is refused");
    assert_eq!(env.state("d0"), "normal");

    // 1. An alert through the API: d0 normal -> suspicious, its chain grows (the shared
    //    probe keeps running), its flows swap.
    let shared = container_id("kalki-shimnode-d0-0-probe");
    let out = env.client(&["alert", "d0", "port_scan"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.state("d0"), "suspicious");
    assert_eq!(container_id("kalki-shimnode-d0-0-probe"), shared);
    assert_switch_holds(
        &bundle,
        &[
            "flows/base.ofctl",
            "flows/d0/suspicious.ofctl",
            "flows/d1/normal.ofctl",
        ],
    );

    // 2. An alert from the µmbox itself (its stdout, followed through Docker): `fault`
    //    moves d0 to `broken`, whose µmbox image does not exist: d0 fails closed to its
    //    most restrictive state, and the status says why.
    ok(
        r#"docker exec kalki-shimnode-d0-1-probe_tap /bin/busybox sh -c 'echo "{\"kalki\":\"alert\",\"alert\":\"fault\"}" > /proc/1/fd/1'"#,
    );
    wait_for(Duration::from_secs(30), "d0 to fail closed", || {
        env.device("d0")["enforcement"]["verdict"] == "failed_closed"
    });
    assert_eq!(env.state("d0"), "broken");
    assert_eq!(env.device("d0")["enforcement"]["installed"], "attack");
    // What crosses is what `attack` (`drop`) lets through, not what `broken`'s chain
    // (a µmbox that declares no contract: everything) would.
    assert_eq!(env.device("d0")["crosses"], "nothing crosses");
    let status = env.client(&["status"]);
    assert_eq!(status.status.code(), Some(4), "failed closed: exit 4");
    assert!(stdout(&status).contains("d0: FAILED CLOSED (installed attack)"));
    assert_switch_holds(
        &bundle,
        &[
            "flows/base.ofctl",
            "flows/d0/attack.ofctl",
            "flows/d1/normal.ofctl",
        ],
    );
    // An alert from a container that does not serve the device now is rejected.
    ok(
        r#"docker exec kalki-shimnode-d1-0-probe /bin/busybox sh -c 'echo "{\"kalki\":\"alert\",\"alert\":\"fault\"}" > /proc/1/fd/1'"#,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.state("d1"), "normal");
    assert!(
        env.log_text()
            .contains("alert from `kalki-shimnode-d1-0-probe` refused"),
        "{}",
        env.log_text()
    );

    // 3. The operator resets d0.
    let out = env.client(&["reset", "d0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.state("d0"), "normal");
    assert_eq!(env.device("d0")["enforcement"]["verdict"], "enforced");
    assert_eq!(env.device("d0")["crosses"], "everything crosses");
    assert_switch_holds(
        &bundle,
        &[
            "flows/base.ofctl",
            "flows/d0/normal.ofctl",
            "flows/d1/normal.ofctl",
        ],
    );

    // 4. A timer: level > 90 held for 2 s moves d1; the site's rule then sends d0 a
    //    command, delivered to the webhook.
    let d0_flows = device_flows(D0_COOKIE);
    let out = env.client(&["event", "d1", "level=95"]);
    assert!(out.status.success());
    assert_eq!(env.state("d1"), "normal", "not before the 2 s hold");
    wait_for(Duration::from_secs(20), "the hold to move d1", || {
        env.state("d1") == "suspicious"
    });
    assert_eq!(
        device_flows(D0_COOKIE),
        d0_flows,
        "d0 untouched by d1's change"
    );
    wait_for(
        Duration::from_secs(20),
        "the command to reach the webhook",
        || !commands.lock().unwrap().is_empty(),
    );
    let cmd: serde_json::Value = serde_json::from_str(&commands.lock().unwrap()[0]).unwrap();
    assert_eq!(cmd["device"], "d0");
    assert_eq!(cmd["command"], "reboot");
    assert_eq!(cmd["rule"], "reboot_d0");

    // 5. A µmbox of d1's current chain is killed: d1 fails closed at once (journaled),
    //    and the node heals by itself: a new instance of the µmbox, d1's suspicious flows
    //    back, its verdict `enforced`, without a restart of the shim.
    let killed = container_id("kalki-shimnode-d1-2-probe");
    ok("docker kill kalki-shimnode-d1-2-probe");
    wait_for(
        Duration::from_secs(30),
        "d1's failure to be journaled",
        || {
            env.log_text()
                .contains("`d1` failed closed (attack): µmbox `kalki-shimnode-d1-2-probe` stopped")
        },
    );
    wait_for(Duration::from_secs(30), "d1 to heal", || {
        env.device("d1")["enforcement"]["verdict"] == "enforced"
    });
    assert_ne!(container_id("kalki-shimnode-d1-2-probe"), killed);
    assert_eq!(env.state("d1"), "suspicious");
    assert_switch_holds(
        &bundle,
        &[
            "flows/base.ofctl",
            "flows/d0/normal.ofctl",
            "flows/d1/suspicious.ofctl",
        ],
    );

    // 6. SIGKILL in the middle of a posture change (d0 starting its suspicious chain),
    //    then a restart: the journal decides the states, and the node is brought to
    //    them (d1 back in its suspicious chain: its failure was the node's, not policy).
    let mut alert = Command::new(env!("CARGO_BIN_EXE_kalki-shim"))
        .args([
            "alert",
            "d0",
            "port_scan",
            "--api",
            &env.api,
            "--token-file",
            env.token.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(shim_run); // SIGKILL
    let _ = alert.wait();
    let _restarted = start();
    let d0 = env.state("d0");
    assert!(d0 == "normal" || d0 == "suspicious", "{d0}");
    assert_eq!(env.state("d1"), "suspicious");
    let d0_set = format!("flows/d0/{d0}.ofctl");
    assert_switch_holds(
        &bundle,
        &["flows/base.ofctl", &d0_set, "flows/d1/suspicious.ofctl"],
    );
    let dry = shim(&[
        "apply",
        bundle.to_str().unwrap(),
        "--dry-run",
        "--journal",
        journal.to_str().unwrap(),
    ]);
    assert!(
        stdout(&dry).contains("nothing to change"),
        "after the restart the node matches the journal: {}",
        stdout(&dry)
    );
}
