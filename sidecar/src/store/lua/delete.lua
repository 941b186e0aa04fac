-- KEYS: session, tombstone, index. ARGV: tombstone ttl ms, sid, has index, expected version
-- ("" = any; else the session must be live at it).
if ARGV[4] ~= '' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
  local cur = redis.call('HGET', KEYS[1], 'v')
  if not cur then return {2, -1} end
  if cur ~= ARGV[4] then return {2, tonumber(cur)} end
end
local existed = redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
if ARGV[3] == '1' then redis.call('ZREM', KEYS[3], ARGV[2]) end
return {0, existed}
