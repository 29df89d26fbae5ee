-- ARGV: prefix, then instance ids. Release every unsettled reservation whose id begins
-- with one of them (reservation ids are request ids, prefixed by their process's
-- instance id). Reply: the rows released, one per reservation and scope key.
local released = 0
for _, rid in ipairs(redis.call('ZRANGE', P .. 'pending', 0, -1)) do
  for a = 2, #ARGV do
    if string.sub(rid, 1, #ARGV[a]) == ARGV[a] then
      local res = reservation(rid)
      if res then
        for _, K in ipairs(res[2]) do
          if redis.call('HEXISTS', P .. 'h:' .. K, rid) == 1 then released = released + 1 end
        end
        remove_rows(rid, res)
        redis.call('DEL', P .. 'r:' .. rid)
      else
        redis.call('ZREM', P .. 'pending', rid)
      end
      break
    end
  end
end
return released
