//! Reads `kalkic` rule sets (`flows/**.ofctl`) into [`FlowMod`]s. Pure: text in, data
//! out.
//!
//! The accepted syntax is exactly what the compiler emits, which it prints through
//! [`FlowMod`]'s `Display` (`compiler/src/codegen/openflow.rs`), one flow per line:
//!
//! ```text
//! table=N,priority=N,cookie=0x..,[in_port=N],[vlan_tci=0x0000/0x1fff],[ip|arp],
//!   [dl_src=MAC],[nw_src=IP],[nw_dst=IP],[arp_spa=IP],[arp_tpa=IP],[arp_sha=MAC]
//!   actions=drop|output:N,...|NORMAL|goto_table:N
//! ```
//!
//! Fields may come in any order; `table`, `priority` and `cookie` default to 0, 32768
//! and 0 as in `ovs-ofctl`; numbers are decimal or `0x` hexadecimal; blank lines and `#`
//! comments are skipped. Anything else (other fields, masks, port names, other actions)
//! is refused with an error naming the line, the column and the token, so a rule set
//! the runtime cannot load exactly is never loaded approximately.

use crate::flow::{Actions, EthType, FlowMod, Mac, Match, Port, MAX_PORT};
use std::fmt;
use std::net::Ipv4Addr;

/// Why one line of a rule set was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number within the text given to [`parse_rule_set`] (1 for
    /// [`parse_flow`]).
    pub line: usize,
    /// 1-based byte column of `token` in that line.
    pub column: usize,
    /// The offending token, shortened to 64 characters.
    pub token: String,
    pub kind: ParseErrorKind,
}

/// What is wrong with the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("a flow needs `actions=`")]
    MissingActions,
    #[error("unknown field; expected one of table, priority, cookie, in_port, vlan_tci, ip, arp, dl_src, nw_src, nw_dst, arp_spa, arp_tpa, arp_sha")]
    UnknownField,
    #[error("the field is given twice")]
    Duplicate,
    #[error("`ip` and `arp` exclude each other")]
    ConflictingProtocols,
    #[error("not a number in the range {min}..={max} (decimal, or hexadecimal with `0x`)")]
    BadNumber { min: u64, max: u64 },
    #[error("flow additions cannot use a cookie mask")]
    CookieMask,
    #[error("only `vlan_tci=0x0000/0x1fff` (untagged) is supported")]
    UnsupportedVlan,
    #[error("not an IPv4 address (dotted quad, no mask)")]
    BadIp,
    #[error("not an Ethernet address (six hexadecimal pairs separated by `:`, no mask)")]
    BadMac,
    #[error("`{field}` needs `{needs}` in the same flow")]
    MissingPrerequisite {
        field: &'static str,
        needs: &'static str,
    },
    #[error("unknown action; expected drop, output:N, NORMAL or goto_table:N")]
    UnknownAction,
    #[error("`drop` must be the only action")]
    DropNotAlone,
    #[error("`goto_table` must be the last action, and only one")]
    GotoNotLast,
    #[error("`goto_table` must go to a later table than this flow's table {table}")]
    GotoBackwards { table: u8 },
    #[error("empty field or action (two commas, or a trailing comma)")]
    Empty,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: `{}`: {}",
            self.line, self.column, self.token, self.kind
        )
    }
}

impl std::error::Error for ParseError {}

/// Every flow of a rule set, or every line's error (one per line, all lines checked).
pub fn parse_rule_set(text: &str) -> Result<Vec<FlowMod>, Vec<ParseError>> {
    let mut flows = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(f) => flows.push(f),
            Err(mut e) => {
                e.line = i + 1;
                errors.push(e);
            }
        }
    }
    if errors.is_empty() {
        Ok(flows)
    } else {
        Err(errors)
    }
}

/// One flow (one line, without its newline).
pub fn parse_flow(line: &str) -> Result<FlowMod, ParseError> {
    parse_line(line)
}

const MAX_TOKEN: usize = 64;

fn error(column: usize, token: &str, kind: ParseErrorKind) -> ParseError {
    let mut shown: String = token.chars().take(MAX_TOKEN).collect();
    if token.chars().nth(MAX_TOKEN).is_some() {
        shown.push('…');
    }
    ParseError {
        line: 1,
        column: column + 1,
        token: shown,
        kind,
    }
}

/// Comma-separated pieces of `s` (which starts at byte `base` of the line), with their
/// offsets.
fn pieces(s: &str, base: usize) -> impl Iterator<Item = (usize, &str)> {
    let mut at = base;
    s.split(',').map(move |p| {
        let start = at;
        at += p.len() + 1;
        (start, p)
    })
}

