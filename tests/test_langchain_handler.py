"""BudgetCallbackHandler against real LangChain runnables and agent loops (fake models, no mocks)."""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig, RunnableLambda

from budget_plugins import (
    Budget,
    BudgetCallbackHandler,
    BudgetExceeded,
    CollectingHook,
    Meter,
    UnpricedModelError,
    budget,
)
from budget_plugins._langchain import _estimate_messages
from budget_plugins.testing import ScriptedChatModel, Turn, counting_tool, runaway_model, scripted_model

GO = {"messages": [("user", "go")]}


def guard(**limits: Any) -> tuple[BudgetCallbackHandler, CollectingHook]:
    hook = CollectingHook()
    return BudgetCallbackHandler(Budget(**limits), hooks=[hook]), hook


def endless_text(model_name: str = "gpt-4o-mini", **turn: Any) -> ScriptedChatModel:
    reply = Turn("ok", **turn)
    return ScriptedChatModel(turns=lambda: itertools.repeat(reply), model_name=model_name)


# -- exactness in a real agent loop -------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 4, 9])
def test_runaway_agent_stops_at_exactly_n_model_calls(limit: int) -> None:
    model, tool = runaway_model(), counting_tool()
    handler, hook = guard(max_model_calls=limit)
    with pytest.raises(BudgetExceeded) as info:
        create_agent(model, [tool]).invoke(GO, {"callbacks": [handler]})
    assert info.value.dimension == "model_calls"
    assert (info.value.limit, info.value.used, info.value.requested) == (limit, limit, 1)
    assert model.calls == limit
    assert len(hook.of("settle")) == limit + tool.metadata["calls"]
    assert not handler._runs  # refused starts leave no bookkeeping behind


@pytest.mark.parametrize(("parallel", "limit"), [(1, 5), (3, 4), (4, 8)])
def test_parallel_tool_calls_each_consume_one_unit_and_excess_is_not_run(parallel: int, limit: int) -> None:
    model, tool = runaway_model(parallel=parallel), counting_tool()
    handler, _ = guard(max_tool_calls=limit)
    with pytest.raises(BudgetExceeded) as info:
        create_agent(model, [tool]).invoke(GO, {"callbacks": [handler]})
    assert info.value.dimension == "tool_calls"
    assert tool.metadata["calls"] == limit
    assert handler.usage().used["tool_calls"] == limit


def test_per_tool_cap_refuses_only_that_tool() -> None:
    model = scripted_model([Turn(tools=[("search", {}), ("fetch", {})]) for _ in range(5)])
    search, fetch = counting_tool("search"), counting_tool("fetch")
    handler, _ = guard(max_tool_calls_per_tool={"search": 2})
    with pytest.raises(BudgetExceeded) as info:
        create_agent(model, [search, fetch]).invoke(GO, {"callbacks": [handler]})
    assert info.value.dimension == "tool_calls:search"
    assert search.metadata["calls"] == 2
    assert fetch.metadata["calls"] >= 2


def test_steps_outside_a_graph_are_model_and_tool_calls() -> None:
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | endless_text()
    handler, _ = guard(max_steps=3)
    for i in range(3):
        chain.invoke({"q": str(i)}, {"callbacks": [handler]})
    with pytest.raises(BudgetExceeded, match="steps"):
        chain.invoke({"q": "4"}, {"callbacks": [handler]})


def test_steps_inside_a_graph_are_node_executions() -> None:
    model, tool = runaway_model(), counting_tool()
    handler, _ = guard(max_steps=5)
    with pytest.raises(BudgetExceeded, match="steps"):
        create_agent(model, [tool]).invoke(GO, {"callbacks": [handler]})
    # model, tools, model, tools, model: the sixth node (tools) is refused before it runs.
    assert (model.calls, tool.metadata["calls"]) == (3, 2)


def test_batch_from_many_threads_makes_exactly_the_allowed_calls() -> None:
    model = endless_text()
    handler, _ = guard(max_model_calls=25)
    with pytest.raises(BudgetExceeded):
        model.batch([f"q{i}" for i in range(40)], {"callbacks": [handler], "max_concurrency": 8})
    assert model.calls == 25
    assert handler.usage().used["model_calls"] == 25
    assert handler.usage().held == {}


# -- depth, retries, failures ---------------------------------------------------------------


