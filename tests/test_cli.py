"""The CLI over events from real guarded runs: numbers checked against the guards' own reports."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent

from budget_plugins import (
    Budget,
    BudgetCallbackHandler,
    BudgetExceeded,
    Ceiling,
    InMemoryLedger,
    JsonlHook,
    read_events,
)
from budget_plugins._cli import format_share, format_usd, main, status_rows
from budget_plugins._errors import format_amount
from budget_plugins._report import recommend, summarize
from budget_plugins.testing import Turn, counting_tool, runaway_model, scripted_model

GO = {"messages": [("user", "go")]}
RESEARCH_RUNS = 20


def research_model(tool_turns: int) -> Any:
    """A model that calls ``search`` ``tool_turns`` times, then answers: a run of known size."""
    turns = [Turn(tools=[("search", {"query": "x"})], input_tokens=400, output_tokens=60)] * tool_turns
    return scripted_model([*turns, Turn("done", input_tokens=400, output_tokens=60)], max_tokens=256)


@dataclass
class Recorded:
    """An events file and the handlers that wrote it (their reports are the ground truth)."""

    path: Path
    ledger: InMemoryLedger
    research: list[BudgetCallbackHandler] = field(default_factory=list)
    support: list[BudgetCallbackHandler] = field(default_factory=list)
    writer: list[BudgetCallbackHandler] = field(default_factory=list)

    @property
    def handlers(self) -> list[BudgetCallbackHandler]:
        return [*self.research, *self.support, *self.writer]


class SharedLedger(InMemoryLedger):
    """Stands in for a Redis ledger that several processes write: run scopes are copied to it."""

    remote = True


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    hook = JsonlHook(path)
    ledger = SharedLedger()
    rec = Recorded(path, ledger)
    ceilings = [Ceiling(scope="tenant", max_cost_usd="50", window="month")]
    # acme/research: create_agent loops of 1..20 model calls that finish on their own.
    for k in range(RESEARCH_RUNS):
        handler = BudgetCallbackHandler(
            Budget(max_model_calls=100, max_cost_usd="1"),
            ledger=ledger,
            ceilings=ceilings,
            tenant="acme",
            workflow="research",
            agent="researcher",
            hooks=[hook],
        )
        create_agent(research_model(k), [counting_tool("search")]).invoke(GO, {"callbacks": [handler]})
        rec.research.append(handler)
    # acme/support: runaway agents stopped by max_tool_calls.
    for _ in range(3):
        handler = BudgetCallbackHandler(
            Budget(max_tool_calls=3),
            ledger=ledger,
            ceilings=ceilings,
            tenant="acme",
            workflow="support",
            agent="helper",
            hooks=[hook],
        )
        with pytest.raises(BudgetExceeded):
            create_agent(runaway_model(model_name="gpt-4o"), [counting_tool("search")]).invoke(
                GO, {"callbacks": [handler]}
            )
        rec.support.append(handler)
    # globex, no workflow: a plain chain in shadow mode that would be stopped after 2 calls.
    for calls in (4, 5):
        handler = BudgetCallbackHandler(
            Budget(max_model_calls=2, mode="shadow"), ledger=ledger, tenant="globex", agent="writer", hooks=[hook]
        )
        model = scripted_model([Turn(f"draft {i}", input_tokens=1000, output_tokens=300) for i in range(calls)])
        for _ in range(calls):
            model.invoke("write", config={"callbacks": [handler]})
        rec.writer.append(handler)
    for handler in rec.handlers:
        handler.meter.flush()  # now, rather than by the settler thread within SETTLE_DELAY
    return rec


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def ledger_cost(handlers: list[BudgetCallbackHandler]) -> Decimal:
    return sum((Decimal(h.report()["cost_usd"]) for h in handlers), Decimal(0))


def used(handlers: list[BudgetCallbackHandler], dimension: str) -> int:
    return sum(h.report()["used"].get(dimension, 0) for h in handlers)


def table_row(output: str, section: str, key: str) -> list[str]:
    """The cells of the row starting with ``key`` in the table under the ``section`` heading."""
    lines = output.splitlines()
    start = lines.index(section)
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == key:
            return cells
    raise AssertionError(f"no row {key!r} under {section!r} in:\n{output}")


# -- report -------------------------------------------------------------------------------------


def test_spend_by_tenant_matches_what_the_guards_charged(recorded: Recorded) -> None:
    report = summarize(read_events(recorded.path))
    acme = [*recorded.research, *recorded.support]
    rows = {row.key: row for row in report.by_tenant}
    assert rows["acme"].runs == len(acme)
    assert rows["acme"].model_calls == used(acme, "model_calls")
    assert rows["acme"].tool_calls == used(acme, "tool_calls")
    assert rows["globex"].model_calls == used(recorded.writer, "model_calls")
    # Events carry exact prices; the ledger rounds each call up to a whole micro-dollar.
    for key, handlers in (("acme", acme), ("globex", recorded.writer)):
        calls = used(handlers, "model_calls")
        assert Decimal(0) <= ledger_cost(handlers) - rows[key].cost_usd < Decimal(calls) / 1_000_000


def test_spend_by_workflow_agent_and_model_adds_up_to_the_total(recorded: Recorded) -> None:
    report = summarize(read_events(recorded.path))
    for rows in (report.by_tenant, report.by_workflow, report.by_agent):
        assert sum(r.cost_usd for r in rows) == report.total.cost_usd
        assert sum(r.model_calls for r in rows) == report.total.model_calls
    assert sum(r.cost_usd for r in report.by_model) == report.total.cost_usd
    workflows = {r.key: r for r in report.by_workflow}
    assert workflows["research"].model_calls == used(recorded.research, "model_calls")
    assert workflows["-"].model_calls == used(recorded.writer, "model_calls")
    models = {r.key: r for r in report.by_model}
    assert models["gpt-4o"].model_calls == used(recorded.support, "model_calls")
    assert {r.key for r in report.by_agent} == {"researcher", "helper", "writer"}


def test_denials_and_shadow_would_denials_are_counted_by_dimension(recorded: Recorded) -> None:
    report = summarize(read_events(recorded.path))
    decisions = {(d.dimension, d.scope): d for d in report.decisions}
    assert all(h.exhausted is not None and h.exhausted.dimension == "tool_calls" for h in recorded.support)
    assert decisions["tool_calls", "run"].deny == len(recorded.support)
    would = sum(h.report()["shadow_denials"].get("model_calls", 0) for h in recorded.writer)
    assert would == (4 - 2) + (5 - 2)
    assert decisions["model_calls", "run"].would_deny == would
    assert report.runs_denied == len(recorded.support)
    assert report.runs_would_deny == report.shadow_runs == len(recorded.writer)


def test_report_command_prints_the_tables(recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(capsys, "report", str(recorded.path))
    acme = [*recorded.research, *recorded.support]
    report = summarize(read_events(recorded.path))
    cost = {r.key: r.cost_usd for r in report.by_tenant}["acme"]
    row = table_row(out, "spend by tenant", "acme")
    assert row[1:4] == [str(len(acme)), str(used(acme, "model_calls")), str(used(acme, "tool_calls"))]
    assert row[-1] == format_usd(cost)
    tool_calls = next(d for d in report.decisions if d.dimension == "tool_calls")
    expected = [str(n) for n in (tool_calls.warn, tool_calls.degrade, len(recorded.support), 0)]
    assert table_row(out, "refusals by dimension", "tool_calls") == ["tool_calls", "run", *expected]
    assert f"runs stopped by the guard: {len(recorded.support)}" in out
    assert "2 of 2 shadow runs would have been stopped (100%)" in out


def test_report_keeps_going_past_a_partial_last_line(tmp_path: Path, recorded: Recorded) -> None:
    partial = tmp_path / "events.jsonl"
    partial.write_text(recorded.path.read_text() + '{"kind": "settle", "cost_u')
    assert main(["report", str(partial)]) == 0


def test_report_shows_progress_on_request(recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(recorded.path), "--progress"]) == 0
    events = sum(1 for _ in read_events(recorded.path))
    assert f"100% ({events:,} events)" in capsys.readouterr().err


def test_a_missing_events_file_is_an_error_that_says_how_to_record_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nope.jsonl")]) == 2
    assert "JsonlHook" in capsys.readouterr().err


# -- recommend ------------------------------------------------------------------------------------


def nearest_rank(values: list[int], q: float) -> int:
    return sorted(values)[math.ceil(q * len(values)) - 1]


def test_recommendation_is_p95_of_the_runs_with_headroom(recorded: Recorded) -> None:
    rec = next(r for r in recommend(read_events(recorded.path)) if r.group == "research")
    assert (rec.group_by, rec.runs, rec.denied_runs) == ("workflow", RESEARCH_RUNS, 0)
    calls = [h.report()["used"]["model_calls"] for h in recorded.research]
    metric = {m.name: m for m in rec.metrics}
    assert metric["model calls"].p50 == nearest_rank(calls, 0.5)
    assert metric["model calls"].p95 == nearest_rank(calls, 0.95)
    assert rec.budget_kwargs()["max_model_calls"] == math.ceil(nearest_rank(calls, 0.95) * 1.5)
    costs = [Decimal(h.report()["cost_usd"]) for h in recorded.research]
    p95_cost = metric["cost (USD)"].p95
    assert isinstance(p95_cost, Decimal)
    assert abs(p95_cost - sorted(costs)[math.ceil(0.95 * len(costs)) - 1]) < Decimal("0.0001")
    assert Decimal(rec.budget_kwargs()["max_cost_usd"]) >= p95_cost * Decimal("1.5")
    # Steps are node executions inside create_agent's graph: not in the events, so not guessed.
    assert metric["steps"].p95 is None
    assert "max_steps" not in rec.budget_kwargs()


def test_recommended_budget_admits_the_p95_run_and_stops_a_runaway(recorded: Recorded) -> None:
    rec = next(r for r in recommend(read_events(recorded.path)) if r.group == "research")
    budget = eval(rec.budget_source(), {"Budget": Budget})  # the printed line is what users paste
    assert budget == rec.budget()
    p95_calls = {m.name: m for m in rec.metrics}["model calls"].p95
    assert isinstance(p95_calls, int)
    handler = BudgetCallbackHandler(budget, hooks=[])
    create_agent(research_model(p95_calls - 1), [counting_tool("search")]).invoke(GO, {"callbacks": [handler]})
    assert handler.exhausted is None
    runaway = BudgetCallbackHandler(budget, hooks=[])
    with pytest.raises(BudgetExceeded):
        create_agent(runaway_model(max_tokens=256), [counting_tool("search")]).invoke(GO, {"callbacks": [runaway]})


def test_runs_without_a_workflow_are_grouped_by_agent_and_know_their_steps(recorded: Recorded) -> None:
    rec = next(r for r in recommend(read_events(recorded.path)) if r.group == "writer")
    assert (rec.group_by, rec.runs, rec.would_deny_runs) == ("agent", 2, 2)
    metric = {m.name: m for m in rec.metrics}
    # Outside a graph every model and tool call is a step, as the guard counts them.
    assert metric["steps"].p95 == max(h.report()["used"]["steps"] for h in recorded.writer)
    assert rec.budget_kwargs()["max_steps"] == math.ceil(5 * 1.5)
    assert "max_tool_calls" not in rec.budget_kwargs()  # no tool was ever called: no limit suggested


def test_denied_runs_are_flagged_because_their_usage_was_capped(recorded: Recorded) -> None:
    rec = next(r for r in recommend(read_events(recorded.path)) if r.group == "support")
    assert rec.denied_runs == len(recorded.support)
    assert {m.name: m for m in rec.metrics}["tool calls"].p95 == 3


def test_recommend_command_prints_percentiles_and_a_budget(
    recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_cli(capsys, "recommend", str(recorded.path), "--headroom", "2")
    rec = next(r for r in recommend(read_events(recorded.path), headroom=2) if r.group == "research")
    metric = {m.name: m for m in rec.metrics}
    assert "workflow research: 20 runs" in out
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("workflow research")))
    section = "\n".join(lines[start : start + 12])
    row = table_row(section, lines[start], "model calls")
    assert row[1:] == [
        str(metric["model calls"].p50),
        str(metric["model calls"].p95),
        str(metric["model calls"].suggested),
    ]
    assert rec.budget_source() in section
    assert "3 stopped by the guard" in out


def test_recommend_by_tenant(recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(capsys, "recommend", str(recorded.path), "--by", "tenant")
    assert "tenant acme: 23 runs" in out
    assert "tenant globex: 2 runs" in out


def test_headroom_below_one_is_refused(recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", str(recorded.path), "--headroom", "0.9"]) == 2
    assert "at least 1" in capsys.readouterr().err


# -- max-burn --------------------------------------------------------------------------------------


def test_max_burn_command_judges_the_burst(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(
        capsys,
        "max-burn",
        "--model", "gpt-4o",
        "--iterations", "50",
        "--input-tokens", "6000",
        "--output-tokens", "400",
        "--retries", "3",
        "--concurrency", "10",
        "--monthly-budget", "300",
        "--max-model-calls", "20",
    )  # fmt: skip
    # 50 x $0.019 x 4 x 10 = $38 = 12.7% of $300; the guard: 20 calls x $0.019 x 10 = $3.80 = 1.27%.
    assert table_row(out, "", "worst case, 10 runs at once")[1:] == ["$38.00", "$3.80"]
    assert table_row(out, "", "share of $300.00 a month")[1:] == ["12.7%", "1.27%"]
    assert table_row(out, "", "verdict")[1:] == ["ceiling too loose", "weak enforcement"]
    assert table_row(out, "", "capped by")[1:] == ["-", "max_model_calls"]
    assert "verdict: weak enforcement" in out
    assert "note:" not in out  # no runs per month given


def test_max_burn_warns_when_every_run_at_its_cap_would_overspend_the_month(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["max-burn", "--model", "gpt-4o", "--iterations", "50", "--input-tokens", "6000", "--output-tokens", "400"]
    out = run_cli(capsys, *argv, "--monthly-budget", "300", "--runs-per-month", "2000", "--max-cost-usd", "0.25")
    # 13 calls x $0.019 = $0.247 a run; 2,000 runs = $494 = 165% of $300, which allows $0.15 a run.
    assert table_row(out, "", "2,000 runs a month, all at worst")[2] == "$494.00 (165%)"
    assert "the month would cost 165% of the budget; 2,000 runs fit in it at $0.15 a run" in out


def test_max_burn_rejects_a_bad_budget_field_with_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["max-burn", "--model", "gpt-4o", "--iterations", "5", "--input-tokens", "10", "--output-tokens", "1"]
    assert main([*argv, "--max-cost-usd", "-1"]) == 2
    assert "max_cost_usd must be > 0" in capsys.readouterr().err
    unknown = [*argv[:2], "made-up-model-x", *argv[3:]]
    assert main(unknown) == 2
    assert "--input-price and --output-price" in capsys.readouterr().err
    out = run_cli(capsys, *unknown, "--input-price", "1", "--output-price", "4")
    assert "(price: fallback)" in out
    assert "= $0.000014" in out  # 10 x $1/M + 1 x $4/M


def test_cli_runs_as_a_module(recorded: Recorded) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "budget_plugins", "report", str(recorded.path), "--top", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "spend by tenant" in done.stdout
    assert "... 1 more" in done.stdout  # acme shown, globex folded into the rest


# -- status -----------------------------------------------------------------------------------------


def test_status_shows_each_scope_as_the_writers_keyed_it(recorded: Recorded) -> None:
    research = recorded.research[-1]
    run_id = research.meter.run_id
    rows = status_rows(recorded.ledger, tenant="acme", workflow="research", run=run_id)
    by_key = {(r[0], r[1].split()[0], r[2]): r for r in rows}
    tenant_cost = by_key["tenant acme", "month", "cost_usd"]
    acme = [*recorded.research, *recorded.support]
    assert tenant_cost[3] == "$50"
    assert Decimal(tenant_cost[4].lstrip("$")) == ledger_cost(acme)
    assert Decimal(tenant_cost[6].lstrip("$")) == 50 - ledger_cost(acme)
    run_calls = by_key[f"run {run_id}", "-", "model_calls"]
    assert run_calls[3:6] == ["100", str(research.report()["used"]["model_calls"]), "0"]
    assert run_calls[6] == str(100 - research.report()["used"]["model_calls"])
    # The workflow has no ceiling of its own: nothing is kept for it.
    assert not any(r[0] == "workflow research" for r in rows)


def test_status_finds_nothing_under_the_wrong_window_or_workflow(recorded: Recorded) -> None:
    assert status_rows(recorded.ledger, tenant="acme", windows=["day"]) == []
    run_id = recorded.research[0].meter.run_id
    assert status_rows(recorded.ledger, tenant="acme", workflow="support", run=run_id, windows=[]) == []


def test_status_command_on_an_empty_ledger_says_what_to_check(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(capsys, "status", "--ledger", "memory://", "--tenant", "acme", "--workflow", "research")
    assert "memory://: tenant acme, workflow research" in out
    assert "nothing recorded" in out


def test_status_command_reads_live_usage_from_redis(
    redis_ledger_factory: Any, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = "cli" + uuid.uuid4().hex[:8]
    ledger = redis_ledger_factory(namespace=namespace)
    handler = BudgetCallbackHandler(
        Budget(max_tool_calls=4),
        ledger=ledger,
        ceilings=[
            Ceiling(scope="tenant", max_cost_usd="20", window="month"),
            Ceiling(scope="workflow", max_model_calls=500),
        ],
        tenant="acme",
        workflow="support",
        hooks=[],
    )
    with pytest.raises(BudgetExceeded):
        create_agent(runaway_model(model_name="gpt-4o"), [counting_tool("search")]).invoke(GO, {"callbacks": [handler]})
    report = handler.report()  # flushes the settlement deferred to the next reserve
    run_id = handler.meter.run_id
    out = run_cli(
        capsys,
        "status", "--ledger", redis_url, "--namespace", namespace,
        "--tenant", "acme", "--workflow", "support", "--run", run_id,
    )  # fmt: skip
    cost = Decimal(report["cost_usd"])
    calls = report["used"]["model_calls"]
    rows = {(row[0], row[2]): row for row in (re.split(r"\s{2,}", line.strip()) for line in out.splitlines()[2:])}
    tenant_cost = rows["tenant acme", "cost_usd"]
    assert tenant_cost[1].startswith("month ")
    assert tenant_cost[3:] == [
        "$20",
        format_amount("cost_usd", int(cost * 1_000_000)),
        "$0",
        format_amount("cost_usd", int((20 - cost) * 1_000_000)),
        format_share(cost / 20),
    ]
    workflow_calls = rows["workflow support", "model_calls"]
    assert workflow_calls[1] == "-"
    assert workflow_calls[3:] == ["500", str(calls), "0", str(500 - calls), format_share(Decimal(calls) / 500)]
    assert rows[f"run {run_id}", "tool_calls"][3:] == ["4", "4", "0", "0", "100%"]
    # The windowless tenant scope is another scope: nothing there.
    out = run_cli(
        capsys, "status", "--ledger", redis_url, "--namespace", namespace, "--tenant", "acme", "--window", "none"
    )
    assert "nothing recorded" in out


def test_status_shows_limited_dimensions_and_spend_unless_asked_for_every_counter(recorded: Recorded) -> None:
    run_id = recorded.support[0].meter.run_id
    rows = status_rows(recorded.ledger, tenant="acme", workflow="support", run=run_id, windows=[])
    assert [row[2] for row in rows] == ["cost_usd", "tool_calls"]  # Budget(max_tool_calls=3) and what it cost
    every = status_rows(
        recorded.ledger, tenant="acme", workflow="support", run=run_id, windows=[], every_dimension=True
    )
    used = recorded.support[0].report()["used"]
    assert {row[2]: row[4] for row in every if row[2] != "cost_usd"} == {
        k: str(v) for k, v in used.items() if k != "cost_usd"
    }


def test_status_on_an_unreachable_ledger_exits_1_with_the_cause(capsys: pytest.CaptureFixture[str]) -> None:
    from redis_server import free_port

    assert (
        main(["status", "--ledger", f"redis://127.0.0.1:{free_port()}/0", "--tenant", "acme", "--window", "none"]) == 1
    )
    assert "ledger unavailable" in capsys.readouterr().err
    assert main(["status", "--ledger", "ftp://nowhere", "--tenant", "acme"]) == 2
    assert "use memory://, redis://" in capsys.readouterr().err
