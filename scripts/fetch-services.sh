#!/usr/bin/env bash
# Makes sure everything the test suite needs from outside cargo is here:
#   - protoc (etcd-client's build script needs it): Debian package protobuf-compiler
#   - an etcd server binary: scripts/fetch-etcd.sh
#   - a Consul binary: scripts/fetch-consul.sh
# Binaries that are not on the PATH are fetched as Debian packages into the
# git-ignored .cache/ folder. Prints `export` lines for the binaries found.
#
# Exits non-zero, with a last line on stderr naming what could not be
# installed, when any of them cannot be had. Callers should not pipe its
# output straight into `eval "$(...)"`, which ignores the exit status:
#
#   exports="$(scripts/fetch-services.sh)" || exit 1
#   eval "$exports"
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "fetch-services: could not install $*" >&2; exit 1; }

sudo_cmd=()
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo_cmd=(sudo); fi

if ! command -v protoc >/dev/null 2>&1; then
  echo "fetch-services: installing protobuf-compiler (protoc)" >&2
  "${sudo_cmd[@]}" apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq protobuf-compiler >&2 ||
    die "protoc (Debian package protobuf-compiler): apt-get install failed"
  command -v protoc >/dev/null 2>&1 ||
    die "protoc: protobuf-compiler is installed but protoc is not on the PATH"
fi

# The last line of a fetch script's stdout is the binary's path.
fetched_bin() {
  local out
  out="$(bash "$here/$1")" || return 1
  out="$(tail -n 1 <<<"$out")"
  [[ -n "$out" && -x "$out" ]] || return 1
  echo "$out"
}

etcd_bin="$(fetched_bin fetch-etcd.sh)" ||
  die "etcd (scripts/fetch-etcd.sh failed; its messages are above)"
consul_bin="$(fetched_bin fetch-consul.sh)" ||
  die "Consul (scripts/fetch-consul.sh failed; its messages are above)"
echo "export FYERRPC_ETCD_BIN=$etcd_bin"
echo "export FYERRPC_CONSUL_BIN=$consul_bin"