def test_depth_through_nested_chains() -> None:
    def descend(n: int, config: RunnableConfig) -> int:
        return n if n == 0 else nested.invoke(n - 1, config)

    nested = RunnableLambda(descend)
    handler, _ = guard(max_depth=5)
    assert nested.invoke(4, {"callbacks": [handler]}) == 0  # 5 nested runs: root + 4
    with pytest.raises(BudgetExceeded) as info:
        nested.invoke(5, {"callbacks": [handler]})
    assert (info.value.dimension, info.value.limit, info.value.used) == ("depth", 5, 5)


def test_retries_through_with_retry_are_counted_and_capped() -> None:
    model = ScriptedChatModel(turns=lambda: itertools.repeat(Turn("ok")), fail_times=10)
    handler, _ = guard(max_retries=2)
    flaky = model.with_retry(stop_after_attempt=10, wait_exponential_jitter=False)
    with pytest.raises(BudgetExceeded) as info:
        flaky.invoke("hi", {"callbacks": [handler]})
    assert (info.value.dimension, info.value.used) == ("retries", 2)
    assert model.attempts == 3  # the first attempt and two retries; the third retry never reached the provider


def test_with_retry_does_not_retry_a_budget_stop() -> None:
    model = endless_text()
    handler, hook = guard(max_model_calls=1)
    retrying = model.with_retry(stop_after_attempt=5, wait_exponential_jitter=False)
    retrying.invoke("1", {"callbacks": [handler]})
    with pytest.raises(BudgetExceeded):
        retrying.invoke("2", {"callbacks": [handler]})
    assert len(hook.of("deny")) == 1  # one refusal: no second attempt was made
    assert model.calls == 1


def test_with_fallbacks_does_not_fall_back_on_a_budget_stop() -> None:
    primary, fallback = endless_text(), endless_text("gpt-4o")
    handler, hook = guard(max_model_calls=1)
    chain = primary.with_fallbacks([fallback])
    chain.invoke("1", {"callbacks": [handler]})
    with pytest.raises(BudgetExceeded):
        chain.invoke("2", {"callbacks": [handler]})
    assert (primary.calls, fallback.calls, len(hook.of("deny"))) == (1, 0, 1)


def test_consecutive_failures_open_the_breaker() -> None:
    model = ScriptedChatModel(turns=lambda: itertools.repeat(Turn("ok")), fail_times=100)
    handler, _ = guard(max_consecutive_failures=3)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            model.invoke("hi", {"callbacks": [handler]})
    with pytest.raises(BudgetExceeded, match="consecutive_failures"):
        model.invoke("hi", {"callbacks": [handler]})
    assert model.attempts == 3
    usage = handler.usage()
    assert usage.used["model_calls"] == 3 and usage.held == {}  # attempts count; token holds are given back


# -- tokens and cost --------------------------------------------------------------------------


def test_tokens_and_cost_settle_from_usage_metadata_with_cache_tokens() -> None:
    turns = [
        Turn("a", input_tokens=12_000, output_tokens=300, cache_read_tokens=10_000),
        Turn("b", input_tokens=15_000, output_tokens=500, cache_read_tokens=12_000),
    ]
    model = scripted_model(turns, model_name="claude-sonnet-4-5")
    handler, hook = guard(max_cost_usd="5")
    for prompt in ("1", "2"):
        model.invoke(prompt, {"callbacks": [handler]})
    expected = sum(
        calc_price(
            Usage(input_tokens=t.input_tokens, output_tokens=t.output_tokens, cache_read_tokens=t.cache_read_tokens),
            model_ref="claude-sonnet-4-5",
        ).total_price
        for t in turns
    )
    assert sum(e.cost_usd for e in hook.of("settle")) == expected
    used = handler.usage().used
    assert used["input_tokens"] == 27_000 and used["output_tokens"] == 800 and used["total_tokens"] == 27_800
    assert Decimal(handler.report()["cost_usd"]) >= expected  # micro-dollars, rounded up per call
    assert hook.of("settle")[-1].run_cost_usd == Decimal(handler.report()["cost_usd"])


