"""OpenTelemetryHook with the real SDK: span events and metrics from real guarded agent runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from langchain.agents import create_agent
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from budget_plugins import (
    Budget,
    BudgetCallbackHandler,
    BudgetEvent,
    BudgetExceeded,
    CollectingHook,
    OpenTelemetryHook,
)
from budget_plugins.testing import counting_tool, runaway_model, scripted_model

GO = {"messages": [("user", "go")]}


@dataclass
class Telemetry:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    hook: OpenTelemetryHook

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def total(self, name: str, **attributes: Any) -> float:
        points = [p for p in self.points(name) if all(p.attributes.get(k) == v for k, v in attributes.items())]
        assert all(isinstance(p, NumberDataPoint) for p in points)
        return sum(p.value for p in points)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(exporter, reader, tracer_provider, OpenTelemetryHook(tracer_provider, meter_provider))
    tracer_provider.shutdown()
    meter_provider.shutdown()


def guarded_runaway(telemetry: Telemetry, **budget: Any) -> tuple[BudgetCallbackHandler, CollectingHook]:
    collected = CollectingHook()
    handler = BudgetCallbackHandler(
        Budget(**budget),
        tenant="acme",
        workflow="research",
        agent="researcher",
        hooks=[telemetry.hook, collected],
    )
    agent = create_agent(runaway_model(model_name="gpt-4o", max_tokens=200), [counting_tool("search")])
    if budget.get("mode") == "shadow":
        with pytest.raises(Exception, match="Recursion limit"):
            agent.invoke(GO, {"callbacks": [handler], "recursion_limit": 9})
    else:
        with pytest.raises(BudgetExceeded):
            agent.invoke(GO, {"callbacks": [handler]})
    return handler, collected


def test_events_become_span_events_on_the_current_span(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("agent run"):
        handler, collected = guarded_runaway(telemetry, max_tool_calls=3)
    (run_span,) = telemetry.exporter.get_finished_spans()  # no extra spans: all went on the run's span
    assert run_span.name == "agent run"
    names = [event.name for event in run_span.events]
    assert names == [f"budget.{kind}" for kind in collected.kinds()]
    settles = [e for e in run_span.events if e.name == "budget.settle" and "gen_ai.request.model" in e.attributes]
    model_settles = [e for e in collected.of("settle") if e.tool is None]
    assert len(settles) == len(model_settles) == handler.report()["used"]["model_calls"]
    for span_event, event in zip(settles, model_settles, strict=True):
        assert span_event.attributes["gen_ai.request.model"] == "gpt-4o"
        assert span_event.attributes["gen_ai.usage.input_tokens"] == event.input_tokens == 100
        assert span_event.attributes["gen_ai.usage.output_tokens"] == event.output_tokens == 20
        assert span_event.attributes["budget.cost_usd"] == float(event.cost_usd)
        assert span_event.attributes["budget.run_cost_usd"] == float(event.run_cost_usd or 0)
        assert span_event.attributes["budget.tenant"] == "acme"
        assert span_event.attributes["budget.workflow"] == "research"
        assert span_event.attributes["budget.run_id"] == handler.meter.run_id
        assert span_event.attributes["gen_ai.agent.name"] == "researcher"
    deny = next(e for e in run_span.events if e.name == "budget.deny")
    assert handler.exhausted is not None
    assert deny.attributes["budget.dimension"] == "tool_calls"
    assert deny.attributes["budget.limit"] == handler.exhausted.limit == 3
    assert deny.attributes["budget.used"] == handler.exhausted.used
    assert deny.attributes["budget.requested"] == 1
    assert deny.attributes["budget.message"] == handler.exhausted.message


def test_without_a_recording_span_each_event_is_a_short_span(telemetry: Telemetry) -> None:
    _, collected = guarded_runaway(telemetry, max_model_calls=2)
    spans: tuple[ReadableSpan, ...] = tuple(telemetry.exporter.get_finished_spans())
    assert [s.name for s in spans] == [f"budget.{kind}" for kind in collected.kinds()]
    deny = spans[-1]
    assert deny.attributes is not None
    assert (deny.attributes["budget.dimension"], deny.attributes["budget.limit"]) == ("model_calls", 2)
    assert all(s.parent is None for s in spans)
    assert all(s.start_time == s.end_time for s in spans)


def test_cost_limits_are_reported_in_dollars(telemetry: Telemetry) -> None:
    handler, _ = guarded_runaway(telemetry, max_cost_usd="0.01")
    deny = next(s for s in telemetry.exporter.get_finished_spans() if s.name == "budget.deny")
    assert deny.attributes is not None
    assert deny.attributes["budget.dimension"] == "cost_usd"
    assert deny.attributes["budget.limit"] == 0.01
    assert handler.exhausted is not None
    assert deny.attributes["budget.used"] == handler.exhausted.used / 1_000_000


def test_metrics_count_spend_tokens_denials_and_the_cost_of_each_call(telemetry: Telemetry) -> None:
    handler, collected = guarded_runaway(telemetry, max_tool_calls=3)
    report = handler.report()
    model_settles = [e for e in collected.of("settle") if e.tool is None]
    spend = sum(e.cost_usd for e in model_settles)
    assert telemetry.total("budget.spend") == pytest.approx(float(spend))
    # The ledger rounds each call up to a whole micro-dollar.
    assert float(Decimal(report["cost_usd"]) - spend) == pytest.approx(0, abs=1e-6 * len(model_settles))
    assert telemetry.total("budget.tokens", **{"gen_ai.token.type": "input"}) == report["used"]["input_tokens"]
    assert telemetry.total("budget.tokens", **{"gen_ai.token.type": "output"}) == report["used"]["output_tokens"]
    assert telemetry.total("budget.denials", **{"budget.dimension": "tool_calls", "budget.shadow": False}) == 1
    (histogram,) = telemetry.points("budget.call.cost")
    assert isinstance(histogram, HistogramDataPoint)
    assert histogram.count == report["used"]["model_calls"]
    assert histogram.sum == pytest.approx(float(spend))
    assert histogram.explicit_bounds[0] < float(model_settles[0].cost_usd) < histogram.explicit_bounds[-1]


def test_metric_attributes_attribute_spend_without_run_ids(telemetry: Telemetry) -> None:
    guarded_runaway(telemetry, max_tool_calls=2)
    for name in ("budget.spend", "budget.tokens", "budget.denials", "budget.call.cost"):
        for point in telemetry.points(name):
            assert point.attributes["budget.tenant"] == "acme"
            assert point.attributes["budget.workflow"] == "research"
            assert point.attributes["gen_ai.agent.name"] == "researcher"
            assert not any("run_id" in key or "call_id" in key for key in point.attributes)


def test_shadow_mode_counts_would_be_denials_apart(telemetry: Telemetry) -> None:
    handler, collected = guarded_runaway(telemetry, max_model_calls=2, mode="shadow")
    would = handler.report()["shadow_denials"]["model_calls"]
    assert would == len(collected.of("would_deny")) > 0
    assert telemetry.total("budget.denials", **{"budget.dimension": "model_calls", "budget.shadow": True}) == would
    assert telemetry.total("budget.denials", **{"budget.shadow": False}) == 0


def test_a_plain_chain_outside_any_graph_is_traced_too(telemetry: Telemetry) -> None:
    collected = CollectingHook()
    handler = BudgetCallbackHandler(Budget(max_model_calls=1), hooks=[telemetry.hook, collected])
    model = scripted_model(["one", "two"])
    model.invoke("hi", config={"callbacks": [handler]})
    with pytest.raises(BudgetExceeded):
        model.invoke("again", config={"callbacks": [handler]})
    assert [s.name for s in telemetry.exporter.get_finished_spans()] == [f"budget.{k}" for k in collected.kinds()]
    assert telemetry.total("budget.denials", **{"budget.dimension": "model_calls"}) == 1


def test_a_failing_exporter_never_breaks_enforcement() -> None:
    class Broken(SimpleSpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            raise RuntimeError("collector down")

    provider = TracerProvider()
    provider.add_span_processor(Broken(InMemorySpanExporter()))
    handler = BudgetCallbackHandler(Budget(max_model_calls=1), hooks=[OpenTelemetryHook(tracer_provider=provider)])
    model = scripted_model(["one", "two"])
    model.invoke("hi", config={"callbacks": [handler]})
    with pytest.raises(BudgetExceeded):
        model.invoke("again", config={"callbacks": [handler]})
    assert model.calls == 1


def test_budget_plugins_imports_and_explains_itself_without_opentelemetry() -> None:
    script = textwrap.dedent(
        """
        import sys

        class NoOpenTelemetry:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ImportError(f"No module named {name!r} (blocked)")
                return None

        sys.meta_path.insert(0, NoOpenTelemetry())
        import budget_plugins
        assert "budget_plugins._otel" not in sys.modules
        from budget_plugins import OpenTelemetryHook
        try:
            OpenTelemetryHook()
        except ImportError as exc:
            print(exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert 'pip install "budget-plugins[otel]"' in done.stdout


def test_the_hook_is_an_event_hook() -> None:
    from budget_plugins import EventHook

    hook = OpenTelemetryHook(TracerProvider(), MeterProvider())
    assert isinstance(hook, EventHook)
    hook(BudgetEvent(kind="ledger_error", message="redis down"))  # an event with few fields is fine
