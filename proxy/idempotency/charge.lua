-- Count a stored answer against its scope's byte budget, or refuse it. One round trip, atomic.
-- KEYS[1] the scope's ledger: a sorted set of "size:record key" members scored by expiry (ms);
-- KEYS[2] the scope's live total in bytes (same hash tag, so one Cluster slot).
-- ARGV[1] member ("size:record key"); ARGV[2] size; ARGV[3] ttl in ms; ARGV[4] budget in bytes.
-- Expired members leave the ledger first (at most 100 a call, so no call is long).
-- Returns 1 when counted (or already counted by this same call's earlier attempt), else 0.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
if #expired > 0 then
  local freed = 0
  for _, member in ipairs(expired) do
    freed = freed + tonumber(string.match(member, '^(%d+):'))
  end
  redis.call('ZREM', KEYS[1], unpack(expired))
  redis.call('DECRBY', KEYS[2], freed)
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 1
end
local size = tonumber(ARGV[2])
if tonumber(redis.call('GET', KEYS[2]) or '0') + size > tonumber(ARGV[4]) then
  return 0
end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('INCRBY', KEYS[2], size)
-- The ledger lives as long as its longest-lived answer.
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
