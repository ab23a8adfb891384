"""The pure decision function: exactness for every dimension, thresholds, run-local checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget_plugins import Budget, Request, decide
from budget_plugins._decide import effective_limits, find_denial

COUNTER_CASES = [
    ("max_steps", Request.step("n"), "steps"),
    ("max_model_calls", Request.model_call(), "model_calls"),
    ("max_tool_calls", Request.tool_call("search"), "tool_calls"),
    ("max_retries", Request.tool_call("search", retry=True), "retries"),
]


@pytest.mark.parametrize(("field", "request_", "dimension"), COUNTER_CASES)
@pytest.mark.parametrize("limit", [1, 3, 10])
def test_counter_allows_exactly_n_then_denies(field: str, request_: Request, dimension: str, limit: int) -> None:
    budget = Budget(**{field: limit})  # type: ignore[arg-type]
    used: dict[str, int] = {}
    for _ in range(limit):
        assert decide(budget, request_, used=used).allowed
        used[dimension] = used.get(dimension, 0) + 1
    decision = decide(budget, request_, used=used)
    assert decision.action == "deny"
    assert (decision.dimension, decision.limit, decision.used, decision.requested) == (dimension, limit, limit, 1)


def test_per_tool_cap_is_independent_of_other_tools() -> None:
    budget = Budget(max_tool_calls_per_tool={"search": 2})
    used = {"tool_calls": 2, "tool_calls:search": 2}
    assert decide(budget, Request.tool_call("search"), used=used).dimension == "tool_calls:search"
    assert decide(budget, Request.tool_call("fetch"), used=used).allowed


@pytest.mark.parametrize(
    ("field", "dimension"),
    [
        ("max_input_tokens", "input_tokens"),
        ("max_output_tokens", "output_tokens"),
        ("max_total_tokens", "total_tokens"),
    ],
)
def test_tokens_are_checked_against_the_worst_case_reservation(field: str, dimension: str) -> None:
    budget = Budget(**{field: 1000})  # type: ignore[arg-type]
    request = Request.model_call(input_tokens=300, output_tokens=300)
    fits = decide(budget, request, used={dimension: 1000 - request.amounts[dimension]})
    assert fits.allowed
    over = decide(budget, request, used={dimension: 1001 - request.amounts[dimension]})
    assert over.action == "deny" and over.dimension == dimension


def test_cost_counts_holds_in_flight() -> None:
    budget = Budget(max_cost_usd="1")
    request = Request.model_call(cost_micros=300_000)
    assert decide(budget, request, used={"cost_usd": 500_000}).allowed
    denied = decide(budget, request, used={"cost_usd": 500_000}, held={"cost_usd": 300_000})
    assert denied.action == "deny" and denied.used == 800_000


def test_deadline_uses_the_injected_clock() -> None:
    budget = Budget(max_seconds=30)
    assert decide(budget, Request.tool_call("t"), used={}, started_at=100.0, now=129.9).allowed
    late = decide(budget, Request.tool_call("t"), used={}, started_at=100.0, now=130.0)
    assert late.dimension == "seconds" and late.action == "deny"


def test_depth_and_fanout_are_run_local() -> None:
    budget = Budget(max_depth=3, max_fanout=4)
    assert decide(budget, Request.step("n", depth=3), used={}).allowed
    assert decide(budget, Request.step("n", depth=4), used={}).dimension == "depth"
    assert decide(budget, Request.step("w", fanout=4), used={}).allowed
    assert decide(budget, Request.step("w", fanout=5), used={}).dimension == "fanout"


def test_consecutive_failures_trip_the_breaker_for_calls_only() -> None:
    budget = Budget(max_consecutive_failures=2)
    assert decide(budget, Request.model_call(), used={}, consecutive_failures=1).allowed
    assert decide(budget, Request.model_call(), used={}, consecutive_failures=2).dimension == "consecutive_failures"
    assert decide(budget, Request.step("n"), used={}, consecutive_failures=2).allowed


@pytest.mark.parametrize(("used", "action"), [(5, "allow"), (7, "warn"), (8, "degrade"), (9, "degrade")])
def test_thresholds_warn_then_degrade(used: int, action: str) -> None:
    budget = Budget(max_model_calls=10)  # warn at 80 %, degrade at 90 % (counting the request)
    assert decide(budget, Request.model_call(), used={"model_calls": used}).action == action


def test_thresholds_can_be_disabled() -> None:
    budget = Budget(max_model_calls=10, warn_at=None, degrade_at=None)
    assert decide(budget, Request.model_call(), used={"model_calls": 9}).action == "allow"


def test_finalization_reserve_holds_back_part_of_every_limit() -> None:
    budget = Budget(max_model_calls=10, finalization_reserve=0.2)
    assert decide(budget, Request.model_call(), used={"model_calls": 8}).action == "deny"
    assert decide(budget, Request.model_call(final=True), used={"model_calls": 8}).allowed
    assert effective_limits({"x": 10}, 0.0, final=False) == {"x": 10}


def test_zero_requested_dimensions_never_deny() -> None:
    assert find_denial({"cost_usd": 10}, {"cost_usd": 50}, {}, {"tool_calls": 1, "cost_usd": 0}) is None


@given(
    limit=st.integers(min_value=0, max_value=50),
    used=st.integers(min_value=0, max_value=60),
    held=st.integers(min_value=0, max_value=60),
    amount=st.integers(min_value=1, max_value=20),
)
def test_allowed_iff_the_request_fits(limit: int, used: int, held: int, amount: int) -> None:
    found = find_denial({"x": limit}, {"x": used}, {"x": held}, {"x": amount})
    assert (found is None) == (used + held + amount <= limit)
