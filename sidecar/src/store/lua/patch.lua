-- KEYS: session, tombstone, index
-- ARGV: expected version ("" = any), ttl ms, sid, has index, set count, set pairs..., remove keys...
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
local cur = redis.call('HGET', KEYS[1], 'v')
if not cur then return {3} end
if ARGV[1] ~= '' and cur ~= ARGV[1] then return {2, tonumber(cur)} end
local nset = tonumber(ARGV[5])
local last_set = 5 + 2 * nset
local would = keys_after(KEYS[1], ARGV, 6, nset, last_set + 1, #ARGV)
if would then return {4, would} end
local changed = set_changed(KEYS[1], ARGV, 6, nset)
for i = last_set + 1, #ARGV do
  if redis.call('HDEL', KEYS[1], 'd:' .. ARGV[i]) == 1 then changed = true end
end
local version = tonumber(cur)
if changed then version = redis.call('HINCRBY', KEYS[1], 'v', 1) end
local ttl = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
if ARGV[4] == '1' then index_add(KEYS[3], ARGV[3], ttl, now_ms()) end
return {0, version}
