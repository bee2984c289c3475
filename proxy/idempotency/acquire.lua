-- Take the idempotency lock, or report what holds the key. One round trip.
-- KEYS[1] record key; ARGV[1] lock value without its lease (L + owner token + fingerprint);
-- ARGV[2] lease in ms; ARGV[3] how long the key is kept in ms (the lock outlives its lease as the
-- "may have been sent" marker); ARGV[4] what a lapsed lease of another owner means: 'release'
-- (take the lock over) or 'hold' (mark the key abandoned: U + fingerprint, an unknown outcome).
-- A lock is ARGV[1] .. '@' .. its lease expiry in ms of Redis's own clock (TIME).
-- Returns nil when the lock was taken, else the key's current value (a lock, U..., a record).
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 1) == 'L'
    and string.sub(current, 1, 33) ~= string.sub(ARGV[1], 1, 33) then
  local holder, expiry = string.match(current, '^L' .. string.rep('.', 32) .. '(.*)@(%d+)$')
  if expiry and tonumber(expiry) <= now then
    if ARGV[4] == 'release' then
      current = false
    else
      current = 'U' .. holder
      redis.call('SET', KEYS[1], current, 'KEEPTTL')
    end
  end
end
if current then
  return current
end
redis.call('SET', KEYS[1], ARGV[1] .. '@' .. (now + tonumber(ARGV[2])), 'PX', ARGV[3])
return false
