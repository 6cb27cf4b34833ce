//! Document formatting: not offered yet. The formatter (`kalki_lang::fmt::format(src) ->
//! Result<String, Vec<SyntaxError>>`) is being written on another branch; once it is
//! merged, [`format`] calls it and [`AVAILABLE`] turns the capability on. Nothing else in
//! the server changes: the handler already replaces the whole document with what
//! [`format`] returns.

/// Whether the server announces `documentFormattingProvider`.
pub const AVAILABLE: bool = false;

/// The formatted text, or `None` when the text cannot be formatted (syntax errors: the
/// editor keeps the text as it is, and the diagnostics already say why).
pub fn format(_text: &str) -> Option<String> {
    // After the merge: `kalki_lang::fmt::format(text).ok()`.
    None
}
