//! `kalkic test`, the binary's side: finds the tests next to the policies given, reads
//! them, and prints what `kalki_compiler::policy_test` made of them. Discovery and exit
//! codes: `docs/tools/test.md`.

use crate::{use_colour, Color, Exit, FsLoader};
use clap::ValueEnum;
use kalki_compiler::policy_test::{self, PolicyResult, Summary};
use kalki_compiler::{codes, render};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const TEST_EXIT_HELP: &str = "Exit codes:\n  0  every test passed (and the coverage meets --threshold)\n  1  a test failed, a test file or the policy has errors, or the coverage is below --threshold\n  2  usage error, or an input could not be read, or no test was found\n\nTests: every `*.test.jsonl` file in a directory given (and its subdirectories) runs on the policy of the `.kalki` files beside it; `NAME.test.jsonl` runs on `NAME.kalki` given alone; a test file given runs on its directory's `.kalki` files. Format: docs/tools/test.md.";

#[derive(clap::Args)]
pub struct TestArgs {
    /// Directories (searched with their subdirectories), policy files (`X.kalki`, tested
    /// by `X.test.jsonl`) or test files (`*.test.jsonl`). Default: the current directory.
    files: Vec<PathBuf>,
    /// Report which states, transitions and rules the tests exercised.
    #[arg(long)]
    coverage: bool,
    /// Fail (exit 1) when a policy's coverage, all of states, transitions and rules
    /// together, is below PCT percent. Implies --coverage.
    #[arg(long, value_name = "PCT", value_parser = percent)]
    threshold: Option<f64>,
    /// The site whose bundle the tests run on, when a policy declares more than one.
    #[arg(long, value_name = "NAME")]
    site: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TestFormat::Human)]
    format: TestFormat,
    /// Colour in diagnostics (printed on standard error).
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TestFormat {
    Human,
    Json,
}

fn percent(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage"))?;
    if (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("`{s}` is not between 0 and 100"))
    }
}

/// One policy and its test files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Suite {
    /// As given, or the directory found.
    shown: PathBuf,
    sources: Vec<PathBuf>,
    tests: Vec<PathBuf>,
}

const TEST_SUFFIX: &str = ".test.jsonl";

fn is_test(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(TEST_SUFFIX) && n.len() > TEST_SUFFIX.len())
}

/// What a directory holds directly, each sorted.
struct Listing {
    kalki: Vec<PathBuf>,
    tests: Vec<PathBuf>,
    /// Subdirectories, hidden ones and `target` left out.
    dirs: Vec<PathBuf>,
}

fn listing(dir: &Path) -> Result<Listing, String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    let kalki = entries
        .iter()
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "kalki"))
        .cloned()
        .collect();
    let tests = entries
        .iter()
        .filter(|p| p.is_file() && is_test(p))
        .cloned()
        .collect();
    let dirs = entries
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            p.is_dir() && !name.starts_with('.') && name != "target"
        })
        .collect();
    Ok(Listing { kalki, tests, dirs })
}

/// The suites an argument stands for.
fn discover(arg: &Path) -> Result<Vec<Suite>, String> {
    if arg.is_dir() {
        let mut suites = Vec::new();
        let mut todo = vec![arg.to_path_buf()];
        while let Some(dir) = todo.pop() {
            let Listing { kalki, tests, dirs } =
                listing(&dir).map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?;
            if !tests.is_empty() {
                if kalki.is_empty() {
                    return Err(format!(
                        "`{}` holds tests but no `.kalki` policy to run them on",
                        dir.display()
                    ));
                }
                suites.push(Suite {
                    shown: dir.clone(),
                    sources: kalki,
                    tests,
                });
            }
            // Depth first, in name order.
            todo.extend(dirs.into_iter().rev());
        }
        if suites.is_empty() {
            return Err(format!(
                "no test files (`*{TEST_SUFFIX}`) in `{}` or below it",
                arg.display()
            ));
        }
        return Ok(suites);
    }
    if !arg.is_file() {
        return Err(format!(
            "cannot read `{}`: no such file or directory",
            arg.display()
        ));
    }
    let dir = arg
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if is_test(arg) {
        let kalki = listing(dir)
            .map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?
            .kalki;
        if kalki.is_empty() {
            return Err(format!(
                "no `.kalki` policy beside `{}` to run it on",
                arg.display()
            ));
        }
        return Ok(vec![Suite {
            shown: dir.to_path_buf(),
            sources: kalki,
            tests: vec![arg.to_path_buf()],
        }]);
    }
    if arg.extension().is_some_and(|x| x == "kalki") {
        let stem = arg.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let test = dir.join(format!("{stem}{TEST_SUFFIX}"));
        if !test.is_file() {
            return Err(format!(
                "no tests for `{}`: expected `{}` beside it",
                arg.display(),
                test.display()
            ));
        }
        return Ok(vec![Suite {
            shown: arg.to_path_buf(),
            sources: vec![arg.to_path_buf()],
            tests: vec![test],
        }]);
    }
    Err(format!(
        "`{}` is neither a directory, a `.kalki` policy nor a `*{TEST_SUFFIX}` test file",
        arg.display()
    ))
}

