"""The meter: one run scope's enforcement, shared by every framework adapter.

A :class:`Meter` turns "this is about to happen" into a reservation in the
ledger (run scope plus any workflow/tenant ceilings), raises
:class:`BudgetExceeded` when the request does not fit, and settles the actual
usage afterwards. Adapters only translate framework events into these calls
and the raised refusal into the framework's way of stopping.

Sync and async are two thin doors (``reserve``/``areserve``...) around the same
preparation and interpretation code.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import math
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from budget_plugins._decide import (
    Action,
    Decision,
    Denial,
    check_run_local,
    classify,
    effective_limits,
    pressure,
)
from budget_plugins._errors import COST_DIMENSION, BudgetConfigError, BudgetExceeded, format_amount
from budget_plugins._events import BudgetEvent, EventHook, LoggingHook, emit
from budget_plugins._ledger import (
    DEFAULT_LEASE_SECONDS,
    AsyncLedger,
    Grant,
    InMemoryLedger,
    Ledger,
    Scope,
    Settlement,
)
from budget_plugins._policy import Budget, Ceiling, micros_to_usd
from budget_plugins._pricing import price_tokens
from budget_plugins._usage import Request, ScopeUsage, TokenUsage

_DEFAULT_HOOKS: tuple[EventHook, ...] = (LoggingHook(),)

_NO_DIMENSIONS: frozenset[str] = frozenset()

RUN_WRITE_INTERVAL = 1.0
"""Seconds between writes of an exclusive run scope's copy to a remote ledger when runs end."""

_unwritten: weakref.WeakSet[Meter] = weakref.WeakSet()


@atexit.register
def _write_unwritten_run_scopes() -> None:
    for meter in list(_unwritten):
        try:
            meter.flush()
        except BaseException:  # best effort at exit: the ledger may be gone already
            logging.getLogger("budget_plugins").warning("could not write run scope %s at exit", meter.run_id)


_TOKEN_DIMENSIONS = frozenset({"input_tokens", "output_tokens", "total_tokens"})

REACHED_DIMENSIONS = ("model_calls", "steps", "input_tokens", "output_tokens", "total_tokens", COST_DIMENSION)
"""What :meth:`Meter.reached` looks at by default: counters every further call needs."""

current_meter: contextvars.ContextVar[Meter | None] = contextvars.ContextVar(
    "budget_plugins_current_meter", default=None
)
"""The meter of the enclosing ``with budget(...)`` block, so that nested agents,
sub-graphs and tools charge the same run/workflow without threading ids by hand."""

_shared_ledger: InMemoryLedger | None = None
_shared_lock = threading.Lock()


def default_ledger() -> InMemoryLedger:
    """The process-wide in-memory ledger used when none is given."""
    global _shared_ledger
    with _shared_lock:
        if _shared_ledger is None:
            _shared_ledger = InMemoryLedger()
        return _shared_ledger


