#!/usr/bin/env bash
# Finds or fetches a `consul` binary for the test suite and prints its path on
# the last line of output.
#
# Order of preference:
#   1. $FYERRPC_CONSUL_BIN, if it names an executable;
#   2. `consul` on the PATH;
#   3. a binary cached earlier under $REPO/.cache/services/ (git-ignored);
#   4. the Debian package `consul` (1.8.7), which only the bullseye suite
#      carries: it is downloaded with apt-get into the cache, using a private
#      sources list for bullseye on the same mirror the system already uses,
#      private list/cache directories (the system's apt state is untouched) and
#      the Debian archive keyring, then unpacked with `dpkg -x`. The binary is
#      static and runs on any Linux of the same architecture.
#
# Idempotent and quiet when everything is in place. Override the mirror with
# FYERRPC_DEBIAN_MIRROR (e.g. a local mirror URI) if the system's cannot be read.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$REPO/.cache/services"
CACHED_BIN="$CACHE/consul/usr/bin/consul"
SUITE="bullseye"
PACKAGE="consul"

log() { echo "fetch-consul: $*" >&2; }
die() { log "$*"; exit 1; }

# Prints the first non-security Debian mirror URI the system's apt uses.
system_mirror() {
    if [[ -n "${FYERRPC_DEBIAN_MIRROR:-}" ]]; then
        echo "$FYERRPC_DEBIAN_MIRROR"
        return
    fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        # deb822: stanzas separated by blank lines; take a "URIs:" of a stanza
        # whose suites are not the security ones.
        uri="$(awk '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; suites = ""; types = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)   { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/) { suites = $i }
                    if ($i ~ /^Types:/)  { types = $i }
                }
                if (uris != "" && types ~ /deb( |$)/ && suites !~ /security/) {
                    split(uris, u, /[ \t]+/); print u[1]; exit
                }
            }' "$f")"
        if [[ -n "$uri" ]]; then
            echo "$uri"
            return
        fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r "$f" ]] || continue
        uri="$(awk '$1 == "deb" && $0 !~ /security/ {
                    for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; exit }
                }' "$f")"
        if [[ -n "$uri" ]]; then
            echo "$uri"
            return
        fi
    done
    return 1
}

# Prints the keyring that verifies the bullseye archive, or nothing.
bullseye_keyring() {
    local k
    for k in /usr/share/keyrings/debian-archive-keyring.gpg \
             /usr/share/keyrings/debian-archive-bullseye-stable.gpg; do
        [[ -r "$k" ]] && { echo "$k"; return; }
    done
}

fetch_from_debian() {
    command -v apt-get >/dev/null || die "no consul binary and no apt-get to fetch one; install consul and put it on the PATH"
    command -v dpkg >/dev/null || die "dpkg is needed to unpack the consul package"
    local mirror keyring apt_dir
    mirror="$(system_mirror)" || die "cannot read a Debian mirror from /etc/apt; set FYERRPC_DEBIAN_MIRROR"
    keyring="$(bullseye_keyring)"
    apt_dir="$CACHE/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/etc"
    if [[ -n "$keyring" ]]; then
        echo "deb [signed-by=$keyring] $mirror $SUITE main" >"$apt_dir/etc/sources.list"
    else
        log "no Debian archive keyring found; trusting the $SUITE suite unverified"
        echo "deb [trusted=yes] $mirror $SUITE main" >"$apt_dir/etc/sources.list"
    fi
    local -a opts=(
        -o "Dir::Etc::SourceList=$apt_dir/etc/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache=$apt_dir/cache"
        -o "Dir::Cache::Archives=$apt_dir/cache/archives"
        -o "APT::Sandbox::User=root"
        -o "Acquire::Languages=none"
        -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
        -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
        -o "APT::Architecture=$(dpkg --print-architecture)"
        -qq
    )
    log "fetching the Debian package $PACKAGE from $SUITE"
    apt-get "${opts[@]}" update >&2 || die "apt-get update of the private $SUITE list failed"
    WORK="$(mktemp -d "$CACHE/download.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    local work="$WORK"
    (cd "$work" && apt-get "${opts[@]}" download "$PACKAGE" >&2) ||
        die "apt-get download $PACKAGE failed"
    local deb
    deb="$(find "$work" -maxdepth 1 -name "${PACKAGE}_*.deb" | head -n 1)"
    [[ -n "$deb" ]] || die "apt-get download produced no .deb"
    rm -rf "$CACHE/consul.new"
    dpkg -x "$deb" "$CACHE/consul.new"
    [[ -x "$CACHE/consul.new/usr/bin/consul" ]] || die "the package holds no usr/bin/consul"
    rm -rf "$CACHE/consul"
    mv "$CACHE/consul.new" "$CACHE/consul"
}

main() {
    if [[ -n "${FYERRPC_CONSUL_BIN:-}" && -x "${FYERRPC_CONSUL_BIN}" ]]; then
        echo "$FYERRPC_CONSUL_BIN"
        return
    fi
    if command -v consul >/dev/null; then
        command -v consul
        return
    fi
    if [[ ! -x "$CACHED_BIN" ]]; then
        mkdir -p "$CACHE"
        # One fetch at a time; a concurrent run waits and then finds the binary.
        if command -v flock >/dev/null; then
            exec 9>"$CACHE/.consul.lock"
            flock 9
        fi
    fi
    if [[ ! -x "$CACHED_BIN" ]]; then
        fetch_from_debian
        "$CACHED_BIN" version >/dev/null || die "the fetched consul does not run"
    fi
    echo "$CACHED_BIN"
}

main "$@"
