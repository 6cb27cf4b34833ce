# Sourced by the setup scripts: installs missing Debian packages, idempotently.
#
#   ensure_packages TAG PACKAGE...
#
# As root, missing packages are installed with apt-get. Otherwise the exact command to run
# is printed and the caller fails, so nothing is silently skipped. TAG prefixes messages.
ensure_packages() {
    local tag=$1
    shift
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
    ((${#missing[@]})) || return 0
    if ! command -v apt-get >/dev/null; then
        echo "$tag: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
        return 1
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "$tag: missing packages: ${missing[*]}" >&2
        echo "$tag: run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
        return 1
    fi
    echo "$tag: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