fn parse_line(line: &str) -> Result<FlowMod, ParseError> {
    // Leading blanks are allowed (as by ovs-ofctl); columns count from the line's start.
    let lead = line.len() - line.trim_start().len();
    let body = line.trim_end();
    let Some(split) = find_actions(body) else {
        return Err(error(
            lead,
            body.get(lead..).unwrap_or(""),
            ParseErrorKind::MissingActions,
        ));
    };
    let fields = body.get(lead..split).unwrap_or("");
    // The separator before `actions=` (a blank or a comma) is not part of any field.
    let fields = fields.trim_end_matches(|c: char| c == ',' || c.is_whitespace());
    let actions_at = split + "actions=".len();
    let actions = body.get(actions_at..).unwrap_or("");

    let mut table: Option<u8> = None;
    let mut priority: Option<u16> = None;
    let mut cookie: Option<u64> = None;
    let mut m = Match::default();
    let mut seen: Vec<&str> = Vec::new();
    // Where each field was, for prerequisite errors.
    let mut at_of: Vec<(&'static str, usize, &str)> = Vec::new();

    if !fields.is_empty() {
        for (col, tok) in pieces(fields, lead) {
            if tok.is_empty() {
                return Err(error(col, tok, ParseErrorKind::Empty));
            }
            let (key, value) = match tok.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (tok, None),
            };
            let key_name: &'static str = match (key, value) {
                ("ip", None) | ("arp", None) => "proto",
                ("table", Some(_)) => "table",
                ("priority", Some(_)) => "priority",
                ("cookie", Some(_)) => "cookie",
                ("in_port", Some(_)) => "in_port",
                ("vlan_tci", Some(_)) => "vlan_tci",
                ("dl_src", Some(_)) => "dl_src",
                ("nw_src", Some(_)) => "nw_src",
                ("nw_dst", Some(_)) => "nw_dst",
                ("arp_spa", Some(_)) => "arp_spa",
                ("arp_tpa", Some(_)) => "arp_tpa",
                ("arp_sha", Some(_)) => "arp_sha",
                _ => return Err(error(col, tok, ParseErrorKind::UnknownField)),
            };
            if seen.contains(&key_name) {
                let kind = if key_name == "proto" {
                    ParseErrorKind::ConflictingProtocols
                } else {
                    ParseErrorKind::Duplicate
                };
                return Err(error(col, tok, kind));
            }
            seen.push(key_name);
            at_of.push((key_name, col, tok));
            let v = value.unwrap_or("");
            let bad = |kind| error(col, tok, kind);
            match key_name {
                "proto" => {
                    m.eth_type = Some(if key == "ip" {
                        EthType::Ip
                    } else {
                        EthType::Arp
                    });
                }
                "table" => {
                    table = Some(number(v, 0, 254).ok_or_else(|| bad(bad_number(0, 254)))? as u8)
                }
                "priority" => {
                    priority = Some(
                        number(v, 0, u64::from(u16::MAX))
                            .ok_or_else(|| bad(bad_number(0, u64::from(u16::MAX))))?
                            as u16,
                    )
                }
                "cookie" => {
                    if v.contains('/') {
                        return Err(bad(ParseErrorKind::CookieMask));
                    }
                    cookie =
                        Some(number(v, 0, u64::MAX).ok_or_else(|| bad(bad_number(0, u64::MAX)))?);
                }
                "in_port" => m.in_port = Some(port_number(v).ok_or_else(|| bad(bad_port()))?),
                "vlan_tci" => {
                    let untagged = v.split_once('/').and_then(|(val, mask)| {
                        Some(number(val, 0, 0xffff)? == 0 && number(mask, 0, 0xffff)? == 0x1fff)
                    });
                    if untagged != Some(true) {
                        return Err(bad(ParseErrorKind::UnsupportedVlan));
                    }
                    m.untagged = true;
                }
                "dl_src" => m.dl_src = Some(mac(v).ok_or_else(|| bad(ParseErrorKind::BadMac))?),
                "arp_sha" => m.arp_sha = Some(mac(v).ok_or_else(|| bad(ParseErrorKind::BadMac))?),
                "nw_src" => m.nw_src = Some(ipv4(v).ok_or_else(|| bad(ParseErrorKind::BadIp))?),
                "nw_dst" => m.nw_dst = Some(ipv4(v).ok_or_else(|| bad(ParseErrorKind::BadIp))?),
                "arp_spa" => m.arp_spa = Some(ipv4(v).ok_or_else(|| bad(ParseErrorKind::BadIp))?),
                "arp_tpa" => m.arp_tpa = Some(ipv4(v).ok_or_else(|| bad(ParseErrorKind::BadIp))?),
                _ => return Err(bad(ParseErrorKind::UnknownField)),
            }
        }
    }
    // OpenFlow prerequisites: L3 fields only with their protocol.
    for (field, col, tok) in &at_of {
        let needs = match *field {
            "nw_src" | "nw_dst" => Some(EthType::Ip),
            "arp_spa" | "arp_tpa" | "arp_sha" => Some(EthType::Arp),
            _ => None,
        };
        if let Some(needs) = needs {
            if m.eth_type != Some(needs) {
                return Err(error(
                    *col,
                    tok,
                    ParseErrorKind::MissingPrerequisite {
                        field,
                        needs: if needs == EthType::Ip { "ip" } else { "arp" },
                    },
                ));
            }
        }
    }
    let table = table.unwrap_or(0);
    let actions = parse_actions(actions, actions_at, table)?;
    Ok(FlowMod {
        table,
        priority: priority.unwrap_or(FlowMod::DEFAULT_PRIORITY),
        cookie: cookie.unwrap_or(0),
        flags: 0,
        matches: m,
        actions,
    })
}

