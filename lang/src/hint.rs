//! Advice on syntax errors: recognises the mistakes a newcomer makes (a unit glued to a
//! number, another language's operators, `=` to compare, a hyphen in a name, a keyword
//! as a name, a trailing comma, an unclosed `{`, an address with a prefix length) and
//! says what to write instead. Pure: the source, its tokens and the error in, advice out.

use crate::ast::Span;
use crate::lexer::{unit_millis, Token, DURATION_UNITS};
use crate::parser::{SyntaxCode, SyntaxError};

/// The units a duration may take, as listed to users: [`DURATION_UNITS`] (a test checks).
const UNITS: &str = "ms, s, m, h, d";
const UNITS_ARE: &str = "a duration is a whole number and one of the units ms, s, m, h, d";

/// What is wrong with bytes the lexer could not turn into a token: the message, and the
/// advice when there is some.
pub(crate) fn invalid_token(text: &str) -> (String, Option<String>) {
    let shown: String = text.chars().take(40).collect();
    let all = |f: fn(char) -> bool| !text.is_empty() && text.chars().all(f);
    if text.starts_with('"') {
        return ("unterminated string".into(), None);
    }
    if text.starts_with("/*") {
        return (
            "unterminated block comment: this `/*` is never closed".into(),
            Some("close it with `*/` (block comments do not nest), or write `//` comments".into()),
        );
    }
    if let Some((addr, prefix)) = text.split_once('/') {
        return (
            format!("`{shown}` is an address with a prefix length: a device has one address"),
            Some(format!(
                "write the device's own address, `at {addr}`: the language has no `/{prefix}` \
                 prefixes. Many devices are `device NAME[1..N]: TYPE at FIRST..` (addresses \
                 counted up, §7.2); traffic from hosts that are not devices of the site is \
                 decided by `unknown hosts drop` or `unknown hosts pass` (§7.1)"
            )),
        );
    }
    if all(|c| c.is_ascii_digit() || c == '.') && text.matches('.').count() == 3 {
        return (
            format!("invalid IPv4 address `{shown}`: each part must be 0..255"),
            None,
        );
    }
    if all(|c| c.is_ascii_digit() || c == ':') && text.matches(':').count() == 1 {
        return (
            format!("invalid time of day `{shown}`: hours go to 23, minutes to 59"),
            None,
        );
    }
    if all(|c| c.is_ascii_digit()) {
        return (format!("integer `{shown}` is too large"), None);
    }
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        return glued_number(text, &shown);
    }
    match text {
        "&&" | "&" => (
            format!("`{text}` is not an operator in Kalki"),
            Some("write `and`: conditions combine with `and`, `or` and `not`".into()),
        ),
        "||" | "|" => (
            format!("`{text}` is not an operator in Kalki"),
            Some("write `or`: conditions combine with `and`, `or` and `not`".into()),
        ),
        "!" => (
            "`!` is not an operator in Kalki".into(),
            Some("write `not` to negate a condition (`!=` compares: not equal)".into()),
        ),
        ";" => (
            "invalid character `;`".into(),
            Some("remove it: Kalki has no semicolons, a member ends where the next begins".into()),
        ),
        "#" => (
            "invalid character `#`".into(),
            Some("comments start with `//` (or are written `/* ... */`)".into()),
        ),
        "'" => (
            "invalid character `'`".into(),
            Some("strings are written in double quotes: `\"...\"`".into()),
        ),
        "\u{feff}" => (
            "a byte-order mark (U+FEFF) inside the file".into(),
            Some("remove it: only the very start of a file may hold one".into()),
        ),
        _ => (
            format!("invalid character `{}`", shown.escape_debug()),
            None,
        ),
    }
}

