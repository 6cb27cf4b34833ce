//! A node of a thousand devices, under each µmbox backend side by side: `kalki-shim
//! apply` of a generated site from empty (half the devices with one µmbox, half with
//! two, the real image), the memory each µmbox takes, a second apply with nothing to
//! change, and `kalki-shim run` reading every device enforced. Needs root, OVS and
//! Docker; results and method in docs/benchmarks.md ("A node of a thousand devices").
//!
//! `make bench-node`; `KALKI_BENCH_DEVICES` (default 1000, even),
//! `KALKI_BENCH_BACKENDS` (default `oci,docker`), `KALKI_BENCH_PARALLEL` (`--parallel`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::live::ensure_test_image;
use common::scale::{self, Backend};
use common::TempDir;

fn main() {
    if !scale::ready() {
        panic!("the node bench needs OVS and Docker (make services)");
    }
    ensure_test_image();
    let n: usize = std::env::var("KALKI_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let backends = std::env::var("KALKI_BENCH_BACKENDS").unwrap_or_else(|_| "oci,docker".into());
    for name in backends.split(',') {
        let backend = match name.trim() {
            "oci" => Backend::Oci,
            "docker" => Backend::Docker,
            other => panic!("unknown backend {other}"),
        };
        let tmp = TempDir::new("bench-node");
        let oci = scale::oci_state(&tmp);
        scale::cleanup(n, &oci);
        let applied = scale::apply_site(n, backend, &tmp, &oci);
        println!(
            "{name}: {} devices, {} µmboxes: apply from empty {:.1} s, again {:.2} s, \
             {:.2} MB per µmbox, {} enforced",
            applied.devices,
            applied.umboxes,
            applied.apply.as_secs_f64(),
            applied.reapply.as_secs_f64(),
            applied.kb_per_umbox as f64 / 1024.0,
            applied.enforced,
        );
        for line in applied.apply_output.lines().filter(|l| l.contains(" in ")) {
            println!("  {line}");
        }
        scale::cleanup(n, &oci);
    }
}
