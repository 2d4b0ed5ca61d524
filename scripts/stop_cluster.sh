#!/usr/bin/env bash
# Stops the greet servers started by start_cluster.sh: SIGTERM (they
# deregister and drain), then SIGKILL for any still running after 15 s.
#
# Usage: scripts/stop_cluster.sh [--quiet]

set -uo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN_DIR="$SCRIPT_DIR/run"
GRACE=15
QUIET=0
[[ "${1:-}" == --quiet ]] && QUIET=1

say() { [[ "$QUIET" == 1 ]] || echo "$@"; }

# is_ours PID: the process runs and is a greet-server (not a reused pid,
# not a zombie waiting for its parent).
is_ours() {
    local info
    info="$(ps -p "$1" -o stat= -o comm= 2>/dev/null)" || return 1
    [[ "$info" != Z* && "$info" == *greet-server* ]]
}

shopt -s nullglob
pids=()
for file in "$RUN_DIR"/*.pid; do
    pid="$(cat "$file")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && is_ours "$pid"; then
        say "Stopping $(basename "$file" .pid) (pid $pid)"
        kill -TERM "$pid" 2>/dev/null
        pids+=("$pid")
    fi
    rm -f "$file"
done

deadline=$((SECONDS + GRACE))
for pid in ${pids[@]+"${pids[@]}"}; do
    while is_ours "$pid" && (( SECONDS < deadline )); do
        sleep 0.1
    done
    if is_ours "$pid"; then
        say "pid $pid did not stop in ${GRACE}s; killing it"
        kill -KILL "$pid" 2>/dev/null
    fi
done
say "Cluster stopped."
exit 0
