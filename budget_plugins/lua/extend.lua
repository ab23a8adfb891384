-- extend: push a live hold's expiry to server now + lease.
--
-- KEYS[1]          {tag}:i        sweeper index
-- KEYS[2]          {tag}:r:<rid>  the reservation
-- KEYS[3 .. 2+2n]  {tag}:s:<token>, {tag}:z:<token> for each scope, in order
-- ARGV[1]  JSON {lease = ms, tomb = tombstone ms, sweep = max holds swept per scope, sc = [scope descriptor, ...]}
-- Returns 1 when the hold was live and is extended, 0 when it is gone.

local ikey, rkey = KEYS[1], KEYS[2]
local p = cjson.decode(ARGV[1])
local now = bp_now_ms()
local scopes, record = bp_open_hold(ikey, rkey, p, now)
if record == nil then
  return 0
end
local lease = tonumber(p.lease)
local expires = now + lease
for _, sc in ipairs(scopes) do
  if redis.call('ZADD', sc.z, 'XX', 'CH', expires, record.m) == 1 then
    bp_reindex(ikey, sc)
  end
end
if record.legacy then
  redis.call('HSET', rkey, 'e', expires)
  redis.call('PEXPIRE', rkey, lease + p.tomb)
else
  bp_write_held(rkey, expires, record.t, record.m, lease + p.tomb)
end
bp_touch(scopes)
return 1
