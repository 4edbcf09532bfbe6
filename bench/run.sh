#!/usr/bin/env bash
# bench/run.sh — tidegate side by side with HAProxy and nginx (method: PERF.md).
#
#   bench/run.sh                                  # everything: 3 rounds, ~15-20 min
#   DURATION=3 ROUNDS=1 IDLE_N=2000 bench/run.sh  # a quick check
#   SCENARIOS="idle throughput" PROXIES="tidegate haproxy" bench/run.sh
#
# Builds the harness and tidegate (release), installs haproxy and nginx from
# Debian when missing, starts the three echo backends once (ports 19001-19003,
# CPU 1), then for each round, scenario and proxy (interleaved) starts the proxy
# pinned to CPU 0, runs the scenario from CPU 1, and stops the proxy by PID.
# Raw results: bench/results/<timestamp>.jsonl; the table is printed at the end
# (again any time: tidegate-bench table bench/results/FILE.jsonl).
#
# Environment:
#   ROUNDS=3          rounds (each runs every scenario against every proxy)
#   DURATION=10       seconds measured per scenario (after a 1 s warm-up)
#   SCENARIOS="http http_big latency throughput handshakes idle sticky"
#   PROXIES="direct tidegate haproxy nginx"   (also: haproxy-64k nginx-64k tidegate-splice)
#   IDLE_N=9900       idle WebSockets held in "idle"
#   TIDEGATE_BIN=...  tidegate binary (default: the workspace's target/release/tidegate)
#   TIDEGATE_LOG=...  RUST_LOG for tidegate (default: info,tidegate::access=off)
#   SKIP_BUILD=1      use the binaries as they are
#   CARGO_TARGET_DIR  honoured, as by cargo
#
# Ports: tidegate 18080 (admin 19901), HAProxy 18081, nginx 18082,
# tidegate-splice ([limits] splice = true) 18083 (admin 19902), backends
# 19001-19003, all on 127.0.0.1. Needs root for apt-get only when a peer is missing.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
SCENARIOS=${SCENARIOS:-"http http_big latency throughput handshakes idle sticky"}
PROXIES=${PROXIES:-"direct tidegate haproxy nginx"}
IDLE_N=${IDLE_N:-9900}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
HARNESS=$TARGET_DIR/release/tidegate-bench
TIDEGATE_BIN=${TIDEGATE_BIN:-$TARGET_DIR/release/tidegate}
BACKENDS=127.0.0.1:19001,127.0.0.1:19002,127.0.0.1:19003

say() { printf '%s\n' "$*" >&2; }
has() { [[ " $PROXIES " == *" $1 "* ]]; }

# --- build ---------------------------------------------------------------
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    say "building the harness (release)..."
    (cd "$ROOT" && cargo build --release -q -p tidegate-bench)
    if has tidegate || has tidegate-splice; then
        say "building tidegate (release)..."
        (cd "$ROOT" && cargo build --release -q -p tidegate --bin tidegate) ||
            say "WARNING: tidegate failed to build"
    fi
fi
[[ -x $HARNESS ]] || { say "no harness binary at $HARNESS"; exit 1; }
if { has tidegate || has tidegate-splice; } && [[ ! -x $TIDEGATE_BIN ]]; then
    say "SKIPPING tidegate: no binary at $TIDEGATE_BIN (build it, or set TIDEGATE_BIN)"
    PROXIES=$(tr ' ' '\n' <<<"$PROXIES" | grep -vx 'tidegate\|tidegate-splice' | tr '\n' ' ')
fi

# --- peers ---------------------------------------------------------------
missing=()
{ has haproxy || has haproxy-64k; } && ! command -v haproxy >/dev/null && missing+=(haproxy)
{ has nginx || has nginx-64k; } && ! command -v nginx >/dev/null && missing+=(nginx)
if ((${#missing[@]})); then
    say "installing ${missing[*]} from Debian..."
    apt-get update -q >/dev/null
    # policy-rc.d (where present) keeps the packages' services from starting.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# --- limits, scratch, cleanup ---------------------------------------------
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
say "fd limit: $(ulimit -n)"
SCRATCH=$(mktemp -d /tmp/tidegate-bench.XXXXXX)
mkdir -p "$BENCH_DIR/results"
OUT=$BENCH_DIR/results/$(date +%Y%m%d-%H%M%S).jsonl
[[ -e $OUT ]] && OUT=${OUT%.jsonl}-$$.jsonl
: >"$OUT"
BACKEND_PID=
PROXY_PID=
LOAD_PID=

stop_pid() { # PID: TERM, up to 5 s, then KILL
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$LOAD_PID"
    stop_pid "$PROXY_PID"
    stop_pid "$BACKEND_PID"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- proxies ---------------------------------------------------------------
proxy_addr() {
    case $1 in
        direct) echo "$BACKENDS" ;;
        tidegate) echo 127.0.0.1:18080 ;;
        tidegate-splice) echo 127.0.0.1:18083 ;;
        haproxy | haproxy-64k) echo 127.0.0.1:18081 ;;
        nginx | nginx-64k) echo 127.0.0.1:18082 ;;
        *) say "unknown proxy '$1'"; return 1 ;;
    esac
}

