//! A small, persistent OpenFlow 1.5 client for Open vSwitch: reads the rule sets
//! `kalkic` writes and swaps one device's flows in one atomic bundle over the bridge's
//! management socket, without starting `ovs-ofctl` (which fetches every table's
//! features on each new connection).
//!
//! - [`flow`]: flows as data ([`FlowMod`]), printed in the compiler's syntax;
//! - [`parse`]: rule-set text to [`FlowMod`]s (pure);
//! - [`wire`]: OpenFlow 1.5 encoding and decoding of the messages used (pure);
//! - [`client`]: the connection ([`Client`]), the only module doing I/O (feature
//!   `client`, on by default; the compiler builds without it).
// Only the binaries write to the terminal (docs/ARCHITECTURE.md, "Invariants").
#![deny(clippy::print_stdout, clippy::print_stderr)]

#[cfg(feature = "client")]
pub mod client;
pub mod flow;
pub mod parse;
pub mod wire;

#[cfg(feature = "client")]
pub use client::{mgmt_socket, Client, Error, Rejected};
pub use flow::{Actions, EthType, FlowMod, Mac, Match, Port};
pub use parse::{parse_flow, parse_rule_set, ParseError, ParseErrorKind};
