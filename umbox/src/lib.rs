//! The Kalki µmbox: the network functions of the multi-call image `kalki/umbox:0.1`.
//!
//! Pure core, I/O at the edge: `packet` reads headers, `functions` decide (forward or
//! drop, alerts) on crafted packets and a virtual clock, `engine` adds counters and alert
//! hold-offs. Only `net` (interfaces, AF_PACKET sockets) and `run` (signals, clock,
//! stdout) touch the system. The contract with the runtime shim is in `docs/umbox.md`.
// Only the binaries write to the terminal (docs/ARCHITECTURE.md, "Invariants").
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod cli;
pub mod craft;
pub mod engine;
pub mod event;
pub mod forge;
pub mod functions;
pub mod http;
pub mod net;
pub mod packet;
pub mod run;
pub mod window;
