"""The pre-node check: every node's runnable wrapped so the budget is asked first.

LangGraph has no pre-node hook, so the compiled graph is copied with each
node's ``bound`` replaced by a :class:`GuardedNode` (``PregelNode.copy``), and
subgraphs added as nodes are guarded the same way, recursively.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.constants import START
from langgraph.pregel import Pregel
from langgraph.pregel._read import DEFAULT_BOUND  # a node that runs no code of its own

from budget_plugins import BudgetExceeded
from budget_plugins_langgraph._run import run_of


class GuardedNode(Runnable[Any, Any]):
    """A node's runnable with the budget check in front and refusals translated.

    Outside a guarded invocation (no run in the config) it behaves exactly as
    the runnable it wraps.

    Example:
        >>> from langchain_core.runnables import RunnableLambda
        >>> GuardedNode("double", RunnableLambda(lambda x: 2 * x)).invoke(21)
        42
    """

    def __init__(self, name: str, bound: Runnable[Any, Any]) -> None:
        self.name = self.node = name
        self.bound = bound

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Check, then run the node."""
        run = run_of(config)
        if run is None:
            return self.bound.invoke(input, config, **kwargs)
        run.before_node(self.node, config)
        try:
            return self.bound.invoke(input, config, **kwargs)
        except BudgetExceeded as exc:
            raise run.stopping(exc, config) from exc

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async twin of :meth:`invoke`."""
        run = run_of(config)
        if run is None:
            return await self.bound.ainvoke(input, config, **kwargs)
        await run.abefore_node(self.node, config)
        try:
            return await self.bound.ainvoke(input, config, **kwargs)
        except BudgetExceeded as exc:
            raise run.stopping(exc, config) from exc

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        """Check, then stream the node (LangGraph streams nodes for some stream modes)."""
        run = run_of(config)
        if run is None:
            yield from self.bound.stream(input, config, **kwargs)
            return
        run.before_node(self.node, config)
        try:
            yield from self.bound.stream(input, config, **kwargs)
        except BudgetExceeded as exc:
            raise run.stopping(exc, config) from exc

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        """Async twin of :meth:`stream`."""
        run = run_of(config)
        if run is None:
            async for chunk in self.bound.astream(input, config, **kwargs):
                yield chunk
            return
        await run.abefore_node(self.node, config)
        try:
            async for chunk in self.bound.astream(input, config, **kwargs):
                yield chunk
        except BudgetExceeded as exc:
            raise run.stopping(exc, config) from exc


def guard_nodes(graph: Pregel[Any, Any, Any, Any]) -> tuple[Pregel[Any, Any, Any, Any], set[str]]:
    """A copy of ``graph`` with every node (and subgraph node) guarded, and all node names.

    Example:
        >>> from typing import TypedDict
        >>> from langgraph.graph import StateGraph
        >>> class State(TypedDict):
        ...     n: int
        >>> builder = StateGraph(State)
        >>> _ = builder.add_node("inc", lambda s: {"n": s["n"] + 1}).set_entry_point("inc")
        >>> guarded, names = guard_nodes(builder.compile())
        >>> type(guarded.nodes["inc"].bound).__name__, sorted(names)
        ('GuardedNode', ['inc'])
    """
    nodes: dict[str, Any] = {}
    names: set[str] = set()
    for name, node in graph.nodes.items():
        bound = node.bound
        if name == START or bound is DEFAULT_BOUND or isinstance(bound, GuardedNode):
            continue
        names.add(name)
        update: dict[str, Any] = {}
        if isinstance(bound, Pregel):
            bound, inner = guard_nodes(bound)
            names |= inner
            update["subgraphs"] = [bound]
        nodes[name] = node.copy({**update, "bound": GuardedNode(name, bound)})
    return graph.copy({"nodes": {**graph.nodes, **nodes}}), names
