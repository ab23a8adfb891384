"""Prices from the maintained genai-prices database, in integer micro-dollars."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from budget_plugins._errors import UnpricedModelError
from budget_plugins._policy import Budget, Price, usd_to_micros
from budget_plugins._usage import TokenUsage


@dataclass(frozen=True, slots=True)
class PricedCall:
    """The price of one call: dollars, micro-dollars (rounded up) and where the price came from."""

    cost_usd: Decimal
    micros: int
    source: str
    """``"genai-prices:<provider>/<model>"``, ``"fallback"`` or ``"unpriced"``."""


_lookup_lock = threading.Lock()


@functools.lru_cache(maxsize=512)
def _model_price(model: str, provider: str | None) -> tuple[Any, str] | None:
    from genai_prices import Usage, calc_price

    with _lookup_lock:
        try:
            found = calc_price(Usage(input_tokens=1), model_ref=model, provider_id=provider)
        except LookupError:
            if provider is None:
                return None
            try:
                found = calc_price(Usage(input_tokens=1), model_ref=model)
            except LookupError:
                return None
    return found.model_price, f"genai-prices:{found.provider.id}/{found.model.id}"


_TOKEN_RATES = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")
_NOT_FROM_TOKENS = frozenset({"web_searches_kcount", "storage_searches_kcount", "cache_write_1h_mtok"})
"""Prices of units a token usage never reports: they do not change a token price."""


Rate = Any  # a Decimal, or genai-prices' TieredPrices (cliff tiers by total input tokens)


@functools.lru_cache(maxsize=512)
def _token_rates(model: str, provider: str | None) -> tuple[Rate, Rate, Rate, Rate] | None:
    """Per-million rates (input, output, cache read, cache write) when tokens alone set the price.

    genai-prices' general calculation costs tens of microseconds a call; for a
    price made only of token rates (flat or tiered) the same arithmetic is done
    here directly. Anything else (a per-request fee...) returns ``None`` and
    takes the general path. Tests compare both paths.
    """
    found = _model_price(model, provider)
    if found is None:
        return None
    prices = {k: v for k, v in vars(found[0]).items() if v is not None and not k.startswith("_")}
    if not set(prices) <= set(_TOKEN_RATES) | _NOT_FROM_TOKENS:
        return None
    base = prices.get("input_mtok", Decimal(0))
    return (
        base,
        prices.get("output_mtok", Decimal(0)),
        prices.get("cache_read_mtok", base),
        prices.get("cache_write_mtok", base),
    )


_PICO_PER_MICRO = 1_000_000


@functools.lru_cache(maxsize=512)
def _pico_rates(model: str, provider: str | None) -> tuple[int, int, int, int] | None:
    """Flat token rates as integer pico-dollars a token (a $/Mtok rate is micro-dollars a token).

    ``None`` when a rate is tiered or has more than six decimals (then Decimals price it).
    """
    rates = _token_rates(model, provider)
    if rates is None or not all(isinstance(rate, Decimal) for rate in rates):
        return None
    scaled = [rate * _PICO_PER_MICRO for rate in rates]
    if any(value != value.to_integral_value() for value in scaled):
        return None
    return (int(scaled[0]), int(scaled[1]), int(scaled[2]), int(scaled[3]))


def price_micros(
    budget: Budget,
    model: str | None,
    usage: TokenUsage,
    *,
    provider: str | None = None,
    needs_price: bool = True,
) -> int:
    """:func:`price_tokens` in micro-dollars only (rounded up), in integers for flat prices.

    Example:
        >>> from budget_plugins import Budget
        >>> price_micros(Budget(), "gpt-4o", TokenUsage(1_000, 100))
        3500
    """
    rates = _pico_rates(model, provider or None) if model else None
    if rates is None:
        return price_tokens(budget, model, usage, provider=provider, needs_price=needs_price).micros
    plain = max(usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens, 0)
    pico = (
        plain * rates[0]
        + usage.output_tokens * rates[1]
        + usage.cache_read_tokens * rates[2]
        + usage.cache_write_tokens * rates[3]
    )
    return -(-pico // _PICO_PER_MICRO)


def _at(rate: Rate, total_input: int) -> Decimal:
    if isinstance(rate, Decimal):
        return rate
    # Cliff tiers: crossing a threshold prices every token at that tier's rate.
    for tier in reversed(rate.tiers):
        if total_input > tier.start:
            return Decimal(tier.price)
    return Decimal(rate.base)


def lookup_price(model: str | None, provider: str | None = None) -> tuple[Any, str] | None:
    """The genai-prices ``ModelPrice`` of a model and a source label, or ``None``.

    Example:
        >>> lookup_price("gpt-4o-mini")[1]
        'genai-prices:openai/gpt-4o-mini'
        >>> lookup_price("no-such-model-xyz") is None
        True
    """
    if not model:
        return None
    return _model_price(model, provider or None)


def price_tokens(
    budget: Budget,
    model: str | None,
    usage: TokenUsage,
    *,
    provider: str | None = None,
    needs_price: bool = True,
) -> PricedCall:
    """Price one call's tokens, following ``budget.unpriced_model`` for unknown models.

    Args:
        budget: Supplies the unpriced-model policy.
        model: The model name as the provider reports it.
        usage: The tokens (worst case before a call, actual after it).
        provider: Optional provider id to disambiguate (``"openai"``, ``"anthropic"``...).
        needs_price: Whether any cost limit applies; if not, an unknown model is
            priced at zero instead of raising.

    Raises:
        UnpricedModelError: Unknown model, a cost limit applies and the policy is ``"raise"``.

    Example:
        >>> from budget_plugins import Budget
        >>> price_tokens(Budget(), "gpt-4o", TokenUsage(1_000_000, 0)).cost_usd
        Decimal('2.50')
    """
    found = lookup_price(model, provider)
    rates = _token_rates(model, provider or None) if found is not None and model else None
    if found is not None and rates is not None:
        total = usage.input_tokens
        plain = max(total - usage.cache_read_tokens - usage.cache_write_tokens, 0)
        cost = (
            plain * _at(rates[0], total)
            + usage.output_tokens * _at(rates[1], total)
            + usage.cache_read_tokens * _at(rates[2], total)
            + usage.cache_write_tokens * _at(rates[3], total)
        ) / 1_000_000
        return PricedCall(cost, usd_to_micros(cost), found[1])
    if found is not None:
        model_price, source = found
        from genai_prices import Usage

        result = model_price.calc_price(
            Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
            )
        )
        cost = Decimal(result["total_price"])
        return PricedCall(cost, usd_to_micros(cost), source)
    policy = budget.unpriced_model
    if isinstance(policy, Price):
        cost = policy.cost(
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_tokens,
            usage.cache_write_tokens,
        )
        return PricedCall(cost, usd_to_micros(cost), "fallback")
    if policy == "raise" and needs_price:
        raise UnpricedModelError(
            f"model {model!r} has no price in the genai-prices database and a cost limit "
            "applies; set Budget(unpriced_model=Price(input_per_mtok=..., output_per_mtok=...)) "
            "or Budget(unpriced_model='count_tokens_only'), or report the model name the "
            "provider returns",
            field="unpriced_model",
        )
    return PricedCall(Decimal(0), 0, "unpriced")
