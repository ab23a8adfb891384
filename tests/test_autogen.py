"""AutoGen AgentChat adapter: real agents and teams, ``ReplayChatCompletionClient`` as the model."""

from __future__ import annotations

import itertools
import math
import pickle
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import OrTerminationCondition, TaskResult, TerminationCondition
from autogen_agentchat.conditions import MaxMessageTermination, TextMentionTermination
from autogen_agentchat.messages import TextMessage, ToolCallExecutionEvent, ToolCallRequestEvent
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import FunctionCall
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import FunctionTool
from autogen_ext.models.replay import ReplayChatCompletionClient
from genai_prices import Usage, calc_price

from budget_plugins import Budget, BudgetExceeded, Meter
from budget_plugins_autogen import (
    REFUSED_PREFIX,
    STOP_PREFIX,
    BudgetedChatCompletionClient,
    BudgetedWorkbench,
    BudgetExceededError,
    BudgetScope,
    BudgetTermination,
)

INFO = ModelInfo(vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False)
_ids = itertools.count()


def calls_tool(tool: str = "search", prompt: int = 100, completion: int = 20) -> CreateResult:
    """A fresh model reply asking for one tool call."""
    call = FunctionCall(id=f"call-{next(_ids)}", name=tool, arguments='{"query": "budgets"}')
    usage = RequestUsage(prompt_tokens=prompt, completion_tokens=completion)
    return CreateResult(finish_reason="function_calls", content=[call], usage=usage, cached=False)


def says(text: str, prompt: int = 100, completion: int = 20) -> CreateResult:
    """A fresh text reply."""
    usage = RequestUsage(prompt_tokens=prompt, completion_tokens=completion)
    return CreateResult(finish_reason="stop", content=text, usage=usage, cached=False)


def replay(replies: list[CreateResult]) -> ReplayChatCompletionClient:
    return ReplayChatCompletionClient(replies, model_info=INFO)


def counting_tool(runs: list[str], on_run: Callable[[], None] = lambda: None) -> FunctionTool:
    def search(query: str) -> str:
        runs.append(query)
        on_run()
        return f"result {len(runs)}"

    return FunctionTool(search, description="Search the web.")


def tool_agent(scope: BudgetScope, model: ChatCompletionClient, runs: list[str], **kwargs: Any) -> AssistantAgent:
    return AssistantAgent(
        "researcher",
        model_client=scope.client(model),
        workbench=scope.workbench([counting_tool(runs, **kwargs)]),
        max_tool_iterations=100,
    )


def micros(model: str, prompt: int, completion: int) -> int:
    """The price of one call from genai-prices, in micro-dollars rounded up."""
    price = calc_price(Usage(input_tokens=prompt, output_tokens=completion), model_ref=model).total_price
    return math.ceil(Decimal(price) * 1_000_000)


def ping_pong(
    scope: BudgetScope, termination: TerminationCondition, *, rounds: int = 10, model: str | None = None, **kw: Any
) -> tuple[RoundRobinGroupChat, ReplayChatCompletionClient, ReplayChatCompletionClient]:
    """The Critic <-> Synthesizer loop: each keeps answering the other."""
    critic_model = replay([says(f"critique {i}", **kw) for i in range(rounds)])
    synth_model = replay([says(f"revision {i}", **kw) for i in range(rounds)])
    critic = AssistantAgent("critic", model_client=scope.client(critic_model, model=model))
    synthesizer = AssistantAgent("synthesizer", model_client=scope.client(synth_model, model=model))
    team = RoundRobinGroupChat([critic, synthesizer], termination_condition=termination)
    return team, critic_model, synth_model


def agent_texts(result: TaskResult) -> list[str]:
    return [m.content for m in result.messages if isinstance(m, TextMessage) and m.source != "user"]


# -- the tool loop inside one agent ---------------------------------------------------


async def test_tool_loop_stops_at_exactly_n_model_calls_and_n_tool_calls() -> None:
    scope = BudgetScope(Budget(max_model_calls=4, max_tool_calls=4), hooks=[])
    model, runs = replay([calls_tool() for _ in range(30)]), []
    result = await tool_agent(scope, model, runs).run(task="research budgets")
    assert len(model.create_calls) == 4
    assert len(runs) == 4
    final = result.messages[-1]
    assert isinstance(final, TextMessage) and final.content.startswith(STOP_PREFIX)
    assert "model_calls limit of 4" in final.content
    assert scope.report()["used"]["model_calls"] == 4 and scope.report()["used"]["tool_calls"] == 4


