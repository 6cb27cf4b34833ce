//! The deployable bundle of one site: `manifest.json`, the OpenFlow rule sets and the
//! container manifests, as a map from relative path to bytes. Pure: the binary writes it.
//! Same model and sources, same bytes: every collection is ordered, nothing is timed.
//! The format is described in `docs/bundle.md`.
//!
//! The rule sets are generated once, validated (K208, K212: `verify::dataplane`) and only
//! then rendered, so what is proved is exactly what is written.

use super::openflow::{self, ip, mac, EntryPorts, Ports};
use crate::diag::Diagnostic;
use crate::ir::{Chain, Model, Site, StateId, Value};
use crate::source::Sources;
use crate::verify::dataplane;
use crate::verify::solver::Solver;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Version of the bundle format; the shim refuses versions it does not know.
pub const FORMAT: u32 = 1;

/// Stable code of a bundle that cannot be laid out on one bridge.
pub const PORT_SPACE: &str = "K214";

/// Relative path → contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Bundle {
    /// Writes the bundle to `out`: first to a staging directory beside it, then swapped
    /// in, so a reader never sees half a bundle. An earlier bundle at `out` is replaced;
    /// any other non-empty directory is refused (`AlreadyExists`) and left alone.
    pub fn write_to(&self, out: &Path) -> std::io::Result<()> {
        use std::io::{Error, ErrorKind};
        if out.exists() && !out.join("manifest.json").is_file() {
            let empty = std::fs::read_dir(out)?.next().is_none();
            if !empty {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    "it exists and holds no bundle (no manifest.json)",
                ));
            }
        }
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".into());
        let staging = parent.join(format!(".{name}.staging-{}", std::process::id()));
        let retired = parent.join(format!(".{name}.old-{}", std::process::id()));
        let result = (|| {
            for dir in [&staging, &retired] {
                if dir.exists() {
                    std::fs::remove_dir_all(dir)?;
                }
            }
            // Every directory once, then the files on every core: a large site has tens
            // of thousands of them.
            let dirs: BTreeSet<&Path> = self
                .files
                .keys()
                .filter_map(|rel| Path::new(rel).parent())
                .collect();
            std::fs::create_dir_all(&staging)?;
            for dir in dirs {
                std::fs::create_dir_all(staging.join(dir))?;
            }
            let files: Vec<(&String, &Vec<u8>)> = self.files.iter().collect();
            let written = in_parallel(files.len(), |i| {
                let (rel, bytes) = files[i];
                std::fs::write(staging.join(rel), bytes)
            });
            written.into_iter().collect::<std::io::Result<()>>()?;
            // Two renames: `out` is missing only between them, never half-written.
            if out.exists() {
                std::fs::rename(out, &retired)?;
            }
            std::fs::rename(&staging, out)?;
            if retired.exists() {
                std::fs::remove_dir_all(&retired)?;
            }
            Ok(())
        })();
        if result.is_err() && staging.exists() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn json_bytes(v: &Json) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s.into_bytes()
}

