-- budget_plugins shared Lua library: prepended to every script below (not a script itself).
--
-- Key layout (all keys of one call share the hash tag {<namespace>:<tenant digest>}):
--   {tag}:i            ZSET  scope token -> at or before the earliest lease expiry (ms) of its holds
--   {tag}:s:<token>    HASH  one scope's counters:
--                              b                current calendar bucket (windowed scopes only)
--                              u:<bucket>:<dim> used in that bucket ("" bucket when unwindowed)
--                              h:<dim>          held by live reservations
--                              L                the scope's limits (JSON, written only when they change)
--   {tag}:z:<token>    ZSET  the scope's live holds: member = "<amounts JSON>\n<rid>", score = expiry (ms);
--                              amounts JSON = [["dim", "n"], ...] (a flat ["dim", "n", ...] is read too)
--   {tag}:r:<rid>      STRING one reservation: "held <expiry ms> <reserved at ms> <member>" while held,
--                              then a tombstone with a TTL: "committed", or "released <reserved at ms>"
--                              (records written by earlier versions are hashes: st, m, e, s:<token>; still read)
--
-- Invariants: a scope's h:<dim> is always the sum of the amounts of the members of its z key. Held is
-- only ever decremented together with a ZREM that removed the member, so sweeps, commits and releases
-- racing each other can never give a hold back twice. The index score of a scope is at or before the
-- earliest expiry of its holds (a settled hold does not move it; the next sweep of the scope does), so a
-- scope whose index score lies in the future has nothing to sweep.
--
-- Amounts are decimal strings end to end (HINCRBY does the integer arithmetic in Redis); Lua numbers
-- are used to compare (exact below 2^53, which the client enforces) and to net a settled hold against
-- the next one (bp_pend keeps every partial sum below 2^53, so string.format('%d') is exact).
-- Time is the server's TIME, never the client's clock.

if redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local function bp_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Days since 1970-01-01 -> year, month, day (proleptic Gregorian; H. Hinnant's civil_from_days).
local function bp_civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp + 3
  if mp >= 10 then m = mp - 9 end
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

-- Year, month, day -> days since 1970-01-01 (H. Hinnant's days_from_civil).
local function bp_days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m - 3
  if m <= 2 then mp = m + 9 end
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- The calendar bucket (UTC) of a moment, formatted exactly like budget_plugins.window_bucket.
local function bp_bucket(window, now_ms)
  if window == '' then
    return ''
  end
  local secs = math.floor(now_ms / 1000)
  local days = math.floor(secs / 86400)
  local y, m, d = bp_civil_from_days(days)
  if window == 'hour' then
    return string.format('%04d-%02d-%02dT%02d', y, m, d, math.floor((secs - days * 86400) / 3600))
  elseif window == 'day' then
    return string.format('%04d-%02d-%02d', y, m, d)
  elseif window == 'month' then
    return string.format('%04d-%02d', y, m)
  elseif window == 'week' then
    -- ISO 8601: the week belongs to the year of its Thursday; 1970-01-01 was a Thursday.
    local weekday = (days + 3) % 7
    local thursday = days - weekday + 3
    local ty = bp_civil_from_days(thursday)
    local week = math.floor((thursday - bp_days_from_civil(ty, 1, 1)) / 7) + 1
    return string.format('%04d-W%02d', ty, week)
  end
  error('budget_plugins: unknown window ' .. window)
end

-- Amounts travel as flat lists {dim, "n", dim, "n", ...}: one Lua table each (cjson builds a table per
-- JSON array, and tables are most of the decoding cost).

-- The amounts carried by a hold member, as a flat list. Members are written as pairs, the format every
-- version reads (processes of two versions sweep each other's holds during a rolling upgrade); a flat
-- list is read too, so a later version may write one.
local function bp_member_amounts(member)
  local cut = string.find(member, '\n', 1, true)
  local amounts = cjson.decode(string.sub(member, 1, cut - 1))
  if type(amounts[1]) == 'table' then
    local flat = {}
    for i, pair in ipairs(amounts) do
      flat[2 * i - 1], flat[2 * i] = pair[1], pair[2]
    end
    return flat
  end
  return amounts
end

-- Add (or take back) held amounts; a counter back at zero is removed.
local function bp_add_held(skey, amounts, negative)
  for i = 1, #amounts, 2 do
    local amount = amounts[i + 1]
    if amount ~= '0' then
      local field = 'h:' .. amounts[i]
      if negative then
        amount = '-' .. amount
      end
      if redis.call('HINCRBY', skey, field, amount) == 0 then
        redis.call('HDEL', skey, field)
      end
    end
  end
end

-- Put the sweeper index at the scope's earliest expiry (or drop the scope when it holds nothing).
local function bp_reindex(ikey, sc)
  local first = redis.call('ZRANGE', sc.z, 0, 0, 'WITHSCORES')
  if first[1] then
    redis.call('ZADD', ikey, first[2], sc.t)
    sc.idx = tonumber(first[2])
  else
    redis.call('ZREM', ikey, sc.t)
    sc.idx = nil
  end
end

-- Return up to `limit` expired holds of one scope and reindex it; the count returned.
local function bp_sweep(ikey, sc, now, limit)
  local due = redis.call('ZRANGEBYSCORE', sc.z, '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    if redis.call('ZREM', sc.z, member) == 1 then
      bp_add_held(sc.s, bp_member_amounts(member), true)
    end
  end
  bp_reindex(ikey, sc)
  return #due
end

-- A new calendar window starts from zero: keep the new and the previous bucket's used, drop older ones.
local function bp_rollover(sc, current)
  if current then
    local keep_new, keep_old = 'u:' .. sc.b .. ':', 'u:' .. current .. ':'
    for _, field in ipairs(redis.call('HKEYS', sc.s)) do
      if string.sub(field, 1, 2) == 'u:' and string.sub(field, 1, #keep_new) ~= keep_new
          and string.sub(field, 1, #keep_old) ~= keep_old then
        redis.call('HDEL', sc.s, field)
      end
    end
  end
  redis.call('HSET', sc.s, 'b', sc.b)
end

-- Scope descriptors from the payload: {t = token, w = window, l = {dim, "limit", ...}, L = limits JSON,
-- x = idle TTL ms (0 = none)}, their keys at KEYS[first], KEYS[first + 1], ... (s, z pairs). Each
-- scope is swept first (only when its index score says a hold may be due: one ZMSCORE for all scopes).
-- A scope's bucket, limits and counters are then read with bp_load.
local function bp_scopes(ikey, descriptors, first, now, sweep_limit)
  local scopes = {}
  local n = #descriptors
  if n == 0 then
    return scopes
  end
  local tokens = {}
  for i, d in ipairs(descriptors) do
    tokens[i] = d.t
  end
  local indexed = redis.call('ZMSCORE', ikey, unpack(tokens))
  for i, d in ipairs(descriptors) do
    local sc = {s = KEYS[first + 2 * (i - 1)], z = KEYS[first + 2 * (i - 1) + 1], t = d.t, w = d.w,
                b = bp_bucket(d.w, now), x = d.x, l = d.l, L = d.L, limits = {}, idx = nil,
                cur = {}, pend = {}, pend_dims = {}}
    local l = d.l
    for j = 1, #l, 2 do
      sc.limits[l[j]] = l[j + 1]
    end
    if indexed[i] then
      sc.idx = tonumber(indexed[i])
      if sc.idx <= now then
        bp_sweep(ikey, sc, now, sweep_limit)
      end
    end
    scopes[i] = sc
  end
  return scopes
end

-- The used (current window) and held fields of a scope's limited dimensions, in the client's order.
local function bp_value_fields(sc)
  local fields, used = {}, 'u:' .. sc.b .. ':'
  local l = sc.l
  for i = 1, #l, 2 do
    fields[i] = used .. l[i]
    fields[i + 1] = 'h:' .. l[i]
  end
  return fields
end

-- Read a swept scope's bucket, stored limits and `fields` with one HMGET: sc.cur[field] = the stored
-- string (false when absent). The window is rolled over (it keeps the current bucket's fields) and
-- changed limits are written.
local function bp_load(sc, fields)
  if #fields == 0 and sc.w == '' and sc.L == '' then
    return -- nothing to read or check
  end
  local got = redis.call('HMGET', sc.s, 'b', 'L', unpack(fields))
  if sc.w ~= '' and got[1] ~= sc.b then
    bp_rollover(sc, got[1])
  end
  if sc.L ~= '' and got[2] ~= sc.L then
    redis.call('HSET', sc.s, 'L', sc.L)
  end
  for i, field in ipairs(fields) do
    sc.cur[field] = got[i + 2]
  end
end

local BP_EXACT = 9007199254740991
local bp_abs = math.abs

-- HINCRBY a counter by `amount` (a decimal string); a counter read by bp_load keeps its new value in
-- sc.cur as an exact decimal string (read back beyond 2^53). Returns the new value (a Lua number).
local function bp_incr(sc, field, amount)
  local after = redis.call('HINCRBY', sc.s, field, amount)
  if sc.cur[field] ~= nil then
    if bp_abs(after) <= BP_EXACT then
      sc.cur[field] = string.format('%d', after)
    else
      sc.cur[field] = redis.call('HGET', sc.s, field)
    end
  end
  return after
end

-- Add used amounts (a flat list) in a bucket.
local function bp_add_used(sc, bucket, amounts)
  local prefix = 'u:' .. bucket .. ':'
  for i = 1, #amounts, 2 do
    if amounts[i + 1] ~= '0' then
      bp_incr(sc, prefix .. amounts[i], amounts[i + 1])
    end
  end
end

-- Pending held changes of one scope, netted before they are written (a settled hold given back and
-- the next hold taken in the same script mostly cancel out): sc.pend[dim] is an exact integer (a
-- partial sum is written out before it could leave the exact range of doubles).
local function bp_pend(sc, dim, delta)
  local acc = sc.pend[dim]
  if acc == nil then
    acc = 0
    sc.pend_dims[#sc.pend_dims + 1] = dim
  end
  if bp_abs(acc) + bp_abs(delta) > BP_EXACT then
    bp_incr(sc, 'h:' .. dim, string.format('%d', acc))
    acc = 0
  end
  sc.pend[dim] = acc + delta
end

-- Add (sign 1) or take back (sign -1) held amounts (a flat list) as pending changes.
local function bp_pend_all(sc, amounts, sign)
  for i = 1, #amounts, 2 do
    if amounts[i + 1] ~= '0' then
      bp_pend(sc, amounts[i], sign * tonumber(amounts[i + 1]))
    end
  end
end

-- Write a scope's pending held changes (a counter back at zero is removed).
local function bp_flush(sc)
  for _, dim in ipairs(sc.pend_dims) do
    local delta = sc.pend[dim]
    if delta ~= 0 then
      local field = 'h:' .. dim
      if bp_incr(sc, field, string.format('%d', delta)) == 0 then
        redis.call('HDEL', sc.s, field)
        if sc.cur[field] ~= nil then
          sc.cur[field] = false
        end
      end
    end
  end
  sc.pend, sc.pend_dims = {}, {}
end

-- Idle expiry for ephemeral (run) scopes, refreshed on every write.
local function bp_touch(scopes)
  for _, sc in ipairs(scopes) do
    if sc.x > 0 then
      redis.call('PEXPIRE', sc.s, sc.x)
      redis.call('PEXPIRE', sc.z, sc.x)
    end
  end
end

-- One scope as the client decodes it in full: {bucket, HGETALL of its hash, live holds}.
local function bp_views(scopes)
  local views = {}
  for i, sc in ipairs(scopes) do
    views[i] = {sc.b, redis.call('HGETALL', sc.s), redis.call('ZCARD', sc.z)}
  end
  return views
end

-- Append "used held" (current window, as stored) of the fields read by bp_load to the compact reply.
local function bp_compact(out, sc, fields)
  for _, field in ipairs(fields) do
    out[#out + 1] = sc.cur[field] or '0'
  end
end

-- The first requested dimension (in request order) that does not fit: mirrors budget_plugins.find_denial.
-- Reads the counters loaded by bp_load over bp_value_fields, with the pending held changes.
local function bp_find_denial(sc, requested)
  local used_prefix = 'u:' .. sc.b .. ':'
  for i = 1, #requested, 2 do
    local dim, amount = requested[i], requested[i + 1]
    local limit = sc.limits[dim]
    if amount ~= '0' and limit then
      local used, held = sc.cur[used_prefix .. dim] or '0', sc.cur['h:' .. dim] or '0'
      if tonumber(used) + tonumber(held) + (sc.pend[dim] or 0) + tonumber(amount) > tonumber(limit) then
        return {dim, limit, used, held, amount}
      end
    end
  end
  return nil
end

-- One reservation record: nil, or {st = held|committed|released, m = member, e = expiry ms,
-- t = reserved at ms (nil when unknown), legacy = true for a hash written by an earlier version}.
local function bp_record(rkey)
  local raw = redis.pcall('GET', rkey)
  if type(raw) == 'table' then -- WRONGTYPE: a hash record written by an earlier version
    local h = redis.call('HMGET', rkey, 'st', 'm', 'e')
    if not h[1] then
      return nil
    end
    return {st = h[1], m = h[2], e = tonumber(h[3]), legacy = true}
  end
  if not raw then
    return nil
  end
  if raw == 'committed' then
    return {st = raw}
  end
  local a = string.find(raw, ' ', 1, true)
  local st = string.sub(raw, 1, a - 1)
  if st == 'released' then
    return {st = st, t = tonumber(string.sub(raw, a + 1))}
  end
  local b = string.find(raw, ' ', a + 1, true)
  local c = string.find(raw, ' ', b + 1, true)
  return {st = st, e = tonumber(string.sub(raw, a + 1, b - 1)), t = tonumber(string.sub(raw, b + 1, c - 1)),
          m = string.sub(raw, c + 1)}
end

-- Write a held record (expiry `e`, reserved at `t`) that lives `ttl` ms.
local function bp_write_held(rkey, e, t, member, ttl)
  redis.call('SET', rkey, string.format('held %d %d ', e, t) .. member, 'PX', ttl)
end

-- Is the reservation record a live hold?
local function bp_live(record, now)
  return record ~= nil and record.st == 'held' and record.e > now
end

-- The prologue of release and extend: the listed scopes (swept, loaded) and the reservation's
-- record, or nil for the record when its hold is no longer live (settled, released or expired).
local function bp_open_hold(ikey, rkey, p, now)
  local scopes = bp_scopes(ikey, p.sc, 3, now, p.sweep)
  for _, sc in ipairs(scopes) do
    bp_load(sc, {})
  end
  local record = bp_record(rkey)
  if not bp_live(record, now) then
    return scopes, nil
  end
  return scopes, record
end

-- Give a live hold back in every listed scope (holds in scopes not listed run out with their lease),
-- as pending changes of each scope (written by bp_flush). Held is taken back only where ZREM removed
-- the member. The sweeper index is left as it is: it may now lie before the scope's earliest expiry,
-- which only costs the next call one sweep of the scope.
local function bp_unhold(member, scopes)
  local amounts = nil
  for _, sc in ipairs(scopes) do
    if redis.call('ZREM', sc.z, member) == 1 then
      amounts = amounts or bp_member_amounts(member)
      bp_pend_all(sc, amounts, -1)
    end
  end
end

-- The bucket a reservation charges in a scope: the window it was reserved in.
local function bp_reserved_bucket(rkey, record, sc)
  if sc.w == '' or record == nil then
    return sc.b
  end
  if record.t then
    return bp_bucket(sc.w, record.t)
  end
  if record.legacy then
    return redis.call('HGET', rkey, 's:' .. sc.t) or sc.b
  end
  return sc.b
end

-- Commit one reservation with its actual amounts; idempotent by reservation id. The hold given back
-- stays pending in each scope (see bp_flush).
-- Returns {status, hold amounts JSON or ""}; status is committed|duplicate|expired|unknown.
local function bp_settle(rkey, scopes, actual, now, tomb_ms)
  local record = bp_record(rkey)
  local st = record and record.st
  if st == 'committed' then
    return {'duplicate', ''}
  end
  local status, hold = 'unknown', ''
  if st == 'held' then
    hold = string.sub(record.m, 1, string.find(record.m, '\n', 1, true) - 1)
    if bp_live(record, now) then
      status = 'committed'
    else
      status = 'expired'
    end
    bp_unhold(record.m, scopes)
  elseif st then
    status = 'expired' -- released before: the spend still happened (as the in-memory ledger reports it)
  end
  for _, sc in ipairs(scopes) do
    bp_add_used(sc, bp_reserved_bucket(rkey, record, sc), actual)
  end
  redis.call('SET', rkey, 'committed', 'PX', tomb_ms)
  return {status, hold}
end
