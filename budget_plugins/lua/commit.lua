-- commit: replace a hold by the actual amounts (idempotent by reservation id).
--
-- KEYS[1]          {tag}:i        sweeper index
-- KEYS[2]          {tag}:r:<rid>  the reservation
-- KEYS[3 .. 2+2n]  {tag}:s:<token>, {tag}:z:<token> for each of the n scopes to charge, in order
-- ARGV[1]  JSON {a = [dim, "actual", ...], tomb = tombstone ms, sweep = max holds swept per scope,
--                sc = [scope descriptor, ...]}
-- Returns one string "<status>\n<hold amounts JSON or empty>\n<used> <held> ...": status
-- committed|duplicate|expired|unknown (an expired or unknown reservation's spend is recorded all the
-- same: it happened, the client reports it as overage), then used (current window) and held after the
-- commit, for each scope in order and each of its limited dimensions then each other dimension of `a`.

local ikey, rkey = KEYS[1], KEYS[2]
local p = cjson.decode(ARGV[1])
local now = bp_now_ms()
local scopes = bp_scopes(ikey, p.sc, 3, now, p.sweep)
local fields_of = {}
for i, sc in ipairs(scopes) do
  local fields = bp_value_fields(sc)
  local used = 'u:' .. sc.b .. ':'
  for j = 1, #p.a, 2 do
    if not sc.limits[p.a[j]] then
      fields[#fields + 1] = used .. p.a[j]
      fields[#fields + 1] = 'h:' .. p.a[j]
    end
  end
  fields_of[i] = fields
  bp_load(sc, fields)
end
local settled = bp_settle(rkey, scopes, p.a, now, p.tomb)
local out = {}
for i, sc in ipairs(scopes) do
  bp_flush(sc)
  bp_compact(out, sc, fields_of[i])
end
bp_touch(scopes)
return settled[1] .. '\n' .. settled[2] .. '\n' .. table.concat(out, ' ')
