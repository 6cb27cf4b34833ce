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

mod explain_cmd;
mod fmt_cmd;
mod lsp;
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
    /// Serve editors: a language server (LSP) over standard input and output.
    ///
    /// Diagnostics on every edit (check), verification on save within a time budget,
    /// hover, go to definition (also into the standard library, written read-only under
    /// `$XDG_CACHE_HOME/kalkic/std/VERSION/`) and completion. See docs/tools/lsp.md.
    Lsp(lsp::Args),
    /// Rewrite policy files in the canonical layout (docs/tools/fmt.md); with `--check`,
    /// write nothing and print what would change.
    #[command(after_help = fmt_cmd::FMT_HELP)]
    Fmt(fmt_cmd::FmtArgs),
    /// Explain a diagnostic code (K of kalkic, S of kalki-shim): what it means, an example
    /// that triggers it, and how to fix it. `--list` lists every code.
    Explain(explain_cmd::ExplainArgs),
    /// Write a starter policy (`site.kalki`) that verifies and builds, and its tests
    /// (`site.test.jsonl`), to edit from there. An existing file is never overwritten
    /// (exit 2; nothing is written).
    Init(InitArgs),
    /// Print a completion script for a shell, e.g.
    /// `kalkic completions bash > /etc/bash_completion.d/kalkic`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args)]
struct InitArgs {
    /// The directory to write into; created if missing.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// The site's name.
    #[arg(long, default_value = "home", value_name = "NAME")]
    site: String,
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
    /// The site to build, when the policy declares more than one (every site is still
    /// verified). An unknown name is a usage error.
    #[arg(long, value_name = "NAME")]
    site: Option<String>,
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
        Command::Lsp(args) => lsp::run(&args),
        Command::Fmt(args) => fmt_cmd::run(&args),
        Command::Explain(args) => explain_cmd::run(&args),
        Command::Init(args) => run_init(&args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into memory first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kalkic", &mut script);
            match std::io::stdout().write_all(&script) {
                Ok(()) => Exit::Ok,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Ok,
                Err(e) => {
                    eprintln!("error: cannot write the completion script: {e}");
                    Exit::Usage
                }
            }
        }
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
    let built = kalki_compiler::build(&files, &FsLoader, &solver, &opts, args.site.as_deref());
    let status = emit(&args.common, &built.checked, &built.assertions);
    if status != Exit::Ok {
        eprintln!("error: no bundle written: the policy has errors");
        return status;
    }
    let bundle = match built.bundle {
        Ok(b) => b,
        Err(kalki_compiler::NoBundle::Errors) => return Exit::PolicyErrors,
        Err(kalki_compiler::NoBundle::Site(why)) => {
            eprintln!("error: {why}");
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

fn run_init(args: &InitArgs) -> Exit {
    let text = match kalki_compiler::init::starter(&args.site) {
        Ok(t) => t,
        Err(why) => {
            eprintln!("error: {why}");
            return Exit::Usage;
        }
    };
    let files = [
        (kalki_compiler::init::POLICY_FILE, text.as_str()),
        (
            kalki_compiler::init::TEST_FILE,
            kalki_compiler::init::STARTER_TESTS,
        ),
    ];
    if let Err(e) = std::fs::create_dir_all(&args.dir) {
        eprintln!("error: cannot create {}: {e}", args.dir.display());
        return Exit::Usage;
    }
    // `create_new`: an existing file is never overwritten, not even in a race; and either
    // both files are written or neither is left behind.
    let mut written: Vec<PathBuf> = Vec::new();
    for (name, contents) in files {
        let path = args.dir.join(name);
        let result = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| {
                written.push(path.clone());
                f.write_all(contents.as_bytes())?;
                f.sync_all()
            });
        if let Err(e) = result {
            for p in &written {
                let _ = std::fs::remove_file(p);
            }
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                eprintln!("error: {} exists; nothing written", path.display());
            } else {
                eprintln!("error: cannot write {}: {e}", path.display());
            }
            return Exit::Usage;
        }
    }
    eprintln!(
        "wrote {} and {}\nnext: kalkic verify {dir} && kalkic test {dir} && kalkic build {dir} -o out/",
        args.dir.join(files[0].0).display(),
        args.dir.join(files[1].0).display(),
        dir = args.dir.display()
    );
    Exit::Ok
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
/// One line after human diagnostics pointing at `kalkic explain` for the codes reported.
fn explain_hint(diags: &[Diagnostic]) -> String {
    let mut codes: Vec<&str> = diags.iter().map(|d| d.code).collect();
    codes.sort_unstable();
    codes.dedup();
    match codes.as_slice() {
        [] => String::new(),
        [one] => format!("for more about {one}: kalkic explain {one}\n"),
        [first, ..] => format!(
            "for more about a code ({}): kalkic explain {first}\n",
            codes.join(", ")
        ),
    }
}

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
            text.push_str(&explain_hint(&all));
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
            let v = render::sarif(&checked.sources, &all);
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
