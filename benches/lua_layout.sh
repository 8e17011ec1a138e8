#!/usr/bin/env bash
# What the Redis key layout costs a batch: the same writes shaped two ways, on a
# real master + replica pair (redis-server on loopback).
#
#   bash benches/lua_layout.sh                    # 5,000 token-periods per batch, 20 batches
#   HASHES=2000 ROUNDS=40 bash benches/lua_layout.sh
#
# A shard batch touches one hash per (token, period) and writes a bucket field
# and a wallet-mark field into each (lua/apply_batch.lua; shard_pipeline's
# batches average ~4,900 of them). The layouts:
#   per-token      (today's): HASHES hashes of 2 fields, one HSET + one PEXPIREAT each
#                  (every hash new, as in shard_pipeline's fresh partitions)
#   per-token-hset the same without the PEXPIREAT (a hash that already has its
#                  expiry: the steady state of a long-lived shard)
#   per-partition  (a candidate): one hash per period with fields
#                  "<token>\0<field>", HSET in chunks of 512 pairs, one PEXPIREAT
# The values are built inside the script (108-byte bucket, 180-byte marks);
# each layout also runs "dry" (everything but the redis.call), and
# "write" = full - dry is what the calls themselves cost. Master time is the
# script's usec_per_call; replica time is its CPU while applying the effects.
#
# Two idle servers and two small fields per hash: the per-call share here is
# an upper bound. In the real cluster (`BENCH_STREAM_RATE=1000 cargo bench
# --bench store_persist`, which prints the masters' command stats) the script
# spends ~57% of its time inside HSET (~4.3 µs a call, many fields each), ~10%
# in PEXPIREAT and the rest in Lua (arguments, shape check, unpack, ZADD).
# Cutting two thirds of the PEXPIREATs (tried: an always-present marker field
# so only a key's creation sets its expiry) moved store_persist less than its
# noise (~12% run to run), so it was not kept.
set -euo pipefail

HASHES="${HASHES:-5000}"
ROUNDS="${ROUNDS:-20}"
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install -y redis-server" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
MASTER="$(free_port)"
REPLICA="$(free_port)"
DIR="$(mktemp -d)"
cleanup() {
  redis-cli -p "$REPLICA" shutdown nosave >/dev/null 2>&1 || true
  redis-cli -p "$MASTER" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT

for expire in yes no; do
  name=per_token
  [ "$expire" = no ] && name=per_token_hset
  cat >"$DIR/$name.lua" <<EOF
local run, dry, n = ARGV[1], ARGV[2] == 'dry', tonumber(ARGV[3])
local bucket, marks = string.rep('b', 108), string.rep('w', 180)
local expire = '$expire' == 'yes'
for i = 1, n do
  local key = 'ss:{0}:s:tok' .. i .. ':' .. run
  if not dry then
    redis.call('HSET', key, '17', bucket, 'w123', marks)
    if expire then redis.call('PEXPIREAT', key, '99999999999999') end
  end
end
return 1
EOF
done
cat >"$DIR/per_partition.lua" <<'EOF'
local run, dry, n = ARGV[1], ARGV[2] == 'dry', tonumber(ARGV[3])
local bucket, marks = string.rep('b', 108), string.rep('w', 180)
local key = 'ss:{0}:s:' .. run
local args = {}
for i = 1, n do
  local token = 'tok' .. i .. '\0'
  args[#args + 1] = token .. '17'
  args[#args + 1] = bucket
  args[#args + 1] = token .. 'w123'
  args[#args + 1] = marks
  if #args >= 1024 then
    if not dry then redis.call('HSET', key, unpack(args)) end
    args = {}
  end
end
if not dry then
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
  redis.call('PEXPIREAT', key, '99999999999999')
end
return 1
EOF

redis-server --port "$MASTER" --save '' --appendonly no --daemonize yes --dir "$DIR" --logfile "$DIR/master.log"
redis-server --port "$REPLICA" --save '' --appendonly no --daemonize yes --dir "$DIR" --logfile "$DIR/replica.log" \
  --replicaof 127.0.0.1 "$MASTER"
for _ in $(seq 1 100); do
  redis-cli -p "$REPLICA" INFO replication 2>/dev/null | grep -q 'master_link_status:up' && break
  sleep 0.1
done

# Until the replica has applied everything the master sent.
wait_synced() {
  local want
  want="$(redis-cli -p "$MASTER" INFO replication | sed -n 's/^master_repl_offset:\([0-9]*\).*/\1/p')"
  for _ in $(seq 1 200); do
    [ "$(redis-cli -p "$REPLICA" INFO replication | sed -n 's/^slave_repl_offset:\([0-9]*\).*/\1/p')" = "$want" ] && return
    sleep 0.05
  done
}

cpu_s() { redis-cli -p "$1" INFO cpu | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.4f", s }'; }

# Prints "<master ms per batch> <replica ms per batch>" for one layout and mode.
measure() {
  local script="$1" mode="$2"
  redis-cli -p "$MASTER" CONFIG RESETSTAT >/dev/null
  local r0 r1
  r0="$(cpu_s "$REPLICA")"
  for round in $(seq 1 "$ROUNDS"); do
    redis-cli -p "$MASTER" --eval "$DIR/$script.lua" , "$mode$round-$RANDOM" "$mode" "$HASHES" >/dev/null
  done
  wait_synced
  r1="$(cpu_s "$REPLICA")"
  local usec
  usec="$(redis-cli -p "$MASTER" INFO commandstats | sed -n 's/^cmdstat_eval:.*usec_per_call=\([0-9.]*\).*/\1/p')"
  awk -v u="$usec" -v a="$r0" -v b="$r1" -v n="$ROUNDS" 'BEGIN { printf "%.1f %.1f\n", u / 1000, (b - a) * 1000 / n }'
}

echo "lua_layout — $HASHES token-periods per batch, $ROUNDS batches per row, master + replica"
printf '%-15s %14s %14s %14s %16s\n' layout "master full" "master dry" "master write" "replica apply"
declare -A total
for layout in per_token per_token_hset per_partition; do
  read -r full_m full_r < <(measure "$layout" full)
  read -r dry_m _ < <(measure "$layout" dry)
  write_m="$(awk -v f="$full_m" -v d="$dry_m" 'BEGIN { printf "%.1f", f - d }')"
  total[$layout]="$(awk -v w="$write_m" -v r="$full_r" 'BEGIN { printf "%.1f", w + r }')"
  printf '%-15s %11s ms %11s ms %11s ms %13s ms\n' "$layout" "$full_m" "$dry_m" "$write_m" "$full_r"
done
awk -v a="${total[per_token]}" -v h="${total[per_token_hset]}" -v b="${total[per_partition]}" \
  'BEGIN { printf "Redis CPU for the writes per batch (master write + replica): per-token %.1f ms, without PEXPIREAT %.1f ms, per-partition %.1f ms; per-token / per-partition %.2f\n", a, h, b, a / b }'
