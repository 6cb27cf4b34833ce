//! The deployable bundle of one site: `manifest.json`, the OpenFlow rule sets and the
//! container manifests, as a map from relative path to bytes. Pure: the binary writes it.
//! Same model and sources, same bytes: every collection is ordered, nothing is timed.
//! The format is described in `docs/bundle.md`; its JSON files are built as the types the
//! shim reads (`kalki_model::manifest`), written in their canonical form
//! ([`kalki_model::manifest::to_json`]).
//!
//! The rule sets are generated once, validated (K208, K212: `verify::dataplane`) and only
//! then rendered, so what is proved is exactly what is written.

use super::manifest as lower;
use super::openflow::{self, ip, mac, EntryPorts, Ports};
use crate::diag::Diagnostic;
use crate::ir::{Chain, Model, Site, StateId, Value};
use crate::source::Sources;
use crate::verify::dataplane;
use crate::verify::solver::Solver;
use kalki_model::manifest::{self as m, to_json, Cookie};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Version of the bundle format; the shim refuses versions it does not know.
pub const FORMAT: u32 = m::FORMAT;

/// Stable code of a bundle that cannot be laid out on one bridge.
pub const PORT_SPACE: &str = "K214";

/// The codes `kalkic build` adds of its own (K208 and K212, checked on the emitted rules,
/// are the verifier's), with a one-line summary (read through [`crate::explain`]).
pub const BUILD_CODES: &[(&str, &str)] = &[(
    PORT_SPACE,
    "the site needs more switch ports than one bridge has",
)];

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
///
/// A site on several nodes gets one sub-bundle per node (see [`spanning`]), each proved
/// on its own.
pub fn build(
    model: &Model,
    site: &Site,
    sources: &Sources,
    solver: &dyn Solver,
) -> Result<Bundle, Vec<Diagnostic>> {
    if !site.nodes.is_empty() {
        return spanning(model, site, sources, Some(solver));
    }
    let ports = ports(model, site)?;
    let plane = dataplane::plane(model, site, &ports);
    let findings = dataplane::validate(&plane, solver);
    if !findings.is_empty() {
        return Err(findings);
    }
    Ok(assemble(model, site, sources, &ports, &plane).0)
}

/// The bundle of one site of a checked model, its rule sets not proved: what `kalkic test`
/// runs its tests on, in memory (the engine reads only the manifest and the container
/// manifests). Never written: [`build`] is the one way to a bundle that is deployed. On
/// errors (K214), no bundle.
pub fn unproved(model: &Model, site: &Site, sources: &Sources) -> Result<Bundle, Vec<Diagnostic>> {
    if !site.nodes.is_empty() {
        return spanning(model, site, sources, None);
    }
    let ports = ports(model, site)?;
    let plane = dataplane::plane(model, site, &ports);
    Ok(assemble(model, site, sources, &ports, &plane).0)
}

/// The bundle of a site on several nodes: for each node, the bundle of the site's
/// projection onto it ([`Site::project`]: that node's devices, bridge and uplink, ports
/// numbered on that bridge), generated as any one-node bundle and written under
/// `nodes/NAME/`, its `part_of` naming the site and the node; and, at the top, the whole
/// site's manifest for the controller: every device (its `net` and postures those of its
/// node's sub-bundle, paths prefixed), every rule, the `nodes`, and in `files` every
/// file under `nodes/`, the sub-bundles' manifests included, so that tampering with any
/// of them is caught when the site's bundle is loaded.
fn spanning(
    model: &Model,
    site: &Site,
    sources: &Sources,
    solver: Option<&dyn Solver>,
) -> Result<Bundle, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut parts = Vec::new();
    for n in 0..site.nodes.len() {
        let (part, ids) = site.project(n);
        let ports = match ports(model, &part) {
            Ok(p) => p,
            Err(e) => {
                errors.extend(e);
                continue;
            }
        };
        let plane = dataplane::plane(model, &part, &ports);
        if let Some(solver) = solver {
            let findings = dataplane::validate(&plane, solver);
            if !findings.is_empty() {
                errors.extend(findings);
                continue;
            }
        }
        let (bundle, manifest) = assemble(model, &part, sources, &ports, &plane);
        parts.push((ids, bundle, manifest));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let (source_digests, policy_digest) = source_digests(sources);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut devices: Vec<Option<m::Device>> = vec![None; site.devices.len()];
    let mut nodes = Vec::new();
    for (node, (ids, bundle, manifest)) in site.nodes.iter().zip(parts) {
        let dir = format!("nodes/{}", node.name);
        let under = |path: &str| format!("{dir}/{path}");
        for (k, mut d) in manifest.devices.into_iter().enumerate() {
            for s in d.states.iter_mut().filter_map(|s| s.switch.as_mut()) {
                s.flows = under(&s.flows);
                for c in &mut s.containers {
                    *c = under(c);
                }
            }
            d.node = Some(node.name.clone());
            devices[ids[k].index()] = Some(d);
        }
        let sub_manifest = bundle
            .files
            .get("manifest.json")
            .cloned()
            .unwrap_or_default();
        nodes.push(m::SiteNode {
            name: node.name.clone(),
            bridge: node.bridge.clone(),
            uplink: manifest.uplink,
            devices: ids
                .iter()
                .map(|id| site.devices[id.index()].name.clone())
                .collect(),
            manifest: under("manifest.json"),
            manifest_sha256: sha256(&sub_manifest),
        });
        for (path, bytes) in bundle.files {
            files.insert(under(&path), bytes);
        }
    }
    let used_types: BTreeSet<usize> = site.devices.iter().map(|d| d.ty.index()).collect();
    let manifest = m::Manifest {
        format: FORMAT,
        compiler: format!("kalkic {}", env!("CARGO_PKG_VERSION")),
        site: site.name.clone(),
        // Each node has its own: in `nodes`.
        bridge: String::new(),
        uplink: m::Uplink {
            name: None,
            ofport: openflow::UPLINK_OFPORT,
        },
        unknown_hosts: site.unknown_hosts,
        cookies: m::Cookies {
            base: Cookie(openflow::base_cookie()),
            device_mask: Cookie(openflow::DEVICE_COOKIE_MASK),
        },
        policy_sha256: policy_digest,
        sources: source_digests,
        files: files
            .iter()
            .map(|(path, bytes)| m::FileDigest {
                path: path.clone(),
                sha256: sha256(bytes),
            })
            .collect(),
        ports: Vec::new(),
        device_types: used_types
            .iter()
            .map(|&t| lower::device_type(&model.device_types[t]))
            .collect(),
        // Every device is on exactly one node (typeck, K117), so none is left `None`.
        devices: devices.into_iter().flatten().collect(),
        rules: site.rules.iter().map(lower::rule).collect(),
        nodes,
        part_of: None,
    };
    files.insert("manifest.json".into(), to_json(&manifest));
    Ok(Bundle { files })
}

