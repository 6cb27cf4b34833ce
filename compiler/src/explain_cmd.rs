//! `kalkic explain`: prints a code's explanation from the registry
//! ([`kalki_compiler::explain`]), or the list of every code. The binary's part only: the
//! registry and its rendering are in the library.

use crate::Exit;
use kalki_compiler::explain;
use std::io::Write;

const EXIT_HELP: &str = "Exit codes:\n  0  the explanation (or the list) was printed\n  2  unknown code, or usage error";

#[derive(clap::Args)]
#[command(after_help = EXIT_HELP)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["code", "list"])))]
pub struct ExplainArgs {
    /// The code, e.g. `K105` or `s104` (any case).
    code: Option<String>,
    /// List every code with its one-line summary.
    #[arg(long)]
    list: bool,
}

pub fn run(args: &ExplainArgs) -> Exit {
    let text = match &args.code {
        None => explain::list(),
        Some(code) => match explain::lookup(code) {
            Some(c) => explain::render(c),
            None => {
                let near = explain::nearest(code);
                let hint = if near.is_empty() {
                    String::new()
                } else {
                    format!("\n  help: did you mean {}?", near.join(", "))
                };
                eprintln!(
                    "error: `{code}` is not a Kalki diagnostic code{hint}\n  help: `kalkic explain --list` lists every code"
                );
                return Exit::Usage;
            }
        },
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => Exit::Ok,
        Err(_) => Exit::Usage,
    }
}
