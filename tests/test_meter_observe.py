"""The Meter's observation door: ``record`` what already happened, ask what is ``reached``."""

from __future__ import annotations

import pytest

from budget_plugins import (
    Budget,
    Ceiling,
    CollectingHook,
    InMemoryLedger,
    Meter,
    Request,
    TokenUsage,
    price_tokens,
)


def test_record_counts_past_a_limit_without_refusing() -> None:
    hook = CollectingHook()
    meter = Meter(Budget(max_tool_calls=1), hooks=[hook])
    for _ in range(3):
        meter.record(Request.tool_call("search"))
    assert meter.usage().used["tool_calls"] == 3
    assert meter.usage().held == {}
    assert meter.exhausted is None and meter.level != "deny"
    assert not [e for e in hook.events if e.kind in ("deny", "would_deny")]


def test_record_settles_a_model_call_at_its_actual_price() -> None:
    meter = Meter(Budget(max_cost_usd="1"), hooks=[])
    usage = TokenUsage(1000, 200)
    meter.record(Request.model_call(model="gpt-4o"), usage, model="gpt-4o")
    used = meter.usage().used
    assert used["model_calls"] == 1 and used["input_tokens"] == 1000 and used["output_tokens"] == 200
    assert used["cost_usd"] == price_tokens(meter.budget, "gpt-4o", usage).micros


def test_reached_names_the_used_up_limit_and_its_numbers() -> None:
    meter = Meter(Budget(max_model_calls=2), hooks=[])
    meter.record(Request.model_call())
    assert meter.reached() is None
    meter.record(Request.model_call())
    found = meter.reached()
    assert found is not None
    assert (found.dimension, found.limit, found.used, found.scope) == ("model_calls", 2, 2, "run")
    assert meter.exhausted is None  # a query, not a refusal


def test_reached_leaves_tool_limits_out_unless_asked() -> None:
    meter = Meter(Budget(max_tool_calls=1, max_model_calls=5), hooks=[])
    meter.record(Request.tool_call("search"))
    assert meter.reached() is None
    found = meter.reached(["tool_calls"])
    assert found is not None and found.dimension == "tool_calls"


def test_reached_reports_the_wall_clock_limit() -> None:
    now = [0.0]
    meter = Meter(Budget(max_seconds=10), hooks=[], clock=lambda: now[0])
    assert meter.reached() is None  # nothing started yet
    meter.record(Request.step("a"))
    now[0] = 11.0
    found = meter.reached()
    assert found is not None and found.dimension == "seconds" and found.limit == 10


def test_reached_sees_a_ceiling_used_up_by_another_run() -> None:
    ledger = InMemoryLedger()
    ceiling = Ceiling(scope="workflow", max_model_calls=2)
    first = Meter(Budget(), ledger=ledger, ceilings=[ceiling], tenant="t", workflow="w", hooks=[])
    second = Meter(Budget(), ledger=ledger, ceilings=[ceiling], tenant="t", workflow="w", hooks=[])
    first.record(Request.model_call())
    first.record(Request.model_call())
    found = second.reached()
    assert found is not None and found.scope == "workflow" and found.used == 2


async def test_async_twins_agree_with_the_sync_door() -> None:
    meter = Meter(Budget(max_total_tokens=50), hooks=[], defer_commits=True)
    await meter.arecord(Request.model_call(), TokenUsage(40, 20))
    found = await meter.areached()  # the deferred settlement is flushed first
    assert found is not None and (found.dimension, found.used) == ("total_tokens", 60)
    assert meter.usage().used["total_tokens"] == 60


@pytest.mark.parametrize("mode", ["enforce", "shadow"])
def test_record_still_signals_warn_and_degrade(mode: str) -> None:
    hook = CollectingHook()
    meter = Meter(Budget(max_model_calls=10, mode=mode), hooks=[hook])  # type: ignore[arg-type]
    for _ in range(9):
        meter.record(Request.model_call())
    assert meter.level == "degrade"
    assert {"warn", "degrade"} <= {e.kind for e in hook.events}
