//! Turns diagnostics into text: human (miette's graphical report), JSON, and SARIF 2.1.0
//! for code-scanning tools. Pure: returns strings and values, prints nothing.

use crate::diag::{Diagnostic, Label, Severity};
use crate::ir::Loc;
use crate::source::Sources;
use miette::{
    GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteError, MietteSpanContents,
    SourceCode, SourceSpan, SpanContents,
};
use serde_json::{json, Value};
use std::fmt;
use std::sync::Arc;

/// A source for miette with a line index. miette's own `SourceCode` for text scans from
/// the start of the file for every label, which makes a report of many findings in a
/// large site quadratic; this one finds the context lines by binary search.
#[derive(Debug, Clone)]
struct IndexedSource {
    name: String,
    text: Arc<str>,
    /// Byte offset of the start of every line.
    line_starts: Arc<[usize]>,
}

impl IndexedSource {
    fn new(name: String, text: &str, line_starts: Arc<[usize]>) -> Self {
        IndexedSource {
            name,
            text: text.into(),
            line_starts,
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.line_starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1)
    }

    /// End of line `line`, its line break included (as miette's own sources do: that is
    /// what makes a blank context line visible).
    fn line_end(&self, line: usize) -> usize {
        self.line_starts
            .get(line + 1)
            .copied()
            .unwrap_or(self.text.len())
    }
}

impl SourceCode for IndexedSource {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let (start, len) = (span.offset(), span.len());
        if start + len > self.text.len() {
            return Err(MietteError::OutOfBounds);
        }
        let first = self.line_of(start);
        let last = self.line_of((start + len).saturating_sub(1).max(start));
        let top = first.saturating_sub(before);
        let bottom = (last + after).min(self.line_starts.len() - 1);
        let (from, column) = if before == 0 {
            (start, start - self.line_starts[first])
        } else {
            (self.line_starts[top], 0)
        };
        let to = self.line_end(bottom).max(start + len).min(self.text.len());
        let data = self
            .text
            .as_bytes()
            .get(from..to)
            .ok_or(MietteError::OutOfBounds)?;
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            data,
            (from, to - from).into(),
            if before == 0 { first } else { top },
            column,
            bottom + 1,
        )))
    }
}

/// miette's view of one diagnostic: the labels of one file, with the labels of other
/// files attached as related reports (miette shows one source per report).
#[derive(Debug)]
struct Report {
    code: &'static str,
    /// `None`: an advice block (labels of a finding in another file).
    severity: Option<Severity>,
    message: String,
    help: Option<String>,
    source: Option<IndexedSource>,
    labels: Vec<LabeledSpan>,
    related: Vec<Report>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Report {}

impl miette::Diagnostic for Report {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        (!self.code.is_empty()).then(|| Box::new(self.code) as Box<dyn fmt::Display>)
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Some(Severity::Error) => miette::Severity::Error,
            Some(Severity::Warning) => miette::Severity::Warning,
            None => miette::Severity::Advice,
        })
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        (!self.labels.is_empty()).then(|| Box::new(self.labels.iter().cloned()) as Box<_>)
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        (!self.related.is_empty())
            .then(|| Box::new(self.related.iter().map(|r| r as &dyn miette::Diagnostic)) as Box<_>)
    }
}

/// Indexed sources, built once per file for a whole rendering.
type Indexed = std::collections::HashMap<crate::source::SourceId, IndexedSource>;

fn report(sources: &Sources, d: &Diagnostic, indexed: &mut Indexed) -> Report {
    // Group labels by file, the primary label's file first.
    let mut files: Vec<crate::source::SourceId> = Vec::new();
    if let Some(main) = d.main_loc() {
        files.push(main.source);
    }
    for l in &d.labels {
        if !files.contains(&l.loc.source) {
            files.push(l.loc.source);
        }
    }
    let spans_of = |file| -> Vec<LabeledSpan> {
        d.labels
            .iter()
            .filter(|l: &&Label| l.loc.source == file)
            .map(|l| {
                let text = (!l.message.is_empty()).then(|| l.message.clone());
                if l.primary {
                    LabeledSpan::new_primary_with_span(text, l.loc.span)
                } else {
                    LabeledSpan::new_with_span(text, l.loc.span)
                }
            })
            .collect()
    };
    let mut named = |file| {
        indexed
            .entry(file)
            .or_insert_with(|| {
                let f = sources.get(file);
                IndexedSource::new(f.name.clone(), &f.text, sources.line_starts(file).clone())
            })
            .clone()
    };
    let mut files = files.into_iter();
    let Some(first) = files.next() else {
        return Report {
            code: d.code,
            severity: Some(d.severity),
            message: d.message.clone(),
            help: d.help.clone(),
            source: None,
            labels: vec![],
            related: vec![],
        };
    };
    let related = files
        .map(|f| Report {
            code: "",
            severity: None,
            message: format!("see also `{}`", sources.get(f).name),
            help: None,
            source: Some(named(f)),
            labels: spans_of(f),
            related: vec![],
        })
        .collect();
    Report {
        code: d.code,
        severity: Some(d.severity),
        message: d.message.clone(),
        help: d.help.clone(),
        source: Some(named(first)),
        labels: spans_of(first),
        related,
    }
}

