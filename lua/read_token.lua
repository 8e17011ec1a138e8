#!lua flags=no-writes,allow-stale
-- read_token.lua: one token's persisted buckets and wallet marks, read in one
-- atomic step. Read-only: run with EVALSHA_RO / EVAL_RO, also on a replica.
--
-- KEYS     the token's candidate hashes (all in the partition's slot):
--          ss:{p}:s:<token>:<hour> and ss:{p}:m:<token>:<day>
-- Returns  one HGETALL reply (flat field/value list, empty when absent) per key,
--          in KEYS order.

local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HGETALL', KEYS[i])
end
return out
