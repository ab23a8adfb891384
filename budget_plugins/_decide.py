"""Pure decision logic: no I/O, the clock is an argument.

Every store and adapter decides through these functions (the Redis Lua script
mirrors :func:`find_denial` and is tested against it by the shared contract suite).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from budget_plugins._policy import Budget
from budget_plugins._usage import Request

Action = Literal["allow", "warn", "degrade", "deny"]
_ORDER: dict[Action, int] = {"allow": 0, "warn": 1, "degrade": 2, "deny": 3}


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request was refused: which scope and dimension, with the numbers."""

    dimension: str
    limit: int | float
    used: int | float
    requested: int | float
    scope: str = "run"
    scope_id: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one request.

    ``fraction`` is the highest share of any limit in use once the request is
    counted; ``dimension``/``limit``/``used``/``requested`` describe the limit
    that decided (the refusing one for ``deny``, the most pressed one otherwise).

    Example:
        >>> Decision("allow").allowed
        True
    """

    action: Action
    dimension: str | None = None
    limit: int | float | None = None
    used: int | float | None = None
    requested: int | float | None = None
    scope: str = "run"
    scope_id: str | None = None
    fraction: float = 0.0

    @property
    def allowed(self) -> bool:
        """True unless the action is ``deny``."""
        return self.action != "deny"

    @classmethod
    def deny(cls, denial: Denial) -> Decision:
        """A ``deny`` decision carrying the denial's facts."""
        return cls(
            "deny",
            denial.dimension,
            denial.limit,
            denial.used,
            denial.requested,
            denial.scope,
            denial.scope_id,
            fraction=1.0,
        )


def find_denial(
    limits: Mapping[str, int],
    used: Mapping[str, int],
    held: Mapping[str, int],
    requested: Mapping[str, int],
) -> tuple[str, int, int, int] | None:
    """The first dimension where ``used + held + requested > limit``.

    Returns ``(dimension, limit, used + held, requested)`` or ``None`` when the
    request fits. Zero or negative requested amounts never deny, so a request
    for one tool call is not refused because tokens are already over.

    Example:
        >>> find_denial({"tool_calls": 2}, {"tool_calls": 2}, {}, {"tool_calls": 1})
        ('tool_calls', 2, 2, 1)
        >>> find_denial({"tool_calls": 3}, {"tool_calls": 2}, {}, {"tool_calls": 1}) is None
        True
    """
    for dimension, amount in requested.items():
        if amount <= 0:
            continue
        limit = limits.get(dimension)
        if limit is None:
            continue
        in_use = used.get(dimension, 0) + held.get(dimension, 0)
        if in_use + amount > limit:
            return dimension, limit, in_use, amount
    return None


def effective_limits(limits: Mapping[str, int], finalization_reserve: float, *, final: bool) -> dict[str, int]:
    """Limits as an ordinary call sees them: the finalization reserve held back.

    Example:
        >>> effective_limits({"model_calls": 10}, 0.2, final=False)
        {'model_calls': 8}
        >>> effective_limits({"model_calls": 10}, 0.2, final=True)
        {'model_calls': 10}
    """
    if final or finalization_reserve <= 0:
        return dict(limits)
    return {k: math.floor(v * (1 - finalization_reserve)) for k, v in limits.items()}


def check_run_local(
    budget: Budget,
    request: Request,
    *,
    started_at: float,
    now: float,
    consecutive_failures: int,
) -> Denial | None:
    """Checks that only the run itself can make: time, depth, fan-out, failures.

    Example:
        >>> b = Budget(max_seconds=10)
        >>> check_run_local(b, Request.tool_call("t"), started_at=0, now=11,
        ...                 consecutive_failures=0).dimension
        'seconds'
    """
    seconds = budget.seconds
    if seconds is not None:
        elapsed = now - started_at
        if elapsed >= seconds:
            return Denial("seconds", seconds, round(elapsed, 3), 0)
    if budget.max_depth is not None and request.depth > budget.max_depth:
        return Denial("depth", budget.max_depth, request.depth - 1, 1)
    if budget.max_fanout is not None and request.fanout > budget.max_fanout:
        return Denial("fanout", budget.max_fanout, request.fanout - 1, 1)
    if request.kind in ("model_call", "tool_call") or request.retry:
        cap = budget.max_consecutive_failures
        if cap is not None and consecutive_failures >= cap:
            return Denial("consecutive_failures", cap, consecutive_failures, 1)
    return None