@dataclass(slots=True)
class _Step:
    """A reservation between its in-process part and the shared ledger's answer."""

    rid: str
    scopes: list[Scope]
    settle: list[tuple[str, dict[str, int]]]
    held: Grant | None
    local: bool
    ask_ledger: bool
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(slots=True)
class Ticket:
    """A granted reservation for one call, to settle with ``commit`` or ``release``."""

    reservation_id: str
    request: Request
    decision: Decision
    model: str | None = None
    node: str | None = None
    call_id: str | None = None
    parent_call_id: str | None = None
    settled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Meter:
    """Enforces one run's :class:`Budget` (and shared ceilings) through a ledger.

    Args:
        budget: The run's budget.
        ledger: Where usage is kept; a fresh :class:`InMemoryLedger` by default.
            Pass a shared ledger (in-memory or Redis) to share ceilings across runs.
        ceilings: Workflow/tenant limits checked atomically with the run's.
        tenant: Tenant id (required by tenant ceilings).
        workflow: Workflow id (required by workflow ceilings).
        run_id: The run scope's id; a random one by default. Two meters with the
            same ``run_id`` on the same ledger share one run scope.
        agent: Name attached to events (attribution).
        hooks: Event receivers; stdlib logging by default.
        extra_limits: Further run-scope counter limits (e.g. ``{"node_visits:critic": 3}``).
        lease_seconds: How long a hold survives a crashed process.
        defer_commits: Settle a call in the same ledger operation as the next
            reservation (one round trip per call on remote ledgers); defaults to
            True for ledgers that say they are remote.
        clock: Monotonic seconds for the wall-clock limit (injectable).
        parent: An enclosing run's meter (a sub-agent's budget nested in its
            parent's): every reservation is also held in the parent's scopes, in
            the same atomic step, so the parent's limits keep applying. Without
            one, a meter made inside a ``with budget(...)`` block takes that
            block's tenant and workflow for attribution.
        exclusive: This meter is the only writer of its run scope (default: when
            ``run_id`` is not given). On a remote ledger an exclusive run scope is
            enforced in process, and a request that no shared scope limits (e.g. a
            step or a tool call under a cost-only ceiling) costs no round trip:
            its usage reaches the ledger with the next shared reservation or when
            the run's root ends.

    Example:
        >>> meter = Meter(Budget(max_tool_calls=1))
        >>> ticket = meter.before_tool_call("search")
        >>> _ = meter.after_tool_call(ticket)
        >>> meter.before_tool_call("search")
        Traceback (most recent call last):
        ...
        budget_plugins._errors.BudgetExceeded: Exceeded the tool_calls limit of 1 (used=1, requested=1) in run scope
    """

    __slots__ = (
        "__weakref__",
        "_aledger",
        "_ceiling_scopes",
        "_clock",
        "_cost_limited",
        "_failures",
        "_final_scope",
        "_input_floor",
        "_local",
        "_lock",
        "_pending",
        "_run_scope",
        "_run_unsynced",
        "_run_written",
        "_shadow",
        "_shared_dims",
        "_signalled",
        "_started_at",
        "_unsynced",
        "agent",
        "budget",
        "defer_commits",
        "exhausted",
        "hooks",
        "lease_seconds",
        "ledger",
        "level",
        "needs_prompt_estimate",
        "parent",
        "provider",
        "run_id",
        "run_limits",
        "spent_micros",
        "tenant",
        "workflow",
    )

    tenant: str | None
    workflow: str | None
    hooks: Sequence[EventHook]
    level: Action
    """The most severe threshold reached so far: adapters downgrade at ``degrade``."""
    exhausted: BudgetExceeded | None
    """The last refusal (also set in shadow mode, where nothing is refused)."""
    needs_prompt_estimate: bool
    """Whether a model call's prompt size matters (a token or cost limit applies):
    adapters skip estimating prompts otherwise."""

    @property
    def shadow_denials(self) -> dict[str, int]:
        """Shadow mode: would-be refusals counted per dimension."""
        return dict(self._shadow or {})

    def __init__(
        self,
        budget: Budget,
        *,
        ledger: Ledger | None = None,
        ceilings: Sequence[Ceiling] = (),
        tenant: str | None = None,
        workflow: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        hooks: Sequence[EventHook] | None = None,
        extra_limits: Mapping[str, int] | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        defer_commits: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        provider: str | None = None,
        parent: Meter | None = None,
        exclusive: bool | None = None,
    ) -> None:
        if not isinstance(budget, Budget):
            raise BudgetConfigError(
                f"budget must be a budget_plugins.Budget, got {type(budget).__name__}",
                field="budget",
            )
        outer = current_meter.get()
        if parent is None and outer is not None:
            # The budget context travels with the workflow: a meter made inside a
            # `with budget(...)` block (a sub-agent, a nested graph) is attributed to
            # the enclosing tenant and workflow. The enclosing limits already apply
            # to every run in the block through its ambient handler.
            tenant = tenant if tenant is not None else outer.tenant
            workflow = workflow if workflow is not None else outer.workflow
        self.budget = budget
        self.parent = parent
        if parent is not None:
            ledger = ledger if ledger is not None else parent.ledger
            if ledger is not parent.ledger:
                raise BudgetConfigError("a nested meter must use its parent's ledger (omit ledger=)", field="ledger")
            tenant = tenant if tenant is not None else parent.tenant
            workflow = workflow if workflow is not None else parent.workflow
            hooks = hooks if hooks is not None else parent.hooks
            ceilings = ceilings or ()
        self.ledger: Ledger = ledger if ledger is not None else InMemoryLedger()
        self._aledger: AsyncLedger | None = None
        self.tenant = tenant
        self.workflow = workflow
        self.run_id = run_id or uuid.uuid4().hex
        self.agent = agent
        self.provider = provider
        self.hooks: Sequence[EventHook] = tuple(hooks) if hooks is not None else _DEFAULT_HOOKS
        self.lease_seconds = lease_seconds
        self.defer_commits = bool(getattr(self.ledger, "remote", False)) if defer_commits is None else defer_commits
        self._clock = clock
        self._lock = threading.Lock()
        self._started_at: float | None = None
        self._failures = 0
        # Created on first use: an idle run scope should cost little memory.
        self._pending: list[tuple[str, dict[str, int]]] | None = None
        self._input_floor: dict[str, int] | None = None
        self._signalled: set[tuple[str, str]] | None = None
        self._shadow: dict[str, int] | None = None
        self.level: Action = "allow"
        self.exhausted: BudgetExceeded | None = None
        self.spent_micros = 0
        run_limits = {**budget.counter_limits(), **(extra_limits or {})}
        self.run_limits: Mapping[str, int] = run_limits
        self._final_scope = Scope("run", self.run_id, tenant or "", workflow or "", run_limits)
        self._run_scope = (
            self._final_scope
            if budget.finalization_reserve == 0
            else Scope(
                "run",
                self.run_id,
                tenant or "",
                workflow or "",
                effective_limits(run_limits, budget.finalization_reserve, final=False),
            )
        )
        self._ceiling_scopes = [self._ceiling_scope(c) for c in ceilings]
        # Exclusive run scope on a remote ledger: checked in process (an in-memory
        # ledger of its own); requests that no shared scope (ceiling, parent)
        # limits skip the shared ledger and are recorded there later, in one entry.
        own = run_id is None if exclusive is None else exclusive
        self._local: InMemoryLedger | None = None
        self._unsynced: dict[str, int] | None = None
        self._run_unsynced: dict[str, int] | None = None
        self._run_written = float("-inf")
        self._shared_dims: frozenset[str] = (
            frozenset(d for sc in self.scopes(final=True)[1:] for d in sc.limits) or _NO_DIMENSIONS
        )
        if own and self.defer_commits:
            self._local = InMemoryLedger(run_ttl_seconds=None)
        all_limits = [dim for scope in self.scopes(final=True) for dim in scope.limits]
        self._cost_limited = COST_DIMENSION in all_limits
        self.needs_prompt_estimate = self._cost_limited or any(dim in _TOKEN_DIMENSIONS for dim in all_limits)

    def _ceiling_scope(self, ceiling: Ceiling) -> Scope:
        if not isinstance(ceiling, Ceiling):
            raise BudgetConfigError(
                f"ceilings must be budget_plugins.Ceiling objects, got {type(ceiling).__name__}",
                field="ceilings",
            )
        if not self.tenant and ceiling.scope in ("tenant", "workflow"):
            raise BudgetConfigError(
                f"a {ceiling.scope} ceiling needs tenant=...; pass tenant (and workflow) to the handler/guard",
                field="tenant",
            )
        if ceiling.scope == "workflow" and not self.workflow:
            raise BudgetConfigError(
                "a workflow ceiling needs workflow=...; pass workflow to the handler/guard",
                field="workflow",
            )
        scope_id = self.tenant if ceiling.scope == "tenant" else self.workflow
        return Scope(
            ceiling.scope,
            scope_id or "",
            self.tenant or "",
            self.workflow or "",
            ceiling.counter_limits(),
            ceiling.window,
        )

    # -- scopes and views -------------------------------------------------------

    def scopes(self, *, final: bool = False) -> list[Scope]:
        """The scopes a reservation is held in: the run's, its parents', then the ceilings."""
        own = [self._final_scope if final else self._run_scope, *self._ceiling_scopes]
        if self.parent is None:
            return own
        keys = {scope.key for scope in own}
        return own + [scope for scope in self.parent.scopes(final=final) if scope.key not in keys]

    def check(self, request: Request) -> None:
        """Run only the run-local checks (time, depth, fan-out, failures); raise if refused.

        Used where nothing is held in the ledger, e.g. entering a nested chain.
        """
        with self._lock:
            now = self._clock()
            if self._started_at is None:
                self._started_at = now
            started, failures = self._started_at, self._failures
        local = check_run_local(self.budget, request, started_at=started, now=now, consecutive_failures=failures)
        if local is not None:
            self._refuse(Decision.deny(local), request)

    @property
    def aledger(self) -> AsyncLedger:
        """The async twin of the ledger (created on first use)."""
        if self._aledger is None:
            self._aledger = self.ledger.as_async()
        return self._aledger

    def usage(self) -> ScopeUsage:
        """The run scope's used/held counters (in process for an exclusive run scope on a remote ledger)."""
        self.flush()
        if self._local is not None:
            return self._local.snapshot(self._final_scope)
        return self.ledger.snapshot(self._final_scope)

    def _run_view(self) -> list[ScopeUsage]:
        return [self._local.snapshot(self._final_scope)] if self._local is not None else []

    @property
    def elapsed(self) -> float:
        """Seconds since the run's first guarded event."""
        return 0.0 if self._started_at is None else self._clock() - self._started_at

    @property
    def consecutive_failures(self) -> int:
        """Failed calls in a row so far."""
        return self._failures

    # -- the shared preparation and interpretation ------------------------------

    def _ledger_scopes(self, *, final: bool = False) -> list[Scope]:
        """The scopes a shared-ledger request is held in.

        An exclusive run scope is not among them: it is enforced in process and
        its usage is written to the ledger in one entry when the run is flushed
        (a third less work per call for the ledger).
        """
        scopes = self.scopes(final=final)
        return scopes[1:] if self._local is not None else scopes

    def _is_local(self, request: Request) -> bool:
        return self._local is not None and not any(
            amount and dim in self._shared_dims for dim, amount in request.amounts.items()
        )

    def _take_pending(self) -> list[tuple[str, dict[str, int]]]:
        """Deferred settlements for the shared scopes, in-process usage as one entry (lock held)."""
        pending, self._pending = self._pending or [], None
        if self._unsynced:
            pending.append((uuid.uuid4().hex, self._unsynced))
            self._for_run_scope(self._unsynced)
            self._unsynced = None
        return pending

    def _for_run_scope(self, amounts: Mapping[str, int]) -> None:
        """Usage the ledger's copy of an exclusive run scope still has to record (lock held)."""
        unrecorded = self._run_unsynced or {}
        for dim, amount in amounts.items():
            unrecorded[dim] = unrecorded.get(dim, 0) + amount
        self._run_unsynced = unrecorded

    def _take_run_entry(self, force: bool) -> tuple[str, list[Scope], dict[str, int]] | None:
        with self._lock:
            now = self._clock()
            if not self._run_unsynced or (not force and now - self._run_written < RUN_WRITE_INTERVAL):
                if self._run_unsynced:
                    _unwritten.add(self)  # written at the latest when the interpreter exits
                return None
            amounts, self._run_unsynced, self._run_written = self._run_unsynced, None, now
        _unwritten.discard(self)
        return uuid.uuid4().hex, self.scopes(final=True)[:1], amounts

    def _hold_locally(self, rid: str, request: Request) -> Grant | None:
        if self._local is None:
            return None
        run = self.scopes(final=request.final)[:1]
        return self._local.reserve(
            rid, run, request.amounts, lease_seconds=self.lease_seconds, enforce=self.budget.mode == "enforce"
        )

    def _merge(self, local: Grant | None, shared: Grant | None, rid: str) -> Grant:
        """One grant from the in-process run-scope grant and the shared ledger's."""
        if local is None:
            assert shared is not None
            return shared
        if shared is None:
            return local
        denial = local.denial or shared.denial
        return Grant(rid, local.granted and shared.granted, denial, (local.usage[0], *shared.usage[1:]))

    def _begin(self, request: Request) -> _Step:
        """Everything a reservation does before the shared ledger is asked (both doors)."""
        local = self._is_local(request)
        rid, scopes, settle = self._prepare(request, take_pending=not local)
        held = self._hold_locally(rid, request)
        return _Step(
            rid,
            scopes,
            settle,
            held,
            local,
            ask_ledger=not local and (held is None or held.granted),
            args=(rid, self._ledger_scopes(final=request.final), request.amounts),
            kwargs={
                "lease_seconds": self.lease_seconds,
                "enforce": self.budget.mode == "enforce",
                "settle": settle,
            },
        )

    def _undo(self, step: _Step, request: Request) -> None:
        """The shared ledger failed: keep the settlements for later, give the local hold back."""
        self._requeue(step.settle)
        self._release_locally(step.rid, request)

    def _end(self, step: _Step, request: Request, shared: Grant | None, meta: dict[str, Any]) -> Ticket:
        if shared is not None and not shared.granted:
            self._release_locally(step.rid, request)
        grant = self._merge(step.held, shared, step.rid)
        return self._interpret(grant, request, step.scopes, local=step.local, **meta)

    def _prepare(
        self, request: Request, *, take_pending: bool = True
    ) -> tuple[str, list[Scope], list[tuple[str, dict[str, int]]]]:
        with self._lock:
            now = self._clock()
            if self._started_at is None:
                self._started_at = now
            started, failures = self._started_at, self._failures
            settle = self._take_pending() if take_pending else []
        local = check_run_local(self.budget, request, started_at=started, now=now, consecutive_failures=failures)
        if local is not None:
            if settle:
                self._requeue(settle)
            self._refuse(Decision.deny(local), request)
        return uuid.uuid4().hex, self.scopes(final=request.final), settle

    def _requeue(self, settle: list[tuple[str, dict[str, int]]]) -> None:
        with self._lock:
            self._pending = [*settle, *(self._pending or [])]

    def _interpret(
        self,
        grant: Grant,
        request: Request,
        scopes: Sequence[Scope],
        *,
        observed: bool = False,
        local: bool = False,
        **meta: Any,
    ) -> Ticket:
        if grant.denial is not None and not observed:
            # Raises when enforcing; in shadow mode the hold was made and this only records.
            self._refuse(Decision.deny(grant.denial), request, grant.usage)
        action: Action = "allow"
        fraction, dimension, limit, in_use, scope_kind, scope_id = 0.0, None, None, None, "run", None
        for scope, view in zip(scopes, grant.usage, strict=False):
            share, dim = pressure(scope.limits, view.used, view.held)
            if dim is not None and share > fraction:
                fraction, dimension = share, dim
                limit, in_use = scope.limits[dim], view.in_use(dim)
                scope_kind, scope_id = scope.kind, scope.id
        if dimension is not None:
            action = classify(self.budget, fraction)
        decision = Decision(
            action,
            dimension,
            limit,
            in_use,
            request.amounts.get(dimension or "", 0),
            scope_kind,
            scope_id,
            fraction,
        )
        if action == "degrade" and self.budget.warn_at is not None:
            # A jump straight past the warning threshold still warns first.
            self._signal(replace(decision, action="warn"), request)
        if action != "allow":
            self._signal(decision, request)
        if request.kind == "model_call":
            meta.setdefault("model", request.name)
        ticket = Ticket(grant.reservation_id, request, decision, **meta)
        if local:
            ticket.extra["local"] = True
        return ticket

    def _signal(self, decision: Decision, request: Request) -> None:
        key = (decision.action, decision.dimension or "")
        with self._lock:
            if self._signalled is None:
                self._signalled = set()
            elif key in self._signalled:
                return
            self._signalled.add(key)
            if decision.action == "degrade" or self.level == "allow":
                self.level = decision.action
        self._emit(decision.action, decision, request)

    def _refuse(self, decision: Decision, request: Request, usage: Sequence[ScopeUsage] = ()) -> None:
        error = BudgetExceeded(
            decision.dimension or "?",
            limit=decision.limit if decision.limit is not None else 0,
            used=decision.used if decision.used is not None else 0,
            requested=decision.requested if decision.requested is not None else 0,
            scope=decision.scope,
            scope_id=decision.scope_id,
            usage={u.scope_id: u.as_dict() for u in usage},
        )
        self.exhausted = error
        if self.budget.mode == "shadow":
            with self._lock:
                dim = decision.dimension or "?"
                self._shadow = self._shadow or {}
                self._shadow[dim] = self._shadow.get(dim, 0) + 1
            self._emit("would_deny", decision, request, shadow=True)
            return
        self.level = "deny"
        self._emit("deny", decision, request, message=error.message)
        raise error

    def _listening(self, kind: str) -> bool:
        for hook in self.hooks:
            wants = getattr(hook, "wants", None)
            if wants is None or wants(kind):
                return True
        return False

    def _emit(
        self,
        kind: Any,
        decision: Decision,
        request: Request,
        *,
        shadow: bool = False,
        message: str | None = None,
    ) -> None:
        if not self._listening(kind):
            return
        emit(
            self.hooks,
            BudgetEvent(
                kind=kind,
                dimension=decision.dimension,
                scope=decision.scope,
                tenant=self.tenant,
                workflow=self.workflow,
                run_id=self.run_id,
                agent=self.agent,
                node=request.name if request.kind == "step" else None,
                limit=decision.limit,
                used=decision.used,
                requested=decision.requested,
                fraction=decision.fraction,
                model=request.name if request.kind == "model_call" else None,
                tool=request.name if request.kind == "tool_call" else None,
                retry=request.retry,
                shadow=shadow or self.budget.mode == "shadow",
                timestamp=time.time(),
                message=message,
            ),
        )

    def _settle_amounts(
        self, ticket: Ticket, usage: TokenUsage | None, failed: bool
    ) -> tuple[dict[str, int], TokenUsage | None, Decimal]:
        amounts = {k: v for k, v in ticket.request.amounts.items() if v}
        cost = Decimal(0)
        if ticket.request.kind == "model_call":
            for key in ("input_tokens", "output_tokens", "total_tokens", COST_DIMENSION):
                amounts.pop(key, None)
            if usage is not None:
                priced = price_tokens(
                    self.budget,
                    ticket.model,
                    usage,
                    provider=self.provider,
                    needs_price=self._cost_limited,
                )
                cost = priced.cost_usd
                with self._lock:
                    self._input_floor = self._input_floor or {}
                    self._input_floor[ticket.model or ""] = usage.input_tokens
                amounts.update(
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    total_tokens=usage.total_tokens,
                    **{COST_DIMENSION: priced.micros},
                )
                amounts = {k: v for k, v in amounts.items() if v}
        with self._lock:
            self._failures = self._failures + 1 if failed else 0
            self.spent_micros += amounts.get(COST_DIMENSION, 0)
        return amounts, usage, cost

    def _after_settle(
        self, ticket: Ticket, settlement: Settlement | None, usage: TokenUsage | None, cost: Decimal
    ) -> None:
        overage = settlement is not None and bool(settlement.overage) and settlement.status != "duplicate"
        if not self._listening("settle") and not (overage and self._listening("overage")):
            return  # nobody listens: build no events on the hot path
        views = settlement.usage if settlement is not None else ()
        costs: dict[str, Decimal] = {}
        for scope, view in zip(self.scopes(), views, strict=False):
            costs.setdefault(scope.kind, view.cost_usd)
        if overage and settlement is not None:
            dim = next(iter(settlement.overage))
            emit(
                self.hooks,
                BudgetEvent(
                    kind="overage",
                    dimension=dim,
                    run_id=self.run_id,
                    tenant=self.tenant,
                    workflow=self.workflow,
                    agent=self.agent,
                    requested=settlement.overage[dim],
                    model=ticket.model,
                    call_id=ticket.call_id,
                    timestamp=time.time(),
                    message=f"actual usage exceeded the hold ({settlement.status})",
                ),
            )
        if ticket.request.kind not in ("model_call", "tool_call"):
            return
        emit(
            self.hooks,
            BudgetEvent(
                kind="settle",
                tenant=self.tenant,
                workflow=self.workflow,
                run_id=self.run_id,
                agent=self.agent,
                node=ticket.node,
                model=ticket.model,
                tool=ticket.request.name if ticket.request.kind == "tool_call" else None,
                input_tokens=usage.input_tokens if usage else 0,
                output_tokens=usage.output_tokens if usage else 0,
                cache_read_tokens=usage.cache_read_tokens if usage else 0,
                cache_write_tokens=usage.cache_write_tokens if usage else 0,
                cost_usd=cost,
                run_cost_usd=costs.get("run", micros_to_usd(self.spent_micros)),
                workflow_cost_usd=costs.get("workflow"),
                tenant_cost_usd=costs.get("tenant"),
                retry=ticket.request.retry,
                call_id=ticket.call_id,
                parent_call_id=ticket.parent_call_id,
                shadow=self.budget.mode == "shadow",
                timestamp=time.time(),
            ),
        )

    # -- sync door --------------------------------------------------------------

    def reserve(self, request: Request, **meta: Any) -> Ticket:
        """Hold ``request`` in every scope or raise :class:`BudgetExceeded`.

        ``meta`` (``model``, ``node``, ``call_id``, ``parent_call_id``) is kept on
        the ticket for attribution.
        """
        step = self._begin(request)
        shared = None
        if step.ask_ledger:
            try:
                shared = self.ledger.reserve(*step.args, **step.kwargs)
            except BaseException:
                self._undo(step, request)
                raise
        return self._end(step, request, shared, meta)

    def _release_locally(self, rid: str, request: Request) -> None:
        if self._local is not None:
            self._local.release(rid, self.scopes(final=request.final)[:1])

    def _route_settlement(
        self, ticket: Ticket, usage: TokenUsage | None, failed: bool
    ) -> tuple[dict[str, int], TokenUsage | None, Decimal, bool]:
        """Price and place a settlement (both doors); the flag says: commit to the ledger now."""
        amounts, usage, cost = self._settle_amounts(ticket, usage, failed)
        if self._settle_locally(ticket, amounts):
            return amounts, usage, cost, False  # recorded with the next shared reservation or flush
        if self.defer_commits:
            with self._lock:
                self._pending = self._pending or []
                self._pending.append((ticket.reservation_id, amounts))
            return amounts, usage, cost, False
        return amounts, usage, cost, True

    def _settle_locally(self, ticket: Ticket, amounts: dict[str, int]) -> bool:
        """Settle the in-process hold; True when the ledger must still learn of it later."""
        if self._local is None:
            return False
        self._local.commit(ticket.reservation_id, self.scopes(final=ticket.request.final)[:1], amounts)
        with self._lock:
            if not ticket.extra.get("local"):
                self._for_run_scope(amounts)  # the shared ledger records it in the other scopes
                return False
            unsynced = self._unsynced or {}
            for dim, amount in amounts.items():
                unsynced[dim] = unsynced.get(dim, 0) + amount
            self._unsynced = unsynced
        return True

    def commit(self, ticket: Ticket, usage: TokenUsage | None = None, *, failed: bool = False) -> Settlement | None:
        """Settle a ticket with its actual usage (tokens for model calls).

        Returns ``None`` when the commit is deferred to the next reservation.
        """
        if ticket.settled:
            return None
        ticket.settled = True
        amounts, usage, cost, now = self._route_settlement(ticket, usage, failed)
        settlement = (
            self.ledger.commit(ticket.reservation_id, self._ledger_scopes(final=ticket.request.final), amounts)
            if now
            else None
        )
        self._after_settle(ticket, settlement, usage, cost)
        return settlement

    def release(self, ticket: Ticket, *, failed: bool = True) -> None:
        """Give a ticket's hold back (the call did not happen or failed before using anything)."""
        if ticket.settled:
            return
        ticket.settled = True
        with self._lock:
            self._failures = self._failures + 1 if failed else self._failures
        self._release_locally(ticket.reservation_id, ticket.request)
        if not ticket.extra.get("local"):
            self.ledger.release(ticket.reservation_id, self._ledger_scopes(final=ticket.request.final))

    def flush(self, *, force: bool = True) -> None:
        """Commit every deferred settlement now.

        Args:
            force: Also write an exclusive run scope's copy in the ledger now; when
                False (what adapters do when a run ends) it is written at most once
                every ``RUN_WRITE_INTERVAL`` seconds, and at interpreter exit.
        """
        with self._lock:
            pending = self._take_pending()
        shared = self._ledger_scopes()
        for rid, amounts in pending if shared else ():
            self.ledger.commit(rid, shared, amounts)
        entry = self._take_run_entry(force)
        if entry is not None:
            self.ledger.commit(*entry)

    # -- observation door: what already happened, and what is used up ---------------

    def _prepare_observed(self, request: Request) -> tuple[str, list[Scope], list[tuple[str, dict[str, int]]]]:
        with self._lock:
            if self._started_at is None:
                self._started_at = self._clock()
            settle = self._take_pending()
        return uuid.uuid4().hex, self.scopes(final=request.final), settle

    def record(self, request: Request, usage: TokenUsage | None = None, *, failed: bool = False, **meta: Any) -> Ticket:
        """Account for a call that already happened, seen after the fact.

        For adapters that only observe (e.g. a termination condition reading a
        finished turn's events): the request is held and settled like a guarded
        call but never refused, since it cannot be undone. Warn/degrade levels
        and events still apply; a limit it overran shows in :meth:`reached`.

        Example:
            >>> m = Meter(Budget(max_tool_calls=1), hooks=[])
            >>> for _ in range(2):
            ...     _ = m.record(Request.tool_call("search"))
            >>> m.usage().used["tool_calls"], m.reached(["tool_calls"]).used
            (2, 2)
        """
        rid, scopes, settle = self._prepare_observed(request)
        try:
            grant = self.ledger.reserve(
                rid,
                self._ledger_scopes(final=request.final),
                request.amounts,
                lease_seconds=self.lease_seconds,
                enforce=False,
                settle=settle,
            )
        except BaseException:
            self._requeue(settle)
            raise
        ticket = self._interpret(grant, request, scopes, observed=True, **meta)
        self.commit(ticket, usage, failed=failed)
        return ticket

    def reached(self, dimensions: Iterable[str] | None = None) -> BudgetExceeded | None:
        """The first limit already used up, or ``None``; asks for nothing and records nothing.

        A limit is used up when its used plus held amount is at or over it, in the
        run scope or any ceiling (the finalization reserve counts as used up), or
        when the wall-clock limit has passed. For guards that can only stop
        *between* calls, such as a termination condition: refusals of the next
        call still come from :meth:`reserve`.

        Args:
            dimensions: The counters to look at; by default those every further
                call needs (model calls, steps, tokens, cost). Tool-call, per-tool
                and retry limits are left out by default: a further turn may not
                need them, and their refusals come from :meth:`reserve`.

        Returns:
            The facts as a :class:`BudgetExceeded` (not raised), or ``None``.

        Example:
            >>> m = Meter(Budget(max_model_calls=1), hooks=[])
            >>> m.reached() is None
            True
            >>> _ = m.after_model_call(m.before_model_call(), None)
            >>> print(m.reached())
            Reached the model_calls limit of 1 (used=1) in run scope
        """
        self.flush()
        local = self._run_view()
        views = local + [self.ledger.snapshot(scope) for scope in self.scopes()[len(local) :]]
        return self._reached(views, dimensions)

    def _reached(self, views: Sequence[ScopeUsage], dimensions: Iterable[str] | None) -> BudgetExceeded | None:
        wanted = set(REACHED_DIMENSIONS if dimensions is None else dimensions)
        with self._lock:
            started, now = self._started_at, self._clock()
        if started is not None:
            late = check_run_local(
                self.budget, Request("step", {}), started_at=started, now=now, consecutive_failures=0
            )
            if late is not None:
                return self._reached_error(late.dimension, late.limit, late.used, "run", self.run_id, views)
        for scope, view in zip(self.scopes(), views, strict=False):
            for dimension, limit in scope.limits.items():
                if dimension in wanted and view.in_use(dimension) >= limit:
                    return self._reached_error(dimension, limit, view.in_use(dimension), scope.kind, scope.id, views)
        return None

    @staticmethod
    def _reached_error(
        dimension: str, limit: int | float, used: int | float, scope: str, scope_id: str, views: Sequence[ScopeUsage]
    ) -> BudgetExceeded:
        return BudgetExceeded(
            dimension,
            limit=limit,
            used=used,
            requested=0,
            scope=scope,
            scope_id=scope_id,
            usage={view.scope_id: view.as_dict() for view in views},
            message=(
                f"Reached the {dimension} limit of {format_amount(dimension, limit)} "
                f"(used={format_amount(dimension, used)}) in {scope} scope"
            ),
        )

    # -- async door -------------------------------------------------------------

    async def areserve(self, request: Request, **meta: Any) -> Ticket:
        """Async twin of :meth:`reserve`."""
        step = self._begin(request)
        shared = None
        if step.ask_ledger:
            try:
                shared = await self.aledger.reserve(*step.args, **step.kwargs)
            except BaseException:
                self._undo(step, request)
                raise
        return self._end(step, request, shared, meta)

    async def arecord(
        self, request: Request, usage: TokenUsage | None = None, *, failed: bool = False, **meta: Any
    ) -> Ticket:
        """Async twin of :meth:`record`."""
        rid, scopes, settle = self._prepare_observed(request)
        try:
            grant = await self.aledger.reserve(
                rid,
                self._ledger_scopes(final=request.final),
                request.amounts,
                lease_seconds=self.lease_seconds,
                enforce=False,
                settle=settle,
            )
        except BaseException:
            self._requeue(settle)
            raise
        ticket = self._interpret(grant, request, scopes, observed=True, **meta)
        await self.acommit(ticket, usage, failed=failed)
        return ticket

    async def areached(self, dimensions: Iterable[str] | None = None) -> BudgetExceeded | None:
        """Async twin of :meth:`reached`."""
        await self.aflush()
        local = self._run_view()
        views = local + [await self.aledger.snapshot(scope) for scope in self.scopes()[len(local) :]]
        return self._reached(views, dimensions)

    async def aflush(self, *, force: bool = True) -> None:
        """Async twin of :meth:`flush`."""
        with self._lock:
            pending = self._take_pending()
        shared = self._ledger_scopes()
        for rid, amounts in pending if shared else ():
            await self.aledger.commit(rid, shared, amounts)
        entry = self._take_run_entry(force)
        if entry is not None:
            await self.aledger.commit(*entry)

    async def acommit(
        self, ticket: Ticket, usage: TokenUsage | None = None, *, failed: bool = False
    ) -> Settlement | None:
        """Async twin of :meth:`commit`."""
        if ticket.settled:
            return None
        ticket.settled = True
        amounts, usage, cost, now = self._route_settlement(ticket, usage, failed)
        settlement = (
            await self.aledger.commit(ticket.reservation_id, self._ledger_scopes(final=ticket.request.final), amounts)
            if now
            else None
        )
        self._after_settle(ticket, settlement, usage, cost)
        return settlement

    async def arelease(self, ticket: Ticket, *, failed: bool = True) -> None:
        """Async twin of :meth:`release`."""
        if ticket.settled:
            return
        ticket.settled = True
        with self._lock:
            self._failures = self._failures + 1 if failed else self._failures
        self._release_locally(ticket.reservation_id, ticket.request)
        if not ticket.extra.get("local"):
            await self.aledger.release(ticket.reservation_id, self._ledger_scopes(final=ticket.request.final))

    # -- conveniences used by the adapters -------------------------------------

    def model_request(
        self,
        *,
        model: str | None,
        input_tokens: int = 0,
        max_output_tokens: int | None = None,
        retry: bool = False,
        depth: int = 0,
        step: bool = False,
        final: bool = False,
    ) -> Request:
        """A model-call request with its worst case priced (reservation amounts).

        The input estimate is raised to the input the same model really used on
        its previous call in this run: in an agent loop the next prompt holds the
        previous one, and counting characters misses system prompts and tool
        schemas that the provider counts.
        """
        with self._lock:
            if self._input_floor:
                input_tokens = max(input_tokens, self._input_floor.get(model or "", 0))
        output = max_output_tokens or self.budget.default_max_output_tokens
        # Nothing caps cost: no need to price the worst case (the actual cost is still priced at settle).
        cost_micros = (
            price_tokens(
                self.budget,
                model,
                TokenUsage(input_tokens, output),
                provider=self.provider,
                needs_price=True,
            ).micros
            if self._cost_limited
            else 0
        )
        return Request.model_call(
            input_tokens=input_tokens,
            output_tokens=output,
            cost_micros=cost_micros,
            model=model,
            retry=retry,
            depth=depth,
            step=step,
            final=final,
        )

    def before_model_call(
        self,
        *,
        model: str | None = None,
        input_tokens: int = 0,
        max_output_tokens: int | None = None,
        retry: bool = False,
        depth: int = 0,
        step: bool = False,
        final: bool = False,
        **meta: Any,
    ) -> Ticket:
        """Reserve a model call's worst case; raise :class:`BudgetExceeded` if it does not fit."""
        request = self.model_request(
            model=model,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            retry=retry,
            depth=depth,
            step=step,
            final=final,
        )
        return self.reserve(request, model=model, **meta)

    def after_model_call(
        self, ticket: Ticket, usage: TokenUsage | None, *, model: str | None = None
    ) -> Settlement | None:
        """Settle a model call with the tokens it really used."""
        if model:
            ticket.model = model
        return self.commit(ticket, usage)

    def before_tool_call(
        self, name: str, *, retry: bool = False, depth: int = 0, step: bool = False, **meta: Any
    ) -> Ticket:
        """Reserve one execution of tool ``name``."""
        return self.reserve(Request.tool_call(name, retry=retry, depth=depth, step=step), **meta)

    def after_tool_call(self, ticket: Ticket, *, failed: bool = False) -> Settlement | None:
        """Settle a tool execution (it counts whether or not it failed)."""
        return self.commit(ticket, failed=failed)

    def before_step(
        self,
        node: str | None = None,
        *,
        depth: int = 0,
        fanout: int = 0,
        retry: bool = False,
        extra: Mapping[str, int] | None = None,
    ) -> Ticket:
        """Reserve and commit one step (steps are counted when they start)."""
        ticket = self.reserve(Request.step(node, depth=depth, fanout=fanout, retry=retry, extra=extra), node=node)
        self.commit(ticket)
        return ticket

    def report(self) -> dict[str, Any]:
        """The run's usage against its limits, as plain data.

        Example:
            >>> m = Meter(Budget(max_steps=5), hooks=[])
            >>> _ = m.before_step("a")
            >>> m.report()["used"]["steps"]
            1
        """
        view = self.usage()
        return {
            "run_id": self.run_id,
            "tenant": self.tenant,
            "workflow": self.workflow,
            "mode": self.budget.mode,
            "level": self.level,
            "used": view.used,
            "held": view.held,
            "limits": self.run_limits,
            "cost_usd": str(micros_to_usd(view.used.get(COST_DIMENSION, 0))),
            "elapsed_seconds": round(self.elapsed, 3),
            "exhausted": self.exhausted.as_dict() if self.exhausted else None,
            "shadow_denials": dict(self.shadow_denials),
        }


def estimate_tokens(text: str) -> int:
    """A cheap upper-leaning token estimate for a prompt (about 4 characters a token).

    Example:
        >>> estimate_tokens("hello world!")
        3
    """
    return math.ceil(len(text) / 4)


__all__ = ["REACHED_DIMENSIONS", "Denial", "Meter", "Ticket", "current_meter", "default_ledger", "estimate_tokens"]
