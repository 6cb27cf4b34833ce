//! `kalkic`: the command-line front of the compiler. The only part that reads files and
//! writes to the terminal; everything else is in the library.

use clap::{Parser, Subcommand, ValueEnum};
use kalki_compiler::diag::Diagnostic;
use kalki_compiler::source::{LoadError, SourceLoader};
use kalki_compiler::verify::{self, AssertionResult, Status};
use kalki_compiler::{codegen, codes, render, Checked};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod test_cmd;

/// Exit codes, as documented in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// No errors (warnings allowed).
    Ok = 0,
    /// The policy has errors.
    PolicyErrors = 1,
    /// Bad usage or an unreadable input.
    Usage = 2,
}

const EXIT_HELP: &str = "Exit codes:\n  0  no errors (warnings may have been reported)\n  1  the policy has errors\n  2  usage error, or an input could not be read (missing, unreadable, not UTF-8)";

#[derive(Parser)]
#[command(name = "kalkic", version, about = "Compiler for Kalki IoT security policies (.kalki)", after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, resolve names and type-check policy files.
    #[command(after_help = EXIT_HELP)]
    Check(CommonArgs),
    /// Check, then prove or refute the policy's properties with Z3 (K2xx findings).
    #[command(after_help = EXIT_HELP)]
    Verify(VerifyArgs),
    /// Check, then draw the device types' state machines as Graphviz DOT.
    ///
    /// One cluster per device type declared in the given files or used by their sites:
    /// states left to right in posture order, filled from green (least restrictive) to
    /// red (most restrictive), the initial state bold with an arrow from a dot, final
    /// states with a double border. Edges are transitions labelled with their triggers;
    /// dashed edges are moves made by site rules. Render with e.g. `dot -Tsvg`.
    #[command(after_help = EXIT_HELP)]
    Graph(GraphArgs),
    /// Verify, then write the site's deployable bundle: manifest.json, OpenFlow rule
    /// sets and container manifests. Nothing is written when the policy has errors.
    #[command(after_help = EXIT_HELP)]
    Build(BuildArgs),
    /// Run the policy tests next to the policies (`*.test.jsonl`) on the runtime's
    /// engine, optionally with the coverage of states, transitions and rules.
    #[command(after_help = test_cmd::TEST_EXIT_HELP)]
    Test(test_cmd::TestArgs),
}

#[derive(clap::Args)]
struct BuildArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    limits: Limits,
    /// The bundle directory. Replaced if it holds an earlier bundle; refused if it holds
    /// anything else.
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(clap::Args)]
struct GraphArgs {
    /// Policy files, or directories whose `.kalki` files are all read.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Draw only this device type (an unknown name is a usage error).
    #[arg(long, value_name = "TYPE")]
    device_type: Option<String>,
    /// Write the DOT to this file instead of standard output.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Colour in diagnostics (printed on standard error).
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    limits: Limits,
}

#[derive(clap::Args)]
struct Limits {
    /// Time limit of each solver query, in milliseconds. An undecided query is an error.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    solver_timeout_ms: u32,
    /// Largest number of combined device states an assertion search may visit.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_states: u64,
}

impl Limits {
    fn options(&self) -> verify::Options {
        verify::Options {
            timeout_ms: self.solver_timeout_ms,
            max_states: usize::try_from(self.max_states).unwrap_or(usize::MAX),
            ..verify::Options::default()
        }
    }
}

#[derive(clap::Args)]
struct CommonArgs {
    /// Policy files, or directories whose `.kalki` files are all checked.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Output format of diagnostics.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Colour in human output.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
    Sarif,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

/// Reads sources from the file system.
struct FsLoader;

impl SourceLoader for FsLoader {
    fn read_file(&self, path: &Path) -> Result<String, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound,
            _ => LoadError::Other(e.to_string()),
        })?;
        String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8)
    }
    fn canonical(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Exit::Usage as u8
            } else {
                Exit::Ok as u8
            });
        }
    };
    let exit = match cli.command {
        Command::Check(args) => run_check(&args),
        Command::Verify(args) => run_verify(&args),
        Command::Graph(args) => run_graph(&args),
        Command::Build(args) => run_build(&args),
        Command::Test(args) => test_cmd::run_test(&args),
    };
    ExitCode::from(exit as u8)
}