def pressure(
    limits: Mapping[str, int],
    used: Mapping[str, int],
    held: Mapping[str, int],
    dimensions: Iterable[str] | None = None,
) -> tuple[float, str | None]:
    """The highest share of any limit in use (of ``dimensions``, by default all), and its dimension.

    Example:
        >>> pressure({"steps": 10, "tool_calls": 4}, {"steps": 5, "tool_calls": 3}, {})
        (0.75, 'tool_calls')
        >>> pressure({"steps": 10, "tool_calls": 4}, {"steps": 5, "tool_calls": 3}, {}, ["steps"])
        (0.5, 'steps')
    """
    best, which = 0.0, None
    for dimension in limits if dimensions is None else dimensions:
        limit = limits.get(dimension)
        if limit is None:
            continue
        in_use = used.get(dimension, 0) + held.get(dimension, 0)
        share = in_use / limit if limit > 0 else (1.0 if in_use > 0 else 0.0)
        if share > best:
            best, which = share, dimension
    return best, which


def classify(budget: Budget, fraction: float) -> Action:
    """Map a share of a limit to ``allow``/``warn``/``degrade`` (deny is decided elsewhere).

    Example:
        >>> b = Budget()
        >>> [classify(b, f) for f in (0.5, 0.8, 0.95)]
        ['allow', 'warn', 'degrade']
    """
    if budget.degrade_at is not None and fraction >= budget.degrade_at:
        return "degrade"
    if budget.warn_at is not None and fraction >= budget.warn_at:
        return "warn"
    return "allow"


def stronger(a: Action, b: Action) -> Action:
    """The more severe of two actions."""
    return a if _ORDER[a] >= _ORDER[b] else b


def decide(
    budget: Budget,
    request: Request,
    *,
    used: Mapping[str, int],
    held: Mapping[str, int] | None = None,
    started_at: float = 0.0,
    now: float = 0.0,
    consecutive_failures: int = 0,
    extra_limits: Mapping[str, int] | None = None,
) -> Decision:
    """Decide one request against one run's budget: allow, warn, degrade or deny.

    This is the whole policy for a single scope, as a pure function: the
    ledgers apply the same rule atomically across scopes.

    Args:
        budget: The run's budget.
        request: What is about to happen.
        used: Committed counters of the run.
        held: Counters held by calls in flight.
        started_at: When the run started (same clock as ``now``).
        now: The current time.
        consecutive_failures: Failed calls in a row so far.
        extra_limits: Further counter limits (e.g. LangGraph per-node visits).

    Returns:
        The decision, with the deciding dimension and numbers.

    Example:
        >>> b = Budget(max_model_calls=10)
        >>> decide(b, Request.model_call(), used={"model_calls": 7}).action
        'warn'
        >>> decide(b, Request.model_call(), used={"model_calls": 10}).action
        'deny'
    """
    held = held or {}
    local = check_run_local(budget, request, started_at=started_at, now=now, consecutive_failures=consecutive_failures)
    if local is not None:
        return Decision.deny(local)
    limits = effective_limits(
        {**budget.counter_limits(), **(extra_limits or {})},
        budget.finalization_reserve,
        final=request.final,
    )
    found = find_denial(limits, used, held, request.amounts)
    if found is not None:
        dimension, limit, in_use, amount = found
        return Decision.deny(Denial(dimension, limit, in_use, amount))
    after = {k: held.get(k, 0) + request.amounts.get(k, 0) for k in set(held) | set(request.amounts)}
    fraction, pressed = pressure(limits, used, after)
    if pressed is None:
        return Decision("allow")
    dimension = pressed
    limit = limits[dimension]
    return Decision(
        classify(budget, fraction),
        dimension,
        limit,
        used.get(dimension, 0) + held.get(dimension, 0),
        request.amounts.get(dimension, 0),
        fraction=fraction,
    )
