//! Property-based fuzzing of the front end: whatever the input, `kalki_lang::parse` and
//! `kalki_compiler::check` return (no panic, no hang), and every diagnostic points inside
//! the sources.
//!
//! - arbitrary bytes and arbitrary Unicode strings;
//! - a grammar-aware generator: runs of random tokens (keywords, punctuation, good and bad
//!   literals), and valid policies mutated token by token (delete, duplicate, swap,
//!   insert, replace, splice a run of random tokens).
//!
//! `KALKI_FUZZ_CASES` sets the number of cases per property (default 512, 10-20 s in
//! a debug build on two cores); each case must finish within `KALKI_FUZZ_TIMEOUT_SECS`
//! (default 5). proptest prints the shrunk input of any failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::MemLoader;
use kalki_compiler::source::{LoadError, SourceLoader, Sources};
use kalki_lang::lexer::Lexer;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::Config;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(scale: u32) -> Config {
    Config {
        cases: (env_u32("KALKI_FUZZ_CASES", 512) * scale).max(1),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

/// Runs `f(input)` on a fresh thread (with the main thread's 8 MiB stack, as in
/// `kalkic`) and fails if it panics or takes longer than the time limit.
fn guarded<I, T>(input: I, f: fn(I) -> T) -> T
where
    I: Send + 'static,
    T: Send + 'static,
{
    let limit = Duration::from_secs(u64::from(env_u32("KALKI_FUZZ_TIMEOUT_SECS", 5)));
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("fuzz-case".into())
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(f(input));
        })
        .expect("spawn a fuzz thread");
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let _ = handle.join();
            out
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // The thread is left running; the test fails now.
            panic!("the front end took longer than {limit:?} on this input")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(payload) => std::panic::resume_unwind(payload),
            Ok(()) => panic!("the fuzz thread ended without an answer"),
        },
    }
}

// ------------------------------------------------------------------ invariants

/// Syntax errors of one source lie inside it, on character boundaries.
fn parse_ok(src: String) -> Result<(), String> {
    let parsed = kalki_lang::parse(&src);
    for e in &parsed.errors {
        let s = e.span;
        if s.start > s.end || s.end > src.len() {
            return Err(format!(
                "{}: span {s:?} outside {} bytes",
                e.code.code(),
                src.len()
            ));
        }
        if !src.is_char_boundary(s.start) || !src.is_char_boundary(s.end) {
            return Err(format!("{}: span {s:?} splits a character", e.code.code()));
        }
        if e.message.is_empty() {
            return Err(format!("{}: empty message", e.code.code()));
        }
    }
    Ok(())
}

fn spans_ok(sources: &Sources, diags: &[kalki_compiler::diag::Diagnostic]) -> Result<(), String> {
    for d in diags {
        if d.message.is_empty() {
            return Err(format!("{}: empty message", d.code));
        }
        for l in &d.labels {
            if l.loc.source.0 as usize >= sources.len() {
                return Err(format!(
                    "{}: label in unknown source {:?}",
                    d.code, l.loc.source
                ));
            }
            let text = &sources.get(l.loc.source).text;
            let s = l.loc.span;
            if s.start > s.end || s.end > text.len() {
                return Err(format!(
                    "{} `{}`: span {s:?} outside {} bytes",
                    d.code,
                    d.message,
                    text.len()
                ));
            }
            if !text.is_char_boundary(s.start) || !text.is_char_boundary(s.end) {
                return Err(format!("{}: span {s:?} splits a character", d.code));
            }
        }
    }
    Ok(())
}

/// Checks the root `main.kalki` through `loader`, then renders the result in every format
/// (rendering must not panic either).
fn check_ok(loader: &dyn SourceLoader) -> Result<(), String> {
    let checked = kalki_compiler::check(&[PathBuf::from("main.kalki")], loader);
    spans_ok(&checked.sources, &checked.diagnostics)?;
    let has_errors = checked.diagnostics.iter().any(|d| d.is_error());
    if has_errors && checked.model.is_some() {
        return Err("a model was returned despite errors".into());
    }
    let _ = kalki_compiler::render::human(&checked.sources, &checked.diagnostics, false);
    let _ = kalki_compiler::render::json(&checked.sources, &checked.diagnostics);
    let _ = kalki_compiler::render::sarif(&checked.sources, &checked.diagnostics);
    Ok(())
}

/// Text for `main.kalki`, with a library it may import as `lib`.
fn check_text(src: String) -> Result<(), String> {
    parse_ok(src.clone())?;
    let loader = MemLoader::new([("main.kalki", src), ("lib.kalki", LIB.to_string())]);
    check_ok(&loader)
}

/// A loader over raw bytes: invalid UTF-8 is a load error, as with real files.
struct BytesLoader(Vec<u8>);

impl SourceLoader for BytesLoader {
    fn read_file(&self, path: &Path) -> Result<String, LoadError> {
        if path != Path::new("main.kalki") {
            return Err(LoadError::NotFound);
        }
        String::from_utf8(self.0.clone()).map_err(|_| LoadError::NotUtf8)
    }
}

