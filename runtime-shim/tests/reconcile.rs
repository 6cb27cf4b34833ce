//! What the run loop decides from one look at the node, without the node: observations
//! built by hand from the bundle of `tests/fixtures/node/site.kalki` (the fault each one
//! stands for is named in its test), and for each the verdict `Node::check` gives every
//! device and the repair `Node::plan_from` plans. The live fault suite (`faults.rs`)
//! makes the same faults happen on a real switch and engine; this one pins down every
//! branch of the decision, the unsafe direction above all: no fault may leave a device
//! judged enforced.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{compile_dir, load, MemReader};
use kalki_openflow::{parse_rule_set, FlowMod};
use kalki_shim::bundle::Bundle;
use kalki_shim::containers::Running;
use kalki_shim::docker;
use kalki_shim::node::{Action, Node, NodeConfig, Observation, Target, LABEL_PORTS, LABEL_SITE};
use kalki_shim::ovs::PortDesc;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn bundle() -> Bundle {
    load(&MemReader::new(&compile_dir(
        "runtime-shim/tests/fixtures/node",
    )))
    .unwrap()
}

/// A node of the fixture's bundle. Nothing here reaches Docker: the engine is only
/// contacted at first use, and these tests only observe by hand.
fn node() -> Node {
    let docker = docker::Engine::lazy("/nonexistent/docker.sock", Duration::from_secs(1));
    Node::new(
        bundle(),
        kalki_shim::containers::Containers::Docker(docker),
        NodeConfig::default(),
    )
    .unwrap()
}

const NORMAL: Target = Target::State(0);

fn flows(node: &Node, path: &str) -> Vec<FlowMod> {
    parse_rule_set(&node.bundle().rule_sets[path]).unwrap()
}

/// The node exactly as the bundle wants it with both devices in `normal`: the bridge,
/// every port with its number, the base set and each device's set, each µmbox running
/// its definition, the node's stack off every interface.
fn healthy(node: &Node) -> Observation {
    let m = &node.bundle().manifest;
    let mut ports: BTreeMap<String, i64> = BTreeMap::new();
    ports.insert(m.uplink.name.clone().unwrap(), i64::from(m.uplink.ofport));
    let mut all = flows(node, "flows/base.ofctl");
    let mut containers = BTreeMap::new();
    let mut interfaces: BTreeSet<String> = BTreeSet::new();
    interfaces.insert(m.uplink.name.clone().unwrap());
    for d in &m.devices {
        ports.insert(
            d.net.as_ref().unwrap().port.clone(),
            i64::from(d.net.as_ref().unwrap().ofport),
        );
        interfaces.insert(d.net.as_ref().unwrap().port.clone());
        let s = d.states[0].switch.as_ref().unwrap();
        all.extend(flows(node, &s.flows));
        for path in &s.containers {
            let c = &node.bundle().containers[path];
            for i in &c.interfaces {
                ports.insert(i.port_name.clone(), i64::from(i.ofport));
                interfaces.insert(i.port_name.clone());
            }
            containers.insert(c.name.clone(), running(node, path));
        }
    }
    Observation {
        switch: Ok(node.switch_view(true, ports, all)),
        containers: Ok(containers),
        interfaces: Ok(interfaces),
        exposed: BTreeMap::new(),
        hooked: BTreeMap::new(),
    }
}

fn verdicts(node: &Node, obs: &Observation) -> Vec<Result<(), String>> {
    (0..2).map(|d| node.check(obs, d, NORMAL)).collect()
}

fn plan(node: &Node, obs: &Observation) -> Vec<Action> {
    node.plan_from(obs, &[NORMAL, NORMAL]).unwrap().actions
}

