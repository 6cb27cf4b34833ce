//! `kalkic fmt [--check] [FILES|DIRS|-]`: the binary's side of the formatter. The layout
//! itself is `kalki_lang::fmt` (pure); this module reads and writes files, prints diffs
//! and reports syntax errors as `check` does. docs/tools/fmt.md describes both.

use crate::{use_colour, Color, Exit, Format};
use kalki_compiler::codes;
use kalki_compiler::diag::Diagnostic;
use kalki_compiler::render;
use kalki_compiler::resolve::syntax_diagnostic;
use kalki_compiler::source::{Origin, SourceFile, Sources};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const FMT_HELP: &str = "Exit codes:\n  0  every file is formatted (or was rewritten)\n  1  with --check: a file is not formatted (its diff is printed); or a file has syntax errors (it is left as it is)\n  2  usage error, or a file could not be read or written";

#[derive(clap::Args)]
pub struct FmtArgs {
    /// Policy files, directories (their `.kalki` files, recursively) or `-` for standard
    /// input (formatted text to standard output). None: standard input.
    files: Vec<PathBuf>,
    /// Write nothing: print a unified diff for each file that is not formatted, and exit
    /// with 1 if there is one.
    #[arg(long)]
    check: bool,
    /// Output format of syntax errors.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Colour in human output.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

/// What became of one input.
enum Outcome {
    Unchanged,
    /// Rewritten, or (with `--check`) would be.
    Changed,
    /// Syntax errors: left as it is.
    Refused,
}

pub fn run(args: &FmtArgs) -> Exit {
    let inputs: Vec<PathBuf> = if args.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.files.clone()
    };
    let mut files = Vec::new();
    for p in &inputs {
        if let Err(why) = expand(p, &mut files) {
            eprintln!(
                "error[{}]: cannot read `{}`: {why}",
                codes::UNREADABLE,
                p.display()
            );
            return Exit::Usage;
        }
    }
    let mut sources = Sources::default();
    let mut diags: Vec<Diagnostic> = Vec::new();
    let (mut changed, mut failed, mut io_error) = (false, false, false);
    // An unreadable or unwritable file does not stop the others.
    for path in &files {
        // As a filter with human diagnostics (on standard error), a refused text is given
        // back unchanged on standard output; a JSON or SARIF report owns standard output.
        let echo = !args.check && matches!(args.format, Format::Human);
        match one(path, args.check, echo, &mut sources, &mut diags) {
            Ok(Outcome::Unchanged) => {}
            Ok(Outcome::Changed) => changed = true,
            Ok(Outcome::Refused) => failed = true,
            Err(why) => {
                eprintln!("error[{}]: {why}", codes::UNREADABLE);
                io_error = true;
            }
        }
    }
    if !diags.is_empty() && report(args, &sources, &diags).is_err() {
        return Exit::Usage;
    }
    if io_error {
        Exit::Usage
    } else if failed || (args.check && changed) {
        Exit::PolicyErrors
    } else {
        Exit::Ok
    }
}

/// Appends `p`, or the `.kalki` files under it (sorted, hidden entries skipped). A
/// directory named on the command line that holds no `.kalki` file is an error, as for
/// `kalkic check`: a mistyped path in CI must not pass as "all formatted".
fn expand(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    if p.as_os_str() == "-" || !p.is_dir() {
        out.push(p.to_path_buf());
        return Ok(());
    }
    let before = out.len();
    walk(p, out)?;
    if out.len() == before {
        return Err("directory holds no .kalki files".into());
    }
    Ok(())
}

/// The `.kalki` files under `dir`. Symbolic links met on the way are not followed (a
/// link to a directory above would loop, and one to a file elsewhere is not this tree's);
/// a link named on the command line is.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries: Vec<(PathBuf, std::fs::FileType)> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.path(), e.file_type().ok()?)))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (e, kind) in entries {
        if kind.is_dir() {
            walk(&e, out)?;
        } else if kind.is_file() && e.extension().is_some_and(|x| x == "kalki") {
            out.push(e);
        }
    }
    Ok(())
}

fn one(
    path: &Path,
    check: bool,
    echo_refused: bool,
    sources: &mut Sources,
    diags: &mut Vec<Diagnostic>,
) -> Result<Outcome, String> {
    let stdin = path.as_os_str() == "-";
    let name = if stdin {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    };
    let text = if stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        s
    } else {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read `{name}`: {e}"))?;
        String::from_utf8(bytes).map_err(|_| format!("cannot read `{name}`: not UTF-8"))?
    };
    let formatted = match kalki_lang::format(&text) {
        Ok(f) => f,
        Err(errors) => {
            // As a filter (`kalkic fmt < in > out`, an editor's `:%!kalkic fmt`), give the
            // text back unchanged, so a refused file is never replaced by nothing.
            if stdin && echo_refused {
                std::io::stdout()
                    .lock()
                    .write_all(text.as_bytes())
                    .map_err(|e| format!("cannot write to standard output: {e}"))?;
            }
            let id = sources.add(SourceFile {
                origin: Origin::File(path.to_path_buf()),
                name,
                text,
            });
            diags.extend(errors.iter().map(|e| syntax_diagnostic(id, e)));
            return Ok(Outcome::Refused);
        }
    };
    let outcome = if formatted == text {
        Outcome::Unchanged
    } else {
        Outcome::Changed
    };
    let mut out = std::io::stdout().lock();
    let written = if check {
        match outcome {
            Outcome::Changed => out.write_all(diff(&name, &text, &formatted).as_bytes()),
            _ => Ok(()),
        }
    } else if stdin {
        out.write_all(formatted.as_bytes())
    } else {
        match outcome {
            Outcome::Changed => {
                // A file made read-only is left alone (root could rename over it anyway).
                if std::fs::metadata(path).is_ok_and(|m| m.permissions().readonly()) {
                    return Err(format!("`{name}` is read-only; not formatted"));
                }
                replace(path, &formatted).map_err(|e| format!("cannot write `{name}`: {e}"))?;
                Ok(())
            }
            _ => Ok(()),
        }
    };
    written.map_err(|e| format!("cannot write to standard output: {e}"))?;
    Ok(outcome)
}

/// A unified diff from the file as it is to the file formatted.
pub fn diff(name: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(name, &format!("{name} (formatted)"))
        .to_string()
}

/// Replaces the file's contents atomically: a temporary file in the same directory,
/// given the original's permissions, then renamed over it. A reader sees the old or the
/// new file, never half of one.
/// A symbolic link is followed: the file it points to is replaced, the link kept.
fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    let path = &std::fs::canonicalize(path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.kalkic-fmt-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Syntax errors, rendered as `check` renders them: human text on standard error, a
/// JSON or SARIF document on standard output.
fn report(args: &FmtArgs, sources: &Sources, diags: &[Diagnostic]) -> std::io::Result<()> {
    match args.format {
        Format::Human => {
            let text = render::human(sources, diags, use_colour(args.color));
            std::io::stderr().lock().write_all(text.as_bytes())
        }
        Format::Json => {
            let v = render::json(sources, diags);
            writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            )
        }
        Format::Sarif => {
            let v = render::sarif(sources, diags);
            writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            )
        }
    }
}
