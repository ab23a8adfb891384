"""The Redis ledger against real redis-server processes (single server and Redis Cluster).

Concurrency tests run real processes released together by a barrier; fault
tests kill, pause and restart servers of their own. Timings are only ever
bounded generously (a refusal "well under 2 s"), never asserted tightly.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot
from redis_server import RedisServer, running_cluster

from budget_plugins import (
    AsyncRedisLedger,
    Budget,
    BudgetConfigError,
    Ceiling,
    Denial,
    Grant,
    InMemoryLedger,
    LedgerUnavailable,
    Meter,
    RedisLedger,
    Scope,
    ScopeUsage,
    Settlement,
    ledger_from_url,
)
from budget_plugins._ledger import window_bucket
from budget_plugins._redis._core import Keys, hash_tag, scope_token

CTX = multiprocessing.get_context("fork")
USD = 1_000_000


def ns() -> str:
    return "t" + uuid.uuid4().hex[:12]


def tenant_scope(tenant: str, limits: Mapping[str, int], window: Any = None) -> Scope:
    return Scope("tenant", tenant, tenant=tenant, limits=dict(limits), window=window)


def raw_tenant(
    url: str, limits: Mapping[str, int], window: Any = None, **options: Any
) -> tuple[RedisLedger, Scope, Keys]:
    """A fresh namespace's ledger, a tenant scope in it, and that tenant's raw key names."""
    namespace, tenant = ns(), uuid.uuid4().hex
    ledger = RedisLedger(url, namespace=namespace, **options)
    return ledger, tenant_scope(tenant, limits, window=window), Keys(hash_tag(namespace, tenant))


@pytest.fixture(params=["redis", "redis_cluster"])
def any_url(request: pytest.FixtureRequest) -> str:
    """The session's single server, then the session's cluster."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


# -- packaging and construction --------------------------------------------------------------


def test_importing_budget_plugins_does_not_import_redis() -> None:
    code = "import sys, budget_plugins; budget_plugins.ledger_from_url('memory://'); print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_redis_package_names_the_pip_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import budget_plugins\n"
        "try:\n    budget_plugins.ledger_from_url('redis://127.0.0.1:1/0')\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "budget-plugins[redis]"' in out.stdout


def test_ledger_from_url_picks_the_store() -> None:
    assert isinstance(ledger_from_url("memory://"), InMemoryLedger)
    single = ledger_from_url("redis://127.0.0.1:6379/0")
    cluster = ledger_from_url("redis+cluster://127.0.0.1:7000")
    assert isinstance(single, RedisLedger) and not single.options.cluster
    assert isinstance(cluster, RedisLedger) and cluster.options.cluster
    assert cluster.options.url == "redis://127.0.0.1:7000"
    assert ledger_from_url("rediss://127.0.0.1:6380/0", timeout=0.2).options.timeout == 0.2  # type: ignore[attr-defined]
    with pytest.raises(BudgetConfigError, match="unsupported"):
        ledger_from_url("postgres://x")


def test_options_are_validated_eagerly() -> None:
    with pytest.raises(BudgetConfigError, match="failure_policy"):
        RedisLedger(failure_policy="fail_sometimes")  # type: ignore[arg-type]
    with pytest.raises(BudgetConfigError, match="namespace"):
        RedisLedger(namespace="a}b")
    with pytest.raises(BudgetConfigError, match="timeout"):
        RedisLedger(timeout=0)
    with pytest.raises(BudgetConfigError, match="client"):
        RedisLedger(client=redis.Redis()).as_async()  # nothing to build an asyncio client from


def test_every_script_documents_keys_argv_and_return() -> None:
    package = resources.files("budget_plugins.lua")
    names = [p.name for p in package.iterdir() if p.name.endswith(".lua") and p.name != "lib.lua"]
    assert len(names) == 7
    for name in names:
        header = package.joinpath(name).read_text(encoding="utf-8").split("\n\n", 1)[0]
        assert "KEYS[1]" in header and "ARGV" in header and "Returns" in header, name


# -- key layout and isolation ----------------------------------------------------------------

NASTY = ["", "a", "a}", "{a}", "}{", "{", "a:b", "a:b:", ":", "ü🙂", "\x00", "\n{x}\n", "x" * 10_000, "{bp:x}"]


def test_every_key_of_a_tenant_shares_one_hash_slot_and_no_other() -> None:
    tags = {tenant: hash_tag("bp", tenant) for tenant in NASTY}
    assert len(set(tags.values())) == len(NASTY)
    for tenant, tag in tags.items():
        keys = Keys(tag)
        scope = Scope("run", tenant + "{}:", tenant=tenant, workflow="}" + tenant)
        token = scope_token(scope)
        slot = key_slot(tag)
        for key in (keys.index, keys.reservation("{" + tenant + "}"), keys.scope(token), keys.holds(token)):
            assert key_slot(key) == slot
            assert key.index(b"}") == len(tag) - 1  # the tag ends where we say, whatever the ids contain


def test_nasty_scope_ids_never_collide_across_tenants(any_url: str) -> None:
    ledger = RedisLedger(any_url, namespace=ns())
    suffix = uuid.uuid4().hex
    scopes = []
    for tenant in NASTY:
        for other in ("", "{", "}", ":", "a:b", "ü", "y" * 10_000):
            t = tenant + suffix
            scopes += [
                Scope("run", other, tenant=t, workflow=tenant, limits={"steps": 1}),
                Scope("workflow", other, tenant=t, workflow=other, limits={"steps": 1}),
            ]
        scopes.append(tenant_scope(tenant + suffix, {"steps": 1}))
        scopes.append(tenant_scope(tenant + suffix, {"steps": 1}, window="day"))
    assert len({s.key for s in scopes}) == len(scopes)
    for i, scope in enumerate(scopes):
        rid = f"{{{i}}}:" + scope.id[:50]
        assert ledger.reserve(rid, [scope], {"steps": 1}).granted, scope.key[:4]
    for scope in scopes:
        assert ledger.snapshot(scope).held == {"steps": 1}


