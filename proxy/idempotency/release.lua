-- Drop the lock so the request may be retried, only if the caller still owns it.
-- KEYS[1] record key; ARGV[1] owner prefix (L + token); ARGV[2] channel to notify.
-- Returns 1 when released, else 0.
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
