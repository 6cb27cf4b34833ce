//! Helpers shared by the integration tests: source loaders and path handling.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use kalki_compiler::source::{LoadError, SourceLoader};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

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
