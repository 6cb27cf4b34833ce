//! The bundle (`kalkic build`): byte-identical rebuilds, a snapshot of the example's rule
//! sets and manifest, digests that match the files, JSON files that are the model's types
//! (read back unchanged, accepted by the committed schemas), and the binary's refusals (a
//! policy with errors, a destination that holds something else) leaving nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{code, kalkic, repo_root, FsLoader, TempDir};
use kalki_compiler::codegen::bundle::{self, Bundle};
use kalki_compiler::verify::{self, z3::Z3Solver};
use std::path::PathBuf;

fn build(dir: &str) -> Bundle {
    let loader = FsLoader { base: repo_root() };
    let files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .map(|e| PathBuf::from(dir).join(e.unwrap().file_name()))
        .filter(|p| p.extension().is_some_and(|x| x == "kalki"))
        .collect();
    let opts = verify::Options::default();
    let solver = Z3Solver::new(10_000);
    let (checked, verified) = kalki_compiler::verify(&files, &loader, &solver, &opts);
    assert!(
        checked.diagnostics.iter().all(|d| !d.is_error()),
        "{:#?}",
        checked.diagnostics
    );
    assert!(verified.is_some());
    let model = checked.model.as_ref().unwrap();
    bundle::build(model, &model.sites[0], &checked.sources, &solver).unwrap()
}

/// `kalkic build --color never POLICY -o OUT`.
fn build_cli(policy: &str, out: &str) -> std::process::Output {
    kalkic(&["build", "--color", "never", policy, "-o", out])
}

#[test]
fn building_twice_gives_identical_bytes() {
    for dir in ["examples/smart-office", "examples/kalki-lab-corrected"] {
        assert_eq!(build(dir), build(dir), "{dir}");
    }
}

/// A site large enough that the bundle is generated and written on several threads:
/// still the same bytes every time.
#[test]
fn a_large_site_builds_to_the_same_bytes_every_time() {
    let mut src = String::from(
        "umbox watch {\n    image \"kalki/umbox:0.1\"\n    args [\"sniffer\", \"{n}\"]\n    param n: int in 0..9 = 0\n    mode tap\n}\n\
         device type Box {\n    alerts port_scan\n    states calm < hot\n    initial calm\n\
         calm { chain [watch(n = 1)] }\n    hot { chain [watch(n = 1), watch(n = 2)] }\n\
         calm -> hot on port_scan\n    hot -> calm on operator reset\n}\n\
         site big {\n    bridge \"br0\" uplink \"up0\"\n",
    );
    for i in 0..300 {
        src.push_str(&format!(
            "    device d{i}: Box at 10.9.{}.{} port \"p{i}\"\n",
            i / 200,
            i % 200 + 1
        ));
    }
    src.push_str("}\n");
    let once = || {
        let loader = common::MemLoader::new([("big.kalki", src.clone())]);
        let solver = Z3Solver::new(10_000);
        let (checked, _) = kalki_compiler::verify(
            &[PathBuf::from("big.kalki")],
            &loader,
            &solver,
            &verify::Options::default(),
        );
        let model = checked.model.as_ref().unwrap();
        bundle::build(model, &model.sites[0], &checked.sources, &solver).unwrap()
    };
    let (a, b) = (once(), once());
    assert_eq!(a.files.len(), 1 + 1 + 300 * 2 + 300 * 2);
    assert_eq!(a, b);
    let tmp = TempDir::new("big");
    let (x, y) = (tmp.path().join("x"), tmp.path().join("y"));
    a.write_to(&x).unwrap();
    b.write_to(&y).unwrap();
    for (path, bytes) in &a.files {
        assert_eq!(&std::fs::read(x.join(path)).unwrap(), bytes, "{path}");
        assert_eq!(&std::fs::read(y.join(path)).unwrap(), bytes, "{path}");
    }
}

#[test]
fn smart_office_bundle() {
    let b = build("examples/smart-office");
    let mut listing = String::new();
    for (path, bytes) in &b.files {
        listing.push_str(&format!("{path} ({} bytes)\n", bytes.len()));
    }
    let text = |p: &str| String::from_utf8(b.files[p].clone()).unwrap();
    insta::with_settings!({ snapshot_path => "snapshots/bundle", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("smart-office-files", listing);
        insta::assert_snapshot!("smart-office-base", text("flows/base.ofctl"));
        insta::assert_snapshot!("smart-office-hall_cam-normal", text("flows/hall_cam/normal.ofctl"));
        insta::assert_snapshot!("smart-office-hall_cam-suspicious", text("flows/hall_cam/suspicious.ofctl"));
        insta::assert_snapshot!("smart-office-hall_cam-attack", text("flows/hall_cam/attack.ofctl"));
        insta::assert_snapshot!(
            "smart-office-container",
            text("containers/hall_cam/2-ids.json")
        );
    });
}