/// `{name}` holes of a µmbox argument filled with the chain entry's values.
fn fill(template: &str, params: &[(String, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in params {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

fn shown(v: &Value) -> String {
    match v {
        // Durations reach µmboxes in whole milliseconds.
        Value::Duration(ms) => ms.to_string(),
        other => other.to_string(),
    }
}

/// Builds the bundle of one site of a verified model, after proving its rule sets free
/// of interference and fail-open paths with `solver`. On errors (K208, K212, K213 for an
/// undecided question, K214), no bundle.
pub fn build(
    model: &Model,
    site: &Site,
    sources: &Sources,
    solver: &dyn Solver,
) -> Result<Bundle, Vec<Diagnostic>> {
    let ports = openflow::allocate(model, site).map_err(|e| {
        vec![Diagnostic::error(
            PORT_SPACE,
            format!(
                "site `{}` needs {} switch ports; a bridge has {}",
                site.name,
                e.needed,
                openflow::MAX_OFPORT
            ),
        )
        .primary(
            site.loc,
            "too many devices and µmbox interfaces for one bridge",
        )
        .help("split the site, or use fewer µmboxes per state")]
    })?;
    let plane = dataplane::plane(model, site, &ports);
    let findings = dataplane::validate(&plane, solver);
    if !findings.is_empty() {
        return Err(findings);
    }
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();

    let mut source_digests: Vec<Json> = sources
        .iter()
        .map(|(_, f)| json!({ "name": f.name, "sha256": sha256(f.text.as_bytes()) }))
        .collect();
    source_digests.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let policy_digest = sha256(json_bytes(&json!(source_digests)).as_slice());

    files.insert(
        "flows/base.ofctl".into(),
        openflow::render(&plane.base).into_bytes(),
    );

    // Per device: its rule sets, container manifests and manifest entry, with the digest
    // of every file. Independent across devices, so done on every core (in device order
    // within each chunk, merged in order: the output does not depend on the threads).
    let per_device = |i: usize| -> DeviceOutput {
        let d = &site.devices[i];
        let ty = model.device_type(d.ty);
        let mut files = Vec::new();
        let mut states = Vec::new();
        for (si, s) in ty.states.iter().enumerate() {
            let state = StateId::from_index(si);
            let flows_path = format!("flows/{}/{}.ofctl", d.name, s.name);
            files.push((
                flows_path.clone(),
                openflow::render(&plane.devices[i].states[si].flows).into_bytes(),
            ));
            let containers: Vec<String> = ports.entries[i][si]
                .iter()
                .map(|&ix| container_path(model, &ports, i, ix, &d.name))
                .collect();
            states.push(json!({
                "name": s.name,
                "cookie": format!("{:#x}", openflow::device_cookie(i, state)),
                "chain": chain_names(model, &s.chain),
                "flows": flows_path,
                "containers": containers,
            }));
        }
        files.extend(container_manifests(model, site, &ports, i, &policy_digest));
        let digests = files
            .iter()
            .map(|(path, bytes)| (path.clone(), sha256(bytes)))
            .collect();
        let entry = json!({
            "name": d.name,
            "type": ty.name,
            "ip": ip(d.ip),
            "mac": d.mac.map(mac),
            "port": d.port,
            "ofport": ports.devices[i],
            "trusted": d.trusted,
            "initial": ty.state(ty.initial).name,
            "most_restrictive": ty.state(ty.most_restrictive()).name,
            "states": states,
        });
        DeviceOutput {
            files,
            digests,
            entry,
        }
    };
    let outputs = in_parallel(site.devices.len(), per_device);
    let mut digests: BTreeMap<String, String> = files
        .iter()
        .map(|(path, bytes)| (path.clone(), sha256(bytes)))
        .collect();
    let mut devices = Vec::with_capacity(outputs.len());
    for out in outputs {
        files.extend(out.files);
        digests.extend(out.digests);
        devices.push(out.entry);
    }
    let used_types: BTreeSet<usize> = site.devices.iter().map(|d| d.ty.index()).collect();

    let types: Vec<Json> = used_types
        .iter()
        .map(|&t| {
            let ty = &model.device_types[t];
            json!({
                "name": ty.name,
                "vars": ty.vars.iter().map(|v| json!({ "name": v.name, "type": v.ty })).collect::<Vec<_>>(),
                "commands": ty.commands,
                "alerts": ty.alerts,
                "states": ty.states.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
                "initial": ty.initial,
                "transitions": strip_locations(json!(ty.transitions)),
            })
        })
        .collect();

    let file_digests: Vec<Json> = digests
        .iter()
        .map(|(path, sha)| json!({ "path": path, "sha256": sha }))
        .collect();
    let manifest = json!({
        "format": FORMAT,
        "compiler": format!("kalkic {}", env!("CARGO_PKG_VERSION")),
        "site": site.name,
        "bridge": site.bridge,
        "uplink": { "name": site.uplink, "ofport": ports.uplink },
        "unknown_hosts": site.unknown_hosts,
        "cookies": {
            "base": format!("{:#x}", openflow::base_cookie()),
            "device_mask": format!("{:#x}", openflow::DEVICE_COOKIE_MASK),
        },
        "policy_sha256": policy_digest,
        "sources": source_digests,
        "files": file_digests,
        "ports": ports.all,
        "device_types": types,
        "devices": devices,
        "rules": strip_locations(json!(site.rules)),
    });
    files.insert(
        "manifest.json".into(),
        // Only the serialised IR (transitions, rules) carries source locations; they were
        // stripped there, not by walking the whole manifest.
        json_bytes(&manifest),
    );
    Ok(Bundle { files })
}

/// What one device adds to the bundle.
struct DeviceOutput {
    files: Vec<(String, Vec<u8>)>,
    digests: Vec<(String, String)>,
    entry: Json,
}

/// `f(0) .. f(n - 1)` on every core, in order.
fn in_parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .clamp(1, 8);
    if threads == 1 || n < 64 {
        return (0..n).map(&f).collect();
    }
    let chunk = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let range = start..(start + chunk).min(n);
                (
                    range.clone(),
                    scope.spawn(move || range.map(f).collect::<Vec<T>>()),
                )
            })
            .collect();
        handles
            .into_iter()
            // A chunk whose thread died is done again here, so nothing is ever left out
            // silently (if it dies again, so does the build).
            .flat_map(|(range, h)| h.join().unwrap_or_else(|_| range.map(f).collect()))
            .collect()
    })
}

