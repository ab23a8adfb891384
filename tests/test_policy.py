"""Budget, Ceiling and Price validation: bad input names the field and the fix."""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal

import pytest

from budget_plugins import Budget, BudgetConfigError, Ceiling, Price


@pytest.mark.parametrize(
    ("kwargs", "field", "fix"),
    [
        ({"max_tool_calls": -1}, "max_tool_calls", "use None for no limit"),
        ({"max_model_calls": 0}, "max_model_calls", ">= 1"),
        ({"max_steps": 0}, "max_steps", ">= 1"),
        ({"max_depth": 0}, "max_depth", ">= 1"),
        ({"max_fanout": 0}, "max_fanout", ">= 1"),
        ({"max_cost_usd": "-1"}, "max_cost_usd", "> 0"),
        ({"max_cost_usd": 0}, "max_cost_usd", "use None"),
        ({"max_cost_usd": "NaN"}, "max_cost_usd", "finite"),
        ({"max_cost_usd": "lots"}, "max_cost_usd", "'0.50'"),
        ({"max_cost_usd": float("inf")}, "max_cost_usd", "finite"),
        ({"max_seconds": 0}, "max_seconds", "> 0"),
        ({"max_seconds": math.nan}, "max_seconds", "finite"),
        ({"max_seconds": "soon"}, "max_seconds", "timedelta"),
        ({"warn_at": 0.95, "degrade_at": 0.9}, "warn_at", "lower warn_at"),
        ({"warn_at": 1.5}, "warn_at", "(0, 1]"),
        ({"degrade_at": 0}, "degrade_at", "(0, 1]"),
        (
            {"max_tool_calls": 3, "max_tool_calls_per_tool": {"search": 5}},
            "max_tool_calls_per_tool",
            "raise max_tool_calls",
        ),
        ({"max_tool_calls_per_tool": {"search": -2}}, "max_tool_calls_per_tool", ">= 0"),
        ({"max_tool_calls_per_tool": {"": 1}}, "max_tool_calls_per_tool", "tool's name"),
        ({"finalization_reserve": 1.0}, "finalization_reserve", "[0, 1)"),
        ({"default_max_output_tokens": 0}, "default_max_output_tokens", ">= 1"),
        ({"max_tool_call": 3}, "max_tool_call", "check the spelling"),
        ({"mode": "audit"}, "mode", "documented type"),
        ({"max_retries": True}, "max_retries", "integer"),
    ],
)
def test_bad_budget_raises_config_error_naming_field_and_fix(kwargs: dict[str, object], field: str, fix: str) -> None:
    with pytest.raises(BudgetConfigError) as info:
        Budget(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert fix in str(info.value)
    assert isinstance(info.value, ValueError)


def test_money_is_decimal_without_float_noise() -> None:
    assert Budget(max_cost_usd=0.1).max_cost_usd == Decimal("0.1")
    assert Budget(max_cost_usd="0.50").counter_limits()["cost_usd"] == 500_000


def test_cost_limit_rounds_up_to_micro_dollars() -> None:
    assert Budget(max_cost_usd="0.0000001").counter_limits()["cost_usd"] == 1


def test_timedelta_seconds_are_normalized() -> None:
    assert Budget(max_seconds=timedelta(minutes=2)).seconds == 120.0


def test_budget_is_frozen() -> None:
    budget = Budget(max_steps=3)
    with pytest.raises(Exception, match="frozen"):
        budget.max_steps = 4  # type: ignore[misc]
    assert budget.model_copy(update={"max_steps": 4}).max_steps == 4


def test_none_means_unlimited() -> None:
    assert Budget().counter_limits() == {}
    assert Budget().is_unlimited()
    assert not Budget(max_seconds=1).is_unlimited()


def test_zero_tool_calls_is_a_meaningful_limit() -> None:
    assert Budget(max_tool_calls=0).counter_limits() == {"tool_calls": 0}


def test_ceiling_needs_a_limit_and_a_known_scope() -> None:
    with pytest.raises(BudgetConfigError, match="sets no limit"):
        Ceiling(scope="tenant")
    with pytest.raises(BudgetConfigError) as info:
        Ceiling(scope="galaxy", max_steps=1)  # type: ignore[arg-type]
    assert info.value.field == "scope"
    with pytest.raises(BudgetConfigError) as info:
        Ceiling(scope="tenant", max_steps=1, window="fortnight")  # type: ignore[arg-type]
    assert info.value.field == "window"


def test_price_rejects_negative_and_prices_cache_tokens() -> None:
    with pytest.raises(BudgetConfigError, match="input_per_mtok"):
        Price(input_per_mtok="-1", output_per_mtok="1")
    price = Price(input_per_mtok="3", output_per_mtok="15", cache_read_per_mtok="0.3")
    # 1M input of which 400k cache reads: 600k * $3 + 400k * $0.30 = $1.92.
    assert price.cost(1_000_000, 0, cache_read_tokens=400_000) == Decimal("1.92")
