"""Measurement 6: memory per idle run scope (in-memory ledger + handler), by tracemalloc."""

from __future__ import annotations

import gc
import linecache
import tracemalloc
import uuid
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from benchmarks._harness import Config, Row, Section
from budget_plugins import Budget, BudgetCallbackHandler, InMemoryLedger

TARGET_BYTES = 2048
PROMPT = [[HumanMessage("What is the budget?")]]


def _one_call(handler: BudgetCallbackHandler) -> None:
    """One model call through the handler's callbacks: a reservation, then its commit."""
    run_id = uuid.uuid4()
    handler.on_chat_model_start(
        None, PROMPT, run_id=run_id, invocation_params={"model_name": "gpt-4o-mini", "max_tokens": 256}
    )
    reply = AIMessage(
        "ok",
        usage_metadata={"input_tokens": 100, "output_tokens": 20, "total_tokens": 120},
        response_metadata={"model_name": "gpt-4o-mini"},
    )
    handler.on_llm_end(LLMResult(generations=[[ChatGeneration(message=reply)]]), run_id=run_id)


def _measure(runs: int, shared: bool) -> tuple[float, list[str]]:
    budget = Budget(max_model_calls=50, max_total_tokens=100_000, max_cost_usd="1.00")
    warm = BudgetCallbackHandler(budget, ledger=InMemoryLedger(), hooks=[])
    _one_call(warm)  # caches (prices, pydantic validators) are not per-run memory
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    ledger = InMemoryLedger() if shared else None
    handlers: list[Any] = []
    for _ in range(runs):
        handler = BudgetCallbackHandler(budget, ledger=ledger, hooks=[])
        _one_call(handler)
        handlers.append(handler)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    diff = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in diff)
    by_file: dict[str, int] = {}
    for stat in diff:
        name = stat.traceback[0].filename.split("site-packages/")[-1].split("/work/main/")[-1]
        by_file[name] = by_file.get(name, 0) + stat.size_diff
    files = ", ".join(
        f"`{name}` {size / runs:.0f} B" for name, size in sorted(by_file.items(), key=lambda kv: -kv[1])[:6]
    )
    top = []
    for stat in sorted(diff, key=lambda s: s.size_diff, reverse=True)[:10]:
        frame = stat.traceback[0]
        where = frame.filename.split("site-packages/")[-1].split("/work/main/")[-1]
        code = linecache.getline(frame.filename, frame.lineno).strip().replace("|", "\\|")
        top.append(
            f"| `{where}:{frame.lineno}` | `{code}` | {stat.size_diff / runs:.0f} | {stat.count_diff / runs:.1f} |"
        )
    del handlers, ledger
    return total / runs, [f"By file: {files}.", "", *top]


def memory(config: Config) -> Section:
    runs = config.pick(10_000, 200)
    section = Section(
        "6",
        "Memory per idle run scope (in-memory ledger + handler)",
        f"{runs:,} concurrent run scopes kept alive at once, each a `BudgetCallbackHandler` with a budget"
        " (calls, tokens and cost limited; one shared frozen `Budget` object) that has made one model call"
        " through its callbacks (one reservation and its commit); `tracemalloc` difference of the live heap"
        " after `gc.collect()`, divided by the number of runs. Two ledger set-ups: one `InMemoryLedger`"
        " shared by all runs (a server), and the handler's default (no `ledger=`: a ledger of its own, which an"
        " exclusive run scope without ceilings never needs, so it is not made). The run scope itself is counted"
        " in process by the handler's `Meter` either way.",
        columns=("bytes per run scope", "—"),
    )
    for shared, label in ((True, "shared InMemoryLedger"), (False, "default: no ledger= (made only when needed)")):
        per_run, top = _measure(runs, shared)
        section.rows.append(
            Row(
                label,
                per_run,
                target=f"< {TARGET_BYTES} B",
                met=per_run < TARGET_BYTES,
                note=f"{per_run / 1024:.2f} KiB per run",
                fmt="{:.0f} B",
            )
        )
        section.notes += [
            f"Largest allocation sites per run scope, {label}:",
            "",
            *top[:2],
            "| allocated at | code | bytes per run | blocks per run |",
            "| --- | --- | --- | --- |",
            *top[2:],
            "",
        ]
    return section
