"""The LangGraph guard: real graphs with the scripted fake models from budget_plugins.testing."""

from __future__ import annotations

import operator
import threading
import time
import warnings
from collections import Counter
from decimal import Decimal
from typing import Annotated, Any, TypedDict

import pytest
from genai_prices import Usage, calc_price
from langchain.agents import create_agent
from langchain.agents.middleware import SummarizationMiddleware
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import BaseTool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import GraphRecursionError
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, create_react_agent, tools_condition
from langgraph.types import RetryPolicy, Send

from budget_plugins import Budget, BudgetCallbackHandler, BudgetConfigError, BudgetExceeded, Meter, budget
from budget_plugins.testing import ScriptedChatModel, Turn, counting_tool, runaway_model, scripted_model
from budget_plugins_langgraph import budget_node, budget_route, guard, is_budget_stop

# -- core: the handler's chain checks can be left to a graph guard -------------------


def _nested_model_call(handler: BudgetCallbackHandler) -> str:
    model = scripted_model(["ok"])
    chain = RunnableLambda(lambda text, config: model.invoke(text, config).content)
    return str(RunnableLambda(lambda text, config: chain.invoke(text, config)).invoke("hi", {"callbacks": [handler]}))


def test_handler_checks_run_nesting_depth_by_default() -> None:
    handler = BudgetCallbackHandler(Budget(max_depth=2), hooks=[])
    with pytest.raises(BudgetExceeded) as refused:
        _nested_model_call(handler)
    assert refused.value.dimension == "depth"


def test_handler_without_chain_checks_leaves_depth_and_time_to_the_guard() -> None:
    now = [0.0]
    meter = Meter(Budget(max_depth=2, max_seconds=10), hooks=[], clock=lambda: now[0])
    handler = BudgetCallbackHandler(meter=meter, count_steps=False, chain_checks=False)
    assert _nested_model_call(handler) == "ok"
    now[0] = 11.0
    with pytest.raises(BudgetExceeded) as refused:  # time still applies to the model call itself
        _nested_model_call(handler)
    assert refused.value.dimension == "seconds"


# -- graphs under test ----------------------------------------------------------------


def react_prebuilt(model: ScriptedChatModel, tools: list[BaseTool], **compile_kwargs: Any) -> Any:
    with warnings.catch_warnings():  # create_react_agent is deprecated in favour of create_agent
        warnings.simplefilter("ignore")
        return create_react_agent(model, tools, **compile_kwargs)


def react_by_hand(
    model: ScriptedChatModel, tools: list[BaseTool], *, handle_tool_errors: bool = False, **compile_kwargs: Any
) -> Any:
    """The ReAct loop written out: agent -> tools -> agent while the model asks for tools."""

    def agent(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [model.bind_tools(tools).invoke(state["messages"], config)]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(tools, handle_tool_errors=handle_tool_errors))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(**compile_kwargs)


AGENTS = [pytest.param(react_prebuilt, id="create_react_agent"), pytest.param(react_by_hand, id="hand_built")]


def ask(text: str = "find it") -> dict[str, Any]:
    return {"messages": [HumanMessage(text)]}


def kinds(messages: list[BaseMessage]) -> list[str]:
    return [m.type for m in messages]


# -- runaway agents -----------------------------------------------------------------------


@pytest.mark.parametrize("build", AGENTS)
def test_runaway_agent_stops_at_exactly_n_model_calls_with_its_partial_result(build: Any) -> None:
    model, search = runaway_model(tool="search"), counting_tool("search")
    app = guard(build(model, [search]), Budget(max_model_calls=3), hooks=[])

    result = app.invoke(ask())

    assert model.calls == 3 and search.metadata["calls"] == 3
    # the partial state: every call that happened, then the message saying why it stopped
    assert kinds(result["messages"]) == ["human"] + ["ai", "tool"] * 3 + ["ai"]
    assert "model_calls limit of 3" in result["messages"][-1].content
    assert "__interrupt__" not in result
    assert app.last_report["exhausted"]["dimension"] == "model_calls"
    assert app.last_report["used"]["model_calls"] == 3


