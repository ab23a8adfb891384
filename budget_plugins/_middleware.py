"""LangChain 1.x agent middleware: ``create_agent(..., middleware=[BudgetMiddleware(budget)])``.

Counting and refusing is the core :class:`BudgetCallbackHandler`'s job; this
module only routes every LangChain run of an agent invocation to that run's
handler, and turns a refusal into the agent's way of stopping (a final
``AIMessage`` and ``jump_to: "end"``) or lets it raise.

Routing: middleware hooks cannot put a handler into the invocation's
callbacks, and some model calls (``SummarizationMiddleware``'s) happen in nodes
no ``wrap_model_call`` sees. So one process-wide router, registered as an
inheritable configure hook once a ``BudgetMiddleware`` exists, follows the run
tree and forwards the events under an agent invocation to the handler
registered for it (by ``before_agent``, or on first use when an invocation
resumed from a checkpoint skips it). Each event reaches exactly one handler: no
double counting.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Annotated, Any, Literal, NotRequired
from uuid import UUID

from langchain.agents.middleware import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    ToolCallRequest,
    hook_config,
)
from langchain.agents.middleware.types import OmitFromInput
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tracers.context import register_configure_hook
from langgraph.config import get_config
from langgraph.runtime import Runtime
from langgraph.types import Command

from budget_plugins._errors import BudgetConfigError, BudgetExceeded
from budget_plugins._events import EventHook
from budget_plugins._langchain import BudgetCallbackHandler
from budget_plugins._ledger import InMemoryLedger, Ledger
from budget_plugins._meter import Meter
from budget_plugins._policy import Budget, Ceiling
from budget_plugins._usage import Request

_FORWARDED = [
    "on_chain_start",
    "on_chain_end",
    "on_chain_error",
    "on_chat_model_start",
    "on_llm_start",
    "on_llm_end",
    "on_llm_error",
    "on_tool_start",
    "on_tool_end",
    "on_tool_error",
    "on_retry",
]


class _Router(BaseCallbackHandler):
    """Forwards each run's events to the handler of the agent invocation it belongs to."""

    raise_error = True  # a refusal raised by the forwarded-to handler must stop the run
    run_inline = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # run -> (parent, langgraph task, the handler found when it started, if any)
        self._runs: dict[UUID, tuple[UUID | None, str | None, BudgetCallbackHandler | None]] = {}
        self._scopes: dict[UUID, BudgetCallbackHandler] = {}  # agent graph run -> its handler

    def _nearest(self, run_id: UUID | None) -> BudgetCallbackHandler | None:
        with self._lock:
            return self._nearest_locked(run_id)

    def _nearest_locked(self, run_id: UUID | None) -> BudgetCallbackHandler | None:
        while run_id is not None:
            found = self._scopes.get(run_id)
            if found is not None:
                return found
            parent, _, known = self._runs.get(run_id, _UNKNOWN)
            if known is not None:
                return known  # remembered when the run started: most lookups end here
            run_id = parent
        return None

    def meter_for(self, run_id: UUID | None) -> Meter | None:
        """The meter of the agent invocation ``run_id`` belongs to (see :class:`TieredChatModel`)."""
        handler = self._nearest(run_id)
        return handler.meter if handler is not None else None

    def scope(
        self, run_id: UUID | None, create: Callable[[], BudgetCallbackHandler], *, fresh: bool = False
    ) -> BudgetCallbackHandler:
        """The handler of the graph run whose node ``run_id`` runs in (created if missing or ``fresh``).

        Every run inside a node carries the node's task namespace in its metadata
        (``langgraph_checkpoint_ns``); the graph run is the parent of the
        outermost run with that namespace.
        """
        with self._lock:
            task = self._runs.get(run_id, _UNKNOWN)[1] if run_id is not None else None
            graph = run_id
            while graph is not None and task is not None and self._runs.get(graph, _UNKNOWN)[1] == task:
                graph = self._runs[graph][0]
            if graph is None or task is None:
                raise BudgetConfigError(
                    "BudgetMiddleware runs only inside a create_agent graph built after it was created",
                    field="middleware",
                )
            if fresh or graph not in self._scopes:
                self._scopes[graph] = create()
            return self._scopes[graph]

    def _forward(self, event: str, *args: Any, run_id: UUID, **kwargs: Any) -> None:
        runs, scopes = self._runs, self._scopes
        if event.endswith("_start"):
            parent = kwargs.get("parent_run_id")
            task = (kwargs.get("metadata") or {}).get("langgraph_checkpoint_ns")
            if task is None and parent not in runs and parent not in scopes:
                # Outside every graph task and every agent run (a plain chain elsewhere in the
                # process, or an agent graph's own run, found later as its tasks' parent):
                # nothing to record, no handler to tell.
                return
            with self._lock:
                runs[run_id] = (parent, task, self._nearest_locked(parent))
                handler = self._nearest_locked(run_id)
        elif run_id not in runs and run_id not in scopes:
            return  # the end of a run never recorded (a run's events come in order: no race)
        else:
            with self._lock:
                handler = self._nearest_locked(run_id)
        ended = event.endswith(("_end", "_error"))
        try:
            if handler is not None:
                getattr(handler, event)(*args, run_id=run_id, **kwargs)
        except BaseException:
            ended = True  # a refused start gets no end event
            raise
        finally:
            if ended:
                with self._lock:
                    self._runs.pop(run_id, None)
                    closed = self._scopes.pop(run_id, None)
                if closed is not None:
                    closed.meter.flush(force=False)


