//! Secrets on a real Docker engine and Open vSwitch, through `kalki-shim apply
//! --secrets-dir`: a µmbox whose secret is missing, or open to other users, is not
//! started and its device fails closed (its most restrictive state installed); once the
//! file is there with mode 0600, the µmbox runs with it bind-mounted read-only at its
//! path (Docker's own record of the mount, the content seen inside, a write refused), a
//! device's own file wins over the shared one, and the secret's content appears in no
//! output, environment or command line.
//!
//! The policy is `tests/fixtures/secrets/site.kalki`; its µmbox is the busybox stand-in
//! of the node tests, which reports ready only if its secret is there and read-only.
//! A second test starts the real catalog `auth_proxy` (`kalki/umbox:0.1`,
//! `tests/fixtures/secrets-proxy/site.kalki`) with its credentials.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::live::*;
use common::TempDir;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const SEC_BRIDGE: &str = "kt-sec";
const SEC_LINKS: [&str; 2] = ["kts-up", "kts-d0"];
const CONTAINER: &str = "kalki-sec-d0-0-keeper";
const SHARED: &str = "shared:correct-horse-battery-staple";
const OWN: &str = "own:tr0ub4dor-and-3";

struct SecCleanup;

impl SecCleanup {
    fn now() {
        sh(&format!(
            "ovs-vsctl --timeout=10 --if-exists del-br {SEC_BRIDGE}"
        ));
        sh("docker rm -f $(docker ps -aq --filter label=kalki.site=sec) 2>/dev/null");
        for l in SEC_LINKS {
            sh(&format!("ip link del dev {l} 2>/dev/null"));
        }
    }
}

impl Drop for SecCleanup {
    fn drop(&mut self) {
        SecCleanup::now();
    }
}

fn write_secret(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `kalki-shim apply` of the bundle with the secrets directory; (exit code, everything
/// it printed).
fn apply(bundle: &Path, journal: &Path, secrets: &Path) -> (Option<i32>, String) {
    let o = shim(&[
        "apply",
        bundle.to_str().unwrap(),
        "--journal",
        journal.to_str().unwrap(),
        "--secrets-dir",
        secrets.to_str().unwrap(),
        "--ready-timeout",
        "20",
    ]);
    (
        o.status.code(),
        format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr)),
    )
}

fn is_running(name: &str) -> bool {
    sh(&format!(
        "docker inspect --format '{{{{.State.Running}}}}' {name}"
    ))
    .stdout
    .starts_with(b"true")
}

#[test]
fn secrets_are_mounted_read_only_or_the_device_fails_closed() {
    if !services_ready() {
        return;
    }
    ensure_test_image();
    SecCleanup::now();
    let _cleanup = SecCleanup;
    for l in SEC_LINKS {
        ok(&format!(
            "ip link add {l} type veth peer name {l}p && ip link set dev {l} up"
        ));
    }
    let tmp = TempDir::new("secrets");
    let bundle = tmp.path().join("bundle");
    common::compile_dir("runtime-shim/tests/fixtures/secrets")
        .write_to(&bundle)
        .unwrap();
    let journal = tmp.path().join("journal.db");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();

    // 1. No secret: the µmbox is not started; d0 fails closed to `attack` (drop), and
    //    apply says which secret of which device, where it was looked for, what to do.
    let (code, out) = apply(&bundle, &journal, &secrets);
    assert_eq!(code, Some(1), "{out}");
    for part in [
        "`d0` failed closed",
        "secret `creds` of device `d0` is missing",
        &secrets.join("d0/creds").display().to_string(),
        &secrets.join("creds").display().to_string(),
        "chmod 600",
        "its most restrictive state `attack`",
    ] {
        assert!(out.contains(part), "{part}: {out}");
    }
    assert!(!is_running(CONTAINER), "{out}");
    assert_bridge_holds(
        SEC_BRIDGE,
        &bundle,
        &["flows/base.ofctl", "flows/d0/attack.ofctl"],
    );

    // 2. Readable by others: refused the same way, the content shown nowhere.
    let shared = secrets.join("creds");
    write_secret(&shared, SHARED, 0o644);
    let (code, out) = apply(&bundle, &journal, &secrets);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("is open to group or others (mode 0644)")
            && out.contains(&format!("chmod 600 {}", shared.display())),
        "{out}"
    );
    assert!(!out.contains(SHARED), "{out}");
    assert!(!is_running(CONTAINER));
    assert_bridge_holds(
        SEC_BRIDGE,
        &bundle,
        &["flows/base.ofctl", "flows/d0/attack.ofctl"],
    );

    // 3. Mode 0600: the µmbox runs (it reported ready, so it found its secret and could
    //    not write it), d0 gets its own posture.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out) = apply(&bundle, &journal, &secrets);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains(SHARED), "{out}");
    assert!(is_running(CONTAINER));
    assert_bridge_holds(
        SEC_BRIDGE,
        &bundle,
        &["flows/base.ofctl", "flows/d0/normal.ofctl"],
    );
    // Docker's record: one bind mount, read-only, of the shared file at the path.
    let mounts: serde_json::Value = serde_json::from_str(&ok(&format!(
        "docker inspect --format '{{{{json .Mounts}}}}' {CONTAINER}"
    )))
    .unwrap();
    assert_eq!(mounts.as_array().unwrap().len(), 1, "{mounts}");
    assert_eq!(mounts[0]["Type"], "bind", "{mounts}");
    assert_eq!(mounts[0]["Destination"], "/run/secrets/creds", "{mounts}");
    assert_eq!(mounts[0]["RW"], false, "{mounts}");
    assert_eq!(
        mounts[0]["Source"],
        shared.display().to_string(),
        "{mounts}"
    );
    // Inside: the content, and no way to change it.
    assert_eq!(
        ok(&format!(
            "docker exec {CONTAINER} /bin/busybox cat /run/secrets/creds"
        )),
        SHARED
    );
    assert!(!sh(&format!(
        "docker exec {CONTAINER} /bin/busybox sh -c 'echo x > /run/secrets/creds'"
    ))
    .status
    .success());
    assert_eq!(std::fs::read_to_string(&shared).unwrap(), SHARED);
    // Never on its command line or in its environment.
    let config = ok(&format!(
        "docker inspect --format '{{{{json .Config}}}}' {CONTAINER}"
    ));
    assert!(!config.contains(SHARED), "{config}");

    // 4. A device's own file wins over the shared one (taken when the µmbox starts: it
    //    is started again here).
    let own = secrets.join("d0").join("creds");
    write_secret(&own, OWN, 0o400);
    ok(&format!("docker rm -f {CONTAINER}"));
    let (code, out) = apply(&bundle, &journal, &secrets);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        ok(&format!(
            "docker exec {CONTAINER} /bin/busybox cat /run/secrets/creds"
        )),
        OWN
    );
    let source = ok(&format!(
        "docker inspect --format '{{{{range .Mounts}}}}{{{{.Source}}}}{{{{end}}}}' {CONTAINER}"
    ));
    assert_eq!(source.trim(), own.display().to_string());
    // A second apply changes nothing: the running µmbox is up to date.
    let (code, out) = apply(&bundle, &journal, &secrets);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("nothing to change"), "{out}");
}

