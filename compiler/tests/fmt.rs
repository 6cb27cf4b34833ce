//! The formatter (`kalki_lang::format`, `kalkic fmt`):
//!
//! - over every source of the repository that parses (fixtures, examples, the standard
//!   library): formatting is idempotent and keeps the meaning, i.e. the syntax tree with
//!   its spans erased (a unit test below shows that comparison sees a dropped or
//!   reordered token);
//! - generated inputs: those sources with random whitespace and comments between their
//!   tokens, and mutated into other policies that still parse;
//! - the real binary: `fmt --check` passes on the examples and the standard library (so
//!   `make test` keeps them formatted), exit codes, diffs, in-place rewrite, stdin, and a
//!   file with a syntax error left byte for byte as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{code, kalkic, repo_root, MemLoader, TempDir};
use kalki_lang::fmt::same_tokens_and_comments;
use kalki_lang::lexer::Lexer;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::Config;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

// ------------------------------------------------------------------ meaning

/// What a source means to the compiler, without layout: its syntax tree with every span
/// erased.
fn meaning(src: &str) -> Value {
    let parsed = kalki_lang::parse(src);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut v = serde_json::to_value(&parsed.file).unwrap();
    erase_spans(&mut v);
    v
}

fn erase_spans(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let is_span = m.len() == 2
                && m.get("start").is_some_and(Value::is_u64)
                && m.get("end").is_some_and(Value::is_u64);
            if is_span {
                *v = Value::Null;
            } else {
                m.values_mut().for_each(erase_spans);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(erase_spans),
        _ => {}
    }
}

fn format(src: &str) -> String {
    kalki_lang::format(src).unwrap_or_else(|e| panic!("syntax errors {e:?} in:\n{src}"))
}

/// Formatting `src` is idempotent, keeps its meaning, its tokens and its comments.
fn check_formatting(name: &str, src: &str) -> Result<(), String> {
    let once = format(src);
    if meaning(&once) != meaning(src) {
        return Err(format!("{name}: the meaning changed:\n{src}\n---\n{once}"));
    }
    if !same_tokens_and_comments(src, &once) {
        return Err(format!(
            "{name}: tokens or comments changed:\n{src}\n---\n{once}"
        ));
    }
    let twice = format(&once);
    if twice != once {
        return Err(format!(
            "{name}: not idempotent:\n{once}\n---\n{twice}\n---\n{}",
            kalkic_diff(&once, &twice)
        ));
    }
    Ok(())
}

fn kalkic_diff(a: &str, b: &str) -> String {
    similar::TextDiff::from_lines(a, b)
        .unified_diff()
        .header("once", "twice")
        .to_string()
}

// ------------------------------------------------------------------ the corpus

fn kalki_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            kalki_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "kalki") {
            out.push(p);
        }
    }
}

/// Every `.kalki` source of the repository that parses, with its path.
fn corpus() -> Vec<(String, String)> {
    let root = repo_root();
    let mut files = Vec::new();
    for dir in [
        "tests/fixtures",
        "compiler/tests/fixtures",
        "examples",
        "stdlib-policies",
        "docs",
    ] {
        kalki_files(&root.join(dir), &mut files);
    }
    files
        .into_iter()
        .filter_map(|p| {
            let src = std::fs::read_to_string(&p).ok()?;
            kalki_lang::parse(&src).errors.is_empty().then(|| {
                (
                    p.strip_prefix(&root).unwrap_or(&p).display().to_string(),
                    src,
                )
            })
        })
        .collect()
}

#[test]
fn the_corpus_is_large_enough_to_mean_something() {
    let c = corpus();
    assert!(c.len() >= 40, "only {} sources parse", c.len());
    assert!(c.iter().any(|(n, _)| n.starts_with("examples/")));
    assert!(c.iter().any(|(n, _)| n.starts_with("stdlib-policies/")));
}

