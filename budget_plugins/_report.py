"""Aggregations over recorded events: where the money went, and what limits to set.

:func:`summarize` answers "who spent what, and what was refused" from
``settle``, ``deny`` and ``would_deny`` events (``budget-plugins report``).
:func:`recommend` turns per-run usage into suggested limits at the 95th
percentile plus headroom (``budget-plugins recommend``). Both are pure: they take
any iterable of :class:`~budget_plugins.BudgetEvent`, e.g. from
:func:`~budget_plugins.read_events`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Literal, TypeVar

from budget_plugins._events import BudgetEvent
from budget_plugins._policy import Budget

UNATTRIBUTED = "-"
"""The group name of events that carry no tenant / workflow / agent / model."""

GroupBy = Literal["auto", "workflow", "agent", "tenant"]
"""How :func:`recommend` forms task classes; ``auto``: the workflow, else the agent."""

N = TypeVar("N", int, Decimal)


@dataclass(slots=True)
class SpendRow:
    """Spend of one group (a tenant, workflow, agent or model).

    Attributes:
        key: The group's name (``"-"`` for events without one).
        runs: Distinct run ids seen.
        model_calls: Settled model calls (failed attempts included).
        tool_calls: Settled tool executions.
        input_tokens: Input tokens, cached ones included.
        output_tokens: Output tokens.
        cost_usd: Dollars, exactly as priced per call.
    """

    key: str
    runs: int = 0
    model_calls: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    _run_ids: set[str] = field(default_factory=set, repr=False)

    def add(self, event: BudgetEvent) -> None:
        """Count one ``settle`` event."""
        if event.run_id is not None and event.run_id not in self._run_ids:
            self._run_ids.add(event.run_id)
            self.runs += 1
        if event.tool is not None:
            self.tool_calls += 1
        else:
            self.model_calls += 1
        self.input_tokens += event.input_tokens
        self.output_tokens += event.output_tokens
        self.cost_usd += event.cost_usd


@dataclass(slots=True)
class DecisionRow:
    """Threshold signals and refusals of one dimension in one scope kind.

    ``deny`` counts enforced refusals; ``would_deny`` the refusals shadow mode
    recorded instead; ``warn``/``degrade`` the threshold crossings (each at
    most once per run and dimension).
    """

    dimension: str
    scope: str
    warn: int = 0
    degrade: int = 0
    deny: int = 0
    would_deny: int = 0


@dataclass(frozen=True, slots=True)
class SpendReport:
    """What :func:`summarize` found.

    Attributes:
        events: Events read.
        total: All settled calls together.
        by_tenant: Spend per tenant, most expensive first (so are the others).
        by_workflow: Spend per workflow.
        by_agent: Spend per agent.
        by_model: Spend per model (model calls only).
        decisions: Signals and refusals per dimension and scope, most refusals first.
        runs_denied: Runs the guard stopped at least once.
        runs_would_deny: Shadow-mode runs that would have been stopped.
        shadow_runs: Runs recorded in shadow mode.
    """

    events: int
    total: SpendRow
    by_tenant: list[SpendRow]
    by_workflow: list[SpendRow]
    by_agent: list[SpendRow]
    by_model: list[SpendRow]
    decisions: list[DecisionRow]
    runs_denied: int
    runs_would_deny: int
    shadow_runs: int


def _ranked(rows: dict[str, SpendRow]) -> list[SpendRow]:
    return sorted(rows.values(), key=lambda r: (-r.cost_usd, -r.model_calls - r.tool_calls, r.key))


def summarize(events: Iterable[BudgetEvent]) -> SpendReport:
    """Spend by tenant / workflow / agent / model, and refusals by dimension.

    Example:
        >>> from decimal import Decimal
        >>> events = [
        ...     BudgetEvent(kind="settle", tenant="acme", run_id="r1", model="gpt-4o",
        ...                 input_tokens=1000, output_tokens=100, cost_usd=Decimal("0.0035")),
        ...     BudgetEvent(kind="settle", tenant="acme", run_id="r1", tool="search"),
        ...     BudgetEvent(kind="deny", tenant="acme", run_id="r1", dimension="tool_calls", limit=1, used=1),
        ...     BudgetEvent(kind="would_deny", tenant="beta", run_id="r2", dimension="cost_usd", shadow=True),
        ... ]
        >>> report = summarize(events)
        >>> row = report.by_tenant[0]
        >>> row.key, row.runs, row.model_calls, row.tool_calls, row.cost_usd
        ('acme', 1, 1, 1, Decimal('0.0035'))
        >>> [(d.dimension, d.deny, d.would_deny) for d in report.decisions]
        [('cost_usd', 0, 1), ('tool_calls', 1, 0)]
        >>> report.runs_denied, report.runs_would_deny
        (1, 1)
    """
    total = SpendRow("total")
    groups: dict[str, dict[str, SpendRow]] = {"tenant": {}, "workflow": {}, "agent": {}, "model": {}}
    decisions: dict[tuple[str, str], DecisionRow] = {}
    denied: set[str | None] = set()
    would_deny: set[str | None] = set()
    shadow: set[str | None] = set()
    count = 0
    for event in events:
        count += 1
        if event.shadow:
            shadow.add(event.run_id)
        if event.kind == "settle":
            total.add(event)
            keys = {"tenant": event.tenant, "workflow": event.workflow, "agent": event.agent}
            if event.tool is None:
                keys["model"] = event.model
            for group, key in keys.items():
                name = key or UNATTRIBUTED
                row = groups[group].get(name)
                if row is None:
                    row = groups[group][name] = SpendRow(name)
                row.add(event)
        elif event.kind in ("warn", "degrade", "deny", "would_deny"):
            dimension = event.dimension or "?"
            decision = decisions.get((dimension, event.scope))
            if decision is None:
                decision = decisions[dimension, event.scope] = DecisionRow(dimension, event.scope)
            if event.kind == "deny":
                decision.deny += 1
                denied.add(event.run_id)
            elif event.kind == "would_deny":
                decision.would_deny += 1
                would_deny.add(event.run_id)
            elif event.kind == "warn":
                decision.warn += 1
            else:
                decision.degrade += 1
    return SpendReport(
        events=count,
        total=total,
        by_tenant=_ranked(groups["tenant"]),
        by_workflow=_ranked(groups["workflow"]),
        by_agent=_ranked(groups["agent"]),
        by_model=_ranked(groups["model"]),
        decisions=sorted(
            decisions.values(),
            key=lambda d: (-d.deny - d.would_deny, -d.degrade - d.warn, d.dimension, d.scope),
        ),
        runs_denied=len(denied),
        runs_would_deny=len(would_deny),
        shadow_runs=len(shadow),
    )


# -- recommend --------------------------------------------------------------------


@dataclass(slots=True)
class RunStats:
    """What one run used, rebuilt from its events.

    Attributes:
        run_id: The run scope's id.
        group: Its task class (workflow, agent or tenant name; ``"-"`` if none).
        group_kind: What ``group`` names: ``workflow``, ``agent`` or ``tenant``.
        model_calls: Settled model calls, every attempt counted.
        tool_calls: Settled tool executions.
        retries: Calls that were retries of an earlier attempt.
        input_tokens: Input tokens.
        output_tokens: Output tokens.
        cost_usd: Dollars.
        steps: Model plus tool calls when the run was not a graph (its events
            carry no node); ``None`` inside a graph, where steps are node
            executions the events do not record.
        denied: The guard stopped the run: its usage is capped by the old limits.
        would_deny: Shadow mode recorded a would-be refusal.
    """

    run_id: str
    group: str
    group_kind: str = "workflow"
    model_calls: int = 0
    tool_calls: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    steps: int | None = 0
    denied: bool = False
    would_deny: bool = False

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


def _group_of(event: BudgetEvent, group_by: GroupBy) -> tuple[str, str | None]:
    if group_by == "workflow" or (group_by == "auto" and event.workflow):
        return "workflow", event.workflow
    if group_by == "agent" or group_by == "auto":
        return "agent", event.agent
    return "tenant", event.tenant


def run_stats(events: Iterable[BudgetEvent], *, group_by: GroupBy = "auto") -> list[RunStats]:
    """Per-run usage from ``settle``, ``deny`` and ``would_deny`` events, in first-seen order.

    Example:
        >>> from decimal import Decimal
        >>> stats = run_stats([
        ...     BudgetEvent(kind="settle", run_id="r1", workflow="research", model="m",
        ...                 input_tokens=10, output_tokens=5, cost_usd=Decimal("0.01")),
        ...     BudgetEvent(kind="settle", run_id="r1", workflow="research", tool="search"),
        ... ])
        >>> s = stats[0]
        >>> s.group, s.model_calls, s.tool_calls, s.total_tokens, s.cost_usd, s.steps
        ('research', 1, 1, 15, Decimal('0.01'), 2)
    """
    runs: dict[str, RunStats] = {}
    for event in events:
        if event.kind not in ("settle", "deny", "would_deny"):
            continue
        run_id = event.run_id or ""
        stats = runs.get(run_id)
        if stats is None:
            stats = runs[run_id] = RunStats(run_id, UNATTRIBUTED)
        kind, group = _group_of(event, group_by)
        if group and stats.group == UNATTRIBUTED:
            stats.group, stats.group_kind = group, kind
        if event.kind == "deny":
            stats.denied = True
            continue
        if event.kind == "would_deny":
            stats.would_deny = True
            continue
        if event.tool is not None:
            stats.tool_calls += 1
        else:
            stats.model_calls += 1
        stats.retries += event.retry
        stats.input_tokens += event.input_tokens
        stats.output_tokens += event.output_tokens
        stats.cost_usd += event.cost_usd
        if event.node is not None:
            stats.steps = None
        elif stats.steps is not None:
            stats.steps += 1
    return list(runs.values())


def percentile(values: Sequence[N], q: float) -> N:
    """The nearest-rank percentile: the smallest observed value with ``q`` of values at or below it.

    Nearest rank never interpolates below an observed run, so a P95 over few
    runs is the largest run or close to it: cautious, as a limit should be.

    Example:
        >>> percentile(list(range(1, 21)), 0.95), percentile(list(range(1, 21)), 0.5)
        (19, 10)
        >>> percentile([7], 0.95)
        7
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def round_up(value: Decimal, digits: int = 2) -> Decimal:
    """Round up to ``digits`` significant digits: limits read well and never undershoot.

    Example:
        >>> round_up(Decimal("31.5")), round_up(Decimal("1234")), round_up(Decimal("0.0008551"))
        (Decimal('32'), Decimal('1.3E+3'), Decimal('0.00086'))
        >>> round_up(Decimal("0"))
        Decimal('0')
    """
    if value <= 0:
        return Decimal(0)
    quantum = Decimal(1).scaleb(value.adjusted() - digits + 1)
    return (value / quantum).to_integral_value(rounding=ROUND_CEILING) * quantum


