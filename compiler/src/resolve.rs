//! Name resolution, part one: load every module reachable from the roots through
//! `import`, report syntax errors, missing modules and import cycles, and build each
//! module's scope (the items it declares plus the ones it imports).

use crate::codes;
use crate::diag::{did_you_mean, Diagnostic, Diagnostics};
use crate::ir::Loc;
use crate::source::{LoadError, Origin, SourceFile, SourceId, SourceLoader, Sources};
use crate::stdlib;
use kalki_lang::ast::{self, ImportNames, Item, Span};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One parsed module.
#[derive(Debug)]
pub struct Module {
    pub source: SourceId,
    pub origin: Origin,
    pub ast: ast::File,
    pub is_root: bool,
    /// Each import of the module with the module it loaded (None: it failed, reported).
    pub imports: Vec<(ast::Import, Option<usize>)>,
}

/// What a name in a module's scope refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemRef {
    /// (module index, item index in that module's AST).
    Umbox(usize, usize),
    DeviceType(usize, usize),
    Site(usize, usize),
    /// Came from an import that failed: already reported, never report again.
    Poisoned,
}

#[derive(Debug, Default)]
pub struct Scope {
    pub names: HashMap<String, (ItemRef, Loc)>,
    /// A glob import failed: unknown item names in this module are not reported.
    pub poisoned_glob: bool,
}

/// All modules, their scopes, and the sources they came from.
#[derive(Debug, Default)]
pub struct Program {
    pub sources: Sources,
    pub modules: Vec<Module>,
    pub scopes: Vec<Scope>,
    /// Root files that could not be read at all (a usage error, not a policy error).
    pub unreadable_roots: Vec<(PathBuf, LoadError)>,
    /// Whether any module had syntax errors (later phases are then skipped).
    pub syntax_errors: bool,
}

/// Loads the roots and everything they import.
pub fn load(roots: &[PathBuf], loader: &dyn SourceLoader, diags: &mut Diagnostics) -> Program {
    let mut p = Program::default();
    let mut by_origin: HashMap<Origin, usize> = HashMap::new();
    // (module, import index in its items, target module)
    let mut edges: Vec<(usize, Span, usize)> = Vec::new();
    let mut queue: Vec<usize> = Vec::new();

    for root in roots {
        let origin = Origin::File(loader.canonical(root));
        if let Some(&m) = by_origin.get(&origin) {
            p.modules[m].is_root = true;
            continue;
        }
        match loader.read_file(root) {
            Ok(text) => {
                let m = add_module(
                    &mut p,
                    origin.clone(),
                    root.display().to_string(),
                    text,
                    true,
                    diags,
                );
                by_origin.insert(origin, m);
                queue.push(m);
            }
            Err(e) => p.unreadable_roots.push((root.clone(), e)),
        }
    }

    while let Some(m) = queue.pop() {
        let imports: Vec<ast::Import> = p.modules[m]
            .ast
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Import(imp) => Some(imp.clone()),
                _ => None,
            })
            .collect();
        for imp in imports {
            let source = p.modules[m].source;
            let target = import_origin(&p.modules[m].origin, &imp, loader);
            let shown = shown_path(&p.sources.get(source).name, &imp);
            let target = match target {
                Some(t) => t,
                None => {
                    diags.push(
                        Diagnostic::error(codes::UNRESOLVED_MODULE, "import names no module")
                            .primary(Loc::new(source, imp.span), "expected `MODULE::NAME`")
                            .help("write `import std::devices::Camera` or `import std::umboxes::{sniffer, ids}`"),
                    );
                    poison_import(&mut p, m, &imp);
                    p.modules[m].imports.push((imp, None));
                    continue;
                }
            };
            if let Some(&t) = by_origin.get(&target) {
                edges.push((m, imp.span, t));
                p.modules[m].imports.push((imp, Some(t)));
                continue;
            }
            let loaded = match &target {
                Origin::Std(name) => stdlib::module(name)
                    .map(|text| {
                        (
                            format!("std::{}", name.replace('/', "::")),
                            text.to_string(),
                        )
                    })
                    .ok_or(LoadError::NotFound),
                Origin::File(path) => loader.read_file(path).map(|text| (shown.clone(), text)),
            };
            match loaded {
                Ok((name, text)) => {
                    let t = add_module(&mut p, target.clone(), name, text, false, diags);
                    by_origin.insert(target, t);
                    edges.push((m, imp.span, t));
                    queue.push(t);
                    p.modules[m].imports.push((imp, Some(t)));
                }
                Err(e) => {
                    let module: Vec<&str> = imp.module.iter().map(|i| i.name.as_str()).collect();
                    let mut d = Diagnostic::error(
                        codes::UNRESOLVED_MODULE,
                        format!("cannot find module `{}`", module.join("::")),
                    );
                    let module_span = imp
                        .module
                        .first()
                        .zip(imp.module.last())
                        .map_or(imp.span, |(a, b)| a.span.to(b.span));
                    let what = match (&target, &e) {
                        (Origin::Std(_), _) => "no such standard module".to_string(),
                        (Origin::File(_), LoadError::NotFound) => format!("no file `{shown}`"),
                        (Origin::File(_), e) => format!("cannot read `{shown}`: {e}"),
                    };
                    d = d.primary(Loc::new(source, module_span), what);
                    if let Origin::Std(name) = &target {
                        if let Some(h) = did_you_mean(name, stdlib::MODULES.iter().map(|(n, _)| *n))
                        {
                            d = d.help(h);
                        }
                    }
                    diags.push(d);
                    poison_import(&mut p, m, &imp);
                    p.modules[m].imports.push((imp, None));
                }
            }
        }
    }

    report_cycles(&p, &edges, diags);
    build_scopes(&mut p, diags);
    p
}

