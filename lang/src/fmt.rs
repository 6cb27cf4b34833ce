//! The formatter: one canonical layout for `.kalki` source (`kalkic fmt`, the language
//! server's "format document").
//!
//! Pure: source text in, formatted text out. A file with syntax errors is refused, never
//! half-formatted. The output has exactly the input's tokens in the input's order (each
//! printed as its source text, so `60s` stays `60s`) and exactly its comments; only the
//! whitespace between them changes. [`format`] checks that before it answers.
//!
//! How: the parser gives the tree, and the tree gives where every item and member ends;
//! the lexer gives the tokens, and the comments are the source text between tokens. Each
//! member is laid out from its tokens (canonical spacing, wrapped at [`WIDTH`] columns),
//! then runs of similar lines are aligned. The rules are in docs/tools/fmt.md.

use crate::ast::{DeviceMember, File, Ident, Item, PortItem, SiteMember, Trigger, UmboxMember};
use crate::lexer::{Lexer, Token};
use crate::parser::{parse, SyntaxError};
use std::ops::Range;

/// Lines are wrapped to fit in this many columns where the layout allows (lists, rule
/// conditions and actions); a single name or string longer than that is left as it is.
pub const WIDTH: usize = 100;

/// Spaces per level of `{ }` nesting.
const INDENT: usize = 4;

/// Formats one source file. `Err` holds the file's syntax errors; nothing is formatted
/// then.
pub fn format(src: &str) -> Result<String, Vec<SyntaxError>> {
    let parsed = parse(src);
    if !parsed.errors.is_empty() {
        return Err(parsed.errors);
    }
    let toks = tokens(src);
    let gaps = gaps(src, &toks);
    let mut f = Formatter {
        src,
        toks: &toks,
        gaps: &gaps,
        out: Vec::new(),
        port_braces: Vec::new(),
    };
    collect_port_braces(&parsed.file, &toks, &mut f.port_braces);
    let items = item_units(&parsed.file, &toks);
    f.file(&items);
    let text = render(&f.out);
    // The layout only moves whitespace: the same tokens and comments, in the same order.
    // Should a bug ever break that, the source is returned untouched rather than changed.
    if same_tokens_and_comments(src, &text) {
        Ok(text)
    } else {
        debug_assert!(
            false,
            "the formatter changed the tokens of:\n{src}\n---\n{text}"
        );
        Ok(src.to_string())
    }
}

/// Whether two sources have the same tokens (values and kinds) and the same comments, in
/// the same order.
pub fn same_tokens_and_comments(a: &str, b: &str) -> bool {
    let (ta, tb) = (tokens(a), tokens(b));
    let kinds = |t: &[Tok]| t.iter().map(|t| t.kind.clone()).collect::<Vec<_>>();
    let comments = |s: &str, t: &[Tok]| {
        gaps(s, t)
            .into_iter()
            .flat_map(|g| {
                g.comments
                    .into_iter()
                    .map(|c| c.text.trim_end().to_string())
            })
            .collect::<Vec<_>>()
    };
    kinds(&ta) == kinds(&tb) && comments(a, &ta) == comments(b, &tb)
}

// ---------------------------------------------------------------- tokens and comments

#[derive(Debug, Clone)]
struct Tok {
    kind: Token,
    start: usize,
    end: usize,
}

fn tokens(src: &str) -> Vec<Tok> {
    Lexer::new(src)
        .flatten()
        .map(|(start, kind, end)| Tok { kind, start, end })
        .collect()
}

#[derive(Debug, Clone)]
struct Comment<'s> {
    text: &'s str,
    /// Byte offset in the source.
    start: usize,
    /// Line breaks between what came before (token or comment) and this comment.
    breaks_before: usize,
}

/// What lies between two tokens: comments, and line breaks.
#[derive(Debug, Clone, Default)]
struct Gap<'s> {
    comments: Vec<Comment<'s>>,
    /// Line breaks between the last comment (or the previous token) and the next token.
    breaks_after: usize,
}

/// The gaps before each token, and one after the last (`gaps.len() == toks.len() + 1`).
fn gaps<'s>(src: &'s str, toks: &[Tok]) -> Vec<Gap<'s>> {
    let mut out = Vec::with_capacity(toks.len() + 1);
    let mut prev = 0;
    for t in toks {
        out.push(gap(src, prev, t.start));
        prev = t.end;
    }
    out.push(gap(src, prev, src.len()));
    out
}

/// Splits the text between two tokens (only whitespace and comments, by the lexer's
/// rules) into comments and line breaks.
fn gap(src: &str, from: usize, to: usize) -> Gap<'_> {
    let mut g = Gap::default();
    let mut breaks = 0;
    let mut rest = src.get(from..to).unwrap_or("");
    let offset = |rest: &str| to - rest.len();
    while !rest.is_empty() {
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            let (c, r) = rest.split_at(end);
            g.comments.push(Comment {
                text: c.trim_end(),
                start: offset(rest),
                breaks_before: breaks,
            });
            breaks = 0;
            rest = r;
        } else if rest.starts_with("/*") {
            let end = rest
                .get(2..)
                .and_then(|r| r.find("*/"))
                .map_or(rest.len(), |i| i + 4);
            let (c, r) = rest.split_at(end);
            g.comments.push(Comment {
                text: c,
                start: offset(rest),
                breaks_before: breaks,
            });
            breaks = 0;
            rest = r;
        } else {
            let mut chars = rest.chars();
            if chars.next() == Some('\n') {
                breaks += 1;
            }
            rest = chars.as_str();
        }
    }
    g.breaks_after = breaks;
    g
}

// ---------------------------------------------------------------- the tree as units

