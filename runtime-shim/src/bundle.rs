//! Loading a bundle from disk. The loader itself (format, digests, consistency checks,
//! codes S0xx) is pure and lives in `kalki-model` ([`kalki_model::bundle`], re-exported
//! here); [`DirReader`] reads a bundle directory for it and is the only part of the
//! library that touches the file system to do so.

pub use kalki_model::bundle::*;
use std::path::{Path, PathBuf};

/// A bundle directory on disk.
#[derive(Debug, Clone)]
pub struct DirReader {
    root: PathBuf,
}

impl DirReader {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirReader { root: root.into() }
    }
}

impl BundleReader for DirReader {
    fn read(&self, path: &str) -> Result<Vec<u8>, ReadError> {
        let full = path.split('/').fold(self.root.clone(), |p, c| p.join(c));
        std::fs::read(&full).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::NotFound,
            _ => ReadError::Other(e.to_string()),
        })
    }
    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// Loads the bundle in directory `dir`.
pub fn load_dir(dir: &Path) -> Result<Bundle, Vec<BundleError>> {
    load(&DirReader::new(dir))
}
