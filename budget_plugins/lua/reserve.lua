-- reserve: settle earlier reservations, then check every limit of every scope and hold the request in
-- all of them or in none (one atomic step, one round trip per guarded call).
--
-- KEYS[1]                  {tag}:i        sweeper index
-- KEYS[2]                  {tag}:r:<rid>  the new reservation
-- KEYS[3 .. 2+2n]          {tag}:s:<token>, {tag}:z:<token> for each of the n scopes, in order
-- KEYS[3+2n .. 2+2n+k]     {tag}:r:<rid>  for each of the k reservations to settle first
-- ARGV[1]  JSON {a = [[dim, "amount"], ...] (request order), m = hold member ("<sorted amounts JSON>\n<rid>"),
--                lease = ms, enf = bool, tomb = tombstone ms, sweep = max holds swept per scope,
--                sc = [scope descriptor, ...] (see bp_scopes), st = [[[dim, "actual"], ...], ...]}
-- Returns, for a grant without denial (the hot path), one string:
--   "granted <used> <held> ..."  used (current window) and held after this hold, for each scope in
--                                order and each of its limited dimensions in the descriptor's order
-- and otherwise {outcome, denial, views}:
--   outcome  "granted" (shadow mode, with the would-be denial) | "denied" | "duplicate" | "conflict"
--            (same id, other amounts)
--   denial   {} or {scope index (1-based), dim, limit, used, held, requested} (strings)
--   views    per scope {bucket, HGETALL of the scope hash, live holds}

local ikey, rkey = KEYS[1], KEYS[2]
local p = cjson.decode(ARGV[1])
local now = bp_now_ms()
local scopes = bp_scopes(ikey, p.sc, 3, now, p.sweep)
local settle_first = 3 + 2 * #p.sc
for j, actual in ipairs(p.st) do
  bp_settle(ikey, KEYS[settle_first + j - 1], scopes, actual, now, p.tomb, true)
end

local record = bp_record(rkey)
if record then
  for _, sc in ipairs(scopes) do
    bp_flush(sc, nil)
  end
  bp_touch(scopes)
  if bp_live(record, now) and record.m ~= p.m then
    return {'conflict', {}, bp_views(scopes)}
  end
  return {'duplicate', {}, bp_views(scopes)}
end

-- The check sees the settled holds given back (pending: written below, netted with the new hold).
local function find_denial()
  for i, sc in ipairs(scopes) do
    bp_values(sc, bp_limit_dims(sc))
    local found = bp_find_denial(sc, p.a)
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
    bp_flush(sc, nil)
  end
  denial = find_denial()
  if denial and p.enf then
    bp_touch(scopes)
    return {'denied', denial, bp_views(scopes)}
  end
end

local expires = now + p.lease
bp_write_held(rkey, expires, now, p.m, p.lease + p.tomb)
for _, sc in ipairs(scopes) do
  bp_flush(sc, p.a)
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
for _, sc in ipairs(scopes) do
  bp_compact(out, sc, bp_limit_dims(sc))
end
return table.concat(out, ' ')
