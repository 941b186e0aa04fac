-- KEYS: lease hash. ARGV: owner, ttl ms ("" = release).
local holder = redis.call('HGET', KEYS[1], 'owner')
if not holder then return {3} end
if holder ~= ARGV[1] then return {1, holder} end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  return {0, 0}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {0, tonumber(redis.call('HGET', KEYS[1], 'token'))}
