-- Redis Cluster: live-session counts of identifier indexes that share one slot, against
-- this node's clock (the clock the scores were written with).
-- KEYS: identifier indexes. Returns one count per key.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local min = '(' .. now
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('ZCOUNT', KEYS[i], min, '+inf')
end
return out
