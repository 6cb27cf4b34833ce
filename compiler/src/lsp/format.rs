//! Document formatting: the same layout as `kalkic fmt` (`kalki_lang::fmt`), so the
//! editor and the command line agree byte for byte.

/// The formatted text, or `None` when the text cannot be formatted (syntax errors: the
/// editor keeps the text as it is, and the diagnostics already say why).
pub fn format(text: &str) -> Option<String> {
    kalki_lang::fmt::format(text).ok()
}
