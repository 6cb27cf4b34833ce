#!/usr/bin/env bash
# Installs what the build and the tests need on Debian/Ubuntu, idempotently.
#
#   scripts/setup.sh            packages for the compiler (Z3, libclang for z3-sys' bindgen)
#
# As root, missing packages are installed with apt-get. Otherwise the exact command to
# run is printed and the script fails, so nothing is silently skipped.
set -euo pipefail

PACKAGES=(libz3-dev libclang-dev clang pkg-config)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null; then
        echo "setup: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
        exit 1
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing packages: ${missing[*]}" >&2
        echo "setup: run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
echo "setup: ok (${PACKAGES[*]})"
