//! Assertions over many devices of one type (issue 14's scale targets), decided group by
//! group (the default) and, side by side on the same input, by one search of the whole
//! product (`Options::compose_above = usize::MAX`, the method before). Each case prints both
//! verdicts, the states explored and the time; `docs/benchmarks.md` records them.
//!
//! - `never-1000`: `assert never any(p in plug: p in retired)` over 1,000 plugs, which
//!   holds for each plug alike (its containment rule can never fire, so `retired`, after
//!   `quarantine`, is out of reach);
//! - `refute-100`: `assert never any(p in plug: p in attack)` over 100 plugs: false, with
//!   a shortest run of two steps;
//! - `rule-100`: a hub sealed by a rule that reads the states of 100 plugs;
//!   `assert never hub in sealed` holds because no plug reaches `retired`.
//! - `count-1000`: `assert never count(p in plug: p in attack) >= 2` over 1,000 plugs:
//!   false, with a shortest run of four steps;
//! - `alike-12`: twelve cameras that each escalate when any of them is attacked (one
//!   group the rules tie together, searched once per arrangement):
//!   `assert never all(c in cam: c in suspicious or c in attack) and any(c in cam: c in
//!   normal)` holds.
//!
//! Run with `cargo bench -p kalki-compiler --bench scale` (`make bench-scale`). The whole
//! search stops at `KALKI_BENCH_MAX_STATES` (default 1,000,000, the CLI's default).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use kalki_compiler::source::{LoadError, SourceLoader};
use kalki_compiler::verify::{z3::Z3Solver, Options, Status};
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Mem(PathBuf, String);
impl SourceLoader for Mem {
    fn read_file(&self, path: &Path) -> Result<String, LoadError> {
        if path == self.0 {
            Ok(self.1.clone())
        } else {
            Err(LoadError::NotFound)
        }
    }
}

const PLUG: &str = r#"
device type Plug {
    sensed power: int in 0..3000
    alerts port_scan
    states normal < suspicious < attack < quarantine < retired
    initial normal
    normal { chain [pass] }
    suspicious { chain [pass] }
    attack { chain [drop] }
    quarantine { chain [drop] }
    retired { chain [drop] }
    normal -> suspicious on port_scan
    suspicious -> attack on port_scan count 3 within 1m
    suspicious -> normal after 5m quiet
    attack -> normal on operator reset
    quarantine -> retired on operator reset
}

device type Hub {
    states open < sealed
    initial open
    open { chain [pass] }
    sealed { chain [drop] }
    sealed -> open on operator reset
}
"#;

fn site(plugs: usize, hub: bool, assertion: &str) -> String {
    let mut s = format!("{PLUG}\nsite lab {{\n    bridge \"br0\" uplink \"up0\"\n");
    s += &format!("    device plug[1..{plugs}]: Plug at 10.1.0.1.. port \"plug{{n}}\"\n");
    // Can never fire: power never exceeds 3000. Keeps `quarantine` and `retired` out of reach.
    s +=
        "    rule contain for p in plug when p in attack and p.power > 5000 then p -> quarantine\n";
    if hub {
        s += "    device hub: Hub at 10.0.0.1 port \"hub\"\n";
        s += "    rule seal when any(p in plug: p in retired) then hub -> sealed\n";
    }
    s += &format!("    {assertion}\n}}\n");
    s
}

/// `n` cameras that each escalate when any of them is attacked.
fn cameras(n: usize) -> String {
    format!(
        "import std::devices::Camera\n\
         site yard {{\n    bridge \"br0\"\n\
         \x20   device cam[1..{n}]: Camera at 10.0.2.1.. port \"cam{{n}}\"\n\
         \x20   rule spread for c in cam on any(o in cam: o in attack) then escalate c to suspicious\n\
         \x20   assert never all(c in cam: c in suspicious or c in attack) and any(c in cam: c in normal)\n}}\n"
    )
}

fn run(name: &str, text: &str, opts: &Options) -> (String, usize, f64) {
    let path = PathBuf::from(format!("{name}.kalki"));
    let loader = Mem(path.clone(), text.to_string());
    let solver = Z3Solver::new(opts.timeout_ms);
    let started = Instant::now();
    let (checked, verified) = kalki_compiler::verify(&[path], &loader, &solver, opts);
    let secs = started.elapsed().as_secs_f64();
    let Some(verified) = verified else {
        let shown = kalki_compiler::render::human(&checked.sources, &checked.diagnostics, false);
        panic!("{name} does not check:\n{shown}");
    };
    let a = verified.assertions.first().expect("one assertion");
    let verdict = match &a.status {
        Status::Proved => "proved".to_string(),
        Status::Refuted => format!("refuted, run of {} steps", a.trace.len().saturating_sub(1)),
        Status::Unknown(why) => format!("unknown ({why})"),
    };
    (verdict, a.explored, secs)
}

fn main() {
    let max_states = std::env::var("KALKI_BENCH_MAX_STATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let cases = [
        (
            "never-1000",
            site(1000, false, "assert never any(p in plug: p in retired)"),
        ),
        (
            "refute-100",
            site(100, false, "assert never any(p in plug: p in attack)"),
        ),
        ("rule-100", site(100, true, "assert never hub in sealed")),
        (
            "count-1000",
            site(
                1000,
                false,
                "assert never count(p in plug: p in attack) >= 2",
            ),
        ),
        ("alike-12", cameras(12)),
    ];
    println!("| case | method | verdict | states explored | time (s) |");
    println!("|---|---|---|---:|---:|");
    for (name, text) in &cases {
        for (method, compose_above) in [
            ("by groups", Options::default().compose_above),
            ("whole product", usize::MAX),
        ] {
            let opts = Options {
                compose_above,
                max_states,
                ..Options::default()
            };
            let (verdict, explored, secs) = run(name, text, &opts);
            println!("| {name} | {method} | {verdict} | {explored} | {secs:.2} |");
        }
    }
}
