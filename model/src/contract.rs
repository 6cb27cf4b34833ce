//! Traffic contracts: what a µmbox does to the traffic that crosses it, one definition for
//! the compiler (which writes them into the bundle and proves traffic assertions over
//! them), the shim (whose `status` shows what a device's current chain lets through) and
//! the tests that hold the real image to them (`docs/language.md` §4.1).
//!
//! A contract is a list of clauses; the first clause whose class matches a flow decides
//! what happens to the whole flow (every packet of it, both ways). The compiler only
//! accepts total contracts: the last clause matches every flow.
//!
//! A *flow* is a conversation between the device and a peer on the uplink side, named
//! by its IPv4 protocol, the port its first packet is sent to (TCP and UDP) and the side
//! that sends that first packet.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a µmbox does with a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Treatment {
    /// Forwarded unchanged, both ways.
    Pass,
    /// Nothing of it goes on, either way.
    Drop,
    /// The µmbox replies in the other side's place; nothing goes on.
    Answer,
    /// Requests go on only with valid credentials; the rest are answered with a
    /// challenge by the µmbox.
    Authenticate,
}

/// The side that sends a flow's first packet.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Starter {
    Device,
    Uplink,
}

/// The protocol part of a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// Every frame, IPv4 or not.
    All,
    /// Every IPv4 packet.
    Ip,
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    pub fn parse(word: &str) -> Option<Proto> {
        Some(match word {
            "all" => Proto::All,
            "ip" => Proto::Ip,
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::All => "all",
            Proto::Ip => "ip",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }

    /// Whether ports may be given with it.
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }
}

/// Ports `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// A set of flows: a protocol, and for TCP and UDP the ports (none: every port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
pub struct Class {
    pub proto: Proto,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
}

/// One clause: `TREATMENT CLASS [from STARTER]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
pub struct Clause {
    pub treat: Treatment,
    pub class: Class,
    /// `None`: whichever side starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Starter>,
}

/// A µmbox's contract, its parameters filled in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
pub struct Contract {
    pub clauses: Vec<Clause>,
    /// What happens to the device's traffic while the µmbox is down: `drop` for an inline
    /// µmbox (the switch outputs to a missing port), `pass` for a tap (the original
    /// goes on unwatched).
    pub on_failure: Treatment,
}

/// The IPv4 protocol of a flow.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FlowProto {
    Tcp,
    Udp,
    Icmp,
    /// Any other IPv4 protocol (GRE, SCTP, ...).
    Other,
}

impl FlowProto {
    /// The IPv4 protocol number of the representative packet.
    pub fn number(self) -> u8 {
        match self {
            FlowProto::Tcp => 6,
            FlowProto::Udp => 17,
            FlowProto::Icmp => 1,
            FlowProto::Other => 47,
        }
    }
}

/// One flow: see the module's documentation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
pub struct Flow {
    pub proto: FlowProto,
    /// The port the first packet is sent to (TCP and UDP; 0 otherwise).
    pub port: u16,
    pub from: Starter,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl Class {
    pub fn any() -> Class {
        Class {
            proto: Proto::All,
            ports: Vec::new(),
        }
    }

    pub fn matches(&self, f: &Flow) -> bool {
        let proto = match self.proto {
            Proto::All | Proto::Ip => true,
            Proto::Tcp => f.proto == FlowProto::Tcp,
            Proto::Udp => f.proto == FlowProto::Udp,
            Proto::Icmp => f.proto == FlowProto::Icmp,
        };
        proto && (self.ports.is_empty() || self.ports.iter().any(|r| r.contains(f.port)))
    }

    /// Whether it matches every flow.
    pub fn is_everything(&self) -> bool {
        matches!(self.proto, Proto::All | Proto::Ip) && self.ports.is_empty()
    }
}

impl Clause {
    pub fn matches(&self, f: &Flow) -> bool {
        self.from.is_none_or(|s| s == f.from) && self.class.matches(f)
    }
}

impl Contract {
    /// The built-in chain `pass`, and a tap: everything goes on.
    pub fn pass() -> Contract {
        Contract {
            clauses: vec![Clause {
                treat: Treatment::Pass,
                class: Class::any(),
                from: None,
            }],
            on_failure: Treatment::Pass,
        }
    }

