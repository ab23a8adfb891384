"""How the Redis ledger talks to its scripts: by SHA (reloaded when forgotten), and the data it reads back."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import redis
import redis.asyncio

from budget_plugins import AsyncRedisLedger, RedisLedger, Scope
from budget_plugins._redis._core import Keys, hash_tag, scope_token


def _scope() -> Scope:
    return Scope("tenant", uuid.uuid4().hex, tenant=uuid.uuid4().hex, limits={"steps": 3})


def test_a_flushed_script_cache_is_reloaded_and_the_call_still_counts(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, namespace="scripts")
    scope = _scope()
    assert ledger.reserve("a", [scope], {"steps": 1}).granted
    with redis.Redis.from_url(redis_url) as client:
        client.script_flush()
    grant = ledger.reserve("b", [scope], {"steps": 1}, settle=[("a", {"steps": 1})])
    assert grant.granted and grant.usage[0].used == {"steps": 1} and grant.usage[0].held == {"steps": 1}
    assert not ledger.reserve("c", [scope], {"steps": 2}).granted
    ledger.close()


def test_the_async_ledger_reloads_a_flushed_script_too(redis_cluster_url: str) -> None:
    async def main() -> tuple[bool, bool]:
        ledger = AsyncRedisLedger(redis_cluster_url, namespace="scripts")
        scope = _scope()
        first = (await ledger.reserve("a", [scope], {"steps": 1})).granted
        admin = redis.asyncio.RedisCluster.from_url(redis_cluster_url.replace("redis+cluster://", "redis://"))
        await admin.script_flush()  # sent to every primary
        await admin.aclose()
        again = await ledger.reserve("b", [scope], {"steps": 1}, settle=[("a", {"steps": 1})])
        await ledger.aclose()
        return first, again.granted and again.usage[0].used == {"steps": 1}

    assert asyncio.run(main()) == (True, True)


def test_hold_members_written_as_flat_lists_are_settled_and_swept_too(redis_url: str) -> None:
    namespace = "pairs"
    ledger = RedisLedger(redis_url, namespace=namespace)
    tenant = uuid.uuid4().hex
    scope = Scope("tenant", tenant, tenant=tenant, limits={"steps": 10, "cost_usd": 100})
    assert ledger.reserve("a", [scope], {"steps": 2, "cost_usd": 5}).granted
    assert ledger.reserve("b", [scope], {"steps": 1}, lease_seconds=0.05).granted
    keys, token = Keys(hash_tag(namespace, tenant)), scope_token(scope)
    with redis.Redis.from_url(redis_url) as client:
        for rid in ("a", "b"):
            record = keys.reservation(rid)
            state, expiry, at, member = client.get(record).split(b" ", 3)
            amounts, rest = member.split(b"\n", 1)
            pairs = json.loads(amounts)
            assert pairs and all(isinstance(pair, list) for pair in pairs)  # written as every version reads
            flat = [item for pair in pairs for item in pair]
            flat_member = json.dumps(flat, separators=(",", ":")).encode() + b"\n" + rest
            score = client.zscore(keys.holds(token), member)
            assert client.zrem(keys.holds(token), member) == 1
            client.zadd(keys.holds(token), {flat_member: score})
            client.set(record, b" ".join([state, expiry, at, flat_member]), px=client.pttl(record))
    settlement = ledger.commit("a", [scope], {"steps": 2, "cost_usd": 7})
    assert settlement.status == "committed" and settlement.overage == {"cost_usd": 2}
    time.sleep(0.1)
    assert ledger.sweep([tenant]) == 1
    snap = ledger.snapshot(scope)
    assert snap.held == {} and snap.used == {"steps": 2, "cost_usd": 7}
    ledger.close()
