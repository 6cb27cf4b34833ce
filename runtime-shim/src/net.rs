//! Links between Open vSwitch and a µmbox container: one veth pair per interface, the
//! host end named as the bundle says (`km<port>`), the other end created directly in the
//! container's network namespace under the name the µmbox expects (`a`, `b`, `tap`).
//! Transmit checksum offload is turned off on both ends: through the userspace datapath,
//! TCP across veth pairs fails without it (docs/design/openflow-pipeline.md).
//!
//! The node's own network stack is kept off every interface the switch uses (the uplink,
//! the device ports, the µmboxes' host ends: [`isolate`]). With the userspace datapath
//! the kernel still receives every frame that arrives on such an interface, so without
//! this a device could reach the node itself (its IPv6 link-local address, any of its
//! IPv4 addresses through ARP), and the node's router solicitations would reach the
//! devices. Inside the container IPv6 is off through the engine's sysctls.

use crate::cmd::{self, CmdError};
use std::time::Duration;

/// Why a container could not be given its interfaces.
#[derive(Debug, thiserror::Error)]
pub enum PlugError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Isolation(#[from] IsolationError),
}

/// One interface to give a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The host end, attached to the bridge (≤ 15 bytes).
    pub host: String,
    /// The name inside the container.
    pub inner: String,
}

/// Creates the veth pairs of a container whose init process is `pid`, brings them up and
/// turns off transmit offload. On failure, the host ends created so far are removed.
pub async fn plug(pid: u32, links: &[Link], limit: Duration) -> Result<(), PlugError> {
    let mut made: Vec<&str> = Vec::new();
    let result: Result<(), PlugError> = async {
        for l in links {
            // `dev` everywhere: an interface called `a` would otherwise read as `address`.
            // A leftover host end (a crashed run) would make `ip link add` fail.
            unplug_one(&l.host, limit).await;
            let ns = pid.to_string();
            cmd::run(
                "ip",
                &[
                    "link", "add", &l.host, "type", "veth", "peer", "name", &l.inner, "netns", &ns,
                ],
                None,
                limit,
            )
            .await?;
            made.push(&l.host);
            // The node's stack off the host end before it is up: otherwise the node's
            // own router solicitations and MLD reports go into the µmbox, which
            // forwards them along the chain, and the chain's traffic reaches the node.
            isolate(&l.host)?;
            cmd::run("ip", &["link", "set", "dev", &l.host, "up"], None, limit).await?;
            cmd::run("ethtool", &["-K", &l.host, "tx", "off"], None, limit).await?;
            let inside = |args: &[&str]| {
                let mut argv = vec!["-t", ns.as_str(), "-n"];
                argv.extend_from_slice(args);
                argv.iter().map(|s| s.to_string()).collect::<Vec<String>>()
            };
            for args in [
                inside(&["ip", "link", "set", "dev", &l.inner, "up"]),
                inside(&["ethtool", "-K", &l.inner, "tx", "off"]),
            ] {
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                cmd::run("nsenter", &argv, None, limit).await?;
            }
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        for host in made {
            unplug_one(host, limit).await;
        }
    }
    result
}

/// The kernel settings that keep the node's own stack off an interface, under
/// `/proc/sys/net/`: IPv6 off (no link-local address, no router solicitations, no MLD),
/// and IPv4 never delivered to the node: a strict reverse-path filter drops every packet
/// that arrives on an interface without an address of its own (so also the ARP requests
/// it would answer), and `arp_ignore = 8` answers no ARP request on it at all.
pub const ISOLATION: [(&str, &str, &str); 3] = [
    ("ipv6", "disable_ipv6", "1"),
    ("ipv4", "rp_filter", "1"),
    ("ipv4", "arp_ignore", "8"),
];

/// Why the node's stack could not be kept off an interface.
#[derive(Debug, thiserror::Error)]
#[error("cannot keep the node's network stack off `{interface}`: {detail}")]
pub struct IsolationError {
    pub interface: String,
    pub detail: String,
}

fn sysctl_path(family: &str, interface: &str, key: &str) -> String {
    format!("/proc/sys/net/{family}/conf/{interface}/{key}")
}

/// A name the kernel could give an interface, safe to put in a `/proc` path.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && name != "." && name != ".." && !name.contains('/')
}

/// Whether `family`'s settings apply to `interface`: IPv6 may be absent from the kernel
/// (booted with `ipv6.disable=1`), or not active on one interface (an MTU below 1280);
/// then there is nothing to turn off. IPv4 always applies.
fn applies(family: &str, interface: &str) -> bool {
    family == "ipv4"
        || std::path::Path::new(&format!("/proc/sys/net/{family}/conf/{interface}")).exists()
}

/// Keeps the node's own network stack off `interface` ([`ISOLATION`]). Every failure is
/// an error: an interface the node's stack still listens on is exposed.
pub fn isolate(interface: &str) -> Result<(), IsolationError> {
    let err = |detail: String| IsolationError {
        interface: interface.to_string(),
        detail,
    };
    if !valid_name(interface) {
        return Err(err("not a valid interface name".into()));
    }
    if !std::path::Path::new(&format!("/sys/class/net/{interface}")).exists() {
        return Err(err("no such interface".into()));
    }
    for (family, key, value) in ISOLATION {
        if !applies(family, interface) {
            continue;
        }
        let path = sysctl_path(family, interface, key);
        std::fs::write(&path, value).map_err(|e| err(format!("writing {path}: {e}")))?;
    }
    match exposure(interface) {
        None => Ok(()),
        Some(what) => Err(err(format!("still {what} after writing it"))),
    }
}

