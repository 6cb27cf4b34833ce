//! The Kalki runtime shim: loads a bundle written by `kalkic build` and runs the site's
//! state machines over the compiled IR, with no compiler and no solver on the node.
//!
//! The core is pure: [`bundle::load`] takes files through [`bundle::BundleReader`],
//! [`engine::Engine`] takes input events with their time and returns what to do, and
//! [`simulate`] replays a trace on a virtual clock. Drivers (Open vSwitch, Docker, the
//! event API) consume the engine's effects; only the binary touches files and terminals.
//! Semantics and formats: `docs/runtime.md`.
// Only the binaries write to the terminal (docs/ARCHITECTURE.md, "Invariants").
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod api;
pub mod bundle;
pub mod cmd;
pub mod codes;
pub mod docker;
pub mod enforcement;
pub mod engine;
pub mod eval;
pub mod follow;
pub mod journal;
pub mod manifest;
pub mod net;
pub mod node;
pub mod ovs;
pub mod run;
pub mod simulate;
pub mod sink;
pub mod text;
pub mod trace;
