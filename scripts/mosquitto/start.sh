#!/usr/bin/env bash
# Installs (if missing) the MQTT broker and clients the tests run, idempotently.
#
#   scripts/mosquitto/start.sh  install mosquitto, mosquitto-clients, openssl; make sure no
#                               system-wide broker is left running; check `mosquitto -h`
#
# Nothing is started here: every test starts a private broker of its own (test-support's
# `mosquitto::Broker`: a free loopback port, a generated config, password file, TLS
# certificates and persistence in a temp dir). So a system-wide broker is not wanted: if
# the package's service runs (where the postinst could start it, on a machine with
# systemd or without a policy-rc.d that forbids it), it is stopped and disabled, so that
# port 1883 is free and no stray broker answers a test that got its port wrong.
#
# Safe to run any number of times: packages already installed are not touched.
#
# Gotchas met on Debian 12 (mosquitto 2.0.11):
# - In a container, apt's postinst does not start the service (policy-rc.d exits 101, no
#   systemd), so usually there is nothing to stop.
# - `mosquitto -h` prints its usage and exits 3, not 0: the check looks for the version
#   line instead of the exit code.
# - 2.0 listens on loopback only and refuses anonymous clients unless the config says
#   otherwise; the tests' configs always name their listener and set allow_anonymous.
set -euo pipefail

PACKAGES=(mosquitto mosquitto-clients openssl)

# shellcheck source=../lib/packages.sh
source "$(dirname "$0")/../lib/packages.sh"
ensure_packages mosquitto-start "${PACKAGES[@]}"

# The package's own broker: running as a systemd unit, or under the init script (pid file
# /run/mosquitto/mosquitto.pid, see /etc/init.d/mosquitto).
system_broker_pid() {
    local pidfile=/run/mosquitto/mosquitto.pid pid
    [[ -r $pidfile ]] || return 1
    pid=$(cat "$pidfile")
    [[ -n $pid ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == mosquitto ]] && echo "$pid"
}

if [[ -d /run/systemd/system ]] && timeout 10 systemctl is-active --quiet mosquitto 2>/dev/null; then
    echo "mosquitto-start: stopping and disabling the system-wide mosquitto service (tests run their own brokers)"
    timeout 30 systemctl disable --now mosquitto >/dev/null 2>&1 || timeout 30 systemctl stop mosquitto
elif pid=$(system_broker_pid); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "mosquitto-start: a system-wide mosquitto (pid $pid) runs and stopping it needs root" >&2
        exit 1
    fi
    echo "mosquitto-start: stopping the system-wide mosquitto (pid $pid; tests run their own brokers)"
    timeout 30 /etc/init.d/mosquitto stop >/dev/null 2>&1 || kill "$pid"
    for _ in $(seq 1 20); do
        [[ -d /proc/$pid ]] || break
        sleep 0.25
    done
    if [[ -d /proc/$pid ]]; then
        echo "mosquitto-start: the system-wide mosquitto (pid $pid) did not stop" >&2
        exit 1
    fi
    # Not started again at boot, where update-rc.d manages it.
    command -v update-rc.d >/dev/null && update-rc.d mosquitto disable >/dev/null 2>&1 || true
fi

if command -v ss >/dev/null && ss -Hltn 'sport = :1883' 2>/dev/null | grep -q .; then
    # Not ours to stop; the tests do not use 1883, so this is only worth knowing.
    echo "mosquitto-start: note: something else listens on port 1883" >&2
fi

for tool in mosquitto mosquitto_pub mosquitto_sub mosquitto_passwd openssl; do
    if ! command -v "$tool" >/dev/null; then
        echo "mosquitto-start: $tool is not on the path after installing ${PACKAGES[*]}" >&2
        exit 1
    fi
done
# `mosquitto -h` exits 3 after printing its usage; its first line names the version.
version=$(timeout 10 mosquitto -h 2>&1 | sed -n 1p || true)
if [[ $version != mosquitto\ version\ * ]]; then
    echo "mosquitto-start: \`mosquitto -h\` did not print its version: $version" >&2
    exit 1
fi
echo "mosquitto-start: $version; $(openssl version)"
