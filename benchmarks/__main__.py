"""``python -m benchmarks [--quick] [--rounds N] [--only 1,2] [--output PATH]``: run and write RESULTS.md."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks._harness import Config, Section, render

HERE = Path(__file__).resolve().parent


def _has(module: str, attribute: str | None = None) -> bool:
    try:
        if importlib.util.find_spec(module) is None:
            return False
        if attribute is None:
            return True
        return hasattr(importlib.import_module(module), attribute)
    except Exception:
        return False


def autogen_todo(config: Config) -> Section:
    present = _has("budget_plugins_autogen", "BudgetedChatCompletionClient") and _has(
        "budget_plugins_autogen", "BudgetTermination"
    )
    state = (
        "the AutoGen wrappers now exist in `budget_plugins_autogen`, but this benchmark has not been written yet"
        if present
        else "`budget_plugins_autogen.BudgetedChatCompletionClient` / `BudgetTermination` are not committed yet"
    )
    return Section(
        "4",
        "AutoGen: BudgetedChatCompletionClient + BudgetTermination vs bare client + MaxMessageTermination",
        f"Not measured: {state}. Plan: replay the same scripted tool loop through an `AssistantAgent` with a"
        " `ReplayChatCompletionClient`, bare + `MaxMessageTermination` vs `BudgetedChatCompletionClient` +"
        " `BudgetTermination`, alternating; target ≤ 1.03.",
        todo=True,
    )


def redis_todo(config: Config) -> Section:
    present = any(_has("budget_plugins", name) for name in ("RedisLedger", "AsyncRedisLedger"))
    state = (
        "a Redis ledger is now exported, but this benchmark has not been written yet"
        if present
        else "the Redis ledger (`budget_plugins.RedisLedger`) is not committed yet (only untracked Lua scripts exist)"
    )
    return Section(
        "5",
        "Redis ledger: round trips, latency vs PING, throughput vs raw EVALSHA, memory per scope",
        f"Not measured: {state}. Plan: a real `redis-server` on loopback; count commands per guarded model call"
        " with `INFO commandstats` (target ≤ 1 amortized), guarded-call latency / raw `PING` on the same"
        " connection (target ≤ 1.3), throughput with 1, 4 and 16 processes / a raw 3-key `EVALSHA`"
        " check-and-increment (target ≥ 0.6), p50/p99, and `MEMORY USAGE` per run scope.",
        todo=True,
    )


def _measurements() -> list[tuple[str, Callable[[Config], Section]]]:
    from benchmarks.bench_autogen import autogen
    from benchmarks.bench_cold_start import cold_start
    from benchmarks.bench_langchain import callback_overhead, react_loop, versus_middleware
    from benchmarks.bench_memory import memory
    from benchmarks.bench_redis import redis_ledger

    return [
        ("1", react_loop),
        ("2", callback_overhead),
        ("3", versus_middleware),
        ("4", autogen if _has("budget_plugins_autogen", "BudgetTermination") else autogen_todo),
        ("5", redis_ledger if _has("budget_plugins", "RedisLedger") else redis_todo),
        ("6", memory),
        ("7", cold_start),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 rounds: checks that everything runs")
    parser.add_argument("--rounds", type=int, help="alternating rounds per measurement (default 15, quick 2)")
    parser.add_argument("--only", help="comma-separated measurement numbers, e.g. 1,2")
    parser.add_argument("--output", type=Path, help="where to write the Markdown (default benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    config = Config(quick=args.quick, rounds=args.rounds or (2 if args.quick else 15))
    output: Path = args.output or HERE / "RESULTS.md"
    wanted = set(args.only.split(",")) if args.only else None
    started = time.perf_counter()
    sections: list[Section] = []
    failed = False
    for number, measure in _measurements():
        if wanted is not None and number not in wanted:
            continue
        print(f"[{number}] {measure.__name__} ...", flush=True)
        t0 = time.perf_counter()
        try:
            section = measure(config)
        except Exception:
            failed = True
            section = Section(number, measure.__name__, "**FAILED**:\n\n```\n" + traceback.format_exc() + "```")
        sections.append(section)
        for row in section.rows:
            met = "" if row.met is None else ("  target met" if row.met else "  TARGET MISSED")
            print(f"    {row.name}: {row.value()} {row.target}{met}", flush=True)
        print(f"    ({time.perf_counter() - t0:.1f} s)", flush=True)
    text = render(sections, config, time.perf_counter() - started)
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
