-- ARGV: prefix, now ('' = server time), ttl, reservation id, 4 demand amounts, window
-- count, then per window: scope key, seconds, 4 caps ('' = no limit), then 1 to prune
-- (the caller does every PRUNE_EVERY-th time, as the SQLite store does). Reply: {status, now, per (key, seconds) pair: 8 sums + oldest ts, violations}
-- where status 1 = admitted, 0 = refused (nothing written), -1 = duplicate id, and each
-- violation is {window number, kind number, ts of the row whose leaving frees enough}.
local now, ttl, rid = clock(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local want = {tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])}
local n = tonumber(ARGV[9])
local W = 6
if redis.call('EXISTS', P .. 'r:' .. rid) == 1 then return {-1, fmt(now)} end
expire(now, ttl)
local seen, order = all_sums(10, n, W, now)

-- The row, oldest first, by whose leaving `excess` of kind i has left K's window.
local function frees(K, seconds, i, excess)
  local freed, offset = 0, 0
  while true do  -- lazily, a page at a time: usually the first rows suffice
    local page = redis.call('ZRANGEBYSCORE', P .. 'z:' .. K, '(' .. fmt(now - seconds), '+inf',
      'WITHSCORES', 'LIMIT', offset, 64)
    if #page == 0 then return '' end
    for j = 1, #page, 2 do
      local row = amounts(K, page[j])
      if row then freed = freed + row[i + 1] end
      if freed >= excess then return page[j + 1] end
    end
    offset = offset + 64
  end
end

local broken = {}
local longest = 0
for w = 0, n - 1 do
  local base = 10 + w * W
  local K, seconds = ARGV[base], tonumber(ARGV[base + 1])
  if seconds > longest then longest = seconds end
  local sums = seen[K][seconds]
  for i = 1, 4 do
    local cap = ARGV[base + 1 + i]
    if cap ~= '' then
      cap = tonumber(cap)
      local have = sums[i] + sums[4 + i]
      if not (cap > 0 and have + want[i] <= cap) then
        local at = ''
        if cap > 0 and want[i] <= cap then at = frees(K, seconds, i, have + want[i] - cap) end
        broken[#broken + 1] = {w + 1, i, at}
      end
    end
  end
end

local reply = {#broken == 0 and 1 or 0, fmt(now), encode(order), broken}
if #broken > 0 then return reply end  -- nothing written but the moved totals

local listed, keys = {}, {}
for _, p in ipairs(order) do
  if not listed[p[1]] then listed[p[1]] = true; keys[#keys + 1] = p[1] end
end
if #keys == 0 then return reply end  -- no window: nothing to count, as in SQLite
local row = cmsgpack.pack({0, want[1], want[2], want[3], want[4]})
for _, K in ipairs(keys) do
  redis.call('ZADD', P .. 'z:' .. K, fmt(now), rid)
  redis.call('HSET', P .. 'h:' .. K, rid, row)
  shift(K, now, want, 0, 1)
  redis.call('SADD', P .. 'keys', K)
end
redis.call('ZADD', P .. 'pending', fmt(now), rid)
-- The record outlives the TTL so that a call settling after its reservation expired
-- still counts (see expire); after 2 x TTL a settle finds nothing, like one released.
redis.call('SET', P .. 'r:' .. rid, cmsgpack.pack({now, keys}), 'PX', math.floor(ttl * 2000) + 1)
local horizon = tonumber(redis.call('GET', P .. 'horizon') or '0')
if longest > horizon then
  redis.call('SET', P .. 'horizon', longest)
  horizon = longest
end
-- Rows older than every window ever used count nowhere: dropping them keeps each key's
-- sets as small as its longest window, without a separate sweeper.
if ARGV[10 + n * W] == '1' and horizon > 0 then
  for _, K in ipairs(keys) do prune_key(K, now - horizon, false) end
end
return reply