fn add_module(
    p: &mut Program,
    origin: Origin,
    name: String,
    text: String,
    is_root: bool,
    diags: &mut Diagnostics,
) -> usize {
    // A byte-order mark is accepted and dropped here (language.md §2.1), so that columns in
    // diagnostics count from the first character an editor shows.
    let text = match text.strip_prefix(kalki_lang::lexer::BOM) {
        Some(rest) => rest.to_string(),
        None => text,
    };
    let parsed = kalki_lang::parse(&text);
    let source = p.sources.add(SourceFile {
        origin: origin.clone(),
        name,
        text,
    });
    for e in &parsed.errors {
        diags.push(syntax_diagnostic(source, e));
    }
    p.syntax_errors |= !parsed.errors.is_empty();
    p.modules.push(Module {
        source,
        origin,
        ast: parsed.file,
        is_root,
        imports: Vec::new(),
    });
    p.scopes.push(Scope::default());
    p.modules.len() - 1
}

/// Where an import points: `std::x::y` into the standard library, anything else relative
/// to the importing file (or, inside the standard library, to it).
fn import_origin(from: &Origin, imp: &ast::Import, loader: &dyn SourceLoader) -> Option<Origin> {
    let segs: Vec<&str> = imp.module.iter().map(|i| i.name.as_str()).collect();
    match (segs.first(), from) {
        (None, _) => None,
        (Some(&"std"), _) if segs.len() >= 2 => Some(Origin::Std(segs[1..].join("/"))),
        (Some(&"std"), _) => None,
        (Some(_), Origin::Std(_)) => Some(Origin::Std(segs.join("/"))),
        (Some(_), Origin::File(path)) => {
            let dir = path.parent().unwrap_or(Path::new(""));
            let mut target = dir.to_path_buf();
            for s in &segs {
                target.push(s);
            }
            target.set_extension("kalki");
            Some(Origin::File(loader.canonical(&target)))
        }
    }
}

/// How an imported file is named in diagnostics: as its importer wrote it, relative to
/// the importer's own name (so a relative command-line path stays relative).
fn shown_path(importer: &str, imp: &ast::Import) -> String {
    let mut p = Path::new(importer)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for seg in &imp.module {
        p.push(&seg.name);
    }
    p.set_extension("kalki");
    p.display().to_string()
}

fn poison_import(p: &mut Program, m: usize, imp: &ast::Import) {
    let source = p.modules[m].source;
    match &imp.names {
        ImportNames::All(_) => p.scopes[m].poisoned_glob = true,
        ImportNames::Some(names) => {
            for n in names {
                p.scopes[m].names.insert(
                    n.name.clone(),
                    (ItemRef::Poisoned, Loc::new(source, n.span)),
                );
            }
        }
    }
}

fn report_cycles(p: &Program, edges: &[(usize, Span, usize)], diags: &mut Diagnostics) {
    let mut g: DiGraph<usize, Span> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..p.modules.len()).map(|m| g.add_node(m)).collect();
    for &(a, span, b) in edges {
        g.add_edge(nodes[a], nodes[b], span);
    }
    for scc in petgraph::algo::tarjan_scc(&g) {
        let cyclic = scc.len() > 1 || scc.iter().any(|&n| g.find_edge(n, n).is_some());
        if !cyclic {
            continue;
        }
        let mut members: Vec<usize> = scc.iter().map(|&n| g[n]).collect();
        members.sort_unstable();
        let names: Vec<String> = members
            .iter()
            .map(|&m| format!("`{}`", p.sources.get(p.modules[m].source).name))
            .collect();
        let mut d = Diagnostic::error(codes::IMPORT_CYCLE, "modules import each other in a cycle")
            .help(format!(
                "the cycle runs through {}; move shared items into a module both can import",
                names.join(", ")
            ));
        let mut first = true;
        for &(a, span, b) in edges {
            if members.contains(&a) && members.contains(&b) {
                let loc = Loc::new(p.modules[a].source, span);
                d = if first {
                    d.primary(loc, "this import closes the cycle")
                } else {
                    d.secondary(loc, "part of the cycle")
                };
                first = false;
            }
        }
        diags.push(d);
    }
}

