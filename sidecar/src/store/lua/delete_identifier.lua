-- KEYS: the identifier's index. ARGV: key prefix of its sids ("<prefix>{<identifier>}:"),
-- tombstone ttl ms. The session and tombstone keys built here share the index's hash tag.
local sids = redis.call('ZRANGE', KEYS[1], 0, -1)
local deleted = 0
for _, sid in ipairs(sids) do
  deleted = deleted + redis.call('DEL', ARGV[1] .. 's:' .. sid)
  redis.call('SET', ARGV[1] .. 't:' .. sid, '1', 'PX', ARGV[2])
end
redis.call('DEL', KEYS[1])
return deleted
