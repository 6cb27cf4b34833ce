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

    pub const fn code(self) -> &'static str {
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
    let mut item_level = Vec::new();
    let result = grammar::FileParser::new().parse(&mut recovered, &mut item_level, Lexer::new(src));
    // The tokens again, to place errors on lines; a clean parse does not need them.
    let toks: Vec<(usize, Token, usize)> = if recovered.is_empty() && result.is_ok() {
        Vec::new()
    } else {
        Lexer::new(src).flatten().collect()
    };
    let mut errors: Vec<Found> = recovered
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let fresh = resumes_on_a_new_line(src, &toks, &r);
            Found {
                error: convert(src, r.error),
                item_level: item_level.contains(&i),
                fresh,
            }
        })
        .collect();
    let file = match result {
        Ok(file) => file,
        Err(e) => {
            errors.push(Found {
                error: convert(src, e),
                item_level: true,
                fresh: false,
            });
            File::default()
        }
    };
    let mut errors = drop_echoes(src, &toks, errors);
    let mut reparses = hint::REPARSES;
    for e in &mut errors {
        hint::explain(src, &toks, e, &mut reparses);
    }
    Parsed { file, errors }
}

/// Where the first syntax error at or after byte `from` of `src` is, if any (no hints, no
/// echo dropping): lets a hint try a repaired text, and a mistake earlier in the file
/// does not hide what comes after it.
pub(crate) fn first_error_from(src: &str, from: usize) -> Option<usize> {
    let mut recovered = Vec::new();
    let mut item_level = Vec::new();
    let result = grammar::FileParser::new().parse(&mut recovered, &mut item_level, Lexer::new(src));
    let location = |e: &ParseError<usize, Token, UserError>| match e {
        ParseError::InvalidToken { location } | ParseError::UnrecognizedEof { location, .. } => {
            *location
        }
        ParseError::UnrecognizedToken { token, .. } | ParseError::ExtraToken { token } => token.0,
        ParseError::User { error } => error.span.start,
    };
    let last = result.err().map(|e| location(&e));
    recovered
        .iter()
        .map(|r| location(&r.error))
        .chain(last)
        .filter(|&at| at >= from)
        .min()
}

/// An error as recovered, before echoes are dropped.
struct Found {
    error: SyntaxError,
    /// Recovered by skipping to the next top-level item.
    item_level: bool,
    /// Parsing resumed at the first token of a line: what follows is a fresh start.
    fresh: bool,
}

/// Whether the parser, after skipping the tokens it dropped, resumed at a token that
/// starts a line.
fn resumes_on_a_new_line(
    src: &str,
    toks: &[(usize, Token, usize)],
    r: &ErrorRecovery<usize, Token, UserError>,
) -> bool {
    let resume = match (r.dropped_tokens.last(), &r.error) {
        (Some((_, _, end)), _) => toks.get(toks.partition_point(|t| t.0 < *end)).map(|t| t.0),
        (None, ParseError::UnrecognizedToken { token, .. }) => Some(token.0),
        (None, _) => None,
    };
    resume.is_some_and(|at| crate::hint::first_on_line(src, at))
}