def test_scopes_of_several_tenants_in_one_call_are_refused(redis_ledger_factory: Callable[..., RedisLedger]) -> None:
    ledger = redis_ledger_factory()
    with pytest.raises(BudgetConfigError, match="one tenant"):
        ledger.reserve("r", [tenant_scope("a", {"steps": 1}), tenant_scope("b", {"steps": 1})], {"steps": 1})


def test_amounts_beyond_exact_lua_numbers_are_refused(redis_ledger_factory: Callable[..., RedisLedger]) -> None:
    ledger = redis_ledger_factory()
    scope = tenant_scope(uuid.uuid4().hex, {"tokens": 2**60})
    with pytest.raises(BudgetConfigError, match="2\\*\\*53"):
        ledger.reserve("r", [scope], {"tokens": 1})
    with pytest.raises(BudgetConfigError, match="2\\*\\*53"):
        ledger.reserve("r", [tenant_scope("x", {})], {"tokens": 2**53})


def test_large_amounts_stay_exact(redis_ledger_factory: Callable[..., RedisLedger]) -> None:
    ledger = redis_ledger_factory()
    big = 2**53 - 1  # about $9 billion in micro-dollars
    scope = tenant_scope(uuid.uuid4().hex, {"cost_usd": big})
    assert ledger.reserve("a", [scope], {"cost_usd": big - 1}).granted
    assert ledger.commit("a", [scope], {"cost_usd": big - 1}).status == "committed"
    assert ledger.reserve("b", [scope], {"cost_usd": 1}).granted
    assert not ledger.reserve("c", [scope], {"cost_usd": 1}).granted
    ledger.commit("b", [scope], {"cost_usd": 1})
    assert ledger.snapshot(scope).used == {"cost_usd": big}


def test_a_scope_listed_twice_is_held_once(redis_ledger_factory: Callable[..., RedisLedger]) -> None:
    ledger = redis_ledger_factory()
    scope = tenant_scope(uuid.uuid4().hex, {"steps": 5})
    ledger.reserve("a", [scope, scope], {"steps": 2})
    assert ledger.snapshot(scope).held == {"steps": 2}
    assert ledger.release("a", [scope, scope])
    assert ledger.snapshot(scope).held == {}


# -- read API, TTLs, windows ------------------------------------------------------------------


def test_status_reads_stored_limits_used_held_and_remaining(
    redis_ledger_factory: Callable[..., RedisLedger],
) -> None:
    ledger = redis_ledger_factory()
    tenant = uuid.uuid4().hex
    scope = tenant_scope(tenant, {"cost_usd": 10 * USD, "model_calls": 100}, window="month")
    ledger.reserve("a", [scope], {"cost_usd": 2 * USD, "model_calls": 1})
    ledger.commit("a", [scope], {"cost_usd": USD, "model_calls": 1})
    ledger.reserve("b", [scope], {"cost_usd": 3 * USD})
    status = ledger.status(Scope("tenant", tenant, tenant=tenant, window="month"))  # no limits: read stored ones
    assert status.usage.limits == {"cost_usd": 10 * USD, "model_calls": 100}
    assert status.usage.used == {"cost_usd": USD, "model_calls": 1}
    assert status.usage.held == {"cost_usd": 3 * USD}
    assert status.remaining == {"cost_usd": 6 * USD, "model_calls": 99}
    assert status.holds == 1
    assert status.bucket == window_bucket("month", time.time())


def test_run_scopes_expire_when_idle_and_ceilings_do_not(redis_url: str) -> None:
    namespace = ns()
    ledger = RedisLedger(redis_url, namespace=namespace, run_ttl_seconds=600)
    tenant = uuid.uuid4().hex
    run = Scope("run", "r", tenant=tenant, limits={"steps": 5})
    ceiling = tenant_scope(tenant, {"steps": 5})
    ledger.reserve("a", [run, ceiling], {"steps": 1}, lease_seconds=30)
    keys = Keys(hash_tag(namespace, tenant))
    with redis.Redis.from_url(redis_url) as client:
        assert 0 < client.pttl(keys.scope(scope_token(run))) <= 600_000
        assert 0 < client.pttl(keys.holds(scope_token(run))) <= 600_000
        assert client.pttl(keys.scope(scope_token(ceiling))) == -1
        assert 0 < client.pttl(keys.reservation("a")) <= (30 + 3600) * 1000


WINDOWS = ["hour", "day", "week", "month"]
LAST_MS = 253_402_000_000_000  # late in the year 9999


def _lua_buckets(client: redis.Redis, window: str, moments_ms: Sequence[int]) -> list[str]:
    lib = resources.files("budget_plugins.lua").joinpath("lib.lua").read_text(encoding="utf-8")
    body = "local out = {}\nfor i = 2, #ARGV do out[i - 1] = bp_bucket(ARGV[1], tonumber(ARGV[i])) end\nreturn out"
    raw = client.eval(lib + "\n" + body, 0, window, *moments_ms)
    return [b.decode() for b in raw]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(moments=st.lists(st.integers(0, LAST_MS), min_size=1, max_size=200))