/// The container of the manifest at `path` as the engine lists it when it runs that
/// definition, labelled as the shim labels it.
fn running(node: &Node, path: &str) -> Running {
    let c = &node.bundle().containers[path];
    let mut labels = c.labels.clone();
    labels.insert(LABEL_SITE.into(), node.bundle().manifest.site.clone());
    labels.insert("kalki.spec".into(), node.spec_digest(path));
    labels.insert(
        LABEL_PORTS.into(),
        c.interfaces
            .iter()
            .map(|i| i.port_name.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    Running {
        name: c.name.clone(),
        id: format!("id-{}", c.name),
        running: true,
        labels,
    }
}

/// Rebuilds the switch part of an observation with other flows or ports.
fn with_switch(
    node: &Node,
    obs: &Observation,
    ports: BTreeMap<String, i64>,
    f: Vec<FlowMod>,
) -> Observation {
    let mut o = obs.clone();
    o.switch = Ok(node.switch_view(true, ports, f));
    o
}

fn healthy_flows(node: &Node) -> Vec<FlowMod> {
    let m = &node.bundle().manifest;
    let mut all = flows(node, "flows/base.ofctl");
    for d in &m.devices {
        all.extend(flows(node, &d.states[0].switch.as_ref().unwrap().flows));
    }
    all
}

/// The ports of `healthy`.
fn healthy_ports(node: &Node) -> BTreeMap<String, i64> {
    let m = &node.bundle().manifest;
    let mut ports = BTreeMap::from([(m.uplink.name.clone().unwrap(), i64::from(m.uplink.ofport))]);
    for d in &m.devices {
        ports.insert(
            d.net.as_ref().unwrap().port.clone(),
            i64::from(d.net.as_ref().unwrap().ofport),
        );
        for path in &d.states[0].switch.as_ref().unwrap().containers {
            for i in &node.bundle().containers[path].interfaces {
                ports.insert(i.port_name.clone(), i64::from(i.ofport));
            }
        }
    }
    ports
}

#[test]
fn a_node_as_the_bundle_wants_it_is_enforced_and_needs_nothing() {
    let node = node();
    let obs = healthy(&node);
    assert_eq!(verdicts(&node, &obs), vec![Ok(()), Ok(())]);
    assert_eq!(plan(&node, &obs), vec![]);
    // Flows in another order are the same flows.
    let mut reversed = healthy_flows(&node);
    reversed.reverse();
    let o = with_switch(&node, &obs, healthy_ports(&node), reversed);
    assert_eq!(verdicts(&node, &o), vec![Ok(()), Ok(())]);
}

#[test]
fn a_restarted_switch_with_no_flows_is_not_enforced_and_gets_every_set_back() {
    let node = node();
    let obs = healthy(&node);
    let o = with_switch(&node, &obs, healthy_ports(&node), Vec::new());
    for v in verdicts(&node, &o) {
        let why = v.unwrap_err();
        assert!(why.contains("the switch holds no base flows"), "{why}");
        assert!(why.contains("none of its flows for `normal`"), "{why}");
    }
    let p = plan(&node, &o);
    assert!(p.contains(&Action::ReplaceBase), "{p:?}");
    for d in 0..2 {
        assert!(
            p.contains(&Action::Install {
                device: d,
                target: NORMAL
            }),
            "{p:?}"
        );
    }
}

#[test]
fn base_flows_missing_alone_make_every_device_not_enforced() {
    // A reset of one device used to reinstall its own flows only.
    let node = node();
    let obs = healthy(&node);
    let m = &node.bundle().manifest;
    let mut f = Vec::new();
    for d in &m.devices {
        f.extend(flows(&node, &d.states[0].switch.as_ref().unwrap().flows));
    }
    let o = with_switch(&node, &obs, healthy_ports(&node), f);
    assert!(verdicts(&node, &o).iter().all(Result::is_err));
    assert_eq!(plan(&node, &o), vec![Action::ReplaceBase]);
}

#[test]
fn a_flow_of_an_unknown_cookie_makes_every_device_not_enforced_and_is_deleted() {
    let node = node();
    let obs = healthy(&node);
    let mut f = healthy_flows(&node);
    let bypass = parse_rule_set(
        "table=0,cookie=0x0f00000000000000,priority=200,in_port=2,ip actions=output:1\n",
    )
    .unwrap();
    f.extend(bypass);
    let o = with_switch(&node, &obs, healthy_ports(&node), f);
    for v in verdicts(&node, &o) {
        assert!(v
            .unwrap_err()
            .contains("unknown cookies (0xf00000000000000)"));
    }
    assert_eq!(
        plan(&node, &o),
        vec![Action::DeleteStrayFlows {
            cookie: 0x0f00_0000_0000_0000
        }]
    );
}

#[test]
fn a_device_holding_another_states_flows_is_not_enforced() {
    let node = node();
    let obs = healthy(&node);
    let m = &node.bundle().manifest;
    let mut f = flows(&node, "flows/base.ofctl");
    f.extend(flows(
        &node,
        &m.devices[0].states[3].switch.as_ref().unwrap().flows,
    )); // d0 in attack
    f.extend(flows(
        &node,
        &m.devices[1].states[0].switch.as_ref().unwrap().flows,
    ));
    let o = with_switch(&node, &obs, healthy_ports(&node), f);
    let v = verdicts(&node, &o);
    assert!(v[0].as_ref().unwrap_err().contains("not those of `normal`"));
    assert_eq!(v[1], Ok(()));
    // The same flows are exactly what d0 failed closed to `attack` holds (no µmbox).
    assert_eq!(node.check(&o, 0, Target::State(3)), Ok(()));
}

#[test]
fn a_killed_umbox_is_not_enforced_and_is_started_again_on_fresh_ports() {
    let node = node();
    let mut obs = healthy(&node);
    let name = "kalki-shimnode-d0-0-probe".to_string();
    let c = node
        .bundle()
        .containers
        .values()
        .find(|c| c.name == name)
        .unwrap()
        .clone();
    if let Ok(cs) = &mut obs.containers {
        cs.get_mut(&name).unwrap().running = false;
    }
    // Its veth went with its namespace: the port is still on the bridge, without its
    // interface (OpenFlow number -1).
    let mut ports = healthy_ports(&node);
    for i in &c.interfaces {
        ports.insert(i.port_name.clone(), -1);
    }
    let mut o = with_switch(&node, &obs, ports, healthy_flows(&node));
    // The switch also says those ports are down (their interfaces are gone).
    if let Ok(sw) = &mut o.switch {
        for i in &c.interfaces {
            sw.desc.insert(
                i.port_name.clone(),
                PortDesc {
                    config: vec!["PORT_DOWN".into()],
                    link_down: true,
                },
            );
        }
    }
    let v = verdicts(&node, &o);
    assert_eq!(
        v[0],
        Err(format!("µmbox `{name}` is not running")),
        "the chain is down"
    );
    assert_eq!(v[1], Ok(()));
    let p = plan(&node, &o);
    let path = node.bundle().manifest.devices[0].states[0]
        .switch
        .as_ref()
        .unwrap()
        .containers[0]
        .clone();
    assert!(
        p.contains(&Action::StartContainer { device: 0, path }),
        "{p:?}"
    );
    for i in &c.interfaces {
        assert!(
            p.contains(&Action::RemovePort {
                name: i.port_name.clone()
            }),
            "the dead port is removed first: {p:?}"
        );
        assert!(
            !p.contains(&Action::ResetPort {
                name: i.port_name.clone()
            }),
            "a port about to be replugged is not reset: {p:?}"
        );
    }
    // A container running but whose port lost its interface is not enforced either.
    let mut ports = healthy_ports(&node);
    ports.insert(c.interfaces[0].port_name.clone(), -1);
    let o = with_switch(&node, &healthy(&node), ports, healthy_flows(&node));
    let why = node.check(&o, 0, NORMAL).unwrap_err();
    assert!(why.contains("has lost its interface"), "{why}");
}

#[test]
fn a_deleted_port_is_not_enforced_and_added_again() {
    let node = node();
    let obs = healthy(&node);
    let mut ports = healthy_ports(&node);
    ports.remove("ktn-d1");
    let o = with_switch(&node, &obs, ports, healthy_flows(&node));
    let v = verdicts(&node, &o);
    assert_eq!(v[0], Ok(()));
    assert_eq!(
        v[1],
        Err("its port `ktn-d1` is not on the bridge".to_string())
    );
    assert_eq!(
        plan(&node, &o),
        vec![Action::AddPort {
            name: "ktn-d1".into(),
            ofport: node.bundle().manifest.devices[1]
                .net
                .as_ref()
                .unwrap()
                .ofport
        }]
    );
    // Its interface gone from the host too: nothing can be added, the rest is planned.
    let mut o2 = o.clone();
    if let Ok(i) = &mut o2.interfaces {
        i.remove("ktn-d1");
    }
    assert!(node.check(&o2, 1, NORMAL).is_err());
    assert_eq!(plan(&node, &o2), vec![]);
}

#[test]
fn the_nodes_own_stack_on_an_interface_is_not_enforced_and_turned_off() {
    let node = node();
    let mut obs = healthy(&node);
    obs.exposed
        .insert("ktn-up".into(), "ipv6 disable_ipv6=0".into());
    for v in verdicts(&node, &obs) {
        let why = v.unwrap_err();
        assert!(
            why.contains("the node's own stack is on `ktn-up` (ipv6 disable_ipv6=0)"),
            "{why}"
        );
    }
    assert_eq!(
        plan(&node, &obs),
        vec![Action::Isolate {
            name: "ktn-up".into()
        }]
    );
}

#[test]
fn an_unreadable_switch_or_engine_is_never_enforced() {
    let node = node();
    let mut obs = healthy(&node);
    obs.switch = Err("cannot connect".into());
    for v in verdicts(&node, &obs) {
        assert_eq!(v, Err("Open vSwitch cannot be read: cannot connect".into()));
    }
    assert!(node.plan_from(&obs, &[NORMAL, NORMAL]).is_err());

    let mut obs = healthy(&node);
    obs.containers = Err("engine down".into());
    for v in verdicts(&node, &obs) {
        assert_eq!(
            v,
            Err("the container engine cannot be read: engine down".into())
        );
    }
    // A state without µmboxes needs only the switch: d0 failed closed to `attack`.
    let m = &node.bundle().manifest;
    let mut f = flows(&node, "flows/base.ofctl");
    f.extend(flows(
        &node,
        &m.devices[0].states[3].switch.as_ref().unwrap().flows,
    ));
    f.extend(flows(
        &node,
        &m.devices[1].states[0].switch.as_ref().unwrap().flows,
    ));
    let o = with_switch(&node, &obs, healthy_ports(&node), f);
    assert_eq!(node.check(&o, 0, Target::State(3)), Ok(()));
    assert!(node.plan_from(&o, &[Target::State(3), NORMAL]).is_err());

    let mut obs = healthy(&node);
    obs.switch = Ok(node.switch_view(false, BTreeMap::new(), Vec::new()));
    let why = node.check(&obs, 0, NORMAL).unwrap_err();
    assert_eq!(why, "the bridge `kt-node` does not exist");
    assert_eq!(plan(&node, &obs)[0], Action::CreateBridge);
}

#[test]
fn no_flows_is_enforced_only_when_the_switch_holds_none_of_the_device() {
    let node = node();
    let obs = healthy(&node);
    let m = &node.bundle().manifest;
    let mut f = flows(&node, "flows/base.ofctl");
    f.extend(flows(
        &node,
        &m.devices[1].states[0].switch.as_ref().unwrap().flows,
    ));
    let o = with_switch(&node, &obs, healthy_ports(&node), f);
    assert_eq!(node.check(&o, 0, Target::NoFlows), Ok(()));
    assert!(node.check(&o, 0, NORMAL).is_err());
    assert_eq!(
        node.check(&obs, 0, Target::NoFlows),
        Err("the switch still holds flows for it".into())
    );
    // d0's µmboxes are not needed by no flows: the repair stops them.
    let p = node
        .plan_from(&o, &[Target::NoFlows, NORMAL])
        .unwrap()
        .actions;
    assert!(
        p.iter().any(
            |a| matches!(a, Action::StopContainer { name, .. } if name == "kalki-shimnode-d0-0-probe")
        ),
        "{p:?}"
    );
}

#[test]
fn a_fail_open_bridge_a_controller_or_a_mirror_is_not_enforced_and_secured() {
    let node = node();
    for leak in [
        "fail_mode is `standalone`, not `secure`",
        "a controller is set",
        "a port mirror is set",
    ] {
        let mut obs = healthy(&node);
        if let Ok(sw) = &mut obs.switch {
            sw.leaks = vec![leak.to_string()];
        }
        for v in verdicts(&node, &obs) {
            let why = v.unwrap_err();
            assert!(
                why.contains("the bridge lets traffic around its flows"),
                "{why}"
            );
            assert!(why.contains(leak), "{why}");
        }
        assert_eq!(plan(&node, &obs), vec![Action::SecureBridge]);
    }
}

#[test]
fn another_devices_flows_that_are_none_of_its_sets_make_every_device_not_enforced() {
    // A flow under d1's own cookie that steers d0's packets: d1's set is none of its
    // rule sets, and d0 is judged not enforced too (its packets may meet that flow).
    let node = node();
    let obs = healthy(&node);
    let m = &node.bundle().manifest;
    let cookie = m.devices[1].states[0].switch.as_ref().unwrap().cookie.0;
    let mut f = healthy_flows(&node);
    f.extend(
        parse_rule_set(&format!(
            "table=0,cookie={cookie:#x},priority=2000,in_port={},actions=output:1\n",
            m.devices[0].net.as_ref().unwrap().ofport
        ))
        .unwrap(),
    );
    let o = with_switch(&node, &obs, healthy_ports(&node), f);
    let v = verdicts(&node, &o);
    assert!(
        v[0].as_ref()
            .unwrap_err()
            .contains("the switch holds flows of `d1` that are none of its rule sets"),
        "{v:?}"
    );
    assert!(v[1].as_ref().unwrap_err().contains("not those of `normal`"));
    // d1 holding another of its own sets is no threat to d0.
    let mut f = flows(&node, "flows/base.ofctl");
    f.extend(flows(
        &node,
        &m.devices[0].states[0].switch.as_ref().unwrap().flows,
    ));
    f.extend(flows(
        &node,
        &m.devices[1].states[3].switch.as_ref().unwrap().flows,
    ));
    let o = with_switch(&node, &obs, healthy_ports(&node), f);
    assert_eq!(node.check(&o, 0, NORMAL), Ok(()));
}

#[test]
fn a_port_set_down_or_not_forwarding_is_not_enforced_and_reset() {
    let node = node();
    let c = node
        .bundle()
        .containers
        .values()
        .find(|c| c.name == "kalki-shimnode-d0-0-probe")
        .unwrap()
        .clone();
    let umbox_port = c.interfaces[0].port_name.clone();
    for (name, config) in [("ktn-d0", "NO_FWD"), (umbox_port.as_str(), "PORT_DOWN")] {
        let mut obs = healthy(&node);
        if let Ok(sw) = &mut obs.switch {
            sw.desc.insert(
                name.to_string(),
                PortDesc {
                    config: vec![config.to_string()],
                    link_down: false,
                },
            );
        }
        let why = node.check(&obs, 0, NORMAL).unwrap_err();
        assert!(why.contains(&format!("`{name}` is set {config}")), "{why}");
        assert_eq!(
            plan(&node, &obs),
            vec![Action::ResetPort {
                name: name.to_string()
            }]
        );
    }
    // A µmbox port whose link is down breaks the chain: restarted. A device port whose
    // link is down is the device unplugged: still enforced.
    let mut obs = healthy(&node);
    if let Ok(sw) = &mut obs.switch {
        for name in [umbox_port.as_str(), "ktn-d1"] {
            sw.desc.insert(
                name.to_string(),
                PortDesc {
                    config: vec![],
                    link_down: true,
                },
            );
        }
    }
    let why = node.check(&obs, 0, NORMAL).unwrap_err();
    assert!(why.contains("has its link down"), "{why}");
    assert_eq!(node.check(&obs, 1, NORMAL), Ok(()));
    let p = plan(&node, &obs);
    assert!(
        p.iter()
            .any(|a| matches!(a, Action::StartContainer { device: 0, .. })),
        "{p:?}"
    );
}

#[test]
fn a_kernel_hook_on_a_port_is_not_enforced_and_taken_off() {
    let node = node();
    let mut obs = healthy(&node);
    obs.hooked
        .insert("ktn-d0".into(), "an `ingress` qdisc".into());
    let why = node.check(&obs, 0, NORMAL).unwrap_err();
    assert!(
        why.contains("`ktn-d0` has an `ingress` qdisc, which can move frames around the switch"),
        "{why}"
    );
    assert_eq!(node.check(&obs, 1, NORMAL), Ok(()));
    assert_eq!(
        plan(&node, &obs),
        vec![Action::Unhook {
            name: "ktn-d0".into()
        }]
    );
}

#[test]
fn a_port_whose_interface_is_gone_is_not_enforced() {
    // OVS keeps the port and its number after `ip link del`; the host has no interface.
    let node = node();
    let mut obs = healthy(&node);
    if let Ok(i) = &mut obs.interfaces {
        i.remove("ktn-d0");
    }
    let why = node.check(&obs, 0, NORMAL).unwrap_err();
    assert_eq!(why, "its port `ktn-d0` has lost its interface");
}

/// The fixture's states, by index: normal 0 < suspicious 1 < broken 2 < attack 3.
#[test]
fn successors_are_the_states_one_step_away_escalations_first() {
    let b = bundle();
    let m = &b.manifest;
    // normal -> suspicious (port_scan, level); suspicious -> broken (fault);
    // broken -> attack (port_scan) and -> normal (reset); attack -> normal (reset).
    assert_eq!(m.successors(0, 0), vec![1]);
    assert_eq!(m.successors(0, 1), vec![2]);
    assert_eq!(m.successors(0, 2), vec![3, 0]);
    assert_eq!(m.successors(0, 3), vec![0]);
    assert_eq!(m.successors(9, 0), Vec::<usize>::new(), "no such device");
}

fn warm_node(warm: usize) -> Node {
    let docker = docker::Engine::lazy("/nonexistent/docker.sock", Duration::from_secs(1));
    Node::new(
        bundle(),
        kalki_shim::containers::Containers::Docker(docker),
        NodeConfig {
            warm,
            ..NodeConfig::default()
        },
    )
    .unwrap()
}

/// With `--warm`, the µmboxes of each device's next state are planned too, within the
/// budget, one device's nearest escalation as soon as the other's; none that a target
/// already uses; never in place of a device's own posture. Without it, none.
#[test]
fn next_states_umboxes_are_kept_started_within_the_budget() {
    let warm = |n: usize| -> Vec<String> {
        let node = warm_node(n);
        let obs = healthy(&node);
        node.plan_from(&obs, &[NORMAL, NORMAL])
            .unwrap()
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::StartWarm { path, .. } => Some(path.clone()),
                Action::StartContainer { .. } => panic!("a device's own µmbox restarted: {a:?}"),
                _ => None,
            })
            .collect()
    };
    assert!(warm(0).is_empty());
    // `suspicious` = [probe(tag = 1), probe_tap, probe(tag = 2)]; probe(tag = 1) runs.
    assert_eq!(
        warm(8),
        [
            "containers/d0/1-probe_tap.json",
            "containers/d0/2-probe.json",
            "containers/d1/1-probe_tap.json",
            "containers/d1/2-probe.json"
        ]
    );
    assert_eq!(warm(1), ["containers/d0/1-probe_tap.json"]);
    // A warm µmbox that runs is kept, not stopped; one beyond the budget is stopped.
    let node = warm_node(1);
    let mut obs = healthy(&node);
    for path in [
        "containers/d0/1-probe_tap.json",
        "containers/d1/1-probe_tap.json",
    ] {
        let r = running(&node, path);
        obs.containers.as_mut().unwrap().insert(r.name.clone(), r);
    }
    let actions = node.plan_from(&obs, &[NORMAL, NORMAL]).unwrap().actions;
    let stops: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::StopContainer { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(stops, ["kalki-shimnode-d1-1-probe_tap"], "{actions:?}");
}
