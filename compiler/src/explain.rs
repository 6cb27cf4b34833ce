//! The registry of every diagnostic code, K (compiler) and S (runtime): the code, its
//! one-line summary and its explanation, for `kalkic explain`, the SARIF rules and the
//! docs checks. One meaning is written once: a summary stays in the table beside the
//! constant that declares its code ([`crate::codes`], [`crate::verify::codes`],
//! [`crate::codegen::bundle`], `kalki_model::codes`, which also holds the shim's S2xx–S4xx);
//! an explanation is a Markdown file under `compiler/explain/`, one per code, compiled in.
//! `tests/explain.rs` checks that the registry covers exactly the declared codes and
//! compiles every example of it. Pure: returns data and strings, prints nothing.

use crate::codegen::bundle::BUILD_CODES;
use crate::codes::{NAME_AND_TYPE_CODES, SYNTAX_CODES};
use crate::verify::codes::ALL as VERIFIER_CODES;
use kalki_model::codes as runtime;
use std::sync::OnceLock;

/// Where a code comes from: which stage or program reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// K0xx, `kalkic check` (the parser).
    Syntax,
    /// K1xx, `kalkic check` (names and types).
    NamesAndTypes,
    /// K2xx, `kalkic verify` (and `build`, for the checks on the emitted rules).
    Verifier,
    /// K214, `kalkic build`.
    Build,
    /// S0xx, `kalki-shim` loading a bundle.
    Bundle,
    /// S1xx, the engine (or an MQTT binding) refusing an input.
    Input,
    /// S2xx, `kalki-shim simulate` reading a trace, `kalkic test` reading a test file.
    Trace,
    /// S3xx, the shim's event API.
    Api,
    /// S4xx, the shim's journal.
    Journal,
}

impl Family {
    /// A heading for `kalkic explain --list`.
    pub fn title(self) -> &'static str {
        match self {
            Family::Syntax => "K0xx syntax (kalkic check)",
            Family::NamesAndTypes => "K1xx names and types (kalkic check)",
            Family::Verifier => {
                "K2xx verification (kalkic verify; K209 already at kalkic check; K208, K212 at kalkic build)"
            }
            Family::Build => "K214 bundle layout (kalkic build)",
            Family::Bundle => "S0xx bundle refused (kalki-shim)",
            Family::Input => "S1xx input refused (kalki-shim engine and MQTT bindings)",
            Family::Trace => "S2xx trace and test files (kalki-shim simulate, kalkic test)",
            Family::Api => "S3xx event API (kalki-shim run)",
            Family::Journal => "S4xx journal (kalki-shim run)",
        }
    }
}

/// One code of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub family: Family,
    /// The one-line summary, as the declaring table has it.
    pub summary: &'static str,
    /// Markdown: what the code means and when it fires, an example, how to fix it.
    /// Empty for a code without an explanation (which `tests/explain.rs` refuses).
    pub text: &'static str,
}

impl Code {
    /// The description: the explanation's paragraphs before its first heading.
    pub fn description(&self) -> String {
        let before = self.text.split("\n## ").next().unwrap_or_default().trim();
        // One paragraph per line: SARIF viewers show the text as it is.
        before
            .split("\n\n")
            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

/// `(code, explanation)` for every code; the files are `compiler/explain/CODE.md`.
macro_rules! texts {
    ($($code:literal)*) => {
        &[$(($code, include_str!(concat!("../explain/", $code, ".md")))),*]
    };
}

static TEXTS: &[(&str, &str)] = texts![
    "K001" "K002" "K003" "K004"
    "K101" "K102" "K103" "K104" "K105" "K106" "K107" "K108" "K109" "K110" "K111" "K112"
    "K113" "K114" "K115" "K116" "K117"
    "K201" "K202" "K203" "K204" "K205" "K206" "K207" "K208" "K209" "K210" "K211" "K212"
    "K213" "K214" "K215" "K216" "K217"
    "S001" "S002" "S003" "S004" "S005" "S006" "S007" "S008" "S009"
    "S101" "S102" "S103" "S104" "S105" "S106" "S107" "S108" "S109" "S110" "S111" "S112"
    "S120" "S121" "S122" "S123"
    "S201" "S202" "S203" "S204" "S205" "S210" "S211" "S212"
    "S301" "S302" "S303" "S304" "S305" "S306" "S307" "S308"
    "S401" "S402" "S403" "S404"
];

/// The codes of every table with their explanations, by family, then in code order.
pub fn all() -> &'static [Code] {
    static ALL: OnceLock<Vec<Code>> = OnceLock::new();
    ALL.get_or_init(|| {
        let kalkic = [
            (Family::Syntax, SYNTAX_CODES),
            (Family::NamesAndTypes, NAME_AND_TYPE_CODES),
            (Family::Verifier, VERIFIER_CODES),
            (Family::Build, BUILD_CODES),
        ];
        // An S code's family is its hundreds digit, whichever table declares it.
        let runtime = runtime::ALL
            .iter()
            .chain(runtime::SHIM)
            .map(|&(code, summary)| {
                let family = match code.as_bytes().get(1) {
                    Some(b'0') => Family::Bundle,
                    Some(b'1') => Family::Input,
                    Some(b'2') => Family::Trace,
                    Some(b'3') => Family::Api,
                    _ => Family::Journal,
                };
                (family, code, summary)
            });
        let mut out: Vec<Code> = kalkic
            .iter()
            .flat_map(|&(family, table)| table.iter().map(move |&(c, s)| (family, c, s)))
            .chain(runtime)
            .map(|(family, code, summary)| Code {
                code,
                family,
                summary,
                text: TEXTS
                    .iter()
                    .find(|(c, _)| *c == code)
                    .map_or("", |(_, t)| *t),
            })
            .collect();
        out.sort_by_key(|c| (c.family, c.code));
        out
    })
}

/// The explanations that exist, by code: what [`all`] draws its texts from.
pub fn explanations() -> &'static [(&'static str, &'static str)] {
    TEXTS
}