/// A number with letters glued to it: a duration with a unit the language does not
/// know (`1min`), a duration too long for 64 bits, or a number with a unit (`3500W`).
fn glued_number(text: &str, shown: &str) -> (String, Option<String>) {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(digits_end);
    let n_val: Option<u64> = n.parse().ok();
    if is_unit(unit) {
        return (format!("duration `{shown}` is too long"), None);
    }
    let units_are = UNITS_ARE.to_string();
    if let Some(right) = duration_unit(unit) {
        let fixed = match (right, n_val) {
            ("w", Some(v)) => v.checked_mul(7).map(|d| format!("{d}d")),
            ("w", None) => None,
            _ => Some(format!("{n}{right}")),
        };
        let help = match fixed {
            Some(f) => format!("write `{f}`: {units_are}"),
            None => units_are,
        };
        return (
            format!("unknown duration unit `{unit}` in `{shown}`"),
            Some(help),
        );
    }
    if let Some(total) = compound_duration(text) {
        return (
            format!("`{shown}` is several durations written together"),
            Some(format!(
                "write one number and one unit, `{}`: {units_are}",
                in_largest_unit(total)
            )),
        );
    }
    // `10_000`, `1_500ms`: digit separators.
    let compact = text.replace('_', "");
    let compact_digits = compact.trim_start_matches(|c: char| c.is_ascii_digit());
    if unit.starts_with('_') && (compact_digits.is_empty() || is_unit(compact_digits)) {
        return (
            format!("`{shown}`: numbers have no digit separators"),
            Some(format!("write `{compact}`")),
        );
    }
    if n == "0" && (unit.starts_with('x') || unit.starts_with('X')) {
        let help = match u64::from_str_radix(&unit[1..], 16) {
            Ok(v) => format!("write `{v}`: numbers are written in decimal"),
            Err(_) => "numbers are written in decimal".into(),
        };
        return (format!("`{shown}` is not a number"), Some(help));
    }
    (
        format!("unknown unit `{unit}` after the number `{n}`"),
        Some(format!(
            "numbers carry no units: write `{n}` and say the unit in the name or a comment \
             (e.g. `watts`); only durations take a unit ({UNITS})"
        )),
    )
}

/// Whether `unit` is one of the language's duration units.
fn is_unit(unit: &str) -> bool {
    unit_millis(unit).is_some()
}

/// The unit a newcomer meant by `unit`, if it is a recognisable spelling of one of the
/// language's duration units (`w`: weeks, written in days).
fn duration_unit(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "msec" | "msecs" | "millis" | "millisecond" | "milliseconds" | "MS" | "Ms" => "ms",
        "sec" | "secs" | "second" | "seconds" | "S" => "s",
        "min" | "mins" | "minute" | "minutes" | "Min" | "MIN" => "m",
        "hr" | "hrs" | "hour" | "hours" | "H" => "h",
        "day" | "days" | "D" => "d",
        "w" | "wk" | "wks" | "week" | "weeks" => "w",
        _ => return None,
    })
}

/// `1h30m`: the milliseconds of several valid durations written without spaces.
fn compound_duration(text: &str) -> Option<u64> {
    let mut rest = text;
    let mut total: u64 = 0;
    let mut parts = 0;
    while !rest.is_empty() {
        let d = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest.get(..d)?.parse().ok()?;
        let after = rest.get(d..)?;
        // `ms` is tried before `m`: it comes first in the list.
        let (unit, millis) = DURATION_UNITS.iter().find(|(u, _)| after.starts_with(*u))?;
        total = total.checked_add(n.checked_mul(*millis)?)?;
        rest = after.get(unit.len()..)?;
        parts += 1;
    }
    (parts > 1).then_some(total)
}

/// The span of `1.5` or `1.5h` (integer, `.`, integer or duration, nothing between) when
/// the error at token `i` is its integer or its `.`.
fn fraction_at(toks: &[(usize, Token, usize)], i: usize) -> Option<Span> {
    let first = match toks.get(i)? {
        (_, Token::Dot, _) => i.checked_sub(1)?,
        (_, Token::Int(_), _) => i,
        _ => return None,
    };
    let (il, int, ir) = toks.get(first)?;
    let (dl, dot, dr) = toks.get(first + 1)?;
    let (fl, frac, fr) = toks.get(first + 2)?;
    let shape = matches!(int, Token::Int(_))
        && *dot == Token::Dot
        && matches!(frac, Token::Int(_) | Token::Duration(_));
    // `10.0.1` is an address cut short, not a fraction.
    let dot_glued = |t: Option<&(usize, Token, usize)>, at: usize| {
        t.is_some_and(|(l, tok, r)| *tok == Token::Dot && (*l == at || *r == at))
    };
    let address = dot_glued(toks.get(first + 3), *fr)
        || dot_glued(first.checked_sub(1).and_then(|p| toks.get(p)), *il);
    (shape && !address && ir == dl && dr == fl).then(|| Span::new(*il, *fr))
}

