"""The budget context travels with the workflow: nested graphs and sub-agents inside `with budget(...)`."""

from __future__ import annotations

from langchain.agents import create_agent

from budget_plugins import Budget, CollectingHook, Meter, budget
from budget_plugins.testing import counting_tool, runaway_model
from budget_plugins_langgraph import guard

GO = {"messages": [("user", "go")]}


def test_a_guarded_graph_inside_a_budget_block_obeys_both_and_counts_once() -> None:
    model, tool = runaway_model(), counting_tool()
    inner_hook = CollectingHook()
    app = guard(create_agent(model, [tool]), Budget(max_model_calls=10), hooks=[inner_hook])
    with budget(Budget(max_model_calls=4), tenant="acme", workflow="research", hooks=[]) as outer:
        result = app.invoke(GO)
    assert model.calls == 4  # the enclosing budget is the tighter one, and it ended the graph gracefully
    assert outer.usage().used["model_calls"] == 4  # counted once, not once per guard
    assert app.last_report is not None and app.last_report["used"]["model_calls"] == 4
    assert "messages" in result
    settled = inner_hook.of("settle")
    assert settled and {(e.tenant, e.workflow) for e in settled} == {("acme", "research")}


def test_meters_made_inside_a_block_take_its_tenant_and_workflow() -> None:
    with budget(Budget(), tenant="acme", workflow="triage", hooks=[]):
        sub = Meter(Budget(max_steps=3), hooks=[])
        other = Meter(Budget(), tenant="globex", hooks=[])
    assert (sub.tenant, sub.workflow) == ("acme", "triage")
    assert (other.tenant, other.workflow) == ("globex", "triage")
    assert Meter(Budget(), hooks=[]).tenant is None
