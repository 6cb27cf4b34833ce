//! Loading a bundle: read `manifest.json`, refuse formats this shim does not know,
//! check the sha256 of every listed file, and check that the manifest is consistent
//! (indices in range, expressions well typed, referenced files listed) so that nothing
//! downstream has to. Every problem found is reported, not only the first.
//!
//! Pure: files come in through [`BundleReader`]. The shim's `DirReader` reads a bundle
//! directory; a map from path to bytes reads one in memory (the compiler's, before it is
//! written).

use crate::codes;
use crate::manifest::{
    Action, AggFunc, Builtin, Chain, CmpOp, Container, DeviceType, Expr, ExprKind, FormatOnly,
    Manifest, Trigger, Ty, VarRef, VarType, SUPPORTED_FORMATS,
};
use crate::range;
use crate::text::Names;
use miette::Diagnostic;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The manifest's name inside a bundle.
pub const MANIFEST: &str = "manifest.json";

/// The deepest JSON nesting accepted. The compiler accepts conditions nested 128 levels
/// deep (K113); one level of `and`/`or` takes three JSON levels (node, `kind`, `args`).
/// The bound is checked before parsing, so parsing (which recurses) stays shallow.
pub const MAX_JSON_DEPTH: usize = 3 * 128 + 16;

/// Why a file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    NotFound,
    Other(String),
}

/// Where a bundle's files come from. Paths are relative and `/`-separated; they have been
/// checked not to leave the bundle.
pub trait BundleReader {
    fn read(&self, path: &str) -> Result<Vec<u8>, ReadError>;
    /// How to name the bundle in messages.
    fn describe(&self) -> String;
}

/// A bundle in memory, path to bytes (as `kalkic build` makes it before writing it).
impl BundleReader for BTreeMap<String, Vec<u8>> {
    fn read(&self, path: &str) -> Result<Vec<u8>, ReadError> {
        self.get(path).cloned().ok_or(ReadError::NotFound)
    }
    fn describe(&self) -> String {
        "the bundle in memory".into()
    }
}

/// The files under `prefix/` of another reader: a node's sub-bundle inside the bundle of
/// a site with nodes (`nodes/NAME/`), read as a bundle of its own.
pub struct Prefixed<'r> {
    pub inner: &'r dyn BundleReader,
    /// Without a trailing `/`: `nodes/east`.
    pub prefix: String,
}

impl BundleReader for Prefixed<'_> {
    fn read(&self, path: &str) -> Result<Vec<u8>, ReadError> {
        self.inner.read(&format!("{}/{path}", self.prefix))
    }
    fn describe(&self) -> String {
        format!("{} ({}/)", self.inner.describe(), self.prefix)
    }
}

/// A problem that makes the shim refuse a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read `{path}`: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("`{path}` is malformed: {message}")]
    Malformed { path: String, message: String },
    #[error("bundle format `{found}` is not supported")]
    UnknownFormat { found: String },
    #[error("`{path}` is listed in the manifest but missing")]
    MissingFile { path: String },
    #[error("`{path}` has been modified: its sha256 is {actual}, the manifest says {expected}")]
    DigestMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("inconsistent manifest: {at}: {message}")]
    Inconsistent { at: String, message: String },
    #[error("`{path}` is not a path inside the bundle")]
    BadPath { path: String },
}

impl BundleError {
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::Unreadable { .. } => codes::UNREADABLE,
            BundleError::Malformed { .. } => codes::MALFORMED,
            BundleError::UnknownFormat { .. } => codes::UNKNOWN_FORMAT,
            BundleError::MissingFile { .. } => codes::MISSING_FILE,
            BundleError::DigestMismatch { .. } => codes::DIGEST_MISMATCH,
            BundleError::Inconsistent { .. } => codes::INCONSISTENT,
            BundleError::BadPath { .. } => codes::BAD_PATH,
        }
    }
}

impl Diagnostic for BundleError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(BundleError::code(self)))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let help = match self {
            BundleError::Unreadable { .. } => "is this a bundle written by `kalkic build`?".to_string(),
            BundleError::Malformed { .. } | BundleError::Inconsistent { .. } => {
                "rebuild the bundle with `kalkic build`; bundles are not edited by hand".to_string()
            }
            BundleError::UnknownFormat { .. } => format!(
                "this shim reads format {}; build the bundle with a matching `kalkic`",
                SUPPORTED_FORMATS
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            BundleError::MissingFile { .. } | BundleError::DigestMismatch { .. } => {
                "the bundle is incomplete or has been tampered with; rebuild it or copy it again"
                    .to_string()
            }
            BundleError::BadPath { .. } => {
                "bundle paths are relative and stay inside the bundle; the manifest has been tampered with"
                    .to_string()
            }
        };
        Some(Box::new(help))
    }
}

