//! `kalkic lsp`: a language server over standard input and output (tower-lsp-server).
//!
//! On every change of an open document it checks (parse, resolve, type-check) that
//! document and the open documents whose last check read it, with the editor's unsaved
//! text, and publishes diagnostics for every file involved; on save it also verifies (Z3) the saved document on a blocking thread under a
//! time budget, a newer save or edit superseding the run. Hover, go to definition and
//! completion read the last check's syntax trees ([`index`]). It lives on the binary's
//! side of the pure core: it reads files, runs threads and a clock, and talks to the
//! editor, only ever through the LSP transport (standard output is the transport, so
//! nothing here prints).
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod complete;
mod format;
mod hover;
mod index;
mod stdfiles;
mod text;

use complete::Kind;
use index::Analysis;
use kalki_compiler::diag::{self, Severity};
use kalki_compiler::source::{LoadError, Origin, SourceLoader, Sources};
use kalki_compiler::verify::solver::{Outcome, Query, Solver};
use kalki_compiler::verify::{self, codes as vcodes};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tower_lsp_server::jsonrpc::Result;
use tower_lsp_server::ls_types::{
    self as lsp, CompletionItem, CompletionItemKind, CompletionOptions, CompletionParams,
    CompletionResponse, DiagnosticRelatedInformation, DiagnosticSeverity,
    DidChangeTextDocumentParams, DidCloseTextDocumentParams, DidOpenTextDocumentParams,
    DidSaveTextDocumentParams, DocumentFormattingParams, GotoDefinitionParams,
    GotoDefinitionResponse, Hover, HoverContents, HoverParams, HoverProviderCapability,
    InitializeParams, InitializeResult, InitializedParams, Location, MarkupContent, MarkupKind,
    MessageType, NumberOrString, OneOf, PositionEncodingKind, SaveOptions, ServerCapabilities,
    ServerInfo, TextDocumentSyncCapability, TextDocumentSyncKind, TextDocumentSyncOptions,
    TextEdit, Uri,
};
use tower_lsp_server::{Client, LanguageServer, LspService, Server};

/// `kalkic lsp`'s options: the verifier's budget in the editor, smaller than `kalkic
/// verify`'s, so a save answers in seconds.
#[derive(clap::Args)]
pub struct Args {
    /// Time limit of each solver query when verifying on save, in milliseconds.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    solver_timeout_ms: u32,
    /// Time limit of a whole verification on save, in milliseconds; what is undecided by
    /// then is not reported.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1..))]
    verify_budget_ms: u64,
    /// Largest number of combined device states an assertion search may visit on save.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_states: u64,
    /// Accepted for clients that pass it: standard input and output are the only
    /// transport.
    #[arg(long)]
    stdio: bool,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    solver_timeout_ms: u32,
    verify_budget_ms: u64,
    max_states: usize,
}

/// `kalkic lsp`: serves one editor over standard input and output until it exits.
pub fn run(args: &Args) -> crate::Exit {
    let cfg = Config {
        solver_timeout_ms: args.solver_timeout_ms,
        verify_budget_ms: args.verify_budget_ms,
        max_states: usize::try_from(args.max_states).unwrap_or(usize::MAX),
    };
    match serve(cfg) {
        Ok(()) => crate::Exit::Ok,
        Err(why) => {
            // The server never started: standard error is not the transport.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {why}");
            }
            crate::Exit::Usage
        }
    }
}

fn serve(cfg: Config) -> std::result::Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        let (service, socket) = LspService::new(|client| Backend::new(client, cfg));
        Server::new(tokio::io::stdin(), tokio::io::stdout(), socket)
            .serve(service)
            .await;
    });
    // A verification still running on a blocking thread is abandoned, not awaited.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// An open document, by its canonical path.
struct Doc {
    uri: Uri,
    text: String,
    version: i32,
}

#[derive(Default)]
struct State {
    docs: HashMap<PathBuf, Doc>,
    /// The last check of each open document.
    analyses: BTreeMap<PathBuf, Entry>,
    /// The verifier's findings of the last save, until the next edit.
    verified: BTreeMap<Uri, Vec<lsp::Diagnostic>>,
    /// What was last published for each document, and for which version.
    published: HashMap<Uri, (Vec<lsp::Diagnostic>, Option<i32>)>,
}

