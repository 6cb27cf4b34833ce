//! Sites on several nodes (`docs/language.md` §7.6, `docs/bundle.md`): a node's
//! sub-bundle is the bundle of the site's projection onto it, so a site whose devices all
//! sit on one node gets, under `nodes/ONLY/`, the rule sets and µmboxes of the same site
//! on one bridge (the projection drops nothing a device's flows need); ports are numbered
//! per node, each sub-bundle holds its devices only, the whole site's bundle lists and
//! digests every file under `nodes/`, and a site too large for one bridge fits on nodes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::MemLoader;
use kalki_compiler::codegen::bundle::{self, Bundle};
use kalki_compiler::verify::{self, z3::Z3Solver};
use kalki_model::bundle::{load, load_node, one_node, NotOneNode};
use kalki_model::manifest::{Container, Manifest, PortRole};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The verified bundle of the one site of `src`.
fn build(src: &str) -> Bundle {
    let loader = MemLoader::new([("site.kalki", src.to_string())]);
    let solver = Z3Solver::new(10_000);
    let (checked, verified) = kalki_compiler::verify(
        &[PathBuf::from("site.kalki")],
        &loader,
        &solver,
        &verify::Options::default(),
    );
    assert!(
        checked.diagnostics.iter().all(|d| !d.is_error()),
        "{:#?}",
        checked.diagnostics
    );
    assert!(verified.is_some());
    let model = checked.model.as_ref().unwrap();
    bundle::build(model, &model.sites[0], &checked.sources, &solver).unwrap()
}

fn manifest(b: &Bundle, path: &str) -> Manifest {
    serde_json::from_slice(&b.files[path]).unwrap()
}