/// Why `kalki-shim run` and `apply` refuse a bundle that loads: it is not a site on one
/// node (S008). Loading does not refuse it: `simulate` runs a site with nodes (it needs
/// only the engine), and a node's agent loads its sub-bundle with [`load`] or
/// [`load_node`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotOneNode {
    #[error("site `{site}` spans {} nodes ({}): no single node runs it", nodes.len(), nodes.join(", "))]
    Spans { site: String, nodes: Vec<String> },
    #[error("this bundle is node `{node}`'s part of site `{site}`, not a site")]
    PartOf { site: String, node: String },
}

impl Diagnostic for NotOneNode {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(codes::NOT_ONE_NODE))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(match self {
            NotOneNode::Spans { nodes, .. } => format!(
                "start `kalki-shim controller` with this bundle, and on each node `kalki-shim agent --node NAME` ({}); see docs/scale-out.md",
                nodes.join(", ")
            ),
            NotOneNode::PartOf { site, node } => format!(
                "a node's part of site `{site}`: run it with `kalki-shim agent --node {node}`, beside the site's `kalki-shim controller`; see docs/scale-out.md"
            ),
        }))
    }
}

/// Whether a loaded bundle is a site on one node, which `run` and `apply` take.
pub fn one_node(b: &Bundle) -> Result<(), NotOneNode> {
    let m = &b.manifest;
    if let Some(p) = &m.part_of {
        return Err(NotOneNode::PartOf {
            site: p.site.clone(),
            node: p.node.clone(),
        });
    }
    if !m.nodes.is_empty() {
        return Err(NotOneNode::Spans {
            site: m.site.clone(),
            nodes: m.nodes.iter().map(|n| n.name.clone()).collect(),
        });
    }
    Ok(())
}

/// What a site's devices exchange beyond the network, which `kalki-shim controller`
/// does not carry yet: the rules that send device commands, and the devices whose
/// readings come from MQTT topics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceIo {
    /// Rules with a command action (`dev.command`).
    pub command_rules: Vec<String>,
    /// Devices with MQTT bindings.
    pub mqtt_devices: Vec<String>,
}

/// The [`DeviceIo`] of a bundle.
pub fn device_io(b: &Bundle) -> DeviceIo {
    let m = &b.manifest;
    DeviceIo {
        command_rules: m
            .rules
            .iter()
            .filter(|r| {
                r.actions
                    .iter()
                    .any(|a| matches!(a, crate::manifest::Action::Command { .. }))
            })
            .map(|r| r.name.clone())
            .collect(),
        mqtt_devices: m
            .devices
            .iter()
            .filter(|d| d.telemetry.is_some())
            .map(|d| d.name.clone())
            .collect(),
    }
}

/// Why `kalki-shim controller` refuses a site (S009): it would not behave as verified.
/// Its commands would never be sent, or its MQTT readings never read, and nothing would
/// say so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotForController {
    #[error("site `{site}`: rule{} {} send{} device commands, which the controller does not send", if rules.len() == 1 { "" } else { "s" }, quoted(rules), if rules.len() == 1 { "s" } else { "" })]
    Commands { site: String, rules: Vec<String> },
    #[error("site `{site}`: device{} {} read{} telemetry from MQTT, which the controller does not read", if devices.len() == 1 { "" } else { "s" }, quoted(devices), if devices.len() == 1 { "s" } else { "" })]
    Mqtt { site: String, devices: Vec<String> },
}

/// `a`, `b`, `c` and 4 more.
fn quoted(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(3).map(|n| format!("`{n}`")).collect();
    match names.len().saturating_sub(3) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

impl Diagnostic for NotForController {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(codes::NOT_FOR_CONTROLLER))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(match self {
            NotForController::Commands { .. } => {
                "to run it anyway, knowing that no command is sent (each is logged as `command_not_sent`), pass --without-commands; see docs/scale-out.md"
            }
            NotForController::Mqtt { .. } => {
                "to run it anyway, with readings only from the API, pass --without-mqtt; see docs/scale-out.md"
            }
        }))
    }
}