fn item_name(item: &Item) -> Option<&ast::Ident> {
    match item {
        Item::Import(_) => None,
        Item::Umbox(u) => Some(&u.name),
        Item::DeviceType(t) => Some(&t.name),
        Item::Site(s) => Some(&s.name),
    }
}

fn item_ref(m: usize, i: usize, item: &Item) -> Option<ItemRef> {
    match item {
        Item::Import(_) => None,
        Item::Umbox(_) => Some(ItemRef::Umbox(m, i)),
        Item::DeviceType(_) => Some(ItemRef::DeviceType(m, i)),
        Item::Site(_) => Some(ItemRef::Site(m, i)),
    }
}

fn build_scopes(p: &mut Program, diags: &mut Diagnostics) {
    // Declarations first, so an import cannot shadow a local item silently.
    let mut declared: Vec<BTreeMap<String, (ItemRef, Loc)>> = Vec::new();
    for (m, module) in p.modules.iter().enumerate() {
        let mut own: BTreeMap<String, (ItemRef, Loc)> = BTreeMap::new();
        for (i, item) in module.ast.items.iter().enumerate() {
            let (Some(name), Some(r)) = (item_name(item), item_ref(m, i, item)) else {
                continue;
            };
            let loc = Loc::new(module.source, name.span);
            if let Some((_, prev)) = own.get(&name.name) {
                diags.push(
                    Diagnostic::error(
                        codes::DUPLICATE,
                        format!("`{}` is declared twice", name.name),
                    )
                    .primary(loc, "declared again here")
                    .secondary(*prev, "first declared here"),
                );
                continue;
            }
            own.insert(name.name.clone(), (r, loc));
        }
        declared.push(own);
    }
    for m in 0..p.modules.len() {
        let source = p.modules[m].source;
        let mut scope = std::mem::take(&mut p.scopes[m]);
        for (name, v) in &declared[m] {
            scope.names.insert(name.clone(), *v);
        }
        for (imp, target) in &p.modules[m].imports {
            // Unresolvable imports were reported (and poisoned) while loading.
            let Some(target) = *target else { continue };
            let exported = &declared[target];
            let wanted: Vec<(String, Span)> = match &imp.names {
                ImportNames::All(_) => exported
                    .iter()
                    .filter(|(_, (r, _))| !matches!(r, ItemRef::Site(..)))
                    .map(|(n, _)| (n.clone(), imp.span))
                    .collect(),
                ImportNames::Some(names) => {
                    names.iter().map(|n| (n.name.clone(), n.span)).collect()
                }
            };
            for (name, span) in wanted {
                let loc = Loc::new(source, span);
                let Some((r, _)) = exported.get(&name) else {
                    let mut d = Diagnostic::error(
                        codes::UNKNOWN_NAME,
                        format!(
                            "module `{}` has no item `{name}`",
                            p.sources.get(p.modules[target].source).name
                        ),
                    )
                    .primary(loc, "not declared there");
                    if let Some(h) = did_you_mean(&name, exported.keys().map(String::as_str)) {
                        d = d.help(h);
                    }
                    diags.push(d);
                    scope.names.insert(name, (ItemRef::Poisoned, loc));
                    continue;
                };
                match scope.names.get(&name) {
                    Some((existing, _)) if existing == r => {}
                    Some((_, prev)) if matches!(imp.names, ImportNames::Some(_)) => {
                        diags.push(
                            Diagnostic::error(
                                codes::DUPLICATE,
                                format!("`{name}` is imported but already declared"),
                            )
                            .primary(loc, "imported here")
                            .secondary(*prev, "already declared here"),
                        );
                    }
                    // A glob never overrides an explicit name.
                    Some(_) => {}
                    None => {
                        scope.names.insert(name, (*r, loc));
                    }
                }
            }
        }
        p.scopes[m] = scope;
    }
}

/// A syntax error as a diagnostic (also used by `kalkic fmt`, which refuses such files).
pub fn syntax_diagnostic(source: SourceId, e: &kalki_lang::SyntaxError) -> Diagnostic {
    let mut d = Diagnostic::error(e.code.code(), e.message.clone()).primary(
        Loc::new(source, e.span),
        e.label.clone().unwrap_or_else(|| "here".into()),
    );
    for (span, message) in &e.secondary {
        d = d.secondary(Loc::new(source, *span), message.clone());
    }
    if let Some(help) = &e.help {
        d = d.help(help.clone());
    } else if !e.expected.is_empty() {
        let shown: Vec<&str> = e.expected.iter().take(12).map(String::as_str).collect();
        let more = if e.expected.len() > shown.len() {
            ", ..."
        } else {
            ""
        };
        d = d.help(if e.expected.len() == 1 {
            format!("expected {}", shown.join(""))
        } else {
            format!("expected one of {}{more}", shown.join(", "))
        });
    }
    d
}
