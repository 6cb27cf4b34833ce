#!/usr/bin/env bash
# Installs (if missing) and starts a Docker engine for the µmbox containers, idempotently.
#
#   scripts/docker/start.sh     install docker.io (and busybox-static, for tests); start
#                               dockerd unless an engine answers
#
# An engine that already answers on /var/run/docker.sock (a system service, Docker
# Desktop, ...) is used as it is. Otherwise dockerd is started in the background with
#   --iptables=false --bridge=none
# because µmbox containers get no Docker network at all: the shim attaches their
# interfaces to Open vSwitch itself, and a test machine may not allow iptables changes.
# Its log goes to /var/log/kalki-dockerd.log.
#
# Gotchas met on Debian 12 in a container (no systemd as PID 1):
# - apt's postinst does not start the service, so dockerd is started here;
# - docker.io 20.10 speaks Docker API 1.41; clients negotiate down to it;
# - `docker info` with no daemon hangs on some setups: every probe uses `timeout`.
set -euo pipefail

# shellcheck source=../lib/packages.sh
source "$(dirname "$0")/../lib/packages.sh"
# busybox-static and curl are test tools only: the shim's node tests build a stand-in
# µmbox image from busybox (FROM scratch, one static binary), and the µmbox and contract
# tests serve HTTP with its httpd and request it with curl; the shim itself needs neither.
ensure_packages docker-start docker.io busybox-static curl

SOCK=/var/run/docker.sock
LOG=/var/log/kalki-dockerd.log

engine_up() {
    timeout 10 docker -H "unix://$SOCK" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

if engine_up; then
    echo "docker-start: engine already running"
else
    if [[ $(id -u) -ne 0 ]]; then
        echo "docker-start: no Docker engine answers on $SOCK and starting one needs root" >&2
        exit 1
    fi
    echo "docker-start: starting dockerd (--iptables=false --bridge=none), log in $LOG"
    # containerd is started by dockerd itself when it is not running.
    # In a session of its own: a caller's process group (a test under `timeout`, say)
    # ending must not take the engine with it.
    setsid nohup dockerd --iptables=false --bridge=none -H "unix://$SOCK" >>"$LOG" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
        engine_up && break
        sleep 0.5
    done
    if ! engine_up; then
        echo "docker-start: dockerd did not come up within 30 s; last lines of $LOG:" >&2
        tail -20 "$LOG" >&2 || true
        exit 1
    fi
fi

timeout 10 docker -H "unix://$SOCK" version --format 'docker-start: engine {{.Server.Version}} (API {{.Server.APIVersion}})'