fn check_bytes(bytes: Vec<u8>) -> Result<(), String> {
    parse_ok(String::from_utf8_lossy(&bytes).into_owned())?;
    check_ok(&BytesLoader(bytes))
}

// ------------------------------------------------------------------ generators

const LIB: &str = "umbox lib_box {\n    image \"kalki/lib:0.1\"\n    emits lib_alert\n}\n\
device type LibType {\n    sensed level: int in 0..10\n    states normal < attack\n    initial normal\n\
    normal { chain [lib_box] }\n    attack { chain [drop] }\n    normal -> attack on lib_alert\n}\n";

/// Valid policies the mutator starts from.
fn seeds() -> Vec<&'static str> {
    let mut s = vec![
        include_str!("../../tests/fixtures/check/clean/full_policy.kalki"),
        include_str!("../../tests/fixtures/check/clean/soft_keywords_and_comments.kalki"),
        include_str!("../../tests/fixtures/check/clean/mqtt_bindings.kalki"),
        include_str!("../../tests/fixtures/check/clean/groups.kalki"),
        include_str!("../../tests/fixtures/check/clean/device_ranges.kalki"),
        "import lib::*\nimport std::umboxes::*\n\nsite s {\n    bridge \"br0\"\n    device d: LibType at 10.0.0.1 port \"p\"\n    rule r when d.level > avg(d.level, last 3) then d -> attack, raise lib_alert on d\n    assert reachable d in attack\n}\n",
    ];
    s.extend(
        kalki_compiler::stdlib::MODULES
            .iter()
            .map(|(_, text)| *text),
    );
    s
}

/// Tokens the generator splices in: every keyword and punctuation mark, literals of every
/// kind (some out of range or malformed), names from the seeds, and stray characters.
const VOCAB: &[&str] = &[
    "import",
    "umbox",
    "image",
    "args",
    "env",
    "param",
    "emits",
    "mode",
    "device",
    "type",
    "sensed",
    "commands",
    "telemetry",
    "group",
    "any",
    "all",
    ":",
    "command",
    "publish",
    "map",
    "round",
    "json",
    "text",
    "payload",
    "/",
    "alerts",
    "states",
    "initial",
    "final",
    "chain",
    "on",
    "count",
    "within",
    "when",
    "for",
    "after",
    "quiet",
    "operator",
    "site",
    "bridge",
    "uplink",
    "unknown",
    "hosts",
    "at",
    "mac",
    "port",
    "trusted",
    "rule",
    "then",
    "raise",
    "escalate",
    "assert",
    "reachable",
    "never",
    "and",
    "or",
    "not",
    "in",
    "last",
    "clock",
    "true",
    "false",
    "bool",
    "int",
    "enum",
    "string",
    "duration",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ",",
    "::",
    ":",
    "..",
    ".",
    "->",
    "==",
    "!=",
    "<=",
    ">=",
    "<",
    ">",
    "=",
    "+",
    "-",
    "*",
    "0",
    "1",
    "3",
    "42",
    "-7",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "99999999999999999999",
    "0s",
    "30s",
    "10m",
    "500ms",
    "2h",
    "1d",
    "0ms",
    "00:00",
    "20:00",
    "06:00",
    "23:59",
    "24:00",
    "10.0.1.10",
    "255.255.255.255",
    "300.1.1.1",
    "02:00:00:00:01:10",
    "ff:ff:ff:ff:ff:ff",
    "\"br0\"",
    "\"\"",
    "\"{x}\"",
    "\"{\"",
    "\"a\\\"b\"",
    "\"unterminated",
    "normal",
    "suspicious",
    "attack",
    "quarantine",
    "sniffer",
    "ids",
    "auth_proxy",
    "drop",
    "pass",
    "inline",
    "tap",
    "reset",
    "Thermostat",
    "Light",
    "Camera",
    "LibType",
    "lib_box",
    "lib_alert",
    "lib",
    "std",
    "devices",
    "umboxes",
    "temperature",
    "heating",
    "motion",
    "level",
    "port_scan",
    "failed_login",
    "max_failures",
    "thermo",
    "hall_cam",
    "d",
    "x",
    "avg",
    "sum",
    "min",
    "max",
    "_",
    "#",
    "@",
    "$",
    "µ",
    "é",
    "😀",
    "\u{0}",
    "\\",
    "/*",
    "*/",
    "//",
    "///",
    "\n",
    "\t",
    " ",
];

fn token_strategy() -> impl Strategy<Value = &'static str> {
    select(VOCAB)
}

/// A run of random tokens joined by spaces or newlines.
fn token_run(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec((token_strategy(), any::<bool>()), 0..max).prop_map(|toks| {
        let mut out = String::new();
        for (t, newline) in toks {
            out.push_str(t);
            out.push(if newline { '\n' } else { ' ' });
        }
        out
    })
}

