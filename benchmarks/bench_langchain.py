"""Measurements 1-3: the LangChain handler in a chain and in a ``create_agent`` ReAct loop."""

from __future__ import annotations

import contextlib
import itertools
import statistics
from collections.abc import Callable
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler

from benchmarks._harness import Config, Section, Timings, alternate, profile
from budget_plugins import Budget, BudgetCallbackHandler, InMemoryLedger
from budget_plugins.testing import ScriptedChatModel, Turn, counting_tool, runaway_model

TARGET = 1.03


class NoopHandler(BaseCallbackHandler):
    """A handler that does nothing: what LangChain charges for having *any* handler.

    It overrides ``on_chat_model_start`` as every chat-aware handler (ours included)
    does: the base class raises ``NotImplementedError`` there, and LangChain then
    formats the whole prompt with ``get_buffer_string`` to call ``on_llm_start``
    instead, on every model call (O(history) per call in an agent loop), which a
    real handler never pays.
    """

    raise_error = True
    run_inline = True

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        """Nothing to do (and no fallback to ``on_llm_start``)."""


def guard_budget() -> Budget:
    """Calls, tokens and cost all limited (never reached in these runs)."""
    return Budget(
        max_model_calls=1_000_000,
        max_tool_calls=1_000_000,
        max_total_tokens=10**12,
        max_cost_usd="1000000",
    )


def new_handler() -> BudgetCallbackHandler:
    return BudgetCallbackHandler(guard_budget(), ledger=InMemoryLedger(), hooks=[])


def _per_unit_us(timings: Timings, name: str, units: int) -> float:
    return statistics.median(timings.samples[name]) / units * 1e6


def _overhead_note(timings: Timings, name: str, baseline: str, units: int, unit: str) -> str:
    extra = (timings.median(name) - timings.median(baseline)) / units * 1e6
    return f"{_per_unit_us(timings, name, units):.0f} µs/{unit} ({extra:+.0f} µs/{unit} vs {baseline})"


# -- 2. prompt | model chain ----------------------------------------------------------


def callback_overhead(config: Config) -> Section:
    from langchain_core.prompts import ChatPromptTemplate

    calls = config.pick(300, 10)
    prompt = ChatPromptTemplate.from_messages([("system", "You are terse."), ("human", "{question}")])
    model = ScriptedChatModel(turns=lambda: itertools.repeat(Turn("ok")), model_name="gpt-4o-mini")
    chain = prompt | model
    inputs = {"question": "What is the budget?"}

    def run(make: Callable[[], list[Any]]) -> Callable[[], None]:
        def go() -> None:
            callbacks = make()
            for _ in range(calls):
                chain.invoke(inputs, config={"callbacks": callbacks})

        return go

    variants = {
        "without handler": run(list),
        "no-op handler": run(lambda: [NoopHandler()]),
        "BudgetCallbackHandler": run(lambda: [new_handler()]),
    }
    # See measurement 3: once a BudgetMiddleware exists, its router joins every LangChain run.
    router = _budget_middleware_agent(None, None) is not None
    variants = {name: _without_budget_router(fn) for name, fn in variants.items()}
    if router:
        variants["without handler, BudgetMiddleware router registered"] = run(list)
    timings = alternate(variants, config.rounds, warmup=config.warmup)
    base = "without handler"
    section = Section(
        "2",
        "LangChain callback overhead per model call",
        f"`ChatPromptTemplate | ScriptedChatModel` invoked {calls} times per sample (one handler per sample,"
        " limits on calls, tokens and cost, in-memory ledger), with the handler vs without any callbacks."
        " The *no-op handler* row isolates what LangChain itself adds as soon as a run has any handler"
        " (it then builds callback managers and child run ids it otherwise skips); *handler / no-op* is"
        " our own code's share.",
    )
    section.rows = [
        timings.row(
            "BudgetCallbackHandler",
            base,
            target=TARGET,
            note=_overhead_note(timings, "BudgetCallbackHandler", base, calls, "call"),
        ),
        timings.row("no-op handler", base, note=_overhead_note(timings, "no-op handler", base, calls, "call")),
        timings.row("BudgetCallbackHandler", "no-op handler"),
    ]
    if router:
        name = "without handler, BudgetMiddleware router registered"
        section.rows.append(
            timings.row(
                name,
                base,
                label="no handler, but a BudgetMiddleware created earlier in the process / without handler",
                note=_overhead_note(timings, name, base, calls, "call"),
            )
        )
    section.notes.append(
        f"Baseline: {_per_unit_us(timings, base, calls):.0f} µs per chain invocation without callbacks."
    )
    # The same chain against a model that answers in 5 ms: still far faster than a real provider.
    slow_calls = config.pick(40, 3)
    slow_chain = prompt | ScriptedChatModel(
        turns=lambda: itertools.repeat(Turn("ok")), model_name="gpt-4o-mini", latency=0.005
    )

    def slow(make: Callable[[], list[Any]]) -> Callable[[], None]:
        def go() -> None:
            callbacks = make()
            for _ in range(slow_calls):
                slow_chain.invoke(inputs, config={"callbacks": callbacks})

        return go

    slow_timings = alternate(
        {
            "without handler (5 ms model)": _without_budget_router(slow(list)),
            "BudgetCallbackHandler (5 ms model)": _without_budget_router(slow(lambda: [new_handler()])),
        },
        config.rounds,
        warmup=config.warmup,
    )
    section.rows.append(
        slow_timings.row(
            "BudgetCallbackHandler (5 ms model)",
            "without handler (5 ms model)",
            target=TARGET,
            label="BudgetCallbackHandler / without handler, model answering in 5 ms",
        )
    )
    if not config.quick and not section.rows[0].met:
        section.notes += ["", *profile(_without_budget_router(run(lambda: [new_handler()])))]
    return section