def test_prompt_estimate_of_a_growing_history_is_incremental_and_equal_to_a_full_one() -> None:
    handler, _ = guard(max_total_tokens=10**9)
    history: list[BaseMessage] = [HumanMessage("find the budget")]
    for step in range(30):
        expected = _estimate_messages(history)
        assert handler._estimate(list(history)) == expected  # a new list each call, as a model node builds it
        history += [
            AIMessage("", tool_calls=[{"name": "search", "args": {"q": f"page {step}"}, "id": f"c{step}"}]),
            ToolMessage(f"result {step} " * step, tool_call_id=f"c{step}"),
        ]
    edited = [HumanMessage("a different conversation"), *history[1:]]
    assert handler._estimate(edited) == _estimate_messages(edited)  # another first message: estimated in full
    shorter = history[:5]
    assert handler._estimate(shorter) == _estimate_messages(shorter)


def test_cost_limit_refuses_the_call_that_would_break_it() -> None:
    prompt = "x" * 400_000  # about 100k tokens, which is what the fake provider then reports
    estimate = _estimate_messages([HumanMessage(prompt)])
    model = endless_text("gpt-4o", input_tokens=100_000, output_tokens=1_000)
    per_call = calc_price(Usage(input_tokens=100_000, output_tokens=1_000), model_ref="gpt-4o").total_price
    worst = calc_price(Usage(input_tokens=estimate, output_tokens=1024), model_ref="gpt-4o").total_price
    handler, _ = guard(max_cost_usd="1.00")
    with pytest.raises(BudgetExceeded) as info:
        for _ in range(100):
            model.invoke(prompt, {"callbacks": [handler]})
    assert info.value.dimension == "cost_usd"
    spent = Decimal(handler.report()["cost_usd"])
    assert spent <= Decimal("1.00") < spent + worst  # never over; refused only when the worst case did not fit
    assert model.calls == int((Decimal("1.00") - worst) // per_call) + 1


def test_worst_case_output_comes_from_the_models_max_tokens() -> None:
    model = ScriptedChatModel(turns=lambda: itertools.repeat(Turn("ok", output_tokens=20)), max_tokens=2000)
    handler, _ = guard(max_output_tokens=2100)
    with pytest.raises(BudgetExceeded) as info:
        for _ in range(50):
            model.invoke("hi", {"callbacks": [handler]})
    # call k is admitted while 20 * (k - 1) + 2000 <= 2100
    assert model.calls == 6
    assert (info.value.dimension, info.value.used, info.value.requested) == ("output_tokens", 120, 2000)


def test_unknown_model_under_a_cost_limit_raises_before_the_call() -> None:
    model = endless_text("acme-llm-9000")
    handler, _ = guard(max_cost_usd="1")
    with pytest.raises(UnpricedModelError, match="acme-llm-9000"):
        model.invoke("hi", {"callbacks": [handler]})
    assert model.calls == 0


def test_unknown_model_can_count_tokens_only() -> None:
    model = endless_text("acme-llm-9000")
    handler, _ = guard(max_cost_usd="1", max_total_tokens=500, unpriced_model="count_tokens_only")
    with pytest.raises(BudgetExceeded, match="total_tokens"):
        for _ in range(10):
            model.invoke("hi", {"callbacks": [handler]})
    assert handler.usage().used.get("cost_usd", 0) == 0


# -- time, async, streaming, ambient -------------------------------------------------------


def test_wall_clock_deadline() -> None:
    now = [0.0]
    meter = Meter(Budget(max_seconds=60), clock=lambda: now[0], hooks=[])
    handler = BudgetCallbackHandler(meter=meter)
    model = endless_text()
    model.invoke("1", {"callbacks": [handler]})
    now[0] = 61.0
    with pytest.raises(BudgetExceeded, match="seconds"):
        model.invoke("2", {"callbacks": [handler]})
    assert model.calls == 1


def test_async_agent_loop_stops_exactly() -> None:
    model, tool = runaway_model(), counting_tool()
    handler, _ = guard(max_model_calls=3)
    with pytest.raises(BudgetExceeded):
        asyncio.run(create_agent(model, [tool]).ainvoke(GO, {"callbacks": [handler]}))
    assert model.calls == 3


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_streaming_agent_loop_stops_exactly(mode: str) -> None:
    model, tool = runaway_model(), counting_tool()
    handler, _ = guard(max_tool_calls=2)
    agent = create_agent(model, [tool])

    async def astream() -> None:
        async for _ in agent.astream(GO, {"callbacks": [handler]}, stream_mode="updates"):
            pass

    with pytest.raises(BudgetExceeded):
        if mode == "sync":
            for _ in agent.stream(GO, {"callbacks": [handler]}, stream_mode="messages"):
                pass
        else:
            asyncio.run(astream())
    assert tool.metadata["calls"] == 2


def test_ambient_budget_guards_runs_without_configs() -> None:
    model, tool = runaway_model(), counting_tool()
    with budget(Budget(max_model_calls=2), hooks=[]) as ambient, pytest.raises(BudgetExceeded):
        create_agent(model, [tool]).invoke(GO)
    assert model.calls == 2
    assert ambient.usage().used["model_calls"] == 2
    model.invoke("outside the block is not guarded")
    assert model.calls == 3


def test_nested_ambient_budgets_both_apply() -> None:
    model = endless_text()
    with budget(Budget(max_model_calls=3), hooks=[]) as outer:
        model.invoke("1")
        with budget(Budget(max_model_calls=10), hooks=[]) as inner:
            model.invoke("2")
            model.invoke("3")
            with pytest.raises(BudgetExceeded) as info:
                model.invoke("4")
    assert info.value.scope_id == outer.meter.run_id
    assert inner.usage().used["model_calls"] == 2
    assert outer.usage().used["model_calls"] == 3


def test_one_handler_is_one_run_scope_across_invocations() -> None:
    model = endless_text()
    handler, _ = guard(max_model_calls=2)
    model.invoke("1", {"callbacks": [handler]})
    model.invoke("2", {"callbacks": [handler]})
    with pytest.raises(BudgetExceeded):
        model.invoke("3", {"callbacks": [handler]})
    fresh, _ = guard(max_model_calls=2)
    model.invoke("4", {"callbacks": [fresh]})


def test_handlers_with_the_same_run_id_share_a_scope() -> None:
    from budget_plugins import InMemoryLedger

    ledger, model = InMemoryLedger(), endless_text()
    a = BudgetCallbackHandler(Budget(max_model_calls=2), ledger=ledger, run_id="shared", hooks=[])
    b = BudgetCallbackHandler(Budget(max_model_calls=2), ledger=ledger, run_id="shared", hooks=[])
    model.invoke("1", {"callbacks": [a]})
    model.invoke("2", {"callbacks": [b]})
    with pytest.raises(BudgetExceeded):
        model.invoke("3", {"callbacks": [a]})


def test_shadow_mode_runs_unguarded_and_records_would_denials() -> None:
    model, tool = runaway_model(), counting_tool()
    handler, hook = guard(max_tool_calls=2, mode="shadow")
    with pytest.raises(Exception, match="Recursion limit"):
        create_agent(model, [tool]).invoke(GO, {"callbacks": [handler], "recursion_limit": 13})
    assert tool.metadata["calls"] == 6
    assert handler.meter.shadow_denials == {"tool_calls": 4}
    assert {e.kind for e in hook.events if e.shadow} >= {"would_deny", "warn", "degrade"}


def test_finalization_reserve_lets_a_marked_final_answer_through() -> None:
    model = endless_text()
    handler, _ = guard(max_model_calls=10, finalization_reserve=0.2)
    for i in range(8):
        model.invoke(str(i), {"callbacks": [handler]})
    with pytest.raises(BudgetExceeded):
        model.invoke("one more step", {"callbacks": [handler]})
    final = {"callbacks": [handler], "metadata": {"budget_final": True}}
    model.invoke("final answer", final)
    model.invoke("final answer 2", final)
    with pytest.raises(BudgetExceeded):
        model.invoke("final answer 3", final)
    assert model.calls == 10


def test_deferred_commits_are_settled_when_the_root_run_ends() -> None:
    from budget_plugins import Ceiling, InMemoryLedger, Scope

    ledger = InMemoryLedger()
    meter = Meter(
        Budget(max_model_calls=5),
        ledger=ledger,
        ceilings=[Ceiling(scope="tenant", max_model_calls=100)],
        tenant="acme",
        defer_commits=True,
        hooks=[],
    )
    handler = BudgetCallbackHandler(meter=meter)
    create_agent(scripted_model([Turn(tools=[("search", {})]), "done"]), [counting_tool()]).invoke(
        GO, {"callbacks": [handler]}
    )
    snap = ledger.snapshot(Scope("tenant", "acme", tenant="acme"))  # read the ledger directly: no flush on the way
    assert snap.held == {}
    assert snap.used["model_calls"] == 2 and snap.used["tool_calls"] == 1
    assert meter.usage().used["model_calls"] == 2  # the run scope itself is counted in process
