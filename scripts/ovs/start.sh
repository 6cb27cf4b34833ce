#!/usr/bin/env bash
# Installs (if missing) and starts Open vSwitch for the userspace datapath, idempotently.
#
#   scripts/ovs/start.sh        install openvswitch-switch, ethtool, iproute2; start OVS
#
# iputils-ping, netcat-openbsd and tcpdump are test tools only (prototype.sh and the
# shim's tests send real ICMP and TCP through namespaces, and the fault tests count the
# frames that reach a host with tcpdump); the shim itself does not need them.
#
# Safe to run any number of times: packages already installed are not touched and a
# running OVS (one that answers `ovs-vsctl show`) is left alone. Prints the OVS version.
#
# Gotchas met on Debian 12 in a container (no systemd as PID 1, no openvswitch kernel
# module):
# - apt's postinst does not start the service (policy-rc.d exits 101 / no systemd), so
#   OVS is started here with ovs-ctl, which also creates /etc/openvswitch/conf.db from the
#   schema on first start.
# - There is no openvswitch kernel module: ovs-ctl says "Kernel has no loadable module
#   support. Skipping modprobe." and goes on; ovs-vswitchd logs that the ovs_datapath
#   netlink family does not exist. Only the userspace datapath works: every bridge must
#   be created with datapath_type=netdev. `--no-monitor` is not needed.
# - `--system-id=random` writes /etc/openvswitch/system-id.conf on first start and reuses
#   it afterwards; without it ovs-ctl leaves the system-id unset (harmless for us).
# - `ovs-vsctl` with no daemon blocks forever: every probe here uses --timeout.
# - ovs-ctl runs each daemon under a --monitor process that restarts it after a crash
#   (SIGSEGV, SIGABRT) but not after SIGKILL; `ovs-ctl start` starts only the daemons that
#   are not running, so this script also repairs a half-dead OVS.
# - ovs-ctl prints "ulimit: error setting limit (Operation not permitted)" in a container;
#   harmless.
# - Logs: /var/log/openvswitch/ovs-vswitchd.log and ovsdb-server.log;
#   pid files and the db socket: /var/run/openvswitch/.
set -euo pipefail

# With the switch, the tools the live tests send traffic with: ping and netcat, and the
# attack tools a real attacker would use (nmap, hping3), and iptables (the cluster test
# cuts a node agent from etcd with a packet filter).
PACKAGES=(openvswitch-switch ethtool iproute2 iputils-ping netcat-openbsd tcpdump nmap hping3 iptables)

# shellcheck source=../lib/packages.sh
source "$(dirname "$0")/../lib/packages.sh"
ensure_packages ovs-start "${PACKAGES[@]}"

# Both daemons must answer: `ovs-vsctl show` only talks to ovsdb-server and succeeds while
# ovs-vswitchd is dead (then no bridge forwards anything).
ovs_up() {
    ovs-vsctl --timeout=5 show >/dev/null 2>&1 &&
        ovs-appctl --timeout=5 -t ovs-vswitchd version >/dev/null 2>&1
}

if ovs_up; then
    echo "ovs-start: already running"
else
    if [[ $(id -u) -ne 0 ]]; then
        echo "ovs-start: OVS is not running and starting it needs root" >&2
        exit 1
    fi
    echo "ovs-start: starting OVS"
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random
    if ! ovs_up; then
        echo "ovs-start: OVS did not come up; see /var/log/openvswitch/*.log" >&2
        exit 1
    fi
fi

ovs-vsctl --timeout=5 get Open_vSwitch . ovs_version | tr -d '"' | sed 's/^/ovs-start: ovs version /'
ovs-vswitchd --version | sed -n 1p
