-- ARGV: prefix, reservation id. The call never went out: it counts nowhere.
local res = reservation(ARGV[2])
if res then
  remove_rows(ARGV[2], res)
  redis.call('DEL', P .. 'r:' .. ARGV[2])
end
return 1