/// Expands directories into their `.kalki` files (sorted, not recursive).
fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, (PathBuf, String)> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|e| (p.clone(), e.to_string()))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "kalki") && f.is_file())
                .collect();
            if files.is_empty() {
                return Err((p.clone(), "directory holds no .kalki files".into()));
            }
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn inputs(args: &CommonArgs) -> Option<Vec<PathBuf>> {
    match expand(&args.files) {
        Ok(f) => Some(f),
        Err((p, why)) => {
            eprintln!(
                "error[{}]: cannot read `{}`: {why}",
                codes::UNREADABLE,
                p.display()
            );
            None
        }
    }
}

fn run_check(args: &CommonArgs) -> Exit {
    let Some(files) = inputs(args) else {
        return Exit::Usage;
    };
    let checked = kalki_compiler::check(&files, &FsLoader);
    emit(args, &checked, &[])
}

/// Checks and verifies the inputs and reports everything: what `verify` and `build`
/// share. `None` when an input could not be read (already reported).
fn verify_and_report(common: &CommonArgs, limits: &Limits) -> Option<(Exit, Checked)> {
    let files = inputs(common)?;
    let opts = limits.options();
    let solver = verify::z3::Z3Solver::new(opts.timeout_ms);
    let (checked, verified) = kalki_compiler::verify(&files, &FsLoader, &solver, &opts);
    let assertions = verified.map(|v| v.assertions).unwrap_or_default();
    let status = emit(common, &checked, &assertions);
    Some((status, checked))
}

fn run_verify(args: &VerifyArgs) -> Exit {
    verify_and_report(&args.common, &args.limits).map_or(Exit::Usage, |(status, _)| status)
}

fn run_build(args: &BuildArgs) -> Exit {
    let Some(files) = inputs(&args.common) else {
        return Exit::Usage;
    };
    let opts = args.limits.options();
    let solver = verify::z3::Z3Solver::new(opts.timeout_ms);
    let built = kalki_compiler::build(&files, &FsLoader, &solver, &opts);
    let status = emit(&args.common, &built.checked, &built.assertions);
    if status != Exit::Ok {
        eprintln!("error: no bundle written: the policy has errors");
        return status;
    }
    let bundle = match built.bundle {
        Ok(b) => b,
        Err(kalki_compiler::NoBundle::Errors) => return Exit::PolicyErrors,
        Err(kalki_compiler::NoBundle::Sites(_)) => {
            let why = built.checked.model.as_ref().map(one_site);
            if let Some(Err(why)) = why {
                eprintln!("error: {why}");
            }
            return Exit::Usage;
        }
    };
    match bundle.write_to(&args.output) {
        Ok(()) => {
            eprintln!(
                "wrote {} files to {}",
                bundle.files.len(),
                args.output.display()
            );
            Exit::Ok
        }
        Err(e) => {
            eprintln!(
                "error: cannot write the bundle to `{}`: {e}",
                args.output.display()
            );
            Exit::Usage
        }
    }
}

/// The site a bundle is built for: the policy must declare exactly one.
fn one_site(model: &kalki_compiler::ir::Model) -> Result<&kalki_compiler::ir::Site, String> {
    match model.sites.as_slice() {
        [site] => Ok(site),
        [] => Err("the policy declares no site; a bundle is built for one site".into()),
        many => {
            let names: Vec<&str> = many.iter().map(|s| s.name.as_str()).collect();
            Err(format!(
                "the policy declares {} sites ({}); build one site at a time",
                many.len(),
                names.join(", ")
            ))
        }
    }
}

