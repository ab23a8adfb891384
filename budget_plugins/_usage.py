"""Accounting values: what a call used, what is requested, what a scope holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from budget_plugins._errors import COST_DIMENSION
from budget_plugins._policy import TOOL_PREFIX, micros_to_usd

RequestKind = Literal["model_call", "tool_call", "step", "retry"]


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens one model call used, as the provider reported them.

    ``input_tokens`` includes cache reads and writes (LangChain's convention);
    ``cache_read_tokens`` and ``cache_write_tokens`` say how many of them were.

    Example:
        >>> TokenUsage(input_tokens=100, output_tokens=20).total_tokens
        120
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_usage_metadata(cls, metadata: Mapping[str, Any] | None) -> TokenUsage | None:
        """Read LangChain's ``AIMessage.usage_metadata`` (``None`` when absent).

        Example:
            >>> TokenUsage.from_usage_metadata({"input_tokens": 10, "output_tokens": 2,
            ...     "total_tokens": 12, "input_token_details": {"cache_read": 4}})
            TokenUsage(input_tokens=10, output_tokens=2, cache_read_tokens=4, cache_write_tokens=0)
        """
        if not metadata:
            return None
        details = metadata.get("input_token_details") or {}
        return cls(
            input_tokens=int(metadata.get("input_tokens") or 0),
            output_tokens=int(metadata.get("output_tokens") or 0),
            cache_read_tokens=int(details.get("cache_read") or 0),
            cache_write_tokens=int(details.get("cache_creation") or 0),
        )


@dataclass(frozen=True, slots=True)
class Request:
    """What is about to happen, in ledger amounts plus the run-local facts to check.

    Build one with the class methods rather than by hand.

    Example:
        >>> Request.tool_call("search").amounts
        {'tool_calls': 1, 'tool_calls:search': 1}
    """

    kind: RequestKind
    amounts: Mapping[str, int]
    name: str | None = None
    depth: int = 0
    """Nesting depth of the run asking (1 = root); 0 = not checked."""
    fanout: int = 0
    """Index of this branch among those started by one step (1-based); 0 = not checked."""
    retry: bool = False
    final: bool = False
    """A wrap-up call that may use the finalization reserve."""

    @classmethod
    def model_call(
        cls,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_micros: int = 0,
        model: str | None = None,
        retry: bool = False,
        depth: int = 0,
        step: bool = False,
        final: bool = False,
    ) -> Request:
        """A model call with its worst-case tokens and cost (the reservation)."""
        amounts = {
            "model_calls": 1,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            COST_DIMENSION: cost_micros,
        }
        if step:
            amounts["steps"] = 1
        if retry:
            amounts["retries"] = 1
        return cls("model_call", amounts, model, depth=depth, retry=retry, final=final)

    @classmethod
    def tool_call(cls, name: str, *, retry: bool = False, depth: int = 0, step: bool = False) -> Request:
        """One tool execution of the named tool."""
        amounts = {"tool_calls": 1, TOOL_PREFIX + name: 1}
        if step:
            amounts["steps"] = 1
        if retry:
            amounts["retries"] = 1
        return cls("tool_call", amounts, name, depth=depth, retry=retry)

    @classmethod
    def step(
        cls,
        node: str | None = None,
        *,
        depth: int = 0,
        fanout: int = 0,
        retry: bool = False,
        extra: Mapping[str, int] | None = None,
    ) -> Request:
        """One step (e.g. a LangGraph node execution), with optional extra counters."""
        amounts = {"steps": 1, **(extra or {})}
        if retry:
            amounts["retries"] = 1
        return cls("step", amounts, node, depth=depth, fanout=fanout, retry=retry)


@dataclass(slots=True)
class ScopeUsage:
    """Used and held amounts of one scope, with its limits (a ledger snapshot).

    Example:
        >>> s = ScopeUsage("run:1", used={"cost_usd": 400_000}, held={"cost_usd": 100_000},
        ...                limits={"cost_usd": 1_000_000})
        >>> s.remaining("cost_usd")
        500000
    """

    scope_id: str
    used: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    limits: Mapping[str, int] = field(default_factory=dict)

    def in_use(self, dimension: str) -> int:
        """Used plus held."""
        return self.used.get(dimension, 0) + self.held.get(dimension, 0)

    def remaining(self, dimension: str) -> int | None:
        """Limit minus used minus held (``None`` when unlimited; may be negative after overage)."""
        limit = self.limits.get(dimension)
        return None if limit is None else limit - self.in_use(dimension)

    @property
    def cost_usd(self) -> Decimal:
        """Committed spend in dollars."""
        return micros_to_usd(self.used.get(COST_DIMENSION, 0))

    def as_dict(self) -> dict[str, Any]:
        """Plain data for reports and exceptions."""
        return {
            "scope_id": self.scope_id,
            "used": dict(self.used),
            "held": dict(self.held),
            "limits": dict(self.limits),
        }
