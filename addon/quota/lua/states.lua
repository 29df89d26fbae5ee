-- ARGV: prefix, now ('' = server time), ttl, window count, then per window: scope key,
-- seconds. Reply: {now, per (key, seconds) pair: 8 sums + oldest ts}.
local now = clock(ARGV[2])
expire(now, tonumber(ARGV[3]))
local _, order = all_sums(5, tonumber(ARGV[4]), 2, now)
return {fmt(now), encode(order)}
