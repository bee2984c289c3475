-- The per-store scoping secret: keep the existing one, or store the offered candidate.
-- KEYS[1] secret key; ARGV[1] candidate. Returns the stored secret.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
