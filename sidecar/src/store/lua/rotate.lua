-- KEYS: old session, old tombstone, old index, new session, new tombstone, new index
-- ARGV: [1] mode ("stored"|"given"), [2] ttl ms, [3] old sid, [4] new sid, [5] tombstone ttl ms,
--       [6] keep-old ttl ms (0 = tombstone the old sid), [7] old has index, [8] new has index,
--       [9] set count, set pairs..., remove count, remove keys..., keep count, keep pairs...,
--       expected version of the old session ("" = any)
local r = rotation_args(ARGV[1], ARGV[6], 10)
local refused, oldv = rotation_refused(r, function()
  if redis.call('EXISTS', KEYS[5]) == 1 then return {2, -1} end
  local newv = redis.call('HGET', KEYS[4], 'v')
  if newv then return {2, tonumber(newv)} end
  return nil
end)
if refused then return refused end
local now = now_ms()
local ttl = tonumber(ARGV[2])
if r.mode == 'stored' then
  local copy = stored_data()
  for i = 1, #copy, 200 do
    redis.call('HSET', KEYS[4], unpack(copy, i, math.min(i + 199, #copy)))
  end
end
redis.call('HSET', KEYS[4], 'v', 1)
hset_pairs(KEYS[4], ARGV, r.set_at, r.nset)
for i = r.rm_at + 1, r.rm_at + r.nrm do
  redis.call('HDEL', KEYS[4], 'd:' .. ARGV[i])
end
redis.call('PEXPIRE', KEYS[4], ttl)
if ARGV[8] == '1' then index_add(KEYS[6], ARGV[4], ttl, now) end
end_old(r, oldv, ARGV[3], ARGV[4], ARGV[5], ARGV[7] == '1', '1')
return {0, 1}