#[test]
fn every_source_that_parses_formats_idempotently_with_the_same_meaning() {
    let mut failures = Vec::new();
    for (name, src) in corpus() {
        if let Err(e) = check_formatting(&name, &src) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn meaning_sees_a_dropped_or_reordered_token() {
    let src = "device type T {\n    sensed a: bool\n    sensed b: int in 0..10\n    \
               states n < s\n    initial n\n    n -> s when not a and b > 3\n    \
               s -> n on operator reset\n}\n";
    let base = meaning(src);
    assert_eq!(
        meaning(&src.replace("  ", " ")),
        base,
        "layout is not meaning"
    );
    // Each of these changes one or two tokens and must change the meaning.
    for changed in [
        src.replace("when not a", "when a"),       // dropped `not`
        src.replace("n -> s when", "s -> n when"), // reordered names
        src.replace("not a and b > 3", "not (a and b > 3)"), // regrouped
        src.replace("0..10", "0..11"),             // another literal
        src.replace("states n < s", "states s < n"), // reordered states
        src.replace(
            "    sensed a: bool\n    sensed b: int in 0..10\n",
            "    sensed b: int in 0..10\n    sensed a: bool\n",
        ), // reordered members
    ] {
        assert_ne!(meaning(&changed), base, "not caught:\n{changed}");
    }
}

/// The typed model the compiler builds from these files (all checked together), spans
/// erased; `None` if they do not check clean.
fn model(files: &[(String, String)]) -> Option<Value> {
    let loader = MemLoader::new(files.iter().map(|(p, t)| (p.as_str(), t.clone())));
    let roots: Vec<PathBuf> = files.iter().map(|(p, _)| PathBuf::from(p)).collect();
    let checked = kalki_compiler::check(&roots, &loader);
    let mut v = serde_json::to_value(checked.model?).unwrap();
    erase_spans(&mut v);
    Some(v)
}

/// The compiler's own view: every example directory, and every clean fixture, formatted,
/// compiles to the same typed model.
#[test]
fn formatted_examples_and_fixtures_compile_to_the_same_model() {
    let root = repo_root();
    let mut groups: Vec<Vec<PathBuf>> = Vec::new();
    for dir in std::fs::read_dir(root.join("examples")).unwrap().flatten() {
        let mut files = Vec::new();
        kalki_files(&dir.path(), &mut files);
        groups.push(files);
    }
    let mut clean = Vec::new();
    kalki_files(&root.join("tests/fixtures/check/clean"), &mut clean);
    groups.extend(clean.into_iter().map(|f| vec![f]));
    let (mut compared, mut sensitive) = (0, 0);
    for group in groups {
        let files: Vec<(String, String)> = group
            .iter()
            .map(|p| {
                let rel = p.strip_prefix(&root).unwrap().display().to_string();
                (rel, std::fs::read_to_string(p).unwrap())
            })
            .collect();
        let Some(before) = model(&files) else {
            continue;
        };
        let formatted: Vec<(String, String)> =
            files.iter().map(|(p, t)| (p.clone(), format(t))).collect();
        let after = model(&formatted).unwrap_or_else(|| panic!("{group:?} no longer checks"));
        assert!(before == after, "{group:?}: another model once formatted");
        compared += 1;
        // The comparison sees one changed literal.
        if let Some((i, (p, t))) = formatted
            .iter()
            .enumerate()
            .find(|(_, (_, t))| t.contains("30m"))
        {
            let mut changed = formatted.clone();
            changed[i] = (p.clone(), t.replacen("30m", "31m", 1));
            assert!(
                model(&changed) != Some(before.clone()),
                "{p}: 30m -> 31m not seen"
            );
            sensitive += 1;
        }
    }
    assert!(compared >= 10, "only {compared} groups compared");
    assert!(sensitive >= 1);
}

// ------------------------------------------------------------------ generated inputs

fn config() -> Config {
    let cases = std::env::var("KALKI_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 500,
        ..Config::default()
    }
}

/// The seeds of the generators: the corpus' sources (a fixed order).
fn seeds() -> Vec<String> {
    corpus().into_iter().map(|(_, s)| s).collect()
}

/// A source's tokens, as text.
fn token_texts(src: &str) -> Vec<String> {
    Lexer::new(src)
        .flatten()
        .map(|(l, _, r)| src[l..r].to_string())
        .collect()
}

/// What may go between two tokens: any whitespace, and comments.
const GAPS: &[&str] = &[
    " ",
    " ",
    " ",
    "  ",
    "\n",
    "\n",
    "\n    ",
    "\n\n",
    "\n\n\n",
    "\t",
    "\n        ",
    " // a comment\n",
    "\n// own line\n",
    "\n/// doc\n",
    " /* block */ ",
    "/**/",
    "\n/* two\n   lines */\n",
];

/// Only the separators that carry no layout (no blank line, no comment).
const PLAIN_GAPS: &[&str] = &[" ", "  ", "\n", "\t", "\n    ", " \n "];

/// The tokens of `src` joined by the chosen gaps.
fn respace(src: &str, gaps: &[&str], picks: &[Index]) -> String {
    let mut out = String::new();
    for (n, t) in token_texts(src).iter().enumerate() {
        if n > 0 {
            let gap = picks
                .get(n % picks.len().max(1))
                .map_or(" ", |i| gaps[i.index(gaps.len())]);
            out.push_str(gap);
        }
        out.push_str(t);
    }
    out.push('\n');
    out
}

fn seed_and_picks() -> impl Strategy<Value = (String, Vec<Index>)> {
    (
        select(seeds()),
        prop::collection::vec(any::<Index>(), 1..64),
    )
}

/// Deletes, duplicates or swaps tokens of a seed; keeps the result if it still parses.
fn mutated() -> impl Strategy<Value = Option<String>> {
    (
        select(seeds()),
        prop::collection::vec((0u8..3, any::<Index>(), any::<Index>()), 1..4),
    )
        .prop_map(|(seed, muts)| {
            let mut toks = token_texts(&seed);
            for (op, a, b) in muts {
                let n = toks.len();
                if n == 0 {
                    break;
                }
                match op {
                    0 => {
                        toks.remove(a.index(n));
                    }
                    1 => {
                        let t = toks[a.index(n)].clone();
                        toks.insert(a.index(n), t);
                    }
                    _ => toks.swap(a.index(n), b.index(n)),
                }
            }
            let src = toks.join(" ");
            kalki_lang::parse(&src).errors.is_empty().then_some(src)
        })
}

proptest! {
    #![proptest_config(config())]

    /// Any whitespace and comments between the tokens of a policy.
    #[test]
    fn respaced_sources_format_with_the_same_meaning((seed, picks) in seed_and_picks()) {
        let src = respace(&seed, GAPS, &picks);
        if let Err(e) = check_formatting("respaced", &src) {
            prop_assert!(false, "{}", e);
        }
    }

    /// Without comments and blank lines, the layout of the input does not matter: two
    /// respacings of one policy format to the same text.
    #[test]
    fn layout_without_blank_lines_or_comments_is_canonical(
        (seed, picks) in seed_and_picks(),
        other in prop::collection::vec(any::<Index>(), 1..64),
    ) {
        let a = format(&respace(&seed, PLAIN_GAPS, &picks));
        let b = format(&respace(&seed, PLAIN_GAPS, &other));
        prop_assert_eq!(a, b);
    }

    /// Other policies: the seeds with tokens deleted, duplicated or swapped.
    #[test]
    fn mutated_policies_that_parse_format_with_the_same_meaning(src in mutated()) {
        if let Some(src) = src {
            if let Err(e) = check_formatting("mutated", &src) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}

// ------------------------------------------------------------------ the binary

/// Every example directory and the standard library are formatted: `make test` fails
/// when one is not (run `kalkic fmt examples stdlib-policies` to fix it).
#[test]
fn examples_and_stdlib_are_formatted() {
    let mut dirs: Vec<String> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| format!("examples/{}", e.file_name().to_string_lossy()))
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 5, "{dirs:?}");
    dirs.push("stdlib-policies".into());
    let mut args = vec!["fmt", "--check"];
    args.extend(dirs.iter().map(String::as_str));
    let o = kalkic(&args);
    assert_eq!(
        code(&o),
        0,
        "not formatted (run `kalkic fmt examples stdlib-policies`):\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout.is_empty());
}

const MESSY: &str = "site s {\n  bridge \"br0\"\n  device a : T   at 10.0.0.1 // first\n}\n";
const TIDY: &str = "site s {\n    bridge \"br0\"\n    device a: T at 10.0.0.1  // first\n}\n";

#[test]
fn check_prints_a_diff_exits_1_and_writes_nothing() {
    let dir = TempDir::new("fmt-check");
    let messy = dir.write("messy.kalki", MESSY);
    let tidy = dir.write("tidy.kalki", TIDY);
    let o = kalkic(&["fmt", "--check", dir.path().to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("messy.kalki"), "{out}");
    assert!(!out.contains("tidy.kalki"), "{out}");
    assert!(
        out.contains("-  device a : T   at 10.0.0.1 // first"),
        "{out}"
    );
    assert!(
        out.contains("+    device a: T at 10.0.0.1  // first"),
        "{out}"
    );
    assert!(out.contains("@@ "), "{out}");
    assert_eq!(std::fs::read_to_string(&messy).unwrap(), MESSY);
    // Formatted input: exit 0, no output.
    let o = kalkic(&["fmt", "--check", tidy.to_str().unwrap()]);
    assert_eq!(code(&o), 0);
    assert!(o.stdout.is_empty());
}

#[test]
fn rewrites_in_place_and_leaves_formatted_files_alone() {
    let dir = TempDir::new("fmt-rewrite");
    let messy = dir.write("messy.kalki", MESSY);
    let tidy = dir.write("tidy.kalki", TIDY);
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(&tidy)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let o = kalkic(&["fmt", dir.path().to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&messy).unwrap(), TIDY);
    assert_eq!(
        std::fs::metadata(&tidy).unwrap().modified().unwrap(),
        old,
        "untouched"
    );
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(names.len(), 2);
    // And now it passes the check.
    let o = kalkic(&["fmt", "--check", messy.to_str().unwrap()]);
    assert_eq!(code(&o), 0);
}

fn kalkic_stdin(args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kalkic"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

#[test]
fn stdin_to_stdout() {
    for args in [&["fmt"][..], &["fmt", "-"][..]] {
        let o = kalkic_stdin(args, MESSY);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout), TIDY);
    }
    let o = kalkic_stdin(&["fmt", "--check", "-"], MESSY);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains("<stdin>"));
}

#[test]
fn a_syntax_error_is_reported_and_the_file_left_byte_for_byte() {
    let dir = TempDir::new("fmt-syntax");
    let broken = "site s {\r\n  device a : T at\n}   \n\n\n";
    let bad = dir.write("bad.kalki", broken);
    let good = dir.write("good.kalki", MESSY);
    let o = kalkic(&["fmt", "--color", "never", dir.path().to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("K002"), "{err}");
    assert!(err.contains("expected an IPv4 address"), "{err}");
    assert_eq!(std::fs::read(&bad).unwrap(), broken.as_bytes());
    // The other file is still formatted.
    assert_eq!(std::fs::read_to_string(&good).unwrap(), TIDY);
    // As JSON, like `check --format json`.
    let o = kalkic(&["fmt", "--check", "--format", "json", bad.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["diagnostics"][0]["code"], "K002", "{v}");
    assert_eq!(std::fs::read(&bad).unwrap(), broken.as_bytes());
}

#[test]
fn a_missing_file_is_a_usage_error_and_the_others_are_still_formatted() {
    let o = kalkic(&["fmt", "--check", "no/such/file.kalki"]);
    assert_eq!(code(&o), 2);
    let dir = TempDir::new("fmt-missing");
    let messy = dir.write("messy.kalki", MESSY);
    let missing = dir.path().join("missing.kalki");
    let o = kalkic(&["fmt", missing.to_str().unwrap(), messy.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.kalki"));
    assert_eq!(std::fs::read_to_string(&messy).unwrap(), TIDY);
}

#[test]
fn help_documents_exit_codes() {
    let o = kalkic(&["fmt", "--help"]);
    assert_eq!(code(&o), 0);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Exit codes"), "{out}");
    assert!(out.contains("1  with --check"), "{out}");
    assert!(out.contains("--check"), "{out}");
}

/// As a filter, a text with syntax errors comes back unchanged on standard output, so an
/// editor's buffer piped through `kalkic fmt` is never replaced by nothing.
#[test]
fn a_refused_text_on_stdin_comes_back_unchanged() {
    let broken = "site s {\n  device a : T at\n}\n";
    let o = kalkic_stdin(&["fmt", "--color", "never"], broken);
    assert_eq!(code(&o), 1);
    assert_eq!(String::from_utf8_lossy(&o.stdout), broken);
    assert!(String::from_utf8_lossy(&o.stderr).contains("K002"));
    // A JSON report owns standard output: the text is not mixed into it.
    let o = kalkic_stdin(&["fmt", "--format", "json"], broken);
    assert_eq!(code(&o), 1);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["diagnostics"][0]["code"], "K002", "{v}");
}

/// Walking a directory does not follow symbolic links (a link to a parent would loop); a
/// directory with no policy in it is a usage error; a read-only file is left alone.
#[cfg(unix)]
#[test]
fn walks_skip_links_empty_directories_fail_read_only_files_stay() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let dir = TempDir::new("fmt-walk");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let real = tree.join("sub").join("real.kalki");
    std::fs::write(&real, MESSY).unwrap();
    symlink("..", tree.join("sub").join("loop")).unwrap();
    symlink(&real, tree.join("link.kalki")).unwrap();
    let o = kalkic(&["fmt", "--check", tree.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    let diff = String::from_utf8_lossy(&o.stdout);
    assert_eq!(diff.matches("+++ ").count(), 1, "one file, once: {diff}");
    assert!(diff.contains("sub/real.kalki"), "{diff}");

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = kalkic(&["fmt", "--check", empty.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no .kalki files"));

    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o444)).unwrap();
    let o = kalkic(&["fmt", real.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("read-only"));
    assert_eq!(std::fs::read_to_string(&real).unwrap(), MESSY);
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
}
