"""The Meter: the one enforcement object every adapter calls."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import pytest

from budget_plugins import (
    Budget,
    BudgetConfigError,
    BudgetExceeded,
    Ceiling,
    CollectingHook,
    InMemoryLedger,
    Meter,
    Request,
    TokenUsage,
    price_tokens,
)


def make(budget: Budget, **kwargs: object) -> tuple[Meter, CollectingHook]:
    hook = CollectingHook()
    return Meter(budget, hooks=[hook], **kwargs), hook  # type: ignore[arg-type]


def test_model_call_reserves_worst_case_and_settles_actual() -> None:
    meter, hook = make(Budget(max_cost_usd="1"))
    ticket = meter.before_model_call(model="gpt-4o", input_tokens=1000, max_output_tokens=500)
    worst = price_tokens(meter.budget, "gpt-4o", TokenUsage(1000, 500)).micros
    assert meter.usage().held["cost_usd"] == worst
    actual = TokenUsage(1200, 80, cache_read_tokens=1000)
    meter.after_model_call(ticket, actual)
    usage = meter.usage()
    assert usage.held == {}
    assert usage.used["cost_usd"] == price_tokens(meter.budget, "gpt-4o", actual).micros
    assert usage.used["input_tokens"] == 1200 and usage.used["model_calls"] == 1
    settle = hook.of("settle")[0]
    assert settle.model == "gpt-4o" and settle.cache_read_tokens == 1000
    assert settle.cost_usd == price_tokens(meter.budget, "gpt-4o", actual).cost_usd
    assert settle.run_cost_usd == settle.cost_usd


def test_refusal_emits_deny_event_and_records_exhausted() -> None:
    meter, hook = make(Budget(max_tool_calls=1), tenant="acme", workflow="wf", agent="bot")
    meter.after_tool_call(meter.before_tool_call("search"))
    with pytest.raises(BudgetExceeded) as info:
        meter.before_tool_call("search")
    deny = hook.of("deny")[0]
    assert (deny.dimension, deny.limit, deny.used, deny.requested) == ("tool_calls", 1, 1, 1)
    assert (deny.tenant, deny.workflow, deny.agent, deny.tool) == ("acme", "wf", "bot", "search")
    assert meter.exhausted is info.value
    assert info.value.usage[f"run:{meter.run_id}"]["used"] == {"tool_calls": 1, "tool_calls:search": 1}


def test_warn_and_degrade_are_signalled_once_each() -> None:
    meter, hook = make(Budget(max_steps=10))
    for _ in range(10):
        meter.before_step("n")
    assert hook.kinds().count("warn") == 1 and hook.kinds().count("degrade") == 1
    assert meter.level == "degrade"


def test_shadow_mode_refuses_nothing_and_counts_would_denials() -> None:
    meter, hook = make(Budget(max_tool_calls=2, mode="shadow"))
    for _ in range(5):
        meter.after_tool_call(meter.before_tool_call("search"))
    assert meter.usage().used["tool_calls"] == 5
    assert meter.shadow_denials == {"tool_calls": 3}
    would = hook.of("would_deny")
    assert len(would) == 3 and all(e.shadow for e in would)
    assert [e.used for e in would] == [2, 3, 4]


def test_failed_release_counts_towards_the_breaker() -> None:
    meter, _ = make(Budget(max_consecutive_failures=2))
    meter.release(meter.before_model_call(model=None))
    meter.after_tool_call(meter.before_tool_call("t"), failed=True)
    with pytest.raises(BudgetExceeded, match="consecutive_failures"):
        meter.before_model_call(model=None)


def test_a_success_resets_the_breaker() -> None:
    meter, _ = make(Budget(max_consecutive_failures=2))
    meter.after_tool_call(meter.before_tool_call("t"), failed=True)
    meter.after_tool_call(meter.before_tool_call("t"))
    meter.after_tool_call(meter.before_tool_call("t"), failed=True)
    assert meter.consecutive_failures == 1
    meter.before_tool_call("t")


def test_deadline_with_injected_clock() -> None:
    now = [0.0]
    meter, _ = make(Budget(max_seconds=10), clock=lambda: now[0])
    meter.before_step("a")
    now[0] = 9.99
    meter.before_step("b")
    now[0] = 10.0
    with pytest.raises(BudgetExceeded, match="seconds"):
        meter.before_step("c")


def test_ceilings_need_their_ids() -> None:
    with pytest.raises(BudgetConfigError, match="tenant"):
        Meter(Budget(), ceilings=[Ceiling(scope="tenant", max_steps=1)])
    with pytest.raises(BudgetConfigError, match="workflow"):
        Meter(Budget(), ceilings=[Ceiling(scope="workflow", max_steps=1)], tenant="t")
    with pytest.raises(BudgetConfigError, match="budget"):
        Meter({"max_steps": 1})  # type: ignore[arg-type]


def test_tenant_ceiling_is_shared_by_runs_on_one_ledger() -> None:
    ledger = InMemoryLedger()
    ceiling = [Ceiling(scope="tenant", max_cost_usd="5")]
    a, _ = make(Budget(), ledger=ledger, ceilings=ceiling, tenant="acme")
    b, _ = make(Budget(), ledger=ledger, ceilings=ceiling, tenant="acme")
    request = Request("model_call", {"model_calls": 1, "cost_usd": 4_000_000})
    a.reserve(request)
    with pytest.raises(BudgetExceeded) as info:
        b.reserve(request)
    assert info.value.scope == "tenant" and info.value.scope_id == "acme"
    other, _ = make(Budget(), ledger=ledger, ceilings=ceiling, tenant="globex")
    other.reserve(request)


def test_nested_meter_is_held_in_its_parent_scope_too() -> None:
    parent, _ = make(Budget(max_tool_calls=3))
    child = Meter(Budget(max_tool_calls=10), parent=parent)
    for _ in range(3):
        child.after_tool_call(child.before_tool_call("t"))
    with pytest.raises(BudgetExceeded) as info:
        child.before_tool_call("t")
    assert info.value.scope_id == parent.run_id
    assert parent.usage().used["tool_calls"] == 3


def test_deferred_commits_settle_with_the_next_reservation() -> None:
    meter, _ = make(Budget(max_model_calls=5), defer_commits=True, exclusive=False)
    ticket = meter.before_model_call(model="gpt-4o-mini", input_tokens=10, max_output_tokens=10)
    meter.after_model_call(ticket, TokenUsage(10, 3))
    assert meter.ledger.snapshot(meter.scopes()[0]).held["model_calls"] == 1  # not settled yet
    meter.before_tool_call("t")
    snap = meter.ledger.snapshot(meter.scopes()[0])
    assert snap.used["output_tokens"] == 3 and snap.held == {"tool_calls": 1, "tool_calls:t": 1}


def test_threads_never_overspend_the_run() -> None:
    meter, _ = make(Budget(max_tool_calls=50))
    granted = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        for _ in range(10):
            try:
                ticket = meter.before_tool_call("t")
            except BudgetExceeded:
                continue
            granted.append(ticket)
            meter.after_tool_call(ticket)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 50
    assert meter.usage().used["tool_calls"] == 50


def test_async_doors_share_the_same_accounting() -> None:
    meter, _ = make(Budget(max_model_calls=3))

    async def main() -> int:
        refused = 0
        for _ in range(5):
            try:
                ticket = await meter.areserve(meter.model_request(model="gpt-4o-mini", input_tokens=5))
            except BudgetExceeded:
                refused += 1
                continue
            await meter.acommit(ticket, TokenUsage(5, 5))
        return refused

    assert asyncio.run(main()) == 2
    assert meter.usage().used["model_calls"] == 3
    assert meter.report()["cost_usd"] == str(Decimal(meter.usage().used["cost_usd"]) / 1_000_000)


def test_next_call_reserves_at_least_the_input_the_last_call_really_used() -> None:
    meter, _ = make(Budget(max_input_tokens=100_000))
    first = meter.before_model_call(model="gpt-4o", input_tokens=10)
    assert first.request.amounts["input_tokens"] == 10
    meter.after_model_call(first, TokenUsage(6_000, 50))  # system prompt and tool schemas the estimate missed
    second = meter.before_model_call(model="gpt-4o", input_tokens=12)
    assert second.request.amounts["input_tokens"] == 6_000
    other = meter.before_model_call(model="gpt-4o-mini", input_tokens=12)
    assert other.request.amounts["input_tokens"] == 12
