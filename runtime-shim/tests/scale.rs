//! A node of many devices, for real: a generated site of 300 devices (450 µmboxes of the
//! real image) applied from empty under the OCI backend, applied again with nothing to
//! change, then every device's verdict read from `kalki-shim run`: all enforced, none
//! failed closed for the queue in front of it. The same at 1,000 devices, under both
//! backends and measured, is `make bench-node` (docs/benchmarks.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::live::{ensure_test_image, OnDrop};
use common::scale::{self, Backend};
use common::TempDir;

#[test]
fn three_hundred_devices_applied_and_enforced() {
    if !scale::ready() {
        return;
    }
    ensure_test_image();
    let n = 300;
    let tmp = TempDir::new("scale");
    let oci = scale::oci_state(&tmp);
    scale::cleanup(n, &oci);
    let _clean = OnDrop(|| scale::cleanup(n, &oci));
    let applied = scale::apply_site(n, Backend::Oci, &tmp, &oci);
    eprintln!("{applied:?}");
    assert_eq!(applied.enforced, n);
    assert!(
        !applied.apply_output.contains("failed closed"),
        "{}",
        applied.apply_output
    );
}
