-- Shared by rotate.lua and rotate_out.lua (a rotation within one slot, and the first step
-- of one across Redis Cluster slots). KEYS[1] old session, KEYS[2] old tombstone, KEYS[3]
-- old index. The variable arguments start at `set_at`: set count (at set_at - 1), set
-- pairs, remove count, remove keys, keep count, keep pairs, expected version of the old
-- session ("" = any).
local function rotation_args(mode, keep_ttl, set_at)
  local nset = tonumber(ARGV[set_at - 1])
  local rm_at = set_at + 2 * nset
  local nrm = tonumber(ARGV[rm_at])
  local keep_at = rm_at + 1 + nrm
  local nkeep = tonumber(ARGV[keep_at])
  return {
    mode = mode, keep_ttl = tonumber(keep_ttl), set_at = set_at, nset = nset,
    rm_at = rm_at, nrm = nrm, keep_at = keep_at, nkeep = nkeep,
    expected = ARGV[keep_at + 1 + 2 * nkeep],
  }
end

-- The checks of a rotation, in the order every driver answers them: old sid tombstoned
-- {1}, soft-rotated already {6, its new sid}, If-Match {2, version}, the new sid taken
-- (`new_taken()`: {2, version} or nil), old session missing {3}, key bound {4, count}.
-- Returns the refusal, or nil and the old session's version.
local function rotation_refused(r, new_taken)
  if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
  if r.keep_ttl > 0 then
    -- A second soft rotation of the same sid: answer with the first one's new sid.
    local next_sid = redis.call('HGET', KEYS[1], 'n')
    if next_sid then return {6, next_sid} end
  end
  local oldv = redis.call('HGET', KEYS[1], 'v')
  if r.expected ~= '' and oldv ~= r.expected then return {2, oldv and tonumber(oldv) or -1} end
  local taken = new_taken()
  if taken then return taken end
  if r.mode == 'stored' and not oldv then return {3} end
  if r.mode == 'stored' then
    local would = keys_after(KEYS[1], ARGV, r.set_at, r.nset, r.rm_at + 1, r.rm_at + r.nrm)
    if would then return {4, would} end
  end
  return nil, oldv
end

-- The old session's "d:" fields and values, flat.
local function stored_data()
  local all = redis.call('HGETALL', KEYS[1])
  local data = {}
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'd:' then
      data[#data + 1] = all[i]
      data[#data + 1] = all[i + 1]
    end
  end
  return data
end

-- Ends the old sid: a soft rotation (keep_ttl > 0) applies the keep pairs, marks "n" = new
-- sid and shortens its life; otherwise it is deleted, tombstoned with `tomb_value` and left
-- out of its index.
local function end_old(r, oldv, old_sid, new_sid, tomb_ttl, has_index, tomb_value)
  if r.keep_ttl > 0 then
    if oldv then
      if set_changed(KEYS[1], ARGV, r.keep_at + 1, r.nkeep) then
        redis.call('HINCRBY', KEYS[1], 'v', 1)
      end
      redis.call('HSET', KEYS[1], 'n', new_sid)
      redis.call('PEXPIRE', KEYS[1], r.keep_ttl)
      if has_index then index_add(KEYS[3], old_sid, r.keep_ttl, now_ms()) end
    end
  else
    redis.call('DEL', KEYS[1])
    redis.call('SET', KEYS[2], tomb_value, 'PX', tomb_ttl)
    if has_index then redis.call('ZREM', KEYS[3], old_sid) end
  end
end
