//! The lexer: turns source text into `(start, Token, end)` triples for the parser.
//!
//! Built with logos. A lexing failure never stops the lexer: it yields [`Token::Error`]
//! for the offending bytes, and the grammar's error recovery takes it from there.

use logos::Logos;
use std::fmt;

/// One lexical token. Literals carry their decoded values; an out-of-range or malformed
/// literal lexes as [`Token::Error`].
#[derive(Logos, Debug, Clone, PartialEq, Eq)]
#[logos(skip r"[ \t\r\n\f]+")]
#[logos(skip(r"//[^\n]*", allow_greedy = true))]
#[logos(skip r"/\*([^*]|\*+[^*/])*\*+/")]
pub enum Token {
    // Keywords.
    #[token("import")]
    Import,
    #[token("umbox")]
    Umbox,
    #[token("image")]
    Image,
    #[token("args")]
    Args,
    #[token("env")]
    Env,
    #[token("param")]
    Param,
    #[token("emits")]
    Emits,
    #[token("mode")]
    Mode,
    #[token("traffic")]
    Traffic,
    #[token("secret")]
    Secret,
    #[token("pass")]
    Pass,
    #[token("drop")]
    Drop,
    #[token("answer")]
    Answer,
    #[token("authenticate")]
    Authenticate,
    #[token("from")]
    From,
    #[token("to")]
    To,
    #[token("with")]
    With,
    #[token("device")]
    Device,
    #[token("type")]
    Type,
    #[token("sensed")]
    Sensed,
    #[token("telemetry")]
    Telemetry,
    #[token("group")]
    Group,
    #[token("tagged")]
    Tagged,
    #[token("command")]
    Command,
    #[token("publish")]
    Publish,
    #[token("map")]
    Map,
    #[token("round")]
    Round,
    #[token("commands")]
    Commands,
    #[token("lowering")]
    Lowering,
    #[token("alerts")]
    Alerts,
    #[token("states")]
    States,
    #[token("initial")]
    Initial,
    #[token("final")]
    Final,
    #[token("chain")]
    Chain,
    #[token("on")]
    On,
    #[token("count")]
    Count,
    #[token("within")]
    Within,
    #[token("when")]
    When,
    #[token("for")]
    For,
    #[token("after")]
    After,
    #[token("quiet")]
    Quiet,
    #[token("silent")]
    Silent,
    #[token("operator")]
    Operator,
    #[token("site")]
    Site,
    #[token("bridge")]
    Bridge,
    #[token("uplink")]
    Uplink,
    #[token("node")]
    Node,
    #[token("unknown")]
    Unknown,
    #[token("hosts")]
    Hosts,
    #[token("at")]
    At,
    #[token("mac")]
    Mac,
    #[token("port")]
    Port,
    #[token("trusted")]
    Trusted,
    #[token("rule")]
    Rule,
    #[token("then")]
    Then,
    #[token("raise")]
    Raise,
    #[token("escalate")]
    Escalate,
    #[token("assert")]
    Assert,
    #[token("reachable")]
    Reachable,
    #[token("never")]
    Never,
    #[token("and")]
    And,
    #[token("or")]
    Or,
    #[token("not")]
    Not,
    #[token("in")]
    In,
    #[token("last")]
    Last,
    #[token("clock")]
    Clock,
    #[token("true")]
    True,
    #[token("false")]
    False,
    #[token("bool")]
    BoolTy,
    #[token("int")]
    IntTy,
    #[token("enum")]
    EnumTy,
    #[token("string")]
    StringTy,
    #[token("duration")]
    DurationTy,