/// `1.5h` as `90m`: a fractional duration in the largest unit that makes it whole.
fn fraction_in_smaller_unit(text: &str) -> Option<String> {
    let (whole, rest) = text.split_once('.')?;
    let digits_end = rest.find(|c: char| !c.is_ascii_digit())?;
    let (frac, unit) = rest.split_at(digits_end);
    let size = unit_millis(unit)?;
    let scale = 10u64.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let whole: u64 = whole.parse().ok()?;
    let frac: u64 = frac.parse().ok()?;
    let scaled = whole
        .checked_mul(scale)?
        .checked_add(frac)?
        .checked_mul(size)?;
    (scaled % scale == 0).then(|| in_largest_unit(scaled / scale))
}

/// `5400000` ms as `90m`: the largest unit that divides it.
fn in_largest_unit(millis: u64) -> String {
    DURATION_UNITS
        .iter()
        .rev()
        .find(|(_, size)| millis > 0 && millis.is_multiple_of(*size))
        .map_or(format!("{millis}ms"), |(unit, size)| {
            format!("{}{unit}", millis / size)
        })
}

/// How many repaired texts the hints of one file may parse again (each is a whole parse).
pub(crate) const REPARSES: usize = 8;

/// Adds advice to a grammar error (K002, K003) when it matches a known mistake; may move
/// the error to the token that is really at fault (a trailing comma). `reparses` is what
/// is left of [`REPARSES`].
pub(crate) fn explain(
    src: &str,
    toks: &[(usize, Token, usize)],
    e: &mut SyntaxError,
    reparses: &mut usize,
) {
    match e.code {
        SyntaxCode::UnexpectedEof => {
            if let Some(open) = unclosed_brace(src, toks, e.span.start) {
                e.message = "unexpected end of file: a `{` is never closed".into();
                e.label = Some("the file ends here".into());
                e.secondary.push((open, "this `{` is never closed".into()));
                e.help = Some(format!(
                    "add the missing `}}` for the `{{` on line {}",
                    line_of(src, open.start)
                ));
            }
        }
        SyntaxCode::UnexpectedToken => {
            let Ok(i) = toks.binary_search_by_key(&e.span.start, |t| t.0) else {
                return;
            };
            unexpected(src, toks, i, e, reparses);
        }
        SyntaxCode::InvalidToken | SyntaxCode::InvalidValue => {}
    }
}

