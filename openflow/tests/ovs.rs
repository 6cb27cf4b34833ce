//! The client against a real Open vSwitch (3.1, userspace datapath): what it loads is
//! exactly what `ovs-ofctl` loads from the same files, and reads back (flow dump) as the
//! rule set; a swap replaces one device's flows and nothing else; a bundle with one
//! refused flow changes nothing; a lost connection is reported and can be made again.
//!
//! Each test makes its own bridge `kof-<tag>` and deletes it at the end. `make test`
//! starts OVS first (`scripts/ovs/start.sh`); under `CI=true` a missing OVS fails the
//! tests instead of skipping them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{must, ovs_ready, Bridge, Bundle, State, TempDir};
use kalki_openflow::wire::{self, OfError};
use kalki_openflow::{Client, Error, FlowMod, Rejected};
use std::collections::BTreeMap;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(br: &Bridge) -> Client {
    // The management socket appears when ovs-vswitchd has configured the bridge, which
    // `ovs-vsctl` waits for; retry briefly all the same.
    let mut last = None;
    for _ in 0..50 {
        match Client::connect(br.socket(), TIMEOUT).await {
            Ok(c) => return c,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot connect to {}: {last:?}", br.name)
}

/// The text `ovs-ofctl --bundle add-flows` takes to move a device to `s`.
fn swap_script(s: &State, mask: u64) -> String {
    let mut script = format!("delete cookie={:#x}/{mask:#x}\n", s.cookie);
    for line in s.text.lines() {
        script.push_str(&format!("add {line}\n"));
    }
    script
}

/// The base set and the given states, as one rule-set text.
fn expected(b: &Bundle, current: &BTreeMap<String, &State>) -> String {
    let mut text = b.base_text.clone();
    for s in current.values() {
        text.push_str(&s.text);
    }
    text
}

#[tokio::test]
async fn loads_exactly_what_ovs_ofctl_loads() {
    if !ovs_ready() {
        return;
    }
    let b = Bundle::load("examples/smart-office");
    let ours = Bridge::create("load");
    let twin = Bridge::create("load-ofctl");
    let tmp = TempDir::new("load");
    let file = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let mut c = connect(&ours).await;

    // The base set: through the client on one bridge, through ovs-ofctl on the twin.
    c.add(&b.base).await.unwrap();
    twin.ofctl(
        &["--bundle"],
        "add-flows",
        &[&file("base.ofctl", &b.base_text)],
    );
    let mut current: BTreeMap<String, &State> = BTreeMap::new();
    assert_eq!(
        ours.diff(&expected(&b, &current), &tmp.path().join("want")),
        ""
    );
    assert_eq!(ours.flows(), twin.flows());

    // Every device into its initial state, then through every state and back.
    let mut swaps = 0;
    let mut order: Vec<&State> = b.initial();
    for (_, _, states) in &b.devices {
        order.extend(states.iter());
    }
    order.extend(b.initial());
    for s in order {
        let others = ours.flows_except(s.cookie, b.device_mask);
        c.swap(s.cookie, b.device_mask, &s.flows).await.unwrap();
        twin.ofctl(
            &["--bundle"],
            "add-flows",
            &[&file("swap", &swap_script(s, b.device_mask))],
        );
        current.insert(s.device.clone(), s);
        let diff = ours.diff(&expected(&b, &current), &tmp.path().join("want"));
        assert_eq!(
            diff, "",
            "{}/{}: switch differs from the files",
            s.device, s.name
        );
        assert_eq!(
            ours.flows(),
            twin.flows(),
            "{}/{}: differs from what ovs-ofctl loaded",
            s.device,
            s.name
        );
        assert_eq!(
            ours.flows_except(s.cookie, b.device_mask),
            others,
            "moving {} to {} changed another device's flows",
            s.device,
            s.name
        );
        // Read back over the same connection: exactly the rule set, state cookie and all.
        assert_eq!(
            sorted(c.dump(s.cookie, b.device_mask).await.unwrap()),
            sorted(s.flows.clone()),
            "{}/{}: dump",
            s.device,
            s.name
        );
        swaps += 1;
    }
    assert!(swaps >= 16, "{swaps} swaps");
    assert_eq!(
        sorted(
            c.dump(b.base[0].cookie, 0xff00_0000_0000_0000)
                .await
                .unwrap()
        ),
        sorted(b.base.clone())
    );
    let all = c.dump(0, 0).await.unwrap();
    assert_eq!(all.len(), ours.flows().len());
}

/// Flows in a stable order, to compare a dump (in the switch's order) with a rule set.
fn sorted(flows: Vec<FlowMod>) -> Vec<String> {
    let mut out: Vec<String> = flows.iter().map(FlowMod::to_string).collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_refused_flow_discards_the_whole_bundle() {
    if !ovs_ready() {
        return;
    }
    let b = Bundle::load("examples/smart-office");
    let br = Bridge::create("refuse");
    let tmp = TempDir::new("refuse");
    let mut c = connect(&br).await;
    c.add(&b.base).await.unwrap();
    for s in b.initial() {
        c.swap(s.cookie, b.device_mask, &s.flows).await.unwrap();
    }
    let before = br.flows();
    let to = b.state("hall_cam", "suspicious");
    let good = to.flows[0].clone();

    // Refused when the switch decodes the message: a goto_table backwards, a table the
    // switch does not have.
    let mut backwards = good.clone();
    backwards.actions.outputs.clear();
    backwards.actions.goto_table = Some(0);
    let mut no_table = good.clone();
    no_table.table = 254;
    // Refused only when the bundle is committed: `check_overlap` against a base flow
    // (same table and priority, and a packet can match both).
    let overlap = FlowMod {
        flags: FlowMod::CHECK_OVERLAP,
        matches: kalki_openflow::Match {
            eth_type: Some(kalki_openflow::EthType::Ip),
            ..b.base
                .iter()
                .find(|f| f.priority == 1000 && f.matches.eth_type.is_none())
                .unwrap()
                .matches
                .clone()
        },
        priority: 1000,
        table: 0,
        ..good.clone()
    };
    for (bad, name) in [
        (backwards, "OFPBIC_BAD_TABLE_ID"),
        (no_table, "OFPBRC_EPERM"),
        (overlap, "OFPFMFC_OVERLAP"),
    ] {
        let mut flows = to.flows.clone();
        let at = flows.len() / 2;
        flows.insert(at, bad.clone());
        let err = c.swap(to.cookie, b.device_mask, &flows).await.unwrap_err();
        match &err {
            Error::Rejected {
                what: Rejected::Flow { index, flow },
                error,
                discarded: true,
            } => {
                assert_eq!(*index, at, "{err}");
                assert_eq!(flow, &bad.to_string());
                assert_eq!(error.name().as_deref(), Some(name), "{err}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(err.to_string().contains(&format!("flow {at} (`")), "{err}");
        assert!(!err.is_disconnect());
        assert_eq!(
            br.flows(),
            before,
            "{name}: the refused bundle changed flows"
        );
        assert!(c.is_connected());
    }

    // A flow of another device in the set: refused before anything is sent.
    let mut flows = to.flows.clone();
    flows.push(b.state("thermo", "normal").flows[0].clone());
    let err = c.swap(to.cookie, b.device_mask, &flows).await.unwrap_err();
    assert!(
        matches!(err, Error::CookieOutsideMask { index, .. } if index == flows.len() - 1),
        "{err:?}"
    );
    assert_eq!(br.flows(), before);

    // The same connection goes on working.
    c.swap(to.cookie, b.device_mask, &to.flows).await.unwrap();
    let mut current: BTreeMap<String, &State> = b
        .initial()
        .into_iter()
        .map(|s| (s.device.clone(), s))
        .collect();
    current.insert(to.device.clone(), to);
    assert_eq!(
        br.diff(&expected(&b, &current), &tmp.path().join("want")),
        ""
    );
}

#[tokio::test]
async fn echo_barrier_and_a_lost_connection() {
    if !ovs_ready() {
        return;
    }
    let b = Bundle::load("examples/smart-office");
    let br = Bridge::create("lost");
    let mut c = connect(&br).await;
    let rtt = c.echo().await.unwrap();
    assert!(rtt < TIMEOUT);
    c.barrier().await.unwrap();
    // Empty bundles are fine too: nothing to add, or a device whose set is empty.
    c.add(&[]).await.unwrap();
    c.swap(0x0200_0000_0001_0000, b.device_mask, &[])
        .await
        .unwrap();
    assert!(br.flows().is_empty());

    // The bridge goes away: its socket closes.
    drop(br);
    let err = c.echo().await.unwrap_err();
    assert!(err.is_disconnect(), "{err:?}");
    assert!(!c.is_connected());
    let again = c.add(&b.base).await.unwrap_err();
    assert!(matches!(again, Error::Disconnected { .. }), "{again:?}");

    // It comes back: the caller reconnects.
    let br = Bridge::create("lost");
    let mut last = None;
    for _ in 0..50 {
        match c.reconnect().await {
            Ok(()) => break,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.is_connected(), "{last:?}");
    c.add(&b.base).await.unwrap();
    assert_eq!(br.flows().len(), b.base.len());
}

#[tokio::test]
async fn refuses_a_bridge_without_openflow_15() {
    if !ovs_ready() {
        return;
    }
    let br = Bridge::with_protocols("v13", "OpenFlow13");
    let mut last = None;
    for _ in 0..50 {
        match Client::connect(br.socket(), TIMEOUT).await {
            Err(Error::Connect { .. }) => {}
            other => {
                last = Some(other);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match last {
        Some(Err(Error::Incompatible { bitmap, .. })) => {
            assert_eq!(bitmap.map(|b| b & (1 << 6)), Some(0))
        }
        other => panic!("{:?}", other.map(|r| r.map(|_| ()))),
    }
}

/// Where Open vSwitch prints another name than the OpenFlow 1.5.1 specification's.
const ALIASES: &[(&str, &str)] = &[
    ("OFPBRC_BAD_MULTIPART", "OFPBRC_BAD_STAT"),
    ("OFPBRC_BAD_EXPERIMENTER", "OFPBRC_BAD_VENDOR"),
    ("OFPBRC_BAD_EXP_TYPE", "OFPBRC_BAD_SUBTYPE"),
    ("OFPBRC_IS_SLAVE", "OFPBRC_IS_SECONDARY"),
    ("OFPBAC_BAD_EXPERIMENTER", "OFPBAC_BAD_VENDOR"),
    ("OFPBAC_BAD_EXP_TYPE", "OFPBAC_BAD_VENDOR_TYPE"),
];

/// The names given to error codes are the ones Open vSwitch prints for them.
#[test]
fn error_names_agree_with_ovs() {
    if !ovs_ready() {
        return;
    }
    let mut checked = 0;
    let mut wrong = Vec::new();
    for err_type in 0..=17u16 {
        for code in 0..=20u16 {
            let e = OfError {
                err_type,
                code,
                experimenter: None,
                data: vec![],
            };
            let Some(name) = e.name() else { continue };
            // An OFPT_ERROR whose data is an 8-byte HELLO header.
            let hex = format!("0601001400000001{err_type:04x}{code:04x}06000008000000aa");
            let out = must("ovs-ofctl", &["ofp-print", &hex]);
            let first = out.lines().next().unwrap_or("");
            let ovs = first.rsplit(": ").next().unwrap_or("");
            if ovs != name && !ALIASES.contains(&(name.as_str(), ovs)) {
                wrong.push(format!(
                    "type {err_type} code {code}: ours {name}, ovs {ovs}"
                ));
            }
            checked += 1;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(checked > 80, "{checked}");
}

/// Every message the client sends for a swap is one `ovs-ofctl ofp-print` reads back as
/// the flow of the rule set, with nothing left over.
#[test]
fn ovs_reads_the_encoded_flows_back() {
    if !ovs_ready() {
        return;
    }
    let b = Bundle::load("examples/smart-office");
    let s = b.state("hall_cam", "suspicious");
    let mut flows: Vec<&FlowMod> = s.flows.iter().collect();
    flows.extend(b.base.iter().take(4));
    for f in flows {
        let bytes = wire::Request::FlowAdd(f).encode(1).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let printed = must("ovs-ofctl", &["ofp-print", &hex]);
        let want = must(
            "ovs-ofctl",
            &["-O", "OpenFlow15", "parse-flow", &f.to_string()],
        );
        let want = want.lines().last().unwrap();
        assert_eq!(printed.trim_end(), want, "{f}");
    }
}

/// Several devices moved in one bundle: each device's set replaced, nothing else; with a
/// refused flow in the second set, neither set is applied.
#[tokio::test]
async fn swap_many_moves_several_devices_in_one_bundle_or_none() {
    if !ovs_ready() {
        return;
    }
    let b = Bundle::load("examples/smart-office");
    let br = Bridge::create("many");
    let tmp = TempDir::new("many");
    let mut c = connect(&br).await;
    c.add(&b.base).await.unwrap();
    for s in b.initial() {
        c.swap(s.cookie, b.device_mask, &s.flows).await.unwrap();
    }
    let cam = b.state("hall_cam", "suspicious");
    let thermo = b.state("thermo", "suspicious");
    let before = br.flows();

    let mut bad = thermo.flows.clone();
    let mut refused = bad[0].clone();
    refused.table = 254;
    bad.push(refused);
    let err = c
        .swap_many(&[
            (cam.cookie, b.device_mask, &cam.flows),
            (thermo.cookie, b.device_mask, &bad),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rejected {
                discarded: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        br.flows(),
        before,
        "a refused set leaves every set as it was"
    );

    c.swap_many(&[
        (cam.cookie, b.device_mask, &cam.flows),
        (thermo.cookie, b.device_mask, &thermo.flows),
    ])
    .await
    .unwrap();
    let mut current: BTreeMap<String, &State> = b
        .initial()
        .into_iter()
        .map(|s| (s.device.clone(), s))
        .collect();
    current.insert(cam.device.clone(), cam);
    current.insert(thermo.device.clone(), thermo);
    assert_eq!(
        br.diff(&expected(&b, &current), &tmp.path().join("want")),
        ""
    );
}
