"""The ``budget-plugins`` command line.

Subcommands: ``demo`` (the runaway-agent demo), ``max-burn`` (worst-case spend
against a monthly budget), ``report`` and ``recommend`` (over a JSONL events
file written by :class:`~budget_plugins.JsonlHook`), ``status`` (live usage in a
ledger). Output is plain-text tables; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TextIO, cast

from budget_plugins._burn import BurnEstimate, max_burn
from budget_plugins._errors import (
    COST_DIMENSION,
    BudgetConfigError,
    LedgerUnavailable,
    UnpricedModelError,
    format_amount,
)
from budget_plugins._events import BudgetEvent
from budget_plugins._ledger import Ledger, Scope, window_bucket
from budget_plugins._policy import Budget, Price, Window
from budget_plugins._report import SpendRow, recommend, summarize

# -- formatting ----------------------------------------------------------------------


def format_usd(value: Decimal) -> str:
    """Dollars for people: cents from a dollar up, three significant digits below.

    Example:
        >>> format_usd(Decimal("1234.5")), format_usd(Decimal("0.5")), format_usd(Decimal("0.019"))
        ('$1,234.50', '$0.50', '$0.019')
        >>> format_usd(Decimal("0.0000271234")), format_usd(Decimal(0))
        ('$0.0000271', '$0.00')
    """
    if value == 0:
        return "$0.00"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    decimals = max(2, -value.adjusted() + 2)
    text = f"{value:.{decimals}f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"${whole}.{fraction}"


def format_share(share: Decimal) -> str:
    """A fraction as a percentage with three significant digits.

    Example:
        >>> format_share(Decimal("0.0076")), format_share(Decimal("0.456")), format_share(Decimal("12.5"))
        ('0.76%', '45.6%', '1,250%')
    """
    percent = share * 100
    if percent >= 100:
        return f"{percent:,.0f}%"
    return f"{float(percent):.3g}%"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, indent: str = "") -> list[str]:
    r"""Columns padded to their widest cell; numbers (and amounts) right-aligned.

    Example:
        >>> print("\n".join(render_table(["tenant", "calls", "cost"], [["acme", 12, "$1.50"], ["beta", 3, "$0.25"]])))
        tenant  calls   cost
        acme       12  $1.50
        beta        3  $0.25
    """
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right = []
    for i in range(len(headers)):
        filled = [row[i] for row in cells if row[i] not in ("", "-")]
        right.append(bool(filled) and all(_numeric(cell) for cell in filled))

    def line(row: Sequence[str]) -> str:
        parts = [cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right, strict=False)]
        return (indent + "  ".join(parts)).rstrip()

    return [line(list(headers)), *(line(row) for row in cells)]


def _numeric(cell: str) -> bool:
    stripped = cell.lstrip("$<").rstrip("%").replace(",", "").replace("_", "")
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def _error(message: str) -> int:
    print(f"budget-plugins: error: {message}", file=sys.stderr)
    return 2


# -- demo (unchanged) ------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from budget_plugins._demo import run_demo

    ledger = None
    if args.redis:
        from budget_plugins import ledger_from_url

        ledger = ledger_from_url(args.redis)
    run_demo(safety_stop=args.safety_stop, ledger=ledger)
    return 0


# -- max-burn ----------------------------------------------------------------------------

_GUARD_COUNTS = (
    "max_steps",
    "max_model_calls",
    "max_retries",
    "max_input_tokens",
    "max_output_tokens",
    "max_total_tokens",
)

_ADVICE = {
    "genuine enforcement": "a runaway burst is a rounding error in the month",
    "weak enforcement": "a runaway burst is noticeable; tighten the per-run limits if it can recur within a month",
    "ceiling too loose": "one runaway burst costs a large part of the month: lower max_cost_usd / max_model_calls "
    "or add a workflow ceiling",
    "no enforcement": "one runaway burst can spend the whole monthly budget: set per-run limits and a shared ceiling",
}


def _monthly(monthly: Decimal | None, budget: Decimal | None) -> str:
    if monthly is None:  # pragma: no cover - set whenever runs_per_month is
        return "-"
    return format_usd(monthly) + (f" ({format_share(monthly / budget)})" if budget else "")


def _burn_of(args: argparse.Namespace, budget: Budget | None, price: Price | None) -> BurnEstimate:
    return max_burn(
        args.model,
        iterations=args.iterations,
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        retries=args.retries,
        concurrency=args.concurrency,
        monthly_budget=args.monthly_budget,
        runs_per_month=args.runs_per_month,
        budget=budget,
        ceiling_usd=args.ceiling_usd,
        provider=args.provider,
        price=price,
    )


def _max_burn(args: argparse.Namespace, out: TextIO) -> int:
    limits = {name: getattr(args, name) for name in (*_GUARD_COUNTS, "max_cost_usd") if getattr(args, name) is not None}
    budget = Budget(**limits) if limits else None
    price = None
    if args.input_price is not None or args.output_price is not None:
        if args.input_price is None or args.output_price is None:
            return _error("give both --input-price and --output-price (dollars per million tokens)")
        price = Price(input_per_mtok=args.input_price, output_per_mtok=args.output_price)
    try:
        burn = _burn_of(args, budget, price)
    except UnpricedModelError:
        return _error(
            f"genai-prices has no price for {args.model!r}; check the name (or --provider), or give "
            "--input-price and --output-price in dollars per million tokens"
        )

    print(f"max burn of {burn.model} (price: {burn.price_source})", file=out)
    print(
        f"  one call: {burn.input_tokens:,} input + {burn.output_tokens:,} output tokens = "
        f"{format_usd(burn.cost_per_call)}",
        file=out,
    )
    print(
        f"  formula:  {burn.iterations:,} iterations x {format_usd(burn.cost_per_call)} a call"
        f" x {burn.retry_multiplier} attempts (1 + {args.retries} retries) x {burn.concurrency:,} concurrent runs\n",
        file=out,
    )
    exposures = [("unguarded", burn.unguarded)]
    if burn.guarded is not None:
        exposures.append(("guarded", burn.guarded))
    rows: list[list[object]] = [
        ["model calls per run", *(f"{e.calls_per_run:,}" for _, e in exposures)],
        ["capped by", *(e.bound_by or "-" for _, e in exposures)],
        ["worst case per run", *(format_usd(e.per_run_usd) for _, e in exposures)],
        [f"worst case, {burn.concurrency:,} runs at once", *(format_usd(e.burst_usd) for _, e in exposures)],
    ]
    if burn.monthly_budget is not None:
        rows.append(
            [
                f"share of {format_usd(burn.monthly_budget)} a month",
                *(format_share(e.share) if e.share is not None else "-" for _, e in exposures),
            ]
        )
        rows.append(["verdict", *(e.verdict or "-" for _, e in exposures)])
    if burn.runs_per_month is not None:
        rows.append(
            [
                f"{burn.runs_per_month:,} runs a month, all at worst",
                *(_monthly(e.monthly_usd, burn.monthly_budget) for _, e in exposures),
            ]
        )
    for text in render_table(["", *(name for name, _ in exposures)], rows):
        print(text, file=out)
    if budget is not None or args.ceiling_usd is not None:
        shown = ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in limits.items())
        ceiling = f", monthly ceiling ${args.ceiling_usd} shared by all runs" if args.ceiling_usd is not None else ""
        print(f"\nguard: Budget({shown}){ceiling}", file=out)
    final = burn.guarded or burn.unguarded
    if final.verdict is not None:
        print(f"\nverdict: {final.verdict}: {_ADVICE[final.verdict]}", file=out)
    monthly, budget_usd, runs = final.monthly_usd, burn.monthly_budget, burn.runs_per_month
    if monthly is not None and budget_usd is not None and runs and monthly > budget_usd:
        print(
            f"note: if every run reached its worst case the month would cost {format_share(monthly / budget_usd)} of "
            f"the budget; {runs:,} runs fit in it at {format_usd(budget_usd / runs)} a run",
            file=out,
        )
    return 0


# -- reading events with progress ----------------------------------------------------------


class EventReader:
    r"""Iterate the events of a JSONL file, with progress on stderr and bad lines skipped.

    A file still being written may end in a partial line; such lines are
    counted in ``skipped`` rather than aborting the report.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "events.jsonl"
        >>> _ = path.write_text('{"kind": "deny", "dimension": "steps"}\n{"kind": "se')
        >>> reader = EventReader(path)
        >>> [e.kind for e in reader], reader.skipped
        (['deny'], 1)
    """

    def __init__(self, path: str | os.PathLike[str], *, progress: bool = False, stream: TextIO | None = None) -> None:
        self.path = Path(path)
        self.progress = progress
        self.stream = stream if stream is not None else sys.stderr
        self.read = 0
        self.skipped = 0

    def __iter__(self) -> Iterator[BudgetEvent]:
        size = self.path.stat().st_size or 1
        done = 0
        shown_at = time.monotonic()
        with self.path.open("rb") as handle:
            for raw in handle:
                done += len(raw)
                if not raw.strip():
                    continue
                try:
                    event = BudgetEvent.from_json(json.loads(raw))
                except (ValueError, TypeError):
                    self.skipped += 1
                    continue
                self.read += 1
                if self.progress and time.monotonic() - shown_at >= 0.2:
                    shown_at = time.monotonic()
                    self._show(done / size)
                yield event
        if self.progress:
            self._show(1.0)
            print(file=self.stream)

    def _show(self, fraction: float) -> None:
        print(f"\rreading {self.path.name}: {fraction:4.0%} ({self.read:,} events)", end="", file=self.stream)
        self.stream.flush()


def _reader(args: argparse.Namespace) -> EventReader:
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    return EventReader(args.events, progress=progress)


def _check_events_file(args: argparse.Namespace) -> str | None:
    path = Path(args.events)
    if not path.is_file():
        return f"no events file at {path}; record one with JsonlHook(path) in the handler's hooks"
    return None


# -- report --------------------------------------------------------------------------------


def _spend_table(column: str, rows: list[SpendRow], top: int, out: TextIO, *, tools: bool = True) -> None:
    shown = rows if top <= 0 else rows[:top]
    print(f"\nspend by {column}", file=out)
    table = [
        [
            r.key,
            f"{r.runs:,}",
            f"{r.model_calls:,}",
            *([f"{r.tool_calls:,}"] if tools else []),
            f"{r.input_tokens:,}",
            f"{r.output_tokens:,}",
            format_usd(r.cost_usd),
        ]
        for r in shown
    ]
    headers = [column, "runs", "model calls", *(["tool calls"] if tools else []), "input tokens", "output tokens"]
    headers.append("cost")
    for text in render_table(headers, table, indent="  "):
        print(text, file=out)
    if len(rows) > len(shown):
        rest = rows[len(shown) :]
        print(f"  ... {len(rest):,} more ({format_usd(sum((r.cost_usd for r in rest), Decimal(0)))})", file=out)


def _report(args: argparse.Namespace, out: TextIO) -> int:
    problem = _check_events_file(args)
    if problem:
        return _error(problem)
    reader = _reader(args)
    report = summarize(reader)
    total = report.total
    print(
        f"{args.events}: {report.events:,} events, {total.runs:,} runs, {format_usd(total.cost_usd)} spent on "
        f"{total.model_calls:,} model calls and {total.tool_calls:,} tool calls",
        file=out,
    )
    if reader.skipped:
        print(f"  ({reader.skipped:,} malformed lines skipped)", file=out)
    if total.model_calls + total.tool_calls:
        _spend_table("tenant", report.by_tenant, args.top, out)
        _spend_table("workflow", report.by_workflow, args.top, out)
        _spend_table("agent", report.by_agent, args.top, out)
        _spend_table("model", report.by_model, args.top, out, tools=False)
    print("\nrefusals by dimension", file=out)
    if not report.decisions:
        print("  none: no warning, degradation or refusal was recorded", file=out)
    else:
        rows = [[d.dimension, d.scope, d.warn, d.degrade, d.deny, d.would_deny] for d in report.decisions]
        for text in render_table(["dimension", "scope", "warn", "degrade", "deny", "would deny"], rows, indent="  "):
            print(text, file=out)
    print(f"\nruns stopped by the guard: {report.runs_denied:,}", file=out)
    if report.shadow_runs:
        share = Decimal(report.runs_would_deny) / report.shadow_runs
        print(
            f"shadow mode: {report.runs_would_deny:,} of {report.shadow_runs:,} shadow runs would have been stopped"
            f" ({format_share(share)})",
            file=out,
        )
    return 0


# -- recommend -------------------------------------------------------------------------------


def _cell(value: int | Decimal | None, money: bool) -> str:
    if value is None:
        return "-"
    if money:
        return format_usd(Decimal(value))
    return f"{value:,}"


def _recommend(args: argparse.Namespace, out: TextIO) -> int:
    problem = _check_events_file(args)
    if problem:
        return _error(problem)
    try:
        headroom = Decimal(args.headroom)
    except ArithmeticError:
        return _error(f"--headroom must be a number such as 1.5, got {args.headroom!r}")
    if not headroom.is_finite() or headroom < 1:
        return _error(f"--headroom must be at least 1 (e.g. 1.5), got {args.headroom}")
    reader = _reader(args)
    recommendations = recommend(reader, headroom=headroom, group_by=args.by)
    if not recommendations:
        print(f"{args.events}: no settled calls or refusals to learn from", file=out)
        return 0
    steps_unknown = False
    for index, rec in enumerate(recommendations):
        if index:
            print(file=out)
        notes = []
        if rec.denied_runs:
            notes.append(f"{rec.denied_runs:,} stopped by the guard: their usage is capped, P95 may understate")
        if rec.would_deny_runs:
            notes.append(f"{rec.would_deny_runs:,} would have been stopped (shadow)")
        if rec.runs < 20:
            notes.append("fewer than 20 runs: P95 is about the largest run")
        plural = "" if rec.runs == 1 else "s"
        print(
            f"{rec.group_by} {rec.group}: {rec.runs:,} run{plural}" + (f" ({'; '.join(notes)})" if notes else ""),
            file=out,
        )
        rows = []
        for metric in rec.metrics:
            money = metric.field == "max_cost_usd"
            if metric.name == "steps" and metric.p95 is None:
                steps_unknown = True
            rows.append(
                [
                    metric.name,
                    _cell(metric.p50, money),
                    _cell(metric.p95, money),
                    _cell(metric.suggested, money),
                ]
            )
        headers = ["per run", "P50", "P95", f"suggested (P95 x {rec.headroom})"]
        for text in render_table(headers, rows, indent="  "):
            print(text, file=out)
        print(f"  {rec.budget_source()}", file=out)
    if steps_unknown:
        print(
            "\nsteps: unknown for runs inside a graph (node executions are not in the events); "
            "size max_steps from the graph's recursion needs",
            file=out,
        )
    print(
        "note: a call is admitted only if its worst case (prompt + max_tokens) still fits, so keep max_cost_usd and "
        "max_total_tokens at least one call's worst case above what runs really use",
        file=out,
    )
    return 0


# -- status ---------------------------------------------------------------------------------

_WINDOWS = ("none", "hour", "day", "week", "month")


def _open_ledger(url: str, namespace: str | None) -> Ledger:
    from budget_plugins._ledger_url import ledger_from_url

    return ledger_from_url(url, **({"namespace": namespace} if namespace else {}))


def status_rows(
    ledger: Ledger,
    *,
    tenant: str,
    workflow: str | None = None,
    run: str | None = None,
    windows: Sequence[Window | None] = (None, "hour", "day", "week", "month"),
    every_dimension: bool = False,
) -> list[list[str]]:
    """One row per scope, window and dimension: the ``status`` table.

    Shown per scope: the dimensions that have a limit, and the spend; with
    ``every_dimension`` (or when a scope has neither) every counter it keeps.

    Scopes are looked up exactly as the writers keyed them: the tenant scope
    by tenant, the workflow scope by tenant and workflow, the run scope by
    tenant, workflow and run id; ceilings by their window (shown with the
    current bucket, e.g. ``month 2026-11``). Run scopes have no window.
    Columns: scope, window, dimension, limit, used, held, remaining, used %.

    Example:
        >>> from budget_plugins import InMemoryLedger, Scope
        >>> ledger = InMemoryLedger()
        >>> tenant = Scope("tenant", "acme", tenant="acme", limits={"model_calls": 10}, window="month")
        >>> _ = ledger.reserve("r1", [tenant], {"model_calls": 4})
        >>> [(row[0], row[1].split()[0], *row[2:]) for row in status_rows(ledger, tenant="acme")]
        [('tenant acme', 'month', 'model_calls', '10', '0', '4', '6', '40%')]
    """
    scopes = [(f"tenant {tenant}", Scope("tenant", tenant, tenant, workflow or "", window=w)) for w in windows]
    if workflow:
        scopes += [(f"workflow {workflow}", Scope("workflow", workflow, tenant, workflow, window=w)) for w in windows]
    if run:
        scopes.append((f"run {run}", Scope("run", run, tenant, workflow or "")))
    rows: list[list[str]] = []
    now = time.time()
    for label, scope in scopes:
        usage = ledger.snapshot(scope)
        shown_window = f"{scope.window} {window_bucket(scope.window, now)}" if scope.window else "-"
        kept = set(usage.limits) | set(usage.used) | set(usage.held)
        wanted = kept if every_dimension else {d for d in kept if d in usage.limits or d == COST_DIMENSION}
        for dimension in sorted(wanted or kept, key=_dimension_order):
            limit = usage.limits.get(dimension)
            remaining = usage.remaining(dimension)
            in_use = usage.in_use(dimension)
            rows.append(
                [
                    label,
                    shown_window,
                    dimension,
                    format_amount(dimension, limit) if limit is not None else "-",
                    format_amount(dimension, usage.used.get(dimension, 0)),
                    format_amount(dimension, usage.held.get(dimension, 0)),
                    format_amount(dimension, remaining) if remaining is not None else "-",
                    format_share(Decimal(in_use) / limit) if limit else "-",
                ]
            )
    return rows


def _dimension_order(dimension: str) -> tuple[int, str]:
    return (0 if dimension == COST_DIMENSION else 1, dimension)


def _status(args: argparse.Namespace, out: TextIO) -> int:
    windows = [None if w == "none" else cast("Window", w) for w in (args.window or _WINDOWS)]
    ledger = _open_ledger(args.ledger, args.namespace)
    try:
        rows = status_rows(
            ledger,
            tenant=args.tenant,
            workflow=args.workflow,
            run=args.run,
            windows=windows,
            every_dimension=args.all,
        )
    except LedgerUnavailable as exc:
        print(f"budget-plugins: ledger unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        close = getattr(ledger, "close", None)
        if callable(close):
            close()
    where = f"tenant {args.tenant}" + (f", workflow {args.workflow}" if args.workflow else "")
    where += f", run {args.run}" if args.run else ""
    print(f"{args.ledger}: {where}", file=out)
    if not rows:
        print(
            "  nothing recorded: check the ids (a run scope is keyed by tenant, workflow and run id) and --window",
            file=out,
        )
        return 0
    headers = ["scope", "window", "dimension", "limit", "used", "held", "remaining", "used %"]
    for text in render_table(headers, rows, indent="  "):
        print(text, file=out)
    return 0


# -- the parser -------------------------------------------------------------------------------


def _events_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("events", metavar="EVENTS.jsonl", help="events written by JsonlHook")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show reading progress on stderr (default: when stderr is a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="budget-plugins", description="Execution budgets inside agent loops.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the runaway-agent demo (no network, no keys)")
    demo.add_argument("--safety-stop", type=int, default=60, help="model calls before the unguarded run is cut off")
    demo.add_argument("--redis", metavar="URL", help="use a Redis ledger for the guarded run")
    demo.set_defaults(func=_demo)

    burn = sub.add_parser(
        "max-burn",
        help="worst-case spend of a runaway agent, judged against a monthly budget",
        description="max_iterations x tokens_per_call x model_rate x retry_multiplier x concurrency, priced from "
        "genai-prices; with Budget limits, what the guard caps it to.",
    )
    burn.add_argument("--model", required=True, help="model name, priced from genai-prices (e.g. gpt-4o)")
    burn.add_argument("--provider", help="provider id to disambiguate the model (openai, anthropic, ...)")
    burn.add_argument("--iterations", type=int, required=True, help="model calls a run makes before it stops")
    burn.add_argument("--input-tokens", type=int, required=True, help="input tokens per call (the largest prompt)")
    burn.add_argument("--output-tokens", type=int, required=True, help="output tokens per call (max_tokens)")
    burn.add_argument("--retries", type=int, default=0, help="retries per call; each call costs up to 1 + N times")
    burn.add_argument("--concurrency", type=int, default=1, help="runs that can run away at once")
    burn.add_argument("--monthly-budget", metavar="USD", help="the monthly budget to judge the burst against")
    burn.add_argument("--runs-per-month", type=int, help="runs a month (shows the month if every run hits its worst)")
    burn.add_argument("--input-price", metavar="USD", help="fallback $/million input tokens for unknown models")
    burn.add_argument("--output-price", metavar="USD", help="fallback $/million output tokens for unknown models")
    guard = burn.add_argument_group("guard", "Budget fields of each run, and a ceiling shared by all of them")
    for name in _GUARD_COUNTS:
        guard.add_argument("--" + name.replace("_", "-"), dest=name, type=int, metavar="N")
    guard.add_argument("--max-cost-usd", dest="max_cost_usd", metavar="USD")
    guard.add_argument("--ceiling-usd", metavar="USD", help="max_cost_usd of a monthly workflow/tenant Ceiling")
    burn.set_defaults(func=_max_burn)

    report = sub.add_parser("report", help="spend by tenant / workflow / agent / model and refusals by dimension")
    _events_arguments(report)
    report.add_argument("--top", type=int, default=20, help="rows per table, most expensive first (0: all)")
    report.set_defaults(func=_report)

    recommend = sub.add_parser("recommend", help="P50/P95 per run and suggested limits as a ready-to-paste Budget")
    _events_arguments(recommend)
    recommend.add_argument("--headroom", default="1.5", help="factor above P95 (default 1.5)")
    recommend.add_argument(
        "--by",
        choices=["auto", "workflow", "agent", "tenant"],
        default="auto",
        help="task class: the workflow, else the agent (auto), or one of them",
    )
    recommend.set_defaults(func=_recommend)

    status = sub.add_parser("status", help="live limits, used, held and remaining in a ledger")
    status.add_argument("--ledger", required=True, metavar="URL", help="redis://host:port/db (or memory://)")
    status.add_argument("--tenant", required=True)
    status.add_argument("--workflow")
    status.add_argument("--run", metavar="RUN_ID", help="also show this run scope")
    status.add_argument("--all", action="store_true", help="every counter, not only the limited ones and spend")
    status.add_argument("--namespace", help="the Redis ledger's namespace, if the writers set one (default bp)")
    status.add_argument(
        "--window",
        action="append",
        choices=_WINDOWS,
        help="the ceilings' window (repeatable; default: every window)",
    )
    status.set_defaults(func=_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``budget-plugins`` and ``python -m budget_plugins``."""
    args = build_parser().parse_args(argv)
    if args.func is _demo:
        result: int = args.func(args)
        return result
    try:
        code: int = args.func(args, sys.stdout)
    except BudgetConfigError as exc:
        return _error(str(exc))
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
