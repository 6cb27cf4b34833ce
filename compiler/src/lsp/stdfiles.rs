//! The standard library as files an editor can open. Its sources are compiled into
//! `kalkic` ([`kalki_compiler::stdlib`]); go to definition needs a real file, so the
//! server writes each module, read-only, under
//! `$XDG_CACHE_HOME/kalkic/std/<version>/` (or `~/.cache/...`, or the system's temporary
//! directory when neither is set), rewriting any file whose bytes differ from the
//! binary's. The files are a view: the compiler never reads them for `std::` imports.

use kalki_compiler::stdlib;
use std::path::{Path, PathBuf};

/// Where the standard library of this `kalkic` is written.
pub fn dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("kalkic")
        .join("std")
        .join(env!("CARGO_PKG_VERSION"))
}

/// The file of `std::NAME` (`NAME` with `/` between segments).
pub fn path(dir: &Path, name: &str) -> PathBuf {
    let mut p = dir.to_path_buf();
    p.extend(name.split('/'));
    p.set_extension("kalki");
    p
}

/// Writes every module whose file is missing or differs. Errors are returned, not
/// fatal: without the files, definitions in the standard library are simply not offered.
pub fn write_all(dir: &Path) -> Result<(), String> {
    for (name, text) in stdlib::MODULES {
        let p = path(dir, name);
        if std::fs::read(&p).is_ok_and(|b| b == text.as_bytes()) {
            continue;
        }
        let parent = p.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create `{}`: {e}", parent.display()))?;
        // A previous, read-only copy: make it writable to replace it.
        if let Ok(meta) = std::fs::metadata(&p) {
            let mut perms = meta.permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            let _ = std::fs::set_permissions(&p, perms);
        }
        std::fs::write(&p, text).map_err(|e| format!("cannot write `{}`: {e}", p.display()))?;
        let mut perms = std::fs::metadata(&p)
            .map_err(|e| format!("cannot read `{}`: {e}", p.display()))?
            .permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&p, perms)
            .map_err(|e| format!("cannot make `{}` read-only: {e}", p.display()))?;
    }
    Ok(())
}
