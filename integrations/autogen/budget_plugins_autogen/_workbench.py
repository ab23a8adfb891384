"""A ``Workbench`` wrapper that refuses tool calls beyond the budget before they run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

from autogen_core import CancellationToken, Component, ComponentModel
from autogen_core.tools import BaseTool, StaticWorkbench, TextResultContent, ToolResult, ToolSchema, Workbench
from pydantic import BaseModel

from budget_plugins import Budget, BudgetExceeded, Meter, Request
from budget_plugins_autogen._shared import ScopeConfig, bind, mark_tool_call, meter_from_config, scope_config

REFUSED_PREFIX = "[budget] Tool call refused: "
"""How the error result of a refused tool call begins."""


class BudgetedWorkbenchConfig(BaseModel):
    """Declarative config of :class:`BudgetedWorkbench`."""

    workbench: ComponentModel
    scope: ScopeConfig


class BudgetedWorkbench(Workbench, Component[BudgetedWorkbenchConfig]):
    """Wrap a workbench (or a list of tools) so that tool calls beyond the budget never run.

    AutoGen turns an exception raised inside a tool into an error result, so
    raising stops nothing. Instead each call is reserved first
    (``max_tool_calls``, ``max_tool_calls_per_tool``, time and the shared
    ceilings); a refused call returns an error ``ToolResult`` that starts with
    :data:`REFUSED_PREFIX` and says which limit refused it, and the refusal
    makes a :class:`BudgetedChatCompletionClient` on the same meter refuse the
    next model call (so the agent's loop ends). Calls that ran are counted
    whether or not they failed. In shadow mode nothing is refused.

    Give it to ``AssistantAgent(workbench=...)`` in place of ``tools=...``.
    Results are forwarded; the streamed inner events of stream tools are not.

    Args:
        workbench: The workbench to wrap, or a list of tools (wrapped in a
            ``StaticWorkbench``).
        budget: A :class:`~budget_plugins.Budget`, or the shared
            :class:`~budget_plugins.Meter`.

    Example:
        >>> import asyncio
        >>> from autogen_core.tools import FunctionTool
        >>> def search(q: str) -> str:
        ...     return "found " + q
        >>> bench = BudgetedWorkbench([FunctionTool(search, "Search.")], Budget(max_tool_calls=1))
        >>> asyncio.run(bench.call_tool("search", {"q": "a"})).to_text()
        'found a'
        >>> print(asyncio.run(bench.call_tool("search", {"q": "b"})).to_text())
        [budget] Tool call refused: Exceeded the tool_calls limit of 1 (used=1, requested=1) in run scope
    """

    component_config_schema = BudgetedWorkbenchConfig
    component_provider_override = "budget_plugins_autogen.BudgetedWorkbench"

    def __init__(self, workbench: Workbench | Sequence[BaseTool[Any, Any]], budget: Budget | Meter) -> None:
        self.inner = workbench if isinstance(workbench, Workbench) else StaticWorkbench(list(workbench))
        self.meter = bind(budget)

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        cancellation_token: CancellationToken | None = None,
        call_id: str | None = None,
    ) -> ToolResult:
        """Reserve one call of ``name``, run it in the wrapped workbench, settle."""
        mark_tool_call(self.meter, call_id)
        try:
            ticket = await self.meter.areserve(Request.tool_call(name), call_id=call_id)
        except BudgetExceeded as exc:
            refusal = TextResultContent(content=REFUSED_PREFIX + exc.message)
            return ToolResult(name=name, result=[refusal], is_error=True)
        try:
            result = await self.inner.call_tool(name, arguments, cancellation_token, call_id)
        except BaseException:
            await self.meter.acommit(ticket, failed=True)
            raise
        await self.meter.acommit(ticket, failed=result.is_error)
        return result

    async def list_tools(self) -> list[ToolSchema]:
        """The wrapped workbench's tools."""
        return await self.inner.list_tools()

    async def start(self) -> None:
        """Start the wrapped workbench."""
        await self.inner.start()

    async def stop(self) -> None:
        """Stop the wrapped workbench."""
        await self.inner.stop()

    async def reset(self) -> None:
        """Reset the wrapped workbench (the budget's usage is kept)."""
        await self.inner.reset()

    async def save_state(self) -> Mapping[str, Any]:
        """The wrapped workbench's state."""
        return await self.inner.save_state()

    async def load_state(self, state: Mapping[str, Any]) -> None:
        """Load the wrapped workbench's state."""
        await self.inner.load_state(state)

    def _to_config(self) -> BudgetedWorkbenchConfig:
        return BudgetedWorkbenchConfig(workbench=self.inner.dump_component(), scope=scope_config(self.meter))

    @classmethod
    def _from_config(cls, config: BudgetedWorkbenchConfig) -> Self:
        return cls(Workbench.load_component(config.workbench), meter_from_config(config.scope))