    // Punctuation.
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token(",")]
    Comma,
    #[token("::")]
    ColonColon,
    #[token(":")]
    Colon,
    #[token("..")]
    DotDot,
    #[token(".")]
    Dot,
    #[token("->")]
    Arrow,
    #[token("==")]
    EqEq,
    #[token("!=")]
    Ne,
    #[token("<=")]
    Le,
    #[token(">=")]
    Ge,
    #[token("<")]
    Lt,
    #[token(">")]
    Gt,
    #[token("=")]
    Eq,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,

    // Literals.
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*", |lex| lex.slice().to_string(), priority = 2)]
    Ident(String),
    #[regex(r"[0-9]+", |lex| lex.slice().parse::<i64>().ok())]
    Int(i64),
    /// Milliseconds. Any number glued to letters lexes here, as one token, so that `1min`,
    /// `90sec` or `3500W` is one located error (unknown unit) rather than `1m` then `in`.
    #[regex(r"[0-9]+[A-Za-z_][A-Za-z0-9_]*", duration_millis)]
    Duration(u64),
    /// Minutes since midnight.
    #[regex(r"[0-9][0-9]?:[0-9][0-9]", time_of_day)]
    TimeOfDay(u16),
    #[regex(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+", ipv4)]
    Ipv4(u32),
    #[regex(
        r"[0-9A-Fa-f][0-9A-Fa-f](:[0-9A-Fa-f][0-9A-Fa-f]){5}",
        mac,
        priority = 3
    )]
    MacAddr([u8; 6]),
    #[regex(r#""([^"\\\n]|\\["\\nt])*""#, string_lit)]
    Str(String),

    /// Bytes that form no token, or a literal out of range. The parser reports it.
    ///
    /// Some mistakes lex as one error token each so that the report covers them whole:
    /// other languages' operators (`&&`, `||`, `!` alone) and an address with a prefix
    /// length (`10.0.0.5/24`), and a block comment never closed (`/*` to the end of the
    /// file; a closed one is longer, and skipped). `!=` and `//` stay what they are
    /// (longest match).
    #[regex(r"/\*([^*]|\*+[^*/])*\**")]
    #[token("&&")]
    #[token("||")]
    #[token("!")]
    #[regex(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/[0-9]+")]
    Error,
}

/// The units a duration may take, smallest first, and their milliseconds.
pub const DURATION_UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// The milliseconds of one duration unit (`m`: 60,000), if it is one.
pub fn unit_millis(unit: &str) -> Option<u64> {
    DURATION_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, ms)| *ms)
}

fn duration_millis(lex: &mut logos::Lexer<Token>) -> Option<u64> {
    let s = lex.slice();
    let digits_end = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..digits_end].parse().ok()?;
    n.checked_mul(unit_millis(&s[digits_end..])?)
}

fn time_of_day(lex: &mut logos::Lexer<Token>) -> Option<u16> {
    let (h, m) = lex.slice().split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn ipv4(lex: &mut logos::Lexer<Token>) -> Option<u32> {
    let mut out: u32 = 0;
    for part in lex.slice().split('.') {
        let octet: u8 = part.parse().ok()?;
        out = (out << 8) | u32::from(octet);
    }
    Some(out)
}

fn mac(lex: &mut logos::Lexer<Token>) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    for (i, part) in lex.slice().split(':').enumerate() {
        *out.get_mut(i)? = u8::from_str_radix(part, 16).ok()?;
    }
    Some(out)
}

fn string_lit(lex: &mut logos::Lexer<Token>) -> Option<String> {
    let s = lex.slice();
    let inner = s.get(1..s.len().saturating_sub(1))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Ident(s) => write!(f, "identifier `{s}`"),
            Token::Int(n) => write!(f, "integer `{n}`"),
            Token::Duration(_) => write!(f, "duration"),
            Token::TimeOfDay(_) => write!(f, "time of day"),
            Token::Ipv4(_) => write!(f, "IPv4 address"),
            Token::MacAddr(_) => write!(f, "MAC address"),
            Token::Str(_) => write!(f, "string"),
            Token::Error => write!(f, "invalid token"),
            other => write!(f, "`{}`", other.text()),
        }
    }
}