/// The human format: one miette report per diagnostic, then a summary line.
pub fn human(sources: &Sources, diags: &[Diagnostic], color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    let mut indexed = Indexed::new();
    for d in diags {
        let r = report(sources, d, &mut indexed);
        if handler.render_report(&mut out, &r).is_err() {
            out.push_str(&format!("{}: {}\n", d.code, d.message));
        }
        if let Some(w) = &d.witness {
            out.push_str(&format!("  witness: {w}\n"));
        }
        out.push('\n');
    }
    out.push_str(&summary(diags));
    out
}

pub fn summary(diags: &[Diagnostic]) -> String {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    let plural = |n: usize, w: &str| {
        if n == 1 {
            format!("1 {w}")
        } else {
            format!("{n} {w}s")
        }
    };
    format!(
        "{}, {}\n",
        plural(errors, "error"),
        plural(warnings, "warning")
    )
}

fn position(sources: &Sources, loc: Loc) -> Value {
    let f = sources.get(loc.source);
    let (line, column) = sources.line_col(loc.source, loc.span.start);
    let (end_line, end_column) = sources.line_col(loc.source, loc.span.end);
    json!({
        "file": f.name,
        "line": line,
        "column": column,
        "end_line": end_line,
        "end_column": end_column,
        "offset": loc.span.start,
        "length": loc.span.len(),
    })
}

/// The JSON format: `{"diagnostics": [...]}` with 1-based lines and columns.
pub fn json(sources: &Sources, diags: &[Diagnostic]) -> Value {
    let items: Vec<Value> = diags
        .iter()
        .map(|d| {
            let mut v = json!({
                "code": d.code,
                "severity": d.severity,
                "message": d.message,
                "help": d.help,
                "labels": d.labels.iter().map(|l| {
                    let mut p = position(sources, l.loc);
                    p["message"] = json!(l.message);
                    p["primary"] = json!(l.primary);
                    p
                }).collect::<Vec<_>>(),
                "witness": d.witness,
            });
            let main = d.main_loc().map(|l| position(sources, l));
            for key in ["file", "line", "column", "end_line", "end_column"] {
                v[key] = main.as_ref().map_or(Value::Null, |m| m[key].clone());
            }
            v
        })
        .collect();
    json!({ "diagnostics": items })
}

fn sarif_region(sources: &Sources, loc: Loc) -> Value {
    let p = position(sources, loc);
    json!({
        "artifactLocation": { "uri": p["file"] },
        "region": {
            "startLine": p["line"],
            "startColumn": p["column"],
            "endLine": p["end_line"],
            "endColumn": p["end_column"],
        }
    })
}

/// SARIF 2.1.0: one run, one result per diagnostic, rule ids are the codes. Each rule
/// used carries its summary, description and explanation from [`crate::explain`].
pub fn sarif(sources: &Sources, diags: &[Diagnostic]) -> Value {
    let mut used: Vec<&str> = diags.iter().map(|d| d.code).collect();
    used.sort_unstable();
    used.dedup();
    let rule_objs: Vec<Value> = used
        .iter()
        .map(|code| crate::explain::sarif_rule(code))
        .collect();
    let results: Vec<Value> = diags
        .iter()
        .map(|d| {
            let level = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let mut text = d.message.clone();
            if let Some(h) = &d.help {
                text.push_str(&format!(" ({h})"));
            }
            let primary: Vec<Value> = d
                .main_loc()
                .map(|l| json!({ "physicalLocation": sarif_region(sources, l) }))
                .into_iter()
                .collect();
            let related: Vec<Value> = d
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    json!({
                        "id": i,
                        "physicalLocation": sarif_region(sources, l.loc),
                        "message": { "text": if l.message.is_empty() { "here".to_string() } else { l.message.clone() } },
                    })
                })
                .collect();
            let mut r = json!({
                "ruleId": d.code,
                "level": level,
                "message": { "text": text },
                "locations": primary,
                "relatedLocations": related,
            });
            if let Some(w) = &d.witness {
                r["properties"] = json!({ "witness": w });
            }
            r
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "kalkic",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rule_objs,
            }},
            "results": results,
        }]
    })
}