/// The site's switch ports, or K214 when it does not fit one bridge.
fn ports(model: &Model, site: &Site) -> Result<Ports, Vec<Diagnostic>> {
    openflow::allocate(model, site).map_err(|e| {
        let what = match &site.part_of {
            Some(node) => format!("node `{node}` of site `{}`", site.name),
            None => format!("site `{}`", site.name),
        };
        vec![Diagnostic::error(
            PORT_SPACE,
            format!(
                "{what} needs {} switch ports; a bridge has {}",
                e.needed,
                openflow::MAX_OFPORT
            ),
        )
        .primary(
            site.loc,
            "too many devices and µmbox interfaces for one bridge",
        )
        .help(if site.part_of.is_some() {
            "move devices to another node, or use fewer µmboxes per state"
        } else {
            "split the site over several nodes (`node NAME { ... }`, docs/language.md §7.6), or use fewer µmboxes per state"
        })]
    })
}

/// The digest of every source, sorted, and the policy's digest over them.
fn source_digests(sources: &Sources) -> (Vec<m::SourceDigest>, String) {
    let mut source_digests: Vec<m::SourceDigest> = sources
        .iter()
        .map(|(_, f)| m::SourceDigest {
            name: f.name.clone(),
            sha256: sha256(f.text.as_bytes()),
        })
        .collect();
    source_digests.sort_by(|a, b| a.name.cmp(&b.name));
    let policy_digest = sha256(&to_json(&source_digests));
    (source_digests, policy_digest)
}