/// A piece of layout: a range of tokens and how to lay it out.
#[derive(Debug, Clone)]
struct Unit {
    toks: Range<usize>,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// One line (wrapped if long). `list` is the token where an unbracketed comma list
    /// starts (`alerts a, b`), for the column of its continuation lines.
    Line { list: Option<usize> },
    /// `NAME { ... }` whose members go one per line: `header` ends after the `{`, the last
    /// token is the `}`.
    Block { header: usize, members: Vec<Unit> },
    /// A line whose head (up to `head_end`) is padded to align with its neighbours of
    /// the same `run`: state blocks `NAME { chain [...] }` (the name), telemetry fields
    /// `VAR = ...` (the variable), `command NAME publish ...` (up to the name).
    Aligned { run: u8, head_end: usize },
    /// `FROM -> TO TRIGGER`; `expr`: a `when` condition.
    Transition {
        from_end: usize,
        to_end: usize,
        expr: Option<Range<usize>>,
    },
    /// `device NAME: TYPE(ARGS) ATTRS`: the head (up to `head_end`) is padded.
    Device {
        head_end: usize,
        list: Option<usize>,
    },
    /// `rule NAME [for v in g]` / `when|on COND` / `then ACTIONS`, on three lines.
    Rule { cond_kw: usize, then: usize },
    /// `assert reachable|never COND`.
    Assert { expr: Range<usize> },
}

// Kinds of aligned runs.
const RUN_STATE: u8 = 0;
const RUN_TRANSITION: u8 = 1;
const RUN_DEVICE: u8 = 2;
const RUN_FIELD: u8 = 3;
const RUN_PUBLISH: u8 = 4;
const RUN_NODE: u8 = 5;

/// Index of the first token that starts at or after `pos`.
fn first_at(toks: &[Tok], pos: usize) -> usize {
    toks.partition_point(|t| t.start < pos)
}

/// Index just past the last token that ends at or before `pos`.
fn end_at(toks: &[Tok], pos: usize) -> usize {
    toks.partition_point(|t| t.end <= pos)
}

fn item_units(file: &File, toks: &[Tok]) -> Vec<Unit> {
    let mut prev = 0;
    let mut out = Vec::new();
    for item in &file.items {
        let (span, members) = match item {
            Item::Import(i) => {
                let end = end_at(toks, i.span.end);
                out.push(Unit {
                    toks: prev..end,
                    kind: Kind::Line { list: None },
                });
                prev = end;
                continue;
            }
            Item::Umbox(u) => (u.span, umbox_members(&u.members, toks)),
            Item::DeviceType(d) => (d.span, device_type_members(&d.members, toks)),
            Item::Site(s) => (s.span, site_members(&s.members, toks)),
        };
        let end = end_at(toks, span.end);
        out.push(block(toks, prev..end, members));
        prev = end;
    }
    out
}

/// A block over `range`: header up to the first `{`, then members given as (end, kind).
fn block(toks: &[Tok], range: Range<usize>, members: Vec<(usize, Kind)>) -> Unit {
    let header = (range.start..range.end)
        .find(|&i| toks.get(i).is_some_and(|t| t.kind == Token::LBrace))
        .map_or(range.end, |i| i + 1);
    let mut prev = header;
    let mut units = Vec::new();
    for (end, kind) in members {
        if end > prev {
            units.push(Unit {
                toks: prev..end,
                kind,
            });
            prev = end;
        }
    }
    Unit {
        toks: range,
        kind: Kind::Block {
            header,
            members: units,
        },
    }
}

fn line(list: Option<&Ident>, toks: &[Tok]) -> Kind {
    Kind::Line {
        list: list.map(|i| first_at(toks, i.span.start)),
    }
}

fn umbox_members(members: &[UmboxMember], toks: &[Tok]) -> Vec<(usize, Kind)> {
    members
        .iter()
        .map(|m| {
            let (span, kind) = match m {
                UmboxMember::Image(s) => (s.span, line(None, toks)),
                UmboxMember::Args(_, s) | UmboxMember::Env(_, s) => (*s, line(None, toks)),
                UmboxMember::Param(p) => (p.span, line(None, toks)),
                UmboxMember::Emits(v, s) => (*s, line(v.first(), toks)),
                UmboxMember::Mode(i) => (i.span, line(None, toks)),
                UmboxMember::Secret { span, .. } => (*span, line(None, toks)),
                UmboxMember::Traffic(t) => {
                    let range = first_at(toks, t.span.start)..end_at(toks, t.span.end);
                    let items = t
                        .items
                        .iter()
                        .map(|i| {
                            let span = match i {
                                crate::ast::TrafficItem::Clause(c) => c.span,
                                crate::ast::TrafficItem::OnFailure { span, .. } => *span,
                            };
                            (end_at(toks, span.end), line(None, toks))
                        })
                        .collect();
                    let end = range.end;
                    // The block starts at the member's first token (after the previous
                    // member), which `block` is given through the caller's range.
                    return (end, block(toks, range, items).kind);
                }
            };
            (end_at(toks, span.end), kind)
        })
        .collect()
}

