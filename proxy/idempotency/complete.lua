-- Store the finished response in place of the lock, only if the caller still owns the lock.
-- KEYS[1] record key; ARGV[1] owner prefix (L + token); ARGV[2] record; ARGV[3] ttl in ms;
-- ARGV[4] channel notified so waiting duplicates wake up.
-- Returns 1 when stored (or already stored by this same call's earlier attempt), else 0.
local current = redis.call('GET', KEYS[1])
if current == ARGV[2] then
  return 1
end
if current and string.sub(current, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('PUBLISH', ARGV[4], 'completed')
  return 1
end
return 0
