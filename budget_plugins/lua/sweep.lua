-- sweep: return the expired holds of the listed scopes (the lazy sweep, run on demand).
--
-- KEYS[1]          {tag}:i  sweeper index
-- KEYS[2 .. 1+2n]  {tag}:s:<token>, {tag}:z:<token> for each scope
-- ARGV[1 .. n]     the scopes' tokens (index members)
-- ARGV[n+1]        max holds swept per scope
-- Returns the number of holds swept.

local ikey = KEYS[1]
local n = #ARGV - 1
local limit = tonumber(ARGV[n + 1])
local now = bp_now_ms()
local swept = 0
for i = 1, n do
  local sc = {s = KEYS[2 * i], z = KEYS[2 * i + 1], t = ARGV[i]}
  swept = swept + bp_sweep(ikey, sc, now, limit) -- reindexes the scope, stale index entries too
end
return swept