/// What of the node's stack is still on `interface` (`None`: nothing, or the interface
/// does not exist): the first setting of [`ISOLATION`] that is not as it should be.
pub fn exposure(interface: &str) -> Option<String> {
    if !valid_name(interface) {
        return Some("an invalid interface name".into());
    }
    if !std::path::Path::new(&format!("/sys/class/net/{interface}")).exists() {
        return None;
    }
    for (family, key, value) in ISOLATION {
        if !applies(family, interface) {
            continue;
        }
        let path = sysctl_path(family, interface, key);
        let now = std::fs::read_to_string(&path).map(|s| s.trim().to_string());
        let good = match (&now, key) {
            // 1 (strict) or 2 (loose): both drop every packet on an address-less interface.
            (Ok(v), "rp_filter") => v == "1" || v == "2",
            (Ok(v), _) => v == value,
            (Err(_), _) => false,
        };
        if !good {
            return Some(match now {
                Ok(v) => format!("{family} {key}={v}"),
                Err(e) => format!("{family} {key} unreadable ({e})"),
            });
        }
    }
    None
}

/// Queueing disciplines that hold no filter, so no action that could send a frame
/// elsewhere (`mirred` redirects, mirrors): what the kernel puts on an interface by
/// default, and the other classless ones.
const PLAIN_QDISCS: [&str; 9] = [
    "noqueue",
    "pfifo_fast",
    "fq_codel",
    "mq",
    "pfifo",
    "bfifo",
    "fq",
    "sfq",
    "cake",
];

/// The kernel hooks on interfaces that can move a frame around the switch: an XDP
/// program (from `links`), or traffic control that can carry filters (an ingress or
/// clsact qdisc, a classful root qdisc; one `tc -j qdisc show`), by interface: what is
/// there.
pub async fn hooks(
    links: &Links,
    limit: Duration,
) -> Result<std::collections::BTreeMap<String, String>, CmdError> {
    let mut out: std::collections::BTreeMap<String, String> = links
        .xdp
        .iter()
        .map(|name| (name.clone(), "an XDP program".to_string()))
        .collect();
    let qdiscs = cmd::run("tc", &["-j", "qdisc", "show"], None, limit).await?;
    let parsed: Vec<serde_json::Value> = serde_json::from_str(&qdiscs).unwrap_or_default();
    for q in parsed {
        let (Some(dev), Some(kind)) = (q["dev"].as_str(), q["kind"].as_str()) else {
            continue;
        };
        if !PLAIN_QDISCS.contains(&kind) {
            out.entry(dev.to_string())
                .or_insert_with(|| format!("the qdisc `{kind}`"));
        }
    }
    Ok(out)
}

/// Takes the hooks of [`hooks`] off an interface: its ingress and clsact qdiscs, its root
/// qdisc (the kernel's default comes back), its XDP programs. What is not there is fine.
pub async fn unhook(interface: &str, limit: Duration) {
    for args in [
        ["qdisc", "del", "dev", interface, "ingress"].as_slice(),
        &["qdisc", "del", "dev", interface, "clsact"],
        &["qdisc", "del", "dev", interface, "root"],
    ] {
        let _ = cmd::run("tc", args, None, limit).await;
    }
    for mode in ["xdp", "xdpgeneric", "xdpdrv"] {
        let _ = cmd::run(
            "ip",
            &["link", "set", "dev", interface, mode, "off"],
            None,
            limit,
        )
        .await;
    }
}

/// Removes host ends (and with them their peers); missing ones are fine.
pub async fn unplug(links: &[Link], limit: Duration) {
    for l in links {
        unplug_one(&l.host, limit).await;
    }
}

async fn unplug_one(host: &str, limit: Duration) {
    let _ = cmd::run("ip", &["link", "del", "dev", host], None, limit).await;
}

/// The host's network interfaces, read once (`ip -o link show`): a site of thousands of
/// devices is checked with one process, not one per port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    pub names: std::collections::BTreeSet<String>,
    /// Those with an XDP program attached.
    pub xdp: std::collections::BTreeSet<String>,
}

pub async fn links(limit: Duration) -> Result<Links, CmdError> {
    let out = cmd::run("ip", &["-o", "link", "show"], None, limit).await?;
    Ok(parse_links(&out))
}

/// `3: ktn-d0@ktn-d0p: <...> mtu 1500 xdpgeneric ...` → `ktn-d0`, with XDP (a veth's
/// peer after `@` is not its name).
fn parse_links(out: &str) -> Links {
    let mut links = Links::default();
    for line in out.lines() {
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name).to_string();
        if line
            .split_whitespace()
            .any(|w| w.starts_with("xdp") || w.starts_with("prog/xdp"))
        {
            links.xdp.insert(name.clone());
        }
        links.names.insert(name);
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names() {
        let out = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\n\
                   7: ktn-d0@ktn-d0p: <BROADCAST,MULTICAST,UP> mtu 1500\n\
                   9: k5cc3p9@if3: <BROADCAST> mtu 1500 xdpgeneric/id:42 qdisc noqueue\n";
        let links = parse_links(out);
        let names: Vec<String> = links.names.into_iter().collect();
        assert_eq!(names, ["k5cc3p9", "ktn-d0", "lo"]);
        assert_eq!(links.xdp.into_iter().collect::<Vec<_>>(), ["k5cc3p9"]);
    }
}