/// Smart-office's policy with its site on one node, `only`, declared in place of its
/// bridge line, every device attached to it.
fn smart_office_on_one_node() -> (String, String) {
    let src =
        std::fs::read_to_string(common::repo_root().join("examples/smart-office/office.kalki"))
            .unwrap();
    let mut out = String::new();
    for line in src.lines() {
        if line.trim() == "bridge \"br0\" uplink \"eth0\"" {
            out.push_str("    node only { bridge \"br0\" uplink \"eth0\" }\n");
        } else if line.starts_with("    device ") {
            // A device's line ends with its attributes (or a comment after them).
            let (decl, comment) = match line.split_once("  //") {
                Some((d, c)) => (d.trim_end(), format!("  //{c}")),
                None => (line, String::new()),
            };
            out.push_str(&format!("{decl} node only{comment}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        out.contains("node only {"),
        "the site's bridge line was not found"
    );
    (src, out)
}

/// Container manifests with what names the policy or the node replaced by placeholders:
/// the policy's digest (its sources differ) and the tag in µmbox port names.
fn normalized(bytes: &[u8], policy: &str, tag: &str, scope: &str) -> serde_json::Value {
    let text = String::from_utf8(bytes.to_vec())
        .unwrap()
        .replace(policy, "POLICY")
        .replace(&format!("\"k{tag}p"), "\"kTAGp")
        .replace(
            &format!("\"kalki.site\": \"{scope}\""),
            "\"kalki.site\": \"SCOPE\"",
        )
        .replace(
            &format!("\"kalki.site\":\"{scope}\""),
            "\"kalki.site\":\"SCOPE\"",
        );
    // A container manifest of the model's type, compared as its JSON.
    let c: Container = serde_json::from_str(&text).unwrap();
    serde_json::to_value(c).unwrap()
}

fn tag_of(m: &Manifest) -> String {
    m.ports
        .iter()
        .find_map(|p| match p.role {
            PortRole::Umbox { .. } => Some(p.name[1..5].to_string()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_one_node_projection_is_the_site_on_one_bridge() {
    let (one_bridge, one_node) = smart_office_on_one_node();
    let a = build(&one_bridge);
    let b = build(&one_node);
    let ma = manifest(&a, "manifest.json");
    let mb = manifest(&b, "manifest.json");
    let sub = manifest(&b, "nodes/only/manifest.json");
    let (ta, tb) = (tag_of(&ma), tag_of(&sub));
    let mut compared = 0;
    for (path, bytes) in &a.files {
        if path == "manifest.json" {
            continue;
        }
        let other = b
            .files
            .get(&format!("nodes/only/{path}"))
            .unwrap_or_else(|| panic!("nodes/only/{path} is missing"));
        if path.ends_with(".ofctl") {
            assert_eq!(bytes, other, "{path}: the rule sets differ");
        } else {
            // The µmboxes' `kalki.site` label is the node's scope (`office/only`), so
            // that two nodes' agents on one engine keep to their own.
            assert_eq!(
                normalized(bytes, &ma.policy_sha256, &ta, &ma.container_scope()),
                normalized(other, &mb.policy_sha256, &tb, &sub.container_scope()),
                "{path}: the container manifests differ"
            );
        }
        compared += 1;
    }
    assert!(compared > 20, "{compared}");
    // Nothing more under the node than the one-bridge bundle has, and its manifest says
    // the same of every device.
    assert_eq!(
        b.files
            .keys()
            .filter(|p| p.starts_with("nodes/only/"))
            .count(),
        a.files.len()
    );
    assert_eq!(sub.bridge, ma.bridge);
    assert_eq!(sub.uplink, ma.uplink);
    assert_eq!(
        serde_json::to_value(&sub.devices).unwrap(),
        serde_json::to_value(&ma.devices).unwrap()
    );
    assert!(sub.rules.is_empty(), "the rules are the controller's");
    assert_eq!(mb.rules.len(), ma.rules.len());
    // The one-bridge bundle says nothing of nodes.
    let text = String::from_utf8(a.files["manifest.json"].clone()).unwrap();
    assert!(!text.contains("\"nodes\"") && !text.contains("\"node\"") && !text.contains("part_of"));
}

const THREE_NODES: &str = r#"
import std::devices::{Camera, Light, SmartLock}

site campus {
    node east { bridge "br-east" uplink "eth1" }
    node west { bridge "br-west" uplink "eth1" }
    node lab  { bridge "br-lab" }

    device lock: SmartLock at 10.0.0.1 port "p0" node east trusted
    device cam1: Camera    at 10.0.0.2 port "p0" node west
    device lamp: Light     at 10.0.0.3 port "p1" node east
    device cam2: Camera    at 10.0.0.4 port "p0" node lab
    device cam3: Camera    at 10.0.0.5 port "p1" node west

    rule across on lock in suspicious then escalate cam2 to suspicious, lamp.turn_on
}
"#;

#[test]
fn each_node_gets_its_devices_numbered_on_its_bridge() {
    let b = build(THREE_NODES);
    let site = manifest(&b, "manifest.json");
    let expect = [
        ("east", "br-east", vec!["lock", "lamp"]),
        ("west", "br-west", vec!["cam1", "cam3"]),
        ("lab", "br-lab", vec!["cam2"]),
    ];
    assert_eq!(site.nodes.len(), 3);
    assert!(site.ports.is_empty() && site.bridge.is_empty());
    for ((name, bridge, devices), n) in expect.iter().zip(&site.nodes) {
        assert_eq!((n.name.as_str(), n.bridge.as_str()), (*name, *bridge));
        assert_eq!(&n.devices, devices);
        let sub = manifest(&b, &n.manifest);
        assert_eq!(sub.bridge, *bridge);
        assert_eq!(sub.uplink, n.uplink);
        let part = sub.part_of.as_ref().unwrap();
        assert_eq!((part.site.as_str(), part.node.as_str()), ("campus", *name));
        let names: Vec<&str> = sub.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(&names, devices, "{name} holds its devices only");
        // Device ports from 2 on this node's bridge, in site order; then its µmboxes'.
        let ofports: Vec<u32> = sub
            .devices
            .iter()
            .map(|d| d.net.as_ref().unwrap().ofport)
            .collect();
        assert_eq!(
            ofports,
            (2..2 + devices.len() as u32).collect::<Vec<_>>(),
            "{name}"
        );
        let highest = sub.ports.iter().map(|p| p.ofport).max().unwrap();
        assert_eq!(
            highest as usize,
            sub.ports.len(),
            "{name}: numbered 1..N without gaps"
        );
        // Files only of its own devices.
        for path in b
            .files
            .keys()
            .filter(|p| p.starts_with(&format!("nodes/{name}/")))
        {
            let rest = &path[format!("nodes/{name}/").len()..];
            if let Some(dev) = rest.strip_prefix("flows/").and_then(|r| r.split_once('/')) {
                assert!(devices.contains(&dev.0), "{path}");
            }
            if let Some(dev) = rest
                .strip_prefix("containers/")
                .and_then(|r| r.split_once('/'))
            {
                assert!(devices.contains(&dev.0), "{path}");
            }
        }
        // The site's entry for each device is its node's, paths under the node.
        for d in &sub.devices {
            let whole = site.devices.iter().find(|x| x.name == d.name).unwrap();
            assert_eq!(whole.node.as_deref(), Some(*name));
            assert_eq!(
                serde_json::to_value(&whole.net).unwrap(),
                serde_json::to_value(&d.net).unwrap()
            );
            for (ws, ds) in whole.states.iter().zip(&d.states) {
                let (ws, ds) = (ws.switch.as_ref().unwrap(), ds.switch.as_ref().unwrap());
                assert_eq!(ws.flows, format!("nodes/{name}/{}", ds.flows));
                assert_eq!(ws.cookie, ds.cookie);
            }
        }
    }
    // The site's devices in site order, its rules whole.
    let names: Vec<&str> = site.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["lock", "cam1", "lamp", "cam2", "cam3"]);
    assert_eq!(site.rules.len(), 1);
}

#[test]
fn the_site_bundle_loads_and_covers_every_node_file() {
    let b = build(THREE_NODES);
    let site = load(&b.files).unwrap();
    assert!(
        matches!(one_node(&site), Err(NotOneNode::Spans { nodes, .. }) if nodes == ["east", "west", "lab"])
    );
    let listed: Vec<&str> = site
        .manifest
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    for path in b.files.keys().filter(|p| *p != "manifest.json") {
        assert!(
            listed.contains(&path.as_str()),
            "{path} is not digested by the site"
        );
    }
    for node in ["east", "west", "lab"] {
        let (_, part) = load_node(&b.files, node).unwrap();
        assert!(matches!(one_node(&part), Err(NotOneNode::PartOf { node: n, .. }) if n == node));
    }
    assert!(load_node(&b.files, "north").is_err());
    // Tampering with any file of a node, its manifest too, is caught by the site.
    for path in [
        "nodes/west/manifest.json",
        "nodes/lab/flows/cam2/normal.ofctl",
    ] {
        let mut files = b.files.clone();
        files.get_mut(path).unwrap().push(b'\n');
        let errors = load(&files).unwrap_err();
        assert!(
            errors.iter().any(|e| e.code() == "S005"),
            "{path}: {errors:?}"
        );
        assert!(load_node(&files, "west").is_err() || path.contains("lab"));
    }
}

/// 70,000 devices: more ports than one bridge has (K214), but on two nodes each stays
/// within Open vSwitch's limit.
#[test]
fn a_site_too_large_for_one_bridge_fits_on_nodes() {
    let site = |nodes: bool| {
        let mut src = String::from(
            "device type Box {\n    states calm < off\n    initial calm\n    calm { chain [pass] }\n    off { chain [drop] }\n    calm -> off on operator reset\n    off -> calm on operator reset\n}\nsite big {\n",
        );
        if nodes {
            src.push_str("    node a { bridge \"br-a\" uplink \"up\" }\n    node b { bridge \"br-b\" uplink \"up\" }\n");
            src.push_str("    device x[1..35000]: Box at 10.1.0.1.. port \"x{n}\" node a\n");
            src.push_str("    device y[1..35000]: Box at 10.2.0.1.. port \"y{n}\" node b\n");
        } else {
            src.push_str("    bridge \"br0\" uplink \"up\"\n");
            src.push_str("    device x[1..35000]: Box at 10.1.0.1.. port \"x{n}\"\n");
            src.push_str("    device y[1..35000]: Box at 10.2.0.1.. port \"y{n}\"\n");
        }
        src.push_str("}\n");
        let loader = MemLoader::new([("big.kalki", src)]);
        let checked = kalki_compiler::check(&[PathBuf::from("big.kalki")], &loader);
        assert!(
            checked.diagnostics.iter().all(|d| !d.is_error()),
            "{:?}",
            checked.diagnostics.first()
        );
        let model = checked.model.unwrap();
        bundle::unproved(&model, &model.sites[0], &checked.sources)
    };
    let errors = site(false).unwrap_err();
    assert_eq!(errors[0].code, "K214");
    let b = site(true).unwrap();
    for node in ["a", "b"] {
        let sub: Manifest =
            serde_json::from_slice(&b.files[&format!("nodes/{node}/manifest.json")]).unwrap();
        assert_eq!(sub.devices.len(), 35_000);
        assert_eq!(sub.ports.iter().map(|p| p.ofport).max(), Some(35_001));
    }
    let files: BTreeMap<String, Vec<u8>> = b.files;
    assert_eq!(load(&files).unwrap().manifest.devices.len(), 70_000);
}