# -- 1. ReAct loop of 200 steps ---------------------------------------------------------


def react_loop(config: Config) -> Section:
    from langchain.agents import create_agent
    from langgraph.errors import GraphRecursionError

    steps = config.pick(200, 20)
    model = runaway_model()
    tool = counting_tool()
    agent = create_agent(model, [tool])
    guarded_graph = _langgraph_guard(agent)
    inputs = {"messages": [("user", "go")]}
    seen: dict[str, Any] = {}

    def invoke(graph: Any, callbacks: list[Any]) -> None:
        with contextlib.suppress(GraphRecursionError):
            graph.invoke(inputs, config={"recursion_limit": steps, "callbacks": callbacks})

    def with_handler() -> None:
        handler = new_handler()
        invoke(agent, [handler])
        seen["report"] = handler.report()

    variants: dict[str, Callable[[], None]] = {
        "unguarded": lambda: invoke(agent, []),
        "no-op handler": lambda: invoke(agent, [NoopHandler()]),
        "BudgetCallbackHandler": with_handler,
    }
    if guarded_graph is not None:
        variants["LangGraph guard"] = lambda: invoke(guarded_graph, [])
    variants = {name: _without_budget_router(fn) for name, fn in variants.items()}
    timings = alternate(variants, config.rounds, warmup=config.warmup)
    used = seen["report"]["used"]
    section = Section(
        "1",
        f"Guard overhead on a {steps}-step ReAct loop",
        "`langchain.agents.create_agent(runaway_model(), [counting_tool()])` run until"
        f" `recursion_limit={steps}` stops it (LangGraph's `GraphRecursionError` is caught, the same in every"
        " variant); one run per sample. Guarded variants limit calls, tokens and cost (never reached) on an"
        " in-memory ledger: *LangGraph guard* is `budget_plugins_langgraph.guard(agent, budget)` (a fresh run"
        " scope per invocation); *BudgetCallbackHandler* is a fresh handler per run passed in `callbacks`. A"
        f" handler-guarded run counted steps={used.get('steps')}, model_calls={used.get('model_calls')},"
        f" tool_calls={used.get('tool_calls')}.",
    )
    if guarded_graph is None:
        section.method += " **The LangGraph guard is not available (not committed yet): only the handler is measured.**"
    if guarded_graph is not None:
        section.rows.append(
            timings.row(
                "LangGraph guard",
                "unguarded",
                label="LangGraph guard / unguarded",
                target=TARGET,
                note=_overhead_note(timings, "LangGraph guard", "unguarded", steps, "step"),
            )
        )
    section.rows += [
        timings.row(
            "BudgetCallbackHandler",
            "unguarded",
            label="handler / unguarded",
            target=TARGET,
            note=_overhead_note(timings, "BudgetCallbackHandler", "unguarded", steps, "step"),
        ),
        timings.row(
            "no-op handler",
            "unguarded",
            note=_overhead_note(timings, "no-op handler", "unguarded", steps, "step"),
        ),
        timings.row("BudgetCallbackHandler", "no-op handler", label="handler / no-op handler"),
    ]
    if not config.quick and guarded_graph is not None and not section.rows[0].met:
        section.notes += profile(_without_budget_router(lambda: invoke(guarded_graph, [])))
    elif not config.quick and not section.rows[0].met:
        section.notes += profile(_without_budget_router(with_handler))
    return section


