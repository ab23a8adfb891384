-- reserve: settle earlier reservations, then check every limit of every scope and hold the request in
-- all of them or in none (one atomic step, one round trip per guarded call).
--
-- KEYS[1]                  {tag}:i        sweeper index
-- KEYS[2]                  {tag}:r:<rid>  the new reservation
-- KEYS[3 .. 2+2n]          {tag}:s:<token>, {tag}:z:<token> for each of the n scopes, in order
-- KEYS[3+2n .. 2+2n+k]     {tag}:r:<rid>  for each of the k reservations to settle first
-- ARGV[1]  JSON {a = [dim, "amount", ...] (request order), m = hold member ("<sorted amounts JSON>\n<rid>"),
--                lease = ms, enf = bool, tomb = tombstone ms, sweep = max holds swept per scope,
--                sc = [scope descriptor, ...] (see bp_scopes), st = [[dim, "actual", ...], ...]}
-- Returns, for a grant without denial (the hot path), one string:
--   "granted <used> <held> ..."  used (current window) and held after this hold, for each scope in
--                                order and each of its limited dimensions in the descriptor's order
-- and otherwise {outcome, denial, views}:
--   outcome  "granted" (shadow mode, with the would-be denial) | "denied" | "duplicate" | "conflict"
--            (same id, other amounts)
--   denial   {} or {scope index (1-based), dim, limit, used, held, requested} (strings)
--   views    per scope {bucket, HGETALL of the scope hash, live holds}
--
-- Redis commands on the hot path (n scopes, k settled, d dimensions): TIME, ZMSCORE, one HMGET per
-- scope (bucket, limits, limited counters), per settled reservation a GET, a ZREM per scope, one
-- HINCRBY per spent dimension and scope, a SET; then a GET and a SET of the new reservation and a ZADD
-- per scope. Held counters are netted first: a hold settled and a hold of the same amounts taken in
-- the same call write nothing.

local ikey, rkey = KEYS[1], KEYS[2]
local p = cjson.decode(ARGV[1])
local now = bp_now_ms()
local scopes = bp_scopes(ikey, p.sc, 3, now, p.sweep)
local fields_of = {}
for i, sc in ipairs(scopes) do
  fields_of[i] = bp_value_fields(sc)
  bp_load(sc, fields_of[i])
end
local settle_first = 3 + 2 * #scopes
for j, actual in ipairs(p.st or {}) do
  bp_settle(KEYS[settle_first + j - 1], scopes, actual, now, p.tomb)
end

local record = bp_record(rkey)
if record then
  for _, sc in ipairs(scopes) do
    bp_flush(sc)
  end
  bp_touch(scopes)
  if bp_live(record, now) and record.m ~= p.m then
    return {'conflict', {}, bp_views(scopes)}
  end
  return {'duplicate', {}, bp_views(scopes)}
end

-- The check sees the settled holds given back (pending: written below, netted with the new hold).
local requested = p.a
local function find_denial()
  for i, sc in ipairs(scopes) do
    local found = bp_find_denial(sc, requested)
    if found then
      return {i, found[1], found[2], found[3], found[4], found[5]}
    end
  end
  return nil
end

local denial = find_denial()
if denial then
  -- Rare path: write the settled holds back first, so the denial reports the exact stored counters.
  for _, sc in ipairs(scopes) do
    bp_flush(sc)
  end
  denial = find_denial()
  if denial and p.enf then
    bp_touch(scopes)
    return {'denied', denial, bp_views(scopes)}
  end
end

local lease = tonumber(p.lease)
local expires = now + lease
bp_write_held(rkey, expires, now, p.m, lease + p.tomb)
for _, sc in ipairs(scopes) do
  bp_pend_all(sc, requested, 1)
  bp_flush(sc)
  redis.call('ZADD', sc.z, expires, p.m)
  if sc.idx == nil or sc.idx > expires then
    redis.call('ZADD', ikey, expires, sc.t)
  end
end
bp_touch(scopes)
if denial then
  return {'granted', denial, bp_views(scopes)}
end
local out = {'granted'}
for i, sc in ipairs(scopes) do
  bp_compact(out, sc, fields_of[i])
end
return table.concat(out, ' ')