@dataclass(frozen=True, slots=True)
class Metric:
    """One per-run quantity of a task class, with the limit it suggests.

    Attributes:
        name: What is measured (``"model calls"``...).
        field: The :class:`Budget` field it suggests (``None``: shown, not suggested).
        p50: Median per run.
        p95: 95th percentile per run (nearest rank).
        suggested: ``p95 x headroom`` rounded up to 2 significant digits; ``None``
            when not suggested (no field, unknown, or a P95 of zero).
    """

    name: str
    field: str | None
    p50: int | Decimal | None
    p95: int | Decimal | None
    suggested: int | Decimal | None


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Suggested limits for one task class.

    Attributes:
        group: The task class (a workflow, agent or tenant name; ``"-"`` if none).
        group_by: What ``group`` names: ``workflow``, ``agent`` or ``tenant``.
        runs: Runs measured.
        denied_runs: Runs the guard stopped: their usage was capped by the old limits,
            so the percentiles may understate what the task needs.
        would_deny_runs: Shadow-mode runs that would have been stopped.
        headroom: The factor applied to P95.
        metrics: P50, P95 and the suggestion, per quantity.
    """

    group: str
    group_by: str
    runs: int
    denied_runs: int
    would_deny_runs: int
    headroom: Decimal
    metrics: tuple[Metric, ...]

    def budget_kwargs(self) -> dict[str, int | Decimal]:
        """The suggested :class:`Budget` fields.

        Example:
            >>> rec = recommend([BudgetEvent(kind="settle", run_id="r", workflow="w", model="m")])[0]
            >>> rec.budget_kwargs()
            {'max_steps': 2, 'max_model_calls': 2}
        """
        found = {m.field: m.suggested for m in self.metrics if m.field is not None and m.suggested is not None}
        order = list(Budget.model_fields)
        return dict(sorted(found.items(), key=lambda item: order.index(item[0])))

    def budget(self) -> Budget:
        """The suggested limits as a :class:`Budget`."""
        return Budget(**self.budget_kwargs())  # type: ignore[arg-type]

    def budget_source(self) -> str:
        """The suggestion as ready-to-paste Python.

        Example:
            >>> from decimal import Decimal
            >>> rec = recommend([BudgetEvent(kind="settle", run_id="r", workflow="w", model="m",
            ...                              input_tokens=9000, output_tokens=1000,
            ...                              cost_usd=Decimal("0.0004"))])[0]
            >>> rec.budget_source()
            'Budget(max_steps=2, max_model_calls=2, max_total_tokens=15_000, max_cost_usd="0.0006")'
        """
        parts = []
        for name, value in self.budget_kwargs().items():
            if isinstance(value, Decimal):
                parts.append(f'{name}="{value:f}"')
            else:
                parts.append(f"{name}={value:_}" if value >= 10_000 else f"{name}={value}")
        return f"Budget({', '.join(parts)})"


def _metric(
    name: str,
    budget_field: str | None,
    values: Sequence[N],
    headroom: Decimal,
    to_type: Callable[[Decimal], N],
) -> Metric:
    if not values:
        return Metric(name, budget_field, None, None, None)
    p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
    suggested = None
    if budget_field is not None and p95 > 0:
        suggested = to_type(round_up(Decimal(p95) * headroom))
    return Metric(name, budget_field, p50, p95, suggested)


def _as_int(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def _as_usd(value: Decimal) -> Decimal:
    # Plain notation (no exponent) so that it pastes and prints as written.
    return Decimal(f"{value.normalize():f}")


def recommend(
    events: Iterable[BudgetEvent],
    *,
    headroom: float | Decimal | str = "1.5",
    group_by: GroupBy = "auto",
) -> list[Recommendation]:
    """Suggested limits per task class: P95 of each per-run quantity times ``headroom``.

    Runs are grouped by workflow (or by agent when a run has no workflow), or
    by ``group_by``. Suggestions are rounded up to two significant digits;
    quantities whose P95 is zero (e.g. no tool calls at all) get no limit.

    Args:
        events: Recorded events (``settle``, ``deny``, ``would_deny`` are used).
        headroom: Factor above P95, at least 1.
        group_by: ``auto``, ``workflow``, ``agent`` or ``tenant``.

    Raises:
        ValueError: ``headroom`` below 1.

    Example:
        >>> from decimal import Decimal
        >>> events = [BudgetEvent(kind="settle", run_id=f"r{i}", workflow="w", model="m",
        ...                       output_tokens=100, cost_usd=Decimal("0.001"))
        ...           for i in range(20) for _ in range(i + 1)]
        >>> rec = recommend(events)[0]
        >>> rec.runs, [(m.name, m.p50, m.p95) for m in rec.metrics][:2]
        (20, [('model calls', 10, 19), ('tool calls', 0, 0)])
        >>> rec.budget_source()
        'Budget(max_steps=29, max_model_calls=29, max_total_tokens=2900, max_cost_usd="0.029")'
    """
    factor = Decimal(str(headroom))
    if not factor.is_finite() or factor < 1:
        raise ValueError(f"headroom must be a factor >= 1 (e.g. 1.5), got {headroom!r}")
    by_group: dict[tuple[str, str], list[RunStats]] = {}
    for stats in run_stats(events, group_by=group_by):
        by_group.setdefault((stats.group_kind, stats.group), []).append(stats)
    recommendations = []
    for (kind, group), runs in by_group.items():
        steps = [r.steps for r in runs if r.steps is not None]
        metrics = (
            _metric("model calls", "max_model_calls", [r.model_calls for r in runs], factor, _as_int),
            _metric("tool calls", "max_tool_calls", [r.tool_calls for r in runs], factor, _as_int),
            _metric("retries", "max_retries", [r.retries for r in runs], factor, _as_int),
            # Steps are known only for runs outside a graph; a partial sample would understate them.
            _metric("steps", "max_steps", steps if len(steps) == len(runs) else [], factor, _as_int),
            _metric("input tokens", None, [r.input_tokens for r in runs], factor, _as_int),
            _metric("output tokens", None, [r.output_tokens for r in runs], factor, _as_int),
            _metric("total tokens", "max_total_tokens", [r.total_tokens for r in runs], factor, _as_int),
            _metric("cost (USD)", "max_cost_usd", [r.cost_usd for r in runs], factor, _as_usd),
        )
        recommendations.append(
            Recommendation(
                group=group,
                group_by=kind,
                runs=len(runs),
                denied_runs=sum(r.denied for r in runs),
                would_deny_runs=sum(r.would_deny for r in runs),
                headroom=factor,
                metrics=metrics,
            )
        )
    return sorted(recommendations, key=lambda rec: (-rec.runs, rec.group_by, rec.group))


__all__ = [
    "UNATTRIBUTED",
    "DecisionRow",
    "GroupBy",
    "Metric",
    "Recommendation",
    "RunStats",
    "SpendReport",
    "SpendRow",
    "percentile",
    "recommend",
    "round_up",
    "run_stats",
    "summarize",
]
