#!/usr/bin/env bash
# Exports an image Docker holds for kalki-shim's OCI backend (--umbox-backend oci), which
# runs µmboxes without a daemon from a directory per image:
#
#   scripts/oci-image.sh IMAGE[:TAG]     needs a running Docker engine holding IMAGE
#
#   $KALKI_OCI_IMAGES/REPO/TAG -> .by-id/ID   (default /var/lib/kalki-shim/images)
#   .by-id/ID/rootfs/       the image's file system, shared read-only by its containers
#   .by-id/ID/image.json    its configuration as Docker gives it (Entrypoint, Cmd, Env)
#
# Idempotent: an image already exported under its ID is not exported again. An export
# is made aside and put in place by renaming a link, so a container started from the
# previous one keeps its file system (old exports are small and are left in place).
set -euo pipefail

die() {
    echo "oci-image: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: scripts/oci-image.sh IMAGE[:TAG]"
image=$1
dir=${KALKI_OCI_IMAGES:-/var/lib/kalki-shim/images}
case "$image" in
*:*) repo=${image%:*} tag=${image##*:} ;;
*) repo=$image tag=latest ;;
esac

id=$(timeout 10 docker image inspect --format '{{.Id}}' "$image") ||
    die "Docker does not hold $image"
id=${id#sha256:}
by_id=$dir/.by-id/$id
link=$dir/$repo/$tag

if [ ! -f "$by_id/image.json" ]; then
    mkdir -p "$dir/.by-id"
    tmp=$(mktemp -d "$dir/.by-id/.export.XXXXXX")
    trap 'rm -rf "$tmp"; [ -n "${container:-}" ] && docker rm -f "$container" >/dev/null 2>&1 || true' EXIT
    mkdir "$tmp/rootfs"
    container=$(timeout 30 docker create "$image")
    timeout 60 docker export "$container" | tar -C "$tmp/rootfs" -x
    timeout 10 docker image inspect --format '{{json .Config}}' "$image" >"$tmp/image.json"
    rm -rf "$by_id"
    mv "$tmp" "$by_id"
fi

mkdir -p "$(dirname "$link")"
ln -sfn "$dir/.by-id/$id" "$link.new"
mv -T "$link.new" "$link"
echo "oci-image: $image -> $link ($id)"
