#!/usr/bin/env bash
# /stats load directly on a shard and through the router, same tool, same run.
#
#   bash benches/router_load.sh            # defaults: 15 s per target, 32 connections
#   DURATION=30s CONNECTIONS=64 TOKEN=ETH bash benches/router_load.sh
#
# The "shard" is `swapstats standalone` with one partition (same /stats and
# /readyz as a shard, fed by the built-in generator, no external services);
# the router is `swapstats router` with static discovery pointing at it and no
# fallback store. Targets: router p99 < 2 ms, router rate >= 0.5x direct.
# Needs wrk (apt-get install -y wrk) and a release build (built here).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-15s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
TOKEN="${TOKEN:-BTC}"
SHARD_PORT="${SHARD_PORT:-18081}"
ROUTER_PORT="${ROUTER_PORT:-18080}"

command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
cargo build --release --quiet --bins
BIN="$PWD/target/release/swapstats"
LOGS="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_ok() { # URL
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "not OK: $1 (logs in $LOGS)" >&2
  exit 1
}

SWAPSTATS__HTTP__ADDR="127.0.0.1:$SHARD_PORT" SWAPSTATS__SHARD__PARTITIONS=1 \
SWAPSTATS__GENERATOR__RATE=1000 SWAPSTATS__GENERATOR__TOKENS=1000 \
  "$BIN" standalone >"$LOGS/shard.log" 2>&1 &
PIDS+=($!)
wait_ok "http://127.0.0.1:$SHARD_PORT/readyz"

SWAPSTATS__HTTP__ADDR="127.0.0.1:$ROUTER_PORT" SWAPSTATS__SHARD__PARTITIONS=1 \
SWAPSTATS__ROUTER__SHARDS="http://127.0.0.1:$SHARD_PORT" SWAPSTATS__STORE__KIND=memory \
  "$BIN" router >"$LOGS/router.log" 2>&1 &
PIDS+=($!)
wait_ok "http://127.0.0.1:$ROUTER_PORT/readyz"
sleep 3 # let the generator put some swaps in

run() { # NAME URL
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$2" >/dev/null # warm-up
  local out rps p50 p99
  out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$2")"
  rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
  p50="$(awk '$1 == "50%" {print $2}' <<<"$out")"
  p99="$(awk '$1 == "99%" {print $2}' <<<"$out")"
  if grep -q "Non-2xx" <<<"$out"; then echo "$1: some answers were not 2xx:" >&2; grep "Non-2xx" <<<"$out" >&2; fi
  printf '%-8s %12s req/s   p50 %9s   p99 %9s\n' "$1" "$rps" "$p50" "$p99"
  echo "$rps" >"$LOGS/$1.rps"
}

echo "== /stats?token=$TOKEN, $CONNECTIONS connections, $THREADS wrk threads, $DURATION each"
run direct "http://127.0.0.1:$SHARD_PORT/stats?token=$TOKEN"
run router "http://127.0.0.1:$ROUTER_PORT/stats?token=$TOKEN"
awk -v d="$(cat "$LOGS/direct.rps")" -v r="$(cat "$LOGS/router.rps")" \
  'BEGIN { printf "router/direct rate: %.2f (target >= 0.5)\n", r / d }'
