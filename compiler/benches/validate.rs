//! Translation-validation benchmark: `verify::dataplane::validate` (K208, K212) on the
//! rule sets of a generated site of 10,000 devices over 50 device types. Target: `kalkic
//! build` of such a site in under 3 s including verification, which leaves the validator
//! well under 1.5 s. Results and method: `docs/benchmarks.md`.
//!
//! The site is `gen::Spec::deployable`, the one the build benchmark uses: it fits one
//! bridge. Besides the timed runs it prints, once, the time of each phase, of the whole
//! `bundle::build`, and of validating a plane where every device's chain is bypassed in
//! one state (the error path: one finding per device, answered from the cache).
//!
//! Run with `cargo bench -p kalki-compiler --bench validate`. `KALKI_BENCH_DEVICES`
//! (comma-separated) overrides the site sizes.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod gen;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kalki_compiler::codegen::bundle;
use kalki_compiler::codegen::openflow::{self, Action, EntryPorts, Proto, UPLINK_OFPORT};
use kalki_compiler::verify::dataplane::{self, DataPlane};
use kalki_compiler::verify::solver::{Outcome, Query, Solver};
use kalki_compiler::verify::{z3::Z3Solver, Options};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// A solver that never decides: validation with it is clean only if no query was needed.
struct Undecided;

impl Solver for Undecided {
    fn solve(&self, _: &Query) -> Outcome {
        Outcome::Unknown("no solver".into())
    }
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    eprintln!("  {what}: {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);
    out
}

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    let opts = Options::default();
    for devices in gen::sizes(&[10_000]) {
        let site = gen::generate(&gen::Spec::deployable(devices));
        let loader = site.loader();
        let solver = Z3Solver::new(opts.timeout_ms);
        eprintln!("validate/{devices}: one run of each phase");
        let (checked, _) = timed("check and verify (kalki_compiler::verify)", || {
            kalki_compiler::verify(&site.roots, &loader, &solver, &opts)
        });
        let model = checked.model.expect("the generated site checks");
        let s = &model.sites[0];
        let plane: DataPlane = timed("number ports and generate flows", || {
            let ports = openflow::allocate(&model, s).expect("the deployable site fits a bridge");
            dataplane::plane(&model, s, &ports)
        });
        let flows = plane.base.len()
            + plane
                .devices
                .iter()
                .flat_map(|d| &d.states)
                .map(|s| s.flows.len())
                .sum::<usize>();
        let found = timed(&format!("validate {flows} flows"), || {
            dataplane::validate(&plane, &solver)
        });
        if !found.is_empty() {
            let rendered = kalki_compiler::render::human(&checked.sources, &found, false);
            panic!("the generated site does not validate:\n{rendered}");
        }
        // Proved by the shortcuts alone: a solver that never decides leaves nothing open.
        assert!(
            dataplane::validate(&plane, &Undecided).is_empty(),
            "the generated site needs solver queries"
        );
        timed("render the rule sets", || {
            black_box(openflow::render(&plane.base));
            for d in &plane.devices {
                for s in &d.states {
                    black_box(openflow::render(&s.flows));
                }
            }
        });
        match openflow::allocate(&model, s) {
            Ok(_) => {
                let b = timed(
                    "bundle::build (ports, flows, validation, all files)",
                    || bundle::build(&model, s, &checked.sources, &solver),
                );
                assert!(b.is_ok(), "the generated site builds");
            }
            Err(e) => eprintln!(
                "  bundle::build: not timed, the site needs {} ports (K214)",
                e.needed
            ),
        }
        // The error path: in its first state with an inline µmbox, every device sends
        // its IP traffic straight to the uplink.
        let mut broken = plane.clone();
        for d in &mut broken.devices {
            let dp = d.port;
            let Some(st) = d.states.iter_mut().find(|s| {
                matches!(&s.chain, dataplane::ChainPlane::Entries(es)
                    if es.iter().any(|e| matches!(e, EntryPorts::Inline { .. })))
            }) else {
                continue;
            };
            if let Some(f) = st
                .flows
                .iter_mut()
                .find(|f| f.matches.in_port == Some(dp) && f.matches.proto == Some(Proto::Ip))
            {
                f.actions = vec![Action::Output(UPLINK_OFPORT)];
            }
        }
        let findings = timed("validate with every device's chain bypassed", || {
            dataplane::validate(&broken, &solver)
        });
        eprintln!("  ... {} findings", findings.len());
        group.bench_with_input(BenchmarkId::new("validate", devices), &plane, |b, p| {
            b.iter(|| black_box(dataplane::validate(p, &solver)));
        });
    }
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
