#!/usr/bin/env bash
# The whole test suite: installs what the tests need (protoc, etcd, Consul),
# then runs every test of every crate with all backends enabled, the doc tests,
# and compiles the benchmarks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

eval "$(bash scripts/fetch-services.sh)"
export FYERRPC_ETCD_BIN FYERRPC_CONSUL_BIN

cargo test --workspace --all-features --all-targets
cargo test --workspace --all-features --doc
