//! Verifier benchmark: `kalki_compiler::verify` (check, then every K2xx check and every
//! assertion, with the real Z3) on generated sites of 10,000 and 100,000 devices over 50
//! device types. Targets: 10,000 devices in under 2 s, 100,000 in under 20 s, growing
//! about linearly. Results and method: `docs/benchmarks.md`. A third site, 10,000
//! devices that fit one bridge, adds one `assert never traffic` per hundred devices
//! (the flows followed on the generated switch flows, then the site search).
//!
//! Run with `cargo bench -p kalki-compiler --bench verify`. `KALKI_BENCH_DEVICES`
//! (comma-separated) overrides the site sizes.

#![allow(clippy::panic)] // a benchmark that cannot measure what it claims must stop

mod gen;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kalki_compiler::verify::{z3::Z3Solver, Options, Status};
use std::hint::black_box;
use std::time::Duration;

fn verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    let opts = Options::default();
    let mut specs: Vec<(String, gen::Spec)> = gen::sizes(&[10_000, 100_000])
        .into_iter()
        .map(|n| (n.to_string(), gen::Spec::new(n)))
        .collect();
    // Traffic assertions need the switch flows, so a site that fits one bridge.
    specs.push((
        "10000-traffic".into(),
        gen::Spec {
            traffic: true,
            ..gen::Spec::deployable(10_000)
        },
    ));
    for (name, spec) in specs {
        let devices = name;
        let site = gen::generate(&spec);
        let loader = site.loader();
        let solver = Z3Solver::new(opts.timeout_ms);
        // What is timed must be a complete verification: every assertion decided. The
        // generated rules are random, so the site has findings (listed below), which is
        // part of the workload.
        let (checked, verified) = kalki_compiler::verify(&site.roots, &loader, &solver, &opts);
        let verified = verified.unwrap_or_default();
        let undecided = verified
            .assertions
            .iter()
            .filter(|a| matches!(a.status, Status::Unknown(_)))
            .count();
        if undecided > 0 || checked.model.is_none() {
            let rendered =
                kalki_compiler::render::human(&checked.sources, &checked.diagnostics, false);
            panic!("the generated site does not verify to completion:\n{rendered}");
        }
        let mut codes: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for d in &checked.diagnostics {
            *codes.entry(d.code).or_default() += 1;
        }
        eprintln!(
            "verify/{devices}: findings {codes:?}; {} assertions, {} combined states explored",
            verified.assertions.len(),
            verified
                .assertions
                .iter()
                .map(|a| a.explored)
                .sum::<usize>(),
        );
        group.bench_with_input(BenchmarkId::new("verify", devices), &site, |b, site| {
            b.iter(|| black_box(kalki_compiler::verify(&site.roots, &loader, &solver, &opts)));
        });
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