/// Whether `kalki-shim controller` may run a bundle: every command rule and MQTT device
/// must be accepted by its flag. Both refusals at once when both apply.
pub fn controller_ready(
    b: &Bundle,
    without_commands: bool,
    without_mqtt: bool,
) -> Result<(), Vec<NotForController>> {
    let io = device_io(b);
    let site = &b.manifest.site;
    let mut refused = Vec::new();
    if !io.command_rules.is_empty() && !without_commands {
        refused.push(NotForController::Commands {
            site: site.clone(),
            rules: io.command_rules,
        });
    }
    if !io.mqtt_devices.is_empty() && !without_mqtt {
        refused.push(NotForController::Mqtt {
            site: site.clone(),
            devices: io.mqtt_devices,
        });
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(refused)
    }
}

/// A loaded, checked bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    /// The container manifests, by path.
    pub containers: BTreeMap<String, Container>,
    /// The rule sets (`flows/**.ofctl`), by path, as read and digest-checked: the driver
    /// uses these bytes, never a second read of a file that may have changed since.
    pub rule_sets: BTreeMap<String, String>,
    /// sha256 of `manifest.json`: names the loaded bundle (it covers every file's digest).
    pub manifest_sha256: String,
    /// Index into `manifest.device_types` of each device's type.
    types: Vec<usize>,
}

impl Bundle {
    /// The type of device `device` (an index into `manifest.devices`).
    pub fn device_type(&self, device: usize) -> Option<&DeviceType> {
        self.manifest.device_types.get(*self.types.get(device)?)
    }

    /// Index into `manifest.device_types` of a device's type.
    pub fn device_type_index(&self, device: usize) -> Option<usize> {
        self.types.get(device).copied()
    }