@pytest.mark.parametrize("build", AGENTS)
def test_runaway_agent_stops_at_exactly_n_tool_calls(build: Any) -> None:
    model, search = runaway_model(tool="search"), counting_tool("search")
    app = guard(build(model, [search]), Budget(max_tool_calls=2), hooks=[])

    result = app.invoke(ask())

    assert search.metadata["calls"] == 2
    assert model.calls == 3  # its third request for the tool was refused before the tool ran
    assert kinds(result["messages"]) == ["human", "ai", "tool", "ai", "tool", "ai", "ai"]
    assert result["messages"][-2].tool_calls  # the refused request is part of the partial state
    assert app.last_report["exhausted"]["dimension"] == "tool_calls"


def test_a_long_lived_guard_keeps_no_state_per_run_in_its_ledger() -> None:
    app = guard(
        react_prebuilt(runaway_model(tool="search"), [counting_tool("search")]), Budget(max_model_calls=2), hooks=[]
    )
    for _ in range(5):
        app.invoke(ask())
        assert app.last_report["used"]["model_calls"] == 2  # each run starts from zero
    assert "scopes=0" in repr(app.ledger)  # run scopes are counted in process, not kept per run


# -- graph-specific limits -----------------------------------------------------------------


class Review(TypedDict, total=False):
    draft: str
    reviews: Annotated[list[str], operator.add]


def review_loop(runs: Counter[str]) -> StateGraph[Any, Any, Any, Any]:
    """The seeds' Analyzer -> Synthesizer -> Critic loop; the critic never approves."""

    def analyzer(state: Review) -> Review:
        runs["analyzer"] += 1
        return {"draft": "facts"}

    def synthesizer(state: Review) -> Review:
        runs["synthesizer"] += 1
        return {"draft": f"draft {runs['synthesizer']}"}

    def critic(state: Review) -> Review:
        runs["critic"] += 1
        return {"reviews": [f"not good enough: {state['draft']}"]}

    builder = StateGraph(Review)
    builder.add_node("analyzer", analyzer)
    builder.add_node("synthesizer", synthesizer)
    builder.add_node("critic", critic)
    builder.add_edge(START, "analyzer")
    builder.add_edge("analyzer", "synthesizer")
    builder.add_edge("synthesizer", "critic")
    builder.add_edge("critic", "synthesizer")  # back for another draft, forever
    return builder


def test_node_visit_cap_ends_the_critic_loop_after_exactly_n_critiques() -> None:
    runs: Counter[str] = Counter()
    app = guard(review_loop(runs), Budget(max_steps=100), max_node_visits={"critic": 3}, hooks=[])

    result = app.invoke({"reviews": []})

    assert runs == {"analyzer": 1, "synthesizer": 4, "critic": 3}
    assert result["reviews"] == [f"not good enough: draft {i}" for i in (1, 2, 3)]
    assert result["draft"] == "draft 4"  # the partial state: the 4th draft was never reviewed
    stop = app.last_report["exhausted"]
    assert (stop["dimension"], stop["limit"], stop["used"]) == ("node_visits:critic", 3, 3)


def test_node_visit_caps_must_name_real_nodes() -> None:
    with pytest.raises(BudgetConfigError, match="unknown node 'critc'"):
        guard(review_loop(Counter()), Budget(), max_node_visits={"critc": 3}, hooks=[])


class Batch(TypedDict, total=False):
    items: list[int]
    done: Annotated[list[int], operator.add]


def fan_out(worked: list[int], *, checkpointer: Any = None) -> Any:
    lock = threading.Lock()

    def worker(item: int) -> Batch:
        time.sleep(0.001)  # keep several workers in flight at once
        with lock:
            worked.append(item)
        return {"done": [item]}

    builder = StateGraph(Batch)
    builder.add_node("worker", worker)
    builder.add_conditional_edges(START, lambda s: [Send("worker", i) for i in s["items"]], ["worker"])
    return builder.compile(checkpointer=checkpointer)


def test_send_fan_out_of_1000_items_runs_exactly_k_workers() -> None:
    worked: list[int] = []
    app = guard(fan_out(worked), Budget(max_fanout=7), hooks=[])

    result = app.invoke({"items": list(range(1000)), "done": []})

    assert len(worked) == 7  # the other 993 sends were refused, not run
    assert sorted(result["done"]) == sorted(worked)
    stop = app.last_report["exhausted"]
    assert (stop["dimension"], stop["limit"]) == ("fanout", 7)
    assert app.last_report["used"]["steps"] == 7


def test_parallel_branches_never_overspend_a_shared_step_budget() -> None:
    worked: list[int] = []
    app = guard(fan_out(worked), Budget(max_steps=25), hooks=[])

    app.invoke({"items": list(range(200)), "done": []})

    assert len(worked) == 25  # each branch reserved its step; none slipped through concurrently


