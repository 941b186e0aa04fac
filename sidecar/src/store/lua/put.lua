-- KEYS: session, tombstone, index (index = session when the sid has no identifier)
-- ARGV: condition ("none"|"create"|"match"), expected version, ttl ms, sid, has index (0|1),
--       field count, then key/value pairs
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == 'create' and cur then return {2, tonumber(cur)} end
if ARGV[1] == 'match' and cur ~= ARGV[2] then return {2, cur and tonumber(cur) or -1} end
local version = (cur and tonumber(cur) or 0) + 1
local ttl = tonumber(ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', version)
hset_pairs(KEYS[1], ARGV, 7, tonumber(ARGV[6]))
redis.call('PEXPIRE', KEYS[1], ttl)
if ARGV[5] == '1' then index_add(KEYS[3], ARGV[4], ttl, now_ms()) end
return {0, version, cur and 0 or 1}
