//! Sources and the one interface through which the compiler reads them.
//!
//! The compiler core never touches the file system: it asks a [`SourceLoader`] for module
//! text. The `kalkic` binary provides a loader over real files; tests use in-memory ones.
//! The standard library is compiled into the binary ([`crate::stdlib`]).

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded source file, by position in [`Sources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SourceId(pub u32);

/// Where a module comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// A file given on the command line or imported by relative path.
    File(PathBuf),
    /// `std::NAME`, compiled into the binary.
    Std(String),
}

#[derive(Debug, Clone)]
pub struct SourceFile {
    pub origin: Origin,
    /// The name shown in diagnostics.
    pub name: String,
    pub text: String,
}

/// Every source the compilation has read, indexed by [`SourceId`].
#[derive(Debug, Clone, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
    /// Per file, the byte offset where each line starts: built once, so locating a
    /// position is a binary search (reports of thousands of findings stay linear).
    lines: Vec<Arc<[usize]>>,
}

impl Sources {
    pub fn add(&mut self, file: SourceFile) -> SourceId {
        let starts: Vec<usize> = std::iter::once(0)
            .chain(file.text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        self.lines.push(starts.into());
        self.files.push(file);
        SourceId(u32::try_from(self.files.len() - 1).unwrap_or(u32::MAX))
    }
    pub fn get(&self, id: SourceId) -> &SourceFile {
        &self.files[id.0 as usize]
    }
    pub fn iter(&self) -> impl Iterator<Item = (SourceId, &SourceFile)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (SourceId(u32::try_from(i).unwrap_or(u32::MAX)), f))
    }
    pub fn len(&self) -> usize {
        self.files.len()
    }
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
    /// Byte offsets of the starts of a file's lines.
    pub fn line_starts(&self, id: SourceId) -> &Arc<[usize]> {
        &self.lines[id.0 as usize]
    }
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, id: SourceId, offset: usize) -> (usize, usize) {
        let text = &self.get(id).text;
        let offset = offset.min(text.len());
        let starts = self.line_starts(id);
        let line = starts.partition_point(|&s| s <= offset).max(1);
        let line_start = starts[line - 1];
        let col = text
            .get(line_start..offset)
            .map_or(0, |s| s.chars().count())
            + 1;
        (line, col)
    }
}

/// Why a module could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    NotFound,
    NotUtf8,
    Other(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::NotFound => write!(f, "no such file"),
            LoadError::NotUtf8 => write!(f, "not valid UTF-8"),
            LoadError::Other(e) => write!(f, "{e}"),
        }
    }
}

/// Reads module text for the compiler. Implementations decide what a path means.
pub trait SourceLoader {
    /// Reads a local file. `path` is as resolved by the compiler (relative to the
    /// importing file's directory, or as given on the command line).
    fn read_file(&self, path: &Path) -> Result<String, LoadError>;
    /// Normalises a path so one file imported two ways is loaded once.
    fn canonical(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }
}