impl Token {
    /// The fixed text of a keyword or punctuation token.
    pub fn text(&self) -> &'static str {
        use Token::*;
        match self {
            Import => "import",
            Umbox => "umbox",
            Image => "image",
            Args => "args",
            Env => "env",
            Param => "param",
            Emits => "emits",
            Mode => "mode",
            Traffic => "traffic",
            Secret => "secret",
            Pass => "pass",
            Drop => "drop",
            Answer => "answer",
            Authenticate => "authenticate",
            From => "from",
            To => "to",
            With => "with",
            Device => "device",
            Type => "type",
            Sensed => "sensed",
            Telemetry => "telemetry",
            Group => "group",
            Tagged => "tagged",
            Command => "command",
            Publish => "publish",
            Map => "map",
            Round => "round",
            Commands => "commands",
            Lowering => "lowering",
            Alerts => "alerts",
            States => "states",
            Initial => "initial",
            Final => "final",
            Chain => "chain",
            On => "on",
            Count => "count",
            Within => "within",
            When => "when",
            For => "for",
            After => "after",
            Quiet => "quiet",
            Silent => "silent",
            Operator => "operator",
            Site => "site",
            Bridge => "bridge",
            Uplink => "uplink",
            Node => "node",
            Unknown => "unknown",
            Hosts => "hosts",
            At => "at",
            Mac => "mac",
            Port => "port",
            Trusted => "trusted",
            Rule => "rule",
            Then => "then",
            Raise => "raise",
            Escalate => "escalate",
            Assert => "assert",
            Reachable => "reachable",
            Never => "never",
            And => "and",
            Or => "or",
            Not => "not",
            In => "in",
            Last => "last",
            Clock => "clock",
            True => "true",
            False => "false",
            BoolTy => "bool",
            IntTy => "int",
            EnumTy => "enum",
            StringTy => "string",
            DurationTy => "duration",
            LBrace => "{",
            RBrace => "}",
            LBracket => "[",
            RBracket => "]",
            LParen => "(",
            RParen => ")",
            Comma => ",",
            ColonColon => "::",
            Colon => ":",
            DotDot => "..",
            Dot => ".",
            Arrow => "->",
            EqEq => "==",
            Ne => "!=",
            Le => "<=",
            Ge => ">=",
            Lt => "<",
            Gt => ">",
            Eq => "=",
            Plus => "+",
            Minus => "-",
            Star => "*",
            Slash => "/",
            Ident(_) | Int(_) | Duration(_) | TimeOfDay(_) | Ipv4(_) | MacAddr(_) | Str(_)
            | Error => "",
        }
    }
}

/// A spanned token stream over one source, in the shape lalrpop's external-lexer
/// interface expects. Lexing errors come out as [`Token::Error`], never as `Err`.
pub struct Lexer<'src> {
    inner: logos::SpannedIter<'src, Token>,
    /// Bytes skipped before lexing (a byte-order mark); spans stay offsets into `src`.
    offset: usize,
}

/// The UTF-8 byte-order mark some editors put at the start of a file.
pub const BOM: char = '\u{feff}';

impl<'src> Lexer<'src> {
    /// A byte-order mark at the very start of `src` is skipped, as rustc does; anywhere
    /// else it is an invalid character.
    pub fn new(src: &'src str) -> Self {
        let offset = if src.starts_with(BOM) {
            BOM.len_utf8()
        } else {
            0
        };
        Lexer {
            inner: Token::lexer(src.get(offset..).unwrap_or_default()).spanned(),
            offset,
        }
    }
}

/// Lexing never fails (bad bytes become [`Token::Error`]); the `Err` side exists only to
/// satisfy the parser's interface and is never produced.
pub type Spanned = Result<(usize, Token, usize), crate::parser::UserError>;