fn unexpected(
    src: &str,
    toks: &[(usize, Token, usize)],
    i: usize,
    e: &mut SyntaxError,
    reparses: &mut usize,
) {
    let Some((l, tok, r)) = toks.get(i) else {
        return;
    };
    let expects = |what: &str| e.expected.iter().any(|x| x == what);
    let wants_name = expects("a name");

    // `commands a, b,` then the next line: the comma is the mistake, not what follows.
    if let Some(comma) = trailing_comma(src, toks, i, wants_name) {
        e.message = "trailing comma after the last item of a list".into();
        e.span = comma;
        e.label = Some("remove this comma".into());
        e.help = Some(
            "remove the trailing comma: a list without brackets (`commands`, `alerts`, \
             `final`, `emits`, `tagged`, a rule's actions) ends at its last item"
                .into(),
        );
        return;
    }
    // `1.5`, `2.5s`: a fraction, read as the integer `1`, then `.`.
    if let Some(span) = fraction_at(toks, i) {
        let text = src.get(span.start..span.end).unwrap_or_default();
        e.message = format!("`{text}`: numbers have no fractions");
        e.span = span;
        e.label = Some("not a number of the language".into());
        e.help = Some(match fraction_in_smaller_unit(text) {
            Some(d) => format!("write `{d}`: a duration is a whole number of a unit ({UNITS})"),
            None => "scale the value to a unit in which it is a whole number (milliwatts for \
                     a plug, milli-g for an accelerometer) and say so in the name"
                .into(),
        });
        return;
    }
    // `cam-door`: a hyphen between two words with no space around it.
    if *tok == Token::Minus && glued_to_word_before(src, *l) && starts_word(src, *r) {
        let start = word_start(src, *l);
        let end = hyphenated_end(src, *r);
        let word = src.get(start..end).unwrap_or_default();
        e.message = format!("`{word}` is not a name: names cannot contain `-`");
        e.span = Span::new(start, end);
        e.label = Some("`-` is not allowed in a name".into());
        e.help = Some(format!(
            "names join words with `_`: write `{}`",
            word.replace('-', "_")
        ));
        return;
    }
    let prev = i.checked_sub(1).and_then(|p| toks.get(p));
    let prev2 = i.checked_sub(2).and_then(|p| toks.get(p));
    // A node declared after another member of its site: `node` where a site member goes,
    // or, after a device, `node NAME` read as the device's attribute and then its `{`.
    let misplaced_node = match (tok, prev2) {
        (Token::Node, _) if expects("`device`") => Some(Span::new(*l, *r)),
        (Token::LBrace, Some((nl, Token::Node, _))) if expects("`device`") => {
            Some(Span::new(*nl, *r))
        }
        _ => None,
    };
    if let Some(span) = misplaced_node {
        e.message = "a node declared after other members of its site".into();
        e.span = span;
        e.label = Some("nodes come first".into());
        e.help = Some(
            "declare a site's nodes before its other members: move every `node NAME { ... }` \
             to the top of the site (after a device, `node NAME` is that device's node)"
                .into(),
        );
        return;
    }
    let same_line = |a: usize, b: usize| src.get(a..b).is_some_and(|s| !s.contains('\n'));
    // `commands turn_on turn_off`: `turn_off` was read as the start of a new member.
    if let (Some((xl, Token::Ident(x), xr)), Some((_, Token::Ident(y), yr))) = (prev, prev2) {
        if expects("`->`") && same_line(*yr, *xl) {
            // The states of a type are ordered with `<`; other lists take commas.
            let line_start = toks
                .get(..i - 1)
                .unwrap_or_default()
                .iter()
                .rev()
                .take_while(|t| same_line(t.2, *xl))
                .last();
            let states = matches!(line_start, Some((_, Token::States, _)));
            let sep = if states { "<" } else { "," };
            e.message = format!("a `{sep}` is missing between `{y}` and `{x}`");
            e.span = Span::new(*xl, *xr);
            e.label = Some("read as the start of a new member".into());
            e.help = Some(if states {
                format!("order the states from least to most restrictive: `{y} < {x}`")
            } else {
                format!("separate the items of a list with commas: `{y}, {x}`")
            });
            return;
        }
    }
    // `states normal, attack`: states are ordered, not listed.
    if *tok == Token::Comma && expects("`<`") {
        e.message = "states are ordered with `<`, not listed with `,`".into();
        e.label = Some("write `<` here".into());
        let example = match (prev, toks.get(i + 1)) {
            (Some((_, Token::Ident(a), _)), Some((_, Token::Ident(b), _))) => format!("{a} < {b}"),
            _ => "normal < suspicious < attack".into(),
        };
        e.help = Some(format!(
            "list the states from least to most restrictive: `states {example}`"
        ));
        return;
    }
    // `initial: normal`, `image: "..."`: a member's keyword takes no colon.
    if let (Token::Colon, Some((_, k, _))) = (tok, prev) {
        if is_keyword(k) && !expects("`:`") {
            e.message = format!("`{}` takes no `:`", k.text());
            e.label = Some("remove this `:`".into());
            let value = match toks.get(i + 1) {
                Some((vl, _, vr)) => src.get(*vl..*vr).unwrap_or("..."),
                None => "...",
            };
            e.help = Some(format!(
                "write the value right after the keyword: `{} {value}`",
                k.text()
            ));
            return;
        }
    }
    // `port p0`: a string needs its quotes.
    if let Token::Ident(w) = tok {
        if e.expected == ["a string"] {
            e.message = format!("`{w}` must be a string");
            e.label = Some("a name, not a string".into());
            e.help = Some(format!("put it in double quotes: `\"{w}\"`"));
            return;
        }
    }
    // `plug.turn_off()`: a command takes no parentheses.
    if let (Token::LParen, Some((_, Token::Ident(c), _)), Some((_, Token::Dot, _))) =
        (tok, prev, prev2)
    {
        if !expects("`(`") {
            if let Some((_, Token::RParen, rr)) = toks.get(i + 1) {
                e.span = Span::new(*l, *rr);
            }
            e.message = format!("a command takes no parentheses: `{c}()`");
            e.label = Some("remove `()`".into());
            let device = match i.checked_sub(3).and_then(|p| toks.get(p)) {
                Some((_, Token::Ident(d), _)) => d.as_str(),
                _ => "DEVICE",
            };
            e.help = Some(format!("write `{device}.{c}`: commands have no arguments"));
            return;
        }
    }
    // `for 1 min`: a number and its unit are written together.
    if let (Token::Int(n), Some((_, Token::Ident(u), ur))) = (tok, toks.get(i + 1)) {
        let unit = if is_unit(u) {
            Some(u.as_str())
        } else {
            duration_unit(u)
        };
        if let (true, Some(unit)) = (expects("a duration"), unit) {
            let fixed = if unit == "w" {
                n.checked_mul(7).map(|d| format!("{d}d"))
            } else {
                Some(format!("{n}{unit}"))
            };
            if let Some(fixed) = fixed {
                e.message = format!("a duration is written without a space: `{fixed}`");
                e.span = Span::new(*l, *ur);
                e.label = Some("one token, no space".into());
                e.help = Some(format!("write `{fixed}`: {UNITS_ARE}",));
                return;
            }
        }
    }
    if *tok == Token::Eq && expects("`==`") {
        e.message = "`=` does not compare".into();
        e.label = Some("use `==` here".into());
        e.help = Some(
            "write `==` to compare; `=` only gives a value (a default, an argument, a binding)"
                .into(),
        );
        return;
    }
    // An item keyword where a member or `}` was expected: a `{` above is still open.
    let starts_item = matches!(tok, Token::Site | Token::Umbox | Token::Import)
        || (*tok == Token::Device && matches!(toks.get(i + 1), Some((_, Token::Type, _))));
    if starts_item && expects("`}`") {
        if let Some(open) = unclosed_brace(src, toks, *l) {
            e.message = format!("unexpected `{}`: a `{{` above is never closed", tok.text());
            e.label = Some(format!("`{}` starts a new item", tok.text()));
            e.secondary.push((open, "this `{` is never closed".into()));
            e.help = Some(format!(
                "`{}` starts a new item, but the `{{` on line {} is still open: add the missing `}}`",
                tok.text(),
                line_of(src, open.start)
            ));
            return;
        }
    }
    // Only where nothing but a name fits (not where a keyword would start something).
    let only_a_name = wants_name && !e.expected.iter().any(|x| is_word(x));
    // `a { chain [pass]` then the next member, indented alike: the block still waits for
    // its `}`. (A line indented deeper than the `{` is a mistake inside the block.)
    let new_line = first_on_line(src, *l) && i > 0;
    if new_line && expects("`}`") {
        let sibling = |open: &Span| indent_of(src, open.start) >= indent_of(src, *l);
        if let Some(open) = innermost_open_brace(toks, i).filter(sibling) {
            e.message = format!("{}: the `{{` above is not closed", e.message);
            e.secondary
                .push((open, "this `{` is not closed before the next line".into()));
            e.help = Some(format!(
                "add the missing `}}` for the `{{` on line {}",
                line_of(src, open.start)
            ));
            return;
        }
    }
    if only_a_name && is_keyword(tok) && meant_as_a_name(src, toks, i, reparses) {
        reserved(e, tok.text());
        return;
    }
    // `count.power`, `escalate count to ...`: a keyword used as a name where a name was
    // written fails at the token after it; blame the keyword when, renamed, it parses.
    if let Some((pl, prev_tok, pr)) = i.checked_sub(1).and_then(|p| toks.get(p)) {
        if is_keyword(prev_tok) && meant_as_a_name(src, toks, i - 1, reparses) {
            e.span = Span::new(*pl, *pr);
            reserved(e, prev_tok.text());
        }
    }
}

