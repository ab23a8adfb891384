"""OpenTelemetry sink: budget facts as span events and metrics.

Installed with ``pip install "budget-plugins[otel]"``; OpenTelemetry is imported
only when an :class:`OpenTelemetryHook` is created, never by ``import budget_plugins``.

Attribute names follow the GenAI semantic conventions where one exists
(``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ``gen_ai.agent.name``,
``gen_ai.tool.name``, ``gen_ai.token.type``) and use ``budget.*`` for the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from budget_plugins._errors import COST_DIMENSION, MICROS_PER_USD
from budget_plugins._events import BudgetEvent

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from opentelemetry.util.types import AttributeValue

INSTALL_HINT = 'OpenTelemetryHook needs OpenTelemetry: pip install "budget-plugins[otel]"'

COST_BUCKETS_USD = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
"""Histogram boundaries for the cost of one call: the SDK's defaults (0, 5, 10, ...) suit milliseconds, not dollars."""

METRIC_SPEND = "budget.spend"
METRIC_TOKENS = "budget.tokens"
METRIC_DENIALS = "budget.denials"
METRIC_CALL_COST = "budget.call.cost"


def _amount(dimension: str | None, value: int | float | None) -> int | float | None:
    # The cost dimension is counted in integer micro-dollars; telemetry reads dollars.
    if value is None or dimension != COST_DIMENSION:
        return value
    return float(Decimal(value) / MICROS_PER_USD)


def span_attributes(event: BudgetEvent) -> dict[str, AttributeValue]:
    """The attributes of an event's span event (or short span); ``None`` fields are left out.

    Amounts of the ``cost_usd`` dimension (``budget.limit``, ``budget.used``,
    ``budget.requested``) are in dollars, like ``budget.cost_usd``.

    Example:
        >>> from decimal import Decimal
        >>> attrs = span_attributes(BudgetEvent(kind="settle", model="gpt-4o", input_tokens=1000,
        ...                                     output_tokens=100, cost_usd=Decimal("0.0035"), tenant="acme"))
        >>> attrs["gen_ai.request.model"], attrs["gen_ai.usage.input_tokens"], attrs["budget.cost_usd"]
        ('gpt-4o', 1000, 0.0035)
        >>> span_attributes(BudgetEvent(kind="deny", dimension="cost_usd", limit=500_000, used=490_000,
        ...                             requested=20_000))["budget.limit"]
        0.5
    """
    values: dict[str, Any] = {
        "budget.kind": event.kind,
        "budget.dimension": event.dimension,
        "budget.scope": event.scope,
        "budget.tenant": event.tenant,
        "budget.workflow": event.workflow,
        "budget.run_id": event.run_id,
        "gen_ai.agent.name": event.agent,
        "budget.node": event.node,
        "budget.limit": _amount(event.dimension, event.limit),
        "budget.used": _amount(event.dimension, event.used),
        "budget.requested": _amount(event.dimension, event.requested),
        "budget.fraction": event.fraction,
        "gen_ai.request.model": event.model,
        "gen_ai.tool.name": event.tool,
        "budget.shadow": event.shadow,
        "budget.retry": event.retry,
        "budget.call_id": event.call_id,
        "budget.parent_call_id": event.parent_call_id,
        "budget.message": event.message,
    }
    if event.kind == "settle":
        if event.tool is None:
            values.update(
                {
                    "gen_ai.usage.input_tokens": event.input_tokens,
                    "gen_ai.usage.output_tokens": event.output_tokens,
                    "gen_ai.usage.cache_read.input_tokens": event.cache_read_tokens or None,
                    "gen_ai.usage.cache_creation.input_tokens": event.cache_write_tokens or None,
                }
            )
        values["budget.cost_usd"] = float(event.cost_usd)
        for key, total in (
            ("budget.run_cost_usd", event.run_cost_usd),
            ("budget.workflow_cost_usd", event.workflow_cost_usd),
            ("budget.tenant_cost_usd", event.tenant_cost_usd),
        ):
            values[key] = float(total) if total is not None else None
    return {key: value for key, value in values.items() if value is not None}


