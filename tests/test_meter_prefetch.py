"""Prefetched holds in the meter: draws, calls in flight, refusals and releases keep the books exact.

The ledger is a real InMemoryLedger told to behave as a remote one with
``prefetch`` and counting its reservations, so the tests see which calls cost a
round trip. ``tests/test_redis_prefetch.py`` runs the same feature on Redis.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from budget_plugins import Budget, BudgetExceeded, Ceiling, Grant, InMemoryLedger, Meter, Scope, TokenUsage
from budget_plugins._inprocess import SETTLE_DELAY

MODEL = "gpt-4o-mini"
TENANT = Scope("tenant", "acme", tenant="acme")


class PrefetchingLedger(InMemoryLedger):
    remote = True

    def __init__(self, prefetch: int) -> None:
        super().__init__()
        self.prefetch = prefetch
        self.asked: list[dict[str, int]] = []

    def reserve(self, reservation_id: str, scopes: Sequence[Scope], amounts: Mapping[str, int], **kw: Any) -> Grant:
        self.asked.append(dict(amounts))
        return super().reserve(reservation_id, scopes, amounts, **kw)


def meter(ledger: PrefetchingLedger, budget: Budget | None = None, **kwargs: Any) -> Meter:
    ceiling = Ceiling(scope="tenant", max_model_calls=1000)
    return Meter(budget or Budget(), ledger=ledger, tenant="acme", ceilings=[ceiling], hooks=[], **kwargs)


def booked(ledger: PrefetchingLedger) -> tuple[int, int]:
    """Model calls used and held in the tenant scope."""
    snap = ledger.snapshot(TENANT)
    return snap.used.get("model_calls", 0), snap.held.get("model_calls", 0)


def test_calls_in_flight_keep_their_hold_until_settled() -> None:
    ledger = PrefetchingLedger(prefetch=4)
    m = meter(ledger)
    m.after_model_call(m.before_model_call(model=MODEL), TokenUsage(1, 1))  # exact: room unknown
    first = m.before_model_call(model=MODEL)  # holds 4 calls' worth: 1 used + 3 to draw
    assert [a["model_calls"] for a in ledger.asked] == [1, 4]
    drawn = [m.before_model_call(model=MODEL) for _ in range(3)]  # in process
    assert len(ledger.asked) == 2
    assert all(t.credit is first.credit and not t.reservation_id for t in drawn)
    fifth = m.before_model_call(model=MODEL)  # the hold is used up: a new one, the old one still in flight
    assert len(ledger.asked) == 3 and fifth.credit is not first.credit
    assert booked(ledger) == (1, 8)  # nothing of the old hold committed yet
    for ticket in [first, *drawn]:
        m.after_model_call(ticket, TokenUsage(1, 1))
    m.after_model_call(fifth, TokenUsage(1, 1))
    m.flush()
    assert booked(ledger) == (6, 0) and ledger.snapshot(TENANT).held == {} and m.usage().used["model_calls"] == 6


def test_a_released_call_gives_its_draw_back() -> None:
    ledger = PrefetchingLedger(prefetch=4)
    m = meter(ledger)
    m.after_model_call(m.before_model_call(model=MODEL), TokenUsage(1, 1))
    m.after_model_call(m.before_model_call(model=MODEL), TokenUsage(1, 1))  # opens a hold of 4
    for _ in range(5):  # released draws do not use the hold up
        m.release(m.before_model_call(model=MODEL))
    assert len(ledger.asked) == 2
    m.flush()
    assert booked(ledger) == (2, 0) and ledger.snapshot(TENANT).held == {} and m.usage().used["model_calls"] == 2


def test_a_run_limit_refusal_after_a_draw_gives_the_draw_back() -> None:
    ledger = PrefetchingLedger(prefetch=8)
    m = meter(ledger, Budget(max_model_calls=3))
    for _ in range(3):
        m.after_model_call(m.before_model_call(model=MODEL), TokenUsage(1, 1))
    with pytest.raises(BudgetExceeded, match="model_calls"):
        m.before_model_call(model=MODEL)  # drawn from the hold, refused in process, given back
    m.flush()
    assert booked(ledger) == (3, 0) and ledger.snapshot(TENANT).held == {}


def test_shadow_mode_does_not_prefetch() -> None:
    ledger = PrefetchingLedger(prefetch=8)
    m = meter(ledger, Budget(mode="shadow"))
    for _ in range(3):
        m.after_model_call(m.before_model_call(model=MODEL), TokenUsage(1, 1))
    assert [a["model_calls"] for a in ledger.asked] == [1, 1, 1]
    m.flush()
    assert booked(ledger) == (3, 0) and ledger.snapshot(TENANT).held == {}


def test_without_prefetch_or_on_an_in_process_ledger_every_call_asks_for_itself() -> None:
    for ledger in (PrefetchingLedger(prefetch=0), PrefetchingLedger(prefetch=1)):
        m = meter(ledger)
        for _ in range(3):
            m.after_model_call(m.before_model_call(model=MODEL), TokenUsage(1, 1))
        assert [a["model_calls"] for a in ledger.asked] == [1, 1, 1]
    local = PrefetchingLedger(prefetch=8)
    local.remote = False  # type: ignore[misc]
    m = meter(local)
    for _ in range(3):
        m.after_model_call(m.before_model_call(model=MODEL), TokenUsage(1, 1))
    assert [a["model_calls"] for a in local.asked] == [1, 1, 1]


def test_a_hold_lasts_two_leases_and_is_drawn_from_during_the_first() -> None:
    ledger = PrefetchingLedger(prefetch=8)
    leases: list[float] = []
    reserve = ledger.reserve

    def spy(rid: str, scopes: Sequence[Scope], amounts: Mapping[str, int], **kw: Any) -> Grant:
        leases.append(kw["lease_seconds"])
        return reserve(rid, scopes, amounts, **kw)

    ledger.reserve = spy  # type: ignore[method-assign]
    m = meter(ledger, lease_seconds=0.3)
    m.after_model_call(m.before_model_call(model=MODEL), TokenUsage(1, 1))
    m.after_model_call(m.before_model_call(model=MODEL), TokenUsage(1, 1))  # opens a hold: two leases
    m.after_model_call(m.before_model_call(model=MODEL), TokenUsage(1, 1))  # drawn
    assert leases == [0.3, 0.6]  # a call drawn at the end of the first is still covered for a whole lease
    time.sleep(0.35)
    m.after_model_call(m.before_model_call(model=MODEL), TokenUsage(1, 1))  # no more draws: a new hold
    assert leases == [0.3, 0.6, 0.6]
    m.flush()
    assert booked(ledger) == (4, 0) and ledger.snapshot(TENANT).held == {}


def test_calls_slower_than_the_settle_delay_keep_drawing_from_the_hold() -> None:
    ledger = PrefetchingLedger(prefetch=8)
    m = meter(ledger)
    for _ in range(5):  # each call is in flight longer than SETTLE_DELAY: the settler must not retire the hold
        ticket = m.before_model_call(model=MODEL)
        time.sleep(SETTLE_DELAY + 0.1)
        m.after_model_call(ticket, TokenUsage(1, 1))
    assert [a["model_calls"] for a in ledger.asked] == [1, 8]
    time.sleep(SETTLE_DELAY + 0.3)  # idle now: the settler commits the hold and gives the rest back
    assert booked(ledger) == (5, 0) and ledger.snapshot(TENANT).held == {}


def test_async_door_retries_a_refused_prefetch_for_the_call_alone() -> None:
    import asyncio

    ledger = PrefetchingLedger(prefetch=16)
    m, other = meter(ledger), meter(ledger)

    async def go() -> None:
        ticket = await m.areserve(m.model_request(model=MODEL))
        await m.acommit(ticket, TokenUsage(1, 1))  # exact; the room is now known: 999 calls
        for _ in range(998):  # another meter leaves room for one call; this meter's idea of it is stale
            other.after_model_call(other.before_model_call(model=MODEL), TokenUsage(1, 1))
        other.flush()
        asked = len(ledger.asked)
        ticket = await m.areserve(m.model_request(model=MODEL))  # 16 calls' worth refused, then 1 granted
        assert [a["model_calls"] for a in ledger.asked[asked:]] == [16, 1]
        await m.acommit(ticket, TokenUsage(1, 1))
        with pytest.raises(BudgetExceeded, match="model_calls"):
            await m.areserve(m.model_request(model=MODEL))
        await m.aflush()

    asyncio.run(go())
    assert booked(ledger) == (1000, 0) and ledger.snapshot(TENANT).held == {}