    /// Names for printing expressions: of a guard of type `this_type`, or of rules (`None`).
    pub fn names(&self, this_type: Option<usize>) -> Names<'_> {
        Names {
            manifest: &self.manifest,
            types: &self.types,
            this_type,
        }
    }
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Loads and checks a bundle. On refusal, every problem found.
pub fn load(reader: &dyn BundleReader) -> Result<Bundle, Vec<BundleError>> {
    let bytes = reader
        .read(MANIFEST)
        .map_err(|e| vec![unreadable(MANIFEST, e)])?;
    let manifest_sha256 = sha256_hex(&bytes);
    let manifest: Manifest = parse_manifest(&bytes).map_err(|e| vec![e])?;

    let mut errors = Vec::new();
    let listed = check_files(reader, &manifest, &mut errors);
    let types = check_manifest(&manifest, &listed.paths, &mut errors);

    let mut containers = BTreeMap::new();
    for d in &manifest.devices {
        for s in d.states.iter().filter_map(|s| s.switch.as_ref()) {
            for path in &s.containers {
                // Unlisted or unreadable files are already reported.
                let Some(bytes) = listed.contents.get(path) else {
                    continue;
                };
                match parse_json::<Container>(path, bytes) {
                    Ok(c) => {
                        containers.insert(path.clone(), c);
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
    }
    let mut rule_sets = BTreeMap::new();
    for (path, bytes) in &listed.contents {
        if path.ends_with(".ofctl") {
            match String::from_utf8(bytes.clone()) {
                Ok(text) => {
                    rule_sets.insert(path.clone(), text);
                }
                Err(_) => errors.push(BundleError::Malformed {
                    path: path.clone(),
                    message: "a rule set is not UTF-8 text".into(),
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok(Bundle {
            manifest,
            containers,
            rule_sets,
            manifest_sha256,
            types,
        })
    } else {
        Err(errors)
    }
}

/// Loads node `node`'s sub-bundle out of the bundle of a site with nodes: the whole
/// site's bundle is loaded and checked first (every file under `nodes/` has its digest
/// there), then `nodes/NODE/` as a bundle of its own through [`Prefixed`], which must be
/// the one the site lists for the node (its manifest's sha256) and say it is that
/// node's part of that site (`part_of`). Returns the site's bundle (the controller's
/// engine) and the node's (what its agent applies). A node's sub-bundle copied alone
/// loads with [`load`]; its `part_of` then says what it is.
pub fn load_node(
    reader: &dyn BundleReader,
    node: &str,
) -> Result<(Bundle, Bundle), Vec<BundleError>> {
    let site = load(reader)?;
    let Some(entry) = site.manifest.nodes.iter().find(|n| n.name == node) else {
        let known: Vec<&str> = site
            .manifest
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        return Err(vec![inconsistent(
            "nodes",
            if known.is_empty() {
                format!(
                    "site `{}` has no nodes, so no node `{node}`",
                    site.manifest.site
                )
            } else {
                format!(
                    "site `{}` has no node `{node}` (its nodes: {})",
                    site.manifest.site,
                    known.join(", ")
                )
            },
        )]);
    };
    let Some(dir) = entry
        .manifest
        .strip_suffix(MANIFEST)
        .and_then(|d| d.strip_suffix('/'))
    else {
        return Err(vec![inconsistent(
            format!("nodes (`{node}`)"),
            format!("its manifest `{}` is not a `manifest.json`", entry.manifest),
        )]);
    };
    let part = load(&Prefixed {
        inner: reader,
        prefix: dir.to_string(),
    })?;
    let mut errors = Vec::new();
    if part.manifest_sha256 != entry.manifest_sha256 {
        errors.push(BundleError::DigestMismatch {
            path: entry.manifest.clone(),
            expected: entry.manifest_sha256.clone(),
            actual: part.manifest_sha256.clone(),
        });
    }
    let expected = crate::manifest::PartOf {
        site: site.manifest.site.clone(),
        node: node.to_string(),
    };
    if part.manifest.part_of.as_ref() != Some(&expected) {
        errors.push(inconsistent(
            format!("{}: part_of", entry.manifest),
            format!(
                "it is not node `{node}`'s part of site `{}`",
                site.manifest.site
            ),
        ));
    }
    if errors.is_empty() {
        Ok((site, part))
    } else {
        Err(errors)
    }
}

fn unreadable(path: &str, e: ReadError) -> BundleError {
    BundleError::Unreadable {
        path: path.to_string(),
        reason: match e {
            ReadError::NotFound => "no such file".to_string(),
            ReadError::Other(r) => r,
        },
    }
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, BundleError> {
    let version: FormatOnly = parse_json(MANIFEST, bytes)?;
    let supported = version
        .format
        .as_u64()
        .and_then(|f| u32::try_from(f).ok())
        .is_some_and(|f| SUPPORTED_FORMATS.contains(&f));
    if !supported {
        return Err(BundleError::UnknownFormat {
            found: version.format.to_string(),
        });
    }
    parse_json(MANIFEST, bytes)
}

/// Parses JSON whose nesting has been bounded first (see [`MAX_JSON_DEPTH`]).
fn parse_json<T: serde::de::DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, BundleError> {
    let malformed = |message: String| BundleError::Malformed {
        path: path.to_string(),
        message,
    };
    let depth = json_depth(bytes);
    if depth > MAX_JSON_DEPTH {
        return Err(malformed(format!(
            "nested {depth} levels deep, more than the {MAX_JSON_DEPTH} a bundle can need"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de).map_err(|e| malformed(e.to_string()))?;
    de.end().map_err(|e| malformed(e.to_string()))?;
    Ok(value)
}

/// The deepest nesting of arrays and objects in a JSON text (strings skipped), without
/// parsing it. Malformed text gives some number; the parser reports the syntax.
pub fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Whether a listed path stays inside the bundle: relative, `/`-separated, no empty,
/// `.` or `..` component, no backslash or NUL.
fn safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

struct Listed {
    /// Every listed path (also those that failed to verify).
    paths: BTreeSet<String>,
    /// Verified contents of the container manifests and the rule sets.
    contents: BTreeMap<String, Vec<u8>>,
}

fn check_files(reader: &dyn BundleReader, m: &Manifest, errors: &mut Vec<BundleError>) -> Listed {
    let wanted: BTreeSet<&str> = m
        .devices
        .iter()
        .flat_map(|d| &d.states)
        .filter_map(|s| s.switch.as_ref())
        .flat_map(|p| &p.containers)
        .map(String::as_str)
        .collect();
    let mut listed = Listed {
        paths: BTreeSet::new(),
        contents: BTreeMap::new(),
    };
    for (i, f) in m.files.iter().enumerate() {
        if !safe_path(&f.path) || f.path == MANIFEST {
            errors.push(BundleError::BadPath {
                path: f.path.clone(),
            });
            continue;
        }
        if !listed.paths.insert(f.path.clone()) {
            errors.push(inconsistent(
                format!("files[{i}]"),
                format!("`{}` is listed twice", f.path),
            ));
            continue;
        }
        let bytes = match reader.read(&f.path) {
            Ok(b) => b,
            Err(ReadError::NotFound) => {
                errors.push(BundleError::MissingFile {
                    path: f.path.clone(),
                });
                continue;
            }
            Err(e) => {
                errors.push(unreadable(&f.path, e));
                continue;
            }
        };
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(&f.sha256) {
            errors.push(BundleError::DigestMismatch {
                path: f.path.clone(),
                expected: f.sha256.clone(),
                actual,
            });
            continue;
        }
        if wanted.contains(f.path.as_str()) || f.path.ends_with(".ofctl") {
            listed.contents.insert(f.path.clone(), bytes);
        }
    }
    listed
}

fn inconsistent(at: impl Into<String>, message: impl Into<String>) -> BundleError {
    BundleError::Inconsistent {
        at: at.into(),
        message: message.into(),
    }
}

/// Checks everything the engine and a driver rely on. Returns each device's type index
/// (`usize::MAX` where it has none, which is reported).
fn check_manifest(
    m: &Manifest,
    listed: &BTreeSet<String>,
    errors: &mut Vec<BundleError>,
) -> Vec<usize> {
    let mut type_names = BTreeMap::new();
    for (ti, t) in m.device_types.iter().enumerate() {
        let at = format!("device_types[{ti}] (`{}`)", t.name);
        if type_names.insert(t.name.as_str(), ti).is_some() {
            errors.push(inconsistent(
                &at,
                format!("type `{}` is declared twice", t.name),
            ));
        }
        check_type(&at, t, errors);
    }

    let mut types = Vec::with_capacity(m.devices.len());
    let mut device_names = BTreeSet::new();
    let mut topic_owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (di, d) in m.devices.iter().enumerate() {
        let at = format!("devices[{di}] (`{}`)", d.name);
        if !device_names.insert(d.name.as_str()) {
            errors.push(inconsistent(
                &at,
                format!("device `{}` is declared twice", d.name),
            ));
        }
        let Some(&ti) = type_names.get(d.ty.as_str()) else {
            errors.push(inconsistent(
                &at,
                format!("its type `{}` is not in `device_types`", d.ty),
            ));
            types.push(usize::MAX);
            continue;
        };
        types.push(ti);
        let t = &m.device_types[ti];
        let names: Vec<&str> = d.states.iter().map(|s| s.name.as_str()).collect();
        let expected: Vec<&str> = t.states.iter().map(String::as_str).collect();
        if names != expected {
            errors.push(inconsistent(
                &at,
                format!(
                    "its states [{}] are not its type's [{}]",
                    names.join(", "),
                    expected.join(", ")
                ),
            ));
        }
        if let Some(tel) = &d.telemetry {
            for problem in crate::telemetry::check(t, tel) {
                errors.push(inconsistent(&at, format!("telemetry: {problem}")));
            }
            for b in &tel.topics {
                if let Some(other) = topic_owner.insert(b.topic.as_str(), d.name.as_str()) {
                    if other != d.name {
                        errors.push(inconsistent(
                            &at,
                            format!("topic {:?} is also read by `{other}`", b.topic),
                        ));
                    }
                }
            }
        }
        let initial = t.states.get(t.initial as usize);
        if initial != Some(&d.initial) {
            errors.push(inconsistent(
                &at,
                format!("initial state `{}` is not its type's", d.initial),
            ));
        }
        if t.states.last() != Some(&d.most_restrictive) {
            errors.push(inconsistent(
                &at,
                format!(
                    "most restrictive state `{}` is not its type's last state",
                    d.most_restrictive
                ),
            ));
        }
        // A device is on the switch with every state, or off it with none: a state
        // without a posture on a device on the switch would leave it unprotected, and a
        // posture for a device with no port could never be installed.
        for s in &d.states {
            if s.switch.is_some() != d.net.is_some() {
                errors.push(inconsistent(
                    &at,
                    if d.net.is_some() {
                        format!("state `{}` has no posture on the switch, but the device is on it (`net`)", s.name)
                    } else {
                        format!("state `{}` has a posture on the switch, but the device is off it (`net` is null)", s.name)
                    },
                ));
            }
            let name = &s.name;
            let Some(s) = &s.switch else {
                continue;
            };
            for path in std::iter::once(&s.flows).chain(&s.containers) {
                if !listed.contains(path) {
                    errors.push(inconsistent(
                        &at,
                        format!("state `{name}` refers to `{path}`, which `files` does not list"),
                    ));
                }
            }
            let chain_len = match &s.chain {
                Chain::Builtin(Builtin::Pass | Builtin::Drop) => 0,
                Chain::Umboxes(u) => u.len(),
            };
            if chain_len != s.containers.len() {
                errors.push(inconsistent(
                    &at,
                    format!(
                        "state `{name}` has {chain_len} µmboxes in its chain but {} container manifests",
                        s.containers.len()
                    ),
                ));
            }
        }
    }

    check_nodes(m, listed, errors);

    let mut rule_names = BTreeSet::new();
    for (ri, r) in m.rules.iter().enumerate() {
        let at = format!("rules[{ri}] (`{}`)", r.name);
        if !rule_names.insert(r.name.as_str()) {
            errors.push(inconsistent(
                &at,
                format!("rule `{}` is declared twice", r.name),
            ));
        }
        let ctx = Ctx::Rule { m, types: &types };
        match ty_of(&r.cond, &ctx) {
            Ok(K::Bool) => {}
            Ok(_) => errors.push(inconsistent(&at, "its condition is not a boolean")),
            Err(e) => errors.push(inconsistent(&at, e)),
        }
        for a in &r.actions {
            let (device, what) = match a {
                Action::Goto { device, state } | Action::Escalate { device, state } => {
                    (*device, Some(("state", *state)))
                }
                Action::Command { device, .. } | Action::Raise { device, .. } => (*device, None),
            };
            let Some(t) = types
                .get(device as usize)
                .and_then(|&t| m.device_types.get(t))
            else {
                errors.push(inconsistent(
                    &at,
                    format!("an action names device {device}, which does not exist"),
                ));
                continue;
            };
            if let Some((_, s)) = what {
                if s as usize >= t.states.len() {
                    errors.push(inconsistent(
                        &at,
                        format!(
                            "an action moves a `{}` to state {s}, which it does not have",
                            t.name
                        ),
                    ));
                }
            }
            if let Action::Command { command, .. } = a {
                if !t.commands.contains(command) {
                    errors.push(inconsistent(
                        &at,
                        format!("command `{command}` is not one of `{}`'s", t.name),
                    ));
                }
            }
            if let Action::Raise { alert, .. } = a {
                if alert.is_empty() {
                    errors.push(inconsistent(&at, "it raises an alert with no name"));
                }
            }
        }
    }
    types
}

/// A site's `nodes` and its devices' `node` agree: every device on exactly the node that
/// lists it, each node once with its sub-bundle's manifest listed in `files`; and a
/// node's sub-bundle (`part_of`) has no nodes of its own.
fn check_nodes(m: &Manifest, listed: &BTreeSet<String>, errors: &mut Vec<BundleError>) {
    if m.part_of.is_some() && !m.nodes.is_empty() {
        errors.push(inconsistent(
            "part_of",
            "a node's sub-bundle declares nodes of its own",
        ));
    }
    let mut names = BTreeSet::new();
    let mut listing: BTreeMap<&str, &str> = BTreeMap::new();
    for (ni, n) in m.nodes.iter().enumerate() {
        let at = format!("nodes[{ni}] (`{}`)", n.name);
        if !names.insert(n.name.as_str()) {
            errors.push(inconsistent(
                &at,
                format!("node `{}` is declared twice", n.name),
            ));
        }
        if !listed.contains(&n.manifest) {
            errors.push(inconsistent(
                &at,
                format!("its manifest `{}` is not listed in `files`", n.manifest),
            ));
        }
        for d in &n.devices {
            if let Some(other) = listing.insert(d.as_str(), n.name.as_str()) {
                errors.push(inconsistent(
                    &at,
                    format!("device `{d}` is also listed on node `{other}`"),
                ));
            }
        }
    }
    for (di, d) in m.devices.iter().enumerate() {
        let at = format!("devices[{di}] (`{}`)", d.name);
        let listed_on = listing.remove(d.name.as_str());
        match (&d.node, listed_on) {
            (None, None) if m.nodes.is_empty() => {}
            (Some(n), Some(l)) if n == l => {}
            (None, _) => errors.push(inconsistent(
                &at,
                "the site has nodes, but the device is on none",
            )),
            (Some(n), _) if !names.contains(n.as_str()) => errors.push(inconsistent(
                &at,
                format!("its node `{n}` is not in `nodes`"),
            )),
            (Some(n), _) => errors.push(inconsistent(
                &at,
                format!("its node `{n}` does not list it"),
            )),
        }
    }
    for (d, n) in listing {
        errors.push(inconsistent(
            format!("nodes (`{n}`)"),
            format!("it lists device `{d}`, which does not exist"),
        ));
    }
}

fn check_type(at: &str, t: &DeviceType, errors: &mut Vec<BundleError>) {
    let n = t.states.len();
    if n == 0 {
        errors.push(inconsistent(at, "it has no states"));
    }
    if t.initial as usize >= n {
        errors.push(inconsistent(
            at,
            format!("initial state {} does not exist", t.initial),
        ));
    }
    let mut vars = BTreeSet::new();
    for v in &t.vars {
        if !vars.insert(v.name.as_str()) {
            errors.push(inconsistent(
                at,
                format!("variable `{}` is declared twice", v.name),
            ));
        }
        match &v.ty {
            VarType::Int { lo, hi } if lo > hi => {
                errors.push(inconsistent(
                    at,
                    format!("variable `{}` has the empty range {lo}..{hi}", v.name),
                ));
            }
            VarType::Enum { members } if members.is_empty() => {
                errors.push(inconsistent(
                    at,
                    format!("variable `{}` is an enum with no members", v.name),
                ));
            }
            _ => {}
        }
    }
    for (i, tr) in t.transitions.iter().enumerate() {
        let at = format!("{at}, transitions[{i}]");
        if tr.from as usize >= n || tr.to as usize >= n {
            errors.push(inconsistent(
                &at,
                format!(
                    "it goes from state {} to state {}; there are {n}",
                    tr.from, tr.to
                ),
            ));
        }
        let zero = match &tr.trigger {
            Trigger::Alert {
                count: Some((c, w)),
                ..
            } => *c == 0 || *w == 0,
            Trigger::When {
                hold_ms: Some(h), ..
            } => *h == 0,
            Trigger::Quiet { after_ms } | Trigger::Silent { after_ms } => *after_ms == 0,
            _ => false,
        };
        if zero {
            errors.push(inconsistent(&at, "a count, window or duration is zero"));
        }
        if let Trigger::When { guard, .. } = &tr.trigger {
            match ty_of(guard, &Ctx::Guard { t }) {
                Ok(K::Bool) => {}
                Ok(_) => errors.push(inconsistent(&at, "its guard is not a boolean")),
                Err(e) => errors.push(inconsistent(&at, e)),
            }
        }
    }
}

/// Where an expression is read: a type's guard, or a site rule.
enum Ctx<'m> {
    Guard { t: &'m DeviceType },
    Rule { m: &'m Manifest, types: &'m [usize] },
}

impl<'m> Ctx<'m> {
    fn var_type(&self, r: VarRef) -> Result<&'m VarType, String> {
        let t = match (self, r.device) {
            (Ctx::Guard { t }, None) => *t,
            (Ctx::Guard { .. }, Some(_)) => {
                return Err("a guard reads another device's variable".to_string())
            }
            (Ctx::Rule { .. }, None) => {
                return Err("a rule reads a variable of no device".to_string())
            }
            (Ctx::Rule { m, types }, Some(d)) => types
                .get(d as usize)
                .and_then(|&t| m.device_types.get(t))
                .ok_or_else(|| format!("device {d} does not exist"))?,
        };
        t.vars
            .get(r.var as usize)
            .map(|v| &v.ty)
            .ok_or_else(|| format!("`{}` has no variable {}", t.name, r.var))
    }
}

/// The type of an expression as the shim checks it: integer bounds are exact (in i128),
/// so that no evaluation over declared ranges can overflow 64 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum K {
    Bool,
    Int(i128, i128),
    /// Its members: enums compare only with the same enum.
    Enum(Vec<String>),
}

fn int_of(k: &K, what: &str) -> Result<(i128, i128), String> {
    match k {
        K::Int(lo, hi) => Ok((*lo, *hi)),
        _ => Err(format!("{what} is not an integer")),
    }
}

/// Bounds that fit 64 bits as a type (the one test: [`range::fits`]).
fn fits(b: range::Bounds) -> Result<K, String> {
    match range::fits(b) {
        Some((lo, hi)) => Ok(K::Int(i128::from(lo), i128::from(hi))),
        None => Err(format!(
            "an integer can reach {}..{}, beyond 64 bits; the shim cannot evaluate it exactly",
            b.0, b.1
        )),
    }
}

/// An integer type's bounds as 64-bit integers (every `K::Int` is made by [`fits`] or
/// from declared 64-bit bounds).
fn int64(k: &K, what: &str) -> Result<(i64, i64), String> {
    let (lo, hi) = int_of(k, what)?;
    range::fits((lo, hi)).ok_or_else(|| format!("{what} leaves 64 bits"))
}

fn ty_of(e: &Expr, ctx: &Ctx<'_>) -> Result<K, String> {
    let k = match &e.kind {
        ExprKind::Bool { .. } => K::Bool,
        ExprKind::Int { value } => match &e.ty {
            Ty::Enum { members } => {
                if usize::try_from(*value).map_or(true, |v| v >= members.len()) {
                    return Err(format!("enum value {value} has no member"));
                }
                K::Enum(members.clone())
            }
            _ => K::Int(i128::from(*value), i128::from(*value)),
        },
        ExprKind::Var { var } => match ctx.var_type(*var)? {
            VarType::Bool => K::Bool,
            VarType::Int { lo, hi } => K::Int(i128::from(*lo), i128::from(*hi)),
            VarType::Enum { members } => K::Enum(members.clone()),
        },
        ExprKind::Aggregate { func, var, last } => {
            let VarType::Int { lo, hi } = ctx.var_type(*var)? else {
                return Err(format!(
                    "`{}` over a variable that is not an integer",
                    func.name()
                ));
            };
            if *last == 0 {
                return Err(format!("`{}` over the last 0 readings", func.name()));
            }
            match func {
                AggFunc::Sum => fits(range::sum((*lo, *hi), *last))?,
                AggFunc::Avg | AggFunc::Min | AggFunc::Max => {
                    K::Int(i128::from(*lo), i128::from(*hi))
                }
            }
        }
        ExprKind::InState { device, state } => match ctx {
            Ctx::Guard { .. } => return Err("a guard tests a device's state".to_string()),
            Ctx::Rule { m, types } => {
                let t = types
                    .get(*device as usize)
                    .and_then(|&t| m.device_types.get(t))
                    .ok_or_else(|| format!("device {device} does not exist"))?;
                if *state as usize >= t.states.len() {
                    return Err(format!("`{}` has no state {state}", t.name));
                }
                K::Bool
            }
        },
        ExprKind::Clock { from, to } => {
            if *from >= 1440 || *to >= 1440 || from == to {
                return Err(format!(
                    "clock window {from}..{to} (minutes) is not a window of a day"
                ));
            }
            K::Bool
        }
        ExprKind::Not { arg } => match ty_of(arg, ctx)? {
            K::Bool => K::Bool,
            _ => return Err("`not` of a non-boolean".to_string()),
        },
        ExprKind::Neg { arg } => fits(range::neg(int64(&ty_of(arg, ctx)?, "the operand of `-`")?))?,
        ExprKind::And { args } | ExprKind::Or { args } => {
            for a in args {
                if ty_of(a, ctx)? != K::Bool {
                    return Err("`and`/`or` of a non-boolean".to_string());
                }
            }
            K::Bool
        }
        ExprKind::Cmp { cmp, lhs, rhs } => {
            let (l, r) = (ty_of(lhs, ctx)?, ty_of(rhs, ctx)?);
            let ordered = !matches!(cmp, CmpOp::Eq | CmpOp::Ne);
            match (&l, &r) {
                (K::Int(..), K::Int(..)) => {}
                (K::Bool, K::Bool) | (K::Enum(_), K::Enum(_)) if !ordered && same_kind(&l, &r) => {}
                _ => return Err("a comparison of operands that cannot be compared".to_string()),
            }
            K::Bool
        }
        ExprKind::Count { args } => {
            for a in args {
                if ty_of(a, ctx)? != K::Bool {
                    return Err("`count` of a non-boolean".to_string());
                }
            }
            let n = i64::try_from(args.len()).map_err(|_| "a count too large".to_string())?;
            fits((i128::from(0), i128::from(n)))?
        }
        ExprKind::Arith { arith, lhs, rhs } => {
            let (a, b) = (
                int64(&ty_of(lhs, ctx)?, "an operand")?,
                int64(&ty_of(rhs, ctx)?, "an operand")?,
            );
            fits(range::arith(*arith, a, b))?
        }
    };
    // The serialised type must agree in kind with what the shim found.
    let agrees = matches!(
        (&k, &e.ty),
        (K::Bool, Ty::Bool) | (K::Int(..), Ty::Int { .. }) | (K::Enum(_), Ty::Enum { .. })
    );
    if !agrees {
        return Err(format!("an expression is typed {:?} but is {k:?}", e.ty));
    }
    Ok(k)
}

fn same_kind(a: &K, b: &K) -> bool {
    match (a, b) {
        (K::Enum(x), K::Enum(y)) => x == y,
        (K::Bool, K::Bool) => true,
        _ => false,
    }
}