def metric_attributes(event: BudgetEvent) -> dict[str, AttributeValue]:
    """The low-cardinality attributes of the metrics: never the run or call ids.

    Example:
        >>> metric_attributes(BudgetEvent(kind="settle", tenant="acme", run_id="r-1", model="gpt-4o"))
        {'budget.tenant': 'acme', 'gen_ai.request.model': 'gpt-4o', 'budget.shadow': False}
    """
    values: dict[str, Any] = {
        "budget.tenant": event.tenant,
        "budget.workflow": event.workflow,
        "gen_ai.agent.name": event.agent,
        "gen_ai.request.model": event.model,
        "budget.shadow": event.shadow,
    }
    return {key: value for key, value in values.items() if value is not None}


class OpenTelemetryHook:
    """Send budget events to OpenTelemetry: span events, and metrics for spend, tokens and denials.

    Each event becomes a span event named ``budget.<kind>`` (``budget.settle``,
    ``budget.deny``...) on the current span when it is recording (e.g. the
    span of the agent run or of an instrumented model call); otherwise a short
    span of that name is recorded instead. Metrics:

    - ``budget.spend`` (counter, USD): the cost of every settled call.
    - ``budget.tokens`` (counter, ``{token}``): by ``gen_ai.token.type`` ``input``/``output``.
    - ``budget.denials`` (counter): refusals by ``budget.dimension`` and
      ``budget.scope``; shadow mode's would-be refusals with ``budget.shadow=true``.
    - ``budget.call.cost`` (histogram, USD): the cost of each settled model call.

    Metric attributes are tenant, workflow, agent and model (never run ids, which
    would explode cardinality).

    Args:
        tracer_provider: Where spans go (default: the global provider).
        meter_provider: Where metrics go (default: the global provider).

    Raises:
        ImportError: OpenTelemetry is not installed (the message names the extra to install).

    Example:
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        >>> from budget_plugins import Budget, BudgetExceeded, Meter
        >>> exporter = InMemorySpanExporter()
        >>> provider = TracerProvider()
        >>> provider.add_span_processor(SimpleSpanProcessor(exporter))
        >>> meter = Meter(Budget(max_tool_calls=0), hooks=[OpenTelemetryHook(tracer_provider=provider)])
        >>> try:
        ...     meter.before_tool_call("search")
        ... except BudgetExceeded:
        ...     pass
        >>> span = exporter.get_finished_spans()[0]
        >>> span.name, span.attributes["budget.dimension"], span.attributes["budget.limit"]
        ('budget.deny', 'tool_calls', 0)
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        from budget_plugins import __version__

        self._trace = trace
        self._tracer = trace.get_tracer("budget_plugins", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("budget_plugins", __version__, meter_provider=meter_provider)
        self._spend = meter.create_counter(METRIC_SPEND, unit="USD", description="Cost of settled model calls")
        self._tokens = meter.create_counter(
            METRIC_TOKENS, unit="{token}", description="Tokens of settled model calls, by gen_ai.token.type"
        )
        self._denials = meter.create_counter(
            METRIC_DENIALS,
            unit="{denial}",
            description="Calls refused by a budget (budget.shadow=true: would have been refused)",
        )
        self._call_cost = meter.create_histogram(
            METRIC_CALL_COST,
            unit="USD",
            description="Cost of one settled model call",
            explicit_bucket_boundaries_advisory=COST_BUCKETS_USD,
        )

    def __call__(self, event: BudgetEvent) -> None:
        attributes = span_attributes(event)
        name = f"budget.{event.kind}"
        when = int(event.timestamp * 1e9) if event.timestamp else None
        current = self._trace.get_current_span()
        if current.is_recording():
            current.add_event(name, attributes, timestamp=when)
        else:
            span = self._tracer.start_span(name, attributes=attributes, start_time=when)
            span.end(end_time=when)
        self._record(event)

    def _record(self, event: BudgetEvent) -> None:
        labels = metric_attributes(event)
        if event.kind == "settle":
            if event.cost_usd:
                self._spend.add(float(event.cost_usd), labels)
            if event.tool is None:
                self._call_cost.record(float(event.cost_usd), labels)
                for kind, count in (("input", event.input_tokens), ("output", event.output_tokens)):
                    if count:
                        self._tokens.add(count, _with(labels, {"gen_ai.token.type": kind}))
        elif event.kind in ("deny", "would_deny"):
            extra = {"budget.dimension": event.dimension or "?", "budget.scope": event.scope}
            self._denials.add(1, _with(labels, extra))


def _with(base: Mapping[str, AttributeValue], extra: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
    return {**base, **extra}


__all__ = ["INSTALL_HINT", "OpenTelemetryHook", "metric_attributes", "span_attributes"]
