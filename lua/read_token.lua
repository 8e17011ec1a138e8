#!lua flags=no-writes,allow-stale
-- read_token.lua: one token's persisted buckets and wallet marks, read in one
-- atomic step. Read-only: run with EVALSHA_RO / EVAL_RO, also on a replica.
--
-- KEYS     the token's candidate keys (all in the partition's slot): first its
--          bucket hashes ss:{p}:s:<token>:<hour> and ss:{p}:m:<token>:<day>,
--          then its wallet mark strings ss:{p}:sw:<token>:<hour> and
--          ss:{p}:mw:<token>:<day>
-- ARGV[1]  how many of KEYS are hashes
-- Returns  per key, in KEYS order: a hash's HGETALL reply (flat field/value
--          list, empty when absent), a string's value (nil when absent).

local hashes = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  if i <= hashes then
    out[i] = redis.call('HGETALL', KEYS[i])
  else
    out[i] = redis.call('GET', KEYS[i])
  end
end
return out
