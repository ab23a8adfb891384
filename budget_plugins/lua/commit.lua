-- commit: replace a hold by the actual amounts (idempotent by reservation id).
--
-- KEYS[1]          {tag}:i        sweeper index
-- KEYS[2]          {tag}:r:<rid>  the reservation
-- KEYS[3 .. 2+2n]  {tag}:s:<token>, {tag}:z:<token> for each of the n scopes to charge, in order
-- ARGV[1]  JSON {a = [[dim, "actual"], ...], tomb = tombstone ms, sweep = max holds swept per scope,
--                sc = [scope descriptor, ...]}
-- Returns {status, hold amounts JSON or "", views}: status committed|duplicate|expired|unknown; an expired
-- or unknown reservation's spend is recorded all the same (it happened), the client reports it as overage.

local ikey, rkey = KEYS[1], KEYS[2]
local p = cjson.decode(ARGV[1])
local now = bp_now_ms()
local scopes = bp_scopes(ikey, p.sc, 3, now, p.sweep)
local settled = bp_settle(ikey, rkey, scopes, p.a, now, p.tomb)
bp_touch(scopes)
return {settled[1], settled[2], bp_views(scopes)}
