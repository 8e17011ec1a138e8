#!lua
-- apply_batch.lua: persists one swapstats batch of partition p atomically.
-- Key layout and encodings: docs/redis-keys.md and src/store/codec.rs.
--
-- KEYS[1]  ss:{p}:applied   (every other key is derived from its prefix "ss:{p}:",
--                            so all of them are in the same cluster slot)
-- ARGV[1]  first source offset of the batch (decimal)
-- ARGV[2]  last source offset of the batch (decimal)
-- ARGV[3]  batch clock, unix ms (TTLs are absolute: PEXPIREAT)
-- ARGV[4]  ms a token stays in the token index after its last swap (the
--          batch arguments carry every other key's absolute expiry)
-- ARGV[5]  ms the applied offset lives after this batch (TTL, refreshed by every batch)
-- ARGV[6]  the applied offset this batch follows: the last offset of the batch
--          before it, -1 when it is the partition's first (decimal)
-- ARGV[7..] the batch, one item per argument (counts and expiries decimal):
--          hash_count, hash_count x {key, expire_at_ms, n, n x {field, value}},
--          event_key_count, event_key_count x {key, expire_at_ms, records},
--          token_count, token_count x {index_score, token} (the end of the hour
--          of the token's newest data; tokens the index holds are left out)
--
-- Returns {1, last_offset, replicas} when applied; {0, stored_offset, replicas}
-- when fenced (first_offset <= stored applied offset: a replay); {2,
-- stored_offset or -1, replicas} when the stored offset is not the one the batch
-- follows (the batch before it has not landed, or another writer moved the
-- partition). Nothing is changed unless applied. `replicas` is the number of
-- connected replicas, so the caller knows whether to WAIT.
-- All writes happen after the arguments' shape was checked: a malformed batch
-- fails before touching anything.

local applied_key = KEYS[1]
local prefix = string.sub(applied_key, 1, #applied_key - #'applied')

local function replicas()
  local info = redis.call('INFO', 'replication')
  return tonumber(string.match(info, 'connected_slaves:(%d+)')) or 0
end

local stored = redis.call('GET', applied_key)
if stored and tonumber(ARGV[1]) <= tonumber(stored) then
  -- Fenced. Rewriting the same value (same TTL) changes nothing, but it is a
  -- replicated write, so the caller's WAIT that follows also covers an earlier
  -- attempt of this batch that reached this node over another connection.
  redis.call('SET', applied_key, stored, 'KEEPTTL')
  return {0, stored, replicas()}
end
-- Compare-and-set: a batch lands only right after the one it follows, so a
-- batch sent while its predecessor is still in flight (or retried out of
-- order after a failover) can never skip it.
if tonumber(stored or '-1') ~= tonumber(ARGV[6]) then
  return {2, stored or '-1', replicas()}
end

local now = tonumber(ARGV[3])
local index_keep = tonumber(ARGV[4])

-- Fields per HSET call, members per ZADD call (unpack's limit is ~8000).
local CHUNK = 512

-- Phase 1: check the shape (every count and expiry a number, the sections
-- ending exactly at the last argument) before any write, so a malformed batch
-- fails here and changes nothing. Values are passed through as they are:
-- Redis already split them while reading the command.
local function count(i)
  local n = tonumber(ARGV[i])
  if n and n >= 0 and n % 1 == 0 then
    return n
  end
end
local bad = redis.error_reply('ERR swapstats: malformed batch arguments')
local hashes_at = 7
local nh = count(hashes_at)
if not nh then return bad end
local i = hashes_at + 1
for _ = 1, nh do
  local nf = count(i + 2)
  if not nf or not tonumber(ARGV[i + 1]) then return bad end
  i = i + 3 + 2 * nf
end
local events_at = i
local ne = count(events_at)
if not ne then return bad end
for e = 0, ne - 1 do
  if not tonumber(ARGV[events_at + 2 + 3 * e]) then return bad end
end
local tokens_at = events_at + 1 + 3 * ne
local nt = count(tokens_at)
if not nt or tokens_at + 2 * nt ~= #ARGV then return bad end
for t = 0, nt - 1 do
  if not tonumber(ARGV[tokens_at + 1 + 2 * t]) then return bad end
end

-- Phase 2: write. redis.call and the replicated commands dominate the script's
-- time, so a hash costs one HSET per CHUNK fields, and its expiry (absolute,
-- fixed by the period it covers) is set only when every field was new: the
-- key may have just been created.
i = hashes_at + 1
for _ = 1, nh do
  local key, expire_at, nf = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local first, last = i + 3, i + 2 + 2 * nf
  local added = 0
  for from = first, last, 2 * CHUNK do
    added = added + redis.call('HSET', key, unpack(ARGV, from, math.min(from + 2 * CHUNK - 1, last)))
  end
  -- Only a key without an expiry needs one: a key this call created. Asked of
  -- the key itself (PTTL is O(1) and, unlike PEXPIREAT, not a write to
  -- replicate), not inferred from the fields added, so no batch can leave a
  -- key that lives forever.
  if added > 0 and redis.call('PTTL', key) == -1 then
    redis.call('PEXPIREAT', key, expire_at)
  end
  i = last + 1
end
for e = 0, ne - 1 do
  local at = events_at + 1 + 3 * e
  local key, expire_at, records = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  if redis.call('APPEND', key, records) == #records then
    redis.call('PEXPIREAT', key, expire_at)
  end
end

local tokens_key = prefix .. 'tokens'
local tokens_last = tokens_at + 2 * nt
for from = tokens_at + 1, tokens_last, 2 * CHUNK do
  redis.call('ZADD', tokens_key, 'GT', unpack(ARGV, from, math.min(from + 2 * CHUNK - 1, tokens_last)))
end
redis.call('ZREMRANGEBYSCORE', tokens_key, '-inf', '(' .. string.format('%d', now - index_keep))
if redis.call('EXISTS', tokens_key) == 1 then
  redis.call('PEXPIRE', tokens_key, string.format('%d', index_keep))
end
redis.call('SET', applied_key, ARGV[2], 'PX', ARGV[5])
return {1, ARGV[2], replicas()}
