"""Execution budgets for LangGraph graphs.

:func:`guard` wraps any graph (a ``StateGraph``, a compiled graph, a prebuilt
ReAct agent, a LangChain ``create_agent`` graph) so that the budget is asked
before every node runs, and model and tool calls inside nodes are refused
before they happen. When the budget runs out the run ends normally with its
partial state (``on_exhausted="end"``, the default here) or raises
:class:`~budget_plugins.BudgetExceeded` (``"raise"``).

Example:
    >>> from typing import TypedDict
    >>> from langgraph.graph import StateGraph
    >>> from budget_plugins import Budget
    >>> class State(TypedDict):
    ...     drafts: int
    >>> builder = StateGraph(State)
    >>> _ = builder.add_node("critic", lambda s: {"drafts": s["drafts"] + 1})
    >>> _ = builder.set_entry_point("critic").add_edge("critic", "critic")
    >>> app = guard(builder, Budget(max_steps=40), max_node_visits={"critic": 3}, hooks=[])
    >>> app.invoke({"drafts": 0})
    {'drafts': 3}
"""

try:
    import langgraph  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("budget_plugins_langgraph needs LangGraph: pip install 'budget-plugins[langgraph]'") from exc

from budget_plugins_langgraph._guard import GuardedGraph, GuardScope, guard
from budget_plugins_langgraph._manual import budget_node, budget_route
from budget_plugins_langgraph._run import STOP_REASON, is_budget_stop

__all__ = [
    "STOP_REASON",
    "GuardScope",
    "GuardedGraph",
    "budget_node",
    "budget_route",
    "guard",
    "is_budget_stop",
]
