//! The `.kalki` front end: lexer, grammar and syntax tree with spans.
//!
//! Pure: takes source text, returns data. No file system, no clock.
// Only the binaries write to the terminal (docs/ARCHITECTURE.md, "Invariants").
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod ast;
pub mod fmt;
mod hint;
pub mod lexer;
pub mod parser;

pub use fmt::format;
pub use parser::{parse, Parsed, SyntaxCode, SyntaxError};
