//! The model the compiler and the runtime share (`docs/ARCHITECTURE.md`): one definition
//! of the bundle's format and of how a site's state machines behave.
//!
//! - [`manifest`]: the serde types of `manifest.json` and the container manifests, read
//!   by the shim and written by `kalkic build` (schema: `docs/schema/`);
//! - [`bundle`]: loading a bundle through [`bundle::BundleReader`]: format, digests, path
//!   safety, and the consistency checks (exact integer ranges of every expression);
//! - [`eval`]: expressions over an environment, unknown values in Kleene's logic;
//! - [`range`]: exact integer bounds, by which both the compiler (K114) and the loader
//!   refuse what could overflow 64 bits;
//! - [`clock`]: engine time to the local wall clock, a fixed offset or a time zone with
//!   daylight saving, and the next moment a clock window can open or close;
//! - [`engine`]: the step semantics, the reference the verifier's reasoning must agree
//!   with: inputs at a virtual time in, state changes, commands and alerts out;
//! - [`contract`]: µmbox traffic contracts: what a chain lets through, for the verifier,
//!   the shim's `status` and the tests of the real image;
//! - [`telemetry`]: MQTT bindings: a message to a reading, a command to a message;
//! - [`trace`]: trace files (`kalki-shim simulate`), checked against a bundle;
//! - [`policy_test`]: policy tests (`kalkic test`): scenarios with expectations, run
//!   through [`replay`], and the coverage of states, transitions and rules;
//! - [`replay`]: a checked trace through the engine on a virtual clock (`simulate`,
//!   `kalkic test`);
//! - [`text`]: the IR back as policy text, for messages; [`codes`]: S0xx, S1xx, S2xx.
//!
//! Pure: no I/O, no clock, no async runtime, no solver.

// Only the binaries write to the terminal (docs/ARCHITECTURE.md, "Invariants").
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod bundle;
pub mod clock;
pub mod codes;
pub mod contract;
pub mod duration;
pub mod engine;
pub mod eval;
pub mod manifest;
pub mod policy_test;
pub mod range;
pub mod replay;
pub mod telemetry;
pub mod text;
pub mod trace;
