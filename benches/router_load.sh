#!/usr/bin/env bash
# /stats load directly on a shard and through the router, same tool, same run.
#
#   bash benches/router_load.sh            # defaults: 15 s per target, 32 connections
#   DURATION=30s CONNECTIONS=64 TOKEN=ETH bash benches/router_load.sh
#   CONNECTIONS="2 32" bash benches/router_load.sh   # several runs against the same processes
#
# The binary is taken from $CARGO_TARGET_DIR (default ./target)/release.
# wrk, the shard and the router share the machine's cores: on a small machine
# the numbers say as much about that contention as about the router.
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
command -v curl >/dev/null || { echo "curl not found: apt-get install -y curl" >&2; exit 1; }
for port in "$SHARD_PORT" "$ROUTER_PORT"; do
  # A leftover server on a port would be measured instead of the fresh one.
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
    echo "port $port is already in use; set SHARD_PORT / ROUTER_PORT" >&2
    exit 1
  fi
done
cargo build --release --quiet --bins
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/swapstats"
LOGS="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_ok() { # URL PID LOG
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    if ! kill -0 "$2" 2>/dev/null; then
      echo "process $2 exited before $1 answered; its log:" >&2
      cat "$3" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "not OK: $1 (logs in $LOGS)" >&2
  exit 1
}

SWAPSTATS__HTTP__ADDR="127.0.0.1:$SHARD_PORT" SWAPSTATS__SHARD__PARTITIONS=1 \
SWAPSTATS__GENERATOR__RATE=1000 SWAPSTATS__GENERATOR__TOKENS=1000 \
  "$BIN" standalone >"$LOGS/shard.log" 2>&1 &
PIDS+=($!)
wait_ok "http://127.0.0.1:$SHARD_PORT/readyz" "$!" "$LOGS/shard.log"

SWAPSTATS__HTTP__ADDR="127.0.0.1:$ROUTER_PORT" SWAPSTATS__SHARD__PARTITIONS=1 \
SWAPSTATS__ROUTER__SHARDS="http://127.0.0.1:$SHARD_PORT" SWAPSTATS__STORE__KIND=memory \
  "$BIN" router >"$LOGS/router.log" 2>&1 &
PIDS+=($!)
wait_ok "http://127.0.0.1:$ROUTER_PORT/readyz" "$!" "$LOGS/router.log"
sleep 3 # let the generator put some swaps in, and the router see the shard ready
# The router must proxy to the shard, not answer from a fallback.
if ! curl -fsS "http://127.0.0.1:$ROUTER_PORT/stats?token=$TOKEN" | grep -q '"source":"shard"'; then
  echo "the router does not answer $TOKEN from the shard:" >&2
  curl -sS "http://127.0.0.1:$ROUTER_PORT/stats?token=$TOKEN" >&2
  exit 1
fi

# wrk prints latencies as 48.00us / 1.23ms / 1.05s: normalise to ms.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n
  }'
}

run() { # NAME URL CONNECTIONS
  local threads=$((THREADS < $3 ? THREADS : $3))
  wrk -t"$threads" -c"$3" -d2s "$2" >/dev/null # warm-up
  local out rps p50 p99
  out="$(wrk -t"$threads" -c"$3" -d"$DURATION" --latency "$2")"
  rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
  p50="$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
  p99="$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
  if grep -q "Non-2xx" <<<"$out"; then echo "$1: some answers were not 2xx:" >&2; grep "Non-2xx" <<<"$out" >&2; fi
  if grep -q "Socket errors" <<<"$out"; then echo "$1: $(grep "Socket errors" <<<"$out")" >&2; fi
  printf '%-8s %5s conns %12s req/s   p50 %8s ms   p99 %8s ms\n' "$1" "$3" "$rps" "$p50" "$p99"
  echo "$rps $p50 $p99" >"$LOGS/$1.$3"
}

echo "== /stats?token=$TOKEN, $DURATION each, up to $THREADS wrk threads, $(nproc) cores shared by wrk, shard and router"
for c in $CONNECTIONS; do
  run direct "http://127.0.0.1:$SHARD_PORT/stats?token=$TOKEN" "$c"
  run router "http://127.0.0.1:$ROUTER_PORT/stats?token=$TOKEN" "$c"
  read -r d _ dp99 <"$LOGS/direct.$c"
  read -r r _ rp99 <"$LOGS/router.$c"
  awk -v d="$d" -v r="$r" -v p="$rp99" -v c="$c" 'BEGIN {
    printf "%5s conns: router/direct rate %.2f (target >= 0.5), router p99 %.3f ms (target < 2 ms)\n", c, r / d, p
  }'
done