async def test_refused_tool_never_runs_and_the_next_model_call_is_ended() -> None:
    scope = BudgetScope(Budget(max_tool_calls=2), hooks=[])
    model, runs = replay([calls_tool() for _ in range(30)]), []
    result = await tool_agent(scope, model, runs).run(task="research budgets")
    assert len(runs) == 2  # the third call was refused before the tool ran
    refused = [r for e in result.messages if isinstance(e, ToolCallExecutionEvent) for r in e.content if r.is_error]
    assert len(refused) == 1 and refused[0].content.startswith(REFUSED_PREFIX)
    assert len(model.create_calls) == 3  # no model call after the refusal
    assert scope.exhausted is not None and scope.exhausted.dimension == "tool_calls"


async def test_workbench_counts_a_failing_tool_and_per_tool_caps() -> None:
    def broken(query: str) -> str:
        raise ValueError("down")

    bench = BudgetedWorkbench([FunctionTool(broken, "Broken.")], Budget(max_tool_calls_per_tool={"broken": 1}))
    first = await bench.call_tool("broken", {"query": "a"})
    second = await bench.call_tool("broken", {"query": "b"})
    assert first.is_error and "down" in first.to_text()
    assert second.is_error and "tool_calls:broken limit of 1" in second.to_text()
    assert bench.meter.usage().used["tool_calls"] == 1


# -- teams: the Critic <-> Synthesizer loop -----------------------------------------------


async def test_ping_pong_team_stopped_by_cost_priced_from_genai_prices() -> None:
    model, out = "gpt-4o-mini", 1000
    per_call = micros(model, 5, out)  # what each reply really costs
    worst_output = micros(model, 0, out)  # the least any reservation holds
    limit = 5 * per_call + worst_output // 2  # five calls fit; a sixth cannot be reserved
    budget = Budget(max_cost_usd=Decimal(limit) / 1_000_000, default_max_output_tokens=out)
    scope = BudgetScope(budget, hooks=[])
    team, critic, synth = ping_pong(scope, scope.termination(), model=model, prompt=5, completion=out)
    result = await team.run(task="Draft a plan")
    assert len(critic.create_calls) + len(synth.create_calls) == 5
    assert scope.report()["used"]["cost_usd"] == 5 * per_call
    assert result.stop_reason is not None and "cost_usd" in result.stop_reason
    assert agent_texts(result)[-1].startswith(STOP_PREFIX)  # the partial transcript ends with the stop
    exhausted = scope.exhausted
    assert exhausted is not None and exhausted.used + exhausted.requested > exhausted.limit


async def test_ping_pong_team_stopped_by_turns() -> None:
    scope = BudgetScope(Budget(max_steps=4), hooks=[])
    team, critic, synth = ping_pong(scope, scope.termination())
    result = await team.run(task="Draft a plan")
    assert agent_texts(result) == ["critique 0", "revision 0", "critique 1", "revision 1"]
    assert result.stop_reason == "Budget used up: Reached the steps limit of 4 (used=4) in run scope"
    assert len(critic.create_calls) + len(synth.create_calls) == 4


async def test_composes_with_text_mention_either_one_stops() -> None:
    scope = BudgetScope(Budget(max_steps=10), hooks=[])
    critic_model = replay([says("needs work"), says("APPROVED")])
    synth_model = replay([says("revision")])
    team = RoundRobinGroupChat(
        [
            AssistantAgent("critic", model_client=scope.client(critic_model)),
            AssistantAgent("synthesizer", model_client=scope.client(synth_model)),
        ],
        termination_condition=scope.termination() | TextMentionTermination("APPROVED"),
    )
    result = await team.run(task="Draft a plan")
    assert result.stop_reason == "Text 'APPROVED' mentioned"
    assert scope.report()["used"]["steps"] == 3

    tight = BudgetScope(Budget(max_steps=2), hooks=[])
    team, _, _ = ping_pong(tight, TextMentionTermination("APPROVED") | tight.termination())
    result = await team.run(task="Draft a plan")
    assert result.stop_reason is not None and result.stop_reason.startswith("Budget used up")
    assert len(agent_texts(result)) == 2