def _without_budget_router(fn: Callable[[], object]) -> Callable[[], object]:
    """Run ``fn`` with BudgetMiddleware's process-wide callback router switched off (if it exists)."""
    try:
        from budget_plugins._middleware import _router_var
    except ImportError:
        return fn

    def run() -> None:
        token = _router_var.set(None)
        try:
            fn()
        finally:
            _router_var.reset(token)

    return run


def _budget_middleware_agent(create_agent: Any, fresh_model: Callable[[], Any] | None) -> Any:
    """A ``create_agent`` agent with ``budget_plugins.BudgetMiddleware`` (just the middleware without
    ``fresh_model``), or None while it is not available."""
    try:
        from budget_plugins import BudgetMiddleware
    except ImportError:
        return None
    if fresh_model is None:
        return BudgetMiddleware(guard_budget(), hooks=[])
    return create_agent(fresh_model(), [counting_tool()], middleware=[BudgetMiddleware(guard_budget(), hooks=[])])


def _langgraph_guard(graph: Any) -> Any:
    """``budget_plugins_langgraph.guard(graph, ...)``, or None while the guard is not available."""
    try:
        from budget_plugins_langgraph import guard
    except ImportError:
        return None
    return guard(graph, guard_budget(), ledger=InMemoryLedger(), hooks=[])


# -- 3. versus LangChain's call-limit middlewares --------------------------------------


