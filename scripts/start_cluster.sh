#!/usr/bin/env bash
# Starts the greet cluster, runs greet-client against it, and stops it.
#
#   server-A  port 8001  fails every call for 10s after 100 calls
#   server-B  port 8002  fails 10% of calls at random
#   server-C  port 8003  normal
#
# Health, status and metrics of each server: http://localhost:1800N/health,
# /status, /metrics. Logs go to scripts/logs/, pid files to scripts/run/.
#
# Usage: scripts/start_cluster.sh [options] [-- greet-client arguments]
#   --registry static|file|etcd|consul
#                                   registry backend (default: static, or $FYERRPC_REGISTRY)
#   --registry-addr ADDR            etcd endpoints, Consul agent address, or the registry
#                                   file (default for file: scripts/run/registry.json)
#   --tls                           mutual TLS on every gRPC hop: makes a throw-away CA,
#                                   server and client certificates in scripts/tls/
#                                   (openssl), servers require client certificates
#   --release                       build and run optimized binaries
#   --output table|json             the client's final report: a table (default),
#                                   or one line of JSON on stdout (everything
#                                   else goes to stderr; the report is also kept
#                                   in scripts/logs/client.json)
#   --keep                          leave the servers running after the client
#                                   (stop them with scripts/stop_cluster.sh)
#   -h, --help                      this help
# Environment: BASE_PORT (default 8001).
#
# Examples:
#   scripts/start_cluster.sh
#   scripts/start_cluster.sh -- --scenario load --requests 5000 --concurrency 50
#   scripts/start_cluster.sh --registry file
#   scripts/start_cluster.sh --registry etcd --registry-addr http://127.0.0.1:2379
#   scripts/start_cluster.sh --output json > report.json
#   scripts/start_cluster.sh --tls

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$SCRIPT_DIR")"
LOG_DIR="$SCRIPT_DIR/logs"
RUN_DIR="$SCRIPT_DIR/run"
BASE_PORT="${BASE_PORT:-8001}"
HEALTH_OFFSET=10000
READY_TIMEOUT=30

REGISTRY="${FYERRPC_REGISTRY:-static}"
REGISTRY_ADDR="${FYERRPC_REGISTRY_ADDR:-}"
PROFILE=debug
KEEP=0
OUTPUT=table
TLS=0
TLS_DIR="$SCRIPT_DIR/tls"
CLIENT_ARGS=()

usage() { sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --registry) REGISTRY="${2:?--registry needs a value}"; shift 2 ;;
        --registry=*) REGISTRY="${1#*=}"; shift ;;
        --registry-addr) REGISTRY_ADDR="${2:?--registry-addr needs a value}"; shift 2 ;;
        --registry-addr=*) REGISTRY_ADDR="${1#*=}"; shift ;;
        --release) PROFILE=release; shift ;;
        --output) OUTPUT="${2:?--output needs a value}"; shift 2 ;;
        --output=*) OUTPUT="${1#*=}"; shift ;;
        --tls) TLS=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; CLIENT_ARGS=("$@"); break ;;
        *) echo "start_cluster.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

case "$REGISTRY" in
    static) FEATURES=() ;;
    file) FEATURES=(); REGISTRY_ADDR="${REGISTRY_ADDR:-$RUN_DIR/registry.json}" ;;
    etcd|consul) FEATURES=(--features "$REGISTRY") ;;
    *) echo "start_cluster.sh: --registry must be static, file, etcd or consul, not '$REGISTRY'" >&2; exit 2 ;;
esac

case "$OUTPUT" in
    table|json) ;;
    *) echo "start_cluster.sh: --output must be table or json, not '$OUTPUT'" >&2; exit 2 ;;
esac

# say TEXT: progress messages; on stderr when stdout carries the JSON report.
say() {
    if [[ "$OUTPUT" == json ]]; then echo "$@" >&2; else echo "$@"; fi
}

REGISTRY_FLAGS=(--registry "$REGISTRY")
if [[ -n "$REGISTRY_ADDR" ]]; then
    REGISTRY_FLAGS+=(--registry-addr "$REGISTRY_ADDR")
fi

# make_certificates: a CA, a server certificate for localhost/127.0.0.1/::1
# and a client certificate, all signed by the CA, in $TLS_DIR (made anew each
# run; nothing in it is secret beyond this cluster).
make_certificates() {
    command -v openssl >/dev/null || { echo "start_cluster.sh: --tls needs openssl" >&2; exit 2; }
    rm -rf "$TLS_DIR"
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=fyerrpc demo CA" -keyout ca.key -out ca.pem 2>/dev/null
        # leaf NAME CN EXTENSIONS
        leaf() {
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
            printf '%s\n' "$3" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
                -days 2 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
            rm -f "$1.csr" "$1.ext"
        }
        leaf server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
extendedKeyUsage=serverAuth"
        leaf client greet-client "extendedKeyUsage=clientAuth"
    )
    say "Certificates for mutual TLS in $TLS_DIR (CA, server, client)"
}