async def test_and_composition_waits_for_both() -> None:
    scope = BudgetScope(Budget(max_steps=2), hooks=[])
    critic_model = replay([says("a"), says("b"), says("APPROVED")])
    synth_model = replay([says("c"), says("d")])
    team = RoundRobinGroupChat(
        [
            AssistantAgent("critic", model_client=critic_model),
            AssistantAgent("synthesizer", model_client=synth_model),
        ],
        termination_condition=scope.termination() & TextMentionTermination("APPROVED"),
    )
    result = await team.run(task="Draft a plan")
    assert agent_texts(result)[-1] == "APPROVED"  # the budget fired at turn 2, the text at turn 5
    assert result.stop_reason is not None and "steps limit of 2" in result.stop_reason


async def test_run_stream_with_a_streaming_model_yields_the_stop() -> None:
    scope = BudgetScope(Budget(max_model_calls=3), hooks=[])
    critic_model = replay([says(f"critique {i}") for i in range(5)])
    synth_model = replay([says(f"revision {i}") for i in range(5)])
    team = RoundRobinGroupChat(
        [
            AssistantAgent("critic", model_client=scope.client(critic_model), model_client_stream=True),
            AssistantAgent("synthesizer", model_client=scope.client(synth_model), model_client_stream=True),
        ],
        termination_condition=scope.termination(),
    )
    streamed = [item async for item in team.run_stream(task="Draft a plan")]
    final = streamed[-1]
    assert isinstance(final, TaskResult)
    assert final.stop_reason == "Budget used up: Reached the model_calls limit of 3 (used=3) in run scope"
    assert agent_texts(final) == ["critique 0", "revision 0", "critique 1"]
    assert scope.report()["used"]["output_tokens"] == 3 * 20  # settled from the streamed results


async def test_a_streaming_tool_loop_ends_with_the_stop_result() -> None:
    scope = BudgetScope(Budget(max_model_calls=2), hooks=[])
    model, runs = replay([calls_tool() for _ in range(10)]), []
    agent = AssistantAgent(
        "researcher",
        model_client=scope.client(model),
        workbench=scope.workbench([counting_tool(runs)]),
        max_tool_iterations=100,
        model_client_stream=True,
    )
    streamed = [item async for item in agent.run_stream(task="research budgets")]
    final = streamed[-1]
    assert isinstance(final, TaskResult)
    last = final.messages[-1]
    assert isinstance(last, TextMessage) and last.content.startswith(STOP_PREFIX)
    requests = [m for m in final.messages if isinstance(m, ToolCallRequestEvent)]
    assert len(requests) == 2 and len(runs) == 2  # (the replay client records only non-streamed calls)
    usage = scope.meter.usage()
    assert usage.used["model_calls"] == 2 and usage.used["output_tokens"] == 40 and usage.held == {}


async def estimated_input(client: BudgetedChatCompletionClient, prompt: list[LLMMessage], tools: Any = ()) -> int:
    """The input tokens the client held for this prompt (its shadow-mode refusal reports them)."""
    await client.create(prompt, tools=tools)
    assert client.meter.exhausted is not None and client.meter.exhausted.dimension == "input_tokens"
    return int(client.meter.exhausted.requested)


def estimating_client() -> BudgetedChatCompletionClient:
    replies = [says("ok", prompt=0, completion=0) for _ in range(30)]
    return BudgetedChatCompletionClient(replay(replies), Meter(Budget(max_input_tokens=1, mode="shadow"), hooks=[]))


