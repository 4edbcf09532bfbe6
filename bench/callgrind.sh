#!/usr/bin/env bash
# bench/callgrind.sh SCENARIO — instructions per request (or per handshake) of
# tidegate under valgrind's callgrind, with the bench's own load: repeatable on
# a noisy machine, where CPU time is not. Run bench/run.sh once first (it builds
# the harness and tidegate), or set TIDEGATE_BIN.
#
#   bench/callgrind.sh http          # plain keep-alive GETs
#   bench/callgrind.sh handshakes    # WebSocket open + 101 + close
#
# Prints "requests N total_ir T ir_per_request T/N" (requests: the sum of
# tidegate_requests_total, i.e. every response tidegate relayed, a 101 included;
# the total includes startup, about 3M instructions) and leaves the profile for
# callgrind_annotate in the scratch directory it names. Ports as bench/run.sh:
# tidegate 18080, admin 19901, backends 19001-19003. Needs valgrind (Debian:
# apt-get install valgrind) and curl.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$(dirname "$BENCH_DIR")/target}
HARNESS=$TARGET_DIR/release/tidegate-bench
TIDEGATE_BIN=${TIDEGATE_BIN:-$TARGET_DIR/release/tidegate}
SCENARIO=${1:?usage: bench/callgrind.sh SCENARIO (http, handshakes, ...)}
DURATION=${DURATION:-5}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }

SCRATCH=$(mktemp -d /tmp/tidegate-callgrind.XXXXXX)
ulimit -n 20000 2>/dev/null || true
BACKEND_PID= PROXY_PID=
cleanup() {
    [[ -n $PROXY_PID ]] && kill -TERM "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null
    [[ -n $BACKEND_PID ]] && kill "$BACKEND_PID" 2>/dev/null && wait "$BACKEND_PID" 2>/dev/null
    true
}
trap cleanup EXIT

taskset -c 1 "$HARNESS" backend --ports 19001,19002,19003 2>"$SCRATCH/backend.log" &
BACKEND_PID=$!
for port in 19001 19002 19003; do "$HARNESS" wait-port "127.0.0.1:$port" --timeout 10; done

RUST_LOG=info,tidegate::access=off valgrind --tool=callgrind --callgrind-out-file="$SCRATCH/callgrind.out" \
    "$TIDEGATE_BIN" run --config "$BENCH_DIR/configs/tidegate.toml" 2>"$SCRATCH/tidegate.log" &
PROXY_PID=$!
"$HARNESS" wait-port 127.0.0.1:18080 --timeout 120
taskset -c 1 "$HARNESS" "$SCENARIO" --target 127.0.0.1:18080 --proxy tidegate --pid "$PROXY_PID" \
    --duration "$DURATION" >"$SCRATCH/load.jsonl" 2>"$SCRATCH/load.log"
requests=$(curl -s 127.0.0.1:19901/metrics | awk '/^tidegate_requests_total/ {s += $2} END {print s + 0}')
kill -TERM "$PROXY_PID"
wait "$PROXY_PID" 2>/dev/null || true
PROXY_PID=
total=$(callgrind_annotate "$SCRATCH/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
((requests > 0)) || { echo "no requests were served (see $SCRATCH)" >&2; exit 1; }
echo "requests $requests total_ir $total ir_per_request $((total / requests))"
echo "profile: callgrind_annotate $SCRATCH/callgrind.out" >&2
