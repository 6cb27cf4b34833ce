//! Code generation: artifacts produced from the checked model. Each generator is a pure
//! function from [`crate::ir::Model`] to text or bytes; the binary decides where they go.
//!
//! - [`dot`]: the state machines as Graphviz DOT (`kalkic graph`);
//! - [`openflow`]: switch ports, the base rule set and per-(device, state) rule sets;
//! - [`manifest`]: the typed model lowered into the bundle's manifest types;
//! - [`bundle`]: `manifest.json`, rule sets and container manifests (`kalkic build`).

pub mod bundle;
pub mod dot;
pub mod manifest;
pub mod openflow;