/// One check of an open document.
struct Entry {
    /// Which refresh made it: a later one replaces it, an earlier one never does.
    seq: u64,
    /// The document's own address.
    uri: Uri,
    /// Its diagnostics, by file (every file it read, clean ones empty).
    diags: BTreeMap<Uri, Vec<lsp::Diagnostic>>,
    analysis: Arc<Analysis>,
    /// The last check of the document without syntax errors (this one if it has none):
    /// while the user is in the middle of typing `cam.`, the site does not parse, and
    /// completion reads the names from here.
    parsed: Arc<Analysis>,
}

struct Backend {
    client: Client,
    cfg: Config,
    std_dir: PathBuf,
    state: Arc<Mutex<State>>,
    /// Bumped by every edit and save: a verification whose number is no longer current
    /// stops asking the solver and its findings are dropped.
    generation: Arc<AtomicU64>,
    /// Numbers the refreshes.
    checks: AtomicU64,
    publishing: Arc<tokio::sync::Mutex<()>>,
}

/// Open documents from memory, everything else from disk.
struct Overlay {
    docs: HashMap<PathBuf, String>,
}

impl SourceLoader for Overlay {
    fn read_file(&self, path: &Path) -> std::result::Result<String, LoadError> {
        match self.docs.get(&self.canonical(path)) {
            Some(text) => Ok(text.clone()),
            None => crate::FsLoader.read_file(path),
        }
    }
    fn canonical(&self, path: &Path) -> PathBuf {
        crate::FsLoader.canonical(path)
    }
}

/// Where the compiler's sources are for the editor.
struct Places<'a> {
    std_dir: &'a Path,
    open: HashMap<PathBuf, Uri>,
}

impl Places<'_> {
    fn uri(&self, origin: &Origin) -> Option<Uri> {
        match origin {
            Origin::File(p) => self.open.get(p).cloned().or_else(|| Uri::from_file_path(p)),
            Origin::Std(name) => Uri::from_file_path(stdfiles::path(self.std_dir, name)),
        }
    }

    fn location(&self, sources: &Sources, loc: kalki_compiler::ir::Loc) -> Option<Location> {
        let f = sources.get(loc.source);
        Some(Location::new(
            self.uri(&f.origin)?,
            text::range(&f.text, loc.span.start, loc.span.end),
        ))
    }

    /// Diagnostics by document: every source of the check has an entry (empty when clean),
    /// so a fixed file is cleared.
    fn diagnostics(
        &self,
        sources: &Sources,
        diags: &[diag::Diagnostic],
        root: Option<&Uri>,
    ) -> BTreeMap<Uri, Vec<lsp::Diagnostic>> {
        let mut out: BTreeMap<Uri, Vec<lsp::Diagnostic>> = BTreeMap::new();
        for (_, f) in sources.iter() {
            if let Some(uri) = self.uri(&f.origin) {
                out.entry(uri).or_default();
            }
        }
        for d in diags {
            let main_loc = d.main_loc();
            let main = main_loc.and_then(|l| self.location(sources, l));
            let (uri, range) = match (&main, root) {
                (Some(loc), _) => (loc.uri.clone(), loc.range),
                (None, Some(root)) => (root.clone(), lsp::Range::default()),
                (None, None) => continue,
            };
            let mut message = d.message.clone();
            if let Some(label) = d.labels.iter().find(|l| Some(l.loc) == main_loc) {
                if !label.message.is_empty() && label.message != "here" {
                    message.push_str(&format!(": {}", label.message));
                }
            }
            if let Some(help) = &d.help {
                message.push_str(&format!("\nhelp: {help}"));
            }
            let related: Vec<DiagnosticRelatedInformation> = d
                .labels
                .iter()
                .filter(|l| Some(l.loc) != main_loc || main.is_none())
                .filter_map(|l| {
                    Some(DiagnosticRelatedInformation {
                        location: self.location(sources, l.loc)?,
                        message: l.message.clone(),
                    })
                })
                .collect();
            out.entry(uri).or_default().push(lsp::Diagnostic {
                range,
                severity: Some(match d.severity {
                    Severity::Error => DiagnosticSeverity::ERROR,
                    Severity::Warning => DiagnosticSeverity::WARNING,
                }),
                code: Some(NumberOrString::String(d.code.to_string())),
                source: Some("kalkic".into()),
                message,
                related_information: (!related.is_empty()).then_some(related),
                ..lsp::Diagnostic::default()
            });
        }
        out
    }
}

