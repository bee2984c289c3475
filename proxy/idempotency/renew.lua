-- Extend the lock's lease while the upstream call runs, only if the caller still owns it.
-- KEYS[1] record key; ARGV[1] owner prefix (L + token); ARGV[2] lease in ms.
-- The new expiry is computed from Redis's clock (TIME); the key's own TTL is kept, or raised to
-- the lease when it is shorter.
-- Returns 1 when renewed, else 0 (another owner, a record or an abandoned marker holds the key).
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, string.len(ARGV[1])) == ARGV[1] then
  local now = redis.call('TIME')
  now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local held = string.match(current, '^(.*)@%d+$') or current
  redis.call('SET', KEYS[1], held .. '@' .. (now + tonumber(ARGV[2])), 'KEEPTTL')
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
  return 1
end
return 0
