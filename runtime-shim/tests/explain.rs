//! The runtime's codes explained by `kalkic explain` (`compiler/explain/S*.md`) are shown
//! by examples that really trigger them, run here without Open vSwitch or Docker:
//!
//! - ` ```jsonl trace DIR ` blocks are traces read against the bundle of the example
//!   policy `DIR`, as `kalki-shim simulate` reads them: the code must be reported (as a
//!   bad line, a refused message, or the S204 count); a ` ```jsonl trace DIR fixed `
//!   block must report nothing;
//! - ` ```jsonl test DIR ` blocks are policy test files (`kalkic test`) read against the
//!   same bundle: the code must be among the file's errors; a `fixed` block must parse
//!   and its tests pass on the engine;
//! - ` ```sh bundle DIR ` blocks edit the bundle of `DIR` (written to `bundle/`) with the
//!   block's shell lines, the `kalkic` and `kalki-shim` lines left to the test, and the
//!   edited bundle must be refused with the code, by the loader or, for S008 and S009, by
//!   what `run` and `apply` (`bundle::one_node`) or `controller`
//!   (`bundle::controller_ready`) ask of it once loaded;
//! - S109 and S110 (the engine's clock) and S401, S402 (the journal) are shown by the code
//!   below, as their texts say; S3xx need a running shim and S403, S404 a damaged journal
//!   (tests/api.rs and tests/journal.rs cover them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{compile_dir, TempDir};
use kalki_compiler::explain::{self, blocks, Block};
use kalki_model::policy_test;
use kalki_shim::bundle::{self, Bundle};
use kalki_shim::engine::{Config, Engine, Input};
use kalki_shim::journal::Journal;
use kalki_shim::trace;
use std::collections::BTreeMap;
use std::process::Command;

/// Codes whose examples this file shows in code, or that need a running shim.
const NO_INPUT_EXAMPLE: &[&str] = &[
    "S109", "S110", "S301", "S302", "S303", "S304", "S305", "S306", "S307", "S308", "S401", "S402",
    "S403", "S404",
];

/// Bundles of the example policies, built once each.
#[derive(Default)]
struct Sites(BTreeMap<String, kalki_compiler::codegen::bundle::Bundle>);

impl Sites {
    fn built(&mut self, dir: &str) -> &kalki_compiler::codegen::bundle::Bundle {
        self.0
            .entry(dir.to_string())
            .or_insert_with(|| compile_dir(dir))
    }
    fn loaded(&mut self, dir: &str) -> Bundle {
        let files = self.built(dir).files.clone();
        bundle::load(&files).unwrap()
    }
}

/// What `simulate` reports on a trace: the codes of bad lines, of refused messages, and
/// S204 for messages on unbound topics.
fn trace_codes(text: &str, bundle: &Bundle) -> Vec<String> {
    match trace::check_bundle(text, bundle) {
        Err(errors) => errors.iter().map(|e| e.code().to_string()).collect(),
        Ok(t) => {
            let mut codes: Vec<String> = t
                .refused
                .iter()
                .flat_map(|r| r.problems.iter().map(|p| p.code.to_string()))
                .collect();
            if t.messages.unbound > 0 {
                codes.push(kalki_shim::codes::TRACE_UNBOUND_TOPIC.to_string());
            }
            codes
        }
    }
}

/// What `kalkic test` reports on a test file: the codes of its bad lines, or, for a file
/// that reads, `FAILED` for each test that fails on the engine.
fn test_file_codes(text: &str, bundle: &Bundle) -> Vec<String> {
    match policy_test::parse(text.as_bytes(), bundle) {
        Err(errors) => errors.iter().map(|e| e.code.to_string()).collect(),
        Ok(file) => {
            let mut coverage = policy_test::Coverage::new(bundle);
            file.tests
                .iter()
                .map(|t| policy_test::run(bundle, t, &mut coverage))
                .filter(|o| !o.passed())
                .map(|o| format!("FAILED {}", o.name))
                .collect()
        }
    }
}

/// The codes of the bundle of `dir` once the block's shell lines have edited it.
fn edited_bundle_codes(sites: &mut Sites, dir: &str, script: &str, name: &str) -> Vec<String> {
    let tmp = TempDir::new(&format!("explain-{name}"));
    let at = tmp.path().join("bundle");
    std::fs::create_dir_all(&at).unwrap();
    let b = sites.built(dir).clone();
    let holder = BundleDir(at.clone());
    holder.write(&b);
    let edits: Vec<&str> = script
        .lines()
        .filter(|l| !l.starts_with("kalkic ") && !l.starts_with("kalki-shim "))
        .collect();
    let status = Command::new("sh")
        .args(["-ec", &edits.join("\n")])
        .current_dir(tmp.path())
        .status()
        .unwrap();
    assert!(status.success(), "{name}: the edit failed: {edits:?}");
    match bundle::load_dir(&at) {
        // What `run`/`apply` (S008) and `controller` (S009, a site with nodes) ask of it.
        Ok(b) => {
            let mut codes = Vec::new();
            if bundle::one_node(&b).is_err() {
                codes.push(kalki_shim::codes::NOT_ONE_NODE.to_string());
            }
            if !b.manifest.nodes.is_empty() && bundle::controller_ready(&b, false, false).is_err() {
                codes.push(kalki_shim::codes::NOT_FOR_CONTROLLER.to_string());
            }
            codes
        }
        Err(errors) => errors.iter().map(|e| e.code().to_string()).collect(),
    }
}

