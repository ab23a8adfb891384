"""Worst-case spend of a runaway agent: the max-burn formula, with and without a guard.

The formula is ``max_iterations x tokens_per_call x model_rate x retry_multiplier x
concurrency``: every concurrent run loops to its last iteration, every call is
retried as often as allowed, and each call is priced from the genai-prices
database. The result is judged against a monthly budget: a runaway burst that
costs under 1% of it means the guard is genuine enforcement; over 10%, the
ceiling is too loose; at 100% or more, there is no enforcement at all.

Everything here is pure: no I/O beyond the (cached, local) price lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from budget_plugins._errors import BudgetConfigError
from budget_plugins._policy import Budget, Price, usd_to_micros
from budget_plugins._pricing import price_tokens
from budget_plugins._usage import TokenUsage

Verdict = Literal["genuine enforcement", "weak enforcement", "ceiling too loose", "no enforcement"]

GENUINE_BELOW = Decimal("0.01")
"""A burst under this share of the monthly budget is genuine enforcement."""
LOOSE_ABOVE = Decimal("0.10")
"""A burst over this share of the monthly budget means the ceiling is too loose."""


def judge(share: Decimal) -> Verdict:
    """Name what a worst-case burst costing ``share`` of the monthly budget means.

    Boundaries: under 1% is ``genuine enforcement``; 1% to 10% (inclusive)
    ``weak enforcement``: a runaway is noticeable but survivable; over 10%
    ``ceiling too loose``; 100% or more ``no enforcement`` (one burst can eat
    the whole month).

    Example:
        >>> judge(Decimal("0.004")), judge(Decimal("0.05")), judge(Decimal("0.5")), judge(Decimal("2"))
        ('genuine enforcement', 'weak enforcement', 'ceiling too loose', 'no enforcement')
        >>> judge(Decimal("0.01")), judge(Decimal("0.10")), judge(Decimal("1"))
        ('weak enforcement', 'weak enforcement', 'no enforcement')
    """
    if share < GENUINE_BELOW:
        return "genuine enforcement"
    if share <= LOOSE_ABOVE:
        return "weak enforcement"
    if share < 1:
        return "ceiling too loose"
    return "no enforcement"


@dataclass(frozen=True, slots=True)
class Exposure:
    """The worst case of one configuration (unguarded, or under a guard).

    Attributes:
        calls_per_run: Model call attempts one run can make (retries included).
        per_run_usd: What one run can spend.
        burst_usd: What every concurrent run together can spend: the formula's result.
        bound_by: The limit that caps the run (``None`` when nothing does).
        share: ``burst_usd`` as a fraction of the monthly budget (``None`` without one).
        verdict: What ``share`` means (``None`` without a monthly budget).
        monthly_usd: ``per_run_usd x runs_per_month`` (at most the ceiling): the month
            if every run hit its worst case (``None`` without ``runs_per_month``).
    """

    calls_per_run: int
    per_run_usd: Decimal
    burst_usd: Decimal
    bound_by: str | None
    share: Decimal | None
    verdict: Verdict | None
    monthly_usd: Decimal | None


@dataclass(frozen=True, slots=True)
class BurnEstimate:
    """The max-burn formula's inputs and its result, unguarded and (optionally) guarded.

    Attributes:
        model: The model priced.
        price_source: Where the price came from (``genai-prices:<provider>/<model>`` or ``fallback``).
        input_tokens: Input tokens per call.
        output_tokens: Output tokens per call.
        cost_per_call: Dollars one call costs at those tokens.
        iterations: Loop iterations (model calls) per run, before retries.
        retry_multiplier: Attempts per call: ``1 + retries``.
        concurrency: Runs going at once.
        monthly_budget: Dollars a month the burst is judged against.
        runs_per_month: Runs a month, for the every-run-at-worst-case line.
        unguarded: The worst case with no guard.
        guarded: The worst case under the given :class:`Budget` (and ceiling), if any.
    """

    model: str
    price_source: str
    input_tokens: int
    output_tokens: int
    cost_per_call: Decimal
    iterations: int
    retry_multiplier: int
    concurrency: int
    monthly_budget: Decimal | None
    runs_per_month: int | None
    unguarded: Exposure
    guarded: Exposure | None


def _exposure(
    calls: int,
    cost_per_call: Decimal,
    concurrency: int,
    bound_by: str | None,
    ceiling_usd: Decimal | None,
    monthly_budget: Decimal | None,
    runs_per_month: int | None,
) -> Exposure:
    per_run = cost_per_call * calls
    burst = per_run * concurrency
    if ceiling_usd is not None and burst > ceiling_usd:
        # A shared workflow/tenant ceiling caps every concurrent run together.
        burst = ceiling_usd
        bound_by = "ceiling" if bound_by is None else f"{bound_by}, ceiling"
    share = burst / monthly_budget if monthly_budget else None
    monthly = per_run * runs_per_month if runs_per_month is not None else None
    if monthly is not None and ceiling_usd is not None:
        monthly = min(monthly, ceiling_usd)
    return Exposure(
        calls_per_run=calls,
        per_run_usd=per_run,
        burst_usd=burst,
        bound_by=bound_by,
        share=share,
        verdict=judge(share) if share is not None else None,
        monthly_usd=monthly,
    )


def _count(name: str, value: int, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BudgetConfigError(f"{name} must be an integer >= {low}, got {value!r}", field=name)


def max_burn(
    model: str,
    *,
    iterations: int,
    input_tokens: int,
    output_tokens: int,
    retries: int = 0,
    concurrency: int = 1,
    monthly_budget: Decimal | str | int | None = None,
    runs_per_month: int | None = None,
    budget: Budget | None = None,
    ceiling_usd: Decimal | str | int | None = None,
    provider: str | None = None,
    price: Price | None = None,
) -> BurnEstimate:
    """Worst-case spend: ``iterations x tokens_per_call x rate x (1 + retries) x concurrency``.

    Args:
        model: Model name as the provider reports it, priced from genai-prices.
        iterations: Model calls one run makes before it stops on its own (or is cut off).
        input_tokens: Input tokens per call (the prompt, as it grows: take the largest).
        output_tokens: Output tokens per call (``max_tokens``).
        retries: Retries allowed per call; every attempt is paid, so each call
            costs up to ``1 + retries`` times.
        concurrency: Runs that can run away at the same time.
        monthly_budget: Dollars a month to judge the burst against.
        runs_per_month: Runs a month, to show the month if every run hits its worst case.
        budget: The run's guard: ``max_model_calls``, ``max_steps``, ``max_retries``,
            the token limits and ``max_cost_usd`` cap the calls a run can make,
            exactly as the guard admits them (a call is admitted only if its whole
            cost fits).
        ceiling_usd: The ``max_cost_usd`` of a monthly workflow or tenant :class:`Ceiling`
            shared by every run: caps the guarded burst and the guarded month.
        provider: Provider id, to disambiguate a model name.
        price: Fallback price for a model genai-prices does not know.

    Returns:
        The inputs, the unguarded worst case and, with ``budget`` or
        ``ceiling_usd``, the guarded one.

    Raises:
        BudgetConfigError: A count below 1 (retries below 0), a negative amount.
        UnpricedModelError: Neither genai-prices nor ``price`` knows the model.

    Example:
        >>> burn = max_burn("gpt-4o", iterations=50, input_tokens=6000, output_tokens=400,
        ...                 retries=3, concurrency=10, monthly_budget="5000")
        >>> burn.cost_per_call, burn.unguarded.calls_per_run, burn.unguarded.burst_usd
        (Decimal('0.019'), 200, Decimal('38.000'))
        >>> f"{burn.unguarded.share:.2%}", burn.unguarded.verdict
        ('0.76%', 'genuine enforcement')
        >>> guarded = max_burn("gpt-4o", iterations=50, input_tokens=6000, output_tokens=400, retries=3,
        ...                    concurrency=10, monthly_budget="5000", budget=Budget(max_cost_usd="0.10")).guarded
        >>> guarded.calls_per_run, guarded.per_run_usd, guarded.bound_by
        (5, Decimal('0.095'), 'max_cost_usd')
    """
    _count("iterations", iterations)
    _count("input_tokens", input_tokens, 0)
    _count("output_tokens", output_tokens, 0)
    _count("retries", retries, 0)
    _count("concurrency", concurrency)
    if runs_per_month is not None:
        _count("runs_per_month", runs_per_month)
    monthly = _amount("monthly_budget", monthly_budget)
    ceiling = _amount("ceiling_usd", ceiling_usd)
    pricing = Budget(unpriced_model=price) if price is not None else Budget()
    priced = price_tokens(pricing, model, TokenUsage(input_tokens, output_tokens), provider=provider)
    multiplier = 1 + retries
    attempts = iterations * multiplier
    unguarded = _exposure(attempts, priced.cost_usd, concurrency, None, None, monthly, runs_per_month)
    guarded = None
    if budget is not None or ceiling is not None:
        calls, bound_by = guarded_calls(
            budget or Budget(),
            iterations=iterations,
            retries=retries,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            call_micros=priced.micros,
        )
        guarded = _exposure(calls, priced.cost_usd, concurrency, bound_by, ceiling, monthly, runs_per_month)
    return BurnEstimate(
        model=model,
        price_source=priced.source,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_per_call=priced.cost_usd,
        iterations=iterations,
        retry_multiplier=multiplier,
        concurrency=concurrency,
        monthly_budget=monthly,
        runs_per_month=runs_per_month,
        unguarded=unguarded,
        guarded=guarded,
    )


def _amount(name: str, value: Decimal | str | int | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        raise BudgetConfigError(f"{name} must be a dollar amount such as '5000', got {value!r}", field=name) from None
    if not amount.is_finite() or amount <= 0:
        raise BudgetConfigError(f"{name} must be a dollar amount > 0, got {value!r}", field=name)
    return amount


def guarded_calls(
    budget: Budget,
    *,
    iterations: int,
    retries: int,
    input_tokens: int,
    output_tokens: int,
    call_micros: int,
) -> tuple[int, str | None]:
    """How many model call attempts one run gets under ``budget``, and which limit binds.

    Every attempt counts as a model call and a step; a call is admitted only if
    its whole worst case still fits the token and cost limits. Retries count
    against ``max_retries``: the costliest run spreads them out, making every
    iteration plus ``max_retries`` extra attempts (a run that retries every call
    is refused sooner).

    Example:
        >>> guarded_calls(Budget(max_model_calls=30, max_retries=5), iterations=50, retries=3,
        ...               input_tokens=1000, output_tokens=100, call_micros=3500)
        (30, 'max_model_calls')
        >>> guarded_calls(Budget(max_retries=5), iterations=10, retries=3,
        ...               input_tokens=1000, output_tokens=100, call_micros=3500)
        (15, 'max_retries')
        >>> guarded_calls(Budget(max_total_tokens=5000), iterations=10, retries=0,
        ...               input_tokens=1000, output_tokens=100, call_micros=3500)
        (4, 'max_total_tokens')
    """
    candidates: list[tuple[int, str | None]] = [(iterations * (1 + retries), None)]
    if budget.max_model_calls is not None:
        candidates.append((budget.max_model_calls, "max_model_calls"))
    if budget.max_steps is not None:
        candidates.append((budget.max_steps, "max_steps"))
    if budget.max_retries is not None:
        candidates.append((iterations + min(iterations * retries, budget.max_retries), "max_retries"))
    per_call = {
        "max_input_tokens": input_tokens,
        "max_output_tokens": output_tokens,
        "max_total_tokens": input_tokens + output_tokens,
    }
    for field_name, amount in per_call.items():
        limit = getattr(budget, field_name)
        if limit is not None and amount > 0:
            candidates.append((limit // amount, field_name))
    if budget.max_cost_usd is not None and call_micros > 0:
        candidates.append((usd_to_micros(budget.max_cost_usd) // call_micros, "max_cost_usd"))
    # The unguarded count comes first, so a limit that does not bind never wins a tie.
    return min(candidates, key=lambda candidate: candidate[0])


__all__ = ["BurnEstimate", "Exposure", "Verdict", "guarded_calls", "judge", "max_burn"]
