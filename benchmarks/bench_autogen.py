"""Measurement 4: AutoGen's budget wrappers vs the bare client and ``MaxMessageTermination``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from benchmarks._harness import Config, Section, alternate, profile

TARGET = 1.03
_ids = itertools.count()


@contextlib.contextmanager
def _quiet_replay_client() -> Iterator[None]:
    # ReplayChatCompletionClient.count_tokens warns on every call about non-string content.
    events = logging.getLogger("autogen_core.events")
    level = events.level
    events.setLevel(logging.ERROR)
    try:
        yield
    finally:
        events.setLevel(level)


def autogen(config: Config) -> Section:
    from autogen_agentchat.agents import AssistantAgent
    from autogen_agentchat.conditions import MaxMessageTermination, TextMentionTermination
    from autogen_agentchat.teams import RoundRobinGroupChat
    from autogen_core import FunctionCall
    from autogen_core.models import CreateResult, ModelInfo, RequestUsage
    from autogen_core.tools import FunctionTool, StaticWorkbench
    from autogen_ext.models.replay import ReplayChatCompletionClient

    from budget_plugins import Budget
    from budget_plugins_autogen import BudgetScope

    tool_calls = config.pick(50, 5)
    info = ModelInfo(vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False)
    usage = RequestUsage(prompt_tokens=100, completion_tokens=20)

    def replies() -> list[CreateResult]:
        calls = [
            CreateResult(
                finish_reason="function_calls",
                content=[FunctionCall(id=f"call-{next(_ids)}", name="search", arguments='{"query": "budgets"}')],
                usage=usage,
                cached=False,
            )
            for _ in range(tool_calls)
        ]
        return [*calls, CreateResult(finish_reason="stop", content="TERMINATE", usage=usage, cached=False)]

    def search(query: str) -> str:
        return "nothing new"

    def build(scope: Any, workbench: bool) -> Any:
        client = ReplayChatCompletionClient(replies(), model_info=info)
        tools: Any = [FunctionTool(search, description="Search the web.")]
        if workbench:  # tools in a plain workbench: AutoGen calls call_tool, not its streaming path
            tools = scope.workbench(tools) if scope else StaticWorkbench(tools)
        agent = AssistantAgent(
            "researcher",
            model_client=scope.client(client, model="gpt-4o-mini") if scope else client,
            workbench=tools if workbench else None,
            tools=None if workbench else tools,
            max_tool_iterations=tool_calls + 1,
        )
        stop = scope.termination() if scope else MaxMessageTermination(1_000_000)
        return RoundRobinGroupChat([agent], termination_condition=stop | TextMentionTermination("TERMINATE"))

    limits = Budget(
        max_model_calls=1_000_000, max_tool_calls=1_000_000, max_total_tokens=10**12, max_cost_usd="1000000"
    )
    seen: dict[str, Any] = {}

    async def bare() -> None:
        await build(None, False).run(task="research budgets")

    async def bare_workbench() -> None:
        await build(None, True).run(task="research budgets")

    async def guarded() -> None:
        scope = BudgetScope(limits, hooks=[])
        result = await build(scope, False).run(task="research budgets")
        seen["used"], seen["stop"] = scope.report()["used"], result.stop_reason

    async def guarded_tools() -> None:
        scope = BudgetScope(limits, hooks=[])
        await build(scope, True).run(task="research budgets")

    loop = asyncio.new_event_loop()

    def sync(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
        return lambda: loop.run_until_complete(fn())

    try:
        with _quiet_replay_client():
            sync(guarded)()  # warm: the price table loads once, not in the profile
            profiled = [] if config.quick else profile(sync(guarded))
            timings = alternate(
                {
                    "bare client + MaxMessageTermination": sync(bare),
                    "BudgetedChatCompletionClient + BudgetTermination": sync(guarded),
                    "bare, tools in a StaticWorkbench": sync(bare_workbench),
                    "... + BudgetedWorkbench": sync(guarded_tools),
                },
                config.rounds,
                warmup=config.warmup,
            )
    finally:
        loop.close()
    base = "bare client + MaxMessageTermination"
    used = seen["used"]
    section = Section(
        "4",
        "AutoGen: BudgetedChatCompletionClient + BudgetTermination vs bare client + MaxMessageTermination",
        f"One `AssistantAgent` in a `RoundRobinGroupChat` replaying {tool_calls} tool-call replies and a final"
        " `TERMINATE` (`ReplayChatCompletionClient`, a trivial `FunctionTool`), rebuilt for every sample; bare:"
        " the replay client and `MaxMessageTermination | TextMentionTermination`; guarded: the same client"
        " wrapped by `BudgetScope.client(..., model='gpt-4o-mini')` (calls, tokens and cost limited, priced) and"
        " `BudgetScope.termination() | TextMentionTermination`. The workbench row compares tools given in a"
        " `BudgetedWorkbench` with the bare agent given the same tools in a `StaticWorkbench` (both take AutoGen's"
        " `call_tool` path; `tools=[...]` takes its streaming path, which costs more)."
        f" A guarded run used model_calls={used.get('model_calls')},"
        f" tool_calls={used.get('tool_calls', 0)} (stop: {seen['stop']!r}).",
    )
    section.rows = [
        timings.row("BudgetedChatCompletionClient + BudgetTermination", base, label="guarded / bare", target=TARGET),
        timings.row(
            "... + BudgetedWorkbench",
            "bare, tools in a StaticWorkbench",
            label="guarded incl. BudgetedWorkbench / bare with a StaticWorkbench",
            target=TARGET,
        ),
    ]
    section.notes.append(
        f"Per model call: bare {timings.median(base) / (tool_calls + 1) * 1e6:.0f} µs, guarded"
        f" {timings.median('BudgetedChatCompletionClient + BudgetTermination') / (tool_calls + 1) * 1e6:.0f} µs."
    )
    if not config.quick and not section.rows[0].met:
        section.notes += ["", *profiled]
    return section
