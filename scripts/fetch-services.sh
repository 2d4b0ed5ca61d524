#!/usr/bin/env bash
# Makes sure everything the test suite needs from outside cargo is here:
#   - protoc (etcd-client's build script needs it): Debian package protobuf-compiler
#   - an etcd server binary: scripts/fetch-etcd.sh
#   - a Consul binary: scripts/fetch-consul.sh
# Binaries that are not on the PATH are fetched as Debian packages into the
# git-ignored .cache/ folder. Prints `export` lines for the binaries found.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

sudo_cmd=()
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo_cmd=(sudo); fi

if ! command -v protoc >/dev/null 2>&1; then
  echo "fetch-services: installing protobuf-compiler (protoc)" >&2
  "${sudo_cmd[@]}" apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq protobuf-compiler >&2
fi

etcd_bin="$(bash "$here/fetch-etcd.sh" | tail -n 1)"
consul_bin="$(bash "$here/fetch-consul.sh" | tail -n 1)"
echo "export FYERRPC_ETCD_BIN=$etcd_bin"
echo "export FYERRPC_CONSUL_BIN=$consul_bin"