/// A seed as tokens, each with the text (spaces, comments) that precedes it.
fn tokenize(src: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut prev = 0;
    for item in Lexer::new(src) {
        let Ok((l, _, r)) = item else { continue };
        out.push((src[prev..l].to_string(), src[l..r].to_string()));
        prev = r;
    }
    out.push((src[prev..].to_string(), String::new()));
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(Index),
    Duplicate(Index),
    Swap(Index, Index),
    Insert(Index, &'static str),
    Replace(Index, &'static str),
    Splice(Index, String),
    /// Delete a run of up to eight tokens.
    Cut(Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => any::<Index>().prop_map(Mutation::Delete),
        2 => any::<Index>().prop_map(Mutation::Duplicate),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        3 => (any::<Index>(), token_strategy()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        3 => (any::<Index>(), token_strategy()).prop_map(|(i, t)| Mutation::Replace(i, t)),
        1 => (any::<Index>(), token_run(12)).prop_map(|(i, s)| Mutation::Splice(i, s)),
        1 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Cut(i, n)),
    ]
}

fn mutate(src: &str, mutations: &[Mutation]) -> String {
    let mut toks = tokenize(src);
    for m in mutations {
        let n = toks.len();
        if n == 0 {
            break;
        }
        match m {
            Mutation::Delete(i) => {
                toks.remove(i.index(n));
            }
            Mutation::Duplicate(i) => {
                let t = toks[i.index(n)].clone();
                toks.insert(i.index(n), t);
            }
            Mutation::Swap(a, b) => toks.swap(a.index(n), b.index(n)),
            Mutation::Insert(i, t) => toks.insert(i.index(n), (" ".into(), (*t).to_string())),
            Mutation::Replace(i, t) => toks[i.index(n)].1 = (*t).to_string(),
            Mutation::Splice(i, s) => toks.insert(i.index(n), (" ".into(), s.clone())),
            Mutation::Cut(i, len) => {
                let start = i.index(n);
                let end = (start + len).min(n);
                toks.drain(start..end);
            }
        }
    }
    toks.into_iter().map(|(gap, t)| gap + &t).collect()
}

fn mutated_policy() -> impl Strategy<Value = String> {
    let seeds = seeds();
    (select(seeds), prop::collection::vec(mutation(), 1..8))
        .prop_map(|(seed, muts)| mutate(seed, &muts))
}

// ------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let r = guarded(bytes, check_bytes);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn arbitrary_unicode(src in any::<String>()) {
        let r = guarded(src, check_text);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    /// Printable text heavy in the characters the language uses.
    #[test]
    fn arbitrary_policy_like_text(src in "[a-z_{}\\[\\]()<>=:.,\"0-9 \\n\\-]{0,300}") {
        let r = guarded(src, check_text);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }

    #[test]
    fn random_token_runs(src in token_run(200)) {
        let r = guarded(src, check_text);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

proptest! {
    #![proptest_config(config(4))]

    #[test]
    fn mutated_valid_policies(src in mutated_policy()) {
        let r = guarded(src, check_text);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

/// The seeds themselves are clean, so mutations start from valid policies.
#[test]
fn seeds_are_clean() {
    for seed in seeds() {
        let loader = MemLoader::new([("main.kalki", seed.to_string()), ("lib.kalki", LIB.into())]);
        let checked = kalki_compiler::check(&[PathBuf::from("main.kalki")], &loader);
        let rendered = kalki_compiler::render::human(&checked.sources, &checked.diagnostics, false);
        assert!(checked.diagnostics.is_empty(), "{rendered}");
    }
}

/// Mutating with no mutations gives the seed back: the tokenizer keeps every byte.
#[test]
fn tokenize_round_trips() {
    for seed in seeds() {
        assert_eq!(mutate(seed, &[]), seed);
    }
}

// ------------------------------------------------------------------ regressions

/// A device type whose one guard is `guard`, for the regression tests below.
fn with_guard(guard: &str) -> String {
    format!(
        "device type T {{\n    sensed x: int in 0..10\n    sensed b: bool\n    states normal < attack\n    \
         initial normal\n    normal {{ chain [pass] }}\n    attack {{ chain [drop] }}\n    \
         normal -> attack when {guard}\n}}\n"
    )
}

/// Was: the type checker recursed once per nesting level, so about 650 nested `not` (or a
/// 650-term `and`) overflowed the stack and aborted the process. Conditions deeper than
/// the limit are now refused (K113) before any recursive stage, and syntax trees are freed
/// without recursion.
#[test]
fn deep_nesting_does_not_overflow() {
    let not = with_guard(&format!("{}b", "not ".repeat(5_000)));
    assert_eq!(guarded(not, check_text), Ok(()));
    let and = with_guard(&vec!["b"; 5_000].join(" and "));
    assert_eq!(guarded(and, check_text), Ok(()));
}

/// Was: each comparison typed both operands twice (once quietly, to spot an enum on the
/// other side), so nested comparisons took 2^depth time (depth 30: about 12 minutes).
#[test]
fn nested_comparisons_are_fast() {
    let mut guard = "b".to_string();
    for _ in 0..30 {
        guard = format!("({guard} == b)");
    }
    assert_eq!(guarded(with_guard(&guard), check_text), Ok(()));
}
