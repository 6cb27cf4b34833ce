#!/usr/bin/env bash
# Installs what the build and the tests need on Debian/Ubuntu, idempotently.
#
#   scripts/setup.sh            packages for the compiler (Z3, libclang for z3-sys' bindgen)
#                               and for the etcd client's generated gRPC code (protoc)
#
# As root, missing packages are installed with apt-get. Otherwise the exact command to
# run is printed and the script fails, so nothing is silently skipped.
set -euo pipefail

# protobuf-compiler and libprotobuf-dev: the build script of the `etcd-client` crate
# (issue 18's controller and agents) runs `protoc`, which needs the well-known types
# (google/protobuf/descriptor.proto, struct.proto) that only libprotobuf-dev ships; apt
# installs it with protoc only as a recommendation, which ensure_packages skips.
PACKAGES=(libz3-dev libclang-dev clang pkg-config protobuf-compiler libprotobuf-dev)

# shellcheck source=lib/packages.sh
source "$(dirname "$0")/lib/packages.sh"
ensure_packages setup "${PACKAGES[@]}"

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
echo "setup: ok (${PACKAGES[*]})"
