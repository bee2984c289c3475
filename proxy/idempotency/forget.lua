-- An operator releases one key: delete its lock, marker or record and wake waiting duplicates.
-- KEYS[1] record key; ARGV[1] channel to notify. Returns 1 when something was deleted, else 0.
local deleted = redis.call('DEL', KEYS[1])
if deleted > 0 then
  redis.call('PUBLISH', ARGV[1], 'released')
end
return deleted
