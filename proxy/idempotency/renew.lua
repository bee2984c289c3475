-- Extend the lock's lease while the upstream call runs, only if the caller still owns it.
-- KEYS[1] record key; ARGV[1] owner prefix (L + token); ARGV[2] lease in ms.
-- Returns 1 when renewed, else 0 (the lease expired and the key moved on).
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