    /// The built-in chain `drop`: nothing goes on.
    pub fn drop() -> Contract {
        Contract {
            clauses: vec![Clause {
                treat: Treatment::Drop,
                class: Class::any(),
                from: None,
            }],
            on_failure: Treatment::Drop,
        }
    }

    /// Whether the last clause matches every flow (the compiler accepts no other).
    pub fn is_total(&self) -> bool {
        self.clauses
            .last()
            .is_some_and(|c| c.from.is_none() && c.class.is_everything())
    }

    /// The clause that decides `f`, and its index.
    pub fn decide(&self, f: &Flow) -> Option<(usize, &Clause)> {
        self.clauses.iter().enumerate().find(|(_, c)| c.matches(f))
    }

    /// What happens to `f`. A flow no clause matches (only in a contract that is not
    /// total) is dropped: the runtime never assumes more than a contract says.
    pub fn treat(&self, f: &Flow) -> Treatment {
        self.decide(f).map_or(Treatment::Drop, |(_, c)| c.treat)
    }
}

/// How far a flow gets through a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passage {
    /// It reaches the other side; `authenticated` lists the chain positions that let it
    /// through only with credentials.
    Crosses { authenticated: Vec<usize> },
    /// The µmbox at chain position `at` drops or answers it.
    Stopped { at: usize, by: Treatment },
}

/// How open a passage is, for comparing two states: closed < authenticated < open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Openness {
    Closed,
    Authenticated,
    Open,
}

impl Passage {
    pub fn openness(&self) -> Openness {
        match self {
            Passage::Stopped { .. } => Openness::Closed,
            Passage::Crosses { authenticated } if authenticated.is_empty() => Openness::Open,
            Passage::Crosses { .. } => Openness::Authenticated,
        }
    }
}

/// The passage of `f` through the inline µmboxes of a chain, given device side first.
/// A flow the uplink starts meets them from the last to the first.
pub fn passage(chain: &[&Contract], f: &Flow) -> Passage {
    let order: Vec<usize> = match f.from {
        Starter::Device => (0..chain.len()).collect(),
        Starter::Uplink => (0..chain.len()).rev().collect(),
    };
    let mut authenticated = Vec::new();
    for i in order {
        match chain[i].treat(f) {
            Treatment::Pass => {}
            Treatment::Authenticate => authenticated.push(i),
            by @ (Treatment::Drop | Treatment::Answer) => return Passage::Stopped { at: i, by },
        }
    }
    authenticated.sort_unstable();
    Passage::Crosses { authenticated }
}

/// A set of flows every given class treats alike: one protocol, a port range (TCP and
/// UDP), one starter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cell {
    pub proto: FlowProto,
    pub ports: (u16, u16),
    pub from: Starter,
}

impl Cell {
    /// The flow that stands for the cell: its lowest port (1 rather than 0 where it can).
    pub fn sample(&self) -> Flow {
        let (lo, hi) = self.ports;
        let port = if lo == 0 && hi > 0 { 1 } else { lo };
        Flow {
            proto: self.proto,
            port,
            from: self.from,
        }
    }
}

