"""The Redis ledger sends its scripts by SHA and loads them again when the server has forgotten them."""

from __future__ import annotations

import asyncio
import uuid

import redis
import redis.asyncio

from budget_plugins import AsyncRedisLedger, RedisLedger, Scope


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