async def test_each_call_holds_an_estimate_of_the_whole_prompt_however_the_history_changed() -> None:
    researcher, critic = SystemMessage(content="You research."), SystemMessage(content="You critique.")
    task = UserMessage(content="research budgets", source="user")
    call = AssistantMessage(
        content=[FunctionCall(id="1", name="search", arguments='{"query": "budgets"}')], source="researcher"
    )
    result = FunctionExecutionResultMessage(
        content=[FunctionExecutionResult(content="found", call_id="1", name="search")]
    )
    prompts = [
        [researcher, task],
        [researcher, task, call, result],  # the tool loop adds to the history
        [critic, task],  # another agent sharing the client
        [researcher, task, call, result, AssistantMessage(content="done", source="researcher")],
        [researcher, result],  # a buffered context dropped messages
        [researcher, task.model_copy(update={"content": "research budgets in depth"}), call, result],  # rewritten
        [researcher, task.model_copy(), call],  # an equal copy, and a shorter history
    ]

    def fetch(url: str) -> str:
        return url

    search = counting_tool([])
    client = estimating_client()
    for prompt in prompts:
        for with_tools in ((), [search], [search, FunctionTool(fetch, description="Fetch a page.")]):
            assert await estimated_input(client, prompt, with_tools) == await estimated_input(
                estimating_client(), prompt, with_tools
            )
    # about 4 characters a token over the texts joined by newlines, rounded up
    assert await estimated_input(estimating_client(), [researcher, task]) == math.ceil(
        len("You research.\nresearch budgets") / 4
    )


# -- reset, rerun, serialization ------------------------------------------------------------


async def test_team_reset_keeps_the_usage_and_a_used_up_budget_stops_the_rerun() -> None:
    scope = BudgetScope(Budget(max_steps=4), hooks=[])
    critic_model = replay([says("needs work"), says("APPROVED"), says("x"), says("y")])
    synth_model = replay([says("revision"), says("more"), says("z")])
    team = RoundRobinGroupChat(
        [
            AssistantAgent("critic", model_client=scope.client(critic_model)),
            AssistantAgent("synthesizer", model_client=scope.client(synth_model)),
        ],
        termination_condition=scope.termination() | TextMentionTermination("APPROVED"),
    )
    first = await team.run(task="Draft a plan")
    assert first.stop_reason == "Text 'APPROVED' mentioned"  # 3 turns used
    await team.reset()
    second = await team.run(task="Draft it again")
    assert len(agent_texts(second)) == 1  # only one turn was left: the reset did not clear the usage
    assert second.stop_reason is not None and "steps limit of 4" in second.stop_reason
    calls = len(critic_model.create_calls) + len(synth_model.create_calls)
    third = await team.run(task="Once more")
    assert agent_texts(third) == [] and third.stop_reason is not None and "steps" in third.stop_reason
    assert len(critic_model.create_calls) + len(synth_model.create_calls) == calls


