"""One run scope for a team: the client wrapper, workbench and termination on one meter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autogen_agentchat.base import TaskResult, TaskRunner
from autogen_core.models import ChatCompletionClient
from autogen_core.tools import BaseTool, Workbench

from budget_plugins import Budget, BudgetExceeded, Meter
from budget_plugins_autogen._client import BudgetedChatCompletionClient
from budget_plugins_autogen._shared import BudgetExceededError, bind
from budget_plugins_autogen._termination import BudgetTermination
from budget_plugins_autogen._workbench import BudgetedWorkbench


class BudgetScope:
    """A run scope shared by every guarded piece of a team, so that their counts agree.

    Build the pieces from the scope: each model call is metered once by the
    client wrapper, each tool call once by the workbench, and the termination
    condition adds only what they cannot see (turns, messages, unwrapped
    clients) and stops the team when the budget is used up.

    Args:
        budget: The run's :class:`~budget_plugins.Budget`, or an existing
            :class:`~budget_plugins.Meter` (e.g. one on a Redis ledger with
            workflow/tenant ceilings, shared with other runs and frameworks).
        **meter_options: Passed to :class:`~budget_plugins.Meter` when a budget
            is given (``ledger``, ``ceilings``, ``tenant``, ``workflow``,
            ``run_id``, ``hooks``, ``extra_limits={"messages": n}``...).

    Example:
        >>> import asyncio
        >>> from autogen_agentchat.agents import AssistantAgent
        >>> from autogen_agentchat.teams import RoundRobinGroupChat
        >>> from autogen_ext.models.replay import ReplayChatCompletionClient
        >>> scope = BudgetScope(Budget(max_steps=3), hooks=[])
        >>> agent = AssistantAgent("writer", model_client=scope.client(ReplayChatCompletionClient(["draft"] * 9)))
        >>> team = RoundRobinGroupChat([agent], termination_condition=scope.termination())
        >>> result = asyncio.run(scope.run(team, "write"))
        >>> result.stop_reason
        'Budget used up: Reached the steps limit of 3 (used=3) in run scope'
        >>> scope.report()["used"]["model_calls"]
        3
    """

    def __init__(self, budget: Budget | Meter, **meter_options: Any) -> None:
        self.meter = bind(Meter(budget, **meter_options) if isinstance(budget, Budget) else budget)

    def client(
        self,
        client: ChatCompletionClient,
        *,
        fallback: ChatCompletionClient | None = None,
        model: str | None = None,
        fallback_model: str | None = None,
    ) -> BudgetedChatCompletionClient:
        """Wrap a model client (see :class:`BudgetedChatCompletionClient`)."""
        return BudgetedChatCompletionClient(
            client, self.meter, fallback=fallback, model=model, fallback_model=fallback_model
        )

    def workbench(self, tools: Workbench | Sequence[BaseTool[Any, Any]]) -> BudgetedWorkbench:
        """Wrap a workbench or a list of tools (see :class:`BudgetedWorkbench`)."""
        return BudgetedWorkbench(tools, self.meter)

    def termination(self, *, model: str | None = None) -> BudgetTermination:
        """A termination condition on this scope (see :class:`BudgetTermination`)."""
        return BudgetTermination(self.meter, model=model)

    @property
    def exhausted(self) -> BudgetExceeded | None:
        """The refusal that stopped the run (enforce mode), or ``None``."""
        return self.meter.exhausted if self.meter.level == "deny" else None

    def report(self) -> dict[str, Any]:
        """The scope's usage against its limits, as plain data."""
        return self.meter.report()

    def raise_if_exhausted(self) -> None:
        """Raise the scope's refusal as a typed :class:`BudgetExceededError`, if there was one.

        Call it where a team's ``RuntimeError`` arrives: it says whether the
        budget was the cause.

        Raises:
            BudgetExceededError: The budget refused a call in this scope.
        """
        if self.exhausted is not None:
            raise BudgetExceededError.from_exceeded(self.exhausted)

    async def run(self, runner: TaskRunner, task: str | None = None) -> TaskResult:
        """``runner.run(task=task)``, with budget failures re-raised typed.

        Raises:
            BudgetExceededError: The run failed because the budget refused a call
                (e.g. ``on_exhausted="raise"``); the team's ``RuntimeError`` is
                chained as the cause.
        """
        try:
            return await runner.run(task=task)
        except BudgetExceeded:
            raise
        except RuntimeError as exc:
            if self.exhausted is None:
                raise
            raise BudgetExceededError.from_exceeded(self.exhausted) from exc
