-- KEYS: old session, old tombstone, old index, new session, new tombstone, new index
-- ARGV: [1] mode ("stored"|"given"), [2] ttl ms, [3] old sid, [4] new sid, [5] tombstone ttl ms,
--       [6] keep-old ttl ms (0 = tombstone the old sid), [7] old has index, [8] new has index,
--       [9] set count, set pairs..., remove count, remove keys..., keep count, keep pairs...,
--       expected version of the old session ("" = any)
local nset = tonumber(ARGV[9])
local rm_at = 10 + 2 * nset
local nrm = tonumber(ARGV[rm_at])
local keep_at = rm_at + 1 + nrm
local nkeep = tonumber(ARGV[keep_at])
local expected = ARGV[keep_at + 1 + 2 * nkeep]
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
local keep_ttl = tonumber(ARGV[6])
if keep_ttl > 0 then
  -- A second soft rotation of the same sid: answer with the first one's new sid.
  local next_sid = redis.call('HGET', KEYS[1], 'n')
  if next_sid then return {6, next_sid} end
end
local oldv = redis.call('HGET', KEYS[1], 'v')
if expected ~= '' and oldv ~= expected then return {2, oldv and tonumber(oldv) or -1} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {2, -1} end
local newv = redis.call('HGET', KEYS[4], 'v')
if newv then return {2, tonumber(newv)} end
if ARGV[1] == 'stored' and not oldv then return {3} end
if ARGV[1] == 'stored' then
  local would = keys_after(KEYS[1], ARGV, 10, nset, rm_at + 1, rm_at + nrm)
  if would then return {4, would} end
end
local now = now_ms()
local ttl = tonumber(ARGV[2])
if ARGV[1] == 'stored' then
  local all = redis.call('HGETALL', KEYS[1])
  local copy = {}
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'd:' then
      copy[#copy + 1] = all[i]
      copy[#copy + 1] = all[i + 1]
    end
  end
  if #copy > 0 then
    for i = 1, #copy, 200 do
      redis.call('HSET', KEYS[4], unpack(copy, i, math.min(i + 199, #copy)))
    end
  end
end
redis.call('HSET', KEYS[4], 'v', 1)
hset_pairs(KEYS[4], ARGV, 10, nset)
for i = rm_at + 1, rm_at + nrm do
  redis.call('HDEL', KEYS[4], 'd:' .. ARGV[i])
end
redis.call('PEXPIRE', KEYS[4], ttl)
if ARGV[8] == '1' then index_add(KEYS[6], ARGV[4], ttl, now) end
if keep_ttl > 0 then
  if oldv then
    if set_changed(KEYS[1], ARGV, keep_at + 1, nkeep) then
      redis.call('HINCRBY', KEYS[1], 'v', 1)
    end
    redis.call('HSET', KEYS[1], 'n', ARGV[4])
    redis.call('PEXPIRE', KEYS[1], keep_ttl)
    if ARGV[7] == '1' then index_add(KEYS[3], ARGV[3], keep_ttl, now) end
  end
else
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
  if ARGV[7] == '1' then redis.call('ZREM', KEYS[3], ARGV[3]) end
end
return {0, 1}
