"""The runaway-agent demo: the same agent unguarded, then guarded.

No network and no keys: the model is :func:`budget_plugins.testing.runaway_model`,
priced as a real model through genai-prices, and the agent is LangChain 1.x
``create_agent`` (a LangGraph ReAct loop).
"""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Any, TextIO

from budget_plugins._errors import BudgetExceeded
from budget_plugins._events import BudgetEvent, CollectingHook
from budget_plugins._ledger import InMemoryLedger, Ledger
from budget_plugins._policy import Budget, Ceiling
from budget_plugins._pricing import price_tokens
from budget_plugins._usage import TokenUsage

MODEL = "gpt-4o"
INPUT_TOKENS = 6_000
OUTPUT_TOKENS = 400


def _agent(model_calls_cap: int | None = None) -> tuple[Any, Any, Any]:
    try:
        from langchain.agents import create_agent
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise SystemExit('the demo needs LangChain 1.x: pip install "budget-plugins[langgraph]"') from exc
    from budget_plugins.testing import counting_tool, runaway_model

    model = runaway_model(
        tool="web_search", model_name=MODEL, input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS, max_tokens=1024
    )
    tool = counting_tool("web_search")
    return create_agent(model, [tool]), model, tool


def _row(out: TextIO, *cells: object) -> None:
    widths = (28, 14)
    text = "".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False))
    print("  " + text.rstrip() + ("" if len(cells) <= 2 else " " + " ".join(str(c) for c in cells[2:])), file=out)


def run_demo(*, safety_stop: int = 60, ledger: Ledger | None = None, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Run the demo and print what happened; returns the numbers for tests.

    Args:
        safety_stop: Model calls after which the unguarded run is cut off by hand.
        ledger: Ledger for the guarded run (default in-memory; pass a Redis ledger
            to see the same refusal across processes).
        out: Where to print.
    """
    from budget_plugins._langchain import BudgetCallbackHandler

    per_call = price_tokens(Budget(), MODEL, TokenUsage(INPUT_TOKENS, OUTPUT_TOKENS)).cost_usd
    print("budget-plugins demo: a tool-calling agent whose model never stops calling tools", file=out)
    print(f"model priced as {MODEL}: {INPUT_TOKENS} input + {OUTPUT_TOKENS} output tokens a call", file=out)
    print(f"= ${per_call:.4f} per model call (genai-prices)\n", file=out)

    # 1. Unguarded: only a hand-made safety stop (LangGraph's own default is 10,007 steps).
    agent, model, tool = _agent()
    recursion_limit = safety_stop * 2 + 1
    try:
        agent.invoke({"messages": [("user", "Research everything.")]}, {"recursion_limit": recursion_limit})
    except Exception as exc:  # GraphRecursionError: the only brake an unguarded agent has
        stopped_by = type(exc).__name__
    else:  # pragma: no cover - the runaway model never finishes
        stopped_by = "finished"
    unguarded_calls = model.calls
    unguarded_cost = per_call * unguarded_calls
    print("1) UNGUARDED (cut off by recursion_limit, the only brake it had)", file=out)
    _row(out, "model calls", model.calls)
    _row(out, "tool calls", tool.metadata["calls"])
    _row(out, "spent", f"${unguarded_cost:.2f}")
    _row(out, "stopped by", stopped_by)
    default_limit_calls = 10_007 // 2
    print(
        f"  left to LangGraph's default recursion limit it would make ~{default_limit_calls:,} calls"
        f" = ${per_call * default_limit_calls:,.2f} per run\n",
        file=out,
    )

    # 2. Guarded: the same agent, refused before the call that would break the budget.
    agent, model, tool = _agent()
    hook = CollectingHook()
    budget = Budget(max_cost_usd="0.50", max_tool_calls=50, max_model_calls=100)
    shared = ledger if ledger is not None else InMemoryLedger()
    handler = BudgetCallbackHandler(
        budget,
        ledger=shared,
        ceilings=[Ceiling(scope="tenant", max_cost_usd="100", window="month")],
        tenant="acme",
        workflow="research",
        agent="researcher",
        hooks=[hook],
    )
    refusal: BudgetExceeded | None = None
    try:
        agent.invoke({"messages": [("user", "Research everything.")]}, {"callbacks": [handler]})
    except BudgetExceeded as exc:
        refusal = exc
    report = handler.report()
    guarded_cost = Decimal(report["cost_usd"])
    print("2) GUARDED: Budget(max_cost_usd='0.50', max_tool_calls=50, max_model_calls=100)", file=out)
    _row(out, "model calls", model.calls)
    _row(out, "tool calls", tool.metadata["calls"])
    _row(out, "spent", f"${guarded_cost:.4f}")
    if refusal is not None:
        _row(out, "stopped by", "BudgetExceeded")
        print(f"  why: {refusal}", file=out)
    for event in hook.events:
        if event.kind in ("warn", "degrade"):
            print(f"  event: {_describe(event)}", file=out)
    print("\nusage report (run scope):", file=out)
    for dimension, limit in sorted(report["limits"].items()):
        used = report["used"].get(dimension, 0)
        shown_used, shown_limit = (
            (f"${Decimal(used) / 1_000_000:.4f}", f"${Decimal(limit) / 1_000_000:.2f}")
            if dimension == "cost_usd"
            else (used, limit)
        )
        _row(out, dimension, f"{shown_used} / {shown_limit}")
    print("\nrefused before the call that would break the budget.", file=out)
    print(
        f"the guarded run can never spend more than ${budget.max_cost_usd}; unguarded, the same agent"
        f" spent ${unguarded_cost:.2f} before a hand-made stop.",
        file=out,
    )
    return {
        "unguarded_calls": unguarded_calls,
        "guarded_model_calls": model.calls,
        "guarded_tool_calls": tool.metadata["calls"],
        "guarded_cost": guarded_cost,
        "unguarded_cost": unguarded_cost,
        "refusal": refusal,
        "events": hook.events,
    }


def _describe(event: BudgetEvent) -> str:
    return f"{event.kind} at {event.fraction:.0%} of {event.dimension}" if event.fraction else event.describe()