/// Drops the errors that only echo an earlier one. After an error the parser skips to
/// the next token that can start a member (or, at the top level, an item) and carries
/// on; when that token is in the middle of the broken line (`10min quiet`: `quiet` is
/// also a name), the line's remainder fails again. So within one top-level item, an
/// error is an echo of the previous one when that one resumed mid-line and no line
/// starts between them, or when that one was recovered at the item level (`device` also
/// starts a line inside a site, so such a mistake would otherwise echo once per
/// following line). Errors from grammar actions (bad values) are exact, never echoes.
fn drop_echoes(
    src: &str,
    toks: &[(usize, Token, usize)],
    mut errors: Vec<Found>,
) -> Vec<SyntaxError> {
    errors.sort_by_key(|f| (f.error.span.start, f.error.span.end));
    let mut starts = Vec::new();
    let mut line_starts = Vec::new();
    let mut depth: i64 = 0;
    // Whether a newline lies between the previous token and this one (linear overall).
    let mut prev_end: Option<usize> = None;
    for (l, tok, r) in toks {
        let new_line = prev_end.is_none_or(|p| src.get(p..*l).is_some_and(|s| s.contains('\n')));
        if new_line {
            line_starts.push(*l);
        }
        prev_end = Some(*r);
        match tok {
            Token::LBrace => depth += 1,
            Token::RBrace => depth -= 1,
            Token::Import | Token::Umbox | Token::Device | Token::Site if depth <= 0 => {
                depth = 0;
                starts.push(*l);
            }
            _ => {}
        }
    }
    let region = |pos: usize| starts.partition_point(|&s| s <= pos);
    let line_between = |a: usize, b: usize| {
        let next = line_starts.partition_point(|&s| s <= a);
        line_starts.get(next).is_some_and(|&s| s < b)
    };
    let mut kept: Vec<Found> = Vec::new();
    for f in errors {
        let e = &f.error;
        let echo = kept.last().is_some_and(|k| {
            let ks = k.error.span.start;
            e.code != SyntaxCode::InvalidValue
                && k.error.code != SyntaxCode::InvalidValue
                && region(ks) == region(e.span.start)
                && (k.item_level || (!k.fresh && !line_between(ks, e.span.start)))
        });
        let twice = kept
            .iter()
            .any(|k| k.error.span == e.span && k.error.code == e.code);
        if echo && f.item_level {
            // The echo left the item: what follows in it is read as items, echoes too.
            if let Some(k) = kept.last_mut() {
                k.item_level = true;
            }
        }
        if !echo && !twice {
            kept.push(f);
        }
    }
    kept.into_iter().map(|f| f.error).collect()
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
            let text = src.get(l..r).unwrap_or("");
            let (message, help) = hint::invalid_token(text);
            // An unclosed comment runs to the end of the file: point at its opening.
            let r = if text.starts_with("/*") { l + 2 } else { r };
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

/// Whether a keyword is one the grammar also accepts as a name.
pub(crate) fn is_soft_keyword(text: &str) -> bool {
    SOFT_KEYWORDS.contains(&text)
}

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
    /// `node east`: the edge node the device is attached to.
    Node(Ident),
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

    /// The messages of a file's syntax errors.
    fn messages(src: &str) -> Vec<String> {
        parse(src).errors.into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn a_mistake_costs_its_member_line_and_does_not_echo() {
        // Three broken transitions of one type: three errors, none for the lines' rests
        // (`quiet` and `on` are names and would start a new member mid-line).
        let src = "device type T {\n    sensed on: bool\n    states a < b\n    initial a\n    \
                   a -> b when on = true\n    b -> a after 10min quiet\n    \
                   a -> b when on && on\n    b -> a on operator reset\n}\n";
        let m = messages(src);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].contains("`=`") && m[1].contains("10min") && m[2].contains("&&"));
        // The member after the broken ones is still in the tree.
        let parsed = parse(src);
        let Some(crate::ast::Item::DeviceType(t)) = parsed.file.items.first() else {
            panic!("no device type");
        };
        assert!(
            matches!(
                t.members.last(),
                Some(crate::ast::DeviceMember::Transition(
                    crate::ast::Transition {
                        trigger: crate::ast::Trigger::Operator { .. },
                        ..
                    }
                ))
            ),
            "{:?}",
            t.members
        );
    }

    #[test]
    fn a_broken_site_header_does_not_echo_on_every_device_line() {
        let src = "site s bridge \"br0\" {\n    device a: T at 10.0.1.2 port \"a\"\n    \
                   device b: T at 10.0.1.3 port \"b\"\n}\n";
        assert_eq!(messages(src).len(), 1, "{:?}", messages(src));
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
