#!/usr/bin/env bash
# Installs (if missing) the headless browser the console's end-to-end test drives,
# idempotently.
#
#   scripts/chromium/start.sh   install chromium, chromium-driver and fonts-dejavu-core;
#                               check that both answer --version
#
# Nothing is started here: the test (runtime-shim/tests/console_browser.rs) starts its own
# chromedriver on a free loopback port and tells it to run Chromium with
#   --headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run
# so no browser or driver is left running between tests.
#
# Gotchas met on Debian 12 in a container:
# - The packages come from bookworm-security (Debian follows Chromium's stable releases
#   there); chromium and chromium-driver must be the same version, which installing them
#   together guarantees.
# - As root in a container Chromium needs --no-sandbox (no user namespaces for its
#   sandbox); the test passes it.
# - Without any font package Chromium renders text as boxes in screenshots:
#   fonts-dejavu-core is small and enough.
set -euo pipefail

PACKAGES=(chromium chromium-driver fonts-dejavu-core)

# shellcheck source=../lib/packages.sh
source "$(dirname "$0")/../lib/packages.sh"
ensure_packages chromium-start "${PACKAGES[@]}"

for tool in chromium chromedriver; do
    if ! command -v "$tool" >/dev/null; then
        echo "chromium-start: $tool is not on the path after installing ${PACKAGES[*]}" >&2
        exit 1
    fi
done
echo "chromium-start: $(timeout 30 chromium --headless --no-sandbox --version 2>/dev/null || chromium --version); $(timeout 10 chromedriver --version)"