def _forwarder(event: str) -> Callable[..., None]:
    def forward(self: _Router, *args: Any, run_id: UUID, **kwargs: Any) -> None:
        self._forward(event, *args, run_id=run_id, **kwargs)

    forward.__name__ = event
    return forward


for _event in _FORWARDED:
    setattr(_Router, _event, _forwarder(_event))

_UNKNOWN: tuple[None, None, None] = (None, None, None)
_router = _Router()
_router_var: ContextVar[_Router | None] = ContextVar("budget_plugins_agent_router", default=_router)
_registered = threading.Event()
_register_lock = threading.Lock()


def _register_router() -> None:
    with _register_lock:
        if not _registered.is_set():
            register_configure_hook(_router_var, inheritable=True)
            _registered.set()


def _current_run() -> UUID | None:
    callbacks = get_config().get("callbacks")
    return getattr(callbacks, "parent_run_id", None)


class BudgetState(AgentState[Any]):
    """Agent state with the budget report (``budget``) the middleware writes."""

    budget: NotRequired[Annotated[dict[str, Any], OmitFromInput]]


def _stop_text(error: BudgetExceeded) -> str:
    return f"Stopped: the budget is exhausted. {error.message}."


class BudgetMiddleware(AgentMiddleware[BudgetState, Any, Any]):
    """Enforce a :class:`Budget` in a LangChain 1.x ``create_agent`` agent.

    Every model and tool call of the agent (and of other middleware, such as
    ``SummarizationMiddleware``'s summaries) is reserved before it happens and
    settled with its tokens and cost. Each model call and each tool call is also
    a step. When the budget refuses:

    * ``on_exhausted="end"`` (the default here): a refused model call becomes a
      final ``AIMessage`` saying why; a refused tool call becomes an error
      ``ToolMessage`` and the agent then jumps to the end. The run returns
      normally, with the report in ``state["budget"]``.
    * ``on_exhausted="raise"``: :class:`BudgetExceeded` propagates through
      retry and fallback middleware to the caller.

    List it first in ``middleware=[...]`` so that its ``before_model`` check runs
    before other middleware's model calls: a refusal inside another
    middleware's node raises even with ``"end"``.

    Args:
        budget: The limits (``max_depth`` does not apply to an agent).
        ledger: Where usage lives. By default an in-memory ledger owned by the
            middleware for thread scopes and ceilings (run scopes are counted in process).
        ceilings: Workflow/tenant limits checked atomically with the run's.
        tenant: Tenant id for ceilings and attribution.
        workflow: Workflow id for ceilings and attribution.
        scope: ``"run"``: counters start from zero on every invocation;
            ``"thread"``: they persist per ``thread_id`` in the ledger.
        hooks: Event receivers (default: stdlib logging).
        agent: Agent name for attribution.
        clock: Monotonic seconds for ``max_seconds`` (injectable for tests).

    Raises:
        BudgetConfigError: A limit or argument is invalid.

    Example:
        >>> from langchain.agents import create_agent
        >>> from budget_plugins.testing import counting_tool, runaway_model
        >>> model = runaway_model(tool="search")
        >>> agent = create_agent(model, [counting_tool("search")],
        ...                      middleware=[BudgetMiddleware(Budget(max_model_calls=2), hooks=[])])
        >>> result = agent.invoke({"messages": [("user", "find it")]})
        >>> model.calls, result["budget"]["exhausted"]["dimension"]
        (2, 'model_calls')
        >>> result["messages"][-1].content
        'Stopped: the budget is exhausted. Exceeded the model_calls limit of 2 (used=2, requested=1) in run scope.'
    """

    state_schema = BudgetState

    def __init__(
        self,
        budget: Budget,
        *,
        ledger: Ledger | None = None,
        ceilings: Sequence[Ceiling] = (),
        tenant: str | None = None,
        workflow: str | None = None,
        scope: Literal["run", "thread"] = "run",
        hooks: Sequence[EventHook] | None = None,
        agent: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if scope not in ("run", "thread"):
            raise BudgetConfigError(f"scope must be 'run' or 'thread', got {scope!r}", field="scope")
        self.budget = budget
        self.scope = scope
        self.ledger: Ledger = ledger if ledger is not None else InMemoryLedger()
        self.end = (budget.on_exhausted or "end") == "end"
        self.last_report: dict[str, Any] | None = None
        """Usage against limits of the latest invocation that finished or was stopped."""
        self._meter_args: dict[str, Any] = {
            "ledger": self.ledger,
            "ceilings": ceilings,
            "tenant": tenant,
            "workflow": workflow,
            "agent": agent,
            "hooks": hooks,
            "clock": clock,
        }
        Meter(budget, run_id="validate", **self._meter_args)  # configuration errors surface here
        _register_router()

    # -- the invocation's handler -------------------------------------------------------

    def _new_handler(self) -> BudgetCallbackHandler:
        thread = (get_config().get("configurable") or {}).get("thread_id")
        if self.scope == "thread" and thread is None:
            raise BudgetConfigError("scope='thread' needs config={'configurable': {'thread_id': ...}}", field="scope")
        run_id = f"thread:{thread}" if self.scope == "thread" else uuid.uuid4().hex
        meter = Meter(self.budget, run_id=run_id, exclusive=self.scope == "run", **self._meter_args)
        return BudgetCallbackHandler(meter=meter, count_steps=False, chain_checks=False)

    def _meter(self) -> Meter:
        # An invocation resumed from a checkpoint skips before_agent: its scope opens here.
        return _router.scope(_current_run(), self._new_handler).meter

    def before_agent(self, state: BudgetState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Open the invocation's run scope (or the thread's, with ``scope="thread"``)."""
        _router.scope(_current_run(), self._new_handler, fresh=True)
        return None

    async def abefore_agent(self, state: BudgetState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async twin of :meth:`before_agent`."""
        return self.before_agent(state, runtime)

    def after_agent(self, state: BudgetState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Write the run's report to ``state["budget"]``."""
        self.last_report = self._meter().report()
        return {"budget": self.last_report}

    async def aafter_agent(self, state: BudgetState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async twin of :meth:`after_agent`."""
        return self.after_agent(state, runtime)

    # -- refusals into the agent's way of stopping ----------------------------------------

    def _refused(self, meter: Meter, error: BudgetExceeded) -> None:
        self.last_report = meter.report()
        if not self.end:
            raise error

    def _stop(self, meter: Meter, error: BudgetExceeded) -> dict[str, Any]:
        self._refused(meter, error)
        message = AIMessage(_stop_text(error), name="budget_guard")
        return {"jump_to": "end", "messages": [message], "budget": self.last_report}

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: BudgetState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """End the run if a refusal happened, or if one more model call would not fit."""
        meter = self._meter()
        if meter.exhausted is not None and meter.budget.mode == "enforce":
            return self._stop(meter, meter.exhausted)
        try:
            meter.check(_ONE_MODEL_CALL)  # in process; shared ceilings answer with the call's reservation
        except BudgetExceeded as exc:
            return self._stop(meter, exc)
        return None

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: BudgetState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Async twin of :meth:`before_model` (nothing to await: the check is in process)."""
        return self.before_model(state, runtime)

    def wrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], ModelResponse[Any]]
    ) -> ModelResponse[Any] | AIMessage:
        """Count the step; a refusal (here or inside ``handler``) becomes the final message."""
        meter = self._meter()
        try:
            meter.before_step("model")
            return handler(request)
        except BudgetExceeded as exc:
            self._refused(meter, exc)
            return AIMessage(_stop_text(exc), name="budget_guard")

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]]
    ) -> ModelResponse[Any] | AIMessage:
        """Async twin of :meth:`wrap_model_call`."""
        meter = self._meter()
        try:
            await meter.acount(Request.step("model"), node="model")
            return await handler(request)
        except BudgetExceeded as exc:
            self._refused(meter, exc)
            return AIMessage(_stop_text(exc), name="budget_guard")

    def wrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]]
    ) -> ToolMessage | Command[Any]:
        """Count the step; a refused tool call is answered with an error and the run ends."""
        meter = self._meter()
        try:
            meter.before_step(request.tool_call["name"])
            return handler(request)
        except BudgetExceeded as exc:
            self._refused(meter, exc)
            return _refused_tool(request, exc)

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]]
    ) -> ToolMessage | Command[Any]:
        """Async twin of :meth:`wrap_tool_call`."""
        meter = self._meter()
        name = request.tool_call["name"]
        try:
            await meter.acount(Request.step(name), node=name)
            return await handler(request)
        except BudgetExceeded as exc:
            self._refused(meter, exc)
            return _refused_tool(request, exc)


_ONE_MODEL_CALL = Request.model_call()


def _refused_tool(request: ToolCallRequest, error: BudgetExceeded) -> ToolMessage:
    # an answer for every tool call keeps the conversation valid for the next model call
    return ToolMessage(
        content=f"Not run: the budget is exhausted. {error.message}.",
        tool_call_id=request.tool_call["id"],
        name=request.tool_call["name"],
        status="error",
    )
