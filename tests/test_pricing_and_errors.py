"""Prices from genai-prices (cache pricing, rounding up, unknown models) and the error tree."""

from __future__ import annotations

import pickle
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from budget_plugins import (
    Budget,
    BudgetConfigError,
    BudgetError,
    BudgetExceeded,
    LedgerUnavailable,
    Price,
    TokenUsage,
    UnpricedModelError,
    price_tokens,
)
from budget_plugins._policy import usd_to_micros
from budget_plugins._pricing import price_micros


def test_price_matches_the_database_including_cache_tokens() -> None:
    usage = TokenUsage(input_tokens=10_000, output_tokens=500, cache_read_tokens=6_000, cache_write_tokens=1_000)
    priced = price_tokens(Budget(), "claude-sonnet-4-5", usage)
    expected = calc_price(
        Usage(input_tokens=10_000, output_tokens=500, cache_read_tokens=6_000, cache_write_tokens=1_000),
        model_ref="claude-sonnet-4-5",
    ).total_price
    assert priced.cost_usd == expected
    uncached = price_tokens(Budget(), "claude-sonnet-4-5", TokenUsage(10_000, 500)).cost_usd
    assert priced.cost_usd < uncached  # cache reads are cheaper than plain input
    assert priced.source.startswith("genai-prices:anthropic/")


def test_micro_dollars_round_up() -> None:
    priced = price_tokens(Budget(), "gpt-4o-mini", TokenUsage(1, 0))  # $0.00000015
    assert priced.cost_usd == Decimal("0.00000015")
    assert priced.micros == 1


def test_unknown_model_raises_when_cost_is_limited() -> None:
    with pytest.raises(UnpricedModelError, match="unpriced_model") as info:
        price_tokens(Budget(max_cost_usd=1), "acme-llm-9000", TokenUsage(10, 10))
    assert info.value.field == "unpriced_model"


def test_unknown_model_counts_tokens_only_or_uses_fallback_price() -> None:
    tokens_only = price_tokens(Budget(unpriced_model="count_tokens_only"), "acme-llm-9000", TokenUsage(10, 10))
    assert tokens_only.micros == 0 and tokens_only.source == "unpriced"
    fallback = Budget(unpriced_model=Price(input_per_mtok="1", output_per_mtok="2"))
    priced = price_tokens(fallback, "acme-llm-9000", TokenUsage(1_000_000, 1_000_000))
    assert priced.cost_usd == Decimal(3) and priced.source == "fallback"


def test_unknown_model_is_free_when_nothing_limits_cost() -> None:
    assert price_tokens(Budget(), "acme-llm-9000", TokenUsage(10, 10), needs_price=False).micros == 0


def test_budget_exceeded_message_pickles_and_escapes_except_exception() -> None:
    exc = BudgetExceeded("cost_usd", limit=500_000, used=490_000, requested=20_000, scope_id="run-1", usage={"a": 1})
    assert str(exc) == "Exceeded the cost_usd limit of $0.50 (used=$0.49, requested=$0.02) in run scope"
    clone = pickle.loads(pickle.dumps(exc))
    assert clone.as_dict() == exc.as_dict() and clone.usage == {"a": 1}
    assert clone.limit_usd == Decimal("0.5")
    assert isinstance(exc, BudgetError) and not isinstance(exc, Exception)
    with pytest.raises(BudgetExceeded):
        try:
            raise exc
        except Exception:  # the layers that retry or fall back catch this, and must miss
            pytest.fail("a budget stop was caught by `except Exception`")


def test_config_and_ledger_errors_are_typed() -> None:
    assert issubclass(BudgetConfigError, ValueError)
    unavailable = pickle.loads(pickle.dumps(LedgerUnavailable("connection refused", scope_id="t")))
    assert isinstance(unavailable, BudgetExceeded)
    assert unavailable.dimension == "ledger" and "fail_closed" in str(unavailable)


@pytest.mark.parametrize(
    "model",
    ["gpt-4o", "gpt-4o-mini", "o3", "claude-3-haiku", "mistral-large-latest", "claude-sonnet-4-5", "gemini-2.5-pro"],
)
@pytest.mark.parametrize(
    ("tokens", "out", "read", "write"),
    [(1, 0, 0, 0), (12_345, 678, 0, 0), (50_000, 2_000, 30_000, 5_000), (300_000, 10, 0, 0)],
)
def test_fast_flat_prices_equal_the_database_calculation(
    model: str, tokens: int, out: int, read: int, write: int
) -> None:
    usage = TokenUsage(tokens, out, cache_read_tokens=read, cache_write_tokens=write)
    expected = calc_price(
        Usage(input_tokens=tokens, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write), model_ref=model
    ).total_price
    assert price_tokens(Budget(), model, usage).cost_usd == expected
    assert price_micros(Budget(), model, usage) == usd_to_micros(expected)  # integer pico-dollar path


@given(
    model=st.sampled_from(["gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro", "claude-3-haiku"]),
    tokens=st.integers(min_value=0, max_value=2_000_000),
    out=st.integers(min_value=0, max_value=100_000),
    read_share=st.floats(min_value=0, max_value=1),
    write_share=st.floats(min_value=0, max_value=1),
)
@settings(max_examples=60, deadline=None)
def test_fast_prices_match_the_database_for_any_usage(
    model: str, tokens: int, out: int, read_share: float, write_share: float
) -> None:
    read = int(tokens * read_share)
    write = int((tokens - read) * write_share)
    expected = calc_price(
        Usage(input_tokens=tokens, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write), model_ref=model
    ).total_price
    assert price_tokens(Budget(), model, TokenUsage(tokens, out, read, write)).cost_usd == expected
    assert price_micros(Budget(), model, TokenUsage(tokens, out, read, write)) == usd_to_micros(expected)