fn run_graph(args: &GraphArgs) -> Exit {
    let common = CommonArgs {
        files: args.files.clone(),
        format: Format::Human,
        color: args.color,
    };
    let Some(files) = inputs(&common) else {
        return Exit::Usage;
    };
    let checked = kalki_compiler::check(&files, &FsLoader);
    let Some(model) = checked
        .model
        .as_ref()
        .filter(|_| checked.unreadable.is_empty())
    else {
        // Errors (or unreadable files): report them as `check` does.
        return emit(&common, &checked, &[]);
    };
    if !checked.diagnostics.is_empty() {
        let text = render::human(
            &checked.sources,
            &checked.diagnostics,
            use_colour(args.color),
        );
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
    let dot = match codegen::dot::state_machines(model, args.device_type.as_deref()) {
        Ok(dot) => dot,
        Err(e) => {
            eprintln!("error: {e}\n  help: {}", e.help());
            return Exit::Usage;
        }
    };
    let written = match &args.output {
        Some(path) => std::fs::write(path, dot.as_bytes())
            .map_err(|e| format!("cannot write `{}`: {e}", path.display())),
        None => std::io::stdout()
            .lock()
            .write_all(dot.as_bytes())
            .map_err(|e| format!("cannot write to standard output: {e}")),
    };
    match written {
        Ok(()) => Exit::Ok,
        Err(why) => {
            eprintln!("error: {why}");
            Exit::Usage
        }
    }
}

fn use_colour(color: Color) -> bool {
    match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

/// `file:line:col` and the source text of an assertion.
fn assertion_text(checked: &Checked, a: &AssertionResult) -> (String, String) {
    let f = checked.sources.get(a.loc.source);
    let (line, col) = checked.sources.line_col(a.loc.source, a.loc.span.start);
    let text = f
        .text
        .get(a.loc.span.start..a.loc.span.end)
        .unwrap_or("assert");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (format!("{}:{line}:{col}", f.name), text)
}

fn assertions_human(checked: &Checked, results: &[AssertionResult]) -> String {
    let mut out = String::new();
    for a in results {
        let (at, text) = assertion_text(checked, a);
        let verdict = match &a.status {
            Status::Proved => "proved",
            Status::Refuted => "REFUTED",
            Status::Unknown(_) => "UNKNOWN",
        };
        out.push_str(&format!(
            "{verdict:>8}  {text}  ({at}; {} combined states explored)\n",
            a.explored
        ));
        if matches!(a.status, Status::Proved) {
            // A proved `reachable traffic`: what crosses, and where.
            let reached = a.traffic.as_ref().filter(|t| {
                t.get("what").is_some() && a.kind == kalki_compiler::ir::AssertKind::Reachable
            });
            if let Some(t) = reached {
                let how = if t["openness"] == "authenticated" {
                    " (with credentials)"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "          {} crosses in `{}`{how}\n",
                    t["what"].as_str().unwrap_or("traffic"),
                    t["state"].as_str().unwrap_or("?")
                ));
            }
            for (i, step) in a.trace.iter().enumerate().skip(1) {
                out.push_str(&format!("          {i}. {}\n", step.event));
            }
        }
    }
    out
}

/// Prints diagnostics in the chosen format and picks the exit code.
fn emit(args: &CommonArgs, checked: &Checked, assertions: &[AssertionResult]) -> Exit {
    let unreadable: Vec<Diagnostic> = checked
        .unreadable
        .iter()
        .map(|(p, e)| {
            Diagnostic::error(
                codes::UNREADABLE,
                format!("cannot read `{}`: {e}", p.display()),
            )
        })
        .collect();
    let mut all: Vec<Diagnostic> = unreadable.clone();
    all.extend(checked.diagnostics.iter().cloned());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match args.format {
        Format::Human => {
            let mut text = render::human(&checked.sources, &all, use_colour(args.color));
            if !assertions.is_empty() {
                text.push_str("assertions:\n");
                text.push_str(&assertions_human(checked, assertions));
            }
            // Diagnostics go to stderr; a clean run says so on stderr too.
            let mut err = std::io::stderr().lock();
            err.write_all(text.as_bytes())
        }
        Format::Json => {
            let mut v = render::json(&checked.sources, &all);
            for (i, (p, _)) in checked.unreadable.iter().enumerate() {
                v["diagnostics"][i]["file"] = serde_json::json!(p.display().to_string());
            }
            let results: Vec<serde_json::Value> = assertions
                .iter()
                .map(|a| {
                    let (at, text) = assertion_text(checked, a);
                    let mut j = serde_json::to_value(a).unwrap_or_default();
                    j["at"] = serde_json::json!(at);
                    j["text"] = serde_json::json!(text);
                    j
                })
                .collect();
            v["assertions"] = serde_json::json!(results);
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            )
        }
        Format::Sarif => {
            let mut rules: Vec<(&str, &str)> = codes::NAME_AND_TYPE_CODES.to_vec();
            rules.extend_from_slice(verify::codes::ALL);
            let v = render::sarif(&checked.sources, &all, &rules);
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            )
        }
    };
    if written.is_err() {
        return Exit::Usage;
    }
    if !unreadable.is_empty() {
        Exit::Usage
    } else if all.iter().any(Diagnostic::is_error) {
        Exit::PolicyErrors
    } else {
        Exit::Ok
    }
}