# Build once; the servers and the client run the built binaries.
say "Building greet-server and greet-client ($PROFILE)..."
BUILD=(cargo build --manifest-path "$ROOT/Cargo.toml" -p fyerrpc-demo --bins)
[[ "$PROFILE" == release ]] && BUILD+=(--release)
"${BUILD[@]}" ${FEATURES[@]+"${FEATURES[@]}"}
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"

SERVER_TLS_FLAGS=()
CLIENT_TLS_FLAGS=()
if [[ "$TLS" == 1 ]]; then
    make_certificates
    SERVER_TLS_FLAGS=(--tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key"
        --tls-client-ca "$TLS_DIR/ca.pem")
    CLIENT_TLS_FLAGS=(--tls-ca "$TLS_DIR/ca.pem" --tls-cert "$TLS_DIR/client.pem"
        --tls-key "$TLS_DIR/client.key")
fi

# Leftovers of an earlier run would hold the ports.
"$SCRIPT_DIR/stop_cluster.sh" --quiet
mkdir -p "$LOG_DIR" "$RUN_DIR"

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ "$KEEP" == 1 && "$status" == 0 ]]; then
        say "Servers left running; stop them with scripts/stop_cluster.sh"
    else
        "$SCRIPT_DIR/stop_cluster.sh" --quiet || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# lower NAME: NAME in lower case (bash 3 has no ${x,,}).
lower() { echo "$1" | tr '[:upper:]' '[:lower:]'; }

# start_server NAME PORT [greet-server flags...]
start_server() {
    local name="$1" port="$2" key
    shift 2
    key="$(lower "$name")"
    local log="$LOG_DIR/server_$key.log"
    "$BIN_DIR/greet-server" --port "$port" --id "server-$name" "${REGISTRY_FLAGS[@]}" \
        ${SERVER_TLS_FLAGS[@]+"${SERVER_TLS_FLAGS[@]}"} "$@" \
        >"$log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/server_$key.pid"
}

# http_status PORT PATH: the HTTP status code, or nothing if no answer.
http_status() {
    local code=""
    if exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null; then
        printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
        local line=""
        read -r -t 2 line <&3 || true
        exec 3>&- 3<&-
        code="$(echo "$line" | awk '{print $2}')"
    fi
    echo "$code"
}

# wait_healthy NAME PORT: until /health answers 200, the server dies, or time runs out.
wait_healthy() {
    local name="$1" port="$2" pid key
    key="$(lower "$name")"
    pid="$(cat "$RUN_DIR/server_$key.pid")"
    local deadline=$((SECONDS + READY_TIMEOUT))
    while (( SECONDS < deadline )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "server-$name exited; its log ($LOG_DIR/server_$key.log):" >&2
            tail -n 20 "$LOG_DIR/server_$key.log" >&2
            return 1
        fi
        if [[ "$(http_status $((port + HEALTH_OFFSET)) /health)" == 200 ]]; then
            say "  server-$name is up (http://localhost:$((port + HEALTH_OFFSET))/health)"
            return 0
        fi
        sleep 0.2
    done
    echo "server-$name did not become healthy within ${READY_TIMEOUT}s" >&2
    return 1
}

PORT_A=$BASE_PORT
PORT_B=$((BASE_PORT + 1))
PORT_C=$((BASE_PORT + 2))

TRANSPORT=plaintext
[[ "$TLS" == 1 ]] && TRANSPORT="mutual TLS"
say "Starting server cluster for failover demonstration (registry: $REGISTRY, $TRANSPORT)..."
say "Starting Server A (Port $PORT_A) - Fails after 100 requests for 10s"
start_server A "$PORT_A" --fail-after 100 --fail-duration 10s
say "Starting Server B (Port $PORT_B) - 10% random failure rate"
start_server B "$PORT_B" --fail-rate 0.1
say "Starting Server C (Port $PORT_C) - Normal operation"
start_server C "$PORT_C"

wait_healthy A "$PORT_A"
wait_healthy B "$PORT_B"
wait_healthy C "$PORT_C"

CLIENT=("$BIN_DIR/greet-client" "${REGISTRY_FLAGS[@]}" ${CLIENT_TLS_FLAGS[@]+"${CLIENT_TLS_FLAGS[@]}"}
    --servers "localhost:$PORT_A,localhost:$PORT_B,localhost:$PORT_C")
if [[ "$OUTPUT" == json ]]; then
    say "Starting failover client demo (log: $LOG_DIR/client.log, report: $LOG_DIR/client.json)..."
    rm -f "$LOG_DIR/client.json"
    # The client's stdout (the JSON report) goes to ours and to client.json;
    # its narration (stderr) to our stderr and to client.log.
    { "${CLIENT[@]}" ${CLIENT_ARGS[@]+"${CLIENT_ARGS[@]}"} --output json \
        2>&1 1>&3 3>&- | tee "$LOG_DIR/client.log" >&2 3>&-; } 3>&1 |
        tee "$LOG_DIR/client.json"
else
    say "Starting failover client demo (log: $LOG_DIR/client.log)..."
    "${CLIENT[@]}" ${CLIENT_ARGS[@]+"${CLIENT_ARGS[@]}"} 2>&1 | tee "$LOG_DIR/client.log"
fi
