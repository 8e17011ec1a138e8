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
--          payload carries every other key's absolute expiry)
-- ARGV[5]  ms the applied offset lives after this batch (TTL, refreshed by every batch)
-- ARGV[6]  the batch payload (binary)
--
-- Returns {1, last_offset, replicas} when applied, or {0, stored_offset, replicas}
-- when fenced (first_offset <= stored applied offset; nothing changed). `replicas`
-- is the number of connected replicas, so the caller knows whether to WAIT.
-- All writes happen after the payload parsed completely: a malformed payload
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

local now = tonumber(ARGV[3])
local index_keep = tonumber(ARGV[4])
local blob = ARGV[6]

local BUCKET_LEN = 108
-- Fields per HSET call.
local CHUNK = 512
-- The hash field holding this batch's wallet mark records.
local marks_field = 'w' .. ARGV[1]

-- Phase 1: parse the whole payload (a malformed one fails here, before any
-- write). Keys, fields and expiries come computed from Rust (src/store/codec.rs),
-- already without data whose key would be expired. Buckets carry their new
-- value: the shard's memory is what this store holds plus the batch, so the
-- script overwrites instead of reading and merging.
local hashes, events, tokens = {}, {}, {}
local pos = 1
local n
n, pos = struct.unpack('<I4', blob, pos)
for h = 1, n do
  local key, expire_at, nb, marks
  key, expire_at, nb, pos = struct.unpack('<I2c0i8I4', blob, pos)
  local args = {}
  for i = 1, nb do
    args[2 * i - 1], pos = struct.unpack('<I2c0', blob, pos)
    if pos + BUCKET_LEN - 1 > #blob then
      return redis.error_reply('ERR swapstats: truncated batch payload')
    end
    args[2 * i] = string.sub(blob, pos, pos + BUCKET_LEN - 1)
    pos = pos + BUCKET_LEN
  end
  marks, pos = struct.unpack('<I4c0', blob, pos)
  if #marks > 0 then
    args[#args + 1] = marks_field
    args[#args + 1] = marks
  end
  hashes[h] = {key, expire_at, args}
end
n, pos = struct.unpack('<I4', blob, pos)
for e = 1, n do
  local key, expire_at, records
  key, expire_at, records, pos = struct.unpack('<I2c0i8I4c0', blob, pos)
  events[e] = {key, expire_at, records}
end
n, pos = struct.unpack('<I4', blob, pos)
for t = 1, n do
  local token, last_ms
  token, last_ms, pos = struct.unpack('<I2c0i8', blob, pos)
  tokens[t] = {token, last_ms}
end
if pos ~= #blob + 1 then
  return redis.error_reply('ERR swapstats: malformed batch payload')
end

-- Phase 2: write. redis.call and the replicated commands dominate the script's
-- time, so a hash costs one HSET per CHUNK fields, and its expiry (absolute,
-- fixed by the period it covers) is set only when every field was new: the
-- key may have just been created.
for _, h in ipairs(hashes) do
  local args = h[3]
  local added = 0
  for first = 1, #args, 2 * CHUNK do
    added = added + redis.call('HSET', h[1], unpack(args, first, math.min(first + 2 * CHUNK - 1, #args)))
  end
  if 2 * added == #args then
    redis.call('PEXPIREAT', h[1], string.format('%d', h[2]))
  end
end
for _, e in ipairs(events) do
  if redis.call('APPEND', e[1], e[3]) == #e[3] then
    redis.call('PEXPIREAT', e[1], string.format('%d', e[2]))
  end
end

local tokens_key = prefix .. 'tokens'
for first = 1, #tokens, CHUNK do
  local args = {'GT'}
  for i = first, math.min(first + CHUNK - 1, #tokens) do
    args[#args + 1] = string.format('%d', tokens[i][2])
    args[#args + 1] = tokens[i][1]
  end
  redis.call('ZADD', tokens_key, unpack(args))
end
redis.call('ZREMRANGEBYSCORE', tokens_key, '-inf', '(' .. string.format('%d', now - index_keep))
if redis.call('EXISTS', tokens_key) == 1 then
  redis.call('PEXPIRE', tokens_key, string.format('%d', index_keep))
end
redis.call('SET', applied_key, ARGV[2], 'PX', ARGV[5])
return {1, ARGV[2], replicas()}
