#!/usr/bin/env bash
# One stalled server under load, hedging off and on.
#
# Starts three healthy greet servers (static registry, loopback only) and runs
#   greet-client --scenario load --duration 10s --concurrency 16
# twice: once without hedging, once with hedged SayHello calls. In each run one
# server is stopped with SIGSTOP for 4 s (from 3 s in) and resumed with
# SIGCONT. Prints, for both runs, the calls, failures, p50/p99/max latency and
# the extra attempts (retries and hedged copies) as a share of the calls.
# Stops everything it started.
#
# Usage: scripts/hedge_stall.sh [options] [-- client args for both runs...]
#   --bin-dir DIR      where greet-server and greet-client are (default: builds
#                      them with `cargo build --release`, uses target/release)
#   --duration D       length of each load run (default 10s)
#   --stall-after S    seconds into each run before SIGSTOP (default 3)
#   --stall-for S      seconds between SIGSTOP and SIGCONT (default 4)
#   --hedge "ARGS"     the client's hedging flags in the second run (default:
#                      "--hedge-percentile 95 --hedge-min-delay 5ms --hedge-say-hello")
#   -h, --help         this help
# Environment: BASE_PORT (default 8231; the servers take it and the next two).
# Needs python3 to read the client's JSON report.

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$SCRIPT_DIR")"
BIN_DIR=""
DURATION=10s
STALL_AFTER=3
STALL_FOR=4
HEDGE="--hedge-percentile 95 --hedge-min-delay 5ms --hedge-say-hello"
BASE_PORT="${BASE_PORT:-8231}"
CLIENT_ARGS=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin-dir) BIN_DIR="${2:?--bin-dir needs a value}"; shift 2 ;;
        --duration) DURATION="${2:?--duration needs a value}"; shift 2 ;;
        --stall-after) STALL_AFTER="${2:?--stall-after needs seconds}"; shift 2 ;;
        --stall-for) STALL_FOR="${2:?--stall-for needs seconds}"; shift 2 ;;
        --hedge) HEDGE="${2:?--hedge needs the client flags}"; shift 2 ;;
        -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; CLIENT_ARGS=("$@"); break ;;
        *) echo "hedge_stall.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

command -v python3 >/dev/null || { echo "hedge_stall.sh: python3 is needed" >&2; exit 2; }

if [[ -z "$BIN_DIR" ]]; then
    cargo build --release --manifest-path "$ROOT/Cargo.toml" -p fyerrpc-demo --bins
    BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi

PIDS=()
STALLED=""
cleanup() {
    # A stopped process must be resumed to act on a signal other than KILL;
    # KILL works either way.
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill -CONT "$pid" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
    done
    [[ -n "$STALLED" ]] && kill "$STALLED" 2>/dev/null || true
    rm -rf "$WORK_DIR"
}
WORK_DIR="$(mktemp -d)"
trap cleanup EXIT

A=$BASE_PORT B=$((BASE_PORT + 1)) C=$((BASE_PORT + 2))
for port in "$A" "$B" "$C"; do
    "$BIN_DIR/greet-server" --port "$port" --id "server-$port" \
        >"$WORK_DIR/server_$port.log" 2>&1 </dev/null &
    PIDS+=($!)
    disown "$!" # no job notice when they are killed at the end
done
PID_A=${PIDS[0]}
for port in "$A" "$B" "$C"; do
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null; then break; fi
        sleep 0.1
    done
done

# run NAME [client flags...]: one load run with server A stalled in the middle.
run() {
    local name="$1"
    shift
    (
        sleep "$STALL_AFTER"
        kill -STOP "$PID_A" && echo "  [$name: server-$A stopped with SIGSTOP]" >&2
        sleep "$STALL_FOR"
        kill -CONT "$PID_A" && echo "  [$name: server-$A resumed with SIGCONT]" >&2
    ) &
    STALLED=$!
    "$BIN_DIR/greet-client" --servers "127.0.0.1:$A,127.0.0.1:$B,127.0.0.1:$C" \
        --scenario load --duration "$DURATION" --concurrency 16 --request-timeout 10s \
        --output json "$@" ${CLIENT_ARGS[@]+"${CLIENT_ARGS[@]}"} \
        >"$WORK_DIR/$name.json" 2>"$WORK_DIR/$name.err" \
        || { cat "$WORK_DIR/$name.err" >&2; exit 1; }
    wait "$STALLED" 2>/dev/null || true
    STALLED=""
    grep -E '^\s+\[|calls succeeded' "$WORK_DIR/$name.err" >&2 || true
}

echo "Run 1 of 2: hedging off" >&2
run off
echo "Run 2 of 2: hedging on ($HEDGE)" >&2
# shellcheck disable=SC2086 # the hedging flags are split on purpose
run on $HEDGE

python3 - "$WORK_DIR/off.json" "$WORK_DIR/on.json" <<'EOF'
import json, sys

rows = []
for name, path in zip(["off", "on"], sys.argv[1:]):
    with open(path) as f:
        r = json.load(f)
    calls = max(r["requests"], 1)
    extra = r["retries"] + r["hedges_sent"] + r["transparent_retries"]
    rows.append((
        f"hedging {name}",
        str(r["requests"]),
        str(r["failures"]),
        f'{r["p50_latency"] * 1e3:.2f}',
        f'{r["p99_latency"] * 1e3:.2f}',
        f'{r["max_latency"] * 1e3:.2f}',
        f"{100.0 * extra / calls:.2f} %",
        f'{r["hedges_sent"]}/{r["hedges_won"]}/{r["hedges_cancelled"]}',
    ))
head = ("run", "calls", "failed", "p50 ms", "p99 ms", "max ms", "extra attempts",
        "hedges sent/won/cancelled")
widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
for row in rows:
    print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
EOF
