//! Deterministic generator of large synthetic policies for benchmarks, plus an in-memory
//! source loader. Reusable by later benches (verification, code generation): the output
//! is a clean policy, so every phase has real work to do.
//!
//! A generated site has three files: `umboxes.kalki` (a µmbox catalog), `types.kalki`
//! (device types importing the catalog) and `site.kalki` (the devices, cross-device rules
//! and assertions, importing both).
#![allow(dead_code)]

use kalki_compiler::source::{LoadError, SourceLoader};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Shape of a generated site.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub devices: usize,
    pub device_types: usize,
    /// One cross-device rule per this many devices.
    pub devices_per_rule: usize,
    /// One pair of assertions (and, unless deployable, a traffic assertion) per this many
    /// devices.
    pub devices_per_assert: usize,
    pub seed: u64,
    /// A site `kalkic build` accepts and one bridge holds: no findings that are errors
    /// (rules only raise alerts and send commands, no `never` assertions), sniffer and
    /// IDS as taps, one µmbox in `attack`.
    pub deployable: bool,
    /// One `never traffic` assertion per `devices_per_assert` devices.
    pub traffic: bool,
}

impl Spec {
    pub fn new(devices: usize) -> Self {
        Spec {
            devices,
            device_types: 50,
            devices_per_rule: 10,
            devices_per_assert: 100,
            seed: 0x006b_616c_6b69,
            deployable: false,
            traffic: false,
        }
    }

    /// A clean site of `devices` devices that fits one bridge (see [`Spec::deployable`]).
    pub fn deployable(devices: usize) -> Self {
        Spec {
            deployable: true,
            ..Spec::new(devices)
        }
    }
}

/// splitmix64: small, fast and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A generated policy: file path → text, and the root files to check.
pub struct Generated {
    pub files: BTreeMap<PathBuf, String>,
    pub roots: Vec<PathBuf>,
}

impl Generated {
    pub fn total_bytes(&self) -> usize {
        self.files.values().map(String::len).sum()
    }
    pub fn total_lines(&self) -> usize {
        self.files.values().map(|t| t.lines().count()).sum()
    }
    pub fn loader(&self) -> MemLoader {
        MemLoader {
            files: self.files.clone(),
        }
    }
}

/// Sources held in memory; paths are used as given.
#[derive(Default, Clone)]
pub struct MemLoader {
    pub files: BTreeMap<PathBuf, String>,
}

impl SourceLoader for MemLoader {
    fn read_file(&self, path: &Path) -> Result<String, LoadError> {
        self.files.get(path).cloned().ok_or(LoadError::NotFound)
    }
}

/// (name, parameters as `name: type = default`, alerts emitted)
const UMBOXES: &[(&str, &[&str], &[&str])] = &[
    ("sniffer", &["interval: duration = 60s"], &["port_scan"]),
    (
        "ids",
        &[
            "level: int in 1..5 = 3",
            "profile: enum { strict, lax } = strict",
        ],
        &["port_scan", "xmas_scan", "brute_force"],
    ),
    (
        "auth_proxy",
        &["max_failures: int in 1..100 = 5", "lockout: duration = 10m"],
        &["failed_login", "default_credentials"],
    ),
    ("rate_limit", &["pps: int in 1..100000"], &["dos_attempt"]),
    (
        "anti_dos",
        &["threshold: int in 1..1000 = 100"],
        &["dos_attempt"],
    ),
    ("ip_block", &["verbose: bool = false"], &["blocked_ip"]),
    ("fake_replies", &[], &["intercepted_command"]),
    ("xmas_block", &[], &["xmas_scan"]),
];

