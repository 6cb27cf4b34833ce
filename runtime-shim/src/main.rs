//! `kalki-shim`: the command-line front of the runtime. The only code that reads files
//! and writes to the terminal; everything else is in the library.

use clap::{Parser, Subcommand, ValueEnum};
use kalki_shim::bundle::{self, BundleError};
use kalki_shim::simulate;
use miette::{GraphicalReportHandler, GraphicalTheme, NamedSource, Report};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes, as documented in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Ok = 0,
    /// The bundle or the trace was refused.
    Refused = 1,
    /// Bad usage, or an input could not be read.
    Usage = 2,
}

const EXIT_HELP: &str = "Exit codes:\n  0  success\n  1  the bundle or the trace was refused (tampered, malformed, a bad event)\n  2  usage error, or an input could not be read";

#[derive(Parser)]
#[command(name = "kalki-shim", version, about = "Runtime for Kalki bundles built by `kalkic build`", after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a trace of timestamped events through the bundle's state machines on a
    /// virtual clock (no Open vSwitch, no Docker) and print the timeline of state changes,
    /// commands and raised alerts. Trace format: docs/runtime.md.
    #[command(after_help = EXIT_HELP)]
    Simulate(SimulateArgs),
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// The bundle directory written by `kalkic build`.
    bundle: PathBuf,
    /// The trace: JSON Lines, one event a line.
    trace: PathBuf,
    /// Output format of the timeline.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Keep firing timers until this time (ms since the start of the trace), past the
    /// last event. At most 366 days.
    #[arg(long, value_name = "T_MS", value_parser = clap::value_parser!(u64).range(..=kalki_shim::trace::MAX_T_MS))]
    until: Option<u64>,
    /// Colour in error reports (printed on standard error).
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
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
        Command::Simulate(args) => run_simulate(&args),
    };
    ExitCode::from(exit as u8)
}

fn handler(color: Color) -> GraphicalReportHandler {
    let color = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false)
}

/// Prints reports on standard error.
fn report(color: Color, reports: impl IntoIterator<Item = Report>) {
    let h = handler(color);
    let mut out = String::new();
    for r in reports {
        if h.render_report(&mut out, r.as_ref()).is_err() {
            out.push_str(&format!("{r}\n"));
        }
        out.push('\n');
    }
    let _ = std::io::stderr().write_all(out.as_bytes());
}

fn run_simulate(args: &SimulateArgs) -> Exit {
    if !args.bundle.join(bundle::MANIFEST).is_file() {
        eprintln!(
            "error: `{}` is not a bundle directory (no {})",
            args.bundle.display(),
            bundle::MANIFEST
        );
        return Exit::Usage;
    }
    let bundle = match bundle::load_dir(&args.bundle) {
        Ok(b) => b,
        Err(errors) => {
            let unreadable = errors
                .iter()
                .all(|e| matches!(e, BundleError::Unreadable { .. }));
            let n = errors.len();
            report(args.color, errors.into_iter().map(Report::new));
            eprintln!(
                "bundle `{}` refused ({n} problem{})",
                args.bundle.display(),
                if n == 1 { "" } else { "s" }
            );
            return if unreadable {
                Exit::Usage
            } else {
                Exit::Refused
            };
        }
    };
    let text = match std::fs::read(&args.trace).map(String::from_utf8) {
        Ok(Ok(t)) => t,
        Ok(Err(_)) => {
            eprintln!("error: `{}` is not UTF-8", args.trace.display());
            return Exit::Usage;
        }
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", args.trace.display());
            return Exit::Usage;
        }
    };
    let timeline = match simulate::simulate(&bundle, &text, args.until) {
        Ok(t) => t,
        Err(errors) => {
            let n = errors.len();
            let lines = errors
                .iter()
                .map(|e| e.line)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            let name = args.trace.display().to_string();
            report(
                args.color,
                errors.into_iter().map(|e| {
                    Report::new(e).with_source_code(NamedSource::new(name.clone(), text.clone()))
                }),
            );
            eprintln!(
                "trace `{name}` refused ({n} problem{} on {lines} line{}); nothing was replayed",
                if n == 1 { "" } else { "s" },
                if lines == 1 { "" } else { "s" }
            );
            return Exit::Refused;
        }
    };
    let out = match args.format {
        Format::Text => simulate::render_text(&timeline),
        Format::Json => simulate::render_json(&timeline),
    };
    match std::io::stdout().write_all(out.as_bytes()) {
        Ok(()) => Exit::Ok,
        Err(_) => Exit::Usage,
    }
}