const PROXY_BRIDGE: &str = "kt-secp";
const PROXY_LINKS: [&str; 2] = ["ksp-up", "ksp-d0"];
const PROXY: &str = "kalki-secp-web-0-auth_proxy";
const IMAGE: &str = "kalki/umbox:0.1";

struct ProxyCleanup;

impl ProxyCleanup {
    fn now() {
        sh(&format!(
            "ovs-vsctl --timeout=10 --if-exists del-br {PROXY_BRIDGE}"
        ));
        sh("docker rm -f $(docker ps -aq --filter label=kalki.site=secp) 2>/dev/null");
        for l in PROXY_LINKS {
            sh(&format!("ip link del dev {l} 2>/dev/null"));
        }
    }
}

impl Drop for ProxyCleanup {
    fn drop(&mut self) {
        ProxyCleanup::now();
    }
}

#[test]
fn the_catalog_auth_proxy_runs_with_its_credentials_and_not_without() {
    if !kalki_test_support::require(&[
        kalki_test_support::ovs(),
        kalki_test_support::docker(),
        (
            kalki_test_support::image_present(IMAGE),
            "the image kalki/umbox:0.1 (make images)",
        ),
    ]) {
        return;
    }
    ProxyCleanup::now();
    let _cleanup = ProxyCleanup;
    for l in PROXY_LINKS {
        ok(&format!(
            "ip link add {l} type veth peer name {l}p && ip link set dev {l} up"
        ));
    }
    let tmp = TempDir::new("secrets-proxy");
    let bundle = tmp.path().join("bundle");
    common::compile_dir("runtime-shim/tests/fixtures/secrets-proxy")
        .write_to(&bundle)
        .unwrap();
    let journal = tmp.path().join("journal.db");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();

    // Without its credentials the proxy is not started: `web` is dropped.
    let (code, out) = apply(&bundle, &journal, &secrets);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("secret `credentials` of device `web` is missing"),
        "{out}"
    );
    assert!(!is_running(PROXY));
    assert_bridge_holds(
        PROXY_BRIDGE,
        &bundle,
        &["flows/base.ofctl", "flows/web/attack.ofctl"],
    );

    // With them it reads them (it exits before its ready line otherwise) and runs.
    let password = "pw-5e1f0c7a-not-in-any-log";
    write_secret(
        &secrets.join("credentials"),
        &format!("operator:{password}\n"),
        0o600,
    );
    let (code, out) = apply(&bundle, &journal, &secrets);
    assert_eq!(code, Some(0), "{out}");
    assert!(is_running(PROXY), "{out}");
    assert_bridge_holds(
        PROXY_BRIDGE,
        &bundle,
        &["flows/base.ofctl", "flows/web/normal.ofctl"],
    );
    let inspect = ok(&format!("docker inspect {PROXY}"));
    assert!(
        inspect.contains("\"Destination\": \"/run/secrets/proxy-credentials\""),
        "{inspect}"
    );
    let logs = sh(&format!("docker logs {PROXY}"));
    for text in [
        &out,
        &inspect,
        &String::from_utf8_lossy(&logs.stdout).into_owned(),
        &String::from_utf8_lossy(&logs.stderr).into_owned(),
    ] {
        assert!(!text.contains(password), "{text}");
    }
}