async def test_serialization_round_trip_inside_an_or_condition() -> None:
    scope = BudgetScope(Budget(max_steps=3, max_cost_usd="2.50", on_exhausted="end"), hooks=[])
    condition = scope.termination(model="gpt-4o-mini") | TextMentionTermination("APPROVED")
    dumped = condition.dump_component()
    assert dumped.provider == "autogen_agentchat.base.OrTerminationCondition"
    inner = dumped.config["conditions"][0]
    assert inner["provider"] == "budget_plugins_autogen.BudgetTermination"
    assert inner["config"]["scope"]["budget"]["max_cost_usd"] == "2.50"

    loaded = TerminationCondition.load_component(dumped.model_dump(mode="json"))
    assert isinstance(loaded, OrTerminationCondition)
    budget_condition = loaded.dump_component().config["conditions"][0]
    assert budget_condition == inner
    team, _, _ = ping_pong(scope, loaded, model="gpt-4o-mini")
    result = await team.run(task="Draft a plan")
    assert result.stop_reason is not None and "steps limit of 3" in result.stop_reason

    elsewhere = dumped.model_dump(mode="json")
    elsewhere["config"]["conditions"][0]["config"]["scope"]["run_id"] = "another-run"
    fresh = TerminationCondition.load_component(elsewhere).dump_component().config["conditions"][0]
    assert fresh["config"]["scope"]["budget"] == inner["config"]["scope"]["budget"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # AutoGen warns when it loads a FunctionTool from source
async def test_a_loaded_agent_config_shares_one_scope() -> None:
    scope = BudgetScope(Budget(max_model_calls=2), hooks=[])
    model, runs = replay([calls_tool() for _ in range(5)]), []
    agent = tool_agent(scope, model, runs)
    loaded = AssistantAgent.load_component(agent.dump_component())
    client = loaded._model_client
    bench = loaded._workbench[0]
    assert isinstance(client, BudgetedChatCompletionClient) and isinstance(bench, BudgetedWorkbench)
    assert client.meter is bench.meter is scope.meter
    assert BudgetedChatCompletionClient.load_component(client.dump_component()).meter is scope.meter


# -- time, degrade, shadow, raise -------------------------------------------------------------


async def test_max_seconds_stops_the_loop_and_the_team() -> None:
    now = [0.0]

    def tick() -> None:
        now[0] += 10.0  # every tool call takes ten (fake) seconds

    scope = BudgetScope(Budget(max_seconds=25), hooks=[], clock=lambda: now[0])
    model, runs = replay([calls_tool() for _ in range(20)]), []
    team = RoundRobinGroupChat([tool_agent(scope, model, runs, on_run=tick)], termination_condition=scope.termination())
    result = await team.run(task="research budgets")
    assert len(model.create_calls) == 3 and len(runs) == 3  # the fourth call came at 30 s
    assert result.stop_reason is not None and "seconds limit of 25.000s" in result.stop_reason


async def test_max_seconds_on_the_real_clock() -> None:
    scope = BudgetScope(Budget(max_seconds=0.05), hooks=[])
    model, runs = replay([calls_tool() for _ in range(200)]), []

    def slow() -> None:
        import time

        time.sleep(0.01)

    team = RoundRobinGroupChat([tool_agent(scope, model, runs, on_run=slow)], termination_condition=scope.termination())
    result = await team.run(task="research budgets")
    assert result.stop_reason is not None and "seconds" in result.stop_reason
    assert len(model.create_calls) < 200


async def test_degrade_switches_to_the_cheaper_client_one_tier_down() -> None:
    budget = Budget(max_model_calls=10, max_cost_usd="5", warn_at=0.3, degrade_at=0.5)
    scope = BudgetScope(budget, hooks=[])
    strong = replay([calls_tool() for _ in range(10)])
    cheap = replay([calls_tool() for _ in range(10)])
    cheapest = replay([calls_tool() for _ in range(10)])
    fallback = BudgetedChatCompletionClient(cheap, scope.meter, fallback=cheapest, model="gpt-4o-mini")
    client = scope.client(strong, fallback=fallback, model="gpt-4o")
    assert client.fallback is cheap and client.fallback_model == "gpt-4o-mini"  # never two tiers down
    runs: list[str] = []
    agent = AssistantAgent(
        "researcher",
        model_client=client,
        workbench=scope.workbench([counting_tool(runs)]),
        max_tool_iterations=100,
    )
    await agent.run(task="research budgets")
    assert len(strong.create_calls) == 5  # the fifth reservation reached 50%
    assert len(cheap.create_calls) == 5 and cheapest.create_calls == []
    expected = 5 * micros("gpt-4o", 100, 20) + 5 * micros("gpt-4o-mini", 100, 20)
    assert scope.report()["used"]["cost_usd"] == expected


async def test_shadow_mode_counts_would_deny_without_stopping() -> None:
    scope = BudgetScope(Budget(max_model_calls=2, max_tool_calls=1, mode="shadow"), hooks=[])
    model, runs = replay([*[calls_tool() for _ in range(4)], says("done")]), []
    team = RoundRobinGroupChat([tool_agent(scope, model, runs)], termination_condition=scope.termination(), max_turns=1)
    result = await team.run(task="research budgets")
    assert len(model.create_calls) == 5 and len(runs) == 4
    assert agent_texts(result)[-1] == "done"
    assert result.stop_reason == "Maximum number of turns 1 reached."
    assert scope.meter.shadow_denials == {"model_calls": 3, "tool_calls": 3}
    assert scope.exhausted is None


async def test_raise_mode_is_typed_from_an_agent_and_recoverable_from_a_team() -> None:
    scope = BudgetScope(Budget(max_model_calls=2, on_exhausted="raise"), hooks=[])
    runs: list[str] = []
    with pytest.raises(BudgetExceeded) as caught:
        await tool_agent(scope, replay([calls_tool() for _ in range(5)]), runs).run(task="go")
    assert isinstance(caught.value, BudgetExceededError) and caught.value.dimension == "model_calls"
    copy = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(copy, BudgetExceededError) and copy.as_dict() == caught.value.as_dict()

    team_scope = BudgetScope(Budget(max_model_calls=2, on_exhausted="raise"), hooks=[])
    team, _, _ = ping_pong(team_scope, MaxMessageTermination(50))
    with pytest.raises(RuntimeError) as plain:  # what AutoGen makes of any error inside a team
        await team.run(task="Draft a plan")
    assert "model_calls" in str(plain.value)
    await team.reset()
    with pytest.raises(BudgetExceeded) as typed:
        await team_scope.run(team, "Draft a plan")
    assert typed.value.dimension == "model_calls" and isinstance(typed.value.__cause__, RuntimeError)
    with pytest.raises(BudgetExceededError):
        team_scope.raise_if_exhausted()


async def test_without_a_budget_termination_the_second_refusal_raises() -> None:
    scope = BudgetScope(Budget(max_model_calls=2), hooks=[])
    team, critic, synth = ping_pong(scope, MaxMessageTermination(50))
    with pytest.raises(RuntimeError, match="model_calls"):
        await team.run(task="Draft a plan")  # no endless loop of graceful stops
    assert len(critic.create_calls) + len(synth.create_calls) == 2


# -- one scope, nothing counted twice ------------------------------------------------------------


async def test_termination_alone_counts_calls_from_the_events() -> None:
    meter = Meter(Budget(max_tool_calls=100), hooks=[])
    model, runs = replay([calls_tool(), calls_tool(), says("done")]), []
    agent = AssistantAgent("a", model_client=model, tools=[counting_tool(runs)], max_tool_iterations=10)
    team = RoundRobinGroupChat([agent], termination_condition=BudgetTermination(meter), max_turns=1)
    await team.run(task="research budgets")
    used = meter.usage().used
    assert used["model_calls"] == 3 and used["tool_calls"] == 2 and used["steps"] == 1
    assert used["output_tokens"] == 60


async def test_wrappers_and_termination_on_one_meter_count_each_call_once() -> None:
    scope = BudgetScope(Budget(max_tool_calls=100), hooks=[])
    model, runs = replay([calls_tool(), calls_tool(), says("done")]), []
    team = RoundRobinGroupChat([tool_agent(scope, model, runs)], termination_condition=scope.termination(), max_turns=1)
    await team.run(task="research budgets")
    used = scope.report()["used"]
    assert used["model_calls"] == len(model.create_calls) == 3
    assert used["tool_calls"] == len(runs) == 2
    assert used["output_tokens"] == 60


async def test_a_failed_model_call_counts_as_an_attempt_and_gives_its_tokens_back() -> None:
    scope = BudgetScope(Budget(max_model_calls=5), hooks=[])
    client = scope.client(replay([]))  # the replay client raises: no replies left
    with pytest.raises(ValueError, match="No more mock responses"):
        await AssistantAgent("a", model_client=client).run(task="hi")
    usage = scope.meter.usage()
    assert usage.used == {"model_calls": 1} and usage.held == {}


async def test_separately_built_pieces_still_stop_gracefully_and_price_what_they_see() -> None:
    budget = Budget(max_model_calls=3, max_cost_usd="1.00")  # the example: one budget, two scopes
    inner = replay([says(f"turn {i}") for i in range(10)])
    client = BudgetedChatCompletionClient(inner, budget, model="gpt-4o-mini")
    termination = BudgetTermination(budget)
    team = RoundRobinGroupChat(
        [AssistantAgent("critic", model_client=client), AssistantAgent("synthesizer", model_client=client)],
        termination_condition=termination | TextMentionTermination("TERMINATE"),
    )
    result = await team.run(task="Draft a plan")
    assert len(inner.create_calls) == 3
    assert result.stop_reason is not None and "model_calls limit of 3" in result.stop_reason
    seen = termination.meter.usage().used  # counted from the events, priced as the client priced them
    assert seen["model_calls"] == 3 and seen["cost_usd"] == 3 * micros("gpt-4o-mini", 100, 20)
    again = await team.run(task="Go on")
    assert again.stop_reason is not None and "model_calls" in again.stop_reason
    assert len(inner.create_calls) == 3
