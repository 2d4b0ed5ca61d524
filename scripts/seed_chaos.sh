#!/usr/bin/env bash
# The seed cluster's faults plus one dead server, under load:
#   server A  --fail-after 100 --fail-duration 10s
#   server B  --fail-rate 0.1
#   server C  healthy, killed with SIGKILL after --kill-after (default 2s)
# while greet-client runs `--scenario load --duration 8s --concurrency 16`
# (static registry, loopback only). Prints the client's summary: calls,
# failures, calls/s, p50/p99, and the final metrics table.
#
# Usage: scripts/seed_chaos.sh [--bin-dir DIR] [--kill-after D] [-- client args...]
#   --bin-dir DIR   where greet-server and greet-client are (default: builds
#                   them with `cargo build --release` and uses target/release)

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$SCRIPT_DIR")"
BIN_DIR=""
KILL_AFTER=2
BASE_PORT="${BASE_PORT:-8101}"
CLIENT_ARGS=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin-dir) BIN_DIR="${2:?--bin-dir needs a value}"; shift 2 ;;
        --kill-after) KILL_AFTER="${2:?--kill-after needs seconds}"; shift 2 ;;
        -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; CLIENT_ARGS=("$@"); break ;;
        *) echo "seed_chaos.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -z "$BIN_DIR" ]]; then
    cargo build --release --manifest-path "$ROOT/Cargo.toml" -p fyerrpc-demo --bins
    BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi

PIDS=()
cleanup() {
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

LOG_DIR="$(mktemp -d)"
start() {
    local name="$1" port="$2"
    shift 2
    "$BIN_DIR/greet-server" --port "$port" --id "server-$name" "$@" \
        >"$LOG_DIR/server_$name.log" 2>&1 </dev/null &
    PIDS+=($!)
}
A=$BASE_PORT B=$((BASE_PORT + 1)) C=$((BASE_PORT + 2))
start A "$A" --fail-after 100 --fail-duration 10s
start B "$B" --fail-rate 0.1
start C "$C"
PID_C=${PIDS[2]}

# Wait for the three health ports.
for port in "$A" "$B" "$C"; do
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null; then break; fi
        sleep 0.1
    done
done

( sleep "$KILL_AFTER"; kill -KILL "$PID_C" 2>/dev/null && echo "  [server-C killed with SIGKILL after ${KILL_AFTER}s]" >&2 ) &

# A client built before `--duration` existed runs a fixed number of calls.
RUN=(--duration 8s)
"$BIN_DIR/greet-client" --help 2>/dev/null | grep -q -- '--duration' || RUN=(--requests 8000)
"$BIN_DIR/greet-client" --servers "127.0.0.1:$A,127.0.0.1:$B,127.0.0.1:$C" \
    --scenario load "${RUN[@]}" --concurrency 16 ${CLIENT_ARGS[@]+"${CLIENT_ARGS[@]}"}
