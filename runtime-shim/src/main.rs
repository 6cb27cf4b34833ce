//! `kalki-shim`: the command-line front of the runtime. The only code that reads files
//! and writes to the terminal; everything else is in the library.

use clap::{Parser, Subcommand, ValueEnum};
use kalki_shim::bundle::{self, BundleError};
use kalki_shim::docker;
use kalki_shim::node::{Closed, Node, NodeConfig};
use kalki_shim::simulate;
use miette::{GraphicalReportHandler, GraphicalTheme, NamedSource, Report};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Bring this node's Open vSwitch bridge and Docker engine to the bundle: bridge and
    /// ports with the bundle's numbers, base flows, each device's flows for its state,
    /// its µmboxes running and plugged in. Idempotent; `--dry-run` prints the plan.
    #[command(after_help = EXIT_HELP)]
    Apply(ApplyArgs),
}

/// Where and how the node is driven.
#[derive(clap::Args)]
struct NodeArgs {
    /// The Docker engine's socket.
    #[arg(long, default_value = "/var/run/docker.sock", value_name = "PATH")]
    docker: String,
    /// Open vSwitch datapath for a bridge the shim creates: `netdev` (userspace, needs no
    /// kernel module) or `system`.
    #[arg(long, default_value = "netdev")]
    datapath: String,
    /// Limit of every single Open vSwitch, Docker or `ip` call, in seconds.
    #[arg(long, default_value_t = 10, value_name = "S")]
    call_timeout: u64,
    /// How long a µmbox may take to report ready, in seconds.
    #[arg(long, default_value_t = 30, value_name = "S")]
    ready_timeout: u64,
}

#[derive(clap::Args)]
struct ApplyArgs {
    /// The bundle directory written by `kalkic build`.
    bundle: PathBuf,
    /// Print what would change, change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    node: NodeArgs,
    /// Colour in error reports (printed on standard error).
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
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
        Command::Apply(args) => run_apply(&args),
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

/// Loads and checks a bundle directory, reporting every problem.
fn load_bundle(dir: &std::path::Path, color: Color) -> Result<bundle::Bundle, Exit> {
    if !dir.join(bundle::MANIFEST).is_file() {
        eprintln!(
            "error: `{}` is not a bundle directory (no {})",
            dir.display(),
            bundle::MANIFEST
        );
        return Err(Exit::Usage);
    }
    bundle::load_dir(dir).map_err(|errors| {
        let unreadable = errors
            .iter()
            .all(|e| matches!(e, BundleError::Unreadable { .. }));
        let n = errors.len();
        report(color, errors.into_iter().map(Report::new));
        eprintln!(
            "bundle `{}` refused ({n} problem{})",
            dir.display(),
            if n == 1 { "" } else { "s" }
        );
        if unreadable {
            Exit::Usage
        } else {
            Exit::Refused
        }
    })
}

fn run_simulate(args: &SimulateArgs) -> Exit {
    let bundle = match load_bundle(&args.bundle, args.color) {
        Ok(b) => b,
        Err(exit) => return exit,
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

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

async fn connect_node(bundle: bundle::Bundle, args: &NodeArgs) -> Result<Node, Exit> {
    let cfg = NodeConfig {
        datapath: args.datapath.clone(),
        call_timeout: Duration::from_secs(args.call_timeout.max(1)),
        ready_timeout: Duration::from_secs(args.ready_timeout.max(1)),
    };
    let docker = docker::Engine::connect(&args.docker, cfg.call_timeout)
        .await
        .map_err(|e| {
            eprintln!("error: {e}");
            Exit::Usage
        })?;
    let node = Node::new(bundle, docker, cfg);
    node.ovs().ping().await.map_err(|e| {
        eprintln!("error: {e}");
        Exit::Usage
    })?;
    Ok(node)
}

fn run_apply(args: &ApplyArgs) -> Exit {
    let bundle = match load_bundle(&args.bundle, args.color) {
        Ok(b) => b,
        Err(exit) => return exit,
    };
    let Some(rt) = runtime() else {
        return Exit::Usage;
    };
    rt.block_on(async {
        let states = initial_states(&bundle);
        let node = match connect_node(bundle, &args.node).await {
            Ok(n) => n,
            Err(exit) => return exit,
        };
        let plan = match node.plan(&states).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Usage;
            }
        };
        let site = node.bundle().manifest.site.clone();
        if plan.is_empty() {
            println!("site `{site}`: nothing to change");
            return Exit::Ok;
        }
        let steps = node.describe(&plan);
        println!(
            "site `{site}`: {} change{}{}",
            steps.len(),
            if steps.len() == 1 { "" } else { "s" },
            if args.dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            }
        );
        for s in &steps {
            println!("  {s}");
        }
        if args.dry_run {
            return Exit::Ok;
        }
        match node.execute(&plan).await {
            Ok(report) => {
                let mut exit = Exit::Ok;
                for (device, closed, reason) in &report.failed_closed {
                    let d = &node.bundle().manifest.devices[*device];
                    let installed = match closed {
                        Closed::State(s) => {
                            format!("its most restrictive state `{}`", d.states[*s].name)
                        }
                        Closed::NoFlows => "no flows (all its traffic is dropped)".to_string(),
                    };
                    eprintln!(
                        "error: `{}` failed closed: {reason}; installed {installed}",
                        d.name
                    );
                    exit = Exit::Refused;
                }
                if exit == Exit::Ok {
                    println!("applied");
                }
                exit
            }
            Err(e) => {
                eprintln!("error: {e}; the node may be partly applied; run apply again");
                Exit::Usage
            }
        }
    })
}

/// Every device's initial state (index into its states).
fn initial_states(b: &bundle::Bundle) -> Vec<usize> {
    b.manifest
        .devices
        .iter()
        .map(|d| {
            d.states
                .iter()
                .position(|s| s.name == d.initial)
                .unwrap_or(0)
        })
        .collect()
}
