//! The network functions of the multi-call image, one module each, behind one trait.
//!
//! A function sees each IPv4 packet with the direction it travels and the current time,
//! and answers forward or drop, adding alerts to a list. It may also inject IPv4 packets
//! of its own (built with `forge`), back toward the packet's sender or on toward the
//! other side; the engine wraps them in Ethernet and the binary sends them. It never
//! touches sockets or clocks, so the tests drive it with crafted packets and a virtual
//! clock.

pub mod anti_dos;
pub mod auth_proxy;
pub mod brute_force;
pub mod fake_replies;
pub mod ids;
pub mod ip_block;
pub mod login_monitor;
pub mod scan;
pub mod sniffer;
pub mod tcp;
pub mod xmas_block;

use crate::event::Alert;
use crate::packet::Ipv4;
use crate::window::Ms;
use serde_json::{Map, Value};

/// Which way a packet travels through the µmbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Arrived on `a`, from the device, on its way to the uplink.
    FromDevice,
    /// Arrived on `b`, from the uplink, on its way to the device.
    ToDevice,
    /// A copy on a tap interface: the direction is not known.
    Copy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Drop,
}

/// Which way an injected packet goes, relative to the packet it responds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    /// Back out of the interface the packet arrived on, to its sender (Ethernet source and
    /// destination swapped).
    Sender,
    /// Out of the other interface, as if the packet had gone on (Ethernet header kept).
    Onward,
}

/// An IPv4 packet (no Ethernet header) a function wants sent in response to the packet
/// it is looking at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inject {
    pub toward: Toward,
    pub packet: Vec<u8>,
}

/// Where a function is meant to sit, as the catalog's `mode` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Inline,
    Tap,
}

/// Alerts of one kind about one source are not repeated within this hold-off, unless a
/// function sets its own (its detection window).
pub const DEFAULT_HOLDOFF: Ms = 10_000;

/// At most this many sources (or flows, or groups) are tracked per table.
pub const MAX_TRACKED: usize = 16_384;

pub trait Function {
    /// Looks at one IPv4 packet at time `now`.
    fn packet(&mut self, now: Ms, dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict;

    /// A frame that is not IPv4 (ARP, IPv6, ...): forwarded unless a function says so.
    fn non_ipv4(&mut self) -> Verdict {
        Verdict::Forward
    }

    /// Packets to inject in response to the packet just given to [`Function::packet`],
    /// moved into `out`. The engine takes them after each packet; on a tap they are
    /// discarded (a tap never sends).
    fn take_injected(&mut self, _out: &mut Vec<Inject>) {}

    /// Housekeeping (expiring state); called about once a second.
    fn tick(&mut self, _now: Ms) {}

    /// Function-specific fields of a stats line. `periodic` is true for the line written
    /// at the end of each stats interval (the sniffer then resets its per-peer counts).
    fn stats(&mut self, _out: &mut Map<String, Value>, _periodic: bool) {}

    /// Lines for the log (stderr), taken after each packet.
    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// How long an alert of one kind about one source is held off after it fired.
    fn holdoff(&self) -> Ms {
        DEFAULT_HOLDOFF
    }
}