#[test]
fn manifest_digests_match_the_files() {
    use sha2::{Digest, Sha256};
    let b = build("examples/smart-office");
    let manifest: serde_json::Value = serde_json::from_slice(&b.files["manifest.json"]).unwrap();
    let listed = manifest["files"].as_array().unwrap();
    assert_eq!(
        listed.len(),
        b.files.len() - 1,
        "every file but the manifest is listed"
    );
    for f in listed {
        let path = f["path"].as_str().unwrap();
        let want: String = Sha256::digest(&b.files[path])
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        assert_eq!(f["sha256"], want.as_str(), "{path}");
    }
    // Every device state names its rule set and containers, and they exist.
    for d in manifest["devices"].as_array().unwrap() {
        for s in d["states"].as_array().unwrap() {
            assert!(b.files.contains_key(s["switch"]["flows"].as_str().unwrap()));
            for c in s["switch"]["containers"].as_array().unwrap() {
                assert!(b.files.contains_key(c.as_str().unwrap()));
            }
        }
    }
}

/// States of a device share a µmbox instance when its µmbox and arguments are the same;
/// two equal entries of one chain are two instances.
#[test]
fn states_share_equal_umbox_instances() {
    let b = build("examples/smart-office");
    let manifest: serde_json::Value = serde_json::from_slice(&b.files["manifest.json"]).unwrap();
    let containers = |device: &str, state: &str| -> Vec<String> {
        let d = manifest["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == device)
            .unwrap();
        let s = d["states"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == state)
            .unwrap();
        s["switch"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    // normal [sniffer, anti_dos], suspicious [sniffer, anti_dos, ids, auth_proxy_block]
    let normal = containers("hall_cam", "normal");
    let suspicious = containers("hall_cam", "suspicious");
    assert_eq!(normal.len(), 2);
    assert_eq!(suspicious.len(), 4);
    assert_eq!(normal[..], suspicious[..2]);
    let c: serde_json::Value = serde_json::from_slice(&b.files[&normal[0]]).unwrap();
    assert_eq!(c["states"], serde_json::json!(["normal", "suspicious"]));
    assert_eq!(c["labels"]["kalki.states"], "normal,suspicious");
    // Instances are never shared across devices.
    let thermo = containers("thermo", "normal");
    assert!(thermo.iter().all(|c| c.starts_with("containers/thermo/")));

    let tmp = TempDir::new("share");
    let out = tmp.path().join("b");
    let policy = repo_root().join("compiler/tests/fixtures/ovs/open-lab.kalki");
    let lab = build_cli(policy.to_str().unwrap(), out.to_str().unwrap());
    assert_eq!(code(&lab), 0, "{}", String::from_utf8_lossy(&lab.stderr));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    // filtered [relay, ids, relay]
    let filtered = &m["devices"][0]["states"][2];
    assert_eq!(filtered["name"], "filtered");
    assert_eq!(
        filtered["switch"]["containers"],
        serde_json::json!([
            "containers/kettle/1-relay.json",
            "containers/kettle/2-ids.json",
            "containers/kettle/3-relay.json"
        ])
    );
}

#[test]
fn every_state_set_carries_only_its_own_cookie() {
    let b = build("examples/smart-office");
    let manifest: serde_json::Value = serde_json::from_slice(&b.files["manifest.json"]).unwrap();
    for d in manifest["devices"].as_array().unwrap() {
        for s in d["states"].as_array().unwrap() {
            let cookie = s["switch"]["cookie"].as_str().unwrap();
            let flows =
                String::from_utf8(b.files[s["switch"]["flows"].as_str().unwrap()].clone()).unwrap();
            for line in flows.lines() {
                assert!(line.contains(&format!("cookie={cookie},")), "{line}");
                assert!(
                    line.starts_with("table=1,"),
                    "state sets live in table 1: {line}"
                );
            }
        }
    }
}

#[test]
fn build_writes_a_bundle_and_replaces_an_earlier_one() {
    let tmp = TempDir::new("bundle-ok");
    let dir = tmp.path();
    let out = dir.join("out");
    let o = build_cli("examples/smart-office", out.to_str().unwrap());
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let first = std::fs::read(out.join("manifest.json")).unwrap();
    let o = build_cli("examples/smart-office", out.to_str().unwrap());
    assert_eq!(code(&o), 0);
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), first);
    // No staging directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn build_refuses_a_policy_with_errors_and_writes_nothing() {
    let tmp = TempDir::new("bundle-errors");
    let dir = tmp.path();
    let out = dir.join("out");
    let o = build_cli("examples/kalki-lab", out.to_str().unwrap());
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no bundle written"));
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
}

#[test]
fn build_refuses_to_overwrite_what_is_not_a_bundle() {
    let tmp = TempDir::new("bundle-foreign");
    let dir = tmp.path();
    std::fs::write(dir.join("precious.txt"), "keep me").unwrap();
    let o = build_cli("examples/smart-office", dir.to_str().unwrap());
    assert_eq!(code(&o), 2);
    assert_eq!(
        std::fs::read_to_string(dir.join("precious.txt")).unwrap(),
        "keep me"
    );
}

/// The bundle's JSON files are the model's types (`kalki_model::manifest`) in their
/// canonical form: each reads back into them and writes out to the very same bytes, so
/// nothing the compiler writes is lost on the shim's side.
#[test]
fn manifests_read_back_into_the_model_types_unchanged() {
    use kalki_model::manifest::{to_json, Container, Manifest};
    for dir in ["examples/smart-office", "examples/kalki-lab-corrected"] {
        let b = build(dir);
        let bytes = &b.files["manifest.json"];
        let manifest: Manifest = serde_json::from_slice(bytes).unwrap();
        assert_eq!(&to_json(&manifest), bytes, "{dir}: manifest.json");
        let mut containers = 0;
        for (path, bytes) in b.files.iter().filter(|(p, _)| p.starts_with("containers/")) {
            let c: Container = serde_json::from_slice(bytes).unwrap();
            assert_eq!(&to_json(&c), bytes, "{dir}: {path}");
            containers += 1;
        }
        assert!(containers > 0, "{dir}");
    }
}

/// The committed JSON Schemas (`docs/schema/`, generated from the model's types) accept
/// what `kalkic build` writes.
#[test]
fn bundles_satisfy_the_committed_schemas() {
    let schema = |name: &str| {
        let text = std::fs::read_to_string(repo_root().join("docs/schema").join(name)).unwrap();
        let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    };
    let (manifest, container) = (
        schema("manifest.schema.json"),
        schema("container.schema.json"),
    );
    for dir in ["examples/smart-office", "examples/kalki-lab-corrected"] {
        for (path, bytes) in &build(dir).files {
            let validator = match path.as_str() {
                "manifest.json" => &manifest,
                p if p.starts_with("containers/") => &container,
                _ => continue,
            };
            let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{dir}: {path}: {errors:#?}");
        }
    }
    // And they are not vacuous: a cookie written as a number is refused.
    let mut bad: serde_json::Value =
        serde_json::from_slice(&build("examples/smart-office").files["manifest.json"]).unwrap();
    bad["cookies"]["base"] = serde_json::json!(1);
    assert!(!manifest.is_valid(&bad));
}

/// What `kalkic build` makes passes the model's loader, the very checks the shim runs
/// (format, digests, paths, consistency with exact integer ranges), before it is written.
#[test]
fn bundles_pass_the_model_loader() {
    for dir in ["examples/smart-office", "examples/kalki-lab-corrected"] {
        let b = build(dir);
        let loaded =
            kalki_model::bundle::load(&b.files).unwrap_or_else(|e| panic!("{dir}: {e:#?}"));
        assert_eq!(
            loaded.manifest_sha256,
            kalki_model::bundle::sha256_hex(&b.files["manifest.json"]),
            "{dir}"
        );
        assert!(!loaded.containers.is_empty(), "{dir}");
    }
}

/// A device off the switch (a contact behind a hub, its type without chains): in the
/// manifest, `net` and every state's `switch` are `null`, and it has no port, rule set,
/// container or base flow; the device on the switch beside it keeps all of its own (the
/// first port after the uplink, its cookie by its site index). The bundle passes the
/// model's loader.
#[test]
fn a_device_off_the_switch_gets_nothing_on_the_switch() {
    use kalki_model::manifest::{Manifest, PortRole};
    let path = "tests/fixtures/check/clean/off_switch_devices.kalki";
    let src = std::fs::read_to_string(repo_root().join(path)).unwrap();
    let loader = common::MemLoader::new([("hub.kalki", src)]);
    let solver = Z3Solver::new(10_000);
    let (checked, verified) = kalki_compiler::verify(
        &[PathBuf::from("hub.kalki")],
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
    let b = bundle::build(model, &model.sites[0], &checked.sources, &solver).unwrap();

    let text = String::from_utf8(b.files["manifest.json"].clone()).unwrap();
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(raw["format"], 2);
    let door = &raw["devices"][0];
    assert_eq!(door["name"], "door");
    // Written out, not left out: a reader sees the absence.
    assert!(door.as_object().unwrap().contains_key("net"));
    assert_eq!(door["net"], serde_json::Value::Null);
    for s in door["states"].as_array().unwrap() {
        assert_eq!(s["switch"], serde_json::Value::Null, "{s}");
        assert!(s.get("cookie").is_none() && s.get("flows").is_none(), "{s}");
    }

    let m: Manifest = serde_json::from_str(&text).unwrap();
    assert!(
        b.files.keys().all(|p| !p.contains("/door/")),
        "files for the door: {:?}",
        b.files.keys().collect::<Vec<_>>()
    );
    assert!(m.ports.iter().all(|p| match &p.role {
        PortRole::Device { device } | PortRole::Umbox { device, .. } => device != "door",
        PortRole::Uplink => true,
    }));
    let cam = &m.devices[1];
    let net = cam.net.as_ref().unwrap();
    assert_eq!(
        (net.ip.as_str(), net.port.as_str(), net.ofport),
        ("10.0.1.10", "cam0", 2)
    );
    for (si, s) in cam.states.iter().enumerate() {
        let p = s.switch.as_ref().unwrap();
        // Device bits: its site index (1) plus one; state bits: its state index.
        assert_eq!(p.cookie.0, (2 << 56) | (2 << 16) | si as u64, "{}", s.name);
        assert!(b.files.contains_key(&p.flows));
    }
    // The base set classifies the camera's traffic only: one address, one device port.
    let base = String::from_utf8(b.files["flows/base.ofctl"].clone()).unwrap();
    let addresses: std::collections::BTreeSet<&str> = base
        .split([',', ' '])
        .filter_map(|w| {
            w.strip_prefix("nw_src=")
                .or_else(|| w.strip_prefix("nw_dst="))
        })
        .collect();
    assert_eq!(addresses, ["10.0.1.10"].into());

    let loaded = kalki_model::bundle::load(&b.files).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(loaded.manifest.devices.len(), 2);
    assert!(!loaded.manifest.devices[0].on_switch());
}

/// A policy with two sites: `--site` picks one (both are verified); without it, or with a
/// name the policy does not declare, nothing is written and the sites are listed.
#[test]
fn build_site_picks_one_of_several_sites() {
    let tmp = TempDir::new("bundle-sites");
    let policy = tmp.write(
        "two.kalki",
        "import std::devices::{Camera}\n\
         site north {\n    bridge \"br0\"\n    device cam: Camera at 10.0.9.10 port \"cam0\"\n}\n\
         site south {\n    bridge \"br1\"\n    device cam: Camera at 10.0.9.20 port \"cam9\"\n}\n",
    );
    let (policy, out) = (policy.to_str().unwrap(), tmp.path().join("out"));
    let out_s = out.to_str().unwrap();

    let o = kalkic(&["build", "--color", "never", policy, "-o", out_s]);
    assert_eq!(code(&o), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("2 sites (north, south)") && err.contains("--site"),
        "{err}"
    );
    assert!(!out.exists());

    let o = kalkic(&[
        "build", "--color", "never", "--site", "west", policy, "-o", out_s,
    ]);
    assert_eq!(code(&o), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no site `west`") && err.contains("north, south"),
        "{err}"
    );
    assert!(!out.exists());

    for (site, bridge) in [("south", "br1"), ("north", "br0")] {
        let o = kalkic(&[
            "build", "--color", "never", "--site", site, policy, "-o", out_s,
        ]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["site"], site, "{manifest}");
        assert_eq!(manifest["bridge"], bridge, "{manifest}");
    }
}
