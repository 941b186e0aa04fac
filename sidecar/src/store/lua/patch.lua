-- KEYS: session, tombstone, index
-- ARGV: expected version ("" = any), ttl ms, sid, has index, set count, set pairs...,
--       remove count, remove keys..., expect count, expect pairs (key, JSON text read by the
--       client, "" = absent)...
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
local cur = redis.call('HGET', KEYS[1], 'v')
if not cur then return {3} end
if ARGV[1] ~= '' and cur ~= ARGV[1] then return {2, tonumber(cur)} end
local nset = tonumber(ARGV[5])
local rm_at = 6 + 2 * nset
local nrm = tonumber(ARGV[rm_at])
local exp_at = rm_at + 1 + nrm
local nexp = tonumber(ARGV[exp_at])
if nexp > 0 then
  local bad = {}
  for i = exp_at + 1, exp_at + 2 * nexp, 2 do
    local stored = redis.call('HGET', KEYS[1], 'd:' .. ARGV[i]) or ''
    if stored ~= ARGV[i + 1] then bad[#bad + 1] = ARGV[i] end
  end
  if #bad > 0 then
    table.sort(bad)
    return {5, tonumber(cur), bad}
  end
end
local would = keys_after(KEYS[1], ARGV, 6, nset, rm_at + 1, rm_at + nrm)
if would then return {4, would} end
local changed = set_changed(KEYS[1], ARGV, 6, nset)
for i = rm_at + 1, rm_at + nrm do
  if redis.call('HDEL', KEYS[1], 'd:' .. ARGV[i]) == 1 then changed = true end
end
local version = tonumber(cur)
if changed then version = redis.call('HINCRBY', KEYS[1], 'v', 1) end
local ttl = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
if ARGV[4] == '1' then index_add(KEYS[3], ARGV[3], ttl, now_ms()) end
return {0, version}
