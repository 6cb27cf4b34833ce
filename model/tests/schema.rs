//! The committed JSON Schemas of the bundle's files (`docs/schema/`) are the ones the
//! manifest types generate: change a type and this fails until the schema is regenerated
//! with `KALKI_UPDATE_SCHEMA=1 cargo test -p kalki-model --test schema`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// A test, not the model: it reads and (on request) writes the committed files.
#![allow(clippy::disallowed_methods)]

use kalki_model::manifest::json_schemas;
use std::path::PathBuf;

#[test]
fn committed_schemas_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema");
    let update = std::env::var_os("KALKI_UPDATE_SCHEMA").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (name, generated) in json_schemas() {
        let path = dir.join(name);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            stale.push(format!("docs/schema/{name}"));
        }
    }
    assert!(
        stale.is_empty(),
        "{} no longer match the types in model/src/manifest.rs; regenerate with \
         `KALKI_UPDATE_SCHEMA=1 cargo test -p kalki-model --test schema`, review the diff \
         and commit it",
        stale.join(" and ")
    );
}