def versus_middleware(config: Config) -> Section:
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelCallLimitMiddleware, ToolCallLimitMiddleware

    model_calls = config.pick(100, 10)
    script = [Turn("Calling search.", tools=[("search", {"query": "more"})])] * (model_calls - 1) + [Turn("done")]
    steps = 2 * model_calls - 1

    def fresh_model() -> ScriptedChatModel:
        # Each run consumes exactly one pass over the script, so the cycle restarts with the next run.
        return ScriptedChatModel(turns=lambda: itertools.cycle(script), model_name="gpt-4o-mini")

    plain = create_agent(fresh_model(), [counting_tool()])
    guarded_agent = create_agent(fresh_model(), [counting_tool()])
    theirs = create_agent(
        fresh_model(),
        [counting_tool()],
        middleware=[
            ModelCallLimitMiddleware(run_limit=1_000_000, exit_behavior="error"),
            ToolCallLimitMiddleware(run_limit=1_000_000, exit_behavior="error"),
        ],
    )
    inputs = {"messages": [("user", "go")]}
    limit = {"recursion_limit": 10 * steps}
    seen: dict[str, Any] = {}

    def ours() -> None:
        handler = new_handler()
        seen["result"] = guarded_agent.invoke(inputs, config={**limit, "callbacks": [handler]})
        seen["report"] = handler.report()

    variants: dict[str, Callable[[], object]] = {
        "unguarded": lambda: plain.invoke(inputs, config=limit),
        "LangChain middlewares (calls only)": lambda: theirs.invoke(inputs, config=limit),
        "BudgetCallbackHandler (calls+tokens+cost)": ours,
    }
    graph_guarded = _langgraph_guard(create_agent(fresh_model(), [counting_tool()]))
    if graph_guarded is not None:

        def graph() -> None:
            graph_guarded.invoke(inputs, config=limit)
            seen["graph"] = graph_guarded.last_report["used"]

        variants["LangGraph guard (calls+tokens+cost)"] = graph
    # Creating a BudgetMiddleware registers a process-wide callback router that joins *every* later
    # LangChain run; the other variants run with it switched off (as in a process that never created
    # one), and one extra variant measures the plain agent with it on.
    middleware_agent = _budget_middleware_agent(create_agent, fresh_model)
    variants = {name: _without_budget_router(fn) for name, fn in variants.items()}
    if middleware_agent is not None:

        def middleware() -> None:
            seen["middleware"] = middleware_agent.invoke(inputs, config=limit)["budget"]["used"]

        variants["BudgetMiddleware (calls+tokens+cost)"] = middleware
        variants["unguarded, BudgetMiddleware router registered"] = lambda: plain.invoke(inputs, config=limit)
    timings = alternate(variants, config.rounds, warmup=config.warmup)
    used = seen["report"]["used"]
    assert used["model_calls"] == model_calls, used
    assert graph_guarded is None or seen["graph"]["model_calls"] == model_calls, seen
    assert middleware_agent is None or seen["middleware"]["model_calls"] == model_calls, seen
    theirs_name, ours_name = list(variants)[1:3]
    section = Section(
        "3",
        "Versus LangChain `ModelCallLimitMiddleware` + `ToolCallLimitMiddleware`",
        f"The same `create_agent` ReAct loop, scripted to end by itself after {model_calls} model calls and"
        f" {model_calls - 1} tool calls ({steps} steps), one agent per variant: plain (*unguarded*); with"
        " LangChain 1.x's `ModelCallLimitMiddleware(run_limit=...)` + `ToolCallLimitMiddleware(run_limit=...)`"
        " (*theirs*, counting calls only); and ours, each limiting calls, total tokens and cost: plain + a"
        " `BudgetCallbackHandler` per run, `budget_plugins_langgraph.guard(agent, ...)`, and"
        " `budget_plugins.BudgetMiddleware` (when available). Limits are never reached. Target: ours costs no"
        " more per step than theirs (ratio ours/theirs ≤ 1.00).",
    )
    section.rows = [
        timings.row(ours_name, theirs_name, label="ours (handler) / theirs", target=1.0),
        timings.row(
            ours_name,
            "unguarded",
            label="ours (handler) / unguarded",
            note=_overhead_note(timings, ours_name, "unguarded", steps, "step"),
        ),
        timings.row(
            theirs_name,
            "unguarded",
            label="theirs / unguarded",
            note=_overhead_note(timings, theirs_name, "unguarded", steps, "step"),
        ),
    ]
    if graph_guarded is not None:
        name = "LangGraph guard (calls+tokens+cost)"
        section.rows[1:1] = [timings.row(name, theirs_name, label="ours (LangGraph guard) / theirs", target=1.0)]
        section.rows.append(
            timings.row(
                name,
                "unguarded",
                label="ours (LangGraph guard) / unguarded",
                note=_overhead_note(timings, name, "unguarded", steps, "step"),
            )
        )
    if middleware_agent is not None:
        name = "BudgetMiddleware (calls+tokens+cost)"
        section.rows[1:1] = [timings.row(name, theirs_name, label="ours (BudgetMiddleware) / theirs", target=1.0)]
        section.rows.append(
            timings.row(
                name,
                "unguarded",
                label="ours (BudgetMiddleware) / unguarded",
                note=_overhead_note(timings, name, "unguarded", steps, "step"),
            )
        )
        section.rows.append(
            timings.row(
                "unguarded, BudgetMiddleware router registered",
                "unguarded",
                label="unguarded with BudgetMiddleware's router registered / unguarded",
                note="side effect on runs that use no BudgetMiddleware",
            )
        )
        section.method += (
            " `BudgetMiddleware` uses its default ledger (one per run scope). Creating a `BudgetMiddleware` registers a"
            " process-wide callback router (`register_configure_hook` with a non-`None` default) that is then"
            " attached to **every** LangChain run in the process, guarded or not; the other variants run with"
            " it switched off, and the last row measures a plain agent with it on."
        )
    section.notes.append(
        "Their middlewares add graph nodes (`before_model`/`after_model` hooks run as LangGraph steps); our"
        " handler adds callbacks but no nodes, and LangChain builds callback managers for every run once any"
        " handler is attached."
    )
    return section
