#!/usr/bin/env bash
# Makes a real etcd (and protoc, which etcd-client's build needs) available for
# the tests, and prints the path of the etcd binary on its last line of stdout.
#
#   etcd_bin=$(scripts/fetch-etcd.sh | tail -n1)
#   FYERRPC_ETCD_BIN=$etcd_bin cargo test -p fyerrpc-registry-etcd
#
# (The tests also find the cached binary by themselves, so
#  `scripts/fetch-etcd.sh >/dev/null && cargo test -p fyerrpc-registry-etcd` works.)
#
# Where etcd comes from, first match wins:
#   1. $FYERRPC_ETCD_BIN, if set and executable;
#   2. `etcd` on the PATH;
#   3. the cache, .cache/services/etcd/usr/bin/etcd (git-ignored);
#   4. the Debian package `etcd-server` (and `etcd-client` for etcdctl), fetched
#      with `apt-get download` from the mirror this system's apt already uses and
#      unpacked into the cache with `dpkg -x`. Nothing is installed system-wide.
#      Debian 12 (bookworm) ships etcd 3.4, Debian 13 (trixie) etcd 3.5; both work.
#      FYERRPC_ETCD_SUITE=trixie fetches from another suite of the same mirror,
#      through private package lists kept in the cache.
#
# protoc: if missing, `apt-get install protobuf-compiler` (as root, or with
# sudo). On systems without apt, install protoc yourself (package usually
# named protobuf-compiler or protobuf) or point $PROTOC at it.
#
# Idempotent and quiet: on the happy path it prints only the path.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$repo/.cache/services/etcd"
log="$repo/.cache/services/fetch-etcd.log"
sources=/etc/apt/sources.list.d/debian.sources

die() {
    echo "fetch-etcd: $*" >&2
    if [[ -s $log ]]; then
        echo "fetch-etcd: last lines of $log:" >&2
        tail -n 20 "$log" >&2
    fi
    exit 1
}

# Runs a command as root: directly, or through non-interactive sudo.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

ensure_protoc() {
    if [[ -n ${PROTOC:-} && -x ${PROTOC} ]] || command -v protoc >/dev/null; then
        return 0
    fi
    command -v apt-get >/dev/null ||
        die "protoc is missing: install the protobuf compiler (e.g. protobuf-compiler) or set PROTOC"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >>"$log" 2>&1; then
        as_root apt-get update -qq >>"$log" 2>&1 ||
            die "protoc is missing and apt-get needs root: run 'apt-get install protobuf-compiler' as root"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >>"$log" 2>&1 ||
            die "could not install protobuf-compiler"
    fi
    command -v protoc >/dev/null || die "protobuf-compiler installed but protoc is not on the PATH"
}

# The first value of a deb822 field (URIs, Suites, Signed-By) in the system's
# Debian sources.
source_field() {
    awk -v f="$1:" '$1 == f { print $2; exit }' "$sources"
}

# `apt-get download` with the system's package lists (updating them once if
# they do not know the package yet).
download_with_system_lists() {
    apt-cache show etcd-server >/dev/null 2>&1 || as_root apt-get update -qq >>"$log" 2>&1 || return 1
    apt-get download etcd-server etcd-client >>"$log" 2>&1
}

# `apt-get download` with private lists of one suite of the system's Debian
# mirror (read from its sources, never named here); needs no root.
download_with_private_lists() {
    [[ -r $sources ]] || return 1
    local uri suite keyring apt
    uri=$(source_field URIs)
    suite=${FYERRPC_ETCD_SUITE:-$(source_field Suites)}
    keyring=$(source_field Signed-By)
    [[ -n $uri && -n $suite ]] || return 1
    apt="$repo/.cache/services/apt"
    mkdir -p "$apt/lists/partial" "$apt/archives/partial"
    echo "deb ${keyring:+[signed-by=$keyring]} $uri $suite main" >"$apt/sources.list"
    local opts=(
        -o "Dir::Etc::SourceList=$apt/sources.list"
        -o "Dir::Etc::SourceParts=$apt/none"
        -o "Dir::State::Lists=$apt/lists"
        -o "Dir::Cache=$apt"
        -o "Dir::Cache::Archives=$apt/archives"
        -o "Debug::NoLocking=1"
    )
    apt-get "${opts[@]}" update -qq >>"$log" 2>&1 &&
        apt-get "${opts[@]}" download etcd-server etcd-client >>"$log" 2>&1
}

fetch_etcd() {
    command -v apt-get >/dev/null ||
        die "no etcd found and no apt-get to fetch it: put an etcd 3.4+ binary on the PATH or set FYERRPC_ETCD_BIN"
    local work
    work=$(mktemp -d "$repo/.cache/services/download.XXXXXX")
    local ok=1
    if [[ -z ${FYERRPC_ETCD_SUITE:-} ]]; then
        (cd "$work" && download_with_system_lists) && ok=0
    fi
    if [[ $ok -ne 0 ]]; then
        (cd "$work" && download_with_private_lists) && ok=0
    fi
    [[ $ok -eq 0 ]] || { rm -rf "$work"; die "could not download the Debian package etcd-server"; }
    local unpack="$work/root"
    mkdir -p "$unpack"
    local deb
    for deb in "$work"/*.deb; do
        dpkg -x "$deb" "$unpack" || { rm -rf "$work"; die "could not unpack $deb"; }
    done
    [[ -x $unpack/usr/bin/etcd ]] || { rm -rf "$work"; die "the package holds no usr/bin/etcd"; }
    rm -rf "$cache"
    mv "$unpack" "$cache"
    rm -rf "$work"
}

main() {
    mkdir -p "$repo/.cache/services"
    : >"$log"
    ensure_protoc
    if [[ -n ${FYERRPC_ETCD_BIN:-} && -x ${FYERRPC_ETCD_BIN} ]]; then
        echo "$FYERRPC_ETCD_BIN"
        return
    fi
    if command -v etcd >/dev/null; then
        command -v etcd
        return
    fi
    if [[ ! -x $cache/usr/bin/etcd ]]; then
        fetch_etcd
    fi
    echo "$cache/usr/bin/etcd"
}

main "$@"
