"""A guard node and router for those who wire the budget into their graph by hand."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END

from budget_plugins import BudgetConfigError, BudgetExceeded, Meter, Request, current_meter
from budget_plugins_langgraph._run import run_of, stop_message

METER_KEY = "budget_meter"
"""``config["configurable"]`` key under which :func:`budget_node` finds a meter."""


def _meter_for(meter: Meter | None, config: RunnableConfig) -> tuple[Meter, bool]:
    """The meter to charge, and whether this node must count its own step."""
    if meter is not None:
        return meter, True
    run = run_of(config)
    if run is not None:  # inside guard(): the guard counted this node already
        return run.meter, False
    found = (config.get("configurable") or {}).get(METER_KEY) or current_meter.get()
    if not isinstance(found, Meter):
        raise BudgetConfigError(
            "budget_node() found no meter: pass one, run the graph inside `with budget(...)`, "
            f"or put it in config['configurable'][{METER_KEY!r}]",
            field="meter",
        )
    return found, True


def budget_node(
    meter: Meter | None = None, *, name: str = "budget", key: str = "budget"
) -> Callable[[Mapping[str, Any], RunnableConfig], dict[str, Any]]:
    """A node that decides whether the loop may go on, and writes the report to ``state[key]``.

    Each pass counts one step (under :func:`guard`, which counts every node,
    it counts nothing itself), then asks whether one more model call would
    fit. Pair it with :func:`budget_route` on a conditional edge: the route
    goes to ``END`` once the budget refused something, so the run ends with
    its state. The state needs a ``key`` field (e.g. ``budget: dict``); for
    message-based state a stop also appends an ``AIMessage`` saying why.
    ``on_exhausted="raise"`` raises :class:`~budget_plugins.BudgetExceeded` instead.

    The meter is ``meter`` if given, else the guard's under :func:`guard`, else
    ``config["configurable"]["budget_meter"]``, else the one of an enclosing
    ``with budget(..., count_steps=False)`` block (whose handler also refuses
    model and tool calls inside the graph; ``count_steps=False`` leaves step
    counting to this node, so ``max_steps`` counts passes through it).

    Example:
        >>> from typing import TypedDict
        >>> from langgraph.graph import StateGraph
        >>> from budget_plugins import Budget, budget
        >>> class State(TypedDict, total=False):
        ...     n: int
        ...     budget: dict
        >>> builder = StateGraph(State)
        >>> _ = builder.add_node("work", lambda s: {"n": s.get("n", 0) + 1})
        >>> _ = builder.add_node("budget", budget_node())
        >>> _ = builder.set_entry_point("budget").add_edge("work", "budget")
        >>> _ = builder.add_conditional_edges("budget", budget_route("work"))
        >>> with budget(Budget(max_steps=3), count_steps=False, hooks=[]):
        ...     state = builder.compile().invoke({"n": 0})
        >>> state["n"], state["budget"]["exhausted"]["dimension"]
        (3, 'steps')
    """

    def node(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        charged, count = _meter_for(meter, config)
        stop = charged.exhausted if charged.budget.mode == "enforce" else None
        if stop is None:
            try:
                if count:
                    charged.before_step(name)
                probe = charged.reserve(Request.model_call())  # room for one more model call?
                charged.release(probe, failed=False)
            except BudgetExceeded as exc:
                if charged.budget.on_exhausted == "raise":
                    raise
                stop = exc
        update: dict[str, Any] = {key: charged.report()}
        if stop is not None and "messages" in state:
            update["messages"] = [stop_message(stop)]
        return update

    node.__name__ = name
    return node


def budget_route(next_node: str, *, key: str = "budget") -> Callable[[Mapping[str, Any]], str]:
    """A router for a conditional edge after :func:`budget_node`: ``END`` once refused.

    Example:
        >>> route = budget_route("agent")
        >>> route({"budget": {"mode": "enforce", "exhausted": None}})
        'agent'
        >>> route({"budget": {"mode": "enforce", "exhausted": {"dimension": "steps"}}})
        '__end__'
    """

    def route(state: Mapping[str, Any]) -> str:
        report = state.get(key) or {}
        return END if report.get("exhausted") and report.get("mode") == "enforce" else next_node

    return route
