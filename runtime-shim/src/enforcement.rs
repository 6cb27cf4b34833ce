//! The enforcement verdict: per device, whether the node really holds the posture the
//! device's state asks for. One value, computed by the run loop from a fresh look at the
//! node (`Node::check`), and shown as it is by `status` (text and JSON), the API and the
//! log, so none of them can claim protection the node does not give
//! (`docs/runtime.md`, "Enforcement"). Next to it, what the posture in force lets
//! through ([`crossing`]): claimed only for a posture the node is seen to hold.

use crate::bundle::Bundle;
use crate::manifest::{Builtin, Chain, UmboxMode};
use kalki_model::contract::{self, Contract, FlowProto, Openness, Starter};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Whether a device's posture is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Enforcement {
    /// The switch holds the base flows and exactly the device's flows for its state, its
    /// ports are there with the bundle's numbers, every µmbox of the state runs and is
    /// plugged in, and the node's own network stack is off every interface involved.
    Enforced,
    /// The state's posture could not be applied; what is in force instead (its most
    /// restrictive state, or no flows: every packet of it dropped) is, in full.
    FailedClosed {
        /// The state whose posture is installed, or `no flows`.
        installed: String,
        reason: String,
    },
    /// Neither the posture nor a fail-closed one is in force, as far as the node can be
    /// seen: the switch or the engine unreachable, flows missing, a µmbox down.
    NotEnforced { reason: String },
    /// The device is off the switch (a sensor behind a hub; its type has no chain):
    /// the node holds nothing for it and protects none of its traffic. Its states,
    /// rules and commands work as for any device.
    OffSwitch,
}

impl Enforcement {
    /// The word `status` prints in its table.
    pub fn label(&self) -> &'static str {
        match self {
            Enforcement::Enforced => "enforced",
            Enforcement::FailedClosed { .. } => "failed-closed",
            Enforcement::NotEnforced { .. } => "NOT-ENFORCED",
            Enforcement::OffSwitch => "off-switch",
        }
    }

    /// The verdict's name as `status --json` spells it (`verdict`).
    pub fn verdict(&self) -> &'static str {
        match self {
            Enforcement::Enforced => "enforced",
            Enforcement::FailedClosed { .. } => "failed_closed",
            Enforcement::NotEnforced { .. } => "not_enforced",
            Enforcement::OffSwitch => "off_switch",
        }
    }

    pub fn is_enforced(&self) -> bool {
        matches!(self, Enforcement::Enforced)
    }
}

/// `enforced`, `FAILED CLOSED (installed X): WHY` or `NOT ENFORCED: WHY`.
impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Enforcement::Enforced => write!(f, "enforced"),
            Enforcement::FailedClosed { installed, reason } => {
                write!(f, "FAILED CLOSED (installed {installed}): {reason}")
            }
            Enforcement::NotEnforced { reason } => write!(f, "NOT ENFORCED: {reason}"),
            Enforcement::OffSwitch => write!(
                f,
                "off the switch: nothing of it is on the switch, and nothing protects its traffic"
            ),
        }
    }
}

/// The worst verdict among `verdicts`, as `kalki-shim status` exits with it: `None` when
/// every device is enforced or off the switch (the node owes it nothing).
pub fn worst<'a>(verdicts: impl IntoIterator<Item = &'a Enforcement>) -> Option<&'a Enforcement> {
    let rank = |e: &Enforcement| match e {
        Enforcement::Enforced | Enforcement::OffSwitch => 0,
        Enforcement::FailedClosed { .. } => 1,
        Enforcement::NotEnforced { .. } => 2,
    };
    verdicts
        .into_iter()
        .filter(|e| rank(e) > 0)
        .max_by_key(|e| rank(e))
}

/// The verdict of a device the bundle puts off the switch (no `net`): `off switch`,
/// whatever the node holds, since nothing of it is there to hold. `None` for a device on
/// the switch, whose verdict only a look at the node can give (`Node::check`).
pub fn off_switch(bundle: &Bundle, device: usize) -> Option<Enforcement> {
    bundle
        .manifest
        .devices
        .get(device)
        .is_some_and(|d| !d.on_switch())
        .then_some(Enforcement::OffSwitch)
}

/// A device's verdict from a look at the node: `check` is `Node::check` of the posture
/// it should have (its state's, or what it failed closed to), `closed` what it failed
/// closed to and why, if it did. One definition for `run` and the node agent.
pub fn verdict(check: Result<(), String>, closed: Option<(String, &str)>) -> Enforcement {
    match (check, closed) {
        (Ok(()), None) => Enforcement::Enforced,
        (Ok(()), Some((installed, reason))) => Enforcement::FailedClosed {
            installed,
            reason: reason.to_string(),
        },
        (Err(reason), None) => Enforcement::NotEnforced { reason },
        (Err(why), Some((_, reason))) => Enforcement::NotEnforced {
            reason: format!("{why} (failing closed, after: {reason})"),
        },
    }
}