fn umboxes(spec: &Spec) -> String {
    let mut out = String::from("// Generated µmbox catalog.\n\n");
    for (name, params, emits) in UMBOXES {
        let _ = writeln!(out, "umbox {name} {{");
        let _ = writeln!(out, "    image \"kalki/{name}:0.1\"");
        if spec.deployable && matches!(*name, "sniffer" | "ids") {
            let _ = writeln!(out, "    mode tap");
        }
        let holes: Vec<String> = params
            .iter()
            .filter_map(|p| p.split(':').next())
            .map(|p| format!("\"--{p}={{{p}}}\""))
            .collect();
        let _ = writeln!(
            out,
            "    args [\"{name}\"{}{}]",
            if holes.is_empty() { "" } else { ", " },
            holes.join(", ")
        );
        for p in *params {
            let _ = writeln!(out, "    param {p}");
        }
        let _ = writeln!(out, "    emits {}", emits.join(", "));
        out.push_str("}\n\n");
    }
    out
}

/// A chain entry with arguments where the µmbox needs them.
fn chain_entry(rng: &mut Rng, name: &str) -> String {
    match name {
        "rate_limit" => format!("rate_limit(pps = {})", 100 + rng.below(10_000)),
        "ids" => format!("ids(level = {})", 1 + rng.below(5)),
        "auth_proxy" => format!("auth_proxy(max_failures = {})", 1 + rng.below(20)),
        other => other.to_string(),
    }
}

fn device_type(spec: &Spec, rng: &mut Rng, i: usize) -> String {
    let hi = 100 + rng.below(200);
    let mut out = String::new();
    let _ = writeln!(out, "/// Generated device type {i}.");
    let _ = writeln!(out, "device type T{i} {{");
    let _ = writeln!(out, "    sensed level: int in 0..{hi}");
    let _ = writeln!(out, "    sensed delta: int in -50..50");
    let _ = writeln!(out, "    sensed on: bool");
    let _ = writeln!(out, "    sensed mode: enum {{ low, mid, high }}");
    let _ = writeln!(out, "    commands turn_on, turn_off");
    let _ = writeln!(out, "    alerts tampered");
    let _ = writeln!(out, "    states normal < suspicious < attack");
    let _ = writeln!(out, "    initial normal");
    // normal watches, suspicious inspects, attack restricts.
    let watch = *rng.pick(&["sniffer", "ids"]);
    let inspect = *rng.pick(&["ids", "auth_proxy", "anti_dos", "xmas_block"]);
    let restrict = *rng.pick(&["rate_limit", "ip_block", "fake_replies"]);
    let normal = chain_entry(rng, watch);
    let suspicious = if spec.deployable {
        // The normal state's µmbox stays (one shared instance), and something that emits
        // `brute_force` is deployed for the transition that waits for it (else K205).
        let ids = if inspect != "ids" && watch != "ids" {
            ", ids"
        } else {
            ""
        };
        format!("{normal}{ids}, {}", chain_entry(rng, inspect))
    } else {
        format!(
            "{}, {}",
            chain_entry(rng, "sniffer"),
            chain_entry(rng, inspect)
        )
    };
    let attack = if rng.below(4) == 0 {
        "drop".to_string()
    } else if spec.deployable {
        chain_entry(rng, restrict)
    } else {
        format!(
            "{}, {}",
            chain_entry(rng, restrict),
            chain_entry(rng, "auth_proxy")
        )
    };
    let _ = writeln!(out, "    normal     {{ chain [{normal}] }}");
    let _ = writeln!(out, "    suspicious {{ chain [{suspicious}] }}");
    let _ = writeln!(out, "    attack     {{ chain [{attack}] }}");
    let t1 = hi / 2 + rng.below(hi / 2);
    let _ = writeln!(out, "    normal     -> suspicious on port_scan");
    let _ = writeln!(
        out,
        "    normal     -> suspicious when level > {t1} and not on for 30s"
    );
    let _ = writeln!(
        out,
        "    normal     -> suspicious when avg(level, last {}) >= {} or delta * 2 < -{}",
        2 + rng.below(20),
        hi / 3,
        10 + rng.below(40)
    );
    let _ = writeln!(out, "    normal     -> attack     on tampered");
    let _ = writeln!(
        out,
        "    suspicious -> attack     on brute_force count {} within {}s",
        2 + rng.below(5),
        30 + rng.below(300)
    );
    let _ = writeln!(
        out,
        "    suspicious -> attack     when mode == high and sum(delta, last 5) > 100"
    );
    let _ = writeln!(
        out,
        "    suspicious -> normal     after {}m quiet",
        1 + rng.below(30)
    );
    let _ = writeln!(out, "    attack     -> normal     on operator reset");
    out.push_str("}\n\n");
    out
}

