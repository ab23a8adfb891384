"""One guarded invocation: LangGraph task facts in, core requests out, refusals translated.

A :class:`GuardRun` is created per ``invoke``/``stream`` call and travels to the
nodes in ``config["configurable"]``. It owns no limits: the step request it
builds (depth, fan-out index, retry, node visit) is checked by the
:class:`~budget_plugins.Meter`, and model/tool calls inside nodes are checked by
the core :class:`~budget_plugins.BudgetCallbackHandler` sharing that meter.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphBubbleUp, GraphInterrupt
from langgraph.types import Interrupt

from budget_plugins import BudgetCallbackHandler, BudgetExceeded, Meter, Request

CONFIG_KEY = "__budget_plugins_guard"
"""Where the run travels in ``config["configurable"]`` (``__`` keys stay out of checkpoints)."""

STOP_REASON = "budget_exhausted"
"""``Interrupt.value["reason"]`` of a budget stop."""

VISITS_PREFIX = "node_visits:"
"""Per-node visit counters are named ``node_visits:<node>`` in the run scope."""

_PUSH = "__pregel_push"  # LangGraph's trigger for Send tasks


class BudgetInterrupt(GraphInterrupt):
    """A refused node's way to end the run gracefully (``on_exhausted="end"``).

    LangGraph treats it as an interrupt: sibling tasks finish, the checkpoint
    keeps the refused task pending, and the root graph returns its state.
    """


class BudgetRaise(GraphBubbleUp):
    """Carries a :class:`BudgetExceeded` past node error handlers to the guard (``"raise"``).

    LangGraph routes any exception other than a ``GraphBubbleUp`` from a
    parallel task to the node's error handler, even a ``BaseException``.
    """

    def __init__(self, error: BudgetExceeded) -> None:
        super().__init__(error)
        self.error = error


def stop_value(error: BudgetExceeded) -> dict[str, Any]:
    """The interrupt value of a budget stop: plain data, safe to checkpoint.

    Example:
        >>> stop_value(BudgetExceeded("steps", limit=3, used=3, requested=1))["reason"]
        'budget_exhausted'
    """
    return {"reason": STOP_REASON, **error.as_dict()}


def is_budget_stop(interrupt: object) -> bool:
    """True for an interrupt raised by the guard (a budget stop), False for others.

    Example:
        >>> error = BudgetExceeded("steps", limit=1, used=1, requested=1)
        >>> is_budget_stop(Interrupt(stop_value(error))), is_budget_stop(Interrupt("approve?"))
        (True, False)
    """
    value = getattr(interrupt, "value", None)
    return isinstance(value, Mapping) and value.get("reason") == STOP_REASON


def stop_message(error: BudgetExceeded) -> AIMessage:
    """The message that tells a message-based agent's caller why it stopped.

    Example:
        >>> stop_message(BudgetExceeded("model_calls", limit=2, used=2, requested=1)).content
        'Stopped: the budget is exhausted. Exceeded the model_calls limit of 2 (used=2, requested=1) in run scope.'
    """
    return AIMessage(
        content=f"Stopped: the budget is exhausted. {error.message}.",
        name="budget_guard",
        response_metadata={"budget_exhausted": error.as_dict()},
    )


class GuardRun:
    """The state of one guarded invocation.

    Args:
        meter: The run scope's meter (run or thread scope).
        end: End gracefully on a refusal (else raise).
        visit_caps: Nodes with a visit cap (their visits are counted).

    Example:
        >>> from budget_plugins import Budget
        >>> run = GuardRun(Meter(Budget(max_steps=1), hooks=[]), end=True)
        >>> run.before_node("a", {"configurable": {"checkpoint_ns": "a:1"}})
        >>> try:
        ...     run.before_node("a", {"configurable": {"checkpoint_ns": "a:2"}})
        ... except BudgetInterrupt:
        ...     print(run.stop.dimension)
        steps
    """

    def __init__(self, meter: Meter, *, end: bool, visit_caps: Collection[str] = ()) -> None:
        self.meter = meter
        self.handler = BudgetCallbackHandler(meter=meter, count_steps=False, chain_checks=False)
        self.end = end
        self.stop: BudgetExceeded | None = None
        self._visit_caps = frozenset(visit_caps)
        self._lock = threading.Lock()
        self._tasks: set[str] = set()
        self._fanout: dict[tuple[str, Any], int] = {}

    def step_request(self, node: str, config: RunnableConfig | None) -> Request:
        """Translate a LangGraph task into a step request.

        Depth is the subgraph depth (``checkpoint_ns`` segments); a repeated task
        (RetryPolicy) is a retry; a ``Send`` task gets its index among those
        started in its superstep.
        """
        metadata = (config or {}).get("metadata") or {}
        configurable = (config or {}).get("configurable") or {}
        ns = str(configurable.get("checkpoint_ns") or metadata.get("langgraph_checkpoint_ns") or node)
        fanout = 0
        with self._lock:
            retry = ns in self._tasks
            self._tasks.add(ns)
            if not retry and _PUSH in (metadata.get("langgraph_triggers") or ()):
                key = (ns.rpartition("|")[0], metadata.get("langgraph_step"))
                fanout = self._fanout[key] = self._fanout.get(key, 0) + 1
        extra = {VISITS_PREFIX + node: 1} if node in self._visit_caps and not retry else None
        return Request.step(node, depth=ns.count("|") + 1, fanout=fanout, retry=retry, extra=extra)

    def before_node(self, node: str, config: RunnableConfig | None) -> None:
        """Count the node's execution, or stop the run if the budget refuses it."""
        request = self.step_request(node, config)
        try:
            self.meter.count(request, node=node)
        except BudgetExceeded as exc:
            raise self.stopping(exc, config) from exc

    async def abefore_node(self, node: str, config: RunnableConfig | None) -> None:
        """Async twin of :meth:`before_node`."""
        request = self.step_request(node, config)
        try:
            await self.meter.acount(request, node=node)
        except BudgetExceeded as exc:
            raise self.stopping(exc, config) from exc

    def stopping(self, error: BudgetExceeded, config: RunnableConfig | None) -> GraphBubbleUp:
        """The exception that stops the graph for ``error``: an interrupt or a carrier."""
        with self._lock:
            if self.stop is None:
                self.stop = error
        if not self.end:
            return BudgetRaise(error)
        ns = str(((config or {}).get("configurable") or {}).get("checkpoint_ns") or "")
        return BudgetInterrupt([Interrupt.from_ns(stop_value(error), ns)])


def run_of(config: RunnableConfig | None) -> GuardRun | None:
    """The guarded invocation a node runs in, if any."""
    run = ((config or {}).get("configurable") or {}).get(CONFIG_KEY)
    return run if isinstance(run, GuardRun) else None