impl Iterator for Lexer<'_> {
    type Item = Spanned;
    fn next(&mut self) -> Option<Spanned> {
        let (tok, span) = self.inner.next()?;
        Some(Ok((
            span.start + self.offset,
            tok.unwrap_or(Token::Error),
            span.end + self.offset,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Token> {
        Lexer::new(src)
            .map(|r| r.map(|(_, t, _)| t).unwrap_or(Token::Error))
            .collect()
    }

    #[test]
    fn ranges_are_not_addresses() {
        assert_eq!(
            kinds("1..100"),
            vec![Token::Int(1), Token::DotDot, Token::Int(100)]
        );
        assert_eq!(kinds("-40..120")[0], Token::Minus);
    }

    #[test]
    fn addresses_times_and_durations() {
        assert_eq!(kinds("10.0.1.10"), vec![Token::Ipv4(0x0a00010a)]);
        assert_eq!(
            kinds("02:00:00:00:01:1f"),
            vec![Token::MacAddr([2, 0, 0, 0, 1, 0x1f])]
        );
        assert_eq!(kinds("20:00"), vec![Token::TimeOfDay(1200)]);
        assert_eq!(
            kinds("10m 30s 500ms"),
            vec![
                Token::Duration(600_000),
                Token::Duration(30_000),
                Token::Duration(500)
            ]
        );
    }

    #[test]
    fn bad_literals_become_error_tokens() {
        assert_eq!(kinds("300.1.1.1"), vec![Token::Error]);
        assert_eq!(kinds("25:00"), vec![Token::Error]);
        assert_eq!(kinds("99999999999999999999"), vec![Token::Error]);
        assert!(kinds("# @").iter().all(|t| *t == Token::Error));
    }

    #[test]
    fn a_number_glued_to_letters_is_one_error_token() {
        for src in ["1min", "90sec", "1hr", "3500W", "5mins", "0x1F", "10ms_"] {
            let spans: Vec<(usize, Token, usize)> = Lexer::new(src).flatten().collect();
            assert_eq!(spans, vec![(0, Token::Error, src.len())], "{src}");
        }
        // Units the language has still lex as durations, and longer literals still win.
        assert_eq!(
            kinds("1d 2h"),
            vec![Token::Duration(86_400_000), Token::Duration(7_200_000)]
        );
        assert_eq!(
            kinds("0a:bb:0d:00:00:01 0d"),
            vec![
                Token::MacAddr([0x0a, 0xbb, 0x0d, 0, 0, 1]),
                Token::Duration(0)
            ]
        );
        assert_eq!(kinds("6:30"), vec![Token::TimeOfDay(390)]);
        assert_eq!(kinds("1..30]")[..2], [Token::Int(1), Token::DotDot]);
    }

    #[test]
    fn foreign_operators_and_prefixes_are_whole_error_tokens() {
        let spans =
            |src: &str| -> Vec<(usize, Token, usize)> { Lexer::new(src).flatten().collect() };
        assert_eq!(spans("a && b")[1], (2, Token::Error, 4));
        assert_eq!(spans("a || b")[1], (2, Token::Error, 4));
        assert_eq!(spans("!a")[0], (0, Token::Error, 1));
        assert_eq!(kinds("a != b")[1], Token::Ne);
        assert_eq!(spans("10.0.0.5/24"), vec![(0, Token::Error, 11)]);
        assert_eq!(
            kinds("10.0.0.5// comment\n10.0.0.5 / 2"),
            vec![
                Token::Ipv4(0x0a000005),
                Token::Ipv4(0x0a000005),
                Token::Slash,
                Token::Int(2)
            ]
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped_and_spans_stay_in_the_source() {
        let src = "\u{feff}site";
        let spans: Vec<(usize, Token, usize)> = Lexer::new(src).flatten().collect();
        assert_eq!(spans, vec![(3, Token::Site, 7)]);
        // Anywhere else it is a character no token is made of.
        assert_eq!(kinds("site \u{feff}"), vec![Token::Site, Token::Error]);
    }

    #[test]
    fn comments_and_strings() {
        assert_eq!(
            kinds("/// doc\n\"a\\\"b\" /* c */ x"),
            vec![Token::Str("a\"b".into()), Token::Ident("x".into())]
        );
    }
}