/// Cuts the flow space into cells no class in `classes` splits: every flow of a cell is
/// matched by the same classes, so deciding one sample decides the cell for any contract
/// built of them.
pub fn cells<'a>(classes: impl IntoIterator<Item = &'a Class>) -> Vec<Cell> {
    let mut cuts = [vec![0u32, 65_536], vec![0u32, 65_536]];
    for c in classes {
        let slot = match c.proto {
            Proto::Tcp => 0,
            Proto::Udp => 1,
            _ => continue,
        };
        for r in &c.ports {
            cuts[slot].push(u32::from(r.lo));
            cuts[slot].push(u32::from(r.hi) + 1);
        }
    }
    let mut out = Vec::new();
    for from in [Starter::Uplink, Starter::Device] {
        for (slot, proto) in [(0, FlowProto::Tcp), (1, FlowProto::Udp)] {
            let mut c = cuts[slot].clone();
            c.sort_unstable();
            c.dedup();
            for w in c.windows(2) {
                if let (Ok(lo), Ok(hi)) = (u16::try_from(w[0]), u16::try_from(w[1] - 1)) {
                    out.push(Cell {
                        proto,
                        ports: (lo, hi),
                        from,
                    });
                }
            }
        }
        for proto in [FlowProto::Icmp, FlowProto::Other] {
            out.push(Cell {
                proto,
                ports: (0, 0),
                from,
            });
        }
    }
    out
}

/// What a chain lets through, cell by cell, with neighbouring cells of one protocol,
/// starter and openness merged: the text `kalki-shim status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub cells: Vec<(Cell, Openness)>,
    /// Whether ARP crosses: the switch forwards it around every chain but `drop`.
    pub arp: bool,
}

/// The summary of a chain's inline contracts (device side first); `arp`: whether the
/// switch forwards ARP for it (every chain but the built-in `drop`).
pub fn summary(chain: &[&Contract], arp: bool) -> Summary {
    let classes: Vec<&Class> = chain
        .iter()
        .flat_map(|c| c.clauses.iter().map(|cl| &cl.class))
        .collect();
    let mut out: Vec<(Cell, Openness)> = Vec::new();
    for cell in cells(classes) {
        let o = passage(chain, &cell.sample()).openness();
        match out.last_mut() {
            Some((last, lo))
                if *lo == o
                    && last.proto == cell.proto
                    && last.from == cell.from
                    && u32::from(last.ports.1) + 1 == u32::from(cell.ports.0) =>
            {
                last.ports.1 = cell.ports.1;
            }
            _ => out.push((cell, o)),
        }
    }
    Summary { cells: out, arp }
}

impl Summary {
    /// Whether nothing crosses, either way, ARP included.
    pub fn is_closed(&self) -> bool {
        !self.arp && self.cells.iter().all(|(_, o)| *o == Openness::Closed)
    }

    /// Whether everything crosses, openly.
    pub fn is_open(&self) -> bool {
        self.cells.iter().all(|(_, o)| *o == Openness::Open)
    }

    /// One line: `everything`, `nothing`, or what crosses and what needs credentials.
    pub fn line(&self) -> String {
        if self.is_open() {
            return "everything crosses".into();
        }
        if self.cells.iter().all(|(_, o)| *o == Openness::Closed) {
            return if self.arp {
                "only ARP crosses (forwarded around the µmboxes)".into()
            } else {
                "nothing crosses".into()
            };
        }
        let list = |o: Openness| -> Vec<String> {
            self.cells
                .iter()
                .filter(|(_, x)| *x == o)
                .map(|(c, _)| c.to_string())
                .collect()
        };
        let (open, auth, closed) = (
            list(Openness::Open),
            list(Openness::Authenticated),
            list(Openness::Closed),
        );
        let mut parts = Vec::new();
        if !auth.is_empty() {
            parts.push(format!("with credentials only: {}", auth.join(", ")));
        }
        let all = if auth.is_empty() {
            "everything"
        } else {
            "everything else"
        };
        if closed.is_empty() {
            parts.push(format!("{all} crosses"));
        } else if closed.len() <= open.len() {
            parts.push(format!("{all} crosses but {}", closed.join(", ")));
        } else if open.is_empty() {
            parts.push("nothing else crosses".into());
        } else {
            parts.push(format!("only {} cross openly", open.join(", ")));
        }
        parts.join("; ")
    }
}

impl fmt::Display for Treatment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Treatment::Pass => "pass",
            Treatment::Drop => "drop",
            Treatment::Answer => "answer",
            Treatment::Authenticate => "authenticate",
        })
    }
}

impl fmt::Display for Starter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Starter::Device => "device",
            Starter::Uplink => "uplink",
        })
    }
}

