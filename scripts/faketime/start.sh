#!/usr/bin/env bash
# Installs libfaketime (Debian's `faketime`), idempotently: the daylight-saving test of
# `kalki-shim run` (runtime-shim/tests/dst_run.rs) starts the real shim with its wall
# clock set to minutes before a daylight-saving jump. Nothing runs in the background.
set -euo pipefail

PACKAGES=(faketime)

# shellcheck source=../lib/packages.sh
source "$(dirname "$0")/../lib/packages.sh"
ensure_packages faketime-start "${PACKAGES[@]}"
echo "faketime-start: ok ($(command -v faketime))"
