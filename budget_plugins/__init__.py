"""Execution budgets inside agent loops.

budget_plugins refuses the next model call, tool call, step or retry *before*
it happens once it would break a budget, inside LangChain, LangGraph and
AutoGen agent loops.

Example:
    >>> from budget_plugins import Budget, Meter
    >>> meter = Meter(Budget(max_model_calls=2), hooks=[])
    >>> for _ in range(2):
    ...     _ = meter.after_model_call(meter.before_model_call(model=None), None)
    >>> try:
    ...     meter.before_model_call(model=None)
    ... except BudgetExceeded as exc:
    ...     print(exc.dimension, exc.limit, exc.used)
    model_calls 2 2
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from budget_plugins._decide import Decision, Denial, decide
from budget_plugins._errors import (
    BudgetConfigError,
    BudgetError,
    BudgetExceeded,
    LedgerUnavailable,
    ReservationError,
    UnpricedModelError,
)
from budget_plugins._events import (
    BudgetEvent,
    CollectingHook,
    EventHook,
    JsonlHook,
    LoggingHook,
    read_events,
)
from budget_plugins._ledger import (
    AsyncLedger,
    Grant,
    InMemoryLedger,
    Ledger,
    Scope,
    Settlement,
)
from budget_plugins._meter import Meter, Ticket, current_meter
from budget_plugins._policy import Budget, Ceiling, Price
from budget_plugins._pricing import PricedCall, lookup_price, price_tokens
from budget_plugins._usage import Request, ScopeUsage, TokenUsage

if TYPE_CHECKING:
    from budget_plugins._degrade import TieredChatModel
    from budget_plugins._langchain import BudgetCallbackHandler, budget
    from budget_plugins._ledger_url import ledger_from_url
    from budget_plugins._middleware import BudgetMiddleware
    from budget_plugins._otel import OpenTelemetryHook
    from budget_plugins._redis import AsyncRedisLedger, RedisLedger

try:
    __version__ = version("budget-plugins")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_LAZY = {
    "AsyncRedisLedger": "budget_plugins._redis",
    "BudgetCallbackHandler": "budget_plugins._langchain",
    "BudgetMiddleware": "budget_plugins._middleware",
    "TieredChatModel": "budget_plugins._degrade",
    "budget": "budget_plugins._langchain",
    "OpenTelemetryHook": "budget_plugins._otel",
    "RedisLedger": "budget_plugins._redis",
    "ledger_from_url": "budget_plugins._ledger_url",
}


def __getattr__(name: str) -> Any:
    # Framework adapters and optional integrations are imported on first use:
    # `import budget_plugins` imports neither LangChain nor redis nor OpenTelemetry.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'budget_plugins' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncLedger",
    "AsyncRedisLedger",
    "Budget",
    "BudgetCallbackHandler",
    "BudgetConfigError",
    "BudgetError",
    "BudgetEvent",
    "BudgetExceeded",
    "BudgetMiddleware",
    "Ceiling",
    "CollectingHook",
    "Decision",
    "Denial",
    "EventHook",
    "Grant",
    "InMemoryLedger",
    "JsonlHook",
    "Ledger",
    "LedgerUnavailable",
    "LoggingHook",
    "Meter",
    "OpenTelemetryHook",
    "Price",
    "PricedCall",
    "RedisLedger",
    "Request",
    "ReservationError",
    "Scope",
    "ScopeUsage",
    "Settlement",
    "Ticket",
    "TieredChatModel",
    "TokenUsage",
    "UnpricedModelError",
    "__version__",
    "budget",
    "current_meter",
    "decide",
    "ledger_from_url",
    "lookup_price",
    "price_tokens",
    "read_events",
]
