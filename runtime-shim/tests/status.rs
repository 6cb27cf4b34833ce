//! What `status` says crosses, next to each device's verdict: the summary of the inline
//! contracts of the posture in force, for a chain that isolates the device (`drop`), one
//! that lets everything through (`pass`), an authenticating proxy, and failing closed
//! to no flows; and no claim at all for a device not enforced. Text (snapshot) and the
//! API's JSON.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{compile, load, MemReader};
use kalki_shim::api::{self, DeviceStatus, StatusReport};
use kalki_shim::bundle::Bundle;
use kalki_shim::enforcement::{crossing, CellPassage, Enforcement};

const SITE: &str = r#"
import std::umboxes::{sniffer, auth_proxy}

device type Box {
    sensed level: int in 0..100
    alerts tamper
    states normal < guarded < attack
    initial normal
    normal  { chain [pass] }
    guarded { chain [sniffer, auth_proxy] }
    attack  { chain [drop] }
    normal  -> guarded on tamper
    guarded -> attack  on tamper
    attack  -> normal  on operator reset
}

site lab {
    bridge "br0" uplink "eth0"
    device open: Box at 10.0.0.1 port "p1"
    device proxied: Box at 10.0.0.2 port "p2"
    device isolated: Box at 10.0.0.3 port "p3"
    device closed: Box at 10.0.0.4 port "p4"
    device unseen: Box at 10.0.0.5 port "p5"
}
"#;

fn bundle() -> Bundle {
    load(&MemReader::new(&compile(SITE))).unwrap()
}

fn state(b: &Bundle, device: usize, name: &str) -> usize {
    b.manifest.devices[device]
        .states
        .iter()
        .position(|s| s.name == name)
        .unwrap()
}

/// The status the run loop would make for these verdicts.
fn report(b: &Bundle) -> StatusReport {
    let device = |d: usize, st: &str, enforcement: Enforcement, installed: Option<Option<&str>>| {
        let c = installed.map(|i| crossing(b, d, i.map(|s| state(b, d, s))));
        DeviceStatus {
            name: b.manifest.devices[d].name.clone(),
            device_type: "Box".into(),
            state: st.into(),
            since_ms: None,
            since: None,
            cause: None,
            umboxes: vec![],
            enforcement,
            crosses: None,
            crossing: None,
        }
        .with_crossing(c)
    };
    let closed = |installed: &str| Enforcement::FailedClosed {
        installed: installed.into(),
        reason: "image `kalki/umbox:0.1` is not on this node".into(),
    };
    StatusReport {
        site: "lab".into(),
        bundle_sha256: b.manifest_sha256.clone(),
        uptime_s: 61,
        now_ms: 0,
        devices: vec![
            device(0, "normal", Enforcement::Enforced, Some(Some("normal"))),
            device(1, "guarded", Enforcement::Enforced, Some(Some("guarded"))),
            device(2, "attack", Enforcement::Enforced, Some(Some("attack"))),
            device(3, "guarded", closed("no flows"), Some(None)),
            device(
                4,
                "normal",
                Enforcement::NotEnforced {
                    reason: "Open vSwitch cannot be read".into(),
                },
                None,
            ),
        ],
        mqtt: None,
    }
}

#[test]
fn status_says_what_crosses_where_a_posture_is_in_force() {
    let b = bundle();
    let text = api::render_status(&report(&b));
    let row = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
            .to_string()
    };
    assert!(row("open ").contains("  everything crosses  "), "{text}");
    assert!(row("isolated ").contains("  nothing crosses  "), "{text}");
    assert!(
        row("proxied ")
            .contains("with credentials only: tcp 9010 from uplink; everything else crosses"),
        "{text}"
    );
    assert!(
        row("closed ").contains("failed-closed  nothing crosses"),
        "{text}"
    );
    // Not enforced: no claim of what crosses, only that it is unknown.
    let unseen = row("unseen ");
    let words: Vec<&str> = unseen.split_whitespace().collect();
    assert_eq!(words[3..5], ["NOT-ENFORCED", "unknown"], "{text}");
    assert!(!unseen.contains("crosses"), "{text}");
    insta::with_settings!({ filters => vec![(r"bundle [0-9a-f]{12}", "bundle [sha]")] }, {
        insta::assert_snapshot!("status-crossing", text);
    });
}

#[test]
fn the_json_carries_the_line_and_the_cells_and_nothing_for_a_device_not_enforced() {
    let b = bundle();
    let r = report(&b);
    let json = serde_json::to_value(&r).unwrap();
    let dev = |i: usize| &json["devices"][i];
    assert_eq!(dev(0)["crosses"], "everything crosses");
    assert_eq!(dev(2)["crosses"], "nothing crosses");
    assert_eq!(dev(3)["crosses"], "nothing crosses");
    // The proxy: TCP 9010 from the uplink needs credentials, the rest is open.
    let cells = dev(1)["crossing"].as_array().unwrap();
    let auth: Vec<&serde_json::Value> = cells
        .iter()
        .filter(|c| c["passage"] == "authenticated")
        .collect();
    assert_eq!(
        auth,
        vec![
            &serde_json::json!({"proto": "tcp", "ports": [9010, 9010], "from": "uplink", "passage": "authenticated"})
        ]
    );
    assert!(cells
        .iter()
        .filter(|c| c["passage"] != "authenticated")
        .all(|c| c["passage"] == "open"));
    // Isolated: every cell closed, ICMP and other protocols included (no ports).
    let shut = dev(2)["crossing"].as_array().unwrap();
    assert!(shut.iter().all(|c| c["passage"] == "closed"));
    assert!(shut
        .iter()
        .any(|c| c["proto"] == "icmp" && c.get("ports").is_none()));
    // Not enforced: neither field.
    let unseen = dev(4).as_object().unwrap();
    assert!(!unseen.contains_key("crosses") && !unseen.contains_key("crossing"));
    // The client reads it back as sent.
    let back: StatusReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, r);
    assert!(back.devices[2]
        .crossing
        .as_ref()
        .unwrap()
        .iter()
        .all(|c| c.passage == CellPassage::Closed));
}

