"""What the AutoGen pieces share: one meter per run scope, and what each already counted.

The client wrapper and the workbench wrapper meter model and tool calls *before*
they happen; the termination condition sees the same calls again, after the
turn, in its events. To count each call once per scope, the wrappers leave a
mark here (on the ``RequestUsage`` object a client settled, keyed by identity;
on the tool call ids a workbench handled) naming the scopes that counted it,
and the termination condition skips what its own scope already counted.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any, NamedTuple

from autogen_core.models import RequestUsage
from pydantic import BaseModel, Field

from budget_plugins import Budget, BudgetConfigError, BudgetExceeded, Meter
from budget_plugins._errors import _rebuild_exceeded

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
        error = _rebuild_exceeded(exc.as_dict(), exc.usage, cls)
        assert isinstance(error, cls)
        return error


class CallMark(NamedTuple):
    """What a budgeted client knows about the model call behind one ``RequestUsage``."""

    run_ids: frozenset[str]
    """The run scopes that already counted the call (the client's meter and its parents)."""
    model: str | None
    """The model it was priced as."""
    stop: BudgetExceeded | None = None
    """Set on a graceful-stop result: the refusal it reports."""
    stop_run_id: str | None = None


# id(usage) -> (a weak reference to it, its mark); the reference's callback forgets the mark
_call_marks: dict[int, tuple[weakref.ref[RequestUsage], CallMark]] = {}
_tool_marks: dict[str, frozenset[str]] = {}
_ended: weakref.WeakSet[Meter] = weakref.WeakSet()
_live: weakref.WeakValueDictionary[str, Meter] = weakref.WeakValueDictionary()


def _run_ids(meter: Meter) -> frozenset[str]:
    ids: set[str] = set()
    each: Meter | None = meter
    while each is not None:
        ids.add(each.run_id)
        each = each.parent
    return frozenset(ids)


def mark_call(meter: Meter, usage: RequestUsage, model: str | None, stop: BudgetExceeded | None = None) -> None:
    """A client on ``meter`` metered the model call that produced ``usage`` (or refused it: ``stop``)."""
    key = id(usage)
    entry = _call_marks.get(key)
    ref = entry[0] if entry is not None and entry[0]() is usage else weakref.ref(usage, partial(_forget_call, key))
    _call_marks[key] = (ref, CallMark(_run_ids(meter), model, stop, meter.run_id if stop else None))


def _forget_call(key: int, ref: weakref.ref[RequestUsage]) -> None:
    entry = _call_marks.get(key)
    if entry is not None and entry[0] is ref:
        _call_marks.pop(key, None)


def call_mark(usage: RequestUsage) -> CallMark | None:
    """The mark a budgeted client left on this call's usage, if any."""
    entry = _call_marks.get(id(usage))
    return entry[1] if entry is not None and entry[0]() is usage else None


def mark_tool_call(meter: Meter, call_id: str | None) -> None:
    """A workbench on ``meter`` metered (or refused) the tool call ``call_id``."""
    if not call_id:
        return
    _tool_marks[call_id] = _run_ids(meter)
    while len(_tool_marks) > _MAX_TOOL_MARKS:  # nobody claims them without a termination condition
        del _tool_marks[next(iter(_tool_marks))]


def claim_tool_call(meter: Meter, call_id: str) -> bool:
    """True (once) if a workbench already counted this tool call in ``meter``'s scope."""
    counted = _tool_marks.get(call_id)
    if counted is None or meter.run_id not in counted:
        return False
    del _tool_marks[call_id]
    return True


def set_ended(meter: Meter, ended: bool) -> None:
    """Remember whether a client ended a loop gracefully that no termination has reported yet."""
    if ended:
        _ended.add(meter)
    else:
        _ended.discard(meter)


def is_ended(meter: Meter) -> bool:
    """True after a graceful end that no termination condition has stopped the team for."""
    return meter in _ended


def live_meter(run_id: str | None) -> Meter | None:
    """The meter of ``run_id`` bound in this process, if still alive."""
    return _live.get(run_id) if run_id else None


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
