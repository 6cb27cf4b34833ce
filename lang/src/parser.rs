//! The parser entry point: source text in, syntax tree plus every syntax error out.
//!
//! Parsing never stops at the first mistake: the grammar resynchronises at item and
//! member boundaries, so each error is reported once and the rest of the file still
//! yields a tree for later phases.

use crate::ast::{BinOp, Expr, ExprKind, File, Ident, Span, StrLit};
use crate::hint;
use crate::lexer::{Lexer, Token};
use lalrpop_util::{ErrorRecovery, ParseError};

lalrpop_util::lalrpop_mod!(
    #[allow(
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        unused_parens,
        dead_code
    )]
    grammar
);

/// An error raised by a grammar action (a literal out of range, a repeated attribute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserError {
    pub message: &'static str,
    pub span: Span,
}

impl UserError {
    pub fn new(message: &'static str, span: Span) -> Self {
        UserError { message, span }
    }
}

/// Stable codes of syntax errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum SyntaxCode {
    /// K001: bytes that form no token.
    InvalidToken,
    /// K002: a token where the grammar does not allow it.
    UnexpectedToken,
    /// K003: the file ends in the middle of something.
    UnexpectedEof,
    /// K004: a well-formed token with a value the language does not accept here.
    InvalidValue,
}

impl SyntaxCode {
    /// Every syntax code.
    pub const ALL: [SyntaxCode; 4] = [
        SyntaxCode::InvalidToken,
        SyntaxCode::UnexpectedToken,
        SyntaxCode::UnexpectedEof,
        SyntaxCode::InvalidValue,
    ];

    pub fn code(self) -> &'static str {
        match self {
            SyntaxCode::InvalidToken => "K001",
            SyntaxCode::UnexpectedToken => "K002",
            SyntaxCode::UnexpectedEof => "K003",
            SyntaxCode::InvalidValue => "K004",
        }
    }
}

/// One syntax error, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub code: SyntaxCode,
    pub message: String,
    pub span: Span,
    /// What the grammar would have accepted, for the help text.
    pub expected: Vec<String>,
    /// Advice for a recognised mistake (`write `and``); replaces `expected` in the help.
    pub help: Option<String>,
    /// The primary label's text, when there is more to say than "here".
    pub label: Option<String>,
    /// Other locations involved (the `{` that is never closed).
    pub secondary: Vec<(Span, String)>,
}

impl SyntaxError {
    fn new(code: SyntaxCode, message: String, span: Span, expected: Vec<String>) -> Self {
        SyntaxError {
            code,
            message,
            span,
            expected,
            help: None,
            label: None,
            secondary: Vec::new(),
        }
    }
}

/// A tree and every syntax error found while building it.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub file: File,
    pub errors: Vec<SyntaxError>,
}

/// Parses one source file. Never panics and always returns a tree (possibly partial).
pub fn parse(src: &str) -> Parsed {
    let mut recovered = Vec::new();
    let result = grammar::FileParser::new().parse(&mut recovered, Lexer::new(src));
    let mut errors: Vec<SyntaxError> = recovered
        .into_iter()
        .map(|r| convert(src, r.error))
        .collect();
    let file = match result {
        Ok(file) => file,
        Err(e) => {
            errors.push(convert(src, e));
            File::default()
        }
    };
    if !errors.is_empty() {
        let toks: Vec<(usize, Token, usize)> = Lexer::new(src).flatten().collect();
        for e in &mut errors {
            hint::explain(src, &toks, e);
        }
    }
    Parsed {
        file,
        errors: first_error_per_item(src, errors),
    }
}

/// Keeps the first error of each top-level item. Recovery resynchronises at the next token
/// that can start an item, and `device` also starts a line inside a site, so one mistake
/// could otherwise echo once per following line of the same item.
fn first_error_per_item(src: &str, mut errors: Vec<SyntaxError>) -> Vec<SyntaxError> {
    if errors.len() < 2 {
        return errors;
    }
    errors.sort_by_key(|e| (e.span.start, e.span.end));
    let mut starts = Vec::new();
    let mut depth: i64 = 0;
    for (l, tok, _) in Lexer::new(src).flatten() {
        match tok {
            Token::LBrace => depth += 1,
            Token::RBrace => depth -= 1,
            Token::Import | Token::Umbox | Token::Device | Token::Site if depth <= 0 => {
                depth = 0;
                starts.push(l);
            }
            _ => {}
        }
    }
    let region = |pos: usize| starts.partition_point(|&s| s <= pos);
    let mut kept: Vec<SyntaxError> = Vec::new();
    for e in errors {
        // Errors from grammar actions (bad values) are exact, never echoes: keep them all.
        let echo = kept.last().is_some_and(|k| {
            e.code != SyntaxCode::InvalidValue
                && k.code != SyntaxCode::InvalidValue
                && region(k.span.start) == region(e.span.start)
        });
        if !echo && !kept.iter().any(|k| k.span == e.span && k.code == e.code) {
            kept.push(e);
        }
    }
    kept
}