fn device_type_members(members: &[DeviceMember], toks: &[Tok]) -> Vec<(usize, Kind)> {
    members
        .iter()
        .map(|m| {
            let (span, kind) = match m {
                DeviceMember::Sensed { span, .. } => (*span, line(None, toks)),
                DeviceMember::Param(p) => (p.span, line(None, toks)),
                DeviceMember::Telemetry(t) => {
                    let range = first_at(toks, t.span.start)..end_at(toks, t.span.end);
                    let fields = t
                        .fields
                        .iter()
                        .map(|f| {
                            let kind = Kind::Aligned {
                                run: RUN_FIELD,
                                head_end: end_at(toks, f.var.span.end),
                            };
                            (end_at(toks, f.span.end), kind)
                        })
                        .collect();
                    return (range.end, block(toks, range, fields).kind);
                }
                DeviceMember::Publish(p) => (
                    p.span,
                    Kind::Aligned {
                        run: RUN_PUBLISH,
                        head_end: end_at(toks, p.command.span.end),
                    },
                ),
                DeviceMember::Commands(v, s)
                | DeviceMember::LoweringCommands(v, s)
                | DeviceMember::Alerts(v, s)
                | DeviceMember::Final(v, s) => (*s, line(v.first(), toks)),
                DeviceMember::States(_, s) => (*s, line(None, toks)),
                DeviceMember::Initial(i) => (i.span, line(None, toks)),
                DeviceMember::StateBlock(b) => (
                    b.span,
                    Kind::Aligned {
                        run: RUN_STATE,
                        head_end: end_at(toks, b.state.span.end),
                    },
                ),
                DeviceMember::Transition(t) => {
                    let expr = match &t.trigger {
                        Trigger::When { span, hold, .. } => {
                            // After `when`, up to `for` or the end.
                            let start = first_at(toks, span.start) + 1;
                            let end = match hold {
                                Some(d) => first_at(toks, d.span.start).saturating_sub(1),
                                None => end_at(toks, span.end),
                            };
                            Some(start..end)
                        }
                        _ => None,
                    };
                    (
                        t.span,
                        Kind::Transition {
                            from_end: end_at(toks, t.from.span.end),
                            to_end: end_at(toks, t.to.span.end),
                            expr,
                        },
                    )
                }
            };
            (end_at(toks, span.end), kind)
        })
        .collect()
}

fn site_members(members: &[SiteMember], toks: &[Tok]) -> Vec<(usize, Kind)> {
    members
        .iter()
        .map(|m| {
            let (span, kind) = match m {
                SiteMember::Bridge { span, .. } | SiteMember::UnknownHosts(_, span) => {
                    (*span, line(None, toks))
                }
                SiteMember::Node(n) => (
                    n.span,
                    Kind::Aligned {
                        run: RUN_NODE,
                        head_end: end_at(toks, n.name.span.end),
                    },
                ),
                SiteMember::Device(d) => {
                    let mut head_end = end_at(toks, d.ty.span.end);
                    if toks.get(head_end).is_some_and(|t| t.kind == Token::LParen) {
                        head_end = matching(toks, head_end).map_or(head_end, |i| i + 1);
                    }
                    (
                        d.span,
                        Kind::Device {
                            head_end,
                            list: d.tags.first().map(|t| first_at(toks, t.span.start)),
                        },
                    )
                }
                SiteMember::Group(g) => (g.span, line(None, toks)),
                SiteMember::Rule(r) => {
                    let after_head = match &r.each {
                        Some((_, group)) => group.span.end,
                        None => r.name.span.end,
                    };
                    let cond_kw = end_at(toks, after_head);
                    let range = first_at(toks, r.span.start)..end_at(toks, r.span.end);
                    let then = range
                        .clone()
                        .find(|&i| toks.get(i).is_some_and(|t| t.kind == Token::Then))
                        .unwrap_or(range.end);
                    (r.span, Kind::Rule { cond_kw, then })
                }
                SiteMember::Assert(a) => {
                    let range = first_at(toks, a.span.start)..end_at(toks, a.span.end);
                    (
                        a.span,
                        Kind::Assert {
                            expr: (range.start + 2).min(range.end)..range.end,
                        },
                    )
                }
                SiteMember::TrafficAssert(t) => (t.span, line(None, toks)),
            };
            (end_at(toks, span.end), kind)
        })
        .collect()
}

