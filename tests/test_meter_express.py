"""The meter's express path (its own run scope only, in process, enforced) decides as the general path does.

The same random sequence of calls runs on a meter that takes the express path
and on one forced onto the general path by a shared ceiling that never binds;
every outcome must match: refusals (dimension and amounts), warn/degrade/deny
events, the usage left, and nothing held.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from budget_plugins import Budget, BudgetEvent, BudgetExceeded, Ceiling, InMemoryLedger, Meter, Request, TokenUsage

MODEL = "gpt-4o-mini"

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("model"), st.integers(0, 400), st.integers(0, 300), st.booleans()),
        st.tuples(st.just("tool"), st.sampled_from(["search", "fetch"]), st.booleans()),
        st.tuples(st.just("step"), st.sampled_from(["agent", "tools"])),
        st.tuples(st.just("retry")),
        st.tuples(st.just("release"), st.booleans()),
    ),
    max_size=40,
)

BUDGETS = st.builds(
    Budget,
    max_model_calls=st.one_of(st.none(), st.integers(1, 12)),
    max_tool_calls=st.one_of(st.none(), st.integers(1, 12)),
    max_steps=st.one_of(st.none(), st.integers(1, 20)),
    max_total_tokens=st.one_of(st.none(), st.integers(500, 6000)),
    max_cost_usd=st.one_of(st.none(), st.sampled_from(["0.001", "0.005"])),
    max_consecutive_failures=st.one_of(st.none(), st.integers(1, 3)),
    max_retries=st.one_of(st.none(), st.integers(1, 6)),
    finalization_reserve=st.sampled_from([0.0, 0.2]),
)


def play(meter: Meter, ops: list[tuple[Any, ...]]) -> list[Any]:
    outcomes: list[Any] = []
    for op in ops:
        try:
            if op[0] == "model":
                ticket = meter.before_model_call(model=MODEL, input_tokens=op[1], max_output_tokens=op[2] or None)
                meter.after_model_call(ticket, None if op[3] else TokenUsage(op[1], op[2] // 2))
            elif op[0] == "tool":
                meter.after_tool_call(meter.before_tool_call(op[1]), failed=op[2])
            elif op[0] == "step":
                meter.count(Request.step(op[1]))
            elif op[0] == "retry":
                meter.count(Request("retry", {"retries": 1}, retry=True))
            else:
                meter.release(meter.before_tool_call("search"), failed=op[1])
            outcomes.append("ok")
        except BudgetExceeded as exc:
            outcomes.append((exc.dimension, exc.limit, exc.used, exc.requested, exc.scope))
    return outcomes


@settings(max_examples=150, deadline=None)
@given(budget=BUDGETS, ops=OPS)
@example(  # a retry counted between failed calls: no path may reset the failure streak
    budget=Budget(max_consecutive_failures=2, max_retries=5),
    ops=[("tool", "search", True), ("retry",), ("tool", "search", True), ("model", 10, 10, False)],
)
def test_the_express_path_decides_as_the_general_path(budget: Budget, ops: list[tuple[Any, ...]]) -> None:
    events: dict[str, list[BudgetEvent]] = {"express": [], "general": []}
    express = Meter(budget, hooks=[events["express"].append])
    general = Meter(
        budget,
        hooks=[events["general"].append],
        ledger=InMemoryLedger(),
        tenant="acme",
        ceilings=[Ceiling(scope="tenant", max_steps=10**9, max_retries=10**9)],  # a shared scope: not the express path
    )
    assert express._express and not general._express
    assert play(express, ops) == play(general, ops)
    assert [(e.kind, e.dimension, e.used, e.requested) for e in events["express"]] == [
        (e.kind, e.dimension, e.used, e.requested) for e in events["general"]
    ]
    assert express.usage().used == general.usage().used
    assert express.usage().held == general.usage().held == {}
    stable = ("level", "used", "held", "limits", "cost_usd")
    assert {k: express.report()[k] for k in stable} == {k: general.report()[k] for k in stable}
    facts = ("dimension", "limit", "used", "requested", "scope")
    assert [getattr(m.exhausted, k, None) for k in facts for m in (express,)] == [
        getattr(general.exhausted, k, None) for k in facts
    ]
