-- Shared by every session script. Keys: a session hash ("v" = version, "d:<key>" = the JSON
-- text of one data key, "n" = the sid a soft rotation moved it to), a tombstone string, and the identifier index (a sorted set of sids
-- scored by expiry time in ms). All keys of one sid carry the same hash tag.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function index_add(ikey, sid, ttl, now)
  redis.call('ZADD', ikey, now + ttl, sid)
  redis.call('ZREMRANGEBYSCORE', ikey, '-inf', now)
  if redis.call('PTTL', ikey) < ttl then
    redis.call('PEXPIRE', ikey, ttl)
  end
end

local function hset_pairs(key, args, first, count)
  local i = first
  local last = first + 2 * count - 1
  while i <= last do
    local stop = math.min(i + 199, last)
    local batch = {}
    for j = i, stop, 2 do
      batch[#batch + 1] = 'd:' .. args[j]
      batch[#batch + 1] = args[j + 1]
    end
    redis.call('HSET', key, unpack(batch))
    i = stop + 1
  end
end

-- Sets the data keys of `count` key/value pairs from args[first] on, skipping values that
-- are already stored; true when anything changed.
local function set_changed(key, args, first, count)
  local changed = false
  for i = first, first + 2 * count - 1, 2 do
    local field = 'd:' .. args[i]
    if redis.call('HGET', key, field) ~= args[i + 1] then
      redis.call('HSET', key, field, args[i + 1])
      changed = true
    end
  end
  return changed
end

-- The key count a patch would leave (set pairs from args[first], `count` of them; remove
-- keys args[rm_first..rm_last], none of them in the set) when it is over MAX_KEYS
-- (prepended by the driver), else nil. Exact count only when the cheap bound is over.
local function keys_after(key, args, first, count, rm_first, rm_last)
  -- "v" (version) and, after a soft rotation, "n" (next sid) are not data keys.
  local n = redis.call('HLEN', key) - 1 - redis.call('HEXISTS', key, 'n')
  if n + count <= MAX_KEYS then return nil end
  for i = first, first + 2 * count - 1, 2 do
    if redis.call('HEXISTS', key, 'd:' .. args[i]) == 0 then n = n + 1 end
  end
  local seen = {}
  for i = rm_first, rm_last do
    if not seen[args[i]] and redis.call('HEXISTS', key, 'd:' .. args[i]) == 1 then
      seen[args[i]] = true
      n = n - 1
    end
  end
  if n > MAX_KEYS then return n end
  return nil
end
