"""A serializable ``TerminationCondition`` that stops a team when its budget is used up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

from autogen_agentchat.base import TerminatedException, TerminationCondition
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, StopMessage, ToolCallExecutionEvent
from autogen_core import Component
from pydantic import BaseModel

from budget_plugins import Budget, BudgetExceeded, Meter, Request, TokenUsage
from budget_plugins._meter import REACHED_DIMENSIONS
from budget_plugins_autogen._shared import (
    ScopeConfig,
    bind,
    call_mark,
    claim_tool_call,
    live_meter,
    meter_from_config,
    scope_config,
    set_ended,
)

TASK_SOURCE = "user"
"""Messages from this source are the task, not an agent's turn."""


class BudgetTerminationConfig(BaseModel):
    """Declarative config of :class:`BudgetTermination`."""

    scope: ScopeConfig
    model: str | None = None


class BudgetTermination(TerminationCondition, Component[BudgetTerminationConfig]):
    """Stop a team when its budget is used up, with a ``StopMessage`` that names the limit.

    The group chat manager asks a termination condition once per finished agent
    turn (and once for the task). Each time, this one counts into its meter:

    * a **turn** (a ``steps`` count, capped by ``Budget.max_steps``) when the
      messages come from an agent rather than the task (source ``"user"``);
    * **messages**: every chat message (a ``messages`` counter, capped only if
      the meter was built with ``extra_limits={"messages": n}``);
    * **model calls, tokens and cost** from each event's ``models_usage``, and
      **tool calls** from ``ToolCallExecutionEvent`` results, *unless* a
      :class:`BudgetedChatCompletionClient` or :class:`BudgetedWorkbench` on the
      same meter already metered them (nothing is counted twice). Unmetered
      usage is priced as ``model``.

    It then stops the team when a call was refused in the scope (enforce mode),
    when the time limit has passed, or when a limit every further turn needs
    (turns, model calls, tokens, cost, and ``messages`` if capped) is used up.
    Alone it can only stop *after* the turn that used a limit up; with the
    client wrapper on the same meter, calls beyond the budget never happen. In
    shadow mode it counts but never stops.

    ``reset()``, which the manager calls after any condition fires and
    ``team.reset()`` calls too, clears only this condition's ``terminated``
    flag: the scope's usage is kept, so a reset team whose budget is used up
    stops again at the start of its next run. Start a new scope (a new meter)
    for a new budget.

    Serializes with ``dump_component()`` (budget, run id and ``model``); loading
    rejoins the live meter with that run id in this process.

    Args:
        budget: A :class:`~budget_plugins.Budget`, or the :class:`~budget_plugins.Meter`
            shared with the client and workbench wrappers.
        model: Model name to price usage no client wrapper metered.

    Example:
        >>> import asyncio
        >>> from autogen_agentchat.messages import TextMessage
        >>> done = BudgetTermination(Budget(max_steps=2))
        >>> turn = [TextMessage(content="hi", source="critic")]
        >>> asyncio.run(done(turn)) is None
        True
        >>> print(asyncio.run(done(turn)).content)
        Budget used up: Reached the steps limit of 2 (used=2) in run scope
    """

    component_config_schema = BudgetTerminationConfig
    component_provider_override = "budget_plugins_autogen.BudgetTermination"

    def __init__(self, budget: Budget | Meter, *, model: str | None = None) -> None:
        self.meter = bind(budget)
        self.model = model
        self._terminated = False
        self.stopped: BudgetExceeded | None = None
        """Why the condition last fired (kept across ``reset()``)."""

    @property
    def terminated(self) -> bool:
        """True from the moment the condition fired until ``reset()``."""
        return self._terminated

    async def __call__(self, messages: Sequence[BaseAgentEvent | BaseChatMessage]) -> StopMessage | None:
        """Count one turn's messages, then stop if the budget is used up."""
        if self._terminated:
            raise TerminatedException("Termination condition has already been reached")
        graceful, ended = await self._count(messages)
        meter = self.meter
        if meter.budget.mode == "shadow":
            return None
        dimensions = [*REACHED_DIMENSIONS, *(["messages"] if "messages" in meter.run_limits else [])]
        why = meter.exhausted if meter.level == "deny" else None
        why = why or graceful or await meter.areached(dimensions)
        if why is None:
            return None
        self._terminated = True
        self.stopped = why
        for each in [meter, *ended]:  # the graceful ends reached the team: a later refusal may end gracefully again
            set_ended(each, False)
        return StopMessage(content=f"Budget used up: {why.message}", source="BudgetTermination")

    async def _count(
        self, messages: Sequence[BaseAgentEvent | BaseChatMessage]
    ) -> tuple[BudgetExceeded | None, list[Meter]]:
        """Record what no wrapper on this scope counted; return a client's graceful stop seen, and its meters."""
        meter = self.meter
        stop: BudgetExceeded | None = None
        ended: list[Meter] = []
        chat = [m for m in messages if isinstance(m, BaseChatMessage)]
        turn = any(m.source != TASK_SOURCE for m in chat)
        extra = {"messages": len(chat)} if chat else {}
        if turn:
            await meter.arecord(Request.step(chat[-1].source, extra=extra))
        elif extra:
            await meter.arecord(Request("step", extra))
        for message in messages:
            usage = message.models_usage
            mark = call_mark(usage) if usage is not None else None
            if mark is not None and mark.stop is not None:  # a client's graceful stop, not a model call
                stop = stop or mark.stop
                ended += [m for m in [live_meter(mark.stop_run_id)] if m is not None]
            elif usage is not None and (mark is None or meter.run_id not in mark.run_ids):
                model = self.model or (mark.model if mark else None)
                tokens = TokenUsage(usage.prompt_tokens, usage.completion_tokens)
                await meter.arecord(Request.model_call(model=model), tokens, model=model)
            if isinstance(message, ToolCallExecutionEvent):
                for result in message.content:
                    if not claim_tool_call(meter, result.call_id):
                        await meter.arecord(Request.tool_call(result.name), failed=bool(result.is_error))
        return stop, ended

    async def reset(self) -> None:
        """Clear the ``terminated`` flag only; the scope's usage is kept (see the class docs)."""
        self._terminated = False

    def _to_config(self) -> BudgetTerminationConfig:
        return BudgetTerminationConfig(scope=scope_config(self.meter), model=self.model)

    @classmethod
    def _from_config(cls, config: BudgetTerminationConfig) -> Self:
        return cls(meter_from_config(config.scope), model=config.model)
