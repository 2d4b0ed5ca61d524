#!/usr/bin/env bash
# The whole test suite: installs what the tests need (protoc, etcd, Consul),
# then runs every test of every crate with all backends enabled, the doc tests,
# and compiles the benchmarks; then every test again with the default
# features.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# `eval "$(...)"` alone would ignore a failed fetch: check its status first,
# so that a missing tool stops the suite here with a message naming it.
if ! exports="$(bash scripts/fetch-services.sh)"; then
    echo "test.sh: stopping: a tool the tests need could not be installed (named above)" >&2
    exit 1
fi
eval "$exports"
export FYERRPC_ETCD_BIN FYERRPC_CONSUL_BIN

# Every backend compiled in...
cargo test --workspace --all-features --all-targets
cargo test --workspace --all-features --doc
# ...and the default features: what `cargo build` and scripts/start_cluster.sh
# give users (the demo without etcd or Consul), with the tests that exist only
# there.
cargo test --workspace --all-targets
