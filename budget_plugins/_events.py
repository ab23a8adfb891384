"""Structured events and the hooks that receive them."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from budget_plugins._errors import format_amount

logger = logging.getLogger("budget_plugins")

EventKind = Literal[
    "allow",
    "warn",
    "degrade",
    "deny",
    "would_deny",
    "settle",
    "overage",
    "release",
    "ledger_error",
]
"""``would_deny``/``warn``/``degrade`` with ``shadow=True`` are shadow-mode records."""


@dataclass(frozen=True, slots=True)
class BudgetEvent:
    """One structured fact: a decision that was not a plain allow, or a settled call.

    Example:
        >>> e = BudgetEvent(kind="deny", dimension="tool_calls", limit=3, used=3, requested=1)
        >>> e.describe()
        'deny tool_calls: used=3 requested=1 limit=3'
    """

    kind: EventKind
    dimension: str | None = None
    scope: str = "run"
    tenant: str | None = None
    workflow: str | None = None
    run_id: str | None = None
    agent: str | None = None
    node: str | None = None
    limit: int | float | None = None
    used: int | float | None = None
    requested: int | float | None = None
    fraction: float | None = None
    model: str | None = None
    tool: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    run_cost_usd: Decimal | None = None
    workflow_cost_usd: Decimal | None = None
    tenant_cost_usd: Decimal | None = None
    retry: bool = False
    call_id: str | None = None
    parent_call_id: str | None = None
    shadow: bool = False
    timestamp: float = 0.0
    message: str | None = None

    def describe(self) -> str:
        """A one-line human summary."""
        if self.kind == "settle":
            return (
                f"settle {self.model or self.tool or ''}: in={self.input_tokens} "
                f"out={self.output_tokens} cost=${self.cost_usd} run_total=${self.run_cost_usd}"
            ).replace("  ", " ")
        dim = self.dimension or ""
        return (
            f"{'shadow ' if self.shadow else ''}{self.kind} {dim}: "
            f"used={format_amount(dim, self.used)} requested={format_amount(dim, self.requested)} "
            f"limit={format_amount(dim, self.limit)}"
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (Decimals as strings)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Decimal):
                data[key] = str(value)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BudgetEvent:
        """Inverse of :meth:`to_json` (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("cost_usd", "run_cost_usd", "workflow_cost_usd", "tenant_cost_usd"):
            if values.get(key) is not None:
                values[key] = Decimal(str(values[key]))
        return cls(**values)


@runtime_checkable
class EventHook(Protocol):
    """Anything callable with a :class:`BudgetEvent`."""

    def __call__(self, event: BudgetEvent) -> None:
        """Receive one event; exceptions are logged, never raised into the agent.

        A hook may also define ``wants(kind) -> bool``: events it does not want
        are then not built at all when no other hook wants them.
        """
        ...


_LEVELS: dict[str, int] = {
    "deny": logging.WARNING,
    "would_deny": logging.WARNING,
    "overage": logging.WARNING,
    "ledger_error": logging.ERROR,
    "warn": logging.INFO,
    "degrade": logging.INFO,
}


class LoggingHook:
    """The default hook: one stdlib ``logging`` record per event (logger ``budget_plugins``).

    Settle events log at DEBUG, warnings and degradations at INFO, refusals at WARNING.

    Example:
        >>> LoggingHook()(BudgetEvent(kind="warn", dimension="steps", limit=10, used=8))
    """

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.log = log or logger

    def wants(self, kind: str) -> bool:
        """Whether an event of this kind would be logged (else it is not even built)."""
        return self.log.isEnabledFor(_LEVELS.get(kind, logging.DEBUG))

    def __call__(self, event: BudgetEvent) -> None:
        level = _LEVELS.get(event.kind, logging.DEBUG)
        if self.log.isEnabledFor(level):
            self.log.log(level, "budget %s", event.describe(), extra={"budget_event": event})


class JsonlHook:
    """Append every event as one JSON line to a file (read by ``budget-plugins report``).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "events.jsonl")
        >>> JsonlHook(path)(BudgetEvent(kind="deny", dimension="steps"))
        >>> [e.kind for e in read_events(path)]
        ['deny']
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def __call__(self, event: BudgetEvent) -> None:
        line = json.dumps(event.to_json(), separators=(",", ":"))
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


class CollectingHook:
    """Keep events in a list (tests, notebooks, reports).

    Example:
        >>> hook = CollectingHook()
        >>> hook(BudgetEvent(kind="warn"))
        >>> hook.kinds()
        ['warn']
    """

    def __init__(self) -> None:
        self.events: list[BudgetEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: BudgetEvent) -> None:
        with self._lock:
            self.events.append(event)

    def kinds(self) -> list[str]:
        """The kinds received, in order."""
        return [e.kind for e in self.events]

    def of(self, kind: str) -> list[BudgetEvent]:
        """The events of one kind."""
        return [e for e in self.events if e.kind == kind]


def read_events(path: str | os.PathLike[str]) -> Iterator[BudgetEvent]:
    """Read a JSONL file written by :class:`JsonlHook`."""
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield BudgetEvent.from_json(json.loads(line))


def emit(hooks: Iterable[EventHook], event: BudgetEvent) -> None:
    """Deliver an event to every hook; a failing hook is logged and skipped."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:  # a broken sink must never break enforcement
            logger.exception("budget event hook %r failed", hook)