fn chain_names(model: &Model, chain: &Chain) -> Json {
    match chain {
        Chain::Pass => json!("pass"),
        Chain::Drop => json!("drop"),
        Chain::Umboxes(entries) => json!(entries
            .iter()
            .map(|e| model.umbox(e.umbox).name.clone())
            .collect::<Vec<_>>()),
    }
}

fn container_path(model: &Model, ports: &Ports, device: usize, ix: usize, name: &str) -> String {
    let u = model.umbox(ports.instances[device][ix].umbox);
    format!("containers/{name}/{ix}-{}.json", u.name)
}

/// One manifest per µmbox instance of a device (see [`openflow::Instance`]).
fn container_manifests(
    model: &Model,
    site: &Site,
    ports: &Ports,
    device: usize,
    policy_digest: &str,
) -> BTreeMap<String, Vec<u8>> {
    let d = &site.devices[device];
    let ty = model.device_type(d.ty);
    let mut out = BTreeMap::new();
    for (ix, inst) in ports.instances[device].iter().enumerate() {
        let u = model.umbox(inst.umbox);
        let params: Vec<(String, String)> = u
            .params
            .iter()
            .zip(&inst.args)
            .map(|(p, v)| (p.name.clone(), shown(v)))
            .collect();
        let iface = |name: &str, faces: &str, ofport: u32| json!({ "name": name, "faces": faces, "ofport": ofport, "port_name": openflow::umbox_port_name(&ports.tag, ofport) });
        let interfaces = match inst.ports {
            EntryPorts::Inline { a, b } => {
                json!([iface("a", "device", a), iface("b", "uplink", b)])
            }
            EntryPorts::Tap { p } => json!([iface("tap", "copy", p)]),
        };
        let states: Vec<&str> = inst
            .states
            .iter()
            .map(|&s| ty.state(s).name.as_str())
            .collect();
        let env: BTreeMap<&str, &str> = u
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let manifest = json!({
            "name": format!("kalki-{}-{}-{}-{}", site.name, d.name, ix, u.name),
            "image": u.image,
            "args": u.args.iter().map(|a| fill(a, &params)).collect::<Vec<_>>(),
            "env": env,
            "params": params.iter().cloned().collect::<BTreeMap<_, _>>(),
            "mode": u.mode,
            "emits": u.emits,
            "states": states,
            "labels": {
                "kalki.site": site.name,
                "kalki.device": d.name,
                "kalki.instance": ix.to_string(),
                "kalki.states": states.join(","),
                "kalki.umbox": u.name,
                "kalki.policy": policy_digest,
            },
            "interfaces": interfaces,
        });
        out.insert(
            container_path(model, ports, device, ix, &d.name),
            json_bytes(&manifest),
        );
    }
    out
}

/// Source locations mean nothing on a node without the sources: drop `loc` fields from
/// the serialised IR.
fn strip_locations(v: Json) -> Json {
    match v {
        Json::Object(m) => Json::Object(
            m.into_iter()
                .filter(|(k, _)| k != "loc")
                .map(|(k, v)| (k, strip_locations(v)))
                .collect(),
        ),
        Json::Array(a) => Json::Array(a.into_iter().map(strip_locations).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn in_parallel_keeps_the_order() {
        for n in [0, 1, 63, 64, 65, 1000, 10_001] {
            let got = in_parallel(n, |i| i * 3);
            assert_eq!(got, (0..n).map(|i| i * 3).collect::<Vec<_>>(), "n = {n}");
        }
    }
}