/// The byte offset of `actions=` when it starts the line or follows a blank or a comma.
fn find_actions(body: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = body.get(from..)?.find("actions=") {
        let at = from + i;
        let before = body.get(..at)?.chars().next_back();
        if before.is_none_or(|c| c == ',' || c.is_whitespace()) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn parse_actions(text: &str, base: usize, table: u8) -> Result<Actions, ParseError> {
    let mut actions = Actions::default();
    let mut dropped = false;
    if text.is_empty() {
        return Err(error(base, text, ParseErrorKind::Empty));
    }
    for (col, tok) in pieces(text, base) {
        if tok.is_empty() {
            return Err(error(col, tok, ParseErrorKind::Empty));
        }
        if dropped || (tok == "drop" && (!actions.is_drop())) {
            return Err(error(col, tok, ParseErrorKind::DropNotAlone));
        }
        if actions.goto_table.is_some() {
            return Err(error(col, tok, ParseErrorKind::GotoNotLast));
        }
        if tok == "drop" {
            dropped = true;
        } else if tok == "NORMAL" {
            actions.outputs.push(Port::Normal);
        } else if let Some(p) = tok.strip_prefix("output:") {
            let p = port_number(p).ok_or_else(|| error(col, tok, bad_port()))?;
            actions.outputs.push(Port::Number(p));
        } else if let Some(t) = tok.strip_prefix("goto_table:") {
            let t = number(t, 0, 254).ok_or_else(|| error(col, tok, bad_number(0, 254)))? as u8;
            if t <= table {
                return Err(error(col, tok, ParseErrorKind::GotoBackwards { table }));
            }
            actions.goto_table = Some(t);
        } else {
            return Err(error(col, tok, ParseErrorKind::UnknownAction));
        }
    }
    Ok(actions)
}

fn bad_number(min: u64, max: u64) -> ParseErrorKind {
    ParseErrorKind::BadNumber { min, max }
}

fn bad_port() -> ParseErrorKind {
    bad_number(1, u64::from(MAX_PORT))
}

/// A decimal or `0x` hexadecimal number within `min..=max`.
fn number(s: &str, min: u64, max: u64) -> Option<u64> {
    let n = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()?
        }
        Some(_) => return None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok()?,
        None => return None,
    };
    (min..=max).contains(&n).then_some(n)
}

fn port_number(s: &str) -> Option<u32> {
    number(s, 1, u64::from(MAX_PORT)).map(|n| n as u32)
}

fn ipv4(s: &str) -> Option<Ipv4Addr> {
    // std's parser is strict: four decimal octets, no leading zeros, nothing else.
    s.parse().ok()
}