fn convert(src: &str, e: ParseError<usize, Token, UserError>) -> SyntaxError {
    match e {
        ParseError::InvalidToken { location } => SyntaxError::new(
            SyntaxCode::InvalidToken,
            "invalid token".into(),
            Span::new(location, location),
            vec![],
        ),
        ParseError::UnrecognizedEof { location, expected } => SyntaxError::new(
            SyntaxCode::UnexpectedEof,
            "unexpected end of file".into(),
            Span::new(location, location),
            pretty_expected(expected),
        ),
        ParseError::UnrecognizedToken {
            token: (l, Token::Error, r),
            ..
        } => {
            let (message, help) = hint::invalid_token(src.get(l..r).unwrap_or(""));
            SyntaxError {
                help,
                ..SyntaxError::new(SyntaxCode::InvalidToken, message, Span::new(l, r), vec![])
            }
        }
        ParseError::UnrecognizedToken {
            token: (l, tok, r),
            expected,
        } => SyntaxError::new(
            SyntaxCode::UnexpectedToken,
            format!("unexpected {tok}"),
            Span::new(l, r),
            pretty_expected(expected),
        ),
        ParseError::ExtraToken { token: (l, tok, r) } => SyntaxError::new(
            SyntaxCode::UnexpectedToken,
            format!("unexpected {tok}"),
            Span::new(l, r),
            vec![],
        ),
        ParseError::User { error } => SyntaxError::new(
            SyntaxCode::InvalidValue,
            error.message.to_string(),
            error.span,
            vec![],
        ),
    }
}

fn pretty_expected(expected: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = expected
        .into_iter()
        .filter(|e| e != "ERROR")
        .map(|e| match e.as_str() {
            "IDENT" => "a name".to_string(),
            "INT" => "an integer".to_string(),
            "DURATION" => "a duration".to_string(),
            "TIME" => "a time of day".to_string(),
            "IPV4" => "an IPv4 address".to_string(),
            "MACADDR" => "a MAC address".to_string(),
            "STR" => "a string".to_string(),
            other => format!("`{}`", other.trim_matches('"')),
        })
        .collect();
    // Keywords that double as names add nothing once "a name" is listed; where nearly
    // every keyword is accepted (a module path), they are all just "a word".
    if out.iter().any(|e| e == "a name") {
        let is_word = |e: &String| {
            let w = e.trim_matches('`');
            e.starts_with('`') && !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase())
        };
        if out.iter().filter(|e| is_word(e)).count() >= 30 {
            out.retain(|e| !is_word(e));
            for e in &mut out {
                if e == "a name" {
                    *e = "a name (keywords too)".to_string();
                }
            }
        } else {
            out.retain(|e| !SOFT_KEYWORDS.iter().any(|k| e.trim_matches('`') == *k));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Keywords the grammar also accepts as names (see `SoftKeyword` in the grammar).
const SOFT_KEYWORDS: &[&str] = &[
    "on",
    "mode",
    "image",
    "port",
    "mac",
    "env",
    "hosts",
    "quiet",
    "silent",
    "secret",
    "pass",
    "drop",
    "answer",
    "authenticate",
    "telemetry",
    "command",
    "publish",
    "group",
    "tagged",
];

// ---- helpers used by grammar actions

pub(crate) fn bin(op: BinOp, a: Expr, b: Expr, l: usize, r: usize) -> Expr {
    Expr {
        kind: ExprKind::Binary(op, Box::new(a), Box::new(b)),
        span: Span::new(l, r),
    }
}

/// `func(p in GROUP: body)`: the binder was read as an expression, `p in GROUP`.
pub(crate) fn quantified(
    func: Ident,
    binder: Expr,
    body: Expr,
    span: Span,
    errors: &mut Vec<ErrorRecovery<usize, Token, UserError>>,
) -> Expr {
    match &binder.kind {
        ExprKind::InState(var, group) => Expr {
            kind: ExprKind::Quantified {
                func,
                var: var.clone(),
                group: group.clone(),
                body: Box::new(body),
            },
            span,
        },
        _ => {
            errors.push(user_error(
                "write `any(p in GROUP: CONDITION)`, `all(...)` or `count(...)`",
                span,
            ));
            Expr {
                kind: ExprKind::Error,
                span,
            }
        }
    }
}

pub(crate) fn user_error(
    message: &'static str,
    span: Span,
) -> ErrorRecovery<usize, Token, UserError> {
    ErrorRecovery {
        error: ParseError::User {
            error: UserError::new(message, span),
        },
        dropped_tokens: vec![],
    }
}

pub(crate) enum DeviceAttr {
    /// With `..`: counted up over a range of devices.
    Ip(u32, bool),
    Mac([u8; 6], bool),
    Port(StrLit),
    Trusted,
    /// `tagged outdoor, entrance`: the groups the device belongs to by tag.
    Tags(Vec<Ident>),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;
    use crate::ast::{Action, Item, SiteMember};

    /// The rules of a one-site file.
    fn rules(src: &str) -> Vec<crate::ast::Rule> {
        let parsed = parse(src);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let Some(Item::Site(site)) = parsed.file.items.into_iter().next() else {
            panic!("no site");
        };
        site.members
            .into_iter()
            .filter_map(|m| match m {
                SiteMember::Rule(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn on_rules_and_escalate_actions() {
        let rs = rules(
            "site s {\n  rule a when x.on then escalate cam to attack, cam.beep\n  \
             rule on on on.on then on -> attack\n}",
        );
        assert_eq!(rs.len(), 2);
        assert!(!rs[0].edge);
        assert!(matches!(
            &rs[0].actions[0],
            Action::Escalate { device, state, .. } if device.name == "cam" && state.name == "attack"
        ));
        // `on` stays a soft keyword: a rule, a device and a variable may be called so.
        assert!(rs[1].edge);
        assert_eq!(rs[1].name.name, "on");
        assert!(matches!(&rs[1].actions[0], Action::Goto { device, .. } if device.name == "on"));
    }

    #[test]
    fn escalate_is_reserved() {
        assert!(
            !parse("site s {\n  rule escalate when x.on then cam -> attack\n}")
                .errors
                .is_empty()
        );
    }
}
