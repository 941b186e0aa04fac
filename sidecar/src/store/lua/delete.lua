-- KEYS: session, tombstone, index. ARGV: tombstone ttl ms, sid, has index.
local existed = redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
if ARGV[3] == '1' then redis.call('ZREM', KEYS[3], ARGV[2]) end
return {existed}
