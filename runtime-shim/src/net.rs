//! Links between Open vSwitch and a µmbox container: one veth pair per interface, the
//! host end named as the bundle says (`km<port>`), the other end created directly in the
//! container's network namespace under the name the µmbox expects (`a`, `b`, `tap`).
//! Transmit checksum offload is turned off on both ends: through the userspace datapath,
//! TCP across veth pairs fails without it (docs/design/openflow-pipeline.md).
//! IPv6 is turned off on the host end (and in the container, by the engine's sysctls),
//! so that neither network stack sends anything of its own along the chain.

use crate::cmd::{self, CmdError};
use std::time::Duration;

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
pub async fn plug(pid: u32, links: &[Link], limit: Duration) -> Result<(), CmdError> {
    let mut made: Vec<&str> = Vec::new();
    let result = async {
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
            // IPv6 off on the host end before it is up: otherwise the node's own
            // router solicitations and MLD reports go into the µmbox, which forwards
            // them along the chain. A kernel without IPv6 has nothing to turn off.
            let _ = tokio::fs::write(
                format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", l.host),
                "1",
            )
            .await;
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

/// Removes host ends (and with them their peers); missing ones are fine.
pub async fn unplug(links: &[Link], limit: Duration) {
    for l in links {
        unplug_one(&l.host, limit).await;
    }
}

async fn unplug_one(host: &str, limit: Duration) {
    let _ = cmd::run("ip", &["link", "del", "dev", host], None, limit).await;
}

/// The names of the host's network interfaces, read once (`ip -o link show`): a site of
/// thousands of devices is checked with one process, not one per port.
pub async fn interfaces(limit: Duration) -> Result<std::collections::BTreeSet<String>, CmdError> {
    let out = cmd::run("ip", &["-o", "link", "show"], None, limit).await?;
    Ok(parse_link_names(&out))
}

/// `3: ktn-d0@ktn-d0p: <...>` → `ktn-d0` (a veth's peer after `@` is not its name).
fn parse_link_names(out: &str) -> std::collections::BTreeSet<String> {
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names() {
        let out = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\n\
                   7: ktn-d0@ktn-d0p: <BROADCAST,MULTICAST,UP> mtu 1500\n\
                   9: k5cc3p9@if3: <BROADCAST> mtu 1500\n";
        let names: Vec<String> = parse_link_names(out).into_iter().collect();
        assert_eq!(names, ["k5cc3p9", "ktn-d0", "lo"]);
    }
}
