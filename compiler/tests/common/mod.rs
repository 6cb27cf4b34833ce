//! Helpers shared by the integration tests: source loaders and path handling.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use kalki_compiler::diag::Diagnostic;
use kalki_compiler::source::{LoadError, SourceLoader, Sources};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (the parent of `compiler/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("compiler/ has a parent")
        .to_path_buf()
}

/// Removes `.` and resolves `..` without touching the file system, so a file imported two
/// ways gets one name and names stay relative to the repository root.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    out.iter().collect()
}

/// Reads files relative to a base directory; paths given to the compiler stay relative,
/// so diagnostics name files the same way on every checkout.
pub struct FsLoader {
    pub base: PathBuf,
}

impl SourceLoader for FsLoader {
    fn read_file(&self, path: &Path) -> Result<String, LoadError> {
        let bytes = std::fs::read(self.base.join(path)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound,
            _ => LoadError::Other(e.to_string()),
        })?;
        String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8)
    }
    fn canonical(&self, path: &Path) -> PathBuf {
        normalize(path)
    }
}

/// Sources held in memory, by path.
#[derive(Default, Clone)]
pub struct MemLoader {
    pub files: BTreeMap<PathBuf, String>,
}

impl MemLoader {
    pub fn new<'a>(files: impl IntoIterator<Item = (&'a str, String)>) -> Self {
        MemLoader {
            files: files
                .into_iter()
                .map(|(p, t)| (PathBuf::from(p), t))
                .collect(),
        }
    }
}

impl SourceLoader for MemLoader {
    fn read_file(&self, path: &Path) -> Result<String, LoadError> {
        self.files
            .get(&normalize(path))
            .cloned()
            .ok_or(LoadError::NotFound)
    }
    fn canonical(&self, path: &Path) -> PathBuf {
        normalize(path)
    }
}

/// Removes the checkout location from text, should any absolute path leak into it.
pub fn filter_paths(text: &str) -> String {
    let root = repo_root();
    text.replace(&format!("{}/", root.display()), "")
        .replace(&root.display().to_string(), "[ROOT]")
}

/// Every label lies inside its source and on character boundaries.
pub fn check_spans(sources: &Sources, d: &Diagnostic) -> Result<(), String> {
    for l in &d.labels {
        let text = &sources.get(l.loc.source).text;
        let s = l.loc.span;
        if s.start > s.end || s.end > text.len() {
            return Err(format!(
                "{}: span {}..{} outside a source of {} bytes",
                d.code,
                s.start,
                s.end,
                text.len()
            ));
        }
        if !text.is_char_boundary(s.start) || !text.is_char_boundary(s.end) {
            return Err(format!(
                "{}: span {}..{} splits a character",
                d.code, s.start, s.end
            ));
        }
    }
    Ok(())
}

/// Runs the real `kalkic ARGS` from the repository root, colours off.
pub fn kalkic(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kalkic"))
        .args(args)
        .current_dir(repo_root())
        .env("NO_COLOR", "1")
        .output()
        .expect("kalkic runs")
}

/// The exit code of a run that exited normally.
pub fn code(o: &Output) -> i32 {
    o.status.code().expect("kalkic exits normally")
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kalkic-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
