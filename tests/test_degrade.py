"""The degradation ladder in the LangChain world: warn, one tier down, then refuse."""

from __future__ import annotations

import pytest
from langchain.agents import create_agent
from langchain_core.messages import SystemMessage

from budget_plugins import Budget, BudgetCallbackHandler, BudgetExceeded, CollectingHook
from budget_plugins._degrade import WRAP_UP_NOTE, TieredChatModel
from budget_plugins.testing import counting_tool, runaway_model

GO = {"messages": [("user", "go")]}


def test_agent_switches_one_tier_down_at_the_threshold_then_stops() -> None:
    big = runaway_model(model_name="gpt-4o")
    small = runaway_model(model_name="gpt-4o-mini")
    hook = CollectingHook()
    handler = BudgetCallbackHandler(Budget(max_model_calls=10), hooks=[hook])
    model = TieredChatModel(primary=big, cheaper=small, meter=handler.meter)
    with pytest.raises(BudgetExceeded):
        create_agent(model, [counting_tool()]).invoke(GO, {"callbacks": [handler]})
    assert (big.calls, small.calls) == (8, 2)
    assert hook.kinds().index("warn") < hook.kinds().index("degrade") < hook.kinds().index("deny")
    settled = [e.model for e in hook.of("settle") if e.model]
    assert settled[:8] == ["gpt-4o"] * 8 and settled[8:] == ["gpt-4o-mini"] * 2


def test_degraded_calls_carry_a_wrap_up_note() -> None:
    seen: list[list[str]] = []
    small = runaway_model(model_name="gpt-4o-mini")
    original = small._generate

    def spy(messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        seen.append([m.content for m in messages if isinstance(m, SystemMessage)])  # type: ignore[misc]
        return original(messages, stop=stop, run_manager=run_manager, **kwargs)

    object.__setattr__(small, "_generate", spy)
    handler = BudgetCallbackHandler(Budget(max_model_calls=2, degrade_at=0.5, warn_at=0.5), hooks=[])
    model = TieredChatModel(primary=runaway_model(), cheaper=small, meter=handler.meter)
    model.invoke("a", {"callbacks": [handler]})
    assert seen == [[WRAP_UP_NOTE]]


def _tiers() -> tuple[TieredChatModel, object, object]:
    big = runaway_model(model_name="gpt-4o")
    small = runaway_model(model_name="gpt-4o-mini")
    return TieredChatModel(primary=big, cheaper=small), big, small


def test_langgraph_guard_degrades_then_ends_gracefully() -> None:
    from budget_plugins_langgraph import guard

    model, big, small = _tiers()
    app = guard(create_agent(model, [counting_tool()]), Budget(max_model_calls=10), hooks=[])
    result = app.invoke(GO)
    assert (big.calls, small.calls) == (8, 2)  # type: ignore[attr-defined]
    assert app.last_report is not None and app.last_report["exhausted"]["dimension"] == "model_calls"
    assert "messages" in result


def test_create_agent_middleware_degrades_then_ends_gracefully() -> None:
    from budget_plugins import BudgetMiddleware

    model, big, small = _tiers()
    agent = create_agent(model, [counting_tool()], middleware=[BudgetMiddleware(Budget(max_model_calls=10), hooks=[])])
    agent.invoke(GO)
    assert (big.calls, small.calls) == (8, 2)  # type: ignore[attr-defined]


def test_ambient_budget_block_degrades() -> None:
    from budget_plugins import budget

    model, big, small = _tiers()
    with budget(Budget(max_model_calls=10), hooks=[]), pytest.raises(BudgetExceeded):
        create_agent(model, [counting_tool()]).invoke(GO)
    assert (big.calls, small.calls) == (8, 2)  # type: ignore[attr-defined]


def test_without_any_budget_the_primary_serves_every_call() -> None:
    model, big, small = _tiers()
    for _ in range(3):
        model.invoke("x")
    assert (big.calls, small.calls) == (3, 0)  # type: ignore[attr-defined]