/// Renders the proved rule sets and writes the manifests; also returns the manifest
/// written as `manifest.json`.
fn assemble(
    model: &Model,
    site: &Site,
    sources: &Sources,
    ports: &Ports,
    plane: &dataplane::DataPlane,
) -> (Bundle, m::Manifest) {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();

    let (source_digests, policy_digest) = source_digests(sources);

    files.insert(
        "flows/base.ofctl".into(),
        openflow::render(&plane.base).into_bytes(),
    );

    // Per device: its rule sets, container manifests and manifest entry, with the digest
    // of every file. Independent across devices, so done on every core (in device order
    // within each chunk, merged in order: the output does not depend on the threads).
    // The plane holds the devices on the switch only: site index → plane index.
    let mut on_switch = 0;
    let plane_of: Vec<Option<usize>> = site
        .devices
        .iter()
        .map(|d| {
            d.net.as_ref().map(|_| {
                on_switch += 1;
                on_switch - 1
            })
        })
        .collect();
    let per_device = |i: usize| -> DeviceOutput {
        let d = &site.devices[i];
        let ty = model.device_type(d.ty);
        let mut files = Vec::new();
        let mut states = Vec::new();
        for (si, s) in ty.states.iter().enumerate() {
            let state = StateId::from_index(si);
            // Off the switch: a state, and nothing on the switch for it.
            let (Some(chain), Some(p)) = (&s.chain, plane_of[i]) else {
                states.push(m::DeviceState {
                    name: s.name.clone(),
                    switch: None,
                });
                continue;
            };
            let flows_path = format!("flows/{}/{}.ofctl", d.name, s.name);
            files.push((
                flows_path.clone(),
                openflow::render(&plane.devices[p].states[si].flows).into_bytes(),
            ));
            let containers: Vec<String> = ports.entries[i][si]
                .iter()
                .map(|&ix| container_path(model, ports, i, ix, &d.name))
                .collect();
            states.push(m::DeviceState {
                name: s.name.clone(),
                switch: Some(m::Posture {
                    cookie: Cookie(openflow::device_cookie(i, state)),
                    chain: chain_names(model, chain),
                    flows: flows_path,
                    containers,
                }),
            });
        }
        files.extend(container_manifests(model, site, ports, i, &policy_digest));
        let digests = files
            .iter()
            .map(|(path, bytes)| (path.clone(), sha256(bytes)))
            .collect();
        let entry = m::Device {
            name: d.name.clone(),
            ty: ty.name.clone(),
            net: d
                .net
                .as_ref()
                .zip(ports.devices[i])
                .map(|(net, ofport)| m::DeviceNet {
                    ip: ip(net.ip),
                    mac: net.mac.map(mac),
                    port: net.port.clone(),
                    ofport,
                }),
            trusted: d.trusted,
            initial: ty.state(ty.initial).name.clone(),
            most_restrictive: ty.state(ty.most_restrictive()).name.clone(),
            states,
            telemetry: d.telemetry.clone(),
            node: None,
        };
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

    let device_types = used_types
        .iter()
        .map(|&t| lower::device_type(&model.device_types[t]))
        .collect();

    let files_listed = digests
        .into_iter()
        .map(|(path, sha256)| m::FileDigest { path, sha256 })
        .collect();
    let manifest = m::Manifest {
        format: FORMAT,
        compiler: format!("kalkic {}", env!("CARGO_PKG_VERSION")),
        site: site.name.clone(),
        bridge: site.bridge.clone(),
        uplink: m::Uplink {
            name: site.uplink.clone(),
            ofport: ports.uplink,
        },
        unknown_hosts: site.unknown_hosts,
        cookies: m::Cookies {
            base: Cookie(openflow::base_cookie()),
            device_mask: Cookie(openflow::DEVICE_COOKIE_MASK),
        },
        policy_sha256: policy_digest,
        sources: source_digests,
        files: files_listed,
        ports: ports.all.clone(),
        device_types,
        devices,
        rules: site.rules.iter().map(lower::rule).collect(),
        nodes: Vec::new(),
        part_of: site.part_of.as_ref().map(|node| m::PartOf {
            site: site.name.clone(),
            node: node.clone(),
        }),
    };
    files.insert("manifest.json".into(), to_json(&manifest));
    (Bundle { files }, manifest)
}

/// What one device adds to the bundle.
struct DeviceOutput {
    files: Vec<(String, Vec<u8>)>,
    digests: Vec<(String, String)>,
    entry: m::Device,
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

fn chain_names(model: &Model, chain: &Chain) -> m::Chain {
    match chain {
        Chain::Pass => m::Chain::Builtin(m::Builtin::Pass),
        Chain::Drop => m::Chain::Builtin(m::Builtin::Drop),
        Chain::Umboxes(entries) => m::Chain::Umboxes(
            entries
                .iter()
                .map(|e| model.umbox(e.umbox).name.clone())
                .collect(),
        ),
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
        let iface = |name: &str, faces: &str, ofport: u32| m::Interface {
            name: name.into(),
            faces: faces.into(),
            ofport,
            port_name: openflow::umbox_port_name(&ports.tag, ofport),
        };
        let interfaces = match inst.ports {
            EntryPorts::Inline { a, b } => vec![iface("a", "device", a), iface("b", "uplink", b)],
            EntryPorts::Tap { p } => vec![iface("tap", "copy", p)],
        };
        let states: Vec<String> = inst
            .states
            .iter()
            .map(|&s| ty.state(s).name.clone())
            .collect();
        let labels = [
            (
                "kalki.site",
                kalki_model::manifest::container_scope(&site.name, site.part_of.as_deref()),
            ),
            ("kalki.device", d.name.clone()),
            ("kalki.instance", ix.to_string()),
            ("kalki.states", states.join(",")),
            ("kalki.umbox", u.name.clone()),
            ("kalki.policy", policy_digest.to_string()),
        ];
        let manifest = m::Container {
            name: format!("kalki-{}-{}-{}-{}", site.name, d.name, ix, u.name),
            image: u.image.clone(),
            args: u.args.iter().map(|a| fill(a, &params)).collect(),
            env: u.env.iter().cloned().collect(),
            params: params.iter().cloned().collect(),
            mode: u.mode,
            emits: u.emits.clone(),
            states,
            labels: labels.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            interfaces,
            contract: u.contract(&inst.args),
            secrets: u
                .secrets
                .iter()
                .map(|(name, path)| m::SecretMount {
                    name: name.clone(),
                    path: path.clone(),
                })
                .collect(),
        };
        out.insert(
            container_path(model, ports, device, ix, &d.name),
            to_json(&manifest),
        );
    }
    out
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
