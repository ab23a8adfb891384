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
