//! Helpers shared by the shim's integration tests: compiling policies into bundles with
//! the real compiler (a dev-dependency only), in-memory bundles, temporary directories.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

pub mod live;
pub mod scale;

use kalki_compiler::codegen::bundle as codegen;
use kalki_compiler::source::{LoadError, SourceLoader};
use kalki_compiler::verify::{self, z3::Z3Solver};
use kalki_shim::bundle::{self, Bundle, BundleError, BundleReader, ReadError};
use kalki_shim::engine::{Config, Engine};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository root (the parent of `runtime-shim/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime-shim/ has a parent")
        .to_path_buf()
}

/// Sources in memory, or files under the repository root.
struct Loader {
    files: BTreeMap<PathBuf, String>,
}

impl SourceLoader for Loader {
    fn read_file(&self, path: &Path) -> Result<String, LoadError> {
        if let Some(t) = self.files.get(path) {
            return Ok(t.clone());
        }
        std::fs::read_to_string(repo_root().join(path)).map_err(|_| LoadError::NotFound)
    }
}

/// Compiles and verifies policy files (paths relative to the repository root, or given
/// in memory) and returns the bundle of their only site. Panics on any policy error.
fn build(roots: Vec<PathBuf>, files: BTreeMap<PathBuf, String>) -> codegen::Bundle {
    build_verified(roots, files).0
}

/// [`compile`], with the verifier's verdict on each of the site's assertions, in order.
pub fn compile_verified(
    src: &str,
) -> (
    codegen::Bundle,
    Vec<(kalki_compiler::ir::AssertKind, verify::Status)>,
) {
    let path = PathBuf::from("test.kalki");
    build_verified(
        vec![path.clone()],
        BTreeMap::from([(path, src.to_string())]),
    )
}

fn build_verified(
    roots: Vec<PathBuf>,
    files: BTreeMap<PathBuf, String>,
) -> (
    codegen::Bundle,
    Vec<(kalki_compiler::ir::AssertKind, verify::Status)>,
) {
    let loader = Loader { files };
    let solver = Z3Solver::new(10_000);
    let (checked, verified) =
        kalki_compiler::verify(&roots, &loader, &solver, &verify::Options::default());
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| format!("{}: {}", d.code, d.message))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let verified = verified.unwrap();
    let model = checked.model.as_ref().unwrap();
    let site = &model.sites[0];
    let verdicts = site
        .asserts
        .iter()
        .zip(&verified.assertions)
        .map(|(_, r)| (r.kind, r.status.clone()))
        .collect();
    let bundle = codegen::build(model, site, &checked.sources, &solver).unwrap();
    (bundle, verdicts)
}

/// The bundle of one policy given as text.
pub fn compile(src: &str) -> codegen::Bundle {
    let path = PathBuf::from("test.kalki");
    build(
        vec![path.clone()],
        BTreeMap::from([(path, src.to_string())]),
    )
}

/// The bundle of an example directory's policy (`examples/smart-office`).
pub fn compile_dir(dir: &str) -> codegen::Bundle {
    let mut roots: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .map(|e| PathBuf::from(dir).join(e.unwrap().file_name()))
        .filter(|p| p.extension().is_some_and(|x| x == "kalki"))
        .collect();
    roots.sort();
    build(roots, BTreeMap::new())
}

/// A bundle held in memory.
#[derive(Clone)]
pub struct MemReader {
    pub files: BTreeMap<String, Vec<u8>>,
}

impl MemReader {
    pub fn new(b: &codegen::Bundle) -> Self {
        MemReader {
            files: b.files.clone(),
        }
    }
    pub fn manifest(&self) -> serde_json::Value {
        serde_json::from_slice(&self.files["manifest.json"]).unwrap()
    }
    pub fn set_manifest(&mut self, v: &serde_json::Value) {
        self.files.insert(
            "manifest.json".into(),
            serde_json::to_vec_pretty(v).unwrap(),
        );
    }
}

impl BundleReader for MemReader {
    fn read(&self, path: &str) -> Result<Vec<u8>, ReadError> {
        self.files.get(path).cloned().ok_or(ReadError::NotFound)
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

pub fn load(r: &MemReader) -> Result<Bundle, Vec<BundleError>> {
    bundle::load(r)
}

/// Loads a policy's bundle into the shim.
pub fn shim_bundle(src: &str) -> Bundle {
    load(&MemReader::new(&compile(src))).unwrap()
}

/// An engine at time 0 whose time 0 is `HH:MM` local time.
pub fn engine_at(bundle: &Bundle, hh: u64, mm: u64) -> Engine {
    let config = Config::fixed((hh * 60 + mm) * 60_000);
    Engine::new(bundle, config, 0)
}

/// Writes a bundle into a fresh directory.
pub fn write_bundle(b: &codegen::Bundle, dir: &TempDir) {
    for (path, bytes) in &b.files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("kalki-shim-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real `kalki-shim` binary run in `dir` with `args`, without colours.
pub fn shim_in(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kalki-shim"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("kalki-shim runs")
}

/// Output that must be UTF-8.
pub fn utf8(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}
