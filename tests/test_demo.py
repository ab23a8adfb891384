"""The README's demo: the same runaway agent, unguarded then guarded."""

from __future__ import annotations

import io
from decimal import Decimal

from budget_plugins import BudgetExceeded
from budget_plugins._demo import run_demo


def test_demo_stops_the_guarded_agent_within_its_budget() -> None:
    out = io.StringIO()
    result = run_demo(safety_stop=30, out=out)
    refusal = result["refusal"]
    assert isinstance(refusal, BudgetExceeded) and refusal.dimension == "cost_usd"
    assert result["guarded_cost"] <= Decimal("0.50")
    assert result["unguarded_calls"] == 31  # the hand-made stop: recursion_limit = 2 * 30 + 1
    assert result["unguarded_cost"] > result["guarded_cost"]
    text = out.getvalue()
    assert "UNGUARDED" in text and "GUARDED" in text and str(refusal) in text
    assert [e.kind for e in result["events"] if e.kind in ("warn", "degrade", "deny")] == ["warn", "degrade", "deny"]
