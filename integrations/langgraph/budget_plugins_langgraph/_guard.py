"""``guard()``: a compiled graph with the budget asked before every node."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from langchain_core.runnables.graph import Graph
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel

from budget_plugins import Budget, BudgetConfigError, Ceiling, EventHook, InMemoryLedger, Ledger, Meter
from budget_plugins_langgraph._run import (
    CONFIG_KEY,
    VISITS_PREFIX,
    BudgetRaise,
    GuardRun,
    is_budget_stop,
    stop_message,
)
from budget_plugins_langgraph._wrap import guard_nodes

GuardScope = Literal["run", "thread"]

INTERRUPT = "__interrupt__"  # where invoke() returns interrupts (langgraph.constants.INTERRUPT is private)


class GuardedGraph(Runnable[Any, Any]):
    """A compiled LangGraph graph whose every node asks the budget first.

    Behaves like the graph it wraps: ``invoke``/``ainvoke``/``stream``/``astream``
    (and ``batch``/``abatch``) take the same arguments, and every other attribute
    (``get_state``, ``update_state``, ``checkpointer``...) is the wrapped graph's.
    Build it with :func:`guard`.

    Attributes:
        source: The compiled graph as given.
        graph: The guarded copy of the compiled graph.
        budget: The enforced budget.
        ledger: Where thread scopes and ceilings live (with the default
            in-memory ledger, each run scope gets a ledger of its own).
        last_report: Usage against limits of the latest finished invocation,
            with ``"exhausted"`` set when the budget stopped it.

    Example:
        >>> from typing import TypedDict
        >>> from langgraph.checkpoint.memory import InMemorySaver
        >>> from langgraph.graph import StateGraph
        >>> class State(TypedDict):
        ...     n: int
        >>> builder = StateGraph(State)
        >>> _ = builder.add_node("loop", lambda s: {"n": s["n"] + 1})
        >>> _ = builder.set_entry_point("loop").add_edge("loop", "loop")
        >>> app = guard(builder.compile(checkpointer=InMemorySaver()), Budget(max_steps=3), hooks=[])
        >>> thread = {"configurable": {"thread_id": "1"}}
        >>> app.invoke({"n": 0}, thread)
        {'n': 3}
        >>> app.get_state(thread).next  # the refused step is pending in the checkpoint
        ('loop',)
        >>> guard(app, Budget(max_steps=2), hooks=[]).invoke(None, thread)  # go on, under a new budget
        {'n': 5}
    """

    source: Pregel[Any, Any, Any, Any]

    def __init__(
        self,
        graph: StateGraph[Any, Any, Any, Any] | Pregel[Any, Any, Any, Any] | GuardedGraph,
        budget: Budget,
        *,
        max_node_visits: Mapping[str, int] | None = None,
        ledger: Ledger | None = None,
        ceilings: Sequence[Ceiling] = (),
        tenant: str | None = None,
        workflow: str | None = None,
        scope: GuardScope = "run",
        hooks: Sequence[EventHook] | None = None,
        agent: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(graph, GuardedGraph):  # a new budget for a guarded graph
            graph = graph.source
        compiled = graph.compile() if isinstance(graph, StateGraph) else graph
        if not isinstance(compiled, Pregel):
            raise BudgetConfigError(
                f"guard() takes a StateGraph or a compiled graph, got {type(graph).__name__}", field="graph"
            )
        if scope not in ("run", "thread"):
            raise BudgetConfigError(f"scope must be 'run' or 'thread', got {scope!r}", field="scope")
        self.source = compiled
        self.graph, names = guard_nodes(compiled)
        self.budget = budget
        self.ledger: Ledger = ledger if ledger is not None else InMemoryLedger()
        self.scope = scope
        self.name = compiled.name
        self.last_report: dict[str, Any] | None = None
        self._visits = _visit_limits(max_node_visits or {}, names)
        self._meter_args: dict[str, Any] = {
            "ledger": self.ledger,
            "ceilings": ceilings,
            "tenant": tenant,
            "workflow": workflow,
            "agent": agent,
            "hooks": hooks,
            "clock": clock,
            "extra_limits": {VISITS_PREFIX + node: cap for node, cap in self._visits.items()},
        }
        self._new_meter("validate")  # configuration errors surface here, not on the first run

    # -- one invocation -------------------------------------------------------------

    def _new_meter(self, run_id: str) -> Meter:
        # A run scope is counted in process: the shared ledger does not grow with runs.
        return Meter(self.budget, run_id=run_id, exclusive=self.scope == "run", **self._meter_args)

    def _run_id(self, config: RunnableConfig) -> str:
        if self.scope == "run":
            return str(config.get("run_id") or uuid.uuid4().hex)
        thread = (config.get("configurable") or {}).get("thread_id")
        if thread is None:
            raise BudgetConfigError("scope='thread' needs config={'configurable': {'thread_id': ...}}", field="scope")
        return f"thread:{thread}"

    def _start(self, given: RunnableConfig | None) -> tuple[GuardRun, RunnableConfig]:
        config: RunnableConfig = given or {}
        run = GuardRun(
            self._new_meter(self._run_id(config)),
            end=(self.budget.on_exhausted or "end") == "end",
            visit_caps=self._visits,
        )
        extra: RunnableConfig = {
            "callbacks": [run.handler],
            "configurable": {**(config.get("configurable") or {}), CONFIG_KEY: run},
        }
        explicit = "recursion_limit" in config or "recursion_limit" in (self.graph.config or {})
        if self.budget.max_steps is not None and not explicit:
            # R supersteps run before GraphRecursionError; the step after max_steps is refused by then.
            extra["recursion_limit"] = self.budget.max_steps + 1
        return run, merge_configs(config, extra)

    def _finish(self, run: GuardRun, result: Any) -> Any:
        self.last_report = run.meter.report()
        if run.stop is None or not isinstance(result, dict):
            return result
        out = dict(result)
        kept = [i for i in out.pop(INTERRUPT, ()) if not is_budget_stop(i)]
        if kept:
            out[INTERRUPT] = kept
        channels = self.graph.output_channels
        if "budget" in ([channels] if isinstance(channels, str) else channels):
            out["budget"] = self.last_report
        if isinstance(out.get("messages"), list):
            out["messages"] = [*out["messages"], stop_message(run.stop)]
        return out

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Run the graph; on a budget stop return the partial state (``"end"``) or raise."""
        run, config = self._start(config)
        try:
            result = self.graph.invoke(input, config, **kwargs)
        except BudgetRaise as carried:
            self.last_report = run.meter.report()
            raise carried.error from None
        return self._finish(run, result)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async twin of :meth:`invoke`."""
        run, config = self._start(config)
        try:
            result = await self.graph.ainvoke(input, config, **kwargs)
        except BudgetRaise as carried:
            self.last_report = run.meter.report()
            raise carried.error from None
        return self._finish(run, result)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        """Stream the graph.

        A budget stop arrives as an ``__interrupt__`` whose value has
        ``"reason": "budget_exhausted"`` (``"end"``), or raises ``BudgetExceeded``.
        """
        run, config = self._start(config)
        try:
            yield from self.graph.stream(input, config, **kwargs)
        except BudgetRaise as carried:
            raise carried.error from None
        finally:
            self.last_report = run.meter.report()

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        """Async twin of :meth:`stream`."""
        run, config = self._start(config)
        try:
            async for chunk in self.graph.astream(input, config, **kwargs):
                yield chunk
        except BudgetRaise as carried:
            raise carried.error from None
        finally:
            self.last_report = run.meter.report()

    # -- reports and delegation -------------------------------------------------------

    def report(self, config: RunnableConfig | None = None) -> dict[str, Any] | None:
        """Usage against limits: of ``config``'s thread (thread scope), else of the latest run."""
        if self.scope == "thread" and config is not None:
            return self._new_meter(self._run_id(config)).report()
        return self.last_report

    def get_graph(self, config: RunnableConfig | None = None, *, xray: int | bool = False) -> Graph:
        """The wrapped graph's drawable graph."""
        return self.graph.get_graph(config, xray=xray)

    def get_input_schema(self, config: RunnableConfig | None = None) -> Any:
        """The wrapped graph's input schema."""
        return self.graph.get_input_schema(config)

    def get_output_schema(self, config: RunnableConfig | None = None) -> Any:
        """The wrapped graph's output schema."""
        return self.graph.get_output_schema(config)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "graph":
            raise AttributeError(name)
        return getattr(self.graph, name)