/// The index of the bracket closing the one at `open`.
fn matching(toks: &[Tok], open: usize) -> Option<usize> {
    let mut depth = 0i64;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t.kind {
            Token::LParen | Token::LBracket | Token::LBrace => depth += 1,
            Token::RParen | Token::RBracket | Token::RBrace => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The `{` of `{port_param}` port items: written without inner spaces.
fn collect_port_braces(file: &File, toks: &[Tok], out: &mut Vec<usize>) {
    let mut add = |ports: &[PortItem]| {
        for p in ports {
            if let PortItem::Param(i) = p {
                out.push(first_at(toks, i.span.start).saturating_sub(1));
            }
        }
    };
    for item in &file.items {
        match item {
            Item::Umbox(u) => {
                for m in &u.members {
                    if let UmboxMember::Traffic(t) = m {
                        for i in &t.items {
                            if let crate::ast::TrafficItem::Clause(c) = i {
                                add(&c.ports);
                            }
                        }
                    }
                }
            }
            Item::Site(s) => {
                for m in &s.members {
                    if let SiteMember::TrafficAssert(t) = m {
                        if let Some(c) = &t.class {
                            add(&c.ports);
                        }
                    }
                }
            }
            Item::Import(_) | Item::DeviceType(_) => {}
        }
    }
    out.sort_unstable();
}

// ---------------------------------------------------------------- output lines

#[derive(Debug, Clone, Default)]
struct Line {
    indent: usize,
    text: String,
    /// Comments after the code, on the same line (aligned with the neighbours').
    trailing: Option<String>,
}

impl Line {
    fn is_blank(&self) -> bool {
        self.text.is_empty() && self.trailing.is_none()
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Joins the lines; trailing comments of consecutive lines at one indentation are
/// aligned one column, two spaces after the longest code among them.
fn render(lines: &[Line]) -> String {
    let mut cols = vec![0usize; lines.len()];
    let mut i = 0;
    while i < lines.len() {
        let is_trailing = |l: &Line| l.trailing.is_some() && !l.text.is_empty();
        if !lines.get(i).is_some_and(is_trailing) {
            i += 1;
            continue;
        }
        let indent = lines.get(i).map_or(0, |l| l.indent);
        let mut j = i;
        while lines
            .get(j)
            .is_some_and(|l| is_trailing(l) && l.indent == indent)
        {
            j += 1;
        }
        let col = lines
            .get(i..j)
            .unwrap_or(&[])
            .iter()
            .map(|l| width(&l.text))
            .max()
            .unwrap_or(0)
            + 2;
        for c in cols.get_mut(i..j).unwrap_or(&mut []) {
            *c = col;
        }
        i = j;
    }
    let mut out = String::new();
    for (l, col) in lines.iter().zip(cols) {
        if !l.is_blank() {
            out.extend(std::iter::repeat_n(' ', l.indent));
        }
        out.push_str(&l.text);
        if let Some(t) = &l.trailing {
            if !l.text.is_empty() {
                let pad = col.saturating_sub(width(&l.text)).max(1);
                out.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(t);
        }
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------- the layout

struct Formatter<'a, 's> {
    src: &'s str,
    toks: &'a [Tok],
    gaps: &'a [Gap<'s>],
    out: Vec<Line>,
    port_braces: Vec<usize>,
}

/// Alignment widths for a member: pads applied to its cells.
#[derive(Debug, Clone, Copy, Default)]
struct Pads {
    first: usize,
    second: usize,
}

impl<'s> Formatter<'_, 's> {
    fn text(&self, i: usize) -> &'s str {
        self.toks
            .get(i)
            .and_then(|t| self.src.get(t.start..t.end))
            .unwrap_or("")
    }

    fn kind(&self, i: usize) -> Option<&Token> {
        self.toks.get(i).map(|t| &t.kind)
    }

    fn blank(&mut self) {
        if self.out.last().is_some_and(|l| !l.is_blank()) {
            self.out.push(Line::default());
        }
    }

    /// The comments before token `at`: those on the line of the previous token join
    /// it as trailing comments; the others get lines of their own (a blank line kept
    /// before one when `blank_allowed`). Returns whether a blank line separated the
    /// last of them (or the previous token) from the token.
    fn comments_before(&mut self, at: usize, indent: usize, blank_allowed: bool) -> bool {
        let Some(gap) = self.gaps.get(at) else {
            return false;
        };
        let mut own_line = self.out.iter().all(Line::is_blank);
        for c in &gap.comments {
            if c.breaks_before == 0 && !own_line {
                if let Some(last) = self.out.iter_mut().rev().find(|l| !l.is_blank()) {
                    match &mut last.trailing {
                        Some(t) => {
                            t.push(' ');
                            t.push_str(c.text);
                        }
                        None => last.trailing = Some(c.text.to_string()),
                    }
                }
                continue;
            }
            if c.breaks_before >= 2 && blank_allowed && !self.out.is_empty() {
                self.blank();
            }
            if c.breaks_before == 0 && own_line {
                if let Some(last) = self.out.last_mut().filter(|l| !l.is_blank()) {
                    last.text.push(' ');
                    last.text.push_str(c.text);
                    continue;
                }
            }
            own_line = true;
            self.out.push(Line {
                indent,
                text: c.text.to_string(),
                trailing: None,
            });
        }
        gap.breaks_after >= 2
    }

    /// Whether any comment lies strictly inside the token range.
    fn has_inner_comments(&self, toks: &Range<usize>) -> bool {
        (toks.start + 1..toks.end).any(|i| self.gaps.get(i).is_some_and(|g| !g.comments.is_empty()))
    }

    fn file(&mut self, items: &[Unit]) {
        let mut prev_import = false;
        for (n, item) in items.iter().enumerate() {
            let import = matches!(item.kind, Kind::Line { .. });
            // Items are one blank line apart; imports keep at most one between them.
            let forced = n > 0 && !(import && prev_import);
            if forced {
                self.blank();
            }
            if self.comments_before(item.toks.start, 0, true) {
                self.blank();
            }
            self.unit(item, 0, Pads::default());
            prev_import = import;
        }
        let end = self.toks.len();
        self.comments_before(end, 0, true);
        while self.out.last().is_some_and(Line::is_blank) {
            self.out.pop();
        }
    }

    fn unit(&mut self, u: &Unit, indent: usize, pads: Pads) {
        match &u.kind {
            Kind::Block { header, members } => self.block(u, *header, members, indent),
            kind => {
                if self.has_inner_comments(&u.toks) {
                    self.verbatim_lines(u.toks.clone(), indent);
                } else {
                    self.member(u.toks.clone(), kind, indent, pads);
                }
            }
        }
    }

    fn block(&mut self, u: &Unit, header: usize, members: &[Unit], indent: usize) {
        let head = u.toks.start..header;
        if self.has_inner_comments(&head) {
            self.verbatim_lines(head, indent);
        } else {
            let lines = self.fill(head, indent, None, None);
            self.push_lines(lines, indent);
        }
        let close = u.toks.end.saturating_sub(1);
        if members.is_empty() && self.gaps.get(close).is_some_and(|g| g.comments.is_empty()) {
            if let Some(last) = self.out.last_mut() {
                last.text.push('}');
            }
            return;
        }
        let inner = indent + INDENT;
        let pads = self.pads(members);
        let header_lines = self.out.len();
        for (n, m) in members.iter().enumerate() {
            let blank = self.comments_before(m.toks.start, inner, n > 0);
            if blank && self.out.len() > header_lines {
                self.blank();
            }
            self.unit(m, inner, pads.get(n).copied().unwrap_or_default());
        }
        self.comments_before(close, inner, true);
        while self.out.last().is_some_and(Line::is_blank) {
            self.out.pop();
        }
        self.out.push(Line {
            indent,
            text: self.text(close).to_string(),
            trailing: None,
        });
    }

    /// Alignment of runs of state blocks, transitions, devices, telemetry fields and
    /// `command ... publish` lines: consecutive members
    /// of one kind (blank lines and comment lines do not break a run; a member of another
    /// kind does, and so does a device with type arguments or no attributes).
    fn pads(&self, members: &[Unit]) -> Vec<Pads> {
        let mut out = vec![Pads::default(); members.len()];
        let cells = |m: &Unit| -> Option<(u8, usize, usize)> {
            if self.has_inner_comments(&m.toks) {
                return None;
            }
            let w = |r: Range<usize>| width(&self.join(r));
            match &m.kind {
                Kind::Aligned { run, head_end } => Some((*run, w(m.toks.start..*head_end), 0)),
                Kind::Transition {
                    from_end, to_end, ..
                } => Some((
                    RUN_TRANSITION,
                    w(m.toks.start..*from_end),
                    w(*from_end + 1..*to_end),
                )),
                // A device with type arguments has a head too long to align with.
                Kind::Device { head_end, .. }
                    if *head_end < m.toks.end
                        && self.kind(head_end.wrapping_sub(1)) != Some(&Token::RParen) =>
                {
                    Some((RUN_DEVICE, w(m.toks.start..*head_end), 0))
                }
                _ => None,
            }
        };
        let mut i = 0;
        while i < members.len() {
            let Some((kind, _, _)) = members.get(i).and_then(cells) else {
                i += 1;
                continue;
            };
            let mut j = i + 1;
            while members
                .get(j)
                .is_some_and(|m| cells(m).map(|c| c.0) == Some(kind))
            {
                j += 1;
            }
            let run: Vec<(u8, usize, usize)> = members
                .get(i..j)
                .unwrap_or(&[])
                .iter()
                .filter_map(cells)
                .collect();
            let first = run.iter().map(|c| c.1).max().unwrap_or(0);
            let second = run.iter().map(|c| c.2).max().unwrap_or(0);
            for p in out.get_mut(i..j).unwrap_or(&mut []) {
                *p = Pads { first, second };
            }
            i = j;
        }
        out
    }

    fn push_lines(&mut self, lines: Vec<(usize, String)>, indent: usize) {
        for (n, (col, text)) in lines.into_iter().enumerate() {
            self.out.push(Line {
                indent: if n == 0 { indent } else { col },
                text,
                trailing: None,
            });
        }
    }

    /// One member without comments inside.
    fn member(&mut self, toks: Range<usize>, kind: &Kind, indent: usize, pads: Pads) {
        match kind {
            Kind::Line { list } => {
                let lines = self.fill(toks, indent, *list, None);
                self.push_lines(lines, indent);
            }
            Kind::Aligned { head_end, .. } => {
                let head = pad(self.join(toks.start..*head_end), pads.first);
                let lines = self.fill_after(head, *head_end..toks.end, indent, None, None);
                self.push_lines(lines, indent);
            }
            Kind::Transition {
                from_end,
                to_end,
                expr,
            } => {
                let from = pad(self.join(toks.start..*from_end), pads.first);
                let to = pad(self.join(*from_end + 1..*to_end), pads.second);
                let head = format!("{from} -> {to}");
                let lines = self.fill_after(head, *to_end..toks.end, indent, None, expr.clone());
                self.push_lines(lines, indent);
            }
            Kind::Device { head_end, list } => {
                let head = pad(self.join(toks.start..*head_end), pads.first);
                let lines = self.fill_after(head, *head_end..toks.end, indent, *list, None);
                self.push_lines(lines, indent);
            }
            Kind::Rule { cond_kw, then } => {
                let lines = self.fill(toks.start..*cond_kw, indent, None, None);
                self.push_lines(lines, indent);
                let inner = indent + INDENT;
                let cond = *cond_kw + 1..*then;
                let lines = self.fill(*cond_kw..*then, inner, None, Some(cond));
                self.push_lines(lines, inner);
                let lines = self.fill(*then..toks.end, inner, Some(*then + 1), None);
                self.push_lines(lines, inner);
            }
            Kind::Assert { expr } => {
                let lines = self.fill(toks, indent, None, Some(expr.clone()));
                self.push_lines(lines, indent);
            }
            Kind::Block { .. } => {}
        }
    }

    /// Tokens joined on one line with canonical spacing.
    fn join(&self, toks: Range<usize>) -> String {
        let mut s = String::new();
        for i in toks.clone() {
            if i > toks.start && self.space_before(i) {
                s.push(' ');
            }
            s.push_str(self.text(i));
        }
        s
    }

    /// `head` then the tokens, wrapped.
    fn fill_after(
        &self,
        head: String,
        toks: Range<usize>,
        indent: usize,
        list: Option<usize>,
        expr: Option<Range<usize>>,
    ) -> Vec<(usize, String)> {
        if toks.is_empty() {
            return vec![(indent, head.trim_end().to_string())];
        }
        let start = indent + width(&head) + 1;
        let mut lines = self.fill(toks, start, list, expr);
        if let Some(first) = lines.first_mut() {
            first.1 = format!("{head} {}", first.1);
        }
        lines
    }

    /// Where a line may break, with the bracket depth of the place: in a condition
    /// (`expr`), before the `or`s of each parenthesised level (its `and`s when it has no
    /// `or`); elsewhere after the commas of lists (not after a trailing comma).
    fn break_points(
        &self,
        toks: &Range<usize>,
        expr: Option<&Range<usize>>,
    ) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        if let Some(e) = expr {
            // Per open parenthesis (and the top level): its `or`s and its `and`s.
            let mut levels: Vec<(Vec<usize>, Vec<usize>)> = vec![(Vec::new(), Vec::new())];
            let mut flush = |level: (Vec<usize>, Vec<usize>), depth: usize| {
                let (ors, ands) = level;
                let chosen = if ors.is_empty() { ands } else { ors };
                out.extend(chosen.into_iter().map(|i| (i, depth)));
            };
            for i in e.clone() {
                match self.kind(i) {
                    Some(Token::LParen) => levels.push((Vec::new(), Vec::new())),
                    Some(Token::RParen) if levels.len() > 1 => {
                        if let Some(level) = levels.pop() {
                            flush(level, levels.len());
                        }
                    }
                    Some(Token::Or) if i > e.start => {
                        if let Some(l) = levels.last_mut() {
                            l.0.push(i);
                        }
                    }
                    Some(Token::And) if i > e.start => {
                        if let Some(l) = levels.last_mut() {
                            l.1.push(i);
                        }
                    }
                    _ => {}
                }
            }
            while let Some(level) = levels.pop() {
                flush(level, levels.len());
            }
        } else {
            let mut depth = 0usize;
            for i in toks.clone() {
                match self.kind(i) {
                    Some(Token::LParen | Token::LBracket | Token::LBrace) => depth += 1,
                    Some(Token::RParen | Token::RBracket | Token::RBrace) => {
                        depth = depth.saturating_sub(1)
                    }
                    Some(Token::Comma)
                        if i + 1 < toks.end
                            && !matches!(
                                self.kind(i + 1),
                                Some(Token::RParen | Token::RBracket | Token::RBrace)
                            ) =>
                    {
                        out.push((i + 1, depth))
                    }
                    _ => {}
                }
            }
            // Depths relative to the outermost list.
            let min = out.iter().map(|b| b.1).min().unwrap_or(0);
            for b in &mut out {
                b.1 -= min;
            }
        }
        out.sort_unstable();
        out
    }

    /// Lays out tokens from column `col`, filling lines up to [`WIDTH`]. At a break
    /// point, the line breaks if what follows up to the next break point of the same or
    /// an outer level does not fit; the new line starts under the condition (`expr`) or
    /// the list's first element (`list`) for the outermost level, under the first thing
    /// after the enclosing bracket for inner levels. So outer lists and `or`s break
    /// first, and an inner one only when its part still does not fit. Returns (column,
    /// text) per line; the first line's column is `col`.
    fn fill(
        &self,
        toks: Range<usize>,
        col: usize,
        list: Option<usize>,
        expr: Option<Range<usize>>,
    ) -> Vec<(usize, String)> {
        let breaks = self.break_points(&toks, expr.as_ref());
        let mut lines: Vec<(usize, String)> = vec![(col, String::new())];
        let mut cur = col;
        // Per open bracket, the column where its contents start.
        let mut opens: Vec<usize> = Vec::new();
        let mut list_col = col;
        let expr_col = expr.as_ref().map(|e| e.start);
        let mut cont_col = col;
        let mut next_break = 0;
        let mut outer_open = 0usize;
        if expr.is_none() {
            // The outermost list's brackets are those open at its first comma.
            let first = breaks.iter().find(|b| b.1 == 0).map(|b| b.0);
            if let Some(first) = first {
                let mut depth = 0usize;
                for i in toks.start..first {
                    match self.kind(i) {
                        Some(Token::LParen | Token::LBracket | Token::LBrace) => depth += 1,
                        Some(Token::RParen | Token::RBracket | Token::RBrace) => {
                            depth = depth.saturating_sub(1)
                        }
                        _ => {}
                    }
                }
                outer_open = depth;
            }
        }
        // The same, for the parentheses of the condition only.
        let mut paren_cols: Vec<usize> = Vec::new();
        for i in toks.clone() {
            let spaced = i > toks.start && self.space_before(i);
            if Some(i) == list {
                list_col = cur + usize::from(spaced);
            }
            if Some(i) == expr_col {
                cont_col = cur + usize::from(spaced);
            }
            if let Some(&(_, depth)) = breaks.get(next_break).filter(|b| b.0 == i) {
                next_break += 1;
                let chunk_end = breaks
                    .get(next_break..)
                    .unwrap_or(&[])
                    .iter()
                    .find(|b| b.1 <= depth)
                    .map_or(toks.end, |b| b.0);
                let chunk = self.join(i..chunk_end);
                let target = if expr.is_some() {
                    if depth == 0 {
                        cont_col
                    } else {
                        paren_cols.last().copied().unwrap_or(cont_col)
                    }
                } else if depth == 0 && outer_open == 0 {
                    list_col
                } else {
                    opens
                        .get(outer_open + depth - 1)
                        .copied()
                        .unwrap_or(list_col)
                };
                if cur + 1 + width(&chunk) > WIDTH && cur > target {
                    lines.push((target, String::new()));
                    cur = target;
                }
            }
            let Some(last) = lines.last_mut() else {
                break;
            };
            if !last.1.is_empty() && self.space_before(i) {
                last.1.push(' ');
                cur += 1;
            }
            let t = self.text(i);
            last.1.push_str(t);
            cur += width(t);
            match self.kind(i) {
                Some(Token::LParen | Token::LBracket | Token::LBrace) => {
                    // In an inline `{ a, b }` the first element follows a space.
                    let space = self.kind(i) == Some(&Token::LBrace)
                        && i + 1 < toks.end
                        && self.space_before(i + 1);
                    opens.push(cur + usize::from(space));
                    if self.kind(i) == Some(&Token::LParen)
                        && expr.as_ref().is_some_and(|e| e.contains(&i))
                    {
                        paren_cols.push(cur);
                    }
                }
                Some(Token::RParen | Token::RBracket | Token::RBrace) => {
                    opens.pop();
                    if self.kind(i) == Some(&Token::RParen)
                        && expr.as_ref().is_some_and(|e| e.contains(&i))
                    {
                        paren_cols.pop();
                    }
                }
                _ => {}
            }
        }
        lines
    }

    /// Whether canonical spacing puts a space between token `i - 1` and token `i`.
    fn space_before(&self, i: usize) -> bool {
        use Token::*;
        let (Some(prev), Some(next)) = (self.kind(i.wrapping_sub(1)), self.kind(i)) else {
            return false;
        };
        let port_brace = |j: usize| self.port_braces.binary_search(&j).is_ok();
        match (prev, next) {
            // `at 10.0.1.10.. mac ...`: a counted address's `..` ends the attribute.
            (DotDot, Int(_) | TimeOfDay(_) | Minus) => false,
            (DotDot, _) => true,
            (Dot | ColonColon | LParen | LBracket, _) => false,
            (_, Dot | ColonColon | DotDot | Comma | Colon | RParen | RBracket) => false,
            (LBrace, RBrace) => false,
            (LBrace, _) => {
                !(port_brace(i - 1) || self.kind(i.wrapping_sub(2)) == Some(&ColonColon))
            }
            (_, RBrace) => {
                let open = self.open_of(i);
                !open.is_some_and(|o| {
                    port_brace(o) || self.kind(o.wrapping_sub(1)) == Some(&ColonColon)
                })
            }
            (Minus, _) if self.unary_minus(i - 1) => false,
            (_, LParen) => !self.is_name_like(i - 1),
            (_, LBracket) => {
                !(self.is_name_like(i - 1) && self.kind(i.wrapping_sub(2)) == Some(&Device))
            }
            _ => true,
        }
    }

    /// The `{` matching the `}` at `close`.
    fn open_of(&self, close: usize) -> Option<usize> {
        let mut depth = 0i64;
        for j in (0..close).rev() {
            match self.kind(j) {
                Some(Token::RBrace) => depth += 1,
                Some(Token::LBrace) => {
                    if depth == 0 {
                        return Some(j);
                    }
                    depth -= 1;
                }
                _ => {}
            }
        }
        None
    }

    /// A name (or a keyword that the grammar accepts as one, such as `count` before `(`).
    /// `on` counts only after `.`: elsewhere before `(` it is the keyword of `rule r on (...)`.
    fn is_name_like(&self, i: usize) -> bool {
        match self.kind(i) {
            Some(Token::Ident(_) | Token::Count) => true,
            Some(Token::On) => self.kind(i.wrapping_sub(1)) == Some(&Token::Dot),
            Some(t) => crate::parser::is_soft_keyword(t.text()),
            None => false,
        }
    }

    /// Whether the `-` at `i` is a sign (nothing that ends an operand comes before it).
    fn unary_minus(&self, i: usize) -> bool {
        use Token::*;
        let Some(prev) = self.kind(i.wrapping_sub(1)) else {
            return true;
        };
        match prev {
            Ident(_) | Int(_) | Duration(_) | TimeOfDay(_) | Ipv4(_) | MacAddr(_) | Str(_)
            | RParen | RBracket | True | False => false,
            t if crate::parser::is_soft_keyword(t.text()) => {
                // A soft keyword is an operand when it is a name: after `.`.
                self.kind(i.wrapping_sub(2)) != Some(&Dot)
            }
            _ => true,
        }
    }

    /// A member with comments inside keeps its line breaks: each source line becomes one
    /// line with canonical spacing, continuation lines keep their indentation relative
    /// to the member's first line (at least one level deeper).
    fn verbatim_lines(&mut self, toks: Range<usize>, indent: usize) {
        let col_of = |pos: usize| {
            let line_start = self
                .src
                .get(..pos)
                .and_then(|s| s.rfind('\n'))
                .map_or(0, |i| i + 1);
            width(self.src.get(line_start..pos).unwrap_or(""))
        };
        let base = self.toks.get(toks.start).map_or(0, |t| col_of(t.start));
        let at = |pos: usize| indent + col_of(pos).saturating_sub(base).max(INDENT);
        let mut lines: Vec<Line> = Vec::new();
        // Whether the last element was token `i - 1` (for canonical spacing).
        let mut after_tok = false;
        let push =
            |lines: &mut Vec<Line>, new_line: bool, col: usize, text: &str, sep: &str| match lines
                .last_mut()
            {
                Some(l) if !new_line => {
                    l.text.push_str(sep);
                    l.text.push_str(text);
                }
                _ => lines.push(Line {
                    indent: col,
                    text: text.to_string(),
                    trailing: None,
                }),
            };
        for i in toks.clone() {
            let Some(tok) = self.toks.get(i) else {
                break;
            };
            let mut broken = false;
            if i > toks.start {
                if let Some(g) = self.gaps.get(i) {
                    let mut line_comment = false;
                    for c in &g.comments {
                        push(
                            &mut lines,
                            c.breaks_before > 0 || line_comment,
                            at(c.start),
                            c.text,
                            "  ",
                        );
                        line_comment = c.text.starts_with("//");
                        after_tok = false;
                    }
                    broken = g.breaks_after > 0 || line_comment;
                }
            }
            let col = if i == toks.start {
                indent
            } else {
                at(tok.start)
            };
            let sep = if !after_tok || self.space_before(i) {
                " "
            } else {
                ""
            };
            push(
                &mut lines,
                i == toks.start || broken,
                col,
                self.text(i),
                sep,
            );
            after_tok = true;
        }
        self.out.extend(lines);
    }
}

fn pad(s: String, to: usize) -> String {
    let w = width(&s);
    if w >= to {
        s
    } else {
        format!("{s}{}", " ".repeat(to - w))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn fmt(src: &str) -> String {
        match format(src) {
            Ok(s) => s,
            Err(e) => panic!("syntax errors: {e:?}\n{src}"),
        }
    }

    /// Every `.kalki` file of the repository's examples and standard library.
    fn repo_sources() -> Vec<(String, String)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut out = Vec::new();
        let mut dirs = vec![root.join("examples"), root.join("stdlib-policies")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "kalki") {
                    out.push((
                        p.display().to_string(),
                        std::fs::read_to_string(&p).unwrap(),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    /// Formats, checks the result is stable, and returns it.
    fn stable(src: &str) -> String {
        let once = fmt(src);
        assert_eq!(fmt(&once), once, "not idempotent");
        once
    }

    #[test]
    fn spacing_indentation_and_blank_lines() {
        let src = "import std::umboxes::{ sniffer,ids }\nimport std::devices::*\n\
                   umbox u{image \"x\"\n\n\n  args[\"a\" , \"b\"]\n  param p : int in -5 .. 5 = -1\n\
                   env {A=\"1\"}\n}\ndevice type T{sensed x:int in 0..10\nstates a<b\ninitial a\n\
                   a{chain[u(p=2)]}\nb { }\na->b when x>1 and not(x==3)\n}";
        let want = "import std::umboxes::{sniffer, ids}\nimport std::devices::*\n\n\
                    umbox u {\n    image \"x\"\n\n    args [\"a\", \"b\"]\n    \
                    param p: int in -5..5 = -1\n    env { A = \"1\" }\n}\n\n\
                    device type T {\n    sensed x: int in 0..10\n    states a < b\n    \
                    initial a\n    a { chain [u(p = 2)] }\n    b {}\n    \
                    a -> b when x > 1 and not (x == 3)\n}\n";
        assert_eq!(stable(src), want);
    }

    #[test]
    fn comments_stay_where_they_were() {
        let src = "// head\n\n/// doc\nsite s { // after brace\n  bridge \"b\" // trailing\n\n\n\
                   /* block */\n  unknown hosts drop\n  // last\n} // after item\n// end\n";
        let want =
            "// head\n\n/// doc\nsite s {  // after brace\n    bridge \"b\"  // trailing\n\n    \
                    /* block */\n    unknown hosts drop\n    // last\n}  // after item\n// end\n";
        assert_eq!(stable(src), want);
    }

    #[test]
    fn a_member_with_a_comment_inside_keeps_its_line_breaks() {
        let src = "site s {\n  rule r\n      when a.x // why\n      then a -> b\n}\n";
        let want = "site s {\n    rule r\n        when a.x  // why\n        then a -> b\n}\n";
        assert_eq!(stable(src), want);
    }

    #[test]
    fn runs_of_states_transitions_and_devices_are_aligned() {
        let src = "device type T {\n  states n < suspicious\n  initial n\n  n { chain [drop] }\n  \
                   suspicious { chain [drop] } // x\n  n -> suspicious on a\n\n  \
                   // a comment does not end the run, nor a blank line\n  suspicious -> n after 5m quiet\n}\n\
                   site s {\n  device a: T at 10.0.0.1 // one\n  device long_name: T at 10.0.0.2\n  \
                   device c: T(p = 1) at 10.0.0.3\n}\n";
        let want = "device type T {\n    states n < suspicious\n    initial n\n    \
                    n          { chain [drop] }\n    suspicious { chain [drop] }  // x\n    \
                    n          -> suspicious on a\n\n    \
                    // a comment does not end the run, nor a blank line\n    \
                    suspicious -> n          after 5m quiet\n}\n\nsite s {\n    \
                    device a: T         at 10.0.0.1  // one\n    device long_name: T at 10.0.0.2\n    \
                    device c: T(p = 1) at 10.0.0.3\n}\n";
        assert_eq!(stable(src), want);
    }

    #[test]
    fn telemetry_fields_and_publish_lines_are_aligned() {
        let src = "device type P {\n  telemetry \"t\" json {\n    power = A.B\n    online = true\n  }\n  \
                   command on publish \"c\" \"1\"\n  command off publish \"c\" \"0\"\n}\n";
        let want = "device type P {\n    telemetry \"t\" json {\n        power  = A.B\n        \
                    online = true\n    }\n    command on  publish \"c\" \"1\"\n    \
                    command off publish \"c\" \"0\"\n}\n";
        assert_eq!(stable(src), want);
    }

    #[test]
    fn long_lists_and_conditions_wrap_at_the_width() {
        let args: Vec<String> = (0..12).map(|i| format!("\"--option-{i}\"")).collect();
        let src = format!(
            "umbox u {{ args [{}] }}\nsite s {{ rule r when a.x > 1 or b.yyyyyyyyyyyy > 2 or \
             c.zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz > 3 or d.w > 4 and (e.v or f.uuuuuuuuuuuuuuuuuuuuuuuuuu) \
             then a.off, b.off }}\n",
            args.join(", ")
        );
        let out = stable(&src);
        assert!(out.lines().all(|l| l.chars().count() <= WIDTH), "{out}");
        let want = "umbox u {\n    args [\"--option-0\", \"--option-1\", \"--option-2\", \"--option-3\", \
                    \"--option-4\", \"--option-5\",\n          \"--option-6\", \"--option-7\", \
                    \"--option-8\", \"--option-9\", \"--option-10\", \"--option-11\"]\n}\n\n\
                    site s {\n    rule r\n        when a.x > 1 or b.yyyyyyyyyyyy > 2 or \
                    c.zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz > 3\n             \
                    or d.w > 4 and (e.v or f.uuuuuuuuuuuuuuuuuuuuuuuuuu)\n        then a.off, b.off\n}\n";
        assert_eq!(out, want);
    }

    #[test]
    fn counted_addresses_keep_a_space_after_their_dots() {
        let src =
            "site s {\n  device p[1..3]: T at 10.0.0.1.. mac 02:00:00:00:00:01.. port \"p\"\n}\n";
        let want =
            "site s {\n    device p[1..3]: T at 10.0.0.1.. mac 02:00:00:00:00:01.. port \"p\"\n}\n";
        assert_eq!(stable(src), want);
    }

    #[test]
    fn syntax_errors_are_refused() {
        let errs = format("site s {\n  device a: T at\n}\n").unwrap_err();
        assert!(!errs.is_empty());
    }

    #[test]
    fn literals_keep_their_spelling() {
        let src = "umbox u {\n  param t: duration = 60s\n  param h: int in 0x0..0x10 = 1\n}\n";
        let src = src.replace("0x0..0x10", "0..10");
        assert!(stable(&src).contains("param t: duration = 60s"));
    }

    #[test]
    fn repository_sources_are_idempotent_and_keep_their_tokens() {
        for (name, src) in repo_sources() {
            let once = fmt(&src);
            assert!(same_tokens_and_comments(&src, &once), "{name}");
            let twice = fmt(&once);
            assert_eq!(once, twice, "{name} is not stable");
        }
    }
}
