-- release: give a live hold back (idempotent by reservation id).
--
-- KEYS[1]          {tag}:i        sweeper index
-- KEYS[2]          {tag}:r:<rid>  the reservation
-- KEYS[3 .. 2+2n]  {tag}:s:<token>, {tag}:z:<token> for each scope, in order
-- ARGV[1]  JSON {tomb = tombstone ms, sweep = max holds swept per scope, sc = [scope descriptor, ...]}
-- Returns 1 when a live hold was released, 0 when it was already gone (settled, released or expired).

local ikey, rkey = KEYS[1], KEYS[2]
local p = cjson.decode(ARGV[1])
local now = bp_now_ms()
local scopes, record = bp_open_hold(ikey, rkey, p, now)
if record == nil then
  return 0
end
bp_unhold(record.m, scopes)
for _, sc in ipairs(scopes) do
  bp_flush(sc)
end
if record.legacy then
  redis.call('HSET', rkey, 'st', 'released')
  redis.call('PEXPIRE', rkey, p.tomb)
else
  redis.call('SET', rkey, string.format('released %d', record.t), 'PX', p.tomb)
end
bp_touch(scopes)
return 1
