-- commit: replace a hold by the actual amounts (idempotent by reservation id).
--
-- KEYS[1]          {tag}:i        sweeper index
-- KEYS[2]          {tag}:r:<rid>  the reservation
-- KEYS[3 .. 2+2n]  {tag}:s:<token>, {tag}:z:<token> for each of the n scopes to charge, in order
-- ARGV[1]  JSON {a = [[dim, "actual"], ...], tomb = tombstone ms, sweep = max holds swept per scope,
--                sc = [scope descriptor, ...]}
-- Returns one string "<status>\n<hold amounts JSON or empty>\n<used> <held> ...": status
-- committed|duplicate|expired|unknown (an expired or unknown reservation's spend is recorded all the
-- same: it happened, the client reports it as overage), then used (current window) and held after the
-- commit, for each scope in order and each of its limited dimensions then each other dimension of `a`.

local ikey, rkey = KEYS[1], KEYS[2]
local p = cjson.decode(ARGV[1])
local now = bp_now_ms()
local scopes = bp_scopes(ikey, p.sc, 3, now, p.sweep)
local settled = bp_settle(ikey, rkey, scopes, p.a, now, p.tomb)
bp_touch(scopes)
local out = {}
for _, sc in ipairs(scopes) do
  local dims = bp_limit_dims(sc)
  for _, pair in ipairs(p.a) do
    if not sc.limits[pair[1]] then
      dims[#dims + 1] = pair[1]
    end
  end
  bp_values(sc, dims)
  bp_compact(out, sc, dims)
end
return settled[1] .. '\n' .. settled[2] .. '\n' .. table.concat(out, ' ')
