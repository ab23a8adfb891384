-- snapshot: one scope's counters in the current window (expired holds swept first).
--
-- KEYS[1]  {tag}:i          sweeper index
-- KEYS[2]  {tag}:s:<token>  the scope hash
-- KEYS[3]  {tag}:z:<token>  the scope's holds
-- ARGV[1]  JSON {sweep = max holds swept, sc = [scope descriptor]}
-- Returns {view}: {bucket, HGETALL of the scope hash, live holds}.

local ikey = KEYS[1]
local p = cjson.decode(ARGV[1])
local now = bp_now_ms()
local scopes = bp_scopes(ikey, p.sc, 2, now, p.sweep)
for _, sc in ipairs(scopes) do
  bp_load(sc, {})
end
return bp_views(scopes)