fn write_ranges(f: &mut fmt::Formatter<'_>, ports: &[PortRange]) -> fmt::Result {
    for (i, r) in ports.iter().enumerate() {
        let sep = if i == 0 { " " } else { ", " };
        if r.lo == r.hi {
            write!(f, "{sep}{}", r.lo)?;
        } else {
            write!(f, "{sep}{}..{}", r.lo, r.hi)?;
        }
    }
    Ok(())
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.proto.as_str())?;
        write_ranges(f, &self.ports)
    }
}

/// In the policy's syntax: `answer tcp 80, 443 from uplink`.
impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.treat, self.class)?;
        if let Some(s) = self.from {
            write!(f, " from {s}")?;
        }
        Ok(())
    }
}

/// `tcp to port 23, started by the uplink side`.
impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            FlowProto::Tcp => write!(f, "tcp to port {}", self.port)?,
            FlowProto::Udp => write!(f, "udp to port {}", self.port)?,
            FlowProto::Icmp => f.write_str("icmp")?,
            FlowProto::Other => write!(f, "ip protocol {}", self.proto.number())?,
        }
        write!(f, ", started by the {} side", self.from)
    }
}

/// A cell as text: `tcp 1..22 from uplink`.
impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            FlowProto::Tcp | FlowProto::Udp => {
                let p = if self.proto == FlowProto::Tcp {
                    "tcp"
                } else {
                    "udp"
                };
                let (lo, hi) = self.ports;
                if (lo, hi) == (0, 65_535) {
                    write!(f, "{p}")?;
                } else if lo == hi {
                    write!(f, "{p} {lo}")?;
                } else {
                    write!(f, "{p} {lo}..{hi}")?;
                }
            }
            FlowProto::Icmp => f.write_str("icmp")?,
            FlowProto::Other => f.write_str("other ip")?,
        }
        write!(f, " from {}", self.from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clause(
        treat: Treatment,
        proto: Proto,
        ports: &[(u16, u16)],
        from: Option<Starter>,
    ) -> Clause {
        Clause {
            treat,
            class: Class {
                proto,
                ports: ports.iter().map(|&(lo, hi)| PortRange { lo, hi }).collect(),
            },
            from,
        }
    }

    fn flow(proto: FlowProto, port: u16, from: Starter) -> Flow {
        Flow { proto, port, from }
    }

    #[test]
    fn the_first_matching_clause_decides() {
        let c = Contract {
            clauses: vec![
                clause(
                    Treatment::Answer,
                    Proto::Tcp,
                    &[(80, 80)],
                    Some(Starter::Uplink),
                ),
                clause(Treatment::Drop, Proto::All, &[], None),
            ],
            on_failure: Treatment::Drop,
        };
        assert!(c.is_total());
        assert_eq!(
            c.treat(&flow(FlowProto::Tcp, 80, Starter::Uplink)),
            Treatment::Answer
        );
        assert_eq!(
            c.treat(&flow(FlowProto::Tcp, 80, Starter::Device)),
            Treatment::Drop
        );
        assert_eq!(
            c.treat(&flow(FlowProto::Tcp, 81, Starter::Uplink)),
            Treatment::Drop
        );
        assert_eq!(
            c.treat(&flow(FlowProto::Udp, 80, Starter::Uplink)),
            Treatment::Drop
        );
        let partial = Contract {
            clauses: vec![clause(Treatment::Pass, Proto::Tcp, &[], None)],
            on_failure: Treatment::Drop,
        };
        assert!(!partial.is_total());
        assert_eq!(
            partial.treat(&flow(FlowProto::Udp, 53, Starter::Device)),
            Treatment::Drop,
            "an unmatched flow is never assumed to pass"
        );
    }

    #[test]
    fn a_chain_is_met_from_the_starting_side() {
        let auth = Contract {
            clauses: vec![
                clause(
                    Treatment::Authenticate,
                    Proto::Tcp,
                    &[(80, 80)],
                    Some(Starter::Uplink),
                ),
                clause(Treatment::Pass, Proto::All, &[], None),
            ],
            on_failure: Treatment::Drop,
        };
        let dropper = Contract {
            clauses: vec![
                clause(Treatment::Drop, Proto::Tcp, &[(80, 80)], None),
                clause(Treatment::Pass, Proto::All, &[], None),
            ],
            on_failure: Treatment::Drop,
        };
        let chain = [&dropper, &auth];
        assert_eq!(
            passage(&chain, &flow(FlowProto::Tcp, 80, Starter::Uplink)),
            Passage::Stopped {
                at: 0,
                by: Treatment::Drop
            },
            "the uplink's flow meets the proxy first, then the dropper"
        );
        let open = [&auth];
        let p = passage(&open, &flow(FlowProto::Tcp, 80, Starter::Uplink));
        assert_eq!(
            p,
            Passage::Crosses {
                authenticated: vec![0]
            }
        );
        assert_eq!(p.openness(), Openness::Authenticated);
        assert_eq!(
            passage(&[], &flow(FlowProto::Icmp, 0, Starter::Device)).openness(),
            Openness::Open
        );
    }

    #[test]
    fn a_summary_merges_cells_and_says_what_crosses() {
        let fake = Contract {
            clauses: vec![
                clause(
                    Treatment::Answer,
                    Proto::Tcp,
                    &[(80, 80), (8080, 8080)],
                    Some(Starter::Uplink),
                ),
                clause(Treatment::Drop, Proto::All, &[], None),
            ],
            on_failure: Treatment::Drop,
        };
        assert_eq!(
            summary(&[&fake], true).line(),
            "only ARP crosses (forwarded around the µmboxes)"
        );
        assert_eq!(summary(&[], true).line(), "everything crosses");
        assert_eq!(
            summary(&[&Contract::drop()], false).line(),
            "nothing crosses"
        );
        let auth = Contract {
            clauses: vec![
                clause(
                    Treatment::Authenticate,
                    Proto::Tcp,
                    &[(9010, 9010)],
                    Some(Starter::Uplink),
                ),
                clause(Treatment::Pass, Proto::All, &[], None),
            ],
            on_failure: Treatment::Drop,
        };
        let s = summary(&[&auth], true);
        assert_eq!(
            s.line(),
            "with credentials only: tcp 9010 from uplink; everything else crosses"
        );
        let telnet = Contract {
            clauses: vec![
                clause(Treatment::Drop, Proto::Tcp, &[(23, 23)], None),
                clause(Treatment::Pass, Proto::All, &[], None),
            ],
            on_failure: Treatment::Drop,
        };
        assert_eq!(
            summary(&[&telnet], true).line(),
            "everything crosses but tcp 23 from uplink, tcp 23 from device"
        );
    }

    #[test]
    fn cells_are_not_split_by_any_class() {
        let classes = [
            Class {
                proto: Proto::Tcp,
                ports: vec![
                    PortRange { lo: 80, hi: 80 },
                    PortRange { lo: 8000, hi: 8080 },
                ],
            },
            Class {
                proto: Proto::Udp,
                ports: vec![PortRange { lo: 0, hi: 65_535 }],
            },
        ];
        let cells = cells(&classes);
        let tcp: Vec<(u16, u16)> = cells
            .iter()
            .filter(|c| c.proto == FlowProto::Tcp && c.from == Starter::Uplink)
            .map(|c| c.ports)
            .collect();
        assert_eq!(
            tcp,
            vec![(0, 79), (80, 80), (81, 7999), (8000, 8080), (8081, 65_535)]
        );
        let udp = cells.iter().filter(|c| c.proto == FlowProto::Udp).count();
        assert_eq!(udp, 2, "one cell per starter");
        // Every port of every cell is matched alike by every class.
        for cell in &cells {
            for port in [cell.ports.0, cell.ports.1] {
                let f = Flow {
                    port,
                    ..cell.sample()
                };
                for c in &classes {
                    assert_eq!(c.matches(&f), c.matches(&cell.sample()), "{cell}");
                }
            }
        }
    }
}
