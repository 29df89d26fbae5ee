-- llmgate's quota store in Redis: the helpers every operation shares.
-- addon/quota/redis_store.py prepends this file to each operation's script, so each
-- operation is ONE server-side script: Redis runs a script alone, start to end, so a
-- reserve's check and its writes cannot interleave with any other process's.
--
-- Keys (P is the prefix, "llmgate:quota:" by default; K a scope key such as user:alice):
--   P z:K    sorted set  reservation id -> its time (ts); the rows of K, as in SQLite
--   P h:K    hash        reservation id -> msgpack {settled, requests, input, output, cost_nusd}
--   P t:K    hash        window seconds -> msgpack {cutoff, 4 used sums, 4 reserved sums}:
--                        the sums of K's rows with ts > cutoff (running totals)
--   P r:ID   string      msgpack {ts, {scope keys}}: where settle/release find a reservation
--   P pending sorted set reservation id -> ts, for the unsettled ones only (TTL, crash recovery)
--   P horizon string      longest window ever reserved with (how long settled rows must stay)
-- Times are floats in seconds (sorted-set scores are doubles, so no precision is lost);
-- amounts are integers (cost in nano-dollars), exact in Lua's doubles up to 2^53.

local P = ARGV[1]

local function fmt(x)  -- a float as text that round-trips exactly (tostring keeps 14 digits)
  return string.format('%.17g', x)
end

local function clock(arg)  -- the caller's time, or the Redis server's: one clock for the fleet
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function amounts(K, rid)  -- {settled, a1..a4} of one row, or nil
  local v = redis.call('HGET', P .. 'h:' .. K, rid)
  if not v then return nil end
  return cmsgpack.unpack(v)
end

-- Add sign * the rows of K with lo < ts <= hi to sums (1..4 used, 5..8 reserved).
local function add_range(K, lo, hi, sums, sign)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'z:' .. K, '(' .. fmt(lo), hi)
  for _, rid in ipairs(ids) do
    local row = amounts(K, rid)
    if row then
      local base = (row[1] == 1) and 0 or 4
      for i = 1, 4 do sums[base + i] = sums[base + i] + sign * row[i + 1] end
    end
  end
  return sums
end

-- The sums of K's window of `seconds` at `now`, moving its running totals' cutoff to
-- now - seconds by counting only the rows in between (as QuotaStore._all_sums does).
-- Returns sums and the oldest counted ts (or false). Writes the moved totals back.
local function window_sums(K, seconds, now)
  local target = now - seconds
  local packed = redis.call('HGET', P .. 't:' .. K, seconds)
  local sums
  if not packed then
    sums = add_range(K, target, '+inf', {0, 0, 0, 0, 0, 0, 0, 0}, 1)
  else
    local t = cmsgpack.unpack(packed)
    local cutoff = t[1]
    sums = {t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9]}
    if target > cutoff then        -- rows in (cutoff, target] have left the window
      add_range(K, cutoff, fmt(target), sums, -1)
    elseif target < cutoff then    -- an earlier `now` (a caller's clock): add them back
      add_range(K, target, fmt(cutoff), sums, 1)
    end
  end
  redis.call('HSET', P .. 't:' .. K, seconds,
    cmsgpack.pack({target, sums[1], sums[2], sums[3], sums[4], sums[5], sums[6], sums[7], sums[8]}))
  local first = redis.call('ZRANGEBYSCORE', P .. 'z:' .. K, '(' .. fmt(target), '+inf',
    'WITHSCORES', 'LIMIT', 0, 1)
  local oldest = false
  if first[2] then oldest = tonumber(first[2]) end
  return sums, oldest
end

-- Add `units` (4 amounts) to every running total of K whose cutoff lies before ts.
local function shift(K, ts, units, settled, sign)
  local tkey = P .. 't:' .. K
  local all = redis.call('HGETALL', tkey)
  local base = (settled == 1) and 1 or 5
  for i = 1, #all, 2 do
    local t = cmsgpack.unpack(all[i + 1])
    if t[1] < ts then
      for j = 1, 4 do t[base + j] = t[base + j] + sign * units[j] end
      redis.call('HSET', tkey, all[i], cmsgpack.pack(t))
    end
  end
end

local function reservation(rid)  -- {ts, {keys}} or nil
  local v = redis.call('GET', P .. 'r:' .. rid)
  if not v then return nil end
  return cmsgpack.unpack(v)
end

-- Take reservation rid's rows out of every scope key (and out of the totals).
local function remove_rows(rid, res)
  local ts = res[1]
  for _, K in ipairs(res[2]) do
    local row = amounts(K, rid)
    if row then
      shift(K, ts, {row[2], row[3], row[4], row[5]}, row[1], -1)
      redis.call('HDEL', P .. 'h:' .. K, rid)
      redis.call('ZREM', P .. 'z:' .. K, rid)
    end
  end
  redis.call('ZREM', P .. 'pending', rid)
end

-- Reservations left unsettled for `ttl` seconds belong to a process that died (or a
-- call that outlived the TTL): they stop counting. Their record stays (until its own
-- expiry) so that a late settle still counts what the call really used.
local function expire(now, ttl)
  local stale = redis.call('ZRANGEBYSCORE', P .. 'pending', '-inf', '(' .. fmt(now - ttl),
    'LIMIT', 0, 1000)
  for _, rid in ipairs(stale) do
    local res = reservation(rid)
    if res then remove_rows(rid, res) else redis.call('ZREM', P .. 'pending', rid) end
  end
  return #stale
end

-- Delete K's rows stamped before `older` (out of every window ever used, so they count
-- nowhere), and the totals whose cutoff lies before it (they counted such rows:
-- they are recounted on their next use). Returns the rows deleted.
local function prune_key(K, older, limit)
  local zkey = P .. 'z:' .. K
  local ids
  if limit then
    ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', '(' .. fmt(older), 'LIMIT', 0, limit)
  else
    ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', '(' .. fmt(older))
  end
  if #ids == 0 then return 0 end
  for _, rid in ipairs(ids) do
    redis.call('HDEL', P .. 'h:' .. K, rid)
    redis.call('ZREM', zkey, rid)
    redis.call('ZREM', P .. 'pending', rid)
  end
  local tkey = P .. 't:' .. K
  local all = redis.call('HGETALL', tkey)
  for i = 1, #all, 2 do
    if cmsgpack.unpack(all[i + 1])[1] < older then redis.call('HDEL', tkey, all[i]) end
  end
  return #ids
end

-- Per distinct (scope key, window seconds) of windows given as ARGV[first..] in
-- `width`-sized groups starting with key, seconds: their sums and oldest ts, in order.
local function all_sums(first, n, width, now)
  local seen, order = {}, {}
  for w = 0, n - 1 do
    local K, seconds = ARGV[first + w * width], tonumber(ARGV[first + w * width + 1])
    seen[K] = seen[K] or {}
    if not seen[K][seconds] then
      local sums, oldest = window_sums(K, seconds, now)
      seen[K][seconds] = sums
      order[#order + 1] = {K, seconds, sums, oldest}
    end
  end
  return seen, order
end

local function encode(order)  -- the reply: per pair, 8 sums then the oldest ts ('' if none)
  local out = {}
  for _, p in ipairs(order) do
    for i = 1, 8 do out[#out + 1] = p[3][i] end
    out[#out + 1] = p[4] and fmt(p[4]) or ''
  end
  return out
end