/// The message of a keyword written where a name was meant.
fn reserved(e: &mut SyntaxError, k: &str) {
    e.message = format!("`{k}` is a reserved word and cannot be a name");
    e.label = Some("a keyword, not a name".into());
    e.help = Some(format!(
        "choose another name, e.g. `{k}_` or `my_{k}` (the keywords are listed in \
         docs/language.md §2.3)"
    ));
}

/// Whether the keyword at token `i` was meant as a name: with a name of the same length
/// in its place, the file parses at least past the token after it. (`device d: at ...`
/// with the type left out is not `at` meant as a name: `d: xx 10.0.1.2` fails at once.)
fn meant_as_a_name(
    src: &str,
    toks: &[(usize, Token, usize)],
    i: usize,
    reparses: &mut usize,
) -> bool {
    let Some((l, _, r)) = toks.get(i) else {
        return false;
    };
    let Some(left) = reparses.checked_sub(1) else {
        return false;
    };
    *reparses = left;
    let (Some(before), Some(after)) = (src.get(..*l), src.get(*r..)) else {
        return false;
    };
    let renamed = format!("{before}{}{after}", "x".repeat(r - l));
    let past = toks.get(i + 2).map_or(usize::MAX, |t| t.0);
    crate::parser::first_error_from(&renamed, *l).is_none_or(|at| at >= past)
}

