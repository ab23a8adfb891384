"""The max-burn formula: real prices, the guard's caps as the guard enforces them, the verdicts."""

from __future__ import annotations

from decimal import Decimal

import pytest

from budget_plugins import Budget, BudgetConfigError, BudgetExceeded, Meter, Price, TokenUsage, UnpricedModelError
from budget_plugins._burn import judge, max_burn
from budget_plugins._pricing import lookup_price


def _rate_card_cost(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    found = lookup_price(model)
    assert found is not None
    price = found[0]
    return (input_tokens * Decimal(str(price.input_mtok)) + output_tokens * Decimal(str(price.output_mtok))) / 1_000_000


def test_one_call_is_priced_from_the_genai_prices_rate_card() -> None:
    burn = max_burn("gpt-4o", iterations=1, input_tokens=6000, output_tokens=400)
    assert burn.cost_per_call == _rate_card_cost("gpt-4o", 6000, 400)
    assert burn.price_source == "genai-prices:openai/gpt-4o"


def test_worst_case_is_the_product_of_iterations_rate_retries_and_concurrency() -> None:
    burn = max_burn("gpt-4o-mini", iterations=50, input_tokens=2000, output_tokens=300, retries=2, concurrency=7)
    per_call = _rate_card_cost("gpt-4o-mini", 2000, 300)
    assert burn.retry_multiplier == 3
    assert burn.unguarded.calls_per_run == 150
    assert burn.unguarded.per_run_usd == 150 * per_call
    assert burn.unguarded.burst_usd == 50 * per_call * 3 * 7


@pytest.mark.parametrize("factor", ["iterations", "concurrency"])
def test_worst_case_grows_linearly_with_each_factor(factor: str) -> None:
    base = {"iterations": 10, "concurrency": 3}
    one = max_burn("gpt-4o", input_tokens=1000, output_tokens=100, **base)  # type: ignore[arg-type]
    doubled = max_burn("gpt-4o", input_tokens=1000, output_tokens=100, **{**base, factor: base[factor] * 2})  # type: ignore[arg-type]
    assert doubled.unguarded.burst_usd == 2 * one.unguarded.burst_usd


@pytest.mark.parametrize(
    ("share", "verdict"),
    [
        ("0", "genuine enforcement"),
        ("0.0099", "genuine enforcement"),
        ("0.01", "weak enforcement"),
        ("0.10", "weak enforcement"),
        ("0.1001", "ceiling too loose"),
        ("0.99", "ceiling too loose"),
        ("1", "no enforcement"),
        ("25", "no enforcement"),
    ],
)
def test_verdict_thresholds_are_one_ten_and_a_hundred_percent(share: str, verdict: str) -> None:
    assert judge(Decimal(share)) == verdict


def test_burst_is_judged_against_the_monthly_budget() -> None:
    burn = max_burn("gpt-4o", iterations=50, input_tokens=6000, output_tokens=400, retries=3, concurrency=10)
    burst = burn.unguarded.burst_usd
    for monthly, verdict in [
        (burst * 200, "genuine enforcement"),
        (burst * 5, "ceiling too loose"),
        (burst, "no enforcement"),
    ]:
        judged = max_burn(
            "gpt-4o",
            iterations=50,
            input_tokens=6000,
            output_tokens=400,
            retries=3,
            concurrency=10,
            monthly_budget=monthly,
        )
        assert judged.unguarded.share == burst / monthly
        assert judged.unguarded.verdict == verdict


def test_without_a_monthly_budget_there_is_no_verdict() -> None:
    burn = max_burn("gpt-4o", iterations=5, input_tokens=100, output_tokens=10)
    assert burn.unguarded.share is None
    assert burn.unguarded.verdict is None
    assert burn.guarded is None


def test_runs_per_month_gives_the_month_if_every_run_hits_its_worst_case() -> None:
    burn = max_burn("gpt-4o", iterations=5, input_tokens=100, output_tokens=10, runs_per_month=1000)
    assert burn.unguarded.monthly_usd == burn.unguarded.per_run_usd * 1000


def _calls_the_guard_admits(budget: Budget, input_tokens: int, output_tokens: int, retries: int) -> int:
    """Drive a real Meter: each iteration is attempted 1 + retries times, every attempt paid."""
    meter = Meter(budget, hooks=[])
    admitted = 0
    try:
        for _ in range(1000):
            for attempt in range(1 + retries):
                ticket = meter.before_model_call(
                    model="gpt-4o", input_tokens=input_tokens, max_output_tokens=output_tokens, retry=attempt > 0
                )
                meter.after_model_call(ticket, TokenUsage(input_tokens, output_tokens))
                admitted += 1
    except BudgetExceeded:
        return admitted
    raise AssertionError("the guard never refused")  # pragma: no cover


@pytest.mark.parametrize(
    ("budget", "bound_by"),
    [
        (Budget(max_model_calls=7), "max_model_calls"),
        (Budget(max_cost_usd="0.10"), "max_cost_usd"),
        (Budget(max_total_tokens=20_000), "max_total_tokens"),
        (Budget(max_output_tokens=1_000), "max_output_tokens"),
        (Budget(max_model_calls=30, max_cost_usd="0.05"), "max_cost_usd"),
    ],
)
def test_guarded_calls_match_what_a_real_meter_admits(budget: Budget, bound_by: str) -> None:
    burn = max_burn(
        "gpt-4o", iterations=200, input_tokens=3000, output_tokens=250, retries=1, concurrency=4, budget=budget
    )
    assert burn.guarded is not None
    assert burn.guarded.bound_by == bound_by
    assert burn.guarded.calls_per_run == _calls_the_guard_admits(budget, 3000, 250, retries=1)
    assert burn.guarded.per_run_usd == burn.guarded.calls_per_run * burn.cost_per_call
    assert burn.guarded.burst_usd == 4 * burn.guarded.per_run_usd


def test_with_a_retry_cap_the_worst_run_spreads_its_retries_and_makes_every_iteration() -> None:
    burn = max_burn(
        "gpt-4o", iterations=200, input_tokens=3000, output_tokens=250, retries=1, budget=Budget(max_retries=4)
    )
    assert burn.guarded is not None
    assert burn.guarded.bound_by == "max_retries"
    assert burn.guarded.calls_per_run == 200 + 4
    # The pattern that reaches it: the first four iterations fail once each, the rest succeed first time.
    meter = Meter(Budget(max_retries=4), hooks=[])
    for iteration in range(200):
        for attempt in range(2 if iteration < 4 else 1):
            ticket = meter.before_model_call(model="gpt-4o", input_tokens=3000, retry=attempt > 0)
            meter.after_model_call(ticket, TokenUsage(3000, 250))
    assert meter.usage().used["model_calls"] == 204
    with pytest.raises(BudgetExceeded):
        meter.before_model_call(model="gpt-4o", input_tokens=3000, retry=True)


def test_a_cost_cap_bounds_the_spend_of_every_run() -> None:
    burn = max_burn(
        "gpt-4o",
        iterations=500,
        input_tokens=6000,
        output_tokens=400,
        concurrency=10,
        budget=Budget(max_cost_usd="0.50"),
    )
    assert burn.guarded is not None
    assert burn.guarded.per_run_usd <= Decimal("0.50") < burn.guarded.per_run_usd + burn.cost_per_call


def test_a_limit_that_does_not_bind_is_not_named() -> None:
    burn = max_burn("gpt-4o", iterations=10, input_tokens=100, output_tokens=10, budget=Budget(max_model_calls=10))
    assert burn.guarded is not None
    assert burn.guarded.bound_by is None
    assert burn.guarded.per_run_usd == burn.unguarded.per_run_usd


def test_a_shared_ceiling_caps_every_concurrent_run_together() -> None:
    burn = max_burn(
        "gpt-4o",
        iterations=100,
        input_tokens=6000,
        output_tokens=400,
        concurrency=50,
        monthly_budget=5000,
        budget=Budget(max_cost_usd="1"),
        ceiling_usd="20",
    )
    assert burn.guarded is not None
    assert burn.guarded.per_run_usd * 50 > 20
    assert burn.guarded.burst_usd == Decimal(20)
    assert burn.guarded.bound_by == "max_cost_usd, ceiling"
    assert burn.guarded.share == Decimal("0.004")
    assert burn.guarded.verdict == "genuine enforcement"


def test_a_monthly_ceiling_caps_the_month_even_if_every_run_hits_its_cap() -> None:
    burn = max_burn(
        "gpt-4o",
        iterations=100,
        input_tokens=6000,
        output_tokens=400,
        runs_per_month=10_000,
        budget=Budget(max_cost_usd="1"),
        ceiling_usd="300",
    )
    assert burn.guarded is not None and burn.unguarded.monthly_usd is not None
    assert burn.guarded.monthly_usd == Decimal(300)
    assert burn.unguarded.monthly_usd == burn.unguarded.per_run_usd * 10_000  # no guard, no ceiling


def test_unknown_models_need_a_fallback_price() -> None:
    with pytest.raises(UnpricedModelError):
        max_burn("in-house-model-7", iterations=1, input_tokens=1000, output_tokens=100)
    burn = max_burn(
        "in-house-model-7",
        iterations=1,
        input_tokens=1_000_000,
        output_tokens=1_000_000,
        price=Price(input_per_mtok="1", output_per_mtok="4"),
    )
    assert burn.cost_per_call == Decimal(5)
    assert burn.price_source == "fallback"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"iterations": 0}, "iterations"),
        ({"concurrency": 0}, "concurrency"),
        ({"retries": -1}, "retries"),
        ({"input_tokens": -5}, "input_tokens"),
        ({"monthly_budget": "0"}, "monthly_budget"),
        ({"monthly_budget": "lots"}, "monthly_budget"),
        ({"ceiling_usd": "-3"}, "ceiling_usd"),
        ({"runs_per_month": 0}, "runs_per_month"),
    ],
)
def test_bad_inputs_name_the_field_to_fix(kwargs: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {"iterations": 5, "input_tokens": 100, "output_tokens": 10, **kwargs}
    with pytest.raises(BudgetConfigError) as info:
        max_burn("gpt-4o", **arguments)  # type: ignore[arg-type]
    assert info.value.field == field