/// What a device's posture lets through between it and the uplink: the summary of the
/// contracts of its chain's inline µmboxes (`kalki_model::contract::summary`; taps stop
/// nothing), as one line and cell by cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crossing {
    /// `Summary::line`: `nothing crosses`, `everything crosses`, or what crosses and
    /// what needs credentials.
    pub line: String,
    /// Every kind of flow, neighbouring ports treated alike merged.
    pub cells: Vec<CrossingCell>,
    /// Whether ARP crosses (the switch forwards it around every chain but `drop`).
    #[serde(default)]
    pub arp: bool,
}

/// Flows of one protocol, a port range (TCP and UDP) and one starting side, and how far
/// they get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossingCell {
    /// `tcp`, `udp`, `icmp` or `other` (any other IPv4 protocol).
    pub proto: FlowProto,
    /// `[lo, hi]`, both included; TCP and UDP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<[u16; 2]>,
    /// The side that sends the flow's first packet: `device` or `uplink`.
    pub from: Starter,
    pub passage: CellPassage,
}

/// How far a cell's flows get through the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellPassage {
    /// They cross, both ways.
    Open,
    /// They cross only with valid credentials.
    Authenticated,
    /// Nothing of them crosses.
    Closed,
}

/// The inline contracts of a device's state's chain, device side first. A container the
/// bundle does not hold is left out: it would only make the chain look more open.
fn chain_contracts(bundle: &Bundle, device: usize, state: usize) -> Vec<Contract> {
    let Some(st) = bundle
        .manifest
        .devices
        .get(device)
        .and_then(|d| d.states.get(state))
        .and_then(|s| s.switch.as_ref())
    else {
        return vec![];
    };
    match &st.chain {
        Chain::Builtin(Builtin::Pass) => vec![],
        Chain::Builtin(Builtin::Drop) => vec![Contract::drop()],
        Chain::Umboxes(_) => st
            .containers
            .iter()
            .filter_map(|p| bundle.containers.get(p))
            .filter(|c| c.mode == UmboxMode::Inline)
            .map(|c| c.contract.clone())
            .collect(),
    }
}

/// What the posture `installed` lets through for `device`: a state's chain (`Some`
/// state index), or no flows at all (`None`: nothing crosses). Only for a posture the
/// node is seen to hold (`enforced`, or `failed closed` with what was installed); a
/// device `not enforced` gets no crossing, since nothing is known of what holds.
pub fn crossing(bundle: &Bundle, device: usize, installed: Option<usize>) -> Crossing {
    let contracts = match installed {
        Some(state) => chain_contracts(bundle, device, state),
        None => vec![Contract::drop()],
    };
    // The switch forwards ARP around every chain but `drop` (and no flows pass nothing).
    let arp = installed.is_some_and(|state| {
        bundle
            .manifest
            .devices
            .get(device)
            .and_then(|d| d.states.get(state))
            .and_then(|s| s.switch.as_ref())
            .is_some_and(|st| st.chain != Chain::Builtin(Builtin::Drop))
    });
    let chain: Vec<&Contract> = contracts.iter().collect();
    let summary = contract::summary(&chain, arp);
    let cells = summary
        .cells
        .iter()
        .map(|(cell, openness)| CrossingCell {
            proto: cell.proto,
            ports: matches!(cell.proto, FlowProto::Tcp | FlowProto::Udp)
                .then_some([cell.ports.0, cell.ports.1]),
            from: cell.from,
            passage: match openness {
                Openness::Open => CellPassage::Open,
                Openness::Authenticated => CellPassage::Authenticated,
                Openness::Closed => CellPassage::Closed,
            },
        })
        .collect();
    Crossing {
        line: summary.line(),
        cells,
        arp: summary.arp,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn verdicts_on_the_wire() {
        let cases = [
            (Enforcement::Enforced, r#"{"verdict":"enforced"}"#),
            (
                Enforcement::FailedClosed {
                    installed: "attack".into(),
                    reason: "µmbox `x` stopped".into(),
                },
                r#"{"verdict":"failed_closed","installed":"attack","reason":"µmbox `x` stopped"}"#,
            ),
            (
                Enforcement::NotEnforced {
                    reason: "Open vSwitch cannot be read".into(),
                },
                r#"{"verdict":"not_enforced","reason":"Open vSwitch cannot be read"}"#,
            ),
            (Enforcement::OffSwitch, r#"{"verdict":"off_switch"}"#),
        ];
        for (e, json) in cases {
            assert_eq!(serde_json::to_string(&e).unwrap(), json);
            assert_eq!(serde_json::from_str::<Enforcement>(json).unwrap(), e);
        }
    }

    #[test]
    fn the_worst_verdict_decides() {
        let ok = Enforcement::Enforced;
        let closed = Enforcement::FailedClosed {
            installed: "no flows".into(),
            reason: "r".into(),
        };
        let not = Enforcement::NotEnforced { reason: "r".into() };
        assert_eq!(worst([&ok, &ok]), None);
        assert_eq!(worst([&ok, &closed]), Some(&closed));
        assert_eq!(worst([&not, &closed, &ok]), Some(&not));
        // Off the switch is neither a failure nor protection: it never sets the exit.
        let off = Enforcement::OffSwitch;
        assert_eq!(worst([&ok, &off]), None);
        assert_eq!(worst([&off, &closed]), Some(&closed));
        assert!(!off.is_enforced());
    }
}