/// Whether an entry of the expected list is a keyword (`` `clock` ``).
fn is_word(expected: &str) -> bool {
    let w = expected.trim_matches('`');
    expected.starts_with('`') && !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase())
}

/// Whether the token is a keyword (a word the lexer does not give as a name).
fn is_keyword(tok: &Token) -> bool {
    let t = tok.text();
    !t.is_empty() && t.chars().all(|c| c.is_ascii_lowercase())
}

/// The comma that ends an unbracketed list too early, when the error at token `i` is
/// explained by one: a name was expected right after a comma and the token is on a later
/// line (or cannot be a name), or the line after the comma was taken as the list's last
/// name and the error came right after it.
fn trailing_comma(
    src: &str,
    toks: &[(usize, Token, usize)],
    i: usize,
    wants_name: bool,
) -> Option<Span> {
    let at = |k: usize| toks.get(k);
    let newline_between = |a: usize, b: usize| src.get(a..b).is_some_and(|s| s.contains('\n'));
    let (l, tok, _) = at(i)?;
    if i >= 1 {
        if let (cl, Token::Comma, cr) = at(i - 1)? {
            let not_a_name = !matches!(tok, Token::Ident(_)) && !is_keyword(tok);
            if wants_name && (newline_between(*cr, *l) || not_a_name) {
                return Some(Span::new(*cl, *cr));
            }
        }
    }
    // `commands a, b,` / `normal -> attack ...`: `normal` was read as the third command.
    if i >= 2 {
        if let ((nl, Token::Ident(_), nr), (cl, Token::Comma, cr)) = (at(i - 1)?, at(i - 2)?) {
            let starts_member = matches!(tok, Token::Arrow | Token::LBrace);
            if starts_member && newline_between(*cr, *nl) && !newline_between(*nr, *l) {
                return Some(Span::new(*cl, *cr));
            }
        }
    }
    None
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn glued_to_word_before(src: &str, at: usize) -> bool {
    src.get(..at)
        .and_then(|s| s.chars().next_back())
        .is_some_and(is_word_char)
}

fn starts_word(src: &str, at: usize) -> bool {
    src.get(at..)
        .and_then(|s| s.chars().next())
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

fn word_start(src: &str, end: usize) -> usize {
    let before = src.get(..end).unwrap_or_default();
    before
        .char_indices()
        .rev()
        .take_while(|(_, c)| is_word_char(*c))
        .last()
        .map_or(end, |(i, _)| i)
}

/// The end of `door-lock-2` from just after the first `-`.
fn hyphenated_end(src: &str, from: usize) -> usize {
    let rest = src.get(from..).unwrap_or_default();
    let mut end = from;
    let mut prev_hyphen = true;
    for (i, c) in rest.char_indices() {
        if is_word_char(c) {
            end = from + i + c.len_utf8();
            prev_hyphen = false;
        } else if c == '-' && !prev_hyphen {
            prev_hyphen = true;
        } else {
            break;
        }
    }
    end
}

/// The innermost `{` still open before token `i`, as the parser nests them.
fn innermost_open_brace(toks: &[(usize, Token, usize)], i: usize) -> Option<Span> {
    let mut open: Vec<Span> = Vec::new();
    for (l, tok, r) in toks.iter().take(i) {
        match tok {
            Token::LBrace => open.push(Span::new(*l, *r)),
            Token::RBrace => {
                open.pop();
            }
            _ => {}
        }
    }
    open.pop()
}

/// 1-based line of a byte offset.
fn line_of(src: &str, at: usize) -> usize {
    src.get(..at).map_or(0, |s| s.matches('\n').count()) + 1
}

/// Indentation (leading spaces and tabs) of the line holding `at`.
fn indent_of(src: &str, at: usize) -> usize {
    let line_start = src
        .get(..at)
        .and_then(|s| s.rfind('\n'))
        .map_or(0, |n| n + 1);
    src.get(line_start..)
        .unwrap_or_default()
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .count()
}

/// Whether only spaces and tabs precede `at` on its line.
pub(crate) fn first_on_line(src: &str, at: usize) -> bool {
    let line_start = src
        .get(..at)
        .and_then(|s| s.rfind('\n'))
        .map_or(0, |n| n + 1);
    src.get(line_start..at)
        .is_some_and(|s| s.chars().all(|c| c == ' ' || c == '\t'))
}

/// The `{` that is most likely never closed, among those open before `upto`. Braces are
/// paired as the indentation says: a `}` that starts a line closes the open `{` whose
/// line is indented as much, and any `{` opened after that one and still open is the one
/// that lost its `}`. Failing that, the innermost `{` still open.
fn unclosed_brace(src: &str, toks: &[(usize, Token, usize)], upto: usize) -> Option<Span> {
    let mut open: Vec<(Span, usize)> = Vec::new();
    let mut skipped: Option<Span> = None;
    for (l, tok, r) in toks.iter().take_while(|t| t.0 < upto) {
        match tok {
            Token::LBrace => open.push((Span::new(*l, *r), indent_of(src, *l))),
            Token::RBrace => {
                let indent = indent_of(src, *l);
                let by_indent = first_on_line(src, *l)
                    .then(|| open.iter().rposition(|(_, i)| *i == indent))
                    .flatten();
                match by_indent {
                    Some(k) => {
                        if skipped.is_none() {
                            skipped = open.get(k + 1).map(|(s, _)| *s);
                        }
                        open.truncate(k);
                    }
                    None => {
                        open.pop();
                    }
                }
            }
            _ => {}
        }
    }
    skipped.or_else(|| open.last().map(|(s, _)| *s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn first(src: &str) -> SyntaxError {
        parse(src)
            .errors
            .into_iter()
            .next()
            .unwrap_or_else(|| SyntaxError {
                help: None,
                label: None,
                secondary: vec![],
                code: SyntaxCode::InvalidValue,
                message: "no error".into(),
                span: Span::new(0, 0),
                expected: vec![],
            })
    }

    #[test]
    fn the_units_shown_are_the_lexers() {
        let units: Vec<&str> = DURATION_UNITS.iter().map(|(u, _)| *u).collect();
        assert_eq!(UNITS, units.join(", "));
        assert!(UNITS_ARE.ends_with(UNITS));
    }

    #[test]
    fn durations_with_other_units_get_the_right_spelling() {
        let help = |t: &str| invalid_token(t).1.unwrap_or_default();
        assert!(help("1min").starts_with("write `1m`"));
        assert!(help("90secs").starts_with("write `90s`"));
        assert!(help("2hours").starts_with("write `2h`"));
        assert!(help("3days").starts_with("write `3d`"));
        assert!(help("2w").starts_with("write `14d`"));
        assert!(help("250msec").starts_with("write `250ms`"));
        assert!(help("1h30m").contains("`90m`"));
        assert!(help("1d12h").contains("`36h`"));
        assert!(help("3500W").starts_with("numbers carry no units: write `3500`"));
        assert!(invalid_token("99999999999999999999d")
            .0
            .contains("too long"));
        assert_eq!(invalid_token("10_000").1.as_deref(), Some("write `10000`"));
        assert_eq!(
            invalid_token("1_500ms").1.as_deref(),
            Some("write `1500ms`")
        );
        assert_eq!(fraction_in_smaller_unit("1.5h").as_deref(), Some("90m"));
        assert_eq!(fraction_in_smaller_unit("2.5s").as_deref(), Some("2500ms"));
        assert_eq!(fraction_in_smaller_unit("1.5"), None);
    }

    #[test]
    fn a_fraction_is_told_apart_from_an_address_cut_short() {
        let e = first("site s {\n    device a: T at 10.0.1 port \"a\"\n}\n");
        assert!(!e.message.contains("fraction"), "{}", e.message);
        let e = first("site s {\n    rule r when a.x > 2.5 then a -> b\n}\n");
        assert!(e.message.contains("fraction"), "{}", e.message);
    }

    #[test]
    fn the_unclosed_brace_is_found_by_indentation() {
        let src = "device type T {\n    b { chain [pass] }\n    a { chain [pass]\n}\nsite s {\n}\n";
        let e = first(src);
        assert_eq!(e.code, SyntaxCode::UnexpectedToken);
        let open = src.find("a {").map(|i| i + 2).unwrap_or_default();
        assert_eq!(
            e.secondary.first().map(|s| s.0),
            Some(Span::new(open, open + 1))
        );
        // The next line starts while a block still waits for its `}`: that block's `{`.
        let src = "device type T {\n    a { chain [pass]\n    b { chain [pass] }\n}\n";
        let e = first(src);
        let open = src.find("a {").map(|i| i + 2).unwrap_or_default();
        assert_eq!(
            e.secondary.first().map(|s| s.0),
            Some(Span::new(open, open + 1))
        );
        // A bad line inside a block that is closed further down blames no brace.
        let e = first("device type T {\n    = x\n}\n");
        assert!(e.secondary.is_empty(), "{:?}", e.secondary);
        // At the end of the file, the innermost brace still open.
        let e = first("site s {\n    bridge \"b\"\n");
        assert_eq!(e.code, SyntaxCode::UnexpectedEof);
        assert_eq!(e.secondary.first().map(|s| s.0), Some(Span::new(7, 8)));
    }

    #[test]
    fn a_trailing_comma_is_blamed_only_when_a_line_ends_with_it() {
        let src = "device type T {\n    commands a, b,\n    states n\n}\n";
        let e = first(src);
        let comma = src.find("b,").map(|i| i + 1).unwrap_or_default();
        assert_eq!(e.span, Span::new(comma, comma + 1));
        // `commands a, states`: a keyword on the comma's own line is the mistake itself.
        let e = first("device type T {\n    commands a, states\n}\n");
        assert!(e.message.contains("reserved"), "{}", e.message);
    }

    #[test]
    fn a_keyword_is_called_reserved_only_when_meant_as_a_name() {
        let e = first("site s {\n    device d: at 10.0.1.2 port \"p\"\n}\n");
        assert!(!e.message.contains("reserved"), "{}", e.message);
        let e = first("site s {\n    device count: T at 10.0.1.2 port \"p\"\n}\n");
        assert!(
            e.message.contains("`count` is a reserved word"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_keyword_is_called_reserved_only_where_just_a_name_fits() {
        // After `when`, `then` is a missing condition, not a badly chosen name.
        let e = first("site s {\n    rule r when then x -> y\n}\n");
        assert!(e.message.starts_with("unexpected `then`"), "{}", e.message);
        assert!(e.help.is_none());
    }

    #[test]
    fn subtraction_is_not_a_hyphenated_name() {
        // `a - b` with spaces is arithmetic; only `a-b` glued is read as a name.
        let e = first("site s {\n    device a - b: T\n}\n");
        assert!(e.message.starts_with("unexpected `-`"), "{}", e.message);
        let e = first("site s {\n    device door-lock-2: T\n}\n");
        assert!(e.help.unwrap_or_default().contains("`door_lock_2`"));
    }
}