/// Suites of all arguments; one policy given twice runs once, with the union of its
/// test files.
fn suites(args: &[PathBuf]) -> Result<Vec<Suite>, String> {
    let mut out: Vec<Suite> = Vec::new();
    let default = [PathBuf::from(".")];
    let args = if args.is_empty() { &default[..] } else { args };
    for a in args {
        for s in discover(a)? {
            match out.iter_mut().find(|o| o.sources == s.sources) {
                Some(o) => {
                    for t in s.tests {
                        if !o.tests.contains(&t) {
                            o.tests.push(t);
                        }
                    }
                }
                None => out.push(s),
            }
        }
    }
    Ok(out)
}

pub fn run_test(args: &TestArgs) -> Exit {
    let suites = match suites(&args.files) {
        Ok(s) => s,
        Err(why) => {
            eprintln!("error: {why}");
            return Exit::Usage;
        }
    };
    let with_coverage = args.coverage || args.threshold.is_some();
    let mut results = Vec::new();
    let mut diagnostics = Vec::new();
    let mut unreadable = false;
    for suite in &suites {
        let compiled = policy_test::compile(&suite.sources, &FsLoader, args.site.as_deref());
        let checked = &compiled.checked;
        unreadable |= !checked.unreadable.is_empty();
        for (p, e) in &checked.unreadable {
            eprintln!(
                "error[{}]: cannot read `{}`: {e}",
                codes::UNREADABLE,
                p.display()
            );
        }
        if !checked.diagnostics.is_empty() {
            match args.format {
                TestFormat::Human => {
                    let text = render::human(
                        &checked.sources,
                        &checked.diagnostics,
                        use_colour(args.color),
                    );
                    let _ = std::io::stderr().lock().write_all(text.as_bytes());
                }
                TestFormat::Json => {}
            }
        }
        diagnostics
            .push(render::json(&checked.sources, &checked.diagnostics)["diagnostics"].clone());
        let mut files = Vec::new();
        for t in &suite.tests {
            match std::fs::read(t) {
                Ok(bytes) => files.push((t.display().to_string(), bytes)),
                Err(e) => {
                    eprintln!(
                        "error[{}]: cannot read `{}`: {e}",
                        codes::UNREADABLE,
                        t.display()
                    );
                    unreadable = true;
                }
            }
        }
        let shown = suite.shown.display().to_string();
        results.push(match &compiled.bundle {
            Ok(bundle) => {
                let (files, coverage) = policy_test::run(bundle, &files);
                // A file not run would make the coverage look lower than the tests make
                // it: none is reported (the run fails anyway).
                let all_ran = files.iter().all(|f| f.errors.is_empty());
                PolicyResult {
                    policy: shown,
                    no_bundle: None,
                    files,
                    coverage: (with_coverage && all_ran).then_some(coverage),
                }
            }
            Err(why) => PolicyResult {
                policy: shown,
                no_bundle: Some(why.text()),
                files: Vec::new(),
                coverage: None,
            },
        });
    }
    let text = match args.format {
        TestFormat::Human => {
            let errors = policy_test::errors_text(&results);
            let _ = std::io::stderr().lock().write_all(errors.as_bytes());
            policy_test::human(&results, args.threshold)
        }
        TestFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&policy_test::json(
                &results,
                &diagnostics,
                args.threshold
            ))
            .unwrap_or_default()
        ),
    };
    if std::io::stdout().lock().write_all(text.as_bytes()).is_err() || unreadable {
        return Exit::Usage;
    }
    if Summary::of(&results, args.threshold).ok() {
        Exit::Ok
    } else {
        Exit::PolicyErrors
    }
}
