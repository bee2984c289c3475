-- Take the idempotency lock, or report what holds the key. One round trip.
-- KEYS[1] record key; ARGV[1] lock value (L + owner token + fingerprint); ARGV[2] lease in ms.
-- Returns nil when the lock was taken, else the key's current value (a lock or a record).
local current = redis.call('GET', KEYS[1])
if current then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return false
