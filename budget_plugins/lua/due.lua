-- due: scopes of one hash tag that hold at least one expired lease (for the sweeper).
--
-- KEYS[1]  {tag}:i  sweeper index
-- ARGV[1]  maximum number of scope tokens to return
-- Returns the tokens whose earliest expiry is at or before the server's now.

return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', bp_now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
