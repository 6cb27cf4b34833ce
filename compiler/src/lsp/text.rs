//! Byte offsets (the compiler's spans) to LSP positions and back. LSP counts columns in
//! UTF-16 code units (the default `positionEncoding`), so a `µ` is one column and an
//! emoji two, while both are several bytes in the compiler's spans.

use tower_lsp_server::ls_types::{Position, Range};

/// The LSP position of a byte offset (clamped to the text, and to a char boundary).
pub fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count();
    let character: usize = before[line_start..].chars().map(char::len_utf16).sum();
    Position::new(
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(character).unwrap_or(u32::MAX),
    )
}

pub fn range(text: &str, start: usize, end: usize) -> Range {
    Range::new(position(text, start), position(text, end))
}

/// The byte offset of an LSP position. A column past the end of its line is the end of
/// the line, a line past the end is the end of the text (as the specification asks).
pub fn offset(text: &str, pos: Position) -> usize {
    let mut line_start = 0;
    for _ in 0..pos.line {
        match text[line_start..].find('\n') {
            Some(i) => line_start += i + 1,
            None => return text.len(),
        }
    }
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let mut units = 0;
    for (i, c) in text[line_start..line_end].char_indices() {
        if units >= pos.character as usize {
            return line_start + i;
        }
        units += c.len_utf16();
    }
    line_end
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn columns_are_utf16_units() {
        // `µ` is 2 bytes and 1 UTF-16 unit; `😀` 4 bytes and 2 units.
        let text = "ab\n// µ😀 x\n";
        let x = text.find('x').unwrap();
        assert_eq!(position(text, x), Position::new(1, 7));
        assert_eq!(offset(text, Position::new(1, 7)), x);
        assert_eq!(offset(text, Position::new(0, 99)), 2);
        assert_eq!(offset(text, Position::new(9, 0)), text.len());
        // Inside a multi-byte character: the character's start.
        assert_eq!(
            position(text, text.find('µ').unwrap() + 1),
            Position::new(1, 3)
        );
    }
}