fn mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut out {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(Mac(out))
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Lines in the emitted syntax, with every field optional.
    pub(crate) fn any_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let ip = || {
            proptest::option::of(
                any::<[u8; 4]>().prop_map(|b| format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3])),
            )
        };
        let mac = || proptest::option::of(any::<[u8; 6]>().prop_map(|b| Mac(b).to_string()));
        (
            (
                0u8..4,
                any::<u16>(),
                any::<u64>(),
                proptest::option::of(1u32..=65279),
                any::<bool>(),
            ),
            (0u8..3, mac(), ip(), ip(), mac()),
            (
                proptest::collection::vec(
                    prop_oneof![
                        (1u32..=65279).prop_map(|p| format!("output:{p}")),
                        Just("NORMAL".to_string())
                    ],
                    0..4,
                ),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (table, prio, cookie, in_port, untagged),
                    (proto, dl_src, a, b, sha),
                    (outs, goto),
                )| {
                    let mut f = vec![
                        format!("table={table}"),
                        format!("priority={prio}"),
                        format!("cookie={cookie:#x}"),
                    ];
                    f.extend(in_port.map(|p| format!("in_port={p}")));
                    if untagged {
                        f.push("vlan_tci=0x0000/0x1fff".into());
                    }
                    match proto {
                        1 => f.push("ip".into()),
                        2 => f.push("arp".into()),
                        _ => {}
                    }
                    f.extend(dl_src.map(|m| format!("dl_src={m}")));
                    match proto {
                        1 => {
                            f.extend(a.map(|x| format!("nw_src={x}")));
                            f.extend(b.map(|x| format!("nw_dst={x}")));
                        }
                        2 => {
                            f.extend(a.map(|x| format!("arp_spa={x}")));
                            f.extend(b.map(|x| format!("arp_tpa={x}")));
                            f.extend(sha.map(|m| format!("arp_sha={m}")));
                        }
                        _ => {}
                    }
                    let mut acts = outs;
                    if goto {
                        acts.push(format!("goto_table:{}", table + 1));
                    }
                    if acts.is_empty() {
                        acts.push("drop".into());
                    }
                    format!("{} actions={}", f.join(","), acts.join(","))
                },
            )
    }

    fn err(line: &str) -> ParseError {
        parse_flow(line).expect_err(line)
    }

    #[test]
    fn base_set_line() {
        let line = "table=0,priority=1000,cookie=0x100000000000000,in_port=2,vlan_tci=0x0000/0x1fff,arp,dl_src=02:00:00:00:01:10,arp_spa=10.0.1.10,arp_sha=02:00:00:00:01:10 actions=goto_table:1";
        let f = parse_flow(line).unwrap();
        assert_eq!(f.table, 0);
        assert_eq!(f.priority, 1000);
        assert_eq!(f.cookie, 0x0100_0000_0000_0000);
        assert_eq!(f.matches.in_port, Some(2));
        assert!(f.matches.untagged);
        assert_eq!(f.matches.eth_type, Some(EthType::Arp));
        assert_eq!(f.matches.dl_src, Some(Mac([2, 0, 0, 0, 1, 0x10])));
        assert_eq!(f.matches.arp_spa, Some(Ipv4Addr::new(10, 0, 1, 10)));
        assert_eq!(f.matches.arp_sha, Some(Mac([2, 0, 0, 0, 1, 0x10])));
        assert_eq!(f.actions.goto_table, Some(1));
        assert_eq!(f.to_string(), line);
    }

    #[test]
    fn actions() {
        let f = parse_flow("table=1,priority=100,cookie=0x200000000010001,in_port=1,ip,nw_dst=10.0.1.10 actions=output:6,output:9,output:11").unwrap();
        assert_eq!(
            f.actions.outputs,
            vec![Port::Number(6), Port::Number(9), Port::Number(11)]
        );
        let f = parse_flow("table=0,priority=0,cookie=0x100000000000000 actions=NORMAL").unwrap();
        assert_eq!(f.actions.outputs, vec![Port::Normal]);
        let f = parse_flow("table=1,priority=0,cookie=0x100000000000000 actions=drop").unwrap();
        assert!(f.actions.is_drop());
        assert!(f.matches == Match::default());
    }

    #[test]
    fn defaults_and_order() {
        let f = parse_flow("in_port=3,ip actions=output:1").unwrap();
        assert_eq!((f.table, f.priority, f.cookie), (0, 0x8000, 0));
        let g = parse_flow("ip,in_port=3,table=0,actions=output:1").unwrap();
        assert_eq!(f, g);
        assert_eq!(
            parse_flow("actions=drop").unwrap().matches,
            Match::default()
        );
    }

    #[test]
    fn refusals_name_the_token() {
        let e = err("table=1,priority=100,cookie=0x1,in_port=2,tcp actions=drop");
        assert_eq!((e.column, e.token.as_str()), (43, "tcp"));
        assert_eq!(e.kind, ParseErrorKind::UnknownField);
        assert_eq!(
            e.to_string(),
            "line 1, column 43: `tcp`: unknown field; expected one of table, priority, cookie, in_port, vlan_tci, ip, arp, dl_src, nw_src, nw_dst, arp_spa, arp_tpa, arp_sha"
        );
        assert_eq!(err("in_port=LOCAL actions=drop").kind, bad_port());
        assert_eq!(err("in_port=0 actions=drop").kind, bad_port());
        assert_eq!(err("in_port=65280 actions=drop").kind, bad_port());
        assert_eq!(err("table=255 actions=drop").kind, bad_number(0, 254));
        assert_eq!(
            err("priority=65536 actions=drop").kind,
            bad_number(0, 65535)
        );
        assert_eq!(
            err("cookie=0x1/0xff actions=drop").kind,
            ParseErrorKind::CookieMask
        );
        assert_eq!(err("cookie=0x actions=drop").kind, bad_number(0, u64::MAX));
        assert_eq!(
            err("vlan_tci=0x1000/0x1000 actions=drop").kind,
            ParseErrorKind::UnsupportedVlan
        );
        assert_eq!(
            err("vlan_tci=0 actions=drop").kind,
            ParseErrorKind::UnsupportedVlan
        );
        assert_eq!(
            err("ip,nw_src=10.0.0.0/8 actions=drop").kind,
            ParseErrorKind::BadIp
        );
        assert_eq!(
            err("ip,nw_src=010.0.0.1 actions=drop").kind,
            ParseErrorKind::BadIp
        );
        assert_eq!(
            err("dl_src=02:00:00:00:01 actions=drop").kind,
            ParseErrorKind::BadMac
        );
        assert_eq!(
            err("dl_src=02:00:00:00:01:1 actions=drop").kind,
            ParseErrorKind::BadMac
        );
        assert_eq!(
            err("nw_src=10.0.0.1 actions=drop").kind,
            ParseErrorKind::MissingPrerequisite {
                field: "nw_src",
                needs: "ip"
            }
        );
        assert_eq!(
            err("ip,arp_tpa=10.0.0.1 actions=drop").kind,
            ParseErrorKind::MissingPrerequisite {
                field: "arp_tpa",
                needs: "arp"
            }
        );
        assert_eq!(
            err("ip,arp actions=drop").kind,
            ParseErrorKind::ConflictingProtocols
        );
        assert_eq!(
            err("ip,ip actions=drop").kind,
            ParseErrorKind::ConflictingProtocols
        );
        assert_eq!(
            err("in_port=1,in_port=2 actions=drop").kind,
            ParseErrorKind::Duplicate
        );
        assert_eq!(err("in_port=1").kind, ParseErrorKind::MissingActions);
        assert_eq!(
            err("in_port=1,,ip actions=drop").kind,
            ParseErrorKind::Empty
        );
        assert_eq!(err("in_port=1 actions=").kind, ParseErrorKind::Empty);
        assert_eq!(
            err("in_port=1 actions=output:1,").kind,
            ParseErrorKind::Empty
        );
        assert_eq!(
            err("actions=drop,output:1").kind,
            ParseErrorKind::DropNotAlone
        );
        assert_eq!(
            err("actions=output:1,drop").kind,
            ParseErrorKind::DropNotAlone
        );
        assert_eq!(err("actions=LOCAL").kind, ParseErrorKind::UnknownAction);
        assert_eq!(
            err("actions=resubmit(,1)").kind,
            ParseErrorKind::UnknownAction
        );
        assert_eq!(
            err("actions=goto_table:2,output:1").kind,
            ParseErrorKind::GotoNotLast
        );
        assert_eq!(
            err("table=1 actions=goto_table:1").kind,
            ParseErrorKind::GotoBackwards { table: 1 }
        );
        assert_eq!(err("xactions=drop").kind, ParseErrorKind::MissingActions);
    }

    #[test]
    fn rule_sets_collect_every_error() {
        let text = "# comment\n\nactions=drop\nbogus actions=drop\nin_port=1 actions=LOCAL\n";
        let errors = parse_rule_set(text).unwrap_err();
        assert_eq!(
            errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(parse_rule_set("").unwrap(), vec![]);
    }

    #[test]
    fn long_tokens_are_shortened() {
        let long = format!("{} actions=drop", "x".repeat(500));
        let e = err(&long);
        assert_eq!(e.token.chars().count(), MAX_TOKEN + 1);
    }
}
