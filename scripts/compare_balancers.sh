#!/usr/bin/env bash
# Compares balancing policies on a live mixed cluster: builds the demo
# (release), starts three greet servers on the static registry, runs
# `greet-client --scenario compare` against them, and stops them on exit.
#
#   server-fast   port BASE_PORT     normal
#   server-slow   port BASE_PORT+1   every call takes 20 ms plus 0-10 ms
#   server-flaky  port BASE_PORT+2   fails 5% of calls at random
#
# The table goes to stdout and scripts/compare/compare.txt; the chart
# (latency distribution per policy and share of calls per instance) to
# scripts/compare/compare.svg; server logs to scripts/compare/ too.
#
# Usage: scripts/compare_balancers.sh [-- greet-client arguments]
#   e.g. scripts/compare_balancers.sh -- --duration 5s --balancers rr,p2c,peak_ewma
# Environment: BASE_PORT (default 8101), DURATION per policy (default 10s),
#   CONCURRENCY calls in flight (default 32), SLOW_LATENCY (default 20ms),
#   SLOW_JITTER (default 10ms), FLAKY_RATE (default 0.05).

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$SCRIPT_DIR")"
OUT_DIR="$SCRIPT_DIR/compare"
BASE_PORT="${BASE_PORT:-8101}"
HEALTH_OFFSET=10000
READY_TIMEOUT=30
DURATION="${DURATION:-10s}"
CONCURRENCY="${CONCURRENCY:-32}"
SLOW_LATENCY="${SLOW_LATENCY:-20ms}"
SLOW_JITTER="${SLOW_JITTER:-10ms}"
FLAKY_RATE="${FLAKY_RATE:-0.05}"
CLIENT_ARGS=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; CLIENT_ARGS=("$@"); break ;;
        *) echo "compare_balancers.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

echo "Building greet-server and greet-client (release)..."
cargo build --manifest-path "$ROOT/Cargo.toml" -p fyerrpc-demo --bins --release
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
mkdir -p "$OUT_DIR"

PIDS=()
stop_servers() {
    local status=$?
    trap - EXIT INT TERM
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        wait "$pid" 2>/dev/null || true
    done
    [[ ${#PIDS[@]} -gt 0 ]] && echo "Cluster stopped."
    exit "$status"
}
trap stop_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_server NAME PORT [greet-server flags...]
start_server() {
    local name="$1" port="$2"
    shift 2
    "$BIN_DIR/greet-server" --port "$port" --id "server-$name" --lame-duck 0s "$@" \
        >"$OUT_DIR/server_$name.log" 2>&1 </dev/null &
    PIDS+=($!)
}

# healthy PORT: whether /health on the server's health port answers 200.
healthy() {
    local line=""
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    read -r -t 2 line <&3 || true
    exec 3>&- 3<&-
    [[ "$line" == *" 200 "* ]]
}

PORT_FAST=$BASE_PORT
PORT_SLOW=$((BASE_PORT + 1))
PORT_FLAKY=$((BASE_PORT + 2))
echo "Starting the mixed cluster: fast :$PORT_FAST, slow ($SLOW_LATENCY + 0-$SLOW_JITTER) :$PORT_SLOW, flaky ($FLAKY_RATE failing) :$PORT_FLAKY"
start_server fast "$PORT_FAST"
start_server slow "$PORT_SLOW" --latency "$SLOW_LATENCY" --latency-jitter "$SLOW_JITTER"
start_server flaky "$PORT_FLAKY" --fail-rate "$FLAKY_RATE"

deadline=$((SECONDS + READY_TIMEOUT))
for port in "$PORT_FAST" "$PORT_SLOW" "$PORT_FLAKY"; do
    until healthy $((port + HEALTH_OFFSET)); do
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || { echo "a server exited; see $OUT_DIR/server_*.log" >&2; exit 1; }
        done
        (( SECONDS < deadline )) || { echo "servers not healthy within ${READY_TIMEOUT}s" >&2; exit 1; }
        sleep 0.2
    done
done

"$BIN_DIR/greet-client" --servers "localhost:$PORT_FAST,localhost:$PORT_SLOW,localhost:$PORT_FLAKY" \
    --scenario compare --duration "$DURATION" --concurrency "$CONCURRENCY" \
    --plot "$OUT_DIR/compare.svg" ${CLIENT_ARGS[@]+"${CLIENT_ARGS[@]}"} | tee "$OUT_DIR/compare.txt"
echo "Chart: $OUT_DIR/compare.svg (table also in $OUT_DIR/compare.txt)"
