//! The Kalki runtime shim: loads a bundle written by `kalkic build` and runs the site's
//! state machines over the compiled IR, with no compiler and no solver on the node.
//!
//! The core is pure and shared with the compiler in `kalki-model`, re-exported here under
//! the shim's old paths: [`bundle::load`] takes files through [`bundle::BundleReader`],
//! [`engine::Engine`] takes input events with their time and returns what to do; the
//! shim adds [`simulate`], which replays a trace on a virtual clock. Drivers (Open
//! vSwitch, Docker, the event API) consume the engine's effects; only the binary touches
//! files and terminals.
//! Semantics and formats: `docs/runtime.md`.
// Only the binaries write to the terminal (docs/ARCHITECTURE.md, "Invariants").
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod api;
pub mod bundle;
pub mod cluster;
pub mod cmd;
pub mod codes;
pub mod containers;
pub mod docker;
pub mod enforcement;
pub mod follow;
pub mod journal;
pub mod keeper;
pub mod metrics;
pub mod mqtt;
pub mod net;
pub mod node;
pub mod oci;
pub mod ovs;
pub mod run;
pub mod secrets;
pub mod simulate;
pub mod sink;

pub use kalki_model::{engine, eval, manifest, text, trace};
