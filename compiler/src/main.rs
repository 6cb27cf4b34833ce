//! `kalkic`: the command-line front of the compiler. The only part that reads files and
//! writes to the terminal; everything else is in the library.

use clap::{Parser, Subcommand, ValueEnum};
use kalki_compiler::diag::Diagnostic;
use kalki_compiler::source::{LoadError, SourceLoader};
use kalki_compiler::{codes, render, Checked};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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

fn run_check(args: &CommonArgs) -> Exit {
    let files = match expand(&args.files) {
        Ok(f) => f,
        Err((p, why)) => {
            eprintln!(
                "error[{}]: cannot read `{}`: {why}",
                codes::UNREADABLE,
                p.display()
            );
            return Exit::Usage;
        }
    };
    let checked = kalki_compiler::check(&files, &FsLoader);
    emit(args, &checked, &checked.diagnostics)
}

/// Prints diagnostics in the chosen format and picks the exit code.
fn emit(args: &CommonArgs, checked: &Checked, diags: &[Diagnostic]) -> Exit {
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
    all.extend(diags.iter().cloned());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match args.format {
        Format::Human => {
            let color = match args.color {
                Color::Always => true,
                Color::Never => false,
                Color::Auto => {
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
                }
            };
            let text = render::human(&checked.sources, &all, color);
            // Diagnostics go to stderr; a clean run says so on stderr too.
            let mut err = std::io::stderr().lock();
            err.write_all(text.as_bytes())
        }
        Format::Json => {
            let mut v = render::json(&checked.sources, &all);
            for (i, (p, _)) in checked.unreadable.iter().enumerate() {
                v["diagnostics"][i]["file"] = serde_json::json!(p.display().to_string());
            }
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            )
        }
        Format::Sarif => {
            let v = render::sarif(&checked.sources, &all, codes::NAME_AND_TYPE_CODES);
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