/// A door contact behind a hub (its type has no chain) beside a device on the switch.
const HUB_SITE: &str = r#"
import std::umboxes::{sniffer}

device type Contact {
    sensed open: bool
    states shut < alarm
    initial shut
    shut  -> alarm when open
    alarm -> shut  on operator reset
}

device type Box {
    alerts tamper
    states normal < attack
    initial normal
    normal { chain [sniffer] }
    attack { chain [drop] }
    normal -> attack on tamper
    attack -> normal on operator reset
}

site lab {
    bridge "br0" uplink "eth0"
    device door: Contact
    device cam: Box at 10.0.0.1 port "p1"
    rule opened when door in alarm then cam -> attack
}
"#;

/// A device off the switch gets the verdict `off switch` (the run loop's
/// `enforcement::off_switch`), never `enforced`: text, JSON, and an exit that it does
/// not set. What crosses is not applicable, and nothing is claimed.
#[test]
fn a_device_off_the_switch_is_reported_off_switch_never_enforced() {
    use kalki_shim::enforcement::{off_switch, worst};
    let b = load(&MemReader::new(&compile(HUB_SITE))).unwrap();
    assert_eq!(off_switch(&b, 0), Some(Enforcement::OffSwitch));
    assert_eq!(
        off_switch(&b, 1),
        None,
        "the camera is judged by a look at the node"
    );
    let status = |d: usize, enforcement: Enforcement, c| {
        DeviceStatus {
            name: b.manifest.devices[d].name.clone(),
            device_type: b.manifest.devices[d].ty.clone(),
            state: b.manifest.devices[d].initial.clone(),
            since_ms: None,
            since: None,
            cause: None,
            umboxes: vec![],
            enforcement,
            crosses: None,
            crossing: None,
        }
        .with_crossing(c)
    };
    let r = StatusReport {
        site: "lab".into(),
        bundle_sha256: b.manifest_sha256.clone(),
        uptime_s: 5,
        now_ms: 0,
        devices: vec![
            status(0, off_switch(&b, 0).unwrap(), None),
            status(1, Enforcement::Enforced, Some(crossing(&b, 1, Some(0)))),
        ],
        mqtt: None,
    };
    let text = api::render_status(&r);
    let door = text.lines().find(|l| l.starts_with("door ")).unwrap();
    let words: Vec<&str> = door.split_whitespace().collect();
    assert_eq!(
        words[..6],
        ["door", "Contact", "shut", "off-switch", "not", "applicable"],
        "{text}"
    );
    assert!(!words.contains(&"enforced"), "{text}");
    assert!(
        text.contains("  door: off the switch: nothing of it is on the switch"),
        "{text}"
    );
    let json = serde_json::to_value(&r).unwrap();
    let d = json["devices"][0].as_object().unwrap();
    assert_eq!(
        d["enforcement"],
        serde_json::json!({"verdict": "off_switch"})
    );
    assert!(!d.contains_key("crosses") && !d.contains_key("crossing"));
    // `status` exits 0: the node owes the door nothing.
    assert_eq!(worst(r.devices.iter().map(|d| &d.enforcement)), None);
}

/// `apply` and the run loop plan nothing for a device off the switch (no port, flows or
/// µmbox), and `Node::check` never finds it enforced; a change of its state is no posture
/// change.
#[test]
fn nothing_is_planned_or_checked_for_a_device_off_the_switch() {
    use kalki_shim::node::{Action, Node, NodeConfig, Observation, Target};
    use std::collections::{BTreeMap, BTreeSet};
    let b = load(&MemReader::new(&compile(HUB_SITE))).unwrap();
    let docker = kalki_shim::docker::Engine::lazy(
        "/nonexistent/docker.sock",
        std::time::Duration::from_secs(1),
    );
    let node = Node::new(
        b,
        kalki_shim::containers::Containers::Docker(docker),
        NodeConfig::default(),
    )
    .unwrap();
    let obs = Observation {
        switch: Ok(node.switch_view(true, BTreeMap::new(), vec![])),
        containers: Ok(BTreeMap::new()),
        interfaces: Ok(BTreeSet::from(["eth0".to_string(), "p1".to_string()])),
        exposed: BTreeMap::new(),
        hooked: BTreeMap::new(),
    };
    let plan = node
        .plan_from(&obs, &[Target::State(0), Target::State(0)])
        .unwrap();
    assert!(plan.actions.contains(&Action::Install {
        device: 1,
        target: Target::State(0)
    }));
    for a in &plan.actions {
        match a {
            Action::Install { device, .. } | Action::StartContainer { device, .. } => {
                assert_eq!(*device, 1, "{a}")
            }
            Action::AddPort { name, .. } => assert!(name == "eth0" || name == "p1", "{a}"),
            _ => {}
        }
    }
    let why = node.check(&obs, 0, Target::State(1)).unwrap_err();
    assert!(why.contains("off the switch"), "{why}");
    assert!(!node.device_on_switch(0) && node.device_on_switch(1));
    let posture = futures_executor(node.change_posture(0, 1));
    assert_eq!(posture.unwrap(), kalki_shim::node::Posture::OffSwitch);
}

fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
