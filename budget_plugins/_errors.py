"""The exception tree.

``BudgetExceeded`` deliberately derives from :class:`BaseException`, not
:class:`Exception`, for the same reason :class:`asyncio.CancelledError` does:
a refusal must reach the caller through every layer that catches ``Exception``
to retry, fall back or turn errors into messages (``Runnable.with_retry``,
``with_fallbacks``, ``ModelRetryMiddleware``, ``ModelFallbackMiddleware``,
``ToolNode(handle_tool_errors=True)``, LangGraph ``RetryPolicy`` and node error
handlers). Catch it by name: ``except BudgetExceeded``.

Configuration mistakes (:class:`BudgetConfigError`) are ordinary ``ValueError``
subclasses: they are bugs to fix, not budget outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

COST_DIMENSION = "cost_usd"
"""Cost is stored in integer micro-dollars under this dimension name."""

MICROS_PER_USD = 1_000_000


def format_amount(dimension: str, value: int | float | None) -> str:
    """Render an amount for humans: micro-dollars as dollars, others as is.

    Example:
        >>> format_amount("cost_usd", 1_250_000)
        '$1.25'
        >>> format_amount("tool_calls", 3)
        '3'
    """
    if value is None:
        return "?"
    if dimension == COST_DIMENSION:
        usd = (Decimal(int(value)) / MICROS_PER_USD).normalize()
        text = format(usd, "f")
        if "." in text and len(text.split(".")[1]) == 1:
            text += "0"
        return f"${text}"
    if dimension == "seconds":
        return f"{float(value):.3f}s"
    return str(value)


class BudgetError(BaseException):
    """Base of every error this library raises.

    Derives from ``BaseException`` so that a budget stop is never swallowed by
    an ``except Exception`` in a retry or fallback layer; configuration errors
    below also derive from ``ValueError`` and are thus ordinary exceptions.
    """


class BudgetConfigError(BudgetError, ValueError):
    """A budget, ceiling or adapter was configured wrongly.

    The message names the field and how to fix it.

    Example:
        >>> from budget_plugins import Budget
        >>> try:
        ...     Budget(warn_at=0.95, degrade_at=0.9)
        ... except BudgetConfigError as exc:
        ...     print(exc.field)
        warn_at
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_config_error, (str(self), self.field))


def _rebuild_config_error(message: str, field: str | None) -> BudgetConfigError:
    return BudgetConfigError(message, field=field)


class UnpricedModelError(BudgetConfigError):
    """A cost limit applies but the model has no known price.

    Fix it with ``Budget(unpriced_model=...)``: ``"count_tokens_only"`` or a
    :class:`~budget_plugins.Price`.
    """


class BudgetExceeded(BudgetError):
    """The next model call, tool call, step or retry would break a budget.

    Attributes:
        dimension: What ran out, e.g. ``"tool_calls"``, ``"cost_usd"``,
            ``"tool_calls:search"``, ``"seconds"``.
        limit: The configured limit (micro-dollars for ``cost_usd``).
        used: What was already used or held when the request came.
        requested: What the refused request asked for.
        scope: Which scope refused: ``"run"``, ``"workflow"`` or ``"tenant"``.
        scope_id: The id of that scope.
        usage: A snapshot of the run's usage when it was refused.

    Example:
        >>> exc = BudgetExceeded("tool_calls", limit=10, used=10, requested=1)
        >>> str(exc)
        'Exceeded the tool_calls limit of 10 (used=10, requested=1) in run scope'
        >>> import pickle
        >>> pickle.loads(pickle.dumps(exc)).used
        10
    """

    def __init__(
        self,
        dimension: str,
        *,
        limit: int | float,
        used: int | float,
        requested: int | float,
        scope: str = "run",
        scope_id: str | None = None,
        usage: Mapping[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        self.dimension = dimension
        self.limit = limit
        self.used = used
        self.requested = requested
        self.scope = scope
        self.scope_id = scope_id
        self.usage: dict[str, Any] = dict(usage or {})
        self.message = message or (
            f"Exceeded the {dimension} limit of {format_amount(dimension, limit)} "
            f"(used={format_amount(dimension, used)}, "
            f"requested={format_amount(dimension, requested)}) in {scope} scope"
        )
        super().__init__(self.message)

    @property
    def limit_usd(self) -> Decimal | None:
        """The limit in dollars when the dimension is cost, else ``None``."""
        if self.dimension != COST_DIMENSION:
            return None
        return Decimal(int(self.limit)) / MICROS_PER_USD

    def as_dict(self) -> dict[str, Any]:
        """The facts of the refusal as plain data (for state, logs and messages)."""
        return {
            "dimension": self.dimension,
            "limit": self.limit,
            "used": self.used,
            "requested": self.requested,
            "scope": self.scope,
            "scope_id": self.scope_id,
            "message": self.message,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_exceeded, (self.as_dict(), self.usage, type(self)))


def _rebuild_exceeded(
    data: dict[str, Any], usage: dict[str, Any], cls: type[BudgetExceeded] | None = None
) -> BudgetExceeded:
    """A refusal of class ``cls`` (default ``BudgetExceeded``) carrying the given facts."""
    return (cls or BudgetExceeded)(
        data["dimension"],
        limit=data["limit"],
        used=data["used"],
        requested=data["requested"],
        scope=data["scope"],
        scope_id=data["scope_id"],
        usage=usage,
        message=data["message"],
    )


class LedgerUnavailable(BudgetExceeded):
    """The shared ledger could not be reached and the policy is ``fail_closed``.

    A typed budget outcome (it is a :class:`BudgetExceeded` with dimension
    ``"ledger"``); the driver's error is chained as ``__cause__``.
    """

    def __init__(self, detail: str, *, scope_id: str | None = None) -> None:
        super().__init__(
            "ledger",
            limit=0,
            used=0,
            requested=1,
            scope="ledger",
            scope_id=scope_id,
            message=f"Budget ledger unavailable (fail_closed): {detail}",
        )
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_unavailable, (self.detail, self.scope_id))


def _rebuild_unavailable(detail: str, scope_id: str | None) -> LedgerUnavailable:
    return LedgerUnavailable(detail, scope_id=scope_id)


class ReservationError(BudgetError, RuntimeError):
    """A reservation id was used inconsistently (e.g. reused with other amounts)."""