def test_retry_policy_storm_is_capped_by_max_retries() -> None:
    attempts: list[int] = []

    class Flaky(Exception):
        pass

    def call_api(state: Batch) -> Batch:
        attempts.append(1)
        raise Flaky("upstream down")

    builder = StateGraph(Batch)
    builder.add_node(
        "call_api", call_api, retry_policy=RetryPolicy(max_attempts=1000, initial_interval=0, jitter=False)
    )
    builder.add_edge(START, "call_api")
    app = guard(builder, Budget(max_retries=3), hooks=[])

    app.invoke({"done": []})

    assert len(attempts) == 4  # the first attempt and 3 retries; the 4th retry was refused
    stop = app.last_report["exhausted"]
    assert (stop["dimension"], stop["limit"]) == ("retries", 3)


def price(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """What genai-prices says a call costs (independently of the guard's own pricing)."""
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return Decimal(calc_price(usage, model_ref=model, provider_id="openai").total_price)


def test_cost_limit_admits_calls_whose_worst_case_fits_and_reports_the_spend() -> None:
    # Each call really uses 1000 in / 200 out; max_tokens=200 makes the reserved worst case
    # (estimated prompt + 200 out) cost no more than a real call while the prompt is short.
    one_call = price("gpt-4o-mini", 1000, 200)
    model = runaway_model(model_name="gpt-4o-mini", input_tokens=1000, output_tokens=200, max_tokens=200)
    app = guard(react_by_hand(model, [counting_tool("search")]), Budget(max_cost_usd=2 * one_call), hooks=[])

    app.invoke(ask())

    # a third call's worst case no longer fits in 2 x one_call, whatever its prompt size
    assert model.calls == 2
    assert Decimal(app.last_report["cost_usd"]) == 2 * one_call
    assert app.last_report["exhausted"]["dimension"] == "cost_usd"


def test_token_limit_counts_reported_usage() -> None:
    model = runaway_model(input_tokens=1000, output_tokens=200, max_tokens=200)
    app = guard(react_by_hand(model, [counting_tool("search")]), Budget(max_total_tokens=2400), hooks=[])

    app.invoke(ask())

    assert model.calls == 2  # 2 x 1200 used; a third call's worst case does not fit
    assert app.last_report["used"]["total_tokens"] == 2400
    assert app.last_report["exhausted"]["dimension"] == "total_tokens"


def test_wall_clock_deadline_ends_the_run_at_the_next_node() -> None:
    now = [0.0]

    def slow(state: Batch) -> Batch:
        now[0] += 1.0  # each node execution takes one (fake) second
        return {"done": [int(now[0])]}

    builder = StateGraph(Batch)
    builder.add_node("slow", slow)
    builder.add_edge(START, "slow")
    builder.add_edge("slow", "slow")
    app = guard(builder, Budget(max_seconds=3), hooks=[], clock=lambda: now[0])

    result = app.invoke({"done": []})

    assert result["done"] == [1, 2, 3]  # the 4th execution found the 3 seconds spent
    assert app.last_report["exhausted"]["dimension"] == "seconds"


def test_real_clock_deadline_with_a_sleeping_node() -> None:
    def nap(state: Batch) -> Batch:
        time.sleep(0.02)
        return {"done": [1]}

    builder = StateGraph(Batch)
    builder.add_node("nap", nap)
    builder.add_edge(START, "nap")
    builder.add_edge("nap", "nap")
    app = guard(builder, Budget(max_seconds=0.05), hooks=[])

    result = app.invoke({"done": []})

    assert 1 <= len(result["done"]) < 50  # stopped by time, long before any step limit
    assert app.last_report["exhausted"]["dimension"] == "seconds"


def nested_graphs(runs: Counter[str]) -> StateGraph[Any, Any, Any, Any]:
    """outer -> middle (a subgraph) -> inner (a subgraph of the subgraph)."""

    def step(name: str) -> Any:
        def run(state: Batch) -> Batch:
            runs[name] += 1
            return {"done": [len(runs)]}

        return run

    inner = StateGraph(Batch)
    inner.add_node("innermost", step("innermost"))
    inner.add_edge(START, "innermost")
    middle = StateGraph(Batch)
    middle.add_node("middle_work", step("middle_work"))
    middle.add_node("inner", inner.compile())
    middle.add_edge(START, "middle_work")
    middle.add_edge("middle_work", "inner")
    outer = StateGraph(Batch)
    outer.add_node("outer_work", step("outer_work"))
    outer.add_node("middle", middle.compile())
    outer.add_edge(START, "outer_work")
    outer.add_edge("outer_work", "middle")
    return outer


def test_subgraph_depth_limit_refuses_nodes_nested_too_deep() -> None:
    runs: Counter[str] = Counter()
    app = guard(nested_graphs(runs), Budget(max_depth=2), hooks=[])

    app.invoke({"done": []})

    assert runs == {"outer_work": 1, "middle_work": 1}  # innermost (depth 3) never ran
    stop = app.last_report["exhausted"]
    assert (stop["dimension"], stop["limit"]) == ("depth", 2)


def test_subgraph_nodes_count_as_steps() -> None:
    runs: Counter[str] = Counter()
    app = guard(nested_graphs(runs), Budget(max_depth=3), hooks=[])

    app.invoke({"done": []})

    assert runs == {"outer_work": 1, "middle_work": 1, "innermost": 1}
    # outer_work, middle (subgraph node), middle_work, inner (subgraph node), innermost
    assert app.last_report["used"]["steps"] == 5


# -- sync, async, streaming ------------------------------------------------------------------


async def test_async_invoke_stops_the_runaway_agent_the_same_way() -> None:
    model, search = runaway_model(), counting_tool("search")
    app = guard(react_by_hand(model, [search]), Budget(max_model_calls=3), hooks=[])

    result = await app.ainvoke(ask())

    assert (model.calls, search.metadata["calls"]) == (3, 3)
    assert "model_calls limit of 3" in result["messages"][-1].content


def budget_stops(chunks: list[Any]) -> list[dict[str, Any]]:
    return [i.value for c in chunks if isinstance(c, dict) for i in c.get("__interrupt__", ()) if is_budget_stop(i)]


def test_stream_yields_the_steps_then_the_budget_stop() -> None:
    model, search = runaway_model(), counting_tool("search")
    app = guard(react_by_hand(model, [search]), Budget(max_tool_calls=2), hooks=[])

    chunks = list(app.stream(ask(), stream_mode="updates"))

    assert [next(iter(c)) for c in chunks] == ["agent", "tools", "agent", "tools", "agent", "__interrupt__"]
    (stop,) = budget_stops(chunks)
    assert (stop["dimension"], stop["limit"]) == ("tool_calls", 2)
    assert search.metadata["calls"] == 2
    assert app.last_report["exhausted"]["dimension"] == "tool_calls"


async def test_astream_with_message_streaming_stops_the_same_way() -> None:
    model, search = runaway_model(), counting_tool("search")
    app = guard(react_by_hand(model, [search]), Budget(max_model_calls=2), hooks=[])

    chunks = [c async for c in app.astream(ask(), stream_mode=["updates", "messages"])]

    assert (model.calls, search.metadata["calls"]) == (2, 2)
    assert budget_stops([payload for mode, payload in chunks if mode == "updates"])[0]["dimension"] == "model_calls"


def test_batch_gives_every_input_its_own_run_budget() -> None:
    model, search = runaway_model(), counting_tool("search")
    app = guard(react_by_hand(model, [search]), Budget(max_tool_calls=2), hooks=[])

    results = app.batch([ask("a"), ask("b"), ask("c")])

    assert search.metadata["calls"] == 6
    assert all("tool_calls limit of 2" in r["messages"][-1].content for r in results)


# -- checkpoints, scopes, recursion limit -----------------------------------------------------------


def test_checkpointed_thread_resumes_under_a_new_budget() -> None:
    model, search = runaway_model(), counting_tool("search")
    graph = react_prebuilt(model, [search], checkpointer=InMemorySaver())
    thread: RunnableConfig = {"configurable": {"thread_id": "t1"}}

    first = guard(graph, Budget(max_tool_calls=2), hooks=[])
    first.invoke(ask(), thread)

    paused = first.get_state(thread)  # the guard is the graph: its other attributes are the graph's
    assert any(is_budget_stop(i) for i in paused.interrupts)
    assert paused.next == ("tools",)  # the refused node is still pending: the thread is consistent
    assert paused.values["messages"][-1].tool_calls  # and no stop message was written into it
    assert search.metadata["calls"] == 2

    resumed = guard(graph, Budget(max_tool_calls=3), hooks=[]).invoke(None, thread)

    assert search.metadata["calls"] == 5  # the pending call ran first, nothing ran twice
    tool_messages = [m for m in resumed["messages"] if m.type == "tool"]
    assert len(tool_messages) == 5
    assert graph.get_state(thread).next == ("tools",)


def test_thread_scope_keeps_counting_across_invocations_of_one_thread() -> None:
    model, search = runaway_model(), counting_tool("search")
    graph = react_by_hand(model, [search], checkpointer=InMemorySaver())
    app = guard(graph, Budget(max_model_calls=3), scope="thread", hooks=[])
    t1: RunnableConfig = {"configurable": {"thread_id": "t1"}}

    app.invoke(ask(), t1)
    app.invoke(ask("and now?"), t1)
    assert model.calls == 3  # the second turn found the thread's budget spent
    assert app.report(t1)["used"]["model_calls"] == 3

    app.invoke(ask(), {"configurable": {"thread_id": "t2"}})
    assert model.calls == 6  # another thread has its own budget


def test_run_scope_starts_every_invocation_from_zero() -> None:
    model, search = runaway_model(), counting_tool("search")
    app = guard(react_by_hand(model, [search], checkpointer=InMemorySaver()), Budget(max_model_calls=3), hooks=[])
    t1: RunnableConfig = {"configurable": {"thread_id": "t1"}}

    app.invoke(ask(), t1)
    app.invoke(ask("and now?"), t1)

    assert model.calls == 6


def test_thread_scope_needs_a_thread_id() -> None:
    app = guard(review_loop(Counter()), Budget(max_steps=5), scope="thread", hooks=[])
    with pytest.raises(BudgetConfigError, match="thread_id"):
        app.invoke({"reviews": []})


def loop_graph(seen: list[int]) -> StateGraph[Any, Any, Any, Any]:
    def loop(state: Batch, config: RunnableConfig) -> Batch:
        seen.append(config["recursion_limit"])
        return {"done": [len(seen)]}

    builder = StateGraph(Batch)
    builder.add_node("loop", loop)
    builder.add_edge(START, "loop")
    builder.add_edge("loop", "loop")
    return builder


def test_the_guard_fires_before_graph_recursion_error() -> None:
    seen: list[int] = []
    app = guard(loop_graph(seen), Budget(max_steps=30), hooks=[])

    result = app.invoke({"done": []})  # no GraphRecursionError

    assert len(result["done"]) == 30
    assert set(seen) == {31}  # the backstop: just enough supersteps for the guard to fire first
    assert app.last_report["exhausted"]["dimension"] == "steps"
    with pytest.raises(GraphRecursionError):  # the same backstop, unguarded, is LangGraph's error
        loop_graph([]).compile().invoke({"done": []}, {"recursion_limit": 31})


def test_an_explicit_recursion_limit_is_kept() -> None:
    seen: list[int] = []
    app = guard(loop_graph(seen), Budget(max_steps=30), hooks=[])
    with pytest.raises(GraphRecursionError):
        app.invoke({"done": []}, {"recursion_limit": 5})
    assert len(seen) == 5


# -- "raise": the stop is not swallowed on its way out ----------------------------------------------

RAISE = Budget(max_tool_calls=1, on_exhausted="raise")


def test_raise_passes_tool_node_error_handling() -> None:
    model, search = runaway_model(), counting_tool("search")
    app = guard(react_by_hand(model, [search], handle_tool_errors=True), RAISE, hooks=[])

    with pytest.raises(BudgetExceeded) as refused:
        app.invoke(ask())

    assert refused.value.dimension == "tool_calls"
    assert search.metadata["calls"] == 1 and model.calls == 2
    assert app.last_report["exhausted"]["dimension"] == "tool_calls"


def test_raise_passes_a_retry_policy_that_retries_everything() -> None:
    model = runaway_model()
    builder = StateGraph(MessagesState)
    builder.add_node(
        "agent",
        lambda s, config: {"messages": [model.invoke(s["messages"], config)]},
        retry_policy=RetryPolicy(retry_on=lambda exc: True, max_attempts=10, initial_interval=0),
    )
    builder.add_edge(START, "agent")
    builder.add_edge("agent", "agent")
    app = guard(builder, Budget(max_model_calls=2, on_exhausted="raise"), hooks=[])

    with pytest.raises(BudgetExceeded):
        app.invoke(ask())

    assert model.attempts == 2  # the refusal was not retried


def parallel_with_error_handler(model: ScriptedChatModel, handled: list[str]) -> StateGraph[Any, Any, Any, Any]:
    """Two nodes in one superstep, each with an error handler: LangGraph would route a failure there."""

    def handler(state: MessagesState) -> dict[str, Any]:
        handled.append("handled")
        return {"messages": [AIMessage("recovered")]}

    builder = StateGraph(MessagesState)
    for name in ("left", "right"):
        builder.add_node(
            name, lambda s, config: {"messages": [model.invoke(s["messages"], config)]}, error_handler=handler
        )
        builder.add_edge(START, name)
    return builder


def test_raise_passes_node_error_handlers_of_parallel_nodes() -> None:
    handled: list[str] = []
    model = runaway_model()
    app = guard(parallel_with_error_handler(model, handled), Budget(max_model_calls=1, on_exhausted="raise"), hooks=[])

    with pytest.raises(BudgetExceeded):
        app.invoke(ask())

    assert handled == [] and model.calls == 1


def test_end_passes_node_error_handlers_too() -> None:
    handled: list[str] = []
    model = runaway_model()
    app = guard(parallel_with_error_handler(model, handled), Budget(max_model_calls=1), hooks=[])

    result = app.invoke(ask())

    assert handled == [] and model.calls == 1
    assert "model_calls limit of 1" in result["messages"][-1].content


# -- shadow mode, prebuilt agents, hand wiring ------------------------------------------------------


def test_shadow_mode_refuses_nothing_and_counts_would_be_refusals() -> None:
    model = scripted_model([Turn(tools=[("search", {"query": "x"})]) for _ in range(4)] + ["done"])
    search = counting_tool("search")
    app = guard(react_by_hand(model, [search]), Budget(max_tool_calls=2, mode="shadow"), hooks=[])

    result = app.invoke(ask())

    assert result["messages"][-1].content == "done" and search.metadata["calls"] == 4
    assert app.last_report["shadow_denials"] == {"tool_calls": 2}


def test_create_agent_graph_with_summarization_is_guarded_including_summary_calls() -> None:
    model = runaway_model(input_tokens=10, output_tokens=5)
    summarizer = scripted_model([f"summary {i}" for i in range(50)], model_name="gpt-4o-mini")
    agent = create_agent(
        model,
        [counting_tool("search")],
        middleware=[SummarizationMiddleware(summarizer, trigger=("messages", 4), keep=("messages", 2))],
    )
    app = guard(agent, Budget(max_model_calls=6), hooks=[])

    result = app.invoke(ask())

    assert summarizer.calls >= 1
    assert model.calls + summarizer.calls == 6  # the summaries count against the same budget
    assert "model_calls limit of 6" in result["messages"][-1].content


class Loop(MessagesState, total=False):
    budget: dict[str, Any]


def test_hand_wired_budget_node_routes_to_end_when_the_next_model_call_would_not_fit() -> None:
    model, search = runaway_model(), counting_tool("search")

    def agent(state: Loop, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"], config)]}

    builder = StateGraph(Loop)
    builder.add_node("budget", budget_node())
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([search]))
    builder.add_edge(START, "budget")
    builder.add_conditional_edges("budget", budget_route("agent"))
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "budget")

    with budget(Budget(max_model_calls=3), count_steps=False, hooks=[]) as handler:
        result = builder.compile().invoke(ask())

    assert model.calls == 3 and search.metadata["calls"] == 3
    assert result["budget"]["exhausted"]["dimension"] == "model_calls"
    assert "model_calls limit of 3" in result["messages"][-1].content
    assert handler.report()["used"]["model_calls"] == 3


def test_budget_in_the_state_schema_receives_the_report() -> None:
    model = runaway_model()
    builder = StateGraph(Loop)
    builder.add_node("agent", lambda s, config: {"messages": [model.invoke(s["messages"], config)]})
    builder.add_edge(START, "agent")
    builder.add_edge("agent", "agent")

    result = guard(builder, Budget(max_model_calls=2), hooks=[]).invoke(ask())

    assert result["budget"]["exhausted"]["dimension"] == "model_calls"
    assert result["budget"]["used"]["model_calls"] == 2


def test_guarding_a_guarded_graph_replaces_its_budget() -> None:
    model, search = runaway_model(), counting_tool("search")
    first = guard(react_by_hand(model, [search]), Budget(max_model_calls=5), hooks=[])

    guard(first, Budget(max_model_calls=2), hooks=[]).invoke(ask())

    assert model.calls == 2
