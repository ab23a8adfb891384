"""Execution budgets for AutoGen AgentChat 0.7 teams and agents.

Three pieces share one run scope (one :class:`~budget_plugins.Meter`), so their
counts agree and nothing is counted twice:

* :class:`BudgetedChatCompletionClient` reserves every model call before it
  happens, ends the agent's tool loop gracefully (or raises) when the budget
  refuses, and switches to a cheaper client at the degrade threshold;
* :class:`BudgetedWorkbench` refuses tool calls beyond the budget before they run;
* :class:`BudgetTermination` stops the team with a ``StopMessage`` naming the
  limit, and counts turns and messages.

:class:`BudgetScope` builds the three on one meter.

Example:
    >>> from budget_plugins import Budget
    >>> from autogen_agentchat.conditions import TextMentionTermination
    >>> scope = BudgetScope(Budget(max_model_calls=20, max_tool_calls=10, max_seconds=300), hooks=[])
    >>> stop = scope.termination() | TextMentionTermination("TERMINATE")
    >>> type(stop).__name__
    'OrTerminationCondition'
"""

try:
    import autogen_agentchat  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("budget_plugins_autogen needs AutoGen AgentChat: pip install 'budget-plugins[autogen]'") from exc

from budget_plugins_autogen._client import STOP_PREFIX, BudgetedChatCompletionClient
from budget_plugins_autogen._scope import BudgetScope
from budget_plugins_autogen._shared import BudgetExceededError
from budget_plugins_autogen._termination import BudgetTermination
from budget_plugins_autogen._workbench import REFUSED_PREFIX, BudgetedWorkbench

__all__ = [
    "REFUSED_PREFIX",
    "STOP_PREFIX",
    "BudgetExceededError",
    "BudgetScope",
    "BudgetTermination",
    "BudgetedChatCompletionClient",
    "BudgetedWorkbench",
]