fn types(spec: &Spec, rng: &mut Rng) -> String {
    let mut out = String::from("// Generated device types.\nimport umboxes::*\n\n");
    for i in 0..spec.device_types {
        out.push_str(&device_type(spec, rng, i));
    }
    out
}

fn site(spec: &Spec, rng: &mut Rng) -> String {
    let n = spec.devices;
    let mut out = String::from("// Generated site.\nimport types::*\nimport umboxes::*\n\n");
    out.push_str(
        "site generated {\n    bridge \"br0\" uplink \"eth0\"\n    unknown hosts drop\n\n",
    );
    for d in 0..n {
        let ty = d % spec.device_types.max(1);
        let (a, b, c) = (10 + d / 62_500, (d / 250) % 250 + 1, d % 250 + 1);
        let mac = [
            0x02,
            0,
            (d >> 24) as u8,
            (d >> 16) as u8,
            (d >> 8) as u8,
            d as u8,
        ];
        let mac: Vec<String> = mac.iter().map(|x| format!("{x:02x}")).collect();
        let trusted = if rng.below(5) == 0 { " trusted" } else { "" };
        let _ = writeln!(
            out,
            "    device d{d}: T{ty} at {a}.{b}.{c}.1 mac {} port \"p{d}\"{trusted}",
            mac.join(":")
        );
    }
    out.push('\n');
    for r in 0..n / spec.devices_per_rule.max(1) {
        let (x, y, z) = (rng.below(n), rng.below(n), rng.below(n));
        let _ = writeln!(out, "    rule r{r}");
        let _ = writeln!(
            out,
            "        when d{x}.level > {} and (d{y}.on or d{y}.mode == high) and not d{z} in attack and clock in 20:00..06:00",
            rng.below(100)
        );
        let _ = if spec.deployable {
            writeln!(out, "        then d{y}.turn_off, raise tampered on d{z}")
        } else {
            writeln!(
                out,
                "        then d{x} -> suspicious, d{y}.turn_off, raise tampered on d{z}"
            )
        };
    }
    out.push('\n');
    for a in 0..n / spec.devices_per_assert.max(1) {
        let (x, y) = (rng.below(n), rng.below(n));
        let _ = writeln!(out, "    assert reachable d{x} in attack");
        if spec.deployable {
            continue;
        }
        let _ = writeln!(
            out,
            "    assert never d{x} in attack and d{y} in normal and not d{} in suspicious",
            a % n.max(1)
        );
    }
    // What a device lets through in `attack`: the flows followed on the generated switch
    // flows, then the site search for the states where something crosses. Only in a site
    // that fits one bridge: without ports there are no flows (K213).
    if spec.traffic {
        for _ in 0..n / spec.devices_per_assert.max(1) {
            let _ = writeln!(
                out,
                "    assert never traffic with d{} in attack",
                rng.below(n)
            );
        }
    }
    out.push_str("}\n");
    out
}

/// Generates the three files of a site of `spec.devices` devices.
pub fn generate(spec: &Spec) -> Generated {
    let mut rng = Rng::new(spec.seed);
    let mut files = BTreeMap::new();
    files.insert(PathBuf::from("umboxes.kalki"), umboxes(spec));
    files.insert(PathBuf::from("types.kalki"), types(spec, &mut rng));
    files.insert(PathBuf::from("site.kalki"), site(spec, &mut rng));
    Generated {
        files,
        roots: vec![PathBuf::from("site.kalki")],
    }
}

/// The site sizes to benchmark: `KALKI_BENCH_DEVICES` (comma-separated) or `default`.
pub fn sizes(default: &[usize]) -> Vec<usize> {
    std::env::var("KALKI_BENCH_DEVICES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}
