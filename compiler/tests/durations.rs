//! The policy language's duration literals and the durations the shim's command line
//! reads (`kalki_model::duration`, e.g. `kalki-shim simulate --until 3h`) are one notation:
//! the lexer and the model's parser must agree on every unit and every malformed text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kalki_lang::lexer::{Lexer, Token};
use kalki_model::duration::{parse_ms, UNITS};

/// The lexer's reading of `text` as one duration literal, if it is one.
fn lexed(text: &str) -> Option<u64> {
    let tokens: Vec<Token> = Lexer::new(text).map(|r| r.unwrap().1).collect();
    match tokens.as_slice() {
        [Token::Duration(ms)] => Some(*ms),
        _ => None,
    }
}

#[test]
fn lexer_and_command_line_agree_on_durations() {
    let mut texts: Vec<String> = Vec::new();
    for n in [
        "0",
        "1",
        "7",
        "90",
        "1500",
        "213503982334601",
        "18446744073709551615",
    ] {
        for (unit, _) in UNITS {
            texts.push(format!("{n}{unit}"));
        }
        for other in [
            "", "min", "sec", "hr", "w", "y", "S", "H", "us", "ns", "mss",
        ] {
            texts.push(format!("{n}{other}"));
        }
    }
    texts.extend(["s", "ms", "1 s", "-1s", "+1s", "1.5s", "1h30m"].map(String::from));
    for t in &texts {
        assert_eq!(lexed(t), parse_ms(t).ok(), "`{t}`");
    }
    // The table is not empty and really is the language's: every unit lexes.
    assert_eq!(UNITS.len(), 5);
    for (unit, ms) in UNITS {
        assert_eq!(lexed(&format!("2{unit}")), Some(2 * ms), "{unit}");
    }
}