@example(
    moments=[
        0,
        951_782_400_000,  # 2000-02-29
        1_609_372_800_000,  # 2020-12-31 (ISO week 53 of 2020)
        1_609_718_399_999,  # 2021-01-03 23:59:59.999 (still 2020-W53)
        1_609_718_400_000,  # 2021-01-04 (2021-W01)
        1_735_516_800_000,  # 2024-12-30 (2025-W01)
        4_107_542_400_000,  # 2100-02-28
        LAST_MS,
    ]
)
def test_lua_calendar_buckets_match_window_bucket(redis_url: str, moments: list[int]) -> None:
    with redis.Redis.from_url(redis_url) as client:
        for window in WINDOWS:
            expected = [window_bucket(window, ms // 1000) for ms in moments]  # type: ignore[arg-type]
            assert _lua_buckets(client, window, moments) == expected


def test_a_new_window_starts_from_zero_and_commit_charges_the_window_reserved_in(redis_url: str) -> None:
    ledger, scope, keys = raw_tenant(redis_url, {"cost_usd": 10}, window="month")
    skey = keys.scope(scope_token(scope))
    with redis.Redis.from_url(redis_url) as client:
        # Pretend the scope was last used in an old month, which spent the whole limit.
        client.hset(skey, mapping={"b": "1999-11", "u:1999-11:cost_usd": 10, "u:1999-10:cost_usd": 7})
        grant = ledger.reserve("a", [scope], {"cost_usd": 10})
        assert grant.granted and grant.usage[0].used == {}
        fields = {k.decode() for k in client.hkeys(skey)}
        assert "u:1999-11:cost_usd" in fields  # the previous window is kept
        assert "u:1999-10:cost_usd" not in fields  # older ones are dropped
        # A call reserved in the old month and committed now charges the old month.
        state, expiry, _, member = client.get(keys.reservation("a")).split(b" ", 3)
        assert state == b"held"
        # The record keeps the moment it was reserved at: move it to 1999-11-07T18:40Z.
        client.set(keys.reservation("a"), b" ".join([state, expiry, b"942000000000", member]), px=60_000)
        assert ledger.commit("a", [scope], {"cost_usd": 4}).status == "committed"
        assert int(client.hget(skey, "u:1999-11:cost_usd") or 0) == 14
    assert ledger.snapshot(scope).used == {}
    assert ledger.snapshot(scope).held == {}


# -- the hot path: compact replies, netted holds, stored limits, records -------------------------------


def _limited(view: ScopeUsage, dims: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    return (
        {dim: n for dim, n in view.used.items() if dim in dims},
        {dim: n for dim, n in view.held.items() if dim in dims},
    )


def test_compact_replies_report_the_stored_counters_of_the_limited_dimensions(
    redis_ledger_factory: Callable[..., RedisLedger],
) -> None:
    ledger = redis_ledger_factory()
    tenant = uuid.uuid4().hex
    run = Scope("run", "r", tenant=tenant, limits={"model_calls": 100, "cost_usd": 10 * USD})
    workflow = Scope("workflow", "w", tenant=tenant, workflow="w", limits={"cost_usd": 50 * USD})
    ceiling = tenant_scope(tenant, {"cost_usd": 90 * USD, "tool_calls": 7}, window="month")
    scopes = [run, workflow, ceiling, run]  # a scope listed twice has one entry per listing
    settle: list[tuple[str, Mapping[str, int]]] = []
    for i in range(6):
        amounts = {"model_calls": 1, "tool_calls": i % 2, "input_tokens": 10 + i, "cost_usd": (i + 1) * USD // 10}
        grant = ledger.reserve(f"r{i}", scopes, amounts, settle=settle)
        assert grant.granted and grant.denial is None and len(grant.usage) == 4
        for scope, view in zip(scopes, grant.usage, strict=True):
            snap = ledger.snapshot(scope)
            assert (view.used, view.held) == _limited(snap, list(scope.limits)), (i, scope.kind)
            assert view.limits == dict(scope.limits) and view.scope_id == scope.label
        settle = [(f"r{i}", {"model_calls": 1, "input_tokens": 3, "cost_usd": i * 7})]
    settlement = ledger.commit("r5", scopes, {"model_calls": 1, "input_tokens": 3, "output_tokens": 9})
    assert settlement.status == "committed"
    for scope, view in zip(scopes, settlement.usage, strict=True):
        snap = ledger.snapshot(scope)
        reported = [*scope.limits, "model_calls", "input_tokens", "output_tokens"]
        assert (view.used, view.held) == _limited(snap, reported)
        assert snap.held == {}
    assert ledger.commit("r5", scopes, {"model_calls": 1}).status == "duplicate"


def test_a_settled_hold_and_the_next_one_are_netted_exactly(redis_ledger_factory: Callable[..., RedisLedger]) -> None:
    ledger = redis_ledger_factory()
    big = 2**53 - 1
    tenant = uuid.uuid4().hex
    scope = tenant_scope(tenant, {"cost_usd": 10 * USD})  # "tokens" is not limited: no limit bounds its held
    assert ledger.reserve("a", [scope], {"tokens": big, "cost_usd": 3}).granted
    assert ledger.reserve("b", [scope], {"tokens": big, "cost_usd": 4}).granted
    assert ledger.snapshot(scope).held == {"tokens": 2 * big, "cost_usd": 7}  # beyond 2**53, still exact
    # Both given back and a third taken in one reserve: partial sums stay exact.
    grant = ledger.reserve("c", [scope], {"tokens": big - 2, "cost_usd": 4}, settle=[("a", {}), ("b", {"tokens": 1})])
    assert grant.usage[0].held == {"cost_usd": 4} and grant.usage[0].used == {}
    assert ledger.snapshot(scope).held == {"tokens": big - 2, "cost_usd": 4}
    assert ledger.snapshot(scope).used == {"tokens": 1}
    # The same amounts again: nothing to write for the held counters, and still right.
    grant = ledger.reserve("d", [scope], {"tokens": big - 2, "cost_usd": 4}, settle=[("c", {"cost_usd": 2})])
    assert grant.usage[0].held == {"cost_usd": 4} and grant.usage[0].used == {"cost_usd": 2}
    # A denied reserve still settles: the denial reports the counters after the settlement.
    grant = ledger.reserve("e", [scope], {"cost_usd": 10 * USD}, settle=[("d", {"cost_usd": 1})])
    assert not grant.granted and grant.denial is not None
    assert (grant.denial.used, grant.denial.requested) == (3, 10 * USD)
    snap = ledger.snapshot(scope)
    assert snap.held == {} and snap.used == {"tokens": 1, "cost_usd": 3}


def test_stored_limits_are_rewritten_only_when_they_change(disposable_redis: RedisServer) -> None:
    ledger = RedisLedger(disposable_redis.url, namespace=ns())
    tenant = uuid.uuid4().hex
    scope = tenant_scope(tenant, {"cost_usd": 10, "steps": 5})
    ledger.reserve("a", [scope], {"steps": 1})
    with redis.Redis.from_url(disposable_redis.url) as client:

        def hsets() -> int:
            return int(client.info("commandstats").get("cmdstat_hset", {}).get("calls", 0))

        client.config_resetstat()
        for i in range(3):
            ledger.reserve(f"same-{i}", [scope], {"steps": 1}, settle=[("a" if i == 0 else f"same-{i - 1}", {})])
        assert hsets() == 0
        changed = tenant_scope(tenant, {"cost_usd": 20, "steps": 5})
        # Each call settles the previous hold with nothing spent: no counter changes, only the limits.
        ledger.reserve("changed", [changed], {"steps": 1}, settle=[("same-2", {})])
        assert hsets() == 1
        ledger.reserve("changed-again", [changed], {"steps": 1}, settle=[("changed", {})])
        assert hsets() == 1
    assert ledger.status(tenant_scope(tenant, {})).usage.limits == {"cost_usd": 20, "steps": 5}


def test_settled_reservations_leave_small_tombstones(redis_url: str) -> None:
    ledger, scope, keys = raw_tenant(redis_url, {"steps": 10}, tombstone_seconds=600)
    with redis.Redis.from_url(redis_url) as client:
        ledger.reserve("a", [scope], {"steps": 1})
        ledger.reserve("b", [scope], {"steps": 1}, settle=[("a", {"steps": 1})])
        assert client.get(keys.reservation("a")) == b"committed"
        assert 0 < client.pttl(keys.reservation("a")) <= 600_000
        assert client.get(keys.reservation("b")).startswith(b"held ")
        assert ledger.release("b", [scope])
        assert client.get(keys.reservation("b")).split(b" ")[0] == b"released"
        assert not ledger.release("b", [scope])
        assert ledger.commit("b", [scope], {"steps": 1}).status == "expired"  # released first: spend recorded
    assert ledger.snapshot(scope).used == {"steps": 2} and ledger.snapshot(scope).held == {}


def test_records_of_the_previous_hash_layout_are_still_settled(redis_url: str) -> None:
    ledger, scope, keys = raw_tenant(redis_url, {"steps": 10}, window="month")
    skey = keys.scope(scope_token(scope))
    with redis.Redis.from_url(redis_url) as client:

        def to_hash(rid: str, bucket: str) -> None:
            state, expiry, _, member = client.get(keys.reservation(rid)).split(b" ", 3)
            client.delete(keys.reservation(rid))
            token = b"s:" + scope_token(scope)
            client.hset(keys.reservation(rid), mapping={"st": state, "m": member, "e": expiry, token: bucket})
            client.pexpire(keys.reservation(rid), 60_000)

        for rid in ("old-commit", "old-release", "old-extend"):
            assert ledger.reserve(rid, [scope], {"steps": 2}).granted
        to_hash("old-commit", "1999-11")
        to_hash("old-release", "1999-11")
        to_hash("old-extend", "1999-11")
        assert ledger.reserve("old-commit", [scope], {"steps": 2}).duplicate
        assert ledger.commit("old-commit", [scope], {"steps": 1}).status == "committed"
        assert int(client.hget(skey, "u:1999-11:steps") or 0) == 1  # the window it was reserved in
        assert ledger.commit("old-commit", [scope], {"steps": 1}).status == "duplicate"
        assert ledger.extend("old-extend", [scope], 30)
        assert ledger.release("old-release", [scope])
        assert not ledger.release("old-release", [scope])
        assert ledger.commit("old-extend", [scope], {"steps": 2}).status == "committed"
    snap = ledger.snapshot(scope)
    assert snap.held == {} and snap.used == {}  # all charged to 1999-11


def test_a_settled_hold_leaves_the_index_early_and_a_later_call_repairs_it(redis_url: str) -> None:
    ledger, scope, keys = raw_tenant(redis_url, {"steps": 10})
    token = scope_token(scope)
    with redis.Redis.from_url(redis_url) as client:
        ledger.reserve("short", [scope], {"steps": 1}, lease_seconds=0.1)
        early = client.zscore(keys.index, token)
        ledger.reserve("long", [scope], {"steps": 1}, lease_seconds=60, settle=[("short", {"steps": 1})])
        assert client.zscore(keys.index, token) == early  # at or before the earliest expiry: still valid
        ledger.reserve("expiring", [scope], {"steps": 1}, lease_seconds=0.1)
        time.sleep(0.25)
        grant = ledger.reserve("next", [scope], {"steps": 1}, lease_seconds=60)  # sweeps "expiring", reindexes
        assert grant.usage[0].held == {"steps": 2} and grant.usage[0].used == {"steps": 1}
        long_expiry = int(client.get(keys.reservation("long")).split(b" ")[1])
        assert client.zscore(keys.index, token) == long_expiry
        assert ledger.commit("expiring", [scope], {"steps": 1}).status == "expired"
        for rid in ("long", "next"):
            assert ledger.release(rid, [scope])
        assert ledger.sweep([scope.tenant]) == 0
        time.sleep(0.05)
    assert ledger.snapshot(scope).held == {} and ledger.snapshot(scope).used == {"steps": 2}


# -- leases and sweeping ------------------------------------------------------------------------


def test_sweep_returns_expired_holds_and_counts_them(redis_ledger_factory: Callable[..., RedisLedger]) -> None:
    ledger = redis_ledger_factory(sweep_batch=2)  # several batches
    tenant = uuid.uuid4().hex
    run = Scope("run", "r", tenant=tenant, limits={"steps": 10})
    ceiling = tenant_scope(tenant, {"steps": 10})
    for i in range(3):
        ledger.reserve(f"short-{i}", [run, ceiling], {"steps": 1}, lease_seconds=0.05)
    ledger.reserve("long", [run, ceiling], {"steps": 1}, lease_seconds=60)
    time.sleep(0.15)
    assert ledger.sweep() == 6  # three holds in two scopes each
    assert ledger.sweep([tenant]) == 0
    assert ledger.snapshot(ceiling).held == {"steps": 1}
    assert ledger.commit("short-0", [run, ceiling], {"steps": 1}).status == "expired"


def test_sweep_gets_past_index_entries_left_early_by_settled_holds(
    redis_ledger_factory: Callable[..., RedisLedger],
) -> None:
    ledger = redis_ledger_factory(sweep_batch=2)
    tenant = uuid.uuid4().hex
    settled = [Scope("run", f"settled-{i}", tenant=tenant, limits={"steps": 9}) for i in range(5)]
    for i, scope in enumerate(settled):  # each leaves an early index entry behind
        ledger.reserve(f"s{i}", [scope], {"steps": 1}, lease_seconds=0.05)
        ledger.commit(f"s{i}", [scope], {"steps": 1})
    abandoned = Scope("run", "abandoned", tenant=tenant, limits={"steps": 9})
    ledger.reserve("lost", [abandoned], {"steps": 1}, lease_seconds=0.1)
    time.sleep(0.2)
    assert ledger.sweep([tenant]) == 1
    assert ledger.snapshot(abandoned).held == {}


def _hold_and_hang(url: str, namespace: str, scopes: list[Scope], n: int, ready: Any) -> None:
    ledger = RedisLedger(url, namespace=namespace)
    for i in range(n):
        assert ledger.reserve(f"doomed-{i}", scopes, {"cost_usd": USD}, lease_seconds=1.0).granted
    ready.set()
    time.sleep(60)


def test_holds_of_a_client_killed_with_sigkill_come_back_after_the_lease(any_url: str) -> None:
    namespace = ns()
    tenant = uuid.uuid4().hex
    run = Scope("run", "doomed", tenant=tenant, limits={"cost_usd": 10 * USD})
    ceiling = tenant_scope(tenant, {"cost_usd": 3 * USD})
    ready = CTX.Event()
    child = CTX.Process(target=_hold_and_hang, args=(any_url, namespace, [run, ceiling], 3, ready))
    child.start()
    try:
        assert ready.wait(30)
    finally:
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(10)
    ledger = RedisLedger(any_url, namespace=namespace)
    other = Scope("run", "survivor", tenant=tenant)
    assert ledger.snapshot(ceiling).held == {"cost_usd": 3 * USD}
    assert not ledger.reserve("blocked", [other, ceiling], {"cost_usd": USD}).granted
    deadline = time.monotonic() + 10
    while ledger.snapshot(ceiling).held and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ledger.snapshot(ceiling).held == {}
    assert ledger.reserve("after", [other, ceiling], {"cost_usd": 3 * USD}).granted


# -- concurrency: real processes released together ------------------------------------------------


class NaiveCheckThenIncrement:
    """What the in-process peers do, on Redis: read, compare, then write. Not atomic.

    The pause between the check and the increment is widened so that the race
    the harness must detect happens on every run, not only on unlucky ones.
    """

    remote = True

    def __init__(self, url: str, namespace: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.namespace = namespace

    def _key(self, scope: Scope) -> str:
        return f"naive:{self.namespace}:{scope_token(scope).decode()}"

    def reserve(self, rid: str, scopes: Sequence[Scope], amounts: Mapping[str, int], **_: Any) -> Grant:
        for scope in scopes:
            for dim, amount in amounts.items():
                used = int(self.client.hget(self._key(scope), dim) or 0)
                limit = scope.limits.get(dim)
                if limit is not None and used + amount > limit:
                    return Grant(rid, False, Denial(dim, limit, used, amount, scope.kind, scope.id), ())
        time.sleep(0.002)
        for scope in scopes:
            for dim, amount in amounts.items():
                self.client.hincrby(self._key(scope), dim, amount)
        return Grant(rid, True, None, ())

    def commit(self, rid: str, scopes: Sequence[Scope], actual: Mapping[str, int]) -> Settlement:
        return Settlement(rid, "committed", {}, ())  # charged at reserve time

    def snapshot(self, scope: Scope) -> ScopeUsage:
        raw = self.client.hgetall(self._key(scope))
        return ScopeUsage(scope.label, {k.decode(): int(v) for k, v in raw.items()}, {}, dict(scope.limits))


def make_ledger(kind: str, url: str, namespace: str) -> Any:
    if kind == "naive":
        return NaiveCheckThenIncrement(url, namespace)
    return RedisLedger(url, namespace=namespace, timeout=5.0)  # 32 busy processes on 2 cores: be patient


def _spender(
    kind: str, url: str, namespace: str, scopes: list[Scope], requests: int, amount: int, barrier: Any, out: Any
) -> None:
    ledger = make_ledger(kind, url, namespace)
    barrier.wait()
    granted = committed = 0
    for i in range(requests):
        rid = f"{scopes[0].id}-{i}"
        if ledger.reserve(rid, scopes, {"cost_usd": amount}).granted:
            granted += amount
            ledger.commit(rid, scopes, {"cost_usd": amount})
            committed += amount
    out.put((scopes[0].id, granted, committed))


def run_spenders(
    kind: str, url: str, namespace: str, scopes_per_process: list[list[Scope]], requests: int, amount: int
) -> dict[str, tuple[int, int]]:
    """Start one process per scope list, release them together, collect (granted, committed) per process."""
    barrier = CTX.Barrier(len(scopes_per_process))
    out = CTX.Queue()
    procs = [
        CTX.Process(target=_spender, args=(kind, url, namespace, scopes, requests, amount, barrier, out))
        for scopes in scopes_per_process
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    return {who: (granted, committed) for who, granted, committed in results}


def check_spend(ledger: Any, scope: Scope, granted: int, committed: int, limit: int) -> None:
    """The harness's verdict: never more than the limit, exactly the limit under excess demand, books agree."""
    snap = ledger.snapshot(scope)
    assert granted <= limit, f"overspend in {scope.label}: granted {granted} > limit {limit}"
    assert snap.used.get("cost_usd", 0) <= limit, f"overspend in {scope.label}: used {snap.used} > {limit}"
    assert granted == limit, f"{scope.label}: granted {granted} != limit {limit} despite excess demand"
    assert snap.used.get("cost_usd", 0) == committed
    assert snap.held == {}


def budget_of_one_dollar(kind: str, url: str) -> None:
    namespace, tenant = ns(), uuid.uuid4().hex
    ceiling = tenant_scope(tenant, {"cost_usd": USD})
    runs = [[Scope("run", f"p{i}", tenant=tenant), ceiling] for i in range(32)]
    results = run_spenders(kind, url, namespace, runs, requests=100, amount=USD // 100)
    granted = sum(g for g, _ in results.values())
    committed = sum(c for _, c in results.values())
    check_spend(make_ledger(kind, url, namespace), ceiling, granted, committed, USD)


def test_32_processes_x_100_reservations_on_one_dollar_grant_exactly_the_limit(any_url: str) -> None:
    budget_of_one_dollar("redis", any_url)


def test_the_harness_catches_a_naive_check_then_increment(redis_url: str) -> None:
    with pytest.raises(AssertionError, match="overspend"):
        budget_of_one_dollar("naive", redis_url)


def test_hierarchy_tenant_workflows_runs_never_exceeded_and_sums_agree(any_url: str) -> None:
    namespace, tenant = ns(), uuid.uuid4().hex
    ceiling = tenant_scope(tenant, {"cost_usd": 1000})
    workflows = [
        Scope("workflow", f"w{w}", tenant=tenant, workflow=f"w{w}", limits={"cost_usd": 300}) for w in range(4)
    ]
    runs = [
        [Scope("run", f"r{r}", tenant=tenant, workflow=f"w{r % 4}", limits={"cost_usd": 50}), workflows[r % 4], ceiling]
        for r in range(32)
    ]
    results = run_spenders("redis", any_url, namespace, runs, requests=100, amount=1)
    ledger = RedisLedger(any_url, namespace=namespace)
    run_used = {scopes[0].id: ledger.snapshot(scopes[0]).used.get("cost_usd", 0) for scopes in runs}
    wf_used = [ledger.snapshot(w).used.get("cost_usd", 0) for w in workflows]
    tenant_used = ledger.snapshot(ceiling).used.get("cost_usd", 0)
    assert all(used <= 50 for used in run_used.values())
    assert all(used <= 300 for used in wf_used)
    assert tenant_used == 1000  # demand (32 x 100) far exceeds it: filled exactly, not beyond
    assert sum(run_used.values()) == sum(wf_used) == tenant_used == sum(c for _, c in results.values())
    for w, workflow in enumerate(workflows):
        assert wf_used[w] == sum(run_used[f"r{r}"] for r in range(w, 32, 4)), workflow.label
    assert all(ledger.snapshot(s).held == {} for s in [ceiling, *workflows])


def _racer(url: str, namespace: str, scopes: list[Scope], barrier: Any, out: Any, who: str) -> None:
    ledger = RedisLedger(url, namespace=namespace, timeout=5.0)
    wins = []
    for i, scope in enumerate(scopes):
        barrier.wait()
        grant = ledger.reserve(f"{who}-{i}", [scope], {"cost_usd": 4 * USD})
        if grant.granted:
            ledger.commit(f"{who}-{i}", [scope], {"cost_usd": 4 * USD})
        wins.append(grant.granted)
    out.put((who, wins))


def test_five_dollars_left_two_agents_ask_four_exactly_one_wins_500_times(any_url: str) -> None:
    namespace = ns()
    ledger = RedisLedger(any_url, namespace=namespace)
    scopes = [tenant_scope(f"{uuid.uuid4().hex}-{i}", {"cost_usd": 10 * USD}) for i in range(500)]
    for i, scope in enumerate(scopes):
        ledger.commit(f"earlier-{i}", [scope], {"cost_usd": 5 * USD})  # $5 of $10 already spent
    barrier, out = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_racer, args=(any_url, namespace, scopes, barrier, out, who)) for who in "ab"]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    winners = [a + b for a, b in zip(results["a"], results["b"], strict=True)]
    assert winners == [1] * 500
    for scope in scopes[::50]:
        snap = ledger.snapshot(scope)
        assert snap.used == {"cost_usd": 9 * USD} and snap.held == {}


# -- timeouts, retries, outages --------------------------------------------------------------------


def _disrupt(server: RedisServer, how: str, seconds: float) -> Callable[[], None]:
    """Freeze the server for ``seconds`` (CLIENT PAUSE or DEBUG SLEEP); returns a wait-until-over."""
    over_at = time.monotonic() + seconds

    def run() -> None:
        with server.client(socket_timeout=seconds + 5) as admin:
            if how == "pause":
                admin.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
            else:
                admin.execute_command("DEBUG", "SLEEP", seconds)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.05)  # let the disruption begin

    def wait() -> None:
        thread.join()
        time.sleep(max(0.0, over_at - time.monotonic()) + 0.05)

    return wait


@pytest.mark.parametrize("how", ["pause", "sleep"])
def test_timeout_then_retry_charges_exactly_once(disposable_redis: RedisServer, how: str) -> None:
    ledger = RedisLedger(disposable_redis.url, namespace=ns(), timeout=0.2, retries=1)
    scope = tenant_scope(uuid.uuid4().hex, {"cost_usd": 10})
    assert ledger.reserve("a", [scope], {"cost_usd": 5}).granted
    # The commit is sent, times out, is re-sent (same id), times out again: the caller sees a refusal...
    over = _disrupt(disposable_redis, how, 0.8)
    with pytest.raises(LedgerUnavailable) as refused:
        ledger.commit("a", [scope], {"cost_usd": 3})
    assert isinstance(refused.value.__cause__, redis.TimeoutError)
    over()
    # ...though either send may have run once Redis woke up. The caller retries: never charged twice.
    assert ledger.commit("a", [scope], {"cost_usd": 3}).status in ("committed", "duplicate")
    # Same for a reserve: however many times it is sent, it holds once.
    over = _disrupt(disposable_redis, how, 0.8)
    with pytest.raises(LedgerUnavailable):
        ledger.reserve("b", [scope], {"cost_usd": 4})
    over()
    assert ledger.reserve("b", [scope], {"cost_usd": 4}).granted
    snap = ledger.snapshot(scope)
    assert snap.used == {"cost_usd": 3}
    assert snap.held == {"cost_usd": 4}


def test_redis_stopped_refuses_within_the_timeout_and_a_restart_recovers(disposable_redis: RedisServer) -> None:
    ledger = RedisLedger(disposable_redis.url, namespace=ns(), timeout=0.3, connect_timeout=0.3, breaker_cooldown=0.2)
    scope = tenant_scope(uuid.uuid4().hex, {"steps": 10})
    assert ledger.reserve("a", [scope], {"steps": 1}).granted
    disposable_redis.kill()
    started = time.monotonic()
    with pytest.raises(LedgerUnavailable) as refused:
        ledger.reserve("b", [scope], {"steps": 1})
    assert time.monotonic() - started < 2.0
    assert isinstance(refused.value.__cause__, redis.ConnectionError)
    assert refused.value.dimension == "ledger"
    disposable_redis.restart()
    time.sleep(0.3)  # the breaker's cool-down
    assert ledger.reserve("c", [scope], {"steps": 1}).granted
    # Without persistence a restarted Redis has forgotten the spend (see docs/redis.md: use AOF).
    assert ledger.snapshot(scope).held == {"steps": 1}


def test_a_hung_redis_refuses_within_the_timeout_then_the_breaker_fails_fast(disposable_redis: RedisServer) -> None:
    ledger = RedisLedger(
        disposable_redis.url, namespace=ns(), timeout=0.25, retries=0, breaker_threshold=3, breaker_cooldown=0.5
    )
    scope = tenant_scope(uuid.uuid4().hex, {"steps": 1000})
    assert ledger.reserve("warm", [scope], {"steps": 1}).granted
    disposable_redis.pause()  # SIGSTOP: connections are accepted, nothing answers
    try:
        slow = []
        for i in range(3):
            started = time.monotonic()
            with pytest.raises(LedgerUnavailable):
                ledger.reserve(f"slow-{i}", [scope], {"steps": 1})
            slow.append(time.monotonic() - started)
        assert max(slow) < 2.0
        started = time.monotonic()
        for i in range(50):
            with pytest.raises(LedgerUnavailable, match="circuit open"):
                ledger.reserve(f"fast-{i}", [scope], {"steps": 1})
        assert time.monotonic() - started < min(slow)  # 50 refusals cost less than one timeout
    finally:
        disposable_redis.resume()
    time.sleep(0.6)
    assert ledger.reserve("back", [scope], {"steps": 1}).granted


def test_fail_open_grants_from_the_local_allowance_logs_and_replays(
    disposable_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = RedisLedger(
        disposable_redis.url,
        namespace=ns(),
        failure_policy="fail_open",
        fail_open_allowance=0.1,
        timeout=0.3,
        breaker_cooldown=0.2,
    )
    scope = tenant_scope(uuid.uuid4().hex, {"cost_usd": 100})
    assert ledger.reserve("before", [scope], {"cost_usd": 50}).granted
    disposable_redis.kill()
    caplog.set_level(logging.WARNING, logger="budget_plugins.redis")
    grants = [ledger.reserve(f"out-{i}", [scope], {"cost_usd": 3}) for i in range(5)]
    assert [g.granted for g in grants] == [True, True, True, False, False]  # 10 % of 100: three calls of 3
    assert grants[3].denial is not None and grants[3].denial.limit == 10
    assert any("UNAVAILABLE" in r.message and r.levelno >= logging.WARNING for r in caplog.records)
    for i in range(3):
        ledger.commit(f"out-{i}", [scope], {"cost_usd": 2})
    ledger.commit("before", [scope], {"cost_usd": 40})
    assert ledger._core.pending_replay == 4
    disposable_redis.restart()
    time.sleep(0.3)
    ledger.reserve("probe", [scope], {"cost_usd": 1})
    assert ledger._core.pending_replay == 0
    # The restarted server (no persistence) lost the hold of "before" but learnt every replayed spend.
    assert ledger.snapshot(scope).used == {"cost_usd": 46}


def test_aof_everysec_keeps_the_spend_across_kill_9(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "aof", args=["--appendonly", "yes", "--appendfsync", "everysec"]).start()
    try:
        ledger = RedisLedger(server.url, namespace=ns(), breaker_cooldown=0.1)
        scope = tenant_scope(uuid.uuid4().hex, {"cost_usd": 100})
        ledger.reserve("a", [scope], {"cost_usd": 30})
        ledger.commit("a", [scope], {"cost_usd": 25})
        time.sleep(1.5)  # everysec: one fsync has happened
        server.kill()
        server.restart()
        time.sleep(0.2)
        assert ledger.snapshot(scope).used == {"cost_usd": 25}
        assert ledger.commit("a", [scope], {"cost_usd": 25}).status == "duplicate"
    finally:
        server.stop()


# -- async -------------------------------------------------------------------------------------


def test_async_twin_works_across_event_loops_and_fails_closed(disposable_redis: RedisServer) -> None:
    ledger = RedisLedger(disposable_redis.url, namespace=ns(), timeout=0.3)
    aledger = ledger.as_async()
    assert isinstance(aledger, AsyncRedisLedger)
    scope = tenant_scope(uuid.uuid4().hex, {"tool_calls": 3})

    async def reserve_all(prefix: str) -> int:
        grants = await asyncio.gather(*(aledger.reserve(f"{prefix}{i}", [scope], {"tool_calls": 1}) for i in range(4)))
        first = next((g for g in grants if g.granted), None)  # gather runs them in no fixed order
        if first is not None:
            await aledger.commit(first.reservation_id, [scope], {"tool_calls": 1})
        return sum(g.granted for g in grants)

    assert asyncio.run(reserve_all("a")) == 3
    assert asyncio.run(reserve_all("b")) == 0  # a second event loop: a pool of its own, same storage
    snap = ledger.snapshot(scope)
    assert snap.used == {"tool_calls": 1} and snap.held == {"tool_calls": 2}

    async def status() -> int:
        result = await aledger.status(scope)
        await aledger.aclose()  # type: ignore[attr-defined]
        return result.holds

    assert asyncio.run(status()) == 2
    disposable_redis.kill()
    with pytest.raises(LedgerUnavailable):
        asyncio.run(aledger.reserve("c", [scope], {"tool_calls": 1}))


def test_async_ledger_on_a_cluster(redis_cluster_url: str) -> None:
    async def main() -> tuple[bool, bool, int]:
        ledger = AsyncRedisLedger(redis_cluster_url, namespace=ns())
        scope = tenant_scope(uuid.uuid4().hex, {"steps": 1})
        first = await ledger.reserve("a", [scope], {"steps": 1})
        second = await ledger.reserve("b", [scope], {"steps": 1})
        swept = await ledger.sweep()
        await ledger.aclose()
        return first.granted, second.granted, swept

    assert asyncio.run(main()) == (True, False, 0)


# -- the meter: one round trip per guarded call ---------------------------------------------------


def test_meter_on_redis_makes_one_round_trip_per_guarded_call(disposable_redis: RedisServer) -> None:
    ledger = RedisLedger(disposable_redis.url, namespace=ns())
    tenant = uuid.uuid4().hex
    meter = Meter(
        Budget(max_tool_calls=100),
        ledger=ledger,
        ceilings=[Ceiling(scope="tenant", max_tool_calls=1000)],
        tenant=tenant,
        hooks=[],
    )
    meter.after_tool_call(meter.before_tool_call("warm-up"))  # loads the script
    with disposable_redis.client() as admin:
        admin.config_resetstat()
        for _ in range(10):
            meter.after_tool_call(meter.before_tool_call("search"))
        calls = admin.info("commandstats")
    assert calls["cmdstat_evalsha"]["calls"] == 10
    meter.flush()
    assert ledger.snapshot(tenant_scope(tenant, {})).used["tool_calls"] == 11


# -- cluster failover ----------------------------------------------------------------------------


def test_cluster_master_killed_its_tenants_recover_after_failover(tmp_path: Path) -> None:
    namespace = ns()
    with running_cluster(tmp_path, masters=3, replicas=1) as cluster:
        ledger = RedisLedger(cluster.url, namespace=namespace, timeout=0.3, connect_timeout=0.3, breaker_cooldown=0.2)
        per = 16384 // 3

        def tenant_on(master: int) -> str:
            while True:
                tenant = uuid.uuid4().hex
                if key_slot(hash_tag(namespace, tenant)) // per == master:
                    return tenant

        victim_tenant, other_tenant = tenant_on(0), tenant_on(1)
        victim_scope = tenant_scope(victim_tenant, {"steps": 10})
        other_scope = tenant_scope(other_tenant, {"steps": 10})
        for scope in (victim_scope, other_scope):
            ledger.reserve(f"before-{scope.id}", [scope], {"steps": 3})
            ledger.commit(f"before-{scope.id}", [scope], {"steps": 3})
        with cluster.masters[0].client() as master:
            assert master.execute_command("WAIT", 1, 5000) == 1  # the replica has the spend
        cluster.masters[0].kill()

        # The other masters keep serving their tenants; the victim's are refused (fail_closed)...
        assert ledger.reserve("during", [other_scope], {"steps": 1}).granted
        with pytest.raises(LedgerUnavailable):
            ledger.reserve("refused", [victim_scope], {"steps": 1})
        # ...until its replica is promoted.
        deadline = time.monotonic() + 30
        while True:
            try:
                grant = ledger.reserve("after", [victim_scope], {"steps": 1})
                break
            except LedgerUnavailable:
                assert time.monotonic() < deadline, "no failover within 30 s"
                time.sleep(0.2)
        assert grant.granted
        snap = ledger.snapshot(victim_scope)
        assert snap.used == {"steps": 3} and snap.held == {"steps": 1}  # replicated spend survived
        ledger.close()


# -- properties --------------------------------------------------------------------------------

SHORT_LEASE = 0.005
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 60), st.booleans()),
        st.tuples(st.just("commit"), st.integers(0, 12), st.integers(0, 70)),
        st.tuples(st.just("release"), st.integers(0, 12), st.just(0)),
        st.tuples(st.just("expire"), st.just(0), st.just(0)),
    ),
    max_size=20,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_used_plus_held_never_exceeds_the_limit_beyond_reported_overage(
    redis_ledger_factory: Callable[..., RedisLedger], ops: list[tuple[str, int, Any]]
) -> None:
    ledger = redis_ledger_factory()
    tenant = uuid.uuid4().hex
    scopes = [Scope("run", "r", tenant=tenant, limits={"cost_usd": 100}), tenant_scope(tenant, {"cost_usd": 150})]
    holds: list[tuple[str, int, bool]] = []  # rid, amount, short lease
    settled: set[str] = set()
    committed = overage = 0
    for n, (op, a, b) in enumerate(ops):
        if op == "reserve":
            rid = f"r{n}"
            grant = ledger.reserve(rid, scopes, {"cost_usd": a}, lease_seconds=SHORT_LEASE if b else 60)
            if grant.granted:
                holds.append((rid, a, bool(b)))
            else:
                assert grant.denial is not None
                assert grant.denial.used + grant.denial.requested > grant.denial.limit
        elif op == "commit":
            rid = holds[a][0] if a < len(holds) else f"ghost{n}"
            result = ledger.commit(rid, scopes, {"cost_usd": b})
            if result.status != "duplicate":
                committed += b
                overage += result.overage.get("cost_usd", 0)
            settled.add(rid)
        elif op == "release":
            if a < len(holds):
                ledger.release(holds[a][0], scopes)
                settled.add(holds[a][0])
        else:
            time.sleep(2 * SHORT_LEASE)
        live = [(rid, amount, short) for rid, amount, short in holds if rid not in settled]
        for scope in scopes:
            snap = ledger.snapshot(scope)
            used, held = snap.used.get("cost_usd", 0), snap.held.get("cost_usd", 0)
            assert used == committed
            assert sum(amount for _, amount, short in live if not short) <= held <= sum(a for _, a, _ in live)
            assert used + held <= scope.limits["cost_usd"] + overage