/// A directory the bundle is written to (`common::write_bundle` writes to a `TempDir`'s
/// root; the examples want it in `bundle/`).
struct BundleDir(std::path::PathBuf);

impl BundleDir {
    fn write(&self, b: &kalki_compiler::codegen::bundle::Bundle) {
        for (path, bytes) in &b.files {
            let p = self.0.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
    }
}

#[test]
fn every_input_example_reports_its_code_and_every_fix_nothing() {
    let mut sites = Sites::default();
    let mut failures = Vec::new();
    for c in explain::all().iter().filter(|c| c.code.starts_with('S')) {
        let runnable: Vec<Block> = blocks(c.text)
            .into_iter()
            .filter(|b| {
                matches!(
                    b.info.get(..2),
                    Some([lang, kind]) if (lang == "jsonl" && (kind == "trace" || kind == "test")) || (lang == "sh" && kind == "bundle")
                )
            })
            .collect();
        if NO_INPUT_EXAMPLE.contains(&c.code) {
            if !runnable.is_empty() {
                failures.push(format!(
                    "{}: has a runnable example; take it off NO_INPUT_EXAMPLE",
                    c.code
                ));
            }
            continue;
        }
        if !runnable
            .iter()
            .any(|b| !b.info.iter().any(|i| i == "fixed"))
        {
            failures.push(format!("{}: no runnable example", c.code));
        }
        for b in &runnable {
            let dir = b
                .info
                .get(2)
                .expect("the example names its policy directory");
            let fixed = b.info.iter().any(|i| i == "fixed");
            let got = if b.info[0] == "sh" {
                edited_bundle_codes(&mut sites, dir, &b.text, c.code)
            } else if b.info[1] == "test" {
                let bundle = sites.loaded(dir);
                test_file_codes(&b.text, &bundle)
            } else {
                let bundle = sites.loaded(dir);
                trace_codes(&b.text, &bundle)
            };
            if fixed && !got.is_empty() {
                failures.push(format!("{}: the fixed version reports {got:?}", c.code));
            }
            if !fixed && !got.iter().any(|g| g == c.code) {
                failures.push(format!(
                    "{}: the example does not report it; it reports {got:?}",
                    c.code
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// S109 and S110, as their texts show them: the engine's answer to a time that does not
/// fit its clock.
#[test]
fn the_engine_refuses_times_off_its_clock() {
    let bundle = Sites::default().loaded("examples/smart-office");
    let codes = |t_ms: u64| -> Vec<&'static str> {
        let mut engine = Engine::new(&bundle, Config::default(), 60_000);
        match engine.handle(t_ms, &Input::Tick) {
            Ok(_) => vec![],
            Err(es) => es.iter().map(|e| e.code()).collect(),
        }
    };
    assert_eq!(codes(30_000), [kalki_shim::codes::TIME_BACKWARDS]);
    assert_eq!(
        codes(60_000 + 367 * 86_400_000),
        [kalki_shim::codes::TOO_FAR_AHEAD]
    );
    assert!(codes(60_000 + 86_400_000).is_empty());
}

/// S401 and S402, as their texts show them.
#[test]
fn the_journal_refuses_a_missing_directory_and_another_schema() {
    let code = |e: &dyn miette::Diagnostic| e.code().map(|c| c.to_string());
    let tmp = TempDir::new("explain-journal");
    let missing = tmp.path().join("no/such/dir/journal.db");
    let e = Journal::open(&missing).err().unwrap();
    assert_eq!(code(&e).as_deref(), Some(kalki_shim::codes::JOURNAL_OPEN));
    let path = tmp.path().join("journal.db");
    drop(Journal::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 7")
        .unwrap();
    let e = Journal::open(&path).err().unwrap();
    assert_eq!(
        code(&e).as_deref(),
        Some(kalki_shim::codes::JOURNAL_VERSION)
    );
}

/// The bundle edits are checked on the bundle as `kalkic build` wrote it: unedited, it
/// loads (so each edit, not something else, makes the code).
#[test]
fn the_unedited_bundle_loads() {
    let mut sites = Sites::default();
    assert!(
        edited_bundle_codes(&mut sites, "examples/smart-office", "true", "unedited").is_empty()
    );
}
