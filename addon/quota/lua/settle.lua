-- ARGV: prefix, then per settlement: reservation id and its 4 actual amounts.
-- The rows keep their ts; a reservation that expired (its rows taken out by expire)
-- is put back, settled, so that what the call really used still counts.
for s = 2, #ARGV, 5 do
  local rid = ARGV[s]
  local res = reservation(rid)
  if res then
    local ts = res[1]
    local new = {tonumber(ARGV[s + 1]), tonumber(ARGV[s + 2]), tonumber(ARGV[s + 3]),
      tonumber(ARGV[s + 4])}
    local packed = cmsgpack.pack({1, new[1], new[2], new[3], new[4]})
    for _, K in ipairs(res[2]) do
      local row = amounts(K, rid)
      if row then shift(K, ts, {row[2], row[3], row[4], row[5]}, row[1], -1) end
      redis.call('ZADD', P .. 'z:' .. K, fmt(ts), rid)
      redis.call('HSET', P .. 'h:' .. K, rid, packed)
      shift(K, ts, new, 1, 1)
    end
    redis.call('ZREM', P .. 'pending', rid)
  end
end
return 1
