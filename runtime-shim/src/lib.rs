//! The Kalki runtime shim: loads a bundle written by `kalkic build` and runs the site's
//! state machines over the compiled IR, with no compiler and no solver on the node.
//!
//! The core is pure: [`bundle::load`] takes files through [`bundle::BundleReader`] and
//! returns the checked manifest, [`eval`] evaluates its guards and conditions. Only the
//! binary touches files and terminals.

pub mod bundle;
pub mod codes;
pub mod eval;
pub mod manifest;
pub mod text;
