#!/usr/bin/env bash
# Builds the µmbox image kalki/umbox:0.1 around a statically linked kalki-umbox,
# idempotently: an unchanged binary rebuilds nothing and keeps the image ID.
#
#   scripts/images.sh           needs cargo and a running Docker engine
#                               (scripts/docker/start.sh; `make images` runs both)
#
# The binary is built for the gnu target with a static C runtime (there is no musl
# target here and no base image to pull), under target/x86_64-unknown-linux-gnu/ so the
# ordinary release build is not invalidated. The image is `FROM scratch` and is built by
# the classic builder (DOCKER_BUILDKIT=0: docker.io 20.10 has no buildx), offline.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=kalki/umbox:0.1
TARGET=x86_64-unknown-linux-gnu
BIN=${CARGO_TARGET_DIR:-target}/$TARGET/release/kalki-umbox

die() {
    echo "images: $*" >&2
    exit 1
}

command -v cargo >/dev/null || die "cargo not found; install Rust with rustup (https://rustup.rs)"
command -v docker >/dev/null || die "docker not found; run scripts/docker/start.sh"
timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "no Docker engine answers; run scripts/docker/start.sh"

echo "images: building kalki-umbox (release, static, $TARGET)"
RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" \
    cargo build --release --locked -p kalki-umbox --target "$TARGET"

# A dynamically linked binary would not even start in a scratch image. rustc links a
# static-pie executable; `file` says "static-pie linked", ldd "statically linked".
if command -v file >/dev/null; then
    file -L "$BIN" | grep -Eq "statically linked|static-pie linked" ||
        die "$BIN is not statically linked: $(file -L "$BIN")"
fi
if ldd "$BIN" 2>&1 | grep -q "=>"; then
    die "$BIN needs shared libraries: $(ldd "$BIN" 2>&1 | tr '\n' ' ')"
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp images/umbox/Dockerfile "$ctx/Dockerfile"
cp "$BIN" "$ctx/kalki-umbox"
sum=$(sha256sum "$BIN" | cut -d' ' -f1)

echo "images: building $TAG"
if ! DOCKER_BUILDKIT=0 timeout 300 docker build --network none \
    --label "kalki.umbox.sha256=$sum" -t "$TAG" "$ctx" >"$ctx/build.log" 2>&1; then
    cat "$ctx/build.log" >&2
    die "docker build of $TAG failed (output above)"
fi

timeout 10 docker image inspect --format "images: $TAG {{.Id}} ({{.Size}} bytes), binary sha256 $sum" "$TAG"

# The same image for the OCI backend (kalki-shim --umbox-backend oci).
scripts/oci-image.sh "$TAG"
