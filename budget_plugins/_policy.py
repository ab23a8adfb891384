"""Policies are data: frozen pydantic models where ``None`` means "no limit"."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from budget_plugins._errors import COST_DIMENSION, MICROS_PER_USD, BudgetConfigError

Window = Literal["hour", "day", "week", "month"]
"""Calendar windows a :class:`Ceiling` can reset on (UTC)."""

ScopeKind = Literal["run", "workflow", "tenant"]

TOOL_PREFIX = "tool_calls:"
"""Per-tool counters are named ``tool_calls:<tool name>``."""

COUNTER_FIELDS: dict[str, str] = {
    "max_steps": "steps",
    "max_model_calls": "model_calls",
    "max_tool_calls": "tool_calls",
    "max_retries": "retries",
    "max_input_tokens": "input_tokens",
    "max_output_tokens": "output_tokens",
    "max_total_tokens": "total_tokens",
    "max_cost_usd": COST_DIMENSION,
}
"""Cumulative limits and the ledger counter each one caps."""

_MIN_ONE = {
    "max_steps",
    "max_model_calls",
    "max_input_tokens",
    "max_output_tokens",
    "max_total_tokens",
    "max_depth",
    "max_fanout",
    "max_consecutive_failures",
}
_MIN_ZERO = {"max_tool_calls", "max_retries"}


def usd_to_micros(value: Decimal) -> int:
    """Dollars to integer micro-dollars, rounded up (never under-charge).

    Example:
        >>> usd_to_micros(Decimal("0.0000001"))
        1
        >>> usd_to_micros(Decimal("1.5"))
        1500000
    """
    return int((value * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def micros_to_usd(micros: int) -> Decimal:
    """Integer micro-dollars to dollars.

    Example:
        >>> micros_to_usd(1_500_000)
        Decimal('1.5')
    """
    return Decimal(micros) / MICROS_PER_USD


def _to_decimal(value: Any, field: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise BudgetConfigError(f"{field} must be a dollar amount, got {value!r}", field=field)
    try:
        # str() first so that a float such as 0.1 becomes Decimal("0.1"), not its binary noise.
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise BudgetConfigError(f"{field} must be a dollar amount such as '0.50', got {value!r}", field=field) from None
    if not amount.is_finite():
        raise BudgetConfigError(
            f"{field} must be a finite dollar amount, got {value!r}; use None for no limit",
            field=field,
        )
    return amount


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(type(self).__name__, exc) from None


def _config_error(model: str, exc: ValidationError) -> BudgetConfigError:
    for error in exc.errors():
        original = error.get("ctx", {}).get("error")
        if isinstance(original, BudgetConfigError):
            return original
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    if first["type"] == "extra_forbidden":
        return BudgetConfigError(
            f"{model} has no field {field!r}; check the spelling (fields: {', '.join(sorted(_fields_of(model)))})",
            field=field,
        )
    return BudgetConfigError(
        f"{model}.{field}: {first['msg']} (got {first.get('input')!r}); "
        f"use a value of the documented type, or None for no limit",
        field=field,
    )


def _fields_of(model: str) -> list[str]:
    classes: dict[str, type[BaseModel]] = {"Budget": Budget, "Ceiling": Ceiling, "Price": Price}
    cls = classes.get(model)
    return list(cls.model_fields) if cls is not None else []


class Price(_Frozen):
    """A fallback price for models the price database does not know.

    Amounts are dollars per million tokens.

    Example:
        >>> Price(input_per_mtok="3", output_per_mtok="15").cost(1_000_000, 0)
        Decimal('3')
    """

    input_per_mtok: Decimal
    """Dollars per million input tokens (cache misses)."""
    output_per_mtok: Decimal
    """Dollars per million output tokens."""
    cache_read_per_mtok: Decimal | None = None
    """Dollars per million cache-read input tokens (``None``: as input)."""
    cache_write_per_mtok: Decimal | None = None
    """Dollars per million cache-write input tokens (``None``: as input)."""

    @field_validator("*", mode="before")
    @classmethod
    def _money(cls, value: Any, info: Any) -> Any:
        amount = _to_decimal(value, info.field_name)
        if amount is not None and amount < 0:
            raise BudgetConfigError(f"{info.field_name} must be >= 0, got {value!r}", field=info.field_name)
        return amount

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal:
        """Dollar cost; ``input_tokens`` includes cached tokens, as LangChain counts them."""
        plain = max(input_tokens - cache_read_tokens - cache_write_tokens, 0)
        read = self.cache_read_per_mtok if self.cache_read_per_mtok is not None else self.input_per_mtok
        write = self.cache_write_per_mtok if self.cache_write_per_mtok is not None else self.input_per_mtok
        total = (
            plain * self.input_per_mtok
            + cache_read_tokens * read
            + cache_write_tokens * write
            + output_tokens * self.output_per_mtok
        )
        return total / 1_000_000


class _Limits(_Frozen):
    """Cumulative limits shared by a run :class:`Budget` and a :class:`Ceiling`."""

    max_steps: int | None = None
    """Steps: LangGraph node executions; outside a graph, model and tool calls."""
    max_model_calls: int | None = None
    """Model calls (every attempt counts, retries included)."""
    max_tool_calls: int | None = None
    """Tool executions; each of several parallel tool calls counts one."""
    max_tool_calls_per_tool: dict[str, int] | None = None
    """Tool executions per tool name, e.g. ``{"search": 5}``."""
    max_retries: int | None = None
    """Repeated attempts of the same model or tool call, in total."""
    max_input_tokens: int | None = None
    """Input (prompt) tokens, cached ones included."""
    max_output_tokens: int | None = None
    """Output (completion) tokens."""
    max_total_tokens: int | None = None
    """Input plus output tokens."""
    max_cost_usd: Decimal | None = None
    """Dollars, priced from the genai-prices database (cache pricing included)."""

    @field_validator(
        "max_steps",
        "max_model_calls",
        "max_tool_calls",
        "max_retries",
        "max_input_tokens",
        "max_output_tokens",
        "max_total_tokens",
        mode="before",
    )
    @classmethod
    def _no_bool(cls, value: Any, info: Any) -> Any:
        if isinstance(value, bool):
            raise BudgetConfigError(
                f"{info.field_name} must be an integer, got {value!r}; use None for no limit",
                field=info.field_name,
            )
        return value

    @field_validator("max_cost_usd", mode="before")
    @classmethod
    def _cost(cls, value: Any) -> Decimal | None:
        amount = _to_decimal(value, "max_cost_usd")
        if amount is not None and amount <= 0:
            raise BudgetConfigError(
                f"max_cost_usd must be > 0, got {value!r}; use None for no cost limit",
                field="max_cost_usd",
            )
        return amount

    def model_post_init(self, context: Any, /) -> None:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in _MIN_ONE or name in _MIN_ZERO:
                if value is None:
                    continue
                if isinstance(value, bool):
                    raise BudgetConfigError(f"{name} must be an integer, got {value!r}", field=name)
                low = 1 if name in _MIN_ONE else 0
                if value < low:
                    raise BudgetConfigError(
                        f"{name} must be >= {low}, got {value}; use None for no limit",
                        field=name,
                    )
        per_tool = self.max_tool_calls_per_tool or {}
        for tool, cap in per_tool.items():
            if not tool:
                raise BudgetConfigError(
                    "max_tool_calls_per_tool has an empty tool name; use the tool's name",
                    field="max_tool_calls_per_tool",
                )
            if cap < 0:
                raise BudgetConfigError(
                    f"max_tool_calls_per_tool[{tool!r}] must be >= 0, got {cap}",
                    field="max_tool_calls_per_tool",
                )
            if self.max_tool_calls is not None and cap > self.max_tool_calls:
                raise BudgetConfigError(
                    f"max_tool_calls_per_tool[{tool!r}]={cap} is above max_tool_calls="
                    f"{self.max_tool_calls} and could never be reached; lower it or raise "
                    "max_tool_calls",
                    field="max_tool_calls_per_tool",
                )

    def counter_limits(self) -> dict[str, int]:
        """The cumulative limits as ledger counters (cost in micro-dollars).

        Example:
            >>> Budget(max_tool_calls=3, max_cost_usd="0.5",
            ...        max_tool_calls_per_tool={"search": 2}).counter_limits()
            {'tool_calls': 3, 'cost_usd': 500000, 'tool_calls:search': 2}
        """
        limits: dict[str, int] = {}
        for field_name, dimension in COUNTER_FIELDS.items():
            value = getattr(self, field_name)
            if value is None:
                continue
            limits[dimension] = usd_to_micros(value) if dimension == COST_DIMENSION else int(value)
        for tool, cap in (self.max_tool_calls_per_tool or {}).items():
            limits[TOOL_PREFIX + tool] = cap
        return limits


class Budget(_Limits):
    """The budget of one run: what an agent loop may spend before it is refused.

    Every limit is optional (``None`` = unlimited). Money is a ``Decimal`` (strings
    such as ``"0.50"`` are accepted). The model is frozen: derive a new budget with
    ``budget.model_copy(update={...})``.

    Example:
        >>> budget = Budget(max_model_calls=20, max_tool_calls=10, max_cost_usd="1.00")
        >>> budget.max_cost_usd
        Decimal('1.00')
        >>> budget.warn_at, budget.degrade_at
        (0.8, 0.9)
    """

    max_depth: int | None = None
    """Nesting of runs: chains, agents, sub-agents and subgraphs (the root is 1)."""
    max_consecutive_failures: int | None = None
    """Circuit breaker: after N failed model/tool calls in a row, refuse the next."""
    max_seconds: float | timedelta | None = None
    """Wall-clock time from the run's first guarded event."""
    max_fanout: int | None = None
    """Parallel branches (e.g. LangGraph ``Send`` tasks) started from one step."""

    warn_at: float | None = 0.8
    """Emit a warning event when any limit reaches this fraction (None: never)."""
    degrade_at: float | None = 0.9
    """Switch to the configured cheaper model at this fraction (None: never)."""
    on_exhausted: Literal["raise", "end"] | None = None
    """``"raise"`` :class:`BudgetExceeded`, or ``"end"`` the run gracefully with a
    partial result. ``None`` takes the adapter's default: the LangChain handler
    raises (callbacks cannot end a run), the LangGraph guard and the AutoGen client
    end."""
    mode: Literal["enforce", "shadow"] = "enforce"
    """``"shadow"`` records every would-be warn/degrade/deny as an event and refuses nothing."""
    unpriced_model: Literal["raise", "count_tokens_only"] | Price = "raise"
    """What to do with a model the price database does not know, when a cost limit
    applies: raise :class:`UnpricedModelError`, count its tokens but no cost, or use
    the given fallback :class:`Price`."""
    default_max_output_tokens: int = 1024
    """Output tokens reserved for a model call that sets no ``max_tokens``; the call
    is admitted only if this worst case fits, and settled with the actual usage."""
    finalization_reserve: float = 0.0
    """Fraction of every limit held back for calls marked final (a wrap-up answer
    after the cap): ordinary calls see ``limit * (1 - finalization_reserve)``."""

    @field_validator("max_seconds", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        if value is None:
            return None
        seconds = value.total_seconds() if isinstance(value, timedelta) else value
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise BudgetConfigError(f"max_seconds must be seconds or a timedelta, got {value!r}", field="max_seconds")
        if math.isnan(seconds) or seconds <= 0 or math.isinf(seconds):
            raise BudgetConfigError(
                f"max_seconds must be a finite number > 0, got {value!r}; use None for no limit",
                field="max_seconds",
            )
        return float(seconds)

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        for name in ("warn_at", "degrade_at"):
            value = getattr(self, name)
            if value is not None and (math.isnan(value) or not 0 < value <= 1):
                raise BudgetConfigError(
                    f"{name} must be a fraction in (0, 1], got {value!r}; use None to disable",
                    field=name,
                )
        if self.warn_at is not None and self.degrade_at is not None and self.warn_at > self.degrade_at:
            raise BudgetConfigError(
                f"warn_at={self.warn_at} is above degrade_at={self.degrade_at}; the warning "
                "must come first: lower warn_at or raise degrade_at",
                field="warn_at",
            )
        if self.default_max_output_tokens < 1:
            raise BudgetConfigError(
                f"default_max_output_tokens must be >= 1, got {self.default_max_output_tokens}",
                field="default_max_output_tokens",
            )
        reserve = self.finalization_reserve
        if math.isnan(reserve) or not 0 <= reserve < 1:
            raise BudgetConfigError(
                f"finalization_reserve must be a fraction in [0, 1), got {reserve!r}",
                field="finalization_reserve",
            )

    @property
    def seconds(self) -> float | None:
        """``max_seconds`` as a float (timedelta converted)."""
        value = self.max_seconds
        if isinstance(value, timedelta):  # pragma: no cover - normalized by the validator
            return value.total_seconds()
        return value

    def is_unlimited(self) -> bool:
        """True when no limit at all is set (the guard only meters)."""
        return not self.counter_limits() and all(
            getattr(self, name) is None
            for name in ("max_depth", "max_consecutive_failures", "max_seconds", "max_fanout")
        )


class Ceiling(_Limits):
    """A limit shared by many runs: a workflow's or a tenant's, optionally per window.

    Ceilings are checked together with the run's :class:`Budget` in one atomic
    reservation: a request is held in every scope or in none.

    Example:
        >>> Ceiling(scope="tenant", max_cost_usd="500", window="month").counter_limits()
        {'cost_usd': 500000000}
    """

    scope: Literal["workflow", "tenant"]
    """Which scope the ceiling caps: every run of the workflow, or of the tenant."""
    window: Window | None = None
    """Calendar window (UTC) after which usage starts again from zero; None: never."""

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        if not self.counter_limits():
            raise BudgetConfigError(
                f"Ceiling(scope={self.scope!r}) sets no limit; set e.g. max_cost_usd",
                field="scope",
            )


def merge_limits(*limits: Mapping[str, int]) -> dict[str, int]:
    """The tightest of several limit maps, dimension by dimension.

    Example:
        >>> merge_limits({"steps": 5}, {"steps": 3, "retries": 1})
        {'steps': 3, 'retries': 1}
    """
    merged: dict[str, int] = {}
    for mapping in limits:
        for key, value in mapping.items():
            merged[key] = min(value, merged.get(key, value))
    return merged