/// A solver that stops deciding once the budget is spent or a newer edit or save made
/// the run pointless: queries then come back undecided, which the verifier reports as
/// K213 and which [`Backend::verify`] leaves out.
struct Budgeted<'a> {
    inner: &'a dyn Solver,
    deadline: Instant,
    generation: &'a AtomicU64,
    mine: u64,
    cut: Cell<bool>,
}

impl Solver for Budgeted<'_> {
    fn solve(&self, q: &Query) -> Outcome {
        if self.generation.load(Ordering::SeqCst) != self.mine {
            self.cut.set(true);
            return Outcome::Unknown("superseded by a newer edit".into());
        }
        if Instant::now() >= self.deadline {
            self.cut.set(true);
            return Outcome::Unknown("the editor's verification budget ran out".into());
        }
        self.inner.solve(q)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn path_of(uri: &Uri) -> Option<PathBuf> {
    uri.to_file_path().map(|p| crate::FsLoader.canonical(&p))
}

impl Backend {
    fn new(client: Client, cfg: Config) -> Self {
        Backend {
            client,
            cfg,
            std_dir: stdfiles::dir(),
            state: Arc::default(),
            generation: Arc::default(),
            checks: AtomicU64::new(0),
            publishing: Arc::default(),
        }
    }

    fn places(&self, state: &State) -> Places<'_> {
        Places {
            std_dir: &self.std_dir,
            open: state
                .docs
                .iter()
                .map(|(p, d)| (p.clone(), d.uri.clone()))
                .collect(),
        }
    }

    fn overlay(state: &State) -> Overlay {
        Overlay {
            docs: state
                .docs
                .iter()
                .map(|(p, d)| (p.clone(), d.text.clone()))
                .collect(),
        }
    }

    /// Checks the open documents an edit may concern (the edited one and those whose
    /// last check read it; all with `None`) on a blocking thread, then publishes
    /// diagnostics for every file involved, clearing those no longer involved.
    async fn refresh(&self, changed: Option<&Path>) {
        let seq = self.checks.fetch_add(1, Ordering::SeqCst) + 1;
        let (overlay, open, roots) = {
            let st = lock(&self.state);
            let roots: Vec<(PathBuf, Uri)> = st
                .docs
                .iter()
                .filter(|(p, _)| match changed {
                    None => true,
                    Some(c) => {
                        p.as_path() == c
                            || st
                                .analyses
                                .get(*p)
                                .is_none_or(|e| e.analysis.module_of(c).is_some())
                    }
                })
                .map(|(p, d)| (p.clone(), d.uri.clone()))
                .collect();
            (Self::overlay(&st), self.places(&st).open, roots)
        };
        let std_dir = self.std_dir.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let places = Places {
                std_dir: &std_dir,
                open,
            };
            roots
                .into_iter()
                .map(|(root, uri)| {
                    let (checked, program) =
                        kalki_compiler::check_program(std::slice::from_ref(&root), &overlay);
                    let diags =
                        places.diagnostics(&checked.sources, &checked.diagnostics, Some(&uri));
                    let analysis = Arc::new(Analysis { checked, program });
                    let entry = Entry {
                        seq,
                        uri,
                        diags,
                        parsed: Arc::clone(&analysis),
                        analysis,
                    };
                    (root, entry)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(checked) = checked else {
            return;
        };
        {
            let mut st = lock(&self.state);
            for (root, mut entry) in checked {
                // A check that started later may have finished first; a closed document
                // has no diagnostics of its own any more.
                let newer = st.analyses.get(&root).is_none_or(|e| e.seq < seq);
                if entry.analysis.program.syntax_errors {
                    if let Some(old) = st.analyses.get(&root) {
                        entry.parsed = Arc::clone(&old.parsed);
                    }
                }
                if newer && st.docs.contains_key(&root) {
                    st.analyses.insert(root, entry);
                }
            }
        }
        Self::publish(&self.state, &self.publishing, &self.client).await;
    }

    /// Publishes the checks' diagnostics with the verifier's findings, and empty lists
    /// for documents that no longer have any.
    async fn publish(state: &Mutex<State>, order: &tokio::sync::Mutex<()>, client: &Client) {
        // One publication at a time, so an older list never arrives after a newer one.
        let _turn = order.lock().await;
        let publish = {
            let mut st = lock(state);
            let mut all: BTreeMap<Uri, Vec<lsp::Diagnostic>> = BTreeMap::new();
            for e in st.analyses.values() {
                for (uri, ds) in &e.diags {
                    // A file several checks read: its own check's view, else the first.
                    if &e.uri == uri || !all.contains_key(uri) {
                        all.insert(uri.clone(), ds.clone());
                    }
                }
            }
            for (uri, ds) in &st.verified {
                all.entry(uri.clone())
                    .or_default()
                    .extend(ds.iter().cloned());
            }
            let versions: HashMap<Uri, i32> = st
                .docs
                .values()
                .map(|d| (d.uri.clone(), d.version))
                .collect();
            // Only what changed: a keystroke must not resend every imported file's list.
            let mut publish: Vec<(Uri, Vec<lsp::Diagnostic>, Option<i32>)> = st
                .published
                .iter()
                .filter(|(u, (ds, _))| !all.contains_key(*u) && !ds.is_empty())
                .map(|(u, _)| (u.clone(), Vec::new(), None))
                .collect();
            let mut now = HashMap::new();
            for (uri, ds) in all {
                let version = versions.get(&uri).copied();
                let same = match st.published.get(&uri) {
                    Some((old, v)) => *old == ds && *v == version,
                    // A clean file that is not open and never had any: nothing to say.
                    None => ds.is_empty() && version.is_none(),
                };
                if !same {
                    publish.push((uri.clone(), ds.clone(), version));
                }
                now.insert(uri, (ds, version));
            }
            st.published = now;
            publish
        };
        for (uri, diags, version) in publish {
            client.publish_diagnostics(uri, diags, version).await;
        }
    }

    /// Verifies a saved document on a blocking thread within the budget, then publishes
    /// its K2xx findings with the check's diagnostics, unless a newer edit or save came.
    fn verify(&self, root: PathBuf) {
        let mine = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let (overlay, places_open) = {
            let state = lock(&self.state);
            (Self::overlay(&state), self.places(&state).open)
        };
        let cfg = self.cfg;
        let std_dir = self.std_dir.clone();
        let generation = Arc::clone(&self.generation);
        let state = Arc::clone(&self.state);
        let client = self.client.clone();
        let budget = Duration::from_millis(cfg.verify_budget_ms);
        let started = Instant::now();
        let gen2 = Arc::clone(&generation);
        let publishing = Arc::clone(&self.publishing);
        let work = tokio::task::spawn_blocking(move || {
            let z3 = verify::z3::Z3Solver::new(cfg.solver_timeout_ms);
            let solver = Budgeted {
                inner: &z3,
                deadline: started + budget,
                generation: &gen2,
                mine,
                cut: Cell::new(false),
            };
            let opts = verify::Options {
                timeout_ms: cfg.solver_timeout_ms,
                max_states: cfg.max_states,
                ..verify::Options::default()
            };
            let (checked, _) = kalki_compiler::verify(&[root], &overlay, &solver, &opts);
            let places = Places {
                std_dir: &std_dir,
                open: places_open,
            };
            let cut = solver.cut.get();
            let findings: Vec<diag::Diagnostic> = checked
                .diagnostics
                .into_iter()
                .filter(|d| d.code.starts_with("K2"))
                .filter(|d| !(cut && d.code == vcodes::INCONCLUSIVE))
                .collect();
            let mut by_doc = places.diagnostics(&checked.sources, &findings, None);
            by_doc.retain(|_, ds| !ds.is_empty());
            (by_doc, cut, findings.len())
        });
        tokio::spawn(async move {
            // The solver stops at the deadline; the grace covers one query in flight.
            let grace = Duration::from_millis(u64::from(cfg.solver_timeout_ms) + 1000);
            let outcome = tokio::time::timeout(budget + grace, work).await;
            let current = generation.load(Ordering::SeqCst) == mine;
            let (by_doc, cut, n) = match outcome {
                Ok(Ok(done)) if current => done,
                Ok(Ok(_)) => return,
                Ok(Err(e)) => {
                    client
                        .log_message(MessageType::ERROR, format!("verification failed: {e}"))
                        .await;
                    return;
                }
                Err(_) => {
                    client
                        .show_message(
                            MessageType::WARNING,
                            "verification did not finish within its budget; run `kalkic verify`",
                        )
                        .await;
                    return;
                }
            };
            {
                let mut st = lock(&state);
                // An edit may have raced the end of the run.
                if generation.load(Ordering::SeqCst) != mine {
                    return;
                }
                st.verified = by_doc;
            }
            if cut {
                client
                    .show_message(
                        MessageType::WARNING,
                        format!(
                            "verification stopped after its budget of {} ms; undecided \
                             questions are not shown: run `kalkic verify` for the full result",
                            cfg.verify_budget_ms
                        ),
                    )
                    .await;
            }
            client
                .log_message(
                    MessageType::INFO,
                    format!(
                        "verified in {} ms: {n} finding(s)",
                        started.elapsed().as_millis()
                    ),
                )
                .await;
            Backend::publish(&state, &publishing, &client).await;
        });
    }

    /// The analysis, module and byte offset of a position in an open document.
    fn locate(&self, uri: &Uri, pos: lsp::Position) -> Option<(Arc<Analysis>, usize, usize)> {
        let path = path_of(uri)?;
        let a = lock(&self.state)
            .analyses
            .get(&path)
            .map(|e| Arc::clone(&e.analysis))?;
        let m = a.module_of(&path)?;
        let offset = text::offset(a.text(m), pos);
        Some((a, m, offset))
    }
}

fn completion_kind(k: Kind) -> CompletionItemKind {
    match k {
        Kind::Keyword => CompletionItemKind::KEYWORD,
        Kind::Module => CompletionItemKind::FILE,
        Kind::DeviceType => CompletionItemKind::CLASS,
        Kind::Umbox => CompletionItemKind::MODULE,
        Kind::Site => CompletionItemKind::STRUCT,
        Kind::Device => CompletionItemKind::VARIABLE,
        Kind::Group => CompletionItemKind::VARIABLE,
        Kind::Node => CompletionItemKind::MODULE,
        Kind::State => CompletionItemKind::ENUM_MEMBER,
        Kind::Sensed => CompletionItemKind::FIELD,
        Kind::Command => CompletionItemKind::METHOD,
        Kind::Alert => CompletionItemKind::EVENT,
    }
}

impl LanguageServer for Backend {
    async fn initialize(&self, _: InitializeParams) -> Result<InitializeResult> {
        Ok(InitializeResult {
            capabilities: ServerCapabilities {
                position_encoding: Some(PositionEncodingKind::UTF16),
                text_document_sync: Some(TextDocumentSyncCapability::Options(
                    TextDocumentSyncOptions {
                        open_close: Some(true),
                        change: Some(TextDocumentSyncKind::FULL),
                        save: Some(SaveOptions::default().into()),
                        ..TextDocumentSyncOptions::default()
                    },
                )),
                hover_provider: Some(HoverProviderCapability::Simple(true)),
                definition_provider: Some(OneOf::Left(true)),
                completion_provider: Some(CompletionOptions {
                    trigger_characters: Some(vec![".".into(), ">".into()]),
                    ..CompletionOptions::default()
                }),
                document_formatting_provider: Some(OneOf::Left(true)),
                ..ServerCapabilities::default()
            },
            server_info: Some(ServerInfo {
                name: "kalkic".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
            ..InitializeResult::default()
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        let dir = self.std_dir.clone();
        let written = tokio::task::spawn_blocking(move || stdfiles::write_all(&dir)).await;
        if let Ok(Err(why)) = written {
            self.client
                .log_message(
                    MessageType::WARNING,
                    format!("standard library not written, no definitions in it: {why}"),
                )
                .await;
        }
    }

    async fn shutdown(&self) -> Result<()> {
        // Stops a running verification at its next query.
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn did_open(&self, p: DidOpenTextDocumentParams) {
        let Some(path) = path_of(&p.text_document.uri) else {
            return;
        };
        lock(&self.state).docs.insert(
            path.clone(),
            Doc {
                uri: p.text_document.uri,
                text: p.text_document.text,
                version: p.text_document.version,
            },
        );
        self.refresh(Some(&path)).await;
    }

    async fn did_change(&self, p: DidChangeTextDocumentParams) {
        let Some(path) = path_of(&p.text_document.uri) else {
            return;
        };
        // Full synchronisation: the last change is the whole text.
        let Some(change) = p.content_changes.into_iter().last() else {
            return;
        };
        self.generation.fetch_add(1, Ordering::SeqCst);
        {
            let mut st = lock(&self.state);
            // The verifier's findings point into the text as saved.
            st.verified.clear();
            match st.docs.get_mut(&path) {
                // Changes handled out of order: the newest text wins.
                Some(doc) if doc.version <= p.text_document.version => {
                    doc.text = change.text;
                    doc.version = p.text_document.version;
                }
                _ => return,
            }
        }
        self.refresh(Some(&path)).await;
    }

    async fn did_save(&self, p: DidSaveTextDocumentParams) {
        let Some(path) = path_of(&p.text_document.uri) else {
            return;
        };
        if !lock(&self.state).docs.contains_key(&path) {
            return;
        }
        self.verify(path);
    }

    async fn did_close(&self, p: DidCloseTextDocumentParams) {
        let Some(path) = path_of(&p.text_document.uri) else {
            return;
        };
        {
            let mut st = lock(&self.state);
            st.docs.remove(&path);
            st.analyses.remove(&path);
            st.verified.remove(&p.text_document.uri);
        }
        // Documents that imported the closed one read it from disk now.
        self.refresh(Some(&path)).await;
    }

    async fn hover(&self, p: HoverParams) -> Result<Option<Hover>> {
        let at = p.text_document_position_params;
        let Some((a, m, offset)) = self.locate(&at.text_document.uri, at.position) else {
            return Ok(None);
        };
        let Some((span, target)) = a.at(m, offset) else {
            return Ok(None);
        };
        Ok(a.hover(&target).map(|value| Hover {
            contents: HoverContents::Markup(MarkupContent {
                kind: MarkupKind::Markdown,
                value,
            }),
            range: Some(text::range(a.text(m), span.start, span.end)),
        }))
    }

    async fn goto_definition(
        &self,
        p: GotoDefinitionParams,
    ) -> Result<Option<GotoDefinitionResponse>> {
        let at = p.text_document_position_params;
        let Some((a, m, offset)) = self.locate(&at.text_document.uri, at.position) else {
            return Ok(None);
        };
        let Some(loc) = a.at(m, offset).and_then(|(_, t)| a.definition(&t)) else {
            return Ok(None);
        };
        let places = {
            let st = lock(&self.state);
            self.places(&st).open
        };
        let places = Places {
            std_dir: &self.std_dir,
            open: places,
        };
        Ok(places
            .location(&a.checked.sources, loc)
            .map(GotoDefinitionResponse::Scalar))
    }

    async fn completion(&self, p: CompletionParams) -> Result<Option<CompletionResponse>> {
        let at = p.text_document_position;
        let Some(path) = path_of(&at.text_document.uri) else {
            return Ok(None);
        };
        let (text, analysis) = {
            let st = lock(&self.state);
            let Some(doc) = st.docs.get(&path) else {
                return Ok(None);
            };
            let analysis = st.analyses.get(&path).map(|e| Arc::clone(&e.parsed));
            (doc.text.clone(), analysis)
        };
        let offset = text::offset(&text, at.position);
        let items = match &analysis {
            Some(a) => a.complete(a.module_of(&path), &text, offset),
            None => Vec::new(),
        };
        Ok(Some(CompletionResponse::Array(
            items
                .into_iter()
                .map(|c| CompletionItem {
                    label: c.label,
                    kind: Some(completion_kind(c.kind)),
                    detail: Some(c.detail),
                    ..CompletionItem::default()
                })
                .collect(),
        )))
    }

    async fn formatting(&self, p: DocumentFormattingParams) -> Result<Option<Vec<TextEdit>>> {
        let Some(path) = path_of(&p.text_document.uri) else {
            return Ok(None);
        };
        let Some(text) = lock(&self.state).docs.get(&path).map(|d| d.text.clone()) else {
            return Ok(None);
        };
        Ok(format::format(&text).map(|formatted| {
            if formatted == text {
                Vec::new()
            } else {
                vec![TextEdit::new(text::range(&text, 0, text.len()), formatted)]
            }
        }))
    }
}
