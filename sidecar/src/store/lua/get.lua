-- KEYS: session. Returns {pttl, field, value, ...} or {} when missing.
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then return {} end
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, ttl)
return all
