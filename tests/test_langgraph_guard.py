"""The LangGraph guard: real graphs with the scripted fake models from budget_plugins.testing."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from budget_plugins_langgraph import guard
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import BaseTool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, create_react_agent, tools_condition

from budget_plugins import Budget, BudgetCallbackHandler, BudgetExceeded, Meter
from budget_plugins.testing import ScriptedChatModel, counting_tool, runaway_model, scripted_model

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
