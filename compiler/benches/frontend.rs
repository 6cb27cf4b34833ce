//! Front-end benchmark: parse + resolve + type-check (`kalki_compiler::check`) of
//! generated sites of 1,000 and 10,000 devices over 50 device types. Target: 10,000
//! devices in under 0.5 s. Results and method: `docs/benchmarks.md`.
//!
//! Run with `cargo bench -p kalki-compiler --bench frontend`. `KALKI_BENCH_DEVICES`
//! (comma-separated, e.g. `1000,10000,100000`) overrides the site sizes, to look at scaling.

mod gen;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

fn frontend(c: &mut Criterion) {
    let mut group = c.benchmark_group("frontend");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for devices in gen::sizes(&[1_000, 10_000]) {
        let site = gen::generate(&gen::Spec::new(devices));
        let loader = site.loader();
        // The generated policy must be clean, or the benchmark measures error paths.
        let checked = kalki_compiler::check(&site.roots, &loader);
        let rendered = kalki_compiler::render::human(&checked.sources, &checked.diagnostics, false);
        assert!(checked.diagnostics.is_empty(), "{rendered}");
        assert!(checked.model.is_some());
        eprintln!(
            "frontend/{devices}: {} files, {} lines, {} bytes",
            site.files.len(),
            site.total_lines(),
            site.total_bytes()
        );
        group.throughput(Throughput::Bytes(site.total_bytes() as u64));
        group.bench_with_input(BenchmarkId::new("check", devices), &site, |b, site| {
            b.iter(|| black_box(kalki_compiler::check(&site.roots, &loader)));
        });
        group.bench_with_input(BenchmarkId::new("parse_only", devices), &site, |b, site| {
            b.iter(|| {
                for text in site.files.values() {
                    black_box(kalki_lang::parse(text));
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, frontend);
criterion_main!(benches);
