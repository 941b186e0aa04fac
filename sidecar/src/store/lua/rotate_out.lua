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
local r = rotation_args(ARGV[1], ARGV[5], 9)
local refused, oldv = rotation_refused(r, function()
  if ARGV[7] ~= '' then return {2, tonumber(ARGV[7])} end
  return nil
end)
if refused then return refused end
local out = {0}
if r.mode == 'stored' then
  for _, v in ipairs(stored_data()) do out[#out + 1] = v end
end
-- The tombstone names the new sid (for whoever reads the keys after a failed step 2).
end_old(r, oldv, ARGV[2], ARGV[3], ARGV[4], ARGV[6] == '1', ARGV[3])
return out
