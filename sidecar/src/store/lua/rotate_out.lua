-- Redis Cluster, a rotation whose old and new sid hash to different slots: step 1, run on
-- the old sid's slot. Ends (or soft-marks) the old sid and returns the data to copy; the
-- driver then creates the new sid create-only on its own slot (put.lua, "create").
-- KEYS: old session, old tombstone, old index
-- ARGV: [1] mode ("stored"|"given"), [2] old sid, [3] new sid, [4] tombstone ttl ms,
--       [5] keep-old ttl ms (0 = tombstone the old sid), [6] old has index,
--       [7] what the new sid's slot said, read just before ("" = free, "-1" = tombstoned,
--       else its version: refused with 412 at the point rotate.lua checks it),
--       [8] set count, set pairs..., remove count, remove keys..., keep count, keep pairs...,
--       expected version of the old session ("" = any)
-- Returns {0, d:key, value, ...} (the stored data, "stored" mode) or rotate.lua's codes.
local nset = tonumber(ARGV[8])
local rm_at = 9 + 2 * nset
local nrm = tonumber(ARGV[rm_at])
local keep_at = rm_at + 1 + nrm
local nkeep = tonumber(ARGV[keep_at])
local expected = ARGV[keep_at + 1 + 2 * nkeep]
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
local keep_ttl = tonumber(ARGV[5])
if keep_ttl > 0 then
  local next_sid = redis.call('HGET', KEYS[1], 'n')
  if next_sid then return {6, next_sid} end
end
local oldv = redis.call('HGET', KEYS[1], 'v')
if expected ~= '' and oldv ~= expected then return {2, oldv and tonumber(oldv) or -1} end
if ARGV[7] ~= '' then return {2, tonumber(ARGV[7])} end
if ARGV[1] == 'stored' and not oldv then return {3} end
if ARGV[1] == 'stored' then
  local would = keys_after(KEYS[1], ARGV, 9, nset, rm_at + 1, rm_at + nrm)
  if would then return {4, would} end
end
local out = {0}
if ARGV[1] == 'stored' then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'd:' then
      out[#out + 1] = all[i]
      out[#out + 1] = all[i + 1]
    end
  end
end
if keep_ttl > 0 then
  if oldv then
    if set_changed(KEYS[1], ARGV, keep_at + 1, nkeep) then
      redis.call('HINCRBY', KEYS[1], 'v', 1)
    end
    redis.call('HSET', KEYS[1], 'n', ARGV[3])
    redis.call('PEXPIRE', KEYS[1], keep_ttl)
    if ARGV[6] == '1' then index_add(KEYS[3], ARGV[2], keep_ttl, now_ms()) end
  end
else
  redis.call('DEL', KEYS[1])
  -- The tombstone names the new sid (for whoever reads the keys after a failed step 2).
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  if ARGV[6] == '1' then redis.call('ZREM', KEYS[3], ARGV[2]) end
end
return out