/// The code named `query`, in any case (`k105` is `K105`).
pub fn lookup(query: &str) -> Option<&'static Code> {
    let query = query.trim();
    all().iter().find(|c| c.code.eq_ignore_ascii_case(query))
}

/// Up to three codes nearest to an unknown `query`: fewest edits first, then the nearest
/// number. Nothing when no code is within two edits.
pub fn nearest(query: &str) -> Vec<&'static str> {
    let query = query.trim().to_ascii_uppercase();
    let number = |s: &str| s.get(1..).and_then(|n| n.parse::<i64>().ok());
    let mut scored: Vec<(usize, u64, &'static str)> = all()
        .iter()
        .map(|c| {
            let far = match (number(&query), number(c.code)) {
                (Some(a), Some(b)) => a.abs_diff(b),
                _ => u64::MAX,
            };
            (
                kalki_model::text::edit_distance(&query, c.code),
                far,
                c.code,
            )
        })
        .filter(|&(d, _, _)| d <= 2)
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, _, c)| c).collect()
}

/// The explanation for readers: the Markdown with each code block's info string cut to
/// its language (the rest, `fixed` or the example's policy, is for the tests).
pub fn markdown(code: &Code) -> String {
    let mut out = String::new();
    for line in code.text.lines() {
        match line.strip_prefix("```") {
            Some(info) if !info.is_empty() => {
                out.push_str("```");
                out.push_str(info.split_whitespace().next().unwrap_or_default());
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The explanation as terminal text: a heading line with the code and its summary, a
/// line saying who reports it, then the Markdown for readers.
pub fn render(code: &Code) -> String {
    format!(
        "{}: {}\n[{}]\n\n{}",
        code.code,
        code.summary,
        code.family.title(),
        markdown(code)
    )
}

/// Every code with its summary, grouped by family: `kalkic explain --list`.
pub fn list() -> String {
    let mut out = String::new();
    let mut family = None;
    for c in all() {
        if family != Some(c.family) {
            if family.is_some() {
                out.push('\n');
            }
            out.push_str(c.family.title());
            out.push('\n');
            family = Some(c.family);
        }
        out.push_str(&format!("  {}  {}\n", c.code, c.summary));
    }
    out
}

/// A SARIF `reportingDescriptor` (rule) of a code: summary, description and the whole
/// explanation as help, in text and Markdown. An unknown code gets its id only.
pub fn sarif_rule(code: &str) -> serde_json::Value {
    let Some(c) = lookup(code) else {
        return serde_json::json!({ "id": code, "shortDescription": { "text": code } });
    };
    let help = render(c);
    serde_json::json!({
        "id": c.code,
        "shortDescription": { "text": c.summary },
        "fullDescription": { "text": c.description() },
        "help": {
            "text": help,
            "markdown": format!("**{}: {}**\n\n{}", c.code, c.summary, markdown(c)),
        },
    })
}

/// A fenced block of an explanation: its info string (`kalki fixed`, `jsonl trace DIR`)
/// and its text. The tests run the examples they hold (`compiler/tests/explain.rs`,
/// `runtime-shim/tests/explain.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub info: Vec<String>,
    pub text: String,
}

/// The fenced blocks of an explanation, in order; a block left open runs to the end.
pub fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for line in markdown.lines() {
        match (line.strip_prefix("```"), open.take()) {
            (Some(_), Some(b)) => out.push(b),
            (Some(info), None) => {
                open = Some(Block {
                    info: info.split_whitespace().map(String::from).collect(),
                    text: String::new(),
                })
            }
            (None, Some(mut b)) => {
                b.text.push_str(line);
                b.text.push('\n');
                open = Some(b);
            }
            (None, None) => {}
        }
    }
    out.extend(open);
    out
}
