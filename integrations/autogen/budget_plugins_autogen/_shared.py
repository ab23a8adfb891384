"""What the AutoGen pieces share: one meter per run scope, and what each already counted.

The client wrapper and the workbench wrapper meter model and tool calls *before*
they happen; the termination condition sees the same calls again, after the
turn, in its events. To count each call once, the wrappers leave a mark here
(the ``RequestUsage`` object a client settled, the tool call ids a workbench
handled) and the termination condition skips what is marked on its own meter.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from autogen_core.models import RequestUsage
from pydantic import BaseModel, Field

from budget_plugins import Budget, BudgetConfigError, BudgetExceeded, Meter

_MAX_TOOL_MARKS = 4096


class BudgetExceededError(BudgetExceeded, RuntimeError):
    """A :class:`~budget_plugins.BudgetExceeded` that is also an ordinary ``Exception``.

    AutoGen's runtime only handles ``Exception`` inside a team: a ``BaseException``
    raised from a model client leaves ``team.run`` waiting forever (checked with
    autogen-agentchat 0.7.5). So the AutoGen adapter raises this subclass:
    ``except BudgetExceeded`` still catches it from ``agent.run``, and a team turns
    it into ``RuntimeError(str)`` like any error; :meth:`BudgetScope.raise_if_exhausted`
    gives the typed refusal back.

    Example:
        >>> error = BudgetExceededError.from_exceeded(BudgetExceeded("tool_calls", limit=2, used=2, requested=1))
        >>> isinstance(error, BudgetExceeded), isinstance(error, Exception), error.dimension
        (True, True, 'tool_calls')
    """

    @classmethod
    def from_exceeded(cls, exc: BudgetExceeded) -> BudgetExceededError:
        """The same facts as ``exc``, as an ``Exception``."""
        return cls(
            exc.dimension,
            limit=exc.limit,
            used=exc.used,
            requested=exc.requested,
            scope=exc.scope,
            scope_id=exc.scope_id,
            usage=exc.usage,
            message=exc.message,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (self.as_dict(), self.usage))


def _rebuild_error(data: dict[str, Any], usage: dict[str, Any]) -> BudgetExceededError:
    facts = {k: v for k, v in data.items() if k != "dimension"}
    return BudgetExceededError(data["dimension"], usage=usage, **facts)


@dataclass
class Marks:
    """What the wrappers on one meter already counted, and whether a loop was ended."""

    usage: weakref.WeakValueDictionary[int, RequestUsage] = field(default_factory=weakref.WeakValueDictionary)
    tool_calls: dict[str, None] = field(default_factory=dict)
    ended: bool = False
    """A client ended a tool loop gracefully and no termination has stopped the team since."""


_marks: weakref.WeakKeyDictionary[Meter, Marks] = weakref.WeakKeyDictionary()
_live: weakref.WeakValueDictionary[str, Meter] = weakref.WeakValueDictionary()


def marks(meter: Meter) -> Marks:
    """The marks kept for ``meter``."""
    found = _marks.get(meter)
    if found is None:
        found = _marks[meter] = Marks()
    return found


def _lineage(meter: Meter | None) -> list[Meter]:
    chain: list[Meter] = []
    while meter is not None:
        chain.append(meter)
        meter = meter.parent
    return chain


def mark_usage(meter: Meter, usage: RequestUsage) -> None:
    """A client metered the model call that produced ``usage`` (on this meter and its parents)."""
    for each in _lineage(meter):
        marks(each).usage[id(usage)] = usage


def claim_usage(meter: Meter, usage: RequestUsage) -> bool:
    """True (once) if a client on ``meter`` already metered this call."""
    found = marks(meter).usage.pop(id(usage), None)
    return found is usage


def mark_tool_call(meter: Meter, call_id: str | None) -> None:
    """A workbench metered (or refused) the tool call ``call_id``."""
    if not call_id:
        return
    for each in _lineage(meter):
        calls = marks(each).tool_calls
        calls[call_id] = None
        while len(calls) > _MAX_TOOL_MARKS:  # nobody claims them without a termination condition
            del calls[next(iter(calls))]


def claim_tool_call(meter: Meter, call_id: str) -> bool:
    """True (once) if a workbench on ``meter`` already metered this tool call."""
    calls = marks(meter).tool_calls
    if call_id in calls:
        del calls[call_id]
        return True
    return False


def bind(budget: Budget | Meter) -> Meter:
    """The meter a component charges: the given one, or a new one for a budget."""
    if isinstance(budget, Meter):
        meter = budget
    elif isinstance(budget, Budget):
        meter = Meter(budget)
    else:
        raise BudgetConfigError(
            f"expected a budget_plugins.Budget or Meter, got {type(budget).__name__}",
            field="budget",
        )
    _live[meter.run_id] = meter
    return meter


class ScopeConfig(BaseModel):
    """The declarative part of a run scope: its budget and run id.

    The ledger, ceilings and hooks are not serialized. Loading rejoins the live
    meter with the same ``run_id`` in this process (so a team's client,
    workbench and termination loaded from one config share one scope), or
    starts a new in-memory scope with the same limits.
    """

    budget: dict[str, Any] = Field(default_factory=dict)
    run_id: str
    extra_limits: dict[str, int] = Field(default_factory=dict)


def scope_config(meter: Meter) -> ScopeConfig:
    """Describe ``meter``'s scope."""
    own = meter.budget.counter_limits()
    extra = {key: value for key, value in meter.run_limits.items() if own.get(key) != value}
    return ScopeConfig(
        budget=meter.budget.model_dump(mode="json", exclude_defaults=True),
        run_id=meter.run_id,
        extra_limits=extra,
    )


def meter_from_config(config: ScopeConfig) -> Meter:
    """The live meter of ``config.run_id``, or a new one."""
    budget = Budget(**config.budget)
    live = _live.get(config.run_id)
    if live is None:
        return bind(Meter(budget, run_id=config.run_id, extra_limits=config.extra_limits or None))
    if live.budget != budget:
        raise BudgetConfigError(
            f"run scope {config.run_id!r} is live in this process with another budget; "
            "give the loaded config a new run_id to start a separate scope",
            field="run_id",
        )
    return live
