#!/usr/bin/env bash
# Installs (if missing) the etcd server and its command-line client, idempotently: the
# tests of the replicated controller and the node agents (issue 18) run real etcd clusters.
#
#   scripts/etcd/start.sh  install etcd-server and etcd-client (etcdctl); make sure no
#                          system-wide etcd is left running; print the versions
#
# Nothing is started here: every test starts a cluster of its own (test-support's
# `etcd::EtcdCluster`: members on loopback, random free client and peer ports, mutual TLS
# with a PKI generated for the test, data and logs in a temp dir). The tests never use
# etcd's default ports (2379, 2380), so a system etcd could not answer them by mistake;
# still, the package's own service is not wanted (it would hold a data dir and ports for
# nothing): if it runs, it is stopped and disabled.
#
# Safe to run any number of times: packages already installed are not touched.
#
# Gotchas met on Debian 12 (etcd 3.4.23):
# - In a container, apt's postinst does not start the service (policy-rc.d exits 101, no
#   systemd), so usually there is nothing to stop.
# - etcd 3.4's etcdctl speaks the v3 API by default (ETCDCTL_API=3 is not needed).
set -euo pipefail

PACKAGES=(etcd-server etcd-client)

# shellcheck source=../lib/packages.sh
source "$(dirname "$0")/../lib/packages.sh"
ensure_packages etcd-start "${PACKAGES[@]}"

# The package's own etcd: a systemd unit, or a process started by the init script.
if [[ -d /run/systemd/system ]] && timeout 10 systemctl is-active --quiet etcd 2>/dev/null; then
    echo "etcd-start: stopping and disabling the system-wide etcd service (tests run their own clusters)"
    timeout 30 systemctl disable --now etcd >/dev/null 2>&1 || timeout 30 systemctl stop etcd
elif pid=$(pgrep -x -u etcd etcd 2>/dev/null | sed -n 1p) && [[ -n $pid ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "etcd-start: a system-wide etcd (pid $pid) runs and stopping it needs root" >&2
        exit 1
    fi
    echo "etcd-start: stopping the system-wide etcd (pid $pid; tests run their own clusters)"
    if [[ -x /etc/init.d/etcd ]]; then
        timeout 30 /etc/init.d/etcd stop >/dev/null 2>&1 || kill "$pid"
    else
        kill "$pid"
    fi
    for _ in $(seq 1 20); do
        [[ -d /proc/$pid ]] || break
        sleep 0.25
    done
    if [[ -d /proc/$pid ]]; then
        echo "etcd-start: the system-wide etcd (pid $pid) did not stop" >&2
        exit 1
    fi
    # Not started again at boot, where update-rc.d manages it.
    command -v update-rc.d >/dev/null && update-rc.d etcd disable >/dev/null 2>&1 || true
fi

for tool in etcd etcdctl; do
    if ! command -v "$tool" >/dev/null; then
        echo "etcd-start: $tool is not on the path after installing ${PACKAGES[*]}" >&2
        exit 1
    fi
done
server=$(timeout 10 etcd --version 2>&1 | sed -n 1p)
client=$(timeout 10 etcdctl version 2>&1 | sed -n 1p)
if [[ $server != "etcd Version: "* ]]; then
    echo "etcd-start: \`etcd --version\` did not print its version: $server" >&2
    exit 1
fi
echo "etcd-start: $server; $client"
