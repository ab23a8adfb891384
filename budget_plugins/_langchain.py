"""LangChain adapter: a callback handler that refuses calls before they happen.

It translates callback events into :class:`~budget_plugins.Meter` calls and
nothing else: model/tool starts reserve, ends settle, errors settle as
failures. Refusals are raised from the ``*_start`` callbacks (``raise_error``
is on), so the provider call or the tool never runs.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.tracers.context import register_configure_hook

from budget_plugins._errors import BudgetExceeded
from budget_plugins._events import EventHook
from budget_plugins._ledger import Ledger
from budget_plugins._meter import Meter, Ticket, current_meter, estimate_tokens
from budget_plugins._policy import Budget, Ceiling
from budget_plugins._prompts import PromptSizes
from budget_plugins._usage import Request, ScopeUsage, TokenUsage

_RETRY_TAG = re.compile(r"^retry:attempt:(\d+)$")

FINAL_METADATA_KEY = "budget_final"
"""Run metadata flag marking a wrap-up model call that may use ``Budget.finalization_reserve``:
``model.invoke(msgs, config={"metadata": {"budget_final": True}, ...})``."""


class _Run:
    __slots__ = ("depth", "failed_children", "name", "ticket")

    def __init__(self, depth: int, name: str | None) -> None:
        self.depth = depth
        self.name = name
        self.ticket: Ticket | None = None
        self.failed_children: set[str] | None = None


class BudgetCallbackHandler(BaseCallbackHandler):
    """Enforce a :class:`Budget` on any LangChain runnable through its callbacks.

    One handler is one run scope: every run it sees (``invoke``, ``batch``,
    ``stream``, their async twins, nested chains, LangGraph nodes) charges it.
    Reuse the handler to keep charging the same scope; create one per run for
    per-run budgets. To share one run scope across processes, give each
    handler the same ``run_id`` and a shared ledger.

    Args:
        budget: The limits; ``Budget()`` (meter only) when omitted.
        meter: Use an existing meter instead (the other arguments are then ignored).
        ledger: Where usage lives (default: a fresh in-memory ledger).
        ceilings: Workflow/tenant limits checked atomically with the run's.
        tenant: Tenant id for ceilings and attribution.
        workflow: Workflow id for ceilings and attribution.
        run_id: The run scope id (random by default).
        agent: Agent name for attribution.
        hooks: Event receivers (default: stdlib logging).
        count_steps: Count steps (LangGraph node executions; outside a graph,
            model and tool calls). Turn off when a LangGraph guard counts them.
        parent: Meter of an enclosing budget: its limits apply too.
        chain_checks: Check time and depth when any chain starts, with depth
            as the nesting of runs. Turn off when a LangGraph guard checks them
            at node boundaries, where depth means subgraph depth.

    Example:
        >>> from budget_plugins.testing import scripted_model
        >>> handler = BudgetCallbackHandler(Budget(max_model_calls=1), hooks=[])
        >>> model = scripted_model(["one", "two"])
        >>> model.invoke("hi", config={"callbacks": [handler]}).content
        'one'
        >>> try:
        ...     model.invoke("again", config={"callbacks": [handler]})
        ... except BudgetExceeded as exc:
        ...     print(exc.dimension, model.calls)
        model_calls 1
    """

    raise_error = True
    run_inline = True

    def __init__(
        self,
        budget: Budget | None = None,
        *,
        meter: Meter | None = None,
        ledger: Ledger | None = None,
        ceilings: Sequence[Ceiling] = (),
        tenant: str | None = None,
        workflow: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        hooks: Sequence[EventHook] | None = None,
        count_steps: bool = True,
        parent: Meter | None = None,
        chain_checks: bool = True,
    ) -> None:
        self.meter = meter or Meter(
            budget if budget is not None else Budget(),
            ledger=ledger,
            ceilings=ceilings,
            tenant=tenant,
            workflow=workflow,
            run_id=run_id,
            agent=agent,
            hooks=hooks,
            parent=parent,
        )
        self.count_steps = count_steps
        self.chain_checks = chain_checks
        self._runs: dict[UUID, _Run] = {}
        self._tasks: set[str] | None = None
        self._lock = threading.Lock()
        self._prompts: PromptSizes[BaseMessage] | None = None  # made at the first estimate; see _estimate

    # -- bookkeeping --------------------------------------------------------------

    @property
    def budget(self) -> Budget:
        """The enforced budget."""
        return self.meter.budget

    @property
    def exhausted(self) -> BudgetExceeded | None:
        """The last refusal (a :class:`BudgetExceeded`) or ``None``."""
        return self.meter.exhausted

    def meter_for(self, run_id: UUID | None) -> Meter | None:
        """The meter that guards ``run_id`` (this handler guards every run it sees)."""
        return self.meter

    def usage(self) -> ScopeUsage:
        """The run scope's used and held counters."""
        return self.meter.usage()

    def report(self) -> dict[str, Any]:
        """Usage against limits as plain data."""
        return self.meter.report()

    def _enter(self, run_id: UUID, parent_run_id: UUID | None, name: str | None) -> tuple[_Run, bool]:
        """Register a run; return it and whether it repeats a failed sibling (a retry)."""
        with self._lock:
            parent = self._runs.get(parent_run_id) if parent_run_id else None
            run = self._runs[run_id] = _Run((parent.depth if parent else 0) + 1, name)
            repeated = bool(parent and parent.failed_children and name in parent.failed_children)
        return run, repeated

    def _exit(self, run_id: UUID, parent_run_id: UUID | None, *, failed: bool) -> _Run | None:
        with self._lock:
            run = self._runs.pop(run_id, None)
            parent = self._runs.get(parent_run_id) if parent_run_id else None
            if parent is not None and run is not None and run.name:
                if failed:
                    parent.failed_children = (parent.failed_children or set()) | {run.name}
                elif parent.failed_children:
                    parent.failed_children.discard(run.name)
        return run

    def _root_done(self, parent_run_id: UUID | None) -> None:
        if parent_run_id is not None:
            return
        with self._lock:
            if not self._runs:
                self._runs = {}  # a dict never shrinks: an idle handler keeps a small one
                self._prompts = None  # the next run's prompts are new ones
        # Remote ledgers settle a call together with the next reservation; when the
        # outermost run ends there is no next one, so settle now: usage is never left
        # to expire with its lease. The run scope's copy in the ledger is written too.
        self.meter.flush(force=False)

    def _forget(self, run_id: UUID) -> None:
        """A refused start never ends: drop its bookkeeping so nothing leaks."""
        with self._lock:
            self._runs.pop(run_id, None)

    @staticmethod
    def _retry_tagged(tags: list[str] | None) -> bool:
        for tag in tags or ():
            match = _RETRY_TAG.match(tag) if tag.startswith("retry:") else None
            if match and int(match.group(1)) > 1:
                return True
        return False

    def _estimate(self, messages: list[BaseMessage]) -> int:
        """A prompt's token estimate, incremental over an agent loop's growing history.

        A loop re-sends its history with a few messages more on every call: only
        the messages a prompt adds to the previous one are estimated (O(1) per call
        instead of O(history)); see :class:`~budget_plugins._prompts.PromptSizes`.
        """
        prompts = self._prompts
        if prompts is None:
            prompts = self._prompts = PromptSizes(_message_tokens)
        return prompts.size(messages)

    def _in_graph_step(self, metadata: dict[str, Any] | None) -> bool:
        return bool(metadata and metadata.get("langgraph_node"))

    # -- chains (depth, LangGraph steps) ------------------------------------------

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Check depth; count a step when a LangGraph node starts (a retry if the task repeats)."""
        name = kwargs.get("name") or (serialized or {}).get("name")
        run, _ = self._enter(run_id, parent_run_id, name)
        meta = metadata or {}
        task = meta.get("langgraph_checkpoint_ns")
        if self.count_steps and task and name is not None and name == meta.get("langgraph_node"):
            with self._lock:
                if self._tasks is None:
                    self._tasks = set()
                repeated = task in self._tasks
                self._tasks.add(task)
            try:
                self.meter.count(Request.step(name, depth=run.depth, retry=repeated), node=name)
            except BaseException:
                self._forget(run_id)
                raise
        elif self.chain_checks and (self.budget.max_depth is not None or self.budget.max_seconds is not None):
            try:
                self.meter.check(Request("step", {}, name, depth=run.depth))
            except BaseException:
                self._forget(run_id)
                raise

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """Forget the run; settle deferred commits when the root run ends."""
        self._exit(run_id, parent_run_id, failed=False)
        self._root_done(parent_run_id)

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """Forget the run, remembering the failure for retry detection."""
        self._exit(run_id, parent_run_id, failed=True)
        self._root_done(parent_run_id)

    # -- models ---------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Reserve the call's worst case before the provider is called."""
        prompt = sum(self._estimate(m) for m in messages) if self.meter.needs_prompt_estimate else 0
        self._model_start(prompt, run_id, parent_run_id, tags, metadata, kwargs)

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Reserve a completion model call's worst case."""
        prompt = sum(estimate_tokens(p) for p in prompts) if self.meter.needs_prompt_estimate else 0
        self._model_start(prompt, run_id, parent_run_id, tags, metadata, kwargs)

    def _model_start(
        self,
        prompt_tokens: int,
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> None:
        params = kwargs.get("invocation_params") or {}
        meta = metadata or {}
        model = params.get("model_name") or params.get("model") or meta.get("ls_model_name")
        max_tokens = params.get("max_tokens") or params.get("max_completion_tokens") or meta.get("ls_max_tokens")
        run, repeated = self._enter(run_id, parent_run_id, kwargs.get("name") or "model")
        try:
            run.ticket = self.meter.before_model_call(
                model=model,
                input_tokens=prompt_tokens,
                max_output_tokens=int(max_tokens) if max_tokens else None,
                retry=repeated or self._retry_tagged(tags),
                depth=run.depth if self.chain_checks else 0,
                step=self.count_steps and not self._in_graph_step(meta),
                final=bool(meta.get(FINAL_METADATA_KEY)),
                node=meta.get("langgraph_node"),
                call_id=str(run_id),
                parent_call_id=str(parent_run_id) if parent_run_id else None,
            )
        except BaseException:
            self._forget(run_id)
            raise

    def on_llm_end(
        self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """Settle the call with the tokens the provider reported."""
        run = self._exit(run_id, parent_run_id, failed=False)
        if run is None or run.ticket is None:
            return
        usage, model = _usage_of(response)
        self.meter.after_model_call(run.ticket, usage, model=model)
        self._root_done(parent_run_id)

    def on_llm_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """Settle a failed call: it counts as an attempt, its token hold is given back."""
        run = self._exit(run_id, parent_run_id, failed=True)
        if run is not None and run.ticket is not None:
            self.meter.commit(run.ticket, failed=True)
        self._root_done(parent_run_id)

    # -- tools ----------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Reserve one execution of the tool before it runs."""
        name = str(kwargs.get("name") or (serialized or {}).get("name") or "tool")
        run, repeated = self._enter(run_id, parent_run_id, name)
        meta = metadata or {}
        try:
            run.ticket = self.meter.before_tool_call(
                name,
                retry=repeated or self._retry_tagged(tags),
                depth=run.depth if self.chain_checks else 0,
                step=self.count_steps and not self._in_graph_step(meta),
                node=meta.get("langgraph_node"),
                call_id=str(run_id),
                parent_call_id=str(parent_run_id) if parent_run_id else None,
            )
        except BaseException:
            self._forget(run_id)
            raise

    def on_tool_end(self, output: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """Settle the tool execution."""
        run = self._exit(run_id, parent_run_id, failed=False)
        if run is not None and run.ticket is not None:
            self.meter.after_tool_call(run.ticket)
        self._root_done(parent_run_id)

    def on_tool_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        """Settle a failed tool execution (it ran, so it counts)."""
        run = self._exit(run_id, parent_run_id, failed=True)
        if run is not None and run.ticket is not None:
            self.meter.after_tool_call(run.ticket, failed=True)
        self._root_done(parent_run_id)

    def on_retry(self, retry_state: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """Count a retry announced by a component that fires ``on_retry``."""
        self.meter.count(Request("retry", {"retries": 1}, retry=True))


def _estimate_messages(messages: list[BaseMessage]) -> int:
    """About 4 characters a token, plus a few tokens of framing per message.

    Sums content lengths instead of rendering the transcript: an agent loop
    re-sends its whole history on every call.
    """
    return sum(_message_tokens(message) for message in messages)


def _message_tokens(message: BaseMessage) -> int:
    content = message.content
    chars = len(content) if isinstance(content, str) else len(str(content))
    if isinstance(message, AIMessage) and message.tool_calls:
        chars += sum(len(str(call.get("args", ""))) + len(call.get("name", "")) for call in message.tool_calls)
    return (chars + 3) // 4 + 4  # rounded per message: estimates add up (see _estimate)


def _usage_of(response: LLMResult) -> tuple[TokenUsage | None, str | None]:
    total: TokenUsage | None = None
    model: str | None = None
    for generations in response.generations:
        for generation in generations:
            if not isinstance(generation, ChatGeneration):
                continue
            message = generation.message
            model = model or (message.response_metadata or {}).get("model_name")
            found = TokenUsage.from_usage_metadata(getattr(message, "usage_metadata", None))
            if found is not None:
                total = found if total is None else _plus(total, found)
    if total is None and response.llm_output:
        raw = response.llm_output.get("token_usage") or response.llm_output.get("usage") or {}
        if raw:
            total = TokenUsage(
                int(raw.get("prompt_tokens") or raw.get("input_tokens") or 0),
                int(raw.get("completion_tokens") or raw.get("output_tokens") or 0),
            )
        model = model or response.llm_output.get("model_name")
    return total, model


def _plus(a: TokenUsage, b: TokenUsage) -> TokenUsage:
    return TokenUsage(
        a.input_tokens + b.input_tokens,
        a.output_tokens + b.output_tokens,
        a.cache_read_tokens + b.cache_read_tokens,
        a.cache_write_tokens + b.cache_write_tokens,
    )


_ambient_handler: ContextVar[BudgetCallbackHandler | None] = ContextVar("budget_plugins_ambient", default=None)
register_configure_hook(_ambient_handler, inheritable=True)


@contextlib.contextmanager
def budget(limits: Budget | None = None, /, **kwargs: Any) -> Iterator[BudgetCallbackHandler]:
    """Guard every LangChain run inside the block, without touching configs.

    Nested blocks nest budgets: the inner block's calls are held in the inner
    run scope *and* the enclosing one (same ledger, tenant and workflow), so a
    sub-agent's budget can never spend past its parent's.

    Args:
        limits: The budget of the block.
        **kwargs: Passed to :class:`BudgetCallbackHandler`.

    Yields:
        The handler (``.report()``, ``.usage()``, ``.exhausted``).

    Example:
        >>> from budget_plugins.testing import scripted_model
        >>> model = scripted_model(["a", "b", "c"])
        >>> with budget(Budget(max_model_calls=2), hooks=[]) as guard:
        ...     _ = model.invoke("1"); _ = model.invoke("2")
        ...     try:
        ...         model.invoke("3")
        ...     except BudgetExceeded as exc:
        ...         print(exc.dimension)
        model_calls
    """
    outer = current_meter.get()
    if outer is not None and "meter" not in kwargs:
        kwargs.setdefault("parent", outer)
    handler = BudgetCallbackHandler(limits, **kwargs)
    handler_token = _ambient_handler.set(handler)
    meter_token = current_meter.set(handler.meter)
    try:
        yield handler
    finally:
        current_meter.reset(meter_token)
        _ambient_handler.reset(handler_token)
        handler.meter.flush()