def _visit_limits(caps: Mapping[str, int], names: set[str]) -> dict[str, int]:
    for node, cap in caps.items():
        if node not in names:
            raise BudgetConfigError(
                f"max_node_visits names unknown node {node!r}; the graph's nodes are {sorted(names)}",
                field="max_node_visits",
            )
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise BudgetConfigError(
                f"max_node_visits[{node!r}] must be an integer >= 0, got {cap!r}", field="max_node_visits"
            )
    return dict(caps)


def guard(
    graph: StateGraph[Any, Any, Any, Any] | Pregel[Any, Any, Any, Any] | GuardedGraph,
    budget: Budget,
    *,
    max_node_visits: Mapping[str, int] | None = None,
    ledger: Ledger | None = None,
    ceilings: Sequence[Ceiling] = (),
    tenant: str | None = None,
    workflow: str | None = None,
    scope: GuardScope = "run",
    hooks: Sequence[EventHook] | None = None,
    agent: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> GuardedGraph:
    """Guard a LangGraph graph with a budget checked before every node.

    Args:
        graph: A ``StateGraph`` (compiled without options) or any compiled graph,
            including ``create_react_agent`` and LangChain ``create_agent`` graphs;
            a :class:`GuardedGraph` is guarded anew with this budget.
        budget: The limits. ``on_exhausted`` defaults to ``"end"`` here: the run
            ends normally with its partial state; ``"raise"`` raises
            :class:`~budget_plugins.BudgetExceeded`.
        max_node_visits: Visits allowed per node name, e.g. ``{"critic": 3}``.
        ledger: Where usage lives. By default an in-memory ledger owned by the
            returned graph for thread scopes and ceilings (run scopes are counted in process).
        ceilings: Workflow/tenant limits checked atomically with the run's.
        tenant: Tenant id for ceilings and attribution.
        workflow: Workflow id for ceilings and attribution.
        scope: ``"run"``: counters start from zero on every invocation;
            ``"thread"``: they persist per ``thread_id`` in the ledger.
        hooks: Event receivers (default: stdlib logging).
        agent: Agent name for attribution.
        clock: Monotonic seconds for ``max_seconds`` (injectable for tests).

    Returns:
        A :class:`GuardedGraph` that behaves like the compiled graph.

    Raises:
        BudgetConfigError: A limit or argument is invalid (e.g. an unknown node in
            ``max_node_visits``).

    Example:
        >>> from typing import TypedDict
        >>> from langgraph.graph import StateGraph
        >>> class State(TypedDict):
        ...     n: int
        >>> builder = StateGraph(State)
        >>> _ = builder.add_node("loop", lambda s: {"n": s["n"] + 1})
        >>> _ = builder.set_entry_point("loop").add_edge("loop", "loop")  # never ends by itself
        >>> app = guard(builder, Budget(max_steps=5), hooks=[])
        >>> app.invoke({"n": 0})
        {'n': 5}
        >>> app.last_report["exhausted"]["dimension"]
        'steps'
    """
    return GuardedGraph(
        graph,
        budget,
        max_node_visits=max_node_visits,
        ledger=ledger,
        ceilings=ceilings,
        tenant=tenant,
        workflow=workflow,
        scope=scope,
        hooks=hooks,
        agent=agent,
        clock=clock,
    )
