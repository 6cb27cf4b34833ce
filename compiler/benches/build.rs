//! `kalkic build` benchmark: verification (every K2xx check and assertion, real Z3), code
//! generation (ports, rule sets, container manifests, manifest.json with digests) and
//! writing the bundle (to tmpfs unless `KALKI_BENCH_OUT` names a directory), on a generated deployable site of 10,000 devices over 50
//! device types (`gen::Spec::deployable`). Target: under 3 s. Results and method:
//! `docs/benchmarks.md`.
//!
//! Run with `cargo bench -p kalki-compiler --bench build`. `KALKI_BENCH_DEVICES`
//! (comma-separated) overrides the site sizes; `KALKI_BENCH_PHASES=1` prints the time of
//! verification, generation and writing for every run.

#![allow(clippy::panic)] // a benchmark that cannot measure what it claims must stop

mod gen;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kalki_compiler::codegen::bundle::{self, Bundle};
use kalki_compiler::verify::{z3::Z3Solver, Options};
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

/// What `kalkic build` does, minus argument parsing and printing.
fn build(site: &gen::Generated, loader: &gen::MemLoader, solver: &Z3Solver, out: &Path) -> Bundle {
    let opts = Options::default();
    let t0 = std::time::Instant::now();
    let (checked, verified) = kalki_compiler::verify(&site.roots, loader, solver, &opts);
    let t1 = t0.elapsed();
    let errors: Vec<_> = checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .collect();
    let (Some(model), Some(_), true) = (&checked.model, verified, errors.is_empty()) else {
        let rendered = kalki_compiler::render::human(&checked.sources, &checked.diagnostics, false);
        panic!("the generated site does not build:\n{rendered}");
    };
    let b = bundle::build(model, &model.sites[0], &checked.sources, solver)
        .unwrap_or_else(|d| panic!("the generated site does not build: {d:?}"));
    let t2 = t0.elapsed();
    b.write_to(out)
        .unwrap_or_else(|e| panic!("cannot write the bundle: {e}"));
    if std::env::var_os("KALKI_BENCH_PHASES").is_some() {
        eprintln!(
            "verify {t1:?}, generate {:?}, write {:?}",
            t2 - t1,
            t0.elapsed() - t2
        );
    }
    b
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(30));
    let solver = Z3Solver::new(Options::default().timeout_ms);
    // Where bundles are written: `KALKI_BENCH_OUT`, else tmpfs (/dev/shm) when there is
    // one, so the figure is the compiler's work and not the disk's; docs/benchmarks.md
    // also gives the figure on this machine's disk.
    let base = std::env::var_os("KALKI_BENCH_OUT")
        .map(std::path::PathBuf::from)
        .or_else(|| Some(std::path::PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    let tmp = base.join(format!("kalki-bench-build-{}", std::process::id()));
    eprintln!("build: writing bundles under {}", tmp.display());
    for devices in gen::sizes(&[10_000]) {
        let site = gen::generate(&gen::Spec::deployable(devices));
        let loader = site.loader();
        let out = tmp.join(format!("bundle-{devices}"));
        let b = build(&site, &loader, &solver, &out);
        // What the bundle holds, per device per state.
        let manifest: serde_json::Value = serde_json::from_slice(&b.files["manifest.json"])
            .unwrap_or_else(|e| panic!("manifest: {e}"));
        let states: usize = manifest["devices"].as_array().map_or(0, |d| {
            d.iter()
                .map(|d| d["states"].as_array().map_or(0, Vec::len))
                .sum()
        });
        let lines = |prefix: &str| -> usize {
            b.files
                .iter()
                .filter(|(p, _)| p.starts_with(prefix))
                .map(|(_, bytes)| bytes.iter().filter(|&&c| c == b'\n').count())
                .sum()
        };
        let state_flows = lines("flows/") - lines("flows/base.ofctl");
        let ports = manifest["ports"].as_array().map_or(0, Vec::len);
        let containers = b
            .files
            .keys()
            .filter(|p| p.starts_with("containers/"))
            .count();
        let bytes: usize = b.files.values().map(Vec::len).sum();
        eprintln!(
            "build/{devices}: {} files, {bytes} bytes; base set {} flows; {state_flows} state \
             flows over {states} (device, state) pairs = {:.2} per device per state; \
             {ports} ports, {containers} µmbox instances",
            b.files.len(),
            lines("flows/base.ofctl"),
            state_flows as f64 / states.max(1) as f64,
        );
        // `kalkic build -o DIR` into a fresh directory (as in CI); removing the previous
        // run's bundle is set-up, not timed. Replacing a bundle costs its deletion on top
        // (docs/benchmarks.md gives that figure too).
        group.bench_with_input(BenchmarkId::new("build", devices), &site, |bch, site| {
            bch.iter_batched(
                || {
                    let _ = std::fs::remove_dir_all(&out);
                },
                |()| black_box(build(site, &loader, &solver, &out)),
                criterion::BatchSize::PerIteration,
            );
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&tmp);
}

criterion_group!(benches, bench);
criterion_main!(benches);
