-- ARGV: prefix, older_than, then scope keys (none: every key ever used).
local older = tonumber(ARGV[2])
local keys = {}
for a = 3, #ARGV do keys[#keys + 1] = ARGV[a] end
if #keys == 0 then keys = redis.call('SMEMBERS', P .. 'keys') end
local deleted = 0
for _, K in ipairs(keys) do deleted = deleted + prune_key(K, older, false) end
return deleted
