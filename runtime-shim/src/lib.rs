//! The Kalki runtime shim: loads a bundle written by `kalkic build` and runs the site's
//! state machines over the compiled IR, with no compiler and no solver on the node.
//!
//! The core is pure: [`bundle::load`] takes files through [`bundle::BundleReader`] and
//! returns the checked manifest, [`eval`] evaluates its guards and conditions, and
//! [`engine::Engine`] takes input events with their time and returns what to do. Drivers
//! (Open vSwitch, Docker, the event API) consume the engine's effects; only the binary
//! touches files and terminals.

pub mod bundle;
pub mod codes;
pub mod engine;
pub mod eval;
pub mod manifest;
pub mod text;
