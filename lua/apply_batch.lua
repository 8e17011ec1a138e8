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

-- txns buys sells | volume_usd buy_usd sell_usd volume_token |
-- open: at_ms tie_hi tie_lo price | close: at_ms tie_hi tie_lo price | high low
local BUCKET = '<I4I4I4ddddi8I4I4di8I4I4ddd'
local BUCKET_LEN = 108
-- Fields per HMGET / HSET call.
local CHUNK = 512

-- (a_at, a_hi, a_lo) < (b_at, b_hi, b_lo), lexicographically
local function before(a_at, a_hi, a_lo, b_at, b_hi, b_lo)
  if a_at ~= b_at then return a_at < b_at end
  if a_hi ~= b_hi then return a_hi < b_hi end
  return a_lo < b_lo
end

-- Bucket::merge of a stored bucket (or false) and a delta (same rules as
-- src/window/bucket.rs).
local function merge(old, new)
  if not old then return new end
  local d = {struct.unpack(BUCKET, new)}
  if d[1] == 0 then return old end
  local s = {struct.unpack(BUCKET, old)}
  if s[1] == 0 then return new end
  s[1] = s[1] + d[1]
  s[2] = s[2] + d[2]
  s[3] = s[3] + d[3]
  s[4] = s[4] + d[4]
  s[5] = s[5] + d[5]
  s[6] = s[6] + d[6]
  s[7] = s[7] + d[7]
  if before(d[8], d[9], d[10], s[8], s[9], s[10]) then
    s[8], s[9], s[10], s[11] = d[8], d[9], d[10], d[11]
  end
  if before(s[12], s[13], s[14], d[12], d[13], d[14]) then
    s[12], s[13], s[14], s[15] = d[12], d[13], d[14], d[15]
  end
  if d[16] > s[16] then s[16] = d[16] end
  if d[17] < s[17] then s[17] = d[17] end
  return struct.pack(BUCKET, s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9],
    s[10], s[11], s[12], s[13], s[14], s[15], s[16], s[17])
end

-- Wallet side bits ('1' buy, '2' sell, '3' both): bit-or.
local function merge_sides(old, new)
  if not old or old == new then return new end
  return string.format('%d', bit.bor(tonumber(old) or 0, tonumber(new) or 0))
end

-- Phase 1: parse the whole payload (a malformed one fails here, before any
-- write). Keys, fields and expiries come computed from Rust (src/store/codec.rs),
-- already without data whose key would be expired.
local hashes, tokens, events = {}, {}, {}
local pos = 1
local n
n, pos = struct.unpack('<I4', blob, pos)
for h = 1, n do
  local key, expire_at, nb, nw
  key, expire_at, nb, pos = struct.unpack('<I2c0i8I4', blob, pos)
  local bfields, bvalues = {}, {}
  for i = 1, nb do
    bfields[i], pos = struct.unpack('<I2c0', blob, pos)
    if pos + BUCKET_LEN - 1 > #blob then
      return redis.error_reply('ERR swapstats: truncated batch payload')
    end
    bvalues[i] = string.sub(blob, pos, pos + BUCKET_LEN - 1)
    pos = pos + BUCKET_LEN
  end
  nw, pos = struct.unpack('<I4', blob, pos)
  local wfields, wvalues = {}, {}
  for i = 1, nw do
    wfields[i], wvalues[i], pos = struct.unpack('<I2c0c1', blob, pos)
  end
  hashes[h] = {key, expire_at, bfields, bvalues, wfields, wvalues}
end
n, pos = struct.unpack('<I4', blob, pos)
for t = 1, n do
  local token, last_ms
  token, last_ms, pos = struct.unpack('<I2c0i8', blob, pos)
  tokens[t] = {token, last_ms}
end
n, pos = struct.unpack('<I4', blob, pos)
for e = 1, n do
  local key, expire_at, records
  key, expire_at, records, pos = struct.unpack('<I2c0i8I4c0', blob, pos)
  events[e] = {key, expire_at, records}
end
if pos ~= #blob + 1 then
  return redis.error_reply('ERR swapstats: malformed batch payload')
end

-- Phase 2: write. Each hash costs one HMGET and at most one HSET per CHUNK
-- fields: redis.call and the replicated commands dominate the script's time.
local function write_merged(key, fields, values, combine)
  for first = 1, #fields, CHUNK do
    local last = math.min(first + CHUNK - 1, #fields)
    local stored = redis.call('HMGET', key, unpack(fields, first, last))
    local args = {}
    for i = first, last do
      local old = stored[i - first + 1]
      local merged = combine(old, values[i])
      if merged ~= old then
        args[#args + 1] = fields[i]
        args[#args + 1] = merged
      end
    end
    if #args > 0 then
      redis.call('HSET', key, unpack(args))
    end
  end
end

for _, h in ipairs(hashes) do
  write_merged(h[1], h[3], h[4], merge)
  write_merged(h[1], h[5], h[6], merge_sides)
  redis.call('PEXPIREAT', h[1], string.format('%d', h[2]))
end
for _, e in ipairs(events) do
  redis.call('APPEND', e[1], e[3])
  redis.call('PEXPIREAT', e[1], string.format('%d', e[2]))
end

local tokens_key = prefix .. 'tokens'
for _, t in ipairs(tokens) do
  redis.call('ZADD', tokens_key, 'GT', string.format('%d', t[2]), t[1])
end
redis.call('ZREMRANGEBYSCORE', tokens_key, '-inf', '(' .. string.format('%d', now - index_keep))
if redis.call('EXISTS', tokens_key) == 1 then
  redis.call('PEXPIRE', tokens_key, string.format('%d', index_keep))
end
redis.call('SET', applied_key, ARGV[2], 'PX', ARGV[5])
return {1, ARGV[2], replicas()}
