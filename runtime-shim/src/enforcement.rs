//! The enforcement verdict: per device, whether the node really holds the posture the
//! device's state asks for. One value, computed by the run loop from a fresh look at the
//! node (`Node::check`), and shown as it is by `status` (text and JSON), the API and the
//! log, so none of them can claim protection the node does not give
//! (`docs/runtime.md`, "Enforcement").

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
}

impl Enforcement {
    /// The word `status` prints in its table.
    pub fn label(&self) -> &'static str {
        match self {
            Enforcement::Enforced => "enforced",
            Enforcement::FailedClosed { .. } => "failed-closed",
            Enforcement::NotEnforced { .. } => "NOT-ENFORCED",
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
        }
    }
}

/// The worst verdict among `verdicts`, as `kalki-shim status` exits with it: `None` when
/// every device is enforced.
pub fn worst<'a>(verdicts: impl IntoIterator<Item = &'a Enforcement>) -> Option<&'a Enforcement> {
    let rank = |e: &Enforcement| match e {
        Enforcement::Enforced => 0,
        Enforcement::FailedClosed { .. } => 1,
        Enforcement::NotEnforced { .. } => 2,
    };
    verdicts
        .into_iter()
        .filter(|e| !e.is_enforced())
        .max_by_key(|e| rank(e))
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
    }
}
