//! `kalki-umbox FUNCTION [FLAGS]`: parses the command line and the environment, then
//! runs the function (see `docs/umbox.md`). Exit codes: 0 stopped by a signal, 1 runtime
//! failure, 2 usage error.

use kalki_umbox::cli;
use kalki_umbox::run::{self, Log};
use std::process::ExitCode;

/// Exit codes, as documented in `--help`.
#[derive(Debug, Clone, Copy)]
enum Exit {
    Ok = 0,
    Failure = 1,
    Usage = 2,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

fn main() -> ExitCode {
    let function = match cli::parse(std::env::args_os()) {
        Ok(f) => f,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            }
            .into();
        }
    };
    let name = function.name();
    let settings = match cli::settings(|k| std::env::var(k).ok(), &function) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("kalki-umbox {name}: error: {msg}");
            return Exit::Usage.into();
        }
    };
    let log = Log {
        level: settings.log_level,
        name,
    };
    match run::run(function, settings, &log) {
        Ok(()) => Exit::Ok.into(),
        Err(run::Failure(msg)) => {
            log.at(cli::Level::Error, &msg);
            Exit::Failure.into()
        }
    }
}
