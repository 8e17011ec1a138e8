#!lua
-- apply_batch.lua: persists one swapstats batch of partition p atomically.
-- Key layout and encodings: docs/redis-keys.md and src/store/codec.rs.
--
-- KEYS[1]  ss:{p}:applied   (every other key is derived from its prefix "ss:{p}:",
--                            so all of them are in the same cluster slot)
-- ARGV[1]  first source offset of the batch (decimal)
-- ARGV[2]  last source offset of the batch (decimal)
-- ARGV[3]  batch clock, unix ms (TTLs are absolute: PEXPIREAT)
-- ARGV[4]  ms second buckets / second wallet marks are kept after their hour ends
-- ARGV[5]  ms minute buckets / minute wallet marks are kept after their day ends (retention)
-- ARGV[6]  ms event ids are kept after their hour ends (dedup horizon)
-- ARGV[7]  ms added to every TTL
-- ARGV[8]  ms the applied offset lives after this batch (TTL, refreshed by every batch)
-- ARGV[9]  the batch payload (binary)
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
local second_keep = tonumber(ARGV[4])
local minute_keep = tonumber(ARGV[5])
local dedup_keep = tonumber(ARGV[6])
local margin = tonumber(ARGV[7])
local blob = ARGV[9]

local HOUR_MS = 3600000
local DAY_MS = 86400000
-- txns buys sells | volume_usd buy_usd sell_usd volume_token |
-- open: at_ms tie_hi tie_lo price | close: at_ms tie_hi tie_lo price | high low
local BUCKET = '<I4I4I4ddddi8I4I4di8I4I4ddd'
local BUCKET_LEN = 108

-- (a_at, a_hi, a_lo) < (b_at, b_hi, b_lo), lexicographically
local function before(a_at, a_hi, a_lo, b_at, b_hi, b_lo)
  if a_at ~= b_at then return a_at < b_at end
  if a_hi ~= b_hi then return a_hi < b_hi end
  return a_lo < b_lo
end

-- Bucket::merge of two encoded buckets (same rules as src/window/bucket.rs).
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

-- key, field and absolute expiry of the bucket at `at` of `level` (0 = second,
-- 1 = minute); its wallet marks live in the same hash under `field:wallet`.
local function place(level, token, at)
  if level == 0 then
    local h = math.floor(at / 3600)
    return prefix .. 's:' .. token .. ':' .. string.format('%d', h),
      string.format('%d', at - h * 3600), (h + 1) * HOUR_MS + second_keep + margin
  else
    local d = math.floor(at / 1440)
    return prefix .. 'm:' .. token .. ':' .. string.format('%d', d),
      string.format('%d', at - d * 1440), (d + 1) * DAY_MS + minute_keep + margin
  end
end

-- Phase 1: parse the whole payload (a malformed one fails here, before any write).
local bucket_ops, wallet_ops, token_ops, event_ops = {}, {}, {}, {}
local index_keep = math.max(second_keep, minute_keep) + margin
local pos = 1
local ntokens
ntokens, pos = struct.unpack('<I4', blob, pos)
for _ = 1, ntokens do
  local token, last_ms, n
  token, last_ms, n, pos = struct.unpack('<I2c0i8I4', blob, pos)
  for _ = 1, n do
    local level, at
    level, at, pos = struct.unpack('<Bi8', blob, pos)
    if pos + BUCKET_LEN - 1 > #blob then
      return redis.error_reply('ERR swapstats: truncated batch payload')
    end
    local key, field, expire_at = place(level, token, at)
    if expire_at > now then
      bucket_ops[#bucket_ops + 1] = {key, field, string.sub(blob, pos, pos + BUCKET_LEN - 1), expire_at}
    end
    pos = pos + BUCKET_LEN
  end
  n, pos = struct.unpack('<I4', blob, pos)
  for _ = 1, n do
    local level, at, sides, wallet
    level, at, sides, wallet, pos = struct.unpack('<Bi8BI2c0', blob, pos)
    local key, field, expire_at = place(level, token, at)
    if expire_at > now then
      wallet_ops[#wallet_ops + 1] = {key, field .. ':' .. wallet, string.format('%d', sides), expire_at}
    end
  end
  if last_ms + index_keep > now then
    token_ops[#token_ops + 1] = {token, last_ms}
  end
end
local nhours
nhours, pos = struct.unpack('<I4', blob, pos)
for _ = 1, nhours do
  local hour, records
  hour, records, pos = struct.unpack('<i8I4c0', blob, pos)
  local expire_at = (hour + 1) * HOUR_MS + dedup_keep + margin
  if expire_at > now and #records > 0 then
    event_ops[#event_ops + 1] = {prefix .. 'e:' .. string.format('%d', hour), records, expire_at}
  end
end
if pos ~= #blob + 1 then
  return redis.error_reply('ERR swapstats: malformed batch payload')
end

-- Phase 2: write. Fields are grouped by key so each hash costs one HMGET and
-- one HSET per CHUNK fields instead of two calls per field: redis.call and
-- the replicated commands dominate the script's time.
local CHUNK = 512
local expire = {}

-- key -> {fields = {...}, values = {...}, at = {field -> index}}, keys in first-seen order.
local function group(ops, combine)
  local groups, order = {}, {}
  for _, op in ipairs(ops) do
    local key, field, value = op[1], op[2], op[3]
    local g = groups[key]
    if not g then
      g = {fields = {}, values = {}, at = {}}
      groups[key] = g
      order[#order + 1] = key
    end
    local i = g.at[field]
    if i then
      g.values[i] = combine(g.values[i], value)
    else
      i = #g.fields + 1
      g.fields[i], g.values[i], g.at[field] = field, value, i
    end
    expire[key] = op[4]
  end
  return groups, order
end

-- For each key, reads the stored values of its fields, and writes
-- `combine(stored, new)` where that differs from what is stored.
local function write_merged(ops, combine)
  local groups, order = group(ops, combine)
  for _, key in ipairs(order) do
    local g = groups[key]
    for first = 1, #g.fields, CHUNK do
      local last = math.min(first + CHUNK - 1, #g.fields)
      local stored = redis.call('HMGET', key, unpack(g.fields, first, last))
      local args = {}
      for i = first, last do
        local old = stored[i - first + 1]
        local merged = combine(old, g.values[i])
        if merged ~= old then
          args[#args + 1] = g.fields[i]
          args[#args + 1] = merged
        end
      end
      if #args > 0 then
        redis.call('HSET', key, unpack(args))
      end
    end
  end
end

-- Wallet side bits, stored as decimal strings: bit-or.
local function merge_sides(old, new)
  local merged = bit.bor(tonumber(old or 0) or 0, tonumber(new) or 0)
  return string.format('%d', merged)
end

write_merged(bucket_ops, merge)
write_merged(wallet_ops, merge_sides)
for _, op in ipairs(event_ops) do
  redis.call('APPEND', op[1], op[2])
  expire[op[1]] = op[3]
end
for key, at in pairs(expire) do
  redis.call('PEXPIREAT', key, string.format('%d', at))
end

local tokens_key = prefix .. 'tokens'
for _, op in ipairs(token_ops) do
  redis.call('ZADD', tokens_key, 'GT', string.format('%d', op[2]), op[1])
end
redis.call('ZREMRANGEBYSCORE', tokens_key, '-inf', '(' .. string.format('%d', now - index_keep))
if redis.call('EXISTS', tokens_key) == 1 then
  redis.call('PEXPIRE', tokens_key, string.format('%d', index_keep))
end
redis.call('SET', applied_key, ARGV[2], 'PX', ARGV[8])
return {1, ARGV[2], replicas()}
