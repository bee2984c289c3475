-- Store the finished response in place of the lock, unless another owner holds the key.
-- KEYS[1] record key; ARGV[1] owner prefix (L + token, or U + fingerprint for an abandoned key);
-- ARGV[2] record; ARGV[3] ttl in ms; ARGV[4] channel notified so waiting duplicates wake up.
-- Returns 1 when stored over the caller's lock (or already stored by this same call's earlier
-- attempt), 2 when stored because the key was gone (its lock lost with Redis's data or deleted
-- by an operator: nobody else holds it), else 0 (another owner's lock, record or marker).
local current = redis.call('GET', KEYS[1])
if current == ARGV[2] then
  return 1
end
local stored = 0
if not current then
  stored = 2
elseif string.sub(current, 1, string.len(ARGV[1])) == ARGV[1] then
  stored = 1
end
if stored > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('PUBLISH', ARGV[4], 'completed')
end
return stored