start_proxy() { # NAME: starts it pinned to CPU 0, sets PROXY_PID
    local name=$1 addr log=$SCRATCH/$1.log
    addr=$(proxy_addr "$name")
    PROXY_PID=
    [[ $name == direct ]] && return 0
    if ! "$HARNESS" wait-port "$addr" --closed --timeout 5 2>/dev/null; then
        say "port $addr is taken by something else: not starting $name"
        return 1
    fi
    case $name in
        tidegate | tidegate-splice)
            # No access log (the peers run without one either).
            RUST_LOG=${TIDEGATE_LOG:-info,tidegate::access=off} \
                taskset -c 0 "$TIDEGATE_BIN" run --config "$BENCH_DIR/configs/$name.toml" 2>>"$log" &
            ;;
        haproxy | haproxy-64k)
            local cfg=$BENCH_DIR/configs/haproxy.cfg
            [[ $name == haproxy-64k ]] && cfg=$BENCH_DIR/configs/haproxy-64k.cfg
            taskset -c 0 haproxy -db -f "$cfg" >>"$log" 2>&1 &
            ;;
        nginx | nginx-64k)
            local cfg=$BENCH_DIR/configs/nginx.conf prefix=$SCRATCH/nginx
            [[ $name == nginx-64k ]] && cfg=$BENCH_DIR/configs/nginx-64k.conf
            mkdir -p "$prefix/logs" "$prefix/tmp"
            taskset -c 0 nginx -p "$prefix/" -e "$prefix/logs/error.log" -c "$cfg" \
                -g 'daemon off;' >>"$log" 2>&1 &
            ;;
    esac
    PROXY_PID=$!
    if ! "$HARNESS" wait-port "$addr" --timeout 15; then
        say "$name did not start listening; its log ($log):"
        tail -5 "$log" >&2 || true
        stop_pid "$PROXY_PID"
        PROXY_PID=
        return 1
    fi
    sleep 0.3 # let nginx's worker come up, so that its PID is counted
}

scenario_args() { # SCENARIO: its extra arguments
    case $1 in
        idle) echo "--count $IDLE_N" ;;
        *) echo "" ;;
    esac
}

error_record() { # ROUND SCENARIO PROXY MESSAGE
    printf '{"ts":%s,"round":%s,"proxy":"%s","scenario":"%s","error":"%s"}\n' \
        "$(date +%s)" "$1" "$3" "$2" "${4//\"/\'}" >>"$OUT"
}

run_one() { # ROUND SCENARIO PROXY
    local round=$1 scenario=$2 proxy=$3 addr pid_args=() rc=0 lines
    addr=$(proxy_addr "$proxy")
    if ! start_proxy "$proxy"; then
        error_record "$round" "$scenario" "$proxy" "$proxy did not start"
        return 0
    fi
    [[ -n $PROXY_PID ]] && pid_args=(--pid "$PROXY_PID")
    lines=$(wc -l <"$OUT")
    # In the background with `wait`, so that Ctrl-C is handled at once. The
    # harness bounds itself; `timeout` is the last resort.
    # shellcheck disable=SC2046 # scenario_args is meant to split
    timeout --kill-after=10 $((DURATION * 3 + 240)) \
        taskset -c 1 "$HARNESS" "$scenario" --target "$addr" --proxy "$proxy" --round "$round" \
        --duration "$DURATION" "${pid_args[@]}" $(scenario_args "$scenario") \
        >>"$OUT" 2>>"$SCRATCH/harness.log" &
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    tail -1 "$SCRATCH/harness.log" >&2
    if (($(wc -l <"$OUT") == lines)); then # the harness wrote no record
        if ((rc == 124 || rc == 137)); then
            error_record "$round" "$scenario" "$proxy" "timed out"
        else
            error_record "$round" "$scenario" "$proxy" "harness exit $rc: $(tail -1 "$SCRATCH/harness.log")"
        fi
    fi
    if [[ -n $PROXY_PID ]] && ! kill -0 "$PROXY_PID" 2>/dev/null; then
        say "  WARNING: $proxy exited during $scenario (log: $SCRATCH/$proxy.log)"
        error_record "$round" "$scenario" "$proxy" "$proxy exited during the run"
    fi
    stop_pid "$PROXY_PID"
    PROXY_PID=
}

# --- run -----------------------------------------------------------------
for p in $PROXIES; do proxy_addr "$p" >/dev/null || exit 2; done
taskset -c 1 "$HARNESS" backend --ports 19001,19002,19003 2>>"$SCRATCH/backend.log" &
BACKEND_PID=$!
for port in 19001 19002 19003; do
    "$HARNESS" wait-port "127.0.0.1:$port" --timeout 10 || { tail -5 "$SCRATCH/backend.log" >&2; exit 1; }
done

say "rounds=$ROUNDS duration=${DURATION}s scenarios: $SCENARIOS"
say "proxies: $PROXIES; results: $OUT; logs: $SCRATCH"
read -r -a order <<<"$PROXIES"
for round in $(seq "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        # Interleaved, and each round starts with the next proxy, so that none
        # always runs first (or right after the same neighbour).
        for i in "${!order[@]}"; do
            run_one "$round" "$scenario" "${order[(i + round - 1) % ${#order[@]}]}"
        done
    done
done
kill -0 "$BACKEND_PID" 2>/dev/null || say "WARNING: the backends exited during the run"

echo
"$HARNESS" table "$OUT"
echo
echo "raw results: $OUT"
